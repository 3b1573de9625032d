//! Invariant 8 from the outside: the audit log written by a real server verifies, and editing one
//! stored row behind the server's back (as someone with file access could) makes `Verify` fail and
//! name that row.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::*;
use cairn_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_stored_audit_row_is_detected_and_named() {
    let mut h = Harness::start().await;
    let p = webhook_payload(
        "DeploymentErrorsAfterRelease",
        &[("service", "checkout"), ("env", "production"), ("instance", "checkout-1:8080")],
        &[("cairn_confidence", "0.9")],
        "firing",
        "fp-audit",
    );
    assert_eq!(h.webhook(&p).await.0, 200);
    let views = h.wait_for_views("a recommendation", |v| !v.is_empty()).await;
    let r = views[0].recommendation.clone().unwrap();
    h.review("user:carol")
        .await
        .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "ok".into() })
        .await
        .unwrap();
    h.wait_for_state(&r.id, &["succeeded"]).await;

    let v = h.audit("user:alice").await.verify(pb::VerifyRequest {}).await.unwrap().into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.tree_size, v.entries, "{v:?}");
    assert_eq!(v.root_hash.len(), 64, "{v:?}");
    assert!(v.entries >= 5, "proposal, decision, change, approval, execution: {v:?}");
    let events = h.audit_events(&r.id).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in ["decision.made", "change.approved", "change.executed"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let approval = events.iter().find(|e| e.kind == "change.approved").unwrap();
    assert_eq!(approval.actor, "user:carol");
    // A live Prove signs a fresh checkpoint and returns a bundle that verifies with its key alone.
    let proved = h
        .audit("user:alice")
        .await
        .prove(pb::ProveRequest { recommendation_id: r.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let key = cairn_audit::checkpoint::NoteVerifier::parse(&proved.public_key).unwrap();
    let bundle: cairn_audit::bundle::EvidenceBundle = serde_json::from_str(&proved.bundle_json).unwrap();
    let report = cairn_audit::bundle::verify_bundle(&bundle, &[key]).unwrap();
    assert_eq!(report.proven_seqs, events.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert!(report.unanchored_seqs.is_empty());
    let refused = h.audit("user:alice").await.prove(pb::ProveRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    h.stop().await;
    // The checkpoints (from Prove, and the graceful stop when anything was new) cover every entry.
    let checkpoints: Vec<_> = std::fs::read_dir(h.data_dir.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!checkpoints.is_empty(), "{checkpoints:?}");
    let note = std::fs::read_to_string(checkpoints.iter().max().unwrap()).unwrap();
    assert!(note.lines().nth(1).unwrap().parse::<u64>().unwrap() >= v.entries, "{note}");

    // Someone with access to the file rewrites history: the trigger that refuses UPDATE is in the
    // way, so they drop it first.
    let target_seq = events[1].seq as i64;
    {
        let db = rusqlite::Connection::open(h.data_dir.join("cairn.db")).unwrap();
        let refused = db.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = ?1", [target_seq]);
        assert!(refused.is_err(), "the store refuses UPDATE on the audit log");
        let triggers: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for t in triggers {
            db.execute(&format!("DROP TRIGGER {t}"), []).unwrap();
        }
        let n = db.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = ?1", [target_seq]).unwrap();
        assert_eq!(n, 1);
    }

    // A server started on the same data sees it.
    let dir = h.data_dir.clone();
    let h2 = Harness::start_with(move |c| c.data_dir = dir).await;
    let v = h2.audit("user:alice").await.verify(pb::VerifyRequest {}).await.unwrap().into_inner();
    assert!(!v.ok, "tampering must be detected");
    assert_eq!(v.first_bad_seq, target_seq as u64, "{v:?}");
    assert!(v.problem.contains(&target_seq.to_string()), "{v:?}");
    let mut h2 = h2;
    h2.stop().await;
}
