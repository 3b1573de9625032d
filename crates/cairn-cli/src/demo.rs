//! `cairn demo`: a self-contained run of the whole path on bundled data, through the real
//! protocols. It starts a server on free loopback ports with a temporary store, sends metrics as
//! Prometheus remote_write (the bundled series and an hour of generated history in which the
//! per-series and the multivariate detectors each find something), alerts as Alertmanager webhooks
//! (one group twice, as a clustered Alertmanager would) and one alert over the gRPC ingest stream,
//! then shows what the detectors found, what Cairn proposed and how policy routed it, approves a
//! review item as a person, waits for the dry-run execution, and verifies the audit chain.

use crate::client::{self, bearer, status_error};
use crate::output;
use anyhow::{Context, Result, bail, ensure};
use cairn_proto::v1 as pb;
use cairn_server::access::{PrincipalKind, Scope};
use cairn_server::config::{ServerConfig, TokenEntry};
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const METRICS_CSV: &str = include_str!("../../../datasets/demo/metrics.csv");
const ALERTS_JSON: &str = include_str!("../../../datasets/demo/alerts.json");

struct Person {
    subject: &'static str,
    groups: &'static [&'static str],
    token: String,
}

pub async fn run(keep_running: bool) -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the demo store")?;
    let people = [
        Person { subject: "user:alice", groups: &["sre", "sre-leads"], token: cairn_server::auth::new_token() },
        Person { subject: "user:bob", groups: &["sre", "sre-leads"], token: cairn_server::auth::new_token() },
    ];
    let mut cfg = ServerConfig {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("data"),
        ..ServerConfig::default()
    };
    cfg.executor.poll_interval_ms = 100;
    cfg.auth.tokens = people
        .iter()
        .map(|p| TokenEntry {
            subject: p.subject.into(),
            display_name: p.subject.trim_start_matches("user:").into(),
            groups: p.groups.iter().map(|g| g.to_string()).collect(),
            token_sha256: cairn_server::auth::hash_token(&p.token),
            kind: Some(PrincipalKind::Person),
            scopes: Some(Scope::legacy_person().into_iter().collect()),
        })
        .collect();
    // The senders authenticate, as a production install's Prometheus and Alertmanager do: only
    // then may anything run by itself, and only a sender with `ingest:annotate` may pin the
    // confidences the bundled alerts carry.
    let sender = cairn_server::auth::new_token();
    cfg.ingest.require_token = true;
    cfg.auth.tokens.push(TokenEntry {
        subject: "service:demo-sender".into(),
        display_name: "Prometheus and Alertmanager of the demo".into(),
        groups: vec![],
        token_sha256: cairn_server::auth::hash_token(&sender),
        kind: Some(PrincipalKind::Service),
        scopes: Some(vec![Scope::Ingest, Scope::IngestAnnotate]),
    });

    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock))
        .await
        .context("cannot start the demo server")?;
    println!("Cairn demo: server on http://{} and grpc {}, store in {}", server.http_addr, server.grpc_addr, dir.path().display());
    let grpc = format!("http://{}", server.grpc_addr);
    let result = scenario(&server.http_addr, &grpc, &people, &sender).await;
    if keep_running && result.is_ok() {
        println!("\nServer still running. Try:\n  cairn review list --server {grpc} --token {}\nCtrl-C to stop.", people[0].token);
        crate::shutdown_signal().await;
    }
    server.shutdown().await;
    result?;
    println!("\nDemo finished in {:.1}s.", started.elapsed().as_secs_f64());
    Ok(())
}

async fn scenario(http_addr: &SocketAddr, grpc: &str, people: &[Person], sender: &str) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let now_ms = now_ms();

    // 1. Metrics, exactly as Prometheus sends them: the bundled series, plus an hour of generated
    //    history that the detectors need to learn what is normal before they judge.
    let mut samples = parse_metrics(METRICS_CSV, now_ms)?;
    samples.extend(generated_metrics(now_ms));
    let total: usize = samples.iter().map(|ts| ts.samples.len()).sum();
    for chunk in time_slices(&samples, 150_000) {
        let body = encode_remote_write(&chunk);
        let resp = http
            .post(format!("http://{http_addr}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .bearer_auth(sender)
            .body(body)
            .send()
            .await
            .context("remote_write request failed")?;
        ensure!(resp.status().as_u16() == 204, "remote_write answered {}: {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    println!("1. sent {total} samples of {} series via remote_write (snappy protobuf): 204", samples.len());
    let found = wait_for_anomalies(&http, http_addr).await?;
    println!("   the detectors found (cairn_anomalies_total on /metrics):");
    for (labels, n) in &found {
        println!("   - {n} × {labels}");
    }

    // 2. Alerts, exactly as Alertmanager sends them; the first group twice, as two clustered
    //    Alertmanagers would.
    let scenario: Value = serde_json::from_str(ALERTS_JSON).context("bundled alerts.json is not JSON")?;
    let starts_at = rfc3339(now_ms - 120_000);
    let webhooks = scenario["webhook"].as_array().context("alerts.json: no webhook list")?;
    let mut sent = 0;
    for (i, payload) in webhooks.iter().enumerate() {
        let mut payload = payload.clone();
        if let Some(alerts) = payload["alerts"].as_array_mut() {
            for a in alerts {
                a["startsAt"] = Value::String(starts_at.clone());
            }
        }
        let deliveries = if i == 0 { 2 } else { 1 };
        for _ in 0..deliveries {
            let resp = http
                .post(format!("http://{http_addr}/api/v1/alerts/alertmanager"))
                .bearer_auth(sender)
                .json(&payload)
                .send()
                .await
                .context("webhook request failed")?;
            ensure!(resp.status().is_success(), "webhook answered {}: {}", resp.status(), resp.text().await.unwrap_or_default());
            sent += 1;
        }
    }
    println!("2. delivered {sent} Alertmanager webhooks (version 4; the first group twice — Cairn keeps one)");

    // 3. One alert over the gRPC ingest stream.
    let mut ingest = pb::ingest_service_client::IngestServiceClient::new(client::channel(grpc).await?);
    let grpc_alerts: Vec<pb::AlertEvent> = scenario["grpc"]
        .as_array()
        .context("alerts.json: no grpc list")?
        .iter()
        .map(|a| grpc_alert(a, now_ms - 120_000))
        .collect();
    let mut push = tonic::Request::new(tokio_stream::iter(vec![pb::PushRequest { samples: vec![], alerts: grpc_alerts, idempotency_key: String::new() }]));
    push.metadata_mut().insert("authorization", format!("Bearer {sender}").parse().context("token is not a header value")?);
    let pushed = ingest
        .push(push)
        .await
        .map_err(status_error)?
        .into_inner();
    ensure!(pushed.rejected == 0, "gRPC push rejected items: {:?}", pushed.rejections);
    println!("3. pushed {} alert over gRPC IngestService.Push", pushed.accepted_alerts);

    // 4. What Cairn proposed, and how policy routed it.
    let alice = review_as(grpc, &people[0]).await?;
    let mut bob = review_as(grpc, &people[1]).await?;
    let views = wait_for_outcomes(alice.clone()).await?;
    println!("\n4. recommendations and their routing:\n");
    print!("{}", output::views_table(&views));
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &views {
        if let Some(d) = &v.decision {
            *by_outcome.entry(output::outcome_name(d.outcome)).or_default() += 1;
        }
    }
    println!(
        "\n   outcomes: {}",
        by_outcome.iter().map(|(o, n)| format!("{n} {o}")).collect::<Vec<_>>().join(", ")
    );
    for v in &views {
        if let (Some(r), Some(d)) = (&v.recommendation, &v.decision) {
            println!("   - {} {}: {}", output::outcome_name(d.outcome), r.action, d.reasons.first().cloned().unwrap_or_default());
        }
    }

    // 5. A person approves a review item; only then does it reach the executor.
    let pick = views
        .iter()
        .find(|v| {
            matches!((&v.decision, &v.change), (Some(d), Some(c))
                if d.outcome == pb::Outcome::Review as i32 && d.approvals_required == 1 && c.state == "pending_approval")
        })
        .or_else(|| {
            views.iter().find(|v| {
                matches!((&v.decision, &v.change), (Some(d), Some(c)) if d.outcome == pb::Outcome::Review as i32 && c.state == "pending_approval")
            })
        })
        .context("no review item is pending approval")?;
    let rec = pick.recommendation.as_ref().context("view without recommendation")?;
    let card = bob
        .get_decision_card(pb::GetDecisionCardRequest { recommendation_id: rec.id.clone(), revision: 0 })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("\n5. decision card shown to the reviewer:\n");
    print!("{}", output::card_text(&card));
    // Tier 2 needs one person (bob); tier 3 two distinct people (alice, then bob).
    let needed = pick.decision.as_ref().map(|d| d.approvals_required).unwrap_or(1) as usize;
    for p in people.iter().rev().take(needed.max(1)) {
        let r = review_as(grpc, p)
            .await?
            .approve(pb::ApproveRequest {
                recommendation_id: rec.id.clone(),
                revision: rec.revision,
                reason: "demo: evidence and rollback plan checked".into(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        println!("   {} approves revision {}: {}", p.subject, rec.revision, r.message);
    }

    // 6. The executor runs it through the dry-run adapter.
    let card = wait_for_state(&mut bob, &rec.id, &["succeeded", "failed"]).await?;
    let ch = card.change.as_ref().context("card without change")?;
    println!("\n6. executor: change {} is {}", ch.id, ch.state);
    for e in &card.executions {
        println!("   via {} adapter: {}", e.adapter, e.status);
        for line in e.output.lines() {
            println!("   | {line}");
        }
    }
    ensure!(ch.state == "succeeded", "the approved change did not succeed: {}", ch.state);
    let autos = views.iter().filter(|v| v.decision.as_ref().map(|d| d.outcome) == Some(pb::Outcome::Auto as i32)).count();
    println!("   ({autos} auto item(s) ran by themselves; advisory and blocked items never reach the executor)");

    // 7. The audit chain.
    let mut audit = pb::audit_service_client::AuditServiceClient::with_interceptor(
        client::channel(grpc).await?,
        bearer(Some(&people[0].token))?,
    );
    let v = audit.verify(pb::VerifyRequest {}).await.map_err(status_error)?.into_inner();
    if !v.ok {
        bail!("audit chain BROKEN at entry {}: {}", v.first_bad_seq, v.problem);
    }
    println!("\n7. audit chain verified: {} entries, head {}", v.entries, v.head_hash);
    Ok(())
}

async fn review_as(grpc: &str, p: &Person) -> Result<client::Review> {
    Ok(pb::review_service_client::ReviewServiceClient::with_interceptor(
        client::channel(grpc).await?,
        bearer(Some(&p.token))?,
    ))
}

/// Polls until all four outcomes are present and the set stops changing, or 30 s pass.
async fn wait_for_outcomes(mut c: client::Review) -> Result<Vec<pb::RecommendationView>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_len = usize::MAX;
    let mut stable = 0;
    loop {
        let views = c
            .list_recommendations(pb::ListRecommendationsRequest { limit: 1000, ..Default::default() })
            .await
            .map_err(status_error)?
            .into_inner()
            .recommendations;
        let have = |o: pb::Outcome| views.iter().any(|v| v.decision.as_ref().map(|d| d.outcome) == Some(o as i32));
        let all = have(pb::Outcome::Auto) && have(pb::Outcome::Review) && have(pb::Outcome::Advisory) && have(pb::Outcome::Blocked);
        stable = if views.len() == last_len { stable + 1 } else { 0 };
        last_len = views.len();
        if all && stable >= 3 {
            return Ok(views);
        }
        if Instant::now() > deadline {
            if all {
                return Ok(views);
            }
            print!("{}", output::views_table(&views));
            bail!("the scenario did not produce all four outcomes (auto, review, advisory, blocked) within 30s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_state(c: &mut client::Review, id: &str, states: &[&str]) -> Result<pb::DecisionCard> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let card = c
            .get_decision_card(pb::GetDecisionCardRequest { recommendation_id: id.into(), revision: 0 })
            .await
            .map_err(status_error)?
            .into_inner();
        if card.change.as_ref().is_some_and(|ch| states.contains(&ch.state.as_str())) {
            return Ok(card);
        }
        if Instant::now() > deadline {
            bail!("change for {id} did not reach {states:?} within 20s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as Alertmanager writes `startsAt`.
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default()
}

/// Reads `offset_seconds,metric,labels,value` rows into remote_write series, one per label set.
fn parse_metrics(csv: &str, now_ms: i64) -> Result<Vec<cairn_ingest::prompb::TimeSeries>> {
    use cairn_ingest::prompb::{Label, Sample, TimeSeries};
    let mut series: BTreeMap<String, TimeSeries> = BTreeMap::new();
    for (n, line) in csv.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("offset_seconds") || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        ensure!(cols.len() == 4, "metrics.csv line {}: expected 4 columns", n + 1);
        let offset: i64 = cols[0].parse().with_context(|| format!("metrics.csv line {}: offset", n + 1))?;
        let value: f64 = cols[3].parse().with_context(|| format!("metrics.csv line {}: value", n + 1))?;
        let key = format!("{}{{{}}}", cols[1], cols[2]);
        let ts = series.entry(key).or_insert_with(|| {
            let mut labels = vec![Label { name: "__name__".into(), value: cols[1].into() }];
            for pair in cols[2].split(';') {
                if let Some((k, v)) = pair.split_once('=') {
                    labels.push(Label { name: k.into(), value: v.into() });
                }
            }
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            TimeSeries { labels, ..Default::default() }
        });
        ts.samples.push(Sample { value, timestamp: now_ms - offset * 1000 });
    }
    Ok(series.into_values().collect())
}

/// Generated series the demo's detectors judge, one sample every 15 s for an hour (the per-series
/// model learns for its first 150 samples):
/// - `orders_queue_depth` of the orders service idles around 12 and jumps to ~480 for its last two
///   minutes: the per-series model flags the jump, and the scale-out playbook answers it (no alert
///   rule is involved: this recommendation comes from the metrics alone);
/// - the eight host metrics the shipped multivariate model knows (`models/host-pca-kmeans`), for
///   two hosts of the same generator as its training data; on `web-2` the CPU stops following the
///   host's traffic for the last five minutes — every value stays in its usual range, only the
///   combination is wrong, which only the multivariate model can see. The generator's batch
///   bursts also move single metrics on `web-2` enough for the per-series model to flag them with
///   low confidence; no playbook answers those, so they stay in the incident as evidence.
fn generated_metrics(now_ms: i64) -> Vec<cairn_ingest::prompb::TimeSeries> {
    use cairn_detect::multivariate::synthetic::{host_rows, Break, SplitMix, HOST_FEATURES};
    use cairn_ingest::prompb::{Label, Sample, TimeSeries};
    const POINTS: usize = 240;
    const STEP_MS: i64 = 15_000;
    let at = |i: usize| now_ms - (POINTS - 1 - i) as i64 * STEP_MS;
    let series = |name: &str, labels: &[(&str, &str)], values: &mut dyn Iterator<Item = f64>| {
        let mut l: Vec<Label> = std::iter::once(("__name__", name))
            .chain(labels.iter().copied())
            .map(|(k, v)| Label { name: k.into(), value: v.into() })
            .collect();
        l.sort_by(|a, b| a.name.cmp(&b.name));
        let samples = values.enumerate().map(|(i, value)| Sample { value, timestamp: at(i) }).collect();
        TimeSeries { labels: l, samples, ..Default::default() }
    };

    let mut rng = SplitMix::new(11);
    let mut queue = (0..POINTS).map(|i| {
        let level = if i >= POINTS - 8 { 480.0 } else { 12.0 };
        (level + 2.0 * rng.normal()).max(0.0).round()
    });
    let orders = [("service", "orders"), ("env", "production"), ("instance", "orders-1:8080"), ("job", "orders")];
    let mut out = vec![series("orders_queue_depth", &orders, &mut queue)];

    for (host, seed, breaks) in [
        ("web-1:9100", 21, vec![]),
        ("web-2:9100", 22, vec![Break { start: POINTS - 20, len: 20, feature: 0 }]),
    ] {
        let (rows, _) = host_rows(POINTS, seed, &breaks);
        let labels = [("instance", host), ("job", "node"), ("env", "production")];
        for (f, name) in HOST_FEATURES.iter().enumerate() {
            out.push(series(name, &labels, &mut rows.iter().map(|r| r[f])));
        }
    }
    out
}

/// Polls Cairn's `/metrics` until the detectors' anomaly counters stop changing (the analysis
/// runs behind the ingest queue), and returns them as (labels, count).
async fn wait_for_anomalies(http: &reqwest::Client, http_addr: &SocketAddr) -> Result<Vec<(String, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last: Vec<(String, u64)> = Vec::new();
    let mut stable = 0;
    loop {
        let text = http.get(format!("http://{http_addr}/metrics")).send().await?.text().await?;
        let now: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("cairn_anomalies_total"))
            .filter_map(|l| {
                let (labels, n) = l.rsplit_once(' ')?;
                Some((labels.to_string(), n.parse().ok()?))
            })
            .collect();
        stable = if now == last && !now.is_empty() { stable + 1 } else { 0 };
        last = now;
        if stable >= 3 || Instant::now() > deadline {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cuts the series into requests of `window_ms` of samples each, oldest first, every series in
/// every request: the order Prometheus's remote_write sends in, and the one the multivariate
/// model needs to assemble a host's row from its metrics at the same time.
fn time_slices(series: &[cairn_ingest::prompb::TimeSeries], window_ms: i64) -> Vec<Vec<cairn_ingest::prompb::TimeSeries>> {
    let all = || series.iter().flat_map(|s| s.samples.iter().map(|x| x.timestamp));
    let (Some(first), Some(last)) = (all().min(), all().max()) else { return Vec::new() };
    (first..=last)
        .step_by(window_ms as usize)
        .map(|start| {
            series
                .iter()
                .filter_map(|s| {
                    let samples: Vec<_> = s.samples.iter().filter(|x| x.timestamp >= start && x.timestamp < start + window_ms).cloned().collect();
                    (!samples.is_empty()).then(|| cairn_ingest::prompb::TimeSeries { labels: s.labels.clone(), samples, ..Default::default() })
                })
                .collect::<Vec<_>>()
        })
        .filter(|request| !request.is_empty())
        .collect()
}

pub(crate) fn encode_remote_write(series: &[cairn_ingest::prompb::TimeSeries]) -> Vec<u8> {
    let req = cairn_ingest::prompb::WriteRequest { timeseries: series.to_vec(), ..Default::default() };
    let raw = req.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

fn grpc_alert(a: &Value, starts_at_ms: i64) -> pb::AlertEvent {
    let labels = |v: &Value| -> Vec<pb::Label> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| pb::Label { name: k.clone(), value: v.as_str().unwrap_or_default().to_string() })
                    .collect()
            })
            .unwrap_or_default()
    };
    pb::AlertEvent {
        fingerprint: a["fingerprint"].as_str().unwrap_or_default().into(),
        status: "firing".into(),
        labels: labels(&a["labels"]),
        annotations: labels(&a["annotations"]),
        starts_at_ms,
        ends_at_ms: 0,
        generator_url: a["generatorURL"].as_str().unwrap_or_default().into(),
        source: "demo-grpc".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_250), "2026-12-31T23:59:59.250Z");
    }

    #[test]
    fn time_slices_send_every_sample_once_oldest_first_with_all_series_of_a_window_together() {
        let mut series = parse_metrics(METRICS_CSV, 1_000_000_000_000).expect("bundled data parses");
        series.extend(generated_metrics(1_000_000_000_000));
        let requests = time_slices(&series, 150_000);
        let sent: usize = requests.iter().flatten().map(|s| s.samples.len()).sum();
        assert_eq!(sent, series.iter().map(|s| s.samples.len()).sum::<usize>());
        let spans: Vec<(i64, i64)> = requests
            .iter()
            .map(|r| {
                let ts = r.iter().flat_map(|s| s.samples.iter().map(|x| x.timestamp));
                (ts.clone().min().unwrap(), ts.max().unwrap())
            })
            .collect();
        assert!(spans.iter().all(|(lo, hi)| hi - lo < 150_000), "{spans:?}");
        assert!(spans.windows(2).all(|w| w[0].1 < w[1].0), "requests are in time order: {spans:?}");
        // A host's eight metrics travel together, so the multivariate model can build its rows.
        let web2 = |r: &Vec<cairn_ingest::prompb::TimeSeries>| {
            r.iter().filter(|s| s.labels.iter().any(|l| l.name == "instance" && l.value == "web-2:9100")).count()
        };
        assert!(requests.iter().all(|r| web2(r) == 8), "{:?}", requests.iter().map(web2).collect::<Vec<_>>());
    }

    #[test]
    fn bundled_metrics_parse_into_their_series() {
        let series = parse_metrics(METRICS_CSV, 1_000_000_000).expect("bundled data parses");
        assert_eq!(series.len(), 4);
        assert!(series.iter().all(|s| s.samples.len() == 60));
        assert!(series.iter().all(|s| s.labels.iter().any(|l| l.name == "__name__")));
    }
}
