//! Break-glass, guardrails and escalations through the public protocols, with the real
//! Alertmanager (Debian's `prometheus-alertmanager`) receiving Cairn's escalations on its v2 API
//! and the real Prometheus answering verification checks. Time that matters (break-glass expiry)
//! is driven by a manual clock.
//!
//! Where the programs are missing the tests that need them say SKIPPED and pass — except under
//! `CI=true`, where that is a failure. Every process started here is killed when its test ends,
//! also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::programs::*;
use cairn_testkit::*;
use cairn_proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The real Alertmanager on a loopback port the kernel chose, routing everything to a receiver
/// that notifies nobody: the test reads what arrived from its API.
async fn alertmanager(dir: &Path) -> (Proc, u16) {
    std::fs::write(dir.join("am.yml"), "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n").unwrap();
    let (mut p, port) = spawn_listening(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("am.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            "--cluster.listen-address=".into(),
        ],
        &dir.join("am.log"),
    )
    .await;
    wait_ready(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}/-/ready"), "alertmanager", &mut [&mut p]).await;
    (p, port)
}

/// Alerts Alertmanager holds now (active, and resolved ones it still shows when `resolved`).
async fn am_alerts(port: u16) -> Vec<serde_json::Value> {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
}

/// Waits until Alertmanager holds an alert named `name` whose labels include `labels`.
async fn wait_for_am_alert(port: u16, name: &str, labels: &[(&str, &str)]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = am_alerts(port).await;
        if let Some(a) = alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name && labels.iter().all(|(k, v)| a["labels"][*k] == *v))
        {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "Alertmanager never received {name} {labels:?}; it holds {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Guardrails = pb::guardrail_service_client::GuardrailServiceClient<InterceptedService<Channel, Bearer>>;

async fn guardrails(h: &Harness, subject: &str) -> Guardrails {
    let ch = Channel::from_shared(h.grpc.clone()).unwrap().connect().await.unwrap();
    pb::guardrail_service_client::GuardrailServiceClient::with_interceptor(ch, Bearer::of(subject))
}

async fn wait_for_rec(h: &Harness, action: &str, service: &str) -> pb::RecommendationView {
    let matches = |v: &pb::RecommendationView| {
        v.recommendation.as_ref().is_some_and(|r| r.action == action && r.target.as_ref().is_some_and(|t| t.service == service))
    };
    let views = h.wait_for_views(&format!("{action} on {service}"), |vs| vs.iter().any(matches)).await;
    views.into_iter().find(|v| matches(v)).unwrap()
}

async fn audit_kinds(h: &Harness) -> Vec<String> {
    let mut a = h.audit("user:alice").await;
    let r = a.query(pb::AuditQueryRequest { limit: 10000, ..Default::default() }).await.unwrap().into_inner();
    r.events.into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rollback_escalates_to_alertmanager() {
    if !programs_present(&["prometheus", "prometheus-alertmanager"], "governance test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_am, am_port) = alertmanager(d).await;
    // The real Prometheus, empty: the playbook's check (`up{instance=…} >= 1`) finds no samples
    // and fails, so the change is rolled back — and the rollback command fails.
    std::fs::write(d.join("prom.yml"), "global:\n  scrape_interval: 1h\n").unwrap();
    let (mut prom, prom_port) = spawn_listening(
        "prometheus",
        "prometheus",
        &[format!("--config.file={}", d.join("prom.yml").display()), format!("--storage.tsdb.path={}", d.join("prom-data").display())],
        &d.join("prom.log"),
    )
    .await;
    wait_ready(&reqwest::Client::new(), &format!("http://127.0.0.1:{prom_port}/-/ready"), "prometheus", &mut [&mut prom]).await;

    let mut h = Harness::start_with(|cfg| {
        cfg.executor.adapter = cairn_server::config::AdapterKind::Command;
        cfg.executor.command.execute = vec!["/bin/echo".into(), "restarting {resource}".into()];
        cfg.executor.command.rollback = vec!["/bin/sh".into(), "-c".into(), "echo cannot undo >&2; exit 7".into()];
        cfg.verification.prometheus_url = Some(format!("http://127.0.0.1:{prom_port}"));
        cfg.verification.interval_ms = 100;
        cfg.verification.max_wait_secs = 1;
        cfg.alerting.alertmanager_url = Some(format!("http://127.0.0.1:{am_port}"));
    })
    .await;
    h.fire_alert("ProcessDown", "search", "0.93", "fp-rb").await;
    let view = wait_for_rec(&h, "restart_process", "search").await;
    assert_eq!(view.decision.as_ref().unwrap().outcome, pb::Outcome::Auto as i32);
    let id = view.recommendation.as_ref().unwrap().id.clone();
    let card = h.wait_for_state(&id, &["rollback_failed"]).await;
    let change_id = card.change.as_ref().unwrap().id.clone();
    let alert = wait_for_am_alert(am_port, "CairnRollbackFailed", &[("change_id", &change_id), ("service", "search")]).await;
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert!(alert["annotations"]["description"].as_str().unwrap().contains("cannot undo"), "{alert}");
    let kinds = audit_kinds(&h).await;
    assert!(kinds.contains(&"change.rollback_failed".to_string()) && kinds.contains(&"change.escalated".to_string()), "{kinds:?}");
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_rollbacks_total{result=\"failed\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_escalations_total{alertname=\"CairnRollbackFailed\",result=\"sent\"} 1"), "{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakglass_opens_blocked_for_two_person_review_and_alerts_alertmanager() {
    if !programs_present(&["prometheus-alertmanager"], "governance test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_am, am_port) = alertmanager(dir.path()).await;
    let mut h = Harness::start_with(|cfg| cfg.alerting.alertmanager_url = Some(format!("http://127.0.0.1:{am_port}"))).await;
    let mut g = guardrails(&h, "user:alice").await;
    let too_long = pb::OpenBreakGlassRequest {
        purpose: "payments cannot reach the bank".into(),
        link: "inc-77".into(),
        scope: Some(pb::BreakGlassScope {
            actions: vec!["firewall_relax".into()],
            targets: vec![pb::Target { service: "payments".into(), environment: "production".into(), resource: "*".into() }],
        }),
        duration_secs: 4 * 3600 + 1,
        max_uses: 1,
    };
    let e = g.open_break_glass(too_long.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let bg = g.open_break_glass(pb::OpenBreakGlassRequest { duration_secs: 3600, ..too_long }).await.unwrap().into_inner();
    assert_eq!((bg.owner.as_str(), bg.state.as_str()), ("user:alice", "active"));
    wait_for_am_alert(am_port, "CairnBreakGlassOpen", &[("breakglass_id", &bg.id), ("owner", "user:alice")]).await;

    // Policy blocks firewall_relax in production; under the break-glass it goes to two people.
    h.fire_alert("ConnectionsRefused", "payments", "0.9", "fp-bg").await;
    let view = wait_for_rec(&h, "firewall_relax", "payments").await;
    let decision = view.decision.as_ref().unwrap();
    assert_eq!(decision.outcome, pb::Outcome::Review as i32, "{decision:?}");
    assert_eq!(decision.approvals_required, 2);
    assert!(decision.reasons.iter().any(|r| r.contains(&bg.id)), "{:?}", decision.reasons);
    assert_eq!(view.change.as_ref().unwrap().state, "pending_approval");
    let change_id = view.change.as_ref().unwrap().id.clone();
    wait_for_am_alert(am_port, "CairnBreakGlassUsed", &[("breakglass_id", &bg.id), ("change_id", &change_id)]).await;

    // Its one use is spent: a second blocked recommendation stays blocked.
    let listed = g.list_break_glass(pb::ListBreakGlassRequest { active_only: false }).await.unwrap().into_inner();
    assert_eq!((listed.items[0].uses, listed.items[0].state.as_str()), (1, "exhausted"));
    h.fire_alert("ConnectionsRefused", "ledger", "0.9", "fp-bg2").await;
    let other = wait_for_rec(&h, "firewall_relax", "ledger").await;
    assert_eq!(other.decision.as_ref().unwrap().outcome, pb::Outcome::Blocked as i32, "out of scope and no uses left");
    let e = g.revoke_break_glass(pb::RevokeBreakGlassRequest { id: bg.id.clone(), reason: "done".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "an exhausted break-glass is already closed");

    // Two distinct people approve: the change opened by its last use runs (dry run) while in force.
    // The owner of the break-glass is not one of them.
    let r = view.recommendation.as_ref().unwrap();
    let e = h
        .review("user:alice")
        .await
        .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "I opened it".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("break-glass"), "{e:?}");
    for who in ["user:bob", "user:carol"] {
        h.review(who)
            .await
            .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "bank link down".into() })
            .await
            .unwrap();
    }
    assert_eq!(h.wait_for_state(&r.id, &["succeeded"]).await.executions.len(), 1);

    let kinds = audit_kinds(&h).await;
    assert!(kinds.contains(&"breakglass.opened".to_string()) && kinds.contains(&"breakglass.used".to_string()), "{kinds:?}");
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_breakglass_events_total{actor=\"user:alice\",event=\"opened\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_guardrail_overrides_total{actor=\"user:alice\",kind=\"breakglass_opened\"} 1"), "{metrics}");
    h.stop().await;
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakglass_expires_by_itself_audited_and_alerted() {
    if !programs_present(&["prometheus-alertmanager"], "governance test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_am, am_port) = alertmanager(dir.path()).await;
    let clock = Arc::new(ManualClock::at(now_ms()));
    let mut h = Harness::start_on(clock.clone(), |cfg, _| {
        cfg.alerting.alertmanager_url = Some(format!("http://127.0.0.1:{am_port}"));
    })
    .await;
    let mut g = guardrails(&h, "user:bob").await;
    let bg = g
        .open_break_glass(pb::OpenBreakGlassRequest {
            purpose: "DNS cut-over during incident".into(),
            link: "chg-123".into(),
            scope: Some(pb::BreakGlassScope {
                actions: vec!["dns_change".into()],
                targets: vec![pb::Target { service: "*".into(), environment: "production".into(), resource: "*".into() }],
            }),
            duration_secs: 600,
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Ten minutes pass in a moment; the executor loop's sweep closes it by itself.
    clock.advance(600_001);
    h.engine().wake_executor();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = g.list_break_glass(pb::ListBreakGlassRequest { active_only: false }).await.unwrap().into_inner();
        if l.items[0].state == "expired" {
            assert_eq!(l.items[0].closed_by, "system:cairn");
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {:?}", l.items[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_am_alert(am_port, "CairnBreakGlassExpired", &[("breakglass_id", &bg.id), ("owner", "user:bob")]).await;
    assert!(audit_kinds(&h).await.contains(&"breakglass.expired".to_string()));
    assert!(g.list_break_glass(pb::ListBreakGlassRequest { active_only: true }).await.unwrap().into_inner().items.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_system_runs_nothing_by_itself_until_a_person_decides() {
    let mut h = Harness::start_with(|cfg| cfg.guardrails.approver_groups = vec!["sre".into()]).await;
    let mut g = guardrails(&h, "user:alice").await;
    let e = g.set_freeze(pb::SetFreezeRequest { frozen: true, reason: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "a reason is required");
    let s = g.set_freeze(pb::SetFreezeRequest { frozen: true, reason: "peak sale".into() }).await.unwrap().into_inner();
    assert!(s.frozen && s.freeze_by == "user:alice");

    h.fire_alert("ProcessDown", "search", "0.93", "fp-frozen").await;
    let view = wait_for_rec(&h, "restart_process", "search").await;
    assert_eq!(view.decision.as_ref().unwrap().outcome, pb::Outcome::Auto as i32);
    let r = view.recommendation.as_ref().unwrap();
    let card = h.wait_for_state(&r.id, &["pending_approval"]).await;
    assert!(card.executions.is_empty(), "held, not run");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let card = h.wait_for_state(&r.id, &["pending_approval"]).await;
    assert!(card.executions.is_empty(), "still not run while frozen");

    // Someone outside the configured approver groups cannot release it.
    let e = h
        .review("user:mallory")
        .await
        .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "let me".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A person decides: approving runs it, freeze or not.
    h.review("user:carol")
        .await
        .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "checked, go".into() })
        .await
        .unwrap();
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    assert_eq!(card.executions.len(), 1);

    g.set_freeze(pb::SetFreezeRequest { frozen: false, reason: "sale over".into() }).await.unwrap();
    let kinds = audit_kinds(&h).await;
    for k in ["freeze.on", "change.held_by_guardrail", "freeze.off"] {
        assert!(kinds.contains(&k.to_string()), "{k} missing from {kinds:?}");
    }
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_guardrail_holds_total{guardrail=\"freeze\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_guardrail_overrides_total{actor=\"user:alice\",kind=\"freeze_off\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_frozen 0"), "{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_guard_disables_automation_and_escalates() {
    if !programs_present(&["prometheus-alertmanager"], "governance test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_am, am_port) = alertmanager(dir.path()).await;
    let mut h = Harness::start_with(|cfg| {
        cfg.alerting.alertmanager_url = Some(format!("http://127.0.0.1:{am_port}"));
        cfg.guardrails.loop_guard_max_runs = 2;
    })
    .await;
    // The same process keeps dying: each new alert makes a new revision of the restart, auto.
    let mut id = String::new();
    for (i, want) in ["succeeded", "succeeded", "pending_approval"].iter().enumerate() {
        h.fire_alert("ProcessDown", "search", "0.93", &format!("fp-loop-{i}")).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let card = loop {
            let view = wait_for_rec(&h, "restart_process", "search").await;
            let r = view.recommendation.as_ref().unwrap();
            id = r.id.clone();
            let card = h.wait_for_state(&id, &["succeeded", "pending_approval", "failed"]).await;
            if card.recommendation.as_ref().unwrap().revision as usize == i + 1 && card.change.as_ref().unwrap().state == *want {
                break card;
            }
            assert!(Instant::now() < deadline, "run {i}: expected revision {} {want}, got {:?}", i + 1, card.change);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(card.decision.as_ref().unwrap().outcome, pb::Outcome::Auto as i32, "policy still says auto on run {i}");
    }
    let card = h.wait_for_state(&id, &["pending_approval"]).await;
    assert!(card.executions.is_empty(), "the third run in the window was held, not executed");

    let alert = wait_for_am_alert(am_port, "CairnLoopGuardTripped", &[("action", "restart_process"), ("service", "search")]).await;
    assert_eq!(alert["labels"]["severity"], "critical");
    let mut g = guardrails(&h, "user:alice").await;
    let status = g.get_guardrail_status(pb::GetGuardrailStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.disabled.len(), 1, "{status:?}");
    let disabled = status.disabled[0].clone();
    assert_eq!((disabled.action.as_str(), disabled.runs), ("restart_process", 2));
    let kinds = audit_kinds(&h).await;
    assert!(kinds.contains(&"automation.disabled".to_string()), "{kinds:?}");

    // Only a person re-enables it, with a reason; then the alert resolves.
    let enable = pb::EnableAutomationRequest { action: "restart_process".into(), target: disabled.target.clone(), reason: "fixed the crash loop".into() };
    let after = g.enable_automation(enable.clone()).await.unwrap().into_inner();
    assert!(after.disabled.is_empty());
    let again = g.enable_automation(enable).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound, "nothing left to enable");
    assert!(audit_kinds(&h).await.contains(&"automation.enabled".to_string()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while am_alerts(am_port).await.iter().any(|a| a["labels"]["alertname"] == "CairnLoopGuardTripped") {
        assert!(Instant::now() < deadline, "the loop-guard alert never resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_guardrail_holds_total{guardrail=\"loop_guard\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_guardrail_overrides_total{actor=\"user:alice\",kind=\"automation_enabled\"} 1"), "{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_leaves_excess_for_a_person() {
    let mut h = Harness::start_with(|cfg| {
        cfg.guardrails.rate_limits.insert("restart_process".into(), "1/hour".into());
    })
    .await;
    h.fire_alert("ProcessDown", "search", "0.93", "fp-rl-1").await;
    let first = wait_for_rec(&h, "restart_process", "search").await;
    h.wait_for_state(&first.recommendation.as_ref().unwrap().id, &["succeeded"]).await;
    // Another target, same action class: over the limit, so it waits for a person.
    h.fire_alert("ProcessDown", "catalog", "0.93", "fp-rl-2").await;
    let second = wait_for_rec(&h, "restart_process", "catalog").await;
    assert_eq!(second.decision.as_ref().unwrap().outcome, pb::Outcome::Auto as i32);
    let card = h.wait_for_state(&second.recommendation.as_ref().unwrap().id, &["pending_approval"]).await;
    assert!(card.executions.is_empty(), "not executed");
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_guardrail_holds_total{guardrail=\"rate_limit\"} 1"), "{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_breakglass_refuses_its_change_at_execution_even_with_quorum() {
    let mut h = Harness::start().await;
    let mut g = guardrails(&h, "user:alice").await;
    let bg = g
        .open_break_glass(pb::OpenBreakGlassRequest {
            purpose: "payments cannot reach the bank".into(),
            link: "inc-78".into(),
            scope: Some(pb::BreakGlassScope {
                actions: vec!["firewall_relax".into()],
                targets: vec![pb::Target { service: "payments".into(), environment: "production".into(), resource: "*".into() }],
            }),
            duration_secs: 3600,
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner();
    h.fire_alert("ConnectionsRefused", "payments", "0.9", "fp-rv").await;
    let view = wait_for_rec(&h, "firewall_relax", "payments").await;
    let r = view.recommendation.as_ref().unwrap().clone();
    assert_eq!(view.change.as_ref().unwrap().state, "pending_approval");
    // One approval is not enough under a break-glass.
    let approve = |who: &'static str| {
        let r = r.clone();
        let h = &h;
        async move {
            h.review(who)
                .await
                .approve(pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: "needed".into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    approve("user:bob").await;
    assert_eq!(h.wait_for_state(&r.id, &["pending_approval"]).await.executions.len(), 0);
    g.revoke_break_glass(pb::RevokeBreakGlassRequest { id: bg.id.clone(), reason: "bank link back".into() }).await.unwrap();
    // The quorum is met after the revocation: the executor re-checks and refuses.
    approve("user:carol").await;
    let card = h.wait_for_state(&r.id, &["failed"]).await;
    assert!(card.executions.is_empty(), "never reached an adapter");
    let kinds = audit_kinds(&h).await;
    assert!(kinds.contains(&"breakglass.revoked".to_string()) && kinds.contains(&"change.execution_refused".to_string()), "{kinds:?}");
    h.stop().await;
}

/// A loopback HTTP receiver that answers 200 to each request and hands back (headers, body).
async fn webhook_receiver() -> (String, tokio::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/changes", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
                let _ = tx.send((head, buf[head_end..head_end + len].to_vec())).await;
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_executions_are_signed_with_the_configured_key_file() {
    let (url, mut received) = webhook_receiver().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("webhook.key");
    std::fs::write(&key_file, "  s3cret-key\n").unwrap();
    let mut h = Harness::start_with(|cfg| {
        cfg.executor.adapter = cairn_server::config::AdapterKind::Webhook;
        cfg.executor.webhook_url = Some(url);
        cfg.executor.webhook_hmac_key_file = Some(key_file);
    })
    .await;
    h.fire_alert("ProcessDown", "search", "0.93", "fp-hmac").await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(15), received.recv()).await.expect("the webhook was called").unwrap();
    let sig = head.lines().find_map(|l| l.strip_prefix("x-cairn-signature:")).expect("signed").trim().to_string();
    assert_eq!(sig, cairn_workflow::adapters::sign(b"s3cret-key", &body), "signed with the file's key, whitespace trimmed");
    assert_ne!(sig, cairn_workflow::adapters::sign(b"  s3cret-key\n", &body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["phase"].as_str(), v["recommendation"]["action"].as_str()), (Some("execute"), Some("restart_process")));
    h.stop().await;
}
