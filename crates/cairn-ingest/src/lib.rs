//! Ingestion: turns the bytes Prometheus remote_write and Alertmanager webhooks send into validated
//! [`Signal`](cairn_types::Signal)s — metric samples (grouped by series in a
//! [`SampleBatch`](cairn_types::SampleBatch)) and [`AlertEvent`]s — under explicit limits.
//!
//! Takes a body and the header values that matter as plain strings; gives typed values or an
//! [`IngestError`] that says exactly what was wrong and where. A request is validated whole before
//! anything is returned, so a rejected request yields nothing. Snappy's declared length is checked
//! against the limit before anything is allocated.
//!
//! This crate knows the wire formats and nothing else: no HTTP framework, no gRPC, no store. It
//! never drops valid data silently; the only thing it discards on purpose is a duplicate delivery of
//! the same alert state ([`AlertDeduper`]).

#![forbid(unsafe_code)]

mod alertmanager;
mod change;
mod dedup;
mod remote_write;
mod wire;

pub use alertmanager::{AlertBatch, decode_alertmanager};
pub use change::{CHANGE_ALERTNAME, CHANGE_KINDS, decode_change};
pub use dedup::{AlertDeduper, RecentKeys};
pub use remote_write::decode_remote_write;

use cairn_types::{AlertEvent, CONFIDENCE_ANNOTATION, Labels, METRIC_NAME_LABEL, MetricSample, PLAYBOOK_KEY, WITHHELD_ANNOTATION};
use serde::{Deserialize, Serialize};

/// The remote_write 1.0 messages (package `prometheus`), generated from `proto/prometheus/`.
pub mod prompb {
    #![allow(missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Size, count and length limits applied to every request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest request body accepted, as sent (compressed). Default 8 MiB.
    pub max_body_bytes: usize,
    /// Largest decompressed remote_write body, from snappy's declared length. Default 32 MiB.
    pub max_decompressed_bytes: usize,
    pub max_series_per_request: usize,
    pub max_samples_per_request: usize,
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_alerts_per_request: usize,
    /// Longest alert annotation value, for the webhook and gRPC alike. Default 16 KiB.
    pub max_annotation_value_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
            max_series_per_request: 10_000,
            max_samples_per_request: 50_000,
            max_labels_per_series: 40,
            max_label_name_bytes: 256,
            max_label_value_bytes: 2048,
            max_alerts_per_request: 1_000,
            max_annotation_value_bytes: 16 << 10,
        }
    }
}

/// Which class of HTTP/gRPC answer an error deserves; the server maps these in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// A remote_write message version Cairn does not decode: the spec's answer is 415.
    UnsupportedMessage,
}

/// Why a request or an item was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Content-Encoding must be \"snappy\" (remote_write 1.0 sends snappy block-compressed protobuf), got {0:?}")]
    UnsupportedEncoding(String),
    #[error("Content-Type must be application/x-protobuf, got {0:?}")]
    UnsupportedContentType(String),
    #[error(
        "remote_write message {0:?} is not supported: Cairn speaks remote_write 1.0 only \
         (Content-Type: application/x-protobuf or application/x-protobuf;proto=prometheus.WriteRequest); \
         set `protobuf_message: prometheus.WriteRequest` in Prometheus's remote_write config"
    )]
    UnsupportedProtoMessage(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("snappy body declares {declared} decompressed bytes, over the limit of {limit}")]
    DecompressedTooLarge { declared: usize, limit: usize },
    #[error("body is not valid snappy block-compressed data: {0}")]
    Snappy(String),
    #[error("body is not a valid remote_write WriteRequest: {0}")]
    Protobuf(String),
    #[error("request has {count} {what}, over the limit of {limit}")]
    TooMany { what: &'static str, count: usize, limit: usize },
    #[error("request has more than {limit} {what}; refused while decoding, before it was read whole")]
    OverLimit { what: &'static str, limit: usize },
    #[error("{location}: {problem}")]
    InvalidSeries { location: String, problem: String },
    #[error("invalid Alertmanager webhook payload: {0}")]
    MalformedAlert(String),
    #[error("invalid change event: {0}")]
    MalformedChange(String),
    #[error("Alertmanager webhook version {0:?} is not supported; expected \"4\"")]
    UnsupportedWebhookVersion(String),
}

impl IngestError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IngestError::BodyTooLarge { .. } | IngestError::DecompressedTooLarge { .. } => ErrorKind::PayloadTooLarge,
            IngestError::UnsupportedEncoding(_)
            | IngestError::UnsupportedContentType(_) => ErrorKind::UnsupportedMediaType,
            IngestError::UnsupportedProtoMessage(_) => ErrorKind::UnsupportedMessage,
            _ => ErrorKind::BadRequest,
        }
    }
}

// Byte-wise: both rules admit ASCII only, so a byte of a multi-byte character fails them as the
// character itself would.
fn valid_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b':')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

/// Checks one label set against the naming rules and limits, in wire order, so that a duplicate
/// name is caught before it collapses into a map. Allocates nothing on success.
fn check_label_pairs(pairs: &[(&str, &str)], limits: &IngestLimits, require_metric_name: bool) -> Result<(), String> {
    // While names arrive in ascending order (as Prometheus sends them) a duplicate can only be the
    // previous name; otherwise every earlier name is compared.
    let mut ascending = true;
    for (i, &(name, value)) in pairs.iter().enumerate() {
        if i >= limits.max_labels_per_series {
            return Err(format!("more than {} labels", limits.max_labels_per_series));
        }
        if name.len() > limits.max_label_name_bytes {
            return Err(format!("label name {:?}… is longer than {} bytes", &name[..name.len().min(32)], limits.max_label_name_bytes));
        }
        if !valid_label_name(name) {
            return Err(format!("label name {name:?} is invalid (must match [a-zA-Z_][a-zA-Z0-9_]*)"));
        }
        if value.len() > limits.max_label_value_bytes {
            return Err(format!("label {name:?} has a value longer than {} bytes", limits.max_label_value_bytes));
        }
        let after_previous = i == 0 || pairs[i - 1].0 < name;
        let duplicate = if ascending && after_previous { false } else { pairs[..i].iter().any(|p| p.0 == name) };
        if duplicate {
            return Err(format!("label {name:?} appears more than once"));
        }
        ascending &= after_previous;
    }
    if require_metric_name {
        match pairs.iter().find(|p| p.0 == METRIC_NAME_LABEL).map(|p| p.1) {
            None => return Err(format!("no {METRIC_NAME_LABEL} label (every series needs a metric name)")),
            Some(n) if !valid_metric_name(n) => return Err(format!("metric name {n:?} is invalid")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// [`check_label_pairs`] for a label set that arrived typed, giving it back as [`Labels`].
fn check_labels<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    limits: &IngestLimits,
    require_metric_name: bool,
) -> Result<Labels, String> {
    let pairs: Vec<(&str, &str)> = pairs.collect();
    check_label_pairs(&pairs, limits, require_metric_name)?;
    Ok(pairs.into_iter().collect())
}

/// The one rule for alert annotations, whichever endpoint they came through: label-style names,
/// at most `max_labels_per_series` of them, values up to `max_annotation_value_bytes`.
fn check_annotations<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, limits: &IngestLimits) -> Result<Labels, String> {
    let as_labels = IngestLimits { max_label_value_bytes: limits.max_annotation_value_bytes, ..limits.clone() };
    check_labels(pairs, &as_labels, false)
}

/// Validates a sample that arrived already typed (gRPC).
pub fn validate_sample(s: &MetricSample, limits: &IngestLimits) -> Result<(), IngestError> {
    check_labels(s.labels.iter(), limits, true)
        .map(|_| ())
        .map_err(|problem| IngestError::InvalidSeries { location: format!("series {}", s.labels), problem })
}

/// Validates an alert that arrived already typed (gRPC).
pub fn validate_alert(a: &AlertEvent, limits: &IngestLimits) -> Result<(), IngestError> {
    let labels = check_labels(a.labels.iter(), limits, false)
        .map_err(|p| IngestError::MalformedAlert(format!("alert labels: {p}")))?;
    check_annotations(a.annotations.iter(), limits).map_err(|p| IngestError::MalformedAlert(format!("alert annotations: {p}")))?;
    if labels.get("alertname").is_none_or(str::is_empty) {
        return Err(IngestError::MalformedAlert("alert has no alertname label".into()));
    }
    if a.fingerprint.is_empty() {
        return Err(IngestError::MalformedAlert("alert has no fingerprint".into()));
    }
    Ok(())
}

/// Removes what a sender would steer the recommendation with (`cairn_playbook`, `cairn_confidence`)
/// unless the sender may (`sender_may_steer`: authenticated with `ingest:annotate`) or the alert's
/// rule is one the operator trusts. An alert that lost them carries [`WITHHELD_ANNOTATION`] saying
/// so, for the decision card; a sender's own copy of that annotation is always dropped.
pub fn withhold_steering(alerts: &mut [AlertEvent], sender_may_steer: bool, trusted_rules: &[String]) {
    for a in alerts {
        a.annotations.0.remove(WITHHELD_ANNOTATION);
        if sender_may_steer || trusted_rules.iter().any(|r| r == a.alertname()) {
            continue;
        }
        let mut removed = Vec::new();
        for key in [PLAYBOOK_KEY, CONFIDENCE_ANNOTATION] {
            let in_labels = a.labels.0.remove(key).is_some();
            let in_annotations = a.annotations.0.remove(key).is_some();
            if in_labels || in_annotations {
                removed.push(key);
            }
        }
        if !removed.is_empty() {
            a.annotations.insert(
                WITHHELD_ANNOTATION,
                format!(
                    "{} ignored: the sender is not authorised to steer recommendations (it needs a token with scope \
                     ingest:annotate, or the rule listed in ingest.trusted_annotation_rules)",
                    removed.join(" and ")
                ),
            );
        }
    }
}

/// A stable fingerprint for an alert's label set when the sender did not give one.
pub fn fingerprint(labels: &Labels) -> String {
    labels.series_id().to_string()
}

#[cfg(test)]
mod steering_tests {
    use super::*;
    use cairn_types::AlertStatus;

    fn alert(name: &str) -> AlertEvent {
        let mut labels = Labels::new();
        labels.insert("alertname", name);
        labels.insert(PLAYBOOK_KEY, "restart-process");
        let mut annotations = Labels::new();
        annotations.insert(CONFIDENCE_ANNOTATION, "1.0");
        annotations.insert(WITHHELD_ANNOTATION, "forged by the sender");
        AlertEvent {
            fingerprint: "f".into(),
            status: AlertStatus::Firing,
            labels,
            annotations,
            starts_at_ms: 0,
            ends_at_ms: None,
            generator_url: String::new(),
            source: "test".into(),
        }
    }

    #[test]
    fn an_unauthorised_senders_steering_is_removed_and_the_alert_says_so() {
        let mut alerts = vec![alert("AnyName")];
        withhold_steering(&mut alerts, false, &[]);
        let a = &alerts[0];
        assert_eq!(a.labels.get(PLAYBOOK_KEY), None);
        assert_eq!(a.annotations.get(CONFIDENCE_ANNOTATION), None);
        let note = a.annotations.get(WITHHELD_ANNOTATION).expect("says why");
        assert!(note.contains("cairn_playbook and cairn_confidence ignored"), "{note}");
    }

    #[test]
    fn an_annotating_sender_or_a_trusted_rule_keeps_its_steering_but_never_a_forged_note() {
        let mut alerts = vec![alert("AnyName"), alert("Trusted")];
        withhold_steering(&mut alerts[..1], true, &[]);
        withhold_steering(&mut alerts[1..], false, &["Trusted".to_string()]);
        for a in &alerts {
            assert_eq!(a.labels.get(PLAYBOOK_KEY), Some("restart-process"));
            assert_eq!(a.annotations.get(CONFIDENCE_ANNOTATION), Some("1.0"));
            assert_eq!(a.annotations.get(WITHHELD_ANNOTATION), None);
        }
    }
}
