//! Example values for tests of the crates above this one, so that each does not keep its own copy.
//! Behind the `fixtures` feature, which only dev-dependencies enable.

use crate::*;
use std::collections::BTreeMap;

/// A complete, valid recommendation (`rec-1`, from `inc-1`): roll back `checkout` in production,
/// reversible, with a rollback plan, a verification check and an execution window, requested by
/// Cairn. Tests change the fields they are about.
pub fn recommendation(revision: u32) -> Recommendation {
    Recommendation {
        id: RecommendationId("rec-1".into()),
        revision,
        incident_id: IncidentId("inc-1".into()),
        playbook: "rollback-deploy".into(),
        playbook_version: "1".into(),
        action: ActionClass::RollbackDeploy,
        target: Target { service: "checkout".into(), environment: "production".into(), resource: "deploy/checkout".into() },
        parameters: [("execution_window".to_string(), "next maintenance window".to_string())].into_iter().collect::<BTreeMap<_, _>>(),
        confidence: 0.9,
        severity: Severity::High,
        blast_radius: BlastRadius::Service,
        reversibility: Reversibility::Reversible,
        rollback_plan: Some(RollbackPlan { steps: vec!["redeploy previous".into()], owner: "team-checkout".into() }),
        verification: vec![VerificationCheck {
            name: "errors".into(),
            query: "err_ratio".into(),
            comparator: "<".into(),
            threshold: 0.01,
            within_secs: 300,
        }],
        expected_benefit: "error ratio back under 1%".into(),
        rationale: "errors after release".into(),
        evidence: vec![],
        model_version: "none".into(),
        created_ms: 0,
        requester: CAIRN_SERVICE_SUBJECT.into(),
    }
}

/// The change request of [`recommendation`]'s `revision` (`chg-<revision>`), pending one approval
/// at tier 2, with a deadline at 10 s.
pub fn change_request(revision: u32) -> ChangeRequest {
    ChangeRequest {
        id: ChangeId(format!("chg-{revision}")),
        recommendation_id: RecommendationId("rec-1".into()),
        revision,
        outcome: Outcome::Review,
        tier: Some(2),
        approvals_required: 1,
        approver_groups: vec![],
        requires_window: false,
        policy_version: "sha256:p".into(),
        action_digest: "d".into(),
        requester: CAIRN_SERVICE_SUBJECT.into(),
        state: ChangeState::PendingApproval,
        approvals: vec![],
        rejection: None,
        created_ms: 0,
        expires_ms: 10_000,
        updated_ms: 0,
        version: 1,
        stages: vec![],
        stages_done: 0,
        stage: None,
        stage_approvals: vec![],
        stage_approval: true,
        breakglass_owner: None,
        stop: None,
    }
}

/// A level-shift anomaly on `labels` at `timestamp_ms` (score and confidence 0.9, severity high,
/// from the robust-z detector). Tests change the fields they are about.
pub fn anomaly(labels: Labels, timestamp_ms: i64, observed: f64) -> Anomaly {
    Anomaly {
        series: labels.series_id(),
        labels,
        timestamp_ms,
        observed,
        expected: 0.0,
        score: 0.9,
        severity: Severity::High,
        confidence: 0.9,
        anomaly_kind: "level_shift".into(),
        detector: "robust-z".into(),
        model_version: "robust-z/1".into(),
    }
}
