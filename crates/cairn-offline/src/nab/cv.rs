//! Cross-validated NAB: a figure that cannot be tuned to. Files are split into folds, stratified by
//! category and deterministic. For each fold, every tunable (the threshold per profile, and which
//! of the declared candidate configurations) is chosen on the *other* folds, and the fold is scored
//! at that choice. Reported: each held-out fold's normalised score, their mean and spread, the
//! held-out files pooled (overall and per category), and how early inside each window the first
//! detection came. The confidence calibration is refit inside the folds too: fitted on the training
//! folds' onsets, its Brier score is taken on the held-out fold's onsets only.

use super::{
    Brier, FileScore, NabCorpus, Profile, SweepPoint, best_threshold, breakdown, corpus_points, fit_and_check, fnv1a, onsets, score_at,
    scores_by_threshold,
};

/// Fold of each file: within each category (in name order), files are dealt round-robin, the deal
/// continuing where the previous category's ended, so every fold holds some of every large
/// category and the split depends only on the file names.
pub fn stratified_folds(corpus: &NabCorpus, k: usize) -> Vec<usize> {
    redealt_folds(corpus, k, 0)
}

/// [`stratified_folds`] with the files of each category shuffled first by a hash of `deal` and their
/// name (deal 0 keeps name order): another split as deterministic as the first. Averaging over a few
/// deals shows how much of a difference between two configurations is which file fell in which fold.
pub fn redealt_folds(corpus: &NabCorpus, k: usize, deal: u64) -> Vec<usize> {
    let k = k.max(2);
    let key = |i: usize| if deal == 0 { 0 } else { fnv1a(&format!("{deal}/{}", corpus.series[i].name)) };
    let mut fold = vec![0; corpus.series.len()];
    let mut cats: Vec<&str> = corpus.series.iter().map(|s| s.category.as_str()).collect();
    cats.sort_unstable();
    cats.dedup();
    let mut next = 0usize;
    for c in cats {
        let mut idx: Vec<usize> = (0..corpus.series.len()).filter(|&i| corpus.series[i].category == c).collect();
        idx.sort_by(|&a, &b| key(a).cmp(&key(b)).then_with(|| corpus.series[a].name.cmp(&corpus.series[b].name)));
        for i in idx {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// One fold per category ("leave one category out"), and the categories in fold order.
pub fn category_folds(corpus: &NabCorpus) -> (Vec<usize>, Vec<String>) {
    let mut cats: Vec<String> = corpus.series.iter().map(|s| s.category.clone()).collect();
    cats.sort_unstable();
    cats.dedup();
    let fold = corpus.series.iter().map(|s| cats.iter().position(|c| *c == s.category).unwrap_or(0)).collect();
    (fold, cats)
}

/// One held-out fold.
#[derive(Clone, Debug, PartialEq)]
pub struct CvFold {
    pub fold: usize,
    /// Index of the candidate configuration chosen on the other folds, and its threshold.
    pub candidate: usize,
    pub threshold: f64,
    /// The training folds' normalised score at that choice, and the held-out fold's.
    pub train_normalized: f64,
    pub normalized: f64,
    pub files: Vec<usize>,
    /// Labelled windows in the fold. A fold without any has no normalised score (0 by
    /// convention), and is left out of the mean and spread.
    pub windows: usize,
    pub false_positive_rows: usize,
    /// The calibration refit on the training folds, checked on this fold's onsets.
    pub brier: Brier,
}

/// Fits the score → probability map on `train`'s onsets (as `cairn eval nab --calibrate` does) and
/// takes its Brier score on `test`'s.
pub fn held_out_brier(corpus: &NabCorpus, scores: &[Vec<f64>], train: &[usize], test: &[usize]) -> Brier {
    fit_and_check(&onsets(corpus, scores, train), &onsets(corpus, scores, test)).brier
}

/// A profile's cross-validated result.
#[derive(Clone, Debug, PartialEq)]
pub struct CvResult {
    pub profile: Profile,
    pub folds: Vec<CvFold>,
    /// Mean and (population) standard deviation of the held-out folds' normalised scores, over the
    /// folds that hold a window.
    pub mean: f64,
    pub std: f64,
    /// Every file scored at its own fold's choice, pooled and normalised together.
    pub pooled: f64,
    /// Per file, at its fold's choice, in corpus order.
    pub files: Vec<FileScore>,
    /// Per category (sorted): pooled normalised score, windows detected, windows, FP rows.
    pub categories: Vec<(String, f64, usize, usize, usize)>,
    /// Where inside each detected window the first detection came, as a share of the window's
    /// width (0 = its left edge): median and 90th percentile over the held-out windows.
    pub latency_median: Option<f64>,
    pub latency_p90: Option<f64>,
    /// The folds' held-out Brier scores, pooled by onset count (each fold's calibration refit on its
    /// training folds).
    pub brier: Brier,
}

/// Raw score, null score and perfect score of a set of files at `threshold`.
struct Sums {
    raw: f64,
    null: f64,
    perfect: f64,
}

impl Sums {
    fn normalized(&self) -> f64 {
        if self.perfect > self.null { 100.0 * (self.raw - self.null) / (self.perfect - self.null) } else { 0.0 }
    }
}

/// The best threshold over `files` for one candidate's points, and the normalised score there.
fn fit(points: &[Vec<SweepPoint>], zeros: &[Vec<SweepPoint>], files: &[usize], corpus: &NabCorpus, p: &Profile) -> (f64, f64) {
    let all: Vec<SweepPoint> = files.iter().flat_map(|&i| points[i].iter().copied()).collect();
    let best = best_threshold(&scores_by_threshold(&all, corpus.window_count(), p.fn_));
    let sums = Sums { raw: best.score, null: null_of(zeros, files, corpus, p), perfect: perfect_of(files, corpus, p) };
    (best.threshold, sums.normalized())
}

/// The detector that never fires, optimised the same way: what normalisation subtracts.
fn null_of(zeros: &[Vec<SweepPoint>], files: &[usize], corpus: &NabCorpus, p: &Profile) -> f64 {
    let all: Vec<SweepPoint> = files.iter().flat_map(|&i| zeros[i].iter().copied()).collect();
    best_threshold(&scores_by_threshold(&all, corpus.window_count(), p.fn_)).score
}

fn perfect_of(files: &[usize], corpus: &NabCorpus, p: &Profile) -> f64 {
    files.iter().map(|&i| corpus.series[i].windows.len()).sum::<usize>() as f64 * p.tp
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Cross-validates one profile. `candidates[c][i]` is candidate configuration `c`'s score per row
/// of `corpus.series[i]`; `fold_of[i]` is file `i`'s fold.
pub fn cross_validate(corpus: &NabCorpus, candidates: &[Vec<Vec<f64>>], fold_of: &[usize], p: &Profile) -> CvResult {
    let points: Vec<Vec<Vec<SweepPoint>>> = candidates.iter().map(|scores| corpus_points(corpus, scores, p)).collect();
    let zero_scores: Vec<Vec<f64>> = corpus.series.iter().map(|s| vec![0.0; s.values.len()]).collect();
    let zeros = corpus_points(corpus, &zero_scores, p);
    let k = fold_of.iter().copied().max().map_or(0, |m| m + 1);
    let mut folds = Vec::new();
    let mut files: Vec<FileScore> = vec![FileScore::default(); corpus.series.len()];
    let mut chosen: Vec<(usize, f64)> = vec![(0, 1.1); corpus.series.len()];
    for f in 0..k {
        let test: Vec<usize> = (0..fold_of.len()).filter(|&i| fold_of[i] == f).collect();
        let train: Vec<usize> = (0..fold_of.len()).filter(|&i| fold_of[i] != f).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let (mut best_c, mut best) = (0usize, (1.1, f64::NEG_INFINITY));
        for (c, pts) in points.iter().enumerate() {
            let got = fit(pts, &zeros, &train, corpus, p);
            if got.1 > best.1 {
                (best_c, best) = (c, got);
            }
        }
        let threshold = best.0;
        let mut raw = 0.0;
        for &i in &test {
            files[i] = score_at(&points[best_c][i], threshold, p.fn_);
            chosen[i] = (best_c, threshold);
            raw += files[i].score;
        }
        let sums = Sums { raw, null: null_of(&zeros, &test, corpus, p), perfect: perfect_of(&test, corpus, p) };
        let windows = test.iter().map(|&i| corpus.series[i].windows.len()).sum();
        let false_positive_rows = test.iter().map(|&i| files[i].false_positive_rows).sum();
        let brier = held_out_brier(corpus, &candidates[best_c], &train, &test);
        folds.push(CvFold {
            fold: f,
            candidate: best_c,
            threshold,
            train_normalized: best.1,
            normalized: sums.normalized(),
            files: test,
            windows,
            false_positive_rows,
            brier,
        });
    }
    let scored: Vec<f64> = folds.iter().filter(|f| f.windows > 0).map(|f| f.normalized).collect();
    let n = scored.len().max(1) as f64;
    let mean = scored.iter().sum::<f64>() / n;
    let std = (scored.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let pooled_of = |idx: &[usize]| {
        Sums { raw: idx.iter().map(|&i| files[i].score).sum(), null: null_of(&zeros, idx, corpus, p), perfect: perfect_of(idx, corpus, p) }
            .normalized()
    };
    let all: Vec<usize> = (0..corpus.series.len()).collect();
    let pooled = pooled_of(&all);
    let mut cats: Vec<String> = corpus.series.iter().map(|s| s.category.clone()).collect();
    cats.sort_unstable();
    cats.dedup();
    let categories = cats
        .into_iter()
        .map(|c| {
            let idx: Vec<usize> = all.iter().copied().filter(|&i| corpus.series[i].category == c).collect();
            let det = idx.iter().map(|&i| files[i].windows_detected).sum();
            let total = idx.iter().map(|&i| files[i].windows_detected + files[i].windows_missed).sum();
            let fp = idx.iter().map(|&i| files[i].false_positive_rows).sum();
            (c, pooled_of(&idx), det, total, fp)
        })
        .collect();
    let mut lat: Vec<f64> = Vec::new();
    for (i, s) in corpus.series.iter().enumerate() {
        let (c, threshold) = chosen[i];
        for w in breakdown::breakdown(s, &candidates[c][i], p, threshold).windows {
            if let Some(row) = w.first_detection {
                let width = (w.rows.1 - w.rows.0 + 1) as f64;
                lat.push((row - w.rows.0) as f64 / width);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let emitted: usize = folds.iter().map(|f| f.brier.onsets).sum();
    let pool = |part: fn(&Brier) -> f64| folds.iter().map(|f| part(&f.brier) * f.brier.onsets as f64).sum::<f64>() / emitted.max(1) as f64;
    let brier = Brier { onsets: emitted, calibrated: pool(|b| b.calibrated), raw: pool(|b| b.raw), base_rate: pool(|b| b.base_rate) };
    CvResult {
        profile: *p,
        folds,
        mean,
        std,
        pooled,
        files,
        categories,
        latency_median: quantile(&lat, 0.5),
        latency_p90: quantile(&lat, 0.9),
        brier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nab::NabSeries;

    fn series(category: &str, name: &str, values: Vec<f64>, windows: Vec<(usize, usize)>) -> NabSeries {
        let n = values.len();
        NabSeries {
            category: category.into(),
            name: name.into(),
            timestamp_text: (0..n).map(|i| i.to_string()).collect(),
            timestamps_ms: (0..n as i64).map(|i| i * 300_000).collect(),
            values,
            windows,
        }
    }

    fn corpus() -> NabCorpus {
        let mut series_list = Vec::new();
        for c in ["a", "b"] {
            for f in 0..5 {
                series_list.push(series(c, &format!("{c}{f}"), vec![0.0; 400], vec![(300, 340)]));
            }
        }
        NabCorpus { series: series_list }
    }

    #[test]
    fn folds_are_stratified_deterministic_and_cover_every_file() {
        let c = corpus();
        let f = stratified_folds(&c, 5);
        assert_eq!(f, stratified_folds(&c, 5));
        for k in 0..5 {
            let members: Vec<&str> = (0..10).filter(|&i| f[i] == k).map(|i| c.series[i].category.as_str()).collect();
            assert_eq!(members.len(), 2, "fold {k}: {members:?}");
        }
        // Another deal is another split, as stratified and as reproducible.
        let g = redealt_folds(&c, 5, 1);
        assert_eq!(g, redealt_folds(&c, 5, 1));
        assert_ne!(g, f);
        for k in 0..5 {
            assert_eq!((0..10).filter(|&i| g[i] == k).count(), 2);
        }
        let (loco, cats) = category_folds(&c);
        assert_eq!(cats, ["a", "b"]);
        assert!(loco[..5].iter().all(|&x| x == 0) && loco[5..].iter().all(|&x| x == 1));
    }

    #[test]
    fn the_threshold_is_chosen_on_the_other_folds_and_a_perfect_detector_scores_100_held_out() {
        let c = corpus();
        // A detector that fires exactly at each window's left edge, and a useless one.
        let perfect: Vec<Vec<f64>> = c.series.iter().map(|s| (0..s.values.len()).map(|i| if i == s.windows[0].0 { 0.9 } else { 0.0 }).collect()).collect();
        let useless: Vec<Vec<f64>> = c.series.iter().map(|s| vec![0.5; s.values.len()]).collect();
        let folds = stratified_folds(&c, 5);
        let r = cross_validate(&c, &[useless.clone(), perfect.clone()], &folds, &crate::nab::PROFILES[0]);
        assert_eq!(r.folds.len(), 5);
        assert!(r.folds.iter().all(|f| f.candidate == 1), "the better candidate is chosen on the training folds");
        assert!((r.mean - 100.0).abs() < 1e-9 && r.std < 1e-9, "{r:?}");
        assert_eq!(r.latency_median, Some(0.0), "detected at the left edge");
        assert_eq!(r.brier.onsets, 10, "one onset per file, each in its window");
        // The useless one alone scores nothing held out.
        let r = cross_validate(&c, &[useless], &folds, &crate::nab::PROFILES[0]);
        assert!(r.mean <= 0.0 + 1e-9, "{}", r.mean);
    }

    #[test]
    fn the_calibration_is_fitted_on_the_training_folds_and_checked_on_the_held_out_one() {
        let c = corpus();
        // Training files: an onset at 0.9 inside the window and one at 0.2 outside. The held-out
        // file's 0.9 onset is outside its window: a map fitted on the training files says ~1 there,
        // so its held-out Brier is ~1, where a map that had seen the held-out file would do better.
        let held_out = 3usize;
        let scores: Vec<Vec<f64>> = (0..c.series.len())
            .map(|i| {
                let mut v = vec![0.0; 400];
                if i == held_out {
                    v[100] = 0.9;
                } else {
                    v[310] = 0.9;
                    v[100] = 0.2;
                }
                v
            })
            .collect();
        let train: Vec<usize> = (0..c.series.len()).filter(|&i| i != held_out).collect();
        let b = held_out_brier(&c, &scores, &train, &[held_out]);
        assert_eq!(b.onsets, 1);
        assert!(b.calibrated > 0.99, "{b:?}");
        assert!((b.base_rate - 0.25).abs() < 1e-9, "training base rate 0.5, squared: {b:?}");
        // Rows in probation are not onsets that count.
        let mut early = scores.clone();
        early[held_out] = vec![0.0; 400];
        early[held_out][10] = 0.9;
        assert_eq!(held_out_brier(&c, &early, &train, &[held_out]).onsets, 0);
    }
}
