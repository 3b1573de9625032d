//! cairn-server (skeleton).
