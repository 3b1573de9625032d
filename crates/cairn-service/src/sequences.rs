//! Whole review sequences, generated, through the real core, its three parts wired as `cairn serve`
//! wires them: recommendations are routed and opened by the analysis pipeline
//! ([`Pipeline::route_and_open`](crate::Pipeline::route_and_open): the default policy, learning,
//! guardrail inputs and `breakglass_for_blocked`), reviewed at the review desk
//! ([`ReviewDesk::review`](crate::ReviewDesk::review)) as random principals (including the
//! requester and Cairn itself), executed by the executor loop
//! ([`ExecutorLoop::execute_ready`](crate::ExecutorLoop::execute_ready): recovery, expiry, the
//! break-glass sweeper, rollbacks of stopped rollouts, the window wait, `stop_before_run`, the
//! executor and its gate), break-glass opened and revoked at the desk, and policy versions
//! switched the way an activation does (`reroute_after_activation`). Also: new revisions, clock
//! jumps across expiry and maintenance windows, principals removed from the configuration, forged
//! states, adapters that fail and staged rollouts. Nothing here re-implements a step of the server.
//!
//! After every step it asserts, with its own independent reading of the rules, that the adapter was
//! reached only for a change with an allowing decision and a valid quorum (invariants 1, 2, 3, 6 and
//! the window and roster checks), and that every state change of every change has its audit event
//! in an intact chain (invariant 8). For break-glass: a change opened under one runs only while it
//! is neither revoked nor expired and with two distinct approvals; a blocked change runs only under
//! a recorded use; no break-glass is used beyond its maximum or at or after its expiry; and each of
//! its state changes (opened, used, revoked, expired) has its audit event.

use crate::identity::{Identity, PrincipalKind};
use crate::clock::{Clock, ManualClock};
use crate::engine::{Engine, EngineParts};
use crate::governance::Governance;
use crate::metrics::Metrics;
use cairn_policy::{PolicyBundle, Router, RouterConfig, RoutingContext};
use cairn_store::{AuditProofs, AuditQuery, SqliteStore, Store};
use cairn_types::*;
use cairn_workflow::breakglass::BreakGlassRequest;
use cairn_workflow::{
    Adapter, AdapterFuture, ExecutionGate, Executor, GuardrailsConfig, MaintenanceWindow, MaintenanceWindows, Roster, WeeklySchedule,
    WorkflowConfig, approve, expire, open_change,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Records what reached it, and each undone stage; fails when told to.
#[derive(Debug, Default)]
struct Recording {
    ran: Mutex<Vec<(ChangeRequest, Recommendation)>>,
    undone: Mutex<Vec<(ChangeId, String)>>,
    fail: Mutex<bool>,
}

impl Adapter for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.ran.lock().unwrap().push((change.clone(), rec.clone()));
        let fail = *self.fail.lock().unwrap();
        Box::pin(async move {
            if fail {
                (ExecutionOutcome::Failed { error: "adapter down".into() }, String::new())
            } else {
                (ExecutionOutcome::Succeeded, String::new())
            }
        })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.undone.lock().unwrap().push((change.id.clone(), change.stage.clone().unwrap_or_default()));
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
}

const REQUESTER: &str = "user:req";

/// (subject, groups): the configured people. The requester is an sre-lead too, to tempt
/// self-approval; Cairn's own subject is never configured but tries anyway.
fn people() -> Vec<Principal> {
    [
        ("user:alice", &["sre", "sre-leads"][..]),
        ("user:bob", &["sre", "sre-leads"]),
        ("user:carol", &["sre"]),
        ("user:dave", &["sre-leads"]),
        (REQUESTER, &["sre", "sre-leads"]),
        (CAIRN_SERVICE_SUBJECT, &["sre", "sre-leads"]),
    ]
    .iter()
    .map(|(s, g)| Principal { subject: s.to_string(), display_name: s.to_string(), groups: g.iter().map(|g| g.to_string()).collect() })
    .collect()
}

/// Sundays 02:00–04:00 UTC, everywhere.
fn windows() -> MaintenanceWindows {
    MaintenanceWindows::new(vec![MaintenanceWindow {
        name: "sunday".into(),
        service: "*".into(),
        environment: "*".into(),
        weekly: Some(WeeklySchedule { days: vec!["sun".into()], start: "02:00".into(), duration_minutes: 120 }),
        start: None,
        end: None,
    }])
    .unwrap()
}

/// 2026-11-29 01:30 UTC, a Sunday: half an hour before the window opens.
const START_MS: i64 = 1_795_915_800_000;

fn routers() -> [Router; 2] {
    let default = PolicyBundle::embedded_default();
    let mut files = default.files();
    let data = files.last_mut().unwrap();
    data.text = data.text.replace("\"auto_min\": 0.8", "\"auto_min\": 0.9").replace("\"tier2\": [\"sre\"]", "\"tier2\": [\"sre-leads\"]");
    let stricter = PolicyBundle::from_all_files(files).unwrap();
    [Router::new(default, RouterConfig::default()).unwrap(), Router::new(stricter, RouterConfig::default()).unwrap()]
}

#[derive(Clone, Debug)]
enum Step {
    Approve(usize),
    Reject(usize),
    /// New evidence: a new revision, with this confidence.
    Revise(f64),
    /// The other policy version becomes active; waiting changes are routed again.
    SwitchPolicy,
    /// Minutes forward.
    Advance(i64),
    /// A person leaves the configuration.
    Remove(usize),
    /// An executor pass, with the adapter failing or not.
    Execute(bool),
    /// A buggy or hostile writer forces the current change to `approved` and calls the executor.
    Forge,
    /// A person opens a break-glass: owner, whether its scope covers the recommendation, minutes
    /// it lasts (up to four hours), and its optional maximum number of uses.
    Grant {
        owner: usize,
        covering: bool,
        minutes: i64,
        max_uses: Option<u32>,
    },
    /// A person revokes the most recently opened break-glass (refused when it is not active).
    Revoke(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..6).prop_map(Step::Approve),
        1 => (0usize..6).prop_map(Step::Reject),
        2 => (0.3f64..1.0).prop_map(Step::Revise),
        1 => Just(Step::SwitchPolicy),
        3 => prop_oneof![4 => 0i64..20, 1 => 55i64..70, 1 => 1_400i64..1_500, 1 => 10_000i64..10_100].prop_map(Step::Advance),
        1 => (0usize..6).prop_map(Step::Remove),
        5 => any::<bool>().prop_map(Step::Execute),
        1 => Just(Step::Forge),
        3 => (0usize..6, prop::bool::weighted(0.8), prop_oneof![1i64..30, 30i64..=240], prop::option::of(1u32..4))
            .prop_map(|(owner, covering, minutes, max_uses)| Step::Grant { owner, covering, minutes, max_uses }),
        1 => (0usize..6).prop_map(Step::Revoke),
        1 => (230i64..260).prop_map(Step::Advance),
    ]
}

fn action() -> impl Strategy<Value = (ActionClass, BlastRadius, Reversibility)> {
    prop_oneof![
        1 => Just((ActionClass::RestartProcess, BlastRadius::Instance, Reversibility::Reversible)),
        1 => Just((ActionClass::ScaleOut, BlastRadius::Service, Reversibility::Reversible)),
        1 => Just((ActionClass::RollbackDeploy, BlastRadius::Service, Reversibility::Reversible)),
        1 => Just((ActionClass::DnsChange, BlastRadius::Global, Reversibility::PartiallyReversible)),
        1 => Just((ActionClass::DatabaseFailover, BlastRadius::Cluster, Reversibility::PartiallyReversible)),
        1 => Just((ActionClass::DataDelete, BlastRadius::Service, Reversibility::Irreversible)),
        // Blocked by the default policy in production: what break-glass is for.
        4 => Just((ActionClass::FirewallRelax, BlastRadius::Global, Reversibility::PartiallyReversible)),
    ]
}

/// As [`recommendation`], rolled out in three stages.
fn staged(kind: (ActionClass, BlastRadius, Reversibility), confidence: f64) -> Recommendation {
    let mut r = recommendation(kind, confidence);
    r.parameters.insert(STAGES_PARAMETER.into(), "canary,25%,100%".into());
    r
}

fn recommendation(kind: (ActionClass, BlastRadius, Reversibility), confidence: f64) -> Recommendation {
    let mut r = cairn_types::fixtures::recommendation(1);
    r.action = kind.0;
    r.blast_radius = kind.1;
    r.reversibility = kind.2;
    r.confidence = confidence;
    r.requester = REQUESTER.into();
    r
}

struct World {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    routers: [Arc<Router>; 2],
    active: usize,
    roster: Vec<Principal>,
    windows: MaintenanceWindows,
    rec: Recommendation,
    adapter: Arc<Recording>,
    changes: BTreeSet<ChangeId>,
    /// Changes whose policy decision was `blocked` (whether or not a break-glass opened them).
    blocked: BTreeSet<ChangeId>,
    /// Stopped rollouts, with how many stages the adapter had run for them when the stop was
    /// first seen: no stage runs after a stop.
    stopped: BTreeMap<ChangeId, usize>,
}

/// An engine as `cairn serve` builds one, on `store`: authenticated senders (so `auto` is
/// possible), the guardrails' break-glass approvers, the recording adapter behind the gate.
fn engine(
    store: Arc<dyn Store>,
    router: Arc<Router>,
    world: (&[Principal], &MaintenanceWindows, &Arc<Recording>, &Arc<ManualClock>),
) -> Arc<Engine> {
    let (roster, windows, adapter, clock) = world;
    let gate = ExecutionGate { windows: windows.clone(), roster: Some(Roster::new(roster.to_vec())) };
    let executor = Executor::new(adapter.clone()).with_gate(Arc::new(gate));
    let clock: Arc<dyn Clock> = clock.clone();
    let guardrails = GuardrailsConfig { approver_groups: vec!["sre-leads".into()], ..Default::default() };
    let engine = Engine::new(EngineParts {
        store,
        router,
        executor,
        workflow: WorkflowConfig::default(),
        governance: Governance::new(guardrails, None).unwrap(),
        metrics: Metrics::new(),
        clock,
        signals_authenticated: true,
        step_up: Default::default(),
        oidc_configured: false,
        shutdown: Default::default(),
    })
    .unwrap();
    Arc::new(engine)
}

impl World {
    fn new(rec: Recommendation) -> World {
        let routers = routers().map(Arc::new);
        let roster: Vec<Principal> = people().into_iter().filter(|p| p.subject != CAIRN_SERVICE_SUBJECT).collect();
        let (windows, adapter, clock) = (windows(), Arc::new(Recording::default()), Arc::new(ManualClock::at(START_MS)));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        let engine = engine(store, routers[0].clone(), (&roster, &windows, &adapter, &clock));
        World {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            engine,
            clock,
            routers,
            active: 0,
            roster,
            windows,
            rec,
            adapter,
            changes: BTreeSet::new(),
            blocked: BTreeSet::new(),
            stopped: BTreeMap::new(),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn advance(&self, minutes: i64) {
        self.clock.advance(minutes * 60_000);
    }

    fn store(&self) -> &dyn Store {
        self.engine.store().as_ref()
    }

    /// Routes and opens the current revision through the engine.
    fn propose(&mut self) {
        let _rt = self.rt.enter();
        self.engine.pipeline().route_and_open(self.rec.clone(), self.now()).unwrap();
        self.note_latest();
    }

    /// Remembers the latest revision's change, and whether the policy blocked it (a break-glass
    /// opens only a blocked decision, and names its owner on it).
    fn note_latest(&mut self) {
        let latest = self.latest();
        self.rec.revision = latest.recommendation.revision;
        if latest.decision.outcome == Outcome::Blocked || latest.decision.breakglass_owner.is_some() {
            self.blocked.insert(latest.change.id.clone());
        }
        self.changes.insert(latest.change.id);
    }

    fn grant(&mut self, owner: usize, covering: bool, minutes: i64, max_uses: Option<u32>) {
        let scope = if covering {
            BreakGlassScope { actions: vec![self.rec.action], targets: vec![Target { service: "*".into(), ..self.rec.target.clone() }] }
        } else {
            BreakGlassScope {
                actions: vec![self.rec.action],
                targets: vec![Target { environment: "staging".into(), ..self.rec.target.clone() }],
            }
        };
        let req =
            BreakGlassRequest { purpose: "incident bridge".into(), link: "INC-1".into(), scope, duration_ms: minutes * 60_000, max_uses };
        // Refused for Cairn's own subject, as over gRPC.
        let _rt = self.rt.enter();
        let _ = self.engine.desk().open_breakglass(&people()[owner], req);
    }

    fn revoke(&mut self, who: usize) {
        let all = self.store().list_breakglass(false).unwrap();
        let Some(bg) = all.iter().max_by_key(|bg| (bg.opened_ms, bg.id.clone())) else { return };
        // Refused when it is not active.
        let _rt = self.rt.enter();
        let _ = self.engine.desk().revoke_breakglass(&people()[who], &bg.id, "no longer needed");
    }

    fn latest(&self) -> cairn_store::RecommendationRecord {
        self.store().get_recommendation(&self.rec.id, None).unwrap().unwrap()
    }

    /// A review as a person with a static token (refusals are the engine's to make).
    fn review(&mut self, who: usize, approving: bool) {
        let record = self.latest();
        let who = Identity::without_sign_in(people()[who].clone(), PrincipalKind::Person, []);
        let _rt = self.rt.enter();
        let _ = self.engine.desk().review(&who, &record.recommendation.id, record.recommendation.revision, "reviewed", approving);
    }

    /// One pass of the executor loop.
    fn execute(&mut self, fail: bool) {
        *self.adapter.fail.lock().unwrap() = fail;
        self.rt.block_on(self.engine.executor().execute_ready()).unwrap();
    }

    /// A person leaves the configuration: the server is restarted on the same store without them.
    fn remove(&mut self, who: usize) {
        let gone = people()[who].subject.clone();
        self.roster.retain(|p| p.subject != gone);
        let router = self.engine.router().current();
        self.engine = engine(self.engine.store().clone(), router, (&self.roster, &self.windows, &self.adapter, &self.clock));
    }

    /// The other policy version becomes active, as a policy activation makes it: waiting changes
    /// decided under the earlier version are routed again.
    fn switch_policy(&mut self) {
        self.active = 1 - self.active;
        self.engine.router().swap(self.routers[self.active].clone());
        let _rt = self.rt.enter();
        crate::policy::reroute_after_activation(self.engine.executor(), self.now()).unwrap();
        self.note_latest();
    }

    /// A buggy or hostile writer hands the engine's executor a change forced to `approved`. Only
    /// changes that never ran, or paused or stopped rollouts: re-running a finished change is the
    /// store's state machine to prevent, not the executor's.
    fn forge(&mut self) {
        let record = self.latest();
        if !matches!(
            record.change.state,
            ChangeState::PendingApproval
                | ChangeState::Rejected
                | ChangeState::Expired
                | ChangeState::AwaitingStageApproval
                | ChangeState::RollbackPending
        ) {
            return;
        }
        let mut forged = record.change.clone();
        forged.state = ChangeState::Approved;
        let now = self.now();
        let _ = self.rt.block_on(self.engine.executor().executor.run(&forged, &record.recommendation, &record.decision, now));
    }
}

/// The rules of invariants 1–3 and 6, the window and the roster, read independently of
/// `authorize_execution`: may this change of this revision run now under this decision?
fn allowed(change: &ChangeRequest, rec: &Recommendation, decision: &Decision, world: &World) -> Result<(), String> {
    if change.revision != rec.revision || decision.revision != rec.revision || change.policy_version != decision.policy_version {
        return Err("ran a change of another revision or policy version".into());
    }
    if change.action_digest != rec.action_digest(&decision.policy_version) {
        return Err("ran a change whose action digest does not match".into());
    }
    match (decision.outcome, decision.tier) {
        (Outcome::Auto, Some(0 | 1)) if rec.confidence >= 0.5 => Ok(()),
        (Outcome::Auto, _) => Err(format!("auto ran at tier {:?} with confidence {}", decision.tier, rec.confidence)),
        (Outcome::Review, Some(tier)) => {
            if change.rejection.is_some() {
                return Err("a rejected change ran".into());
            }
            let valid = oracle_valid(change.approvals.iter(), change, rec, decision, world);
            let needed = usize::from(decision.approvals_required.max(if tier == 3 { 2 } else { 1 }));
            if valid.len() < needed {
                return Err(format!("ran with {} valid approvals of {needed}: {:?}", valid.len(), change.approvals));
            }
            if (tier == 3 || decision.requires_window) && world.windows.open_for(&rec.target, world.now()).is_none() {
                return Err("a tier-3 change ran outside its maintenance window".into());
            }
            Ok(())
        }
        (o, _) => Err(format!("a {o} decision ran")),
    }
}

/// Every change's state changes are in the audit log: at least one event per version, the last
/// state the log records is the stored state, and the chain verifies.
fn audit_covers_every_change(world: &World) -> Result<(), String> {
    world.store().verify_audit().map_err(|e| e.to_string())?;
    let events = world
        .store()
        .audit_events(&AuditQuery { recommendation_id: Some(world.rec.id.0.clone()), limit: 100_000, ..Default::default() })
        .unwrap();
    let mut by_change: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
    for e in &events {
        if let Some(c) = &e.change_id {
            by_change.entry(c.as_str()).or_default().push(e);
        }
    }
    for id in &world.changes {
        let change = world.store().get_change(id).unwrap().ok_or("a proposed change is missing")?;
        let mine = by_change.get(id.0.as_str()).map(Vec::as_slice).unwrap_or_default();
        if (mine.len() as u64) < change.version {
            return Err(format!("{id} is at version {} with only {} audit events", change.version, mine.len()));
        }
        let logged = mine.iter().rev().find_map(|e| e.payload.get("state").and_then(|s| s.as_str()));
        if logged != Some(change.state.as_str()) {
            return Err(format!("{id} is {} but the audit log last says {logged:?}", change.state));
        }
    }
    Ok(())
}

/// Read independently of `check_in_force` and `apply_to_decision`: a change that just ran, if it
/// was opened under a break-glass, ran while that break-glass was unrevoked and unexpired, with two
/// distinct valid approvals; and a change policy blocked ran only under a recorded use.
fn breakglass_run_allowed(change: &ChangeRequest, world: &World) -> Result<(), String> {
    let under = world.store().breakglass_for_change(&change.id).unwrap();
    if world.blocked.contains(&change.id) {
        let Some(bg) = &under else { return Err(format!("blocked change {} ran without a break-glass", change.id)) };
        let used = breakglass_events(world).into_iter().any(|e| {
            e.kind == "breakglass.used" && e.change_id.as_deref() == Some(change.id.0.as_str()) && bg_id(&e) == Some(bg.id.clone())
        });
        if !used {
            return Err(format!("blocked change {} ran with no break-glass use recorded for it", change.id));
        }
    }
    let Some(bg) = under else { return Ok(()) };
    if bg.state == BreakGlassState::Revoked {
        return Err(format!("{} ran under revoked break-glass {}", change.id, bg.id));
    }
    if world.now() >= bg.expires_ms {
        return Err(format!("{} ran at {} under break-glass {} that expired at {}", change.id, world.now(), bg.id, bg.expires_ms));
    }
    let distinct: BTreeSet<&str> = change
        .approvals
        .iter()
        .filter(|a| {
            a.subject != change.requester && a.subject != CAIRN_SERVICE_SUBJECT && a.subject != bg.owner && a.revision == change.revision
        })
        .map(|a| a.subject.as_str())
        .collect();
    if distinct.len() < 2 {
        return Err(format!("{} ran under break-glass {} with {} distinct approvals", change.id, bg.id, distinct.len()));
    }
    Ok(())
}

fn breakglass_events(world: &World) -> Vec<AuditEvent> {
    let all = world.store().audit_events(&AuditQuery { limit: 100_000, ..Default::default() }).unwrap();
    all.into_iter().filter(|e| e.kind.starts_with("breakglass.")).collect()
}

fn bg_id(e: &AuditEvent) -> Option<String> {
    e.payload.get("breakglass")?.get("id")?.as_str().map(str::to_string)
}

/// Every break-glass: never used beyond its maximum or at or after its expiry, and each of its
/// versions (opened, each use, revoked or expired) has its audit event, the last of which records
/// its stored state.
fn breakglass_kept_its_bounds(world: &World) -> Result<(), String> {
    let events = breakglass_events(world);
    for bg in world.store().list_breakglass(false).unwrap() {
        let mine: Vec<&AuditEvent> = events.iter().filter(|e| bg_id(e).as_deref() == Some(bg.id.as_str())).collect();
        let uses: Vec<&&AuditEvent> = mine.iter().filter(|e| e.kind == "breakglass.used").collect();
        if uses.len() as u32 != bg.uses {
            return Err(format!("{} counts {} uses but the audit log has {}", bg.id, bg.uses, uses.len()));
        }
        if let Some(max) = bg.max_uses
            && bg.uses > max
        {
            return Err(format!("{} used {} times, more than its maximum {max}", bg.id, bg.uses));
        }
        if let Some(late) = uses.iter().find(|e| e.at_ms >= bg.expires_ms) {
            return Err(format!("{} used at {} after its expiry at {}", bg.id, late.at_ms, bg.expires_ms));
        }
        if let Some(closed) = bg.closed_ms
            && let Some(after) = uses.iter().find(|e| e.at_ms > closed)
        {
            return Err(format!("{} used at {} after it closed at {closed}", bg.id, after.at_ms));
        }
        if (mine.len() as u64) < bg.version {
            return Err(format!("{} is at version {} with only {} audit events", bg.id, bg.version, mine.len()));
        }
        let logged = mine.last().and_then(|e| e.payload.get("breakglass")?.get("state")?.as_str().map(str::to_string));
        if logged.as_deref() != Some(bg.state.as_str()) {
            return Err(format!("{} is {} but the audit log last says {logged:?}", bg.id, bg.state));
        }
        let expected_close = match bg.state {
            BreakGlassState::Active => None,
            BreakGlassState::Expired => Some("breakglass.expired"),
            BreakGlassState::Revoked => Some("breakglass.revoked"),
            BreakGlassState::Exhausted => Some("breakglass.used"),
        };
        if let Some(kind) = expected_close
            && mine.last().map(|e| e.kind.as_str()) != Some(kind)
        {
            return Err(format!("{} is {} without a {kind} event last", bg.id, bg.state));
        }
        if mine.first().map(|e| e.kind.as_str()) != Some("breakglass.opened") {
            return Err(format!("{} has no breakglass.opened event first", bg.id));
        }
    }
    Ok(())
}

/// Applies one step to the world, as the server would, then checks every invariant.
fn apply_and_check(world: &mut World, s: Step) -> Result<(), TestCaseError> {
    let ran_before = world.adapter.ran.lock().unwrap().len();
    match s {
        Step::Approve(i) => world.review(i, true),
        Step::Reject(i) => world.review(i, false),
        Step::Revise(c) => {
            world.rec.revision += 1;
            world.rec.confidence = c;
            world.rec.created_ms = world.now();
            world.propose();
        }
        Step::SwitchPolicy => world.switch_policy(),
        Step::Advance(m) => world.advance(m),
        Step::Remove(i) => world.remove(i),
        Step::Execute(fail) => world.execute(fail),
        Step::Forge => world.forge(),
        Step::Grant { owner, covering, minutes, max_uses } => world.grant(owner, covering, minutes, max_uses),
        Step::Revoke(i) => world.revoke(i),
    }
    let ran = world.adapter.ran.lock().unwrap().clone();
    for (change, rec) in &ran[ran_before..] {
        let record = world.store().get_recommendation(&rec.id, Some(rec.revision)).unwrap().unwrap();
        prop_assert_eq!(&record.recommendation, rec, "the adapter got the stored revision");
        prop_assert_eq!(rec.revision, world.rec.revision, "only the latest revision runs");
        prop_assert_eq!(
            &record.decision.policy_version,
            &world.routers[world.active].version().to_string(),
            "only a decision of the active policy version runs"
        );
        if let Err(why) = allowed(change, rec, &record.decision, world) {
            return Err(TestCaseError::fail(format!("{why} (decision {:?})", record.decision)));
        }
        if let Err(why) = breakglass_run_allowed(change, world) {
            return Err(TestCaseError::fail(why));
        }
        if let Err(why) = stage_allowed(change, rec, &record.decision, world) {
            return Err(TestCaseError::fail(why));
        }
    }
    if let Err(why) = stopped_rollouts_only_roll_back(world) {
        return Err(TestCaseError::fail(why));
    }
    if let Err(why) = audit_covers_every_change(world) {
        return Err(TestCaseError::fail(why));
    }
    if let Err(why) = breakglass_kept_its_bounds(world) {
        return Err(TestCaseError::fail(why));
    }
    Ok(())
}

/// The oracle's own reading of which approvals count (kept apart from the code under test): people
/// other than the requester and Cairn, bound to this revision, policy version and action, whom the
/// roster still lets approve.
fn oracle_valid<'a>(
    approvals: impl Iterator<Item = &'a Approval>,
    change: &ChangeRequest,
    rec: &Recommendation,
    decision: &Decision,
    world: &World,
) -> BTreeSet<&'a str> {
    let roster = Roster::new(world.roster.clone());
    approvals
        .filter(|a| {
            a.subject != change.requester
                && a.subject != CAIRN_SERVICE_SUBJECT
                && a.revision == rec.revision
                && a.policy_version == decision.policy_version
                && a.action_digest == change.action_digest
                && roster.may_approve(&a.subject, &change.approver_groups)
        })
        .map(|a| a.subject.as_str())
        .collect()
}

/// Read independently of `authorize_stage`: a stage after the first of a change whose decision
/// (or the change itself) says stages pause ran only with a quorum of distinct, current stage
/// approvals naming that stage, from people other than the requester and Cairn whom the roster
/// still authorises.
fn stage_allowed(change: &ChangeRequest, rec: &Recommendation, decision: &Decision, world: &World) -> Result<(), String> {
    if change.stop.is_some() {
        return Err(format!("{} ran stage {:?} after it was stopped", change.id, change.stage));
    }
    if change.stages_done == 0 || !(change.stage_approval || decision.stage_approval) {
        return Ok(());
    }
    let Some(stage) = change.stage.as_deref() else { return Err(format!("{} ran a staged change without naming the stage", change.id)) };
    let of_stage = change.stage_approvals.iter().filter(|s| s.stage == stage).map(|s| &s.approval);
    let valid = oracle_valid(of_stage, change, rec, decision, world);
    let needed = usize::from(decision.approvals_required.max(if decision.tier == Some(3) { 2 } else { 1 }));
    if valid.len() < needed {
        return Err(format!("{} ran stage {stage} with {} valid stage approvals of {needed}", change.id, valid.len()));
    }
    Ok(())
}

/// Every stopped rollout: no stage ran after the stop was first seen, and once it is rolled back
/// exactly its executed stages were undone, newest first, each once.
fn stopped_rollouts_only_roll_back(world: &mut World) -> Result<(), String> {
    let ran = world.adapter.ran.lock().unwrap().clone();
    let undone = world.adapter.undone.lock().unwrap().clone();
    for id in world.changes.clone() {
        let change = world.store().get_change(&id).unwrap().ok_or("a proposed change is missing")?;
        if change.stop.is_none() {
            continue;
        }
        let runs = ran.iter().filter(|(c, _)| c.id == id).count();
        let first_seen = *world.stopped.entry(id.clone()).or_insert(runs);
        if runs != first_seen {
            return Err(format!("{id} ran {} more stage(s) after it was stopped", runs - first_seen));
        }
        if matches!(change.state, ChangeState::RolledBack | ChangeState::RollbackFailed) {
            let mine: Vec<&str> = undone.iter().filter(|(c, _)| *c == id).map(|(_, s)| s.as_str()).collect();
            let expected: Vec<&str> = change.stages[..change.stages_done as usize].iter().rev().map(String::as_str).collect();
            if mine != expected {
                return Err(format!("{id} undid {mine:?}, expected exactly {expected:?}"));
            }
        }
    }
    Ok(())
}

/// Steps weighted towards break-glass: a blocked recommendation, grants, revocations, reviews by
/// the people who may approve it, new revisions, jumps across expiries, and executor passes.
fn breakglass_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..6, prop::bool::weighted(0.85), prop_oneof![1i64..30, 30i64..=240], prop::option::of(1u32..4))
            .prop_map(|(owner, covering, minutes, max_uses)| Step::Grant { owner, covering, minutes, max_uses }),
        1 => (0usize..6).prop_map(Step::Revoke),
        8 => (0usize..6).prop_map(Step::Approve),
        1 => (0usize..6).prop_map(Step::Reject),
        2 => (0.3f64..1.0).prop_map(Step::Revise),
        1 => Just(Step::SwitchPolicy),
        3 => prop_oneof![4 => 0i64..20, 1 => 20i64..70, 1 => 230i64..260].prop_map(Step::Advance),
        5 => any::<bool>().prop_map(Step::Execute),
        1 => Just(Step::Forge),
    ]
}

/// Actions whose rollouts pause (tiers 2 and 3) or run through (auto).
fn staged_action() -> impl Strategy<Value = (ActionClass, BlastRadius, Reversibility)> {
    prop_oneof![
        3 => Just((ActionClass::RollbackDeploy, BlastRadius::Service, Reversibility::Reversible)),
        1 => Just((ActionClass::DnsChange, BlastRadius::Global, Reversibility::PartiallyReversible)),
        1 => Just((ActionClass::RestartProcess, BlastRadius::Instance, Reversibility::Reversible)),
    ]
}

/// Steps weighted towards staged rollouts: approvals and executor passes that move through the
/// stages, rejects, jumps across the stage-approval deadline, forged approvals, new revisions.
fn staged_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0usize..6).prop_map(Step::Approve),
        2 => (0usize..6).prop_map(Step::Reject),
        1 => (0.3f64..1.0).prop_map(Step::Revise),
        1 => Just(Step::SwitchPolicy),
        3 => prop_oneof![3 => 0i64..20, 1 => 30i64..40, 1 => 55i64..70].prop_map(Step::Advance),
        1 => (0usize..6).prop_map(Step::Remove),
        8 => any::<bool>().prop_map(Step::Execute),
        3 => Just(Step::Forge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn nothing_runs_without_an_allowing_decision_and_a_valid_quorum_and_every_change_is_audited(
        kind in action(),
        confidence in 0.3f64..1.0,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut world = World::new(recommendation(kind, confidence));
        world.propose();
        for s in steps {
            apply_and_check(&mut world, s)?;
        }
    }

    /// The same invariants on staged rollouts, with stage approvals, rejects and expiry of paused
    /// rollouts, new revisions and policy switches superseding them: no stage runs without its
    /// approval where the decision pauses, none after a stop, and a stop undoes exactly what ran.
    #[test]
    fn a_staged_rollout_never_runs_an_unapproved_stage_and_a_stop_undoes_exactly_what_ran(
        kind in staged_action(),
        confidence in 0.3f64..1.0,
        steps in proptest::collection::vec(staged_step(), 1..40),
    ) {
        let mut world = World::new(staged(kind, confidence));
        world.propose();
        for s in steps {
            apply_and_check(&mut world, s)?;
        }
    }

    /// The same invariants on sequences built around a blocked action, so that break-glass uses,
    /// runs under them and refusals after they lapse are frequent.
    #[test]
    fn nothing_blocked_runs_outside_a_breakglass_in_force_and_every_breakglass_change_is_audited(
        confidence in 0.3f64..1.0,
        owner in 0usize..4,
        minutes in 1i64..=240,
        max_uses in prop::option::of(1u32..4),
        steps in proptest::collection::vec(breakglass_step(), 1..40),
    ) {
        let mut world = World::new(recommendation((ActionClass::FirewallRelax, BlastRadius::Global, Reversibility::PartiallyReversible), confidence));
        // Someone opened a covering break-glass before the blocked recommendation arrived.
        world.grant(owner, true, minutes, max_uses);
        world.propose();
        for s in steps {
            apply_and_check(&mut world, s)?;
        }
    }
}

/// The expiry path on its own, as the sequences rarely wait exactly past it before reviewing.
#[test]
fn an_expired_change_is_audited_and_cannot_be_approved_afterwards() {
    let mut r = recommendation((ActionClass::RollbackDeploy, BlastRadius::Service, Reversibility::Reversible), 0.9);
    r.revision = 1;
    let d = routers()[0].route(&r, &RoutingContext::for_environment("production"), START_MS);
    let (c, _) = open_change(&r, &d, START_MS, &WorkflowConfig::default());
    let late = c.expires_ms;
    let (expired, drafts) = expire(&c, late).unwrap();
    assert_eq!(drafts[0].kind, "change.expired");
    assert!(approve(&expired, &r, &people()[0], 1, "too late", late).is_err());
}

/// The harness is not vacuous: a plain sequence does reach the adapter, only at the right moment.
#[test]
fn a_tier3_sequence_runs_once_inside_the_window_with_two_current_approvers() {
    let mut world = World::new(recommendation((ActionClass::DnsChange, BlastRadius::Global, Reversibility::PartiallyReversible), 0.9));
    world.propose();
    assert_eq!(world.latest().decision.tier, Some(3));
    world.review(4, true); // the requester: refused
    world.review(5, true); // Cairn itself: refused
    world.review(0, true);
    world.review(1, true);
    assert_eq!(world.latest().change.state, ChangeState::Approved);
    world.execute(false);
    assert!(world.adapter.ran.lock().unwrap().is_empty(), "01:30 is before the window");
    assert_eq!(world.latest().change.state, ChangeState::Approved, "it waits, approved");
    world.advance(40);
    world.execute(false);
    assert_eq!(world.adapter.ran.lock().unwrap().len(), 1);
    assert_eq!(world.latest().change.state, ChangeState::Succeeded);
    audit_covers_every_change(&world).unwrap();
}

/// The break-glass steps are reached: a change policy blocked is opened for two-person review
/// under a break-glass, runs once inside its validity, and a second change under the same
/// break-glass is refused once it has lapsed; after that, the recommendation is blocked again.
#[test]
fn a_breakglass_change_runs_once_inside_its_validity_and_is_refused_after_it_lapses() {
    let mut world = World::new(recommendation((ActionClass::FirewallRelax, BlastRadius::Global, Reversibility::PartiallyReversible), 0.9));
    world.propose();
    assert_eq!(world.latest().decision.outcome, Outcome::Blocked, "the default policy blocks it");
    world.grant(0, true, 60, Some(2));
    world.rec.revision += 1;
    world.propose();
    let first = world.latest();
    assert_eq!(first.decision.outcome, Outcome::Review);
    assert_eq!(first.decision.tier, Some(2));
    assert_eq!(first.decision.approvals_required, 2);
    world.review(4, true); // the requester: refused
    world.review(0, true); // the break-glass owner: refused
    world.review(1, true);
    world.execute(false);
    assert!(world.adapter.ran.lock().unwrap().is_empty(), "one approval is not two");
    world.review(3, true);
    world.execute(false);
    assert_eq!(world.adapter.ran.lock().unwrap().len(), 1);
    assert_eq!(world.latest().change.state, ChangeState::Succeeded);
    breakglass_run_allowed(&world.latest().change, &world).unwrap();

    // Its second and last use: the change opened under it may run only until the expiry.
    world.rec.revision += 1;
    world.propose();
    let second = world.latest();
    assert_eq!(second.decision.outcome, Outcome::Review);
    let bg = world.store().breakglass_for_change(&second.change.id).unwrap().unwrap();
    assert_eq!((bg.uses, bg.state), (2, BreakGlassState::Exhausted));
    world.review(1, true);
    world.review(3, true);
    assert_eq!(world.latest().change.state, ChangeState::Approved);
    world.advance(61);
    world.execute(false);
    assert_eq!(world.adapter.ran.lock().unwrap().len(), 1, "lapsed: refused, not run");
    assert_eq!(world.latest().change.state, ChangeState::Failed, "the refusal is written");

    world.rec.revision += 1;
    world.propose();
    assert_eq!(world.latest().decision.outcome, Outcome::Blocked, "nothing usable is left");
    audit_covers_every_change(&world).unwrap();
    breakglass_kept_its_bounds(&world).unwrap();
}

/// Revoked and expired break-glass records: their changes never run, and the sweeper's and the
/// revoker's events are in the log.
#[test]
fn a_revoked_or_expired_breakglass_stops_its_approved_change() {
    for revoke in [true, false] {
        let mut world =
            World::new(recommendation((ActionClass::FirewallRelax, BlastRadius::Global, Reversibility::PartiallyReversible), 0.9));
        world.grant(2, true, 30, None);
        world.propose();
        assert_eq!(world.latest().decision.outcome, Outcome::Review);
        world.review(0, true);
        world.review(1, true);
        if revoke {
            world.revoke(3);
        } else {
            world.advance(30);
        }
        world.execute(false);
        assert!(world.adapter.ran.lock().unwrap().is_empty(), "revoke={revoke}: it must not run");
        let bg = world.store().list_breakglass(false).unwrap().remove(0);
        assert_eq!(bg.state, if revoke { BreakGlassState::Revoked } else { BreakGlassState::Expired });
        audit_covers_every_change(&world).unwrap();
        breakglass_kept_its_bounds(&world).unwrap();
    }
}

/// The staged steps are reached: a tier-2 rollout pauses after its canary, a reject stops it and
/// the next executor pass undoes the canary; another pauses, expires an hour later and is undone.
#[test]
fn a_paused_rollout_is_stopped_by_a_reject_or_its_expiry_and_rolled_back_once() {
    for by_reject in [true, false] {
        let mut world = World::new(staged((ActionClass::RollbackDeploy, BlastRadius::Service, Reversibility::Reversible), 0.9));
        world.propose();
        assert_eq!((world.latest().decision.tier, world.latest().decision.stage_approval), (Some(2), true));
        world.review(0, true);
        world.execute(false);
        assert_eq!(world.latest().change.state, ChangeState::AwaitingStageApproval);
        if by_reject {
            world.review(5, false); // Cairn itself: refused
            assert_eq!(world.latest().change.state, ChangeState::AwaitingStageApproval);
            world.review(4, false); // the requester may stop their own rollout
        } else {
            world.advance(61);
        }
        world.execute(false);
        let c = world.latest().change;
        assert_eq!(c.state, ChangeState::RolledBack, "by_reject={by_reject}");
        world.execute(false);
        assert_eq!(world.adapter.undone.lock().unwrap().iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["canary"]);
        assert_eq!(world.adapter.ran.lock().unwrap().len(), 1, "no stage after the canary");
        stopped_rollouts_only_roll_back(&mut world).unwrap();
        audit_covers_every_change(&world).unwrap();
    }
}
