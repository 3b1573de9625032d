//! Change events: a deploy, a config push or a feature-flag flip, announced by CI/CD with one
//! `curl` (`POST /api/v1/changes`). A change becomes an alert named [`CHANGE_ALERTNAME`] about
//! its service, so it is journaled, de-duplicated and correlated like any alert: the correlator
//! ranks it as a change (a root-cause candidate) and a rollback can answer it.

use crate::{IngestError, IngestLimits, check_annotations, check_labels};
use cairn_types::{AlertEvent, AlertStatus, Labels};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The alert name a change event is correlated under.
pub const CHANGE_ALERTNAME: &str = "CairnChangeEvent";
/// The kinds of change accepted.
pub const CHANGE_KINDS: [&str; 3] = ["deploy", "config", "feature_flag"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeDef {
    service: String,
    kind: String,
    #[serde(default)]
    version: String,
    /// RFC 3339; the time it is received when absent.
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    environment: String,
    /// Who announced it, e.g. `github-actions`.
    #[serde(default)]
    source: String,
    #[serde(default)]
    description: String,
    /// A link to the pipeline run or the diff.
    #[serde(default)]
    url: String,
    /// More labels to correlate on (`namespace`, `cluster`, `deployment`, ...).
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn bad(problem: impl Into<String>) -> IngestError {
    IngestError::MalformedChange(problem.into())
}

/// Decodes one change event. A missing or invalid field refuses it with a message naming the
/// field; the same event sent twice has the same fingerprint, so it is counted once.
pub fn decode_change(body: &[u8], limits: &IngestLimits, now_ms: i64) -> Result<AlertEvent, IngestError> {
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::BodyTooLarge { limit: limits.max_body_bytes });
    }
    let c: ChangeDef = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if c.service.trim().is_empty() {
        return Err(bad("`service` is required: the service the change was made to"));
    }
    if !CHANGE_KINDS.contains(&c.kind.as_str()) {
        return Err(bad(format!("`kind` {:?} is not one of {}", c.kind, CHANGE_KINDS.join(", "))));
    }
    let at_ms = match c.at.as_deref() {
        None | Some("") => now_ms,
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| bad(format!("`at`: {s:?} is not an RFC 3339 time ({e})")))?
            .timestamp_millis(),
    };
    let mut pairs: Vec<(&str, &str)> = c.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| ["alertname", "service", "change_kind", "version", "environment", "source"].contains(k)) {
        return Err(bad(format!("`labels.{k}` is set by the event's own fields")));
    }
    pairs.push(("alertname", CHANGE_ALERTNAME));
    pairs.push(("service", &c.service));
    pairs.push(("change_kind", &c.kind));
    pairs.push(("severity", "info"));
    for (k, v) in [("version", &c.version), ("environment", &c.environment), ("source", &c.source)] {
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    if pairs.iter().filter(|(k, _)| *k == "severity").count() > 1 {
        return Err(bad("`labels.severity` is set by Cairn: a change is info"));
    }
    let labels: Labels = check_labels(pairs.into_iter(), limits, false).map_err(|p| bad(format!("labels: {p}")))?;
    let what = if c.version.is_empty() { c.kind.clone() } else { format!("{} {}", c.kind, c.version) };
    let summary = if c.description.is_empty() { format!("{what} of {}", c.service) } else { format!("{what} of {}: {}", c.service, c.description) };
    let annotations: Labels = check_annotations([("summary", summary.as_str()), ("url", c.url.as_str())].into_iter().filter(|(_, v)| !v.is_empty()), limits)
        .map_err(|p| bad(format!("annotations: {p}")))?;
    let mut h = Sha256::new();
    for part in [c.service.as_str(), &c.kind, &c.version, &c.environment, &at_ms.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Ok(AlertEvent {
        fingerprint: format!("change-{}", &hex::encode(h.finalize())[..16]),
        status: AlertStatus::Firing,
        labels,
        annotations,
        starts_at_ms: at_ms,
        ends_at_ms: None,
        generator_url: c.url,
        source: "change".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_becomes_a_change_alert_about_its_service() {
        let body = br#"{"service":"checkout","kind":"deploy","version":"v2.14.0","at":"2026-12-02T10:00:00Z","source":"github-actions","description":"merge #1234","labels":{"namespace":"shop"}}"#;
        let a = decode_change(body, &IngestLimits::default(), 5).unwrap();
        assert_eq!(a.alertname(), CHANGE_ALERTNAME);
        assert_eq!(a.labels.get("service"), Some("checkout"));
        assert_eq!(a.labels.get("change_kind"), Some("deploy"));
        assert_eq!(a.labels.get("namespace"), Some("shop"));
        assert_eq!(a.annotations.get("summary"), Some("deploy v2.14.0 of checkout: merge #1234"));
        assert_eq!(a.starts_at_ms, 1_796_205_600_000);
        assert_eq!(cairn_types::signal_kind(a.alertname()), cairn_types::SignalKind::Change);
        // The same event twice is one alert; another version is another.
        assert_eq!(decode_change(body, &IngestLimits::default(), 9).unwrap().fingerprint, a.fingerprint);
        let other = br#"{"service":"checkout","kind":"deploy","version":"v2.14.1","at":"2026-12-02T10:00:00Z"}"#;
        assert_ne!(decode_change(other, &IngestLimits::default(), 9).unwrap().fingerprint, a.fingerprint);
        // Without `at`, it happened when it arrived.
        let now = decode_change(br#"{"service":"checkout","kind":"config"}"#, &IngestLimits::default(), 42).unwrap();
        assert_eq!(now.starts_at_ms, 42);
    }

    #[test]
    fn bad_events_are_refused_naming_the_field() {
        let l = IngestLimits::default();
        let err = |b: &[u8]| decode_change(b, &l, 0).unwrap_err().to_string();
        assert!(err(br#"{"kind":"deploy"}"#).contains("service"));
        assert!(err(br#"{"service":"","kind":"deploy"}"#).contains("`service` is required"));
        assert!(err(br#"{"service":"a","kind":"reboot"}"#).contains("deploy, config, feature_flag"));
        assert!(err(br#"{"service":"a","kind":"deploy","at":"yesterday"}"#).contains("`at`"));
        assert!(err(br#"{"service":"a","kind":"deploy","labels":{"service":"b"}}"#).contains("labels.service"));
        assert!(err(br#"{"service":"a","kind":"deploy","labels":{"bad name":"x"}}"#).contains("labels"));
        assert!(err(br#"{"service":"a","kind":"deploy","colour":"red"}"#).contains("colour"));
        let big = format!(r#"{{"service":"a","kind":"deploy","description":"{}"}}"#, "x".repeat(l.max_annotation_value_bytes + 1));
        assert!(err(big.as_bytes()).contains("annotations"));
    }
}
