//! Anomaly detection on metric series, one streaming detector per series.
//!
//! Takes batches of [`MetricSample`]s; gives [`Anomaly`]s with a score in [0, 1], a severity, a
//! confidence, the expected and observed values, and the detector and model version that produced
//! them. Each series keeps a fixed-size ring of recent values (bounded state, never growing), and a
//! batch is scored with rayon across shards of series, each series touched by one thread, with a
//! deterministic output order.
//!
//! The baseline is robust: the median and the median absolute deviation (MAD) of the ring, with a
//! floor on the scale so a flat line does not divide by zero. The score of a point is
//! `1 - exp(-max(z - 3, 0) / 4)` for its robust z-score, so 3 robust deviations score 0 and about
//! 12 score 0.9 (the default alert threshold). An anomaly is emitted when a series *enters* the
//! anomalous state, not for every point of a run, so a level shift is one anomaly, not hundreds.
//! Values that scored as anomalous are clamped before they enter the ring so one spike does not
//! poison the baseline; after a run of them the new level is accepted as the baseline.
//!
//! Pure: no clock, no I/O. Time comes from the samples.

#![forbid(unsafe_code)]

pub mod multivariate;
pub mod registry;

use cairn_types::{Anomaly, MetricSample, SeriesId, Severity};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Name and version recorded on every anomaly.
pub const DETECTOR: &str = "robust-z";
pub const MODEL_VERSION: &str = "robust-z/1";

const SHARDS: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Recent points kept per series (the baseline window), 3 to 256.
    pub window: usize,
    /// Points a series needs before it is scored.
    pub warmup: usize,
    /// Score at or above which an anomaly is emitted.
    pub alert_score: f64,
    /// Series tracked at most; samples of further new series are counted as refused.
    pub max_series: usize,
    /// Series with no sample for this long (by sample time) are forgotten by `evict_idle`.
    pub idle_evict_ms: i64,
    /// Consecutive anomalous points after which the new level becomes the baseline.
    pub adopt_after: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            window: 32,
            warmup: 8,
            alert_score: 0.9,
            max_series: 200_000,
            idle_evict_ms: 3_600_000,
            adopt_after: 8,
        }
    }
}

/// Counters, for Cairn's own metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorStats {
    pub points_scored: u64,
    pub points_skipped: u64,
    pub out_of_order: u64,
    pub refused_series: u64,
}

#[derive(Debug)]
struct SeriesState {
    ring: Vec<f64>,
    next: usize,
    count: usize,
    last_ts: i64,
    anomalous_run: u32,
}

impl SeriesState {
    fn new(window: usize) -> SeriesState {
        SeriesState { ring: Vec::with_capacity(window), next: 0, count: 0, last_ts: i64::MIN, anomalous_run: 0 }
    }

    fn push(&mut self, v: f64, window: usize) {
        if self.ring.len() < window {
            self.ring.push(v);
        } else {
            self.ring[self.next] = v;
        }
        self.next = (self.next + 1) % window;
        self.count += 1;
    }
}

/// Median of `v` by selection (linear time; reorders `v`). `v` must not be empty.
fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let (left, upper, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        // The lower middle is the largest element left of the upper middle.
        let lower = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// Median and robust scale of the ring.
fn baseline(ring: &[f64]) -> (f64, f64) {
    let mut v = [0f64; 256];
    let v = &mut v[..ring.len().min(256)];
    v.copy_from_slice(&ring[..v.len()]);
    let m = median_in_place(v);
    for x in v.iter_mut() {
        *x = (*x - m).abs();
    }
    let mad = median_in_place(v) * 1.4826;
    // A flat series has MAD 0; a floor relative to the level (and an absolute one) keeps tiny
    // jitter from scoring as anomalous while a real step away from a flat line still does.
    let floor = (m.abs() * 0.01).max(1e-6);
    (m, mad.max(floor))
}

/// Robust z to a score in [0, 1].
pub fn score_from_z(z: f64) -> f64 {
    (1.0 - (-((z - 3.0).max(0.0)) / 4.0).exp()).clamp(0.0, 1.0)
}

#[derive(Debug, Default)]
struct Shard {
    series: HashMap<SeriesId, SeriesState>,
    stats: DetectorStats,
}

/// The streaming detector for all series.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    shards: Vec<Shard>,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Detector {
        let window = cfg.window.clamp(3, 256);
        let cfg = DetectorConfig { window, warmup: cfg.warmup.clamp(3, window), ..cfg };
        Detector { cfg, shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Scores a batch; returns anomalies sorted by series, then time.
    pub fn observe(&mut self, samples: &[MetricSample]) -> Vec<Anomaly> {
        let mut groups: Vec<Vec<(SeriesId, &MetricSample)>> = vec![Vec::new(); SHARDS];
        for s in samples {
            let id = s.labels.series_id();
            groups[(id.0 % SHARDS as u64) as usize].push((id, s));
        }
        let cfg = &self.cfg;
        let per_shard_cap = cfg.max_series.div_ceil(SHARDS);
        let mut out: Vec<Anomaly> = self
            .shards
            .par_iter_mut()
            .zip(groups.par_iter_mut())
            .flat_map_iter(|(shard, group)| {
                group.sort_by_key(|(id, s)| (*id, s.timestamp_ms));
                let mut found = Vec::new();
                for (id, s) in group.iter() {
                    if let Some(a) = shard.score(cfg, per_shard_cap, *id, s) {
                        found.push(a);
                    }
                }
                found
            })
            .collect();
        out.sort_by_key(|a| (a.series, a.timestamp_ms));
        out
    }

    pub fn series_count(&self) -> usize {
        self.shards.iter().map(|s| s.series.len()).sum()
    }

    pub fn stats(&self) -> DetectorStats {
        self.shards.iter().fold(DetectorStats::default(), |mut acc, s| {
            acc.points_scored += s.stats.points_scored;
            acc.points_skipped += s.stats.points_skipped;
            acc.out_of_order += s.stats.out_of_order;
            acc.refused_series += s.stats.refused_series;
            acc
        })
    }

    /// Forgets series whose last sample is older than `idle_evict_ms` before `now_ms`.
    pub fn evict_idle(&mut self, now_ms: i64) -> usize {
        let cutoff = now_ms.saturating_sub(self.cfg.idle_evict_ms);
        let mut n = 0;
        for shard in &mut self.shards {
            let before = shard.series.len();
            shard.series.retain(|_, st| st.last_ts >= cutoff);
            n += before - shard.series.len();
        }
        n
    }
}

impl Shard {
    fn score(&mut self, cfg: &DetectorConfig, cap: usize, id: SeriesId, s: &MetricSample) -> Option<Anomaly> {
        if !s.value.is_finite() {
            self.stats.points_skipped += 1;
            return None;
        }
        if !self.series.contains_key(&id) && self.series.len() >= cap {
            self.stats.refused_series += 1;
            return None;
        }
        let st = self.series.entry(id).or_insert_with(|| SeriesState::new(cfg.window));
        if s.timestamp_ms <= st.last_ts {
            self.stats.out_of_order += 1;
            return None;
        }
        st.last_ts = s.timestamp_ms;
        if st.count < cfg.warmup {
            st.push(s.value, cfg.window);
            return None;
        }
        self.stats.points_scored += 1;
        let (m, scale) = baseline(&st.ring);
        let z = (s.value - m).abs() / scale;
        let score = score_from_z(z);
        let anomalous = score >= cfg.alert_score;
        let entering = anomalous && st.anomalous_run == 0;
        if anomalous {
            st.anomalous_run += 1;
            // Clamp what enters the baseline, until the new level has lasted long enough to be the
            // baseline itself.
            let v = if st.anomalous_run >= cfg.adopt_after { s.value } else { s.value.clamp(m - 3.0 * scale, m + 3.0 * scale) };
            st.push(v, cfg.window);
        } else {
            st.anomalous_run = 0;
            st.push(s.value, cfg.window);
        }
        if !entering {
            return None;
        }
        let warmth = (st.count as f64 / (2 * cfg.warmup) as f64).min(1.0);
        Some(Anomaly {
            series: id,
            labels: s.labels.clone(),
            timestamp_ms: s.timestamp_ms,
            observed: s.value,
            expected: m,
            score,
            severity: if score >= 0.99 { Severity::High } else { Severity::Medium },
            // A heuristic until calibration (a later issue): strong scores on warm baselines.
            confidence: (score * warmth).clamp(0.0, 1.0),
            detector: DETECTOR.into(),
            model_version: MODEL_VERSION.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::Labels;

    fn labels(name: &str) -> Labels {
        [("__name__", name), ("service", "api")].into_iter().collect()
    }

    /// A deterministic noise source (no RNG crate needed).
    fn noise(i: usize) -> f64 {
        let x = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64;
        (x / (1u64 << 31) as f64) - 0.5
    }

    fn series(name: &str, values: impl IntoIterator<Item = f64>) -> Vec<MetricSample> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| MetricSample { labels: labels(name), timestamp_ms: 1_000 + i as i64 * 15_000, value: v })
            .collect()
    }

    #[test]
    fn a_spike_in_a_noisy_stable_series_is_found_at_the_spike() {
        let mut vals: Vec<f64> = (0..100).map(|i| 100.0 + 2.0 * noise(i)).collect();
        vals[70] = 160.0;
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&series("latency", vals));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].timestamp_ms, 1_000 + 70 * 15_000);
        assert!(a[0].score >= 0.9 && a[0].score <= 1.0);
        assert!((a[0].expected - 100.0).abs() < 2.0);
        assert_eq!(a[0].observed, 160.0);
        assert_eq!(a[0].model_version, MODEL_VERSION);
    }

    #[test]
    fn a_level_shift_is_one_anomaly_and_then_the_new_baseline() {
        let vals: Vec<f64> = (0..200).map(|i| if i < 100 { 10.0 } else { 30.0 } + 0.5 * noise(i)).collect();
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&series("queue", vals));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].timestamp_ms, 1_000 + 100 * 15_000);
    }

    #[test]
    fn a_jump_away_from_a_flat_line_is_found() {
        let vals: Vec<f64> = (0..60).map(|i| if i == 50 { 1.0 } else { 0.0 }).collect();
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&series("errors", vals));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].timestamp_ms, 1_000 + 50 * 15_000);
    }

    #[test]
    fn a_slow_clean_seasonal_series_raises_nothing() {
        let vals: Vec<f64> = (0..2000).map(|i| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.5 * noise(i)).collect();
        let mut d = Detector::new(DetectorConfig::default());
        assert!(d.observe(&series("cpu", vals)).is_empty());
    }

    #[test]
    fn scoring_is_deterministic_across_runs_and_batchings() {
        let mut vals: Vec<f64> = (0..300).map(|i| 5.0 + noise(i)).collect();
        vals[150] = 40.0;
        vals[250] = -30.0;
        let mut all = series("a", vals.clone());
        all.extend(series("b", vals.iter().map(|v| v * 2.0)));
        let run = |chunk: usize| {
            let mut d = Detector::new(DetectorConfig::default());
            all.chunks(chunk).flat_map(|c| d.observe(c)).collect::<Vec<_>>()
        };
        let one = run(all.len());
        assert_eq!(one.len(), 4);
        assert_eq!(one, run(all.len()));
        let mut small = run(7);
        small.sort_by_key(|a| (a.series, a.timestamp_ms));
        assert_eq!(one, small);
    }

    #[test]
    fn nan_and_out_of_order_points_are_skipped_and_counted() {
        let mut s = series("x", (0..20).map(|i| i as f64 % 3.0));
        s[10].value = f64::NAN;
        s[12].timestamp_ms = s[11].timestamp_ms;
        let mut d = Detector::new(DetectorConfig::default());
        d.observe(&s);
        let st = d.stats();
        assert_eq!(st.points_skipped, 1);
        assert_eq!(st.out_of_order, 1);
    }

    #[test]
    fn max_series_is_respected_and_state_stays_bounded() {
        let mut d = Detector::new(DetectorConfig { max_series: 32, window: 16, ..Default::default() });
        let mut batch = Vec::new();
        for i in 0..500 {
            let l: Labels = [("__name__", "m".to_string()), ("i", i.to_string())].into_iter().collect();
            for t in 0..40 {
                batch.push(MetricSample { labels: l.clone(), timestamp_ms: t, value: t as f64 });
            }
        }
        d.observe(&batch);
        assert!(d.series_count() <= 32, "{}", d.series_count());
        assert!(d.stats().refused_series > 0);
        for shard in &d.shards {
            for st in shard.series.values() {
                assert!(st.ring.len() <= 16 && st.ring.capacity() <= 16);
            }
        }
        let tracked = d.series_count();
        assert_eq!(d.evict_idle(0), 0, "nothing is idle yet");
        assert_eq!(d.evict_idle(39 + 3_600_000 + 1), tracked);
        assert_eq!(d.series_count(), 0);
    }

    #[test]
    fn selection_median_matches_the_sorted_median() {
        for n in 1..40 {
            let vals: Vec<f64> = (0..n).map(|i| noise(i * 7 + n) * 100.0).collect();
            let mut sorted = vals.clone();
            sorted.sort_by(f64::total_cmp);
            let want = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
            let mut v = vals.clone();
            assert_eq!(median_in_place(&mut v), want, "n = {n}");
        }
    }

    #[test]
    fn score_is_monotonic_and_bounded() {
        let mut last = 0.0;
        for i in 0..1000 {
            let s = score_from_z(i as f64 * 0.1);
            assert!((0.0..=1.0).contains(&s));
            assert!(s >= last);
            last = s;
        }
        assert_eq!(score_from_z(3.0), 0.0);
    }
}
