//! Offline work on data sets: reading benchmark corpora and training data, training model
//! artifacts for `models/`, evaluating detectors against labelled benchmarks (NAB, SMD, ASD), and
//! summarising the audit trail for people.
//!
//! This is the only crate that may depend on polars (the heaviest part of the build), and only the
//! `cairn` binary depends on it: the pipeline crates and their tests never link it. It reads files
//! and returns values; it never serves, never writes the store, and never routes or executes.

#![forbid(unsafe_code)]

pub mod dataset;
pub mod iforest;
pub mod multivariate;
pub mod nab;
pub mod report;
pub mod train;

use std::path::PathBuf;

/// What can go wrong reading, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot read as a table: {source}")]
    Polars { path: PathBuf, source: polars::prelude::PolarsError },
    #[error("{path}: {detail}")]
    Data { path: PathBuf, detail: String },
    #[error(transparent)]
    Model(#[from] cairn_detect::multivariate::MultivariateError),
    #[error(transparent)]
    Registry(#[from] cairn_detect::registry::RegistryError),
    #[error("{0}")]
    Invalid(String),
}
