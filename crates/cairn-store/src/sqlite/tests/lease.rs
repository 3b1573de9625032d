//! Leases on claimed work, tried against what would break them: a sweep that recovers twice, a
//! sweep that takes a live lease, a renewal racing a sweep, a holder that lost its lease.

use super::*;
use crate::{Lease, LeaseStore, LeaseTerms};

const TTL: i64 = 1_000;

fn store(holder: &str) -> SqliteStore {
    let s = SqliteStore::open_in_memory().unwrap();
    s.set_lease_terms(LeaseTerms { holder: holder.into(), ttl_ms: TTL });
    s
}

/// Revision 1 approved and claimed at `at` by the store's holder.
fn claimed(s: &SqliteStore, at: i64) -> ChangeRequest {
    approved(s);
    let mut claimed = s.claim_approved(10, at).unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.pop().unwrap()
}

/// What recovery writes: the change out of `executing`, with its `change.interrupted` event.
fn recovered(c: &ChangeRequest, state: ChangeState, lease: &Lease) -> (ChangeRequest, Vec<AuditDraft>) {
    let mut next = c.clone();
    next.state = state;
    next.version += 1;
    let mut d = draft("change.interrupted");
    d.payload = serde_json::json!({ "lease_holder": lease.holder, "lease_expires_ms": lease.expires_ms });
    (next, vec![d])
}

fn count(s: &SqliteStore, kind: &str) -> usize {
    kinds(s).iter().filter(|k| k.as_str() == kind).count()
}

#[test]
fn a_claim_records_its_holder_and_expiry_in_the_claims_transaction() {
    let s = store("node-a:41:1");
    let c = claimed(&s, 7);
    let lease = s.lease(&c.id).unwrap().unwrap();
    assert_eq!((lease.holder.as_str(), lease.claimed_ms, lease.expires_ms), ("node-a:41:1", 7, 7 + TTL));
    assert_eq!(lease.adapter_call, None, "no adapter call began yet");
    let claim = s.audit_events(&AuditQuery::default()).unwrap().pop().unwrap();
    assert_eq!(claim.kind, "change.executing");
    assert!(claim.reason.contains("node-a:41:1"), "the claim's audit event names the holder: {}", claim.reason);
}

#[test]
fn an_expired_lease_is_recovered_exactly_once_and_the_chain_verifies() {
    let s = store("node-a");
    let c = claimed(&s, 7);
    assert!(s.expired_leases(7 + TTL - 1, 10).unwrap().is_empty(), "not expired a millisecond early");
    let due = s.expired_leases(7 + TTL, 10).unwrap();
    assert_eq!(due.len(), 1);
    let (change, lease) = &due[0];
    assert_eq!((change.id.clone(), change.state), (c.id.clone(), ChangeState::Executing));

    // Two sweepers read the same abandoned change; only the first write wins.
    let (next, drafts) = recovered(change, ChangeState::Approved, lease);
    assert!(s.resolve_interrupted(&next, change.version, lease, &drafts, 2_000).unwrap());
    assert!(!s.resolve_interrupted(&next, change.version, lease, &drafts, 2_001).unwrap(), "the second sweep writes nothing");
    assert!(s.expired_leases(99_999, 10).unwrap().is_empty(), "a recovered change has no lease left");
    assert_eq!(count(&s, "change.interrupted"), 1);
    assert_eq!(s.get_change(&c.id).unwrap().unwrap().state, ChangeState::Approved);
    assert!(s.lease(&c.id).unwrap().is_none());
    assert_eq!(s.verify_audit().unwrap().entries, s.audit_head().unwrap());

    // Claimed again, it gets a fresh lease, not the old one.
    let again = s.claim_approved(10, 3_000).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(s.lease(&c.id).unwrap().unwrap().expires_ms, 3_000 + TTL);
}

#[test]
fn a_valid_lease_is_not_touched_even_when_asked_to() {
    let s = store("node-a");
    let c = claimed(&s, 7);
    let lease = s.lease(&c.id).unwrap().unwrap();
    assert!(s.expired_leases(500, 10).unwrap().is_empty());
    // A sweep that mistakes the time (or a caller that skips `expired_leases`) still cannot win.
    let (next, drafts) = recovered(&c, ChangeState::Failed, &lease);
    assert!(!s.resolve_interrupted(&next, c.version, &lease, &drafts, 500).unwrap());
    assert_eq!(s.get_change(&c.id).unwrap().unwrap().state, ChangeState::Executing);
    assert_eq!(count(&s, "change.interrupted"), 0);
}

#[test]
fn a_renewal_keeps_the_change_from_a_sweep_that_read_it_as_expired() {
    let s = store("node-a");
    let c = claimed(&s, 7);
    let (change, stale) = s.expired_leases(7 + TTL, 10).unwrap().pop().unwrap();
    // The holder was only slow: it renews before the sweeper writes.
    let renewed = s.renew_lease(&c.id, "node-a", 1_010).unwrap().unwrap();
    assert_eq!(renewed.expires_ms, 1_010 + TTL);
    let (next, drafts) = recovered(&change, ChangeState::Failed, &stale);
    assert!(!s.resolve_interrupted(&next, change.version, &stale, &drafts, 1_011).unwrap());
    assert_eq!(s.get_change(&c.id).unwrap().unwrap().state, ChangeState::Executing);
    assert!(s.expired_leases(1_010 + TTL - 1, 10).unwrap().is_empty());
    // Another process cannot renew (or mark) a lease it does not hold.
    assert!(s.renew_lease(&c.id, "node-b", 1_020).unwrap().is_none());
    assert!(s.mark_adapter_call(&c.id, "node-b", "execute", 0, 1_020).unwrap().is_none());
    assert_eq!(s.lease(&c.id).unwrap().unwrap().holder, "node-a");
}

#[test]
fn an_adapter_call_is_recorded_before_it_happens_and_a_recorded_result_ends_the_lease() {
    let s = store("node-a");
    let c = claimed(&s, 7);
    let lease = s.mark_adapter_call(&c.id, "node-a", "execute stage 25%", 1, 50).unwrap().unwrap();
    assert_eq!((lease.adapter_call.as_deref(), lease.adapter_call_ms, lease.expires_ms), (Some("execute stage 25%"), Some(50), 50 + TTL));
    assert_eq!(lease.stages_done_at_call, Some(1));
    // A plain renewal keeps what began.
    let lease = s.renew_lease(&c.id, "node-a", 60).unwrap().unwrap();
    assert_eq!(lease.adapter_call.as_deref(), Some("execute stage 25%"));

    let mut done = c.clone();
    done.state = ChangeState::Succeeded;
    done.version += 1;
    let execution = Execution {
        change_id: c.id.clone(),
        recommendation_id: c.recommendation_id.clone(),
        revision: 1,
        adapter: "dry_run".into(),
        action_digest: c.action_digest.clone(),
        started_ms: 50,
        finished_ms: 70,
        outcome: ExecutionOutcome::DryRun,
        output: String::new(),
    };
    s.record_execution(&execution, &done, c.version, &[draft("change.executed")], 70).unwrap();
    assert!(s.lease(&c.id).unwrap().is_none(), "a finished change holds no lease");
    assert!(s.renew_lease(&c.id, "node-a", 80).unwrap().is_none(), "the holder learns its work is over");
    assert!(s.expired_leases(99_999, 10).unwrap().is_empty());
}

#[test]
fn rollback_claims_are_leased_too() {
    let s = store("node-a");
    proposed(&s, 1);
    staged(&s, 1, ChangeState::AwaitingStageApproval, 1, 20_000);
    s.expire_pending(20_000).unwrap();
    let claimed = s.claim_rollbacks(10, 21_000).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(s.lease(&claimed[0].id).unwrap().unwrap().expires_ms, 21_000 + TTL);
}

/// A database that a build without leases left with a change `executing` gets, on open, an
/// expired lease of an unknown holder whose adapter call may have begun: recovery must not assume
/// nothing ran.
#[test]
fn a_change_executing_before_leases_existed_is_handed_to_recovery_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        approved(&s);
        s.claim_approved(10, 7).unwrap();
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        // Undo what the migrations after 3 did that cannot be redone over itself.
        c.execute_batch(
            "DROP TABLE change_leases;
             DROP INDEX recommendations_latest; DROP INDEX recommendations_latest_by_service;
             ALTER TABLE recommendations DROP COLUMN latest;
             DROP INDEX incidents_by_change; ALTER TABLE incidents DROP COLUMN change_seq;",
        )
        .unwrap();
        c.execute_batch(UNDO_MEMBER_ROWS).unwrap();
        c.pragma_update(None, "user_version", 3).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let due = s.expired_leases(8, 10).unwrap();
    assert_eq!(due.len(), 1);
    let lease = &due[0].1;
    assert!(lease.holder.starts_with("unknown"), "{lease:?}");
    assert_eq!((lease.expires_ms, lease.adapter_call.is_some()), (7, true));
}
