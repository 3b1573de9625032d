//! The executor: the one path from an approved change to an adapter, re-checking at execution
//! time that the change is allowed to run (invariant 1).

use crate::{ExecutionGate, MIN_AUTO_CONFIDENCE, Verifier};
use cairn_types::{
    AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, Decision, Execution,
    ExecutionOutcome, Outcome, Recommendation,
};
use futures::future::BoxFuture;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

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
    #[error("tier-3 changes run only inside an open maintenance window, and none is open for {0} now")]
    OutsideWindow(String),
    #[error("quorum no longer met: {valid} valid approvals of {required} required; no longer authorised to approve: {}", revoked.join(", "))]
    ApproverNoLongerAuthorised { valid: usize, required: u8, revoked: Vec<String> },
    #[error("the break-glass this change was opened under no longer allows it: {0}")]
    BreakGlassLapsed(String),
    #[error("stage {stage} has {valid} valid stage approvals of {required} required")]
    NoStageApproval { stage: String, valid: usize, required: u8 },
    #[error("the rollout was stopped ({0}): its executed stages are only rolled back, no further stage runs")]
    Stopped(String),
    #[error("this executor no longer holds the change ({0}): it does not touch the target again")]
    ClaimLost(String),
}

/// Checks, immediately before execution, that this exact change may run: an `auto` decision within
/// its tiers and confidence floor, or a `review` decision whose quorum is met by distinct,
/// authorised approvals bound to the current revision, policy version and action digest — whose
/// approvers are still authorised by `gate`'s roster, and (tier 3, or when the decision asks) with a
/// maintenance window open for the target now.
pub fn authorize_execution(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    gate: &ExecutionGate,
    now_ms: i64,
) -> Result<(), ExecutionRefused> {
    if !matches!(change.state, ChangeState::Approved | ChangeState::Executing) {
        return Err(ExecutionRefused::NotApproved(change.state));
    }
    if let Some(stop) = &change.stop {
        return Err(ExecutionRefused::Stopped(stop.reason.clone()));
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
    crate::stages::authorize_stage(change, rec, decision, gate)?;
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
            let required = required_approvals(decision.approvals_required, decision.tier);
            let valid = counting_approvers(change, rec, decision, &change.approvals);
            if valid.len() < usize::from(required) {
                return Err(ExecutionRefused::NoQuorum { valid: valid.len(), required });
            }
            if let Some(roster) = &gate.roster {
                let (still, revoked): (Vec<&str>, Vec<&str>) =
                    valid.iter().partition(|s| roster.may_approve(s, &change.approver_groups));
                if still.len() < usize::from(required) {
                    let revoked = revoked.into_iter().map(String::from).collect();
                    return Err(ExecutionRefused::ApproverNoLongerAuthorised { valid: still.len(), required, revoked });
                }
            }
            if (decision.tier == Some(3) || decision.requires_window || change.requires_window)
                && gate.windows.open_for(&rec.target, now_ms).is_none()
            {
                return Err(ExecutionRefused::OutsideWindow(rec.target.to_string()));
            }
            Ok(())
        }
    }
}

/// The one rule for which approvals count, for a change and for each of its stages: distinct
/// people other than the requester, Cairn itself and a break-glass's owner, who approved this very
/// revision under this policy version and this action digest. (Whether the roster still
/// authorises them is checked after, against the current configuration.)
pub(crate) fn counting_approvers<'a>(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    approvals: impl IntoIterator<Item = &'a cairn_types::Approval>,
) -> BTreeSet<&'a str> {
    approvals
        .into_iter()
        .filter(|a| {
            a.subject != change.requester
                && a.subject != CAIRN_SERVICE_SUBJECT
                && change.breakglass_owner.as_deref() != Some(a.subject.as_str())
                && decision.breakglass_owner.as_deref() != Some(a.subject.as_str())
                && a.revision == rec.revision
                && a.revision == change.revision
                && a.policy_version == decision.policy_version
                && a.policy_version == change.policy_version
                && a.action_digest == change.action_digest
        })
        .map(|a| a.subject.as_str())
        .collect()
}

/// Distinct approvals a review needs: what the policy asked, at least one, at least two at tier 3.
pub(crate) fn required_approvals(asked: u8, tier: Option<u8>) -> u8 {
    asked.max(cairn_types::min_approvals(tier))
}

/// The change's state when the executor refused it: failed, visibly, with the refusal audited.
///
/// A staged change that already ran some of its stages is not left half-done: it moves to
/// `rollback_pending`, and the executor undoes those stages.
pub fn refuse(change: &ChangeRequest, refused: &ExecutionRefused, now_ms: i64) -> (ChangeRequest, Vec<AuditDraft>) {
    if change.stages_done > 0 && change.next_stage().is_some() {
        let stop = cairn_types::RolloutStop {
            cause: cairn_types::StopCause::Refused,
            subject: CAIRN_SERVICE_SUBJECT.to_string(),
            reason: refused.to_string(),
            at_ms: now_ms,
        };
        let (next, draft) = change.stop_rollout(stop, now_ms);
        return (next, vec![draft]);
    }
    let mut next = change.clone();
    next.advance(ChangeState::Failed, now_ms);
    let draft = AuditDraft::for_change(
        &next,
        CAIRN_SERVICE_SUBJECT,
        "change.execution_refused",
        refused.to_string(),
        json!({ "state": next.state.as_str() }),
    );
    (next, vec![draft])
}

/// What an adapter returns: the outcome and captured output.
pub type AdapterFuture<'a> = BoxFuture<'a, (ExecutionOutcome, String)>;

/// Something that carries out a change, and undoes it.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a>;
    /// Carries out the recommendation's rollback plan.
    fn rollback<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a>;
}

/// Runs changes through an adapter, after [`authorize_execution`], then verifies them.
#[derive(Debug, Clone)]
pub struct Executor {
    pub(crate) adapter: Arc<dyn Adapter>,
    pub(crate) verifier: Option<Arc<dyn Verifier>>,
    gate: Arc<ExecutionGate>,
    /// How long a staged change waits for its next stage's approval before it expires.
    pub(crate) stage_approval_ttl_ms: i64,
    /// Told before every adapter call; renews the claim (see `recover.rs`).
    journal: Option<Arc<dyn crate::RunJournal>>,
}

impl Executor {
    pub fn new(adapter: Arc<dyn Adapter>) -> Executor {
        let stage_approval_ttl_ms = crate::WorkflowConfig::default().stage_approval_ttl_ms;
        Executor { adapter, verifier: None, gate: Arc::default(), stage_approval_ttl_ms, journal: None }
    }

    /// `journal` learns of every adapter call before it happens, and can forbid it when this
    /// executor no longer holds the change.
    pub fn with_journal(mut self, journal: Arc<dyn crate::RunJournal>) -> Executor {
        self.journal = Some(journal);
        self
    }

    /// Tells the journal that `call` is about to touch `change`'s target; refused when the claim
    /// on the change was lost.
    pub(crate) async fn before_call(&self, change: &ChangeRequest, call: &str) -> Result<(), ExecutionRefused> {
        match &self.journal {
            Some(j) => j.before_adapter_call(change, call).await.map_err(ExecutionRefused::ClaimLost),
            None => Ok(()),
        }
    }

    /// A staged change that pauses for its next stage expires this long after the pause
    /// (`workflow.stage_approval_ttl_ms`).
    pub fn with_stage_approval_ttl_ms(mut self, ttl_ms: i64) -> Executor {
        self.stage_approval_ttl_ms = ttl_ms;
        self
    }

    /// The same gate, journal and stage deadline in front of another adapter, with no verifier:
    /// for changes that are not to the monitored system (a policy activation checks itself).
    pub fn with_adapter(&self, adapter: Arc<dyn Adapter>) -> Executor {
        Executor { adapter, verifier: None, ..self.clone() }
    }

    /// Maintenance windows and the current approver roster, re-checked before every run.
    pub fn with_gate(mut self, gate: Arc<ExecutionGate>) -> Executor {
        self.gate = gate;
        self
    }

    pub fn gate(&self) -> &ExecutionGate {
        &self.gate
    }

    /// Verification checks run through `verifier` after every real (not dry-run) execution.
    pub fn with_verifier(mut self, verifier: Arc<dyn Verifier>) -> Executor {
        self.verifier = Some(verifier);
        self
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
        authorize_execution(change, rec, decision, &self.gate, now_ms)?;
        if !change.stages.is_empty() {
            return self.run_stages(change, rec, decision, now_ms).await;
        }
        self.before_call(change, &crate::recover::execute_call(None)).await?;
        let (outcome, mut output) = self.adapter.execute(rec, change).await;
        let mut next = change.clone();
        next.version += 1;
        next.updated_ms = now_ms;
        let mut drafts = Vec::new();
        next.state = match (&outcome, &self.verifier) {
            (ExecutionOutcome::Failed { .. }, _) => ChangeState::Failed,
            (ExecutionOutcome::DryRun, _) => {
                output.push_str("verification skipped: a dry run changed nothing\n");
                ChangeState::Succeeded
            }
            (ExecutionOutcome::Succeeded, None) => {
                output.push_str("verification skipped: no verifier configured (verification.prometheus_url)\n");
                ChangeState::Succeeded
            }
            (ExecutionOutcome::Succeeded, Some(v)) => {
                let failed = verify(v.as_ref(), rec, &mut output).await;
                if failed.is_empty() {
                    ChangeState::Succeeded
                } else {
                    // Rollback-first: a change that does not verify is undone without waiting for
                    // anyone; a rollback that fails is left visible for people.
                    drafts.push(verification_failed(change, &failed));
                    self.before_call(change, &crate::recover::rollback_call(None)).await?;
                    let (rb, rb_out) = self.adapter.rollback(rec, change).await;
                    output.push_str(&rb_out);
                    match rb {
                        ExecutionOutcome::Failed { error } => {
                            output.push_str(&format!("rollback failed: {error}\n"));
                            ChangeState::RollbackFailed
                        }
                        _ => ChangeState::RolledBack,
                    }
                }
            }
        };
        Ok(self.record(change, rec, next, outcome, output, drafts, now_ms))
    }

    /// The execution record of one run and its `change.executed` (and rollback) audit drafts,
    /// around the drafts the run already made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        change: &ChangeRequest,
        rec: &Recommendation,
        next: ChangeRequest,
        outcome: ExecutionOutcome,
        output: String,
        mut drafts: Vec<AuditDraft>,
        now_ms: i64,
    ) -> (Execution, ChangeRequest, Vec<AuditDraft>) {
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
        let mut executed = AuditDraft::for_change(
            &next,
            CAIRN_SERVICE_SUBJECT,
            "change.executed",
            match &outcome {
                ExecutionOutcome::Failed { error } => format!("{} adapter failed: {error}", execution.adapter),
                _ => format!("{} adapter: {}", execution.adapter, next.state),
            },
            json!({ "state": next.state.as_str(), "adapter": execution.adapter, "outcome": outcome, "action_digest": change.action_digest }),
        );
        executed.incident_id = Some(rec.incident_id.0.clone());
        drafts.insert(0, executed);
        if matches!(next.state, ChangeState::RolledBack | ChangeState::RollbackFailed) {
            drafts.push(AuditDraft::for_change(
                &next,
                CAIRN_SERVICE_SUBJECT,
                if next.state == ChangeState::RolledBack { "change.rolled_back" } else { "change.rollback_failed" },
                format!("rollback via {}: {}", execution.adapter, next.state),
                json!({ "state": next.state.as_str() }),
            ));
        }
        (execution, next, drafts)
    }
}

/// Runs the recommendation's verification checks, writing each result to `output`; the failed ones.
pub(crate) async fn verify(v: &dyn Verifier, rec: &Recommendation, output: &mut String) -> Vec<crate::CheckResult> {
    let mut failed = Vec::new();
    for check in &rec.verification {
        let r = v.check(check).await;
        output.push_str(&format!("check {}: {}\n", r.name, r.detail));
        if !r.passed {
            failed.push(r);
        }
    }
    failed
}

/// The audit draft saying which checks failed.
pub(crate) fn verification_failed(change: &ChangeRequest, failed: &[crate::CheckResult]) -> AuditDraft {
    AuditDraft::for_change(
        change,
        CAIRN_SERVICE_SUBJECT,
        "change.verification_failed",
        failed.iter().map(|r| format!("{}: {}", r.name, r.detail)).collect::<Vec<_>>().join("; "),
        json!({ "failed_checks": failed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "stage": change.stage }),
    )
}
