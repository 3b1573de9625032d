//! What the guardrails cost per execution: before every auto change runs, the engine reads the
//! freeze switch, the disabled automations, the runs of the same action on the same target in the
//! loop-guard window and the auto runs of its action class in the rate-limit window
//! (`cairn_server::governance::guard_inputs`), then applies `cairn_workflow::guard::check`. This
//! measures that against a SQLite store (a file, WAL, as `cairn serve` opens it) holding many
//! changes, next to the read the executor already does for every change (`get_recommendation`),
//! and prints medians, p99s and the ratio.

use anyhow::Result;
use cairn_server::governance::{Governance, guard_inputs};
use cairn_store::{ChangeStore, GuardStore, SqliteStore};
use cairn_types::*;
use cairn_workflow::GuardrailsConfig;
use clap::Parser;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Cost of the guardrail checks before each execution")]
struct Args {
    /// Changes in the store, spread over many targets.
    #[arg(long, default_value_t = 20_000)]
    changes: usize,
    /// Of those, runs of the same action on the measured target inside the loop-guard window
    /// (the query returns at most 200 rows per target).
    #[arg(long, default_value_t = 50)]
    on_target: usize,
    #[arg(long, default_value_t = 3_000)]
    iterations: usize,
}

fn rec(i: usize, target: Target, created_ms: i64) -> Recommendation {
    Recommendation {
        id: RecommendationId(format!("rec-{i}")),
        revision: 1,
        incident_id: IncidentId(format!("inc-{i}")),
        playbook: "restart".into(),
        playbook_version: "1".into(),
        action: ActionClass::RestartProcess,
        target,
        parameters: BTreeMap::new(),
        confidence: 0.9,
        severity: Severity::High,
        blast_radius: BlastRadius::Instance,
        reversibility: Reversibility::Reversible,
        rollback_plan: Some(RollbackPlan { steps: vec!["start it again".into()], owner: "team".into() }),
        verification: vec![],
        expected_benefit: "serves again".into(),
        rationale: "process down".into(),
        evidence: vec![],
        model_version: "none".into(),
        created_ms,
        requester: CAIRN_SERVICE_SUBJECT.into(),
    }
}

fn open(store: &SqliteStore, r: &Recommendation, now: i64) -> Result<ChangeRequest> {
    let d = Decision {
        recommendation_id: r.id.clone(),
        revision: 1,
        outcome: Outcome::Auto,
        tier: Some(0),
        approvals_required: 0,
        approver_groups: vec![],
        requires_window: false,
        stage_approval: false,
        breakglass_owner: None,
        reasons: vec![],
        policy_version: "bench".into(),
        policy_failed: false,
        decided_ms: now,
    };
    let (c, drafts) = cairn_workflow::open_change(r, &d, now, &cairn_workflow::WorkflowConfig::default());
    store.propose(r, &d, &c, &drafts, now)?;
    Ok(c)
}

fn summary(mut ns: Vec<u128>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("cairn.db"))?;
    let now = 10_000_000_000i64;
    let hot = Target { service: "search".into(), environment: "production".into(), resource: "search-1".into() };
    // The hot target's runs fall inside the loop-guard window; the rest is history, one change
    // every 10 s going back (20 000 changes ≈ 55 hours), over four action classes.
    let classes = [ActionClass::RestartProcess, ActionClass::ScaleOut, ActionClass::RollbackDeploy, ActionClass::DrainNode];
    for i in 0..args.changes {
        let (target, at) = if i < args.on_target {
            (hot.clone(), now - 1_000 - i as i64)
        } else {
            let t = Target { service: format!("svc-{}", i % 500), environment: "production".into(), resource: format!("pod-{i}") };
            (t, now - 10_000 * i as i64)
        };
        let mut r = rec(i, target, at);
        r.action = if i < args.on_target { ActionClass::RestartProcess } else { classes[i % classes.len()] };
        open(&store, &r, at)?;
    }
    while !store.claim_approved(1_000, now)?.is_empty() {}
    let measured = rec(args.changes, hot.clone(), now);
    let change = open(&store, &measured, now)?;
    let change = store.claim_approved(1, now)?.pop().unwrap_or(change);
    store.set_freeze(&FreezeState { frozen: false, reason: "bench".into(), by: "bench".into(), at_ms: now }, &[], now)?;

    let cfg = GuardrailsConfig {
        loop_guard_max_runs: u32::MAX,
        rate_limits: BTreeMap::from([("restart_process".into(), "1000000/hour".into())]),
        ..Default::default()
    };
    let governance = Governance::new(cfg.clone(), None).map_err(anyhow::Error::msg)?;
    let limits = cfg.parsed_rate_limits().map_err(anyhow::Error::msg)?;

    let (mut base, mut guard) = (Vec::with_capacity(args.iterations), Vec::with_capacity(args.iterations));
    for _ in 0..args.iterations {
        let t = Instant::now();
        let got = store.get_recommendation(&measured.id, Some(1))?;
        base.push(t.elapsed().as_nanos());
        assert!(got.is_some());

        let t = Instant::now();
        let inputs = guard_inputs(&store, &governance, &change, &measured, now)?;
        let held = cairn_workflow::guard::check(&cfg, &limits, &change, &measured, &inputs);
        guard.push(t.elapsed().as_nanos());
        assert!(held.is_none() && inputs.earlier_runs_on_target as usize == args.on_target);
    }
    let (b50, b99) = summary(base);
    let (g50, g99) = summary(guard);
    println!("store: {} changes, {} runs on the measured target, {} iterations", args.changes + 1, args.on_target, args.iterations);
    println!("executor's own read (get_recommendation): median {b50:.1} µs, p99 {b99:.1} µs");
    println!("guardrail inputs + check:                 median {g50:.1} µs, p99 {g99:.1} µs");
    println!("ratio (median): {:.1}×", g50 / b50);
    Ok(())
}
