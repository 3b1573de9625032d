//! The wiring of the pipeline: analysis (detect → correlate → recommend → route → open a change),
//! review actions, and the executor loop. Each stage's logic lives in its own crate; this module only
//! moves values between them and the store, in order, with the ids in tracing spans.

use crate::error::ServiceError;
use crate::metrics::Metrics;
use cairn_correlate::Correlator;
use cairn_detect::Detector;
use cairn_ingest::AlertDeduper;
use cairn_policy::{Router, RoutingContext};
use cairn_recommend::Recommender;
use cairn_store::{RecommendationRecord, Store, StoreError};
use cairn_types::{
    AlertEvent, ChangeId, ChangeRequest, ChangeState, Incident, RecommendationId, SampleBatch,
};
use cairn_workflow::{Executor, WorkflowConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tracing::{info, info_span, warn};

/// The time source, passed in so tests can drive it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// One unit of work for the analysis worker.
#[derive(Debug)]
pub enum Batch {
    /// Samples grouped by series, as decoded: no per-sample allocation on the way to the detector.
    Samples { samples: SampleBatch, source: &'static str },
    Alerts { alerts: Vec<AlertEvent>, source: &'static str },
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Samples { samples, .. } => samples.len(),
            Batch::Alerts { alerts, .. } => alerts.len(),
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

/// Shared, stateless-or-internally-synchronised parts of the pipeline.
#[derive(Debug)]
pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    /// Swapped atomically when a policy activation executes (see `policy.rs`).
    pub(crate) router: Arc<crate::policy::ActiveRouter>,
    pub(crate) executor: Executor,
    /// The executor's gate and journal in front of the policy adapter: policy activations run
    /// through it like any change.
    policy_executor: Executor,
    policy_adapter: Arc<crate::policy::PolicyAdapter>,
    pub(crate) workflow: WorkflowConfig,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    /// Break-glass and guardrails (`governance.rs`).
    pub(crate) governance: crate::governance::Governance,
    /// Whether every signal comes from an authenticated sender (`ingest.require_token`). When not,
    /// nothing is routed `auto` (`cairn_policy::unauthenticated_floor`).
    pub(crate) signals_authenticated: bool,
    /// How fresh a sign-in must be for tier-3 approvals, break-glass and policy proposals.
    pub(crate) step_up: crate::identity::StepUp,
    /// Whether an OpenID issuer is configured (decides whether static person tokens pass step-up).
    pub(crate) oidc_configured: bool,
    /// The audit head after the last write: live streams wait on it to re-read the outbox.
    audit_head: watch::Sender<u64>,
    /// Wakes the executor loop after an approval.
    executor_wake: Notify,
    /// Cancelled when the server shuts down; long-lived streams end on it.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Engine {
    /// The store, for embedders and tests that read what the server wrote.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The active policy router (swapped when a policy activation runs).
    pub fn router(&self) -> &crate::policy::ActiveRouter {
        &self.router
    }

    /// The server's own metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock every stage reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn new(
        store: Arc<dyn Store>,
        router: Arc<Router>,
        executor: Executor,
        workflow: WorkflowConfig,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Engine, StoreError> {
        let head = store.audit_head()?;
        let (audit_head, _) = watch::channel(head);
        // The store says when the log grew (after the commit), so live streams wake on every
        // write without any caller having to remember to tell them.
        let notify = audit_head.clone();
        store.on_audit_commit(Box::new(move |head| {
            notify.send_if_modified(|h| {
                let newer = head > *h;
                if newer {
                    *h = head;
                }
                newer
            });
        }));
        let router = Arc::new(crate::policy::ActiveRouter::new(router));
        let policy_adapter = Arc::new(crate::policy::PolicyAdapter::new(router.clone()));
        Ok(Engine {
            store,
            router,
            policy_executor: executor.with_adapter(policy_adapter.clone()),
            policy_adapter,
            executor,
            workflow,
            metrics,
            clock,
            governance: Default::default(),
            signals_authenticated: false,
            step_up: Default::default(),
            oidc_configured: false,
            audit_head,
            executor_wake: Notify::new(),
            shutdown,
        })
    }

    /// Break-glass and guardrail settings, and the way escalations reach people.
    pub fn with_governance(mut self, governance: crate::governance::Governance) -> Engine {
        self.governance = governance;
        self
    }

    /// Whether every signal comes from an authenticated sender (`ingest.require_token`); when not,
    /// nothing is routed `auto`.
    pub fn with_signals_authenticated(mut self, authenticated: bool) -> Engine {
        self.signals_authenticated = authenticated;
        self
    }

    /// How fresh a sign-in must be for the most consequential acts, and whether an OpenID issuer
    /// is configured (which decides whether static person tokens pass).
    pub fn with_step_up(mut self, step_up: crate::identity::StepUp, oidc_configured: bool) -> Engine {
        self.step_up = step_up;
        self.oidc_configured = oidc_configured;
        self
    }

    pub fn subscribe_audit_head(&self) -> watch::Receiver<u64> {
        self.audit_head.subscribe()
    }

    /// Cancelled when the server begins to shut down.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.shutdown.clone()
    }

    pub fn wake_executor(&self) {
        self.executor_wake.notify_one();
    }

    /// Runs one batch through detect → correlate → recommend → route → open change. Blocking:
    /// call it from `spawn_blocking`.
    pub fn analyse(&self, analysis: &mut Analysis, batch: Batch) -> Result<(), ServiceError> {
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
        let mut changed: BTreeMap<String, Incident> = BTreeMap::new();
        match batch {
            Batch::Samples { samples, .. } => {
                analysis.correlator.learn(&samples);
                let mut anomalies = analysis.detector.observe(&samples);
                anomalies.extend(crate::models::observe(&mut analysis.multivariate, &samples));
                self.export_detector_stats(analysis);
                if anomalies.is_empty() {
                    return Ok(());
                }
                for a in &anomalies {
                    self.metrics.anomalies.with_label_values(&[&a.detector, &a.anomaly_kind]).inc();
                    tracing::debug!(series = %a.labels, detector = %a.detector, kind = %a.anomaly_kind, score = a.score, confidence = a.confidence, "anomaly");
                }
                self.store.record_anomalies(&anomalies)?;
                for a in &anomalies {
                    if let Some(inc) = analysis.correlator.observe_anomaly(a, now) {
                        changed.insert(inc.id.0.clone(), inc);
                    }
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
                if let Err(e) = self.store.record_alerts(&fresh, now) {
                    // Not stored: they stay journaled and are retried, so they must not be
                    // remembered as seen, or the retry would drop them as duplicates.
                    for a in &fresh {
                        analysis.deduper.forget(a);
                    }
                    return Err(e.into());
                }
                for a in &fresh {
                    if let Some(inc) = analysis.correlator.observe_alert(a, now) {
                        changed.insert(inc.id.0.clone(), inc);
                    }
                }
            }
        }
        for gone in analysis.correlator.take_merged() {
            // Merged into another: retired in the store, and its recommendation withdrawn (the
            // surviving incident has its own), so that nothing is approved or run twice.
            changed.remove(&gone.id.0);
            self.store.upsert_incident(&gone)?;
            analysis.recommender.forget(&gone.id);
            let rec_id = cairn_recommend::recommendation_for(&gone.id);
            if self.store.get_recommendation(&rec_id, None)?.is_some() {
                let why = gone.grouping_reasons.first().cloned().unwrap_or_default();
                self.store.withdraw_recommendation(&rec_id, &format!("incident {} was {why}", gone.id), now)?;
                info!(incident_id = %gone.id, recommendation_id = %rec_id, "recommendation withdrawn: its incident was merged");
            }
        }
        let state = &self.metrics.triage_state;
        state.with_label_values(&["open_incidents"]).set(analysis.correlator.open_count() as i64);
        state.with_label_values(&["topology_entries"]).set(analysis.correlator.topology().size().0 as i64);
        state.with_label_values(&["tracked_recommendations"]).set(analysis.recommender.tracked() as i64);
        for incident in changed.into_values() {
            let span = info_span!("incident", incident_id = %incident.id);
            let _g = span.enter();
            self.metrics.incidents_changed.inc();
            self.store.upsert_incident(&incident)?;
            for rec in analysis.recommender.recommend(&incident, now) {
                self.route_and_open(rec, now)?;
            }
        }
        Ok(())
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

    pub(crate) fn route_and_open(&self, rec: cairn_types::Recommendation, now: i64) -> Result<(), ServiceError> {
        let span = info_span!("recommendation", recommendation_id = %rec.id, revision = rec.revision);
        let _g = span.enter();
        let rec = crate::learning::apply(self, rec, now)?;
        let router = self.router.current();
        // One loop-guard window for both uses: the policy's input (recent runs bump routing) and the
        // guardrail that disables the automation (`guardrails.loop_guard_window_secs`).
        let since = now - self.governance.guardrails.loop_guard_window_ms();
        let recent = self.store.recent_changes_on_target(&rec.target, since)?;
        // Break-glass exceptions in force for this action and target: an input the policy sees, and
        // what may open a blocked recommendation for review below.
        let breakglass = self.store.list_breakglass(true)?;
        let ctx = RoutingContext {
            recent_runs: recent
                .iter()
                .filter(|c| c.recommendation.action == rec.action && ran(c.change.state))
                .count() as u32,
            recent_failures: recent
                .iter()
                .filter(|c| matches!(c.change.state, ChangeState::Failed | ChangeState::RollbackFailed))
                .count() as u32,
            maintenance_window_open: self.executor.gate().windows.open_for(&rec.target, now).is_some(),
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
        self.store.propose(&rec, &decision, &change, &drafts, now)?;
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
            self.wake_executor();
        }
        Ok(())
    }

    /// Whether `who` signed in recently enough for `what` (see [`crate::identity::StepUp`]).
    pub fn check_step_up(&self, what: &'static str, who: &crate::identity::Identity) -> Result<(), ServiceError> {
        self.step_up
            .check(what, who, self.oidc_configured, self.clock.now_ms() / 1000)
            .map_err(ServiceError::from)
    }

    /// Approves (or rejects) one exact revision as `who`. Blocking. Approving a tier-3 change
    /// needs a recent sign-in; every review record states how its reviewer authenticated.
    pub fn review(
        &self,
        who: &crate::identity::Identity,
        id: &RecommendationId,
        revision: u32,
        reason: &str,
        approve: bool,
    ) -> Result<(ChangeRequest, String), ServiceError> {
        let principal = &who.principal;
        let action = if approve { "approve" } else { "reject" };
        let span = info_span!("review", recommendation_id = %id, revision, subject = %principal.subject, action);
        let _g = span.enter();
        // A racing reviewer can bump the version between our read and write; re-read and retry.
        for _ in 0..3 {
            let now = self.clock.now_ms();
            let record = self
                .store
                .get_recommendation(id, None)?
                .ok_or_else(|| ServiceError::UnknownRecommendation { id: id.clone(), revision: None })?;
            let change = record.change.clone();
            if approve
                && change.tier == Some(3)
                && let Err(e) = self.check_step_up("approving a tier-3 change", who)
            {
                self.metrics.reviews.with_label_values(&[action, "refused"]).inc();
                info!(error = %e, "review refused: sign-in too old");
                return Err(e);
            }
            let result = if approve {
                cairn_workflow::approve(&change, &record.recommendation, principal, revision, reason, now)
            } else {
                cairn_workflow::reject(&change, &record.recommendation, principal, revision, reason, now)
            };
            let (next, mut drafts) = match result {
                Ok(ok) => ok,
                Err(e) => {
                    self.metrics.reviews.with_label_values(&[action, "refused"]).inc();
                    if matches!(e, cairn_workflow::ReviewError::Expired { .. }) {
                        self.store.expire_pending(now)?;
                    }
                    info!(error = %e, "review refused");
                    return Err(e.into());
                }
            };
            for d in &mut drafts {
                if let Some(payload) = d.payload.as_object_mut() {
                    payload.insert("authentication".into(), who.authentication());
                }
            }
            match self.store.update_change(&next, change.version, &drafts, now) {
                Ok(()) => {
                    self.metrics.reviews.with_label_values(&[action, "accepted"]).inc();
                    let message = match (approve, next.state) {
                        (true, ChangeState::Approved) => {
                            self.observe_approved(&next, now);
                            self.wake_executor();
                            format!(
                                "approved: quorum of {} met; the executor will run it",
                                next.approvals_required
                            )
                        }
                        (true, ChangeState::AwaitingStageApproval) => format!(
                            "approval of stage {} recorded; more approvals needed",
                            next.next_stage().unwrap_or_default()
                        ),
                        (true, _) => format!(
                            "approval {} of {} recorded",
                            next.approvals.len(),
                            next.approvals_required
                        ),
                        (false, ChangeState::RollbackPending) => {
                            self.wake_executor();
                            format!(
                                "rejected: the rollout stops and its {} executed stage(s) are rolled back, newest first",
                                next.stages_done
                            )
                        }
                        (false, _) => "rejected: the change will not run".to_string(),
                    };
                    info!(change_id = %next.id, state = next.state.as_str(), "review recorded");
                    return Ok((next, message));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contended)
    }

    /// Expires stale pending changes, claims approved ones and runs them. Async because adapters
    /// do I/O; store calls are short.
    pub async fn execute_ready(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let claimed = self
            .on_blocking(|engine| {
                let now = engine.clock.now_ms();
                // Changes whose executor died mid-way first: they may block their target (`recover.rs`).
                if let Err(e) = engine.recover_interrupted(now) {
                    warn!(error = %e, "recovery of interrupted changes failed; retried on the next pass");
                }
                engine.store.expire_pending(now)?;
                engine.sweep_breakglass(now)?;
                // Stopped rollouts first: undoing comes before doing more.
                let rollbacks = engine.store.claim_rollbacks(16, now)?;
                let waiting = crate::policy::waiting_for_window(engine, now)?;
                let claimed = engine.store.claim_approved_except(16, now, &waiting)?;
                Ok((rollbacks, claimed))
            })
            .await?;
        let (rollbacks, claimed) = claimed;
        let n = rollbacks.len() + claimed.len();
        // The whole batch is claimed now and run one change after another: while one runs, the
        // leases of those still waiting their turn are renewed with it, so a slow change does not
        // let the rest look abandoned.
        let mut waiting: Vec<ChangeId> = rollbacks.iter().chain(&claimed).map(|c| c.id.clone()).collect();
        for change in rollbacks {
            waiting.retain(|id| id != &change.id);
            self.roll_back_one(change, &waiting).await?;
        }
        for change in claimed {
            waiting.retain(|id| id != &change.id);
            self.execute_one(change, &waiting).await?;
        }
        Ok(n)
    }

    /// Undoes the executed stages of a stopped rollout the store handed out, records the result
    /// (and escalates a failed rollback) like any execution.
    async fn roll_back_one(self: &Arc<Self>, change: ChangeRequest, waiting: &[ChangeId]) -> Result<(), ServiceError> {
        let span = info_span!("roll_back", change_id = %change.id, recommendation_id = %change.recommendation_id, revision = change.revision);
        let (id, rev) = (change.recommendation_id.clone(), change.revision);
        let record = self.on_blocking(move |e| Ok(e.store.get_recommendation(&id, Some(rev))?)).await?;
        let Some(RecommendationRecord { recommendation, .. }) = record else {
            return Err(ServiceError::Orphaned(change.id.clone()));
        };
        let now = self.clock.now_ms();
        let undo = {
            let _g = span.enter();
            self.executor.roll_back_stopped(&change, &recommendation, now)
        };
        let result = self.renewing_lease(&change.id, waiting, undo).await;
        let (execution, next, drafts) = match result {
            Ok(done) => done,
            Err(cairn_workflow::ExecutionRefused::ClaimLost(why)) => {
                warn!(parent: &span, %why, "claim on the change lost mid-rollback; recovery decided its state");
                return Ok(());
            }
            Err(refused) => {
                // Cannot happen for a change the store handed out; if it does, its stages may
                // still be in place: leave it visibly `rollback_failed` for people.
                warn!(parent: &span, error = %refused, "rollback of a stopped rollout refused");
                let mut next = change.clone();
                next.advance(ChangeState::RollbackFailed, now);
                let drafts = vec![cairn_types::AuditDraft::for_change(
                    &next,
                    cairn_types::CAIRN_SERVICE_SUBJECT,
                    "change.rollback_failed",
                    format!("rollback of a stopped rollout refused: {refused}"),
                    serde_json::json!({ "state": next.state.as_str() }),
                )];
                let expected = change.version;
                self.on_blocking(move |e| Ok(e.store.update_change(&next, expected, &drafts, now)?)).await?;
                return Ok(());
            }
        };
        let status = if next.state == ChangeState::RolledBack { "rolled_back" } else { "rollback_failed" };
        info!(parent: &span, adapter = %execution.adapter, status, "stopped rollout rolled back");
        self.record_run(change, recommendation, next, execution, drafts, status, now).await
    }

    /// Runs `f` with the engine on a blocking thread: the store is synchronous.
    async fn on_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Engine) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || f(&engine)).await.map_err(|e| ServiceError::WorkerPanicked(e.to_string()))?
    }

    async fn execute_one(self: &Arc<Self>, change: ChangeRequest, waiting: &[ChangeId]) -> Result<(), ServiceError> {
        let span = info_span!("execute", change_id = %change.id, recommendation_id = %change.recommendation_id, revision = change.revision);
        let (id, rev) = (change.recommendation_id.clone(), change.revision);
        let record = self.on_blocking(move |e| Ok(e.store.get_recommendation(&id, Some(rev))?)).await?;
        let Some(RecommendationRecord { recommendation, decision, .. }) = record else {
            return Err(ServiceError::Orphaned(change.id.clone()));
        };
        let stopped = {
            let (change, rec, decision) = (change.clone(), recommendation.clone(), decision.clone());
            self.on_blocking(move |e| crate::policy::stop_if_decided_under_old_policy(e, &change, &rec, &decision)).await?
        };
        if stopped {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let stopped = {
            let (change, rec) = (change.clone(), recommendation.clone());
            self.on_blocking(move |e| e.stop_before_run(&change, &rec, now)).await?
        };
        if stopped {
            return Ok(());
        }
        let executor =
            if recommendation.action == cairn_types::ActionClass::PolicyActivation { &self.policy_executor } else { &self.executor };
        let run = {
            let _g = span.enter();
            executor.run(&change, &recommendation, &decision, now)
        };
        let result = self.renewing_lease(&change.id, waiting, run).await;
        let (execution, next, drafts) = match result {
            Ok(done) => done,
            Err(cairn_workflow::ExecutionRefused::ClaimLost(why)) => {
                // Another sweep recovered the change after this process's lease lapsed; its state
                // and audit event are written, and nothing more touches the target from here.
                warn!(parent: &span, %why, "claim on the change lost; recovery decided its state");
                return Ok(());
            }
            Err(refused) => {
                // Invariant 1: the executor re-checks the decision and the quorum and refused.
                // The change fails visibly instead of running.
                warn!(parent: &span, error = %refused, "execution refused");
                let (next, drafts) = cairn_workflow::refuse(&change, &refused, now);
                let expected = change.version;
                self.on_blocking(move |e| Ok(e.store.update_change(&next, expected, &drafts, now)?)).await?;
                self.metrics.executions.with_label_values(&["none", "refused"]).inc();
                return Ok(());
            }
        };
        let status = match &execution.outcome {
            cairn_types::ExecutionOutcome::Succeeded => "succeeded",
            cairn_types::ExecutionOutcome::DryRun => "dry_run",
            cairn_types::ExecutionOutcome::Failed { .. } => "failed",
        };
        info!(parent: &span, adapter = %execution.adapter, status, "executed");
        self.record_run(change, recommendation, next, execution, drafts, status, now).await
    }

    /// Records what an adapter run (a change's stages, or the undo of a stopped rollout) did: the
    /// execution counter, learning and escalations, then the execution, the change's next state
    /// and their audit events in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn record_run(
        self: &Arc<Self>,
        change: ChangeRequest,
        recommendation: cairn_types::Recommendation,
        next: ChangeRequest,
        execution: cairn_types::Execution,
        mut drafts: Vec<cairn_types::AuditDraft>,
        status: &str,
        now: i64,
    ) -> Result<(), ServiceError> {
        self.metrics.executions.with_label_values(&[&execution.adapter, status]).inc();
        let escalations = self.after_execution(&change, &recommendation, &next, &execution, &mut drafts, now);
        let activated = next.state == ChangeState::Succeeded && recommendation.action == cairn_types::ActionClass::PolicyActivation;
        if activated && let Some(d) = self.policy_adapter.activated(&next, &recommendation) {
            drafts.push(d);
        }
        let expected = change.version;
        self.on_blocking(move |e| Ok(e.store.record_execution(&execution, &next, expected, &drafts, now)?)).await?;
        self.escalate(escalations);
        if activated {
            // What the new version voids is routed again under it.
            self.on_blocking(move |e| crate::policy::reroute_after_activation(e, now)).await?;
        }
        Ok(())
    }

    /// Runs the executor until cancelled: on every approval, and every `interval` in any case.
    pub async fn executor_loop(self: Arc<Self>, interval: std::time::Duration, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.execute_ready().await {
                warn!(error = %e, "executor pass failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.executor_wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
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
