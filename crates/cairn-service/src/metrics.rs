//! Cairn's own health and governance series, exposed on `GET /metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use prometheus::core::Collector;

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
    pub anomalies: IntCounterVec,
    pub incidents_changed: IntCounter,
    pub recommendations: IntCounterVec,
    pub policy_failures: IntCounter,
    pub reviews: IntCounterVec,
    pub executions: IntCounterVec,
    pub active_series: IntGauge,
    /// Bytes the detector has allocated for its series' state (index and models).
    pub detector_memory: IntGauge,
    /// What the correlator and recommender keep, by kind: `open_incidents`, `topology_entries`,
    /// `tracked_recommendations`, `scanned_incidents` (incidents whose playbook matches are kept
    /// between passes), `kept_apart_pairs`, `kept_together_pairs`,
    /// `split_apart_incidents` (pairs of open incidents a person split), `comove_series` and
    /// `comove_bytes` (series recorded for co-movement, and their bytes) (each bounded by its cap).
    pub triage_state: IntGaugeVec,
    pub multivariate_groups: IntGaugeVec,
    pub multivariate_group_events: IntCounterVec,
    pub refused_points: IntCounterVec,
    pub analysis_failures: IntCounter,
    pub intake_failures: IntCounter,
    /// Alerts acknowledged (journaled) and not yet analysed, and how many may wait
    /// (`ingest.max_pending_alerts`; past it senders are answered 503).
    pub intake_pending: IntGauge,
    pub intake_pending_limit: IntGauge,
    /// Seconds from an alert's acknowledgement to the commit of the analysis pass that stored it,
    /// with its incident and any new revision: how far the analysis lags the intake.
    pub alert_analysis_delay: prometheus::Histogram,
    pub connections_open: prometheus::IntGaugeVec,
    pub connections_refused: IntCounterVec,
    /// TLS handshakes that failed, per listener and reason (`no_certificate`, `bad_certificate`,
    /// `protocol`, `timeout`).
    pub tls_handshake_failures: IntCounterVec,
    /// Certificate reloads, by result (`ok`, `error`: the old certificate stays in use).
    pub tls_reloads: IntCounterVec,
    /// When the serving certificate expires (Unix seconds), for an alert well before it does.
    pub tls_certificate_expiry: IntGauge,
    /// Bearer JWTs checked against the OpenID issuers, by result (`ok`, or why one was refused).
    pub oidc_verifications: IntCounterVec,
    /// Governance series: how people and guardrails steer automation.
    pub governance: GovernanceMetrics,
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
            anomalies: IntCounterVec::new(
                Opts::new(
                    "cairn_anomalies_total",
                    "Anomalies emitted (one per anomalous episode), by detector (univariate, multivariate-pca-kmeans) and kind (spike, level_shift, correlation_break, ...).",
                ),
                &["detector", "kind"],
            )
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
            detector_memory: IntGauge::new("cairn_detector_memory_bytes", "Bytes allocated for the detector's series state (index and models).")
                .expect("valid metric"),
            triage_state: IntGaugeVec::new(
                Opts::new("cairn_triage_state", "Entries the correlator and recommender keep, by kind (each bounded by its cap)."),
                &["kind"],
            )
            .expect("valid metric"),
            multivariate_groups: IntGaugeVec::new(
                Opts::new("cairn_multivariate_groups", "Groups (hosts) a multivariate model tracks, by model."),
                &["model"],
            )
            .expect("valid metric"),
            multivariate_group_events: IntCounterVec::new(
                Opts::new(
                    "cairn_multivariate_group_events_total",
                    "Multivariate groups by event and model: refused (models.max_groups was reached; their samples are not scored), evicted (silent past models.idle_evict_ms).",
                ),
                &["model", "event"],
            )
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
            intake_failures: IntCounter::new(
                "cairn_intake_failures_total",
                "Alert requests refused with 503 because the intake journal could not be written (e.g. a full disk); the sender resends.",
            )
            .expect("valid metric"),
            intake_pending: IntGauge::new(
                "cairn_intake_pending_alerts",
                "Alerts acknowledged (stored in the intake journal) and not yet analysed.",
            )
            .expect("valid metric"),
            intake_pending_limit: IntGauge::new(
                "cairn_intake_pending_alerts_limit",
                "How many acknowledged alerts may wait for analysis (ingest.max_pending_alerts); past it alert senders are answered 503 with Retry-After.",
            )
            .expect("valid metric"),
            alert_analysis_delay: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "cairn_alert_analysis_delay_seconds",
                    "Seconds from an alert's acknowledgement to the commit of the analysis that stored it, with its incident and any new revision.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )
            .expect("valid metric"),
            connections_open: prometheus::IntGaugeVec::new(
                prometheus::Opts::new("cairn_connections_open", "Connections open now, per listener (http, grpc)."),
                &["listener"],
            )
            .expect("valid metric"),
            connections_refused: IntCounterVec::new(
                prometheus::Opts::new(
                    "cairn_connections_refused_total",
                    "Connections closed on accept because the listener's listen.max_connections were open.",
                ),
                &["listener"],
            )
            .expect("valid metric"),
            tls_handshake_failures: IntCounterVec::new(
                prometheus::Opts::new(
                    "cairn_tls_handshake_failures_total",
                    "TLS handshakes that failed, per listener and reason (no_certificate, bad_certificate, protocol, timeout).",
                ),
                &["listener", "reason"],
            )
            .expect("valid metric"),
            tls_reloads: IntCounterVec::new(
                prometheus::Opts::new(
                    "cairn_tls_reloads_total",
                    "Certificate reloads after the files changed, by result (ok; error: the previous certificate stays in use).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            oidc_verifications: IntCounterVec::new(
                prometheus::Opts::new(
                    "cairn_oidc_verifications_total",
                    "Sign-in tokens (JWTs) checked against the configured OpenID issuers, by result (ok, expired, audience, unknown_key, bad_signature, unknown_issuer, unavailable, ...).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            tls_certificate_expiry: IntGauge::new(
                "cairn_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the listeners serve expires (Unix seconds); 0 without TLS.",
            )
            .expect("valid metric"),
            governance: GovernanceMetrics::new(),
            registry,
        };
        for c in m.collectors().into_iter().chain(m.governance.collectors()) {
            m.registry.register(c).expect("each metric is registered once");
        }
        m
    }

    /// The names of every series, as alert rules and dashboards refer to them (a series with
    /// labels is listed before it has any).
    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .into_iter()
            .chain(self.governance.collectors())
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()).collect::<Vec<_>>())
            .collect()
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.samples_accepted.clone()),
            Box::new(self.alerts_accepted.clone()),
            Box::new(self.alerts_deduplicated.clone()),
            Box::new(self.requests_rejected.clone()),
            Box::new(self.requests_overloaded.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.anomalies.clone()),
            Box::new(self.incidents_changed.clone()),
            Box::new(self.recommendations.clone()),
            Box::new(self.policy_failures.clone()),
            Box::new(self.reviews.clone()),
            Box::new(self.executions.clone()),
            Box::new(self.active_series.clone()),
            Box::new(self.detector_memory.clone()),
            Box::new(self.triage_state.clone()),
            Box::new(self.multivariate_groups.clone()),
            Box::new(self.multivariate_group_events.clone()),
            Box::new(self.refused_points.clone()),
            Box::new(self.analysis_failures.clone()),
            Box::new(self.intake_failures.clone()),
            Box::new(self.intake_pending.clone()),
            Box::new(self.intake_pending_limit.clone()),
            Box::new(self.alert_analysis_delay.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.tls_handshake_failures.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.tls_certificate_expiry.clone()),
            Box::new(self.oidc_verifications.clone()),
        ]
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

/// Governance series for dashboards and the alert rules in `rules/cairn-governance.rules.yml`:
/// approval latency, auto-remediation and rollback outcomes, break-glass use and expiry,
/// escalation of risky actions, guardrail holds and who overrides guardrails.
#[derive(Clone, Debug)]
pub struct GovernanceMetrics {
    /// Seconds from a change opening to its quorum, by tier.
    pub approval_latency: HistogramVec,
    /// Finished changes by decision outcome (auto, review) and result.
    pub change_results: IntCounterVec,
    pub rollbacks: IntCounterVec,
    /// Break-glass events by event and actor (the owner, or the person who revoked).
    pub breakglass_events: IntCounterVec,
    pub breakglass_active: IntGauge,
    /// How long after its expiry the sweeper closed a break-glass (use time refuses it regardless).
    pub breakglass_expiry_lateness: prometheus::Histogram,
    /// Routed recommendations that are risky (cluster or global blast radius, or not fully
    /// reversible), by whether they were escalated to people (anything but auto).
    pub risky_actions: IntCounterVec,
    /// Changes a guardrail held for a person, by guardrail.
    pub guardrail_holds: IntCounterVec,
    /// People turning guardrails off or around, by actor and kind (freeze_off, automation_enabled,
    /// breakglass_opened).
    pub guardrail_overrides: IntCounterVec,
    pub frozen: IntGauge,
    pub disabled_automations: IntGauge,
    /// Escalations sent to Alertmanager, by alert name and result (sent, failed, unconfigured).
    pub escalations: IntCounterVec,
    /// Changes whose executor stopped mid-way (lease expired while executing), by how they were
    /// resolved (requeued, stopped, rolling_back, outcome_unknown).
    pub changes_interrupted: IntCounterVec,
}

impl GovernanceMetrics {
    fn new() -> GovernanceMetrics {
        GovernanceMetrics {
            approval_latency: HistogramVec::new(
                HistogramOpts::new("cairn_approval_latency_seconds", "Seconds from a change opening to its approval quorum, by tier.")
                    .buckets(vec![30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0]),
                &["tier"],
            )
            .expect("valid metric"),
            change_results: IntCounterVec::new(
                Opts::new("cairn_change_results_total", "Executed changes by decision outcome (auto, review) and result (succeeded, failed, rolled_back, rollback_failed, dry_run, refused)."),
                &["outcome", "result"],
            )
            .expect("valid metric"),
            rollbacks: IntCounterVec::new(
                Opts::new("cairn_rollbacks_total", "Automatic rollbacks after a failed verification, by result (succeeded, failed)."),
                &["result"],
            )
            .expect("valid metric"),
            breakglass_events: IntCounterVec::new(
                Opts::new("cairn_breakglass_events_total", "Break-glass events (opened, used, revoked, expired, exhausted) by actor."),
                &["event", "actor"],
            )
            .expect("valid metric"),
            breakglass_active: IntGauge::new("cairn_breakglass_active", "Break-glass exceptions currently active.").expect("valid metric"),
            breakglass_expiry_lateness: prometheus::Histogram::with_opts(
                HistogramOpts::new("cairn_breakglass_expiry_lateness_seconds", "Seconds between a break-glass expiry and the sweeper closing it.")
                    .buckets(vec![1.0, 5.0, 30.0, 60.0, 300.0, 900.0]),
            )
            .expect("valid metric"),
            risky_actions: IntCounterVec::new(
                Opts::new("cairn_risky_actions_total", "Risky recommendations (cluster/global blast radius or not fully reversible) by whether people were put in the lead (escalated=true: review, advisory or blocked)."),
                &["escalated"],
            )
            .expect("valid metric"),
            guardrail_holds: IntCounterVec::new(
                Opts::new("cairn_guardrail_holds_total", "Auto changes a guardrail held for a person, by guardrail (freeze, loop_guard, automation_disabled, rate_limit)."),
                &["guardrail"],
            )
            .expect("valid metric"),
            guardrail_overrides: IntCounterVec::new(
                Opts::new("cairn_guardrail_overrides_total", "People lifting guardrails, by actor and kind (freeze_off, automation_enabled, breakglass_opened)."),
                &["actor", "kind"],
            )
            .expect("valid metric"),
            frozen: IntGauge::new("cairn_frozen", "1 while the global freeze is on: nothing runs by itself.").expect("valid metric"),
            disabled_automations: IntGauge::new("cairn_disabled_automations", "Automations (action on target) the loop guard disabled and no person re-enabled yet.").expect("valid metric"),
            escalations: IntCounterVec::new(
                Opts::new("cairn_escalations_total", "Escalations to Alertmanager by alert name and result (sent, failed, unconfigured)."),
                &["alertname", "result"],
            )
            .expect("valid metric"),
            changes_interrupted: IntCounterVec::new(
                Opts::new("cairn_changes_interrupted_total", "Changes whose executor stopped while running them (lease expired in executing), by resolution (requeued, stopped, rolling_back, outcome_unknown)."),
                &["resolution"],
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.approval_latency.clone()),
            Box::new(self.change_results.clone()),
            Box::new(self.rollbacks.clone()),
            Box::new(self.breakglass_events.clone()),
            Box::new(self.breakglass_active.clone()),
            Box::new(self.breakglass_expiry_lateness.clone()),
            Box::new(self.risky_actions.clone()),
            Box::new(self.guardrail_holds.clone()),
            Box::new(self.guardrail_overrides.clone()),
            Box::new(self.frozen.clone()),
            Box::new(self.disabled_automations.clone()),
            Box::new(self.escalations.clone()),
            Box::new(self.changes_interrupted.clone()),
        ]
    }
}
