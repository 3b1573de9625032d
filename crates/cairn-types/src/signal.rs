//! What ingestion gives: metric samples and alert events.

use crate::{Labels, TimestampMs};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One validated input to the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    Sample(MetricSample),
    Alert(AlertEvent),
}

/// One sample of one series, as Prometheus's remote_write carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub labels: Labels,
    pub timestamp_ms: TimestampMs,
    pub value: f64,
}

/// One alert in one state, as Alertmanager's webhook carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Alertmanager's fingerprint of the label set; stable across firing and resolved.
    pub fingerprint: String,
    pub status: AlertStatus,
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at_ms: TimestampMs,
    /// `None` while firing (Alertmanager sends `0001-01-01T00:00:00Z`).
    pub ends_at_ms: Option<TimestampMs>,
    pub generator_url: String,
    /// Where it came from: the Alertmanager receiver name, or the gRPC producer.
    pub source: String,
}

impl AlertEvent {
    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").unwrap_or("")
    }

    /// Severity from the conventional `severity` label.
    pub fn severity(&self) -> Severity {
        self.labels
            .get("severity")
            .map(Severity::from_label)
            .unwrap_or(Severity::Medium)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// How bad something is, for anomalies, incidents and recommendations alike. Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// Maps the severity labels people put on Prometheus alert rules.
    pub fn from_label(s: &str) -> Severity {
        match s.to_ascii_lowercase().as_str() {
            "info" | "none" | "low" => Severity::Low,
            "warning" | "warn" | "medium" => Severity::Medium,
            "error" | "major" | "high" => Severity::High,
            "critical" | "page" | "fatal" | "emergency" => Severity::Critical,
            _ => Severity::Medium,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
