//! cairn-recommend (skeleton).
