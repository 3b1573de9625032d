//! Routing: a Rego policy bundle, evaluated with regorus, decides for each recommendation revision
//! whether it runs by itself (`auto`, tiers 0–1), waits for people (`review`, tiers 2–3), stays
//! `advisory`, or is `blocked`.
//!
//! Takes a [`Recommendation`] and a [`RoutingContext`]; gives a [`Decision`] stamped with the
//! bundle's content hash. It **fails closed**: an evaluation error, a timeout or an output of the
//! wrong shape yields review at tier 3, never `auto` (invariant 5). Two floors apply after Rego that
//! no bundle can lower: low confidence never runs by itself (invariant 6), and nothing without a
//! rollback plan or a verification check runs by itself. A third floor keeps invariant 10 whatever
//! the bundle says: a `policy_activation` (swapping the bundle itself) is never auto or advisory,
//! only review at tier 3 (or blocked).
//!
//! The policy input document is `{"recommendation": <Recommendation>, "context": <RoutingContext>}`
//! (see `policy/default/README.md`). This crate decides; it never executes and never writes the
//! store.

#![forbid(unsafe_code)]

use cairn_types::{Decision, Outcome, Recommendation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

/// A service the bundle's `service_criticality` map does not list.
pub const DEFAULT_SERVICE_CRITICALITY: &str = "medium";

/// The rule every bundle must define.
pub const DECISION_RULE: &str = "data.cairn.route.decision";

/// What can go wrong loading or testing a bundle. Evaluation errors never surface as errors: they
/// become fail-closed decisions.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy bundle {path}: {message}")]
    Read { path: String, message: String },
    #[error("policy file {file} does not load: {message}")]
    Parse { file: String, message: String },
    #[error("policy data.json is invalid: {0}")]
    Data(String),
    #[error("policy bundle has no .rego files")]
    Empty,
}

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

/// Rego files plus data, versioned by content.
#[derive(Clone, Debug)]
pub struct PolicyBundle {
    rego: Vec<PolicyFile>,
    tests: Vec<PolicyFile>,
    data: String,
    version: String,
}

impl PolicyBundle {
    /// The bundle in `policy/default/`, compiled in.
    pub fn embedded_default() -> PolicyBundle {
        PolicyBundle::from_files(
            vec![
                PolicyFile { name: "route.rego".into(), text: include_str!("../../../policy/default/route.rego").into() },
                PolicyFile {
                    name: "route_test.rego".into(),
                    text: include_str!("../../../policy/default/route_test.rego").into(),
                },
            ],
            include_str!("../../../policy/default/data.json").into(),
        )
    }

    /// Every `*.rego` in `dir` (those ending `_test.rego` are tests) and `data.json` if present.
    pub fn load_dir(dir: &Path) -> Result<PolicyBundle, PolicyError> {
        let read_err = |e: std::io::Error| PolicyError::Read { path: dir.display().to_string(), message: e.to_string() };
        let mut files = Vec::new();
        let mut data = "{}".to_string();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if name.ends_with(".rego") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| PolicyError::Read { path: path.display().to_string(), message: e.to_string() })?;
                files.push(PolicyFile { name, text });
            } else if name == "data.json" {
                data = std::fs::read_to_string(&path)
                    .map_err(|e| PolicyError::Read { path: path.display().to_string(), message: e.to_string() })?;
            }
        }
        let bundle = PolicyBundle::from_files(files, data);
        if bundle.rego.is_empty() {
            return Err(PolicyError::Empty);
        }
        bundle.engine()?;
        Ok(bundle)
    }

    /// A bundle from in-memory files (names decide which are tests).
    pub fn from_files(mut files: Vec<PolicyFile>, data: String) -> PolicyBundle {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = Sha256::new();
        for f in &files {
            h.update(f.name.as_bytes());
            h.update([0]);
            h.update((f.text.len() as u64).to_be_bytes());
            h.update(f.text.as_bytes());
        }
        h.update(b"data.json\0");
        h.update(data.as_bytes());
        let version = format!("sha256:{}", hex::encode(h.finalize()));
        let (tests, rego) = files.into_iter().partition(|f| f.name.ends_with("_test.rego"));
        PolicyBundle { rego, tests, data, version }
    }

    /// Content hash of every file: `sha256:<hex>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every file, routing and tests, and `data.json` last: what a proposal carries so that the
    /// server can rebuild exactly this bundle (same version) from it.
    pub fn files(&self) -> Vec<PolicyFile> {
        let mut all: Vec<PolicyFile> = self.rego.iter().chain(&self.tests).cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.push(PolicyFile { name: "data.json".into(), text: self.data.clone() });
        all
    }

    /// The inverse of [`PolicyBundle::files`]: a bundle from files where `data.json` is data.
    pub fn from_all_files(files: Vec<PolicyFile>) -> Result<PolicyBundle, PolicyError> {
        let mut data = "{}".to_string();
        let mut rego = Vec::new();
        for f in files {
            if f.name == "data.json" {
                data = f.text;
            } else if f.name.ends_with(".rego") {
                rego.push(f);
            } else {
                return Err(PolicyError::Read { path: f.name, message: "not a .rego file or data.json".into() });
            }
        }
        let bundle = PolicyBundle::from_files(rego, data);
        if bundle.rego.is_empty() {
            return Err(PolicyError::Empty);
        }
        bundle.engine()?;
        Ok(bundle)
    }

    /// How critical `service` is according to `data.json` (`service_criticality` map).
    pub fn service_criticality(&self, service: &str) -> String {
        criticality_in(&self.parsed_data(), service)
    }

    /// `data.json` as JSON (null when it does not parse), for looking up many services at once.
    fn parsed_data(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }

    fn engine(&self) -> Result<regorus::Engine, PolicyError> {
        let mut engine = regorus::Engine::new();
        for f in &self.rego {
            engine
                .add_policy(f.name.clone(), f.text.clone())
                .map_err(|e| PolicyError::Parse { file: f.name.clone(), message: e.to_string() })?;
        }
        let data = regorus::Value::from_json_str(&self.data).map_err(|e| PolicyError::Data(e.to_string()))?;
        engine.add_data(data).map_err(|e| PolicyError::Data(e.to_string()))?;
        Ok(engine)
    }
}

/// `service`'s criticality in parsed bundle data; `medium` when not listed.
fn criticality_in(data: &serde_json::Value, service: &str) -> String {
    data.get("service_criticality")
        .and_then(|m| m.get(service)?.as_str())
        .unwrap_or(DEFAULT_SERVICE_CRITICALITY)
        .to_string()
}

/// Facts about the world the policy routes on, beyond the recommendation itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingContext {
    /// How critical the target's environment is, e.g. `high` for production.
    pub environment_criticality: String,
    /// How critical the target's service is (`critical`, `high`, `medium`, `low`), from the
    /// bundle's `data.json` `service_criticality` map; `medium` when not listed.
    #[serde(default)]
    pub service_criticality: String,
    pub maintenance_window_open: bool,
    /// Times this action ran on this target within the loop-guard window.
    pub recent_runs: u32,
    pub recent_failures: u32,
    /// Ids of break-glass exceptions in force for this target.
    pub active_break_glass: Vec<String>,
    /// The global freeze switch.
    pub frozen: bool,
}

impl RoutingContext {
    /// A context with the conventional criticality for an environment name.
    pub fn for_environment(environment: &str) -> RoutingContext {
        let criticality = match environment {
            "production" | "prod" => "high",
            "staging" | "stage" => "medium",
            _ => "low",
        };
        RoutingContext {
            environment_criticality: criticality.into(),
            service_criticality: DEFAULT_SERVICE_CRITICALITY.into(),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Evaluation deadline; past it the decision fails closed.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub timeout_ms: u64,
    /// Below this confidence an `auto` outcome becomes `advisory`, whatever the policy says. It
    /// can raise [`cairn_types::MIN_AUTO_CONFIDENCE`], never lower it.
    pub min_auto_confidence: f64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { timeout_ms: 250, min_auto_confidence: cairn_types::MIN_AUTO_CONFIDENCE }
    }
}

/// A loaded bundle, ready to route. Cheap to share; each evaluation clones the loaded engine,
/// which was prepared (analysed and scheduled) once when the router was built.
#[derive(Debug)]
pub struct Router {
    engine: regorus::Engine,
    bundle: PolicyBundle,
    cfg: RouterConfig,
}

/// The shape `decision` must have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecision {
    outcome: String,
    tier: Option<u8>,
    approvals_required: u8,
    #[serde(default)]
    approver_groups: Vec<String>,
    #[serde(default)]
    requires_window: bool,
    #[serde(default)]
    reasons: Vec<String>,
    /// Whether a staged change pauses for approval before each stage after the first. Missing:
    /// pause; any other type than a boolean: the shape is wrong and the decision fails closed.
    #[serde(default = "pause_by_default")]
    stage_approval: bool,
}

fn pause_by_default() -> bool {
    true
}

impl Router {
    pub fn new(bundle: PolicyBundle, cfg: RouterConfig) -> Result<Router, PolicyError> {
        let mut engine = timed_engine(&bundle, &cfg)?;
        // regorus analyses, schedules and hoists the policies on an engine's first evaluation and
        // remembers that it did; a clone of an engine that never evaluated does it all again. One
        // throwaway evaluation here makes every per-decision clone start prepared (most of the cost
        // of a decision otherwise). Its result does not matter: each evaluation starts from a
        // clean state and its own input, and a bundle that cannot be prepared fails closed on each
        // decision exactly as before.
        engine.set_input(regorus::Value::new_object());
        let _warm_up = engine.eval_rule(DECISION_RULE.to_string());
        Ok(Router { engine, bundle, cfg })
    }

    /// A router from Rego text and data, for tests and tools.
    pub fn from_sources(rego: &str, data: &str, cfg: RouterConfig) -> Result<Router, PolicyError> {
        Router::new(
            PolicyBundle::from_files(vec![PolicyFile { name: "route.rego".into(), text: rego.into() }], data.into()),
            cfg,
        )
    }

    pub fn version(&self) -> &str {
        self.bundle.version()
    }

    pub fn bundle(&self) -> &PolicyBundle {
        &self.bundle
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Routes one recommendation revision. Never fails: see the crate docs.
    pub fn route(&self, rec: &Recommendation, ctx: &RoutingContext, now_ms: i64) -> Decision {
        match self.evaluate(rec, ctx) {
            Ok(raw) => self.finish(rec, raw, now_ms),
            Err(e) => Decision::fail_closed(rec.id.clone(), rec.revision, self.version().to_string(), &e, now_ms),
        }
    }

    fn evaluate(&self, rec: &Recommendation, ctx: &RoutingContext) -> Result<RawDecision, String> {
        // Straight to JSON text and from there to regorus's value: no intermediate
        // `serde_json::Value` tree to build, walk and free.
        let input = serde_json::to_string(&PolicyInput { recommendation: rec, context: ctx }).map_err(|e| e.to_string())?;
        let input: regorus::Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
        evaluate_on(self.engine.clone(), input)
    }

    /// The straightforward path the prepared one must agree with: a freshly loaded engine per
    /// decision, nothing kept between decisions.
    #[cfg(test)]
    fn route_unprepared(&self, rec: &Recommendation, ctx: &RoutingContext, now_ms: i64) -> Decision {
        let input = serde_json::json!({ "recommendation": rec, "context": ctx });
        let raw = timed_engine(&self.bundle, &self.cfg)
            .map_err(|e| e.to_string())
            .and_then(|engine| evaluate_on(engine, regorus::Value::from(input)));
        match raw {
            Ok(raw) => self.finish(rec, raw, now_ms),
            Err(e) => Decision::fail_closed(rec.id.clone(), rec.revision, self.version().to_string(), &e, now_ms),
        }
    }

    fn finish(&self, rec: &Recommendation, raw: RawDecision, now_ms: i64) -> Decision {
        // `validate` guarantees the outcome parses.
        let mut outcome = Outcome::parse(&raw.outcome).unwrap_or(Outcome::Review);
        let mut tier = raw.tier;
        let mut reasons = raw.reasons;
        // Any floor below that overrides the bundle also makes the stages pause: when in doubt,
        // a person looks before each stage.
        let mut stage_approval = raw.stage_approval;
        if outcome == Outcome::Auto {
            let floor = self.cfg.min_auto_confidence.max(cairn_types::MIN_AUTO_CONFIDENCE);
            if rec.confidence.is_nan() || rec.confidence < floor {
                reasons.push(format!(
                    "confidence {:.2} is below the floor {floor:.2} that no policy can lower: advisory instead of auto",
                    rec.confidence
                ));
                outcome = Outcome::Advisory;
                tier = None;
                stage_approval = true;
            } else if rec.rollback_plan.is_none() || rec.verification.is_empty() {
                reasons.push(
                    "no rollback plan or no verification check: nothing without a way back runs by itself; one approver instead"
                        .into(),
                );
                outcome = Outcome::Review;
                tier = Some(2);
                stage_approval = true;
            }
        }
        if rec.action == cairn_types::ActionClass::PolicyActivation
            && matches!(outcome, Outcome::Auto | Outcome::Advisory | Outcome::Review)
            && tier != Some(3)
        {
            reasons.push(
                "a policy activation is itself a tier-3 change (two approvers and a maintenance window), whatever the bundle says"
                    .into(),
            );
            outcome = Outcome::Review;
            tier = Some(3);
            stage_approval = true;
        }
        // Not blocked either: a break-glass may open a blocked recommendation for review.
        if rec.action == cairn_types::ActionClass::Investigate && outcome != Outcome::Advisory {
            reasons.push("an investigation is for people to carry out: advisory, never executed, whatever the bundle says".into());
            outcome = Outcome::Advisory;
            tier = None;
        }
        if matches!(outcome, Outcome::Advisory | Outcome::Blocked) {
            stage_approval = true;
        }
        let (approvals_required, approver_groups, requires_window) = match outcome {
            Outcome::Review if tier == Some(3) => (raw.approvals_required.max(cairn_types::min_approvals(tier)), raw.approver_groups, true),
            Outcome::Review => (raw.approvals_required.max(cairn_types::min_approvals(tier)), raw.approver_groups, raw.requires_window),
            _ => (0, Vec::new(), false),
        };
        Decision {
            recommendation_id: rec.id.clone(),
            revision: rec.revision,
            outcome,
            tier,
            approvals_required,
            approver_groups,
            requires_window,
            stage_approval,
            breakglass_owner: None,
            reasons,
            policy_version: self.version().to_string(),
            policy_failed: false,
            decided_ms: now_ms,
        }
    }
}

/// The policy input document.
#[derive(Serialize)]
struct PolicyInput<'a> {
    recommendation: &'a Recommendation,
    context: &'a RoutingContext,
}

/// Units of interpreter work between two reads of the clock. Reading it at every unit cost about
/// 5% of a decision; a few dozen small units past the deadline are nothing next to it.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(32).expect("32 is not zero");

/// A loaded engine whose evaluations stop at the configured deadline.
fn timed_engine(bundle: &PolicyBundle, cfg: &RouterConfig) -> Result<regorus::Engine, PolicyError> {
    let mut engine = bundle.engine()?;
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: Duration::from_millis(cfg.timeout_ms.max(1)),
        check_interval: TIMER_CHECK_INTERVAL,
    });
    Ok(engine)
}

/// Evaluates the decision rule on `engine` for `input` and checks the shape of what comes out.
fn evaluate_on(mut engine: regorus::Engine, input: regorus::Value) -> Result<RawDecision, String> {
    engine.set_input(input);
    let value = engine.eval_rule(DECISION_RULE.to_string()).map_err(|e| e.to_string())?;
    if value == regorus::Value::Undefined {
        return Err(format!("{DECISION_RULE} is undefined for this input"));
    }
    let json = value.to_json_str().map_err(|e| e.to_string())?;
    let raw: RawDecision =
        serde_json::from_str(&json).map_err(|e| format!("{DECISION_RULE} has the wrong shape: {e}"))?;
    validate(&raw)?;
    Ok(raw)
}

fn validate(raw: &RawDecision) -> Result<(), String> {
    let outcome = Outcome::parse(&raw.outcome)
        .ok_or_else(|| format!("unknown outcome {:?}; expected auto, review, advisory or blocked", raw.outcome))?;
    match (outcome, raw.tier) {
        (Outcome::Auto, Some(0 | 1)) => {}
        (Outcome::Auto, t) => return Err(format!("auto needs tier 0 or 1, got {t:?}")),
        (Outcome::Review, t @ Some(2 | 3)) if raw.approvals_required >= cairn_types::min_approvals(t) => {}
        (Outcome::Review, t) => {
            return Err(format!(
                "review needs tier 2 with at least 1 approval or tier 3 with at least 2, got tier {t:?} with {}",
                raw.approvals_required
            ));
        }
        (Outcome::Advisory | Outcome::Blocked, None) => {}
        (o, Some(t)) => return Err(format!("{o} takes no tier, got {t}")),
    }
    if raw.reasons.is_empty() {
        return Err("a decision must give at least one reason".into());
    }
    Ok(())
}

/// Results of a bundle's own Rego tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTestReport {
    /// (package.rule, passed, message)
    pub results: Vec<(String, bool, String)>,
}

impl PolicyTestReport {
    pub fn passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.1)
    }
}

/// Runs every `test_*` rule of the bundle's `*_test.rego` files through the production engine.
pub fn run_policy_tests(bundle: &PolicyBundle) -> Result<PolicyTestReport, PolicyError> {
    let mut engine = bundle.engine()?;
    for f in &bundle.tests {
        engine
            .add_policy(f.name.clone(), f.text.clone())
            .map_err(|e| PolicyError::Parse { file: f.name.clone(), message: e.to_string() })?;
    }
    let mut report = PolicyTestReport::default();
    for f in &bundle.tests {
        let package = f
            .text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(str::trim)
            .ok_or_else(|| PolicyError::Parse { file: f.name.clone(), message: "no package line".into() })?;
        for line in f.text.lines() {
            let Some(rest) = line.strip_prefix("test_") else { continue };
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let rule = format!("data.{package}.test_{name}");
            let result = engine.clone().eval_rule(rule.clone());
            let (ok, msg) = match result {
                Ok(v) if v == regorus::Value::from(true) => (true, String::new()),
                Ok(v) => (false, format!("evaluated to {v:?}")),
                Err(e) => (false, e.to_string()),
            };
            report.results.push((rule, ok, msg));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;

/// One recommendation whose routing a candidate bundle would change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowChange {
    pub recommendation_id: String,
    pub revision: u32,
    pub action: String,
    pub target: String,
    /// The recorded decision, e.g. `auto tier 0`.
    pub before: String,
    /// What the candidate decides.
    pub after: String,
    /// The candidate's reasons.
    pub reasons: Vec<String>,
}

/// Invariant 11's floor: an `auto` decision reached while signals arrive unauthenticated (ingest
/// without `require_token`, so anyone who reaches the port could have sent them) waits for one
/// person instead, at tier 2. Every other decision passes unchanged.
pub fn unauthenticated_floor(decision: Decision, approver_groups: &[String]) -> Decision {
    if decision.outcome != Outcome::Auto {
        return decision;
    }
    let mut d = decision;
    d.outcome = Outcome::Review;
    d.tier = Some(d.tier.unwrap_or(2).max(2));
    d.approvals_required = d.approvals_required.max(cairn_types::min_approvals(d.tier));
    if d.approver_groups.is_empty() {
        d.approver_groups = approver_groups.to_vec();
    }
    d.stage_approval = true;
    d.reasons.push(
        "signals reach Cairn unauthenticated (ingest.require_token = false): nothing runs by itself, a person approves"
            .to_string(),
    );
    d
}

/// What a decision lets happen, in a few words: outcome, tier and approvals.
pub fn decision_summary(d: &Decision) -> String {
    match (d.outcome, d.tier) {
        (Outcome::Review, Some(t)) => format!("review tier {t} ({} approval(s))", d.approvals_required),
        (o, Some(t)) => format!("{o} tier {t}"),
        (o, None) => o.to_string(),
    }
}

/// Routes each recorded recommendation through `candidate` and lists those whose outcome, tier or
/// approval count would change. The context is rebuilt as of now — environment, the candidate's
/// own service criticality, no window open and no recent runs — since the one recorded at the time
/// is not kept; differences that come only from history therefore do not show.
pub fn shadow(candidate: &Router, recorded: &[(Recommendation, Decision)], now_ms: i64) -> Vec<ShadowChange> {
    let data = candidate.bundle().parsed_data();
    recorded
        .iter()
        .filter_map(|(rec, before)| {
            let ctx = RoutingContext {
                service_criticality: criticality_in(&data, &rec.target.service),
                ..RoutingContext::for_environment(&rec.target.environment)
            };
            let after = candidate.route(rec, &ctx, now_ms);
            let same = (after.outcome, after.tier, after.approvals_required)
                == (before.outcome, before.tier, before.approvals_required);
            (!same).then(|| ShadowChange {
                recommendation_id: rec.id.0.clone(),
                revision: rec.revision,
                action: rec.action.as_str().to_string(),
                target: rec.target.to_string(),
                before: decision_summary(before),
                after: decision_summary(&after),
                reasons: after.reasons,
            })
        })
        .collect()
}
