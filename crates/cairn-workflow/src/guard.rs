//! Guardrails on what runs by itself: a global freeze, the loop guard (invariant 7) and rate limits
//! per action class. They apply to changes whose decision was `auto` and that no person approved;
//! a change a guardrail holds is not executed but put back in front of people (pending approval),
//! with an audit event saying which guardrail held it. A tripped loop guard also disables that
//! automation for the target until a person turns it back on, and escalates.
//!
//! The rules are pure: the caller counts runs and reads the switches from the store, then asks
//! [`check`] what to do and applies the transition [`hold`] gives.

use cairn_types::{
    ActionClass, AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, DisabledAutomation,
    Escalation, FreezeState, Outcome, Principal, Recommendation, Target,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// `[guardrails]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Start frozen: nothing runs by itself until a person unfreezes (`cairn freeze off`).
    pub freeze: bool,
    /// More runs than this of one action on one target within the window trip the loop guard.
    pub loop_guard_max_runs: u32,
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub loop_guard_window_secs: u64,
    /// Per action class, e.g. `restart_process = "10/hour"` (units: second, minute, hour, day).
    /// Auto runs beyond it are left for a person.
    pub rate_limits: BTreeMap<String, String>,
    /// Who may approve what a guardrail held or a break-glass opened for review, when the policy
    /// named no approver group for it (auto and blocked decisions name none). Empty: any
    /// authenticated person.
    pub approver_groups: Vec<String>,
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            freeze: false,
            loop_guard_max_runs: 3,
            loop_guard_window_secs: 3600,
            rate_limits: BTreeMap::new(),
            approver_groups: Vec::new(),
        }
    }
}

/// A parsed rate limit: at most `max` auto runs per `per_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub per_ms: i64,
}

impl RateLimit {
    /// `"N/period"`: a unit (`second`, `minute`, `hour`, `day`, or `s`, `m`, `h`, `d`) or a
    /// duration (`15m`, `6h`).
    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let (n, period) = s.split_once('/').ok_or_else(|| format!("{s:?} is not of the form \"N/hour\""))?;
        let max: u32 = n.trim().parse().map_err(|_| format!("{n:?} is not a whole number"))?;
        let period = period.trim();
        let one = if period.starts_with(|c: char| c.is_ascii_digit()) { period.to_string() } else { format!("1{period}") };
        let per_ms = cairn_types::parse_duration_ms(&one)?;
        if per_ms <= 0 {
            return Err(format!("{s:?}: the period must be longer than zero"));
        }
        Ok(RateLimit { max, per_ms })
    }
}

impl GuardrailsConfig {
    /// The rate limits by action class; an unknown class or a malformed limit is an error naming it.
    pub fn parsed_rate_limits(&self) -> Result<BTreeMap<ActionClass, RateLimit>, String> {
        self.rate_limits
            .iter()
            .map(|(class, limit)| {
                let action = ActionClass::parse(class).ok_or_else(|| format!("unknown action class {class:?}"))?;
                Ok((action, RateLimit::parse(limit).map_err(|e| format!("{class}: {e}"))?))
            })
            .collect()
    }

    pub fn loop_guard_window_ms(&self) -> i64 {
        (self.loop_guard_window_secs as i64).saturating_mul(1000)
    }
}

/// Why a guardrail held a change back from running by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    Frozen { reason: String, by: String },
    AutomationDisabled { since_ms: i64 },
    LoopGuard { runs: u32, max: u32, window_secs: u64 },
    RateLimited { action: ActionClass, runs: u32, limit: RateLimit },
}

impl Hold {
    /// The label used in metrics and audit payloads.
    pub fn kind(&self) -> &'static str {
        match self {
            Hold::Frozen { .. } => "freeze",
            Hold::AutomationDisabled { .. } => "automation_disabled",
            Hold::LoopGuard { .. } => "loop_guard",
            Hold::RateLimited { .. } => "rate_limit",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Hold::Frozen { reason, by } => format!("the system is frozen by {by} ({reason}): nothing runs by itself"),
            Hold::AutomationDisabled { since_ms } => {
                format!("this automation was disabled for the target at {since_ms} ms by the loop guard; a person must re-enable it")
            }
            Hold::LoopGuard { runs, max, window_secs } => format!(
                "loop guard: {runs} earlier runs of this action on this target within {window_secs} s (more than {max} is a self-healing loop); automation disabled for the target"
            ),
            Hold::RateLimited { action, runs, limit } => format!(
                "rate limit for {action}: {runs} auto runs within {} s, at most {} allowed",
                limit.per_ms / 1000,
                limit.max
            ),
        }
    }
}

/// What the caller read from the store for one change about to run.
#[derive(Clone, Debug, Default)]
pub struct GuardInputs {
    pub freeze: Option<FreezeState>,
    pub disabled: Option<DisabledAutomation>,
    /// Earlier runs of the same action on the same target within the loop-guard window, this
    /// change excluded.
    pub earlier_runs_on_target: u32,
    /// Auto runs of the same action class within its rate-limit window, this change excluded.
    pub earlier_auto_runs_of_class: u32,
}

/// Whether a guardrail holds `change` back. Only changes that would run by themselves (an `auto`
/// decision with no person's approval) are held: a person who approved has decided.
pub fn check(cfg: &GuardrailsConfig, limits: &BTreeMap<ActionClass, RateLimit>, change: &ChangeRequest, rec: &Recommendation, inputs: &GuardInputs) -> Option<Hold> {
    if change.outcome != Outcome::Auto || !change.approvals.is_empty() {
        return None;
    }
    if let Some(f) = &inputs.freeze
        && f.frozen
    {
        return Some(Hold::Frozen { reason: f.reason.clone(), by: f.by.clone() });
    }
    if let Some(d) = &inputs.disabled {
        return Some(Hold::AutomationDisabled { since_ms: d.disabled_ms });
    }
    if inputs.earlier_runs_on_target >= cfg.loop_guard_max_runs {
        return Some(Hold::LoopGuard {
            runs: inputs.earlier_runs_on_target,
            max: cfg.loop_guard_max_runs,
            window_secs: cfg.loop_guard_window_secs,
        });
    }
    if let Some(limit) = limits.get(&rec.action)
        && inputs.earlier_auto_runs_of_class >= limit.max
    {
        return Some(Hold::RateLimited { action: rec.action, runs: inputs.earlier_auto_runs_of_class, limit: *limit });
    }
    None
}

/// The held change: pending approval by one person, with a fresh expiry, and the audit draft
/// naming the guardrail. For a tripped loop guard, also the disabled automation and the escalation.
pub fn hold(change: &ChangeRequest, rec: &Recommendation, why: &Hold, now_ms: i64, pending_ttl_ms: i64, approver_groups: &[String]) -> (ChangeRequest, Vec<AuditDraft>, Option<(DisabledAutomation, Escalation)>) {
    let mut next = change.clone();
    if next.approver_groups.is_empty() {
        next.approver_groups = approver_groups.to_vec();
    }
    next.advance(ChangeState::PendingApproval, now_ms);
    next.approvals_required = next.approvals_required.max(1);
    // A held automation is in doubt: its stages, if any, wait for a person too.
    next.stage_approval = true;
    next.expires_ms = now_ms.saturating_add(pending_ttl_ms);
    let mut drafts = vec![AuditDraft::for_change(
        &next,
        CAIRN_SERVICE_SUBJECT,
        "change.held_by_guardrail",
        why.describe(),
        json!({ "guardrail": why.kind(), "state": next.state.as_str(), "action": rec.action.as_str(), "target": rec.target }),
    )];
    let mut disabled = None;
    if let Hold::LoopGuard { runs, .. } = why {
        let d = DisabledAutomation {
            action: rec.action,
            target: rec.target.clone(),
            disabled_ms: now_ms,
            runs: *runs,
            reason: why.describe(),
        };
        drafts.push(AuditDraft::for_change(
            &next,
            CAIRN_SERVICE_SUBJECT,
            "automation.disabled",
            why.describe(),
            json!({ "action": rec.action.as_str(), "target": rec.target, "runs": runs }),
        ));
        let e = Escalation {
            alertname: "CairnLoopGuardTripped".into(),
            severity: "critical".into(),
            labels: target_labels(rec.action, &rec.target),
            summary: format!("{} on {} keeps repeating: automation disabled", rec.action, rec.target),
            description: format!("{}; change {} waits for a person; re-enable with `cairn guard enable`", why.describe(), change.id),
            starts_ms: now_ms,
            ends_ms: None,
        };
        disabled = Some((d, e));
    }
    (next, drafts, disabled)
}

pub(crate) fn target_labels(action: ActionClass, target: &Target) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("action".to_string(), action.as_str().to_string()),
        ("service".to_string(), target.service.clone()),
        ("environment".to_string(), target.environment.clone()),
        ("resource".to_string(), target.resource.clone()),
    ])
}

/// Resolves the `CairnLoopGuardTripped` alert of an automation a person re-enabled.
pub fn loop_guard_resolved(action: ActionClass, target: &Target, by: &str, now_ms: i64) -> Escalation {
    Escalation {
        alertname: "CairnLoopGuardTripped".into(),
        severity: "critical".into(),
        labels: target_labels(action, target),
        summary: format!("{action} on {target} re-enabled by {by}"),
        description: String::new(),
        starts_ms: now_ms,
        ends_ms: Some(now_ms),
    }
}

/// A person turns an automation back on.
pub fn enable(by: &Principal, action: ActionClass, target: &Target, reason: &str) -> Result<AuditDraft, String> {
    if by.subject == CAIRN_SERVICE_SUBJECT {
        return Err("only a person can re-enable an automation the loop guard disabled".into());
    }
    if reason.trim().is_empty() {
        return Err("a reason is required".into());
    }
    Ok(AuditDraft {
        actor: by.subject.clone(),
        kind: "automation.enabled".into(),
        reason: reason.to_string(),
        payload: json!({ "action": action.as_str(), "target": target }),
        ..Default::default()
    })
}

/// A person turns the global freeze on or off.
pub fn set_freeze(by: &Principal, frozen: bool, reason: &str, now_ms: i64) -> Result<(FreezeState, AuditDraft), String> {
    if by.subject == CAIRN_SERVICE_SUBJECT {
        return Err("only a person can flip the freeze switch".into());
    }
    if reason.trim().is_empty() {
        return Err("a reason is required".into());
    }
    let state = FreezeState { frozen, reason: reason.to_string(), by: by.subject.clone(), at_ms: now_ms };
    let draft = AuditDraft {
        actor: by.subject.clone(),
        kind: if frozen { "freeze.on" } else { "freeze.off" }.into(),
        reason: reason.to_string(),
        payload: json!({ "frozen": frozen }),
        ..Default::default()
    };
    Ok((state, draft))
}

/// The escalation for a change whose rollback failed: it is left in `rollback_failed` for people.
pub fn rollback_failed_escalation(change: &ChangeRequest, rec: &Recommendation, output: &str, now_ms: i64) -> Escalation {
    let mut labels = target_labels(rec.action, &rec.target);
    labels.insert("change_id".into(), change.id.0.clone());
    labels.insert("recommendation_id".into(), rec.id.0.clone());
    let tail: String = output.chars().rev().take(1000).collect::<Vec<_>>().into_iter().rev().collect();
    Escalation {
        alertname: "CairnRollbackFailed".into(),
        severity: "critical".into(),
        labels,
        summary: format!("rollback of change {} ({} on {}) failed", change.id, rec.action, rec.target),
        description: format!("the change is in rollback_failed and needs a person; rollback owner: {}; output: {tail}", rec.rollback_plan.as_ref().map(|p| p.owner.as_str()).unwrap_or("none")),
        starts_ms: now_ms,
        ends_ms: None,
    }
}

#[cfg(test)]
mod tests;
