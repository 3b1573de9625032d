use super::*;
use crate::{AuditLog, AuditProofs, AuditQuery, ChangeStore, SignalStore};
use cairn_types::*;

/// The shared example, created a second after the previous revision.
fn rec(rev: u32) -> Recommendation {
    Recommendation { created_ms: 1000 * i64::from(rev), ..cairn_types::fixtures::recommendation(rev) }
}

fn decision(rev: u32) -> Decision {
    Decision {
        recommendation_id: RecommendationId("rec-1".into()),
        revision: rev,
        outcome: Outcome::Review,
        tier: Some(2),
        approvals_required: 1,
        approver_groups: vec![],
        requires_window: false,
        stage_approval: true,
        breakglass_owner: None,
        reasons: vec!["r".into()],
        policy_version: "sha256:p".into(),
        policy_failed: false,
        decided_ms: 0,
    }
}

fn change(rev: u32) -> ChangeRequest {
    ChangeRequest { created_ms: 1000 * i64::from(rev), ..cairn_types::fixtures::change_request(rev) }
}

fn draft(kind: &str) -> AuditDraft {
    AuditDraft { actor: "system:cairn".into(), kind: kind.into(), recommendation_id: Some("rec-1".into()), ..Default::default() }
}

fn proposed(store: &SqliteStore, rev: u32) {
    store.propose(&rec(rev), &decision(rev), &change(rev), &[draft("recommendation.proposed")], 5).unwrap();
}

/// Revision 1 proposed, and its change approved (version 2).
fn approved(store: &SqliteStore) -> ChangeRequest {
    proposed(store, 1);
    let mut c = change(1);
    c.state = ChangeState::Approved;
    c.version = 2;
    store.update_change(&c, 1, &[], 6).unwrap();
    c
}

#[test]
fn propose_then_read_back_latest_and_by_revision() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    let r = s.get_recommendation(&RecommendationId("rec-1".into()), None).unwrap().unwrap();
    assert_eq!(r.recommendation, rec(1));
    assert_eq!(r.change.state, ChangeState::PendingApproval);
    assert_eq!(s.audit_head().unwrap(), 1);
    assert!(s.get_recommendation(&RecommendationId("rec-1".into()), Some(2)).unwrap().is_none());
}

#[test]
fn a_new_revision_supersedes_the_earlier_pending_change_and_audits_it() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    proposed(&s, 2);
    let old = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    assert_eq!(old.state, ChangeState::Superseded);
    assert_eq!(old.version, 2);
    let latest = s.list_recommendations(&RecommendationFilter::default()).unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].recommendation.revision, 2);
    let kinds: Vec<String> = s.audit_events(&AuditQuery::default()).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["recommendation.proposed", "change.superseded", "recommendation.proposed"]);
}

#[test]
fn stale_version_is_a_conflict_and_writes_nothing() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    let mut c = change(1);
    c.state = ChangeState::Approved;
    c.version = 2;
    s.update_change(&c, 1, &[draft("change.approved")], 6).unwrap();
    let mut stale = change(1);
    stale.state = ChangeState::Rejected;
    stale.version = 2;
    let err = s.update_change(&stale, 1, &[draft("change.rejected")], 7).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 1, found: 2, .. }), "{err}");
    assert_eq!(s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap().state, ChangeState::Approved);
    assert_eq!(s.audit_head().unwrap(), 2, "the refused write appended nothing");
}

#[test]
fn a_failing_audit_append_rolls_back_the_state_change() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    s.with_writer(|c| {
        c.execute_batch("CREATE TRIGGER fail_append BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END;")?;
        Ok(())
    })
    .unwrap();
    let mut c = change(1);
    c.state = ChangeState::Approved;
    c.version = 2;
    assert!(s.update_change(&c, 1, &[draft("change.approved")], 6).is_err());
    assert_eq!(s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap().state, ChangeState::PendingApproval);
    assert!(s.propose(&rec(2), &decision(2), &change(2), &[draft("x")], 7).is_err());
    assert!(s.get_recommendation(&RecommendationId("rec-1".into()), Some(2)).unwrap().is_none());
}

#[test]
fn claim_moves_approved_to_executing_once() {
    let s = SqliteStore::open_in_memory().unwrap();
    approved(&s);
    let claimed = s.claim_approved(10, 7).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].state, ChangeState::Executing);
    assert!(s.claim_approved(10, 8).unwrap().is_empty(), "a claimed change is not handed out twice");
}

#[test]
fn pending_changes_expire_with_an_audit_event() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    assert!(s.expire_pending(9_999).unwrap().is_empty());
    assert_eq!(s.expire_pending(10_000).unwrap(), vec![ChangeId("chg-1".into())]);
    let last = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!(last.kind, "change.expired");
}

#[test]
fn audit_rows_refuse_update_and_delete_and_tampering_is_located() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    proposed(&s, 2);
    assert_eq!(s.verify_audit().unwrap().entries, 3);
    s.with_writer(|c| {
        assert!(c.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 2", []).is_err());
        assert!(c.execute("DELETE FROM audit_log WHERE seq = 3", []).is_err());
        c.execute_batch("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET reason = 'forged' WHERE seq = 2;")?;
        Ok(())
    })
    .unwrap();
    match s.verify_audit() {
        Err(StoreError::AuditBroken(b)) => assert_eq!(b.seq, 2),
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[test]
fn a_file_store_reopens_with_its_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        proposed(&s, 1);
    }
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.get_recommendation(&RecommendationId("rec-1".into()), None).unwrap().is_some());
    assert_eq!(s.verify_audit().unwrap().entries, 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::SchemaTooNew { found: 99, .. })));
}

#[test]
fn alerts_upsert_by_fingerprint() {
    let s = SqliteStore::open_in_memory().unwrap();
    let mut a = AlertEvent {
        fingerprint: "f".into(),
        status: AlertStatus::Firing,
        labels: [("alertname", "X")].into_iter().collect(),
        annotations: Labels::new(),
        starts_at_ms: 1,
        ends_at_ms: None,
        generator_url: String::new(),
        source: "t".into(),
    };
    s.record_alerts(std::slice::from_ref(&a), 1).unwrap();
    a.status = AlertStatus::Resolved;
    a.ends_at_ms = Some(5);
    s.record_alerts(std::slice::from_ref(&a), 2).unwrap();
    let stored = s.list_alerts(10).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].status, AlertStatus::Resolved);
}

/// SQLite's plan for `sql`, its steps joined: which index (if any) it reads.
fn query_plan(s: &SqliteStore, sql: &str) -> String {
    s.with_conn(|c| {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows: Vec<String> = st.query_map([], |r| r.get::<_, String>(3))?.collect::<std::result::Result<_, _>>()?;
        Ok(rows.join("; "))
    })
    .unwrap()
}

#[test]
fn firing_alerts_on_a_service_are_found_by_index_however_many_others_are_newer() {
    let s = SqliteStore::open_in_memory().unwrap();
    let alert = |fp: &str, service: &str, name: &str, status: AlertStatus| AlertEvent {
        fingerprint: fp.into(),
        status,
        labels: [("alertname", name), ("service", service)].into_iter().collect(),
        annotations: Labels::new(),
        starts_at_ms: 1,
        ends_at_ms: None,
        generator_url: String::new(),
        source: "t".into(),
    };
    s.record_alerts(&[alert("old", "checkout", "HighErrorRate", AlertStatus::Firing), alert("done", "checkout", "Slow", AlertStatus::Resolved)], 1).unwrap();
    // 1,500 newer alerts elsewhere: more than the 1,000 the decision card used to read and filter.
    let others: Vec<AlertEvent> = (0..1500).map(|i| alert(&format!("o{i}"), &format!("svc-{i}"), "X", AlertStatus::Firing)).collect();
    s.record_alerts(&others, 2).unwrap();
    let found: Vec<String> = s.firing_alerts_on_service("checkout", 10).unwrap().iter().map(|a| a.alertname().to_string()).collect();
    assert_eq!(found, ["HighErrorRate"], "the firing one, not the resolved one, and not lost behind newer alerts");
    let plan = query_plan(&s, "SELECT body FROM alerts WHERE service = 'checkout' AND status = 'firing' ORDER BY last_seen_ms DESC, fingerprint LIMIT 10");
    assert!(plan.contains("alerts_by_service"), "{plan}");
    let plan = query_plan(&s, "SELECT seq FROM audit_log WHERE seq > 0 AND kind = 'change.approved' ORDER BY seq LIMIT 50");
    assert!(plan.contains("audit_by_kind"), "an audit query by kind reads its index: {plan}");
}

#[test]
fn a_change_waiting_for_its_window_stays_approved_and_unclaimed() {
    let s = SqliteStore::open_in_memory().unwrap();
    let c = approved(&s);
    assert_eq!(s.approved_changes(10).unwrap(), std::slice::from_ref(&c));
    let head = s.audit_head().unwrap();
    assert!(s.claim_approved_except(10, 7, std::slice::from_ref(&c.id)).unwrap().is_empty());
    assert_eq!(s.get_change(&c.id).unwrap().unwrap().state, ChangeState::Approved);
    assert_eq!(s.audit_head().unwrap(), head, "leaving a change waiting writes nothing");
    let claimed = s.claim_approved_except(10, 8, &[ChangeId("chg-other".into())]).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].state, ChangeState::Executing);
    assert!(s.approved_changes(10).unwrap().is_empty());
}

#[test]
fn any_confidence_keeps_the_audit_chain_intact() {
    // serde_json parses floats to the nearest f64 only with `float_roundtrip`; without it this
    // confidence came back one bit off and the re-hashed entry no longer matched (found by the
    // review-sequence property test in cairn-workflow).
    let s = SqliteStore::open_in_memory().unwrap();
    let mut r = rec(1);
    r.confidence = 0.960_558_855_250_823_9;
    let mut d = draft("recommendation.proposed");
    d.payload = serde_json::json!({ "confidence": r.confidence });
    s.propose(&r, &decision(1), &change(1), &[d], 5).unwrap();
    s.verify_audit().unwrap();
}

/// The Merkle tree the store maintains incrementally, recomputed from the entries themselves.
fn recomputed_root(s: &SqliteStore) -> (u64, cairn_audit::merkle::Hash) {
    let mut t = cairn_audit::merkle::MemoryTree::new();
    for e in s.audit_events(&AuditQuery::default()).unwrap() {
        t.push(cairn_audit::entry_leaf(&e));
    }
    (t.size(), t.root_at(t.size()).unwrap())
}

#[test]
fn the_incremental_tree_matches_one_recomputed_from_the_entries() {
    let s = SqliteStore::open_in_memory().unwrap();
    assert_eq!(s.audit_tree_head().unwrap(), (0, cairn_audit::merkle::empty_root()));
    for rev in 1..=6 {
        proposed(&s, rev);
        assert_eq!(s.audit_tree_head().unwrap(), recomputed_root(&s), "after revision {rev}");
    }
    assert!(s.audit_tree_head().unwrap().0 > 6, "supersessions appended entries too");
}

#[test]
fn audit_fields_added_later_are_stored_and_read_back() {
    let s = SqliteStore::open_in_memory().unwrap();
    let d = draft("decision.made")
        .with_signal("fp-1")
        .with_model_version("detector-2")
        .with_reason_codes(["tier_2".to_string(), "service_scope".to_string()])
        .with_diff_summary("state none -> pending_approval")
        .with_affected_resources(["checkout/production/deploy/checkout".to_string()]);
    s.propose(&rec(1), &decision(1), &change(1), std::slice::from_ref(&d), 5).unwrap();
    let e = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!(e.signal_id.as_deref(), Some("fp-1"));
    assert_eq!(e.model_version.as_deref(), Some("detector-2"));
    assert_eq!(e.reason_codes, d.reason_codes);
    assert_eq!(e.diff_summary, d.diff_summary);
    assert_eq!(e.affected_resources, d.affected_resources);
    assert_eq!(s.verify_audit().unwrap().entries, 1);
}

#[test]
fn the_tree_table_refuses_update_and_delete() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    s.with_writer(|c| {
        assert!(c.execute("UPDATE audit_tree SET hash = x'00' WHERE level = 0", []).is_err());
        assert!(c.execute("DELETE FROM audit_tree", []).is_err());
        Ok(())
    })
    .unwrap();
}

/// A store written before the tree existed (schema 1) gets its tree built on open.
#[test]
fn a_schema_1_store_gets_its_tree_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut prev = cairn_audit::GENESIS_HASH.to_string();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        for seq in 1..=5u64 {
            let e = cairn_audit::seal(&prev, seq, 100 + seq as i64, &draft("change.approved"));
            c.execute(
                "INSERT INTO audit_log (seq, at_ms, actor, kind, incident_id, recommendation_id, revision, change_id, policy_version, reason, payload, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, NULL, NULL, NULL, ?6, ?7, ?8, ?9)",
                params![seq as i64, e.at_ms, e.actor, e.kind, e.recommendation_id, e.reason, e.payload.to_string(), e.prev_hash, e.hash],
            )
            .unwrap();
            prev = e.hash;
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.verify_audit().unwrap().entries, 5);
    assert_eq!(s.audit_tree_head().unwrap(), recomputed_root(&s));
    assert_eq!(s.audit_tree_head().unwrap().0, 5);
}

#[test]
fn a_read_only_open_verifies_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        proposed(&s, 1);
        proposed(&s, 2);
    }
    let ro = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(ro.verify_audit().unwrap().entries, 3);
    assert!(ro.propose(&rec(3), &decision(3), &change(3), &[draft("x")], 9).is_err(), "read-only");
    assert!(SqliteStore::open_read_only(&dir.path().join("missing.db")).is_err());
}

#[test]
fn evidence_from_the_store_verifies_against_a_checkpoint() {
    use cairn_audit::checkpoint::{Checkpoint, NoteSigner};
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    proposed(&s, 2);
    let (size, root) = s.audit_tree_head().unwrap();
    let key = NoteSigner::from_seed("cairn-audit", [5; 32]).unwrap();
    let note = key.sign(&Checkpoint { origin: "o".into(), size, root });
    proposed(&s, 3);
    let q = AuditQuery { recommendation_id: Some("rec-1".into()), ..Default::default() };
    let b = s.audit_evidence(&q, "recommendation rec-1", &note, size).unwrap();
    let r = cairn_audit::bundle::verify_bundle(&b, &[key.verifier()]).unwrap();
    assert_eq!(r.proven_seqs.len() as u64, size);
    assert!(!r.unanchored_seqs.is_empty(), "entries after the checkpoint are listed, not proven");
}

#[test]
fn audit_queries_combine_every_given_filter() {
    let s = SqliteStore::open_in_memory().unwrap();
    let mut drafts = Vec::new();
    for i in 0..12u32 {
        drafts.push(AuditDraft {
            actor: if i % 2 == 0 { "user:alice".into() } else { "user:bob".into() },
            kind: if i % 3 == 0 { "change.approved".into() } else { "decision.made".into() },
            recommendation_id: Some(format!("rec-{}", i % 4)),
            incident_id: Some(format!("inc-{}", i % 2)),
            ..Default::default()
        });
    }
    for (i, d) in drafts.iter().enumerate() {
        s.record_audit(std::slice::from_ref(d), 100 + i as i64).unwrap();
    }
    let seqs = |q: AuditQuery| s.audit_events(&q).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(AuditQuery { recommendation_id: Some("rec-1".into()), ..Default::default() }), [2, 6, 10]);
    assert_eq!(
        seqs(AuditQuery { actor: Some("user:alice".into()), kind: Some("change.approved".into()), ..Default::default() }),
        [1, 7]
    );
    assert_eq!(seqs(AuditQuery { incident_id: Some("inc-1".into()), since_ms: Some(103), until_ms: Some(107), ..Default::default() }), [4, 6, 8]);
    assert_eq!(seqs(AuditQuery { after_seq: Some(9), ..Default::default() }), [10, 11, 12]);
    assert_eq!(seqs(AuditQuery { after_seq: Some(2), limit: 2, ..Default::default() }), [3, 4]);
}

// --- stopped rollouts: expiry and a new revision stop a half-done staged change for rollback -----

/// The lifecycle's way from `pending_approval` to `state`, for fixtures: the store refuses any
/// write that skips a step ([`ChangeState::may_become`]).
fn path_to(state: ChangeState) -> Vec<ChangeState> {
    use ChangeState::*;
    match state {
        PendingApproval => vec![],
        Approved | Rejected | Expired | Superseded => vec![state],
        Executing => vec![Approved, Executing],
        _ => vec![Approved, Executing, state],
    }
}

/// Moves `c` (stored, in `pending_approval`) through the lifecycle up to the step before `state`,
/// writing no audit; returns it as stored.
fn walk_to_before(s: &SqliteStore, mut c: ChangeRequest, state: ChangeState) -> ChangeRequest {
    let path = path_to(state);
    for step in path.iter().take(path.len().saturating_sub(1)) {
        let expected = c.version;
        c.advance(*step, 6);
        s.update_change(&c, expected, &[], 6).unwrap();
    }
    c
}

/// Writes change `rev` (already proposed) as a staged change in `state` with `done` stages run.
fn staged(s: &SqliteStore, rev: u32, state: ChangeState, done: u32, expires_ms: i64) -> ChangeRequest {
    let c = s.get_change(&ChangeId(format!("chg-{rev}"))).unwrap().unwrap();
    let mut c = walk_to_before(s, c, state);
    let expected = c.version;
    c.stages = vec!["canary".into(), "25%".into(), "100%".into()];
    c.stages_done = done;
    c.state = state;
    c.expires_ms = expires_ms;
    c.version += 1;
    s.update_change(&c, expected, &[draft("test.setup")], 6).unwrap();
    c
}

fn kinds(s: &SqliteStore) -> Vec<String> {
    s.audit_events(&AuditQuery::default()).unwrap().into_iter().map(|e| e.kind).collect()
}

#[test]
fn a_paused_rollout_expires_once_into_rollback_pending_and_is_claimed_once() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    staged(&s, 1, ChangeState::AwaitingStageApproval, 2, 20_000);
    assert!(s.expire_pending(19_999).unwrap().is_empty());
    assert_eq!(s.expire_pending(20_000).unwrap(), vec![ChangeId("chg-1".into())]);
    let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    assert_eq!((c.state, c.stop.as_ref().map(|x| x.cause)), (ChangeState::RollbackPending, Some(StopCause::Expired)));
    let last = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!((last.kind.as_str(), last.payload["roll_back"].clone()), ("change.expired", serde_json::json!(["25%", "canary"])));
    assert!(s.expire_pending(99_999).unwrap().is_empty(), "expires once");

    assert!(s.claim_approved(10, 21_000).unwrap().is_empty(), "a stopped rollout is never claimed to run");
    let claimed = s.claim_rollbacks(10, 21_000).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].state, claimed[0].stop.is_some()), (ChangeState::Executing, true));
    assert!(s.claim_rollbacks(10, 21_001).unwrap().is_empty(), "claimed once");
    assert_eq!(kinds(&s).last().map(String::as_str), Some("change.executing"));
}

#[test]
fn a_new_revision_stops_a_half_done_rollout_for_rollback_and_supersedes_the_rest() {
    for (state, done, expected) in [
        (ChangeState::AwaitingStageApproval, 1, ChangeState::RollbackPending),
        (ChangeState::Approved, 2, ChangeState::RollbackPending),
        (ChangeState::Approved, 0, ChangeState::Superseded),
        (ChangeState::PendingApproval, 0, ChangeState::Superseded),
    ] {
        let s = SqliteStore::open_in_memory().unwrap();
        proposed(&s, 1);
        let before = staged(&s, 1, state, done, 1_000_000);
        proposed(&s, 2);
        let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
        assert_eq!((c.state, c.version), (expected, before.version + 1), "{state} with {done} stages done");
        assert_eq!(kinds(&s)[2..], ["change.superseded", "recommendation.proposed"], "{state}: audited in the same transaction");
        if expected == ChangeState::RollbackPending {
            assert_eq!(c.stop.as_ref().map(|x| x.cause), Some(StopCause::Superseded));
            assert_eq!(s.claim_rollbacks(10, 7).unwrap().len(), 1);
        }
        assert!(s.claim_approved(10, 8).unwrap().is_empty(), "{state}: the old revision never runs another stage");
        assert_eq!(s.get_change(&ChangeId("chg-2".into())).unwrap().unwrap().state, ChangeState::PendingApproval);
    }
}

#[test]
fn a_running_stage_is_left_alone_and_stopped_when_its_result_lands_under_a_newer_revision() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    let running = staged(&s, 1, ChangeState::Executing, 0, 1_000_000);
    proposed(&s, 2);
    assert_eq!(s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap(), running, "the claimed change is untouched");

    // Its canary finishes and it pauses: in the same transaction it is stopped for rollback.
    let mut paused = running.clone();
    paused.state = ChangeState::AwaitingStageApproval;
    paused.stages_done = 1;
    paused.version += 1;
    let execution = Execution {
        change_id: paused.id.clone(),
        recommendation_id: paused.recommendation_id.clone(),
        revision: 1,
        adapter: "test".into(),
        action_digest: "d".into(),
        started_ms: 9,
        finished_ms: 9,
        outcome: ExecutionOutcome::Succeeded,
        output: String::new(),
    };
    s.record_execution(&execution, &paused, running.version, &[draft("change.executed")], 9).unwrap();
    let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    assert_eq!((c.state, c.stop.as_ref().map(|x| x.cause)), (ChangeState::RollbackPending, Some(StopCause::Superseded)));
    assert_eq!(kinds(&s).iter().rev().take(2).map(String::as_str).collect::<Vec<_>>(), ["change.superseded", "change.executed"]);

    // A change that finished is left as it is.
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    let running = staged(&s, 1, ChangeState::Executing, 0, 1_000_000);
    proposed(&s, 2);
    let mut done = running.clone();
    done.state = ChangeState::Succeeded;
    done.stages_done = 3;
    done.version += 1;
    s.record_execution(&execution, &done, running.version, &[draft("change.executed")], 9).unwrap();
    assert_eq!(s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap().state, ChangeState::Succeeded);
}

mod lease;

/// An incident `id` last changed at `updated_ms` with `members` alert members.
fn incident(id: &str, updated_ms: i64, members: usize) -> cairn_types::Incident {
    let member = |fp: String| cairn_types::IncidentMember::Alert {
        fingerprint: fp,
        alertname: "X".into(),
        status: cairn_types::AlertStatus::Firing,
        labels: Default::default(),
        annotations: Default::default(),
        severity: cairn_types::Severity::High,
        starts_at_ms: 0,
        summary: String::new(),
    };
    cairn_types::Incident {
        id: cairn_types::IncidentId(id.into()),
        opened_ms: 0,
        updated_ms,
        members: (0..members).map(|i| member(format!("{id}-{i}"))).collect(),
        affected_services: vec![],
        common_labels: Default::default(),
        grouping_reasons: vec![],
        probable_causes: vec![],
        severity: cairn_types::Severity::High,
        version: 1,
        member_entities: vec![],
    }
}

#[test]
fn incidents_list_newest_first_filtered_by_time_and_size() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.upsert_incident(&incident("a", 10, 1)).unwrap();
    store.upsert_incident(&incident("b", 30, 3)).unwrap();
    store.upsert_incident(&incident("c", 20, 2)).unwrap();
    let ids = |v: Vec<cairn_types::Incident>| v.into_iter().map(|i| i.id.0).collect::<Vec<_>>();
    assert_eq!(ids(store.list_incidents(0, 0, 10).unwrap()), ["b", "c", "a"]);
    assert_eq!(ids(store.list_incidents(15, 0, 10).unwrap()), ["b", "c"]);
    assert_eq!(ids(store.list_incidents(0, 2, 10).unwrap()), ["b", "c"], "the display threshold counts members");
    assert_eq!(ids(store.list_incidents(0, 0, 1).unwrap()), ["b"]);
    // An update moves it to the front.
    store.upsert_incident(&incident("a", 40, 1)).unwrap();
    assert_eq!(ids(store.list_incidents(0, 0, 10).unwrap()), ["a", "b", "c"]);
}

#[test]
fn incidents_are_followed_from_a_cursor_each_write_once_in_its_latest_state() {
    let store = SqliteStore::open_in_memory().unwrap();
    let seen = |after: u64, min: usize, limit: usize| {
        store.incidents_changed_after(after, min, limit).unwrap().into_iter().map(|(c, i)| (c, i.id.0, i.members.len())).collect::<Vec<_>>()
    };
    store.upsert_incident(&incident("a", 10, 1)).unwrap();
    store.upsert_incident(&incident("b", 5, 3)).unwrap();
    // Change order, not event time: b was written after a although its clock says earlier.
    assert_eq!(seen(0, 0, 10), [(1, "a".into(), 1), (2, "b".into(), 3)]);
    assert_eq!(seen(1, 0, 10), [(2, "b".into(), 3)], "a follower resuming after 1 sees only what came after");
    assert_eq!(seen(0, 0, 1), [(1, "a".into(), 1)], "at most limit, oldest change first");
    // a is written twice more: it comes once, with its latest state and cursor, after b.
    store.upsert_incident(&incident("a", 11, 2)).unwrap();
    store.upsert_incident(&incident("a", 12, 4)).unwrap();
    assert_eq!(seen(2, 0, 10), [(4, "a".into(), 4)]);
    assert_eq!(seen(0, 0, 10), [(2, "b".into(), 3), (4, "a".into(), 4)]);
    // The display threshold leaves out small incidents, but never an emptied (merged-away) one.
    store.upsert_incident(&incident("c", 13, 1)).unwrap();
    store.upsert_incident(&incident("b", 14, 0)).unwrap();
    assert_eq!(seen(4, 2, 10), [(6, "b".into(), 0)]);
    assert!(seen(6, 0, 10).is_empty());
}

#[test]
fn following_incidents_reads_the_change_index() {
    let s = SqliteStore::open_in_memory().unwrap();
    let plan = query_plan(&s, "SELECT change_seq, id, body FROM incidents WHERE change_seq > 7 AND (member_count >= 2 OR member_count = 0) ORDER BY change_seq LIMIT 10");
    assert!(plan.contains("incidents_by_change"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

#[test]
fn a_withdrawn_recommendation_cannot_be_approved_or_run_and_says_why() {
    let s = SqliteStore::open_in_memory().unwrap();
    let approved = approved(&s);
    assert_eq!(approved.state, ChangeState::Approved);
    s.withdraw_recommendation(&RecommendationId("rec-1".into()), "incident inc-1 was merged into inc-2", 9).unwrap();
    let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    assert_eq!(c.state, ChangeState::Superseded, "an approval given before the merge is void");
    assert!(s.claim_approved(10, 10).unwrap().is_empty(), "the executor finds nothing to run");
    let last = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!(last.kind, "change.superseded");
    assert!(last.reason.contains("merged into inc-2"), "{}", last.reason);
    // Withdrawing again, or a recommendation that does not exist, changes nothing.
    let head = s.audit_head().unwrap();
    s.withdraw_recommendation(&RecommendationId("rec-1".into()), "again", 11).unwrap();
    s.withdraw_recommendation(&RecommendationId("rec-none".into()), "none", 11).unwrap();
    assert_eq!(s.audit_head().unwrap(), head);
}

#[test]
fn recent_changes_on_a_target_leave_out_superseded_revisions() {
    let s = SqliteStore::open_in_memory().unwrap();
    for rev in 1..=5 {
        proposed(&s, rev);
    }
    let target = rec(1).target;
    let recent = s.recent_changes_on_target(&target, 0).unwrap();
    assert_eq!(recent.len(), 1, "revisions 1-4 were superseded before they ran");
    assert_eq!(recent[0].recommendation.revision, 5);
}

#[test]
fn recent_runs_on_a_target_are_the_recent_changes_action_and_newest_state() {
    let s = SqliteStore::open_in_memory().unwrap();
    // Revision 1 approved, then run and failed; revision 2 on another action proposed after it
    // (superseding nothing that ran); a recommendation on another target.
    approved(&s);
    let mut ran = change(1);
    ran.state = ChangeState::Executing;
    ran.version = 3;
    s.update_change(&ran, 2, &[], 7).unwrap();
    ran.state = ChangeState::Failed;
    ran.version = 4;
    s.update_change(&ran, 3, &[], 8).unwrap();
    let mut elsewhere = Recommendation { id: RecommendationId("rec-9".into()), ..rec(1) };
    elsewhere.target.resource = "another".into();
    let mut other_change = change(1);
    other_change.id = ChangeId("chg-9".into());
    other_change.recommendation_id = elsewhere.id.clone();
    s.propose(&elsewhere, &Decision { recommendation_id: elsewhere.id.clone(), ..decision(1) }, &other_change, &[], 9).unwrap();
    let target = rec(1).target;
    let full: Vec<(ActionClass, ChangeState)> =
        s.recent_changes_on_target(&target, 0).unwrap().into_iter().map(|r| (r.recommendation.action, r.change.state)).collect();
    assert_eq!(full, [(rec(1).action, ChangeState::Failed)]);
    assert_eq!(s.recent_runs_on_target(&target, 0).unwrap(), full);
    assert!(s.recent_runs_on_target(&target, 2_000).unwrap().is_empty(), "created before the window");
}

/// The audit heads the store's hook is told, in order, from now on.
fn heard_heads(s: &SqliteStore) -> std::sync::Arc<std::sync::Mutex<Vec<u64>>> {
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heard.clone();
    s.on_audit_commit(Box::new(move |head| h.lock().unwrap().push(head)));
    heard
}

#[test]
fn the_audit_hook_hears_every_committed_append_and_nothing_else() {
    let s = SqliteStore::open_in_memory().unwrap();
    let heard = heard_heads(&s);
    s.propose(&rec(1), &decision(1), &change(1), &[draft("recommendation.proposed"), draft("decision.made")], 5).unwrap();
    assert_eq!(*heard.lock().unwrap(), [2], "one call per commit, with the new head");
    // A write that appends nothing, and a write refused (stale version) after its audit was
    // drafted: neither is heard.
    s.record_alerts(&[], 6).unwrap();
    let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    let mut next = c.clone();
    next.advance(ChangeState::Approved, 7);
    assert!(s.update_change(&next, c.version + 5, &[draft("change.approved")], 7).is_err());
    assert_eq!(*heard.lock().unwrap(), [2]);
    s.update_change(&next, c.version, &[draft("change.approved")], 7).unwrap();
    assert_eq!(*heard.lock().unwrap(), [2, 3]);
    assert_eq!(s.audit_head().unwrap(), 3);
}

#[test]
fn the_store_refuses_a_write_that_leaves_the_change_lifecycle() {
    let s = SqliteStore::open_in_memory().unwrap();
    s.propose(&rec(1), &decision(1), &change(1), &[draft("recommendation.proposed")], 5).unwrap();
    let c = s.get_change(&ChangeId("chg-1".into())).unwrap().unwrap();
    let audit_before = s.audit_events(&AuditQuery::default()).unwrap().len();
    // Straight from waiting for approval to running, or to done: skipping the approval.
    for to in [ChangeState::Executing, ChangeState::Succeeded, ChangeState::AwaitingStageApproval] {
        let mut next = c.clone();
        next.advance(to, 7);
        let e = s.update_change(&next, c.version, &[draft("forged")], 7).unwrap_err();
        assert!(matches!(e, StoreError::IllegalTransition { from: ChangeState::PendingApproval, .. }), "{to}: {e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }
    assert_eq!(s.get_change(&c.id).unwrap().unwrap(), c, "the change is as it was");
    assert_eq!(s.audit_events(&AuditQuery::default()).unwrap().len(), audit_before, "and so is the audit log");
    // Nothing leaves a terminal state, not even to itself.
    let mut rejected = c.clone();
    rejected.advance(ChangeState::Rejected, 8);
    s.update_change(&rejected, c.version, &[], 8).unwrap();
    for to in [ChangeState::Approved, ChangeState::Rejected] {
        let mut again = rejected.clone();
        again.advance(to, 9);
        assert!(matches!(s.update_change(&again, rejected.version, &[], 9), Err(StoreError::IllegalTransition { .. })), "{to}");
    }
}

#[test]
fn every_state_the_table_allows_is_reachable_and_terminal_states_lead_nowhere() {
    for from in ChangeState::ALL {
        let next: Vec<ChangeState> = ChangeState::ALL.into_iter().filter(|to| from.may_become(*to)).collect();
        assert_eq!(next.is_empty(), from.is_terminal(), "{from}: {next:?}");
    }
    // Every state but the two a change can only be opened in is reached by some transition.
    for to in ChangeState::ALL {
        let reached = ChangeState::ALL.into_iter().any(|from| from != to && from.may_become(to));
        assert_eq!(reached, !matches!(to, ChangeState::Advisory | ChangeState::Blocked), "{to}");
    }
}

/// Proposes revision `rev` of recommendation `id` on (service, environment) and walks its change to
/// `state`.
fn propose_on(s: &SqliteStore, id: &str, rev: u32, (service, environment): (&str, &str), state: ChangeState) {
    let (mut r, mut d, mut c) = (rec(rev), decision(rev), change(rev));
    r.id = RecommendationId(id.into());
    r.target.service = service.into();
    r.target.environment = environment.into();
    d.recommendation_id = r.id.clone();
    c.recommendation_id = r.id.clone();
    c.id = ChangeId(format!("chg-{id}-{rev}"));
    s.propose(&r, &d, &c, &[draft("recommendation.proposed")], 5).unwrap();
    if state != ChangeState::PendingApproval {
        let mut next = walk_to_before(s, c.clone(), state);
        let expected = next.version;
        next.advance(state, 6);
        s.update_change(&next, expected, &[], 6).unwrap();
    }
}

#[test]
fn listing_reads_latest_revisions_by_index_in_one_query_per_shape() {
    let s = SqliteStore::open_in_memory().unwrap();
    // rec-a: three revisions (the earlier two superseded); rec-b approved; rec-c on another service.
    for rev in 1..=3 {
        propose_on(&s, "rec-a", rev, ("checkout", "production"), ChangeState::PendingApproval);
    }
    propose_on(&s, "rec-b", 4, ("checkout", "production"), ChangeState::Approved);
    propose_on(&s, "rec-c", 5, ("search", "production"), ChangeState::PendingApproval);
    let list = |filter: RecommendationFilter| -> Vec<(String, u32)> {
        s.list_recommendations(&filter).unwrap().into_iter().map(|r| (r.recommendation.id.0, r.recommendation.revision)).collect()
    };
    let key = |id: &str, rev: u32| (id.to_string(), rev);
    assert_eq!(list(RecommendationFilter::default()), [key("rec-c", 5), key("rec-b", 4), key("rec-a", 3)], "latest revisions, newest first");
    assert_eq!(list(RecommendationFilter { limit: 2, ..Default::default() }).len(), 2);
    let checkout = RecommendationFilter { service: Some("checkout".into()), ..Default::default() };
    assert_eq!(list(checkout.clone()), [key("rec-b", 4), key("rec-a", 3)]);
    let pending = RecommendationFilter { state: Some(ChangeState::PendingApproval), ..Default::default() };
    assert_eq!(list(pending.clone()), [key("rec-c", 5), key("rec-a", 3)], "superseded revisions are not pending");
    assert_eq!(list(RecommendationFilter { state: Some(ChangeState::Superseded), ..Default::default() }), [], "only latest revisions");
    let both = RecommendationFilter { service: Some("checkout".into()), ..pending.clone() };
    assert_eq!(list(both.clone()), [key("rec-a", 3)]);
    assert_eq!(list(RecommendationFilter { outcome: Some(Outcome::Auto), ..Default::default() }), []);

    // Each shape is planned on an index that is already in order, so that it stops at the limit;
    // none groups, sorts, or scans the recommendations table.
    for (filter, index) in [
        (RecommendationFilter::default(), "recommendations_latest"),
        (checkout, "recommendations_latest_by_service"),
        (pending, "changes_in_state"),
        (both, "changes_in_state"),
    ] {
        let (sql, _) = latest_revisions_sql(&filter);
        let plan = query_plan(&s, &sql.replace('?', "'x'").replace("LIMIT 'x'", "LIMIT 10"));
        assert!(plan.contains(index), "{filter:?}: {plan}");
        assert!(!plan.contains("SCAN r ") || plan.contains("SCAN r USING INDEX"), "{filter:?}: {plan}");
        assert!(!plan.contains("GROUP BY"), "{filter:?}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
    }
}

#[test]
fn a_file_store_reads_beside_a_writer_and_sees_each_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    assert_eq!(s.readers.len(), READERS);
    proposed(&s, 1);
    // A reader refuses to write.
    let refused = s.with_conn(|c| Ok(c.execute("DELETE FROM alert_intake", []).map_err(|e| e.to_string())));
    assert!(refused.unwrap().unwrap_err().contains("readonly"), "a read connection wrote");
    // A read held open on one reader neither blocks the writer nor sees its commit; the next read does.
    let held = s.with_conn(|c| {
        let before = c.query_row("SELECT COUNT(*) FROM recommendations", [], |r| r.get::<_, i64>(0))?;
        proposed(&s, 2);
        let after = c.query_row("SELECT COUNT(*) FROM recommendations", [], |r| r.get::<_, i64>(0))?;
        Ok((before, after))
    });
    assert_eq!(held.unwrap(), (1, 1), "one read transaction sees one state");
    assert_eq!(s.get_recommendation(&RecommendationId("rec-1".into()), None).unwrap().unwrap().recommendation.revision, 2);
}

#[test]
fn a_store_from_before_latest_marks_gets_them_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        proposed(&s, 1);
        proposed(&s, 2);
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP INDEX recommendations_latest; DROP INDEX recommendations_latest_by_service;
             ALTER TABLE recommendations DROP COLUMN latest;
             DROP INDEX incidents_by_change; ALTER TABLE incidents DROP COLUMN change_seq;",
        )
        .unwrap();
        c.execute_batch(UNDO_MEMBER_ROWS).unwrap();
        c.pragma_update(None, "user_version", 6).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let listed = s.list_recommendations(&RecommendationFilter::default()).unwrap();
    assert_eq!(listed.iter().map(|r| r.recommendation.revision).collect::<Vec<_>>(), [2]);
}

/// Proposes `id` (of `action`) and records a successful execution of its change.
fn executed(s: &SqliteStore, id: &str, action: ActionClass) {
    let (mut r, mut d, mut c) = (rec(1), decision(1), change(1));
    r.id = RecommendationId(id.into());
    r.action = action;
    d.recommendation_id = r.id.clone();
    c.recommendation_id = r.id.clone();
    c.id = ChangeId(format!("chg-{id}"));
    s.propose(&r, &d, &c, &[draft("recommendation.proposed")], 5).unwrap();
    let c = walk_to_before(s, c, ChangeState::Succeeded);
    let mut done = c.clone();
    done.advance(ChangeState::Succeeded, 7);
    let execution = Execution {
        change_id: c.id.clone(),
        recommendation_id: r.id.clone(),
        revision: 1,
        adapter: "policy".into(),
        action_digest: c.action_digest.clone(),
        started_ms: 7,
        finished_ms: 7,
        outcome: ExecutionOutcome::Succeeded,
        output: String::new(),
    };
    s.record_execution(&execution, &done, c.version, &[draft("change.executed")], 7).unwrap();
}

#[test]
fn the_active_policy_is_the_last_activation_that_succeeded_and_survives_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let active = |s: &SqliteStore| s.active_policy().unwrap().map(|r| r.recommendation.id.0);
    {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(active(&s), None);
        executed(&s, "rec-policy-a", ActionClass::PolicyActivation);
        assert_eq!(active(&s).as_deref(), Some("rec-policy-a"));
        executed(&s, "rec-restart", ActionClass::RestartProcess);
        assert_eq!(active(&s).as_deref(), Some("rec-policy-a"), "another change's success is not an activation");
        executed(&s, "rec-policy-b", ActionClass::PolicyActivation);
        assert_eq!(active(&s).as_deref(), Some("rec-policy-b"));
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE active_policy; DROP INDEX incidents_by_change; ALTER TABLE incidents DROP COLUMN change_seq;")
            .unwrap();
        c.execute_batch(UNDO_MEMBER_ROWS).unwrap();
        c.pragma_update(None, "user_version", 7).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(active(&s).as_deref(), Some("rec-policy-b"), "a store from before the table finds its last activation");
}

#[test]
fn decided_changes_are_found_per_service_and_environment_without_the_asking_recommendation() {
    let s = SqliteStore::open_in_memory().unwrap();
    let propose_as = |id, rev, state, environment| propose_on(&s, id, rev, ("checkout", environment), state);
    propose_as("rec-a", 1, ChangeState::Rejected, "production");
    propose_as("rec-b", 1, ChangeState::Succeeded, "production");
    propose_as("rec-c", 1, ChangeState::PendingApproval, "production");
    propose_as("rec-d", 1, ChangeState::Failed, "staging");
    let asking = RecommendationId("rec-b".into());
    let decided = s.decided_changes_on_service("checkout", "production", &asking, 10).unwrap();
    let ids: Vec<&str> = decided.iter().map(|r| r.recommendation.id.0.as_str()).collect();
    assert_eq!(ids, ["rec-a"], "pending, other environments and the asking recommendation are left out");
    assert_eq!(decided[0].change.state, ChangeState::Rejected);
    assert!(s.decided_changes_on_service("checkout", "production", &RecommendationId("x".into()), 1).unwrap().len() == 1, "the limit holds");
}

#[test]
fn a_store_from_before_incident_cursors_numbers_its_incidents_in_the_order_they_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        for (id, updated_ms) in [("a", 30), ("b", 10), ("c", 20)] {
            s.upsert_incident(&incident(id, updated_ms, 1)).unwrap();
        }
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(UNDO_MEMBER_ROWS).unwrap();
        c.execute_batch("DROP INDEX incidents_by_change; ALTER TABLE incidents DROP COLUMN change_seq;").unwrap();
        c.pragma_update(None, "user_version", 8).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let seen = |after| s.incidents_changed_after(after, 0, 10).unwrap().into_iter().map(|(c, i)| (c, i.id.0)).collect::<Vec<_>>();
    assert_eq!(seen(0), [(1, "b".into()), (2, "c".into()), (3, "a".into())]);
    s.upsert_incident(&incident("b", 40, 2)).unwrap();
    assert_eq!(seen(3), [(4, "b".into())], "the next write follows the numbered ones");
}

/// Undoes migrations 10 (incidents' member rows), 11 (a journal row per request) and 12 (the
/// journal's mark), for a test that opens a store from before them.
const UNDO_MEMBER_ROWS: &str = "DROP TABLE incident_members; DROP TABLE incident_reasons; ALTER TABLE incidents DROP COLUMN member_count;
     ALTER TABLE incidents DROP COLUMN member_digests; ALTER TABLE incidents DROP COLUMN reason_digests;
     ALTER TABLE alert_intake DROP COLUMN alerts; DROP TABLE intake_done;";

/// Rows the writer connection has inserted, updated or deleted so far.
fn rows_written(s: &SqliteStore) -> u64 {
    s.with_writer(|c| Ok(c.total_changes())).unwrap()
}

#[test]
fn a_growing_incident_writes_only_its_new_and_changed_members_and_reads_back_whole() {
    let s = SqliteStore::open_in_memory().unwrap();
    let mut inc = incident("a", 10, 100);
    inc.member_entities = (0..100).map(|i| format!("service:s{}", i % 3)).collect();
    inc.grouping_reasons = (0..100).map(|i| format!("alert X joined: reason {i}")).collect();
    s.upsert_incident(&inc).unwrap();
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    // One more member, with its entity and the reason it joined: its two rows and the incident's,
    // not two hundred rows again.
    let grown = incident("a", 11, 101);
    inc.members.push(grown.members[100].clone());
    inc.member_entities.push("service:s9".into());
    inc.grouping_reasons.push("alert X joined: the last one".into());
    inc.updated_ms = 11;
    let before = rows_written(&s);
    s.upsert_incident(&inc).unwrap();
    assert_eq!(rows_written(&s) - before, 3, "the new member, its reason and the incident");
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    let stored = s.with_writer(|c| Ok(c.query_row("SELECT length(body) FROM incidents WHERE id = 'a'", [], |r| r.get::<_, i64>(0))?)).unwrap();
    assert!(stored < 1_000, "the incident's own row does not grow with its members: {stored} bytes");
    // A member changed in place (an alert resolved, an anomaly grew stronger) is written again.
    if let cairn_types::IncidentMember::Alert { status, .. } = &mut inc.members[50] {
        *status = cairn_types::AlertStatus::Resolved;
    }
    let before = rows_written(&s);
    s.upsert_incident(&inc).unwrap();
    assert_eq!(rows_written(&s) - before, 2);
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    // Unchanged members written again cost nothing but the incident's row.
    let before = rows_written(&s);
    s.upsert_incident(&inc).unwrap();
    assert_eq!(rows_written(&s) - before, 1);
    // A split leaves fewer, in another order: what is read is what was written.
    inc.members.truncate(40);
    inc.members.swap(0, 39);
    inc.member_entities.truncate(40);
    inc.member_entities.swap(0, 39);
    inc.grouping_reasons.truncate(10);
    s.upsert_incident(&inc).unwrap();
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    // Emptied (merged away), it is still listed by its cursor, with no member.
    inc.members.clear();
    inc.member_entities.clear();
    inc.grouping_reasons = vec!["merged into b: one problem".into()];
    s.upsert_incident(&inc).unwrap();
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    let followed = s.incidents_changed_after(0, 2, 10).unwrap();
    assert_eq!(followed.len(), 1);
    assert!(followed[0].1.members.is_empty());
    assert_eq!(s.list_incidents(0, 0, 10).unwrap().len(), 0, "an empty incident is not listed");
    let rows: i64 = s.with_writer(|c| Ok(c.query_row("SELECT COUNT(*) FROM incident_members", [], |r| r.get(0))?)).unwrap();
    assert_eq!(rows, 0);
    let reasons: i64 = s.with_writer(|c| Ok(c.query_row("SELECT COUNT(*) FROM incident_reasons", [], |r| r.get(0))?)).unwrap();
    assert_eq!(reasons, 1);
}

#[test]
fn a_write_told_what_changed_looks_at_those_rows_only_while_the_store_holds_the_version_it_follows() {
    let s = SqliteStore::open_in_memory().unwrap();
    let resolve = |inc: &mut cairn_types::Incident, i: usize| {
        if let cairn_types::IncidentMember::Alert { status, .. } = &mut inc.members[i] {
            *status = cairn_types::AlertStatus::Resolved;
        }
    };
    let mut inc = incident("a", 10, 100);
    inc.member_entities = (0..100).map(|i| format!("service:s{}", i % 3)).collect();
    inc.grouping_reasons = (0..100).map(|i| format!("alert X joined: reason {i}")).collect();
    s.upsert_incident(&inc).unwrap();
    // Version 2: member 50 resolved, one member and its reason more.
    inc.version = 2;
    resolve(&mut inc, 50);
    inc.members.push(incident("a", 11, 101).members[100].clone());
    inc.member_entities.push("service:s9".into());
    inc.grouping_reasons.push("alert X joined: the last one".into());
    let changes = IncidentChanges { since_version: 1, members: vec![50, 100], reasons_from: 100 };
    let before = rows_written(&s);
    s.upsert_incident_changes(&inc, &changes).unwrap();
    assert_eq!(rows_written(&s) - before, 4, "members 50 and 100, reason 100 and the incident");
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    // The changes are what the store goes by: a member they leave out is not looked at. (The
    // correlator names every member it changed; this shows the store reads no other.)
    inc.version = 3;
    resolve(&mut inc, 10);
    s.upsert_incident_changes(&inc, &IncidentChanges { since_version: 2, members: vec![], reasons_from: 101 }).unwrap();
    assert_ne!(s.get_incident(&inc.id).unwrap().unwrap(), inc, "member 10 was not named, so not written");
    // Changes relative to a version the store does not hold (that write failed, or another was
    // made since) are not trusted: every row is compared, and member 20 is written.
    s.upsert_incident(&inc).unwrap();
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    inc.version = 4;
    resolve(&mut inc, 20);
    let before = rows_written(&s);
    s.upsert_incident_changes(&inc, &IncidentChanges { since_version: 2, members: vec![], reasons_from: 101 }).unwrap();
    assert_eq!(rows_written(&s) - before, 2, "member 20 and the incident");
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
    // Shrunk and reordered under changes naming every member from 0: read back whole.
    inc.version = 5;
    inc.members.truncate(40);
    inc.members.swap(0, 39);
    inc.member_entities.truncate(40);
    inc.member_entities.swap(0, 39);
    inc.grouping_reasons.truncate(10);
    s.upsert_incident_changes(&inc, &IncidentChanges { since_version: 4, members: (0..40).collect(), reasons_from: 0 }).unwrap();
    assert_eq!(s.get_incident(&inc.id).unwrap().unwrap(), inc);
}

#[test]
fn a_store_from_before_member_rows_keeps_its_incidents_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let mut a = incident("a", 10, 3);
    a.member_entities = vec!["service:a".into(), "node:n1".into(), "service:a".into()];
    a.grouping_reasons = vec!["alert X: opened on service:a".into(), "alert X joined".into()];
    let b = incident("b", 20, 0);
    {
        let s = SqliteStore::open(&path).unwrap();
        s.upsert_incident(&incident("placeholder", 1, 1)).unwrap();
    }
    {
        // As migration 9 left them: each incident one row, its members in its body.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(UNDO_MEMBER_ROWS).unwrap();
        c.execute_batch("DELETE FROM incidents;").unwrap();
        for (seq, inc) in [(1, &a), (2, &b)] {
            c.execute(
                "INSERT INTO incidents (id, version, updated_ms, body, change_seq) VALUES (?1, 1, ?2, ?3, ?4)",
                params![inc.id.0, inc.updated_ms, serde_json::to_string(inc).unwrap(), seq],
            )
            .unwrap();
        }
        c.pragma_update(None, "user_version", 9).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get_incident(&a.id).unwrap().unwrap(), a);
    assert_eq!(s.get_incident(&b.id).unwrap().unwrap(), b);
    assert_eq!(s.list_incidents(0, 3, 10).unwrap(), [a.clone()], "member counts are carried over");
    // The first write after it, digests unknown, writes every member once; then only what changed.
    let mut grown = incident("a", 30, 4);
    grown.members[..3].clone_from_slice(&a.members);
    grown.member_entities = [a.member_entities.clone(), vec!["service:a".into()]].concat();
    grown.grouping_reasons = a.grouping_reasons.clone();
    s.upsert_incident(&grown).unwrap();
    assert_eq!(s.get_incident(&a.id).unwrap().unwrap(), grown);
    let before = rows_written(&s);
    s.upsert_incident(&grown).unwrap();
    assert_eq!(rows_written(&s) - before, 1);
}

#[test]
fn a_regrouping_stores_its_incidents_and_the_persons_audit_entry_together() {
    let s = SqliteStore::open_in_memory().unwrap();
    let audit = AuditDraft { actor: "user:alice".into(), kind: "incident.merged".into(), reason: "one bad node".into(), ..AuditDraft::default() };
    s.regroup_incidents(&[incident("a", 10, 2), incident("b", 10, 0)], &[audit], 10).unwrap();
    let followed: Vec<String> = s.incidents_changed_after(0, 0, 10).unwrap().into_iter().map(|(_, i)| i.id.0).collect();
    assert_eq!(followed, ["a", "b"]);
    let last = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!((last.kind.as_str(), last.actor.as_str(), last.reason.as_str()), ("incident.merged", "user:alice", "one bad node"));
    assert!(s.verify_audit().is_ok());
}

/// A firing alert with fingerprint `fp`.
fn firing(fp: &str) -> AlertEvent {
    AlertEvent {
        fingerprint: fp.into(),
        status: AlertStatus::Firing,
        labels: [("alertname", "X"), ("service", "checkout")].into_iter().collect(),
        annotations: Labels::new(),
        starts_at_ms: 1,
        ends_at_ms: None,
        generator_url: String::new(),
        source: "t".into(),
    }
}

fn fingerprints(s: &SqliteStore) -> Vec<String> {
    let mut f: Vec<String> = s.list_alerts(100).unwrap().into_iter().map(|a| a.fingerprint).collect();
    f.sort();
    f
}

/// The fingerprints of journaled alerts.
fn fps(j: &[crate::JournaledAlert]) -> Vec<String> {
    j.iter().map(|j| j.alert.fingerprint.clone()).collect()
}

/// Deletes the journal beside the store at `path`, as if it had been lost.
fn remove_journal_file(path: &std::path::Path) {
    let _ = std::fs::remove_dir_all(intake::dir_beside(path));
}

/// Records in the journal's log, analysed or not.
fn journal_rows(s: &SqliteStore) -> i64 {
    s.journal().unwrap().with_log(|l| l.records()) as i64
}

#[test]
fn a_journal_row_holds_one_requests_alerts_and_an_analysed_one_is_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        assert!(intake::dir_beside(&path).is_dir(), "the journal is a log beside the store");
        s.journal_alerts(vec![firing("a1"), firing("a2"), firing("a3")], 5).unwrap();
        s.journal_alerts(vec![firing("b1")], 6).unwrap();
        s.journal_alerts(vec![], 6).unwrap();
        assert_eq!(journal_rows(&s), 2, "a row per call with alerts, not per alert");
        assert_eq!(s.pending_intake_len().unwrap(), 4);
        // Whole rows: asked for two, the first call's three come, all with its place and time.
        let first = s.pending_intake(2).unwrap();
        assert_eq!(fps(&first), ["a1", "a2", "a3"]);
        assert!(first.iter().all(|j| j.seq == first[0].seq && j.received_ms == 5));
        // Marked in the store's database, the row is not yet deleted from the journal's file
        // (as after a crash between the two): it is not handed out again, here or after a restart.
        s.finish_intake(first[0].seq).unwrap();
        assert_eq!(s.pending_intake_len().unwrap(), 1);
        assert_eq!(journal_rows(&s), 2);
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.pending_intake_len().unwrap(), 1);
    assert_eq!(fps(&s.pending_intake(100).unwrap()), ["b1"]);
    assert_eq!(journal_rows(&s), 2, "kept in its segment until the segment is closed or full (log.rs)");
}

/// Rewrites every journal row's alerts in the log to one named `fp`: what is then read back
/// tells whether it came from the log or from memory.
fn rewrite_journal_file(s: &SqliteStore, fp: &str) {
    let body = serde_json::to_string(&[firing(fp)]).unwrap();
    s.journal().unwrap().with_log(|l| l.rewrite_bodies(&body));
}

#[test]
fn journaled_rows_are_taken_from_memory_while_it_holds_the_files_next_row_and_from_the_file_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.journal_alerts(vec![firing("a1"), firing("a2")], 5).unwrap();
        s.journal_alerts(vec![firing("b1")], 6).unwrap();
        rewrite_journal_file(&s, "from-file");
        let first = s.pending_intake(1).unwrap();
        assert_eq!(fps(&first), ["a1", "a2"], "whole rows, from memory, with their places");
        assert!(first.iter().all(|j| j.seq == first[0].seq && j.received_ms == 5));
        // Taken and not marked analysed (the pass failed): memory no longer holds the file's next
        // row, so the file is read, from that row on.
        assert_eq!(fps(&s.pending_intake(100).unwrap()), ["from-file", "from-file"]);
        // Marked analysed, the first row is behind: memory holds the file's next row again.
        s.finish_intake(first[0].seq).unwrap();
        assert_eq!(fps(&s.pending_intake(100).unwrap()), ["b1"]);
        // Taken and not marked, and a row journaled after it: read from the file, both.
        s.journal_alerts(vec![firing("c1")], 7).unwrap();
        let rest = s.pending_intake(100).unwrap();
        assert_eq!(fps(&rest), ["from-file", "c1"]);
        s.finish_intake(rest.last().unwrap().seq).unwrap();
        // Past what the file served and marked, memory holds the next row again.
        s.journal_alerts(vec![firing("d1")], 8).unwrap();
        rewrite_journal_file(&s, "from-file");
        assert_eq!(fps(&s.pending_intake(100).unwrap()), ["d1"]);
    }
    // After a restart memory is empty: the file's rows, as the file holds them.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(fps(&s.pending_intake(100).unwrap()), ["from-file"]);
}

#[test]
fn rows_held_in_memory_stay_a_run_without_gaps_within_their_bound() {
    let row = |fp: &str| vec![firing(fp)];
    let mut c = intake::Cached::with_cap(100);
    c.push(1, 0, row("a"), 40);
    c.push(2, 0, row("b"), 40);
    // The next would pass the bound: the run is dropped, not cut, and starts again with it.
    c.push(3, 0, row("c"), 40);
    assert_eq!(c.next_seq(), Some(3));
    // One larger than the bound is not held, and nothing before it either.
    c.push(4, 0, row("d"), 101);
    assert_eq!(c.next_seq(), None);
    c.push(5, 0, row("e"), 10);
    c.push(6, 0, row("f"), 10);
    c.push(7, 0, row("g"), 10);
    c.forget_through(5);
    assert_eq!(fps(&c.take(1)), ["f"], "whole rows, the oldest first");
    assert_eq!(c.next_seq(), Some(7));
}

#[test]
fn journal_rows_a_store_kept_before_the_journal_had_its_file_are_moved_once_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        // As migration 10 left the store: the journal a table in it, a row per alert, its body
        // the alert itself; and no journal file.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE intake_done; ALTER TABLE alert_intake DROP COLUMN alerts;").unwrap();
        for fp in ["old1", "old2", "old3"] {
            c.execute("INSERT INTO alert_intake (received_ms, body) VALUES (7, ?1)", [serde_json::to_string(&firing(fp)).unwrap()]).unwrap();
        }
        c.pragma_update(None, "user_version", 10).unwrap();
    }
    remove_journal_file(&path);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.pending_intake_len().unwrap(), 3);
    let old = s.pending_intake(1).unwrap();
    assert_eq!(fps(&old), ["old1"], "each old row is its own place");
    s.finish_intake(old[0].seq).unwrap();
    let left: i64 = s.with_writer(|c| Ok(c.query_row("SELECT COUNT(*) FROM alert_intake", [], |r| r.get(0))?)).unwrap();
    assert_eq!(left, 0, "moved out of the store's database");
    drop(s);
    {
        // A crash after the copy and before the delete: the rows are in both places.
        let c = rusqlite::Connection::open(&path).unwrap();
        for (seq, fp) in [(2, "old2"), (3, "old3")] {
            c.execute("INSERT INTO alert_intake (seq, received_ms, alerts, body) VALUES (?1, 7, 1, ?2)", rusqlite::params![seq, format!("[{}]", serde_json::to_string(&firing(fp)).unwrap())])
                .unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(fps(&s.pending_intake(100).unwrap()), ["old2", "old3"], "copied once, not twice");
    s.journal_alerts(vec![firing("new")], 8).unwrap();
    assert_eq!(fps(&s.pending_intake(100).unwrap()), ["old2", "old3", "new"], "and placed before what comes after");
}

#[test]
fn a_journal_database_of_an_earlier_build_is_moved_into_the_log_once_with_its_places() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.finish_intake(1).unwrap();
    }
    remove_journal_file(&path);
    // As the build before the log left it: a SQLite journal beside the store, row 1 analysed.
    let old = intake::old_file_beside(&path);
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.execute_batch(
            "CREATE TABLE alert_intake (seq INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL, alerts INTEGER NOT NULL, body TEXT NOT NULL);",
        )
        .unwrap();
        for (seq, fps) in [(1, vec!["done"]), (2, vec!["w1", "w2"]), (4, vec!["w3"])] {
            let body = serde_json::to_string(&fps.iter().map(|f| firing(f)).collect::<Vec<_>>()).unwrap();
            c.execute("INSERT INTO alert_intake VALUES (?1, 9, ?2, ?3)", rusqlite::params![seq, fps.len() as i64, body]).unwrap();
        }
    }
    let unread = SqliteStore::read_pending_intake(&path);
    assert!(matches!(&unread, Err(StoreError::Corrupt(m)) if m.contains("earlier build")), "not read as if empty: {unread:?}");
    let s = SqliteStore::open(&path).unwrap();
    assert!(!old.exists(), "the old journal is deleted once its rows are in the log");
    assert_eq!(s.pending_intake_len().unwrap(), 3);
    let rows = s.pending_intake(100).unwrap();
    assert_eq!(fps(&rows), ["w1", "w2", "w3"]);
    assert_eq!(rows.iter().map(|j| (j.seq, j.received_ms)).collect::<Vec<_>>(), [(2, 9), (2, 9), (4, 9)], "with their places and times");
    s.journal_alerts(vec![firing("new")], 10).unwrap();
    assert_eq!(s.pending_intake(100).unwrap().last().map(|j| j.seq), Some(5), "placed after them");
    drop(s);
    // Read back from the log, as a person looking into the data directory would.
    assert_eq!(fps(&SqliteStore::read_pending_intake(&path).unwrap()), ["w1", "w2", "w3", "new"]);
}

#[test]
fn a_journal_file_lost_beside_a_store_takes_new_rows_above_what_was_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        for i in 0..5 {
            s.journal_alerts(vec![firing(&format!("a{i}"))], 1).unwrap();
        }
        let all = s.pending_intake(100).unwrap();
        s.finish_intake(all.last().unwrap().seq).unwrap();
        assert_eq!(s.pending_intake_len().unwrap(), 0);
    }
    // A store restored from a backup that left the journal out: a new journal would place rows
    // from 1 again, at or below the mark, and they would be skipped as analysed: lost.
    remove_journal_file(&path);
    let s = SqliteStore::open(&path).unwrap();
    s.journal_alerts(vec![firing("after")], 2).unwrap();
    assert_eq!(s.pending_intake_len().unwrap(), 1);
    assert_eq!(fps(&s.pending_intake(100).unwrap()), ["after"]);
}

/// What another thread sees: a file store's readers see committed state only.
fn seen_elsewhere(s: &SqliteStore) -> Vec<String> {
    std::thread::scope(|t| t.spawn(|| fingerprints(s)).join().unwrap())
}

#[test]
fn a_write_pass_is_committed_once_and_its_own_reads_see_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    let heard = heard_heads(&s);
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("a")], 1).unwrap();
    s.propose(&rec(1), &decision(1), &change(1), &[draft("recommendation.proposed")], 5).unwrap();
    assert_eq!(fingerprints(&s), ["a"], "the pass reads what it wrote");
    assert!(s.get_recommendation(&RecommendationId("rec-1".into()), None).unwrap().is_some());
    assert!(seen_elsewhere(&s).is_empty(), "nobody else sees it before the commit");
    assert!(heard.lock().unwrap().is_empty(), "nor is the audit hook told");
    pass.commit().unwrap();
    assert_eq!(seen_elsewhere(&s), ["a"]);
    assert_eq!(*heard.lock().unwrap(), [1], "the hook hears the commit, with the head");
}

#[test]
fn a_failed_write_in_a_pass_is_undone_alone_and_the_rest_is_kept() {
    let s = SqliteStore::open_in_memory().unwrap();
    let pass = s.write_pass().unwrap();
    proposed(&s, 1);
    // The same revision again is refused after its audit was drafted: that write is undone.
    let refused = s.propose(&rec(1), &decision(1), &change(1), &[draft("recommendation.proposed")], 6);
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "{refused:?}");
    proposed(&s, 2);
    pass.commit().unwrap();
    assert_eq!(s.audit_head().unwrap(), 3, "revision 1, its supersession by 2, and revision 2; nothing of the refused write");
    assert_eq!(s.verify_audit().unwrap().entries, 3);
    assert_eq!(s.get_recommendation(&RecommendationId("rec-1".into()), None).unwrap().unwrap().recommendation.revision, 2);
}

#[test]
fn a_pass_dropped_without_commit_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    let heard = heard_heads(&s);
    {
        let _pass = s.write_pass().unwrap();
        s.record_alerts(&[firing("a")], 1).unwrap();
        proposed(&s, 1);
    }
    assert!(fingerprints(&s).is_empty());
    assert_eq!(s.audit_head().unwrap(), 0);
    assert!(heard.lock().unwrap().is_empty());
    // And the writer is free: a write after it is a transaction of its own.
    s.record_alerts(&[firing("b")], 2).unwrap();
    assert_eq!(seen_elsewhere(&s), ["b"]);
}

#[test]
fn a_journal_write_during_a_pass_neither_waits_for_it_nor_commits_it_and_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("before")], 1).unwrap();
    // Another thread acknowledges an alert while the pass's transaction is open, and keeps it
    // open past PASS_TURN_AFTER: the acknowledgement is committed by itself, at once.
    std::thread::sleep(PASS_TURN_AFTER * 2);
    std::thread::scope(|t| {
        t.spawn(|| {
            s.journal_alerts(vec![firing("acked")], 2).unwrap();
            assert_eq!(s.pending_intake_len().unwrap(), 1, "committed before journal_alerts returned");
        })
        .join()
        .unwrap()
    });
    assert!(seen_elsewhere(&s).is_empty(), "the pass was not committed to let the acknowledgement in");
    drop(pass);
    assert_eq!(s.pending_intake_len().unwrap(), 1, "the acknowledged alert is not undone with the pass");
    assert!(fingerprints(&s).is_empty(), "what the pass wrote is rolled back");
}

#[test]
fn a_writer_waiting_for_a_pass_gets_a_turn_within_milliseconds_and_its_write_survives_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("before")], 1).unwrap();
    // Another thread writes while the pass's transaction is open: it waits (at most about
    // PASS_TURN_AFTER), the pass's finished write is committed, then its own.
    let waited = std::thread::scope(|t| {
        t.spawn(|| {
            let started = Instant::now();
            s.record_alerts(&[firing("other")], 2).unwrap();
            started.elapsed()
        })
        .join()
        .unwrap()
    });
    assert!(waited < Duration::from_secs(2), "a pass keeps writers waiting for milliseconds, not for the pass: {waited:?}");
    assert_eq!(seen_elsewhere(&s), ["before", "other"], "the pass's finished write was committed to let the writer in");
    s.record_alerts(&[firing("after")], 3).unwrap();
    drop(pass);
    assert_eq!(fingerprints(&s), ["before", "other"], "what the pass wrote after the turn is rolled back");
}

#[test]
fn one_thread_at_a_time_has_a_pass_and_a_pass_inside_a_pass_is_empty() {
    let s = SqliteStore::open_in_memory().unwrap();
    let pass = s.write_pass().unwrap();
    let inner = s.write_pass().unwrap();
    s.record_alerts(&[firing("a")], 1).unwrap();
    inner.commit().unwrap();
    s.record_alerts(&[firing("b")], 1).unwrap();
    let other_got_in = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|t| {
        let h = t.spawn(|| {
            let p = s.write_pass().unwrap();
            other_got_in.store(true, std::sync::atomic::Ordering::SeqCst);
            s.record_alerts(&[firing("c")], 2).unwrap();
            p.commit().unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!other_got_in.load(std::sync::atomic::Ordering::SeqCst), "a second pass waits for the first to end");
        pass.commit().unwrap();
        h.join().unwrap();
    });
    assert_eq!(fingerprints(&s), ["a", "b", "c"]);
}

/// The fingerprints journaled and not yet analysed, as another connection sees them (committed).
fn journaled(s: &SqliteStore) -> Vec<String> {
    std::thread::scope(|t| t.spawn(|| s.pending_intake(100_000).unwrap().into_iter().map(|j| j.alert.fingerprint).collect()).join().unwrap())
}

#[test]
fn concurrent_journal_writes_are_committed_together_and_each_is_answered_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    std::thread::scope(|t| {
        for sender in 0..8 {
            let s = &s;
            t.spawn(move || {
                for i in 0..20 {
                    let batch: Vec<AlertEvent> = (0..3).map(|k| firing(&format!("{sender}-{i}-{k}"))).collect();
                    s.journal_alerts(batch.clone(), 2).unwrap();
                    // Answered: every row of it is committed, as another connection sees.
                    let seen = journaled(s);
                    for a in &batch {
                        assert!(seen.contains(&a.fingerprint), "{} answered before it was committed", a.fingerprint);
                    }
                }
            });
        }
    });
    let all = journaled(&s);
    assert_eq!(all.len(), 8 * 20 * 3, "nothing lost, nothing twice");
    // Each sender's rows in the order it sent them.
    for sender in 0..8 {
        let mine: Vec<&String> = all.iter().filter(|f| f.starts_with(&format!("{sender}-"))).collect();
        let sent: Vec<String> = (0..20).flat_map(|i| (0..3).map(move |k| format!("{sender}-{i}-{k}"))).collect();
        assert_eq!(mine, sent.iter().collect::<Vec<_>>());
    }
}

#[test]
fn a_failed_group_commit_fails_every_caller_in_it_and_stores_none_of_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = SqliteStore::open(&path).unwrap();
    // A write holding this row reaches the file half-way and fails, as on a full disk.
    s.journal().unwrap().with_log(|l| l.fail_half_way = Some("poison".into()));
    let outcomes: Vec<(String, bool)> = std::thread::scope(|t| {
        let calls: Vec<_> = ["a", "poison", "b", "c", "d"]
            .into_iter()
            .map(|fp| {
                let s = &s;
                t.spawn(move || (fp.to_string(), s.journal_alerts(vec![firing(fp)], 2).is_ok()))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let stored = journaled(&s);
    for (fp, ok) in &outcomes {
        // Answered success exactly when stored: a failed group loses nothing it acknowledged.
        assert_eq!(*ok, stored.contains(fp), "{fp}: answered {ok}, stored {}", stored.contains(fp));
    }
    assert!(outcomes.iter().any(|(fp, ok)| fp == "poison" && !ok));
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    assert_eq!(stored.len(), outcomes.len() - failed);
    // The journal takes writes again after a failed group.
    s.journal_alerts(vec![firing("later")], 3).unwrap();
    let acknowledged = journaled(&s);
    assert!(acknowledged.contains(&"later".to_string()));
    drop(s);
    // Read back from the file: the half-written group was cut off, so what followed it is whole.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(journaled(&s), acknowledged);
}

#[test]
fn a_pass_whose_commit_fails_says_so_stores_nothing_of_it_and_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
    // An alert 'orphan' leaves a row whose deferred foreign key fails the commit that holds it,
    // standing for a commit that fails (a full disk).
    s.with_writer(|c| {
        c.execute_batch(
            "CREATE TABLE parent (id TEXT PRIMARY KEY);
             CREATE TABLE child (p TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER orphan AFTER INSERT ON alerts WHEN NEW.fingerprint = 'orphan'
             BEGIN INSERT INTO child VALUES ('none'); END",
        )?;
        Ok(())
    })
    .unwrap();
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("orphan")], 1).unwrap();
    s.record_alerts(&[firing("b")], 1).unwrap();
    assert!(pass.commit().is_err(), "the failed commit is reported");
    assert!(fingerprints(&s).is_empty(), "and nothing of the pass is stored");

    // The commit that fails is one a waiting writer makes to take its turn: the writer's own
    // rows are stored, the pass learns at its next write and at its end.
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("orphan")], 1).unwrap();
    std::thread::scope(|t| t.spawn(|| s.record_alerts(&[firing("other")], 2).unwrap()).join().unwrap());
    let later = s.record_alerts(&[firing("c")], 3);
    assert!(later.is_err(), "a write after the failed commit fails: {later:?}");
    assert!(pass.commit().is_err());
    assert_eq!(fingerprints(&s), ["other"], "the writer's own rows are stored, nothing of the pass");
    // The next pass starts afresh.
    let pass = s.write_pass().unwrap();
    s.record_alerts(&[firing("d")], 4).unwrap();
    pass.commit().unwrap();
    assert_eq!(fingerprints(&s), ["d", "other"]);
}

#[test]
fn the_wal_is_checkpointed_off_the_writers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let s = SqliteStore::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    // Far fewer than SQLite's 1,000 pages: its own automatic checkpoint would not run, and the
    // writer's is off; only the checkpointer copies these pages into the database file.
    for i in 0..50 {
        s.upsert_incident(&incident(&format!("inc-{i}"), i, 4)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() <= before {
        assert!(std::time::Instant::now() < deadline, "the database file never grew: nothing checkpointed the WAL");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let auto: i64 = s.with_writer(|c| Ok(c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?)).unwrap();
    assert_eq!(auto, 0, "no writer checkpoints inside its commit");
    drop(s);
    assert_eq!(SqliteStore::open(&path).unwrap().list_incidents(0, 0, 100).unwrap().len(), 50);
}


#[test]
fn hot_statements_are_prepared_once_and_keep_their_indexes() {
    let s = SqliteStore::open_in_memory().unwrap();
    proposed(&s, 1);
    proposed(&s, 2);
    let t = rec(1).target;
    let text = |v: &str| rusqlite::types::Value::Text(v.into());
    let target = || vec![text(&t.service), text(&t.environment), text(&t.resource), 0i64.into()];
    let runs = recent_on_target!("r.action, (SELECT c.state FROM changes c WHERE c.recommendation_id = r.id AND c.revision = r.revision
                            ORDER BY c.created_ms DESC, c.rowid DESC LIMIT 1)");
    let supersedable = supersedable_below_sql();
    let statements: [(&str, Vec<rusqlite::types::Value>, &str); 4] = [
        (recent_on_target!("r.id, r.revision"), target(), "recommendations_target"),
        (runs, target(), "recommendations_target"),
        (DECIDED_ON_SERVICE, vec![text(&t.service), text(&t.environment), text("rec-9"), 200i64.into()], "recommendations_target"),
        (&supersedable, vec![text("rec-1"), 3i64.into()], "changes_by_rec"),
    ];
    for (sql, values, index) in statements {
        let plan = query_plan(&s, &sql.replace("?1", "'a'").replace("?2", "'b'").replace("?3", "'c'").replace("?4", "4"));
        assert!(plan.contains(index), "{sql}: {plan}");
        // Used as the store uses it: from rusqlite's statement cache, which clears the bindings
        // between uses.
        let reprepared = s
            .with_writer(|c| {
                for _ in 0..5 {
                    let mut st = c.prepare_cached(sql)?;
                    let mut rows = st.query(rusqlite::params_from_iter(values.iter()))?;
                    while rows.next()?.is_some() {}
                }
                Ok(c.prepare_cached(sql)?.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .unwrap();
        assert_eq!(reprepared, 0, "{sql}");
    }
}
