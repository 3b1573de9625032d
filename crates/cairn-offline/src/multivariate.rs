//! `cairn eval multivariate`: for every `<name>_train.*` / `<name>_test.*` pair under a folder,
//! fit on the train file only, score the test file, and measure against its `label` column.
//!
//! Measures are point-wise: AUC-PR as average precision (the step-wise area, as scikit-learn's
//! `average_precision_score`, ties taken together) and the best F1 over all thresholds. Never
//! point-adjusted F1: on these corpora it rewards a random score with 0.97. Beside the score Cairn
//! alerts on (the smoothed combined score), plain per-row PCA reconstruction error and k-means
//! distance are reported alone, unsmoothed, as baselines on the same split, with an
//! IsolationForest ([`crate::iforest`]) fitted on the same train rows.

use crate::dataset::read_table;
use crate::iforest::{ForestParams, IsolationForest};
use crate::OfflineError;
use cairn_detect::multivariate::{Hyperparameters, MultivariateModel};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A machine's train and test files.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub name: String,
    pub train: PathBuf,
    pub test: PathBuf,
}

/// AUC-PR and best F1 of one score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measures {
    pub auc_pr: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineResult {
    pub name: String,
    /// The model's smoothed score (what Cairn alerts on, `MultivariateModel::score_series`).
    pub auc_pr: f64,
    pub f1: f64,
    pub test_rows: usize,
    pub anomalous_rows: usize,
    /// PCA reconstruction error alone.
    pub pca: Measures,
    /// Distance to the nearest k-means centroid alone.
    pub kmeans: Measures,
    /// IsolationForest fitted on the same train rows (the paper's defaults, fixed seed).
    pub isolation_forest: Measures,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overall {
    pub machines: usize,
    /// Means over machines (each machine weighs the same).
    pub auc_pr: f64,
    pub f1: f64,
    pub pca: Measures,
    pub kmeans: Measures,
    pub isolation_forest: Measures,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub machines: Vec<MachineResult>,
    pub overall: Overall,
}

/// Pairs under `dir` (searched recursively), sorted by path. A train file without its test file
/// is an error, so a typo does not silently shrink the evaluation.
pub fn find_pairs(dir: &Path) -> Result<Vec<Pair>, OfflineError> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut pairs = Vec::new();
    for train in &files {
        let Some(fname) = train.file_name().and_then(|f| f.to_str()) else { continue };
        for ext in ["parquet", "csv"] {
            if let Some(name) = fname.strip_suffix(&format!("_train.{ext}")) {
                let test = train.with_file_name(format!("{name}_test.{ext}"));
                if !test.is_file() {
                    return Err(OfflineError::Data { path: train.clone(), detail: format!("no {name}_test.{ext} beside it") });
                }
                pairs.push(Pair { name: name.to_string(), train: train.clone(), test });
            }
        }
    }
    if pairs.is_empty() {
        return Err(OfflineError::Data { path: dir.into(), detail: "no *_train.parquet / *_test.parquet pairs".into() });
    }
    Ok(pairs)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), OfflineError> {
    let entries = std::fs::read_dir(dir).map_err(|source| OfflineError::Io { path: dir.into(), source })?;
    for e in entries {
        let p = e.map_err(|source| OfflineError::Io { path: dir.into(), source })?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Fits on `pair.train`, scores `pair.test`.
pub fn evaluate_pair(pair: &Pair, hp: &Hyperparameters) -> Result<MachineResult, OfflineError> {
    let train = read_table(&pair.train)?;
    let test = read_table(&pair.test)?;
    let labels = test
        .labels
        .ok_or_else(|| OfflineError::Data { path: pair.test.clone(), detail: "no `label` column".into() })?;
    if test.features != train.features {
        return Err(OfflineError::Data { path: pair.test.clone(), detail: "features differ from the train file's".into() });
    }
    let model = MultivariateModel::fit(train.features, train.rows.view(), hp.clone())?;
    let scores = model.score_rows(test.rows.view());
    let measure_scores = |s: &[f64]| Measures { auc_pr: average_precision(s, &labels), f1: best_f1(s, &labels) };
    let measure = |f: fn(&cairn_detect::multivariate::RowScore) -> f64| measure_scores(&scores.iter().map(f).collect::<Vec<_>>());
    // What Cairn alerts on: the test rows in order through one group's smoother.
    let combined = measure_scores(&model.score_series(test.rows.view()));
    let forest = IsolationForest::fit(train.rows.view(), ForestParams::default());
    let forest_scores: Vec<f64> = test.rows.outer_iter().map(|r| forest.score(&r.to_vec())).collect();
    Ok(MachineResult {
        name: pair.name.clone(),
        auc_pr: combined.auc_pr,
        f1: combined.f1,
        test_rows: labels.len(),
        anomalous_rows: labels.iter().filter(|l| **l).count(),
        pca: measure(|s| s.pca),
        kmeans: measure(|s| s.kmeans),
        isolation_forest: measure_scores(&forest_scores),
    })
}

/// Evaluates every pair, machines in parallel (rayon); `progress` is called as each finishes with
/// (finished so far, total, result). Results are in pair order.
pub fn evaluate_pairs(
    pairs: &[Pair],
    hp: &Hyperparameters,
    progress: &(dyn Fn(usize, usize, &MachineResult) + Sync),
) -> Result<Report, OfflineError> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let machines = pairs
        .par_iter()
        .map(|p| {
            let r = evaluate_pair(p, hp)?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            progress(n, pairs.len(), &r);
            Ok(r)
        })
        .collect::<Result<Vec<_>, OfflineError>>()?;
    let mean = |f: &dyn Fn(&MachineResult) -> f64| machines.iter().map(f).sum::<f64>() / machines.len().max(1) as f64;
    let overall = Overall {
        machines: machines.len(),
        auc_pr: mean(&|m| m.auc_pr),
        f1: mean(&|m| m.f1),
        pca: Measures { auc_pr: mean(&|m| m.pca.auc_pr), f1: mean(&|m| m.pca.f1) },
        kmeans: Measures { auc_pr: mean(&|m| m.kmeans.auc_pr), f1: mean(&|m| m.kmeans.f1) },
        isolation_forest: Measures { auc_pr: mean(&|m| m.isolation_forest.auc_pr), f1: mean(&|m| m.isolation_forest.f1) },
    };
    Ok(Report { machines, overall })
}

/// Rows ordered by descending score, cut into runs of equal score: (true positives, rows) per run.
fn runs(scores: &[f64], labels: &[bool]) -> Vec<(usize, usize)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut last = None;
    for i in idx {
        let s = scores[i];
        if last.is_some_and(|l: f64| l.total_cmp(&s).is_eq()) {
            let r = out.last_mut().expect("a run is open");
            r.0 += labels[i] as usize;
            r.1 += 1;
        } else {
            out.push((labels[i] as usize, 1));
            last = Some(s);
        }
    }
    out
}

/// Average precision: Σ (recallₖ − recallₖ₋₁) · precisionₖ over descending thresholds. 0 when
/// there are no positive rows.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|l| **l).count();
    if positives == 0 {
        return 0.0;
    }
    let (mut tp, mut seen, mut ap) = (0usize, 0usize, 0.0);
    for (run_tp, run_n) in runs(scores, labels) {
        tp += run_tp;
        seen += run_n;
        ap += (run_tp as f64 / positives as f64) * (tp as f64 / seen as f64);
    }
    ap
}

/// The best point-wise F1 over all thresholds.
pub fn best_f1(scores: &[f64], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|l| **l).count();
    let (mut tp, mut seen, mut best) = (0usize, 0usize, 0.0f64);
    for (run_tp, run_n) in runs(scores, labels) {
        tp += run_tp;
        seen += run_n;
        let fp = seen - tp;
        let fneg = positives - tp;
        if tp > 0 {
            best = best.max(2.0 * tp as f64 / (2 * tp + fp + fneg) as f64);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_matches_hand_computed_values() {
        // Perfect ranking.
        assert_eq!(average_precision(&[0.9, 0.8, 0.1, 0.0], &[true, true, false, false]), 1.0);
        // scikit-learn: average_precision_score([1,0,1,0], [0.9,0.8,0.7,0.1]) = 0.8333…
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]);
        assert!((ap - (0.5 * 1.0 + 0.5 * (2.0 / 3.0))).abs() < 1e-12, "{ap}");
        // Ties count together: one run of four rows with two positives has precision 0.5.
        assert_eq!(average_precision(&[1.0; 4], &[true, false, true, false]), 0.5);
        assert_eq!(average_precision(&[1.0, 0.0], &[false, false]), 0.0);
    }

    #[test]
    fn best_f1_finds_the_best_threshold_and_is_not_point_adjusted() {
        // Cut after two rows: tp 2, fp 0, fn 1 → 0.8; after four: tp 3, fp 1, fn 0 → 6/7, the best.
        let f = best_f1(&[0.9, 0.8, 0.3, 0.2, 0.1], &[true, true, false, true, false]);
        assert!((f - 6.0 / 7.0).abs() < 1e-12, "{f}");
        // One hit inside a long anomalous segment earns one row, not the whole segment.
        let mut labels = vec![true; 10];
        labels.extend(vec![false; 90]);
        let mut scores = vec![0.0; 100];
        scores[5] = 1.0;
        let f = best_f1(&scores, &labels);
        assert!(f < 0.2, "{f}");
    }
}
