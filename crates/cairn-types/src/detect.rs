//! What detection and correlation give: anomalies and incidents.

use crate::{AlertStatus, Labels, SeriesId, Severity, TimestampMs};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A point (or stretch) of a series that a detector judged anomalous.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub series: SeriesId,
    pub labels: Labels,
    pub timestamp_ms: TimestampMs,
    pub observed: f64,
    pub expected: f64,
    /// Anomaly score in [0, 1].
    pub score: f64,
    pub severity: Severity,
    /// Estimated probability that the point is anomalous, in [0, 1].
    pub confidence: f64,
    /// What the detector saw: `spike`, `level_shift`, `drift`, `flat_line`, `missing_data`,
    /// `seasonal_break` (empty in records written before it was kept). Not `kind`: that is the tag
    /// of [`IncidentMember`], which holds anomalies flattened.
    #[serde(default)]
    pub anomaly_kind: String,
    /// Which detector produced it, e.g. `robust-zscore`.
    pub detector: String,
    /// The version of the model or detector configuration that produced it.
    pub model_version: String,
}

/// A stable incident id, e.g. `inc-3f2a…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub String);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Alerts and anomalies grouped because they look like one problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub opened_ms: TimestampMs,
    pub updated_ms: TimestampMs,
    pub members: Vec<IncidentMember>,
    /// Values of the `service` label (or the grouping key) among members, sorted, deduplicated.
    pub affected_services: Vec<String>,
    /// Labels every member shares: the grouping key.
    pub common_labels: Labels,
    /// Human-readable reasons why members were grouped, e.g. `shared label service="checkout"`.
    pub grouping_reasons: Vec<String>,
    /// Ranked, most probable first.
    pub probable_causes: Vec<ProbableCause>,
    pub severity: Severity,
    /// Bumped whenever the member set or its evidence changes.
    pub version: u32,
    /// The entity each member is about (`service:<name>`, `node:<name>`, `fleet:<name>` or
    /// `other:<name>`), index for index with `members`. Empty in incidents stored before entities.
    #[serde(default)]
    pub member_entities: Vec<String>,
}

impl Incident {
    /// The entity of member `i`, or `""` when not known.
    pub fn entity_of(&self, i: usize) -> &str {
        self.member_entities.get(i).map(String::as_str).unwrap_or("")
    }

    /// The distinct entities of the members, sorted.
    pub fn entities(&self) -> Vec<String> {
        let mut e: Vec<String> = self.member_entities.iter().filter(|e| !e.is_empty()).cloned().collect();
        e.sort();
        e.dedup();
        e
    }
}

/// What changed in an incident since its correlator last handed it out to be stored, so that a
/// store writes those rows only and a write costs what changed, not the incident's size. It is
/// relative to the incident as it was at version `since_version`: a store that holds another
/// version (that write failed, or another was made since) compares every row instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncidentChanges {
    /// The incident's version when it was last handed out.
    pub since_version: u32,
    /// Positions of the members that are new or may differ since, ascending, each once.
    pub members: Vec<usize>,
    /// The grouping reasons from this position on are new or may differ; those before are not.
    pub reasons_from: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IncidentMember {
    Alert {
        fingerprint: String,
        alertname: String,
        status: AlertStatus,
        labels: Labels,
        /// The alert's annotations; Cairn reads `summary`, `cairn_playbook` and `cairn_confidence`.
        annotations: Labels,
        severity: Severity,
        starts_at_ms: TimestampMs,
        summary: String,
    },
    Anomaly(Anomaly),
}

impl IncidentMember {
    pub fn labels(&self) -> &Labels {
        match self {
            IncidentMember::Alert { labels, .. } => labels,
            IncidentMember::Anomaly(a) => &a.labels,
        }
    }

    /// The member's stable id: `alert:<fingerprint>`, or `series:<selector>` with the labels
    /// sorted and quoted as [`Labels`] prints them.
    pub fn id(&self) -> String {
        match self {
            IncidentMember::Alert { fingerprint, .. } => format!("alert:{fingerprint}"),
            IncidentMember::Anomaly(a) => format!("series:{}", a.labels),
        }
    }

    /// What the member is called: an alert's name, an anomaly's metric name (`""` when the series
    /// has none). Signatures and signal kinds are read from it.
    pub fn name(&self) -> &str {
        match self {
            IncidentMember::Alert { alertname, .. } => alertname,
            IncidentMember::Anomaly(a) => a.labels.metric_name().unwrap_or(""),
        }
    }

    /// When the member happened in event time: an alert's start, an anomaly's sample time.
    pub fn event_ms(&self) -> TimestampMs {
        match self {
            IncidentMember::Alert { starts_at_ms, .. } => *starts_at_ms,
            IncidentMember::Anomaly(a) => a.timestamp_ms,
        }
    }
}

/// What a signal says about its entity, read from its alert or metric name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalKind {
    /// Errors, latency, error budgets: what users feel, rarely the root; and work waiting (a
    /// queue's depth, a consumer's lag), which shows where the work piles up, not why.
    Symptom,
    /// A rollout, a new build, a config reload, a new resource version.
    Change,
    /// Saturation, availability, resources: what breaks.
    Cause,
}

/// Classifies a signal by its alert or metric name. The one place this rule is defined: the
/// correlator ranks causes with it and the recommender looks for changes with it. A word counts
/// where a word of the name begins with it ([`begins_a_word`]): `lag` is a consumer's lag, not a
/// flag, and `version` a resource version, not a conversion rate.
pub fn signal_kind(name: &str) -> SignalKind {
    let n = name.to_ascii_lowercase();
    const CHANGE: [&str; 9] = ["generation", "build_info", "reload", "revision", "version", "change_event", "changeevent", "release", "rollout"];
    const SYMPTOM: [&str; 12] = ["error", "latency", "duration", "budget", "slo", "5xx", "apdex", "p99", "quantile", "queue", "backlog", "lag"];
    let says = |w: &&str| n.match_indices(*w).any(|(i, _)| begins_a_word(name.as_bytes(), i));
    if CHANGE.iter().any(says) {
        SignalKind::Change
    } else if SYMPTOM.iter().any(says) {
        SignalKind::Symptom
    } else {
        SignalKind::Cause
    }
}

/// Whether a word of `name` begins at byte `i`: at the start, after anything but a letter or digit
/// (`consumer_lag`, `…:p99`), where a lower-case letter or a digit meets an upper-case one
/// (`ConsumerLag`), where a run of capitals gives way to a capitalised word (`APIErrors`), or where
/// letters give way to digits (`HTTP5xx`).
fn begins_a_word(name: &[u8], i: usize) -> bool {
    let Some(&c) = name.get(i) else { return false };
    let Some(&p) = i.checked_sub(1).and_then(|j| name.get(j)) else { return true };
    !p.is_ascii_alphanumeric()
        || ((p.is_ascii_lowercase() || p.is_ascii_digit()) && c.is_ascii_uppercase())
        || (p.is_ascii_uppercase() && c.is_ascii_uppercase() && name.get(i + 1).is_some_and(u8::is_ascii_lowercase))
        || (p.is_ascii_alphabetic() && c.is_ascii_digit())
}

/// One ranked root-cause candidate: an entity, its score and the factors behind the score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbableCause {
    pub description: String,
    /// Relative weight in [0, 1]; causes are sorted by it, descending.
    pub score: f64,
    /// The entity the cause is about (see [`Incident::member_entities`]).
    #[serde(default)]
    pub entity: String,
    /// Each scoring factor in words with its contribution.
    #[serde(default)]
    pub factors: Vec<String>,
    /// Ids of the members that are the evidence ([`IncidentMember::id`]).
    #[serde(default)]
    pub members: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signals_kind_is_read_from_whole_words_of_its_name() {
        let kind = signal_kind;
        // Words at the start of a word, in snake case, camel case, capitals and recording rules.
        assert_eq!(kind("kafka_consumergroup_lag"), SignalKind::Symptom);
        assert_eq!(kind("RabbitmqConsumerLag"), SignalKind::Symptom);
        assert_eq!(kind("KubeAPIErrorsHigh"), SignalKind::Symptom);
        assert_eq!(kind("HTTP5xxRateHigh"), SignalKind::Symptom);
        assert_eq!(kind("instance:http_request_duration_seconds:p99"), SignalKind::Symptom);
        assert_eq!(kind("kube_configmap_metadata_resource_version"), SignalKind::Change);
        assert_eq!(kind("ConfigMapResourceVersionChanged"), SignalKind::Change);
        assert_eq!(kind("kube_deployment_status_observed_generation"), SignalKind::Change);
        assert_eq!(kind("reloader_last_reload_success_timestamp_seconds"), SignalKind::Change);
        // Not inside another word: a flag is not a lag, a conversion is not a version.
        assert_eq!(kind("node_network_flags"), SignalKind::Cause);
        assert_eq!(kind("FeatureFlagEvaluationsHigh"), SignalKind::Cause);
        assert_eq!(kind("checkout_conversion_ratio"), SignalKind::Cause);
        assert_eq!(kind("apiserver_conversion_webhook_duration_seconds"), SignalKind::Symptom);
        assert_eq!(kind("up"), SignalKind::Cause);
    }

    #[test]
    fn an_anomaly_member_round_trips_through_json() {
        let m = IncidentMember::Anomaly(Anomaly {
            series: SeriesId(7),
            labels: [("__name__", "up")].into_iter().collect(),
            timestamp_ms: 1,
            observed: 2.0,
            expected: 1.0,
            score: 0.9,
            severity: Severity::High,
            confidence: 0.6,
            anomaly_kind: "spike".into(),
            detector: "univariate".into(),
            model_version: "v".into(),
        });
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<IncidentMember>(&json).unwrap(), m);
    }
}
