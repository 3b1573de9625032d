//! cairn-store (skeleton).
