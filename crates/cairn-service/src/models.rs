//! The multivariate models `serve` and `demo` score with: the defaults compiled in from the
//! repository's `models/` folder, or every verified model folder under `[models] dir`. Each model
//! gets an online group scorer; anomalies it raises carry the model's `id/version`.

use cairn_detect::multivariate::{GroupScorer, GroupScorerConfig, GroupScorerStats};
use cairn_detect::registry::{self, RegistryError};
use cairn_types::{Anomaly, SampleBatch};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Score groups of series with multivariate models at all.
    pub enabled: bool,
    /// A registry folder (`<dir>/<id>/manifest.json`) to load instead of the built-in defaults.
    pub dir: Option<PathBuf>,
    /// The label whose value makes a group (one host: `instance`).
    pub group_label: String,
    /// Unit score at or above which a group's row is an anomaly.
    pub alert_score: f64,
    /// Groups tracked per model at most.
    pub max_groups: usize,
    /// A group whose newest sample is this much older than the server's clock is forgotten (in the
    /// analysis worker's minute sweep, as for series).
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub idle_evict_ms: i64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        let g = GroupScorerConfig::default();
        ModelsConfig {
            enabled: true,
            dir: None,
            group_label: g.group_label,
            alert_score: g.alert_score,
            max_groups: g.max_groups,
            idle_evict_ms: g.idle_evict_ms,
        }
    }
}

impl ModelsConfig {
    /// The problem with this section, if any, naming the key.
    pub fn problem(&self) -> Option<String> {
        if !(self.alert_score > 0.0 && self.alert_score <= 1.0) {
            return Some(format!("models.alert_score must be in (0, 1], got {}", self.alert_score));
        }
        if self.group_label.is_empty() {
            return Some("models.group_label must not be empty".into());
        }
        if self.max_groups == 0 {
            return Some("models.max_groups must be at least 1".into());
        }
        if self.idle_evict_ms <= 0 {
            return Some(format!("models.idle_evict_ms must be positive, got {}", self.idle_evict_ms));
        }
        None
    }
}

/// One scorer per model, verified; none when disabled.
pub fn load_scorers(cfg: &ModelsConfig) -> Result<Vec<GroupScorer>, RegistryError> {
    if !cfg.enabled {
        return Ok(Vec::new());
    }
    let models = match &cfg.dir {
        Some(dir) => registry::load_dir(dir)?,
        None => registry::default_models()?,
    };
    let scorer_cfg = GroupScorerConfig {
        group_label: cfg.group_label.clone(),
        alert_score: cfg.alert_score,
        max_groups: cfg.max_groups,
        idle_evict_ms: cfg.idle_evict_ms,
    };
    Ok(models
        .into_iter()
        .map(|m| GroupScorer::new(m.model, m.manifest.model_version(), scorer_cfg.clone()))
        .collect())
}

/// Forgets, in every model's scorer, the groups silent for longer than `models.idle_evict_ms`.
pub fn evict_idle(scorers: &mut [GroupScorer], now_ms: i64) {
    for s in scorers {
        s.evict_idle(now_ms);
    }
}

/// Exports each scorer's group count and the growth of its refused and evicted counters since
/// `exported` (one entry per scorer, kept by the caller).
pub fn export_stats(scorers: &[GroupScorer], exported: &mut Vec<GroupScorerStats>, metrics: &crate::metrics::Metrics) {
    exported.resize(scorers.len(), GroupScorerStats::default());
    for (s, before) in scorers.iter().zip(exported.iter_mut()) {
        let now = s.stats();
        let model = s.model_version();
        metrics.multivariate_groups.with_label_values(&[model]).set(s.group_count() as i64);
        let events = &metrics.multivariate_group_events;
        events.with_label_values(&[model, "refused"]).inc_by(now.refused_groups.saturating_sub(before.refused_groups));
        events.with_label_values(&[model, "evicted"]).inc_by(now.evicted_groups.saturating_sub(before.evicted_groups));
        *before = now;
    }
}

/// Feeds a batch to every model; their anomalies, model by model.
pub fn observe(scorers: &mut [GroupScorer], batch: &SampleBatch) -> Vec<Anomaly> {
    scorers.iter_mut().flat_map(|s| s.observe(batch)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_detect::multivariate::synthetic::{host_rows, Break, HOST_FEATURES};
    use cairn_types::{Labels, MetricSample};

    #[test]
    fn the_default_model_finds_a_host_whose_metrics_stop_agreeing() {
        let mut scorers = load_scorers(&ModelsConfig::default()).expect("defaults load");
        assert_eq!(scorers.len(), 1);
        let (rows, _) = host_rows(300, 77, &[Break { start: 200, len: 15, feature: 0 }]);
        let samples: Vec<MetricSample> = rows
            .iter()
            .enumerate()
            .flat_map(|(t, r)| {
                r.iter().enumerate().map(move |(f, v)| MetricSample {
                    labels: [("__name__", HOST_FEATURES[f]), ("instance", "db-1:9100")].into_iter().collect::<Labels>(),
                    timestamp_ms: 60_000 * t as i64,
                    value: *v,
                })
            })
            .collect();
        let found = observe(&mut scorers, &samples.iter().collect());
        assert!(found.iter().any(|a| (200..=202).contains(&(a.timestamp_ms / 60_000))), "{found:?}");
        assert!(found.len() <= 3, "{found:?}");
        assert!(found.iter().all(|a| a.model_version == "host-pca-kmeans/2"));
    }

    #[test]
    fn disabled_means_no_scorers_and_a_bad_dir_is_an_error() {
        assert!(load_scorers(&ModelsConfig { enabled: false, ..Default::default() }).expect("ok").is_empty());
        let missing = ModelsConfig { dir: Some("/nonexistent/cairn-models".into()), ..Default::default() };
        assert!(load_scorers(&missing).is_err());
        assert!(ModelsConfig { alert_score: 1.5, ..Default::default() }.problem().is_some_and(|p| p.contains("models.alert_score")));
        assert!(ModelsConfig { idle_evict_ms: 0, ..Default::default() }.problem().is_some_and(|p| p.contains("models.idle_evict_ms")));
        assert_eq!(ModelsConfig::default().idle_evict_ms, 3_600_000);
    }
}
