//! The Alertmanager webhook receiver payload, version "4".

use crate::{IngestError, IngestLimits, check_labels, fingerprint};
use cairn_types::{AlertEvent, AlertStatus, Labels};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The alerts of one webhook delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertBatch {
    pub receiver: String,
    pub group_key: String,
    pub alerts: Vec<AlertEvent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    version: String,
    #[serde(default)]
    group_key: String,
    #[serde(default)]
    receiver: String,
    alerts: Vec<WireAlert>,
    // Group fields are accepted (the payload is not malformed with them) but not needed: every
    // alert carries its own labels.
    #[serde(default, rename = "truncatedAlerts")]
    _truncated: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAlert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    #[serde(default)]
    fingerprint: String,
}

/// Alertmanager's "zero time" (`0001-01-01T00:00:00Z`) and anything before 1970 mean "not set".
fn parse_time(field: &str, i: usize, s: &str) -> Result<Option<i64>, IngestError> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| IngestError::MalformedAlert(format!("alerts[{i}].{field}: {s:?} is not an RFC 3339 time ({e})")))?;
    let ms = t.timestamp_millis();
    Ok((ms > 0).then_some(ms))
}

/// Decodes one webhook delivery. Malformed JSON, a missing required field or an invalid value
/// refuses the whole delivery with a message naming the field and the alert's index.
pub fn decode_alertmanager(body: &[u8], limits: &IngestLimits, _now_ms: i64) -> Result<AlertBatch, IngestError> {
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::BodyTooLarge { limit: limits.max_body_bytes });
    }
    let p: Payload = serde_json::from_slice(body).map_err(|e| IngestError::MalformedAlert(e.to_string()))?;
    if p.version != "4" {
        return Err(IngestError::UnsupportedWebhookVersion(p.version));
    }
    if p.alerts.len() > limits.max_alerts_per_request {
        return Err(IngestError::TooMany { what: "alerts", count: p.alerts.len(), limit: limits.max_alerts_per_request });
    }
    let mut alerts = Vec::with_capacity(p.alerts.len());
    for (i, a) in p.alerts.into_iter().enumerate() {
        let status = match a.status.as_str() {
            "firing" => AlertStatus::Firing,
            "resolved" => AlertStatus::Resolved,
            other => {
                return Err(IngestError::MalformedAlert(format!(
                    "alerts[{i}].status must be \"firing\" or \"resolved\", got {other:?}"
                )));
            }
        };
        let labels: Labels = check_labels(a.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())), limits, false)
            .map_err(|p| IngestError::MalformedAlert(format!("alerts[{i}].labels: {p}")))?;
        if labels.get("alertname").is_none_or(str::is_empty) {
            return Err(IngestError::MalformedAlert(format!("alerts[{i}].labels: missing required label \"alertname\"")));
        }
        let annotations: Labels = crate::check_annotations(a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())), limits)
            .map_err(|p| IngestError::MalformedAlert(format!("alerts[{i}].annotations: {p}")))?;
        let starts_at_ms = parse_time("startsAt", i, &a.starts_at)?
            .ok_or_else(|| IngestError::MalformedAlert(format!("alerts[{i}].startsAt is the zero time")))?;
        let ends_at_ms = match a.ends_at.as_deref() {
            None | Some("") => None,
            Some(s) => parse_time("endsAt", i, s)?,
        };
        // A firing alert's endsAt is Alertmanager's resolve timeout, not an end: keep it unset.
        let ends_at_ms = if status == AlertStatus::Firing { None } else { ends_at_ms };
        let fingerprint = if a.fingerprint.is_empty() { fingerprint(&labels) } else { a.fingerprint };
        alerts.push(AlertEvent {
            fingerprint,
            status,
            labels,
            annotations,
            starts_at_ms,
            ends_at_ms,
            generator_url: a.generator_url,
            source: if p.receiver.is_empty() { "alertmanager".into() } else { p.receiver.clone() },
        });
    }
    Ok(AlertBatch { receiver: p.receiver, group_key: p.group_key, alerts })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like a real Alertmanager 0.25 delivery.
    fn payload(status: &str, ends_at: &str) -> String {
        format!(
            r#"{{"receiver":"cairn","status":"{status}","alerts":[{{"status":"{status}","labels":{{"alertname":"HighErrorRate","service":"api","severity":"critical"}},"annotations":{{"summary":"5xx above 5%"}},"startsAt":"2026-11-24T10:00:00.123Z","endsAt":"{ends_at}","generatorURL":"http://prom:9090/graph?g0.expr=x","fingerprint":"c1f2d3e4a5b6c7d8"}}],"groupLabels":{{"alertname":"HighErrorRate"}},"commonLabels":{{"alertname":"HighErrorRate"}},"commonAnnotations":{{}},"externalURL":"http://am:9093","version":"4","groupKey":"{{}}:{{alertname=\"HighErrorRate\"}}","truncatedAlerts":0}}"#
        )
    }

    fn decode(s: &str) -> Result<AlertBatch, IngestError> {
        decode_alertmanager(s.as_bytes(), &IngestLimits::default(), 0)
    }

    #[test]
    fn firing_then_resolved_for_the_same_fingerprint() {
        let f = decode(&payload("firing", "0001-01-01T00:00:00Z")).unwrap();
        assert_eq!(f.alerts.len(), 1);
        let a = &f.alerts[0];
        assert_eq!((a.status, a.ends_at_ms, a.fingerprint.as_str()), (AlertStatus::Firing, None, "c1f2d3e4a5b6c7d8"));
        assert_eq!(a.starts_at_ms, 1_795_514_400_123);
        assert_eq!(a.alertname(), "HighErrorRate");
        assert_eq!(a.source, "cairn");
        let r = decode(&payload("resolved", "2026-11-24T10:05:00Z")).unwrap();
        let b = &r.alerts[0];
        assert_eq!((b.status, b.ends_at_ms), (AlertStatus::Resolved, Some(1_795_514_700_000)));
        assert_eq!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn missing_alertname_bad_time_wrong_version_and_bad_json_are_named() {
        let no_name = payload("firing", "0001-01-01T00:00:00Z").replace("\"alertname\":\"HighErrorRate\",\"service\"", "\"service\"");
        assert!(decode(&no_name).unwrap_err().to_string().contains("alertname"));
        let bad_time = payload("firing", "0001-01-01T00:00:00Z").replace("2026-11-24T10:00:00.123Z", "yesterday");
        assert!(decode(&bad_time).unwrap_err().to_string().contains("alerts[0].startsAt"));
        let v3 = payload("firing", "0001-01-01T00:00:00Z").replace("\"version\":\"4\"", "\"version\":\"3\"");
        assert!(matches!(decode(&v3), Err(IngestError::UnsupportedWebhookVersion(v)) if v == "3"));
        let e = decode("{\"version\":\"4\",\"alerts\":[").unwrap_err();
        assert!(matches!(e, IngestError::MalformedAlert(_)));
        assert!(e.to_string().contains("line 1"), "{e}");
        let no_alerts = decode("{\"version\":\"4\"}").unwrap_err();
        assert!(no_alerts.to_string().contains("alerts"), "{no_alerts}");
        let bad_status = payload("firing", "0001-01-01T00:00:00Z").replacen("\"status\":\"firing\",\"labels\"", "\"status\":\"burning\",\"labels\"", 1);
        assert!(decode(&bad_status).unwrap_err().to_string().contains("burning"));
    }

    #[test]
    fn a_missing_fingerprint_is_derived_from_the_labels() {
        let a = decode(&payload("firing", "0001-01-01T00:00:00Z").replace("\"fingerprint\":\"c1f2d3e4a5b6c7d8\"", "\"fingerprint\":\"\"")).unwrap();
        let b = decode(&payload("resolved", "2026-11-24T10:05:00Z").replace("\"fingerprint\":\"c1f2d3e4a5b6c7d8\"", "\"fingerprint\":\"\"")).unwrap();
        assert_eq!(a.alerts[0].fingerprint, b.alerts[0].fingerprint);
        assert_eq!(a.alerts[0].fingerprint.len(), 16);
    }

    #[test]
    fn an_oversized_annotation_is_refused_by_the_webhook_as_by_grpc() {
        let limits = IngestLimits::default();
        let body = |n: usize| {
            format!(
                r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"A"}},"annotations":{{"summary":"{}"}},"startsAt":"2026-11-24T10:00:00Z","fingerprint":"f"}}]}}"#,
                "x".repeat(n)
            )
        };
        let at_limit = decode_alertmanager(body(limits.max_annotation_value_bytes).as_bytes(), &limits, 0).unwrap();
        let webhook = decode_alertmanager(body(limits.max_annotation_value_bytes + 1).as_bytes(), &limits, 0).unwrap_err();
        assert!(webhook.to_string().contains("annotations") && webhook.to_string().contains("16384 bytes"), "{webhook}");
        // The same alert, typed as gRPC delivers it, meets the same rule.
        let mut typed = at_limit.alerts[0].clone();
        assert!(crate::validate_alert(&typed, &limits).is_ok());
        typed.annotations.insert("summary", "x".repeat(limits.max_annotation_value_bytes + 1));
        let grpc = crate::validate_alert(&typed, &limits).unwrap_err();
        assert!(grpc.to_string().contains("16384 bytes"), "{grpc}");
    }

    #[test]
    fn too_many_alerts_are_refused() {
        let l = IngestLimits { max_alerts_per_request: 0, ..Default::default() };
        assert!(matches!(
            decode_alertmanager(payload("firing", "").as_bytes(), &l, 0),
            Err(IngestError::TooMany { what: "alerts", .. })
        ));
    }
}
