//! The executor: the one path from an approved change to an adapter, re-checking at execution
//! time that the change is allowed to run (invariant 1).

use crate::MIN_AUTO_CONFIDENCE;
use cairn_types::{
    AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, Decision, Execution,
    ExecutionOutcome, Outcome, Recommendation,
};
use futures::future::BoxFuture;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Why the executor refused to run a change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ExecutionRefused {
    #[error("change is {0}, not approved")]
    NotApproved(ChangeState),
    #[error("the {0} outcome is never executed")]
    NotExecutable(Outcome),
    #[error("auto execution is only for tiers 0 and 1, this change is tier {0:?}")]
    AutoTierTooHigh(Option<u8>),
    #[error("confidence {0:.2} is below {MIN_AUTO_CONFIDENCE}: low confidence never runs by itself")]
    LowConfidence(f64),
    #[error("quorum not met: {valid} valid approvals of {required} required")]
    NoQuorum { valid: usize, required: u8 },
    #[error("the change does not match the recommendation it was opened for ({0})")]
    Mismatch(&'static str),
}

/// Checks, immediately before execution, that this exact change may run: an `auto` decision within
/// its tiers and confidence floor, or a `review` decision whose quorum is met by distinct,
/// authorised approvals bound to the current revision, policy version and action digest.
pub fn authorize_execution(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    _now_ms: i64,
) -> Result<(), ExecutionRefused> {
    if !matches!(change.state, ChangeState::Approved | ChangeState::Executing) {
        return Err(ExecutionRefused::NotApproved(change.state));
    }
    if change.recommendation_id != rec.id || change.revision != rec.revision || decision.revision != rec.revision {
        return Err(ExecutionRefused::Mismatch("revision"));
    }
    if change.policy_version != decision.policy_version || change.outcome != decision.outcome {
        return Err(ExecutionRefused::Mismatch("policy decision"));
    }
    if change.action_digest != rec.action_digest(&decision.policy_version) {
        return Err(ExecutionRefused::Mismatch("action digest"));
    }
    match decision.outcome {
        Outcome::Advisory | Outcome::Blocked => Err(ExecutionRefused::NotExecutable(decision.outcome)),
        Outcome::Auto => {
            if !matches!(decision.tier, Some(0 | 1)) {
                return Err(ExecutionRefused::AutoTierTooHigh(decision.tier));
            }
            if rec.confidence < MIN_AUTO_CONFIDENCE || rec.confidence.is_nan() {
                return Err(ExecutionRefused::LowConfidence(rec.confidence));
            }
            Ok(())
        }
        Outcome::Review => {
            let required = decision.approvals_required.max(if decision.tier == Some(3) { 2 } else { 1 });
            let valid: BTreeSet<&str> = change
                .approvals
                .iter()
                .filter(|a| {
                    a.subject != change.requester
                        && a.subject != CAIRN_SERVICE_SUBJECT
                        && a.revision == rec.revision
                        && a.policy_version == decision.policy_version
                        && a.action_digest == change.action_digest
                })
                .map(|a| a.subject.as_str())
                .collect();
            if valid.len() < usize::from(required) {
                return Err(ExecutionRefused::NoQuorum { valid: valid.len(), required });
            }
            Ok(())
        }
    }
}

/// What an adapter returns: the outcome and captured output.
pub type AdapterFuture<'a> = BoxFuture<'a, (ExecutionOutcome, String)>;

/// Something that carries out a change.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a>;
}

/// Describes what it would do and touches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunAdapter;

impl Adapter for DryRunAdapter {
    fn name(&self) -> &str {
        "dry_run"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async move {
            let mut out = format!(
                "would run {} on {} (change {}, digest {})\n",
                rec.action,
                rec.target,
                change.id,
                &change.action_digest[..change.action_digest.len().min(16)]
            );
            for (k, v) in &rec.parameters {
                out.push_str(&format!("  parameter {k} = {v}\n"));
            }
            if let Some(p) = &rec.rollback_plan {
                out.push_str(&format!("  rollback ready ({} steps, owner {})\n", p.steps.len(), p.owner));
            }
            (ExecutionOutcome::DryRun, out)
        })
    }
}

/// POSTs the change as JSON to a URL, with the action digest as the idempotency key so a retried
/// delivery is recognisable on the receiving side. 2xx is success.
#[derive(Debug)]
pub struct WebhookAdapter {
    url: String,
    client: reqwest::Client,
}

impl WebhookAdapter {
    pub fn new(url: String, timeout: Duration) -> Result<WebhookAdapter, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(WebhookAdapter { url, client })
    }
}

impl Adapter for WebhookAdapter {
    fn name(&self) -> &str {
        "webhook"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async move {
            let body = json!({ "change": change, "recommendation": rec, "action_digest": change.action_digest });
            let sent = self
                .client
                .post(&self.url)
                .header("Idempotency-Key", &change.action_digest)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let text: String = text.chars().take(4096).collect();
                    if status.is_success() {
                        (ExecutionOutcome::Succeeded, text)
                    } else {
                        (ExecutionOutcome::Failed { error: format!("webhook answered {status}") }, text)
                    }
                }
                Err(e) => (ExecutionOutcome::Failed { error: format!("webhook request failed: {e}") }, String::new()),
            }
        })
    }
}

/// Runs changes through an adapter, after [`authorize_execution`].
#[derive(Debug, Clone)]
pub struct Executor {
    adapter: Arc<dyn Adapter>,
}

impl Executor {
    pub fn new(adapter: Arc<dyn Adapter>) -> Executor {
        Executor { adapter }
    }

    /// Authorises, runs, and returns the execution record, the change's next state and the audit
    /// draft describing it. Refused changes never reach the adapter.
    pub async fn run(
        &self,
        change: &ChangeRequest,
        rec: &Recommendation,
        decision: &Decision,
        now_ms: i64,
    ) -> Result<(Execution, ChangeRequest, Vec<AuditDraft>), ExecutionRefused> {
        authorize_execution(change, rec, decision, now_ms)?;
        let (outcome, output) = self.adapter.execute(rec, change).await;
        let mut next = change.clone();
        next.state = match outcome {
            ExecutionOutcome::Succeeded | ExecutionOutcome::DryRun => ChangeState::Succeeded,
            ExecutionOutcome::Failed { .. } => ChangeState::Failed,
        };
        next.version += 1;
        next.updated_ms = now_ms;
        let execution = Execution {
            change_id: change.id.clone(),
            recommendation_id: rec.id.clone(),
            revision: rec.revision,
            adapter: self.adapter.name().to_string(),
            action_digest: change.action_digest.clone(),
            started_ms: now_ms,
            finished_ms: now_ms,
            outcome: outcome.clone(),
            output,
        };
        let draft = AuditDraft {
            actor: CAIRN_SERVICE_SUBJECT.into(),
            kind: "change.executed".into(),
            incident_id: Some(rec.incident_id.0.clone()),
            recommendation_id: Some(rec.id.0.clone()),
            revision: Some(rec.revision),
            change_id: Some(change.id.0.clone()),
            policy_version: Some(change.policy_version.clone()),
            reason: match &outcome {
                ExecutionOutcome::Failed { error } => format!("{} adapter failed: {error}", execution.adapter),
                _ => format!("{} adapter: {}", execution.adapter, next.state),
            },
            payload: json!({ "state": next.state.as_str(), "adapter": execution.adapter, "outcome": outcome, "action_digest": change.action_digest }),
        };
        Ok((execution, next, vec![draft]))
    }
}
