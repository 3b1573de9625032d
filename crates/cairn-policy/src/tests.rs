use super::*;
use cairn_types::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The shared example with the fields routing reads set per test.
fn rec(action: ActionClass, env: &str, confidence: f64, blast: BlastRadius, rev: Reversibility) -> Recommendation {
    Recommendation {
        action,
        target: Target { service: "svc".into(), environment: env.into(), resource: "r".into() },
        parameters: BTreeMap::new(),
        confidence,
        blast_radius: blast,
        reversibility: rev,
        verification: vec![VerificationCheck { name: "v".into(), query: "up".into(), comparator: ">=".into(), threshold: 1.0, within_secs: 60 }],
        ..cairn_types::fixtures::recommendation(1)
    }
}

fn router() -> Router {
    Router::new(PolicyBundle::embedded_default(), RouterConfig::default()).expect("default bundle loads")
}

fn ctx() -> RoutingContext {
    RoutingContext::for_environment("production")
}

#[test]
fn embedded_bundle_loads_and_its_rego_tests_pass() {
    let report = run_policy_tests(&PolicyBundle::embedded_default()).unwrap();
    assert!(report.results.len() >= 10, "{report:?}");
    assert!(report.passed(), "{report:#?}");
}

#[test]
fn a_failing_rego_test_is_reported() {
    let bundle = PolicyBundle::from_files(
        vec![
            PolicyFile { name: "route.rego".into(), text: "package cairn.route\n\nx := 1\n".into() },
            PolicyFile { name: "route_test.rego".into(), text: "package cairn.route_test\n\ntest_x_is_two if data.cairn.route.x == 2\n".into() },
        ],
        "{}".into(),
    );
    let report = run_policy_tests(&bundle).unwrap();
    assert_eq!(report.results.len(), 1);
    assert!(!report.passed());
}

#[test]
fn each_branch_of_the_default_policy() {
    let r = router();
    let cases = [
        (rec(ActionClass::RestartProcess, "production", 0.9, BlastRadius::Instance, Reversibility::Reversible), Outcome::Auto, Some(0), 0),
        (rec(ActionClass::ScaleOut, "production", 0.9, BlastRadius::Service, Reversibility::Reversible), Outcome::Auto, Some(1), 0),
        (rec(ActionClass::ScaleOut, "production", 0.3, BlastRadius::Service, Reversibility::Reversible), Outcome::Advisory, None, 0),
        (rec(ActionClass::RollbackDeploy, "production", 0.9, BlastRadius::Service, Reversibility::Reversible), Outcome::Review, Some(2), 1),
        (rec(ActionClass::DnsChange, "production", 0.9, BlastRadius::Global, Reversibility::PartiallyReversible), Outcome::Review, Some(3), 2),
        (rec(ActionClass::IamChange, "production", 0.9, BlastRadius::Global, Reversibility::PartiallyReversible), Outcome::Review, Some(3), 2),
        (rec(ActionClass::DatabaseFailover, "production", 0.9, BlastRadius::Global, Reversibility::PartiallyReversible), Outcome::Review, Some(3), 2),
        (rec(ActionClass::FirewallRelax, "production", 0.9, BlastRadius::Global, Reversibility::PartiallyReversible), Outcome::Blocked, None, 0),
        (rec(ActionClass::FirewallRelax, "staging", 0.9, BlastRadius::Service, Reversibility::Reversible), Outcome::Review, Some(3), 2),
        (rec(ActionClass::DrainNode, "production", 0.9, BlastRadius::Cluster, Reversibility::PartiallyReversible), Outcome::Review, Some(2), 1),
        (rec(ActionClass::RestartProcess, "production", 0.9, BlastRadius::Instance, Reversibility::Irreversible), Outcome::Review, Some(3), 2),
    ];
    for (rec, outcome, tier, approvals) in cases {
        let d = r.route(&rec, &ctx(), 5);
        assert_eq!((d.outcome, d.tier, d.approvals_required), (outcome, tier, approvals), "{} in {}: {:?}", rec.action, rec.target.environment, d.reasons);
        assert!(!d.policy_failed);
        assert_eq!(d.policy_version, r.version());
        assert!(!d.reasons.is_empty());
    }
}

#[test]
fn loop_guard_and_freeze_and_missing_rollback() {
    let r = router();
    let restart = rec(ActionClass::RestartProcess, "production", 0.95, BlastRadius::Instance, Reversibility::Reversible);
    let busy = RoutingContext { recent_runs: 3, ..ctx() };
    let d = r.route(&restart, &busy, 0);
    assert_eq!((d.outcome, d.tier), (Outcome::Review, Some(2)));
    assert!(d.reasons.iter().any(|s| s.contains("loop guard")), "{:?}", d.reasons);
    let frozen = RoutingContext { frozen: true, ..ctx() };
    assert_eq!(r.route(&restart, &frozen, 0).outcome, Outcome::Blocked);
    let mut no_way_back = restart.clone();
    no_way_back.rollback_plan = None;
    assert_eq!(r.route(&no_way_back, &ctx(), 0).outcome, Outcome::Blocked);
}

#[test]
fn a_policy_with_a_runtime_error_fails_closed() {
    let rego = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"a\"]} if { true }\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"b\"]} if { true }\n";
    let r = Router::from_sources(rego, "{}", RouterConfig::default()).unwrap();
    let d = r.route(&rec(ActionClass::RestartProcess, "production", 0.99, BlastRadius::Instance, Reversibility::Reversible), &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.approvals_required, d.policy_failed), (Outcome::Review, Some(3), 2, true), "{:?}", d.reasons);
}

#[test]
fn a_policy_with_a_bad_shape_or_no_decision_fails_closed() {
    let cases = [
        "package cairn.route\n\ndecision := {\"outcome\": \"yolo\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"a\"]}\n",
        "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 3, \"approvals_required\": 0, \"reasons\": [\"a\"]}\n",
        "package cairn.route\n\ndecision := {\"outcome\": \"review\", \"tier\": 3, \"approvals_required\": 1, \"reasons\": [\"a\"]}\n",
        "package cairn.route\n\ndecision := \"auto\"\n",
        "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"a\"]} if { input.nothing }\n",
    ];
    for rego in cases {
        let r = Router::from_sources(rego, "{}", RouterConfig::default()).unwrap();
        let d = r.route(&rec(ActionClass::RestartProcess, "production", 0.99, BlastRadius::Instance, Reversibility::Reversible), &ctx(), 0);
        assert!(d.policy_failed, "{rego}");
        assert_eq!((d.outcome, d.tier), (Outcome::Review, Some(3)), "{rego}");
    }
}

#[test]
fn a_slow_policy_times_out_and_fails_closed() {
    let rego = "package cairn.route\n\nbig := [x | some x in numbers.range(1, 3000000)]\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [sprintf(\"%d\", [count(big)])]}\n";
    let r = Router::from_sources(rego, "{}", RouterConfig { timeout_ms: 5, ..Default::default() }).unwrap();
    let d = r.route(&rec(ActionClass::RestartProcess, "production", 0.99, BlastRadius::Instance, Reversibility::Reversible), &ctx(), 0);
    assert!(d.policy_failed, "{:?}", d.reasons);
    assert_eq!(d.outcome, Outcome::Review);
}

#[test]
fn the_confidence_floor_overrides_a_permissive_policy() {
    let rego = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"everything runs\"]}\n";
    let r = Router::from_sources(rego, "{}", RouterConfig::default()).unwrap();
    let d = r.route(&rec(ActionClass::IamChange, "production", 0.2, BlastRadius::Global, Reversibility::Irreversible), &ctx(), 0);
    assert_eq!(d.outcome, Outcome::Advisory);
    assert!(d.reasons.iter().any(|s| s.contains("floor")));
    let mut no_rollback = rec(ActionClass::RestartProcess, "production", 0.9, BlastRadius::Instance, Reversibility::Reversible);
    no_rollback.rollback_plan = None;
    assert_eq!(r.route(&no_rollback, &ctx(), 0).outcome, Outcome::Review);
}

#[test]
fn version_is_stable_and_changes_with_any_file() {
    let a = PolicyBundle::embedded_default();
    let b = PolicyBundle::embedded_default();
    assert_eq!(a.version(), b.version());
    assert!(a.version().starts_with("sha256:"));
    let f = |t: &str| PolicyBundle::from_files(vec![PolicyFile { name: "route.rego".into(), text: t.into() }], "{}".into());
    assert_ne!(f("package a\n").version(), f("package b\n").version());
    let d = PolicyBundle::from_files(vec![PolicyFile { name: "route.rego".into(), text: "package a\n".into() }], "{\"x\":1}".into());
    assert_ne!(f("package a\n").version(), d.version());
}

#[test]
fn a_syntax_error_is_a_load_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("cairn-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("broken.rego"), "package cairn.route\n\ndecision := {\n").unwrap();
    let err = PolicyBundle::load_dir(&dir).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.to_string().contains("broken.rego"), "{err}");
}

fn any_action() -> impl Strategy<Value = ActionClass> {
    (0usize..8).prop_map(|i| ActionClass::ALL[i])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn default_policy_never_autoruns_low_confidence_or_irreversible(
        action in any_action(),
        confidence in 0.0f64..1.0,
        blast in prop_oneof![Just(BlastRadius::Instance), Just(BlastRadius::Service), Just(BlastRadius::Cluster), Just(BlastRadius::Global)],
        reversibility in prop_oneof![Just(Reversibility::Reversible), Just(Reversibility::PartiallyReversible), Just(Reversibility::Irreversible)],
        env in prop_oneof![Just("production"), Just("staging")],
        runs in 0u32..5,
    ) {
        let r = router();
        let d = r.route(&rec(action, env, confidence, blast, reversibility), &RoutingContext { recent_runs: runs, ..ctx() }, 0);
        prop_assert!(!d.policy_failed, "{:?}", d.reasons);
        if d.outcome == Outcome::Auto {
            prop_assert!(confidence >= 0.5);
            prop_assert_eq!(reversibility, Reversibility::Reversible);
            prop_assert!(runs < 3);
        }
    }
}

#[test]
fn policy_activation_is_a_tier3_change() {
    let activation = rec(ActionClass::PolicyActivation, "production", 1.0, BlastRadius::Global, Reversibility::Reversible);
    let d = router().route(&activation, &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.approvals_required, d.requires_window), (Outcome::Review, Some(3), 2, true));
    assert_eq!(d.approver_groups, ["sre-leads"]);
    // A bundle that lets everything run by itself still cannot let its successor in by itself.
    let lax = r#"package cairn.route
decision := {"outcome": "auto", "tier": 0, "approvals_required": 0, "reasons": ["anything goes"]}"#;
    let r = Router::from_sources(lax, "{}", RouterConfig::default()).unwrap();
    let d = r.route(&activation, &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.approvals_required, d.requires_window), (Outcome::Review, Some(3), 2, true));
    assert!(d.reasons.iter().any(|r| r.contains("policy activation is itself a tier-3")), "{:?}", d.reasons);
    // An ordinary action under the lax bundle is untouched by that floor.
    let restart = rec(ActionClass::RestartProcess, "production", 0.9, BlastRadius::Instance, Reversibility::Reversible);
    assert_eq!(r.route(&restart, &ctx(), 0).outcome, Outcome::Auto);
}

#[test]
fn a_setting_can_raise_the_confidence_floor_but_never_lower_it() {
    let lax = r#"package cairn.route
decision := {"outcome": "auto", "tier": 0, "approvals_required": 0, "reasons": ["anything goes"]}"#;
    let below = rec(ActionClass::RestartProcess, "production", 0.45, BlastRadius::Instance, Reversibility::Reversible);
    let lowered = Router::from_sources(lax, "{}", RouterConfig { min_auto_confidence: 0.1, ..Default::default() }).unwrap();
    assert_eq!(lowered.route(&below, &ctx(), 0).outcome, Outcome::Advisory, "0.45 < the invariant floor 0.5");
    let raised = Router::from_sources(lax, "{}", RouterConfig { min_auto_confidence: 0.8, ..Default::default() }).unwrap();
    let fair = rec(ActionClass::RestartProcess, "production", 0.7, BlastRadius::Instance, Reversibility::Reversible);
    assert_eq!(raised.route(&fair, &ctx(), 0).outcome, Outcome::Advisory, "0.7 < a raised floor of 0.8");
    assert_eq!(lowered.route(&fair, &ctx(), 0).outcome, Outcome::Auto);
}

#[test]
fn service_criticality_comes_from_the_bundle_and_keeps_critical_services_from_auto() {
    let bundle = PolicyBundle::embedded_default();
    assert_eq!(bundle.service_criticality("payments"), "critical");
    assert_eq!(bundle.service_criticality("unlisted"), DEFAULT_SERVICE_CRITICALITY);
    let restart = rec(ActionClass::RestartProcess, "production", 0.95, BlastRadius::Instance, Reversibility::Reversible);
    let mut c = ctx();
    assert_eq!(router().route(&restart, &c, 0).outcome, Outcome::Auto);
    c.service_criticality = bundle.service_criticality("payments");
    let d = router().route(&restart, &c, 0);
    assert_eq!((d.outcome, d.tier), (Outcome::Review, Some(2)));
}

#[test]
fn a_bundle_rebuilt_from_its_files_has_the_same_version() {
    let bundle = PolicyBundle::embedded_default();
    let files = bundle.files();
    assert!(files.iter().any(|f| f.name == "route_test.rego"), "tests travel with the bundle");
    let again = PolicyBundle::from_all_files(files.clone()).unwrap();
    assert_eq!(again.version(), bundle.version());
    let mut changed = files;
    changed.last_mut().unwrap().text = "{}".into();
    assert_ne!(PolicyBundle::from_all_files(changed).unwrap().version(), bundle.version());
    let stray = vec![PolicyFile { name: "notes.txt".into(), text: String::new() }];
    assert!(PolicyBundle::from_all_files(stray).is_err());
}

#[test]
fn default_bundle_runs_every_rego_test() {
    let report = run_policy_tests(&PolicyBundle::embedded_default()).unwrap();
    let names: Vec<&str> = report.results.iter().map(|r| r.0.as_str()).collect();
    for t in ["test_critical_service_never_runs_by_itself", "test_provider_move_and_data_delete_are_tier3", "test_tier3_says_whether_a_window_is_open", "test_auto_stages_run_through_and_reviewed_stages_pause", "test_every_decision_says_whether_stages_pause"] {
        assert!(names.iter().any(|n| n.ends_with(t)), "{t} not run: {names:?}");
    }
    assert!(report.passed(), "{report:#?}");
}

#[test]
fn shadow_lists_changed_outcomes() {
    let active = router();
    let recs = [
        rec(ActionClass::RestartProcess, "production", 0.82, BlastRadius::Instance, Reversibility::Reversible),
        rec(ActionClass::RestartProcess, "production", 0.99, BlastRadius::Instance, Reversibility::Reversible),
        rec(ActionClass::DnsChange, "production", 0.9, BlastRadius::Global, Reversibility::PartiallyReversible),
    ];
    let recorded: Vec<(Recommendation, Decision)> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            r.id = RecommendationId(format!("rec-{i}"));
            let d = active.route(&r, &ctx(), 0);
            (r, d)
        })
        .collect();
    // The same bundle changes nothing.
    assert!(shadow(&active, &recorded, 0).is_empty());
    // A stricter auto threshold moves only the 0.82 restart from auto to review.
    let mut files = PolicyBundle::embedded_default().files();
    let data = files.last_mut().unwrap();
    data.text = data.text.replace("\"auto_min\": 0.8", "\"auto_min\": 0.9");
    let candidate = Router::new(PolicyBundle::from_all_files(files).unwrap(), RouterConfig::default()).unwrap();
    assert_ne!(candidate.version(), active.version());
    let changed = shadow(&candidate, &recorded, 0);
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0].recommendation_id, "rec-0");
    assert_eq!((changed[0].before.as_str(), changed[0].after.as_str()), ("auto tier 0", "review tier 2 (1 approval(s))"));
    assert!(!changed[0].reasons.is_empty());
}

/// Inputs spread over every branch of the default policy and every floor after it: each action,
/// both environments, confidences either side of each threshold (and NaN), every blast radius and
/// reversibility, missing rollback or verification, and every context flag. A small deterministic
/// generator picks `n` of them so that the test stays fast in a debug build.
fn generated_inputs(n: usize) -> Vec<(Recommendation, RoutingContext)> {
    let blasts = [BlastRadius::Instance, BlastRadius::Service, BlastRadius::Cluster, BlastRadius::Global];
    let revs = [Reversibility::Reversible, Reversibility::PartiallyReversible, Reversibility::Irreversible];
    let confidences = [0.3, 0.49, 0.5, 0.79, 0.8, 0.95, 1.0, f64::NAN];
    let services = ["svc", "payments", "checkout"];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    (0..n)
        .map(|i| {
            let env = if next(4) == 0 { "staging" } else { "production" };
            let mut r = rec(ActionClass::ALL[next(ActionClass::ALL.len())], env, confidences[next(confidences.len())], blasts[next(4)], revs[next(3)]);
            r.id = RecommendationId(format!("rec-{i}"));
            r.target.service = services[next(3)].into();
            if next(12) == 0 {
                r.rollback_plan = None;
            }
            if next(12) == 0 {
                r.verification.clear();
            }
            let bundle = PolicyBundle::embedded_default();
            let c = RoutingContext {
                service_criticality: bundle.service_criticality(&r.target.service),
                maintenance_window_open: next(2) == 0,
                recent_runs: [0, 0, 0, 2, 3, 5][next(6)],
                recent_failures: [0, 0, 0, 1, 2][next(5)],
                frozen: next(15) == 0,
                ..RoutingContext::for_environment(env)
            };
            (r, c)
        })
        .collect()
}

#[test]
fn the_prepared_router_decides_exactly_as_a_freshly_loaded_engine() {
    let r = router();
    let inputs = generated_inputs(600);
    let mut seen = std::collections::BTreeSet::new();
    // Each decision twice on the prepared router, the second time after all the others, so that
    // nothing left over from one evaluation can leak into the next unnoticed.
    let first: Vec<Decision> = inputs.iter().map(|(rec, c)| r.route(rec, c, 7)).collect();
    for ((rec, c), prepared) in inputs.iter().zip(&first) {
        let fresh = r.route_unprepared(rec, c, 7);
        assert_eq!(prepared, &fresh, "{} {:?} {:?}", rec.action, rec, c);
        assert_eq!(&r.route(rec, c, 7), prepared, "a second evaluation differs for {:?}", rec);
        assert!(!prepared.policy_failed, "{:?}", prepared.reasons);
        seen.insert((prepared.outcome.to_string(), prepared.tier));
    }
    for want in [("auto", Some(0)), ("auto", Some(1)), ("review", Some(2)), ("review", Some(3)), ("advisory", None), ("blocked", None)] {
        assert!(seen.contains(&(want.0.to_string(), want.1)), "no input reached {want:?}: {seen:?}");
    }
}

#[test]
fn the_prepared_router_fails_closed_exactly_as_a_freshly_loaded_engine() {
    let conflict = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"a\"]} if { true }\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"b\"]} if { true }\n";
    let undefined_on_empty_input = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [input.recommendation.action]} if { input.context.environment_criticality == \"high\" }\n";
    let errors_on_input = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [sprintf(\"%d\", [1 / (input.context.recent_runs - 2)])]}\n";
    let slow = "package cairn.route\n\nbig := [x | some x in numbers.range(1, 3000000)]\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [sprintf(\"%d\", [count(big)])]}\n";
    for rego in [conflict, undefined_on_empty_input, errors_on_input, slow] {
        let r = Router::from_sources(rego, "{}", RouterConfig { timeout_ms: 20, ..Default::default() }).unwrap();
        for (rec, c) in generated_inputs(12) {
            let (prepared, fresh) = (r.route(&rec, &c, 3), r.route_unprepared(&rec, &c, 3));
            // Fail-closed reasons carry the engine's message, which may name a timing; compare the rest.
            assert_eq!(
                (prepared.outcome, prepared.tier, prepared.approvals_required, prepared.policy_failed, prepared.requires_window, prepared.stage_approval),
                (fresh.outcome, fresh.tier, fresh.approvals_required, fresh.policy_failed, fresh.requires_window, fresh.stage_approval),
                "{rego}\n{:?}\n{:?}",
                prepared.reasons,
                fresh.reasons
            );
            if prepared.policy_failed {
                assert_eq!((prepared.outcome, prepared.tier), (Outcome::Review, Some(3)));
            }
        }
    }
}

fn auto_rec() -> Recommendation {
    rec(ActionClass::RestartProcess, "production", 0.99, BlastRadius::Instance, Reversibility::Reversible)
}

#[test]
fn the_default_bundle_pauses_stages_from_tier_2_up_and_not_below() {
    let r = router();
    let d = r.route(&auto_rec(), &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.stage_approval), (Outcome::Auto, Some(0), false));
    let mut svc = auto_rec();
    svc.action = ActionClass::ScaleOut;
    svc.blast_radius = BlastRadius::Service;
    let d = r.route(&svc, &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.stage_approval), (Outcome::Auto, Some(1), false));
    let mut t2 = auto_rec();
    t2.action = ActionClass::RollbackDeploy;
    let d = r.route(&t2, &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.stage_approval), (Outcome::Review, Some(2), true));
    let mut t3 = auto_rec();
    t3.action = ActionClass::DnsChange;
    let d = r.route(&t3, &ctx(), 0);
    assert_eq!((d.outcome, d.tier, d.stage_approval), (Outcome::Review, Some(3), true));
}

#[test]
fn a_bundle_may_let_reviewed_stages_run_through_and_a_missing_field_pauses() {
    let through = "package cairn.route\n\ndecision := {\"outcome\": \"review\", \"tier\": 2, \"approvals_required\": 1, \"stage_approval\": false, \"reasons\": [\"a\"]}\n";
    let d = Router::from_sources(through, "{}", RouterConfig::default()).unwrap().route(&auto_rec(), &ctx(), 0);
    assert_eq!((d.outcome, d.policy_failed, d.stage_approval), (Outcome::Review, false, false));
    let silent = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"reasons\": [\"a\"]}\n";
    let d = Router::from_sources(silent, "{}", RouterConfig::default()).unwrap().route(&auto_rec(), &ctx(), 0);
    assert_eq!((d.outcome, d.policy_failed, d.stage_approval), (Outcome::Auto, false, true), "missing means pause");
}

#[test]
fn a_stage_approval_that_is_not_a_boolean_fails_closed_and_pauses() {
    for value in ["\"no\"", "0", "null", "[false]", "{}"] {
        let rego = format!(
            "package cairn.route\n\ndecision := {{\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"stage_approval\": {value}, \"reasons\": [\"a\"]}}\n"
        );
        let d = Router::from_sources(&rego, "{}", RouterConfig::default()).unwrap().route(&auto_rec(), &ctx(), 0);
        assert!(d.policy_failed, "{value}: {:?}", d.reasons);
        assert_eq!((d.outcome, d.tier, d.stage_approval), (Outcome::Review, Some(3), true), "{value}");
    }
}

#[test]
fn every_floor_that_overrides_the_bundle_also_pauses_stages() {
    let rego = "package cairn.route\n\ndecision := {\"outcome\": \"auto\", \"tier\": 0, \"approvals_required\": 0, \"stage_approval\": false, \"reasons\": [\"everything runs\"]}\n";
    let r = Router::from_sources(rego, "{}", RouterConfig::default()).unwrap();
    assert!(!r.route(&auto_rec(), &ctx(), 0).stage_approval, "the bundle's word stands when no floor applies");
    let mut low = auto_rec();
    low.confidence = 0.1;
    let mut no_rollback = auto_rec();
    no_rollback.rollback_plan = None;
    let mut activation = auto_rec();
    activation.action = ActionClass::PolicyActivation;
    for (what, r2) in [("low confidence", low), ("no rollback plan", no_rollback), ("policy activation", activation)] {
        let d = r.route(&r2, &ctx(), 0);
        assert_ne!(d.outcome, Outcome::Auto, "{what}");
        assert!(d.stage_approval, "{what}: {d:?}");
    }
}

#[test]
fn an_investigation_is_advisory_whatever_its_confidence_or_the_bundle_says() {
    let r = router();
    for confidence in [0.0, 0.5, 0.99] {
        // It has no rollback plan (it changes nothing), which the bundle blocks: advisory still.
        let mut investigate = rec(ActionClass::Investigate, "staging", confidence, BlastRadius::Instance, Reversibility::Reversible);
        investigate.rollback_plan = None;
        let d = r.route(&investigate, &ctx(), 7);
        assert_eq!(d.outcome, Outcome::Advisory, "{confidence}: {:?}", d.reasons);
        assert_eq!(d.tier, None);
    }
    // A bundle that would let it run by itself, or wait for one person, is overruled.
    for (outcome, tier, approvals) in [("auto", 0, 0), ("review", 2, 1)] {
        let rego = format!(
            "package cairn.route\n\ndecision := {{\"outcome\": \"{outcome}\", \"tier\": {tier}, \"approvals_required\": {approvals}, \"approver_groups\": [\"sre\"], \"reasons\": [\"the bundle says so\"]}} if {{ true }}\n"
        );
        let permissive = Router::from_sources(&rego, "{}", RouterConfig::default()).unwrap();
        let d = permissive.route(&rec(ActionClass::Investigate, "staging", 0.99, BlastRadius::Instance, Reversibility::Reversible), &ctx(), 7);
        assert_eq!((d.outcome, d.tier, d.approvals_required), (Outcome::Advisory, None, 0), "{outcome}: {:?}", d.reasons);
        assert!(!d.policy_failed && d.reasons.iter().any(|r| r.contains("never executed")), "{:?}", d.reasons);
    }
}
