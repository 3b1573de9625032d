//! What an active series costs in memory: the resident memory of a Cairn server before and after it
//! is given state for many new series over remote_write, divided by the number of series.
//!
//! The server runs in this process (so `VmRSS` is read without a second program in between), on
//! its default configuration with `detect.max_series` set to the total. Request bodies are encoded
//! as they are sent, a few at a time, so the generator's own memory stays flat. First a warm-up set
//! of series brings the runtime, the allocator's arenas and the store to their working size; then
//! the new series are sent in two halves, each twice (a first sample, then a second), and memory is
//! read once the analysis queue is empty and the detector holds every series sent. Prints bytes per
//! series as resident memory sees it over the second half (the cost of one more series, once the
//! transient buffers reached their peak in the first) and over all new series, and as the detector
//! accounts for its own allocations (`cairn_detector_memory_bytes`).
//!
//! Resident memory includes pages the server has freed and jemalloc has not yet returned (its dirty
//! pages: the ingest queue's decoded batches, mostly). jemalloc returns a dirty page once it is
//! `dirty_decay_ms` (10 s) old, but only when the arena holding it allocates or frees again, so the
//! idle server of this bench would hold them for good and a busy one holds those of the last
//! seconds. Each reading also takes them from jemalloc (`stats.arenas.<all>.pdirty`; `muzzy_decay_ms`
//! is 0, so there are no muzzy pages) and prints the figures without them: the memory held for
//! live data, which is what `cairn serve` keeps once the burst's buffers are returned. Nothing here
//! purges or changes the allocator's settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::{Result, bail};
use cairn_ingest::prompb::{Label, Sample, TimeSeries, WriteRequest};
use clap::Parser;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The allocator `cairn serve` runs with: resident memory is the allocator's as much as ours.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(about = "Measure the resident memory of a Cairn server per active series")]
struct Args {
    /// Leave jemalloc's background threads off (`cairn` starts them), to measure what they change.
    #[arg(long)]
    no_allocator_background: bool,
    /// New series measured.
    #[arg(long, default_value_t = 198_000)]
    series: usize,
    /// Series sent first, before the baseline is read.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Series per request body.
    #[arg(long, default_value_t = 500)]
    series_per_request: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// A kube-prometheus-like label set, unique per `i`.
fn labels(i: usize) -> Vec<Label> {
    let l = |n: &str, v: String| Label { name: n.into(), value: v };
    let mut v = vec![
        l("__name__", ["container_cpu_usage_seconds_total", "http_requests_total", "node_filesystem_avail_bytes"][i % 3].into()),
        l("container", format!("app-{}", i % 40)),
        // A hundred nodes: per-host state (the multivariate models' groups) stays small, as on a
        // cluster, and what is measured is the per-series state.
        l("instance", format!("10.0.0.{}:9100", i % 100)),
        l("job", ["kubelet", "api", "node-exporter"][i % 3].into()),
        l("namespace", format!("team-{}", i % 25)),
        l("pod", format!("app-{}-{:08x}", i % 40, i)),
    ];
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn body(series: std::ops::Range<usize>, round: i64) -> Vec<u8> {
    let ts = 1_800_000_000_000i64 + round * 60_000;
    let req = WriteRequest {
        timeseries: series
            .map(|i| TimeSeries {
                labels: labels(i),
                samples: vec![Sample { value: (i % 1000) as f64 + round as f64, timestamp: ts }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// Sends every series in `range` once, at `round`'s timestamp, resending on 503 as Prometheus does.
async fn send(client: &reqwest::Client, url: &str, range: std::ops::Range<usize>, round: i64, args: &Args) -> Result<()> {
    let starts: Arc<Vec<usize>> = Arc::new(range.clone().step_by(args.series_per_request).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, starts, next, per, end) =
            (client.clone(), url.to_string(), starts.clone(), next.clone(), args.series_per_request, range.end);
        tasks.push(tokio::spawn(async move {
            while let Some(&start) = starts.get(next.fetch_add(1, Ordering::Relaxed)) {
                let bytes = body(start..(start + per).min(end), round);
                loop {
                    let r = load::remote_write(&client, &url, bytes.clone()).send().await?;
                    match r.status().as_u16() {
                        204 => break,
                        503 => tokio::time::sleep(Duration::from_millis(20)).await,
                        s => bail!("unexpected answer {s}"),
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// How long the server is left idle before the last reading: past jemalloc's 10 s decay.
const IDLE_SECS: u64 = 15;

/// Memory at one point of the run.
#[derive(Clone, Copy)]
struct Reading {
    /// The process's resident set.
    rss: u64,
    /// Of which jemalloc's dirty pages: freed, not yet returned to the system.
    dirty: u64,
    /// `cairn_detector_memory_bytes`.
    detector: f64,
}

impl Reading {
    async fn take(client: &reqwest::Client, base: &str) -> Result<Reading> {
        let detector = load::metric(client, base, "cairn_detector_memory_bytes").await;
        Ok(Reading { rss: load::rss_bytes().unwrap_or(0), dirty: allocator_dirty_bytes()?, detector })
    }

    fn live(&self) -> f64 {
        self.rss as f64 - self.dirty as f64
    }
}

/// Bytes in jemalloc's dirty pages, over all arenas (index 4096 is `MALLCTL_ARENAS_ALL`).
fn allocator_dirty_bytes() -> Result<u64> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let failed = |what: &str, e: tikv_jemalloc_ctl::Error| anyhow::anyhow!("jemalloc's {what} could not be read: {e}");
    // The statistics are a snapshot taken at each new epoch.
    tikv_jemalloc_ctl::epoch::advance().map_err(|e| failed("epoch", e))?;
    let pages: usize = b"stats.arenas.4096.pdirty\0".name().read().map_err(|e| failed("pdirty", e))?;
    let page: usize = b"arenas.page\0".name().read().map_err(|e| failed("page size", e))?;
    Ok((pages * page) as u64)
}

/// Waits until the analysis queue is empty and the detector holds `series` series.
async fn settle(client: &reqwest::Client, base: &str, series: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let depth = load::metric(client, base, "cairn_ingest_queue_depth").await;
        let active = load::metric(client, base, "cairn_detector_active_series").await as usize;
        if depth == 0.0 && active == series {
            // Let the last batch's buffers go back to the allocator before reading.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server did not settle: queue depth {depth}, {active} of {series} series active");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    load::allocator_background(args.no_allocator_background)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let total = args.warmup + args.series;
    let mut cfg = cairn_server::config::ServerConfig {
        http_addr: ([127, 0, 0, 1], 0).into(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    cfg.detect.max_series = total;
    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await?;
    let base = format!("http://{}", server.http_addr);
    let url = format!("{base}/api/v1/write");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "machine: {cores} cores; {} warm-up series, then {} new series, {} per body",
        args.warmup, args.series, args.series_per_request
    );

    for round in 0..2 {
        send(&client, &url, 0..args.warmup, round, &args).await?;
    }
    settle(&client, &base, args.warmup).await?;
    let mut reading = vec![Reading::take(&client, &base).await?];

    // The new series in two halves: the second half's growth is the cost of a series alone, once
    // the first half has brought the queue's and the allocator's transient buffers to their peak.
    let half = args.warmup + args.series / 2;
    let t = Instant::now();
    for range in [args.warmup..half, half..total] {
        for round in 0..2 {
            send(&client, &url, range.clone(), round, &args).await?;
        }
        settle(&client, &base, range.end).await?;
        if range.end == half {
            reading.push(Reading::take(&client, &base).await?);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    reading.push(Reading::take(&client, &base).await?);
    let groups = load::metric(&client, &base, "cairn_multivariate_groups").await;

    let [r0, r_half, r1] = reading[..] else { unreachable!("three readings") };
    let mib = |b: f64| b / 1048576.0;
    let n = args.series as f64;
    let second = (total - half) as f64;
    println!("\nresults ({total} series active; the new ones sent and scored in {secs:.1} s)");
    println!(
        "  resident memory   {:>7.1} MiB after warm-up, {:>7.1} MiB at half, {:>7.1} MiB at the end",
        mib(r0.rss as f64),
        mib(r_half.rss as f64),
        mib(r1.rss as f64)
    );
    println!(
        "    of which freed, not yet returned  {:>5.1} MiB, {:>7.1} MiB, {:>7.1} MiB (jemalloc's dirty pages)",
        mib(r0.dirty as f64),
        mib(r_half.dirty as f64),
        mib(r1.dirty as f64)
    );
    println!("  per series, resident, second half   {:>7.0} bytes", (r1.rss as f64 - r_half.rss as f64) / second);
    println!(
        "  per series, resident, all new       {:>7.0} bytes (includes the transient peak of the queue)",
        (r1.rss as f64 - r0.rss as f64) / n
    );
    println!("  per series, live, second half       {:>7.0} bytes (resident less dirty pages)", (r1.live() - r_half.live()) / second);
    println!("  per series, live, all new           {:>7.0} bytes", (r1.live() - r0.live()) / n);
    println!(
        "  per series, detector's own          {:>7.0} bytes (cairn_detector_memory_bytes, all {total})",
        r1.detector / total as f64
    );
    println!("    of which the new series           {:>7.0} bytes", (r1.detector - r0.detector) / n);
    println!("  multivariate groups tracked         {groups:>7.0}");
    // Idle for longer than jemalloc's dirty_decay_ms (10 s): what `cairn serve` holds once the
    // burst is over. Its background threads return the freed pages; without them the pages stay.
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let idle = Reading::take(&client, &base).await?;
    println!(
        "  after {IDLE_SECS} s idle: resident {:>7.1} MiB, of which freed, not yet returned {:>5.1} MiB; per series, resident, all new {:>7.0} bytes",
        mib(idle.rss as f64),
        mib(idle.dirty as f64),
        (idle.rss as f64 - r0.rss as f64) / n
    );
    server.shutdown().await;
    Ok(())
}
