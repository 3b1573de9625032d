//! Progressive stages through the real gRPC API with the dry-run adapter: a staged tier-2 change
//! runs its canary after the first approval, then waits in `awaiting_stage_approval` for each
//! further stage, and no stage runs without a valid approval naming it. A paused rollout that a
//! person rejects, or that nobody approves in time, is rolled back, stage by stage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::*;
use cairn_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

fn approve_req(r: &pb::Recommendation, revision: u32, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_change_pauses_before_each_stage_until_a_person_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = dir.path().join("playbooks.toml");
    let text = include_str!("../../crates/cairn-recommend/playbooks/default.toml")
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
    let events = h.audit_events(&r.id).await;
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("change.stage_started"), 3);
    assert_eq!(count("change.stage_finished"), 3);
    assert_eq!(count("change.stage_paused"), 2);
    assert_eq!(count("change.stage_approved"), 2);
    h.stop().await;
}

fn reject_req(r: &pb::Recommendation, revision: u32, reason: &str) -> pb::RejectRequest {
    pb::RejectRequest { recommendation_id: r.id.clone(), revision, reason: reason.into() }
}


/// A server whose `rollback-deploy` playbook runs in three stages, on `clock`.
async fn staged_server(
    clock: Arc<dyn cairn_server::engine::Clock>,
    tweak: impl FnOnce(&mut cairn_server::config::ServerConfig),
) -> Harness {
    Harness::start_on(clock, |cfg, dir| {
        let catalogue = dir.join("playbooks.toml");
        let text = include_str!("../../crates/cairn-recommend/playbooks/default.toml")
            .replacen("name = \"rollback-deploy\"\n", "name = \"rollback-deploy\"\nstages = [\"canary\", \"25%\", \"100%\"]\n", 1);
        std::fs::write(&catalogue, text).unwrap();
        cfg.playbooks = Some(catalogue);
        tweak(cfg);
    })
    .await
}

/// Fires the alert that proposes the staged rollback, approves it, and waits until the canary ran
/// and the change waits for 25%.
async fn paused_after_canary(h: &Harness, fingerprint: &str) -> pb::Recommendation {
    let p = webhook_payload(
        "DeploymentErrorsAfterRelease",
        &[("service", "checkout"), ("env", "production"), ("instance", "checkout-1:8080"), ("severity", "critical")],
        &[("summary", "test"), ("cairn_confidence", "0.9")],
        "firing",
        fingerprint,
    );
    let (s, msg) = h.webhook(&p).await;
    assert_eq!(s, 200, "{msg}");
    let is_it = |v: &pb::RecommendationView| v.recommendation.as_ref().is_some_and(|r| r.action == "rollback_deploy");
    let views = h.wait_for_views("rollback_deploy on checkout", |v| v.iter().any(is_it)).await;
    let r = views.iter().find(|v| is_it(v)).unwrap().recommendation.clone().unwrap();
    h.review("user:carol").await.approve(approve_req(&r, r.revision, "plan checked")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    assert_eq!(card.change.unwrap().stages_done, 1);
    r
}

async fn audit_kinds(h: &Harness, rec_id: &str) -> Vec<String> {
    h.audit_events(rec_id).await.into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_stops_a_paused_rollout_by_rejecting_it_and_its_stages_are_rolled_back() {
    let mut h = staged_server(Arc::new(cairn_server::engine::SystemClock), |_| {}).await;
    let r = paused_after_canary(&h, "fp-stop-1").await;
    h.review("user:alice").await.approve(approve_req(&r, r.revision, "canary fine")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await;
    // Approved again after the canary, so this state is only reached once 25% ran.
    assert_eq!((card.change.unwrap().stages_done, card.executions.len()), (2, 2));

    // Refused stops: outside the approver groups, a stale revision, no reason. Nothing changes.
    let e = h.review("user:mallory").await.reject(reject_req(&r, r.revision, "stop")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = h.review("user:alice").await.reject(reject_req(&r, r.revision + 1, "stop")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = h.review("user:alice").await.reject(reject_req(&r, r.revision, " ")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await.executions.len(), 2);

    let resp = h.review("user:carol").await.reject(reject_req(&r, r.revision, "25% shows errors")).await.unwrap().into_inner();
    assert!(resp.message.contains("rolled back"), "{}", resp.message);
    let card = h.wait_for_state(&r.id, &["rolled_back"]).await;
    let ch = card.change.unwrap();
    assert_eq!((ch.rejected_by.as_str(), ch.rejection_reason.as_str()), ("user:carol", "25% shows errors"));
    assert!(ch.stage_approval, "the default policy pauses a tier-2 rollout between stages");
    assert_eq!(
        (ch.stop_cause.as_str(), ch.stopped_by.as_str(), ch.stop_reason.as_str()),
        ("rejected", "user:carol", "25% shows errors")
    );
    assert_eq!(card.executions.len(), 3, "canary, 25%, and the rollback");
    let undo = &card.executions[2].output;
    let (at_25, at_canary) = (undo.find("stage 25%").expect(undo), undo.find("stage canary").expect(undo));
    assert!(at_25 < at_canary, "newest first: {undo}");

    // Nothing more runs, and nothing approves it back.
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision, "go on")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let card = h.wait_for_state(&r.id, &["rolled_back"]).await;
    assert_eq!(card.executions.len(), 3);
    assert!(card.executions.iter().all(|e| !e.output.contains("stage 100% (3 of 3)")), "100% never ran");

    let kinds = audit_kinds(&h, &r.id).await;
    let after_reject: Vec<&str> = kinds.iter().skip_while(|k| *k != "change.rejected").map(String::as_str).collect();
    assert_eq!(after_reject, ["change.rejected", "change.executing", "change.executed", "change.rolled_back"], "{kinds:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_nobody_approves_expires_and_is_rolled_back() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let mut h = staged_server(clock.clone(), |cfg| cfg.workflow.stage_approval_ttl_ms = 600_000).await;
    let r = paused_after_canary(&h, "fp-expire-1").await;
    // Nine minutes: still waiting.
    clock.advance(540_000);
    h.engine().wake_executor();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await.executions.len(), 1);
    // Past ten minutes since the pause: it expires by itself and the canary is rolled back.
    clock.advance(60_001);
    h.engine().wake_executor();
    let card = h.wait_for_state(&r.id, &["rolled_back"]).await;
    assert_eq!(card.executions.len(), 2, "the canary and its rollback");
    let ch = card.change.as_ref().unwrap();
    assert_eq!((ch.stop_cause.as_str(), ch.stopped_by.as_str()), ("expired", "system:cairn"));
    assert!(card.executions[1].output.contains("would roll back") && card.executions[1].output.contains("stage canary"));
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision, "too late")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let kinds = audit_kinds(&h, &r.id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "change.expired").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "change.rolled_back").count(), 1, "{kinds:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_policy_version_supersedes_a_paused_rollout_rolls_it_back_and_decides_again_whether_stages_pause() {
    let mut h = staged_server(Arc::new(cairn_server::engine::SystemClock), always_open_window).await;
    let r = paused_after_canary(&h, "fp-supersede-1").await;

    // A bundle whose tier-2 decisions let stages run through, activated by two sre-leads.
    let files: Vec<pb::PolicyFile> = cairn_policy::PolicyBundle::embedded_default()
        .files()
        .into_iter()
        .map(|f| {
            let text = if f.name == "route.rego" {
                let t = f.text.replace("data.approvers.tier2, \"requires_window\": false, \"stage_approval\": true", "data.approvers.tier2, \"requires_window\": false, \"stage_approval\": false");
                assert_ne!(t, f.text, "the tier-2 rule names stage_approval");
                t
            } else if f.name == "route_test.rego" {
                // The bundle is proposed with its tests, which say what it decides.
                f.text.replace("t2.stage_approval == true", "t2.stage_approval == false")
            } else {
                f.text
            };
            pb::PolicyFile { name: f.name, text }
        })
        .collect();
    let req = pb::ProposePolicyRequest { files, reason: "tier-2 rollouts run through".into(), execution_window: "always".into() };
    let proposal = h.review("user:carol").await.propose_policy(req).await.unwrap().into_inner().proposal.unwrap();
    let p = proposal.recommendation.unwrap();
    h.review("user:alice").await.approve(approve_req(&p, p.revision, "read it")).await.unwrap();
    h.review("user:bob").await.approve(approve_req(&p, p.revision, "read it too")).await.unwrap();
    assert_eq!(h.wait_for_state(&p.id, &["succeeded", "failed"]).await.change.unwrap().state, "succeeded");

    // The paused rollout was routed again as a new revision; the old one is rolled back.
    let store = h.engine().store().clone();
    let rec_id = cairn_types::RecommendationId(r.id.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let old = loop {
        let old = store.get_recommendation(&rec_id, Some(r.revision)).unwrap().unwrap().change;
        if old.state.is_terminal() {
            break old;
        }
        assert!(std::time::Instant::now() < deadline, "old revision still {}", old.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(old.state, cairn_types::ChangeState::RolledBack);
    assert_eq!(old.stop.as_ref().map(|s| s.cause), Some(cairn_types::StopCause::Superseded));
    let executions = store.executions_for(&old.id).unwrap();
    assert_eq!(executions.len(), 2, "the canary and its rollback");
    assert!(executions[1].output.contains("would roll back") && executions[1].output.contains("stage canary"));
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision, "old revision")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // The new revision carries the new decision: one approval, then every stage runs through.
    let new = store.get_recommendation(&rec_id, None).unwrap().unwrap();
    assert_eq!((new.recommendation.revision, new.change.stage_approval), (r.revision + 1, false));
    h.review("user:carol").await.approve(approve_req(&r, r.revision + 1, "again, under the new policy")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    assert_eq!(card.change.unwrap().stages_done, 3);
    let kinds = audit_kinds(&h, &r.id).await;
    assert!(kinds.iter().any(|k| k == "change.superseded") && kinds.iter().any(|k| k == "change.rolled_back"), "{kinds:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_rollout_whose_undo_fails_ends_rollback_failed_and_escalates() {
    let mut h = staged_server(Arc::new(cairn_server::engine::SystemClock), |cfg| {
        cfg.executor.adapter = cairn_server::config::AdapterKind::Command;
        cfg.executor.command.execute = vec!["/bin/echo".into(), "rolling out {stage}".into()];
        cfg.executor.command.rollback = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo undo {stage}; test '{stage}' != '25%' || { echo cannot undo 25% >&2; exit 7; }".into(),
        ];
    })
    .await;
    let r = paused_after_canary(&h, "fp-undo-fails").await;
    h.review("user:alice").await.approve(approve_req(&r, r.revision, "canary fine")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.wait_for_state(&r.id, &["awaiting_stage_approval"]).await.change.unwrap().stages_done < 2 {
        assert!(std::time::Instant::now() < deadline, "25% never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.review("user:carol").await.reject(reject_req(&r, r.revision, "stop it")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["rollback_failed"]).await;
    let undo = &card.executions.last().unwrap().output;
    assert!(undo.contains("cannot undo 25%") && undo.contains("undo canary"), "the canary is still undone: {undo}");
    let kinds = audit_kinds(&h, &r.id).await;
    assert!(kinds.iter().any(|k| k == "change.rollback_failed") && kinds.iter().any(|k| k == "change.escalated"), "{kinds:?}");
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_rollbacks_total{result=\"failed\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_escalations_total{alertname=\"CairnRollbackFailed\",result=\"unconfigured\"} 1"), "{metrics}");
    h.stop().await;
}
