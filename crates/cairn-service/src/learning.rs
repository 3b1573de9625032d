//! Feeds past human decisions on similar changes into a new recommendation's confidence (see
//! `cairn_recommend::learning`): similar means the same playbook on the same service and
//! environment, from another incident. Only decided changes count: rejected, rolled back or failed,
//! and succeeded.

use cairn_store::{ChangeStore, StoreError};
use cairn_recommend::learning::{self, LearningConfig, Verdict};
use cairn_types::{ActionClass, ChangeState, Recommendation};

/// How many recent decided changes on the service and environment are looked at.
const LOOK_BACK: usize = 200;

/// Verdicts on earlier similar changes, newest first: one per earlier recommendation (its newest
/// decided revision), so that one incident decided many times does not outweigh the others.
pub fn history(changes: &dyn ChangeStore, rec: &Recommendation) -> Result<Vec<Verdict>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    Ok(changes
        .decided_changes_on_service(&rec.target.service, &rec.target.environment, &rec.id, LOOK_BACK)?
        .into_iter()
        .filter(|r| r.recommendation.playbook == rec.playbook && seen.insert(r.recommendation.id.clone()))
        .filter_map(|r| match r.change.state {
            ChangeState::Rejected => Some(Verdict::Rejected),
            ChangeState::RolledBack | ChangeState::RollbackFailed | ChangeState::Failed => Some(Verdict::RolledBack),
            ChangeState::Succeeded => Some(Verdict::Accepted),
            _ => None,
        })
        .collect())
}

/// The recommendation with its confidence adjusted by what people decided before.
pub fn apply(changes: &dyn ChangeStore, rec: Recommendation, now_ms: i64) -> Result<Recommendation, StoreError> {
    if rec.action == ActionClass::PolicyActivation {
        return Ok(rec);
    }
    let past = history(changes, &rec)?;
    Ok(learning::apply(rec, &past, &LearningConfig::default(), now_ms))
}
