//! cairn-workflow (skeleton).
