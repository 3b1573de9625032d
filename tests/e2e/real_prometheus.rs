//! The real programs, configured the way the README tells a user to, drive Cairn end to end:
//! Debian's Prometheus scrapes node-exporter, a target whose value this test controls, and Cairn
//! itself; it remote-writes everything to Cairn and evaluates an alert rule; Debian's Alertmanager
//! forwards the alert to Cairn's webhook. The test drives the controlled metric into an anomaly and
//! checks, through Cairn's gRPC API and Prometheus's query API, that it all arrived and became one
//! incident with a routed recommendation.
//!
//! Needs `prometheus`, `prometheus-alertmanager` and `prometheus-node-exporter` (Debian packages;
//! `.ci/run` installs them). Where they are missing the test says so and passes without running —
//! except under `CI=true`, where a missing program is a failure. Every process it starts is killed
//! when the test ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_testkit::programs::*;
use cairn_testkit::*;
use cairn_proto::v1 as pb;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `/metrics` with one gauge whose value the test sets.
async fn controlled_target(value: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let v = f64::from_bits(value.load(Ordering::SeqCst));
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = format!(
                    "# HELP payments_queue_depth Jobs waiting.\n# TYPE payments_queue_depth gauge\npayments_queue_depth {v}\n"
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// The single value of an instant PromQL query, if it has one.
async fn prom_value(client: &reqwest::Client, prom: u16, query: &str) -> Option<f64> {
    let v = client
        .get(format!("http://127.0.0.1:{prom}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json::<serde_json::Value>()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_and_alertmanager_drive_cairn_end_to_end() {
    if !programs_present(&["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"], "real_prometheus end-to-end test") {
        return;
    }
    // The detector's default warm-up (150 samples: 37 minutes at a 15 s scrape) is shortened so a
    // test with a 1 s scrape interval gets past it in seconds.
    let mut h = Harness::start_with(|c| c.detect.univariate.warmup_points = 10).await;
    // Prometheus and Alertmanager authenticate as the service the README tells operators to make.
    let token = token_of(SENDER);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let value = Arc::new(AtomicU64::new(10f64.to_bits()));
    let target = controlled_target(value.clone()).await;
    let cairn = h.http;

    // Each program listens on a port the kernel chooses; Prometheus, started last, is told the others'.
    let (mut node_p, node) = spawn_listening("node-exporter", "prometheus-node-exporter", &[], &d.join("node.log")).await;

    // The README's Alertmanager configuration, with short timers for a test.
    std::fs::write(
        d.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: cairn\n  group_by: [alertname, service]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: cairn\n    webhook_configs:\n      - url: http://{cairn}/api/v1/alerts/alertmanager\n        send_resolved: true\n        max_alerts: 0\n        http_config:\n          authorization:\n            credentials: {token}\n"
        ),
    )
    .unwrap();
    let (mut am_p, am) = spawn_listening(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", d.join("alertmanager.yml").display()),
            format!("--storage.path={}", d.join("am-data").display()),
            "--cluster.listen-address=".into(),
        ],
        &d.join("alertmanager.log"),
    )
    .await;

    // The README's Prometheus configuration, with short intervals for a test, and Cairn's own
    // alert rules from this repository as the README loads them.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(
        d.join("rules.yml"),
        "groups:\n  - name: payments\n    rules:\n      - alert: QueueBacklog\n        expr: payments_queue_depth > 100\n        labels:\n          severity: critical\n        annotations:\n          summary: payments queue is backing up\n",
    )
    .unwrap();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n  - {repo}/rules/cairn-governance.rules.yml\n  - {repo}/rules/cairn-operations.rules.yml\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am}']\nremote_write:\n  - url: http://{cairn}/api/v1/write\n    authorization:\n      credentials: {token}\n    write_relabel_configs:\n      - source_labels: [__name__]\n        regex: \".+_bucket|go_.+\"\n        action: drop\n    queue_config:\n      capacity: 10000\n      max_shards: 10\n      max_samples_per_send: 2000\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 2s\nscrape_configs:\n  - job_name: payments\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n        labels:\n          service: payments\n          env: production\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node}']\n  - job_name: cairn\n    static_configs:\n      - targets: ['{cairn}']\n",
            rules = d.join("rules.yml").display(),
            repo = repo.display(),
        ),
    )
    .unwrap();
    let (mut prom_p, prom) = spawn_listening(
        "prometheus",
        "prometheus",
        &[format!("--config.file={}", d.join("prometheus.yml").display()), format!("--storage.tsdb.path={}", d.join("prom-data").display())],
        &d.join("prometheus.log"),
    )
    .await;
    wait_ready(&client, &format!("http://127.0.0.1:{am}/-/ready"), "alertmanager", &mut [&mut am_p]).await;
    wait_ready(&client, &format!("http://127.0.0.1:{prom}/-/ready"), "prometheus", &mut [&mut prom_p, &mut node_p]).await;

    // A calm baseline long enough to warm the detector, then the backlog.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calm_points = 0;
    while calm_points < 14 {
        let n = prom_value(&client, prom, "count_over_time(payments_queue_depth[1m])").await.unwrap_or(0.0);
        calm_points = n as usize;
        value.store((10.0 + (calm_points % 3) as f64).to_bits(), Ordering::SeqCst);
        assert!(Instant::now() < deadline, "prometheus is not scraping the controlled target");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    value.store(500f64.to_bits(), Ordering::SeqCst);

    // One incident with the anomaly on the controlled series and the alert, and a routed recommendation.
    let views = h
        .wait_for_views_within("a scale_out recommendation for payments with anomaly and alert", Duration::from_secs(60), |views| {
            views.iter().any(|v| {
                v.recommendation.as_ref().is_some_and(|r| r.action == "scale_out" && r.target.as_ref().is_some_and(|t| t.service == "payments"))
                    && v.recommendation.as_ref().is_some_and(|r| {
                        r.evidence.iter().any(|e| e.kind == "alert" && e.description.contains("QueueBacklog"))
                            && r.evidence.iter().any(|e| e.kind == "anomaly" && e.description.contains("payments_queue_depth"))
                    })
            })
        })
        .await;
    let v = views
        .iter()
        .find(|v| v.recommendation.as_ref().is_some_and(|r| r.action == "scale_out"))
        .unwrap();
    let decision = v.decision.as_ref().unwrap();
    assert_ne!(decision.outcome, pb::Outcome::Unspecified as i32);
    assert!(decision.policy_version.starts_with("sha256:"));
    let card = h.card(&v.recommendation.as_ref().unwrap().id, 0).await;
    let incident = card.incident.unwrap();
    assert!(incident.members.iter().any(|m| m.kind == "anomaly" && m.name.contains("payments_queue_depth")), "{incident:?}");
    assert!(incident.members.iter().any(|m| m.kind == "alert" && m.name == "QueueBacklog"), "{incident:?}");

    // Samples from both targets reached Cairn: node-exporter's hundreds of series are tracked by the
    // detector, and Prometheus reports nothing failed or dropped on the way.
    let text = h.metrics_text().await;
    let active: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cairn_detector_active_series "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(active > 100.0, "node-exporter series reached the detector: {active}");
    assert_eq!(prom_value(&client, prom, "up{job=\"node\"}").await, Some(1.0));
    assert_eq!(prom_value(&client, prom, "up{job=\"payments\"}").await, Some(1.0));
    let failed = prom_self(&client, prom, "prometheus_remote_storage_samples_failed_total").await;
    assert_eq!(failed, 0.0, "Prometheus saw remote_write failures");
    assert!(prom_self(&client, prom, "prometheus_remote_storage_samples_total").await > 0.0, "Prometheus sent samples");

    // Cairn's own series come back through the same Prometheus.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ingested = prom_value(&client, prom, "sum(cairn_ingest_samples_total{job=\"cairn\"})").await;
        let routed = prom_value(&client, prom, "sum(cairn_recommendations_total{job=\"cairn\"})").await;
        let alerts = prom_value(&client, prom, "sum(cairn_ingest_alerts_total{job=\"cairn\"})").await;
        let latency = prom_value(&client, prom, "sum(cairn_http_request_duration_seconds_count{job=\"cairn\",endpoint=\"remote_write\"})").await;
        if ingested.is_some_and(|v| v > 0.0) && routed.is_some_and(|v| v >= 1.0) && alerts.is_some_and(|v| v >= 1.0) && latency.is_some_and(|v| v > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "Cairn's own series did not come back through Prometheus: {ingested:?} {routed:?} {alerts:?} {latency:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Cairn's own alert rules (rules/*.rules.yml, as the README loads them) evaluate on its real
    // series without an error; the backlog's bound is among the series they read.
    assert_eq!(prom_value(&client, prom, "cairn_intake_pending_alerts_limit{job=\"cairn\"}").await, Some(20_000.0));
    let expected = ["cairn-governance", "cairn-operations"]
        .iter()
        .map(|f| std::fs::read_to_string(repo.join(format!("rules/{f}.rules.yml"))).unwrap())
        .map(|t| t.lines().filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:")).count())
        .sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules: serde_json::Value = client.get(format!("http://127.0.0.1:{prom}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        let ours: Vec<&serde_json::Value> = groups.iter().filter(|g| g["name"].as_str().is_some_and(|n| n.starts_with("cairn-"))).collect();
        let health: Vec<(String, String, String)> = ours
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| (r["name"].as_str().unwrap_or("").to_string(), r["health"].as_str().unwrap_or("").to_string(), r["lastError"].as_str().unwrap_or("").to_string()))
            .collect();
        assert!(health.iter().all(|(_, h, _)| h != "err"), "a rule of Cairn's failed to evaluate: {health:?}");
        if ours.len() == 2 && health.len() == expected && health.iter().all(|(_, h, _)| h == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not load and evaluate Cairn's rules: {health:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    verification_through_promql(&h, v.recommendation.as_ref().unwrap(), prom).await;
    drop((prom_p, am_p, node_p));
    h.stop().await;
}

/// Counts executions and rollbacks, changes nothing.
#[derive(Debug, Default)]
struct Recording {
    executed: std::sync::atomic::AtomicUsize,
    rolled_back: std::sync::atomic::AtomicUsize,
}

impl cairn_workflow::Adapter for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn execute<'a>(&'a self, _: &'a cairn_types::Recommendation, _: &'a cairn_types::ChangeRequest) -> cairn_workflow::AdapterFuture<'a> {
        self.executed.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { (cairn_types::ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a cairn_types::Recommendation, _: &'a cairn_types::ChangeRequest) -> cairn_workflow::AdapterFuture<'a> {
        self.rolled_back.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { (cairn_types::ExecutionOutcome::Succeeded, String::new()) })
    }
}

/// The executor's verification step against the real Prometheus: a healthy check passes and the
/// change succeeds; a failing one leads to the rollback.
async fn verification_through_promql(h: &Harness, rec: &pb::Recommendation, prom: u16) {
    use cairn_types::{ChangeState, Principal, RecommendationId, VerificationCheck};
    let stored = h.engine().store().get_recommendation(&RecommendationId(rec.id.clone()), None).unwrap().unwrap();
    let verifier = Arc::new(
        cairn_workflow::PromQlVerifier::new(
            &format!("http://127.0.0.1:{prom}"),
            Duration::from_secs(2),
            Duration::from_millis(200),
            Duration::from_secs(3),
        )
        .unwrap(),
    );
    let carol = Principal { subject: "user:carol".into(), display_name: "carol".into(), groups: vec!["sre".into()] };
    for (threshold, expected) in [(1.0, ChangeState::Succeeded), (2.0, ChangeState::RolledBack)] {
        let mut r = stored.recommendation.clone();
        r.verification = vec![VerificationCheck {
            name: "payments target up".into(),
            query: "up{job=\"payments\"}".into(),
            comparator: ">=".into(),
            threshold,
            within_secs: 2,
        }];
        let now = now_ms();
        let (change, _) = cairn_workflow::open_change(&r, &stored.decision, now, &cairn_workflow::WorkflowConfig::default());
        let (approved, _) = cairn_workflow::approve(&change, &r, &carol, r.revision, "verification test", now).unwrap();
        let adapter = Arc::new(Recording::default());
        let executor = cairn_workflow::Executor::new(adapter.clone()).with_verifier(verifier.clone());
        let (execution, next, drafts) = executor.run(&approved, &r, &stored.decision, now).await.unwrap();
        assert_eq!(next.state, expected, "{}", execution.output);
        assert_eq!(adapter.executed.load(Ordering::SeqCst), 1);
        let rolled = usize::from(expected == ChangeState::RolledBack);
        assert_eq!(adapter.rolled_back.load(Ordering::SeqCst), rolled, "{}", execution.output);
        assert!(execution.output.contains("observed 1"), "{}", execution.output);
        let kinds: Vec<&str> = drafts.iter().map(|d| d.kind.as_str()).collect();
        if rolled == 1 {
            assert_eq!(kinds, ["change.executed", "change.verification_failed", "change.rolled_back"]);
        } else {
            assert_eq!(kinds, ["change.executed"]);
        }
    }
}

/// Sum of one of Prometheus's own series, read from its `/metrics` (it does not scrape itself here).
async fn prom_self(client: &reqwest::Client, prom: u16, name: &str) -> f64 {
    let Ok(r) = client.get(format!("http://127.0.0.1:{prom}/metrics")).send().await else { return -1.0 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prometheus remote_write config for the pressure test: only node-exporter, scraped as many jobs.
fn pressure_config(cairn: std::net::SocketAddr, node: u16, jobs: usize) -> String {
    let token = token_of(SENDER);
    let mut cfg = format!(
        "global:\n  scrape_interval: 1s\nremote_write:\n  - url: http://{cairn}/api/v1/write\n    authorization:\n      credentials: {token}\n    queue_config:\n      capacity: 10000\n      max_shards: 10\n      max_samples_per_send: 2000\n      batch_send_deadline: 1s\n      min_backoff: 50ms\n      max_backoff: 500ms\n"
    );
    if jobs > 0 {
        cfg.push_str("scrape_configs:\n");
        for j in 0..jobs {
            cfg.push_str(&format!("  - job_name: node{j}\n    static_configs:\n      - targets: ['127.0.0.1:{node}']\n"));
        }
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_prometheus_retries_and_nothing_is_lost() {
    if !programs_present(&["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"], "real_prometheus end-to-end test") {
        return;
    }
    // A queue of one batch: Cairn will be saturated and answer 503 + Retry-After.
    let mut h = Harness::start_with(|c| {
        c.ingest.queue_capacity = 1;
        c.ingest.retry_after_secs = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (mut node_p, node) = spawn_listening("node-exporter", "prometheus-node-exporter", &[], &d.join("node.log")).await;
    let cfg_path = d.join("prometheus.yml");
    std::fs::write(&cfg_path, pressure_config(h.http, node, 10)).unwrap();
    let (mut prom_p, prom) = spawn_listening(
        "prometheus",
        "prometheus",
        &[format!("--config.file={}", cfg_path.display()), format!("--storage.tsdb.path={}", d.join("prom-data").display())],
        &d.join("prometheus.log"),
    )
    .await;
    wait_ready(&client, &format!("http://127.0.0.1:{prom}/-/ready"), "prometheus", &mut [&mut prom_p, &mut node_p]).await;

    // Saturate Cairn deterministically: besides Prometheus, four senders of our own push large
    // bodies back to back, so the one-batch queue is always full and Prometheus's sends are
    // answered 503 too. Our own accepted samples are counted and subtracted at the end.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ours = Arc::new(AtomicU64::new(0));
    let names: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
    let flood_body = {
        let now = now_ms();
        let series: Vec<SeriesSpec> =
            names.iter().map(|n| (vec![("__name__", "flood"), ("id", n.as_str())], (0..40).map(|j| (now + j, j as f64)).collect())).collect();
        remote_write_body(&series)
    };
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let (client, body, flooding, ours, url) =
            (client.clone(), flood_body.clone(), flooding.clone(), ours.clone(), format!("http://{}/api/v1/write", h.http));
        flooders.push(tokio::spawn(async move {
            while flooding.load(Ordering::SeqCst) {
                let r = client
                    .post(&url)
                    .bearer_auth(token_of(SENDER))
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().as_u16() == 204) {
                    ours.fetch_add(40_000, Ordering::SeqCst);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom_self(&client, prom, "prometheus_remote_storage_samples_retried_total").await < 1.0 {
        assert!(Instant::now() < deadline, "Prometheus was never answered 503; the test did not create pressure");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    flooding.store(false, Ordering::SeqCst);
    for f in flooders {
        f.await.unwrap();
    }

    // Stop scraping (config reload without scrape jobs; the remote-write queue is kept), then wait
    // for Prometheus to drain what it holds.
    std::fs::write(&cfg_path, pressure_config(h.http, node, 0)).unwrap();
    let reload = client.post(format!("http://127.0.0.1:{prom}/-/reload")).send().await;
    if reload.as_ref().map(|r| !r.status().is_success()).unwrap_or(true) {
        // --web.enable-lifecycle is off by default; SIGHUP reloads too.
        let _ = Command::new("kill").args(["-HUP", &prom_p.child.id().to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut stable = 0;
    let mut last = (-1.0, -1.0);
    loop {
        let sent = prom_self(&client, prom, "prometheus_remote_storage_samples_total").await;
        let pending = prom_self(&client, prom, "prometheus_remote_storage_samples_pending").await;
        let text = h.metrics_text().await;
        let accepted: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("cairn_ingest_samples_total{source=\"remote_write\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let accepted = accepted - ours.load(Ordering::SeqCst) as f64;
        stable = if (sent, accepted) == last && pending == 0.0 { stable + 1 } else { 0 };
        last = (sent, accepted);
        if stable >= 6 {
            let failed = prom_self(&client, prom, "prometheus_remote_storage_samples_failed_total").await;
            let dropped = prom_self(&client, prom, "prometheus_remote_storage_samples_dropped_total").await;
            let retried = prom_self(&client, prom, "prometheus_remote_storage_samples_retried_total").await;
            assert!(retried > 0.0, "Prometheus retried after the 503s");
            assert_eq!((failed, dropped), (0.0, 0.0), "nothing failed or was dropped");
            assert!(sent > 0.0);
            // Prometheus 2.42 counts a sample in samples_total on every attempt, and again in
            // samples_retried_total when the attempt is answered 503; what it delivered is the
            // difference, and every one of those must be in Cairn's accepted count.
            assert_eq!(sent - retried, accepted, "samples Prometheus delivered = samples Cairn accepted (sent {sent}, retried {retried})");
            break;
        }
        assert!(Instant::now() < deadline, "remote_write never settled: sent {sent}, pending {pending}, accepted {accepted}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop((prom_p, node_p));
    h.stop().await;
}

/// Prometheus remote-writes and Alertmanager delivers its webhook over TLS, each proving who it is
/// with a client certificate (made by the test) instead of a token: the README's `tls_config`
/// blocks, against Cairn with `[tls]` and `[[auth.certificates]]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_alertmanager_send_over_mutual_tls() {
    use cairn_testkit::pki::Ca;
    if !programs_present(&["prometheus", "prometheus-alertmanager"], "real_prometheus mutual TLS test") {
        return;
    }
    let (ca, clients) = (Ca::new("cairn-test-ca"), Ca::new("cairn-clients"));
    let mut h = Harness::start_on(Arc::new(cairn_server::engine::SystemClock), |cfg, d| {
        let server = ca.server(d, "server");
        cfg.tls = Some(cairn_server::tls::TlsConfig {
            cert_file: server.cert,
            key_file: server.key,
            client_ca_file: Some(clients.write(&d.join("clients-ca.crt"))),
            client_auth: cairn_server::tls::ClientAuth::Required,
            reload_interval_ms: 10_000,
        });
        for name in ["prometheus", "alertmanager"] {
            cfg.auth.certificates.push(cairn_server::config::CertificateEntry {
                subject: format!("service:{name}"),
                display_name: String::new(),
                groups: vec![],
                common_name: Some(name.into()),
                dns_name: None,
                uri: None,
                scopes: vec![cairn_server::access::Scope::Ingest],
            });
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let ca_file = ca.write(&d.join("cairn-ca.crt"));
    let (prom_leaf, am_leaf) = (clients.client("prometheus", d), clients.client("alertmanager", d));
    let cairn = h.http;

    std::fs::write(
        d.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: cairn\n  group_by: [alertname, service]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: cairn\n    webhook_configs:\n      - url: https://{cairn}/api/v1/alerts/alertmanager\n        send_resolved: true\n        http_config:\n          tls_config:\n            ca_file: {ca}\n            cert_file: {cert}\n            key_file: {key}\n",
            ca = ca_file.display(),
            cert = am_leaf.cert.display(),
            key = am_leaf.key.display()
        ),
    )
    .unwrap();
    let (mut am_p, am) = spawn_listening(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", d.join("alertmanager.yml").display()),
            format!("--storage.path={}", d.join("am-data").display()),
            "--cluster.listen-address=".into(),
        ],
        &d.join("alertmanager.log"),
    )
    .await;
    std::fs::write(
        d.join("rules.yml"),
        "groups:\n  - name: edge\n    rules:\n      - alert: EdgeProbe\n        expr: vector(1)\n        labels:\n          service: edge\n          severity: warning\n",
    )
    .unwrap();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am}']\nremote_write:\n  - url: https://{cairn}/api/v1/write\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            rules = d.join("rules.yml").display(),
            ca = ca_file.display(),
            cert = prom_leaf.cert.display(),
            key = prom_leaf.key.display()
        ),
    )
    .unwrap();
    let (mut prom_p, prom) = spawn_listening(
        "prometheus",
        "prometheus",
        &[
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("prom-data").display()),
            // An alert evaluated before the Alertmanager is discovered is dropped and, by
            // default, resent only a minute later.
            "--rules.alert.resend-delay=1s".into(),
        ],
        &d.join("prometheus.log"),
    )
    .await;
    wait_ready(&client, &format!("http://127.0.0.1:{am}/-/ready"), "alertmanager", &mut [&mut am_p]).await;
    wait_ready(&client, &format!("http://127.0.0.1:{prom}/-/ready"), "prometheus", &mut [&mut prom_p]).await;

    let m = &h.engine().metrics();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = m.samples_accepted.with_label_values(&["remote_write"]).get();
        let alerts = m.alerts_accepted.with_label_values(&["alertmanager"]).get();
        if samples > 0 && alerts > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "samples {samples} and alerts {alerts} over mutual TLS; prometheus log:\n{}\nalertmanager log:\n{}",
            std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default(),
            std::fs::read_to_string(d.join("alertmanager.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(prom_self(&client, prom, "prometheus_remote_storage_samples_failed_total").await, 0.0, "no remote_write failed");
    // The alert came from the certificate's service, with no token anywhere in either config.
    let alerts = h.engine().store().list_alerts(100).unwrap();
    assert!(alerts.iter().any(|a| a.labels.0.get("alertname").map(String::as_str) == Some("EdgeProbe")), "{alerts:?}");
    drop((prom_p, am_p));
    h.stop().await;
}
