//! The analysis pipeline: detect → correlate → recommend → learn → route → open. Samples and
//! alerts go in; incidents, recommendations, decisions and the changes they open come out, each
//! written to the store with its audit events in the store's own transaction.
//!
//! It is given the signal, change and guardrail stores (nothing of leases or the audit log), the
//! active router, the maintenance windows (an input the policy sees), the guardrail settings and
//! escalator, the clock, and the executor's wake-up for a change that may run at once. It never
//! runs a change and never reviews one.

use crate::engine::{Changes, Clock, Guards, Signals};
use crate::governance::Governance;
use crate::metrics::Metrics;
use crate::policy::ActiveRouter;
use cairn_correlate::Correlator;
use cairn_detect::Detector;
use cairn_ingest::AlertDeduper;
use cairn_policy::RoutingContext;
use cairn_recommend::Recommender;
use cairn_store::StoreError;
use cairn_types::{
    AlertEvent, AuditDraft, BreakGlass, BreakGlassState, ChangeState, Decision, Incident, IncidentId, Outcome, Recommendation, SampleBatch,
};
use cairn_workflow::{MaintenanceWindows, WorkflowConfig, breakglass};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::{info, info_span, warn};

/// Why a batch or a recommendation did not make it through the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The store refused or failed a read or a write; journaled alerts are retried.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A person's regrouping the correlator refused; nothing changed.
    #[error("{0}")]
    Regroup(#[from] cairn_correlate::RegroupRefused),
}

/// What a person decided about grouping, carried to the analysis worker (which owns the
/// correlator).
#[derive(Debug)]
pub enum Regroup {
    /// `from`'s signals join `into`; `from` is emptied.
    Merge { into: IncidentId, from: IncidentId },
    /// The members named (`alert:<fingerprint>`, `series:<id>`) leave `from` for a new incident.
    Split { from: IncidentId, members: Vec<String> },
}

/// The answer to a [`Batch::Regroup`]: the incidents as stored afterwards (the merged one and the
/// emptied one, or what is left and the new one), or why nothing changed.
pub type RegroupReply = tokio::sync::oneshot::Sender<Result<Vec<Incident>, AnalysisError>>;

/// One unit of work for the analysis worker.
#[derive(Debug)]
pub enum Batch {
    /// Samples grouped by series, as decoded: no per-sample allocation on the way to the detector.
    Samples { samples: SampleBatch, source: &'static str },
    Alerts { alerts: Vec<AlertEvent>, source: &'static str },
    /// A person's merge or split, with who made it and why; answered once stored.
    Regroup { regroup: Regroup, by: String, reason: String, reply: RegroupReply },
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Samples { samples, .. } => samples.len(),
            Batch::Alerts { alerts, .. } => alerts.len(),
            Batch::Regroup { .. } => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The stateful stages. Owned by the single analysis worker, so no locks are needed around them.
#[derive(Debug)]
pub struct Analysis {
    pub detector: Detector,
    pub correlator: Correlator,
    pub recommender: Recommender,
    pub deduper: AlertDeduper,
    /// Detector counters already exported, to export deltas.
    pub exported: cairn_detect::DetectorStats,
    /// When idle series and incidents were last swept.
    pub last_sweep_ms: i64,
    /// Online scorers of the multivariate models (`crate::models`), one per model.
    pub multivariate: Vec<cairn_detect::multivariate::GroupScorer>,
    /// Their counters already exported, one per scorer, to export deltas.
    pub exported_multivariate: Vec<cairn_detect::multivariate::GroupScorerStats>,
}

/// How often the analysis worker forgets idle series and closes idle incidents.
const SWEEP_EVERY_MS: i64 = 60_000;

/// What the pipeline is given: only the stores, settings and handles it reads or writes.
#[derive(Debug)]
pub struct PipelineDeps {
    pub signals: Signals,
    pub changes: Changes,
    pub guards: Guards,
    /// The active policy (swapped by a policy activation).
    pub router: Arc<ActiveRouter>,
    /// Whether a window is open is an input of routing.
    pub windows: MaintenanceWindows,
    /// The loop-guard window, the break-glass approver groups, and the way to people.
    pub governance: Arc<Governance>,
    pub workflow: WorkflowConfig,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Woken when a change may run at once (auto).
    pub executor_wake: Arc<Notify>,
    /// Whether every signal comes from an authenticated sender (`ingest.require_token`). When
    /// not, nothing is routed `auto` (`cairn_policy::unauthenticated_floor`).
    pub signals_authenticated: bool,
}

/// The analysis pipeline's stateless half (the stateful stages are the worker's [`Analysis`]).
#[derive(Debug)]
pub struct Pipeline {
    signals: Signals,
    pub(crate) changes: Changes,
    guards: Guards,
    router: Arc<ActiveRouter>,
    windows: MaintenanceWindows,
    governance: Arc<Governance>,
    workflow: WorkflowConfig,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    executor_wake: Arc<Notify>,
    signals_authenticated: bool,
}

impl Pipeline {
    pub fn new(d: PipelineDeps) -> Pipeline {
        let PipelineDeps {
            signals,
            changes,
            guards,
            router,
            windows,
            governance,
            workflow,
            metrics,
            clock,
            executor_wake,
            signals_authenticated,
        } = d;
        Pipeline { signals, changes, guards, router, windows, governance, workflow, metrics, clock, executor_wake, signals_authenticated }
    }

    /// Runs one batch through detect → correlate → recommend → route → open change. Blocking:
    /// call it from `spawn_blocking`.
    pub fn analyse(&self, analysis: &mut Analysis, batch: Batch) -> Result<(), AnalysisError> {
        let now = self.clock.now_ms();
        if now - analysis.last_sweep_ms >= SWEEP_EVERY_MS {
            // Bounded state stays bounded over time, not only by its caps.
            analysis.detector.evict_idle(now);
            crate::models::evict_idle(&mut analysis.multivariate, now);
            // What the recommender keeps for a closed incident goes with it.
            for closed in analysis.correlator.close_idle(now) {
                analysis.recommender.forget(&closed);
            }
            analysis.last_sweep_ms = now;
        }
        match batch {
            Batch::Samples { samples, .. } => {
                analysis.correlator.learn(&samples);
                let mut anomalies = analysis.detector.observe(&samples);
                anomalies.extend(crate::models::observe(&mut analysis.multivariate, &samples));
                self.export_detector_stats(analysis);
                // Series recorded since their anomalies may now be seen to move together: the
                // incidents that joins are settled and stored below, with or without new anomalies.
                let co_moved = analysis.correlator.co_move(now);
                if anomalies.is_empty() && !co_moved {
                    return Ok(());
                }
                for a in &anomalies {
                    self.metrics.anomalies.with_label_values(&[&a.detector, &a.anomaly_kind]).inc();
                    tracing::debug!(series = %a.labels, detector = %a.detector, kind = %a.anomaly_kind, score = a.score, confidence = a.confidence, "anomaly");
                }
                self.signals.record_anomalies(&anomalies)?;
                for a in &anomalies {
                    analysis.correlator.note_anomaly(a, now);
                }
            }
            Batch::Alerts { alerts, .. } => {
                let delivered = alerts.len();
                let fresh: Vec<AlertEvent> =
                    alerts.into_iter().filter(|a| analysis.deduper.admit(a, now)).collect();
                self.metrics.alerts_deduplicated.inc_by((delivered - fresh.len()) as u64);
                if fresh.is_empty() {
                    return Ok(());
                }
                if let Err(e) = self.signals.record_alerts(&fresh, now) {
                    // Not stored: they stay journaled and are retried, so they must not be
                    // remembered as seen, or the retry would drop them as duplicates.
                    for a in &fresh {
                        analysis.deduper.forget(a);
                    }
                    return Err(e.into());
                }
                for a in fresh {
                    analysis.correlator.note_alert(a, now);
                }
            }
            Batch::Regroup { regroup, by, reason, reply } => {
                let span = info_span!("regroup", by = %by);
                let _g = span.enter();
                // Refused or not stored, the person is told (and may try again); it is not a
                // failure of the signals' analysis.
                let _ = reply.send(self.regroup(analysis, regroup, &by, &reason, now));
                return Ok(());
            }
        }
        // Each incident the batch changed is summarised and ranked once, in its final state.
        let mut changed: BTreeSet<IncidentId> = analysis.correlator.settle().into_iter().collect();
        for gone in analysis.correlator.take_merged() {
            changed.remove(&gone.id);
            self.signals.upsert_incident(&gone)?;
            self.withdraw_merged(analysis, &gone, now)?;
        }
        let state = &self.metrics.triage_state;
        state.with_label_values(&["open_incidents"]).set(analysis.correlator.open_count() as i64);
        state.with_label_values(&["topology_entries"]).set(analysis.correlator.topology().size().0 as i64);
        state.with_label_values(&["tracked_recommendations"]).set(analysis.recommender.tracked() as i64);
        state.with_label_values(&["kept_apart_pairs"]).set(analysis.correlator.kept_apart_count() as i64);
        state.with_label_values(&["split_apart_incidents"]).set(analysis.correlator.split_apart_count() as i64);
        state.with_label_values(&["kept_together_pairs"]).set(analysis.correlator.kept_together_count() as i64);
        let (comove_series, comove_bytes) = analysis.correlator.comove_size();
        state.with_label_values(&["comove_series"]).set(comove_series as i64);
        state.with_label_values(&["comove_bytes"]).set(comove_bytes as i64);
        let Analysis { correlator, recommender, .. } = analysis;
        for id in &changed {
            let changes = correlator.take_changes(id);
            let Some(incident) = correlator.get(id) else { continue };
            let span = info_span!("incident", incident_id = %incident.id);
            let _g = span.enter();
            self.metrics.incidents_changed.inc();
            match &changes {
                Some(changes) => self.signals.upsert_incident_changes(incident, changes)?,
                None => self.signals.upsert_incident(incident)?,
            }
            // What changed since the last pass lets the recommender match only the new members.
            for rec in recommender.recommend_changed(incident, changes.as_ref(), now) {
                self.route_and_open(rec, now)?;
            }
        }
        state.with_label_values(&["scanned_incidents"]).set(recommender.scanned() as i64);
        Ok(())
    }

    /// Proposes what the incident's evidence now calls for, as a new revision, and routes it.
    fn recommend(&self, recommender: &mut Recommender, incident: &Incident, now: i64) -> Result<(), AnalysisError> {
        for rec in recommender.recommend(incident, now) {
            self.route_and_open(rec, now)?;
        }
        Ok(())
    }

    /// An incident merged into another is retired: its recommendation is withdrawn (the surviving
    /// incident has its own), so that nothing is approved or run twice.
    fn withdraw_merged(&self, analysis: &mut Analysis, gone: &Incident, now: i64) -> Result<(), AnalysisError> {
        analysis.recommender.forget(&gone.id);
        let rec_id = cairn_recommend::recommendation_for(&gone.id);
        if self.changes.get_recommendation(&rec_id, None)?.is_some() {
            let why = gone.grouping_reasons.first().cloned().unwrap_or_default();
            self.changes.withdraw_recommendation(&rec_id, &format!("incident {} was {why}", gone.id), now)?;
            info!(incident_id = %gone.id, recommendation_id = %rec_id, "recommendation withdrawn: its incident was merged");
        }
        Ok(())
    }

    /// A person's merge or split: the correlator regroups, the incidents and an audit entry naming
    /// the person are stored in one transaction, a merged-away incident's recommendation is
    /// withdrawn, and each incident left is recommended for again (a new revision, which voids
    /// approvals of the old grouping). Returns the incidents as stored.
    fn regroup(&self, analysis: &mut Analysis, regroup: Regroup, by: &str, reason: &str, now: i64) -> Result<Vec<Incident>, AnalysisError> {
        let why = format!("{reason} ({by})");
        let (kind, stored, live) = match &regroup {
            Regroup::Merge { into, from } => {
                let merged = analysis.correlator.merge_by_person(into, from, &why, now)?;
                let gone = analysis.correlator.take_merged();
                let mut stored = vec![merged.clone()];
                stored.extend(gone);
                ("incident.merged", stored, vec![merged])
            }
            Regroup::Split { from, members } => {
                let (left, new) = analysis.correlator.split_by_person(from, members, &why, now)?;
                ("incident.split", vec![left.clone(), new.clone()], vec![left, new])
            }
        };
        let payload = match &regroup {
            Regroup::Merge { into, from } => serde_json::json!({ "into": into.0, "from": from.0 }),
            Regroup::Split { from, members } => {
                serde_json::json!({ "from": from.0, "members": members, "new": stored.get(1).map(|i| i.id.0.clone()) })
            }
        };
        let audit = AuditDraft {
            actor: by.to_string(),
            kind: kind.to_string(),
            incident_id: stored.first().map(|i| i.id.0.clone()),
            reason: reason.to_string(),
            payload,
            affected_resources: stored.iter().map(|i| i.id.0.clone()).collect(),
            ..AuditDraft::default()
        };
        self.signals.regroup_incidents(&stored, &[audit], now)?;
        info!(kind, incidents = ?stored.iter().map(|i| &i.id.0).collect::<Vec<_>>(), "regrouped by a person");
        for gone in stored.iter().filter(|i| i.members.is_empty()) {
            self.withdraw_merged(analysis, gone, now)?;
        }
        for incident in &live {
            self.recommend(&mut analysis.recommender, incident, now)?;
        }
        Ok(stored)
    }

    fn export_detector_stats(&self, analysis: &mut Analysis) {
        let now = analysis.detector.stats();
        let before = analysis.exported;
        self.metrics.active_series.set(analysis.detector.series_count() as i64);
        self.metrics.detector_memory.set(analysis.detector.memory_bytes() as i64);
        let refused = &self.metrics.refused_points;
        if now.refused_series > before.refused_series {
            if before.refused_series == 0 {
                warn!(
                    cap = analysis.detector.config().max_series,
                    "the active-series cap (detect.max_series) is reached: samples of new series are not scored; \
                     raise the cap or drop high-cardinality series with write_relabel_configs"
                );
            }
            refused.with_label_values(&["series_cap"]).inc_by(now.refused_series - before.refused_series);
        }
        refused.with_label_values(&["out_of_order"]).inc_by(now.out_of_order - before.out_of_order);
        refused.with_label_values(&["not_finite"]).inc_by(now.points_skipped - before.points_skipped);
        analysis.exported = now;
        crate::models::export_stats(&analysis.multivariate, &mut analysis.exported_multivariate, &self.metrics);
    }

    /// Learns from past decisions, routes `rec` under the active policy (with a break-glass in
    /// force for a blocked one, and the unauthenticated floor), and opens its change. Blocking.
    pub fn route_and_open(&self, rec: Recommendation, now: i64) -> Result<(), AnalysisError> {
        let span = info_span!("recommendation", recommendation_id = %rec.id, revision = rec.revision);
        let _g = span.enter();
        let rec = crate::learning::apply(self.changes.as_ref(), rec, now)?;
        let router = self.router.current();
        // One loop-guard window for both uses: the policy's input (recent runs bump routing) and the
        // guardrail that disables the automation (`guardrails.loop_guard_window_secs`).
        let since = now - self.governance.guardrails.loop_guard_window_ms();
        let recent = self.changes.recent_runs_on_target(&rec.target, since)?;
        // Break-glass exceptions in force for this action and target: an input the policy sees, and
        // what may open a blocked recommendation for review below.
        let breakglass = self.guards.list_breakglass(true)?;
        let ctx = RoutingContext {
            recent_runs: recent.iter().filter(|(action, state)| *action == rec.action && ran(*state)).count() as u32,
            recent_failures: recent
                .iter()
                .filter(|(_, state)| matches!(state, ChangeState::Failed | ChangeState::RollbackFailed))
                .count() as u32,
            maintenance_window_open: self.windows.open_for(&rec.target, now).is_some(),
            service_criticality: router.bundle().service_criticality(&rec.target.service),
            active_break_glass: breakglass
                .iter()
                .filter(|bg| bg.scope.covers(rec.action, &rec.target) && cairn_workflow::breakglass::check_usable(bg, now).is_ok())
                .map(|bg| bg.id.clone())
                .collect(),
            ..RoutingContext::for_environment(&rec.target.environment)
        };
        let decision = router.route(&rec, &ctx, now);
        let decision = self.breakglass_for_blocked(&rec, decision, &breakglass, now)?;
        let decision = if self.signals_authenticated {
            decision
        } else {
            cairn_policy::unauthenticated_floor(decision, &self.governance.guardrails.approver_groups)
        };
        self.observe_routed(&rec, &decision);
        if decision.policy_failed {
            self.metrics.policy_failures.inc();
            warn!(reasons = ?decision.reasons, "policy evaluation failed; routed to review at tier 3");
        }
        let (change, drafts) = cairn_workflow::open_change(&rec, &decision, now, &self.workflow);
        self.changes.propose(&rec, &decision, &change, &drafts, now)?;
        self.metrics
            .recommendations
            .with_label_values(&[decision.outcome.as_str(), &tier_label(decision.tier)])
            .inc();
        info!(
            outcome = decision.outcome.as_str(),
            tier = ?decision.tier,
            change_id = %change.id,
            action = rec.action.as_str(),
            target = %rec.target,
            "recommendation routed"
        );
        if change.state == ChangeState::Approved {
            self.executor_wake.notify_one();
        }
        Ok(())
    }

    /// Counts a routed recommendation for the "share of risky actions escalated" series.
    fn observe_routed(&self, rec: &Recommendation, decision: &Decision) {
        if is_risky(rec) {
            let escalated = if decision.outcome == Outcome::Auto { "false" } else { "true" };
            self.metrics.governance.risky_actions.with_label_values(&[escalated]).inc();
        }
    }

    /// At routing, a `blocked` decision for a recommendation an active break-glass covers becomes
    /// two-person review under it, and the use is recorded (audit, metrics, alert). Any other
    /// decision passes unchanged. Blocking.
    fn breakglass_for_blocked(
        &self,
        rec: &Recommendation,
        decision: Decision,
        active: &[BreakGlass],
        now_ms: i64,
    ) -> Result<Decision, AnalysisError> {
        if decision.outcome != Outcome::Blocked {
            return Ok(decision);
        }
        let Some(bg) = breakglass::find_usable(active, rec, now_ms) else {
            return Ok(decision);
        };
        let under = breakglass::apply_to_decision(&decision, bg, &self.governance.guardrails.approver_groups);
        let (change, _) = cairn_workflow::open_change(rec, &under, now_ms, &self.workflow);
        // A use that cannot be recorded (revoked or used up concurrently) leaves the decision
        // blocked: without its audit event, a break-glass allows nothing.
        let recorded = breakglass::use_for(bg, rec, &change.id.0, now_ms)
            .map_err(|e| e.to_string())
            .and_then(|(used, drafts, alerts)| {
                self.guards.use_breakglass(&used, &change.id, &drafts, now_ms).map_err(|e| e.to_string())?;
                Ok((used, alerts))
            });
        let (used, alerts) = match recorded {
            Ok(ok) => ok,
            Err(e) => {
                warn!(breakglass_id = %bg.id, error = %e, "break-glass use not recorded; the recommendation stays blocked");
                return Ok(decision);
            }
        };
        let g = &self.metrics.governance;
        g.breakglass_events.with_label_values(&["used", &used.owner]).inc();
        if used.state == BreakGlassState::Exhausted {
            g.breakglass_events.with_label_values(&["exhausted", &used.owner]).inc();
            g.breakglass_active.dec();
        }
        info!(breakglass_id = %used.id, change_id = %change.id, "blocked recommendation opened for two-person review under a break-glass");
        self.governance.escalate(&self.metrics, alerts);
        Ok(under)
    }

}

/// Risky: could break more than one service, or cannot be fully undone.
fn is_risky(rec: &Recommendation) -> bool {
    rec.blast_radius >= cairn_types::BlastRadius::Cluster || rec.reversibility != cairn_types::Reversibility::Reversible
}

fn ran(state: ChangeState) -> bool {
    matches!(
        state,
        ChangeState::Executing
            | ChangeState::Succeeded
            | ChangeState::Failed
            | ChangeState::RolledBack
            | ChangeState::RollbackFailed
            | ChangeState::AwaitingStageApproval
            | ChangeState::RollbackPending
    )
}

fn tier_label(tier: Option<u8>) -> String {
    tier.map(|t| t.to_string()).unwrap_or_else(|| "none".into())
}
