//! Anomaly detection on metric series, one streaming model per series.
//!
//! Takes [`SampleBatch`]es (samples grouped by series, each series' id computed once at ingest);
//! gives [`Anomaly`]s with a score in [0, 1], a severity, a calibrated confidence, the kind of
//! anomaly, the expected and observed values, and the detector and model version that produced
//! them. Owned labels are built only for an emitted anomaly. A batch is scored with rayon across
//! shards of series, each series touched by one thread, with a deterministic output order.
//!
//! The [`Detector`] is the container (series table, cap, ordering, eviction, counters; the table is
//! laid out for memory, see `table.rs`); how one point
//! of one series is scored is [`univariate::SeriesModel`] (fixed size, no heap: seasonality-aware
//! baselines, spikes, level shifts, drifts, flat lines, gaps). An anomaly is emitted at the *onset*
//! of an anomalous episode, not for every point of it, so a level shift is one anomaly, not hundreds.
//!
//! Pure: no clock, no I/O. Time comes from the samples.

#![forbid(unsafe_code)]

pub mod multivariate;
pub mod registry;
pub mod state;
mod table;
pub mod univariate;

use cairn_types::{Anomaly, SampleBatch, SeriesId, SeriesSamples};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Name and version recorded on every anomaly: the univariate model's.
pub use univariate::{DETECTOR, MODEL_VERSION};

const SHARDS: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Series tracked at most; samples of further new series are counted as refused.
    pub max_series: usize,
    /// Series with no sample for this long (by sample time) are forgotten by `evict_idle`.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub idle_evict_ms: i64,
    /// The per-series model's tuning (`[detect.univariate]`); the defaults are what `cairn eval nab`
    /// measures.
    pub univariate: univariate::UnivariateConfig,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig { max_series: 200_000, idle_evict_ms: 3_600_000, univariate: Default::default() }
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

#[derive(Debug, Default)]
struct Shard {
    series: table::SeriesTable,
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
        Detector { cfg, shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Scores a batch; returns anomalies sorted by series, then time. Within a batch, the points
    /// of one series are taken in time order, however its entries were split or ordered.
    pub fn observe(&mut self, batch: &SampleBatch) -> Vec<Anomaly> {
        let mut groups: Vec<Vec<(SeriesId, u32)>> = vec![Vec::new(); SHARDS];
        // Admission first, in batch order: the cap is exact across shards (not per shard), and
        // which new series get the last places does not depend on thread timing.
        let mut room = self.cfg.max_series.saturating_sub(self.series_count());
        for (i, s) in batch.iter().enumerate() {
            let shard = (s.id.0 % SHARDS as u64) as usize;
            groups[shard].push((s.id, i as u32));
            let series = &mut self.shards[shard].series;
            if room > 0 && !series.contains(s.id) && s.points.iter().any(|p| p.1.is_finite()) {
                series.insert(s.id, univariate::SeriesModel::new());
                room -= 1;
            }
        }
        let cfg = &self.cfg;
        let mut out: Vec<Anomaly> = self
            .shards
            .par_iter_mut()
            .zip(groups.par_iter_mut())
            .flat_map_iter(|(shard, group)| shard.observe(cfg, batch, group))
            .collect();
        out.sort_by_key(|a| (a.series, a.timestamp_ms));
        out
    }

    pub fn series_count(&self) -> usize {
        self.shards.iter().map(|s| s.series.len()).sum()
    }

    /// Bytes the detector has allocated for its series (tables and models), for `/metrics`.
    pub fn memory_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.series.memory_bytes()).sum()
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
            n += shard.series.retain(|model| model.last_timestamp_ms() >= cutoff);
        }
        n
    }
}

impl Shard {
    /// Scores this shard's entries of `batch` (`group` holds their positions).
    fn observe(&mut self, cfg: &DetectorConfig, batch: &SampleBatch, group: &mut [(SeriesId, u32)]) -> Vec<Anomaly> {
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
                if let Some(a) = self.score(cfg, &series, ts, value) {
                    found.push(a);
                }
            }
        }
        found
    }

    fn score(&mut self, cfg: &DetectorConfig, series: &SeriesSamples<'_>, ts: i64, value: f64) -> Option<Anomaly> {
        if !value.is_finite() {
            self.stats.points_skipped += 1;
            return None;
        }
        // Series were admitted (or not) before the shards ran: a missing one was refused by the cap.
        let Some(model) = self.series.get_mut(series.id) else {
            self.stats.refused_series += 1;
            return None;
        };
        if model.points() > 0 && ts <= model.last_timestamp_ms() {
            self.stats.out_of_order += 1;
            return None;
        }
        let warm = model.points() >= cfg.univariate.warmup_points;
        let previous_ms = model.last_timestamp_ms();
        let point = model.update(&cfg.univariate, ts, value);
        if warm {
            self.stats.points_scored += 1;
        }
        let anomaly = |expected, score, severity, confidence, kind: univariate::AnomalyKind| Anomaly {
            series: series.id,
            labels: series.to_labels(),
            timestamp_ms: ts,
            observed: value,
            expected,
            score,
            severity,
            confidence,
            anomaly_kind: kind.as_str().into(),
            detector: DETECTOR.into(),
            model_version: MODEL_VERSION.into(),
        };
        if point.onset {
            return Some(anomaly(point.expected, point.score, point.severity, point.confidence, point.kind));
        }
        // Not a statistical matter: down from the start is down (see `state`).
        if state::down_since_start(series, model, previous_ms, ts, value) {
            return Some(anomaly(1.0, 1.0, cairn_types::Severity::High, 0.9, univariate::AnomalyKind::DownSinceStart));
        }
        None
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

    const STEP_MS: i64 = 15_000;

    fn series(name: &str, values: impl IntoIterator<Item = f64>) -> Vec<MetricSample> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| MetricSample { labels: labels(name), timestamp_ms: 1_000 + i as i64 * STEP_MS, value: v })
            .collect()
    }

    /// Past the model's warm-up, with room for it to learn the noise.
    const CALM: usize = 400;

    #[test]
    fn a_spike_in_a_noisy_stable_series_is_found_at_the_spike() {
        let mut vals: Vec<f64> = (0..CALM + 100).map(|i| 100.0 + 2.0 * noise(i)).collect();
        vals[CALM + 20] = 160.0;
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&batch(&series("latency", vals)));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].timestamp_ms, 1_000 + (CALM + 20) as i64 * STEP_MS);
        assert!(a[0].score >= d.config().univariate.alert_score && a[0].score <= 1.0);
        assert!((a[0].expected - 100.0).abs() < 2.0, "{a:?}");
        assert_eq!(a[0].observed, 160.0);
        assert_eq!(a[0].anomaly_kind, "spike");
        assert_eq!(a[0].model_version, MODEL_VERSION);
        assert!((0.0..=1.0).contains(&a[0].confidence));
    }

    #[test]
    fn a_level_shift_is_one_anomaly_near_its_start() {
        let vals: Vec<f64> = (0..CALM + 200).map(|i| if i < CALM { 10.0 } else { 30.0 } + 0.5 * noise(i)).collect();
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&batch(&series("queue", vals)));
        assert_eq!(a.len(), 1, "{a:?}");
        let at = (a[0].timestamp_ms - 1_000) / STEP_MS;
        assert!((CALM as i64..CALM as i64 + 3).contains(&at), "raised at point {at}");
    }

    #[test]
    fn a_health_gauge_down_from_its_first_sample_is_one_anomaly_after_five_minutes() {
        let with = |name: &str, extra: &[(&str, &str)], v: f64| -> Vec<MetricSample> {
            let mut l = labels(name);
            for &(k, val) in extra {
                l.insert(k, val);
            }
            // Eight minutes at 15 s, every sample the same.
            (0..32).map(|i| MetricSample { labels: l.clone(), timestamp_ms: 60_000 + i * STEP_MS, value: v }).collect()
        };
        let mut d = Detector::new(DetectorConfig::default());
        // A replacement pod that never became ready, and a target that never came up.
        let pod = with("kube_pod_status_ready", &[("condition", "true"), ("pod", "api-1")], 0.0);
        let a = d.observe(&batch(&pod));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].anomaly_kind.as_str(), a[0].timestamp_ms), ("down_since_start", 60_000 + 5 * 60_000));
        assert_eq!((a[0].observed, a[0].expected), (0.0, 1.0));
        assert_eq!(d.observe(&batch(&with("pg_up", &[], 0.0))).len(), 1);
        // Up from the start, the "false" condition of a ready pod, and a gauge where 0 is fine: nothing.
        let mut quiet = with("up", &[], 1.0);
        quiet.extend(with("kube_pod_status_ready", &[("condition", "false"), ("pod", "api-2")], 0.0));
        quiet.extend(with("queue_depth", &[], 0.0));
        quiet.extend(with("node_network_up", &[("device", "eth1")], 0.0));
        assert!(d.observe(&batch(&quiet)).is_empty());
        // Down only after having been up is the statistical model's to judge, not this rule's.
        let mut flapped = with("probe_success", &[], 0.0);
        flapped[0].value = 1.0;
        assert!(d.observe(&batch(&flapped)).iter().all(|a| a.anomaly_kind != "down_since_start"));
    }

    #[test]
    fn warm_up_raises_nothing() {
        let vals: Vec<f64> = (0..100).map(|i| if i % 10 == 0 { 1000.0 } else { noise(i) }).collect();
        let mut d = Detector::new(DetectorConfig::default());
        assert!(d.observe(&batch(&series("early", vals))).is_empty());
        assert_eq!(d.stats().points_scored, 0, "warm-up points are learnt, not scored");
    }

    #[test]
    fn a_clean_daily_cycle_raises_nothing() {
        // Five-minute steps, a daily sine, three weeks.
        let day = 288;
        let samples: Vec<MetricSample> = (0..21 * day)
            .map(|i| MetricSample {
                labels: labels("cpu"),
                timestamp_ms: i as i64 * 300_000,
                value: 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / day as f64).sin() + 0.5 * noise(i),
            })
            .collect();
        let mut d = Detector::new(DetectorConfig::default());
        let a = d.observe(&batch(&samples));
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn scoring_is_deterministic_across_runs_and_batchings() {
        let mut vals: Vec<f64> = (0..CALM + 300).map(|i| 5.0 + noise(i)).collect();
        vals[CALM + 50] = 40.0;
        vals[CALM + 250] = 45.0;
        let mut all = series("a", vals.clone());
        all.extend(series("b", vals.iter().map(|v| v * 2.0)));
        let run = |chunk: usize| {
            let mut d = Detector::new(DetectorConfig::default());
            all.chunks(chunk).flat_map(|c| d.observe(&batch(c))).collect::<Vec<_>>()
        };
        let one = run(all.len());
        assert_eq!(one.len(), 4, "{one:?}");
        assert_eq!(one, run(all.len()));
        let mut small = run(7);
        small.sort_by_key(|a| (a.series, a.timestamp_ms));
        assert_eq!(one, small);
    }

    #[test]
    fn grouping_and_order_of_points_within_a_batch_do_not_change_the_result() {
        let mut vals: Vec<f64> = (0..CALM + 120).map(|i| 5.0 + noise(i)).collect();
        vals[CALM + 90] = 60.0;
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
        shuffled.push_series(labels("a").iter(), points[300..].iter().rev().copied());
        shuffled.push_series(labels("a").iter(), points[..300].iter().rev().copied());
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
    fn max_series_is_respected_and_idle_series_are_forgotten() {
        let mut d = Detector::new(DetectorConfig { max_series: 32, ..Default::default() });
        let mut samples = Vec::new();
        for i in 0..500 {
            let l: Labels = [("__name__", "m".to_string()), ("i", i.to_string())].into_iter().collect();
            for t in 0..40 {
                samples.push(MetricSample { labels: l.clone(), timestamp_ms: t, value: t as f64 });
            }
        }
        d.observe(&batch(&samples));
        assert_eq!(d.series_count(), 32, "the cap is exact across shards, not per shard");
        assert!(d.stats().refused_series > 0);
        // The same batch again admits nobody new, and the admitted set is the first 32 in batch order.
        let mut again = Detector::new(DetectorConfig { max_series: 32, ..Default::default() });
        again.observe(&batch(&samples));
        let ids = |d: &Detector| {
            let mut v: Vec<u64> = d.shards.iter().flat_map(|s| s.series.ids().map(|k| k.0)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ids(&d), ids(&again), "admission does not depend on thread timing");
        let tracked = d.series_count();
        assert_eq!(d.evict_idle(0), 0, "nothing is idle yet");
        assert_eq!(d.evict_idle(39 + 3_600_000 + 1), tracked);
        assert_eq!(d.series_count(), 0);
    }

    #[test]
    fn the_cap_is_exact_when_every_new_series_falls_in_one_shard() {
        // Forty series that all hash to shard 0. A cap split per shard (max_series / 16) would admit one
        // of them, and the test above cannot tell (500 series fill every shard's share); the
        // detector-wide cap admits exactly the first 20 in batch order.
        let mut names = Vec::new();
        for i in 0.. {
            let name = format!("s{i}");
            let mut b = SampleBatch::new();
            b.push_series([("__name__", name.as_str())], [(0, 1.0)]);
            if b.series(0).id.0.is_multiple_of(SHARDS as u64) {
                names.push((name, b.series(0).id));
            }
            if names.len() == 40 {
                break;
            }
        }
        let send = |d: &mut Detector, t: i64| {
            let mut b = SampleBatch::new();
            for (name, _) in &names {
                b.push_series([("__name__", name.as_str())], [(t, 1.0)]);
            }
            d.observe(&b);
        };
        let mut d = Detector::new(DetectorConfig { max_series: 20, ..Default::default() });
        send(&mut d, 0);
        assert_eq!(d.series_count(), 20);
        for (k, (_, id)) in names.iter().enumerate() {
            assert_eq!(d.shards[0].series.contains(*id), k < 20, "series {k}");
        }
        assert_eq!(d.stats().refused_series, 20);
        // At the cap, the admitted series go on being scored and the others stay refused.
        send(&mut d, 15_000);
        assert_eq!((d.series_count(), d.stats().refused_series), (20, 40));
    }
}
