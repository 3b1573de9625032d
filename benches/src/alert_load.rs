//! An Alertmanager webhook load generator: concurrent senders post webhooks of fresh alerts (unique
//! label sets and fingerprints, so none is a duplicate) to an in-process Cairn on loopback, as fast
//! as they are answered, for a fixed time.
//!
//! Prints: alerts/s acknowledged (HTTP 200), p50 / p99 / max request latency, and alerts/s analysed
//! (acknowledged alerts stored and correlated, including the time for the worker to catch up),
//! with the incident changes stored and the recommendation revisions routed on the way (the work
//! per incident, beside the work per alert).
//!
//! With `--target both` the same stream (same senders, alerts per request and label sets) also goes
//! to a real Alertmanager on loopback (`POST /api/v2/alerts`), started here with a temporary store
//! and a route that notifies nobody, and stopped when its run ends (killed on drop). Runs alternate
//! which goes first, and each prints Alertmanager's accepted alerts/s beside Cairn's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The allocator `cairn serve` runs with, so that the in-process Cairn measured here is that one.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(about = "Send Alertmanager webhook load to an in-process Cairn, and the same stream to Alertmanager")]
struct Args {
    /// Leave jemalloc's background threads off (`cairn` starts them), to measure what they change.
    #[arg(long)]
    no_allocator_background: bool,
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
    /// Where the stream goes: Cairn, a real Alertmanager, or both in alternated runs.
    #[arg(long, value_enum, default_value_t = TargetArg::Cairn)]
    target: TargetArg,
    /// Runs of each target (with `--target both`, alternating which goes first).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The Alertmanager binary.
    #[arg(long, default_value = "/usr/bin/prometheus-alertmanager")]
    alertmanager: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum TargetArg {
    Cairn,
    Alertmanager,
    Both,
}

/// One alert of the stream as JSON; the same label set whichever way it is sent. `alert_id` makes
/// the label set unique, as Alertmanager identifies an alert by its labels.
fn alert_json(sender: usize, i: u64, k: usize, args: &Args, with_fingerprint: bool) -> String {
    let fp = format!("{sender:03}{i:09}{k:03}");
    let service = (i as usize * args.alerts_per_request + k) % args.services;
    let labels = format!(
        r#"{{"alertname":"HighErrorRate","service":"svc-{service}","env":"staging","severity":"warning","alert_id":"{fp}"}}"#
    );
    let common = format!(r#""labels":{labels},"annotations":{{"summary":"errors above 5%"}},"startsAt":"2026-11-24T10:00:00Z","generatorURL":"""#);
    if with_fingerprint {
        format!(r#"{{"status":"firing",{common},"endsAt":"0001-01-01T00:00:00Z","fingerprint":"{fp}"}}"#)
    } else {
        format!("{{{common}}}")
    }
}

/// Where a run sends, and how its requests are built.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Cairn,
    Alertmanager,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Cairn => "cairn",
            Target::Alertmanager => "alertmanager",
        }
    }

    /// Cairn takes Alertmanager's webhook; Alertmanager takes its v2 API's array of alerts.
    fn body(self, sender: usize, i: u64, args: &Args) -> String {
        let webhook = self == Target::Cairn;
        let alerts: Vec<String> = (0..args.alerts_per_request).map(|k| alert_json(sender, i, k, args, webhook)).collect();
        if webhook {
            format!(r#"{{"version":"4","receiver":"cairn","status":"firing","alerts":[{}]}}"#, alerts.join(","))
        } else {
            format!("[{}]", alerts.join(","))
        }
    }
}

/// What one run measured.
struct Sent {
    acked: u64,
    refused: u64,
    secs: f64,
    lat: Vec<Duration>,
}

impl Sent {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.secs
    }

    fn print(&self, what: &str) {
        println!(
            "  {what}: {} alerts in {:.1} s = {:.0} alerts/s ({} requests refused with 503); per request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.acked,
            self.secs,
            self.rate(),
            self.refused,
            load::percentile(&self.lat, 0.5).as_secs_f64() * 1e3,
            load::percentile(&self.lat, 0.99).as_secs_f64() * 1e3,
            self.lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
}

/// Concurrent senders post the stream to `url` until the time is up; a 503 is counted and retried
/// after 20 ms, anything else but 200 stops the run.
async fn send(target: Target, url: &str, args: &Arc<Args>) -> Result<Sent> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for sender in 0..args.concurrency {
        let (client, url, args, acked, refused) = (client.clone(), url.to_string(), args.clone(), acked.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                let body = target.body(sender, i, &args);
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
                    other => panic!("unexpected answer from {}: {other:?}", target.name()),
                }
            }
            lat
        }));
    }
    let lat = load::latencies(tasks).await?;
    Ok(Sent { acked: acked.load(Ordering::Relaxed), refused: refused.load(Ordering::Relaxed), secs: started.elapsed().as_secs_f64(), lat })
}

/// One run against a fresh in-process Cairn: what was acknowledged, and the analysed alerts/s.
async fn run_cairn(args: &Arc<Args>) -> Result<(Sent, f64)> {
    let dir = tempfile::tempdir()?;
    let cfg = cairn_server::config::ServerConfig {
        http_addr: ([127, 0, 0, 1], 0).into(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await?;
    let url = format!("http://{}/api/v1/alerts/alertmanager", server.http_addr);
    let started = Instant::now();
    let sent = send(Target::Cairn, &url, args).await?;
    // Analysed: every acknowledged alert taken from the intake journal by the analysis worker,
    // which removes a batch only once it is stored.
    let engine = server.engine.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    // Counted from the journal's index in memory (a SQL count of a full journal every 20 ms took
    // 3-7% of this 2-core machine's samples). Not polled by taking the oldest row: that took it
    // from the rows the journal holds decoded for the worker, which then read the rest of the
    // backlog from the file again.
    while engine.store().pending_intake_len()? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let analysed_secs = started.elapsed().as_secs_f64();
    let analysed = sent.acked - engine.store().pending_intake_len()?;
    sent.print("cairn acknowledged");
    println!("  cairn analysed: {analysed} alerts stored in {analysed_secs:.1} s = {:.0} alerts/s", analysed as f64 / analysed_secs);
    let metrics = reqwest::get(format!("http://{}/metrics", server.http_addr)).await?.text().await?;
    let (p50, p99) = (delay_bound(&metrics, 0.5), delay_bound(&metrics, 0.99));
    println!("  cairn acknowledged → analysed (cairn_alert_analysis_delay_seconds): p50 ≤ {p50} s, p99 ≤ {p99} s");
    println!(
        "  cairn stored {} incident changes and routed {} recommendation revisions",
        sum_of(&metrics, "cairn_incident_updates_total"),
        sum_of(&metrics, "cairn_recommendations_total")
    );
    server.shutdown().await;
    Ok((sent, analysed as f64 / analysed_secs))
}

/// The upper bound of the histogram bucket holding quantile `q` of
/// `cairn_alert_analysis_delay_seconds`, from Prometheus's text exposition (`?` when absent).
fn delay_bound(metrics: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("cairn_alert_analysis_delay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_string(), rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| le.clone()).unwrap_or_else(|| "?".into())
}

/// The sum of every sample of metric `name` in Prometheus's text exposition.
fn sum_of(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A real Alertmanager on loopback, killed (and reaped) when dropped, so that no run leaves one.
struct Alertmanager {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one with a temporary store, a route to a receiver that notifies nobody, no cluster,
    /// and a free port; waits (at most 10 s) until it answers ready.
    async fn start(binary: &std::path::Path) -> Result<Alertmanager> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let am = Alertmanager { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if client.get(format!("{}/-/ready", am.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(am);
            }
            if Instant::now() > deadline {
                bail!("Alertmanager at {} was not ready within 10 s", am.base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run against a fresh Alertmanager: what it accepted.
async fn run_alertmanager(args: &Arc<Args>) -> Result<Sent> {
    let am = Alertmanager::start(&args.alertmanager).await?;
    let sent = send(Target::Alertmanager, &format!("{}/api/v2/alerts", am.base), args).await?;
    sent.print("alertmanager accepted");
    Ok(sent)
}

fn main() -> Result<()> {
    let args = Args::parse();
    load::allocator_background(args.no_allocator_background)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(Arc::new(args)))
}

async fn run(args: Arc<Args>) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "machine: {cores} cores; load: {} senders, {} alerts per webhook over {} services, {} s per run",
        args.concurrency, args.alerts_per_request, args.services, args.seconds
    );
    let mut rows = Vec::new();
    for round in 0..args.rounds {
        println!("round {}", round + 1);
        let (mut am, mut cairn) = (None, None);
        let alertmanager_first = round % 2 == 0;
        for first in [true, false] {
            let alertmanager_now = first == alertmanager_first;
            match args.target {
                TargetArg::Alertmanager | TargetArg::Both if alertmanager_now => am = Some(run_alertmanager(&args).await?.rate()),
                TargetArg::Cairn | TargetArg::Both if !alertmanager_now => cairn = Some(run_cairn(&args).await?),
                _ => {}
            }
        }
        rows.push((am, cairn.map(|(sent, analysed)| (sent.rate(), analysed))));
    }
    if args.target == TargetArg::Both {
        println!("alerts/s   alertmanager accepted | cairn acknowledged (×AM) | cairn analysed (×AM)");
        for (am, cairn) in rows.iter().filter_map(|(a, c)| Some((a.as_ref()?, c.as_ref()?))) {
            let (acked, analysed) = cairn;
            println!("           {am:>21.0} | {acked:>12.0} ({:>4.2}×) | {analysed:>10.0} ({:>4.2}×)", acked / am, analysed / am);
        }
    }
    Ok(())
}
