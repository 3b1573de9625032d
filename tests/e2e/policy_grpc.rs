//! Policy bundles as tier-3 changes through the real gRPC API (invariant 10): proposing, approving
//! by two sre-leads, the maintenance window, the atomic swap, approvals voided by the new version,
//! and the activation outliving a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::*;
use cairn_proto::v1 as pb;
use std::time::Duration;

const DNS: &str = "DNSResolutionFailure";


/// The default bundle with one threshold changed: a different version.
fn candidate_files() -> Vec<pb::PolicyFile> {
    cairn_policy::PolicyBundle::embedded_default()
        .files()
        .into_iter()
        .map(|f| {
            let text = if f.name == "data.json" { f.text.replace("\"auto_min\": 0.8", "\"auto_min\": 0.85") } else { f.text };
            pb::PolicyFile { name: f.name, text }
        })
        .collect()
}

fn propose_req(files: Vec<pb::PolicyFile>) -> pb::ProposePolicyRequest {
    pb::ProposePolicyRequest { files, reason: "stricter auto threshold".into(), execution_window: "weekend window".into() }
}

async fn fire_dns(h: &Harness, fp: &str) {
    h.fire_alert(DNS, "edge", "0.9", fp).await;
}

async fn dns_view(h: &Harness, min_revision: u32) -> pb::RecommendationView {
    let views = h
        .wait_for_views("dns_change on edge", |v| {
            v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.action == "dns_change" && r.revision >= min_revision))
        })
        .await;
    views.into_iter().find(|v| v.recommendation.as_ref().unwrap().action == "dns_change").unwrap()
}

fn approve_req(r: &pb::Recommendation, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_activation_is_a_tier3_change_and_new_version_voids_approvals() {
    let mut h = Harness::start_with(always_open_window).await;
    let old_version = h.engine().router().current().version().to_string();

    // A tier-3 change waiting for its second approval under the old policy.
    fire_dns(&h, "fp-dns-1").await;
    let dns = dns_view(&h, 1).await;
    let dns_rec = dns.recommendation.unwrap();
    assert_eq!(dns.decision.unwrap().policy_version, old_version);
    h.review("user:alice").await.approve(approve_req(&dns_rec, "checked")).await.unwrap();

    // Shadowing the candidate changes nothing and says what it evaluated.
    let sh = h
        .review("user:carol")
        .await
        .shadow_policy(pb::ShadowPolicyRequest { files: candidate_files(), limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sh.active_version, old_version);
    assert_ne!(sh.candidate_version, old_version);
    assert!(sh.evaluated >= 1);
    assert!(sh.changed.is_empty(), "a stricter auto threshold does not change a tier-3 DNS change: {:?}", sh.changed);
    assert_eq!(h.engine().router().current().version(), old_version);

    // Carol (sre, not sre-leads) proposes the new bundle.
    let resp = h.review("user:carol").await.propose_policy(propose_req(candidate_files())).await.unwrap().into_inner();
    assert_eq!(resp.active_version, old_version);
    assert_ne!(resp.proposed_version, old_version);
    let view = resp.proposal.unwrap();
    let (r, d) = (view.recommendation.unwrap(), view.decision.unwrap());
    assert_eq!(r.action, "policy_activation");
    assert_eq!((d.outcome, d.tier, d.approvals_required), (pb::Outcome::Review as i32, Some(3), 2), "{d:?}");
    assert_eq!(d.approver_groups, ["sre-leads"]);
    assert_eq!(r.parameters.get("bundle_version"), Some(&resp.proposed_version));

    // The requester cannot approve, one sre-lead is not a quorum, and nothing is swapped yet.
    let e = h.review("user:carol").await.approve(approve_req(&r, "mine")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    h.review("user:alice").await.approve(approve_req(&r, "read the diff")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.engine().router().current().version(), old_version);

    h.review("user:bob").await.approve(approve_req(&r, "read the diff too")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["succeeded", "failed"]).await;
    assert_eq!(card.change.unwrap().state, "succeeded", "{:?}", card.executions);
    assert_eq!(h.engine().router().current().version(), resp.proposed_version);
    // It ran through the executor like any change, on the policy adapter, whatever the configured
    // adapter is.
    let adapters: Vec<&str> = card.executions.iter().map(|x| x.adapter.as_str()).collect();
    assert_eq!(adapters, ["policy"], "{:?}", card.executions);

    // Alice's approval of the DNS change was given under the old version: it is routed again under
    // the new one, as a new revision with no approvals.
    let dns2 = dns_view(&h, dns_rec.revision + 1).await;
    assert_eq!(dns2.decision.as_ref().unwrap().policy_version, resp.proposed_version);
    assert!(dns2.change.as_ref().unwrap().approvals.is_empty(), "approvals under the old version are void");
    let old = h.wait_for_state(&dns_rec.id, &["pending_approval"]).await;
    assert_eq!(old.recommendation.unwrap().revision, dns_rec.revision + 1);
    let e = h.review("user:bob").await.approve(approve_req(&dns_rec, "old revision")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // The activation is audited and outlives a restart.
    let events = h
        .audit("user:alice")
        .await
        .query(pb::AuditQueryRequest { kind: "policy.activated".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].policy_version, resp.proposed_version);
    let data_dir = h.data_dir.clone();
    h.stop().await;
    let mut again = Harness::start_with(|cfg| {
        cfg.data_dir = data_dir;
        always_open_window(cfg);
    })
    .await;
    assert_eq!(again.engine().router().current().version(), resp.proposed_version);
    again.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_activation_outside_a_window_waits_and_a_failing_bundle_is_refused() {
    let mut h = Harness::start().await;
    let old_version = h.engine().router().current().version().to_string();

    // A bundle whose own tests fail is refused before any change exists.
    let mut broken = candidate_files();
    broken.iter_mut().filter(|f| f.name == "data.json").for_each(|f| f.text = f.text.replace("\"sre-leads\"", "\"nobody\""));
    let e = h.review("user:carol").await.propose_policy(propose_req(broken)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("Rego tests fail"), "{}", e.message());

    // A proposal without its execution window cannot be approved; the error names the field.
    let mut no_window = propose_req(candidate_files());
    no_window.execution_window.clear();
    let incomplete = h.review("user:carol").await.propose_policy(no_window).await.unwrap().into_inner();
    let ir = incomplete.proposal.unwrap().recommendation.unwrap();
    let e = h.review("user:alice").await.approve(approve_req(&ir, "ok")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("execution window"), "{}", e.message());

    let resp = h.review("user:carol").await.propose_policy(propose_req(candidate_files())).await.unwrap().into_inner();
    let r = resp.proposal.unwrap().recommendation.unwrap();
    h.review("user:alice").await.approve(approve_req(&r, "ok")).await.unwrap();
    h.review("user:bob").await.approve(approve_req(&r, "ok")).await.unwrap();
    // No maintenance window is configured: approved, but it never runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let card = h.wait_for_state(&r.id, &["approved"]).await;
    assert!(card.executions.is_empty(), "{:?}", card.executions);
    assert_eq!(h.engine().router().current().version(), old_version);
    h.stop().await;
}

async fn fire_rollback(h: &Harness, fp: &str) {
    h.fire_alert("DeploymentErrorsAfterRelease", "checkout", "0.72", fp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_card_shows_criticality_window_rollback_confidence_and_what_people_taught() {
    let mut h = Harness::start_with(always_open_window).await;
    fire_rollback(&h, "fp-rb-1").await;
    let views = h
        .wait_for_views("rollback_deploy on checkout", |v| v.iter().any(|v| v.recommendation.as_ref().unwrap().action == "rollback_deploy"))
        .await;
    let first = views[0].recommendation.clone().unwrap();
    assert_eq!(first.confidence, 0.72, "nothing decided yet, nothing learned");

    // An earlier, similar change (same playbook, service and environment, another incident) that
    // people rejected.
    let engine = h.engine();
    let record = engine.store().get_recommendation(&cairn_types::RecommendationId(first.id.clone()), None).unwrap().unwrap();
    let mut older = record.recommendation.clone();
    older.id = cairn_types::RecommendationId("rec-older".into());
    older.incident_id = cairn_types::IncidentId("inc-older".into());
    let mut decision = record.decision.clone();
    decision.recommendation_id = older.id.clone();
    let now = engine.clock().now_ms();
    let (change, drafts) = cairn_workflow::open_change(&older, &decision, now, &Default::default());
    engine.store().propose(&older, &decision, &change, &drafts, now).unwrap();
    let carol = cairn_types::Principal { subject: "user:carol".into(), display_name: "c".into(), groups: vec!["sre".into()] };
    let (rejected, drafts) = cairn_workflow::reject(&change, &older, &carol, older.revision, "wrong release", now).unwrap();
    engine.store().update_change(&rejected, change.version, &drafts, now).unwrap();

    // New evidence: a second revision, whose confidence carries the lesson.
    fire_rollback(&h, "fp-rb-2").await;
    let views = h
        .wait_for_views("revision 2", |v| v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.id == first.id && r.revision > first.revision)))
        .await;
    let second = views.iter().find(|v| v.recommendation.as_ref().unwrap().id == first.id).unwrap().recommendation.clone().unwrap();
    assert!((second.confidence - 0.68).abs() < 1e-9, "{}", second.confidence);

    let card = h.card(&first.id, 0).await;
    assert_eq!(card.learning, "confidence 0.72 → 0.68: 1 of the last 1 similar changes was rejected");
    assert_eq!(card.service_criticality, "high");
    assert!(card.maintenance_window_open);
    assert_eq!(card.maintenance_window, "always");
    assert_eq!((card.blast_radius.as_str(), card.reversibility.as_str()), ("service", "reversible"));
    assert!(card.rollback_confidence.contains("owner"), "{}", card.rollback_confidence);
    assert!(card.rollback_confidence.contains("no rollback of playbook"), "{}", card.rollback_confidence);
    assert_eq!(card.recent_incidents, ["inc-older"]);
    assert_eq!(card.active_policy_version, card.decision.as_ref().unwrap().policy_version);
    assert!(!card.decision.unwrap().reasons.is_empty(), "the policy's reasons are on the card");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_decided_under_a_replaced_policy_does_not_run() {
    let mut h = Harness::start_with(always_open_window).await;
    fire_rollback(&h, "fp-rb-race").await;
    let views = h
        .wait_for_views("rollback_deploy on checkout", |v| v.iter().any(|v| v.recommendation.as_ref().unwrap().action == "rollback_deploy"))
        .await;
    let r1 = views[0].recommendation.clone().unwrap();
    // The router is swapped without the re-routing an activation does: as if this recommendation
    // had been routed concurrently with an activation.
    let files: Vec<cairn_policy::PolicyFile> =
        candidate_files().into_iter().map(|f| cairn_policy::PolicyFile { name: f.name, text: f.text }).collect();
    let newer = cairn_policy::Router::new(cairn_policy::PolicyBundle::from_all_files(files).unwrap(), Default::default()).unwrap();
    let new_version = newer.version().to_string();
    h.engine().router().swap(std::sync::Arc::new(newer));
    h.review("user:carol").await.approve(approve_req(&r1, "looks right")).await.unwrap();

    let views = h
        .wait_for_views("revision 2 under the new policy", |v| {
            v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.id == r1.id && r.revision > r1.revision))
        })
        .await;
    let v2 = views.iter().find(|v| v.recommendation.as_ref().unwrap().id == r1.id).unwrap();
    assert_eq!(v2.decision.as_ref().unwrap().policy_version, new_version);
    assert!(v2.change.as_ref().unwrap().approvals.is_empty());
    let old = h.card(&r1.id, r1.revision).await;
    assert_eq!(old.change.unwrap().state, "failed");
    assert!(old.executions.is_empty(), "it never reached the adapter");
    h.stop().await;
}
