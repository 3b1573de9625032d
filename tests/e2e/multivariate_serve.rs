//! `serve` loads the shipped multivariate model and scores hosts online: samples sent through
//! remote_write, grouped by `instance`, raise an anomaly when one host's metrics stop agreeing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_detect::multivariate::synthetic::{host_rows, Break, HOST_FEATURES};
use cairn_testkit::*;

fn host_body(instance: &str, rows: &[[f64; 8]], start_ms: i64) -> Vec<u8> {
    let series: Vec<SeriesSpec> = (0..8)
        .map(|f| {
            (
                vec![("__name__", HOST_FEATURES[f]), ("instance", instance), ("job", "node")],
                rows.iter().enumerate().map(|(t, r)| (start_ms + 60_000 * t as i64, r[f])).collect(),
            )
        })
        .collect();
    remote_write_body(&series)
}

/// Anomalies recorded, and Cairn's `/metrics` text, after two hosts' samples.
async fn anomalies_after_sending(models_enabled: bool) -> (u64, String) {
    // The per-series detector is switched off (no score reaches 2.0), so every anomaly counted
    // here comes from the multivariate model.
    let mut h = Harness::start_with(|c| {
        c.detect.univariate.alert_score = 2.0;
        c.models.enabled = models_enabled;
    })
    .await;
    let start = now_ms() - 300 * 60_000;
    let (clean, _) = host_rows(300, 21, &[]);
    let (broken, _) = host_rows(300, 22, &[Break { start: 250, len: 20, feature: 0 }]);
    for body in [host_body("web-1:9100", &clean, start), host_body("web-2:9100", &broken, start)] {
        let (s, msg) = h.remote_write(body).await;
        assert_eq!(s, 204, "{msg}");
    }
    // Analysis runs behind a queue: give it a bounded time to drain.
    let mut n = 0;
    for _ in 0..100 {
        n = h.stored_rows("anomalies");
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let metrics = h.metrics_text().await;
    h.stop().await;
    (n, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_scores_hosts_with_the_shipped_model_and_records_the_anomaly() {
    let (with, metrics) = anomalies_after_sending(true).await;
    assert!((1..=3).contains(&with), "{with} anomalies with the model");
    // Operators see the hosts the model tracks and what it found.
    assert!(metrics.contains(r#"cairn_multivariate_groups{model="host-pca-kmeans/2"} 2"#), "{metrics}");
    let found = format!(r#"cairn_anomalies_total{{detector="multivariate-pca-kmeans",kind="correlation_break"}} {with}"#);
    assert!(metrics.contains(&found), "{metrics}");
    assert_eq!(anomalies_after_sending(false).await.0, 0, "without the model nothing else fires");
}
