//! Correlation: alerts and anomalies that look like one problem become one [`Incident`], with the
//! reasons they were grouped and a ranked list of probable causes.
//!
//! Every signal is first resolved to the entity it is about — a service, a node, a fleet of
//! per-node agents, or something else ([`topology`]). It joins an open incident when, in *event
//! time* (an alert's start, an anomaly's sample time), it falls within `window_ms` of the
//! incident's span and its entity is linked to one of the incident's:
//!
//! - the same entity (strongest);
//! - a service that calls it or that it calls, from `[[topology]]` or the service graph in the
//!   metrics;
//! - the node its pod runs on, or a pod on the node it is about;
//! - for a per-node agent (node-exporter, a DaemonSet), a node in the incident (weakest);
//! - a series of the entity that moved together with a series of one of the incident's entities
//!   ([`comove`]: Pearson's r over the values recorded since each was anomalous), found by
//!   [`Correlator::co_move`] once enough points are in (`comove`, off unless configured).
//!
//! A link to another entity holds only when both sides are in trouble. The linked entity carries
//! (two signals or an alert); a lone anomaly on the joining side links to nothing (except to a
//! node established as a problem), and opens an incident of its own that joins where it belongs
//! once its entity has trouble of its own. An entity is put forward as the *cause* of others'
//! trouble (a callee of a caller, a node of its pods) only when established: three signals within
//! `link_window_ms` of one another, as a failure shows, or a firing critical alert. A dependency
//! joins only trouble that began at most `link_window_ms` before its own: a cause precedes its
//! effects. Across a call, trouble travels as the caller's errors and latency: a caller joins its
//! callee's incident only with errors or latency (two signals or an alert, not a blip) that began
//! no earlier than the callee's trouble (less two scrape intervals, as the samples show them:
//! `step.rs`), and a callee joins its caller's only when the caller shows
//! them; a caller's memory or request rate is its own business. Between a node and its pods,
//! trouble explains trouble of the same resource only (CPU, memory, disk, network), or of none in
//! particular (down, not ready, errors, latency). Effects seen before their cause (a caller's
//! incident, a per-node agent's) are gathered into the cause's incident once it is established.
//! What people decide about grouping (merges and splits, [`Correlator::merge_by_person`],
//! [`Correlator::split_by_person`]) is applied here and remembered as links the rules follow.
//!
//! The strongest link wins, then the nearest in time; incidents merge only as said above. An alert
//! is one member across its life (same fingerprint: firing, then resolved); an anomalous series is
//! one member however many times it fires. Probable causes are the incident's entities ranked by
//! stated factors ([`rank`]). The work per signal does not depend on how many incidents are open:
//! candidates are found through an index by entity.
//!
//! Pure: time is passed in, memory is bounded (open incidents, members per incident, topology
//! entries, series recorded for co-movement). It never recommends or routes.

#![forbid(unsafe_code)]

mod comove;
pub mod rank;
mod regroup;
mod step;
pub mod topology;

pub use comove::RING as COMOVE_RING;
pub use regroup::{MAX_KEPT_APART, RegroupRefused};
#[cfg(test)]
use regroup::identity_of as regroup_identity;

use cairn_types::{AlertEvent, AlertStatus, Anomaly, Incident, IncidentId, IncidentMember, Labels, SampleBatch, Severity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
pub use topology::{Resolved, ServiceDef, Topology};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelatorConfig {
    /// A signal joins an incident only within this much event time of the incident's span; an
    /// incident unchanged this long (server time) is closed.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub window_ms: i64,
    /// Open incidents kept; the least recently changed is closed beyond this.
    pub max_open_incidents: usize,
    /// Members per incident; further members are counted, not stored.
    pub max_members: usize,
    /// Pods, services, nodes and agents the topology keeps.
    pub max_topology_entries: usize,
    /// Probable causes kept per incident.
    pub max_causes: usize,
    /// A signal joins through a link to *another* entity (a call, a pod's node, a node agent)
    /// only within this much event time of that entity's signals: failures cascade in seconds to
    /// minutes, so a link is weak evidence beyond that.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub link_window_ms: i64,
    /// How long a firing alert, a level shift, a drift or a silence is taken to hold after it was
    /// seen, for joining signals about the same entity: slow faults (a leak, a filling disk)
    /// raise their alerts long after the first anomaly.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub persist_ms: i64,
    /// Learn who calls whom from the service graph in the metrics (`client`/`server` labels).
    /// Off, the correlator knows only the `[[topology]]` it is given (and pods and nodes).
    pub learn_service_graph: bool,
    /// Join incidents whose anomalous series move together ([`comove`]).
    pub comove: bool,
    /// Co-movement: the least |Pearson r| that links two series.
    pub comove_min_r: f64,
    /// Co-movement: the least common points (timestamps bucketed to the scrape step) r is taken on.
    pub comove_min_points: usize,
    /// Co-movement: series recorded at most (the oldest recording is evicted).
    pub comove_max_series: usize,
    /// Co-movement: how often (event time) recorded series are checked.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub comove_every_ms: i64,
    /// Co-movement: the most pairs correlated per check (the rest wait for the next).
    pub comove_max_pairs: usize,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        CorrelatorConfig {
            window_ms: 15 * 60 * 1000,
            max_open_incidents: 10_000,
            max_members: 500,
            max_topology_entries: 200_000,
            max_causes: 5,
            link_window_ms: 5 * 60 * 1000,
            persist_ms: 60 * 60 * 1000,
            learn_service_graph: true,
            // Off: on incidents-dev it merged nothing, with topology or without (see comove.rs).
            comove: false,
            comove_min_r: 0.95,
            comove_min_points: 24,
            comove_max_series: 1024,
            comove_every_ms: 60_000,
            comove_max_pairs: 10_000,
        }
    }
}

#[derive(Debug)]
struct Open {
    incident: Incident,
    /// Member identity (`alert:<fingerprint>` or `series:<id>`) → index in `members`.
    index: HashMap<String, usize>,
    /// The node each member's pod runs on, index for index with `members`.
    nodes: Vec<Option<String>>,
    /// Members per entity, and per node their pods run on, with their spans in event time.
    entities: HashMap<String, Span>,
    via: HashMap<String, Span>,
    dropped_members: u64,
    /// How many leading members `incident.common_labels` is the intersection of: members are only
    /// appended (a split rebuilds the incident), so each settle folds in the new ones only.
    common_upto: usize,
    /// The incident as it was last handed out to be stored ([`Correlator::take_changes`]), and
    /// what changed in place since; none before the first time (or after a rebuild).
    handed_out: Option<HandedOut>,
}

/// What [`Correlator::take_changes`] remembers of the incident it handed out: its version, how many
/// members and grouping reasons it had, and the members changed in place since.
#[derive(Debug)]
struct HandedOut {
    version: u32,
    members: usize,
    reasons: usize,
    updated: Vec<usize>,
}

impl Open {
    /// An incident with no members yet.
    fn empty(id: IncidentId, opened_ms: i64, now_ms: i64) -> Open {
        Open {
            incident: Incident {
                id,
                opened_ms,
                updated_ms: now_ms,
                members: Vec::new(),
                affected_services: Vec::new(),
                common_labels: Labels::new(),
                grouping_reasons: Vec::new(),
                probable_causes: Vec::new(),
                severity: Severity::Low,
                version: 0,
                member_entities: Vec::new(),
            },
            index: HashMap::new(),
            nodes: Vec::new(),
            entities: HashMap::new(),
            via: HashMap::new(),
            dropped_members: 0,
            common_upto: 0,
            handed_out: None,
        }
    }

    /// Member `i` changed in place: the next [`Correlator::take_changes`] names it. Past one entry
    /// a member, what was handed out is forgotten (and the store compares every row once).
    fn updated(&mut self, i: usize) {
        let Some(h) = &mut self.handed_out else { return };
        if h.updated.last() != Some(&i) {
            h.updated.push(i);
        }
        if h.updated.len() > self.incident.members.len() {
            self.handed_out = None;
        }
    }

    /// How many of its entities have a member on a pod that runs on `node` (bounded by the
    /// members, at most `max_members`). The incidents of pods on a node are merged into the node's
    /// only when most of their entities (more than half) do: an incident about other things that took
    /// in one such pod (a database outage whose callers include a pod the node took down) is
    /// another problem, and is not swallowed whole.
    fn entities_on(&self, node: &str) -> usize {
        let on: std::collections::HashSet<&String> =
            self.nodes.iter().zip(&self.incident.member_entities).filter(|(n, _)| n.as_deref() == Some(node)).map(|(_, e)| e).collect();
        on.len()
    }
}

/// How many members an entity has in an incident, and when they happened (event time). An
/// anomaly that fires again extends its entity's span without adding a member.
#[derive(Clone, Copy, Debug)]
struct Span {
    count: u32,
    /// Alerts among them: a rule someone wrote, stronger evidence than one anomaly.
    alerts: u32,
    first_ms: i64,
    last_ms: i64,
    /// When the current run of trouble began: the first time after the last gap longer than
    /// [`rank::STALE_LEAD_MS`], so that a stale blip long before is not taken for the onset.
    onset_ms: i64,
    /// The resources its members are about ([`resources_of`]), with [`ANY_RESOURCE`] when one of
    /// them goes with anything.
    resources: u8,
    /// Until when a state its members report may still hold: a firing alert, or a level shift,
    /// drift or silence (not a spike), for `persist_ms` after it. Same-entity joins see it.
    holds_until_ms: i64,
    /// Members that are errors or latency ([`SignalKind::Symptom`]): what travels across a call;
    /// and how many of them are alerts.
    symptoms: u32,
    symptom_alerts: u32,
    /// Members about work waiting ([`is_backlog`]).
    backlog: u32,
    /// The latest signal times (event time), ascending; `i64::MIN` where fewer.
    recent: [i64; 4],
    /// Whether [`rank::NODE_TROUBLE`] of its signals ever came within `link_window_ms` of one
    /// another, or a firing critical alert is among them: see [`Span::established`].
    burst: bool,
}

impl Span {
    fn new(t: i64) -> Span {
        Span {
            count: 0,
            alerts: 0,
            first_ms: t,
            last_ms: t,
            onset_ms: t,
            resources: 0,
            holds_until_ms: t,
            symptoms: 0,
            backlog: 0,
            symptom_alerts: 0,
            recent: [i64::MIN; 4],
            burst: false,
        }
    }

    fn extend(&mut self, t: i64, holds_until: i64) {
        // A new run after a long gap, or an earlier signal of the current run arriving late.
        let new_run = t > self.last_ms + rank::STALE_LEAD_MS;
        let earlier_in_run = t < self.onset_ms && self.onset_ms - t <= rank::STALE_LEAD_MS;
        if new_run || earlier_in_run {
            self.onset_ms = t;
        }
        self.first_ms = self.first_ms.min(t);
        self.last_ms = self.last_ms.max(t);
        self.holds_until_ms = self.holds_until_ms.max(holds_until).max(t);
    }

    /// Counts one more signal at `t` towards [`Span::established`]. The burst is looked for among
    /// the kept signals *and* the new one before the earliest is dropped: a failure's signals
    /// can arrive out of order (an anomaly confirmed only once its series stopped arrives after
    /// the alerts that fired a quarter hour later), and the late early one must still count.
    fn note(&mut self, t: i64, window_ms: i64) {
        let mut all = [self.recent[0], self.recent[1], self.recent[2], self.recent[3], t];
        all.sort_unstable();
        self.burst |= burst_in(&all, window_ms);
        self.recent = [all[1], all[2], all[3], all[4]];
    }

    fn absorb(&mut self, o: &Span, window_ms: i64) {
        let mut all = [self.recent, o.recent].concat();
        all.sort_unstable();
        self.burst |= o.burst || burst_in(&all, window_ms);
        self.recent = [all[4], all[5], all[6], all[7]];
        self.count += o.count;
        self.alerts += o.alerts;
        self.symptoms += o.symptoms;
        self.symptom_alerts += o.symptom_alerts;
        self.backlog += o.backlog;
        self.resources |= o.resources;
        // The later run's onset, unless the two runs touch.
        let (early, late) = if self.onset_ms <= o.onset_ms { (*self, *o) } else { (*o, *self) };
        self.onset_ms = if late.first_ms.min(late.onset_ms) > early.last_ms + rank::STALE_LEAD_MS { late.onset_ms } else { early.onset_ms };
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
        self.holds_until_ms = self.holds_until_ms.max(o.holds_until_ms);
    }

    /// Whether the entity is in trouble enough to pass it on through a link: two signals, or an
    /// alert. One anomaly alone (a blip) links nothing to anything else.
    fn carries(&self) -> bool {
        self.count >= 2 || self.alerts >= 1
    }

    /// Whether the entity is established as a problem, enough to be put forward as the cause of
    /// others' trouble: [`rank::NODE_TROUBLE`] signals within `link_window_ms` of one another, or a
    /// firing critical alert (its author's word that the matter is critical). A failure shows in
    /// several places at once; signals strewn over a quarter of an hour are more likely unrelated
    /// blips.
    fn established(&self) -> bool {
        self.burst
    }

    /// Whether its errors and latency are trouble, not a blip: two such signals or an alert, as
    /// [`Span::carries`] asks of any.
    fn shows_symptoms(&self) -> bool {
        self.symptoms >= 2 || self.symptom_alerts >= 1
    }

    /// How far apart two spans are in time (0 when they overlap).
    fn gap(&self, o: &Span) -> i64 {
        (self.first_ms - o.last_ms).max(o.first_ms - self.last_ms).max(0)
    }

    /// How far `t` is outside the time the members' state may still hold.
    fn held_distance(&self, t: i64) -> i64 {
        if t < self.first_ms { self.first_ms - t } else { (t - self.holds_until_ms).max(0) }
    }
}

const CPU: u8 = 1;
const MEMORY: u8 = 2;
const DISK: u8 = 4;
const NETWORK: u8 = 8;
/// In a span's resources: some member is about no resource in particular.
const ANY_RESOURCE: u8 = 0x80;

/// The resources a signal is about, by its name (an alert's, a metric's): CPU, memory, disk or the
/// network. 0 for availability (down, not ready) and symptoms (errors, latency), which go with
/// anything. Between a node and the pods on it, trouble explains trouble of the same resource only:
/// a node's filling disk does not explain a pod's growing memory.
fn resources_of(name: &str) -> u8 {
    let n = name.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    let mut r = 0;
    if has(&["cpu", "throttl", "load1", "load5", "load15", "pidpressure"]) {
        r |= CPU;
    }
    if has(&["memory", "oom", "_rss", "resident", "working_set", "heap"]) {
        r |= MEMORY;
    }
    if has(&["filesystem", "disk", "inode", "volume"]) {
        r |= DISK;
    }
    if has(&["network", "receive_bytes", "transmit", "packet", "networkunavailable"]) {
        r |= NETWORK;
    }
    r
}

/// [`resources_of`] a member: its name, and the `condition` (`DiskPressure`) or `resource`
/// (`memory`) label that kube-state-metrics series carry.
fn member_resources(m: &IncidentMember) -> u8 {
    let labels = m.labels();
    let label = |k: &str| labels.get(k).map_or(0, resources_of);
    resources_of(m.name()) | label("condition") | label("resource")
}

/// Whether two spans' trouble can be one problem by their resources.
fn spans_share(a: &Span, b: &Span) -> bool {
    (a.resources | b.resources) & ANY_RESOURCE != 0 || a.resources & b.resources != 0
}

/// Whether [`rank::NODE_TROUBLE`] of `times` (ascending, `i64::MIN` for none) fall within
/// `window_ms` of one another.
fn burst_in(times: &[i64], window_ms: i64) -> bool {
    let n = rank::NODE_TROUBLE;
    times.windows(n).any(|w| w[0] != i64::MIN && w[n - 1] - w[0] <= window_ms)
}

/// Whether two spans' trouble is of one kind, availability (down, unready, unavailable) counting
/// as a kind of its own rather than going with anything as in [`spans_share`]. A per-node agent's
/// trouble says nothing of which node it is on, so only its kind can tell the node that explains
/// it from another node in trouble at the same time.
fn spans_alike(a: &Span, b: &Span) -> bool {
    a.resources & b.resources != 0
}

/// Whether a signal is about work waiting: a queue's depth, a backlog, a consumer group's lag. A
/// backlog grows on a queue when what consumes it falls behind: there it is the consumer's
/// trouble showing on the service it calls.
fn is_backlog(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["queue", "backlog", "consumer"].iter().any(|w| n.contains(w))
}

/// A signal on its own, as the span it would start: what [`Correlator::admits`] weighs.
fn signal_span(m: &IncidentMember, resources: u8, persist_ms: i64) -> Span {
    let mut s = Span::new(m.event_ms());
    s.extend(m.event_ms(), holds_until(m, persist_ms));
    s.count = 1;
    s.alerts = u32::from(matches!(m, IncidentMember::Alert { .. }));
    s.symptoms = u32::from(rank::classify(m.name()) == rank::SignalKind::Symptom);
    s.symptom_alerts = s.symptoms.min(s.alerts);
    s.backlog = u32::from(is_backlog(m.name()));
    s.burst = matches!(m, IncidentMember::Alert { status: AlertStatus::Firing, severity: Severity::Critical, .. });
    s.resources = if resources == 0 { ANY_RESOURCE } else { resources };
    s
}

/// Until when what a member reports may still hold (see [`Span::holds_until_ms`]).
fn holds_until(m: &IncidentMember, persist_ms: i64) -> i64 {
    let t = m.event_ms();
    match m {
        IncidentMember::Alert { status: AlertStatus::Firing, .. } => t.saturating_add(persist_ms),
        IncidentMember::Alert { .. } => t,
        IncidentMember::Anomaly(a) if a.anomaly_kind.is_empty() || a.anomaly_kind == "spike" => t,
        IncidentMember::Anomaly(_) => t.saturating_add(persist_ms),
    }
}

/// How a signal is linked to an incident.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Link {
    Agent(String),
    /// The signal is about a node that runs a pod of the incident.
    Hosts,
    Placement(String),
    Calls(String),
    /// A person merged incidents about these two entities before.
    Merged(String),
    /// A series of the signal's entity moved together with one of `other`'s ([`comove`]);
    /// `words` says which, and how closely.
    Moved { other: String, words: String },
    Same,
}

impl Link {
    /// How much a link says: the same entity most; a call and a placement alike (the nearer in
    /// time decides between them); a node agent least.
    fn strength(&self) -> u8 {
        match self {
            Link::Same => 2,
            Link::Calls(_) | Link::Placement(_) | Link::Hosts | Link::Merged(_) | Link::Moved { .. } => 1,
            Link::Agent(_) => 0,
        }
    }

    fn words(&self, entity: &str) -> String {
        match self {
            Link::Same => format!("same entity {entity}"),
            Link::Calls(other) => format!("{entity} and {other} call one another"),
            Link::Merged(other) => {
                format!("{entity} and {other} were merged into one incident by a person before")
            }
            Link::Moved { other, words } => format!("{entity} and {other}: {words}"),
            Link::Placement(other) => {
                format!("{entity} and {other}: a pod and the node it runs on")
            }
            Link::Hosts => format!("{entity} runs a pod of the incident"),
            Link::Agent(node) => format!("{entity} runs an agent on {node}"),
        }
    }
}

/// The correlator's state: open incidents, indexed by the entities they hold.
#[derive(Debug)]
pub struct Correlator {
    cfg: CorrelatorConfig,
    topology: Topology,
    open: HashMap<IncidentId, Open>,
    /// Entity → open incidents holding a member about it.
    by_entity: HashMap<String, Vec<IncidentId>>,
    /// Node entity → open incidents holding a member whose pod runs on it.
    by_via: HashMap<String, Vec<IncidentId>>,
    /// Open incidents holding a node entity.
    with_nodes: HashSet<IncidentId>,
    /// Member identity → the open incident holding it.
    member_of: HashMap<String, IncidentId>,
    /// Open incidents by when they last changed, oldest first: closing the least recently changed
    /// and the idle ones reads the front instead of every open incident.
    by_age: BTreeSet<(i64, IncidentId)>,
    /// Incidents merged away, for [`Correlator::take_merged`].
    merged: Vec<Incident>,
    /// The scrape interval the samples show, for the onset slack.
    step: step::ScrapeStep,
    /// Entity pairs persons' splits separated: not joined through a link again.
    kept_apart: regroup::Pairs,
    /// Entity pairs persons' merges put together: linked from then on.
    kept_together: regroup::Pairs,
    /// Open incidents a person split from one another: the rules do not merge them again, even
    /// over an entity both hold. Forgotten when either closes.
    split_apart: regroup::Pairs,
    /// Open incidents changed since the last [`Correlator::settle`] (at most every open one).
    dirty: BTreeSet<IncidentId>,
    /// Recent values of recently anomalous series ([`comove`]).
    comove: comove::Recorder,
}

fn window_words(ms: i64) -> String {
    if ms % 60_000 == 0 { format!("{}m", ms / 60_000) } else { format!("{}s", ms / 1000) }
}

impl Correlator {
    pub fn new(cfg: CorrelatorConfig) -> Correlator {
        Correlator::with_topology(cfg, &[])
    }

    pub fn with_topology(cfg: CorrelatorConfig, services: &[ServiceDef]) -> Correlator {
        let topology = Topology::new(services, cfg.max_topology_entries);
        let comove = comove::Recorder::new(cfg.comove_max_series);
        Correlator {
            cfg,
            topology,
            open: HashMap::new(),
            by_entity: HashMap::new(),
            by_via: HashMap::new(),
            with_nodes: HashSet::new(),
            member_of: HashMap::new(),
            by_age: BTreeSet::new(),
            merged: Vec::new(),
            step: step::ScrapeStep::default(),
            kept_apart: regroup::Pairs::default(),
            kept_together: regroup::Pairs::default(),
            split_apart: regroup::Pairs::default(),
            dirty: BTreeSet::new(),
            comove,
        }
    }

    pub fn get(&self, id: &IncidentId) -> Option<&Incident> {
        self.open.get(id).map(|o| &o.incident)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Learns the topology the series of a batch show (pods, nodes, the service graph unless
    /// `learn_service_graph` is off), and records the values of the series recorded for
    /// co-movement ([`Correlator::co_move`] checks them).
    pub fn learn(&mut self, batch: &SampleBatch) {
        let graph = self.cfg.learn_service_graph;
        for s in batch.iter() {
            self.topology.learn(|n| if !graph && (n == "client" || n == "server") { None } else { s.label(n) });
        }
        self.step.observe(batch);
        if self.cfg.comove {
            self.comove.record(batch);
        }
    }

    /// Adds or updates an alert member; returns the incident, summarised and ranked, if it
    /// changed. A batch of signals is cheaper through [`Correlator::note_alert`] and one
    /// [`Correlator::settle`].
    pub fn observe_alert(&mut self, a: &AlertEvent, now_ms: i64) -> Option<Incident> {
        let id = self.note_alert(a.clone(), now_ms)?;
        self.settle_one(&id)
    }

    /// Adds an anomaly member (one per series); returns the incident if it changed.
    pub fn observe_anomaly(&mut self, a: &Anomaly, now_ms: i64) -> Option<Incident> {
        let id = self.note_anomaly(a, now_ms)?;
        self.settle_one(&id)
    }

    /// Adds or updates an alert member and returns the id of the incident it changed, without
    /// summarising or ranking it: that is done once per incident by [`Correlator::settle`],
    /// however many signals of a batch joined it, so the work per signal does not grow with the
    /// incident. The alert's labels move into the member: the caller has stored the alert.
    pub fn note_alert(&mut self, a: AlertEvent, now_ms: i64) -> Option<IncidentId> {
        let alertname = a.alertname().to_string();
        let what = format!("alert {alertname}");
        let identity = format!("alert:{}", a.fingerprint);
        let severity = a.severity();
        let summary = a.annotations.get("summary").or_else(|| a.annotations.get("description")).unwrap_or("").to_string();
        let member = IncidentMember::Alert {
            fingerprint: a.fingerprint,
            alertname,
            status: a.status,
            labels: a.labels,
            annotations: a.annotations,
            severity,
            starts_at_ms: a.starts_at_ms,
            summary,
        };
        self.add(identity, member, what, now_ms)
    }

    /// What changed in incident `id` since it was last handed out to be stored (call it before
    /// reading the incident with [`Correlator::get`] to store it): the members appended or changed
    /// in place, and the grouping reasons appended. None the first time, after a person's split
    /// rebuilt it, when its version did not move since (a store cannot tell that write from the
    /// last), or when it is not open: then a store compares every row.
    pub fn take_changes(&mut self, id: &IncidentId) -> Option<cairn_types::IncidentChanges> {
        let open = self.open.get_mut(id)?;
        let inc = &open.incident;
        let now = HandedOut { version: inc.version, members: inc.members.len(), reasons: inc.grouping_reasons.len(), updated: Vec::new() };
        let last = open.handed_out.replace(now)?;
        if last.version == inc.version || last.members > inc.members.len() || last.reasons > inc.grouping_reasons.len() {
            return None;
        }
        let mut members: Vec<usize> = last.updated.into_iter().filter(|&i| i < last.members).collect();
        members.sort_unstable();
        members.dedup();
        members.extend(last.members..inc.members.len());
        Some(cairn_types::IncidentChanges { since_version: last.version, members, reasons_from: last.reasons })
    }

    /// [`Correlator::note_alert`] for an anomaly.
    pub fn note_anomaly(&mut self, a: &Anomaly, now_ms: i64) -> Option<IncidentId> {
        self.start_recording(a);
        let what = format!("anomaly on {}", a.labels);
        self.add(format!("series:{}", a.series), IncidentMember::Anomaly(a.clone()), what, now_ms)
    }

    /// The incidents changed since the last settle that are still open, each summarised and
    /// ranked once, in id order; read them with [`Correlator::get`]. Nothing is copied: what a
    /// batch costs does not grow with the size of the incidents it touched by a clone of each.
    pub fn settle(&mut self) -> Vec<IncidentId> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter(|id| self.refresh(id).is_some()).collect()
    }

    fn settle_one(&mut self, id: &IncidentId) -> Option<Incident> {
        self.dirty.remove(id);
        self.snapshot(id)
    }

    /// Whether trouble `j` about `entity` may join trouble `linked` about another entity through
    /// `link` (not [`Link::Same`]), and if so how far apart they are in event time. The rules:
    ///
    /// - the linked entity is in trouble ([`Span::carries`]);
    /// - so is the joining one: a lone anomaly links to nothing, except to a node established as a
    ///   problem (its pods and agents go with it); its entity's incident is merged once it has
    ///   trouble of its own ([`Correlator::join_pending`]);
    /// - a dependency (a callee, a node its pods run on) is put forward as the cause of others'
    ///   trouble only when established as a problem ([`Span::established`]), and joins only
    ///   trouble that began at most `link_window_ms` before its own: a cause precedes its effects;
    ///   likewise a caller, a pod or an agent joins only a callee or node so established;
    /// - between a node and its pods, trouble is about the same resource;
    /// - across a call, trouble travels as the caller's errors and latency: a caller joins its
    ///   callee's trouble only with errors or latency of its own (two signals or an alert) that
    ///   began no earlier, and a callee joins its caller's only when the caller shows them;
    ///   against the call, a callee's backlog ([`is_backlog`]) that began no earlier joins its
    ///   caller's established trouble (consumers falling behind grow their queue);
    /// - within `link_window_ms` of each other.
    fn admits(&self, entity: &str, j: &Span, linked: &Span, link: &Link) -> Option<i64> {
        if !linked.carries() {
            return None;
        }
        let to_node = matches!(link, Link::Placement(_) | Link::Agent(_));
        if !(j.carries() || to_node && linked.established()) {
            return None;
        }
        // A cause precedes its effects: trouble that began long before the dependency's own was
        // not caused by it.
        let caused = |j: &Span| linked.onset_ms >= j.onset_ms - self.cfg.link_window_ms;
        match link {
            // A node's trouble explains its pods' only when established, and of the same resource.
            Link::Hosts if !(j.established() && caused(j) && spans_share(linked, j)) => {
                return None;
            }
            // A node explains its pods' and agents' trouble only when established, and a pod's
            // only of the same resource.
            Link::Placement(_) if !(linked.established() && spans_share(linked, j)) => return None,
            // A node explains its agents' trouble only when established, and of a kind it can
            // explain: an agent that is down or unavailable is put down to a node that is down or
            // unready, not to one whose disk fills (`spans_alike`).
            Link::Agent(_) if !(linked.established() && spans_alike(linked, j)) => return None,
            Link::Calls(n) => {
                // An effect does not begin before its cause (within two scrape intervals).
                let as_caller = self.topology.calls(entity, n)
                    && linked.established()
                    && j.shows_symptoms()
                    && j.onset_ms >= linked.onset_ms - self.step.onset_slack_ms();
                let as_callee = self.topology.calls(n, entity) && linked.shows_symptoms() && j.established() && caused(j);
                // Back-pressure: a caller's established trouble shows on its callee as a backlog
                // that began no earlier (consumers falling behind grow their queue).
                let pressed = self.topology.calls(n, entity)
                    && linked.established()
                    && j.backlog > 0
                    && j.carries()
                    && j.onset_ms >= linked.onset_ms - self.step.onset_slack_ms();
                if !as_caller && !as_callee && !pressed {
                    return None;
                }
            }
            _ => {}
        }
        let d = linked.gap(j);
        (d <= self.cfg.link_window_ms).then_some(d)
    }

    /// The best incident for trouble `j` about `entity` (whose pods run on `nodes`), and how it is
    /// linked: the strongest link within its window, then the nearest in time. `pending` is an
    /// incident holding only that trouble, looking for where it belongs: only links count for it,
    /// and never itself.
    fn best_incident(&self, entity: &str, nodes: &[&String], j: &Span, pending: Option<&IncidentId>) -> Option<(IncidentId, Link)> {
        let mut cands: Vec<(IncidentId, Link)> = Vec::new();
        let mut push = |ids: Option<&Vec<IncidentId>>, link: Link| {
            for id in ids.into_iter().flatten() {
                cands.push((id.clone(), link.clone()));
            }
        };
        if pending.is_none() {
            push(self.by_entity.get(entity), Link::Same);
        }
        for n in self.topology.neighbours(entity) {
            push(self.by_entity.get(&n), Link::Calls(n.clone()));
        }
        for n in self.kept_together.partners(entity) {
            push(self.by_entity.get(n), Link::Merged(n.clone()));
        }
        for node in nodes {
            push(self.by_entity.get(*node), Link::Placement((*node).clone()));
        }
        if entity.starts_with("node:") {
            push(self.by_via.get(entity), Link::Hosts);
        }
        if self.topology.is_agent(entity) {
            cands.extend(self.with_nodes.iter().map(|id| (id.clone(), Link::Agent(String::new()))));
        }
        let t = j.last_ms;
        let mut best: Option<(IncidentId, Link, i64)> = None;
        for (id, link) in cands {
            if pending == Some(&id) {
                continue;
            }
            let Some(o) = self.open.get(&id) else {
                continue;
            };
            // A person split these two apart: the rules do not join them again.
            if let Link::Calls(n) | Link::Placement(n) | Link::Merged(n) | Link::Moved { other: n, .. } = &link
                && self.kept_apart.holds(entity, n)
            {
                continue;
            }
            // The span of what the trouble is linked to, in this incident.
            let (span, link) = match &link {
                Link::Same => (o.entities.get(entity).copied(), link),
                Link::Calls(n) | Link::Merged(n) | Link::Moved { other: n, .. } => (o.entities.get(n).copied(), link),
                Link::Placement(n) => (o.entities.get(n).copied(), link),
                Link::Hosts => (o.via.get(entity).copied(), link),
                Link::Agent(_) => {
                    let nodes = o.entities.iter().filter(|(e, _)| e.starts_with("node:"));
                    match nodes.min_by_key(|(e, s)| (s.gap(j), e.as_str())) {
                        Some((e, s)) => (Some(*s), Link::Agent(e.clone())),
                        None => (None, link),
                    }
                }
            };
            let Some(span) = span else { continue };
            let d = if link == Link::Same {
                let d = span.held_distance(t);
                if d > self.cfg.window_ms {
                    continue;
                }
                d
            } else {
                match self.admits(entity, j, &span, &link) {
                    Some(d) => d,
                    None => continue,
                }
            };
            let better = match &best {
                None => true,
                Some((bid, blink, bd)) => (link.strength(), -d, &o.incident.id) > (blink.strength(), -*bd, bid),
            };
            if better {
                best = Some((id, link, d));
            }
        }
        best.map(|(id, link, _)| (id, link))
    }

    fn add(&mut self, identity: String, member: IncidentMember, what: String, now_ms: i64) -> Option<IncidentId> {
        let r = self.topology.resolve(member.labels());
        let t = member.event_ms();
        if let Some(id) = self.member_of.get(&identity).cloned() {
            return self.update(&id, &identity, member, now_ms);
        }
        let resources = member_resources(&member);
        let signal = signal_span(&member, resources, self.cfg.persist_ms);
        let (id, reason) = match self.best_incident(&r.entity, &r.node.iter().collect::<Vec<_>>(), &signal, None) {
            Some((id, link)) => {
                let window = if link == Link::Same { self.cfg.window_ms } else { self.cfg.link_window_ms };
                let reason = format!("{what} joined: {} within {} in event time", link.words(&r.entity), window_words(window));
                (id, reason)
            }
            None => {
                self.make_room();
                let id = incident_id(&r.entity, t, now_ms);
                self.open.insert(id.clone(), Open::empty(id.clone(), now_ms, now_ms));
                self.by_age.insert((now_ms, id.clone()));
                (id, format!("{what}: opened on {}", r.entity))
            }
        };
        if self.open.get(&id).is_some_and(|o| o.incident.members.len() >= self.cfg.max_members) {
            if let Some(o) = self.open.get_mut(&id) {
                o.dropped_members += 1;
            }
            return None;
        }
        self.insert(&id, identity, member, &r, resources, reason);
        self.merge_linked(&id, &r, t, now_ms);
        let id = self.join_pending(&id, now_ms).unwrap_or(id);
        self.gather_pending(&id, &r.entity, now_ms);
        self.touch(&id, now_ms)
    }

    /// An incident holding the trouble of one entity only, which now carries (two signals or an
    /// alert), joins the incident it links to as a single signal would have: its first lone
    /// anomaly could not. Returns where it went.
    fn join_pending(&mut self, pending: &IncidentId, now_ms: i64) -> Option<IncidentId> {
        let o = self.open.get(pending)?;
        let (entity, span) = match o.entities.iter().next() {
            Some((e, s)) if o.entities.len() == 1 && s.carries() => (e.clone(), *s),
            _ => return None,
        };
        let nodes: Vec<&String> = o.via.keys().collect();
        let (into, link) = self.best_incident(&entity, &nodes, &span, Some(pending))?;
        let why = format!("{} within {} in event time, once it had trouble of its own", link.words(&entity), window_words(self.cfg.link_window_ms));
        self.merge(&into, pending, &why, now_ms);
        (!self.open.contains_key(pending)).then_some(into)
    }

    /// The mirror of [`Correlator::join_pending`] for effects seen before their cause: once
    /// `entity` carries in `into`, incidents holding only the trouble of one of its callers, or of a
    /// per-node agent when `entity` is an established node, that would have joined it had it been
    /// there first, are merged in.
    fn gather_pending(&mut self, into: &IncidentId, entity: &str, now_ms: i64) {
        // A caller gathered may have callers of its own waiting: a cascade two calls away. Each
        // incident is merged once, so the work is bounded by the incidents linked.
        let mut work = vec![entity.to_string()];
        while let Some(entity) = work.pop() {
            let Some(target) = self.open.get(into) else {
                return;
            };
            let Some(span) = target.entities.get(&entity).copied().filter(Span::carries) else {
                continue;
            };
            let callers = self.topology.neighbours(&entity).into_iter().filter(|n| self.topology.calls(n, &entity));
            let mut linked: Vec<(String, Link)> = callers.map(|n| (n, Link::Calls(entity.clone()))).collect();
            if entity.starts_with("node:") && span.established() {
                linked.extend(self.topology.agent_fleets().map(|f| (f, Link::Agent(entity.clone()))));
            }
            let mut found: Vec<(IncidentId, String, String)> = Vec::new();
            for (other, link) in linked {
                for id in self.by_entity.get(&other).into_iter().flatten() {
                    let Some(o) = self.open.get(id) else { continue };
                    let Some(j) = o.entities.get(&other).filter(|_| id != into && o.entities.len() == 1) else {
                        continue;
                    };
                    if self.admits(&other, j, &span, &link).is_some() {
                        let why = format!("{} within {} in event time", link.words(&other), window_words(self.cfg.link_window_ms));
                        found.push((id.clone(), why, other.clone()));
                    }
                }
            }
            found.sort();
            found.dedup_by(|a, b| a.0 == b.0);
            for (id, why, other) in found {
                self.merge(into, &id, &why, now_ms);
                if !self.open.contains_key(&id) {
                    work.push(other);
                }
            }
        }
    }

    /// Puts one member into an open incident and indexes it; `resources` is its [`member_resources`].
    fn insert(&mut self, id: &IncidentId, identity: String, member: IncidentMember, r: &Resolved, resources: u8, reason: String) {
        let t = member.event_ms();
        let holds = holds_until(&member, self.cfg.persist_ms);
        let is_symptom = rank::classify(member.name()) == rank::SignalKind::Symptom;
        let is_backlog = is_backlog(member.name());
        let critical = matches!(member, IncidentMember::Alert { status: AlertStatus::Firing, severity: Severity::Critical, .. });
        let Some(open) = self.open.get_mut(id) else {
            return;
        };
        self.member_of.insert(identity.clone(), id.clone());
        open.index.insert(identity, open.incident.members.len());
        open.incident.members.push(member);
        open.incident.member_entities.push(r.entity.clone());
        open.nodes.push(r.node.clone());
        open.incident.grouping_reasons.push(reason);
        let is_alert = matches!(open.incident.members.last(), Some(IncidentMember::Alert { .. }));
        let resources = if resources == 0 { ANY_RESOURCE } else { resources };
        let span = open.entities.entry(r.entity.clone()).or_insert_with(|| Span::new(t));
        span.count += 1;
        span.alerts += u32::from(is_alert);
        span.symptoms += u32::from(is_symptom);
        span.symptom_alerts += u32::from(is_symptom && is_alert);
        span.backlog += u32::from(is_backlog);
        span.resources |= resources;
        span.note(t, self.cfg.link_window_ms);
        span.burst |= critical;
        span.extend(t, holds);
        if span.count == 1 {
            self.by_entity.entry(r.entity.clone()).or_default().push(id.clone());
            if r.entity.starts_with("node:") {
                self.with_nodes.insert(id.clone());
            }
        }
        if let Some(n) = &r.node {
            let span = open.via.entry(n.clone()).or_insert_with(|| Span::new(t));
            span.count += 1;
            span.resources |= resources;
            span.note(t, self.cfg.link_window_ms);
            span.extend(t, t);
            if span.count == 1 {
                self.by_via.entry(n.clone()).or_default().push(id.clone());
            }
        }
    }

    /// After a signal about `r` joined `into`, other open incidents it links just as surely are
    /// the same problem seen in pieces (their signals arrived first): those holding the same
    /// entity within the window, and, once the node is established in one of them
    /// ([`Span::established`]), the node's incident and those of pods on it within the link window. They are merged
    /// into `into`, bounded by `max_members`.
    fn merge_linked(&mut self, into: &IncidentId, r: &Resolved, t: i64, now_ms: i64) {
        let Some(target) = self.open.get(into) else {
            return;
        };
        // A node is established as a problem as any cause is ([`Span::established`]: three signals
        // within the link window of one another, or a firing critical alert), not by three strewn
        // over the window; its pods' trouble must start within the link window of the node's own
        // onset (a cause and its effects start together).
        let established = |o: &Open, node: &str| o.entities.get(node).is_some_and(Span::established);
        let mut others: Vec<(IncidentId, String)> = Vec::new();
        for id in self.by_entity.get(&r.entity).into_iter().flatten() {
            if id != into && self.open.get(id).is_some_and(|o| o.entities.get(&r.entity).is_some_and(|s| s.held_distance(t) <= self.cfg.window_ms)) {
                others.push((id.clone(), format!("both hold {}", r.entity)));
            }
        }
        if r.entity.starts_with("node:") && established(target, &r.entity) {
            for id in self.by_via.get(&r.entity).into_iter().flatten() {
                let node = target.entities.get(&r.entity);
                let onset = node.map(|s| s.first_ms).unwrap_or(t);
                // ... and only where the incident is mostly about pods on the node
                // (`Open::entities_on`).
                let near = |o: &Open| {
                    o.via.get(&r.entity).is_some_and(|s| {
                        (s.first_ms - onset).abs() <= self.cfg.link_window_ms
                            && node.is_none_or(|n| spans_share(n, s))
                            && 2 * o.entities_on(&r.entity) > o.entities.len()
                    })
                };
                if id != into && self.open.get(id).is_some_and(near) {
                    others.push((id.clone(), format!("its pods run on {}", r.entity)));
                }
            }
        }
        if let Some(node) = &r.node {
            for id in self.by_entity.get(node).into_iter().flatten() {
                let pods = target.via.get(node);
                let pod_onset = pods.map(|s| s.first_ms).unwrap_or(t);
                let near = |o: &Open| {
                    established(o, node)
                        && o.entities.get(node).is_some_and(|s| {
                            (s.first_ms - pod_onset).abs() <= self.cfg.link_window_ms && pods.is_none_or(|p| spans_share(p, s))
                        })
                };
                if id != into && self.open.get(id).is_some_and(near) {
                    others.push((id.clone(), format!("{node} hosts the pod of {}", r.entity)));
                }
            }
        }
        others.sort();
        others.dedup_by(|a, b| a.0 == b.0);
        for (id, why) in others {
            self.merge(into, &id, &why, now_ms);
        }
    }

    /// Moves every member of `from` into `into` and closes `from`, which is kept (empty, naming
    /// `into`) for [`Correlator::take_merged`]. Refused when the two together exceed `max_members`,
    /// and when a person split them from one another (only a person merges those again).
    fn merge(&mut self, into: &IncidentId, from: &IncidentId, why: &str, now_ms: i64) {
        if self.split_apart.holds(&into.0, &from.0) {
            return;
        }
        let window = self.cfg.link_window_ms;
        let (Some(a), Some(b)) = (self.open.get(into), self.open.get(from)) else {
            return;
        };
        if a.incident.members.len() + b.incident.members.len() > self.cfg.max_members {
            return;
        }
        // Its members' `member_of` entries are pointed at `into` below.
        let Some(b) = self.take_open(from) else {
            return;
        };
        self.split_apart.forget_all(&from.0);
        let Some(a) = self.open.get_mut(into) else {
            return;
        };
        a.incident.grouping_reasons.push(format!("merged incident {from} ({} signals): {why}", b.incident.members.len()));
        for (entity, span) in &b.entities {
            if !a.entities.contains_key(entity) {
                self.by_entity.entry(entity.clone()).or_default().push(into.clone());
                if entity.starts_with("node:") {
                    self.with_nodes.insert(into.clone());
                }
            }
            a.entities.entry(entity.clone()).or_insert_with(|| Span { count: 0, ..*span }).absorb(span, window);
        }
        for (node, span) in &b.via {
            if !a.via.contains_key(node) {
                self.by_via.entry(node.clone()).or_default().push(into.clone());
            }
            a.via.entry(node.clone()).or_insert_with(|| Span { count: 0, ..*span }).absorb(span, window);
        }
        let Open { incident: bi, nodes: bn, .. } = b;
        let gone = Incident {
            id: bi.id.clone(),
            opened_ms: bi.opened_ms,
            updated_ms: now_ms,
            members: Vec::new(),
            affected_services: Vec::new(),
            common_labels: Labels::new(),
            grouping_reasons: vec![format!("merged into {into}: {why}")],
            probable_causes: Vec::new(),
            severity: Severity::Low,
            version: bi.version + 1,
            member_entities: Vec::new(),
        };
        a.incident.grouping_reasons.extend(bi.grouping_reasons.into_iter().map(|r| format!("(from {from}) {r}")));
        for ((member, entity), node) in bi.members.into_iter().zip(bi.member_entities).zip(bn) {
            let identity = match &member {
                IncidentMember::Alert { fingerprint, .. } => format!("alert:{fingerprint}"),
                IncidentMember::Anomaly(x) => format!("series:{}", x.series),
            };
            self.member_of.insert(identity.clone(), into.clone());
            a.index.insert(identity, a.incident.members.len());
            a.incident.members.push(member);
            a.incident.member_entities.push(entity);
            a.nodes.push(node);
        }
        self.merged.push(gone);
    }

    /// Incidents merged into others since the last call: emptied, each saying where its members
    /// went, so that a store can retire them.
    pub fn take_merged(&mut self) -> Vec<Incident> {
        std::mem::take(&mut self.merged)
    }

    /// A member already held: an alert's state change is news; the same state again is not; an
    /// anomaly keeps its strongest evidence without changing the member set.
    fn update(&mut self, id: &IncidentId, identity: &str, member: IncidentMember, now_ms: i64) -> Option<IncidentId> {
        let open = self.open.get_mut(id)?;
        let i = *open.index.get(identity)?;
        // Ongoing evidence keeps its entity current in event time.
        let t = member.event_ms();
        let holds = holds_until(&member, self.cfg.persist_ms);
        if let Some(span) = open.entities.get_mut(open.incident.entity_of(i)) {
            span.extend(t, holds);
        }
        if let Some(span) = open.nodes[i].as_ref().and_then(|n| open.via.get_mut(n)) {
            span.extend(t, t);
        }
        let changed = match (&mut open.incident.members[i], &member) {
            (IncidentMember::Alert { status, labels, .. }, IncidentMember::Alert { status: new, labels: new_labels, .. }) if status != new => {
                // The same fingerprint with other labels (a sender's fault): the common labels are
                // worked out again from every member.
                if labels != new_labels {
                    open.common_upto = 0;
                }
                open.incident.members[i] = member;
                open.updated(i);
                true
            }
            (IncidentMember::Anomaly(old), IncidentMember::Anomaly(new)) => {
                if new.score > old.score {
                    *old = new.clone();
                    open.updated(i);
                }
                false
            }
            _ => false,
        };
        if changed { self.touch(id, now_ms) } else { None }
    }

    /// The incident changed now: a new version, and it is marked for [`Correlator::settle`].
    fn touch(&mut self, id: &IncidentId, now_ms: i64) -> Option<IncidentId> {
        let inc = &mut self.open.get_mut(id)?.incident;
        self.by_age.remove(&(inc.updated_ms, id.clone()));
        self.by_age.insert((now_ms, id.clone()));
        inc.updated_ms = now_ms;
        inc.version += 1;
        self.dirty.insert(id.clone());
        Some(id.clone())
    }

    /// Summarises and ranks the incident as it stands: the work that grows with its size.
    fn refresh(&mut self, id: &IncidentId) -> Option<&Incident> {
        let keep = self.cfg.max_causes;
        let slack = self.step.onset_slack_ms();
        let open = self.open.get_mut(id)?;
        let inc = &mut open.incident;
        summarise(inc, &mut open.common_upto, &open.entities);
        inc.probable_causes = rank::rank(inc, &open.nodes, &self.topology, keep, slack);
        Some(inc)
    }

    /// [`Correlator::refresh`], and a copy of the incident.
    fn snapshot(&mut self, id: &IncidentId) -> Option<Incident> {
        self.refresh(id).cloned()
    }

    /// [`Correlator::touch`] and [`Correlator::snapshot`] at once, for a change made alone.
    fn changed(&mut self, id: &IncidentId, now_ms: i64) -> Option<Incident> {
        self.touch(id, now_ms)?;
        self.settle_one(id)
    }

    fn make_room(&mut self) {
        while self.open.len() >= self.cfg.max_open_incidents.max(1) {
            let Some((_, oldest)) = self.by_age.first().cloned() else {
                return;
            };
            self.close(&oldest);
        }
    }

    fn close(&mut self, id: &IncidentId) {
        let Some(open) = self.take_open(id) else {
            return;
        };
        self.split_apart.forget_all(&id.0);
        for identity in open.index.keys() {
            self.member_of.remove(identity);
        }
    }

    /// Removes an open incident and its entries in the entity indexes (its own entities only, so
    /// the work does not grow with the number of open incidents).
    fn take_open(&mut self, id: &IncidentId) -> Option<Open> {
        let open = self.open.remove(id)?;
        self.by_age.remove(&(open.incident.updated_ms, id.clone()));
        let unindex = |map: &mut HashMap<String, Vec<IncidentId>>, keys: &HashMap<String, Span>| {
            for k in keys.keys() {
                if let Some(v) = map.get_mut(k) {
                    v.retain(|x| x != id);
                    if v.is_empty() {
                        map.remove(k);
                    }
                }
            }
        };
        unindex(&mut self.by_entity, &open.entities);
        unindex(&mut self.by_via, &open.via);
        self.with_nodes.remove(id);
        Some(open)
    }

    /// Closes incidents unchanged for longer than the window; returns their ids.
    pub fn close_idle(&mut self, now_ms: i64) -> Vec<IncidentId> {
        let window = self.cfg.window_ms;
        let mut closed: Vec<IncidentId> =
            self.by_age.iter().take_while(|(updated, _)| now_ms - updated > window).map(|(_, id)| id.clone()).collect();
        closed.sort();
        for id in &closed {
            self.close(id);
        }
        closed
    }
}

fn incident_id(entity: &str, event_ms: i64, opened_ms: i64) -> IncidentId {
    let mut h = Sha256::new();
    h.update(entity.as_bytes());
    h.update([0]);
    h.update(event_ms.to_be_bytes());
    h.update(opened_ms.to_be_bytes());
    IncidentId(format!("inc-{}", &hex::encode(h.finalize())[..16]))
}

/// Recomputes the derived fields of an incident from its members. The common labels are
/// intersected with the members after the first `common_upto` only (they are already in it), and
/// `common_upto` is moved to the end. `entities` are the incident's [`Open::entities`].
fn summarise(inc: &mut Incident, common_upto: &mut usize, entities: &HashMap<String, Span>) {
    if *common_upto > inc.members.len() || inc.members.is_empty() {
        *common_upto = 0;
        inc.common_labels = Labels::new();
    }
    for (k, m) in inc.members.iter().enumerate().skip(*common_upto) {
        let labels = m.labels();
        // Intersected in place: no label set is built per member.
        if k == 0 {
            inc.common_labels = labels.clone();
        } else {
            inc.common_labels.0.retain(|k, v| labels.get(k) == Some(v.as_str()));
        }
    }
    *common_upto = inc.members.len();
    let mut severity = Severity::Low;
    for m in &inc.members {
        let s = match m {
            IncidentMember::Alert { severity, status: AlertStatus::Firing, .. } => *severity,
            IncidentMember::Alert { .. } => Severity::Low,
            IncidentMember::Anomaly(a) => a.severity,
        };
        severity = severity.max(s);
    }
    // From the distinct entities, which are those of the members: not a string per member.
    let mut services: Vec<String> = entities.keys().filter_map(|e| e.strip_prefix("service:")).map(String::from).collect();
    services.sort();
    inc.affected_services = services;
    inc.severity = severity;
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::SeriesId;

    fn alert(name: &str, service: &str, fp: &str, status: AlertStatus) -> AlertEvent {
        AlertEvent {
            fingerprint: fp.into(),
            status,
            labels: [("alertname", name), ("service", service), ("severity", "critical")].into_iter().collect(),
            annotations: [("summary", "s")].into_iter().collect(),
            starts_at_ms: 1_000,
            ends_at_ms: None,
            generator_url: String::new(),
            source: "t".into(),
        }
    }

    fn anomaly(service: &str, series: u64, score: f64) -> Anomaly {
        Anomaly {
            series: SeriesId(series),
            labels: [("__name__", "latency"), ("service", service)].into_iter().collect(),
            timestamp_ms: 900,
            observed: 1.0,
            expected: 0.1,
            score,
            severity: Severity::High,
            confidence: 0.9,
            anomaly_kind: "level_shift".into(),
            detector: "robust-z".into(),
            model_version: "robust-z/1".into(),
        }
    }

    #[test]
    fn an_alert_and_an_anomaly_on_one_service_are_one_incident_with_reasons() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("HighErrorRate", "checkout", "f1", AlertStatus::Firing), 10_000).unwrap();
        let b = c.observe_anomaly(&anomaly("checkout", 7, 0.95), 11_000).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(b.members.len(), 2);
        assert_eq!(b.version, 2);
        assert!(b.grouping_reasons[1].contains("service=\"checkout\""), "{:?}", b.grouping_reasons);
        assert!(b.grouping_reasons[1].contains("15m"));
        assert_eq!(b.affected_services, ["checkout"]);
        assert_eq!(b.common_labels.get("service"), Some("checkout"));
        assert_eq!(b.severity, Severity::Critical);
        assert!(b.probable_causes[0].description.contains("latency"), "the earlier anomaly ranks first: {:?}", b.probable_causes);
    }

    #[test]
    fn what_changed_since_an_incident_was_handed_out_names_every_member_and_reason_that_moved() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let id = c.note_alert(alert("X", "checkout", "f0", AlertStatus::Firing), 10_000).unwrap();
        for k in 1..5 {
            c.note_alert(alert("X", "checkout", &format!("f{k}"), AlertStatus::Firing), 10_000);
        }
        c.note_anomaly(&anomaly("checkout", 7, 0.5), 10_000);
        c.settle();
        assert_eq!(c.take_changes(&id), None, "the first time: nothing was handed out before");
        let v = c.get(&id).unwrap().version;
        assert_eq!(c.take_changes(&id), None, "the same version again cannot be told from the last write");
        // An alert resolves, a stronger anomaly on the same series, a new member with its reason.
        c.note_alert(alert("X", "checkout", "f2", AlertStatus::Resolved), 11_000);
        c.note_anomaly(&anomaly("checkout", 7, 0.9), 11_000);
        c.note_alert(alert("Y", "checkout", "f9", AlertStatus::Firing), 11_000);
        c.settle();
        let inc = c.get(&id).unwrap().clone();
        let changes = c.take_changes(&id).unwrap();
        assert_eq!(changes, cairn_types::IncidentChanges { since_version: v, members: vec![2, 5, 6], reasons_from: 6 });
        assert!(matches!(&inc.members[5], IncidentMember::Anomaly(a) if a.score == 0.9));
        assert_eq!(inc.grouping_reasons.len(), 7);
        // A weaker anomaly and an alert in the state it is in change nothing.
        c.note_anomaly(&anomaly("checkout", 7, 0.2), 12_000);
        c.note_alert(alert("X", "checkout", "f1", AlertStatus::Firing), 12_000);
        c.note_alert(alert("Z", "checkout", "f10", AlertStatus::Firing), 12_000);
        c.settle();
        assert_eq!(c.take_changes(&id).unwrap().members, [7]);
        // A person's split rebuilds both incidents: what is left is compared whole.
        let (left, new) = c.split_by_person(&id, &["alert:f9".to_string()], "its own", 13_000).unwrap();
        assert_eq!((left.members.len(), new.members.len()), (7, 1));
        assert_eq!(c.take_changes(&id), None);
        assert_eq!(c.take_changes(&new.id), None);
    }

    #[test]
    fn a_persons_split_of_one_entitys_signals_is_not_merged_again_by_its_next_signal() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let id = c.note_alert(alert("X", "checkout", "f0", AlertStatus::Firing), 10_000).unwrap();
        c.note_alert(alert("Y", "checkout", "f1", AlertStatus::Firing), 10_000);
        c.settle();
        // Within the millisecond the incident was opened in, of a signal with its entity and time.
        let (left, new) = c.split_by_person(&id, &["alert:f1".to_string()], "another problem", 10_000).unwrap();
        assert_ne!(left.id, new.id, "the part split off is an incident of its own");
        assert_eq!(c.split_apart_count(), 1);
        c.note_alert(alert("Y", "checkout", "f1", AlertStatus::Resolved), 11_000);
        c.note_alert(alert("Z", "checkout", "f2", AlertStatus::Firing), 11_000);
        c.settle();
        assert_eq!(c.open_count(), 2, "both hold service:checkout, and stay apart");
        // A person may merge them again.
        let merged = c.merge_by_person(&left.id, &new.id, "one problem after all", 12_000).unwrap();
        assert_eq!((c.open_count(), c.split_apart_count(), merged.members.len()), (1, 0, 3));
        let (_, again) = c.split_by_person(&left.id, &["alert:f1".to_string()], "another problem", 13_000).unwrap();
        assert_eq!(c.split_apart_count(), 1);
        // A second split of what is left keeps the first apart too (the split rebuilds `left`
        // under its own id, which is not an incident ending).
        let (_, third) = c.split_by_person(&left.id, &["alert:f2".to_string()], "a third problem", 13_000).unwrap();
        assert_eq!(c.split_apart_count(), 2);
        c.note_alert(alert("Z", "checkout", "f3", AlertStatus::Firing), 13_000);
        c.settle();
        assert_eq!(c.open_count(), 3, "{:?}", [&again.id, &third.id]);
        c.close_idle(i64::MAX / 2);
        assert!(c.get(&again.id).is_none());
        assert_eq!((c.open_count(), c.split_apart_count()), (0, 0), "forgotten when they close");
    }

    #[test]
    fn different_services_are_different_incidents() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        let b = c.observe_alert(&alert("X", "b", "f2", AlertStatus::Firing), 0).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(c.open_count(), 2);
    }

    fn at(mut a: AlertEvent, starts_at_ms: i64) -> AlertEvent {
        a.starts_at_ms = starts_at_ms;
        a
    }

    #[test]
    fn outside_the_window_in_event_time_a_new_incident_starts() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&at(alert("X", "a", "f1", AlertStatus::Firing), 0), 0).unwrap();
        // Arriving together, but two hours apart in event time (past the hour a firing alert is
        // taken to hold, and the window after it): not one problem.
        let b = c.observe_alert(&at(alert("Y", "a", "f2", AlertStatus::Firing), 2 * 60 * 60 * 1000), 1).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(b.members.len(), 1);
        // Arriving far apart, but close in event time (a late delivery): one problem.
        let d = c.observe_alert(&at(alert("Z", "a", "f3", AlertStatus::Firing), 60_000), 10 * 60 * 1000).unwrap();
        assert_eq!(d.id, a.id);
    }

    fn series(pairs: &[(&str, &str)], ts: i64, score: f64) -> Anomaly {
        let labels: Labels = pairs.iter().copied().collect();
        Anomaly { series: labels.series_id(), labels, timestamp_ms: ts, score, ..anomaly("x", 0, score) }
    }

    fn learnt(c: &mut Correlator, rows: &[&[(&str, &str)]]) {
        let mut batch = SampleBatch::new();
        for r in rows {
            let labels: Labels = r.iter().copied().collect();
            batch.push_sample(&cairn_types::MetricSample { labels, timestamp_ms: 0, value: 1.0 });
        }
        c.learn(&batch);
    }

    /// Two services where `api` calls `db`, each with a pod on its own node, and a node agent.
    fn cluster() -> Correlator {
        let topo = [ServiceDef { name: "api".into(), depends_on: vec!["db".into()] }, ServiceDef { name: "shop".into(), depends_on: vec![] }];
        let mut c = Correlator::with_topology(CorrelatorConfig::default(), &topo);
        learnt(&mut c, &[
            &[("__name__", "kube_pod_info"), ("pod", "api-6b7c-a1"), ("node", "n1"), ("created_by_kind", "ReplicaSet"), ("created_by_name", "api-6b7c")],
            &[("__name__", "kube_pod_info"), ("pod", "db-0"), ("node", "n2"), ("created_by_kind", "StatefulSet"), ("created_by_name", "db")],
            &[("__name__", "kube_pod_info"), ("pod", "shop-9d8e-b2"), ("node", "n3"), ("created_by_kind", "ReplicaSet"), ("created_by_name", "shop-9d8e")],
            &[("__name__", "node_load1"), ("instance", "n3"), ("job", "node-exporter"), ("service", "node-exporter")],
        ]);
        c
    }

    #[test]
    fn a_database_outage_is_one_incident_across_services_and_the_database_ranks_first() {
        let mut c = cluster();
        let first = db_down(&mut c, 0);
        // The caller's error budget burns, and is critical too.
        let api = c.observe_alert(&at(alert("ErrorBudgetBurn", "api", "f2", AlertStatus::Firing), 30_000), 1).unwrap();
        assert_eq!(api.id, first.id, "{:?}", api.grouping_reasons);
        assert!(api.grouping_reasons[3].contains("call one another"), "{:?}", api.grouping_reasons);
        let lat = c.observe_anomaly(&series(&[("__name__", "service:http_request_duration_seconds:p99"), ("service", "api")], 40_000, 0.99), 2).unwrap();
        assert_eq!(lat.id, first.id);
        assert_eq!(lat.probable_causes[0].entity, "service:db", "{:#?}", lat.probable_causes);
        assert!(lat.probable_causes[0].factors.iter().any(|f| f.contains("upstream of service:api")), "{:?}", lat.probable_causes[0].factors);
        assert!(lat.probable_causes[1].factors.iter().any(|f| f.contains("symptoms only")));
        assert_eq!(lat.probable_causes[0].members[0], "alert:f1");
        // An unrelated service at the same moment is another incident.
        let shop = c.observe_alert(&at(alert("X", "shop", "f3", AlertStatus::Firing), 30_000), 3).unwrap();
        assert_ne!(shop.id, first.id);
    }

    #[test]
    fn a_caller_seen_before_its_callee_joins_within_two_scrape_intervals_of_the_scrape_the_samples_show() {
        // The callee is established at 100 s; the caller's errors are first seen 90 s earlier.
        let outage = |c: &mut Correlator| {
            let db = db_down(c, 100_000);
            let api = c.observe_alert(&at(alert("ErrorBudgetBurn", "api", "f2", AlertStatus::Firing), 10_000), 2).unwrap();
            (db.id, api)
        };
        // Scraped every 15 s, that is more than two scrapes before the cause: not its effect.
        let mut fast = cluster();
        for k in 0..4 {
            learnt_at(&mut fast, k * 15_000);
        }
        let (db, api) = outage(&mut fast);
        assert_ne!(api.id, db, "{:?}", api.grouping_reasons);
        // Scraped every minute, the same 90 s is within two scrapes: the caller joins.
        let mut slow = cluster();
        for k in 0..4 {
            learnt_at(&mut slow, k * 60_000);
        }
        let (db, api) = outage(&mut slow);
        assert_eq!(api.id, db, "{:?}", api.grouping_reasons);
    }

    #[test]
    fn common_labels_kept_as_members_join_equal_those_worked_out_from_every_member() {
        // Alerts on three services that call one another, with labels that differ per alert, some
        // resolving, one re-sent with other labels under its fingerprint, a person's split and merge.
        let mut c = cluster();
        let mut x: u64 = 7;
        for i in 0..300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let service = ["api", "db", "shop", "cart", "search"][(x >> 33) as usize % 5];
            let mut a = alert(if i % 2 == 0 { "HighErrorRate" } else { "PostgresqlDown" }, service, &format!("f{}", (x >> 40) % 120), AlertStatus::Firing);
            if (x >> 20) % 5 == 0 {
                a.status = AlertStatus::Resolved;
            }
            if (x >> 24) % 3 == 0 {
                a.labels.insert("zone", if (x >> 28) % 2 == 0 { "a" } else { "b" });
            }
            a.labels.insert("team", "core");
            c.note_alert(at(a, i * 1_000), i);
            if i % 50 == 49 {
                let ids = c.settle();
                if let Some(inc) = ids.first().and_then(|id| c.get(id)).filter(|inc| inc.members.len() > 2).cloned() {
                    let first = crate::regroup::identity_of(&inc.members[0]);
                    let (left, new) = c.split_by_person(&inc.id, &[first], "test", i).unwrap();
                    // Merged back once: a person's merge links the entities from then on.
                    if i == 249 {
                        c.merge_by_person(&left.id, &new.id, "test", i).unwrap();
                    }
                }
            }
        }
        c.settle();
        let mut checked = 0;
        for inc in c.open.values().map(|o| &o.incident) {
            let mut full: Option<Labels> = None;
            for m in &inc.members {
                let l = m.labels();
                full = Some(match full {
                    None => l.clone(),
                    Some(mut f) => {
                        f.0.retain(|k, v| l.get(k) == Some(v.as_str()));
                        f
                    }
                });
            }
            assert_eq!(inc.common_labels, full.unwrap_or_default(), "{}", inc.id);
            checked += 1;
        }
        assert!(checked >= 2, "{checked} incidents");
        // A fingerprint re-sent with other labels (as a faulty sender may): worked out again.
        let mut c = Correlator::new(CorrelatorConfig::default());
        let zoned = |fp: &str, zone: &str, status| {
            let mut a = alert("X", "shop", fp, status);
            a.labels.insert("zone", zone);
            a
        };
        c.observe_alert(&zoned("f1", "a", AlertStatus::Firing), 0);
        let both = c.observe_alert(&zoned("f2", "a", AlertStatus::Firing), 0).unwrap();
        assert_eq!(both.common_labels.get("zone"), Some("a"));
        let moved = c.observe_alert(&zoned("f2", "b", AlertStatus::Resolved), 1).unwrap();
        assert_eq!(moved.common_labels.get("zone"), None, "{:?}", moved.common_labels);
    }

    /// One scrape of two series at `t`.
    fn learnt_at(c: &mut Correlator, t: i64) {
        let samples: Vec<cairn_types::MetricSample> = ["a", "b"]
            .iter()
            .map(|i| cairn_types::MetricSample { labels: [("__name__", "up"), ("instance", *i)].into_iter().collect(), timestamp_ms: t, value: 1.0 })
            .collect();
        c.learn(&samples.iter().collect());
    }

    /// The database outage of the test above: one incident holding `db`'s trouble and `api`'s
    /// errors (members alert:f1, alert:f2 and three series).
    fn outage(c: &mut Correlator) -> Incident {
        db_down(c, 0);
        c.observe_alert(&at(alert("ErrorBudgetBurn", "api", "f2", AlertStatus::Firing), 30_000), 1).unwrap()
    }

    #[test]
    fn a_person_merges_two_incidents_into_one_and_the_other_is_emptied_naming_it() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        let b = c.observe_alert(&alert("Y", "b", "f2", AlertStatus::Firing), 0).unwrap();
        let merged = c.merge_by_person(&a.id, &b.id, "one upstream fault (user:alice)", 5).unwrap();
        assert_eq!(merged.id, a.id);
        assert_eq!(merged.members.len(), 2);
        assert!(merged.version > a.version);
        assert!(merged.grouping_reasons.iter().any(|r| r.contains("one upstream fault (user:alice)")), "{:?}", merged.grouping_reasons);
        let gone = c.take_merged();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, b.id);
        assert!(gone[0].members.is_empty() && gone[0].grouping_reasons[0].contains(&a.id.0));
        assert_eq!(c.open_count(), 1);
        // Later trouble on b joins the merged incident.
        let later = c.observe_alert(&alert("Z", "b", "f3", AlertStatus::Firing), 6).unwrap();
        assert_eq!(later.id, a.id);
        // Refusals change nothing.
        assert_eq!(c.merge_by_person(&a.id, &a.id, "", 7), Err(RegroupRefused::SameIncident(a.id.clone())));
        assert_eq!(c.merge_by_person(&a.id, &b.id, "", 7), Err(RegroupRefused::NotOpen(b.id.clone())));
        assert_eq!(c.get(&a.id).map(|i| i.members.len()), Some(3));
    }

    #[test]
    fn what_a_person_merged_is_one_incident_the_next_time_both_are_in_trouble() {
        const MIN: i64 = 60_000;
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&at(alert("X", "a", "f1", AlertStatus::Firing), 0), 0).unwrap();
        let b = c.observe_alert(&at(alert("Y", "b", "f2", AlertStatus::Firing), 0), 0).unwrap();
        c.merge_by_person(&a.id, &b.id, "one upstream fault (user:alice)", 1).unwrap();
        assert_eq!(c.kept_together_count(), 1);
        // Long after, both incidents closed: new trouble on a, then on b, is one incident.
        assert_eq!(c.close_idle(60 * MIN).len(), 1);
        let t = 60 * MIN;
        let a2 = c.observe_alert(&at(alert("X", "a", "f3", AlertStatus::Firing), t), t).unwrap();
        let b2 = c.observe_alert(&at(alert("Y", "b", "f4", AlertStatus::Firing), t + MIN), t + 1).unwrap();
        assert_eq!(b2.id, a2.id, "{:?}", b2.grouping_reasons);
        assert!(b2.grouping_reasons.iter().any(|r| r.contains("merged into one incident by a person before")), "{:?}", b2.grouping_reasons);
        // A later split of the two replaces what the merge taught.
        c.split_by_person(&a2.id, &["alert:f4".to_string()], "not this time (user:bob)", t + 2).unwrap();
        assert_eq!((c.kept_together_count(), c.kept_apart_count()), (0, 1));
        assert_eq!(c.close_idle(t + 60 * MIN).len(), 2);
        let t = t + 60 * MIN;
        let a3 = c.observe_alert(&at(alert("X", "a", "f5", AlertStatus::Firing), t), t).unwrap();
        let b3 = c.observe_alert(&at(alert("Y", "b", "f6", AlertStatus::Firing), t), t + 1).unwrap();
        assert_ne!(a3.id, b3.id);
    }

    #[test]
    fn a_person_splits_signals_out_and_the_rules_do_not_join_them_again() {
        let mut c = cluster();
        let both = outage(&mut c);
        let before = both.members.len();
        let (left, new) = c.split_by_person(&both.id, &["alert:f2".to_string()], "api's errors are its own deploy (user:alice)", 10).unwrap();
        assert_eq!(left.id, both.id);
        assert_eq!(left.members.len(), before - 1);
        assert!(left.version > both.version);
        assert_eq!(left.probable_causes[0].entity, "service:db");
        assert!(left.grouping_reasons.iter().any(|r| r.contains(&format!("moved to {}", new.id))), "{:?}", left.grouping_reasons);
        assert_eq!(new.members.len(), 1);
        assert_eq!(new.probable_causes[0].entity, "service:api");
        assert!(new.grouping_reasons[0].contains("by a person") && new.grouping_reasons[0].contains("own deploy"), "{:?}", new.grouping_reasons);
        assert_eq!(c.open_count(), 2);
        assert_eq!(c.kept_apart_count(), 1);
        // More of api's errors stay with api, not with the database the rules linked them to.
        let more = c.observe_alert(&at(alert("HighErrorRate", "api", "f4", AlertStatus::Firing), 60_000), 11).unwrap();
        assert_eq!(more.id, new.id, "{:?}", more.grouping_reasons);
        // Another member of the database incident still goes there.
        let db_more = c.observe_anomaly(&series(&[("__name__", "pg_stat_activity_count"), ("service", "db")], 60_000, 0.9), 12).unwrap();
        assert_eq!(db_more.id, both.id);
    }

    #[test]
    fn a_split_that_names_no_member_or_moves_everything_is_refused_and_changes_nothing() {
        let mut c = cluster();
        let both = outage(&mut c);
        let all: Vec<String> = c.get(&both.id).unwrap().members.iter().map(super::regroup_identity).collect();
        assert_eq!(c.split_by_person(&both.id, &all, "", 1), Err(RegroupRefused::NothingLeft(both.id.clone())));
        assert_eq!(c.split_by_person(&both.id, &[], "", 1), Err(RegroupRefused::NothingLeft(both.id.clone())));
        let err = c.split_by_person(&both.id, &["alert:nope".to_string()], "", 1).unwrap_err();
        assert!(matches!(err, RegroupRefused::NoSuchMember { .. }), "{err:?}");
        assert!(matches!(c.split_by_person(&IncidentId("inc-x".into()), &all, "", 1), Err(RegroupRefused::NotOpen(_))));
        assert_eq!(c.get(&both.id).unwrap().members.len(), all.len());
        assert_eq!(c.open_count(), 1);
    }

    #[test]
    fn a_dependency_does_not_join_trouble_that_began_long_before_its_own() {
        const MIN: i64 = 60_000;
        let mut c = cluster();
        // The caller has been in trouble since minute 0 (and still is at minute 8).
        let api = c.observe_alert(&at(alert("CPUThrottlingHigh", "api", "f1", AlertStatus::Firing), 0), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "service:http_request_duration_seconds:p99"), ("service", "api")], 8 * MIN, 0.9), 1);
        // Its dependency fails at minute 9: it cannot have caused what began 9 minutes earlier.
        let mut down = alert("PostgresqlDown", "db", "f2", AlertStatus::Firing);
        down.labels.insert("pod", "db-0");
        let db = c.observe_alert(&at(down, 9 * MIN), 2).unwrap();
        assert_ne!(db.id, api.id, "{:?}", db.grouping_reasons);
        // The other way round is a cascade: the dependency first, then its caller, any time after.
        let mut c = cluster();
        let mut down = alert("PostgresqlDown", "db", "f2", AlertStatus::Firing);
        down.labels.insert("pod", "db-0");
        let db = c.observe_alert(&at(down, 0), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "pg_up"), ("service", "db")], 4 * MIN, 0.9), 1);
        c.observe_anomaly(&series(&[("__name__", "kube_statefulset_status_replicas_ready"), ("statefulset", "db")], 4 * MIN, 0.9), 1);
        let api = c.observe_alert(&at(alert("ErrorBudgetBurn", "api", "f1", AlertStatus::Firing), 8 * MIN), 2).unwrap();
        assert_eq!(api.id, db.id, "{:?}", api.grouping_reasons);
        // A stale blip long before (more than 15 minutes before the rest) is not when the caller's
        // trouble began: its dependency, failing just after the real onset, still joins.
        let mut c = cluster();
        let blip = c.observe_anomaly(&series(&[("__name__", "service:http_request_errors:ratio_rate5m"), ("service", "api")], 0, 0.6), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "service:http_request_duration_seconds:p99"), ("service", "api")], 30 * MIN, 0.9), 1);
        let mut down = alert("PostgresqlDown", "db", "f2", AlertStatus::Firing);
        down.labels.insert("pod", "db-0");
        c.observe_alert(&at(down, 30 * MIN - 20_000), 2).unwrap();
        c.observe_anomaly(&series(&[("__name__", "pg_up"), ("service", "db")], 30 * MIN - 15_000, 0.9), 3);
        // Established with its third signal: it joins, with what it had before.
        let db = c.observe_anomaly(&series(&[("__name__", "kube_statefulset_status_replicas_ready"), ("statefulset", "db")], 30 * MIN, 0.9), 4).unwrap();
        assert_eq!(db.id, blip.id, "{:?}", db.grouping_reasons);
        assert_eq!(db.members.len(), 5);
    }

    /// A database `db` established as a problem (three signals) at event time `t`.
    fn db_down(c: &mut Correlator, t: i64) -> Incident {
        let mut down = alert("PostgresqlDown", "db", "f1", AlertStatus::Firing);
        down.labels.insert("pod", "db-0");
        c.observe_alert(&at(down, t), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "pg_up"), ("pod", "db-0"), ("service", "db")], t, 0.9), 1);
        c.observe_anomaly(&series(&[("__name__", "kube_statefulset_status_replicas_ready"), ("statefulset", "db")], t, 0.9), 2).unwrap()
    }

    #[test]
    fn across_a_call_only_the_callers_errors_and_latency_join_and_a_lone_anomaly_joins_nothing() {
        let api = |name: &str, t: i64| series(&[("__name__", name), ("service", "api")], t, 0.9);
        // One latency spike on the caller, alone: a blip, not put down to the failing database.
        let mut c = cluster();
        let db = db_down(&mut c, 0);
        let blip = c.observe_anomaly(&api("http_request_duration_seconds:p99", 30_000), 3).unwrap();
        assert_ne!(blip.id, db.id, "{:?}", blip.grouping_reasons);
        // A second signal on it, errors: trouble of its own, and the kind a caller shows when its
        // callee fails. Its incident joins the database's.
        let joined = c.observe_anomaly(&api("http_request_errors:ratio_rate5m", 40_000), 4).unwrap();
        assert_eq!(joined.id, db.id, "{:?}", joined.grouping_reasons);
        assert_eq!(joined.members.len(), 5);
        assert!(joined.grouping_reasons.iter().any(|r| r.contains("once it had trouble of its own")), "{:?}", joined.grouping_reasons);
        assert!(c.take_merged().iter().any(|g| g.id == blip.id));
        // The caller's memory and request rate are not what a failing callee does to it.
        let mut c = cluster();
        let db = db_down(&mut c, 0);
        c.observe_anomaly(&api("process_resident_memory_bytes", 30_000), 3);
        let other = c.observe_anomaly(&api("http_requests:rate5m", 40_000), 4).unwrap();
        assert_ne!(other.id, db.id, "{:?}", other.grouping_reasons);
        // One latency spike beside them is still a blip, not the caller's errors and latency.
        let other = c.observe_anomaly(&api("http_request_duration_seconds:p99", 50_000), 5).unwrap();
        assert_ne!(other.id, db.id, "{:?}", other.grouping_reasons);
        // Nor does a caller's latency that began before the callee failed follow from it.
        let mut c = cluster();
        let db = db_down(&mut c, 2 * 60_000);
        c.observe_anomaly(&api("http_request_duration_seconds:p99", 0), 3);
        let early = c.observe_anomaly(&api("http_request_errors:ratio_rate5m", 0), 4).unwrap();
        assert_ne!(early.id, db.id, "{:?}", early.grouping_reasons);
    }

    #[test]
    fn a_backlog_on_a_callee_joins_the_caller_that_fell_behind_and_its_latency_does_not() {
        const MIN: i64 = 60_000;
        // `api` consumes from `db` (it calls it). Its CPU saturates: established trouble.
        let api = |name: &str, t: i64| series(&[("__name__", name), ("service", "api")], t, 0.9);
        let callee = |name: &str, t: i64| series(&[("__name__", name), ("service", "db")], t, 0.9);
        for (names, joins) in [
            // The queue behind it grows: the consumer's trouble, seen on what it calls.
            (["rabbitmq_queue_messages_ready", "RabbitmqTooManyMessagesInQueue"], true),
            // The callee's latency after the caller's trouble is not put down to the caller.
            (["http_request_duration_seconds:p99", "http_request_errors:ratio_rate5m"], false),
        ] {
            let mut c = cluster();
            for (k, cpu) in ["container_cpu_usage_seconds_total", "cpu_throttling", "load"].iter().enumerate() {
                c.observe_anomaly(&api(cpu, 10 * MIN + k as i64 * 15_000), k as i64);
            }
            let consumer = c.observe_anomaly(&api("http_request_duration_seconds:p99", 10 * MIN + 45_000), 3).unwrap();
            c.observe_anomaly(&callee(names[0], 11 * MIN), 4);
            let last = c.observe_anomaly(&callee(names[1], 12 * MIN), 5).unwrap();
            assert_eq!(last.id == consumer.id, joins, "{names:?}: {:?}", last.grouping_reasons);
        }
        // A backlog that began well before the consumer's trouble is not its effect.
        let mut c = cluster();
        c.observe_anomaly(&callee("rabbitmq_queue_messages_ready", 0), 0);
        c.observe_anomaly(&callee("rabbitmq_queue_messages_ready_total", 15_000), 1);
        for (k, cpu) in ["container_cpu_usage_seconds_total", "cpu_throttling", "load"].iter().enumerate() {
            c.observe_anomaly(&api(cpu, 10 * MIN + k as i64 * 15_000), 2 + k as i64);
        }
        let consumer = c.observe_anomaly(&api("http_request_duration_seconds:p99", 10 * MIN + 45_000), 5).unwrap();
        assert_eq!(consumer.affected_services, ["api"], "{:?}", consumer.grouping_reasons);
    }

    #[test]
    fn a_callee_is_put_forward_as_a_cause_only_when_its_signals_come_together() {
        const MIN: i64 = 60_000;
        let api = |name: &str, t: i64| series(&[("__name__", name), ("service", "api")], t, 0.9);
        let db = |name: &str, t: i64| series(&[("__name__", name), ("service", "db")], t, 0.9);
        for (spread, joins) in [(6 * MIN, false), (MIN, true)] {
            let mut c = cluster();
            c.observe_anomaly(&api("http_request_duration_seconds:p99", 12 * MIN), 0);
            let caller = c.observe_anomaly(&api("http_request_errors:ratio_rate5m", 12 * MIN), 1).unwrap();
            // Three signals on the callee: strewn over 12 minutes they are blips, within one
            // minute they are a failure.
            c.observe_anomaly(&db("pg_up", 12 * MIN - 2 * spread), 2);
            c.observe_anomaly(&db("pg_replication_lag_seconds", 12 * MIN - spread), 3);
            let last = c.observe_anomaly(&db("pg_stat_activity_count", 12 * MIN), 4).unwrap();
            assert_eq!(last.id == caller.id, joins, "spread {spread}: {:?}", last.grouping_reasons);
        }
    }

    #[test]
    fn a_firing_critical_alert_establishes_a_callee_and_a_warning_does_not() {
        for (severity, joins) in [("warning", false), ("critical", true)] {
            let mut c = cluster();
            let api = |name: &str| series(&[("__name__", name), ("service", "api")], 60_000, 0.9);
            c.observe_anomaly(&api("http_request_duration_seconds:p99"), 0);
            let caller = c.observe_anomaly(&api("http_request_errors:ratio_rate5m"), 1).unwrap();
            let mut down = alert("PostgresqlDown", "db", "f1", AlertStatus::Firing);
            down.labels.insert("severity", severity);
            let db = c.observe_alert(&at(down, 30_000), 2).unwrap();
            assert_eq!(db.id == caller.id, joins, "{severity}: {:?}", db.grouping_reasons);
        }
    }

    #[test]
    fn effects_seen_before_their_cause_are_gathered_once_the_cause_is_established() {
        let mut c = cluster();
        // The caller's errors and latency arrive first, as their own incident.
        let api = |name: &str| series(&[("__name__", name), ("service", "api")], 30_000, 0.9);
        c.observe_anomaly(&api("http_request_duration_seconds:p99"), 0);
        let caller = c.observe_anomaly(&api("http_request_errors:ratio_rate5m"), 1).unwrap();
        // The database's signals follow; with its third it is established and takes the caller in.
        let db = db_down(&mut c, 0);
        assert_eq!(db.members.len(), 5, "{:?}", db.grouping_reasons);
        assert_eq!(db.id, caller.id, "{:?}", db.grouping_reasons);
        assert_eq!(c.open_count(), 1);
        assert_eq!(db.probable_causes[0].entity, "service:db", "{:#?}", db.probable_causes);
    }

    #[test]
    fn a_node_and_its_pods_are_one_problem_only_when_their_trouble_is_about_the_same_resource() {
        let mut c = cluster();
        // shop's pod on n3 leaks memory; two minutes later n3's disk starts filling.
        let pod = |name: &str, t: i64| series(&[("__name__", name), ("pod", "shop-9d8e-b2"), ("service", "shop")], t, 0.9);
        let leak = c.observe_anomaly(&pod("container_memory_working_set_bytes", 0), 0).unwrap();
        c.observe_anomaly(&pod("process_resident_memory_bytes", 10_000), 1);
        let mut disk = alert("NodeFilesystemSpaceFillingUp", "node-exporter", "d1", AlertStatus::Firing);
        disk.labels.insert("node", "n3");
        disk.labels.0.remove("service");
        let disk = c.observe_alert(&at(disk, 120_000), 2).unwrap();
        assert_ne!(disk.id, leak.id, "a filling disk does not explain a growing memory: {:?}", disk.grouping_reasons);
        // The node's pressure condition names its resource in a label: still the disk, still apart,
        // though the node now has three signals (enough to merge its pods' incidents when they match).
        c.observe_anomaly(&series(&[("__name__", "kube_node_status_condition"), ("node", "n3"), ("condition", "DiskPressure")], 130_000, 0.9), 3);
        let last = c.observe_anomaly(&series(&[("__name__", "node_filesystem_avail_bytes"), ("node", "n3")], 140_000, 0.9), 4).unwrap();
        assert_eq!(last.id, disk.id);
        assert!(c.get(&leak.id).is_some_and(|i| i.members.len() == 2), "the leak stays its own incident");
        // A node that goes down explains anything on it: its pod's errors join.
        let mut c = cluster();
        let down = c.observe_anomaly(&series(&[("__name__", "kube_node_status_condition"), ("node", "n3"), ("condition", "Ready")], 0, 0.9), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "node_memory_MemAvailable_bytes"), ("node", "n3")], 5_000, 0.9), 1);
        c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], 5_000, 0.9), 1);
        let errors = c.observe_anomaly(&pod("http_request_errors", 10_000), 2).unwrap();
        assert_eq!(errors.id, down.id, "{:?}", errors.grouping_reasons);
    }

    #[test]
    fn a_node_failure_gathers_its_pods_and_the_node_agent_alert() {
        let mut c = cluster();
        let node = c.observe_anomaly(&series(&[("__name__", "kube_node_status_condition"), ("node", "n3"), ("condition", "Ready")], 0, 0.9), 0).unwrap();
        let agent_up = c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], 0, 0.9), 0).unwrap();
        assert_eq!(agent_up.id, node.id);
        c.observe_anomaly(&series(&[("__name__", "kube_node_status_condition"), ("node", "n3"), ("condition", "Ready"), ("status", "unknown")], 0, 0.9), 0);
        let pod = c.observe_anomaly(&series(&[("__name__", "up"), ("pod", "shop-9d8e-b2"), ("service", "shop")], 10_000, 0.9), 1).unwrap();
        assert_eq!(pod.id, node.id, "{:?}", pod.grouping_reasons);
        assert!(pod.grouping_reasons[3].contains("the node it runs on"));
        let mut target_down = alert("TargetDown", "node-exporter", "f9", AlertStatus::Firing);
        target_down.labels.insert("job", "node-exporter");
        let agent = c.observe_alert(&at(target_down, 60_000), 2).unwrap();
        assert_eq!(agent.id, node.id, "{:?}", agent.grouping_reasons);
        assert_eq!(agent.member_entities, ["node:n3", "node:n3", "node:n3", "service:shop", "fleet:node-exporter"]);
        assert_eq!(agent.probable_causes[0].entity, "node:n3", "{:#?}", agent.probable_causes);
        // A node none of the incident's pods runs on is not pulled in by placement.
        let other = c.observe_anomaly(&series(&[("__name__", "node_load1"), ("instance", "n1"), ("job", "node-exporter")], 20_000, 0.9), 3).unwrap();
        assert_ne!(other.id, node.id);
    }

    #[test]
    fn a_node_agent_seen_before_its_node_fails_is_gathered_once_the_node_is_established() {
        let mut c = cluster();
        let node = |pairs: &[(&str, &str)], t: i64| series(&[pairs, &[("node", "n3")]].concat(), t, 0.9);
        // The DaemonSet misses a pod before the node's own signals arrive: an incident of its own.
        let agent = c.observe_anomaly(&series(&[("__name__", "kube_daemonset_status_number_unavailable"), ("daemonset", "node-exporter")], 0, 0.9), 0).unwrap();
        c.observe_anomaly(&node(&[("__name__", "kube_node_status_condition"), ("condition", "Ready")], 10_000), 1);
        let two = c.observe_anomaly(&node(&[("__name__", "kube_node_status_condition"), ("condition", "Ready"), ("status", "unknown")], 10_000), 2).unwrap();
        assert_eq!(c.open_count(), 2, "two signals do not establish the node: {:?}", two.grouping_reasons);
        // The third establishes it, and the agent's incident is gathered in.
        let node = c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], 10_000, 0.9), 3).unwrap();
        assert_eq!(c.open_count(), 1, "{:?}", node.grouping_reasons);
        assert_eq!(node.members.len(), 4);
        assert!(node.grouping_reasons.iter().any(|r| r.contains("runs an agent on node:n3")), "{:?}", node.grouping_reasons);
        assert!(c.take_merged().iter().any(|g| g.id == agent.id));
    }

    #[test]
    fn a_node_agent_that_is_unavailable_goes_with_the_node_that_is_down_not_the_one_whose_disk_fills() {
        let mut c = cluster();
        let on = |node: &str, pairs: &[(&str, &str)], t: i64| series(&[pairs, &[("node", node)]].concat(), t, 0.9);
        // n3 goes down; n1's disk fills, its signals nearer in time to the agent's.
        let down = c.observe_anomaly(&on("n3", &[("__name__", "kube_node_status_condition"), ("condition", "Ready")], 0), 0).unwrap();
        c.observe_anomaly(&on("n3", &[("__name__", "kube_node_status_condition"), ("condition", "Ready"), ("status", "unknown")], 0), 0);
        c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], 0, 0.9), 0);
        let disk = c.observe_anomaly(&on("n1", &[("__name__", "kube_node_status_condition"), ("condition", "DiskPressure")], 50_000), 1).unwrap();
        c.observe_anomaly(&series(&[("__name__", "node_filesystem_avail_bytes"), ("instance", "n1"), ("job", "node-exporter")], 55_000, 0.9), 1);
        c.observe_anomaly(&series(&[("__name__", "node_disk_io_time_seconds"), ("instance", "n1"), ("job", "node-exporter")], 58_000, 0.9), 1);
        assert_ne!(disk.id, down.id);
        let agent = c.observe_anomaly(&series(&[("__name__", "kube_daemonset_status_number_unavailable"), ("daemonset", "node-exporter")], 60_000, 0.9), 2).unwrap();
        assert_eq!(agent.id, down.id, "{:?}", agent.grouping_reasons);
        assert!(agent.grouping_reasons.iter().any(|r| r.contains("runs an agent on node:n3")), "{:?}", agent.grouping_reasons);
    }

    #[test]
    fn a_node_is_established_by_signals_that_arrive_after_its_alerts_though_stamped_before() {
        const T: i64 = 3_600_000;
        let ready = |extra: &[(&'static str, &'static str)]| -> Anomaly {
            series(&[&[("__name__", "kube_node_status_condition"), ("condition", "Ready"), ("node", "n3")], extra].concat(), T + 45_000, 0.9)
        };
        let agent_up = series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], T, 0.9);
        // The node's warnings fire after 15 minutes; its own anomalies are stamped when it failed
        // but confirmed only once their series stopped, some after the alerts, some before them.
        for late_before_alerts in [0, 1, 2] {
            let mut c = cluster();
            // Its pod's trouble first.
            let pod = c.observe_anomaly(&series(&[("__name__", "up"), ("pod", "shop-9d8e-b2"), ("service", "shop")], T, 0.9), 0).unwrap();
            c.observe_anomaly(&series(&[("__name__", "kube_deployment_status_replicas_available"), ("deployment", "shop")], T + 30_000, 0.9), 0);
            let mut late = vec![ready(&[]), ready(&[("status", "unknown")]), agent_up.clone()].into_iter();
            for a in late.by_ref().take(late_before_alerts) {
                c.observe_anomaly(&a, 1);
            }
            for (i, name) in ["KubeNodeNotReady", "KubeNodeUnreachable"].into_iter().enumerate() {
                let mut a = alert(name, "kube-state-metrics", &format!("n{i}"), AlertStatus::Firing);
                a.labels.insert("node", "n3");
                a.labels.insert("severity", "warning");
                c.observe_alert(&at(a, T + 15 * 60_000), 2);
            }
            let mut node = None;
            for a in late {
                node = c.observe_anomaly(&a, 3);
            }
            let node = node.unwrap();
            assert_eq!(c.open_count(), 1, "{late_before_alerts} before the alerts: {:?}", node.grouping_reasons);
            assert!(
                node.members.len() == 7 && node.members.iter().any(|m| m.labels().get("pod") == Some("shop-9d8e-b2")),
                "{:?}",
                node.grouping_reasons
            );
            assert!(c.take_merged().iter().any(|g| g.id == pod.id) || node.id == pod.id);
        }
    }

    #[test]
    fn a_node_with_three_signals_strewn_over_a_quarter_hour_does_not_gather_its_pods() {
        let mut c = cluster();
        let node = |name: &str, t: i64| series(&[("__name__", name), ("instance", "n3"), ("job", "node-exporter")], t, 0.9);
        let first = c.observe_anomaly(&node("instance:node_cpu_steal:rate5m", 0), 0).unwrap();
        // Its pod's CPU trouble two minutes later: an incident of its own.
        let pod = |name: &str| series(&[("__name__", name), ("pod", "shop-9d8e-b2"), ("service", "shop")], 120_000, 0.9);
        c.observe_anomaly(&pod("container_cpu_cfs_throttled_seconds_total"), 1);
        let shop = c.observe_anomaly(&pod("node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate"), 1).unwrap();
        assert_ne!(shop.id, first.id);
        // Two more node blips six minutes apart: three signals, never three within the link window.
        c.observe_anomaly(&node("instance:node_cpu_utilisation:rate5m", 6 * 60_000), 2);
        let last = c.observe_anomaly(&node("instance:node_load1_per_cpu:ratio", 12 * 60_000), 3).unwrap();
        assert_eq!(c.open_count(), 2, "{:?}", last.grouping_reasons);
        assert!(c.take_merged().is_empty());
    }

    #[test]
    fn a_node_failure_does_not_swallow_an_incident_mostly_about_other_things_that_took_in_its_pod() {
        let mut c = cluster();
        // The database fails at 0; its caller api's errors join.
        let mut down = alert("PostgresqlDown", "db", "f1", AlertStatus::Firing);
        down.labels.insert("pod", "db-0");
        let db = c.observe_alert(&at(down, 0), 0).unwrap();
        c.observe_anomaly(&series(&[("__name__", "pg_up"), ("pod", "db-0"), ("service", "db")], 0, 0.9), 0);
        c.observe_anomaly(&series(&[("__name__", "kube_statefulset_status_replicas_ready"), ("statefulset", "db")], 0, 0.9), 0);
        c.observe_alert(&at(alert("ErrorBudgetBurn", "api", "f2", AlertStatus::Firing), 30_000), 1);
        // A minute later node n1, where an api pod runs, fails too: the pod goes down and joins
        // api's trouble in the database's incident before the node is established.
        let pod = c.observe_anomaly(&series(&[("__name__", "up"), ("pod", "api-6b7c-a1"), ("service", "api")], 60_000, 0.9), 2).unwrap();
        assert_eq!(pod.id, db.id, "{:?}", pod.grouping_reasons);
        let on = |pairs: &[(&str, &str)]| series(&[pairs, &[("node", "n1")]].concat(), 60_000, 0.9);
        c.observe_anomaly(&on(&[("__name__", "kube_node_status_condition"), ("condition", "Ready")]), 3);
        c.observe_anomaly(&on(&[("__name__", "kube_node_status_condition"), ("condition", "Ready"), ("status", "unknown")]), 3);
        let node = c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n1"), ("job", "node-exporter")], 60_000, 0.9), 3).unwrap();
        assert_ne!(node.id, db.id, "{:?}", node.grouping_reasons);
        assert_eq!(c.open_count(), 2);
        assert_eq!(c.get(&db.id).map(|i| i.members.len()), Some(5));
    }

    #[test]
    fn a_lone_blip_links_nothing_and_pieces_that_arrived_first_are_merged() {
        let mut c = cluster();
        // One anomaly on a node: a blip. A pod on it misbehaving is not put down to it.
        let blip = c.observe_anomaly(&series(&[("__name__", "node_load1"), ("instance", "n3"), ("job", "node-exporter")], 0, 0.9), 0).unwrap();
        let pod = c.observe_anomaly(&series(&[("__name__", "up"), ("pod", "shop-9d8e-b2"), ("service", "shop")], 5_000, 0.9), 1).unwrap();
        assert_ne!(pod.id, blip.id, "{:?}", pod.grouping_reasons);
        // The node then fails for real: its own signals gather, and the pod's incident, whose
        // trouble started with the node's, is merged in and retired.
        c.observe_anomaly(&series(&[("__name__", "kube_node_status_condition"), ("node", "n3"), ("condition", "Ready")], 10_000, 0.9), 2).unwrap();
        let node = c.observe_anomaly(&series(&[("__name__", "up"), ("instance", "n3"), ("job", "node-exporter")], 10_000, 0.9), 3).unwrap();
        assert_eq!(node.id, blip.id);
        assert_eq!(node.members.len(), 4, "{:?}", node.grouping_reasons);
        assert!(node.grouping_reasons.iter().any(|r| r.contains("merged incident") && r.contains("its pods run on node:n3")), "{:?}", node.grouping_reasons);
        let gone = c.take_merged();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, pod.id);
        assert!(gone[0].members.is_empty() && gone[0].grouping_reasons[0].starts_with("merged into"));
        assert!(c.get(&pod.id).is_none());
        // The merged member is the node incident's now: seen again, it changes nothing new.
        assert!(c.observe_anomaly(&series(&[("__name__", "up"), ("pod", "shop-9d8e-b2"), ("service", "shop")], 20_000, 0.5), 4).is_none());
        assert_eq!(c.open_count(), 1);
    }

    #[test]
    fn resolved_updates_the_member_and_repeats_change_nothing() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        assert!(c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 1).is_none());
        let r = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Resolved), 2).unwrap();
        assert_eq!(r.members.len(), 1);
        assert!(matches!(r.members[0], IncidentMember::Alert { status: AlertStatus::Resolved, .. }));
        assert_eq!(r.severity, Severity::Low);
        // The same series anomalous again is not a new member.
        c.observe_anomaly(&anomaly("a", 1, 0.9), 3).unwrap();
        assert!(c.observe_anomaly(&anomaly("a", 1, 0.99), 4).is_none());
    }

    #[test]
    fn member_and_incident_caps_hold() {
        let mut c = Correlator::new(CorrelatorConfig { max_members: 3, max_open_incidents: 2, ..Default::default() });
        for i in 0..10 {
            c.observe_alert(&alert("X", "a", &format!("f{i}"), AlertStatus::Firing), i);
        }
        let inc = c.observe_alert(&alert("X", "b", "g", AlertStatus::Firing), 20).unwrap();
        let first = c.open.values().find(|o| o.incident.affected_services == ["a"]).unwrap();
        assert_eq!(first.incident.members.len(), 3);
        assert_eq!(first.dropped_members, 7);
        c.observe_alert(&alert("X", "c", "h", AlertStatus::Firing), 30);
        assert_eq!(c.open_count(), 2);
        let by_age: Vec<_> = c.by_age.iter().cloned().collect();
        let mut open: Vec<_> = c.open.values().map(|o| (o.incident.updated_ms, o.incident.id.clone())).collect();
        open.sort();
        assert_eq!(by_age, open, "the age index holds exactly the open incidents at their last change");
        assert!(c.get(&inc.id).is_some(), "the least recently changed incident was closed, not the newer one");
    }

    #[test]
    fn ids_are_deterministic() {
        let run = || {
            let mut c = Correlator::new(CorrelatorConfig::default());
            c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 42).unwrap().id
        };
        assert_eq!(run(), run());
        assert!(run().0.starts_with("inc-"));
    }

    #[test]
    fn idle_incidents_close() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        c.observe_alert(&alert("X", "b", "g1", AlertStatus::Firing), 0).unwrap();
        assert!(c.close_idle(1000).is_empty());
        // b changes later, so it is not idle when a is.
        let b = c.observe_alert(&alert("X", "b", "g2", AlertStatus::Firing), 10 * 60 * 1000).unwrap();
        assert_eq!(c.close_idle(15 * 60 * 1000 + 1), vec![a.id]);
        assert!(c.get(&b.id).is_some());
        assert_eq!(c.close_idle(25 * 60 * 1000 + 1), vec![b.id]);
        assert!(c.by_age.is_empty());
    }
}
