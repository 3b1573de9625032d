//! Offline work on data sets: reading benchmark corpora and training data, training model
//! artifacts for `models/`, evaluating detectors against labelled benchmarks (NAB, SMD, ASD), and
//! summarising the audit trail for people.
//!
//! This is the only crate that may depend on polars (the heaviest part of the build), and only the
//! `cairn` binary depends on it: the pipeline crates and their tests never link it. It reads files
//! and returns values; it never serves, never writes the store, and never routes or executes.

#![forbid(unsafe_code)]

pub mod nab;
