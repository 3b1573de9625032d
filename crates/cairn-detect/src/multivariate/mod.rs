//! Multivariate detection for groups of series that belong together (the metrics of one host, of
//! one service): one row per group per step, scored against a model of how those metrics move
//! together, so a row whose every value is ordinary on its own but whose combination is not (CPU
//! busy while requests are flat) still scores high.
//!
//! The model ([`MultivariateModel`]) is plain serde data — a standard scaler, a PCA subspace and
//! k-means centroids, with a calibration taken from the training rows — so an artifact is a JSON
//! file that `models/` ships and `registry` verifies. Fitting uses linfa (PCA by truncated SVD,
//! k-means++), always on one thread so the same rows give the same bytes; scoring needs only the
//! stored numbers (no linfa) and runs with rayon across row chunks ([`MultivariateModel::score_rows`])
//! or across groups ([`GroupScorer`], the online form fed by the live sample stream).
//!
//! A row's combined score is the mean of its PCA reconstruction error — each feature's residual
//! divided by that feature's residual spread in training, so one noisy metric does not dominate —
//! and its distance to the nearest centroid, each divided by its value at the calibration
//! quantile of the training rows. The score Cairn alerts on is that combined score smoothed per
//! group ([`Smoother`]: a moving average whose peak is held a few rows, computed online with a
//! fixed-size state), divided by its own calibration quantile: 1.0 is "as unusual as the rarest
//! training rows". [`score_to_unit`] maps that to [0, 1] for anomalies.
//! [`MultivariateModel::score_series`] is the offline form of exactly what [`GroupScorer`] computes.
//!
//! Measured on the server-metrics dev set (`cairn eval multivariate`), one set of hyperparameters
//! for every machine: the smoothed score is at or above plain PCA reconstruction error on each
//! machine; the per-feature normalisation helps most where one metric is noisy, the smoothing where
//! anomalies are segments of several rows.
//!
//! The standard scaler is written here rather than taken from linfa-preprocessing: that crate
//! brings a text-processing stack (encoding tables, regex, unicode normalisation) that cost more
//! build time than linfa itself (measured: +59 s wall / +22 s CPU on top of linfa's 41 s / 15 s)
//! for what is a mean and a standard deviation per column.
//!
//! Pure: no clock, no I/O.

mod model;
mod online;
pub mod synthetic;

pub use model::{
    score_to_unit, Calibration, Hyperparameters, KMeansPart, MultivariateModel, PcaPart, RowScore, Scaler, Smoother,
    MAX_HOLD_ROWS,
};
pub use online::{GroupScorer, GroupScorerConfig, GroupScorerStats, DETECTOR};

/// What can go wrong fitting or loading a multivariate model.
#[derive(Debug, thiserror::Error)]
pub enum MultivariateError {
    #[error("training data has {rows} rows; at least {needed} are needed")]
    TooFewRows { rows: usize, needed: usize },
    #[error("training data has {columns} columns but {features} feature names")]
    FeatureMismatch { columns: usize, features: usize },
    #[error("{what} must be between 1 and {max}, got {got}")]
    BadHyperparameter { what: &'static str, got: usize, max: usize },
    #[error("training data contains a non-finite value at row {row}, column {column:?}")]
    NonFinite { row: usize, column: String },
    #[error("PCA fit failed: {0}")]
    Pca(String),
    #[error("k-means fit failed: {0}")]
    KMeans(String),
    #[error("model is inconsistent: {0}")]
    Inconsistent(String),
}

#[cfg(test)]
mod tests;
