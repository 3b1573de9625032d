//! What happens to a change whose executor stopped in the middle of it (OOM kill, node reboot,
//! deploy): the change was claimed (`executing`) under a lease that nobody renewed. It is never run
//! again silently. The decision rests only on what was recorded durably before the process died:
//!
//! - the **lease** says whether an adapter call had begun: the executor's [`RunJournal`] records
//!   each call ("execute", "execute stage 25%", "rollback stage canary") and how many stages had
//!   run and verified *before* making it, so a lease without one proves the target was not
//!   touched under this claim;
//! - the **change** says which stages ran and verified before this claim (`stages_done`, written
//!   when a paused rollout paused), and whether it was claimed to undo a stopped rollout (`stop`).
//!
//! | what is known | the change becomes | why |
//! |---|---|---|
//! | no adapter call began, the approval still holds | `approved` (`requeued`) | it is exactly where it was before the claim; the executor re-checks everything (revision, policy, digest, quorum, roster, window, break-glass, guardrails) before it runs |
//! | no adapter call began, the approval no longer holds, no stage ran | `failed` (`stopped`) | invariants 1 and 2: a void approval never runs |
//! | no adapter call began, the approval no longer holds, stages ran before | `rollback_pending` (`rolling_back`) | as a refused rollout: what ran is undone |
//! | a one-step change's execute call began | `failed` (`outcome_unknown`) | whether the target changed is unknown; running it again could apply it twice, so a person decides |
//! | a stage's execute call began | `rollback_pending` (`rolling_back`) | rollback-first: the stages that ran and verified (recorded on the change, or on the lease when the call began) and the stage that was running are undone by the existing path, newest first — as when a stage's adapter call fails |
//! | a rollback call began (undoing after a failed check) | `rollback_failed` (`outcome_unknown`) | what is still in place is unknown |
//! | an undo of a stopped rollout was claimed, no call began | `rollback_pending` (`requeued`) | undoing was already decided; nothing was undone yet |
//! | an undo was claimed and a call began | `rollback_failed` (`outcome_unknown`) | which stages are still in place is unknown: a person checks, as for any failed rollback |
//!
//! `approved` is chosen only when the approval is still valid by [`authorize_execution`] (a closed
//! maintenance window does not void it: the change waits for its window as before) and no newer
//! revision replaced it. `rollback_pending` carries the stop cause `interrupted`. Every recovery is
//! one `change.interrupted` audit event naming the old lease holder and the lease expiry, written
//! in the same transaction as the state change by the store.

use crate::{ExecutionGate, ExecutionRefused, authorize_execution};
use cairn_types::{
    AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, Decision, Escalation, Recommendation,
    RolloutStop, StopCause,
};
use futures::future::BoxFuture;
use serde_json::json;

/// Told by the executor before every adapter call, so that a crash during the call is known to
/// have left the outcome unknown. Also renews the executor's claim on the change.
pub trait RunJournal: Send + Sync + std::fmt::Debug {
    /// Records durably that `call` is about to touch `change`'s target. An error means this
    /// executor no longer holds the change: the call must not happen.
    fn before_adapter_call<'a>(&'a self, change: &'a ChangeRequest, call: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// What the lapsed lease says about the claim that was abandoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbandonedClaim {
    pub holder: String,
    pub lease_expires_ms: i64,
    /// The last adapter call that began under the claim ([`execute_call`] or [`rollback_call`]).
    pub adapter_call: Option<String>,
    /// How many stages had run and verified in the claim when that call began.
    pub stages_done_at_call: Option<u32>,
}

/// How the executor names a call that carries a change (or one stage of it) out.
pub fn execute_call(stage: Option<&str>) -> String {
    match stage {
        Some(stage) => format!("execute stage {stage}"),
        None => "execute".into(),
    }
}

/// How the executor names a call that undoes a change (or one stage of it).
pub fn rollback_call(stage: Option<&str>) -> String {
    match stage {
        Some(stage) => format!("rollback stage {stage}"),
        None => "rollback".into(),
    }
}

fn is_rollback_call(call: &str) -> bool {
    call == "rollback" || call.starts_with("rollback ")
}

/// How an interrupted change was resolved (the `resolution` label of the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing was touched: back where it was before the claim.
    Requeued,
    /// Nothing was touched, and its approval no longer holds.
    Stopped,
    /// The stages that ran, and the one that was running, are rolled back.
    RollingBack,
    /// An adapter call began and its result is unknown: a person must look.
    OutcomeUnknown,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Requeued => "requeued",
            Resolution::Stopped => "stopped",
            Resolution::RollingBack => "rolling_back",
            Resolution::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// The recovered change, its `change.interrupted` audit draft, and how it was resolved.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub change: ChangeRequest,
    pub drafts: Vec<AuditDraft>,
    pub resolution: Resolution,
    pub reason: String,
}

/// What recovery does with the change, before it is written down.
enum Fate {
    /// To this state, as it stands.
    Move(ChangeState),
    /// Stopped for rollback of its first `done` stages, and of `in_flight` if it was running.
    RollBack { done: u32, in_flight: Option<String> },
}

/// Decides what becomes of `change`, left `executing` under the abandoned `claim` (see the module
/// documentation). `rec` and `decision` are those of the change's revision; `latest_revision` is
/// the recommendation's newest.
pub fn recover_interrupted(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    latest_revision: u32,
    claim: &AbandonedClaim,
    gate: &ExecutionGate,
    now_ms: i64,
) -> Recovered {
    let lost = format!("the executor {} stopped working on it (its lease expired at {})", claim.holder, claim.lease_expires_ms);
    // Stages known to have run and verified: those recorded on the change before this claim, and
    // those the lost run had finished when its last adapter call began.
    let done = change.stages_done.max(claim.stages_done_at_call.unwrap_or(0)).min(change.stages.len() as u32);
    let (fate, resolution, reason) = match (change.stop.is_some(), claim.adapter_call.as_deref()) {
        (true, None) => (
            Fate::Move(ChangeState::RollbackPending),
            Resolution::Requeued,
            format!("{lost} before it undid anything; the executor undoes its stages again"),
        ),
        (undoing, Some(call)) if undoing || is_rollback_call(call) => (
            Fate::Move(ChangeState::RollbackFailed),
            Resolution::OutcomeUnknown,
            format!("{lost} during {call}; what is still in place is unknown: a person must check the target"),
        ),
        (false, None) => match approval_still_holds(change, rec, decision, latest_revision, gate, now_ms) {
            Ok(()) => (
                Fate::Move(ChangeState::Approved),
                Resolution::Requeued,
                format!("{lost} before any adapter call; its approval still holds, so it is approved again and re-checked before it runs"),
            ),
            Err(why) if done > 0 => (
                Fate::RollBack { done, in_flight: None },
                Resolution::RollingBack,
                format!("{lost} before its next stage, and it may no longer run ({why})"),
            ),
            Err(why) => (
                Fate::Move(ChangeState::Failed),
                Resolution::Stopped,
                format!("{lost} before any adapter call, and its approval no longer holds ({why}); it does not run"),
            ),
        },
        (_, Some(call)) if !change.stages.is_empty() => (
            Fate::RollBack { done, in_flight: change.stages.get(done as usize).cloned() },
            Resolution::RollingBack,
            format!("{lost} during {call}, whose outcome is unknown; that stage and every stage before it are rolled back"),
        ),
        (_, Some(call)) => (
            Fate::Move(ChangeState::Failed),
            Resolution::OutcomeUnknown,
            format!("{lost} during {call}; whether it changed the target is unknown, so it is not run again: a person must check the target"),
        ),
    };
    let mut payload = json!({
        "from_state": change.state.as_str(),
        "resolution": resolution.as_str(),
        "lease_holder": claim.holder,
        "lease_expires_ms": claim.lease_expires_ms,
        "adapter_call": claim.adapter_call,
        "stages_done": done,
    });
    let (next, draft) = match fate {
        Fate::RollBack { done, in_flight } => {
            let mut known = change.clone();
            known.stages_done = done;
            known.stage = None;
            let stop = RolloutStop { cause: StopCause::Interrupted, subject: CAIRN_SERVICE_SUBJECT.to_string(), reason: reason.clone(), at_ms: now_ms };
            let (mut next, mut draft) = known.stop_rollout(stop, now_ms);
            // The stage that was running is undone first (see `roll_back_stopped`).
            next.stage = in_flight.clone();
            let mut undo: Vec<String> = change.stages[..done as usize].iter().rev().cloned().collect();
            if let Some(stage) = in_flight {
                undo.insert(0, stage);
            }
            payload["roll_back"] = json!(undo);
            payload["state"] = json!(next.state.as_str());
            draft.reason = format!("{reason}; rolling back stage(s) {}", undo.join(", "));
            if let (Some(p), Some(extra)) = (draft.payload.as_object_mut(), payload.as_object()) {
                p.extend(extra.clone());
            }
            (next, draft)
        }
        Fate::Move(state) => {
            let mut next = change.clone();
            next.advance(state, now_ms);
            next.stage = None;
            payload["state"] = json!(state.as_str());
            let draft = AuditDraft::for_change(&next, CAIRN_SERVICE_SUBJECT, "change.interrupted", reason.clone(), payload)
                .with_diff_summary(format!("state {} -> {}", change.state.as_str(), state.as_str()));
            (next, draft)
        }
    };
    Recovered { change: next, drafts: vec![draft], resolution, reason }
}

/// Whether the change could run now as it was approved: [`authorize_execution`] as if it were
/// still approved — a closed window only makes it wait — and no newer revision replaced it.
fn approval_still_holds(
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    latest_revision: u32,
    gate: &ExecutionGate,
    now_ms: i64,
) -> Result<(), String> {
    if latest_revision > change.revision {
        return Err(format!("revision {latest_revision} replaced revision {}", change.revision));
    }
    let mut as_approved = change.clone();
    as_approved.state = ChangeState::Approved;
    match authorize_execution(&as_approved, rec, decision, gate, now_ms) {
        Ok(()) | Err(ExecutionRefused::OutsideWindow(_)) => Ok(()),
        Err(refused) => Err(refused.to_string()),
    }
}

/// The escalation for a recovered change that a person must look at (every resolution but
/// `requeued`): `CairnChangeInterrupted`, critical when the outcome is unknown.
pub fn interrupted_escalation(recovered: &Recovered, rec: &Recommendation, now_ms: i64) -> Option<Escalation> {
    if recovered.resolution == Resolution::Requeued {
        return None;
    }
    let mut labels = crate::guard::target_labels(rec.action, &rec.target);
    labels.insert("change_id".into(), recovered.change.id.0.clone());
    labels.insert("recommendation_id".into(), rec.id.0.clone());
    labels.insert("resolution".into(), recovered.resolution.as_str().into());
    let severity = if recovered.resolution == Resolution::OutcomeUnknown { "critical" } else { "warning" };
    Some(Escalation {
        alertname: "CairnChangeInterrupted".into(),
        severity: severity.into(),
        labels,
        summary: format!(
            "change {} ({} on {}) was interrupted and is now {}",
            recovered.change.id,
            rec.action,
            rec.target,
            recovered.change.state.as_str()
        ),
        description: recovered.reason.clone(),
        starts_ms: now_ms,
        ends_ms: None,
    })
}

#[cfg(test)]
mod tests;
