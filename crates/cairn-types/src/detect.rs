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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbableCause {
    pub description: String,
    /// Relative weight in [0, 1]; causes are sorted by it, descending.
    pub score: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
