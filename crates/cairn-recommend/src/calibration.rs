//! Confidence that means something: the probability that a recommendation's action is the right
//! one, read off a monotone map of its uncalibrated confidence (the signature fit times the
//! playbook's prior).
//!
//! The map is fitted offline by isotonic regression ([`fit`]) on labelled incidents (`cairn eval
//! triage --calibrate` replays them and writes [`TABLE`]); each block of the fit keeps a Jeffreys
//! half-count either way, so that no block says 0 or 1 from a handful of cases. A block holds its
//! share from its lowest input to its highest; between blocks the map is linear, so more evidence
//! never lowers confidence. (Knots at the blocks' mean inputs instead scored worse held out: Brier
//! 0.027 against 0.006, leaving one recording out; and no better on the incident kinds the corpus
//! lacks, `cairn eval triage --synth`: 0.037 against 0.038. They would lift a warning-level
//! noisy-neighbour drain from 0.01 to 0.57, and fifteen wrong proposals of fit 0.6 from 0.01 to
//! 0.33.) Its version is the table's content hash,
//! recorded on every recommendation it shaped.

use sha2::{Digest, Sha256};

/// One knot of the map: at uncalibrated confidence `raw`, the share of right actions `p`, from `n`
/// labelled recommendations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knot {
    pub raw: f64,
    pub p: f64,
    pub n: usize,
}

/// A fitted map, monotone in `raw`.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub knots: Vec<Knot>,
}

pub use crate::calibration_table::TABLE;

impl Calibration {
    /// The embedded map (`calibration_table.rs`).
    pub fn embedded() -> Calibration {
        Calibration { knots: TABLE.iter().map(|&(raw, p, n)| Knot { raw, p, n }).collect() }
    }

    /// `conf-` and the first 12 hex digits of the knots' hash; `conf-none` for an empty map.
    pub fn version(&self) -> String {
        if self.knots.is_empty() {
            return "conf-none".into();
        }
        let text: Vec<String> = self.knots.iter().map(|k| format!("{:.6}:{:.6}:{}", k.raw, k.p, k.n)).collect();
        format!("conf-{}", &hex::encode(Sha256::digest(text.join(",").as_bytes()))[..12])
    }

    /// The probability that an action of uncalibrated confidence `raw` is right: linear between
    /// knots, flat beyond them; `raw` itself when there is no map.
    pub fn apply(&self, raw: f64) -> f64 {
        let k = &self.knots;
        let (Some(first), Some(last)) = (k.first(), k.last()) else { return raw };
        if raw <= first.raw {
            return first.p;
        }
        if raw >= last.raw {
            return last.p;
        }
        for w in k.windows(2) {
            if raw <= w[1].raw {
                let span = w[1].raw - w[0].raw;
                let f = if span > 0.0 { (raw - w[0].raw) / span } else { 1.0 };
                return w[0].p + f * (w[1].p - w[0].p);
            }
        }
        last.p
    }
}

/// Fits the map to `(raw, right)` pairs: pool-adjacent-violators over the pairs sorted by `raw`,
/// each block then `(right + 0.5) / (n + 1)` from its lowest `raw` to its highest.
pub fn fit(points: &[(f64, bool)]) -> Calibration {
    let mut pts: Vec<(f64, bool)> = points.iter().copied().filter(|p| p.0.is_finite()).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Blocks: (lowest raw, highest raw, right, n); merged while a block's share is not above the
    // one before.
    let mut blocks: Vec<(f64, f64, f64, usize)> = Vec::new();
    for (raw, right) in pts {
        blocks.push((raw, raw, if right { 1.0 } else { 0.0 }, 1));
        while blocks.len() >= 2 {
            let (b, a) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
            if a.2 / a.3 as f64 >= b.2 / b.3 as f64 {
                blocks.pop();
                let last = blocks.len() - 1;
                blocks[last] = (a.0, b.1, a.2 + b.2, a.3 + b.3);
            } else {
                break;
            }
        }
    }
    let mut knots: Vec<Knot> = Vec::new();
    for (lo, hi, right, n) in blocks {
        let p = (right + 0.5) / (n as f64 + 1.0);
        // The half-counts can reorder a small block against a large one: keep the map monotone.
        let p = knots.last().map_or(p, |k: &Knot| p.max(k.p));
        knots.push(Knot { raw: lo, p, n });
        if hi > lo {
            knots.push(Knot { raw: hi, p, n });
        }
    }
    Calibration { knots }
}

/// Brier score and expected calibration error (ten equal-width bins) of `(p, right)` pairs.
pub fn scores(pairs: &[(f64, bool)]) -> (f64, f64) {
    if pairs.is_empty() {
        return (0.0, 0.0);
    }
    let y = |r: bool| if r { 1.0 } else { 0.0 };
    let n = pairs.len() as f64;
    let brier = pairs.iter().map(|(p, r)| (p - y(*r)).powi(2)).sum::<f64>() / n;
    let mut ece = 0.0;
    for b in 0..10 {
        let lo = b as f64 / 10.0;
        let bin: Vec<&(f64, bool)> = pairs.iter().filter(|(p, _)| *p >= lo && (*p < lo + 0.1 || (b == 9 && *p <= 1.0))).collect();
        if bin.is_empty() {
            continue;
        }
        let k = bin.len() as f64;
        let mean_p = bin.iter().map(|x| x.0).sum::<f64>() / k;
        let acc = bin.iter().map(|x| y(x.1)).sum::<f64>() / k;
        ece += k / n * (mean_p - acc).abs();
    }
    (brier, ece)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_is_monotone_and_never_certain() {
        let pts = [(0.2, false), (0.25, false), (0.3, true), (0.35, false), (0.6, true), (0.7, true), (0.72, true)];
        let c = fit(&pts);
        // 0.3 right and 0.35 wrong violate the order: pooled into one block. Three blocks, each
        // from its lowest input to its highest.
        let ends: Vec<f64> = c.knots.iter().map(|k| k.raw).collect();
        assert_eq!(ends, [0.2, 0.25, 0.3, 0.35, 0.6, 0.72], "{c:?}");
        assert!(c.knots.windows(2).all(|w| w[0].p <= w[1].p), "{c:?}");
        assert!((c.knots[0].p - 0.5 / 3.0).abs() < 1e-12, "two wrong of two: 0.5 / 3, not 0");
        assert!((c.knots[5].p - 3.5 / 4.0).abs() < 1e-12, "three right of three: 3.5 / 4, not 1");
        assert_eq!(c.apply(0.22), c.knots[0].p, "flat within a block");
        assert!((c.apply(0.475) - (c.knots[3].p + c.knots[4].p) / 2.0).abs() < 1e-12, "linear between blocks");
        let mut last = 0.0;
        for i in 0..=100 {
            let p = c.apply(i as f64 / 100.0);
            assert!(p >= last && (0.0..1.0).contains(&p), "{i}: {p}");
            last = p;
        }
    }

    #[test]
    fn no_map_leaves_confidence_as_it_is_and_the_version_names_the_table() {
        let none = Calibration { knots: vec![] };
        assert_eq!(none.apply(0.42), 0.42);
        assert_eq!(none.version(), "conf-none");
        let a = fit(&[(0.2, false), (0.7, true)]);
        let b = fit(&[(0.2, false), (0.8, true)]);
        assert!(a.version().starts_with("conf-") && a.version() != b.version());
    }

    #[test]
    fn brier_and_ece_of_a_perfect_and_a_hedging_forecast() {
        assert_eq!(scores(&[(1.0, true), (0.0, false)]), (0.0, 0.0));
        let (brier, ece) = scores(&[(0.5, true), (0.5, false)]);
        assert!((brier - 0.25).abs() < 1e-12 && ece.abs() < 1e-12);
    }
}
