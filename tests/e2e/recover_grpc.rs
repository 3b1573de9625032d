//! A change claimed by an executor that died before calling its adapter (its lease long expired)
//! is found by the next server on the same store, put back to `approved` once — its approval
//! still holds — and then runs under that approval, all through the public gRPC and HTTP APIs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::*;
use cairn_proto::v1 as pb;
use cairn_store::{ChangeStore, LeaseStore, LeaseTerms};
use std::sync::Arc;
use std::time::Duration;

const DNS: &str = "DNSResolutionFailure";
const GHOST: &str = "ghost-host:4242:1700000000000";

fn approve_req(r: &pb::Recommendation, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: reason.into() }
}

/// One tier-3 DNS change per service, each approved by two people, left `approved` in the store
/// under `data_dir`, waiting for a maintenance window (none configured); the server is stopped.
async fn approved_dns_changes(data_dir: &std::path::Path, services: &[&str]) -> Vec<pb::Recommendation> {
    let dir = data_dir.to_path_buf();
    let mut h = Harness::start_on(Arc::new(cairn_server::engine::SystemClock), move |cfg, _| cfg.data_dir = dir).await;
    for service in services {
        h.fire_alert(DNS, service, "0.9", &format!("fp-dns-{service}")).await;
    }
    let views = h.wait_for_views("a dns_change per service", |v| v.len() >= services.len()).await;
    let recs: Vec<pb::Recommendation> = views.iter().map(|v| v.recommendation.clone().unwrap()).collect();
    for r in &recs {
        h.review("user:alice").await.approve(approve_req(r, "checked")).await.unwrap();
        h.review("user:bob").await.approve(approve_req(r, "checked too")).await.unwrap();
        h.wait_for_state(&r.id, &["approved"]).await;
    }
    h.stop().await;
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_abandoned_before_its_adapter_call_is_requeued_once_and_runs_under_its_approval() {
    let keep = tempfile::tempdir().unwrap();
    let data_dir = keep.path().join("data");
    let clock = || Arc::new(cairn_server::engine::SystemClock);

    // 1. A tier-3 change approved by two people waits for a maintenance window (none configured).
    let r = approved_dns_changes(&data_dir, &["edge"]).await.remove(0);

    // 2. Another executor claimed it a minute ago and died before touching the target.
    let claimed_at = now_ms() - 60_000;
    {
        let store = cairn_store::SqliteStore::open(&data_dir.join("cairn.db")).unwrap();
        store.set_lease_terms(LeaseTerms { holder: GHOST.into(), ttl_ms: 1_000 });
        assert_eq!(store.claim_approved(10, claimed_at).unwrap().len(), 1);
    }

    // 3. The next server (now with a window open) recovers it, and the executor runs it.
    let dir = data_dir.clone();
    let mut h = Harness::start_on(clock(), move |cfg, _| {
        cfg.data_dir = dir;
        always_open_window(cfg);
    })
    .await;
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    assert_eq!(card.executions.len(), 1, "it ran once, under the approval it had");
    tokio::time::sleep(Duration::from_millis(300)).await; // more sweeps: nothing more to recover

    let events = h.audit_events(&r.id).await;
    let interrupted: Vec<&pb::AuditEvent> = events.iter().filter(|e| e.kind == "change.interrupted").collect();
    assert_eq!(interrupted.len(), 1, "{events:#?}");
    let p: serde_json::Value = serde_json::from_str(&interrupted[0].payload_json).unwrap();
    assert_eq!((p["lease_holder"].as_str(), p["lease_expires_ms"].as_i64()), (Some(GHOST), Some(claimed_at + 1_000)), "{p}");
    assert_eq!((p["resolution"].as_str(), p["state"].as_str()), (Some("requeued"), Some("approved")), "{p}");
    assert!(p["adapter_call"].is_null(), "{p}");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).skip_while(|k| *k != "change.interrupted").collect();
    assert_eq!(&kinds[..3], ["change.interrupted", "change.executing", "change.executed"], "{kinds:?}");

    let verify = h.audit("user:alice").await.verify(pb::VerifyRequest {}).await.unwrap().into_inner();
    assert!(verify.ok, "{verify:?}");
    assert!(h.metrics_text().await.contains("cairn_changes_interrupted_total{resolution=\"requeued\"} 1"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_claimed_in_one_batch_keep_their_leases_while_an_earlier_one_runs() {
    let keep = tempfile::tempdir().unwrap();
    let data_dir = keep.path().join("data");
    let clock = || Arc::new(cairn_server::engine::SystemClock);

    // 1. Two tier-3 changes, each approved by two people, wait for a maintenance window.
    let recs = approved_dns_changes(&data_dir, &["edge", "mail"]).await;

    // 2. A server with the window open claims both in one pass; each adapter call takes 4 s, over
    //    twice the 1.5 s lease (renewed every 500 ms, leaving a loaded machine a second of slack). While the first runs, the second waits its turn under this
    //    process's claim, and its lease must be renewed with the first's: no lease of this store
    //    is ever seen expired.
    let dir = data_dir.clone();
    let mut h = Harness::start_on(clock(), move |cfg, _| {
        cfg.data_dir = dir;
        cfg.executor.adapter = cairn_server::config::AdapterKind::Command;
        cfg.executor.command.execute = vec!["sleep".into(), "4".into()];
        cfg.executor.command.rollback = vec!["true".into()];
        cfg.executor.lease_ms = 1_500;
        always_open_window(cfg);
    })
    .await;
    let store = h.engine().store().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut checks = 0;
    loop {
        let executing = {
            let mut n = 0;
            for r in &recs {
                n += usize::from(h.card(&r.id, r.revision).await.change.is_some_and(|c| c.state == "executing"));
            }
            n
        };
        if executing == 0 && checks > 0 {
            break;
        }
        if executing == 2 {
            let expired = store.expired_leases(now_ms(), 10).unwrap();
            assert!(expired.is_empty(), "a claim waiting its turn lapsed: {:?}", expired.iter().map(|(_, l)| l).collect::<Vec<_>>());
            checks += 1;
        }
        assert!(std::time::Instant::now() < deadline, "the batch did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 20, "both were seen executing together past the first lease ({checks} checks)");
    for r in &recs {
        let events = h.audit_events(&r.id).await;
        assert!(events.iter().all(|e| e.kind != "change.interrupted"), "{events:#?}");
        assert!(events.iter().any(|e| e.kind == "change.executed"), "{events:#?}");
    }
    h.stop().await;
}
