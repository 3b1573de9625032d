//! Health gauges that start out down: a series whose name says it reports reachability or
//! readiness (`up`, `probe_success`, `pg_up` and the like of other exporters,
//! `kube_pod_status_ready{condition="true"}`, `kube_pod_container_status_ready`) and that has read 0
//! from its very first sample for [`DOWN_FOR_MS`] is a target that never came up, a pod that never
//! became ready: the replacement pods of a failed node stuck in Pending, the new pods of a bad
//! release. The statistical model cannot see it, since a series that has always been constant is,
//! for it, normal (and must stay so: a fresh `up` series at 1 is no news).
//!
//! No state of its own: the model's counters say whether the series has always been constant.

use crate::univariate::SeriesModel;
use cairn_types::SeriesSamples;

/// How long a health gauge must have read 0 from its start before it is an anomaly: longer than a
/// pod's ordinary start-up, shorter than `KubePodNotReady`'s 15 minutes.
pub const DOWN_FOR_MS: i64 = 5 * 60_000;

/// Whether the series is a health gauge for which 0 means down.
pub fn is_health_gauge(series: &SeriesSamples<'_>) -> bool {
    match series.label("__name__").unwrap_or("") {
        "up" | "probe_success" | "kube_pod_container_status_ready" => true,
        // The exporters' own "can I reach what I export" gauges. Named one by one: a suffix would
        // take in `node_network_up`, which reads 0 from the start on every unused interface.
        "pg_up" | "mysql_up" | "redis_up" | "mongodb_up" | "memcached_up" | "rabbitmq_up" | "nginx_up" | "haproxy_up" => true,
        // One series per condition: only the "true" one reads 0 when the pod is not ready.
        "kube_pod_status_ready" => series.label("condition").is_none_or(|c| c == "true"),
        _ => false,
    }
}

/// Whether the sample at `ts` (the last one taken, `previous_ms` the one before) is the moment a
/// health gauge that has read 0 since its first sample has been down for [`DOWN_FOR_MS`]: true once
/// per series.
pub fn down_since_start(series: &SeriesSamples<'_>, model: &SeriesModel, previous_ms: i64, ts: i64, value: f64) -> bool {
    let first = model.first_timestamp_ms();
    value == 0.0 && model.always_constant() && previous_ms - first < DOWN_FOR_MS && ts - first >= DOWN_FOR_MS && is_health_gauge(series)
}
