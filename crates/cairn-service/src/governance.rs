//! The wiring of break-glass and guardrails into the pipeline: where the engine consults them,
//! how their state reaches the store (with audit events in the same transaction), the metrics
//! they move, and the escalations they hand to an [`Escalator`]. The rules themselves live in
//! `cairn_workflow::{breakglass, guard}`; this module only moves values between them, the store,
//! the metrics and the escalator.

use futures::future::BoxFuture;
use std::sync::Arc;
use crate::engine::Engine;
use crate::error::ServiceError;
use cairn_store::StoreError;
use cairn_types::{
    ActionClass, AuditDraft, BreakGlass, BreakGlassState, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState,
    Decision, DisabledAutomation, Escalation, Execution, ExecutionOutcome, FreezeState, Outcome, Principal,
    Recommendation, Target,
};
use cairn_workflow::guard::{self, GuardInputs, GuardrailsConfig, RateLimit};
use cairn_workflow::{BreakGlassRequest, ExecutionRefused, breakglass};
use serde_json::json;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The way escalations reach people (the server's Alertmanager client). Sending happens after
/// the state change and its audit event are committed, and never blocks the pipeline.
pub trait Escalator: Send + Sync + std::fmt::Debug {
    /// Delivers `escalations`; the error says why they were not delivered.
    fn send<'a>(&'a self, escalations: &'a [Escalation]) -> BoxFuture<'a, Result<(), String>>;
}

/// Guardrail settings and the way to people.
#[derive(Debug, Default)]
pub struct Governance {
    pub guardrails: GuardrailsConfig,
    limits: BTreeMap<ActionClass, RateLimit>,
    escalator: Option<Arc<dyn Escalator>>,
}

impl Governance {
    /// `guardrails` must have passed validation (its rate limits parse). Without an escalator,
    /// escalations are only logged and counted as `unconfigured`.
    pub fn new(guardrails: GuardrailsConfig, escalator: Option<Arc<dyn Escalator>>) -> Result<Governance, String> {
        let limits = guardrails.parsed_rate_limits()?;
        Ok(Governance { guardrails, limits, escalator })
    }
}

/// What the guardrails need to know about `change` (claimed, about to run) from the store: the
/// freeze switch, whether its automation is disabled, and the runs counted by the loop guard and
/// its action class's rate limit. Public for the `guard-cost` benchmark.
pub fn guard_inputs(
    store: &dyn cairn_store::Store,
    governance: &Governance,
    change: &ChangeRequest,
    rec: &Recommendation,
    now_ms: i64,
) -> Result<GuardInputs, StoreError> {
    let since = now_ms - governance.guardrails.loop_guard_window_ms();
    let earlier_runs_on_target = store.count_runs_on_target(rec.action, &rec.target, since, &change.id)?;
    let earlier_auto_runs_of_class = match governance.limits.get(&rec.action) {
        Some(limit) => {
            let since = now_ms - limit.per_ms;
            let all = store.count_auto_runs(rec.action, since)?;
            // This change is already claimed (executing) and counted when inside the window.
            all.saturating_sub(u32::from(rec.created_ms >= since))
        }
        None => 0,
    };
    Ok(GuardInputs {
        freeze: store.freeze_state()?,
        disabled: store.disabled_automation(rec.action, &rec.target)?,
        earlier_runs_on_target,
        earlier_auto_runs_of_class,
    })
}

/// Risky: could break more than one service, or cannot be fully undone.
fn is_risky(rec: &Recommendation) -> bool {
    rec.blast_radius >= cairn_types::BlastRadius::Cluster || rec.reversibility != cairn_types::Reversibility::Reversible
}

impl Engine {
    /// Sends escalations to Alertmanager without waiting; without one configured, logs them.
    pub(crate) fn escalate(&self, escalations: Vec<Escalation>) {
        if escalations.is_empty() {
            return;
        }
        let counter = self.metrics.governance.escalations.clone();
        let handle = tokio::runtime::Handle::try_current();
        match (&self.governance.escalator, handle) {
            (Some(am), Ok(handle)) => {
                let am = am.clone();
                handle.spawn(async move {
                    let result = am.send(&escalations).await;
                    for e in &escalations {
                        counter.with_label_values(&[e.alertname.as_str(), if result.is_ok() { "sent" } else { "failed" }]).inc();
                    }
                    if let Err(err) = result {
                        warn!(error = %err, alerts = escalations.len(), "escalation not delivered to Alertmanager");
                    }
                });
            }
            _ => {
                for e in &escalations {
                    counter.with_label_values(&[e.alertname.as_str(), "unconfigured"]).inc();
                    warn!(alertname = %e.alertname, summary = %e.summary, "escalation (set alerting.alertmanager_url to deliver it)");
                }
            }
        }
    }

    /// Counts a routed recommendation for the "share of risky actions escalated" series.
    pub(crate) fn observe_routed(&self, rec: &Recommendation, decision: &Decision) {
        if is_risky(rec) {
            let escalated = if decision.outcome == Outcome::Auto { "false" } else { "true" };
            self.metrics.governance.risky_actions.with_label_values(&[escalated]).inc();
        }
    }

    /// Observes the approval latency of a change that just reached its quorum.
    pub(crate) fn observe_approved(&self, change: &ChangeRequest, now_ms: i64) {
        let tier = change.tier.map(|t| t.to_string()).unwrap_or_else(|| "none".into());
        let secs = (now_ms - change.created_ms).max(0) as f64 / 1000.0;
        self.metrics.governance.approval_latency.with_label_values(&[&tier]).observe(secs);
    }

    /// At routing, a `blocked` decision for a recommendation an active break-glass covers becomes
    /// two-person review under it, and the use is recorded (audit, metrics, alert). Any other
    /// decision passes unchanged. Blocking.
    pub(crate) fn breakglass_for_blocked(
        &self,
        rec: &Recommendation,
        decision: Decision,
        active: &[BreakGlass],
        now_ms: i64,
    ) -> Result<Decision, ServiceError> {
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
            .map_err(ServiceError::from)
            .and_then(|(used, drafts, alerts)| {
                self.store.use_breakglass(&used, &change.id, &drafts, now_ms)?;
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
        self.escalate(alerts);
        Ok(under)
    }

    /// Immediately before the executor: a change opened under a break-glass runs only while that
    /// break-glass is in force, and a change that would run by itself passes the guardrails.
    /// `true` when the change was refused or held (and that was written). Blocking.
    pub(crate) fn stop_before_run(&self, change: &ChangeRequest, rec: &Recommendation, now_ms: i64) -> Result<bool, ServiceError> {
        if let Some(bg) = self.store.breakglass_for_change(&change.id)?
            && let Err(lapsed) = breakglass::check_in_force(&bg, now_ms)
        {
            let refused = ExecutionRefused::BreakGlassLapsed(lapsed.to_string());
            let (next, drafts) = cairn_workflow::refuse(change, &refused, now_ms);
            self.store.update_change(&next, change.version, &drafts, now_ms)?;
            self.metrics.executions.with_label_values(&["none", "refused"]).inc();
            self.metrics.governance.change_results.with_label_values(&[change.outcome.as_str(), "refused"]).inc();
            warn!(change_id = %change.id, error = %refused, "execution refused");
            return Ok(true);
        }
        if change.outcome != Outcome::Auto || !change.approvals.is_empty() {
            return Ok(false);
        }
        let cfg = &self.governance.guardrails;
        let inputs = guard_inputs(self.store.as_ref(), &self.governance, change, rec, now_ms)?;
        let Some(why) = guard::check(cfg, &self.governance.limits, change, rec, &inputs) else {
            return Ok(false);
        };
        let (next, drafts, disabled) =
            guard::hold(change, rec, &why, now_ms, self.workflow.pending_ttl_ms, &cfg.approver_groups);
        self.store.hold_change(&next, change.version, disabled.as_ref().map(|(d, _)| d), &drafts, now_ms)?;
        self.metrics.governance.guardrail_holds.with_label_values(&[why.kind()]).inc();
        info!(change_id = %change.id, guardrail = why.kind(), reason = %why.describe(), "auto change held for a person");
        if let Some((_, escalation)) = disabled {
            self.refresh_disabled_gauge();
            self.escalate(vec![escalation]);
        }
        Ok(true)
    }

    /// After the executor ran a change and before its result is written: governance metrics, and
    /// for a failed rollback the audit draft and the escalation (sent once the write succeeded).
    pub(crate) fn after_execution(
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
    pub(crate) fn sweep_breakglass(&self, now_ms: i64) -> Result<usize, ServiceError> {
        let active = self.store.list_breakglass(true)?;
        let g = &self.metrics.governance;
        let mut closed = 0;
        let mut alerts = Vec::new();
        for bg in &active {
            let Some((next, drafts, a)) = breakglass::expire(bg, now_ms) else { continue };
            match self.store.save_breakglass(&next, &drafts, now_ms) {
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
        self.escalate(alerts);
        Ok(closed)
    }

    /// A person opens a break-glass. Blocking.
    pub fn open_breakglass(&self, who: &Principal, req: BreakGlassRequest) -> Result<BreakGlass, ServiceError> {
        let now = self.clock.now_ms();
        let (bg, drafts, alerts) = breakglass::open(who, req, now)?;
        self.store.save_breakglass(&bg, &drafts, now)?;
        let g = &self.metrics.governance;
        g.breakglass_events.with_label_values(&["opened", &who.subject]).inc();
        g.guardrail_overrides.with_label_values(&[&who.subject, "breakglass_opened"]).inc();
        g.breakglass_active.inc();
        info!(breakglass_id = %bg.id, owner = %bg.owner, expires_ms = bg.expires_ms, "break-glass opened");
        self.escalate(alerts);
        Ok(bg)
    }

    /// A person closes a break-glass early. Blocking.
    pub fn revoke_breakglass(&self, who: &Principal, id: &str, reason: &str) -> Result<BreakGlass, ServiceError> {
        let now = self.clock.now_ms();
        let bg = self.store.get_breakglass(id)?.ok_or_else(|| ServiceError::UnknownBreakGlass(id.to_string()))?;
        let (next, drafts, alerts) = breakglass::revoke(&bg, who, reason, now)?;
        self.store.save_breakglass(&next, &drafts, now)?;
        self.metrics.governance.breakglass_events.with_label_values(&["revoked", &who.subject]).inc();
        self.metrics.governance.breakglass_active.dec();
        self.escalate(alerts);
        Ok(next)
    }

    pub fn list_breakglass(&self, active_only: bool) -> Result<Vec<BreakGlass>, ServiceError> {
        Ok(self.store.list_breakglass(active_only)?)
    }

    /// A person flips the global freeze. Blocking.
    pub fn set_freeze(&self, who: &Principal, frozen: bool, reason: &str) -> Result<FreezeState, ServiceError> {
        let now = self.clock.now_ms();
        let before = self.store.freeze_state()?;
        let (state, draft) = guard::set_freeze(who, frozen, reason, now).map_err(ServiceError::GuardrailRefused)?;
        self.store.set_freeze(&state, &[draft], now)?;
        let g = &self.metrics.governance;
        g.frozen.set(i64::from(frozen));
        if !frozen && before.is_some_and(|b| b.frozen) {
            g.guardrail_overrides.with_label_values(&[&who.subject, "freeze_off"]).inc();
        }
        self.escalate(vec![freeze_alert(&state, now)]);
        if !frozen {
            // Changes the freeze held are pending approval; nothing else needs waking.
            self.wake_executor();
        }
        Ok(state)
    }

    /// Applies `guardrails.freeze = true` from the configuration at start-up (audited as `config`).
    pub fn apply_configured_freeze(&self) -> Result<(), ServiceError> {
        let current = self.store.freeze_state()?;
        let frozen = current.as_ref().is_some_and(|f| f.frozen);
        self.metrics.governance.frozen.set(i64::from(frozen || self.governance.guardrails.freeze));
        self.refresh_disabled_gauge();
        self.metrics.governance.breakglass_active.set(self.store.list_breakglass(true)?.len() as i64);
        if !self.governance.guardrails.freeze || frozen {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let state = FreezeState { frozen: true, reason: "guardrails.freeze = true in the configuration".into(), by: "config".into(), at_ms: now };
        let draft = AuditDraft {
            actor: CAIRN_SERVICE_SUBJECT.into(),
            kind: "freeze.on".into(),
            reason: state.reason.clone(),
            payload: json!({ "frozen": true, "by": "config" }),
            ..Default::default()
        };
        self.store.set_freeze(&state, &[draft], now)?;
        self.escalate(vec![freeze_alert(&state, now)]);
        Ok(())
    }

    /// A person turns an automation the loop guard disabled back on. Blocking.
    pub fn enable_automation(&self, who: &Principal, action: ActionClass, target: &Target, reason: &str) -> Result<bool, ServiceError> {
        let now = self.clock.now_ms();
        let draft = guard::enable(who, action, target, reason).map_err(ServiceError::GuardrailRefused)?;
        let enabled = self.store.enable_automation(action, target, &[draft], now)?;
        if enabled {
            self.metrics.governance.guardrail_overrides.with_label_values(&[&who.subject, "automation_enabled"]).inc();
            self.refresh_disabled_gauge();
            self.escalate(vec![guard::loop_guard_resolved(action, target, &who.subject, now)]);
        }
        Ok(enabled)
    }

    /// The freeze switch and the disabled automations.
    pub fn guardrail_status(&self) -> Result<(Option<FreezeState>, Vec<DisabledAutomation>), ServiceError> {
        Ok((self.store.freeze_state()?, self.store.list_disabled_automations()?))
    }

    fn refresh_disabled_gauge(&self) {
        if let Ok(list) = self.store.list_disabled_automations() {
            self.metrics.governance.disabled_automations.set(list.len() as i64);
        }
    }
}

fn freeze_alert(state: &FreezeState, now_ms: i64) -> Escalation {
    Escalation {
        alertname: "CairnFrozen".into(),
        severity: "info".into(),
        labels: BTreeMap::new(),
        summary: if state.frozen { format!("Cairn is frozen by {}: nothing runs by itself", state.by) } else { format!("freeze lifted by {}", state.by) },
        description: state.reason.clone(),
        starts_ms: state.at_ms,
        ends_ms: (!state.frozen).then_some(now_ms),
    }
}
