//! cairn-ingest (skeleton).
