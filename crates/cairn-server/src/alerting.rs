//! Escalations to people through the Alertmanager the operators already run: Cairn POSTs its
//! [`Escalation`]s to Alertmanager's v2 API (`POST /api/v2/alerts`, a JSON array of alerts with
//! labels, annotations, `startsAt`, `endsAt` and `generatorURL`), and Alertmanager routes,
//! groups, silences and notifies as configured. An escalation whose end lies in the past resolves
//! the alert with the same labels.
//!
//! Sending never blocks the pipeline: the state change and its audit event are already committed
//! when an escalation is sent, and a failed delivery is logged and counted
//! (`cairn_escalations_total{result="failed"}`), never retried forever.

use cairn_types::Escalation;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// `[alerting]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// Base URL of Alertmanager, e.g. `http://127.0.0.1:9093`. Unset: escalations are only logged
    /// and audited.
    pub alertmanager_url: Option<String>,
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub timeout_ms: u64,
    /// The `generatorURL` of every alert (where a person finds the details); default: Cairn's
    /// HTTP address.
    pub generator_url: Option<String>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig { alertmanager_url: None, timeout_ms: 5_000, generator_url: None }
    }
}

/// Why a delivery to Alertmanager failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error("cannot reach Alertmanager at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("Alertmanager at {url} answered {status}: {body}")]
    Refused { url: String, status: u16, body: String },
}

/// An Alertmanager v2 client.
#[derive(Clone, Debug)]
pub struct Alertmanager {
    alerts_url: String,
    generator_url: String,
    client: reqwest::Client,
}

/// The core hands its escalations to Alertmanager through this.
impl cairn_service::Escalator for Alertmanager {
    fn send<'a>(&'a self, escalations: &'a [Escalation]) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { Alertmanager::send(self, escalations).await.map_err(|e| e.to_string()) })
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The v2 API body for `escalations`: every alert carries `source="cairn"`, its `alertname` and
/// `severity`, the escalation's labels, and `summary`/`description` annotations.
pub fn v2_body(escalations: &[Escalation], generator_url: &str) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = escalations
        .iter()
        .map(|e| {
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), e.alertname.clone().into());
            labels.insert("severity".into(), e.severity.clone().into());
            labels.insert("source".into(), "cairn".into());
            for (k, v) in &e.labels {
                labels.insert(k.clone(), v.clone().into());
            }
            let mut alert = json!({
                "labels": labels,
                "annotations": { "summary": e.summary, "description": e.description },
                "startsAt": rfc3339(e.starts_ms),
                "generatorURL": generator_url,
            });
            if let Some(end) = e.ends_ms {
                alert["endsAt"] = rfc3339(end).into();
            }
            alert
        })
        .collect();
    serde_json::Value::Array(alerts)
}

impl Alertmanager {
    pub fn new(base_url: &str, generator_url: String, timeout: Duration) -> Result<Alertmanager, reqwest::Error> {
        Ok(Alertmanager {
            alerts_url: format!("{}/api/v2/alerts", base_url.trim_end_matches('/')),
            generator_url,
            client: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// Posts `escalations` as one batch.
    pub async fn send(&self, escalations: &[Escalation]) -> Result<(), AlertingError> {
        let body = v2_body(escalations, &self.generator_url);
        let resp = self
            .client
            .post(&self.alerts_url)
            .json(&body)
            .send()
            .await
            .map_err(|source| AlertingError::Unreachable { url: self.alerts_url.clone(), source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
        Err(AlertingError::Refused { url: self.alerts_url.clone(), status: status.as_u16(), body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn v2_body_has_the_fields_alertmanager_reads() {
        let e = Escalation {
            alertname: "CairnRollbackFailed".into(),
            severity: "critical".into(),
            labels: BTreeMap::from([("change_id".to_string(), "chg-1".to_string())]),
            summary: "s".into(),
            description: "d".into(),
            starts_ms: 1_700_000_000_000,
            ends_ms: None,
        };
        let mut resolved = e.clone();
        resolved.ends_ms = Some(1_700_000_060_500);
        let body = v2_body(&[e, resolved], "http://cairn:9464/");
        let a = &body[0];
        assert_eq!(a["labels"]["alertname"], "CairnRollbackFailed");
        assert_eq!(a["labels"]["source"], "cairn");
        assert_eq!(a["labels"]["change_id"], "chg-1");
        assert_eq!(a["annotations"]["summary"], "s");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert!(a.get("endsAt").is_none(), "an open escalation has no end");
        assert_eq!(body[1]["endsAt"], "2023-11-14T22:14:20.500Z");
        assert_eq!(a["generatorURL"], "http://cairn:9464/");
    }
}
