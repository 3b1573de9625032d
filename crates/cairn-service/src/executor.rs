//! The executor loop: recover → expire → claim → guard → run → verify → record → escalate. On
//! every pass it recovers changes whose holder died (`recover.rs`), expires what waited too long,
//! sweeps lapsed break-glass, claims what may run now (leaving those waiting for a window), stops
//! what a guardrail or a lapsed break-glass holds, runs the rest through the workflow's
//! [`Executor`] (the only path to an adapter, policy activations included), and records each
//! result with its audit events in one store transaction, escalating what people must see.
//!
//! It is given the change, guardrail and lease stores, the workflow executor (and the policy
//! adapter behind the same gate), the pipeline (what a new policy version voids is routed again),
//! the active router, the guardrail settings and escalator, the clock, and its wake-up. It never
//! approves anything.

use crate::engine::{Changes, Clock, Guards, Leases};
use crate::governance::{Governance, guard_inputs, refresh_disabled_gauge};
use crate::metrics::Metrics;
use crate::pipeline::{AnalysisError, Pipeline};
use crate::policy::{ActiveRouter, PolicyAdapter};
use cairn_store::{RecommendationRecord, StoreError};
use cairn_types::{
    AuditDraft, CAIRN_SERVICE_SUBJECT, ChangeId, ChangeRequest, ChangeState, Escalation, Execution, ExecutionOutcome,
    Outcome, Recommendation,
};
use cairn_workflow::guard;
use cairn_workflow::{ExecutionRefused, Executor, WorkflowConfig, breakglass};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::{info, info_span, warn};

/// Why an executor pass, or one change in it, stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The store refused or failed a read or a write; the next pass tries again.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A change whose recommendation revision is missing from the store.
    #[error("change {0} has no recommendation")]
    Orphaned(ChangeId),
    /// Blocking store work panicked on its thread.
    #[error("worker panicked: {0}")]
    WorkerPanicked(String),
    /// Routing again what a new policy version voided failed.
    #[error(transparent)]
    Routing(#[from] AnalysisError),
}

/// What the executor loop is given.
#[derive(Debug)]
pub struct ExecutorLoopDeps {
    pub changes: Changes,
    /// Break-glass in force, the freeze, disabled automations, and the runs the guardrails count.
    pub guards: Guards,
    pub leases: Leases,
    /// The workflow's executor: its gate re-checks every change right before the adapter.
    pub executor: Executor,
    /// What a new policy version voids is routed again through it.
    pub pipeline: Arc<Pipeline>,
    pub router: Arc<ActiveRouter>,
    pub governance: Arc<Governance>,
    /// How long a change a guardrail holds waits for a person.
    pub workflow: WorkflowConfig,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Wakes the loop early (after an approval, say).
    pub wake: Arc<Notify>,
}

/// The executor loop. Share it as `Arc<ExecutorLoop>`: store work runs on the blocking pool.
#[derive(Debug)]
pub struct ExecutorLoop {
    pub(crate) changes: Changes,
    guards: Guards,
    pub(crate) leases: Leases,
    pub(crate) executor: Executor,
    /// The executor's gate and journal in front of the policy adapter: policy activations run
    /// through it like any change.
    policy_executor: Executor,
    policy_adapter: Arc<PolicyAdapter>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) router: Arc<ActiveRouter>,
    pub(crate) governance: Arc<Governance>,
    workflow: WorkflowConfig,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl ExecutorLoop {
    pub fn new(d: ExecutorLoopDeps) -> ExecutorLoop {
        let ExecutorLoopDeps { changes, guards, leases, executor, pipeline, router, governance, workflow, metrics, clock, wake } = d;
        let policy_adapter = Arc::new(PolicyAdapter::new(router.clone()));
        ExecutorLoop {
            changes,
            guards,
            leases,
            policy_executor: executor.with_adapter(policy_adapter.clone()),
            policy_adapter,
            executor,
            pipeline,
            router,
            governance,
            workflow,
            metrics,
            clock,
            wake,
        }
    }

    /// Wakes the loop for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Expires stale pending changes, claims approved ones and runs them. Async because adapters
    /// do I/O; store calls are short.
    pub async fn execute_ready(self: &Arc<Self>) -> Result<usize, ExecutorError> {
        let claimed = self
            .on_blocking(|ex| {
                let now = ex.clock.now_ms();
                // Changes whose executor died mid-way first: they may block their target (`recover.rs`).
                if let Err(e) = ex.recover_interrupted(now) {
                    warn!(error = %e, "recovery of interrupted changes failed; retried on the next pass");
                }
                ex.changes.expire_pending(now)?;
                ex.sweep_breakglass(now)?;
                // Stopped rollouts first: undoing comes before doing more.
                let rollbacks = ex.changes.claim_rollbacks(16, now)?;
                let waiting = crate::policy::waiting_for_window(ex, now)?;
                let claimed = ex.changes.claim_approved_except(16, now, &waiting)?;
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
    async fn roll_back_one(self: &Arc<Self>, change: ChangeRequest, waiting: &[ChangeId]) -> Result<(), ExecutorError> {
        let span = info_span!("roll_back", change_id = %change.id, recommendation_id = %change.recommendation_id, revision = change.revision);
        let (id, rev) = (change.recommendation_id.clone(), change.revision);
        let record = self.on_blocking(move |e| Ok(e.changes.get_recommendation(&id, Some(rev))?)).await?;
        let Some(RecommendationRecord { recommendation, .. }) = record else {
            return Err(ExecutorError::Orphaned(change.id.clone()));
        };
        let now = self.clock.now_ms();
        let undo = {
            let _g = span.enter();
            self.executor.roll_back_stopped(&change, &recommendation, now)
        };
        let result = self.renewing_lease(&change.id, waiting, undo).await;
        let (execution, next, drafts) = match result {
            Ok(done) => done,
            Err(ExecutionRefused::ClaimLost(why)) => {
                warn!(parent: &span, %why, "claim on the change lost mid-rollback; recovery decided its state");
                return Ok(());
            }
            Err(refused) => {
                // Cannot happen for a change the store handed out; if it does, its stages may
                // still be in place: leave it visibly `rollback_failed` for people.
                warn!(parent: &span, error = %refused, "rollback of a stopped rollout refused");
                let mut next = change.clone();
                next.advance(ChangeState::RollbackFailed, now);
                let drafts = vec![AuditDraft::for_change(
                    &next,
                    CAIRN_SERVICE_SUBJECT,
                    "change.rollback_failed",
                    format!("rollback of a stopped rollout refused: {refused}"),
                    serde_json::json!({ "state": next.state.as_str() }),
                )];
                let expected = change.version;
                self.on_blocking(move |e| Ok(e.changes.update_change(&next, expected, &drafts, now)?)).await?;
                return Ok(());
            }
        };
        let status = if next.state == ChangeState::RolledBack { "rolled_back" } else { "rollback_failed" };
        info!(parent: &span, adapter = %execution.adapter, status, "stopped rollout rolled back");
        self.record_run(change, recommendation, next, execution, drafts, status, now).await
    }

    /// Runs `f` with the loop on a blocking thread: the store is synchronous.
    async fn on_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&ExecutorLoop) -> Result<T, ExecutorError> + Send + 'static,
    ) -> Result<T, ExecutorError> {
        let ex = self.clone();
        tokio::task::spawn_blocking(move || f(&ex)).await.map_err(|e| ExecutorError::WorkerPanicked(e.to_string()))?
    }

    async fn execute_one(self: &Arc<Self>, change: ChangeRequest, waiting: &[ChangeId]) -> Result<(), ExecutorError> {
        let span = info_span!("execute", change_id = %change.id, recommendation_id = %change.recommendation_id, revision = change.revision);
        let (id, rev) = (change.recommendation_id.clone(), change.revision);
        let record = self.on_blocking(move |e| Ok(e.changes.get_recommendation(&id, Some(rev))?)).await?;
        let Some(RecommendationRecord { recommendation, decision, .. }) = record else {
            return Err(ExecutorError::Orphaned(change.id.clone()));
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
            Err(ExecutionRefused::ClaimLost(why)) => {
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
                self.on_blocking(move |e| Ok(e.changes.update_change(&next, expected, &drafts, now)?)).await?;
                self.metrics.executions.with_label_values(&["none", "refused"]).inc();
                return Ok(());
            }
        };
        let status = match &execution.outcome {
            ExecutionOutcome::Succeeded => "succeeded",
            ExecutionOutcome::DryRun => "dry_run",
            ExecutionOutcome::Failed { .. } => "failed",
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
        recommendation: Recommendation,
        next: ChangeRequest,
        execution: Execution,
        mut drafts: Vec<AuditDraft>,
        status: &str,
        now: i64,
    ) -> Result<(), ExecutorError> {
        self.metrics.executions.with_label_values(&[&execution.adapter, status]).inc();
        let escalations = self.after_execution(&change, &recommendation, &next, &execution, &mut drafts, now);
        let activated = next.state == ChangeState::Succeeded && recommendation.action == cairn_types::ActionClass::PolicyActivation;
        if activated && let Some(d) = self.policy_adapter.activated(&next, &recommendation) {
            drafts.push(d);
        }
        let expected = change.version;
        self.on_blocking(move |e| Ok(e.changes.record_execution(&execution, &next, expected, &drafts, now)?)).await?;
        self.governance.escalate(&self.metrics, escalations);
        if activated {
            // What the new version voids is routed again under it.
            self.on_blocking(move |e| crate::policy::reroute_after_activation(e, now)).await?;
        }
        Ok(())
    }

    /// Runs the executor until cancelled: on every approval, and every `interval` in any case.
    pub async fn run(self: Arc<Self>, interval: std::time::Duration, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.execute_ready().await {
                warn!(error = %e, "executor pass failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
    /// Immediately before the executor: a change opened under a break-glass runs only while that
    /// break-glass is in force, and a change that would run by itself passes the guardrails.
    /// `true` when the change was refused or held (and that was written). Blocking.
    fn stop_before_run(&self, change: &ChangeRequest, rec: &Recommendation, now_ms: i64) -> Result<bool, ExecutorError> {
        if let Some(bg) = self.guards.breakglass_for_change(&change.id)?
            && let Err(lapsed) = breakglass::check_in_force(&bg, now_ms)
        {
            let refused = ExecutionRefused::BreakGlassLapsed(lapsed.to_string());
            let (next, drafts) = cairn_workflow::refuse(change, &refused, now_ms);
            self.changes.update_change(&next, change.version, &drafts, now_ms)?;
            self.metrics.executions.with_label_values(&["none", "refused"]).inc();
            self.metrics.governance.change_results.with_label_values(&[change.outcome.as_str(), "refused"]).inc();
            warn!(change_id = %change.id, error = %refused, "execution refused");
            return Ok(true);
        }
        if change.outcome != Outcome::Auto || !change.approvals.is_empty() {
            return Ok(false);
        }
        let cfg = &self.governance.guardrails;
        let inputs = guard_inputs(self.guards.as_ref(), &self.governance, change, rec, now_ms)?;
        let Some(why) = guard::check(cfg, &self.governance.limits, change, rec, &inputs) else {
            return Ok(false);
        };
        let (next, drafts, disabled) =
            guard::hold(change, rec, &why, now_ms, self.workflow.pending_ttl_ms, &cfg.approver_groups);
        self.guards.hold_change(&next, change.version, disabled.as_ref().map(|(d, _)| d), &drafts, now_ms)?;
        self.metrics.governance.guardrail_holds.with_label_values(&[why.kind()]).inc();
        info!(change_id = %change.id, guardrail = why.kind(), reason = %why.describe(), "auto change held for a person");
        if let Some((_, escalation)) = disabled {
            refresh_disabled_gauge(self.guards.as_ref(), &self.metrics);
            self.governance.escalate(&self.metrics, vec![escalation]);
        }
        Ok(true)
    }

    /// After the executor ran a change and before its result is written: governance metrics, and
    /// for a failed rollback the audit draft and the escalation (sent once the write succeeded).
    fn after_execution(
        &self,
        change: &ChangeRequest,
        rec: &Recommendation,
        next: &ChangeRequest,
        execution: &Execution,
        drafts: &mut Vec<AuditDraft>,
        now_ms: i64,
    ) -> Vec<Escalation> {
        let g = &self.metrics.governance;
        let result = match (next.state, &execution.outcome) {
            (ChangeState::Succeeded, ExecutionOutcome::DryRun) => "dry_run",
            (state, _) => state.as_str(),
        };
        g.change_results.with_label_values(&[change.outcome.as_str(), result]).inc();
        match next.state {
            ChangeState::RolledBack => {
                g.rollbacks.with_label_values(&["succeeded"]).inc();
                vec![]
            }
            ChangeState::RollbackFailed => {
                g.rollbacks.with_label_values(&["failed"]).inc();
                let e = guard::rollback_failed_escalation(next, rec, &execution.output, now_ms);
                drafts.push(AuditDraft::for_change(
                    next,
                    CAIRN_SERVICE_SUBJECT,
                    "change.escalated",
                    format!("rollback failed: escalated to people as {}", e.alertname),
                    json!({ "alertname": e.alertname, "labels": e.labels }),
                ));
                vec![e]
            }
            _ => vec![],
        }
    }

    /// Marks expired break-glass records, with their audit events and alerts. Blocking.
    fn sweep_breakglass(&self, now_ms: i64) -> Result<usize, ExecutorError> {
        let active = self.guards.list_breakglass(true)?;
        let g = &self.metrics.governance;
        let mut closed = 0;
        let mut alerts = Vec::new();
        for bg in &active {
            let Some((next, drafts, a)) = breakglass::expire(bg, now_ms) else { continue };
            match self.guards.save_breakglass(&next, &drafts, now_ms) {
                Ok(()) => {
                    closed += 1;
                    alerts.extend(a);
                    g.breakglass_events.with_label_values(&["expired", &bg.owner]).inc();
                    g.breakglass_expiry_lateness.observe((now_ms - bg.expires_ms).max(0) as f64 / 1000.0);
                }
                // Used or revoked concurrently: the next pass sees the new version.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        g.breakglass_active.set((active.len() - closed) as i64);
        self.governance.escalate(&self.metrics, alerts);
        Ok(closed)
    }

}
