//! cairn-audit (skeleton).
