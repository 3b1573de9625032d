#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::review::tests::{decision, rec};
use crate::{ExecutionRefused, WorkflowConfig, authorize_execution, open_change};
use cairn_types::{ActionClass, ChangeState, Target};

const HOUR: i64 = 3_600_000;

fn alice() -> Principal {
    Principal { subject: "user:alice".into(), display_name: "Alice".into(), groups: vec!["sre".into()] }
}

fn request(duration_ms: i64, max_uses: Option<u32>) -> BreakGlassRequest {
    BreakGlassRequest {
        purpose: "payments down, policy blocks the rollback".into(),
        link: "inc-42".into(),
        scope: BreakGlassScope {
            actions: vec![ActionClass::RollbackDeploy],
            targets: vec![Target { service: "checkout".into(), environment: "production".into(), resource: "*".into() }],
        },
        duration_ms,
        max_uses,
    }
}

#[test]
fn opening_records_owner_purpose_link_and_alerts_until_expiry() {
    let (bg, drafts, alerts) = open(&alice(), request(HOUR, None), 1_000).unwrap();
    assert_eq!((bg.owner.as_str(), bg.link.as_str(), bg.state), ("user:alice", "inc-42", BreakGlassState::Active));
    assert_eq!(bg.expires_ms, 1_000 + HOUR);
    assert_eq!(drafts.len(), 1);
    assert_eq!((drafts[0].kind.as_str(), drafts[0].actor.as_str()), ("breakglass.opened", "user:alice"));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].alertname, "CairnBreakGlassOpen");
    assert_eq!(alerts[0].ends_ms, Some(bg.expires_ms), "the alert stays firing exactly while it is open");
}

#[test]
fn breakglass_longer_than_four_hours_or_without_purpose_link_or_scope_is_refused() {
    assert_eq!(open(&alice(), request(4 * HOUR + 1, None), 0).unwrap_err(), BreakGlassError::BadDuration { requested_ms: 4 * HOUR + 1 });
    assert!(open(&alice(), request(4 * HOUR, None), 0).is_ok(), "exactly four hours is allowed");
    assert!(matches!(open(&alice(), request(0, None), 0), Err(BreakGlassError::BadDuration { .. })));
    assert_eq!(open(&alice(), request(HOUR, Some(0)), 0).unwrap_err(), BreakGlassError::ZeroUses);
    let mut r = request(HOUR, None);
    r.purpose = "  ".into();
    assert_eq!(open(&alice(), r, 0).unwrap_err(), BreakGlassError::NoPurpose);
    let mut r = request(HOUR, None);
    r.link = String::new();
    assert_eq!(open(&alice(), r, 0).unwrap_err(), BreakGlassError::NoLink);
    let mut r = request(HOUR, None);
    r.scope.targets.clear();
    assert_eq!(open(&alice(), r, 0).unwrap_err(), BreakGlassError::EmptyScope);
    let cairn = Principal { subject: CAIRN_SERVICE_SUBJECT.into(), display_name: String::new(), groups: vec![] };
    assert_eq!(open(&cairn, request(HOUR, None), 0).unwrap_err(), BreakGlassError::ServiceIdentity);
}

#[test]
fn expired_breakglass_is_refused_at_use_time() {
    let (bg, _, _) = open(&alice(), request(HOUR, None), 0).unwrap();
    let r = rec(1);
    // No sweeper has run: the record still says active, and the use is refused all the same.
    assert_eq!(bg.state, BreakGlassState::Active);
    assert!(use_for(&bg, &r, "chg-1", HOUR - 1).is_ok());
    assert_eq!(use_for(&bg, &r, "chg-1", HOUR).unwrap_err(), BreakGlassError::Expired { id: bg.id.clone(), expires_ms: HOUR });
    assert!(find_usable(std::slice::from_ref(&bg), &r, HOUR).is_none());
    assert!(check_usable(&bg, HOUR + 1).is_err(), "the executor's re-check refuses it too");
}

#[test]
fn breakglass_max_uses_is_enforced() {
    let (bg, _, _) = open(&alice(), request(HOUR, Some(2)), 0).unwrap();
    let r = rec(1);
    let (bg, drafts, _) = use_for(&bg, &r, "chg-1", 10).unwrap();
    assert_eq!((bg.uses, bg.state), (1, BreakGlassState::Active));
    assert_eq!(drafts[0].kind, "breakglass.used");
    assert_eq!(drafts[0].change_id.as_deref(), Some("chg-1"));
    let (bg, _, alerts) = use_for(&bg, &r, "chg-2", 20).unwrap();
    assert_eq!((bg.uses, bg.state), (2, BreakGlassState::Exhausted));
    assert!(alerts.iter().any(|a| a.alertname == "CairnBreakGlassOpen" && a.ends_ms == Some(20)), "the open alert resolves");
    assert!(matches!(use_for(&bg, &r, "chg-3", 30), Err(BreakGlassError::NotActive { state: BreakGlassState::Exhausted, .. })));
    // Even a record whose state was not updated refuses a use beyond its maximum.
    let mut stale = bg.clone();
    stale.state = BreakGlassState::Active;
    assert!(matches!(use_for(&stale, &r, "chg-3", 30), Err(BreakGlassError::UsesExhausted { uses: 2, max: 2, .. })));
}

#[test]
fn breakglass_covers_only_its_scope() {
    let (bg, _, _) = open(&alice(), request(HOUR, None), 0).unwrap();
    let mut r = rec(1);
    assert!(bg.scope.covers(r.action, &r.target));
    r.action = ActionClass::IamChange;
    assert_eq!(use_for(&bg, &r, "chg-1", 1).unwrap_err(), BreakGlassError::OutOfScope { id: bg.id.clone() });
    let mut r = rec(1);
    r.target.environment = "staging".into();
    assert!(!bg.scope.covers(r.action, &r.target), "a wildcard resource does not widen the environment");
}

#[test]
fn breakglass_opens_blocked_for_two_person_review_and_never_auto() {
    let (bg, _, _) = open(&alice(), request(HOUR, None), 0).unwrap();
    let r = rec(1);
    let mut blocked = decision(Outcome::Blocked, None, 0);
    assert_eq!(apply_to_decision(&blocked, &bg, &["sre-leads".to_string()]).approver_groups, ["sre"], "groups the policy named stay");
    blocked.approver_groups.clear();
    let d = apply_to_decision(&blocked, &bg, &["sre-leads".to_string()]);
    assert_eq!(d.approver_groups, ["sre-leads"], "otherwise the configured groups approve");
    assert_eq!((d.outcome, d.tier, d.approvals_required), (Outcome::Review, Some(2), 2));
    assert_eq!(d.policy_version, blocked.policy_version, "the policy version is not rewritten");
    assert!(d.reasons.last().unwrap().contains(&bg.id));
    let (mut c, _) = open_change(&r, &d, 0, &WorkflowConfig::default());
    assert_eq!(c.state, ChangeState::PendingApproval);
    // One approval is not enough to reach an executor.
    c.state = ChangeState::Approved;
    c.approvals.push(cairn_types::Approval {
        change_id: c.id.clone(),
        subject: "user:bob".into(),
        recommendation_id: r.id.clone(),
        revision: r.revision,
        policy_version: d.policy_version.clone(),
        action_digest: c.action_digest.clone(),
        reason: "ok".into(),
        at_ms: 1,
    });
    assert_eq!(authorize_execution(&c, &r, &d, &crate::ExecutionGate::default(), 1), Err(ExecutionRefused::NoQuorum { valid: 1, required: 2 }));
}

#[test]
fn revoke_and_expire_close_it_with_audit_and_resolve_the_alert() {
    let (bg, _, _) = open(&alice(), request(HOUR, None), 0).unwrap();
    assert!(expire(&bg, HOUR - 1).is_none(), "not due yet");
    let (expired, drafts, alerts) = expire(&bg, HOUR + 5).unwrap();
    assert_eq!(expired.state, BreakGlassState::Expired);
    assert_eq!(drafts[0].kind, "breakglass.expired");
    assert!(alerts.iter().any(|a| a.alertname == "CairnBreakGlassExpired"));
    assert!(alerts.iter().any(|a| a.alertname == "CairnBreakGlassOpen" && a.ends_ms == Some(HOUR + 5)));
    assert!(revoke(&expired, &alice(), "done", HOUR + 6).is_err(), "a closed one cannot be revoked");

    let (revoked, drafts, _) = revoke(&bg, &alice(), "incident over", 10).unwrap();
    assert_eq!((revoked.state, revoked.closed_by.as_deref()), (BreakGlassState::Revoked, Some("user:alice")));
    assert_eq!(drafts[0].kind, "breakglass.revoked");
    assert!(use_for(&revoked, &rec(1), "chg-9", 11).is_err());
    assert_eq!(revoke(&bg, &alice(), " ", 10).unwrap_err(), BreakGlassError::NoReason);
}

#[test]
fn a_change_opened_under_a_breakglass_may_run_only_while_it_is_in_force() {
    let (bg, _, _) = open(&alice(), request(HOUR, Some(1)), 0).unwrap();
    let (exhausted, _, _) = use_for(&bg, &rec(1), "chg-1", 5).unwrap();
    assert_eq!(exhausted.state, BreakGlassState::Exhausted);
    assert!(check_in_force(&exhausted, 10).is_ok(), "the change its last use opened may still run");
    assert!(matches!(check_in_force(&exhausted, HOUR), Err(BreakGlassError::Expired { .. })));
    let (revoked, _, _) = revoke(&bg, &alice(), "stop", 6).unwrap();
    assert!(matches!(check_in_force(&revoked, 7), Err(BreakGlassError::NotActive { state: BreakGlassState::Revoked, .. })));
}

#[test]
fn the_same_request_twice_in_the_same_millisecond_opens_two_distinct_breakglasses() {
    let (a, _, _) = open(&alice(), request(HOUR, None), 1_000).unwrap();
    let (b, _, _) = open(&alice(), request(HOUR, None), 1_000).unwrap();
    assert_ne!(a.id, b.id);
    // Both are stored: the store would refuse a second record with the same id.
    let store = cairn_store::SqliteStore::open_in_memory().unwrap();
    use cairn_store::GuardStore;
    store.save_breakglass(&a, &[], 1_000).unwrap();
    store.save_breakglass(&b, &[], 1_000).unwrap();
    assert_eq!(store.list_breakglass(true).unwrap().len(), 2);
    // The id is still a function of what was asked and the random part.
    let fixed = |n| open_with_nonce(&alice(), request(HOUR, None), 1_000, n).unwrap().0.id;
    assert_eq!(fixed(7), fixed(7));
    assert_ne!(fixed(7), fixed(8));
}

#[test]
fn the_owner_of_a_breakglass_never_approves_what_it_let_through() {
    let (bg, _, _) = open(&alice(), request(HOUR, None), 1_000).unwrap();
    let blocked = decision(Outcome::Blocked, None, 0);
    let under = apply_to_decision(&blocked, &bg, &["sre".to_string()]);
    assert_eq!(under.breakglass_owner.as_deref(), Some("user:alice"));
    let mut r = rec(1);
    r.requester = "user:req".into();
    let (c, _) = open_change(&r, &under, 2_000, &WorkflowConfig::default());
    assert_eq!(c.breakglass_owner.as_deref(), Some("user:alice"));
    assert!(matches!(crate::approve(&c, &r, &alice(), 1, "mine", 3_000), Err(crate::ReviewError::BreakGlassOwner { .. })));
    let bob = Principal { subject: "user:bob".into(), display_name: "Bob".into(), groups: vec!["sre".into()] };
    let carol = Principal { subject: "user:carol".into(), display_name: "Carol".into(), groups: vec!["sre".into()] };
    let (c, _) = crate::approve(&c, &r, &bob, 1, "ok", 3_000).unwrap();
    // Forged: the owner's approval written in anyway does not count towards the two.
    let mut forged = c.clone();
    let mut own = c.approvals[0].clone();
    own.subject = "user:alice".into();
    forged.approvals.push(own);
    forged.state = ChangeState::Approved;
    let gate = crate::ExecutionGate::default();
    assert!(matches!(authorize_execution(&forged, &r, &under, &gate, 3_000), Err(ExecutionRefused::NoQuorum { valid: 1, required: 2 })));
    let (c, _) = crate::approve(&c, &r, &carol, 1, "ok", 3_100).unwrap();
    assert_eq!(c.state, ChangeState::Approved);
    assert!(authorize_execution(&c, &r, &under, &gate, 3_200).is_ok());
}
