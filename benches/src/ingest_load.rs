//! A remote_write load generator: real snappy-compressed protobuf bodies with realistic label sets,
//! sent over HTTP to a Cairn server, next to a decode-only run on the same bodies.
//!
//! Prints: samples/s accepted (HTTP 204), p50 and p99 request latency, samples/s ingested and
//! scored (including the time for the analysis queue to drain), the server's resident memory when
//! it runs in-process, and decode-only samples/s on one core with the ratio between the two.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::{Context, Result, bail};
use cairn_ingest::prompb::{Label, Sample, TimeSeries, WriteRequest};
use clap::Parser;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Send remote_write load to Cairn and compare with decode-only throughput")]
struct Args {
    /// A running Cairn's HTTP base URL; default: start one in-process on loopback.
    #[arg(long)]
    url: Option<String>,
    /// Distinct series.
    #[arg(long, default_value_t = 20_000)]
    series: usize,
    /// Series per request (Prometheus's max_samples_per_send is 2000 by default).
    #[arg(long, default_value_t = 500)]
    series_per_request: usize,
    /// Samples per series per request.
    #[arg(long, default_value_t = 4)]
    samples_per_series: usize,
    /// Concurrent senders (Prometheus shards).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long to send, in seconds (at most; it stops early when the bodies run out).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of bodies to pre-encode; each round covers every series once with new timestamps.
    #[arg(long, default_value_t = 40)]
    rounds: i64,
}

const JOBS: [&str; 5] = ["api", "checkout", "search", "payments", "node"];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 5] = ["200", "201", "404", "500", "503"];

fn labels_for(i: usize) -> Vec<Label> {
    let l = |n: &str, v: String| Label { name: n.into(), value: v };
    let job = JOBS[i % JOBS.len()];
    let mut v = vec![
        l("__name__", if i.is_multiple_of(3) { "http_requests_total" } else { "http_request_duration_seconds_sum" }.into()),
        l("code", CODES[(i / 7) % CODES.len()].into()),
        l("env", "production".into()),
        l("instance", format!("{job}-{}.prod.example.net:9100", (i / 35) % 200)),
        l("job", job.into()),
        l("method", METHODS[(i / 5) % METHODS.len()].into()),
        l("path", format!("/api/v1/resource/{}", i % 97)),
        l("region", ["eu-west-1", "us-east-1", "ap-south-1"][i % 3].into()),
        l("service", job.into()),
    ];
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Bodies covering every series once per "round"; `round` shifts timestamps forward so each round
/// is new data for the detector.
fn bodies(args: &Args, round: i64) -> Vec<(Vec<u8>, u64)> {
    let base = 1_800_000_000_000i64 + round * 60_000;
    (0..args.series)
        .collect::<Vec<_>>()
        .chunks(args.series_per_request)
        .map(|chunk| {
            let req = WriteRequest {
                timeseries: chunk
                    .iter()
                    .map(|&i| TimeSeries {
                        labels: labels_for(i),
                        samples: (0..args.samples_per_series)
                            .map(|j| Sample {
                                value: 100.0 + ((i * 31 + j * 17) % 13) as f64,
                                timestamp: base + j as i64 * 15_000,
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let n = (chunk.len() * args.samples_per_series) as u64;
            (snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap(), n)
        })
        .collect()
}

/// Samples per second of `f` over the bodies in order, for about three seconds on this thread.
fn per_second(all: &[(Vec<u8>, u64)], mut f: impl FnMut(&[u8]) -> Result<usize>) -> Result<f64> {
    let t = Instant::now();
    let (mut n, mut i) = (0usize, 0usize);
    while t.elapsed() < Duration::from_secs(3) {
        n += f(&all[i % all.len()].0)?;
        i += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The detector alone, on one rayon thread, over the bodies taken in order (each round is new data
/// for every series), with the server's default configuration. Each body is decoded just before,
/// outside the timed part, so the decoded batches need not all be held at once.
fn scoring_only(all: &[(Vec<u8>, u64)], limits: &cairn_ingest::IngestLimits) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| {
        let mut detector = cairn_detect::Detector::new(cairn_detect::DetectorConfig::default());
        let (mut busy, mut n) = (Duration::ZERO, 0usize);
        for (body, _) in all {
            let batch = cairn_ingest::decode_remote_write(Some("snappy"), None, body, limits)?;
            let t = Instant::now();
            std::hint::black_box(detector.observe(&batch));
            busy += t.elapsed();
            n += batch.len();
            if busy > Duration::from_secs(3) {
                break;
            }
        }
        Ok(n as f64 / busy.as_secs_f64())
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.series_per_request * args.samples_per_series > cairn_ingest::IngestLimits::default().max_samples_per_request {
        bail!("series_per_request × samples_per_series is over Cairn's default per-request sample limit");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let (base, server) = match &args.url {
        Some(u) => (u.trim_end_matches('/').to_string(), None),
        None => {
            let mut cfg = cairn_server::config::ServerConfig {
                http_addr: ([127, 0, 0, 1], 0).into(),
                grpc_addr: ([127, 0, 0, 1], 0).into(),
                data_dir: dir.path().join("data"),
                ..Default::default()
            };
            cfg.ingest.queue_capacity = 64;
            let s = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await?;
            (format!("http://{}", s.http_addr), Some(s))
        }
    };
    println!(
        "machine: {cores} cores; load: {} series × {} samples per request body, {} series per body, {} senders, {} s",
        args.series, args.samples_per_series, args.series_per_request, args.concurrency, args.seconds
    );

    // Pre-encode enough rounds that senders never resend the same timestamps within a run.
    let rounds: Vec<Vec<(Vec<u8>, u64)>> = (0..args.rounds).map(|r| bodies(&args, r)).collect();
    let all: Arc<Vec<(Vec<u8>, u64)>> = Arc::new(rounds.into_iter().flatten().collect());
    let body_bytes: usize = all.iter().map(|b| b.0.len()).sum::<usize>() / all.len();
    println!("bodies: {} pre-encoded, {} bytes each on average (snappy)", all.len(), body_bytes);

    // Decode-only, one core, same bodies; and the parts of it, to see where the time goes.
    let limits = cairn_ingest::IngestLimits::default();
    let decode_rate = per_second(&all, |b| {
        Ok(cairn_ingest::decode_remote_write(Some("snappy"), Some("application/x-protobuf"), b, &limits)
            .context("decode")?
            .len())
    })?;
    let prost_rate = per_second(&all, |b| {
        let mut raw = vec![0u8; snap::raw::decompress_len(b)?];
        snap::raw::Decoder::new().decompress(b, &mut raw)?;
        Ok(WriteRequest::decode(raw.as_slice())?.timeseries.iter().map(|t| t.samples.len()).sum())
    })?;
    let scoring_rate = scoring_only(&all, &limits)?;

    // HTTP load.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(args.concurrency).build()?;
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, all, next, accepted, retried, url) =
            (client.clone(), all.clone(), next.clone(), accepted.clone(), retried.clone(), format!("{base}/api/v1/write"));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < stop_at {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                if k >= all.len() {
                    break;
                }
                let (body, n) = &all[k];
                loop {
                    let t = Instant::now();
                    let r = load::remote_write(&client, &url, body.clone()).send().await;
                    lat.push(t.elapsed());
                    match r.map(|r| r.status().as_u16()) {
                        Ok(204) => {
                            accepted.fetch_add(*n, Ordering::Relaxed);
                            break;
                        }
                        Ok(503) => {
                            // What Prometheus does: back off and resend the same body.
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
            }
            lat
        }));
    }
    let lat = load::latencies(tasks).await?;
    let send_secs = started.elapsed().as_secs_f64();
    // Ingested and scored: wait for the analysis queue to drain.
    while load::metric(&client, &base, "cairn_ingest_queue_depth").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scored_secs = started.elapsed().as_secs_f64();
    let acc = accepted.load(Ordering::Relaxed) as f64;
    let http_rate = acc / send_secs;
    let scored_rate = acc / scored_secs;
    println!("\nresults");
    println!("  decode only (1 core)            {:>12.0} samples/s", decode_rate);
    println!("    for comparison: snappy + prost WriteRequest::decode alone (1 core) {:>10.0} samples/s", prost_rate);
    println!("    detector alone on decoded batches (1 core)                {:>10.0} samples/s", scoring_rate);
    println!("  accepted over HTTP ({cores} cores)     {:>12.0} samples/s  ({} requests, {} retried after 503)", http_rate, lat.len(), retried.load(Ordering::Relaxed));
    println!("  ingested and scored ({cores} cores)    {:>12.0} samples/s  ({:.0} per core)", scored_rate, scored_rate / cores as f64);
    println!("  request latency                 p50 {:?}  p99 {:?}", load::percentile(&lat, 0.5), load::percentile(&lat, 0.99));
    println!("  ratio scored / decode-only      {:.2}", scored_rate / decode_rate);
    match (&server, load::rss_mib()) {
        (Some(_), Some(rss)) => println!("  resident memory (server + generator) {rss:.0} MiB"),
        _ => println!("  resident memory: not measured for a remote server"),
    }
    if let Some(s) = server {
        s.shutdown().await;
    }
    Ok(())
}
