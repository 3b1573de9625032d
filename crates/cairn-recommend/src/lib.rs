//! Recommending: playbooks as data turn an [`Incident`] into [`Recommendation`]s — what to do, to
//! what, how confident, how risky, how to undo it and how to check it worked, with the rationale
//! and evidence a reviewer reads.
//!
//! A recommendation's id is stable for one incident; its revision increases when the evidence
//! behind it changes (a member joins, an alert resolves) or the best playbook does, and only then. The
//! catalogue is TOML (`playbooks/default.toml` is embedded; another can be loaded) and its content
//! hash is the playbook version recorded on every recommendation.
//!
//! Every playbook declares a signature (alert-name and metric-name globs, anomaly kinds, the entity
//! kind it acts on, whether it needs a change to undo) and is scored against the incident: the
//! noisy-OR of its matching members, evidence on the most probable root (the correlator's first
//! cause) counting fully and elsewhere [`OFF_ROOT`]-weighted. The best fit is proposed on the root
//! entity, one recommendation per incident, with the runners-up named in its rationale; below
//! [`MIN_FIT`] nothing is. The matching is a fold over the members kept per open incident
//! ([`scan`]), so a pass that only appended members matches only those. The fit, halved when every
//! alert has resolved, is the *uncalibrated* confidence; the confidence proposed is the probability
//! that the action is right, read off a monotone map fitted on labelled incidents and checked on
//! held-out ones ([`calibration`]), capped at 0.99. The map is pooled over playbooks rather than
//! fed each playbook's hand-set `base_confidence`, which stands in only when no map is embedded (a
//! playbook of a low prior would otherwise never reach the confidence its evidence earns). Its
//! version is recorded in the playbook version, and the rationale states both figures. An alert can
//! pin it with the annotation `cairn_confidence` (a number in [0, 1]) — for rules whose precision
//! the operator knows, and for the demo. The target's environment defaults to `production` when the
//! signal does not say: the conservative reading.
//!
//! Past human decisions on similar changes then lower it, bounded and with a sentence saying why
//! ([`learning`]); the server feeds that history in.
//!
//! Pure and deterministic. It proposes; it never routes, approves or executes.

#![forbid(unsafe_code)]

pub mod calibration;
mod calibration_table;
pub mod learning;
pub mod scan;

use cairn_types::{
    ActionClass, AlertStatus, BlastRadius, CAIRN_SERVICE_SUBJECT, Evidence, Incident, IncidentMember,
    Labels, Recommendation, RecommendationId, Reversibility, RollbackPlan, Target, VerificationCheck,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Label or annotation naming a playbook explicitly (ingest removes it from senders not allowed to
/// steer).
pub use cairn_types::PLAYBOOK_KEY as PLAYBOOK_LABEL;
/// Annotation pinning a recommendation's confidence (likewise).
pub use cairn_types::CONFIDENCE_ANNOTATION;

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error("playbook catalogue is not valid TOML: {0}")]
    Toml(String),
    #[error("playbook {playbook:?}: {problem}")]
    InvalidPlaybook { playbook: String, problem: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckDef {
    name: String,
    query: String,
    comparator: String,
    threshold: f64,
    within_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookDef {
    name: String,
    version: String,
    action: String,
    description: String,
    #[serde(default)]
    alertnames: Vec<String>,
    #[serde(default)]
    metric_names: Vec<String>,
    /// Anomaly kinds (`drift`, `level_shift`, `spike`, ...) a metric match must show; empty is any.
    #[serde(default)]
    anomaly_kinds: Vec<String>,
    /// What it acts on: `service` (default) or `node`.
    #[serde(default = "default_entity")]
    entity: String,
    /// Whether it answers only a change on the root entity (a rollback needs a rollout to undo).
    #[serde(default)]
    requires_change: bool,
    blast_radius: BlastRadius,
    reversibility: Reversibility,
    rollback_steps: Vec<String>,
    rollback_owner: String,
    expected_benefit: String,
    execution_window: String,
    base_confidence: f64,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    verification: Vec<CheckDef>,
    /// Progressive stages, in order (e.g. `["canary", "25%", "100%"]`); empty runs in one step.
    #[serde(default)]
    stages: Vec<String>,
}

fn default_entity() -> String {
    "service".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueDef {
    playbook: Vec<PlaybookDef>,
}

/// One validated playbook.
#[derive(Clone, Debug)]
pub struct Playbook {
    def: PlaybookDef,
    action: ActionClass,
}

impl Playbook {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn action(&self) -> ActionClass {
        self.action
    }
}

/// The playbooks, validated, with the catalogue's content hash.
#[derive(Clone, Debug)]
pub struct Catalogue {
    playbooks: Vec<Playbook>,
    version: String,
}

impl Catalogue {
    pub fn embedded_default() -> Catalogue {
        // The embedded catalogue is checked by a test; failing here would be a build defect.
        Catalogue::from_toml(include_str!("../playbooks/default.toml")).unwrap_or_else(|e| panic!("embedded playbooks: {e}"))
    }

    pub fn from_toml(text: &str) -> Result<Catalogue, RecommendError> {
        let def: CatalogueDef = toml::from_str(text).map_err(|e| RecommendError::Toml(e.to_string()))?;
        let mut playbooks = Vec::new();
        for p in def.playbook {
            let bad = |problem: String| RecommendError::InvalidPlaybook { playbook: p.name.clone(), problem };
            let action = ActionClass::parse(&p.action).ok_or_else(|| {
                bad(format!(
                    "unknown action {:?}; expected one of {}",
                    p.action,
                    ActionClass::ALL.map(|a| a.as_str()).join(", ")
                ))
            })?;
            if action == ActionClass::Investigate {
                return Err(bad("`investigate` is what Cairn proposes when no playbook fits; a playbook names an action".into()));
            }
            if !(0.0..=1.0).contains(&p.base_confidence) {
                return Err(bad(format!("base_confidence {} is outside [0, 1]", p.base_confidence)));
            }
            if p.rollback_steps.is_empty() || p.rollback_owner.trim().is_empty() {
                return Err(bad("needs rollback_steps and a rollback_owner".into()));
            }
            if p.verification.is_empty() {
                return Err(bad("needs at least one verification check".into()));
            }
            if let Some(c) = p.verification.iter().find(|c| !["<", "<=", ">", ">=", "=="].contains(&c.comparator.as_str())) {
                return Err(bad(format!("check {:?} has unknown comparator {:?}", c.name, c.comparator)));
            }
            if let Some(s) = p.stages.iter().find(|s| s.trim().is_empty() || s.contains(',') || s.trim() != s.as_str()) {
                return Err(bad(format!("stage {s:?} must be a non-empty name without commas or surrounding spaces")));
            }
            if p.stages.iter().enumerate().any(|(i, s)| p.stages[..i].contains(s)) {
                return Err(bad("names a stage twice".into()));
            }
            if p.parameters.contains_key(cairn_types::STAGES_PARAMETER) {
                return Err(bad(format!("declare stages with `stages`, not the parameter {:?}", cairn_types::STAGES_PARAMETER)));
            }
            if !["service", "node"].contains(&p.entity.as_str()) {
                return Err(bad(format!("entity {:?} must be \"service\" or \"node\"", p.entity)));
            }
            if playbooks.iter().any(|q: &Playbook| q.def.name == p.name) {
                return Err(bad("defined twice".into()));
            }
            playbooks.push(Playbook { def: p, action });
        }
        let version = format!("sha256:{}", &hex::encode(Sha256::digest(text.as_bytes()))[..16]);
        Ok(Catalogue { playbooks, version })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn playbooks(&self) -> &[Playbook] {
        &self.playbooks
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) || s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Fills `{label}` placeholders from labels; unknown ones become `unknown`. Braces that do not
/// enclose a bare label name (PromQL selectors) are kept as they are.
fn fill(template: &str, labels: &Labels) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let key_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if key_len > 0 && after[key_len..].starts_with('}') {
            out.push_str(labels.get(&after[..key_len]).unwrap_or("unknown"));
            rest = &after[key_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Why a playbook matched an incident: the member that triggered it, and how well it fits.
struct Trigger<'a> {
    member: &'a IncidentMember,
    /// Fit in [0, 1], and each piece of evidence in words.
    score: f64,
    reasons: Vec<String>,
}

/// How much one firing alert matching a signature says (an alert is a rule people wrote, so one
/// alone is enough to propose; what that is worth as a probability is the calibration's to say).
const ALERT_FIT: f64 = 0.75;
/// The most a firing critical alert's floor (fit × prior) may give a recommendation: below the
/// default policy's `auto` line (0.8), so only the calibrated evidence can put it there.
const CRITICAL_FLOOR_CAP: f64 = 0.75;
/// How much an alert's severity says: the rule's author's own word on how much it matters. A lone
/// critical alert fits better than a lone warning or info one.
fn severity_factor(s: cairn_types::Severity) -> f64 {
    match s {
        cairn_types::Severity::Critical => 1.0,
        cairn_types::Severity::High => 0.93,
        cairn_types::Severity::Medium => 0.8,
        cairn_types::Severity::Low => 0.55,
    }
}

/// The embedded confidence calibration ([`calibration`]).
static CALIBRATION: std::sync::LazyLock<calibration::Calibration> = std::sync::LazyLock::new(calibration::Calibration::embedded);

/// Words in a rationale before the uncalibrated confidence (fit × prior), so that an evaluation can
/// refit the calibration from what the server answered.
pub const UNCALIBRATED: &str = "uncalibrated confidence";

/// Evidence on the root entity counts fully; elsewhere in the incident, this much.
pub const OFF_ROOT: f64 = 0.3;
/// Below this fit, nothing is proposed: the incident stays visible as evidence.
pub const MIN_FIT: f64 = 0.25;
/// Recommendations whose revision state is kept; the oldest is forgotten beyond this.
pub const MAX_TRACKED: usize = 100_000;

/// Keeps each recommendation's revision and evidence digest to decide when to revise. Bounded by
/// [`MAX_TRACKED`]; forgotten first-in first-out.
#[derive(Debug)]
pub struct Recommender {
    catalogue: Catalogue,
    revisions: Revisions,
    scans: scan::Scans,
}

/// Each tracked recommendation's revision and evidence digest, with the order they were first
/// tracked in for forgetting the oldest. Forgetting one (its incident closed or merged) is O(1):
/// its place in the order goes stale, is skipped when reached, and stale places are swept out once
/// they are as many as the live ones, so the order stays under twice [`MAX_TRACKED`].
#[derive(Debug, Default)]
struct Revisions {
    /// Revision, digest, and the tracking number of its place in `order`.
    by_id: HashMap<RecommendationId, (u32, String, u64)>,
    order: std::collections::VecDeque<(RecommendationId, u64)>,
    next: u64,
}

impl Revisions {
    fn forget(&mut self, id: &RecommendationId) {
        if self.by_id.remove(id).is_some() && self.order.len() > 2 * self.by_id.len().max(1) {
            let live = &self.by_id;
            self.order.retain(|(id, n)| live.get(id).is_some_and(|e| e.2 == *n));
        }
    }

    /// The revision to propose for `id` given what it now rests on (`digest`: the choice and the
    /// evidence), or `None` when that is unchanged. At most [`MAX_TRACKED`] are kept, oldest out.
    fn next_revision(&mut self, id: &RecommendationId, digest: String) -> Option<u32> {
        if let Some((r, d, _)) = self.by_id.get_mut(id) {
            if *d == digest {
                return None;
            }
            *r += 1;
            *d = digest;
            return Some(*r);
        }
        while self.by_id.len() >= MAX_TRACKED {
            let Some((old, n)) = self.order.pop_front() else { break };
            if self.by_id.get(&old).is_some_and(|e| e.2 == n) {
                self.by_id.remove(&old);
            }
        }
        self.next += 1;
        self.order.push_back((id.clone(), self.next));
        self.by_id.insert(id.clone(), (1, digest, self.next));
        Some(1)
    }
}

impl Recommender {
    pub fn new(catalogue: Catalogue) -> Recommender {
        Recommender { catalogue, revisions: Revisions::default(), scans: scan::Scans::default() }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Forgets an incident's recommendation state (the incident was merged away or closed).
    pub fn forget(&mut self, incident: &cairn_types::IncidentId) {
        let id = recommendation_for(incident);
        self.revisions.forget(&id);
        self.scans.forget(incident);
    }

    /// Recommendations whose revision state is kept.
    pub fn tracked(&self) -> usize {
        self.revisions.by_id.len()
    }

    /// Incidents whose signature matches are kept between passes (at most [`scan::MAX_SCANS`]).
    pub fn scanned(&self) -> usize {
        self.scans.len()
    }

    /// The new revision of this incident's recommendation: the best-fitting playbook on the
    /// incident's most probable root, with the runners-up in its rationale. Nothing when the
    /// evidence and the choice are unchanged, or when no playbook fits (fit below [`MIN_FIT`]).
    pub fn recommend(&mut self, incident: &Incident, now_ms: i64) -> Vec<Recommendation> {
        self.recommend_changed(incident, None, now_ms)
    }

    /// [`Recommender::recommend`] with what changed in the incident since it was last handed out
    /// ([`cairn_types::IncidentChanges`], from the correlator): when only members were appended,
    /// only they are matched against the signatures, so a pass costs what it added, not the
    /// incident's size. `None` matches every member.
    pub fn recommend_changed(&mut self, incident: &Incident, changes: Option<&cairn_types::IncidentChanges>, now_ms: i64) -> Vec<Recommendation> {
        let mut fits = self.scans.of(&self.catalogue.playbooks, incident, changes).triggers(&self.catalogue.playbooks, incident);
        fits.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.def.name.cmp(&b.0.def.name)));
        let fitting = fits.first().filter(|(_, t)| t.score >= MIN_FIT);
        let Some((pb, trigger)) = fitting else {
            // Nothing fits: when a firing alert says this matters — a critical one, or one among
            // other signals — people are asked to look (advisory). A lone warning or a lone
            // anomaly is not enough to ask: that would be a second inbox for every rule.
            let firing = |critical: bool| {
                incident.members.iter().any(|m| {
                    matches!(m, IncidentMember::Alert { status: AlertStatus::Firing, severity, .. } if !critical || *severity == cairn_types::Severity::Critical)
                })
            };
            if !(firing(true) || (firing(false) && incident.members.len() >= 2)) {
                return Vec::new();
            }
            let closest = fits.first().map(|(p, t)| (*p, t));
            let digest = format!("{INVESTIGATE}:{}", evidence_digest(incident, &EvidencePlan::of(incident)));
            let id = recommendation_for(&incident.id);
            let Some(revision) = self.revisions.next_revision(&id, digest) else { return Vec::new() };
            return vec![investigate(incident, &self.catalogue.version, closest, id, revision, now_ms)];
        };
        let runners_up: Vec<String> =
            fits.iter().skip(1).take(2).map(|(p, t)| format!("{} (fit {:.2}: {})", p.def.name, t.score, t.reasons.join(", "))).collect();
        let digest = format!("{}:{}", pb.def.name, evidence_digest(incident, &EvidencePlan::of(incident)));
        let id = recommendation_for(&incident.id);
        let Some(revision) = self.revisions.next_revision(&id, digest) else { return Vec::new() };
        vec![build(pb, &self.catalogue.version, incident, trigger, &runners_up, id, revision, now_ms)]
    }

}

/// The incident's most probable root entity, when the correlator ranked one.
fn root_entity(incident: &Incident) -> Option<&str> {
    incident.probable_causes.first().map(|c| c.entity.as_str()).filter(|e| !e.is_empty())
}

/// The id of an incident's recommendation (one per incident; its revisions change).
pub fn recommendation_for(incident: &cairn_types::IncidentId) -> RecommendationId {
    recommendation_id(&incident.0, "best")
}

fn recommendation_id(incident: &str, playbook: &str) -> RecommendationId {
    let mut h = Sha256::new();
    h.update(incident.as_bytes());
    h.update([0]);
    h.update(playbook.as_bytes());
    RecommendationId(format!("rec-{}", &hex::encode(h.finalize())[..16]))
}

/// What the card's evidence rests on, for deciding when a revision is new: the identities and
/// alert states of the members it lists, and for the rest their kinds with their counts to the
/// nearest power of two. Scores are left out (a stronger anomaly on the same series is not a new
/// revision), and so is a fleet's 301st alert of a kind it has 300 of: a new revision voids
/// approvals, and one that only recounts what the person approved would void them every second of
/// an alert storm. A new kind of signal, a listed alert that resolves, a new root, or a kind whose
/// count doubles is new evidence.
fn evidence_digest(incident: &Incident, plan: &EvidencePlan) -> String {
    let mut items: Vec<String> = plan
        .listed
        .iter()
        .map(|&i| match &incident.members[i] {
            IncidentMember::Alert { fingerprint, status, .. } => format!("alert:{fingerprint}:{}", status.as_str()),
            IncidentMember::Anomaly(a) => format!("series:{}", a.series),
        })
        .collect();
    items.sort();
    items.extend(plan.rest.iter().map(|(what, n)| format!("more:{what}:{}", n.ilog2())));
    items.push(format!("root:{}", root_entity(incident).unwrap_or("")));
    hex::encode(Sha256::digest(items.join("\n").as_bytes()))
}

fn build(
    pb: &Playbook,
    catalogue_version: &str,
    incident: &Incident,
    trigger: &Trigger<'_>,
    runners_up: &[String],
    id: RecommendationId,
    revision: u32,
    now_ms: i64,
) -> Recommendation {
    let labels = trigger.member.labels();
    let pinned = pinned_confidence(trigger.member);
    let environment = labels.get("env").or(labels.get("environment")).unwrap_or("production").to_string();
    // The target is the root entity when the correlator ranked one, else what the trigger names.
    let trigger_on_root = incident
        .members
        .iter()
        .position(|m| std::ptr::eq(m, trigger.member))
        .is_some_and(|i| root_entity(incident).is_none_or(|r| incident.entity_of(i) == r));
    let from_labels = |service: &str| {
        ["instance", "node", "pod", "deployment", "database"].iter().find_map(|k| labels.get(k)).unwrap_or(service).to_string()
    };
    let (service, resource) = match root_entity(incident).and_then(|r| r.split_once(':')) {
        Some(("node", n)) => (n.to_string(), n.to_string()),
        Some(("service", s)) if trigger_on_root => (s.to_string(), from_labels(s)),
        Some(("service", s)) => (s.to_string(), s.to_string()),
        _ => {
            let service = labels.get("service").or(labels.get("job")).unwrap_or("unknown").to_string();
            let resource = from_labels(&service);
            (service, resource)
        }
    };
    let mut fill_labels = labels.clone();
    fill_labels.insert("service", service.clone());
    fill_labels.insert("env", environment.clone());
    if fill_labels.get("instance").is_none() {
        fill_labels.insert("instance", resource.clone());
    }
    if fill_labels.get("node").is_none() {
        fill_labels.insert("node", resource.clone());
    }

    let n = incident.members.len();
    // The fit, halved when every alert has resolved, is what the calibration maps to a probability;
    // with no calibration the playbook's prior stands in for it.
    let mut fit = trigger.score;
    let alerts: Vec<&IncidentMember> = incident.members.iter().filter(|m| matches!(m, IncidentMember::Alert { .. })).collect();
    if !alerts.is_empty() && alerts.iter().all(|m| matches!(m, IncidentMember::Alert { status: AlertStatus::Resolved, .. })) {
        fit *= 0.5;
    }
    let raw = fit.clamp(0.0, 1.0);
    let calibration = &*CALIBRATION;
    let prior = raw * pb.def.base_confidence;
    // A firing critical alert is its author's word that the matter is critical, and the labelled
    // incidents hold no wrong recommendation a critical alert triggered: the map cannot say such
    // a one is worth less than its prior, up to CRITICAL_FLOOR_CAP, so that this floor alone never
    // lifts a recommendation to the default policy's `auto` line, whatever a catalogue's priors.
    let critical = matches!(trigger.member, IncidentMember::Alert { status: AlertStatus::Firing, severity: cairn_types::Severity::Critical, .. });
    let calibrated = if calibration.knots.is_empty() {
        prior
    } else if critical {
        calibration.apply(raw).max(prior.min(CRITICAL_FLOOR_CAP))
    } else {
        calibration.apply(raw)
    };
    let confidence = pinned.unwrap_or(calibrated).clamp(0.0, 0.99);

    let mut parameters: BTreeMap<String, String> =
        pb.def.parameters.iter().map(|(k, v)| (k.clone(), fill(v, &fill_labels))).collect();
    parameters.insert("execution_window".into(), pb.def.execution_window.clone());
    if !pb.def.stages.is_empty() {
        parameters.insert(cairn_types::STAGES_PARAMETER.into(), pb.def.stages.join(","));
    }

    let (evidence, models) = evidence_of(incident);
    let trigger_words = match trigger.member {
        IncidentMember::Alert { alertname, .. } => format!("alert {alertname}"),
        IncidentMember::Anomaly(a) => format!("an anomaly on {}", a.labels),
    };
    let root = match incident.probable_causes.first() {
        Some(c) if !c.entity.is_empty() => format!(" Most probable root: {} ({}).", c.entity, c.factors.join(", ")),
        _ => String::new(),
    };
    let others = if runners_up.is_empty() { String::new() } else { format!(" Runners-up: {}.", runners_up.join("; ")) };
    let rationale = format!(
        "{trigger_words} on {service} in {environment}, with {} signal(s) in incident {} ({}).{root} {} Fit {:.2} ({}).{others} Confidence {confidence:.2}{}.",
        n,
        incident.id,
        incident.grouping_reasons.first().cloned().unwrap_or_default(),
        pb.def.description,
        trigger.score,
        trigger.reasons.join(", "),
        if pinned.is_some() {
            " (pinned by the alert's cairn_confidence annotation)".to_string()
        } else {
            format!(" ({UNCALIBRATED} {raw:.4}, calibrated by {})", calibration.version())
        }
    );
    // Steering that ingest withheld from an unauthorised sender is said on the card.
    let withheld: Vec<&str> = incident
        .members
        .iter()
        .filter_map(|m| match m {
            IncidentMember::Alert { annotations, .. } => annotations.get(cairn_types::WITHHELD_ANNOTATION),
            IncidentMember::Anomaly(_) => None,
        })
        .collect();
    let rationale = match withheld.first() {
        Some(note) => format!("{rationale} Alert annotations {note}."),
        None => rationale,
    };
    Recommendation {
        id,
        revision,
        incident_id: incident.id.clone(),
        playbook: pb.def.name.clone(),
        // The calibration that turned the fit into a probability is part of what produced it.
        playbook_version: format!("{}@{catalogue_version}+{}", pb.def.version, calibration.version()),
        action: pb.action,
        target: Target { service, environment, resource },
        parameters,
        confidence,
        severity: incident.severity,
        blast_radius: pb.def.blast_radius,
        reversibility: pb.def.reversibility,
        rollback_plan: Some(RollbackPlan {
            steps: pb.def.rollback_steps.iter().map(|s| fill(s, &fill_labels)).collect(),
            owner: fill(&pb.def.rollback_owner, &fill_labels),
        }),
        verification: pb
            .def
            .verification
            .iter()
            .map(|c| VerificationCheck {
                name: c.name.clone(),
                query: fill(&c.query, &fill_labels),
                comparator: c.comparator.clone(),
                threshold: c.threshold,
                within_secs: c.within_secs,
            })
            .collect(),
        expected_benefit: fill(&pb.def.expected_benefit, &fill_labels),
        rationale,
        evidence,
        model_version: models,
        created_ms: now_ms,
        requester: CAIRN_SERVICE_SUBJECT.into(),
    }
}

/// At most this many of an incident's members are listed one by one as evidence; the rest are
/// counted by what they are. A card with five hundred lines is not read, and every revision is
/// stored, shown to the policy and audited: its size must not grow with the incident's.
pub const MAX_EVIDENCE_ITEMS: usize = 24;

/// At most this many kinds of the members not listed are named in the count.
const MAX_COUNTED_KINDS: usize = 8;

/// Which members a card lists one by one (members on the most probable root first, at most
/// [`MAX_EVIDENCE_ITEMS`]), and the rest counted by what they are (alert name and state, or the
/// anomalous metric), with the earliest event time among them.
struct EvidencePlan<'a> {
    listed: Vec<usize>,
    rest: BTreeMap<Counted<'a>, usize>,
    rest_from: i64,
}

/// What a member not listed is counted as: borrowed from the incident, so that counting them,
/// which every pass does for every changed incident, allocates nothing per member.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Counted<'a> {
    /// An alert's name and state.
    Alert(&'a str, &'static str),
    /// An anomaly's metric.
    Anomaly(&'a str),
}

impl std::fmt::Display for Counted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counted::Alert(name, state) => write!(f, "{name} {state}"),
            Counted::Anomaly(metric) => write!(f, "anomaly on {metric}"),
        }
    }
}

impl<'a> EvidencePlan<'a> {
    fn of(incident: &'a Incident) -> EvidencePlan<'a> {
        let root = root_entity(incident);
        let n = incident.members.len();
        let on_root: Vec<bool> = (0..n).map(|i| root.is_some_and(|r| incident.entity_of(i) == r)).collect();
        let order = (0..n).filter(|&i| on_root[i]).chain((0..n).filter(|&i| !on_root[i]));
        let mut plan = EvidencePlan { listed: Vec::new(), rest: BTreeMap::new(), rest_from: i64::MAX };
        // Members of one kind come in runs (a storm's alerts share a name): a run is counted
        // apart and added to the map once.
        let mut run: Option<(Counted<'a>, usize)> = None;
        for i in order {
            if plan.listed.len() < MAX_EVIDENCE_ITEMS {
                plan.listed.push(i);
                continue;
            }
            let m = &incident.members[i];
            let what = match m {
                IncidentMember::Alert { alertname, status, .. } => Counted::Alert(alertname, status.as_str()),
                IncidentMember::Anomaly(a) => Counted::Anomaly(a.labels.metric_name().unwrap_or("a series")),
            };
            plan.rest_from = plan.rest_from.min(m.event_ms());
            match &mut run {
                Some((kind, count)) if *kind == what => *count += 1,
                _ => {
                    if let Some((kind, count)) = run.replace((what, 1)) {
                        *plan.rest.entry(kind).or_default() += count;
                    }
                }
            }
        }
        if let Some((kind, count)) = run {
            *plan.rest.entry(kind).or_default() += count;
        }
        plan
    }
}

/// The incident's members as evidence ([`EvidencePlan`]: past [`MAX_EVIDENCE_ITEMS`], one line
/// counting the rest), and the versions of the models behind its anomalies (`none` when there are
/// none).
fn evidence_of(incident: &Incident) -> (Vec<Evidence>, String) {
    let plan = EvidencePlan::of(incident);
    let mut evidence: Vec<Evidence> = plan.listed.iter().map(|&i| evidence_item(&incident.members[i])).collect();
    if !plan.rest.is_empty() {
        let total: usize = plan.rest.values().sum();
        let mut kinds: Vec<(&Counted, &usize)> = plan.rest.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let mut named: Vec<String> = kinds.iter().take(MAX_COUNTED_KINDS).map(|(w, n)| format!("{w} ×{n}")).collect();
        if kinds.len() > MAX_COUNTED_KINDS {
            named.push(format!("{} other kinds", kinds.len() - MAX_COUNTED_KINDS));
        }
        evidence.push(Evidence {
            kind: "more".into(),
            description: format!("{total} more signal(s) in the incident, not listed: {}", named.join(", ")),
            timestamp_ms: plan.rest_from,
        });
    }
    let mut models: Vec<&str> = incident
        .members
        .iter()
        .filter_map(|m| match m {
            IncidentMember::Anomaly(a) => Some(a.model_version.as_str()),
            IncidentMember::Alert { .. } => None,
        })
        .collect();
    models.sort();
    models.dedup();
    let models = if models.is_empty() { "none".to_string() } else { models.join(",") };
    (evidence, models)
}

/// One member as a line of evidence.
fn evidence_item(m: &IncidentMember) -> Evidence {
    match m {
        IncidentMember::Alert { alertname, status, severity, starts_at_ms, summary, labels, .. } => Evidence {
            kind: "alert".into(),
            description: format!(
                "{alertname} {} ({severity}) on {}{}",
                status.as_str(),
                labels.get("instance").or(labels.get("service")).unwrap_or("?"),
                if summary.is_empty() { String::new() } else { format!(": {summary}") }
            ),
            timestamp_ms: *starts_at_ms,
        },
        IncidentMember::Anomaly(a) => Evidence {
            kind: "anomaly".into(),
            description: format!(
                "{} {}: observed {:.4}, expected {:.4} (score {:.2}, confidence {:.2}, {})",
                a.labels,
                if a.anomaly_kind.is_empty() { "anomaly" } else { a.anomaly_kind.as_str() },
                a.observed,
                a.expected,
                a.score,
                a.confidence,
                a.model_version
            ),
            timestamp_ms: a.timestamp_ms,
        },
    }
}

/// What a person is asked to look into when no playbook fits an incident that a firing alert
/// carries: advisory (the policy never lets it run), with the evidence, the closest playbook, and
/// the telemetry whose absence left Cairn unsure.
fn investigate(
    incident: &Incident,
    catalogue_version: &str,
    closest: Option<(&Playbook, &Trigger<'_>)>,
    id: RecommendationId,
    revision: u32,
    now_ms: i64,
) -> Recommendation {
    let (evidence, models) = evidence_of(incident);
    let first_alert = incident.members.iter().find_map(|m| match m {
        IncidentMember::Alert { labels, .. } => Some(labels),
        IncidentMember::Anomaly(_) => None,
    });
    let label = |k: &str| first_alert.and_then(|l| l.get(k)).map(str::to_string);
    let environment = label("env").or_else(|| label("environment")).unwrap_or_else(|| "production".into());
    let (service, resource) = match root_entity(incident).and_then(|r| r.split_once(':')) {
        Some(("service", s)) => (s.to_string(), s.to_string()),
        Some(("node", n)) => (n.to_string(), n.to_string()),
        _ => {
            let service = label("service").or_else(|| label("job")).unwrap_or_else(|| "unknown".into());
            (service.clone(), label("instance").unwrap_or(service))
        }
    };
    let mut missing: Vec<String> = Vec::new();
    if !incident.members.iter().any(|m| matches!(m, IncidentMember::Anomaly(_))) {
        missing.push(format!("no metric series of {service} was anomalous: is its telemetry (request rate, errors, latency, saturation) remote-written to Cairn?"));
    }
    if !matches!(root_entity(incident).and_then(|r| r.split_once(':')), Some(("service" | "node", _))) {
        missing.push("the signals name no service or node Cairn can place: add a `service` label to the alert rules, or declare the service in `[[topology]]`".into());
    }
    let changed = incident.members.iter().any(|m| cairn_types::signal_kind(m.name()) == cairn_types::SignalKind::Change);
    if !changed {
        missing.push("no change event in the incident: if something was deployed or reconfigured, send it to `POST /api/v1/changes`".into());
    }
    let closest = match closest {
        Some((pb, t)) => format!(" The closest playbook, {} (fit {:.2}: {}), is below the {MIN_FIT:.2} a proposal needs.", pb.def.name, t.score, t.reasons.join(", ")),
        None => " No playbook matches any of its signals.".into(),
    };
    let rationale = format!(
        "No playbook fits incident {} ({} signal(s); {}).{closest} Look into it before acting; what would have made Cairn surer: {}",
        incident.id,
        incident.members.len(),
        incident.grouping_reasons.first().cloned().unwrap_or_default(),
        if missing.is_empty() { "nothing obvious is missing".to_string() } else { missing.join("; ") },
    );
    Recommendation {
        id,
        revision,
        incident_id: incident.id.clone(),
        playbook: INVESTIGATE.into(),
        playbook_version: format!("{INVESTIGATE}@{catalogue_version}"),
        action: ActionClass::Investigate,
        target: Target { service, environment, resource },
        parameters: BTreeMap::new(),
        // It proposes no action, so there is no probability of an action being right.
        confidence: 0.0,
        severity: incident.severity,
        blast_radius: cairn_types::BlastRadius::Instance,
        reversibility: cairn_types::Reversibility::Reversible,
        rollback_plan: None,
        verification: Vec::new(),
        expected_benefit: "people find what the playbooks do not cover".into(),
        rationale,
        evidence,
        model_version: models,
        created_ms: now_ms,
        requester: CAIRN_SERVICE_SUBJECT.into(),
    }
}

/// The playbook name of what Cairn proposes when none fits.
pub const INVESTIGATE: &str = "investigate";

/// The `cairn_confidence` annotation of the triggering alert, if it holds a number in [0, 1].
fn pinned_confidence(member: &IncidentMember) -> Option<f64> {
    let IncidentMember::Alert { annotations, .. } = member else { return None };
    annotations.get(CONFIDENCE_ANNOTATION)?.trim().parse::<f64>().ok().filter(|c| (0.0..=1.0).contains(c))
}

#[cfg(test)]
mod tests;
