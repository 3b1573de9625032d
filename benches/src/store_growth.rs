//! Does Cairn stay flat as its store grows? Two in-process servers side by side: one filled with
//! many alerts on many services (about one recommendation per service), one almost empty. Then the
//! same review and audit calls are made on both, alternated round by round, and the same fresh
//! alerts are analysed by both.
//!
//! Prints, per call, p50 and p99 on each store and the full / empty ratio; the analysis rate on
//! each (alerts/s from acknowledgement until the intake journal is drained) and its ratio; and the
//! fill's own rate per chunk, which shows whether filling is linear.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::{Result, bail};
use cairn_testkit::Harness;
use cairn_proto::v1 as pb;
use clap::Parser;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

#[derive(Debug, Parser)]
#[command(about = "Review, audit and analysis cost on a full store against an almost empty one")]
struct Args {
    /// Alerts the full store is filled with.
    #[arg(long, default_value_t = 50_000)]
    alerts: usize,
    /// Services they spread over (one incident and one recommendation each).
    #[arg(long, default_value_t = 16_666)]
    services: usize,
    /// Alerts per fill chunk (a rate is printed per chunk).
    #[arg(long, default_value_t = 5_000)]
    chunk: usize,
    /// Calls of each kind per server.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Rounds the calls and the analysis probes are split into, alternating the servers.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Fresh alerts each analysis probe sends to each server, per round.
    #[arg(long, default_value_t = 1_500)]
    probe_alerts: usize,
}

/// Concurrent webhook senders, and alerts per webhook.
const SENDERS: usize = 4;
const PER_WEBHOOK: usize = 10;

/// One alert: every third one critical (so some recommendations wait for review), the rest warnings.
fn alert(prefix: &str, service: usize, n: usize) -> serde_json::Value {
    let severity = if n.is_multiple_of(3) { "critical" } else { "warning" };
    let starts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "service": format!("{prefix}-{service}"), "env": "staging", "severity": severity},
        "annotations": {"summary": "errors above 5%"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": format!("{prefix}-{n:09}"),
    })
}

/// Sends `alerts` numbered from `first`, `per_service` consecutive ones on each service (so that
/// they join one incident, as a real incident's alerts arrive together), and waits until the
/// analysis worker has drained them all. Returns alerts/s from the first send to the drain.
async fn send_and_drain(h: &Harness, prefix: &str, first: usize, alerts: usize, per_service: usize) -> Result<f64> {
    let started = Instant::now();
    let bodies: Vec<Vec<u8>> = (first..first + alerts)
        .collect::<Vec<_>>()
        .chunks(PER_WEBHOOK)
        .map(|ns| {
            let alerts: Vec<_> = ns.iter().map(|&n| alert(prefix, n / per_service, n)).collect();
            serde_json::to_vec(&serde_json::json!({"version": "4", "receiver": "cairn", "status": "firing", "alerts": alerts})).unwrap()
        })
        .collect();
    let mut next = bodies.into_iter();
    let mut senders = tokio::task::JoinSet::new();
    let work = std::sync::Arc::new(std::sync::Mutex::new(std::iter::from_fn(move || next.next())));
    for _ in 0..SENDERS {
        let (client, url, work) = (h.client.clone(), format!("http://{}/api/v1/alerts/alertmanager", h.http), work.clone());
        senders.spawn(async move {
            loop {
                let Some(body) = work.lock().unwrap().next() else { return Ok::<_, anyhow::Error>(()) };
                loop {
                    let resp = client
                        .post(&url)
                        .bearer_auth(cairn_testkit::token_of(cairn_testkit::SENDER))
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    match resp.status().as_u16() {
                        200 => break,
                        503 => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => bail!("webhook answered {other}: {}", resp.text().await.unwrap_or_default()),
                    }
                }
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while h.engine().store().pending_intake_len()? > 0 {
        if Instant::now() > deadline {
            bail!("the analysis worker did not drain in 30 min");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(alerts as f64 / started.elapsed().as_secs_f64())
}

/// Latencies of one kind of call on one server.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn summary(&mut self) -> (Duration, Duration) {
        self.0.sort();
        (load::percentile(&self.0, 0.5), load::percentile(&self.0, 0.99))
    }
}

const CALLS: [&str; 6] = [
    "decision card",
    "review list (pending, 100)",
    "list by service",
    "audit query by kind (100)",
    "audit query by recommendation",
    "a new decision visible",
];

/// What the calls on one server need: a recommendation to show, services to list, a live stream.
struct Target<'a> {
    h: &'a Harness,
    prefix: &'static str,
    services: usize,
    review: cairn_testkit::Review,
    audit: cairn_testkit::Audit,
    ids: Vec<String>,
    watch: tonic::Streaming<pb::WatchEvent>,
    fresh: usize,
    samples: Vec<Samples>,
}

impl<'a> Target<'a> {
    async fn new(h: &'a Harness, prefix: &'static str, services: usize) -> Result<Target<'a>> {
        let mut review = h.review("user:alice").await;
        let audit = h.audit("user:alice").await;
        let ids: Vec<String> = review
            .list_recommendations(pb::ListRecommendationsRequest { limit: 1000, ..Default::default() })
            .await?
            .into_inner()
            .recommendations
            .into_iter()
            .filter_map(|v| v.recommendation.map(|r| r.id))
            .collect();
        if ids.is_empty() {
            bail!("{prefix}: no recommendations to show");
        }
        let head = h.engine().store().audit_head()?;
        let watch = review.watch_recommendations(pb::WatchRequest { after_cursor: head }).await?.into_inner();
        Ok(Target {
            h,
            prefix,
            services,
            review,
            audit,
            ids,
            watch,
            fresh: 0,
            samples: (0..CALLS.len()).map(|_| Samples::default()).collect(),
        })
    }

    /// Makes each kind of call `n` times, timing each.
    async fn round(&mut self, n: usize) -> Result<()> {
        for i in 0..n {
            let id = self.ids[(i * 7919) % self.ids.len()].clone();
            let t = Instant::now();
            self.review.get_decision_card(pb::GetDecisionCardRequest { recommendation_id: id.clone(), revision: 0 }).await?;
            self.samples[0].0.push(t.elapsed());

            let t = Instant::now();
            let req = pb::ListRecommendationsRequest { state: "pending_approval".into(), limit: 100, ..Default::default() };
            self.review.list_recommendations(req).await?;
            self.samples[1].0.push(t.elapsed());

            let service = format!("{}-{}", self.prefix, (i * 104_729) % self.services);
            let t = Instant::now();
            self.review.list_recommendations(pb::ListRecommendationsRequest { service, ..Default::default() }).await?;
            self.samples[2].0.push(t.elapsed());

            let t = Instant::now();
            self.audit.query(pb::AuditQueryRequest { kind: "decision.made".into(), limit: 100, ..Default::default() }).await?;
            self.samples[3].0.push(t.elapsed());

            let t = Instant::now();
            self.audit.query(pb::AuditQueryRequest { recommendation_id: id, ..Default::default() }).await?;
            self.samples[4].0.push(t.elapsed());
        }
        // A new decision visible: one fresh alert on a new service, from its webhook being sent to
        // the live stream carrying the decision. Fewer of these: each one adds a recommendation.
        for _ in 0..n.div_ceil(10) {
            self.fresh += 1;
            let body = serde_json::json!({"version": "4", "receiver": "cairn", "status": "firing",
                "alerts": [alert(&format!("{}-visible", self.prefix), self.fresh, self.fresh)]});
            let before = self.h.engine().store().audit_head()?;
            let t = Instant::now();
            let (status, msg) = self.h.webhook(&body).await;
            if status != 200 {
                bail!("webhook answered {status}: {msg}");
            }
            loop {
                let Some(ev) = tokio::time::timeout(Duration::from_secs(30), self.watch.next()).await? else {
                    bail!("the live stream ended");
                };
                let ev = ev?;
                if ev.cursor > before && ev.kind == "decision.made" {
                    break;
                }
            }
            self.samples[5].0.push(t.elapsed());
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "machine: {cores} cores; full store: {} alerts on {} services; {} calls of each kind per server in {} rounds",
        args.alerts, args.services, args.calls, args.rounds
    );
    let empty = Harness::start().await;
    let full = Harness::start().await;

    // A little on the empty store so that its calls have something to return.
    send_and_drain(&empty, "svc", 0, 300, 3).await?;
    let per_service = args.alerts.div_ceil(args.services);
    let fill_started = Instant::now();
    let mut sent = 0;
    while sent < args.alerts {
        let n = args.chunk.min(args.alerts - sent);
        let rate = send_and_drain(&full, "svc", sent, n, per_service).await?;
        sent += n;
        println!("fill: alerts {:>6}..{:<6} analysed at {rate:>5.0} alerts/s", sent - n, sent);
    }
    let stored = full.engine().store().list_recommendations(&cairn_store::RecommendationFilter::default())?.len();
    println!("filled in {:.0} s: {stored} recommendations stored", fill_started.elapsed().as_secs_f64());

    let mut targets = [Target::new(&empty, "svc", 100).await?, Target::new(&full, "svc", args.services).await?];
    let mut rates = [Vec::new(), Vec::new()];
    let per_round = args.calls.div_ceil(args.rounds);
    for round in 0..args.rounds {
        // Alternate which server goes first, so neither always runs on a warmer machine.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = &mut targets[i];
            t.round(per_round).await?;
            // Fresh services each round: each probe opens new incidents, as the fill's first pass did.
            let prefix = format!("probe{round}");
            rates[i].push(send_and_drain(t.h, &prefix, 0, args.probe_alerts, 3).await?);
        }
    }

    println!("\n| call | empty p50 | empty p99 | full p50 | full p99 | full / empty p50 | full / empty p99 |");
    println!("|---|---|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (k, name) in CALLS.iter().enumerate() {
        let (e50, e99) = targets[0].samples[k].summary();
        let (f50, f99) = targets[1].samples[k].summary();
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}x | {:.2}x |",
            ms(e50),
            ms(e99),
            ms(f50),
            ms(f99),
            ms(f50) / ms(e50),
            ms(f99) / ms(e99)
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (e, f) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "\nanalysis of fresh alerts (median of {} probes of {} each): empty {e:.0} alerts/s, full {f:.0} alerts/s, full / empty {:.2}",
        args.rounds,
        args.probe_alerts,
        f / e
    );
    drop(targets);
    let (mut empty, mut full) = (empty, full);
    empty.stop().await;
    full.stop().await;
    Ok(())
}
