//! cairn-proto (skeleton).
