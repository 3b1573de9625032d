//! Anomaly detection on metric series, one streaming detector per series.
//!
//! Takes [`SampleBatch`]es (samples grouped by series, each series' id computed once at ingest);
//! gives [`Anomaly`]s with a score in [0, 1], a severity, a confidence, the expected and observed
//! values, and the detector and model version that produced them. Owned labels are built only for
//! an emitted anomaly. Each series keeps a fixed-size window of recent values (bounded state, never
//! growing), and a batch is scored with rayon across shards of series, each series touched by one
//! thread, with a deterministic output order.
//!
//! The [`Detector`] is the container (series map, cap, ordering, eviction, counters); how one point
//! of one series is scored is `SeriesModel::update`, the single seam for another model.
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

use cairn_types::{Anomaly, SampleBatch, SeriesId, SeriesSamples, Severity};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hasher};

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

/// What the per-series model made of one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PointVerdict {
    /// Not enough history yet; the point was learnt, not scored.
    Warming,
    /// Scored and within the baseline.
    Normal { score: f64 },
    /// Scored as anomalous. `entering` is true on the first point of an anomalous run: only
    /// that point becomes an [`Anomaly`].
    Anomalous { entering: bool, score: f64, expected: f64, confidence: f64 },
}

/// The per-series model: the one place that knows how a point is scored. The container
/// ([`Detector`]) owns series identity, caps, ordering and eviction and calls only
/// [`SeriesModel::new`] and [`SeriesModel::update`], so another model replaces this one here.
///
/// This one is the robust z-score over a window of recent values. The window is kept twice: in
/// arrival order (a ring, to know which value leaves) and sorted (so the median is read directly
/// and the MAD is a short merge from the middle outwards) — O(window) memory moves per point
/// instead of two selections over a copy.
#[derive(Debug)]
struct SeriesModel {
    ring: Vec<f64>,
    sorted: Vec<f64>,
    next: usize,
    count: usize,
    anomalous_run: u32,
}

impl SeriesModel {
    fn new(cfg: &DetectorConfig) -> SeriesModel {
        SeriesModel {
            ring: Vec::with_capacity(cfg.window),
            sorted: Vec::with_capacity(cfg.window),
            next: 0,
            count: 0,
            anomalous_run: 0,
        }
    }

    /// Scores one finite value that arrived after every earlier one (`_ts` is for models that
    /// look at time; this one does not).
    fn update(&mut self, _ts: i64, value: f64, cfg: &DetectorConfig) -> PointVerdict {
        if self.count < cfg.warmup {
            self.push(value, cfg.window);
            return PointVerdict::Warming;
        }
        let (m, scale) = self.baseline();
        let z = (value - m).abs() / scale;
        let score = score_from_z(z);
        if score < cfg.alert_score {
            self.anomalous_run = 0;
            self.push(value, cfg.window);
            return PointVerdict::Normal { score };
        }
        let entering = self.anomalous_run == 0;
        self.anomalous_run += 1;
        // Clamp what enters the baseline, until the new level has lasted long enough to be the
        // baseline itself.
        let v = if self.anomalous_run >= cfg.adopt_after { value } else { value.clamp(m - 3.0 * scale, m + 3.0 * scale) };
        self.push(v, cfg.window);
        let warmth = (self.count as f64 / (2 * cfg.warmup) as f64).min(1.0);
        // A heuristic until calibration (a later issue): strong scores on warm baselines.
        PointVerdict::Anomalous { entering, score, expected: m, confidence: (score * warmth).clamp(0.0, 1.0) }
    }

    fn push(&mut self, v: f64, window: usize) {
        let to = self.sorted.partition_point(|x| x.total_cmp(&v).is_le());
        if self.ring.len() < window {
            self.ring.push(v);
            self.sorted.insert(to, v);
        } else {
            // The value leaving and the one arriving: one shift of the values between them.
            let old = std::mem::replace(&mut self.ring[self.next], v);
            let from = self.sorted.partition_point(|x| x.total_cmp(&old).is_lt());
            if to > from {
                self.sorted.copy_within(from + 1..to, from);
                self.sorted[to - 1] = v;
            } else {
                self.sorted.copy_within(to..from, to + 1);
                self.sorted[to] = v;
            }
        }
        self.next = (self.next + 1) % window;
        self.count += 1;
    }

    /// Median and robust scale of the window.
    fn baseline(&self) -> (f64, f64) {
        let m = median_of_sorted(&self.sorted);
        let mad = mad_of_sorted(&self.sorted, m) * 1.4826;
        // A flat series has MAD 0; a floor relative to the level (and an absolute one) keeps tiny
        // jitter from scoring as anomalous while a real step away from a flat line still does.
        let floor = (m.abs() * 0.01).max(1e-6);
        (m, mad.max(floor))
    }
}

/// Median of a sorted, non-empty slice.
fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Median of `|x - m|` over a sorted, non-empty slice whose median is `m`. The deviations are two
/// sorted runs — leftwards from the middle and rightwards from it — so the k-th smallest is found
/// by merging them for k steps, without a copy.
fn mad_of_sorted(v: &[f64], m: f64) -> f64 {
    let n = v.len();
    let split = v.partition_point(|x| *x < m);
    let (mut left, mut right) = (split, split);
    let mut take = || {
        let l = (left > 0).then(|| (v[left - 1] - m).abs());
        let r = (right < n).then(|| (v[right] - m).abs());
        match (l, r) {
            (Some(a), Some(b)) if a.total_cmp(&b).is_le() => {
                left -= 1;
                a
            }
            (Some(a), None) => {
                left -= 1;
                a
            }
            (_, Some(b)) => {
                right += 1;
                b
            }
            (None, None) => unreachable!("k < n deviations are taken"),
        }
    };
    // The deviation of rank n/2 (0-based), and the one before it for an even n.
    let mut prev = f64::NAN;
    for _ in 0..n / 2 {
        prev = take();
    }
    let upper = take();
    if n % 2 == 1 { upper } else { (prev + upper) / 2.0 }
}

/// Robust z to a score in [0, 1].
pub fn score_from_z(z: f64) -> f64 {
    (1.0 - (-((z - 3.0).max(0.0)) / 4.0).exp()).clamp(0.0, 1.0)
}

/// One tracked series: when it was last seen and its model.
#[derive(Debug)]
struct Tracked {
    last_ts: i64,
    model: SeriesModel,
}

#[derive(Debug, Default)]
struct Shard {
    series: HashMap<SeriesId, Tracked, BuildSeriesHasher>,
    stats: DetectorStats,
}

/// Series ids are already uniform 64-bit hashes (xxh3 of the label set), so the map only needs them
/// mixed — the shard is chosen by the low bits, which are therefore constant within a shard — not
/// SipHash's keyed cost. A sender crafting colliding label sets gains nothing it could not get by
/// sending many new series, which `max_series` bounds.
#[derive(Clone, Copy, Debug, Default)]
struct BuildSeriesHasher;

#[derive(Debug, Default)]
struct SeriesHasher(u64);

impl BuildHasher for BuildSeriesHasher {
    type Hasher = SeriesHasher;
    fn build_hasher(&self) -> SeriesHasher {
        SeriesHasher(0)
    }
}

impl Hasher for SeriesHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
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

    /// Scores a batch; returns anomalies sorted by series, then time. Within a batch, the points
    /// of one series are taken in time order, however its entries were split or ordered.
    pub fn observe(&mut self, batch: &SampleBatch) -> Vec<Anomaly> {
        let mut groups: Vec<Vec<(SeriesId, u32)>> = vec![Vec::new(); SHARDS];
        for (i, s) in batch.iter().enumerate() {
            groups[(s.id.0 % SHARDS as u64) as usize].push((s.id, i as u32));
        }
        let cfg = &self.cfg;
        let per_shard_cap = cfg.max_series.div_ceil(SHARDS);
        let mut out: Vec<Anomaly> = self
            .shards
            .par_iter_mut()
            .zip(groups.par_iter_mut())
            .flat_map_iter(|(shard, group)| shard.observe(cfg, per_shard_cap, batch, group))
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
    /// Scores this shard's entries of `batch` (`group` holds their positions).
    fn observe(&mut self, cfg: &DetectorConfig, cap: usize, batch: &SampleBatch, group: &mut [(SeriesId, u32)]) -> Vec<Anomaly> {
        // Entries of one series become adjacent, in batch order (the sort is stable).
        group.sort_by_key(|&(id, _)| id);
        let mut found = Vec::new();
        let mut merged: Vec<(i64, f64)> = Vec::new();
        let mut rest = &group[..];
        while let Some(&(id, first)) = rest.first() {
            let series = batch.series(first as usize);
            let same = rest.iter().take_while(|e| e.0 == id).count();
            let points = if same == 1 && series.points.windows(2).all(|w| w[0].0 < w[1].0) {
                series.points
            } else {
                merged.clear();
                merged.extend(rest[..same].iter().flat_map(|&(_, i)| batch.series(i as usize).points.iter().copied()));
                merged.sort_by_key(|p| p.0);
                &merged[..]
            };
            rest = &rest[same..];
            for &(ts, value) in points {
                if let Some(a) = self.score(cfg, cap, &series, ts, value) {
                    found.push(a);
                }
            }
        }
        found
    }

    fn score(&mut self, cfg: &DetectorConfig, cap: usize, series: &SeriesSamples<'_>, ts: i64, value: f64) -> Option<Anomaly> {
        if !value.is_finite() {
            self.stats.points_skipped += 1;
            return None;
        }
        let len = self.series.len();
        let tracked = match self.series.entry(series.id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if len >= cap => {
                self.stats.refused_series += 1;
                return None;
            }
            Entry::Vacant(e) => e.insert(Tracked { last_ts: i64::MIN, model: SeriesModel::new(cfg) }),
        };
        if ts <= tracked.last_ts {
            self.stats.out_of_order += 1;
            return None;
        }
        tracked.last_ts = ts;
        let verdict = tracked.model.update(ts, value, cfg);
        if verdict != PointVerdict::Warming {
            self.stats.points_scored += 1;
        }
        let PointVerdict::Anomalous { entering: true, score, expected, confidence } = verdict else {
            return None;
        };
        Some(Anomaly {
            series: series.id,
            labels: series.to_labels(),
            timestamp_ms: ts,
            observed: value,
            expected,
            score,
            severity: if score >= 0.99 { Severity::High } else { Severity::Medium },
            confidence,
            detector: DETECTOR.into(),
            model_version: MODEL_VERSION.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::{Labels, MetricSample};

    fn labels(name: &str) -> Labels {
        [("__name__", name), ("service", "api")].into_iter().collect()
    }

    /// A deterministic noise source (no RNG crate needed).
    fn noise(i: usize) -> f64 {
        let x = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64;
        (x / (1u64 << 31) as f64) - 0.5
    }

    fn batch(samples: &[MetricSample]) -> SampleBatch {
        samples.iter().collect()
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
        let a = d.observe(&batch(&series("latency", vals)));
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
        let a = d.observe(&batch(&series("queue", vals)));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].timestamp_ms, 1_000 + 100 * 15_000);
    }

    #[test]
    fn a_jump_away_from_a_flat_line_is_found() {
        let vals: Vec<f64> = (0..60).map(|i| if i == 50 { 1.0 } else { 0.0 }).collect();
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&batch(&series("errors", vals)));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].timestamp_ms, 1_000 + 50 * 15_000);
    }

    #[test]
    fn a_slow_clean_seasonal_series_raises_nothing() {
        let vals: Vec<f64> = (0..2000).map(|i| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.5 * noise(i)).collect();
        let mut d = Detector::new(DetectorConfig::default());
        assert!(d.observe(&batch(&series("cpu", vals))).is_empty());
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
            all.chunks(chunk).flat_map(|c| d.observe(&batch(c))).collect::<Vec<_>>()
        };
        let one = run(all.len());
        assert_eq!(one.len(), 4);
        assert_eq!(one, run(all.len()));
        let mut small = run(7);
        small.sort_by_key(|a| (a.series, a.timestamp_ms));
        assert_eq!(one, small);
    }

    #[test]
    fn grouping_and_order_of_points_within_a_batch_do_not_change_the_result() {
        let mut vals: Vec<f64> = (0..120).map(|i| 5.0 + noise(i)).collect();
        vals[90] = 60.0;
        let samples = series("a", vals);
        let points: Vec<(i64, f64)> = samples.iter().map(|s| (s.timestamp_ms, s.value)).collect();
        let per_sample = Detector::new(DetectorConfig::default()).observe(&batch(&samples));
        assert_eq!(per_sample.len(), 1);
        // One entry holding every point, as remote_write sends it.
        let mut grouped = SampleBatch::new();
        grouped.push_series(labels("a").iter(), points.iter().copied());
        assert_eq!(Detector::new(DetectorConfig::default()).observe(&grouped), per_sample);
        // Reversed, and split across two entries of the same series.
        let mut shuffled = SampleBatch::new();
        shuffled.push_series(labels("a").iter(), points[60..].iter().rev().copied());
        shuffled.push_series(labels("a").iter(), points[..60].iter().rev().copied());
        assert_eq!(Detector::new(DetectorConfig::default()).observe(&shuffled), per_sample);
    }

    #[test]
    fn nan_and_out_of_order_points_are_skipped_and_counted() {
        let mut s = series("x", (0..20).map(|i| i as f64 % 3.0));
        s[10].value = f64::NAN;
        s[12].timestamp_ms = s[11].timestamp_ms;
        let mut d = Detector::new(DetectorConfig::default());
        d.observe(&batch(&s));
        let st = d.stats();
        assert_eq!(st.points_skipped, 1);
        assert_eq!(st.out_of_order, 1);
    }

    #[test]
    fn max_series_is_respected_and_state_stays_bounded() {
        let mut d = Detector::new(DetectorConfig { max_series: 32, window: 16, ..Default::default() });
        let mut samples = Vec::new();
        for i in 0..500 {
            let l: Labels = [("__name__", "m".to_string()), ("i", i.to_string())].into_iter().collect();
            for t in 0..40 {
                samples.push(MetricSample { labels: l.clone(), timestamp_ms: t, value: t as f64 });
            }
        }
        d.observe(&batch(&samples));
        assert!(d.series_count() <= 32, "{}", d.series_count());
        assert!(d.stats().refused_series > 0);
        for shard in &d.shards {
            for st in shard.series.values() {
                let m = &st.model;
                assert!(m.ring.len() <= 16 && m.ring.capacity() <= 16);
                assert!(m.sorted.len() <= 16 && m.sorted.capacity() <= 16);
            }
        }
        let tracked = d.series_count();
        assert_eq!(d.evict_idle(0), 0, "nothing is idle yet");
        assert_eq!(d.evict_idle(39 + 3_600_000 + 1), tracked);
        assert_eq!(d.series_count(), 0);
    }

    /// The median and MAD by full sorting, as the definition reads.
    fn reference_baseline(vals: &[f64]) -> (f64, f64) {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
        };
        let m = med(&mut vals.to_vec());
        let mad = med(&mut vals.iter().map(|x| (x - m).abs()).collect());
        (m, mad)
    }

    #[test]
    fn the_sorted_window_gives_the_median_and_mad_of_the_ring_as_it_slides() {
        let cfg = DetectorConfig { window: 7, ..Default::default() };
        for window in [3, 4, 7, 32] {
            let cfg = DetectorConfig { window, ..cfg.clone() };
            let mut model = SeriesModel::new(&cfg);
            for i in 0..200 {
                // Repeats, negatives and zeros, so ties and both signs of deviation occur.
                let v = (noise(i) * 8.0).round() - 1.0;
                model.push(v, window);
                let mut ring_sorted = model.ring.clone();
                ring_sorted.sort_by(f64::total_cmp);
                assert_eq!(model.sorted, ring_sorted, "window {window}, step {i}");
                let (m, mad) = reference_baseline(&model.ring);
                assert_eq!(median_of_sorted(&model.sorted), m, "window {window}, step {i}");
                assert_eq!(mad_of_sorted(&model.sorted, m), mad, "window {window}, step {i}");
            }
        }
        for n in 1..40 {
            let mut vals: Vec<f64> = (0..n).map(|i| noise(i * 7 + n) * 100.0).collect();
            let want = reference_baseline(&vals);
            vals.sort_by(f64::total_cmp);
            let m = median_of_sorted(&vals);
            assert_eq!((m, mad_of_sorted(&vals, m)), want, "n = {n}");
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
