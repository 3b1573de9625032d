//! cairn-detect (skeleton).
