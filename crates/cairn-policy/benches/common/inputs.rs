//! The recommendations the routing benchmark and the profiling example route: deterministic, spread
//! over four actions, seven services, two blast radii and confidences from 0.5 to 0.99. Shared
//! through `#[path]` so that the callgrind figures and the criterion figures measure the same work.

use cairn_types::*;

/// The `i`-th input.
pub fn rec(i: usize) -> Recommendation {
    let actions = [ActionClass::RestartProcess, ActionClass::ScaleOut, ActionClass::RollbackDeploy, ActionClass::DnsChange];
    Recommendation {
        id: RecommendationId(format!("rec-{i}")),
        revision: 1,
        incident_id: IncidentId("inc".into()),
        playbook: "p".into(),
        playbook_version: "1".into(),
        action: actions[i % actions.len()],
        target: Target { service: format!("svc-{}", i % 7), environment: "production".into(), resource: format!("r-{i}") },
        parameters: Default::default(),
        confidence: 0.5 + (i % 50) as f64 / 100.0,
        severity: Severity::High,
        blast_radius: if i.is_multiple_of(3) { BlastRadius::Service } else { BlastRadius::Instance },
        reversibility: Reversibility::Reversible,
        rollback_plan: Some(RollbackPlan { steps: vec!["undo".into()], owner: "team".into() }),
        verification: vec![VerificationCheck { name: "up".into(), query: "up".into(), comparator: ">=".into(), threshold: 1.0, within_secs: 60 }],
        expected_benefit: "b".into(),
        rationale: "r".into(),
        evidence: vec![],
        model_version: "none".into(),
        created_ms: 0,
        requester: CAIRN_SERVICE_SUBJECT.into(),
    }
}
