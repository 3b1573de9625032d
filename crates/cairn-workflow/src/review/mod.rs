//! The change-request state machine: open, approve, reject, expire.

use crate::WorkflowConfig;
use cairn_types::{
    Approval, AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeId, ChangeRequest, ChangeState, Decision,
    Outcome, Principal, Recommendation, Rejection,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Why a review action was refused. Each message says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("change {change} is {state}, not pending approval; only pending changes can be reviewed")]
    NotPending { change: ChangeId, state: ChangeState },
    #[error("change {change} expired at {expires_ms} ms; a new revision or a new request is needed")]
    Expired { change: ChangeId, expires_ms: i64 },
    #[error("revision {named} is stale: the current revision is {current}; review the current decision card and approve that")]
    StaleRevision { named: u32, current: u32 },
    #[error("the action changed since the change was opened (digest {expected} ≠ {actual}); review it again")]
    DigestMismatch { expected: String, actual: String },
    #[error("{subject} requested this change and cannot approve it (separation of duties)")]
    SelfApproval { subject: String },
    #[error("Cairn's own identity can never approve a change")]
    ServiceIdentity,
    #[error("{subject} opened the break-glass this change was opened under and cannot approve it (separation of duties)")]
    BreakGlassOwner { subject: String },
    #[error("{subject} is not in any approver group of this change ({groups})")]
    NotInApproverGroup { subject: String, groups: String },
    #[error("{subject} already approved this revision; a second approval must come from someone else")]
    AlreadyApproved { subject: String },
    #[error("a reason is required")]
    EmptyReason,
    #[error("the change cannot be approved until these fields are present: {}", fields.join(", "))]
    MissingFields { fields: Vec<&'static str> },
}

/// The fields a change needs before anyone can approve it (invariant 4). Every missing one is
/// named. The execution window is required for tier-3 changes, from the recommendation parameter
/// `execution_window` (the maintenance window it must run in); approvers are required as an
/// approval count for review outcomes (an empty group list means any authenticated principal).
pub fn missing_fields(rec: &Recommendation, decision: &Decision) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if rec.target.service.trim().is_empty() {
        missing.push("service");
    }
    if rec.target.environment.trim().is_empty() {
        missing.push("environment");
    }
    if decision.tier.is_none() {
        missing.push("risk tier");
    }
    if rec.expected_benefit.trim().is_empty() {
        missing.push("expected benefit");
    }
    match &rec.rollback_plan {
        None => {
            missing.push("rollback plan");
            missing.push("rollback owner");
        }
        Some(p) => {
            if p.steps.iter().all(|s| s.trim().is_empty()) {
                missing.push("rollback plan");
            }
            if p.owner.trim().is_empty() {
                missing.push("rollback owner");
            }
        }
    }
    if rec.verification.is_empty() {
        missing.push("verification check");
    }
    if decision.tier == Some(3) && rec.parameters.get("execution_window").is_none_or(|w| w.trim().is_empty()) {
        missing.push("execution window");
    }
    if decision.outcome == Outcome::Review && decision.approvals_required == 0 {
        missing.push("approvers");
    }
    missing
}

fn change_id(rec: &Recommendation, policy_version: &str) -> ChangeId {
    let mut h = Sha256::new();
    h.update(rec.id.0.as_bytes());
    h.update([0]);
    h.update(rec.revision.to_be_bytes());
    h.update(policy_version.as_bytes());
    ChangeId(format!("chg-{}", &hex::encode(h.finalize())[..16]))
}

/// Opens the change request for a routed recommendation revision, with the audit drafts for the
/// proposal, the decision and the change.
pub fn open_change(
    rec: &Recommendation,
    decision: &Decision,
    now_ms: i64,
    cfg: &WorkflowConfig,
) -> (ChangeRequest, Vec<AuditDraft>) {
    let state = match decision.outcome {
        Outcome::Auto => ChangeState::Approved,
        Outcome::Review => ChangeState::PendingApproval,
        Outcome::Advisory => ChangeState::Advisory,
        Outcome::Blocked => ChangeState::Blocked,
    };
    let change = ChangeRequest {
        id: change_id(rec, &decision.policy_version),
        recommendation_id: rec.id.clone(),
        revision: rec.revision,
        outcome: decision.outcome,
        tier: decision.tier,
        approvals_required: decision.approvals_required,
        approver_groups: decision.approver_groups.clone(),
        requires_window: decision.requires_window,
        policy_version: decision.policy_version.clone(),
        action_digest: rec.action_digest(&decision.policy_version),
        requester: rec.requester.clone(),
        state,
        approvals: Vec::new(),
        rejection: None,
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(cfg.pending_ttl_ms),
        updated_ms: now_ms,
        version: 1,
        stages: rec.stages(),
        stages_done: 0,
        stage: None,
        stage_approvals: Vec::new(),
        stage_approval: decision.stage_approval,
        breakglass_owner: decision.breakglass_owner.clone(),
        stop: None,
    };
    let mut proposed = AuditDraft::for_change(
        &change,
        &rec.requester,
        "recommendation.proposed",
        rec.rationale.clone(),
        json!({
            "action": rec.action.as_str(),
            "target": rec.target,
            "confidence": rec.confidence,
            "severity": rec.severity.as_str(),
            "playbook": rec.playbook,
            "playbook_version": rec.playbook_version,
            "model_version": rec.model_version,
            "evidence": rec.evidence.len(),
        }),
    );
    proposed.incident_id = Some(rec.incident_id.0.clone());
    proposed.change_id = None;
    let proposed = proposed
        .with_model_version(rec.model_version.clone())
        .with_affected_resources([rec.target.to_string()]);
    let mut decided = AuditDraft::for_change(
        &change,
        CAIRN_SERVICE_SUBJECT,
        "decision.made",
        decision.reasons.join("; "),
        json!({
            "outcome": decision.outcome.as_str(),
            "tier": decision.tier,
            "approvals_required": decision.approvals_required,
            "approver_groups": decision.approver_groups,
            "requires_window": decision.requires_window,
            "stage_approval": decision.stage_approval,
            "policy_failed": decision.policy_failed,
        }),
    );
    decided.incident_id = Some(rec.incident_id.0.clone());
    let decided = decided.with_reason_codes(decision.reasons.clone()).with_affected_resources([rec.target.to_string()]);
    let opened = AuditDraft::for_change(
        &change,
        CAIRN_SERVICE_SUBJECT,
        "change.opened",
        format!("{} change opened", change.state),
        json!({ "state": change.state.as_str(), "action_digest": change.action_digest, "expires_ms": change.expires_ms }),
    )
    .with_diff_summary(format!("state none -> {}", change.state.as_str()));
    (change, vec![proposed, decided, opened])
}

/// Checks shared by approve and reject: the change is pending, unexpired, and about the exact
/// revision and action the reviewer names.
fn check_reviewable(change: &ChangeRequest, rec: &Recommendation, revision: u32, reason: &str, now_ms: i64) -> Result<(), ReviewError> {
    if change.state != ChangeState::PendingApproval {
        return Err(ReviewError::NotPending { change: change.id.clone(), state: change.state });
    }
    if now_ms >= change.expires_ms {
        return Err(ReviewError::Expired { change: change.id.clone(), expires_ms: change.expires_ms });
    }
    check_names_this_action(change, rec, revision, reason)
}

/// The reviewer names the current revision, the action is still the one the change was opened for,
/// and there is a reason. Shared with stage approvals.
pub(crate) fn check_names_this_action(change: &ChangeRequest, rec: &Recommendation, revision: u32, reason: &str) -> Result<(), ReviewError> {
    if revision != change.revision || change.revision != rec.revision {
        return Err(ReviewError::StaleRevision { named: revision, current: rec.revision });
    }
    let actual = rec.action_digest(&change.policy_version);
    if actual != change.action_digest {
        return Err(ReviewError::DigestMismatch { expected: change.action_digest.clone(), actual });
    }
    if reason.trim().is_empty() {
        return Err(ReviewError::EmptyReason);
    }
    Ok(())
}

/// Who may approve: neither the requester nor the owner of the break-glass the change was opened
/// under (separation of duties). Shared with stage approvals.
pub(crate) fn check_not_own(change: &ChangeRequest, principal: &Principal) -> Result<(), ReviewError> {
    if principal.subject == change.requester {
        return Err(ReviewError::SelfApproval { subject: principal.subject.clone() });
    }
    if change.breakglass_owner.as_deref() == Some(principal.subject.as_str()) {
        return Err(ReviewError::BreakGlassOwner { subject: principal.subject.clone() });
    }
    Ok(())
}

/// Who may review at all: a person (never Cairn itself) in one of the change's approver groups.
pub(crate) fn check_reviewer(change: &ChangeRequest, principal: &Principal) -> Result<(), ReviewError> {
    if principal.subject == CAIRN_SERVICE_SUBJECT {
        return Err(ReviewError::ServiceIdentity);
    }
    if !principal.in_any_group(&change.approver_groups) {
        return Err(ReviewError::NotInApproverGroup {
            subject: principal.subject.clone(),
            groups: change.approver_groups.join(", "),
        });
    }
    Ok(())
}

/// An approval by `principal` bound to this exact change: the revision, the policy version and the
/// action digest it was given for (invariant 2). Stage approvals use the same binding.
pub(crate) fn bound_approval(change: &ChangeRequest, rec: &Recommendation, principal: &Principal, reason: &str, now_ms: i64) -> Approval {
    Approval {
        change_id: change.id.clone(),
        subject: principal.subject.clone(),
        recommendation_id: rec.id.clone(),
        revision: rec.revision,
        policy_version: change.policy_version.clone(),
        action_digest: change.action_digest.clone(),
        reason: reason.to_string(),
        at_ms: now_ms,
    }
}

/// Records one approval. On quorum (approvals from `approvals_required` distinct principals) the
/// change becomes approved. A staged change waiting in `awaiting_stage_approval` records an
/// approval of its next stage instead (see [`crate::stages`]).
pub fn approve(
    change: &ChangeRequest,
    rec: &Recommendation,
    principal: &Principal,
    revision: u32,
    reason: &str,
    now_ms: i64,
) -> Result<(ChangeRequest, Vec<AuditDraft>), ReviewError> {
    if change.state == ChangeState::AwaitingStageApproval {
        return crate::stages::approve_stage(change, rec, principal, revision, reason, now_ms);
    }
    check_reviewable(change, rec, revision, reason, now_ms)?;
    check_reviewer(change, principal)?;
    check_not_own(change, principal)?;
    if change.approvals.iter().any(|a| a.subject == principal.subject) {
        return Err(ReviewError::AlreadyApproved { subject: principal.subject.clone() });
    }
    let fields = missing_fields_for(change, rec);
    if !fields.is_empty() {
        return Err(ReviewError::MissingFields { fields });
    }
    let mut next = change.clone();
    next.approvals.push(bound_approval(change, rec, principal, reason, now_ms));
    next.version += 1;
    next.updated_ms = now_ms;
    let count = next.approvals.len();
    let mut drafts = vec![AuditDraft::for_change(
        &next,
        &principal.subject,
        "change.approval_recorded",
        reason.to_string(),
        json!({ "approvals": count, "required": next.approvals_required, "action_digest": next.action_digest }),
    )];
    if count >= usize::from(next.approvals_required) {
        next.state = ChangeState::Approved;
        drafts.push(AuditDraft::for_change(
            &next,
            &principal.subject,
            "change.approved",
            format!("quorum of {} met", next.approvals_required),
            json!({
                "state": next.state.as_str(),
                "approvers": next.approvals.iter().map(|a| a.subject.as_str()).collect::<Vec<_>>(),
            }),
        ));
    }
    Ok((next, drafts))
}

/// The missing-field check needs the routing decision's view; a change carries it.
fn missing_fields_for(change: &ChangeRequest, rec: &Recommendation) -> Vec<&'static str> {
    let decision = Decision {
        recommendation_id: change.recommendation_id.clone(),
        revision: change.revision,
        outcome: change.outcome,
        tier: change.tier,
        approvals_required: change.approvals_required,
        approver_groups: change.approver_groups.clone(),
        requires_window: change.requires_window,
        stage_approval: change.stage_approval,
        breakglass_owner: change.breakglass_owner.clone(),
        reasons: Vec::new(),
        policy_version: change.policy_version.clone(),
        policy_failed: false,
        decided_ms: change.created_ms,
    };
    missing_fields(rec, &decision)
}

/// Records a rejection; any one rejection vetoes the change. A staged change that already ran some
/// of its stages (waiting for the next stage's approval) is stopped instead, and what ran is rolled
/// back (see [`crate::stages`]).
pub fn reject(
    change: &ChangeRequest,
    rec: &Recommendation,
    principal: &Principal,
    revision: u32,
    reason: &str,
    now_ms: i64,
) -> Result<(ChangeRequest, Vec<AuditDraft>), ReviewError> {
    if change.is_half_done_rollout() {
        return crate::stages::stop_by_reject(change, rec, principal, revision, reason, now_ms);
    }
    check_reviewable(change, rec, revision, reason, now_ms)?;
    check_reviewer(change, principal)?;
    let mut next = change.clone();
    next.state = ChangeState::Rejected;
    next.rejection = Some(Rejection {
        subject: principal.subject.clone(),
        revision,
        reason: reason.to_string(),
        at_ms: now_ms,
    });
    next.version += 1;
    next.updated_ms = now_ms;
    let d = AuditDraft::for_change(&next, &principal.subject, "change.rejected", reason.to_string(), json!({ "state": next.state.as_str() }));
    Ok((next, vec![d]))
}

/// Expires a pending change past its deadline; `None` if it is not pending or not yet due. A
/// staged change waiting for a stage approval past its deadline is stopped, and what ran is rolled
/// back.
pub fn expire(change: &ChangeRequest, now_ms: i64) -> Option<(ChangeRequest, Vec<AuditDraft>)> {
    change.expired(now_ms).map(|(next, draft)| (next, vec![draft]))
}

#[cfg(test)]
pub(crate) mod tests;

// Whole review sequences are generated against the real server core, in
// `cairn-server/src/sequences.rs`, not against a copy of its steps here.
