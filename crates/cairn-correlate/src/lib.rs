//! cairn-correlate (skeleton).
