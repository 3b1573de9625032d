//! Progressive execution: a change whose recommendation declares stages (e.g. canary, 25%, 100%)
//! runs one stage at a time. After each stage its verification checks run; a failed check rolls
//! back every stage executed so far, newest first (rollback-first), and no later stage runs. When
//! stage transitions need approval ([`pauses_between_stages`]), the change then waits in
//! `awaiting_stage_approval` until people approve the next stage by name, under the same rules as
//! the first approval: bound to the revision, policy version and action digest, never from the
//! requester or Cairn itself, a quorum of distinct approvers for each stage.

use crate::execute::{required_approvals, verification_failed, verify};
use crate::{ExecutionGate, ExecutionRefused, Executor, ReviewError};
use cairn_types::{
    AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, Decision, Execution,
    ExecutionOutcome, Principal, Recommendation, Rejection, RolloutStop, StageApproval, StopCause,
};
use serde_json::json;

/// Whether a staged change pauses for approval before each stage after the first: the policy
/// decides ([`Decision::stage_approval`], recorded on the change when it was opened). Fail closed:
/// if either the change or the decision in force says pause, it pauses.
pub fn pauses_between_stages(change: &ChangeRequest, decision: &Decision) -> bool {
    change.stage_approval || decision.stage_approval
}

/// Part of [`authorize_execution`](crate::authorize_execution): a staged change past its first
/// stage that pauses between stages runs its next stage only with a valid quorum for that stage,
/// whose approvers the roster still authorises.
pub(crate) fn authorize_stage(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    gate: &ExecutionGate,
) -> Result<(), ExecutionRefused> {
    if change.stages != rec.stages() {
        return Err(ExecutionRefused::Mismatch("stages"));
    }
    if change.stages_done == 0 || !pauses_between_stages(change, decision) {
        return Ok(());
    }
    let Some(stage) = change.next_stage() else {
        return Err(ExecutionRefused::Mismatch("every stage already ran"));
    };
    let required = required_approvals(decision.approvals_required, decision.tier);
    let valid = crate::execute::counting_approvers(change, rec, decision, change.stage_approvals.iter().filter(|s| s.stage == stage).map(|s| &s.approval));
    let still = match &gate.roster {
        Some(roster) => valid.iter().filter(|s| roster.may_approve(s, &change.approver_groups)).count(),
        None => valid.len(),
    };
    if still < usize::from(required) {
        return Err(ExecutionRefused::NoStageApproval { stage: stage.to_string(), valid: still, required });
    }
    Ok(())
}

/// Records one approval of the next stage of a change in `awaiting_stage_approval`; on quorum the
/// change is approved again and the executor runs that stage.
pub(crate) fn approve_stage(
    change: &ChangeRequest,
    rec: &Recommendation,
    principal: &Principal,
    revision: u32,
    reason: &str,
    now_ms: i64,
) -> Result<(ChangeRequest, Vec<AuditDraft>), ReviewError> {
    if now_ms >= change.expires_ms {
        return Err(ReviewError::Expired { change: change.id.clone(), expires_ms: change.expires_ms });
    }
    crate::review::check_names_this_action(change, rec, revision, reason)?;
    crate::review::check_reviewer(change, principal)?;
    crate::review::check_not_own(change, principal)?;
    let Some(stage) = change.next_stage() else {
        return Err(ReviewError::NotPending { change: change.id.clone(), state: change.state });
    };
    if change.stage_approvals.iter().any(|s| s.stage == stage && s.approval.subject == principal.subject) {
        return Err(ReviewError::AlreadyApproved { subject: principal.subject.clone() });
    }
    let stage = stage.to_string();
    let mut next = change.clone();
    next.stage_approvals.push(StageApproval {
        stage: stage.clone(),
        approval: crate::review::bound_approval(change, rec, principal, reason, now_ms),
    });
    next.version += 1;
    next.updated_ms = now_ms;
    let required = required_approvals(change.approvals_required, change.tier);
    let count = next.stage_approvals.iter().filter(|s| s.stage == stage).count();
    let mut drafts = vec![AuditDraft::for_change(
        &next,
        &principal.subject,
        "change.stage_approval_recorded",
        reason.to_string(),
        json!({ "stage": stage, "approvals": count, "required": required, "action_digest": next.action_digest }),
    )];
    if count >= usize::from(required) {
        next.state = ChangeState::Approved;
        drafts.push(AuditDraft::for_change(
            &next,
            &principal.subject,
            "change.stage_approved",
            format!("stage {stage} approved: quorum of {required} met"),
            json!({ "state": next.state.as_str(), "stage": stage }),
        ));
    }
    Ok((next, drafts))
}

impl Executor {
    /// Runs the stages of an authorised staged change from the next one on: each stage through
    /// the adapter (which reads the stage name from the change), then its checks; it stops at the
    /// first failure, rolling back every executed stage, or before a stage that needs approval.
    pub(crate) async fn run_stages(
        &self,
        change: &ChangeRequest,
        rec: &Recommendation,
        decision: &Decision,
        now_ms: i64,
    ) -> Result<(Execution, ChangeRequest, Vec<AuditDraft>), ExecutionRefused> {
        let mut next = change.clone();
        next.version += 1;
        next.updated_ms = now_ms;
        let mut drafts = Vec::new();
        let mut output = String::new();
        let mut last = ExecutionOutcome::Succeeded;
        let pause = pauses_between_stages(change, decision);
        next.state = loop {
            let Some(stage) = next.next_stage().map(String::from) else {
                break ChangeState::Succeeded;
            };
            let index = next.stages_done as usize + 1;
            let total = next.stages.len();
            next.stage = Some(stage.clone());
            drafts.push(stage_draft(&next, "change.stage_started", format!("stage {stage} ({index} of {total}) started")));
            output.push_str(&format!("stage {stage} ({index} of {total}):\n"));
            self.before_call(&next, &crate::recover::execute_call(Some(&stage))).await?;
            let (outcome, out) = self.adapter.execute(rec, &next).await;
            output.push_str(&out);
            last = outcome.clone();
            let failed = match (&outcome, &self.verifier) {
                (ExecutionOutcome::Failed { error }, _) => Some(format!("adapter failed: {error}")),
                (ExecutionOutcome::DryRun, _) => {
                    output.push_str("verification skipped: a dry run changed nothing\n");
                    None
                }
                (ExecutionOutcome::Succeeded, None) => {
                    output.push_str("verification skipped: no verifier configured (verification.prometheus_url)\n");
                    None
                }
                (ExecutionOutcome::Succeeded, Some(v)) => {
                    let failed = verify(v.as_ref(), rec, &mut output).await;
                    if failed.is_empty() {
                        None
                    } else {
                        drafts.push(verification_failed(&next, &failed));
                        Some(format!("{} check(s) failed", failed.len()))
                    }
                }
            };
            if let Some(why) = failed {
                drafts.push(stage_draft(&next, "change.stage_failed", format!("stage {stage} failed: {why}")));
                if matches!(outcome, ExecutionOutcome::Failed { .. }) && next.stages_done == 0 {
                    // Nothing ran before, as with a one-step change whose adapter failed.
                    break ChangeState::Failed;
                }
                // A failed adapter call may have changed part of the stage: undo it too.
                let executed = next.stages_done as usize + 1;
                break self.roll_back_stages(rec, &mut next, executed, &mut output).await?;
            }
            next.stages_done += 1;
            drafts.push(stage_draft(&next, "change.stage_finished", format!("stage {stage} ({index} of {total}) finished and verified")));
            match next.next_stage().map(String::from) {
                None => break ChangeState::Succeeded,
                Some(following) if pause => {
                    let why = format!("stage {following} waits for approval");
                    output.push_str(&format!("{why}\n"));
                    // The pause has its own deadline: past it, the change expires and what ran
                    // is rolled back.
                    next.expires_ms = now_ms.saturating_add(self.stage_approval_ttl_ms);
                    let mut paused = stage_draft(&next, "change.stage_paused", why);
                    paused.payload["next_stage"] = json!(following);
                    paused.payload["expires_ms"] = json!(next.expires_ms);
                    drafts.push(paused);
                    break ChangeState::AwaitingStageApproval;
                }
                Some(_) => {}
            }
        };
        next.stage = None;
        Ok(self.record(change, rec, next, last, output, drafts, now_ms))
    }

    /// Undoes the first `executed` stages, newest first; `rolled_back`, or `rollback_failed` if
    /// any undo failed (the others are still attempted).
    async fn roll_back_stages(
        &self,
        rec: &Recommendation,
        next: &mut ChangeRequest,
        executed: usize,
        output: &mut String,
    ) -> Result<ChangeState, ExecutionRefused> {
        let mut state = ChangeState::RolledBack;
        let stages: Vec<String> = next.stages[..executed.min(next.stages.len())].to_vec();
        for stage in stages.iter().rev() {
            next.stage = Some(stage.clone());
            self.before_call(next, &crate::recover::rollback_call(Some(stage))).await?;
            let (rb, out) = self.adapter.rollback(rec, next).await;
            output.push_str(&out);
            if let ExecutionOutcome::Failed { error } = rb {
                output.push_str(&format!("rollback of stage {stage} failed: {error}\n"));
                state = ChangeState::RollbackFailed;
            }
        }
        Ok(state)
    }
}

/// Stops a rollout that ran some of its stages on a person's word: a reject of a change waiting
/// for its next stage's approval (or approved for it and not yet running). Who may stop it: whoever
/// may review it (a person in its approver groups, never Cairn itself), the requester included —
/// stopping only ever undoes, and the one who asked for a change may ask for it to be undone. The
/// reviewer names the current revision and the unchanged action and gives a reason, as for an
/// approval. The change moves to `rollback_pending`; the executor undoes its executed stages.
pub(crate) fn stop_by_reject(
    change: &ChangeRequest,
    rec: &Recommendation,
    principal: &Principal,
    revision: u32,
    reason: &str,
    now_ms: i64,
) -> Result<(ChangeRequest, Vec<AuditDraft>), ReviewError> {
    if !change.is_half_done_rollout() {
        return Err(ReviewError::NotPending { change: change.id.clone(), state: change.state });
    }
    if change.state == ChangeState::AwaitingStageApproval && now_ms >= change.expires_ms {
        return Err(ReviewError::Expired { change: change.id.clone(), expires_ms: change.expires_ms });
    }
    crate::review::check_names_this_action(change, rec, revision, reason)?;
    crate::review::check_reviewer(change, principal)?;
    let stop = RolloutStop { cause: StopCause::Rejected, subject: principal.subject.clone(), reason: reason.to_string(), at_ms: now_ms };
    let (mut next, draft) = change.stop_rollout(stop, now_ms);
    next.rejection = Some(Rejection { subject: principal.subject.clone(), revision, reason: reason.to_string(), at_ms: now_ms });
    Ok((next, vec![draft]))
}


impl Executor {
    /// Undoes the executed stages of a stopped rollout (rejected, expired, superseded, refused or
    /// interrupted; an interrupted one also undoes the stage it was running),
    /// newest first, through the adapter's rollback — the path a failed check takes. The change
    /// must have been claimed from `rollback_pending` (state `executing`, with its stop recorded).
    /// Ends `rolled_back`, or `rollback_failed` if any undo failed (the others are still tried).
    pub async fn roll_back_stopped(
        &self,
        change: &ChangeRequest,
        rec: &Recommendation,
        now_ms: i64,
    ) -> Result<(Execution, ChangeRequest, Vec<AuditDraft>), ExecutionRefused> {
        if change.state != ChangeState::Executing || change.stop.is_none() {
            return Err(ExecutionRefused::NotApproved(change.state));
        }
        if change.recommendation_id != rec.id || change.revision != rec.revision {
            return Err(ExecutionRefused::Mismatch("revision"));
        }
        let mut next = change.clone();
        next.version += 1;
        next.updated_ms = now_ms;
        // A rollout interrupted during a stage names that stage: its effect is unknown, so it is
        // undone too, as a stage whose adapter call failed is.
        let in_flight = change.stage.is_some() && change.stage.as_deref() == change.next_stage();
        let executed = change.stages_done as usize + usize::from(in_flight);
        let mut output = format!(
            "rollout stopped ({}); rolling back {executed} executed stage(s), newest first\n",
            change.stop.as_ref().map(|s| s.reason.as_str()).unwrap_or_default()
        );
        next.state = self.roll_back_stages(rec, &mut next, executed, &mut output).await?;
        next.stage = None;
        let outcome = match next.state {
            ChangeState::RolledBack => ExecutionOutcome::Succeeded,
            _ => ExecutionOutcome::Failed { error: "rollback of a stopped rollout failed".into() },
        };
        Ok(self.record(change, rec, next, outcome, output, Vec::new(), now_ms))
    }
}

fn stage_draft(change: &ChangeRequest, kind: &str, summary: String) -> AuditDraft {
    AuditDraft::for_change(
        change,
        CAIRN_SERVICE_SUBJECT,
        kind,
        summary,
        json!({ "stage": change.stage, "stages_done": change.stages_done, "stages": change.stages }),
    )
}

#[cfg(test)]
mod tests;
