//! Decision cards: everything a reviewer needs about one recommendation, gathered in one read.

use crate::convert as cv;
use crate::engine::Engine;
use crate::error::ApiError;
use cairn_proto::v1 as pb;
use cairn_types::{AlertStatus, RecommendationId};

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
        .list_alerts(1000)?
        .into_iter()
        .filter(|a| a.status == AlertStatus::Firing && a.labels.get("service") == Some(rec.target.service.as_str()))
        .map(|a| a.alertname().to_string())
        .collect();
    let target_state = if firing.is_empty() {
        format!("no firing alerts on service {:?}", rec.target.service)
    } else {
        format!("{} firing alert(s) on service {:?}: {}", firing.len(), rec.target.service, firing.join(", "))
    };
    let executions = engine.store.executions_for(&record.change.id)?.iter().map(cv::execution_to_pb).collect();
    let missing = cairn_workflow::missing_fields(rec, &record.decision).into_iter().map(String::from).collect();
    Ok(pb::DecisionCard {
        recommendation: Some(cv::recommendation_to_pb(rec)),
        decision: Some(cv::decision_to_pb(&record.decision)),
        change: Some(cv::change_to_pb(&record.change)),
        incident: incident.as_ref().map(cv::incident_to_pb),
        related_changes: related,
        target_state,
        executions,
        missing_fields: missing,
    })
}
