//! An Alertmanager webhook load generator: concurrent senders post webhooks of fresh alerts (unique
//! fingerprints, so none is a duplicate) to an in-process Cairn on loopback, as fast as they are
//! answered, for a fixed time.
//!
//! Prints: alerts/s acknowledged (HTTP 200), p50 / p99 / max request latency, and alerts/s analysed
//! (acknowledged alerts stored and correlated, including the time for the worker to catch up).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::Result;
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Send Alertmanager webhook load to an in-process Cairn")]
struct Args {
    /// Concurrent senders (Alertmanager replicas and groups in flight).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Alerts per webhook.
    #[arg(long, default_value_t = 10)]
    alerts_per_request: usize,
    /// Distinct services the alerts spread over (one incident each).
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn payload(sender: usize, i: u64, args: &Args) -> String {
    let alerts: Vec<String> = (0..args.alerts_per_request)
        .map(|k| {
            let fp = format!("{sender:03}{i:09}{k:03}");
            let service = (i as usize * args.alerts_per_request + k) % args.services;
            format!(
                r#"{{"status":"firing","labels":{{"alertname":"HighErrorRate","service":"svc-{service}","env":"staging","severity":"warning"}},"annotations":{{"summary":"errors above 5%"}},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"{fp}"}}"#
            )
        })
        .collect();
    format!(r#"{{"version":"4","receiver":"cairn","status":"firing","alerts":[{}]}}"#, alerts.join(","))
}


fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = cairn_server::config::ServerConfig {
        http_addr: ([127, 0, 0, 1], 0).into(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await?;
    let url = format!("http://{}/api/v1/alerts/alertmanager", server.http_addr);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "machine: {cores} cores; load: {} senders, {} alerts per webhook over {} services, {} s",
        args.concurrency, args.alerts_per_request, args.services, args.seconds
    );
    let args = Arc::new(args);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for sender in 0..args.concurrency {
        let (client, url, args, acked, refused) = (client.clone(), url.clone(), args.clone(), acked.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                let body = payload(sender, i, &args);
                i += 1;
                let t = Instant::now();
                let status = client.post(&url).header("Content-Type", "application/json").body(body).send().await.map(|r| r.status().as_u16());
                lat.push(t.elapsed());
                match status {
                    Ok(200) => {
                        acked.fetch_add(args.alerts_per_request as u64, Ordering::Relaxed);
                    }
                    Ok(503) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            lat
        }));
    }
    let lat = load::latencies(tasks).await?;
    let send_secs = started.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    // Analysed: every acknowledged alert taken from the intake journal by the analysis worker,
    // which removes a batch only once it is stored.
    let engine = server.engine.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while engine.store().pending_intake_len()? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let analysed_secs = started.elapsed().as_secs_f64();
    let analysed = acked - engine.store().pending_intake_len()?;
    println!(
        "acknowledged: {acked} alerts in {send_secs:.1} s = {:.0} alerts/s ({} requests refused with 503)",
        acked as f64 / send_secs,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "latency per webhook: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        load::percentile(&lat, 0.5).as_secs_f64() * 1e3,
        load::percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("analysed: {analysed} alerts stored in {analysed_secs:.1} s = {:.0} alerts/s", analysed as f64 / analysed_secs);
    server.shutdown().await;
    Ok(())
}
