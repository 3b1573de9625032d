//! Where a file's NAB points go at a given threshold: each window with the credit its first
//! detection earned (or its miss cost), and each false-positive row with its weight. The scorer
//! itself is untouched; this reads the same sweep points it scores.

use super::{probation_rows, sweep_points, NabSeries, Profile};

/// One labelled window of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowDetail {
    /// Inclusive row range.
    pub rows: (usize, usize),
    /// First row in the window at or above the threshold, if any.
    pub first_detection: Option<usize>,
    /// What the window contributes: the credit of its first detection, or minus the miss cost.
    /// `None` when the window lies wholly in the probation period (it counts for nothing).
    pub credit: Option<f64>,
    /// Highest score inside the window's scorable rows, and its row (to see how near a miss was).
    pub best: Option<(usize, f64)>,
}

/// One false-positive row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FalsePositive {
    pub row: usize,
    pub score: f64,
    /// Its (negative) contribution.
    pub weight: f64,
}

/// A file's windows and false positives at one threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct FileBreakdown {
    pub windows: Vec<WindowDetail>,
    pub false_positives: Vec<FalsePositive>,
}

impl FileBreakdown {
    /// The file's total, as the scorer computes it.
    pub fn total(&self) -> f64 {
        self.windows.iter().filter_map(|w| w.credit).sum::<f64>() + self.false_positive_cost()
    }

    /// Sum of the false positives' weights (negative or zero).
    pub fn false_positive_cost(&self) -> f64 {
        self.false_positives.iter().map(|f| f.weight).sum()
    }
}

/// Breaks one file's score down at `threshold` under profile `p` (detections are scores at or above
/// the threshold, as in the scorer).
pub fn breakdown(s: &NabSeries, scores: &[f64], p: &Profile, threshold: f64) -> FileBreakdown {
    let probation = probation_rows(s.values.len());
    let points = sweep_points(s, scores, p, 0);
    let mut windows: Vec<WindowDetail> = s
        .windows
        .iter()
        .map(|&rows| WindowDetail { rows, first_detection: None, credit: None, best: None })
        .collect();
    let mut false_positives = Vec::new();
    for (k, pt) in points.iter().enumerate() {
        let row = probation + k;
        let detected = pt.score >= threshold;
        match pt.window {
            Some(w) => {
                let d = &mut windows[w as usize];
                let credit = d.credit.get_or_insert(-p.fn_);
                if detected && d.first_detection.is_none() {
                    d.first_detection = Some(row);
                    *credit = pt.weight;
                }
                if d.best.is_none_or(|(_, b)| pt.score > b) {
                    d.best = Some((row, pt.score));
                }
            }
            None if detected => false_positives.push(FalsePositive { row, score: pt.score, weight: pt.weight }),
            None => {}
        }
    }
    FileBreakdown { windows, false_positives }
}
