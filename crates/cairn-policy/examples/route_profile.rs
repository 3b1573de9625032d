//! A fixed amount of routing work for instruction-count profiling, which the machine's load does
//! not distort: `valgrind --tool=callgrind target/release/examples/route_profile [decisions]`.
//! Loads the default bundle (or the bundle directory given second) once, then routes that many
//! recommendations (200 unless told).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_policy::{PolicyBundle, Router, RouterConfig, RoutingContext};
use cairn_types::*;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let bundle = match std::env::args().nth(2) {
        Some(dir) => PolicyBundle::load_dir(std::path::Path::new(&dir)).expect("bundle loads"),
        None => PolicyBundle::embedded_default(),
    };
    let router = Router::new(bundle, RouterConfig::default()).expect("bundle loads");
    let ctx = RoutingContext::for_environment("production");
    let actions = [ActionClass::RestartProcess, ActionClass::ScaleOut, ActionClass::RollbackDeploy, ActionClass::DnsChange];
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let rec = Recommendation {
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
            blast_radius: if i % 3 == 0 { BlastRadius::Service } else { BlastRadius::Instance },
            reversibility: Reversibility::Reversible,
            rollback_plan: Some(RollbackPlan { steps: vec!["undo".into()], owner: "team".into() }),
            verification: vec![VerificationCheck { name: "up".into(), query: "up".into(), comparator: ">=".into(), threshold: 1.0, within_secs: 60 }],
            expected_benefit: "b".into(),
            rationale: "r".into(),
            evidence: vec![],
            model_version: "none".into(),
            created_ms: 0,
            requester: CAIRN_SERVICE_SUBJECT.into(),
        };
        let d = router.route(&rec, &ctx, 0);
        *outcomes.entry(cairn_policy::decision_summary(&d)).or_default() += 1;
    }
    println!("{n} decisions: {outcomes:?}");
}
