//! Each part of the core built and used on its own, from only what it is given: the pipeline
//! without a desk or an executor loop, the desk without an executor loop, the executor loop on a
//! change written straight into the store. (The property suite, `sequences.rs`, drives the three
//! together as `cairn serve` wires them.)

#![allow(clippy::unwrap_used)]

use crate::desk::{ReviewDesk, ReviewDeskDeps, ReviewDeskError};
use crate::clock::ManualClock;
use crate::executor::{ExecutorLoop, ExecutorLoopDeps};
use crate::governance::Governance;
use crate::identity::{Identity, PrincipalKind};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineDeps};
use crate::policy::ActiveRouter;
use cairn_policy::{PolicyBundle, Router, RouterConfig, RoutingContext};
use cairn_store::{SqliteStore, Store};
use cairn_types::{ChangeRequest, Decision, ExecutionOutcome, Outcome, Principal, Recommendation, RecommendationId};
use cairn_workflow::{Adapter, AdapterFuture, Executor, WorkflowConfig};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const NOW: i64 = 1_795_915_800_000;


/// Records the changes that reached it.
#[derive(Debug, Default)]
struct Recording(Mutex<Vec<ChangeRequest>>);

impl Adapter for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn execute<'a>(&'a self, _: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.0.lock().unwrap().push(change.clone());
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, _: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
}

fn store() -> Arc<dyn Store> {
    Arc::new(SqliteStore::open_in_memory().unwrap())
}

fn router() -> Arc<ActiveRouter> {
    let router = Router::new(PolicyBundle::embedded_default(), RouterConfig::default()).unwrap();
    Arc::new(ActiveRouter::new(Arc::new(router)))
}

fn pipeline(store: &Arc<dyn Store>, router: &Arc<ActiveRouter>, signals_authenticated: bool) -> Arc<Pipeline> {
    Arc::new(Pipeline::new(PipelineDeps {
        signals: store.clone(),
        changes: store.clone(),
        guards: store.clone(),
        router: router.clone(),
        windows: Default::default(),
        governance: Arc::new(Governance::default()),
        workflow: WorkflowConfig::default(),
        metrics: Metrics::new(),
        clock: Arc::new(ManualClock::at(NOW)),
        executor_wake: Arc::new(Notify::new()),
        signals_authenticated,
    }))
}

#[test]
fn the_pipeline_alone_opens_a_change_under_the_active_policy_and_never_auto_for_unauthenticated_signals() {
    let (store, router) = (store(), router());
    let pipeline = pipeline(&store, &router, false);
    let mut rec = cairn_types::fixtures::recommendation(1);
    rec.created_ms = NOW;
    pipeline.route_and_open(rec.clone(), NOW).unwrap();
    let record = store.get_recommendation(&rec.id, None).unwrap().expect("the recommendation is stored");
    assert_eq!(record.change.revision, 1);
    assert_eq!(record.decision.policy_version, router.current().version());
    assert_ne!(record.decision.outcome, Outcome::Auto, "unauthenticated signals never run by themselves");
}

#[test]
fn the_desk_alone_refuses_an_unknown_recommendation_and_a_freeze_without_a_reason() {
    let (store, router) = (store(), router());
    let desk = ReviewDesk::new(ReviewDeskDeps {
        changes: store.clone(),
        signals: store.clone(),
        guards: store.clone(),
        pipeline: pipeline(&store, &router, true),
        router,
        windows: Default::default(),
        governance: Arc::new(Governance::default()),
        metrics: Metrics::new(),
        clock: Arc::new(ManualClock::at(NOW)),
        step_up: Default::default(),
        oidc_configured: false,
        executor_wake: Arc::new(Notify::new()),
    });
    let alice = Principal { subject: "user:alice".into(), display_name: "Alice".into(), groups: vec!["sre".into()] };
    let who = Identity::without_sign_in(alice.clone(), PrincipalKind::Person, []);
    let unknown = desk.review(&who, &RecommendationId("rec-nope".into()), 1, "looks right", true).unwrap_err();
    assert!(matches!(unknown, ReviewDeskError::UnknownRecommendation { .. }), "{unknown}");
    assert_eq!(unknown.to_string(), "no recommendation rec-nope");

    let refused = desk.set_freeze(&alice, true, "  ").unwrap_err();
    assert!(matches!(refused, ReviewDeskError::GuardrailRefused(_)), "{refused}");
    assert!(store.freeze_state().unwrap().is_none_or(|f| !f.frozen), "a refused freeze writes nothing");
    desk.set_freeze(&alice, true, "incident bridge").unwrap();
    assert!(store.freeze_state().unwrap().is_some_and(|f| f.frozen));
}

#[test]
fn the_executor_loop_alone_runs_an_allowed_change_once_through_its_adapter() {
    let (store, router) = (store(), router());
    let mut rec = cairn_types::fixtures::recommendation(1);
    rec.created_ms = NOW;
    // The active policy's decision, made auto at tier 0 (as for a safe, confident restart), written
    // as routing would write it.
    let routed = router.current().route(&rec, &RoutingContext::for_environment(&rec.target.environment), NOW);
    let decision = Decision { outcome: Outcome::Auto, tier: Some(0), approvals_required: 0, requires_window: false, ..routed };
    let (change, drafts) = cairn_workflow::open_change(&rec, &decision, NOW, &WorkflowConfig::default());
    store.propose(&rec, &decision, &change, &drafts, NOW).unwrap();

    let adapter = Arc::new(Recording::default());
    let ex = Arc::new(ExecutorLoop::new(ExecutorLoopDeps {
        changes: store.clone(),
        guards: store.clone(),
        leases: store.clone(),
        executor: Executor::new(adapter.clone()),
        pipeline: pipeline(&store, &router, true),
        router,
        governance: Arc::new(Governance::default()),
        workflow: WorkflowConfig::default(),
        metrics: Metrics::new(),
        clock: Arc::new(ManualClock::at(NOW)),
        wake: Arc::new(Notify::new()),
    }));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(ex.execute_ready()).unwrap(), 1, "the approved change is claimed");
    assert_eq!(rt.block_on(ex.execute_ready()).unwrap(), 0, "and only once");
    let ran = adapter.0.lock().unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].id, change.id);
    let after = store.get_change(&change.id).unwrap().unwrap();
    assert_ne!(after.state, cairn_types::ChangeState::Approved, "its result is recorded");
}

/// A batch of samples that brings no new anomaly can still bring the points that show two
/// incidents' series moving together: the merge co-movement finds is stored like any other (the
/// incident merged away is kept, empty, naming where its members went).
/// The analysis worker's stages, fresh, with the correlator configured as given.
fn analysis(cfg: cairn_correlate::CorrelatorConfig) -> crate::pipeline::Analysis {
    crate::pipeline::Analysis {
        detector: cairn_detect::Detector::new(Default::default()),
        correlator: cairn_correlate::Correlator::new(cfg),
        recommender: cairn_recommend::Recommender::new(cairn_recommend::Catalogue::embedded_default()),
        deduper: cairn_ingest::AlertDeduper::new(1_000, 60_000),
        exported: Default::default(),
        exported_multivariate: Vec::new(),
        last_sweep_ms: NOW,
        multivariate: Vec::new(),
    }
}

#[test]
fn the_pipeline_stores_a_co_movement_merge_from_a_batch_without_new_anomalies() {
    use crate::pipeline::Batch;
    use cairn_types::{Labels, MetricSample, SampleBatch};
    let (store, router) = (store(), router());
    let pipeline = pipeline(&store, &router, true);
    let cfg = cairn_correlate::CorrelatorConfig { comove: true, comove_min_r: 0.9, comove_min_points: 12, ..Default::default() };
    let mut analysis = analysis(cfg);
    let labels = |service: &str, name: &str| -> Labels { [("__name__", name), ("service", service)].into_iter().collect() };
    let t0 = NOW - 10 * 60_000;
    // Two services in trouble (two anomalous series each) and nothing linking them: two incidents.
    for service in ["a", "b"] {
        for name in ["errors", "latency"] {
            let l = labels(service, name);
            let a = cairn_types::fixtures::anomaly(l, t0, 0.0);
            analysis.correlator.note_anomaly(&a, NOW);
        }
    }
    let opened = analysis.correlator.settle();
    assert_eq!(opened.len(), 2);
    // Their error ratios climb together; too few points for the detector, which is warming up.
    let samples: Vec<MetricSample> = (1..=20)
        .flat_map(|k| {
            let t = t0 + k * 15_000;
            let wiggle = if k % 3 == 0 { 0.4 } else { 0.0 };
            [
                MetricSample { labels: labels("a", "errors"), timestamp_ms: t, value: k as f64 + wiggle },
                MetricSample { labels: labels("b", "errors"), timestamp_ms: t, value: 2.0 * k as f64 - wiggle },
            ]
        })
        .collect();
    let samples: SampleBatch = samples.iter().collect();
    pipeline.analyse(&mut analysis, Batch::Samples { samples, source: "test" }).unwrap();
    assert_eq!(analysis.correlator.open_count(), 1);
    let stored: Vec<_> = opened.iter().map(|id| store.get_incident(id).unwrap()).collect();
    let gone = stored.iter().flatten().find(|i| i.members.is_empty()).expect("the incident merged away is stored, emptied");
    assert!(gone.grouping_reasons[0].starts_with("merged into") && gone.grouping_reasons[0].contains("moved together with"), "{:?}", gone.grouping_reasons);
    let kept = stored.iter().flatten().find(|i| !i.members.is_empty()).expect("the merged incident is stored");
    assert_eq!(kept.members.len(), 4);
}

/// Each changed incident is stored told what changed since its last write (the rows of new and
/// changed members only): through growth, alerts resolving and firing again, and a person's split,
/// every incident reads back from the store exactly as the correlator holds it.
#[test]
fn incidents_stored_from_what_changed_read_back_as_the_correlator_holds_them() {
    use crate::pipeline::{Analysis, Batch, Regroup};
    use cairn_types::{AlertEvent, AlertStatus};
    let (store, router) = (store(), router());
    let pipeline = pipeline(&store, &router, true);
    let mut analysis = analysis(Default::default());
    let alert = |fp: &str, status: AlertStatus| AlertEvent {
        fingerprint: fp.into(),
        status,
        labels: [("alertname", "HighErrorRate"), ("service", &fp[..1]), ("severity", "warning"), ("id", fp)].into_iter().collect(),
        annotations: [("summary", "errors")].into_iter().collect(),
        starts_at_ms: NOW - 60_000,
        ends_at_ms: None,
        generator_url: String::new(),
        source: "test".into(),
    };
    let firing = |fps: std::ops::Range<u32>, service: &str| -> Vec<AlertEvent> {
        fps.map(|k| alert(&format!("{service}{k}"), AlertStatus::Firing)).collect()
    };
    let check = |analysis: &Analysis| {
        let open = analysis.correlator.open_count();
        let mut seen = 0;
        for id in store.list_incidents(0, 1, 100).unwrap().iter().map(|i| i.id.clone()) {
            let Some(held) = analysis.correlator.get(&id) else { continue };
            assert_eq!(&store.get_incident(&id).unwrap().unwrap(), held, "incident {id} as stored");
            seen += 1;
        }
        assert_eq!(seen, open, "every open incident is stored");
    };
    let analyse = |analysis: &mut Analysis, alerts: Vec<AlertEvent>| {
        pipeline.analyse(analysis, Batch::Alerts { alerts, source: "test" }).unwrap();
    };
    analyse(&mut analysis, [firing(0..30, "c"), firing(0..5, "p")].concat());
    check(&analysis);
    analyse(&mut analysis, [vec![alert("c3", AlertStatus::Resolved), alert("c7", AlertStatus::Resolved)], firing(30..40, "c")].concat());
    check(&analysis);
    analyse(&mut analysis, vec![alert("c3", AlertStatus::Firing), alert("p1", AlertStatus::Resolved), alert("c40", AlertStatus::Firing)]);
    check(&analysis);
    let from = store.list_incidents(0, 1, 100).unwrap().into_iter().find(|i| i.affected_services == ["c"]).unwrap().id;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let members = (20..26).map(|k| format!("alert:c{k}")).collect();
    let regroup = Batch::Regroup { regroup: Regroup::Split { from, members }, by: "alice".into(), reason: "their own".into(), reply };
    pipeline.analyse(&mut analysis, regroup).unwrap();
    let split = answer.blocking_recv().unwrap().unwrap();
    assert!(split.len() == 2 && split[0].id != split[1].id, "the part split off is an incident of its own");
    check(&analysis);
    analyse(&mut analysis, vec![alert("c21", AlertStatus::Resolved), alert("c41", AlertStatus::Firing), alert("c7", AlertStatus::Firing)]);
    check(&analysis);
    assert_eq!(analysis.correlator.open_count(), 3, "the rules do not merge again what a person split");
}
