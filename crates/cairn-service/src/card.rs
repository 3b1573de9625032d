//! Decision cards: everything a reviewer needs about one recommendation, gathered in one read.
//! The card is domain values; the server turns it into its wire form.

use crate::desk::{ReviewDesk, ReviewDeskError};
use cairn_store::{RecommendationFilter, RecommendationRecord};
use cairn_types::{ChangeRequest, ChangeState, Decision, Execution, Incident, Recommendation, RecommendationId};

/// How far back "related recent changes" on the same target look.
const RELATED_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

/// One recommendation revision with what a reviewer weighs it by.
#[derive(Clone, Debug)]
pub struct DecisionCard {
    pub recommendation: Recommendation,
    pub decision: Decision,
    pub change: ChangeRequest,
    pub incident: Option<Incident>,
    /// Other changes on the same target within the last week.
    pub related_changes: Vec<ChangeRequest>,
    /// The firing alerts on the target's service, in words.
    pub target_state: String,
    pub executions: Vec<Execution>,
    /// Required fields the change lacks (invariant 4): it cannot be approved until they are set.
    pub missing_fields: Vec<String>,
    pub service_criticality: String,
    /// The maintenance window open for the target now, if any.
    pub maintenance_window: Option<String>,
    pub rollback_confidence: String,
    pub recent_incidents: Vec<String>,
    /// What past decisions did to the confidence, in words (empty when nothing did).
    pub learning: String,
    pub active_policy_version: String,
}

/// The card of `id` at `revision` (0: the newest). Blocking.
pub fn decision_card(desk: &ReviewDesk, id: &RecommendationId, revision: u32) -> Result<DecisionCard, ReviewDeskError> {
    let rev = (revision != 0).then_some(revision);
    let record = desk
        .changes
        .get_recommendation(id, rev)?
        .ok_or_else(|| ReviewDeskError::UnknownRecommendation { id: id.clone(), revision: rev })?;
    let rec = &record.recommendation;
    let incident = desk.signals.get_incident(&rec.incident_id)?;
    let now = desk.clock.now_ms();
    let related_changes = desk
        .changes
        .recent_changes_on_target(&rec.target, now - RELATED_WINDOW_MS)?
        .into_iter()
        .filter(|c| c.change.id != record.change.id)
        .map(|c| c.change)
        .collect();
    let firing: Vec<String> = desk
        .signals
        .firing_alerts_on_service(&rec.target.service, 200)?
        .into_iter()
        .map(|a| a.alertname().to_string())
        .collect();
    let target_state = if firing.is_empty() {
        format!("no firing alerts on service {:?}", rec.target.service)
    } else {
        format!("{} firing alert(s) on service {:?}: {}", firing.len(), rec.target.service, firing.join(", "))
    };
    let executions = desk.changes.executions_for(&record.change.id)?;
    let missing_fields = cairn_workflow::missing_fields(rec, &record.decision).into_iter().map(String::from).collect();
    let active = desk.router.current();
    let maintenance_window = desk.windows.open_for(&rec.target, now).map(|w| w.name.clone());
    let on_service = desk.changes.list_recommendations(&RecommendationFilter {
        service: Some(rec.target.service.clone()),
        limit: 200,
        ..Default::default()
    })?;
    let recent_incidents = recent_incidents(&on_service, rec, now);
    let rollback_confidence = rollback_confidence(&on_service, rec);
    let learning = rec
        .evidence
        .iter()
        .find(|e| e.kind == cairn_recommend::learning::LEARNING_EVIDENCE)
        .map(|e| e.description.clone())
        .unwrap_or_default();
    let service_criticality = active.bundle().service_criticality(&rec.target.service);
    let active_policy_version = active.version().to_string();
    Ok(DecisionCard {
        incident,
        related_changes,
        target_state,
        executions,
        missing_fields,
        service_criticality,
        maintenance_window,
        rollback_confidence,
        recent_incidents,
        learning,
        active_policy_version,
        recommendation: record.recommendation,
        decision: record.decision,
        change: record.change,
    })
}

/// Other incidents with recommendations on the same service within the related window, newest
/// first.
fn recent_incidents(on_service: &[RecommendationRecord], rec: &Recommendation, now: i64) -> Vec<String> {
    let mut seen = Vec::new();
    for r in on_service {
        let id = &r.recommendation.incident_id.0;
        if *id != rec.incident_id.0 && r.recommendation.created_ms >= now - RELATED_WINDOW_MS && !seen.contains(id) {
            seen.push(id.clone());
        }
    }
    seen
}

/// The rollback plan in words, with how rollbacks of the same playbook on this service went.
fn rollback_confidence(on_service: &[RecommendationRecord], rec: &Recommendation) -> String {
    let Some(plan) = &rec.rollback_plan else {
        return "no rollback plan: this change has no way back".into();
    };
    let same: Vec<ChangeState> =
        on_service.iter().filter(|r| r.recommendation.playbook == rec.playbook).map(|r| r.change.state).collect();
    let held = same.iter().filter(|s| **s == ChangeState::RolledBack).count();
    let broke = same.iter().filter(|s| **s == ChangeState::RollbackFailed).count();
    let history = if held + broke == 0 {
        format!("no rollback of playbook {} on this service yet", rec.playbook)
    } else {
        format!("{held} of {} earlier rollbacks of playbook {} on this service worked", held + broke, rec.playbook)
    };
    format!(
        "{} step(s), owner {}, {}; {history}",
        plan.steps.len(),
        if plan.owner.is_empty() { "unnamed" } else { &plan.owner },
        rec.reversibility.as_str()
    )
}
