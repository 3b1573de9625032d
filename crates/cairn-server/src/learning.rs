//! Feeds past human decisions on similar changes into a new recommendation's confidence (see
//! `cairn_recommend::learning`): similar means the same playbook on the same service and
//! environment, from another incident. Only decided changes count: rejected, rolled back or failed,
//! and succeeded.

use crate::engine::Engine;
use crate::error::ApiError;
use cairn_recommend::learning::{self, LearningConfig, Verdict};
use cairn_store::RecommendationFilter;
use cairn_types::{ActionClass, ChangeState, Recommendation};

/// How many recent recommendations on the service are looked at to find similar decided ones.
const LOOK_BACK: usize = 200;

/// Verdicts on earlier similar changes, newest first.
pub fn history(engine: &Engine, rec: &Recommendation) -> Result<Vec<Verdict>, ApiError> {
    let filter = RecommendationFilter { service: Some(rec.target.service.clone()), limit: LOOK_BACK, ..Default::default() };
    Ok(engine
        .store
        .list_recommendations(&filter)?
        .into_iter()
        .filter(|r| {
            r.recommendation.id != rec.id
                && r.recommendation.playbook == rec.playbook
                && r.recommendation.target.environment == rec.target.environment
        })
        .filter_map(|r| match r.change.state {
            ChangeState::Rejected => Some(Verdict::Rejected),
            ChangeState::RolledBack | ChangeState::RollbackFailed | ChangeState::Failed => Some(Verdict::RolledBack),
            ChangeState::Succeeded => Some(Verdict::Accepted),
            _ => None,
        })
        .collect())
}

/// The recommendation with its confidence adjusted by what people decided before.
pub fn apply(engine: &Engine, rec: Recommendation, now_ms: i64) -> Result<Recommendation, ApiError> {
    if rec.action == ActionClass::PolicyActivation {
        return Ok(rec);
    }
    let past = history(engine, &rec)?;
    Ok(learning::apply(rec, &past, &LearningConfig::default(), now_ms))
}
