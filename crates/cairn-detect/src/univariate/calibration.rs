//! Calibrated confidence: a monotone map from score to the probability that a point is anomalous.
//!
//! The map is fitted offline by isotonic regression (pool-adjacent-violators) of "the onset lies in a
//! labelled anomaly window" on the score at episode onsets (the points emitted as anomalies), over one
//! half of the NAB development files, and checked on the other half with a reliability table and the Brier score (`cairn eval nab --calibrate`, which
//! also writes `models/univariate-calibration.json` and the generated `calibration_table.rs`).
//! `cairn eval nab --folds` refits it inside each fold, on the training folds only, and reports its
//! Brier score on the held-out onsets. At run time it is a linear interpolation between the fitted
//! knots.

use super::calibration_table::KNOTS;

/// The calibrated probability for a score, by linear interpolation between the fitted knots. Below
/// the lowest fitted score (scores under the alert score, which are never emitted, so there is no
/// data there) it falls linearly to 0 at score 0: a point where nothing stands out is not claimed to
/// be anomalous.
pub fn confidence(score: f64) -> f64 {
    match KNOTS.first() {
        Some(&(s0, p0)) if score < s0 && s0 > 0.0 => p0 * (score.max(0.0) / s0),
        _ => interpolate(KNOTS, score),
    }
}

/// Linear interpolation in `knots` (score ascending); flat beyond the ends.
pub fn interpolate(knots: &[(f64, f64)], score: f64) -> f64 {
    let Some(&(first_s, first_p)) = knots.first() else {
        return 0.0;
    };
    if score <= first_s {
        return first_p;
    }
    for w in knots.windows(2) {
        let ((s0, p0), (s1, p1)) = (w[0], w[1]);
        if score <= s1 {
            if s1 <= s0 {
                return p1;
            }
            return p0 + (p1 - p0) * (score - s0) / (s1 - s0);
        }
    }
    knots.last().map_or(0.0, |k| k.1)
}

/// Fits knots by isotonic regression of `label` on `score`. Scores are first pooled into `bins` equal
/// bins of [0, 1] (the table stays small); each knot is the mean score and the fitted probability of
/// a block of pooled bins.
pub fn fit_isotonic(pairs: impl IntoIterator<Item = (f64, bool)>, bins: usize) -> Vec<(f64, f64)> {
    let bins = bins.max(1);
    // Per bin: (sum of scores, positives, count).
    let mut acc = vec![(0.0f64, 0.0f64, 0.0f64); bins];
    for (s, y) in pairs {
        let b = ((s.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        acc[b].0 += s;
        acc[b].1 += if y { 1.0 } else { 0.0 };
        acc[b].2 += 1.0;
    }
    // Pool adjacent violators over the non-empty bins: blocks of (score sum, positives, count).
    let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
    for b in acc.into_iter().filter(|b| b.2 > 0.0) {
        blocks.push(b);
        while blocks.len() >= 2 {
            let (l, r) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
            if l.1 / l.2 <= r.1 / r.2 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (l.0 + r.0, l.1 + r.1, l.2 + r.2);
        }
    }
    blocks.into_iter().map(|(s, p, n)| (s / n, p / n)).collect()
}

/// Brier score of predicted probabilities against outcomes (lower is better).
pub fn brier(pairs: impl IntoIterator<Item = (f64, bool)>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (p, y) in pairs {
        let t = if y { 1.0 } else { 0.0 };
        sum += (p - t) * (p - t);
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// One row of a reliability table: predictions in `[lo, hi)`, their mean, and the observed rate.
#[derive(Clone, Debug, PartialEq)]
pub struct ReliabilityRow {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Groups (predicted probability, outcome) pairs into the given probability edges.
pub fn reliability(pairs: impl IntoIterator<Item = (f64, bool)>, edges: &[f64]) -> Vec<ReliabilityRow> {
    let mut rows: Vec<ReliabilityRow> = edges
        .windows(2)
        .map(|w| ReliabilityRow { lo: w[0], hi: w[1], count: 0, mean_predicted: 0.0, observed_rate: 0.0 })
        .collect();
    for (p, y) in pairs {
        let last = rows.len().saturating_sub(1);
        if let Some(row) = rows.iter_mut().enumerate().find(|(i, r)| p < r.hi || *i == last).map(|(_, r)| r) {
            row.count += 1;
            row.mean_predicted += p;
            row.observed_rate += if y { 1.0 } else { 0.0 };
        }
    }
    for r in &mut rows {
        if r.count > 0 {
            r.mean_predicted /= r.count as f64;
            r.observed_rate /= r.count as f64;
        }
    }
    rows
}
