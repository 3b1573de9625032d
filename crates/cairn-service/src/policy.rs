//! Policy bundles as changes (invariant 10): proposing a bundle opens a tier-3 change request of
//! action class `policy_activation`; executing it swaps the server's router atomically. Also the
//! executor's view of maintenance windows: approved changes that may not run yet stay approved
//! instead of being claimed.
//!
//! The rules (what tier, who approves, whether it may run now) stay in `cairn-policy` and
//! `cairn-workflow`; this module only builds the proposal, provides the adapter that performs the
//! swap (the executor runs it like any change: it is never called around the executor), and
//! re-routes what the swap voids.

use crate::desk::{ReviewDesk, ReviewDeskError};
use crate::executor::{ExecutorError, ExecutorLoop};
use cairn_policy::{PolicyBundle, PolicyFile, Router};
use cairn_store::{RecommendationFilter, RecommendationRecord, Store};
use cairn_types::{
    ActionClass, AuditDraft, BlastRadius, CAIRN_SERVICE_SUBJECT, ChangeId, ChangeRequest, ChangeState,
    Decision, ExecutionOutcome, IncidentId, Principal, Recommendation, RecommendationId,
    Reversibility, RollbackPlan, Severity, Target, VerificationCheck,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tracing::{info, warn};

/// Parameters of a `policy_activation` recommendation.
pub const BUNDLE_VERSION: &str = "bundle_version";
pub const BUNDLE_FILES: &str = "bundle_files";
pub const PREVIOUS_VERSION: &str = "previous_version";

/// The router the server routes with now. Swapped as a whole: an evaluation uses one version from
/// start to finish.
#[derive(Debug)]
pub struct ActiveRouter(RwLock<Arc<Router>>);

impl ActiveRouter {
    pub fn new(router: Arc<Router>) -> ActiveRouter {
        ActiveRouter(RwLock::new(router))
    }

    pub fn current(&self) -> Arc<Router> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `next` and returns the router it replaced.
    pub fn swap(&self, next: Arc<Router>) -> Arc<Router> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(|p| p.into_inner()), next)
    }
}

/// The target every policy activation names: windows select it like any other target.
pub fn policy_target() -> Target {
    Target { service: "cairn".into(), environment: "production".into(), resource: "policy-bundle".into() }
}

/// Approved changes that need a maintenance window and have none open now: the executor leaves
/// them approved, and they run when a window opens.
pub fn waiting_for_window(ex: &ExecutorLoop, now_ms: i64) -> Result<Vec<ChangeId>, ExecutorError> {
    let windows = &ex.executor.gate().windows;
    let mut waiting = Vec::new();
    // Every approved change, page by page: one the check did not read could be claimed outside
    // its window.
    const PAGE: usize = 500;
    let mut after: Option<(i64, ChangeId)> = None;
    loop {
        let page = ex.changes.approved_changes_after(after.as_ref().map(|(ms, id)| (*ms, id)), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_ms, last.id.clone()));
        let full = page.len() == PAGE;
        for change in page {
            if !(change.requires_window || (change.outcome == cairn_types::Outcome::Review && change.tier == Some(3))) {
                continue;
            }
            let record = ex.changes.get_recommendation(&change.recommendation_id, Some(change.revision))?;
            let open = record.is_some_and(|r| windows.open_for(&r.recommendation.target, now_ms).is_some());
            if !open {
                waiting.push(change.id);
            }
        }
        if !full {
            break;
        }
    }
    Ok(waiting)
}

/// Opens the change request that would activate `files`. Blocking.
pub fn propose(
    desk: &ReviewDesk,
    who: &Principal,
    files: Vec<PolicyFile>,
    reason: &str,
    execution_window: &str,
) -> Result<(RecommendationRecord, String, String), ReviewDeskError> {
    if reason.trim().is_empty() {
        return Err(ReviewDeskError::InvalidBundle("reason is required: why should the policy change?".into()));
    }
    let bundle = PolicyBundle::from_all_files(files).map_err(|e| ReviewDeskError::InvalidBundle(e.to_string()))?;
    let report = cairn_policy::run_policy_tests(&bundle).map_err(|e| ReviewDeskError::InvalidBundle(e.to_string()))?;
    if !report.passed() {
        let failed: Vec<String> =
            report.results.iter().filter(|r| !r.1).map(|r| format!("{} ({})", r.0, r.2)).collect();
        return Err(ReviewDeskError::InvalidBundle(if failed.is_empty() {
            "the bundle has no Rego tests (*_test.rego with test_* rules); a policy is proposed with its tests".into()
        } else {
            format!("the bundle's own Rego tests fail: {}", failed.join("; "))
        }));
    }
    let active = desk.router.current();
    let now = desk.clock.now_ms();
    let version = bundle.version().to_string();
    let id = RecommendationId(format!("rec-policy-{}", &version.trim_start_matches("sha256:")[..16]));
    let revision = desk.changes.get_recommendation(&id, None)?.map_or(1, |r| r.recommendation.revision + 1);
    let files_json = serde_json::to_string(
        &bundle.files().iter().map(|f| json!({ "name": f.name, "text": f.text })).collect::<Vec<_>>(),
    )
    .map_err(|e| ReviewDeskError::Encoding(e.to_string()))?;
    let mut parameters = std::collections::BTreeMap::new();
    parameters.insert(BUNDLE_VERSION.to_string(), version.clone());
    parameters.insert(BUNDLE_FILES.to_string(), files_json);
    parameters.insert(PREVIOUS_VERSION.to_string(), active.version().to_string());
    if !execution_window.trim().is_empty() {
        parameters.insert("execution_window".to_string(), execution_window.trim().to_string());
    }
    let rec = Recommendation {
        id,
        revision,
        incident_id: IncidentId("policy".into()),
        playbook: "policy-activation".into(),
        playbook_version: "1".into(),
        action: ActionClass::PolicyActivation,
        target: policy_target(),
        parameters,
        confidence: 1.0,
        severity: Severity::High,
        blast_radius: BlastRadius::Global,
        reversibility: Reversibility::Reversible,
        rollback_plan: Some(RollbackPlan {
            steps: vec![format!(
                "propose the previous bundle ({}) again with `cairn policy propose`; it is a tier-3 change like this one",
                active.version()
            )],
            owner: who.subject.clone(),
        }),
        verification: vec![VerificationCheck {
            name: "active policy version".into(),
            query: format!("the server routes with {version}"),
            comparator: "==".into(),
            threshold: 1.0,
            within_secs: 0,
        }],
        expected_benefit: reason.trim().to_string(),
        rationale: format!(
            "policy bundle {version} proposed by {} to replace {}; its {} Rego tests pass",
            who.subject,
            active.version(),
            report.results.len()
        ),
        evidence: vec![],
        model_version: "none".into(),
        created_ms: now,
        requester: who.subject.clone(),
    };
    desk.pipeline.route_and_open(rec.clone(), now)?;
    let record = desk
        .changes
        .get_recommendation(&rec.id, Some(rec.revision))?
        .ok_or(ReviewDeskError::ProposalNotStored)?;
    info!(proposed = %version, active = active.version(), by = %who.subject, "policy activation proposed");
    Ok((record, active.version().to_string(), version))
}

/// Routes the `limit` most recent recommendations through a candidate bundle built from `files`
/// and returns (active version, candidate version, evaluated, changed). Blocking; writes nothing.
pub fn shadow(
    desk: &ReviewDesk,
    files: Vec<PolicyFile>,
    limit: usize,
) -> Result<(String, String, usize, Vec<cairn_policy::ShadowChange>), ReviewDeskError> {
    let bundle = PolicyBundle::from_all_files(files).map_err(|e| ReviewDeskError::InvalidBundle(e.to_string()))?;
    let active = desk.router.current();
    let candidate = Router::new(bundle, active.config().clone()).map_err(|e| ReviewDeskError::InvalidBundle(e.to_string()))?;
    let records = desk.changes.list_recommendations(&RecommendationFilter { limit, ..Default::default() })?;
    let recorded: Vec<(Recommendation, Decision)> =
        records.into_iter().map(|r| (r.recommendation, r.decision)).collect();
    let changed = cairn_policy::shadow(&candidate, &recorded, desk.clock.now_ms());
    Ok((active.version().to_string(), candidate.version().to_string(), recorded.len(), changed))
}

/// The bundle a `policy_activation` recommendation carries, checked against its declared version.
pub fn bundle_of(rec: &Recommendation) -> Result<PolicyBundle, String> {
    let files: Vec<serde_json::Value> = rec
        .parameters
        .get(BUNDLE_FILES)
        .ok_or("the proposal carries no bundle files")
        .and_then(|t| serde_json::from_str(t).map_err(|_| "the proposal's bundle files are not readable"))?;
    let files = files
        .into_iter()
        .map(|f| PolicyFile {
            name: f["name"].as_str().unwrap_or_default().to_string(),
            text: f["text"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let bundle = PolicyBundle::from_all_files(files).map_err(|e| e.to_string())?;
    let declared = rec.parameters.get(BUNDLE_VERSION).map(String::as_str).unwrap_or_default();
    if bundle.version() != declared {
        return Err(format!("the files hash to {}, not the declared {declared}", bundle.version()));
    }
    Ok(bundle)
}

/// The adapter policy activations run through: the executor authorises them like any change
/// (decision, quorum, still-authorised approvers, window) and records the execution; executing
/// one swaps the server's router to the change's bundle, and its rollback swaps the earlier one
/// back. What the swap voids is routed again by the executor loop once the execution is recorded
/// ([`PolicyAdapter::activated`], `reroute_after_activation`).
#[derive(Debug)]
pub struct PolicyAdapter {
    router: Arc<ActiveRouter>,
    /// The router each activation replaced, until its result is recorded: its rollback and its
    /// audit event need it.
    replaced: Mutex<HashMap<ChangeId, Arc<Router>>>,
}

impl PolicyAdapter {
    pub fn new(router: Arc<ActiveRouter>) -> PolicyAdapter {
        PolicyAdapter { router, replaced: Mutex::default() }
    }

    fn replaced(&self) -> std::sync::MutexGuard<'_, HashMap<ChangeId, Arc<Router>>> {
        self.replaced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `policy.activated` audit event of an activation that succeeded, naming the version it
    /// replaced; forgets the replaced router.
    pub fn activated(&self, change: &ChangeRequest, rec: &Recommendation) -> Option<AuditDraft> {
        let previous = self.replaced().remove(&change.id)?;
        let version = rec.parameters.get(BUNDLE_VERSION).cloned().unwrap_or_default();
        Some(AuditDraft {
            policy_version: Some(version.clone()),
            ..AuditDraft::for_change(
                change,
                CAIRN_SERVICE_SUBJECT,
                "policy.activated",
                format!("active policy {} → {version}", previous.version()),
                json!({ "previous_version": previous.version(), "version": version }),
            )
        })
    }
}

impl cairn_workflow::Adapter for PolicyAdapter {
    fn name(&self) -> &str {
        "policy"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> cairn_workflow::AdapterFuture<'a> {
        let built = bundle_of(rec).and_then(|b| Router::new(b, self.router.current().config().clone()).map_err(|e| e.to_string()));
        let result = match built {
            Err(e) => (ExecutionOutcome::Failed { error: e.clone() }, e),
            Ok(router) => {
                let version = router.version().to_string();
                let previous = self.router.swap(Arc::new(router));
                let msg = format!("active policy {} → {version}\ncheck active policy version: passed\n", previous.version());
                self.replaced().insert(change.id.clone(), previous);
                (ExecutionOutcome::Succeeded, msg)
            }
        };
        Box::pin(async move { result })
    }

    fn rollback<'a>(&'a self, _: &'a Recommendation, change: &'a ChangeRequest) -> cairn_workflow::AdapterFuture<'a> {
        let result = match self.replaced().remove(&change.id) {
            Some(previous) => {
                let msg = format!("active policy back to {}\n", previous.version());
                self.router.swap(previous);
                (ExecutionOutcome::Succeeded, msg)
            }
            None => (ExecutionOutcome::Failed { error: "no earlier policy recorded for this activation".into() }, String::new()),
        };
        Box::pin(async move { result })
    }
}

/// A new policy version voids earlier approvals (invariant 2): every change still waiting (pending,
/// approved, or paused between stages; not running) that was decided under another version is
/// routed again, as a new revision, under the active one — which decides again, among the rest,
/// whether its stages pause. The store supersedes the earlier change with its audit event; a
/// half-done rollout is stopped and its executed stages are rolled back.
pub(crate) fn reroute_after_activation(ex: &ExecutorLoop, now: i64) -> Result<(), ExecutorError> {
    let active = ex.router.current().version().to_string();
    for state in [ChangeState::PendingApproval, ChangeState::Approved, ChangeState::AwaitingStageApproval] {
        let filter = RecommendationFilter { state: Some(state), limit: 10_000, ..Default::default() };
        for record in ex.changes.list_recommendations(&filter)? {
            if record.change.policy_version == active {
                continue;
            }
            let mut rec = record.recommendation;
            rec.revision += 1;
            rec.created_ms = now;
            info!(recommendation_id = %rec.id, revision = rec.revision, "routed again under the new policy version");
            ex.pipeline.route_and_open(rec, now)?;
        }
    }
    Ok(())
}

/// The bundle to route with at start-up: the most recently activated one in the store (an
/// activation outlives restarts), else the configured one.
pub fn restore_active(store: &dyn Store, configured: PolicyBundle) -> PolicyBundle {
    let latest = match store.active_policy() {
        Ok(latest) => latest,
        Err(e) => {
            warn!(error = %e, "the last activated policy bundle cannot be read; routing with the configured one");
            None
        }
    };
    match latest.map(|r| bundle_of(&r.recommendation)) {
        Some(Ok(bundle)) => {
            if bundle.version() != configured.version() {
                warn!(
                    activated = bundle.version(),
                    configured = configured.version(),
                    "routing with the policy bundle activated through a change request, not the configured one"
                );
            }
            bundle
        }
        Some(Err(e)) => {
            warn!(error = %e, "the last activated policy bundle is unreadable; routing with the configured one");
            configured
        }
        None => configured,
    }
}

/// A change decided under a policy version that is no longer active does not run: it fails
/// visibly, and its recommendation is routed again under the active version as a new revision.
/// This closes the window in which a recommendation routed concurrently with an activation escaped
/// the re-routing. Returns whether the change was stopped. Blocking.
pub fn stop_if_decided_under_old_policy(
    ex: &ExecutorLoop,
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
) -> Result<bool, ExecutorError> {
    let active = ex.router.current().version().to_string();
    if decision.policy_version == active {
        return Ok(false);
    }
    let now = ex.clock.now_ms();
    let refused = cairn_workflow::ExecutionRefused::Mismatch("the policy version that decided it is no longer active");
    let (next, drafts) = cairn_workflow::refuse(change, &refused, now);
    ex.changes.update_change(&next, change.version, &drafts, now)?;
    let mut again = rec.clone();
    again.revision += 1;
    again.created_ms = now;
    ex.pipeline.route_and_open(again, now)?;
    Ok(true)
}
