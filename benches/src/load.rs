//! What the load generators share: collecting the senders' latencies and reading percentiles.

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
