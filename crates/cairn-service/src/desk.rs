//! The review desk: what people do to changes and to the guardrails around them — approve,
//! reject, open and revoke a break-glass, switch the freeze, re-enable an automation the loop guard
//! disabled, propose a policy (`policy.rs`) — and the decision card they read first (`card.rs`).
//!
//! Each act is checked by the rules in `cairn-workflow` (who may, which revision, which quorum)
//! and written with its audit events in the store's own transaction. The desk is given the change,
//! signal and guardrail stores, the active router, the maintenance windows, the pipeline (a policy
//! proposal is routed like any recommendation), the guardrail settings and escalator, the clock,
//! the step-up rule, and the executor's wake-up. It never runs a change.

use crate::engine::{Changes, Clock, Guards, Signals};
use crate::governance::{Governance, freeze_alert, refresh_disabled_gauge};
use crate::identity::{Identity, StepUp, StepUpDenied};
use crate::metrics::Metrics;
use crate::pipeline::{AnalysisError, Pipeline};
use crate::policy::ActiveRouter;
use cairn_store::StoreError;
use cairn_types::{
    ActionClass, AuditDraft, BreakGlass, CAIRN_SERVICE_SUBJECT, ChangeRequest, ChangeState, DisabledAutomation,
    FreezeState, Principal, RecommendationId, Target,
};
use cairn_workflow::guard;
use cairn_workflow::{BreakGlassRequest, MaintenanceWindows, breakglass};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::{info, info_span};

/// Why a person's act at the desk did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReviewDeskError {
    /// The store refused or failed a read or a write.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The review rules refused an approval or a rejection.
    #[error(transparent)]
    Review(#[from] cairn_workflow::ReviewError),
    /// The break-glass rules refused to open or revoke one.
    #[error(transparent)]
    BreakGlass(#[from] cairn_workflow::BreakGlassError),
    #[error("no recommendation {id}{}", revision.map(|r| format!(" at revision {r}")).unwrap_or_default())]
    UnknownRecommendation { id: RecommendationId, revision: Option<u32> },
    #[error("no break-glass {0}")]
    UnknownBreakGlass(String),
    /// A sign-in too old (or a static token) for an act that needs a recent one.
    #[error(transparent)]
    StaleSignIn(#[from] StepUpDenied),
    /// The freeze switch or an automation's re-enabling was refused (no reason, not a person).
    #[error("{0}")]
    GuardrailRefused(String),
    /// A policy proposal without a reason, or a proposed or shadow-evaluated bundle that does not
    /// load or whose own tests fail.
    #[error("{0}")]
    InvalidBundle(String),
    /// Concurrent reviews kept moving the change between our read and our write.
    #[error("the change kept changing under concurrent reviews; try again")]
    Contended,
    /// A proposal that was routed but cannot be read back.
    #[error("the proposal was not stored")]
    ProposalNotStored,
    /// The bundle's files could not be written into the proposal.
    #[error("the proposal cannot be encoded: {0}")]
    Encoding(String),
    /// Routing a proposal through the pipeline failed.
    #[error(transparent)]
    Routing(#[from] AnalysisError),
}

/// What the desk is given.
#[derive(Debug)]
pub struct ReviewDeskDeps {
    pub changes: Changes,
    /// The decision card reads incidents and firing alerts.
    pub signals: Signals,
    pub guards: Guards,
    /// A policy proposal is routed and opened like any recommendation.
    pub pipeline: Arc<Pipeline>,
    pub router: Arc<ActiveRouter>,
    /// The decision card says whether a window is open for the target.
    pub windows: MaintenanceWindows,
    pub governance: Arc<Governance>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// How fresh a sign-in must be for tier-3 approvals, break-glass and policy proposals.
    pub step_up: StepUp,
    /// Whether an OpenID issuer is configured (decides whether static person tokens pass step-up).
    pub oidc_configured: bool,
    /// Woken after an approval, a rejection that stops a rollout, and the freeze lifted.
    pub executor_wake: Arc<Notify>,
}

/// The review desk. Every act is blocking: call it off the async runtime.
#[derive(Debug)]
pub struct ReviewDesk {
    pub(crate) changes: Changes,
    pub(crate) signals: Signals,
    guards: Guards,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) router: Arc<ActiveRouter>,
    pub(crate) windows: MaintenanceWindows,
    governance: Arc<Governance>,
    metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    step_up: StepUp,
    oidc_configured: bool,
    executor_wake: Arc<Notify>,
}

impl ReviewDesk {
    pub fn new(d: ReviewDeskDeps) -> ReviewDesk {
        let ReviewDeskDeps {
            changes,
            signals,
            guards,
            pipeline,
            router,
            windows,
            governance,
            metrics,
            clock,
            step_up,
            oidc_configured,
            executor_wake,
        } = d;
        ReviewDesk { changes, signals, guards, pipeline, router, windows, governance, metrics, clock, step_up, oidc_configured, executor_wake }
    }

    /// Whether `who` signed in recently enough for `what` (see [`StepUp`]).
    pub fn check_step_up(&self, what: &'static str, who: &Identity) -> Result<(), ReviewDeskError> {
        self.step_up
            .check(what, who, self.oidc_configured, self.clock.now_ms() / 1000)
            .map_err(ReviewDeskError::from)
    }

    /// Approves (or rejects) one exact revision as `who`. Blocking. Approving a tier-3 change
    /// needs a recent sign-in; every review record states how its reviewer authenticated.
    pub fn review(
        &self,
        who: &Identity,
        id: &RecommendationId,
        revision: u32,
        reason: &str,
        approve: bool,
    ) -> Result<(ChangeRequest, String), ReviewDeskError> {
        let principal = &who.principal;
        let action = if approve { "approve" } else { "reject" };
        let span = info_span!("review", recommendation_id = %id, revision, subject = %principal.subject, action);
        let _g = span.enter();
        // A racing reviewer can bump the version between our read and write; re-read and retry.
        for _ in 0..3 {
            let now = self.clock.now_ms();
            let record = self
                .changes
                .get_recommendation(id, None)?
                .ok_or_else(|| ReviewDeskError::UnknownRecommendation { id: id.clone(), revision: None })?;
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
                        self.changes.expire_pending(now)?;
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
            match self.changes.update_change(&next, change.version, &drafts, now) {
                Ok(()) => {
                    self.metrics.reviews.with_label_values(&[action, "accepted"]).inc();
                    let message = match (approve, next.state) {
                        (true, ChangeState::Approved) => {
                            self.observe_approved(&next, now);
                            self.executor_wake.notify_one();
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
                            self.executor_wake.notify_one();
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
        Err(ReviewDeskError::Contended)
    }

    /// Observes the approval latency of a change that just reached its quorum.
    fn observe_approved(&self, change: &ChangeRequest, now_ms: i64) {
        let tier = change.tier.map(|t| t.to_string()).unwrap_or_else(|| "none".into());
        let secs = (now_ms - change.created_ms).max(0) as f64 / 1000.0;
        self.metrics.governance.approval_latency.with_label_values(&[&tier]).observe(secs);
    }

    /// A person opens a break-glass. Blocking.
    pub fn open_breakglass(&self, who: &Principal, req: BreakGlassRequest) -> Result<BreakGlass, ReviewDeskError> {
        let now = self.clock.now_ms();
        let (bg, drafts, alerts) = breakglass::open(who, req, now)?;
        self.guards.save_breakglass(&bg, &drafts, now)?;
        let g = &self.metrics.governance;
        g.breakglass_events.with_label_values(&["opened", &who.subject]).inc();
        g.guardrail_overrides.with_label_values(&[&who.subject, "breakglass_opened"]).inc();
        g.breakglass_active.inc();
        info!(breakglass_id = %bg.id, owner = %bg.owner, expires_ms = bg.expires_ms, "break-glass opened");
        self.governance.escalate(&self.metrics, alerts);
        Ok(bg)
    }

    /// A person closes a break-glass early. Blocking.
    pub fn revoke_breakglass(&self, who: &Principal, id: &str, reason: &str) -> Result<BreakGlass, ReviewDeskError> {
        let now = self.clock.now_ms();
        let bg = self.guards.get_breakglass(id)?.ok_or_else(|| ReviewDeskError::UnknownBreakGlass(id.to_string()))?;
        let (next, drafts, alerts) = breakglass::revoke(&bg, who, reason, now)?;
        self.guards.save_breakglass(&next, &drafts, now)?;
        self.metrics.governance.breakglass_events.with_label_values(&["revoked", &who.subject]).inc();
        self.metrics.governance.breakglass_active.dec();
        self.governance.escalate(&self.metrics, alerts);
        Ok(next)
    }

    pub fn list_breakglass(&self, active_only: bool) -> Result<Vec<BreakGlass>, ReviewDeskError> {
        Ok(self.guards.list_breakglass(active_only)?)
    }

    /// A person flips the global freeze. Blocking.
    pub fn set_freeze(&self, who: &Principal, frozen: bool, reason: &str) -> Result<FreezeState, ReviewDeskError> {
        let now = self.clock.now_ms();
        let before = self.guards.freeze_state()?;
        let (state, draft) = guard::set_freeze(who, frozen, reason, now).map_err(ReviewDeskError::GuardrailRefused)?;
        self.guards.set_freeze(&state, &[draft], now)?;
        let g = &self.metrics.governance;
        g.frozen.set(i64::from(frozen));
        if !frozen && before.is_some_and(|b| b.frozen) {
            g.guardrail_overrides.with_label_values(&[&who.subject, "freeze_off"]).inc();
        }
        self.governance.escalate(&self.metrics, vec![freeze_alert(&state, now)]);
        if !frozen {
            // Changes the freeze held are pending approval; nothing else needs waking.
            self.executor_wake.notify_one();
        }
        Ok(state)
    }

    /// Applies `guardrails.freeze = true` from the configuration at start-up (audited as `config`).
    pub fn apply_configured_freeze(&self) -> Result<(), ReviewDeskError> {
        let current = self.guards.freeze_state()?;
        let frozen = current.as_ref().is_some_and(|f| f.frozen);
        self.metrics.governance.frozen.set(i64::from(frozen || self.governance.guardrails.freeze));
        refresh_disabled_gauge(self.guards.as_ref(), &self.metrics);
        self.metrics.governance.breakglass_active.set(self.guards.list_breakglass(true)?.len() as i64);
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
        self.guards.set_freeze(&state, &[draft], now)?;
        self.governance.escalate(&self.metrics, vec![freeze_alert(&state, now)]);
        Ok(())
    }

    /// A person turns an automation the loop guard disabled back on. Blocking.
    pub fn enable_automation(&self, who: &Principal, action: ActionClass, target: &Target, reason: &str) -> Result<bool, ReviewDeskError> {
        let now = self.clock.now_ms();
        let draft = guard::enable(who, action, target, reason).map_err(ReviewDeskError::GuardrailRefused)?;
        let enabled = self.guards.enable_automation(action, target, &[draft], now)?;
        if enabled {
            self.metrics.governance.guardrail_overrides.with_label_values(&[&who.subject, "automation_enabled"]).inc();
            refresh_disabled_gauge(self.guards.as_ref(), &self.metrics);
            self.governance.escalate(&self.metrics, vec![guard::loop_guard_resolved(action, target, &who.subject, now)]);
        }
        Ok(enabled)
    }

    /// The freeze switch and the disabled automations.
    pub fn guardrail_status(&self) -> Result<(Option<FreezeState>, Vec<DisabledAutomation>), ReviewDeskError> {
        Ok((self.guards.freeze_state()?, self.guards.list_disabled_automations()?))
    }

}
