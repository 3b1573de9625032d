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

/// Most rows [`Hyperparameters::hold_rows`] may hold a peak for (the smoother's fixed buffer).
pub const MAX_HOLD_ROWS: usize = 16;

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
    /// Each feature's PCA residual is divided by its spread over the training rows, floored at
    /// this fraction of the feature's own spread, so one noisy metric does not drown the others
    /// and a metric the others predict closely counts when it stops agreeing.
    pub residual_floor: f64,
    /// Weight of the newest row in the exponential moving average of the combined score.
    pub smoothing_alpha: f64,
    /// The alerting score is the largest moving average of the last this many rows.
    pub hold_rows: usize,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            pca_components: 5,
            kmeans_clusters: 8,
            kmeans_runs: 4,
            kmeans_max_iterations: 200,
            calibration_quantile: 0.99,
            residual_floor: 0.01,
            smoothing_alpha: 0.3,
            hold_rows: 3,
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

/// The PCA subspace in scaled space: its centre and its orthonormal components (rows), and per
/// feature the spread of the residual over the training rows (floored, see
/// [`Hyperparameters::residual_floor`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaPart {
    pub mean: Vec<f64>,
    pub components: Vec<Vec<f64>>,
    pub residual_scale: Vec<f64>,
}

/// k-means centroids in scaled space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KMeansPart {
    pub centroids: Vec<Vec<f64>>,
}

/// Scores at the calibration quantile of the training rows: each part's, and the smoothed
/// alerting score's (over the training rows in order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Of the per-feature normalised residual ([`RowScore::residual`]).
    pub residual: f64,
    pub kmeans: f64,
    /// Of the smoothed combined score ([`Smoother`]).
    pub score: f64,
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

/// The scores of one row on its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowScore {
    /// Norm of the part of the scaled row the PCA subspace does not explain (plain PCA
    /// reconstruction error; a baseline, not part of the combined score).
    pub pca: f64,
    /// The same residual with each feature divided by its training spread.
    pub residual: f64,
    /// Distance of the scaled row to the nearest centroid.
    pub kmeans: f64,
    /// Mean of `residual` and `kmeans`, each divided by its calibration value: 1.0 is the
    /// calibration quantile.
    pub combined: f64,
}

/// The per-group state that turns row scores into the alerting score: an exponential moving
/// average of the combined score, and its last [`Hyperparameters::hold_rows`] values, whose
/// maximum is the score. Anomalies in server metrics last several rows; averaging lifts a
/// segment above isolated spikes, and holding the peak a few rows keeps a short segment's rows
/// up. Fixed size whatever the stream's length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Smoother {
    average: Option<f64>,
    recent: [f64; MAX_HOLD_ROWS],
    next: usize,
    filled: usize,
}

impl Smoother {
    /// Takes the next row's score of the group; returns the alerting score divided by its
    /// calibration value (1.0 = the calibration quantile of the training rows).
    pub fn push(&mut self, model: &MultivariateModel, row: &RowScore) -> f64 {
        self.push_uncalibrated(&model.hyperparameters, row.combined) / model.calibration.score
    }

    fn push_uncalibrated(&mut self, hp: &Hyperparameters, combined: f64) -> f64 {
        let a = hp.smoothing_alpha;
        let avg = match self.average {
            Some(prev) => a * combined + (1.0 - a) * prev,
            None => combined,
        };
        self.average = Some(avg);
        let hold = hp.hold_rows.clamp(1, MAX_HOLD_ROWS);
        self.recent[self.next] = avg;
        self.next = (self.next + 1) % hold;
        self.filled = (self.filled + 1).min(hold);
        self.recent[..self.filled].iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
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
        if hp.hold_rows == 0 || hp.hold_rows > MAX_HOLD_ROWS {
            return Err(MultivariateError::BadHyperparameter { what: "hold_rows", got: hp.hold_rows, max: MAX_HOLD_ROWS });
        }
        let valid = hp.smoothing_alpha > 0.0 && hp.smoothing_alpha <= 1.0 && hp.residual_floor > 0.0;
        if !valid {
            return Err(MultivariateError::Inconsistent(format!(
                "smoothing_alpha must be in (0, 1] and residual_floor positive, got {} and {}",
                hp.smoothing_alpha, hp.residual_floor
            )));
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
        let (mut pca, kmeans) = pool.install(|| fit_parts(&scaled, &hp))?;
        pca.residual_scale = residual_spread(&scaled, &pca, hp.residual_floor);

        let mut model = MultivariateModel {
            features,
            hyperparameters: hp,
            scaler,
            pca,
            kmeans,
            calibration: Calibration { residual: 1.0, kmeans: 1.0, score: 1.0 },
        };
        model.calibration = model.calibrate(rows);
        Ok(model)
    }

    /// Each part's quantile over the training rows, then the smoothed score's over the same rows
    /// in order (it is made of the calibrated parts, so it comes second).
    fn calibrate(&self, rows: ArrayView2<'_, f64>) -> Calibration {
        let q = self.hyperparameters.calibration_quantile.clamp(0.5, 1.0);
        let scores = self.score_rows(rows);
        // A score that is zero on nearly every training row (a perfect fit) still needs a
        // positive divisor; the floor is far below any score that matters.
        let at_q = |f: &dyn Fn(&RowScore) -> f64| quantile(&mut scores.iter().map(f).collect::<Vec<_>>(), q).max(1e-9);
        let mut cal = Calibration { residual: at_q(&|s| s.residual), kmeans: at_q(&|s| s.kmeans), score: 1.0 };
        let mut smoother = Smoother::default();
        let mut smoothed: Vec<f64> = scores
            .iter()
            .map(|s| smoother.push_uncalibrated(&self.hyperparameters, combine(&cal, s.residual, s.kmeans)))
            .collect();
        cal.score = quantile(&mut smoothed, q).max(1e-9);
        cal
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
        if self.pca.mean.len() != d || self.pca.residual_scale.len() != d || self.pca.components.iter().any(|c| c.len() != d) {
            return bad("the PCA part");
        }
        if self.pca.residual_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(MultivariateError::Inconsistent("a residual scale is not positive".into()));
        }
        let hold = self.hyperparameters.hold_rows;
        if hold == 0 || hold > MAX_HOLD_ROWS || !(self.hyperparameters.smoothing_alpha > 0.0 && self.hyperparameters.smoothing_alpha <= 1.0) {
            return Err(MultivariateError::Inconsistent("smoothing hyperparameters out of range".into()));
        }
        if self.kmeans.centroids.is_empty() || self.kmeans.centroids.iter().any(|c| c.len() != d) {
            return bad("the k-means part");
        }
        if !(self.calibration.residual > 0.0 && self.calibration.kmeans > 0.0 && self.calibration.score > 0.0) {
            return Err(MultivariateError::Inconsistent("calibration must be positive".into()));
        }
        Ok(())
    }

    /// The plain and normalised PCA residual norms and the k-means distance of one row
    /// (`row.len()` must be the model's dimension).
    fn raw_parts(&self, row: &[f64]) -> (f64, f64, f64) {
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

        for (zi, m) in z.iter_mut().zip(&self.pca.mean) {
            *zi -= m;
        }
        // The residual: z minus its projection on each (orthonormal) component. Projections are
        // taken of the centred row, not of the running residual, as in the fit.
        let k = self.pca.components.len();
        let mut pbuf = [0f64; 64];
        let mut pheap;
        let proj: &mut [f64] = if k <= 64 {
            &mut pbuf[..k]
        } else {
            pheap = vec![0f64; k];
            &mut pheap
        };
        for (p, c) in proj.iter_mut().zip(&self.pca.components) {
            *p = z.iter().zip(c).map(|(a, b)| a * b).sum();
        }
        for (p, c) in proj.iter().zip(&self.pca.components) {
            z.iter_mut().zip(c).for_each(|(zi, ci)| *zi -= p * ci);
        }
        let (mut plain, mut normalised) = (0.0, 0.0);
        for (r, s) in z.iter().zip(&self.pca.residual_scale) {
            plain += r * r;
            let n = r / s;
            normalised += n * n;
        }
        (plain.sqrt(), normalised.sqrt(), km.sqrt())
    }

    /// Scores one row on its own (values in `features` order).
    pub fn score_row(&self, row: &[f64]) -> RowScore {
        let (pca, residual, kmeans) = self.raw_parts(row);
        RowScore { pca, residual, kmeans, combined: combine(&self.calibration, residual, kmeans) }
    }

    /// The alerting score of consecutive rows of one group, from a fresh [`Smoother`]: what
    /// [`super::GroupScorer`] computes for the same rows fed one by one. 1.0 is the calibration
    /// quantile of the training rows.
    pub fn score_series(&self, rows: ArrayView2<'_, f64>) -> Vec<f64> {
        let mut smoother = Smoother::default();
        self.score_rows(rows).iter().map(|s| smoother.push(self, s)).collect()
    }

    /// Scores many rows, rayon across chunks of rows; the output is in row order.
    pub fn score_rows(&self, rows: ArrayView2<'_, f64>) -> Vec<RowScore> {
        assert_eq!(rows.ncols(), self.features.len(), "rows must have the model's dimension");
        let std_rows = rows.as_standard_layout();
        let flat = std_rows.as_slice().expect("standard layout is contiguous");
        let d = self.features.len();
        let mut out = vec![RowScore { pca: 0.0, residual: 0.0, kmeans: 0.0, combined: 0.0 }; rows.nrows()];
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
        residual_scale: Vec::new(),
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

/// The mean of the two parts, each against its calibration value.
fn combine(cal: &Calibration, residual: f64, kmeans: f64) -> f64 {
    0.5 * (residual / cal.residual + kmeans / cal.kmeans)
}

/// Root mean square of each feature's PCA residual over the (scaled) training rows, at least
/// `floor` (scaled units: a fraction of the feature's own spread).
fn residual_spread(scaled: &Array2<f64>, pca: &PcaPart, floor: f64) -> Vec<f64> {
    let d = scaled.ncols();
    let mut sum2 = vec![0.0; d];
    let mut z = vec![0.0; d];
    for row in scaled.outer_iter() {
        for ((zi, x), m) in z.iter_mut().zip(row).zip(&pca.mean) {
            *zi = x - m;
        }
        let p: Vec<f64> = pca.components.iter().map(|c| z.iter().zip(c).map(|(a, b)| a * b).sum()).collect();
        for (p, c) in p.iter().zip(&pca.components) {
            z.iter_mut().zip(c).for_each(|(zi, ci)| *zi -= p * ci);
        }
        sum2.iter_mut().zip(&z).for_each(|(s, r)| *s += r * r);
    }
    let n = scaled.nrows().max(1) as f64;
    sum2.iter().map(|s| (s / n).sqrt().max(floor)).collect()
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
