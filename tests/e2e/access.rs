//! Invariant 11 through the real gRPC and HTTP endpoints: only people govern, and the sender of a
//! signal cannot steer what Cairn proposes or make anything run by itself. Each test tries to break
//! it with the credentials a real install hands to machines.

mod oidc;
mod tls;

use cairn_testkit::*;
use cairn_proto::v1 as pb;
use cairn_server::access::{PrincipalKind, Scope};
use cairn_server::config::{ServerConfig, TokenEntry};
use tonic::transport::Channel;

/// A dashboard's read-only service token, in group `sre` so that nothing but its kind stops it.
const DASHBOARD: &str = "service:dashboard";
/// A person who may only read.
const VIEWER: &str = "user:viewer";

fn with_extra_identities(cfg: &mut ServerConfig) {
    for (subject, kind, scopes) in [
        (DASHBOARD, PrincipalKind::Service, vec![Scope::Read]),
        (VIEWER, PrincipalKind::Person, vec![Scope::Read]),
    ] {
        cfg.auth.tokens.push(TokenEntry {
            subject: subject.into(),
            display_name: String::new(),
            groups: vec!["sre".into(), "sre-leads".into()],
            token_sha256: cairn_server::auth::hash_token(&token_of(subject)),
            kind: Some(kind),
            scopes: Some(scopes),
        });
    }
}

async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(h.grpc.clone()).unwrap().connect().await.unwrap()
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, needle: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(needle), "{e:?}");
}

/// One test per governing RPC: the service tokens a real install has are refused, naming the rule.
macro_rules! refused_for_services {
    ($name:ident, $client:path, $call:ident, $req:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let mut h = Harness::start_with(with_extra_identities).await;
            for subject in [SENDER, DASHBOARD] {
                let mut c = <$client>::with_interceptor(channel(&h).await, Bearer::of(subject));
                assert_denied(c.$call($req).await, "only people govern");
            }
            h.stop().await;
        }
    };
}

refused_for_services!(a_service_cannot_approve, pb::review_service_client::ReviewServiceClient<Channel>, approve, pb::ApproveRequest {
    recommendation_id: "rec-x".into(),
    revision: 1,
    reason: "r".into()
});
refused_for_services!(a_service_cannot_reject, pb::review_service_client::ReviewServiceClient<Channel>, reject, pb::RejectRequest {
    recommendation_id: "rec-x".into(),
    revision: 1,
    reason: "r".into()
});
refused_for_services!(
    a_service_cannot_propose_a_policy,
    pb::review_service_client::ReviewServiceClient<Channel>,
    propose_policy,
    pb::ProposePolicyRequest::default()
);
refused_for_services!(
    a_service_cannot_open_a_break_glass,
    pb::guardrail_service_client::GuardrailServiceClient<Channel>,
    open_break_glass,
    pb::OpenBreakGlassRequest::default()
);
refused_for_services!(
    a_service_cannot_revoke_a_break_glass,
    pb::guardrail_service_client::GuardrailServiceClient<Channel>,
    revoke_break_glass,
    pb::RevokeBreakGlassRequest::default()
);
refused_for_services!(
    a_service_cannot_switch_the_freeze,
    pb::guardrail_service_client::GuardrailServiceClient<Channel>,
    set_freeze,
    pb::SetFreezeRequest { frozen: false, reason: "r".into() }
);
refused_for_services!(
    a_service_cannot_enable_an_automation,
    pb::guardrail_service_client::GuardrailServiceClient<Channel>,
    enable_automation,
    pb::EnableAutomationRequest::default()
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_without_the_scope_is_refused_and_a_service_may_still_read() {
    let mut h = Harness::start_with(with_extra_identities).await;
    let mut viewer = pb::review_service_client::ReviewServiceClient::with_interceptor(channel(&h).await, Bearer::of(VIEWER));
    let req = pb::ApproveRequest { recommendation_id: "rec-x".into(), revision: 1, reason: "r".into() };
    assert_denied(viewer.approve(req).await, "needs scope `review`");
    let mut dashboard = pb::review_service_client::ReviewServiceClient::with_interceptor(channel(&h).await, Bearer::of(DASHBOARD));
    dashboard.list_recommendations(pb::ListRecommendationsRequest::default()).await.expect("read is allowed");
    // The alert sender may ingest but not read.
    let mut sender = pb::review_service_client::ReviewServiceClient::with_interceptor(channel(&h).await, Bearer::of(SENDER));
    assert_denied(sender.list_recommendations(pb::ListRecommendationsRequest::default()).await, "needs scope `read`");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_approval_forged_into_the_store_is_not_counted_at_execution() {
    let mut h = Harness::start_with(with_extra_identities).await;
    h.fire_alert("DeploymentErrorsAfterRelease", "checkout", "0.9", "fp-forge").await;
    let views = h.wait_for_views("rollback on checkout", |v| !v.is_empty()).await;
    let id = cairn_types::RecommendationId(views[0].recommendation.as_ref().unwrap().id.clone());
    let store = &h.engine().store();
    let record = store.get_recommendation(&id, None).unwrap().unwrap();
    assert_eq!(record.change.state, cairn_types::ChangeState::PendingApproval);
    // The workflow itself would accept this principal (it is in the approver group); only its
    // kind, known to the server's roster, makes it not count.
    let forger = cairn_types::Principal { subject: DASHBOARD.into(), display_name: "D".into(), groups: vec!["sre".into()] };
    let now = now_ms();
    let (next, drafts) =
        cairn_workflow::approve(&record.change, &record.recommendation, &forger, record.recommendation.revision, "forged", now).unwrap();
    assert_eq!(next.state, cairn_types::ChangeState::Approved);
    store.update_change(&next, record.change.version, &drafts, now).unwrap();
    h.engine().wake_executor();
    let card = h.wait_for_state(&id.0, &["failed"]).await;
    assert!(card.executions.is_empty(), "nothing ran on a service's approval: {:?}", card.executions);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_approver_groups_mean_nobody_approves() {
    // A policy naming no approver group for a review: even a person with every scope is refused.
    let mut h = Harness::start_on(std::sync::Arc::new(cairn_server::engine::SystemClock), |cfg, dir| {
        let bundle = dir.join("policy");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("route.rego"),
            "package cairn.route\n\ndecision := {\"outcome\": \"review\", \"tier\": 2, \"approvals_required\": 1, \"approver_groups\": [], \"requires_window\": false, \"reasons\": [\"no group named\"]} if { true }\n",
        )
        .unwrap();
        std::fs::write(bundle.join("data.json"), "{}").unwrap();
        cfg.policy.bundle = Some(bundle);
    })
    .await;
    h.fire_alert("DeploymentErrorsAfterRelease", "checkout", "0.9", "fp-nogroup").await;
    let views = h.wait_for_views("a review item", |v| !v.is_empty()).await;
    let r = views[0].recommendation.clone().unwrap();
    let e = h
        .review("user:alice")
        .await
        .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "ok".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    h.stop().await;
}

/// A webhook as an attacker who reaches the port would send it: steering annotations on an
/// arbitrary alert name, asking for a tier-0 restart at full confidence.
fn steering_payload(fingerprint: &str) -> serde_json::Value {
    webhook_payload(
        "DeploymentErrorsAfterRelease",
        &[("service", "search"), ("env", "production"), ("instance", "search-1:8080"), ("severity", "critical")],
        &[("summary", "x"), ("cairn_playbook", "restart-process"), ("cairn_confidence", "1.0")],
        "firing",
        fingerprint,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_webhook_cannot_steer_or_make_anything_auto() {
    // Shipped defaults: no token required on loopback ingest.
    let mut h = Harness::start_with(|cfg| cfg.ingest.require_token = false).await;
    let body = serde_json::to_vec(&steering_payload("fp-steer")).unwrap();
    let (status, msg) =
        h.post("/api/v1/alerts/alertmanager", &[("Content-Type", "application/json"), ("Authorization", "")], body).await;
    assert_eq!(status, 200, "{msg}");
    // Give the pipeline time to do the wrong thing.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let views = h.wait_for_views("a recommendation", |v| !v.is_empty()).await;
    for v in &views {
        let d = v.decision.as_ref().unwrap();
        assert_ne!(d.outcome, pb::Outcome::Auto as i32, "an unauthenticated alert made something auto: {v:?}");
        let r = v.recommendation.as_ref().unwrap();
        assert!(r.confidence < 1.0, "the pinned confidence was honoured: {r:?}");
        assert!(r.rationale.contains("cairn_playbook and cairn_confidence ignored"), "the card says why: {}", r.rationale);
    }
    assert!(
        !views.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.playbook == "restart-process")),
        "the named playbook was not taken from the sender: {views:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotating_sender_steers_and_a_plain_ingest_token_does_not() {
    let mut h = Harness::start().await;
    h.webhook(&steering_payload("fp-trusted")).await;
    let views = h
        .wait_for_views("the named restart", |v| v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.playbook == "restart-process")))
        .await;
    let r = views.iter().find_map(|v| v.recommendation.as_ref().filter(|r| r.playbook == "restart-process")).unwrap();
    assert!((r.confidence - 1.0).abs() < 0.02, "the pinned confidence is used: {r:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_sender_is_refused_when_tokens_are_required() {
    let mut h = Harness::start().await;
    let body = serde_json::to_vec(&steering_payload("fp-anon")).unwrap();
    let (status, _) = h.post("/api/v1/alerts/alertmanager", &[("Content-Type", "application/json"), ("Authorization", "")], body.clone()).await;
    assert_eq!(status, 401);
    // A person's token does not carry `ingest`.
    let bearer = format!("Bearer {}", token_of("user:alice"));
    let (status, msg) =
        h.post("/api/v1/alerts/alertmanager", &[("Content-Type", "application/json"), ("Authorization", &bearer)], body).await;
    assert_eq!(status, 403, "{msg}");
    assert!(msg.contains("needs scope `ingest`"), "{msg}");
    h.stop().await;
}
