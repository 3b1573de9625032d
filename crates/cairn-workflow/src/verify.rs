//! Verification: after a change runs, its checks decide whether it worked. A PromQL check asks a
//! Prometheus server's HTTP API (`/api/v1/query`) and compares the result with a threshold,
//! retrying until the check's deadline.

use cairn_types::VerificationCheck;
use futures::future::BoxFuture;
#[cfg(feature = "http")]
use std::time::{Duration, Instant};

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub observed: Option<f64>,
    /// What was asked and what came back, in words.
    pub detail: String,
}

/// Runs verification checks.
pub trait Verifier: Send + Sync + std::fmt::Debug {
    fn check<'a>(&'a self, check: &'a VerificationCheck) -> BoxFuture<'a, CheckResult>;
}

/// `observed <comparator> threshold`; an unknown comparator never passes.
pub fn compare(observed: f64, comparator: &str, threshold: f64) -> bool {
    match comparator {
        "<" => observed < threshold,
        "<=" => observed <= threshold,
        ">" => observed > threshold,
        ">=" => observed >= threshold,
        "==" => observed == threshold,
        _ => false,
    }
}

/// Checks PromQL expressions against a Prometheus server.
#[cfg(feature = "http")]
#[derive(Debug)]
pub struct PromQlVerifier {
    base_url: String,
    client: reqwest::Client,
    /// Pause between attempts while a check has not passed yet.
    interval: Duration,
    /// Upper bound on any one check's wait, whatever its `within_secs` says.
    max_wait: Duration,
}

#[cfg(feature = "http")]
impl PromQlVerifier {
    /// `timeout` bounds each HTTP request; a check is retried every `interval` until it passes or
    /// `min(within_secs, max_wait)` has passed.
    pub fn new(base_url: &str, timeout: Duration, interval: Duration, max_wait: Duration) -> Result<PromQlVerifier, reqwest::Error> {
        Ok(PromQlVerifier {
            base_url: base_url.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().timeout(timeout).build()?,
            interval,
            max_wait,
        })
    }

    /// One evaluation: the value of a scalar, or of the first sample of a vector.
    async fn evaluate(&self, query: &str) -> Result<f64, String> {
        let resp = self
            .client
            .get(format!("{}/api/v1/query", self.base_url))
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| format!("cannot reach Prometheus: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("Prometheus answered {status} with no JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("Prometheus refused the query: {}", body["error"].as_str().unwrap_or("unknown error")));
        }
        let data = &body["data"];
        let value = match data["resultType"].as_str() {
            Some("scalar") => &data["result"][1],
            Some("vector") => &data["result"][0]["value"][1],
            other => return Err(format!("unsupported result type {other:?}; use a query that returns a scalar or a vector")),
        };
        match value.as_str() {
            Some(s) => s.parse::<f64>().map_err(|e| format!("value {s:?} is not a number: {e}")),
            None => Err("the query returned no samples".into()),
        }
    }
}

#[cfg(feature = "http")]
impl Verifier for PromQlVerifier {
    fn check<'a>(&'a self, check: &'a VerificationCheck) -> BoxFuture<'a, CheckResult> {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(check.within_secs).min(self.max_wait);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let (passed, observed, why) = match self.evaluate(&check.query).await {
                    Ok(v) => (compare(v, &check.comparator, check.threshold), Some(v), format!("observed {v}")),
                    Err(e) => (false, None, e),
                };
                if passed || Instant::now() + self.interval > deadline {
                    return CheckResult {
                        name: check.name.clone(),
                        passed,
                        observed,
                        detail: format!(
                            "{} {} {} — {why} after {attempts} attempt(s): {}",
                            check.query,
                            check.comparator,
                            check.threshold,
                            if passed { "passed" } else { "failed" }
                        ),
                    };
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn comparators_mean_what_they_say() {
        assert!(compare(1.0, ">=", 1.0) && !compare(0.9, ">=", 1.0));
        assert!(compare(0.5, "<", 1.0) && !compare(1.0, "<", 1.0));
        assert!(compare(1.0, "<=", 1.0) && compare(2.0, ">", 1.0) && compare(0.0, "==", 0.0));
        assert!(!compare(1.0, "~", 1.0), "an unknown comparator never passes");
        assert!(!compare(f64::NAN, ">=", 0.0) && !compare(f64::NAN, "<", 0.0), "NaN passes nothing");
    }
}
