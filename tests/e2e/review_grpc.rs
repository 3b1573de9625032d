//! The review path through the real gRPC API, trying to break DESIGN.md's invariants: nothing
//! unapproved runs, identities are checked, tier 3 needs two distinct people, stale revisions and
//! policy failures are handled, and the live stream misses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::*;
use cairn_proto::v1 as pb;
use std::time::Duration;
use tokio_stream::StreamExt;

const ROLLBACK: &str = "DeploymentErrorsAfterRelease";
const DNS: &str = "DNSResolutionFailure";

fn view_for<'a>(views: &'a [pb::RecommendationView], action: &str, service: &str) -> Option<&'a pb::RecommendationView> {
    views.iter().find(|v| {
        v.recommendation
            .as_ref()
            .is_some_and(|r| r.action == action && r.target.as_ref().is_some_and(|t| t.service == service))
    })
}

async fn wait_for(h: &Harness, action: &str, service: &str) -> pb::RecommendationView {
    let views = h
        .wait_for_views(&format!("{action} on {service}"), |v| view_for(v, action, service).is_some())
        .await;
    view_for(&views, action, service).unwrap().clone()
}

fn approve_req(r: &pb::Recommendation, revision: u32, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_review_item_never_reaches_the_executor_and_approval_is_checked() {
    let mut h = Harness::start().await;
    h.fire_alert(ROLLBACK, "checkout", "0.9", "fp-rb-1").await;
    let v = wait_for(&h, "rollback_deploy", "checkout").await;
    let (r, d) = (v.recommendation.unwrap(), v.decision.unwrap());
    assert_eq!(d.outcome, pb::Outcome::Review as i32, "{d:?}");
    assert_eq!(d.tier, Some(2));

    // The executor polls every 50 ms; give it many chances to do the wrong thing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let card = h.wait_for_state(&r.id, &["pending_approval"]).await;
    assert!(card.executions.is_empty(), "nothing ran before approval: {:?}", card.executions);
    assert!(card.target_state.contains("1 firing alert(s)") && card.target_state.contains(ROLLBACK), "the card shows what fires on the target: {}", card.target_state);

    // No token.
    let channel = tonic::transport::Channel::from_shared(h.grpc.clone()).unwrap().connect().await.unwrap();
    let mut anon = pb::review_service_client::ReviewServiceClient::new(channel);
    let e = anon.approve(approve_req(&r, r.revision, "x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = anon.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Someone outside the approver groups.
    let e = h.review("user:mallory").await.approve(approve_req(&r, r.revision, "looks fine")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A stale (here: future) revision.
    let e = h.review("user:carol").await.approve(approve_req(&r, r.revision + 1, "looks fine")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // No reason.
    let e = h.review("user:carol").await.approve(approve_req(&r, r.revision, "")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let card = h.wait_for_state(&r.id, &["pending_approval"]).await;
    assert!(card.change.unwrap().approvals.is_empty(), "refused approvals leave no approval behind");

    // A valid approval by an SRE: the change runs (dry run) and succeeds.
    let resp = h.review("user:carol").await.approve(approve_req(&r, r.revision, "rollback plan checked")).await.unwrap().into_inner();
    assert!(resp.message.contains("approved"), "{}", resp.message);
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    assert_eq!(card.executions.len(), 1);
    assert_eq!(card.executions[0].status, "dry_run");
    let ch = card.change.unwrap();
    assert_eq!(ch.approvals.len(), 1);
    assert_eq!(ch.approvals[0].subject, "user:carol");
    assert_eq!(ch.approvals[0].action_digest, ch.action_digest, "the approval is bound to the exact action");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_needs_two_distinct_approvers_from_the_right_group() {
    let mut h = Harness::start().await;
    h.fire_alert(DNS, "edge", "0.9", "fp-dns-1").await;
    let v = wait_for(&h, "dns_change", "edge").await;
    let (r, d) = (v.recommendation.unwrap(), v.decision.unwrap());
    assert_eq!(d.outcome, pb::Outcome::Review as i32);
    assert_eq!(d.tier, Some(3));
    assert_eq!(d.approvals_required, 2);

    let resp = h.review("user:alice").await.approve(approve_req(&r, r.revision, "checked")).await.unwrap().into_inner();
    assert_eq!(resp.change.as_ref().unwrap().state, "pending_approval", "one approval is not a quorum");
    // The same person twice does not make two.
    let e = h.review("user:alice").await.approve(approve_req(&r, r.revision, "again")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Carol is an SRE but not in sre-leads.
    let e = h.review("user:carol").await.approve(approve_req(&r, r.revision, "checked")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let card = h.wait_for_state(&r.id, &["pending_approval"]).await;
    assert!(card.executions.is_empty());

    let resp = h.review("user:bob").await.approve(approve_req(&r, r.revision, "checked too")).await.unwrap().into_inner();
    let ch = resp.change.unwrap();
    assert_ne!(ch.state, "pending_approval");
    let subjects: Vec<_> = ch.approvals.iter().map(|a| a.subject.as_str()).collect();
    assert_eq!(subjects, ["user:alice", "user:bob"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_voids_earlier_approvals() {
    let mut h = Harness::start().await;
    h.fire_alert(DNS, "edge", "0.9", "fp-dns-a").await;
    let v = wait_for(&h, "dns_change", "edge").await;
    let r1 = v.recommendation.unwrap();
    h.review("user:alice").await.approve(approve_req(&r1, r1.revision, "checked")).await.unwrap();

    // New evidence on the same incident: a second alert for the same service.
    h.fire_alert(DNS, "edge", "0.9", "fp-dns-b").await;
    let views = h
        .wait_for_views("revision 2", |v| {
            view_for(v, "dns_change", "edge").is_some_and(|v| v.recommendation.as_ref().unwrap().revision > r1.revision)
        })
        .await;
    let v2 = view_for(&views, "dns_change", "edge").unwrap();
    let r2 = v2.recommendation.clone().unwrap();
    assert_eq!(r2.id, r1.id);
    assert!(v2.change.as_ref().unwrap().approvals.is_empty(), "alice's approval of revision 1 does not carry over");

    // Bob approving the old revision is refused; it would otherwise complete a quorum.
    let e = h.review("user:bob").await.approve(approve_req(&r1, r1.revision, "checked")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let old = h.card(&r1.id, r1.revision).await;
    assert_eq!(old.change.unwrap().state, "superseded");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_runs_by_itself_advisory_and_blocked_never_run() {
    let mut h = Harness::start().await;
    h.fire_alert("ProcessDown", "search", "0.93", "fp-auto").await;
    h.fire_alert("HighCPU", "reports", "0.35", "fp-adv").await;
    h.fire_alert("ConnectionsRefused", "payments", "0.9", "fp-blk").await;
    let auto = wait_for(&h, "restart_process", "search").await;
    let adv = wait_for(&h, "scale_out", "reports").await;
    let blk = wait_for(&h, "firewall_relax", "payments").await;
    assert_eq!(auto.decision.as_ref().unwrap().outcome, pb::Outcome::Auto as i32, "{:?}", auto.decision);
    assert_eq!(adv.decision.as_ref().unwrap().outcome, pb::Outcome::Advisory as i32, "{:?}", adv.decision);
    assert_eq!(blk.decision.as_ref().unwrap().outcome, pb::Outcome::Blocked as i32, "{:?}", blk.decision);

    let card = h.wait_for_state(&auto.recommendation.as_ref().unwrap().id, &["succeeded"]).await;
    assert_eq!(card.executions.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for v in [&adv, &blk] {
        let r = v.recommendation.as_ref().unwrap();
        let card = h.card(&r.id, 0).await;
        assert!(card.executions.is_empty(), "{} never executes", r.action);
        // Approving does not turn them into executable changes.
        let e = h.review("user:alice").await.approve(approve_req(r, r.revision, "please run")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_errors_routes_to_review_at_the_highest_tier() {
    let bundle = tempfile::tempdir().unwrap();
    // Two complete definitions of one rule with different values: a runtime conflict in Rego.
    std::fs::write(
        bundle.path().join("route.rego"),
        "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"approver_groups\": [], \"requires_window\": false, \"reasons\": [\"a\"]} if { true }\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"approver_groups\": [], \"requires_window\": false, \"reasons\": [\"b\"]} if { true }\n",
    )
    .unwrap();
    std::fs::write(bundle.path().join("data.json"), "{}").unwrap();
    let path = bundle.path().to_owned();
    let mut h = Harness::start_with(move |c| c.policy.bundle = Some(path)).await;
    h.fire_alert("ProcessDown", "search", "0.99", "fp-pol").await;
    let v = wait_for(&h, "restart_process", "search").await;
    let d = v.decision.unwrap();
    assert_eq!(d.outcome, pb::Outcome::Review as i32, "{d:?}");
    assert_eq!(d.tier, Some(3));
    assert_eq!(d.approvals_required, 2);
    assert!(d.policy_failed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let card = h.wait_for_state(&v.recommendation.unwrap().id, &["pending_approval"]).await;
    assert!(card.executions.is_empty());
    let text = h.metrics_text().await;
    assert!(text.contains("cairn_policy_failures_total 1"), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_resumes_from_a_cursor_without_gaps() {
    let mut h = Harness::start().await;
    h.fire_alert(ROLLBACK, "checkout", "0.9", "fp-w1").await;
    let v = wait_for(&h, "rollback_deploy", "checkout").await;
    let r = v.recommendation.unwrap();

    let mut stream = h.review("user:alice").await.watch_recommendations(pb::WatchRequest { after_cursor: 0 }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        seen.push(ev);
    }
    assert!(seen.iter().all(|e| e.recommendation_id == r.id));
    assert!(seen.windows(2).all(|w| w[0].cursor < w[1].cursor));
    drop(stream);

    // While nobody watches, the change is approved and executed.
    h.review("user:carol").await.approve(approve_req(&r, r.revision, "ok")).await.unwrap();
    h.wait_for_state(&r.id, &["succeeded"]).await;

    // Resuming after the last cursor seen delivers what happened meanwhile, in order.
    let last = seen.last().unwrap().cursor;
    let mut stream = h.review("user:alice").await.watch_recommendations(pb::WatchRequest { after_cursor: last }).await.unwrap().into_inner();
    let mut kinds = Vec::new();
    let mut prev = last;
    while !kinds.iter().any(|k: &String| k == "change.executed") {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        assert!(ev.cursor > prev, "cursors strictly increase");
        prev = ev.cursor;
        kinds.push(ev.kind);
    }
    assert!(kinds.iter().any(|k| k == "change.approved"), "{kinds:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_grpc_tools_see_health_and_reflection() {
    let mut h = Harness::start().await;
    let channel = tonic::transport::Channel::from_shared(h.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "cairn.v1.ReviewService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let unknown = health.check(tonic_health::pb::HealthCheckRequest { service: "no.Such".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    h.stop().await;
}

/// Python's `grpcio-reflection` (the latest, 1.85) speaks only reflection v1alpha: it lists Cairn's
/// services and resolves a method's descriptor only because the server serves both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_reflection_lists_the_services_over_v1alpha() {
    const SCRIPT: &str = r#"
import sys, grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(sys.argv[1]))
for name in sorted(db.get_services()):
    print("service", name)
review = DescriptorPool(db).FindServiceByName("cairn.v1.ReviewService")
print("methods", ",".join(m.name for m in review.methods))
"#;
    let probe = std::process::Command::new("python3").args(["-c", "import grpc, grpc_reflection.v1alpha"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let msg = "python3 with grpcio and grpcio-reflection is missing: pip install grpcio grpcio-reflection";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED python_grpcio_reflection_lists_the_services_over_v1alpha: {msg}");
        return;
    }
    let mut h = Harness::start().await;
    let target = h.grpc.trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new("python3").args(["-c", SCRIPT, &target]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the Python reflection client failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    for service in ["cairn.v1.ReviewService", "cairn.v1.IngestService", "cairn.v1.IncidentService", "cairn.v1.AuditService", "grpc.health.v1.Health"] {
        assert!(stdout.lines().any(|l| l == format!("service {service}")), "{service} is listed: {stdout}");
    }
    let methods = stdout.lines().find_map(|l| l.strip_prefix("methods ")).unwrap_or_default();
    assert!(methods.split(',').any(|m| m == "Approve"), "ReviewService's methods resolve: {methods}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_check_reads_every_approved_change_not_only_the_first_thousand() {
    // No maintenance window is configured: every tier-3 change must wait. The executor passes only
    // when woken, so the changes below are all in place before it looks.
    let mut h = Harness::start_with(|c| c.executor.poll_interval_ms = 3_600_000).await;
    h.fire_alert(DNS, "edge", "0.9", "fp-dns-bulk").await;
    let v = wait_for(&h, "dns_change", "edge").await;
    let store = h.engine().store().clone();
    let id = cairn_types::RecommendationId(v.recommendation.unwrap().id);
    let record = store.get_recommendation(&id, None).unwrap().unwrap();
    assert_eq!(record.decision.tier, Some(3));
    // 1,001 approved tier-3 changes, each a copy of the real one on its own id, all older than
    // any page boundary a capped read would stop at.
    let now = now_ms();
    for i in 0..1001 {
        let mut r = record.recommendation.clone();
        r.id = cairn_types::RecommendationId(format!("rec-bulk-{i:04}"));
        let mut d = record.decision.clone();
        d.recommendation_id = r.id.clone();
        let (mut c, drafts) = cairn_workflow::open_change(&r, &d, now, &cairn_workflow::WorkflowConfig::default());
        c.state = cairn_types::ChangeState::Approved;
        store.propose(&r, &d, &c, &drafts, now).unwrap();
    }
    let waiting = cairn_server::policy::waiting_for_window(h.engine().executor(), now_ms()).unwrap();
    assert_eq!(waiting.len(), 1001, "every approved tier-3 change waits for its window");
    // Many executor passes later, none of them was claimed.
    h.engine().wake_executor();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.approved_changes_after(None, 5000).unwrap().len(), 1001, "nothing was claimed outside its window");
    h.stop().await;
}
