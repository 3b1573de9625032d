//! Guardrail settings and the way escalations reach people, shared by the three parts: the
//! pipeline (break-glass at routing), the review desk (break-glass, freeze, re-enabling) and the
//! executor loop (guardrail holds, lapsed break-glass, failed rollbacks). The rules themselves live
//! in `cairn_workflow::{breakglass, guard}`; this module holds their settings, reads the inputs the
//! guardrails need from the store, and hands escalations to an [`Escalator`].

use crate::metrics::Metrics;
use cairn_store::{GuardStore, StoreError};
use cairn_types::{ActionClass, ChangeRequest, Escalation, FreezeState, Recommendation};
use cairn_workflow::guard::{GuardInputs, GuardrailsConfig, RateLimit};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::warn;

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
    pub(crate) limits: BTreeMap<ActionClass, RateLimit>,
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
    store: &dyn GuardStore,
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

impl Governance {
    /// Hands escalations to the escalator without waiting; without one configured, logs them.
    /// Either way each is counted in `cairn_escalations_total`.
    pub fn escalate(&self, metrics: &Metrics, escalations: Vec<Escalation>) {
        if escalations.is_empty() {
            return;
        }
        let counter = metrics.governance.escalations.clone();
        let handle = tokio::runtime::Handle::try_current();
        match (&self.escalator, handle) {
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
}

/// Sets the gauge of disabled automations from the store (after one was disabled or re-enabled).
pub(crate) fn refresh_disabled_gauge(guards: &dyn GuardStore, metrics: &Metrics) {
    if let Ok(list) = guards.list_disabled_automations() {
        metrics.governance.disabled_automations.set(list.len() as i64);
    }
}

pub(crate) fn freeze_alert(state: &FreezeState, now_ms: i64) -> Escalation {
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
