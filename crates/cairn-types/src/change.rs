//! What review, execution and audit give: change requests, approvals, executions, audit events.

use crate::{Outcome, RecommendationId, TimestampMs};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable change-request id, e.g. `chg-…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(pub String);

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated identity. `subject` is stable (never a display name) and is what approvals bind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    pub subject: String,
    pub display_name: String,
    pub groups: Vec<String>,
}

impl Principal {
    /// Whether the principal belongs to one of `groups`. An empty list names nobody: approval is
    /// never open to "anyone authenticated".
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.groups.contains(g))
    }
}

/// Where a change request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Routed to review; waiting for its quorum.
    PendingApproval,
    /// Allowed to run (auto, or quorum met); waiting for the executor.
    Approved,
    /// Shown to people only; never executed.
    Advisory,
    /// Not executable under the policy version that routed it.
    Blocked,
    Rejected,
    Expired,
    /// A newer revision or policy version replaced it; its approvals are void.
    Superseded,
    Executing,
    Succeeded,
    Failed,
    RolledBack,
    RollbackFailed,
    /// A staged change ran some of its stages, verified them, and waits for a person to approve
    /// the next stage (named by [`ChangeRequest::next_stage`]).
    AwaitingStageApproval,
    /// A staged change that ran some of its stages was stopped (rejected, expired, superseded,
    /// refused or interrupted; see [`ChangeRequest::stop`]); it waits for the executor to undo those stages,
    /// newest first, and ends `rolled_back` or `rollback_failed`.
    RollbackPending,
}

impl ChangeState {
    pub const ALL: [ChangeState; 14] = [
        ChangeState::PendingApproval,
        ChangeState::Approved,
        ChangeState::Advisory,
        ChangeState::Blocked,
        ChangeState::Rejected,
        ChangeState::Expired,
        ChangeState::Superseded,
        ChangeState::Executing,
        ChangeState::Succeeded,
        ChangeState::Failed,
        ChangeState::RolledBack,
        ChangeState::RollbackFailed,
        ChangeState::AwaitingStageApproval,
        ChangeState::RollbackPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::PendingApproval => "pending_approval",
            ChangeState::Approved => "approved",
            ChangeState::Advisory => "advisory",
            ChangeState::Blocked => "blocked",
            ChangeState::Rejected => "rejected",
            ChangeState::Expired => "expired",
            ChangeState::Superseded => "superseded",
            ChangeState::Executing => "executing",
            ChangeState::Succeeded => "succeeded",
            ChangeState::Failed => "failed",
            ChangeState::RolledBack => "rolled_back",
            ChangeState::RollbackFailed => "rollback_failed",
            ChangeState::AwaitingStageApproval => "awaiting_stage_approval",
            ChangeState::RollbackPending => "rollback_pending",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeState> {
        ChangeState::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The transition table: whether a change stored in `self` may next be stored in `to`. The
    /// store refuses every other write, so no path (a bug, a forged request, a second backend)
    /// can move a change where its lifecycle does not go. Staying in a live state is allowed (an
    /// approval recorded, a stage approved); nothing leaves a terminal state.
    pub fn may_become(self, to: ChangeState) -> bool {
        use ChangeState::*;
        if self == to {
            return !self.is_terminal();
        }
        match self {
            PendingApproval => matches!(to, Approved | Rejected | Expired | Superseded),
            // Claimed; replaced by a newer revision; a half-done rollout stopped; held by a guardrail.
            Approved => matches!(to, Executing | Superseded | RollbackPending | PendingApproval),
            // Finished; paused before the next stage; stopped mid-rollout; recovered to wait again
            // (a lost claim whose approval still holds); held by a guardrail after the claim.
            Executing => matches!(
                to,
                Succeeded | Failed | RolledBack | RollbackFailed | AwaitingStageApproval | RollbackPending | Approved | PendingApproval
            ),
            AwaitingStageApproval => matches!(to, Approved | RollbackPending),
            RollbackPending => matches!(to, Executing | RolledBack | RollbackFailed),
            Advisory | Blocked | Rejected | Expired | Superseded | Succeeded | Failed | RolledBack | RollbackFailed => false,
        }
    }

    /// No further transitions happen from a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ChangeState::Advisory
                | ChangeState::Blocked
                | ChangeState::Rejected
                | ChangeState::Expired
                | ChangeState::Superseded
                | ChangeState::Succeeded
                | ChangeState::Failed
                | ChangeState::RolledBack
                | ChangeState::RollbackFailed
        )
    }
}

impl fmt::Display for ChangeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approval: a principal bound to one exact action digest (which covers the recommendation
/// revision and the policy version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub change_id: ChangeId,
    pub subject: String,
    pub recommendation_id: RecommendationId,
    pub revision: u32,
    pub policy_version: String,
    pub action_digest: String,
    pub reason: String,
    pub at_ms: TimestampMs,
}

/// An approval of one stage transition of a staged change: `approval` binds the revision, policy
/// version and action digest as any approval does, and `stage` names the stage it lets run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageApproval {
    pub stage: String,
    pub approval: Approval,
}

/// Why a staged rollout was stopped before its last stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// A person rejected it while it waited for a stage approval.
    Rejected,
    /// No stage approval came before the deadline.
    Expired,
    /// A newer revision of its recommendation replaced it.
    Superseded,
    /// The executor refused to run its next stage.
    Refused,
    /// The executor that held it stopped (crashed, killed, restarted) while it was running, and
    /// its claim on the change lapsed.
    Interrupted,
}

impl StopCause {
    /// The name used in the API and on the decision card.
    pub fn as_str(self) -> &'static str {
        match self {
            StopCause::Rejected => "rejected",
            StopCause::Expired => "expired",
            StopCause::Superseded => "superseded",
            StopCause::Refused => "refused",
            StopCause::Interrupted => "interrupted",
        }
    }

    /// The audit event kind that records the stop.
    pub fn audit_kind(self) -> &'static str {
        match self {
            StopCause::Rejected => "change.rejected",
            StopCause::Expired => "change.expired",
            StopCause::Superseded => "change.superseded",
            StopCause::Refused => "change.execution_refused",
            StopCause::Interrupted => "change.interrupted",
        }
    }
}

/// Who or what stopped a staged rollout, and why: its executed stages are rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStop {
    pub cause: StopCause,
    /// The person who rejected it, or Cairn itself.
    pub subject: String,
    pub reason: String,
    pub at_ms: TimestampMs,
}

impl RolloutStop {
    /// Cairn stops a rollout whose next stage was not approved before its deadline.
    pub fn expired(change: &ChangeRequest, now_ms: TimestampMs) -> RolloutStop {
        RolloutStop {
            cause: StopCause::Expired,
            subject: crate::CAIRN_SERVICE_SUBJECT.to_string(),
            reason: format!("no approval of stage {} before the deadline", change.next_stage().unwrap_or_default()),
            at_ms: now_ms,
        }
    }
}

/// A rejection vetoes the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub subject: String,
    pub revision: u32,
    pub reason: String,
    pub at_ms: TimestampMs,
}

/// A change request: one recommendation revision made executable under one decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub id: ChangeId,
    pub recommendation_id: RecommendationId,
    pub revision: u32,
    pub outcome: Outcome,
    pub tier: Option<u8>,
    pub approvals_required: u8,
    pub approver_groups: Vec<String>,
    pub requires_window: bool,
    pub policy_version: String,
    pub action_digest: String,
    pub requester: String,
    pub state: ChangeState,
    pub approvals: Vec<Approval>,
    pub rejection: Option<Rejection>,
    pub created_ms: TimestampMs,
    /// Pending requests expire at this time.
    pub expires_ms: TimestampMs,
    pub updated_ms: TimestampMs,
    /// Incremented on every state change; the store refuses a write whose version is stale, so two
    /// reviewers (or replicas) racing on one change cannot both win.
    pub version: u64,
    /// The progressive stages of the change, in order (e.g. canary, 25%, 100%), copied from the
    /// recommendation; empty for a change that runs in one step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// How many stages ran and verified.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stages_done: u32,
    /// The stage an adapter is asked to run (or undo) right now; adapters read it from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Approvals of stage transitions, each naming the stage it lets run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_approvals: Vec<StageApproval>,
    /// Whether the decision in force makes a staged change wait for a person before each stage
    /// after the first ([`crate::Decision::stage_approval`]). Absent in a change stored before the
    /// field existed: pause (fail closed).
    #[serde(default = "pause_between_stages_by_default")]
    pub stage_approval: bool,
    /// The owner of the break-glass this change was opened under, who may not approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakglass_owner: Option<String>,
    /// Set when a half-done rollout was stopped; its executed stages are then rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<RolloutStop>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// When nobody said whether stages pause, they pause.
pub(crate) fn pause_between_stages_by_default() -> bool {
    true
}

impl ChangeRequest {
    /// Moves this (already cloned) change to `to` at `now_ms`: the state, the version every write
    /// bumps, the time. Whether the move is allowed is [`ChangeState::may_become`], which the store
    /// enforces on every write.
    pub fn advance(&mut self, to: ChangeState, now_ms: TimestampMs) {
        self.state = to;
        self.version += 1;
        self.updated_ms = now_ms;
    }

    /// The stage that runs next, if the change is staged and not finished.
    pub fn next_stage(&self) -> Option<&str> {
        self.stages.get(self.stages_done as usize).map(String::as_str)
    }

    /// A staged change that ran some but not all of its stages and is not running now: waiting for
    /// a stage approval, or approved for its next stage and not yet claimed. Stopping it means
    /// undoing what ran.
    pub fn is_half_done_rollout(&self) -> bool {
        self.stages_done > 0
            && self.next_stage().is_some()
            && matches!(self.state, ChangeState::AwaitingStageApproval | ChangeState::Approved)
    }

    /// Stops a staged change whose stages ran in part: it moves to `rollback_pending` (the executor
    /// then undoes its executed stages, newest first), with the audit draft recording the stop.
    /// The caller checks that stopping is allowed ([`ChangeRequest::is_half_done_rollout`], or a
    /// refusal of a claimed change).
    pub fn stop_rollout(&self, stop: RolloutStop, now_ms: TimestampMs) -> (ChangeRequest, AuditDraft) {
        let mut next = self.clone();
        next.advance(ChangeState::RollbackPending, now_ms);
        let undo: Vec<&str> = self.stages[..(self.stages_done as usize).min(self.stages.len())].iter().rev().map(String::as_str).collect();
        let draft = AuditDraft::for_change(
            &next,
            &stop.subject,
            stop.cause.audit_kind(),
            format!("{}; rolling back stage(s) {}", stop.reason, undo.join(", ")),
            serde_json::json!({
                "state": next.state.as_str(),
                "from_state": self.state.as_str(),
                "cause": stop.cause,
                "stages_done": self.stages_done,
                "roll_back": undo,
            }),
        )
        .with_diff_summary(format!("state {} -> {}", self.state.as_str(), next.state.as_str()));
        next.stop = Some(stop);
        (next, draft)
    }

    /// An audit draft by Cairn itself recording this change's (new) state and version.
    pub fn system_draft(&self, kind: &str, reason: String) -> AuditDraft {
        AuditDraft::for_change(
            self,
            crate::CAIRN_SERVICE_SUBJECT,
            kind,
            reason,
            serde_json::json!({ "state": self.state.as_str(), "version": self.version }),
        )
    }

    /// The deadline rule, planned: a change pending approval past its deadline expires; a rollout
    /// paused for a stage approval past its deadline is stopped and rolled back. `None` when the
    /// change is not due. Every store applies this; none writes its own.
    pub fn expired(&self, now_ms: TimestampMs) -> Option<(ChangeRequest, AuditDraft)> {
        if now_ms < self.expires_ms {
            return None;
        }
        match self.state {
            ChangeState::AwaitingStageApproval => Some(self.stop_rollout(RolloutStop::expired(self, now_ms), now_ms)),
            ChangeState::PendingApproval => {
                let mut next = self.clone();
                next.advance(ChangeState::Expired, now_ms);
                let why = format!("no quorum before the deadline ({} of {} approvals)", self.approvals.len(), self.approvals_required);
                let draft = next.system_draft("change.expired", why);
                Some((next, draft))
            }
            _ => None,
        }
    }

    /// Invariant 2, planned for a change of an earlier revision than the newest (or of a withdrawn
    /// recommendation): one that has not started running is superseded and its approvals are
    /// void; a half-done rollout is stopped and its executed stages are rolled back. `None` for a
    /// change that is running or finished: a claim is exclusive, and the result it records is
    /// checked again then. Every store applies this; none writes its own.
    pub fn superseded(&self, reason: String, now_ms: TimestampMs) -> Option<(ChangeRequest, AuditDraft)> {
        if self.is_half_done_rollout() {
            let stop = RolloutStop { cause: StopCause::Superseded, subject: crate::CAIRN_SERVICE_SUBJECT.to_string(), reason, at_ms: now_ms };
            return Some(self.stop_rollout(stop, now_ms));
        }
        if !matches!(self.state, ChangeState::PendingApproval | ChangeState::Approved) {
            return None;
        }
        let mut next = self.clone();
        next.advance(ChangeState::Superseded, now_ms);
        let draft = next.system_draft("change.superseded", format!("{reason}; its approvals are void"));
        Some((next, draft))
    }
}

/// The states [`ChangeRequest::expired`] may act on: what a store selects past the deadline.
pub const EXPIRING_STATES: [ChangeState; 2] = [ChangeState::PendingApproval, ChangeState::AwaitingStageApproval];

/// The states [`ChangeRequest::superseded`] may act on: what a store selects of earlier revisions.
pub const SUPERSEDABLE_STATES: [ChangeState; 3] =
    [ChangeState::PendingApproval, ChangeState::Approved, ChangeState::AwaitingStageApproval];

/// What happened when an adapter ran a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ExecutionOutcome {
    Succeeded,
    /// The dry-run adapter describes what it would do and touches nothing.
    DryRun,
    Failed { error: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub change_id: ChangeId,
    pub recommendation_id: RecommendationId,
    pub revision: u32,
    pub adapter: String,
    pub action_digest: String,
    pub started_ms: TimestampMs,
    pub finished_ms: TimestampMs,
    pub outcome: ExecutionOutcome,
    pub output: String,
}

/// An audit entry before the log seals it with a sequence number, a time and hashes. Stages produce
/// drafts; the store appends them in the same transaction as the state change they record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub actor: String,
    pub kind: String,
    pub incident_id: Option<String>,
    pub recommendation_id: Option<String>,
    pub revision: Option<u32>,
    pub change_id: Option<String>,
    pub policy_version: Option<String>,
    pub reason: String,
    pub payload: serde_json::Value,
    /// The signal (alert fingerprint or series) that triggered the chain, when known.
    #[serde(default)]
    pub signal_id: Option<String>,
    /// The detector or recommender model version behind the recorded step.
    #[serde(default)]
    pub model_version: Option<String>,
    /// Machine-readable reasons, e.g. the policy's reason codes for a decision.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// A one-line summary of what changed, e.g. `state pending_approval -> approved`.
    #[serde(default)]
    pub diff_summary: Option<String>,
    /// The resources the step touches, e.g. `checkout/production/checkout-1`.
    #[serde(default)]
    pub affected_resources: Vec<String>,
}

impl AuditDraft {
    /// A draft about one change request, carrying its recommendation, revision, change id and
    /// policy version.
    pub fn for_change(
        change: &ChangeRequest,
        actor: &str,
        kind: &str,
        reason: String,
        payload: serde_json::Value,
    ) -> AuditDraft {
        AuditDraft {
            actor: actor.to_string(),
            kind: kind.to_string(),
            incident_id: None,
            recommendation_id: Some(change.recommendation_id.0.clone()),
            revision: Some(change.revision),
            change_id: Some(change.id.0.clone()),
            policy_version: Some(change.policy_version.clone()),
            reason,
            payload,
            ..AuditDraft::default()
        }
    }

    pub fn with_signal(mut self, signal_id: impl Into<String>) -> AuditDraft {
        self.signal_id = Some(signal_id.into());
        self
    }

    pub fn with_model_version(mut self, version: impl Into<String>) -> AuditDraft {
        self.model_version = Some(version.into());
        self
    }

    pub fn with_reason_codes(mut self, codes: impl IntoIterator<Item = String>) -> AuditDraft {
        self.reason_codes = codes.into_iter().collect();
        self
    }

    pub fn with_diff_summary(mut self, summary: impl Into<String>) -> AuditDraft {
        self.diff_summary = Some(summary.into());
        self
    }

    pub fn with_affected_resources(mut self, resources: impl IntoIterator<Item = String>) -> AuditDraft {
        self.affected_resources = resources.into_iter().collect();
        self
    }
}

/// One entry of the audit log. Entries form a hash chain: `hash = SHA-256(prev_hash ‖ canonical
/// body)`, so changing, dropping or reordering any past entry is detectable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Gapless, starting at 1.
    pub seq: u64,
    pub at_ms: TimestampMs,
    /// Principal subject, or `system:cairn`.
    pub actor: String,
    /// e.g. `recommendation.created`, `decision.made`, `change.approved`, `change.executed`.
    pub kind: String,
    pub incident_id: Option<String>,
    pub recommendation_id: Option<String>,
    pub revision: Option<u32>,
    pub change_id: Option<String>,
    pub policy_version: Option<String>,
    pub reason: String,
    pub payload: serde_json::Value,
    #[serde(default)]
    pub signal_id: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub reason_codes: Vec<String>,
    #[serde(default)]
    pub diff_summary: Option<String>,
    #[serde(default)]
    pub affected_resources: Vec<String>,
    /// Hex SHA-256 of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this entry.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The change in `state`, as a half-done rollout where that is possible.
    fn in_state(state: ChangeState, staged: bool) -> ChangeRequest {
        let mut c = crate::fixtures::change_request(1);
        c.state = state;
        if staged {
            c.stages = vec!["canary".into(), "100%".into()];
            c.stages_done = 1;
        }
        c
    }

    #[test]
    fn supersede_and_expiry_plan_only_transitions_the_lifecycle_allows_from_the_states_they_name() {
        for state in ChangeState::ALL {
            for staged in [false, true] {
                let c = in_state(state, staged);
                if let Some((next, draft)) = c.superseded("revision 2 replaces revision 1".into(), 5) {
                    assert!(SUPERSEDABLE_STATES.contains(&state), "{state} superseded");
                    assert!(state.may_become(next.state), "{state} -> {}", next.state);
                    assert_eq!((next.version, draft.change_id.as_deref()), (c.version + 1, Some(c.id.0.as_str())));
                    let expected = if c.is_half_done_rollout() { ChangeState::RollbackPending } else { ChangeState::Superseded };
                    assert_eq!(next.state, expected, "{state}, staged {staged}");
                }
                assert!(c.expired(c.expires_ms - 1).is_none(), "{state}: not before the deadline");
                if let Some((next, _)) = c.expired(c.expires_ms) {
                    assert!(EXPIRING_STATES.contains(&state), "{state} expired");
                    assert!(state.may_become(next.state), "{state} -> {}", next.state);
                }
            }
        }
        // What each rule is for does happen.
        assert_eq!(in_state(ChangeState::Approved, false).superseded("r".into(), 5).unwrap().0.state, ChangeState::Superseded);
        assert!(in_state(ChangeState::Executing, true).superseded("r".into(), 5).is_none(), "a running change is left alone");
        assert_eq!(in_state(ChangeState::PendingApproval, false).expired(10_000).unwrap().0.state, ChangeState::Expired);
        let stopped = in_state(ChangeState::AwaitingStageApproval, true).expired(10_000).unwrap().0;
        assert_eq!((stopped.state, stopped.stop.map(|s| s.cause)), (ChangeState::RollbackPending, Some(StopCause::Expired)));
    }
}
