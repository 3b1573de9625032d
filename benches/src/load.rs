//! What the load generators share: collecting the senders' latencies and reading percentiles, and
//! reading a server's metrics and this process's resident memory. Each generator uses a part.

#![allow(dead_code)]

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits for every sender and returns their latencies together, sorted.
pub async fn latencies(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    lat.sort();
    Ok(lat)
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// [`rss_bytes`] in MiB.
pub fn rss_mib() -> Option<f64> {
    rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

/// The sum of a metric's samples (every label set) on a Cairn's `/metrics`; 0 when unreachable.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else { return 0.0 };
    let text = resp.text().await.unwrap_or_default();
    text.lines().filter(|l| l.split(['{', ' ']).next() == Some(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A remote_write request of a snappy-compressed protobuf body, as Prometheus sends it.
pub fn remote_write(client: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    client.post(url).header("Content-Encoding", "snappy").header("Content-Type", "application/x-protobuf").body(body)
}

/// Starts jemalloc's background threads, as `cairn` does (crates/cairn-cli/src/main.rs), unless
/// `off` (to measure what they change).
pub fn allocator_background(off: bool) -> anyhow::Result<()> {
    tikv_jemalloc_ctl::background_thread::write(!off).map_err(|e| anyhow::anyhow!("jemalloc's background threads: {e}"))
}
