//! The webhook adapter: POSTs the change as JSON, signed with HMAC-SHA256 so the receiver can tell
//! that Cairn sent exactly these bytes, with the action digest as the idempotency key so a retried
//! delivery is recognisable.

use super::bounded;
use crate::{Adapter, AdapterFuture};
use cairn_types::{ChangeRequest, ExecutionOutcome, Recommendation};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Cairn-Signature";

/// Response text kept in the execution record.
const MAX_RESPONSE_BYTES: usize = 4096;

/// The value of [`SIGNATURE_HEADER`] for `body` under `key`: `sha256=` and the lowercase hex MAC.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `{phase, change, recommendation, action_digest}` to a URL. 2xx is success; anything else,
/// a timeout or a refused connection is a failure with the reason in words.
#[derive(Debug)]
pub struct WebhookAdapter {
    url: String,
    client: reqwest::Client,
    hmac_key: Option<Vec<u8>>,
}

impl WebhookAdapter {
    /// `timeout` bounds the whole request; with `hmac_key`, every body is signed.
    pub fn new(url: String, timeout: Duration, hmac_key: Option<Vec<u8>>) -> Result<WebhookAdapter, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(WebhookAdapter { url, client, hmac_key })
    }

    async fn post(&self, phase: &str, rec: &Recommendation, change: &ChangeRequest) -> (ExecutionOutcome, String) {
        let body = json!({ "phase": phase, "stage": change.stage, "change": change, "recommendation": rec, "action_digest": change.action_digest });
        // Serialised once: the signature covers exactly the bytes sent.
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return (ExecutionOutcome::Failed { error: format!("cannot encode the webhook body: {e}") }, String::new()),
        };
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            // Each stage is its own request: a receiver that deduplicates must not drop stage 2.
            .header("Idempotency-Key", match &change.stage {
                Some(stage) => format!("{}:{phase}:{stage}", change.action_digest),
                None => format!("{}:{phase}", change.action_digest),
            });
        if let Some(key) = &self.hmac_key {
            req = req.header(SIGNATURE_HEADER, sign(key, &bytes));
        }
        match req.body(bytes).send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = bounded(&resp.text().await.unwrap_or_default(), MAX_RESPONSE_BYTES);
                if status.is_success() {
                    (ExecutionOutcome::Succeeded, text)
                } else {
                    (ExecutionOutcome::Failed { error: format!("webhook answered {status}") }, text)
                }
            }
            Err(e) if e.is_timeout() => {
                (ExecutionOutcome::Failed { error: format!("webhook timed out: {e}") }, String::new())
            }
            Err(e) => (ExecutionOutcome::Failed { error: format!("webhook request failed: {e}") }, String::new()),
        }
    }
}

impl Adapter for WebhookAdapter {
    fn name(&self) -> &str {
        "webhook"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(self.post("execute", rec, change))
    }

    fn rollback<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(self.post("rollback", rec, change))
    }
}
