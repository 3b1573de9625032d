//! cairn-policy (skeleton).
