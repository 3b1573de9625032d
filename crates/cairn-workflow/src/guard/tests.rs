#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::review::tests::{decision, rec};
use crate::{WorkflowConfig, open_change};
use cairn_types::{Approval, CAIRN_SERVICE_SUBJECT};

fn auto_change() -> (ChangeRequest, Recommendation) {
    let r = rec(1);
    let (c, _) = open_change(&r, &decision(Outcome::Auto, Some(0), 0), 0, &WorkflowConfig::default());
    (c, r)
}

fn alice() -> Principal {
    Principal { subject: "user:alice".into(), display_name: "Alice".into(), groups: vec!["sre".into()] }
}

fn frozen() -> GuardInputs {
    GuardInputs { freeze: Some(FreezeState { frozen: true, reason: "peak sale".into(), by: "user:alice".into(), at_ms: 0 }), ..Default::default() }
}

#[test]
fn frozen_system_runs_nothing_by_itself() {
    let cfg = GuardrailsConfig::default();
    let (c, r) = auto_change();
    let held = check(&cfg, &BTreeMap::new(), &c, &r, &frozen()).expect("an auto change is held while frozen");
    assert_eq!(held.kind(), "freeze");
    let (next, drafts, disabled) = hold(&c, &r, &held, 5_000, 60_000, &["sre".to_string()]);
    assert_eq!(next.approver_groups, ["sre"], "the policy named none, so the configured groups approve");
    assert_eq!(next.state, ChangeState::PendingApproval, "left for a person");
    assert_eq!((next.approvals_required, next.expires_ms, next.version), (1, 65_000, c.version + 1));
    assert_eq!(drafts[0].kind, "change.held_by_guardrail");
    assert_eq!(drafts[0].payload["guardrail"], "freeze");
    assert!(disabled.is_none());
    // Unfrozen, the same change runs.
    let thawed = GuardInputs { freeze: Some(FreezeState { frozen: false, ..Default::default() }), ..Default::default() };
    assert_eq!(check(&cfg, &BTreeMap::new(), &c, &r, &thawed), None);
    // A change a person approved is not "by itself": the person decided.
    let mut approved = c.clone();
    approved.approvals.push(Approval {
        change_id: c.id.clone(),
        subject: "user:bob".into(),
        recommendation_id: r.id.clone(),
        revision: 1,
        policy_version: c.policy_version.clone(),
        action_digest: c.action_digest.clone(),
        reason: "go".into(),
        at_ms: 1,
    });
    assert_eq!(check(&cfg, &BTreeMap::new(), &approved, &r, &frozen()), None);
}

#[test]
fn loop_guard_disables_automation_and_escalates() {
    let cfg = GuardrailsConfig { loop_guard_max_runs: 3, loop_guard_window_secs: 600, ..Default::default() };
    let (c, r) = auto_change();
    let under = GuardInputs { earlier_runs_on_target: 2, ..Default::default() };
    assert_eq!(check(&cfg, &BTreeMap::new(), &c, &r, &under), None, "three runs in the window are allowed");
    let over = GuardInputs { earlier_runs_on_target: 3, ..Default::default() };
    let held = check(&cfg, &BTreeMap::new(), &c, &r, &over).expect("a fourth run trips the guard");
    assert_eq!(held, Hold::LoopGuard { runs: 3, max: 3, window_secs: 600 });
    let (next, drafts, disabled) = hold(&c, &r, &held, 7_000, 60_000, &[]);
    assert_eq!(next.state, ChangeState::PendingApproval);
    assert_eq!(drafts.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["change.held_by_guardrail", "automation.disabled"]);
    let (d, e) = disabled.expect("the automation is disabled");
    assert_eq!((d.action, &d.target, d.runs), (r.action, &r.target, 3));
    assert_eq!((e.alertname.as_str(), e.severity.as_str()), ("CairnLoopGuardTripped", "critical"));
    assert_eq!(e.labels["resource"], r.target.resource);
    // Once disabled, it stays held whatever the count says, until a person re-enables it.
    let after = GuardInputs { disabled: Some(d), earlier_runs_on_target: 0, ..Default::default() };
    assert_eq!(check(&cfg, &BTreeMap::new(), &c, &r, &after).map(|h| h.kind()), Some("automation_disabled"));
    let cairn = Principal { subject: CAIRN_SERVICE_SUBJECT.into(), display_name: String::new(), groups: vec![] };
    assert!(enable(&cairn, r.action, &r.target, "self-heal").is_err(), "Cairn cannot re-enable itself");
    assert_eq!(enable(&alice(), r.action, &r.target, "fixed the crash loop").unwrap().kind, "automation.enabled");
}

#[test]
fn rate_limit_leaves_excess_for_a_person() {
    let cfg = GuardrailsConfig { rate_limits: BTreeMap::from([("rollback_deploy".into(), "2/hour".into())]), ..Default::default() };
    let limits = cfg.parsed_rate_limits().unwrap();
    let (c, r) = auto_change();
    let within = GuardInputs { earlier_auto_runs_of_class: 1, ..Default::default() };
    assert_eq!(check(&cfg, &limits, &c, &r, &within), None);
    let over = GuardInputs { earlier_auto_runs_of_class: 2, ..Default::default() };
    let held = check(&cfg, &limits, &c, &r, &over).expect("the third run in an hour is held");
    assert_eq!(held, Hold::RateLimited { action: r.action, runs: 2, limit: RateLimit { max: 2, per_ms: 3_600_000 } });
    let (next, drafts, disabled) = hold(&c, &r, &held, 0, 60_000, &[]);
    assert_eq!(next.state, ChangeState::PendingApproval);
    assert_eq!(drafts[0].payload["guardrail"], "rate_limit");
    assert!(disabled.is_none(), "a rate limit does not disable the automation");
    // Another action class is not limited by it.
    let mut other = r.clone();
    other.action = ActionClass::RestartProcess;
    assert_eq!(check(&cfg, &limits, &c, &other, &over), None);
}

#[test]
fn review_changes_are_not_held_by_guardrails() {
    let r = rec(1);
    let (c, _) = open_change(&r, &decision(Outcome::Review, Some(2), 1), 0, &WorkflowConfig::default());
    let inputs = GuardInputs { earlier_runs_on_target: 99, ..frozen() };
    assert_eq!(check(&GuardrailsConfig::default(), &BTreeMap::new(), &c, &r, &inputs), None);
}

#[test]
fn rate_limits_parse_or_name_the_problem() {
    assert_eq!(RateLimit::parse("10/hour"), Ok(RateLimit { max: 10, per_ms: 3_600_000 }));
    assert_eq!(RateLimit::parse("3 / m"), Ok(RateLimit { max: 3, per_ms: 60_000 }));
    assert!(RateLimit::parse("10 per hour").is_err());
    assert!(RateLimit::parse("x/hour").is_err());
    assert_eq!(RateLimit::parse("1/week"), Ok(RateLimit { max: 1, per_ms: 7 * 86_400_000 }));
    assert_eq!(RateLimit::parse("6/15m"), Ok(RateLimit { max: 6, per_ms: 900_000 }), "a period can be a duration");
    assert!(RateLimit::parse("1/fortnight").unwrap_err().contains("fortnight"));
    let cfg = GuardrailsConfig { rate_limits: BTreeMap::from([("reboot_planet".into(), "1/day".into())]), ..Default::default() };
    assert!(cfg.parsed_rate_limits().unwrap_err().contains("reboot_planet"));
}

#[test]
fn freeze_and_enable_need_a_person_and_a_reason() {
    assert!(set_freeze(&alice(), true, "", 0).is_err());
    let (state, draft) = set_freeze(&alice(), true, "peak sale", 9).unwrap();
    assert_eq!((state.frozen, state.by.as_str(), state.at_ms), (true, "user:alice", 9));
    assert_eq!((draft.kind.as_str(), draft.actor.as_str()), ("freeze.on", "user:alice"));
    assert_eq!(set_freeze(&alice(), false, "sale over", 10).unwrap().1.kind, "freeze.off");
}

#[test]
fn rollback_failure_escalation_names_the_change() {
    let (c, r) = auto_change();
    let e = rollback_failed_escalation(&c, &r, "boom", 3);
    assert_eq!((e.alertname.as_str(), e.severity.as_str(), e.ends_ms), ("CairnRollbackFailed", "critical", None));
    assert_eq!(e.labels["change_id"], c.id.0);
    assert!(e.description.contains("team-checkout") && e.description.contains("boom"));
}
