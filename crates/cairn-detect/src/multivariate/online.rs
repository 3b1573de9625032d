//! The online form: rows assembled from the live sample stream, one group at a time.
//!
//! A group is the set of series sharing one value of the group label (by default `instance`: one
//! host). Each sample whose metric name is one of the model's features updates that feature's
//! latest value in its group; when every feature has a value newer than the group's last scored
//! row, the row is scored. A group enters the anomalous state once (one anomaly) and leaves it when
//! a row scores below the threshold again, like the per-series detector.

use super::model::{score_to_unit, MultivariateModel, Smoother};
use cairn_types::{Anomaly, Labels, METRIC_NAME_LABEL, SampleBatch, Severity, TimestampMs};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Name recorded on every anomaly from a multivariate model.
pub const DETECTOR: &str = "multivariate-pca-kmeans";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupScorerConfig {
    /// The label whose value names a group (a host: `instance`).
    pub group_label: String,
    /// Unit score at or above which a group's row is anomalous.
    pub alert_score: f64,
    /// Groups tracked at most; samples of further new groups are counted as refused.
    pub max_groups: usize,
    /// A group whose newest sample is this much older than the time given to
    /// [`GroupScorer::evict_idle`] is forgotten, so hosts that went away free their slot and their
    /// state.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub idle_evict_ms: i64,
}

impl Default for GroupScorerConfig {
    fn default() -> Self {
        GroupScorerConfig { group_label: "instance".into(), alert_score: 0.9, max_groups: 50_000, idle_evict_ms: 3_600_000 }
    }
}

/// Counters, for Cairn's own metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupScorerStats {
    pub rows_scored: u64,
    pub samples_used: u64,
    pub refused_groups: u64,
    /// Groups forgotten after `idle_evict_ms` without a sample.
    pub evicted_groups: u64,
}

#[derive(Debug)]
struct GroupState {
    values: Vec<f64>,
    /// Which features have a value newer than the last scored row.
    fresh: Vec<bool>,
    n_fresh: usize,
    /// Time of the newest sample per feature; older ones are ignored.
    last_ts: Vec<i64>,
    anomalous: bool,
    rows_scored: u64,
    /// Newest sample time taken into this group, for idle eviction.
    last_seen_ms: TimestampMs,
    /// Turns the group's row scores into its alerting score (fixed size).
    smoother: Smoother,
    /// The alerting score of the last scored row (1.0 = calibration quantile).
    last_score: Option<f64>,
}

impl GroupState {
    fn new(d: usize) -> GroupState {
        GroupState {
            values: vec![0.0; d],
            fresh: vec![false; d],
            n_fresh: 0,
            last_ts: vec![i64::MIN; d],
            anomalous: false,
            rows_scored: 0,
            last_seen_ms: i64::MIN,
            smoother: Smoother::default(),
            last_score: None,
        }
    }
}

/// One sample of a group: its feature index, time and value.
type Point = (usize, TimestampMs, f64);

/// A group's share of a batch: its name, its state, and its points.
type Work<'g> = (&'g str, &'g mut GroupState, Vec<Point>);

/// Scores groups of live series with one model.
#[derive(Debug)]
pub struct GroupScorer {
    cfg: GroupScorerConfig,
    model: Arc<MultivariateModel>,
    model_version: String,
    feature_index: HashMap<String, usize>,
    groups: HashMap<String, GroupState>,
    refused_groups: u64,
    samples_used: u64,
    evicted_groups: u64,
    /// Rows scored by every group, evicted ones included, so reading the stats costs nothing.
    rows_scored: u64,
}

impl GroupScorer {
    /// `model_version` is recorded on every anomaly (the registry's `id/version`).
    pub fn new(model: Arc<MultivariateModel>, model_version: impl Into<String>, cfg: GroupScorerConfig) -> GroupScorer {
        let feature_index = model.features.iter().enumerate().map(|(i, f)| (f.clone(), i)).collect();
        GroupScorer {
            cfg,
            model,
            model_version: model_version.into(),
            feature_index,
            groups: HashMap::new(),
            refused_groups: 0,
            samples_used: 0,
            evicted_groups: 0,
            rows_scored: 0,
        }
    }

    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The alerting score of a group's last scored row (1.0 = the calibration quantile of the
    /// training rows), if the group is tracked and has a scored row.
    pub fn last_score(&self, group: &str) -> Option<f64> {
        self.groups.get(group).and_then(|g| g.last_score)
    }

    pub fn stats(&self) -> GroupScorerStats {
        GroupScorerStats {
            rows_scored: self.rows_scored,
            samples_used: self.samples_used,
            refused_groups: self.refused_groups,
            evicted_groups: self.evicted_groups,
        }
    }

    /// Feeds a batch; returns the anomalies of groups that entered the anomalous state, sorted by
    /// group label value then time. Groups are scored in parallel (rayon), each by one thread.
    pub fn observe(&mut self, batch: &SampleBatch) -> Vec<Anomaly> {
        let mut buckets: HashMap<&str, Vec<Point>> = HashMap::new();
        for series in batch.iter() {
            let Some(group) = series.label(&self.cfg.group_label) else { continue };
            let Some(&f) = series.label(METRIC_NAME_LABEL).and_then(|n| self.feature_index.get(n)) else { continue };
            let points = series.points.iter().filter(|(_, v)| v.is_finite()).map(|&(ts, v)| (f, ts, v));
            buckets.entry(group).or_default().extend(points);
        }
        let d = self.model.dimension();
        for group in buckets.keys() {
            if !self.groups.contains_key(*group) {
                if self.groups.len() >= self.cfg.max_groups {
                    self.refused_groups += 1;
                    continue;
                }
                self.groups.insert((*group).to_string(), GroupState::new(d));
            }
        }
        let mut work: Vec<Work<'_>> = self
            .groups
            .iter_mut()
            .filter_map(|(name, st)| buckets.remove(name.as_str()).map(|b| (name.as_str(), st, b)))
            .collect();
        self.samples_used += work.iter().map(|w| w.2.len() as u64).sum::<u64>();
        let model = &*self.model;
        let cfg = &self.cfg;
        let version = self.model_version.as_str();
        let per_group: Vec<(Vec<Anomaly>, u64)> = work
            .par_iter_mut()
            .map(|(name, st, batch)| {
                batch.sort_by_key(|&(f, ts, _)| (ts, f));
                if let Some(last) = batch.last() {
                    st.last_seen_ms = st.last_seen_ms.max(last.1);
                }
                let rows_before = st.rows_scored;
                let mut found = Vec::new();
                for &point in batch.iter() {
                    if let Some(a) = feed(model, cfg, version, name, st, point) {
                        found.push(a);
                    }
                }
                (found, st.rows_scored - rows_before)
            })
            .collect();
        self.rows_scored += per_group.iter().map(|g| g.1).sum::<u64>();
        let mut out: Vec<Anomaly> = per_group.into_iter().flat_map(|g| g.0).collect();
        out.sort_by(|a, b| {
            (a.labels.get(&self.cfg.group_label), a.timestamp_ms).cmp(&(b.labels.get(&self.cfg.group_label), b.timestamp_ms))
        });
        out
    }
}

impl GroupScorer {
    /// Forgets the groups whose newest sample is more than `idle_evict_ms` older than `now_ms`;
    /// returns how many. The caller's clock decides, as for the per-series detector, not the
    /// samples: one sample stamped far in the future must not make every other host look idle.
    pub fn evict_idle(&mut self, now_ms: TimestampMs) -> usize {
        let cutoff = now_ms.saturating_sub(self.cfg.idle_evict_ms);
        let before = self.groups.len();
        self.groups.retain(|_, g| g.last_seen_ms >= cutoff);
        let n = before - self.groups.len();
        self.evicted_groups += n as u64;
        n
    }
}

/// Takes one sample into its group; scores the row when it is complete.
fn feed(
    model: &MultivariateModel,
    cfg: &GroupScorerConfig,
    version: &str,
    group: &str,
    st: &mut GroupState,
    (f, timestamp_ms, value): Point,
) -> Option<Anomaly> {
    if timestamp_ms <= st.last_ts[f] {
        return None;
    }
    st.last_ts[f] = timestamp_ms;
    st.values[f] = value;
    if !st.fresh[f] {
        st.fresh[f] = true;
        st.n_fresh += 1;
    }
    if st.n_fresh < st.values.len() {
        return None;
    }
    st.fresh.iter_mut().for_each(|x| *x = false);
    st.n_fresh = 0;
    st.rows_scored += 1;
    let raw = st.smoother.push(model, &model.score_row(&st.values));
    st.last_score = Some(raw);
    let score = score_to_unit(raw);
    let anomalous = score >= cfg.alert_score;
    let entering = anomalous && !st.anomalous;
    st.anomalous = anomalous;
    if !entering {
        return None;
    }
    let labels: Labels = [(METRIC_NAME_LABEL, "cairn_multivariate_score"), (cfg.group_label.as_str(), group)]
        .into_iter()
        .collect();
    Some(Anomaly {
        series: labels.series_id(),
        labels,
        timestamp_ms,
        // The smoothed score against its calibration level (1.0 = the rarest training rows).
        observed: raw,
        expected: 1.0,
        score,
        severity: if score >= 0.99 { Severity::High } else { Severity::Medium },
        // Until calibration against labelled incidents: the score itself, discounted for a group
        // that has only just started reporting.
        confidence: (score * (st.rows_scored as f64 / 10.0).min(1.0)).clamp(0.0, 1.0),
        // The host's metrics no longer move together the way they did in training.
        anomaly_kind: "correlation_break".into(),
        detector: DETECTOR.into(),
        model_version: version.to_string(),
    })
}
