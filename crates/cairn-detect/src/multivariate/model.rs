//! The fitted model as data, its fitting (linfa) and its scoring (plain loops over the stored
//! numbers).

use super::MultivariateError;
use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use linfa_reduction::Pca;
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Rows scored per rayon task in [`MultivariateModel::score_rows`].
const ROWS_PER_TASK: usize = 4096;

/// The choices a model was fitted with; recorded in the artifact and its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyperparameters {
    /// Principal components kept; the reconstruction error is what they do not explain.
    pub pca_components: usize,
    /// k-means clusters; the distance to the nearest centroid is the second score.
    pub kmeans_clusters: usize,
    /// k-means restarts (k-means++ seeding each); the lowest inertia wins.
    pub kmeans_runs: usize,
    pub kmeans_max_iterations: u64,
    /// Quantile of the training rows' scores that calibrates each part (raw score 1.0).
    pub calibration_quantile: f64,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            pca_components: 5,
            kmeans_clusters: 8,
            kmeans_runs: 4,
            kmeans_max_iterations: 200,
            calibration_quantile: 0.99,
        }
    }
}

/// Standard scaling: `(x - mean) / scale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

/// The PCA subspace in scaled space: its centre and its orthonormal components (rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaPart {
    pub mean: Vec<f64>,
    pub components: Vec<Vec<f64>>,
}

/// k-means centroids in scaled space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KMeansPart {
    pub centroids: Vec<Vec<f64>>,
}

/// Each part's score at the calibration quantile of the training rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub pca: f64,
    pub kmeans: f64,
}

/// A fitted multivariate model: everything scoring needs, nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultivariateModel {
    /// Column order of a row; the online scorer matches these against metric names.
    pub features: Vec<String>,
    pub hyperparameters: Hyperparameters,
    pub scaler: Scaler,
    pub pca: PcaPart,
    pub kmeans: KMeansPart,
    pub calibration: Calibration,
}

/// The scores of one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowScore {
    /// Norm of the part of the scaled row the PCA subspace does not explain.
    pub pca: f64,
    /// Distance of the scaled row to the nearest centroid.
    pub kmeans: f64,
    /// Mean of the two, each divided by its calibration value: 1.0 is the calibration quantile.
    pub combined: f64,
}

/// Maps a combined raw score to [0, 1]: `1 - 0.5^(raw²)`, so 0.5 at the calibration quantile
/// (raw 1.0) and 0.9 (the default alert score) at about 1.8 times it; monotonic, so rankings (and
/// AUC-PR) are unchanged.
pub fn score_to_unit(raw: f64) -> f64 {
    if raw.is_nan() {
        return 1.0;
    }
    (1.0 - 0.5f64.powf(raw.max(0.0).powi(2))).clamp(0.0, 1.0)
}

impl MultivariateModel {
    /// Fits scaler, PCA and k-means to `rows` (one row per step, columns in `features` order).
    /// Deterministic: the same rows and hyperparameters give an identical model, whatever the
    /// machine's core count (linfa's seeded RNGs, and the fit runs on one rayon thread).
    pub fn fit(
        features: Vec<String>,
        rows: ArrayView2<'_, f64>,
        hp: Hyperparameters,
    ) -> Result<MultivariateModel, MultivariateError> {
        let (n, d) = rows.dim();
        if d != features.len() {
            return Err(MultivariateError::FeatureMismatch { columns: d, features: features.len() });
        }
        let needed = (hp.kmeans_clusters.max(hp.pca_components) * 2).max(8);
        if n < needed {
            return Err(MultivariateError::TooFewRows { rows: n, needed });
        }
        if hp.pca_components == 0 || hp.pca_components >= d.max(2) {
            return Err(MultivariateError::BadHyperparameter {
                what: "pca_components",
                got: hp.pca_components,
                max: d.saturating_sub(1),
            });
        }
        if hp.kmeans_clusters == 0 || hp.kmeans_clusters > n / 2 {
            return Err(MultivariateError::BadHyperparameter { what: "kmeans_clusters", got: hp.kmeans_clusters, max: n / 2 });
        }
        if let Some((row, col)) = rows.indexed_iter().find(|(_, v)| !v.is_finite()).map(|(i, _)| i) {
            return Err(MultivariateError::NonFinite { row, column: features[col].clone() });
        }

        let scaler = Scaler::fit(rows);
        let scaled = scaler.apply(rows);

        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| MultivariateError::KMeans(e.to_string()))?;
        let (pca, kmeans) = pool.install(|| fit_parts(&scaled, &hp))?;

        let mut model = MultivariateModel {
            features,
            hyperparameters: hp,
            scaler,
            pca,
            kmeans,
            calibration: Calibration { pca: 1.0, kmeans: 1.0 },
        };
        model.calibration = model.calibrate(rows);
        Ok(model)
    }

    fn calibrate(&self, rows: ArrayView2<'_, f64>) -> Calibration {
        let q = self.hyperparameters.calibration_quantile.clamp(0.5, 1.0);
        let (mut pca, mut km): (Vec<f64>, Vec<f64>) = rows.outer_iter().map(|r| self.raw_parts(&r.to_vec())).unzip();
        // A part that is zero on nearly every training row (a perfect fit) still needs a positive
        // divisor; the floor is far below any score that matters.
        Calibration { pca: quantile(&mut pca, q).max(1e-9), kmeans: quantile(&mut km, q).max(1e-9) }
    }

    pub fn dimension(&self) -> usize {
        self.features.len()
    }

    /// Checks that every stored vector has the model's dimension (an artifact from outside is
    /// checked with this before it is used).
    pub fn validate(&self) -> Result<(), MultivariateError> {
        let d = self.features.len();
        let bad = |what: &str| Err(MultivariateError::Inconsistent(format!("{what} does not have {d} values")));
        if d == 0 {
            return Err(MultivariateError::Inconsistent("no features".into()));
        }
        if self.scaler.mean.len() != d || self.scaler.scale.len() != d {
            return bad("the scaler");
        }
        if self.scaler.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(MultivariateError::Inconsistent("a scaler scale is not positive".into()));
        }
        if self.pca.mean.len() != d || self.pca.components.iter().any(|c| c.len() != d) {
            return bad("the PCA part");
        }
        if self.kmeans.centroids.is_empty() || self.kmeans.centroids.iter().any(|c| c.len() != d) {
            return bad("the k-means part");
        }
        if !(self.calibration.pca > 0.0 && self.calibration.kmeans > 0.0) {
            return Err(MultivariateError::Inconsistent("calibration must be positive".into()));
        }
        Ok(())
    }

    /// The PCA and k-means parts of one row (`row.len()` must be the model's dimension).
    fn raw_parts(&self, row: &[f64]) -> (f64, f64) {
        let d = self.features.len();
        debug_assert_eq!(row.len(), d);
        // Scaled row, centred on the PCA mean; a stack buffer for the usual sizes.
        let mut buf = [0f64; 64];
        let mut heap;
        let z: &mut [f64] = if d <= 64 {
            &mut buf[..d]
        } else {
            heap = vec![0f64; d];
            &mut heap
        };
        for (i, zi) in z.iter_mut().enumerate() {
            *zi = (row[i] - self.scaler.mean[i]) / self.scaler.scale[i];
        }

        let mut km = f64::INFINITY;
        for c in &self.kmeans.centroids {
            let dist: f64 = z.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
            km = km.min(dist);
        }

        let mut norm2 = 0.0;
        for (zi, m) in z.iter_mut().zip(&self.pca.mean) {
            *zi -= m;
            norm2 += *zi * *zi;
        }
        // Components are orthonormal: the residual's squared norm is |z|² minus the squared
        // projections.
        let explained: f64 = self
            .pca
            .components
            .iter()
            .map(|c| {
                let p: f64 = z.iter().zip(c).map(|(a, b)| a * b).sum();
                p * p
            })
            .sum();
        ((norm2 - explained).max(0.0).sqrt(), km.sqrt())
    }

    /// Scores one row (values in `features` order).
    pub fn score_row(&self, row: &[f64]) -> RowScore {
        let (pca, kmeans) = self.raw_parts(row);
        let combined = 0.5 * (pca / self.calibration.pca + kmeans / self.calibration.kmeans);
        RowScore { pca, kmeans, combined }
    }

    /// Scores many rows, rayon across chunks of rows; the output is in row order.
    pub fn score_rows(&self, rows: ArrayView2<'_, f64>) -> Vec<RowScore> {
        assert_eq!(rows.ncols(), self.features.len(), "rows must have the model's dimension");
        let std_rows = rows.as_standard_layout();
        let flat = std_rows.as_slice().expect("standard layout is contiguous");
        let d = self.features.len();
        let mut out = vec![RowScore { pca: 0.0, kmeans: 0.0, combined: 0.0 }; rows.nrows()];
        out.par_chunks_mut(ROWS_PER_TASK).zip(flat.par_chunks(ROWS_PER_TASK * d)).for_each(|(o, x)| {
            for (slot, row) in o.iter_mut().zip(x.chunks_exact(d)) {
                *slot = self.score_row(row);
            }
        });
        out
    }
}

impl Scaler {
    /// Mean and population standard deviation per column. A column that is constant in the
    /// training rows is measured relative to its own level (or in its own units when that level
    /// is 0), so a metric that never moved in training does not turn every later wiggle into an
    /// enormous z-score.
    fn fit(rows: ArrayView2<'_, f64>) -> Scaler {
        let n = rows.nrows() as f64;
        let mean: Vec<f64> = rows.axis_iter(Axis(1)).map(|c| c.sum() / n).collect();
        let scale = rows
            .axis_iter(Axis(1))
            .zip(&mean)
            .map(|(c, m)| {
                let var = c.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
                let sd = var.sqrt();
                if sd > 1e-9 * m.abs().max(1.0) { sd } else { m.abs().max(1.0) }
            })
            .collect();
        Scaler { mean, scale }
    }

    fn apply(&self, rows: ArrayView2<'_, f64>) -> Array2<f64> {
        let mut z = rows.to_owned();
        for mut r in z.outer_iter_mut() {
            for (i, v) in r.iter_mut().enumerate() {
                *v = (*v - self.mean[i]) / self.scale[i];
            }
        }
        z
    }
}

fn fit_parts(scaled: &Array2<f64>, hp: &Hyperparameters) -> Result<(PcaPart, KMeansPart), MultivariateError> {
    let data = DatasetBase::from(scaled.view());
    let pca = Pca::params(hp.pca_components).fit(&data).map_err(|e| MultivariateError::Pca(e.to_string()))?;
    let pca = PcaPart {
        mean: pca.mean().to_vec(),
        components: pca.components().outer_iter().map(|c| orthonormal_row(c.to_vec())).collect(),
    };
    let kmeans = KMeans::params(hp.kmeans_clusters)
        .n_runs(hp.kmeans_runs.max(1))
        .max_n_iterations(hp.kmeans_max_iterations.max(1))
        .tolerance(1e-6)
        .fit(&data)
        .map_err(|e| MultivariateError::KMeans(e.to_string()))?;
    let kmeans = KMeansPart { centroids: kmeans.centroids().outer_iter().map(|c| c.to_vec()).collect() };
    Ok((pca, kmeans))
}

/// linfa's truncated SVD returns unit rows up to rounding; scoring relies on it, so normalise.
fn orthonormal_row(mut c: Vec<f64>) -> Vec<f64> {
    let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 0.0 {
        c.iter_mut().for_each(|v| *v /= n);
    }
    c
}

/// The `q` quantile by selection (reorders `v`); `v` must not be empty.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    let (_, x, _) = v.select_nth_unstable_by(k, f64::total_cmp);
    *x
}
