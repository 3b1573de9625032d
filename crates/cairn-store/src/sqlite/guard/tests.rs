#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{AuditLog, AuditProofs, AuditQuery, ChangeStore, GuardStore, SqliteStore, StoreError};
use cairn_types::*;

fn target() -> Target {
    Target { service: "checkout".into(), environment: "production".into(), resource: "pod/a".into() }
}

/// The shared example as a reversible restart of one pod, under `id`.
fn rec(id: &str) -> Recommendation {
    Recommendation {
        id: RecommendationId(id.into()),
        revision: 1,
        playbook: "restart".into(),
        action: ActionClass::RestartProcess,
        target: target(),
        blast_radius: BlastRadius::Instance,
        rollback_plan: None,
        ..cairn_types::fixtures::recommendation(1)
    }
}

fn proposed(s: &SqliteStore, id: &str, outcome: Outcome, created_ms: i64) -> ChangeRequest {
    let mut r = rec(id);
    r.created_ms = created_ms;
    let d = Decision {
        recommendation_id: r.id.clone(),
        revision: 1,
        outcome,
        tier: Some(0),
        approvals_required: 0,
        approver_groups: vec![],
        requires_window: false,
        stage_approval: false,
        breakglass_owner: None,
        reasons: vec![],
        policy_version: "p".into(),
        policy_failed: false,
        decided_ms: created_ms,
    };
    let c = ChangeRequest {
        id: ChangeId(format!("chg-{id}")),
        recommendation_id: r.id.clone(),
        revision: 1,
        outcome,
        tier: Some(0),
        approvals_required: 0,
        approver_groups: vec![],
        requires_window: false,
        policy_version: "p".into(),
        action_digest: "d".into(),
        requester: CAIRN_SERVICE_SUBJECT.into(),
        state: if outcome == Outcome::Auto { ChangeState::Approved } else { ChangeState::PendingApproval },
        approvals: vec![],
        rejection: None,
        created_ms,
        expires_ms: created_ms + 1_000_000,
        updated_ms: created_ms,
        version: 1,
        stages: vec![],
        stages_done: 0,
        stage: None,
        stage_approvals: vec![],
        stage_approval: false,
        breakglass_owner: None,
        stop: None,
    };
    s.propose(&r, &d, &c, &[], created_ms).unwrap();
    c
}

fn bg(version: u64) -> BreakGlass {
    BreakGlass {
        id: "bg-1".into(),
        owner: "user:alice".into(),
        purpose: "p".into(),
        link: "inc-1".into(),
        scope: BreakGlassScope { actions: vec![ActionClass::DnsChange], targets: vec![target()] },
        opened_ms: 0,
        expires_ms: 1000,
        max_uses: Some(1),
        uses: 0,
        state: BreakGlassState::Active,
        closed_ms: None,
        closed_by: None,
        close_reason: None,
        version,
    }
}

fn kinds(s: &SqliteStore) -> Vec<String> {
    s.audit_events(&AuditQuery { limit: 100, ..Default::default() }).unwrap().into_iter().map(|e| e.kind).collect()
}

fn draft(kind: &str) -> AuditDraft {
    AuditDraft { actor: "user:alice".into(), kind: kind.into(), ..Default::default() }
}

#[test]
fn breakglass_versions_uses_and_lookup_by_change() {
    let s = SqliteStore::open_in_memory().unwrap();
    s.save_breakglass(&bg(1), &[draft("breakglass.opened")], 1).unwrap();
    assert!(matches!(s.save_breakglass(&bg(1), &[], 1), Err(StoreError::Conflict { .. })), "the same id cannot be opened twice");
    let mut used = bg(2);
    used.uses = 1;
    used.state = BreakGlassState::Exhausted;
    s.use_breakglass(&used, &ChangeId("chg-x".into()), &[draft("breakglass.used")], 2).unwrap();
    assert!(matches!(s.use_breakglass(&used, &ChangeId("chg-y".into()), &[], 3), Err(StoreError::Conflict { .. })), "a stale version is refused");
    assert_eq!(s.get_breakglass("bg-1").unwrap().unwrap().uses, 1);
    assert_eq!(s.breakglass_for_change(&ChangeId("chg-x".into())).unwrap().unwrap().id, "bg-1");
    assert!(s.breakglass_for_change(&ChangeId("chg-y".into())).unwrap().is_none(), "the refused use left no trace");
    assert!(s.list_breakglass(true).unwrap().is_empty());
    assert_eq!(s.list_breakglass(false).unwrap().len(), 1);
    assert_eq!(kinds(&s), ["breakglass.opened", "breakglass.used"]);
    assert!(s.verify_audit().is_ok());
}

#[test]
fn freeze_switch_and_disabled_automations_persist_with_their_audit() {
    let s = SqliteStore::open_in_memory().unwrap();
    assert!(s.freeze_state().unwrap().is_none());
    let on = FreezeState { frozen: true, reason: "sale".into(), by: "user:alice".into(), at_ms: 5 };
    s.set_freeze(&on, &[draft("freeze.on")], 5).unwrap();
    assert_eq!(s.freeze_state().unwrap(), Some(on));

    let c = proposed(&s, "rec-a", Outcome::Auto, 10);
    let mut held = c.clone();
    held.state = ChangeState::PendingApproval;
    held.version = 2;
    let d = DisabledAutomation { action: ActionClass::RestartProcess, target: target(), disabled_ms: 11, runs: 3, reason: "loop".into() };
    s.hold_change(&held, 1, Some(&d), &[draft("change.held_by_guardrail"), draft("automation.disabled")], 11).unwrap();
    assert_eq!(s.get_change(&c.id).unwrap().unwrap().state, ChangeState::PendingApproval);
    assert_eq!(s.disabled_automation(ActionClass::RestartProcess, &target()).unwrap(), Some(d));
    assert!(s.disabled_automation(ActionClass::ScaleOut, &target()).unwrap().is_none());
    assert!(s.enable_automation(ActionClass::RestartProcess, &target(), &[draft("automation.enabled")], 12).unwrap());
    assert!(!s.enable_automation(ActionClass::RestartProcess, &target(), &[draft("automation.enabled")], 13).unwrap());
    assert!(s.list_disabled_automations().unwrap().is_empty());
    let k = kinds(&s);
    assert_eq!(k.iter().filter(|k| *k == "automation.enabled").count(), 1, "nothing to enable, nothing audited");
    assert!(k.contains(&"freeze.on".to_string()));
}

#[test]
fn count_auto_runs_counts_only_auto_changes_that_ran_in_the_window() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, "rec-old", Outcome::Auto, 10);
    proposed(&s, "rec-new", Outcome::Auto, 100);
    proposed(&s, "rec-rev", Outcome::Review, 100);
    assert_eq!(s.count_auto_runs(ActionClass::RestartProcess, 0).unwrap(), 0, "approved but not yet run");
    assert_eq!(s.claim_approved(10, 200).unwrap().len(), 2);
    assert_eq!(s.count_auto_runs(ActionClass::RestartProcess, 0).unwrap(), 2);
    assert_eq!(s.count_auto_runs(ActionClass::RestartProcess, 50).unwrap(), 1, "outside the window");
    assert_eq!(s.count_auto_runs(ActionClass::ScaleOut, 0).unwrap(), 0);
}

#[test]
fn count_runs_on_target_counts_runs_of_that_action_there_in_the_window() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, "rec-old", Outcome::Auto, 10);
    let mine = proposed(&s, "rec-mine", Outcome::Auto, 100);
    proposed(&s, "rec-other", Outcome::Review, 100);
    let none = ChangeId("none".into());
    assert_eq!(s.count_runs_on_target(ActionClass::RestartProcess, &target(), 0, &none).unwrap(), 0, "nothing ran yet");
    s.claim_approved(10, 200).unwrap();
    assert_eq!(s.count_runs_on_target(ActionClass::RestartProcess, &target(), 0, &none).unwrap(), 2);
    assert_eq!(s.count_runs_on_target(ActionClass::RestartProcess, &target(), 0, &mine.id).unwrap(), 1, "the change about to run is excluded");
    assert_eq!(s.count_runs_on_target(ActionClass::RestartProcess, &target(), 50, &none).unwrap(), 1, "outside the window");
    assert_eq!(s.count_runs_on_target(ActionClass::ScaleOut, &target(), 0, &none).unwrap(), 0, "another action");
    let elsewhere = Target { resource: "pod/b".into(), ..target() };
    assert_eq!(s.count_runs_on_target(ActionClass::RestartProcess, &elsewhere, 0, &none).unwrap(), 0, "another target");
}
