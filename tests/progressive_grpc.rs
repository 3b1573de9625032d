//! Progressive stages through the real gRPC API with the dry-run adapter: a staged tier-2 change
//! runs its canary after the first approval, then waits in `awaiting_stage_approval` for each
//! further stage, and no stage runs without a valid approval naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_e2e::*;
use cairn_proto::v1 as pb;
use std::time::Duration;

fn approve_req(r: &pb::Recommendation, revision: u32, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_change_pauses_before_each_stage_until_a_person_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = dir.path().join("playbooks.toml");
    let text = include_str!("../crates/cairn-recommend/playbooks/default.toml")
        .replacen("name = \"rollback-deploy\"\n", "name = \"rollback-deploy\"\nstages = [\"canary\", \"25%\", \"100%\"]\n", 1);
    std::fs::write(&catalogue, text).unwrap();
    let mut h = Harness::start_with(|cfg| cfg.playbooks = Some(catalogue.clone())).await;

    let p = webhook_payload(
        "DeploymentErrorsAfterRelease",
        &[("service", "checkout"), ("env", "production"), ("instance", "checkout-1:8080"), ("severity", "critical")],
        &[("summary", "test"), ("cairn_confidence", "0.9")],
        "firing",
        "fp-staged-1",
    );
    let (s, msg) = h.webhook(&p).await;
    assert_eq!(s, 200, "{msg}");
    let views = h
        .wait_for_views("rollback_deploy on checkout", |v| v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.action == "rollback_deploy")))
        .await;
    let v = views.iter().find(|v| v.recommendation.as_ref().is_some_and(|r| r.action == "rollback_deploy")).unwrap().clone();
    let (r, d) = (v.recommendation.unwrap(), v.decision.unwrap());
    assert_eq!((d.outcome, d.tier), (pb::Outcome::Review as i32, Some(2)), "{d:?}");
    assert_eq!(r.parameters.get("stages").map(String::as_str), Some("canary,25%,100%"));

    // First approval: the canary runs (dry run) and the change waits for 25%.
    h.review("user:carol").await.approve(approve_req(&r, r.revision, "plan checked")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    let ch = card.change.clone().unwrap();
    assert_eq!((ch.stages.len(), ch.stages_done, ch.next_stage.as_str()), (3, 1, "25%"));
    assert_eq!(card.executions.len(), 1);
    assert!(card.executions[0].output.contains("stage canary"), "{}", card.executions[0].output);

    // The executor polls every 50 ms; give it many chances to run 25% anyway.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    assert_eq!(card.executions.len(), 1, "no stage runs without its approval");

    // Refused stage approvals: outside the approver groups, a stale revision, no reason.
    let e = h.review("user:mallory").await.approve(approve_req(&r, r.revision, "go")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision + 1, "go")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision, " ")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    assert!(card.change.unwrap().stage_approvals.is_empty(), "refused approvals leave nothing behind");
    assert_eq!(card.executions.len(), 1);

    // Approve 25%: it runs, and the change waits for 100%.
    let resp = h.review("user:carol").await.approve(approve_req(&r, r.revision, "canary fine")).await.unwrap().into_inner();
    assert!(resp.message.contains("approved"), "{}", resp.message);
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    // The approval made it `approved` again, so this state is only reached after 25% ran.
    let ch = card.change.unwrap();
    assert_eq!((ch.stages_done, ch.next_stage.as_str()), (2, "100%"));
    assert_eq!(card.executions.len(), 2);
    assert!(card.executions[1].output.contains("stage 25%"), "{}", card.executions[1].output);

    // Approve 100%: the change finishes.
    h.review("user:alice").await.approve(approve_req(&r, r.revision, "25% fine")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    let ch = card.change.unwrap();
    assert_eq!((ch.stages_done, ch.next_stage.as_str()), (3, ""));
    assert_eq!(card.executions.len(), 3);
    assert!(card.executions[2].output.contains("stage 100%"));
    assert_eq!(ch.stage_approvals.len(), 2);
    assert!(ch.stage_approvals.iter().all(|a| a.action_digest == ch.action_digest && a.revision == r.revision));

    // Every stage start, finish, pause and approval is in the audit log.
    let events = h
        .audit("user:alice")
        .await
        .query(pb::AuditQueryRequest { recommendation_id: r.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("change.stage_started"), 3);
    assert_eq!(count("change.stage_finished"), 3);
    assert_eq!(count("change.stage_paused"), 2);
    assert_eq!(count("change.stage_approved"), 2);
    h.stop().await;
}
