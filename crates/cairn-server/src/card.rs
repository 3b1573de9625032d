//! Decision cards: everything a reviewer needs about one recommendation, gathered in one read.

use crate::convert as cv;
use crate::engine::Engine;
use crate::error::ApiError;
use cairn_proto::v1 as pb;
use cairn_store::{RecommendationFilter, RecommendationRecord};
use cairn_types::{ChangeState, Recommendation, RecommendationId};

/// How far back "related recent changes" on the same target look.
const RELATED_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

pub fn decision_card(engine: &Engine, id: &RecommendationId, revision: u32) -> Result<pb::DecisionCard, ApiError> {
    let rev = (revision != 0).then_some(revision);
    let record = engine
        .store
        .get_recommendation(id, rev)?
        .ok_or_else(|| match rev {
            Some(r) => ApiError::NotFound(format!("no recommendation {id} at revision {r}")),
            None => ApiError::NotFound(format!("no recommendation {id}")),
        })?;
    let rec = &record.recommendation;
    let incident = engine.store.get_incident(&rec.incident_id)?;
    let now = engine.clock.now_ms();
    let related = engine
        .store
        .recent_changes_on_target(&rec.target, now - RELATED_WINDOW_MS)?
        .into_iter()
        .filter(|c| c.change.id != record.change.id)
        .map(|c| cv::change_to_pb(&c.change))
        .collect();
    let firing: Vec<String> = engine
        .store
        .firing_alerts_on_service(&rec.target.service, 200)?
        .into_iter()
        .map(|a| a.alertname().to_string())
        .collect();
    let target_state = if firing.is_empty() {
        format!("no firing alerts on service {:?}", rec.target.service)
    } else {
        format!("{} firing alert(s) on service {:?}: {}", firing.len(), rec.target.service, firing.join(", "))
    };
    let executions = engine.store.executions_for(&record.change.id)?.iter().map(cv::execution_to_pb).collect();
    let missing = cairn_workflow::missing_fields(rec, &record.decision).into_iter().map(String::from).collect();
    let active = engine.router.current();
    let window = engine.executor.gate().windows.open_for(&rec.target, now).map(|w| w.name.clone());
    let on_service = engine.store.list_recommendations(&RecommendationFilter {
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
    Ok(pb::DecisionCard {
        recommendation: Some(cv::recommendation_to_pb(rec)),
        decision: Some(cv::decision_to_pb(&record.decision)),
        change: Some(cv::change_to_pb(&record.change)),
        incident: incident.as_ref().map(cv::incident_to_pb),
        related_changes: related,
        target_state,
        executions,
        missing_fields: missing,
        service_criticality: active.bundle().service_criticality(&rec.target.service),
        maintenance_window_open: window.is_some(),
        maintenance_window: window.unwrap_or_default(),
        blast_radius: rec.blast_radius.as_str().into(),
        reversibility: rec.reversibility.as_str().into(),
        rollback_confidence,
        recent_incidents,
        learning,
        active_policy_version: active.version().to_string(),
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
