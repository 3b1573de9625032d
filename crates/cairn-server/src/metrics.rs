//! Cairn's own health and governance series, exposed on `GET /metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every series Cairn exports. Registered once; cloned handles are cheap.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub samples_accepted: IntCounterVec,
    pub alerts_accepted: IntCounterVec,
    pub alerts_deduplicated: IntCounter,
    pub requests_rejected: IntCounterVec,
    pub requests_overloaded: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_depth: IntGauge,
    pub anomalies: IntCounter,
    pub incidents_changed: IntCounter,
    pub recommendations: IntCounterVec,
    pub policy_failures: IntCounter,
    pub reviews: IntCounterVec,
    pub executions: IntCounterVec,
    pub active_series: IntGauge,
    pub refused_points: IntCounterVec,
    pub analysis_failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            samples_accepted: IntCounterVec::new(
                Opts::new("cairn_ingest_samples_total", "Metric samples accepted, by source."),
                &["source"],
            )
            .expect("valid metric"),
            alerts_accepted: IntCounterVec::new(
                Opts::new("cairn_ingest_alerts_total", "Alert events accepted, by source."),
                &["source"],
            )
            .expect("valid metric"),
            alerts_deduplicated: IntCounter::new(
                "cairn_ingest_alerts_deduplicated_total",
                "Alert deliveries dropped as duplicates (clustered Alertmanagers send each group more than once).",
            )
            .expect("valid metric"),
            requests_rejected: IntCounterVec::new(
                Opts::new("cairn_ingest_rejected_requests_total", "Requests refused as invalid, by endpoint and reason."),
                &["endpoint", "reason"],
            )
            .expect("valid metric"),
            requests_overloaded: IntCounterVec::new(
                Opts::new("cairn_ingest_overloaded_requests_total", "Requests answered with a retryable status because the analysis queue was full."),
                &["endpoint"],
            )
            .expect("valid metric"),
            request_duration: HistogramVec::new(
                HistogramOpts::new("cairn_http_request_duration_seconds", "HTTP request latency, by endpoint.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["endpoint"],
            )
            .expect("valid metric"),
            queue_depth: IntGauge::new("cairn_ingest_queue_depth", "Batches waiting for analysis.")
                .expect("valid metric"),
            anomalies: IntCounter::new("cairn_anomalies_total", "Anomalies scored above the alert threshold.")
                .expect("valid metric"),
            incidents_changed: IntCounter::new("cairn_incident_updates_total", "Incidents opened or changed.")
                .expect("valid metric"),
            recommendations: IntCounterVec::new(
                Opts::new("cairn_recommendations_total", "Recommendation revisions routed, by outcome and tier."),
                &["outcome", "tier"],
            )
            .expect("valid metric"),
            policy_failures: IntCounter::new(
                "cairn_policy_failures_total",
                "Policy evaluations that failed or timed out and were routed to review at tier 3.",
            )
            .expect("valid metric"),
            reviews: IntCounterVec::new(
                Opts::new("cairn_reviews_total", "Review actions, by action (approve, reject) and result (accepted, refused)."),
                &["action", "result"],
            )
            .expect("valid metric"),
            executions: IntCounterVec::new(
                Opts::new("cairn_executions_total", "Change executions, by adapter and status."),
                &["adapter", "status"],
            )
            .expect("valid metric"),
            active_series: IntGauge::new("cairn_detector_active_series", "Series with detector state.")
                .expect("valid metric"),
            refused_points: IntCounterVec::new(
                Opts::new("cairn_detector_refused_points_total", "Samples the detector did not score, by reason: series_cap (the active-series cap detect.max_series was hit), out_of_order, not_finite."),
                &["reason"],
            )
            .expect("valid metric"),
            analysis_failures: IntCounter::new(
                "cairn_analysis_failures_total",
                "Batches whose analysis failed after they were accepted (the store refused a write); see the log for the cause.",
            )
            .expect("valid metric"),
            registry,
        };
        let r = &m.registry;
        for c in [
            Box::new(m.samples_accepted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.alerts_accepted.clone()),
            Box::new(m.alerts_deduplicated.clone()),
            Box::new(m.requests_rejected.clone()),
            Box::new(m.requests_overloaded.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.anomalies.clone()),
            Box::new(m.incidents_changed.clone()),
            Box::new(m.recommendations.clone()),
            Box::new(m.policy_failures.clone()),
            Box::new(m.reviews.clone()),
            Box::new(m.executions.clone()),
            Box::new(m.active_series.clone()),
            Box::new(m.refused_points.clone()),
            Box::new(m.analysis_failures.clone()),
        ] {
            r.register(c).expect("each metric is registered once");
        }
        m
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
