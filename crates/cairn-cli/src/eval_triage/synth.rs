//! Incident kinds the development corpus does not have, laid over its recordings (`--synth`), to
//! see how the triage does on kinds it was not built on. The held-back set has other kinds; these
//! are not it, but a triage that only knows the corpus's six fails here first.
//!
//! A base recording's own incident is taken out first ([`clear`]): from ten minutes before its
//! onset, every series except the labelled noise repeats what it sent an hour earlier (the
//! corpus's cycle is one hour), and the incident's alerts are dropped. The noise stays, so noise
//! kept out still means something. Then one kind is laid over the same onset ([`Kind`]): the series
//! it changes, the series that stop (labelled neutral, as the corpus labels a stopped exporter's),
//! and the alerts a kube-prometheus install would fire, under the names of the public mixins and
//! awesome-prometheus-alerts, delivered by an Alertmanager pair at the next notification. The
//! entities are found from the recording (roles and edges in `topology.json`, pods from
//! `truth.json`, nodes from `kube_pod_info`), never named here, so the kinds also run on a renamed
//! corpus. A [`storm`] lays several kinds over one recording, minutes apart, each on services the
//! others did not touch.
//!
//! | kind | what happens | root | right action |
//! |---|---|---|---|
//! | `config-push` | a service's ConfigMap changes and its pods reload it; a fifth of its requests fail | the service | `rollback_deploy` |
//! | `cache-down` | the cache (role `cache`) stops answering; its callers fail and slow down | the cache | `restart_process` |
//! | `dns-down` | the DNS service (role `dns`) is down; the DNS probe fails, its callers fail | the DNS service | `restart_process` |
//! | `noisy-neighbour` | a node's CPU is stolen by its hypervisor; the pods on it slow down | the node | `drain_node` |
//! | `cert-expired` | a certificate is not renewed; its HTTPS probe fails | the certificate's service | none (advisory) |
//! | `crashloop-release` | a release's first new pod crash-loops, so its rollout stalls (a new ReplicaSet, generation +1, one replica short) | the service | `rollback_deploy` |
//! | `queue-backlog` | a queue's consumer (a caller of the role-`queue` service) falls behind: its CPU saturates and the queue grows | the consumer | `scale_out` |

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use super::strs;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The name of what is laid over `base` (a kind's name, or `storm`): `kind@base`.
pub fn laid_name(what: &str, base: &str) -> String {
    format!("{what}@{base}")
}

/// One recording as `eval triage` replays it.
pub struct Recording {
    pub name: String,
    pub truth: Value,
    pub topology: Value,
    pub lines: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    ConfigPush,
    CacheDown,
    DnsDown,
    NoisyNeighbour,
    CertExpired,
    QueueBacklog,
    #[value(name = "crashloop-release")]
    CrashLoopRelease,
}

impl Kind {
    pub const ALL: [Kind; 7] =
        [Kind::ConfigPush, Kind::CacheDown, Kind::DnsDown, Kind::NoisyNeighbour, Kind::CertExpired, Kind::QueueBacklog, Kind::CrashLoopRelease];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigPush => "config-push",
            Kind::CacheDown => "cache-down",
            Kind::DnsDown => "dns-down",
            Kind::NoisyNeighbour => "noisy-neighbour",
            Kind::CertExpired => "cert-expired",
            Kind::QueueBacklog => "queue-backlog",
            Kind::CrashLoopRelease => "crashloop-release",
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
/// How long before the base incident's onset its trace is taken out.
const CLEAR_LEAD_MS: i64 = 10 * 60_000;
/// Alertmanager's group wait before a new alert's first notification.
const GROUP_WAIT_MS: i64 = 30_000;
const MIN: i64 = 60_000;
/// How far apart a storm's incidents begin (the corpus's are a few minutes apart).
const STORM_SPACING_MS: i64 = 3 * MIN;
/// The kinds a storm lays together: they touch disjoint services.
pub const STORM: [Kind; 4] = [Kind::CacheDown, Kind::QueueBacklog, Kind::CrashLoopRelease, Kind::ConfigPush];

/// A series' id as `truth.json` writes it: `series:name{label="value",…}`, labels sorted.
pub fn series_id(labels: &Map<String, Value>) -> String {
    let mut pairs: Vec<(&String, &str)> = labels.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| (k, v.as_str().unwrap_or_default())).collect();
    pairs.sort();
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("series:{}{{{}}}", labels.get("__name__").and_then(Value::as_str).unwrap_or_default(), inner.join(","))
}

fn series_of(line: &mut Value) -> &mut [Value] {
    line["series"].as_array_mut().map(Vec::as_mut_slice).unwrap_or_default()
}

fn is_remote_write(line: &Value) -> bool {
    line["kind"] == "remote_write"
}

/// Takes the recording's own incidents out (see the module doc) and returns the first onset.
pub fn clear(rec: &mut Recording) -> Result<i64> {
    let truths = rec.truth["incidents"].as_array().cloned().unwrap_or_default();
    let onset = truths.iter().filter_map(|t| t["onset_offset_ms"].as_i64()).min().context("the base recording has no incident")?;
    let from = onset - CLEAR_LEAD_MS;
    if from < HOUR_MS {
        bail!("{}: the onset is too early to repeat the hour before it", rec.name);
    }
    let noise: BTreeSet<String> = strs(&rec.truth["noise"]).into_iter().collect();
    let gone: BTreeSet<String> = truths.iter().flat_map(|t| strs(&t["members"])).filter(|m| m.starts_with("alert:")).collect();
    // What every series sent, by time, to repeat it an hour later.
    let mut sent: HashMap<String, HashMap<i64, Value>> = HashMap::new();
    for line in rec.lines.iter_mut().filter(|l| is_remote_write(l)) {
        for s in series_of(line) {
            let id = series_id(s["labels"].as_object().context("series without labels")?);
            let at = sent.entry(id).or_default();
            for p in s["samples"].as_array().map(Vec::as_slice).unwrap_or_default() {
                at.insert(p[0].as_i64().unwrap_or_default(), p[1].clone());
            }
        }
    }
    for line in rec.lines.iter_mut().filter(|l| is_remote_write(l)) {
        for s in series_of(line) {
            let id = series_id(s["labels"].as_object().context("series without labels")?);
            if noise.contains(&id) {
                continue;
            }
            let earlier = &sent[&id];
            for p in s["samples"].as_array_mut().map(Vec::as_mut_slice).unwrap_or_default() {
                let t = p[0].as_i64().unwrap_or_default();
                if t >= from
                    && let Some(v) = earlier.get(&(t - HOUR_MS))
                {
                    p[1] = v.clone();
                }
            }
        }
    }
    for line in rec.lines.iter_mut().filter(|l| l["kind"] == "alertmanager") {
        if let Some(alerts) = line["payload"]["alerts"].as_array_mut() {
            alerts.retain(|a| !gone.contains(&format!("alert:{}", a["fingerprint"].as_str().unwrap_or_default())));
        }
    }
    rec.lines.retain(|l| l["kind"] != "alertmanager" || l["payload"]["alerts"].as_array().is_some_and(|a| !a.is_empty()));
    if let Some(alerts) = rec.truth["alerts"].as_object_mut() {
        alerts.retain(|fp, _| !gone.contains(&format!("alert:{fp}")));
    }
    rec.truth["incidents"] = json!([]);
    Ok(onset)
}

fn ramp(ms: i64, over: i64) -> f64 {
    (ms as f64 / over.max(1) as f64).clamp(0.0, 1.0)
}

/// Alertmanager's fingerprint: FNV-1a (64 bits) over the sorted label names and values.
fn fingerprint(labels: &Map<String, Value>) -> String {
    let mut pairs: Vec<(&String, &str)> = labels.iter().map(|(k, v)| (k, v.as_str().unwrap_or_default())).collect();
    pairs.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in pairs {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// What the kinds look up in the recording.
struct Facts {
    cluster: String,
    namespace: String,
    /// Service name → role (`topology.json`).
    roles: BTreeMap<String, String>,
    /// (client, server) edges.
    edges: Vec<(String, String)>,
    /// Pod → service (`truth.json` `pod_service`).
    pod_service: BTreeMap<String, String>,
    /// Pod → node (`kube_pod_info`).
    pod_node: BTreeMap<String, String>,
    /// Every series' labels, once.
    series: Vec<Map<String, Value>>,
    /// Entities the labelled noise is on: the corpus keeps incidents off them, and so do the kinds.
    noisy: BTreeSet<String>,
    /// Entities a storm's earlier kinds touched.
    used: BTreeSet<String>,
}

impl Facts {
    /// What `rec` (cleared, its incident's onset at `onset`) shows.
    fn of(rec: &Recording, onset: i64) -> Facts {
        let roles = rec.topology["services"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["role"].as_str().unwrap_or_default().to_string())))
            .collect();
        let edges = rec.topology["edges"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| Some((e["client"].as_str()?.to_string(), e["server"].as_str()?.to_string())))
            .collect();
        let pod_service = rec.truth["pod_service"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        let mut series = Vec::new();
        let mut pod_node = BTreeMap::new();
        for line in rec.lines.iter().filter(|l| is_remote_write(l)) {
            for s in line["series"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let Some(labels) = s["labels"].as_object() else { continue };
                if seen.insert(series_id(labels)) {
                    if labels.get("__name__").and_then(Value::as_str) == Some("kube_pod_info")
                        && let (Some(p), Some(n)) = (labels.get("pod").and_then(Value::as_str), labels.get("node").and_then(Value::as_str))
                    {
                        pod_node.insert(p.to_string(), n.to_string());
                    }
                    series.push(labels.clone());
                }
            }
        }
        // The noise near the onset: its anomalies, and alerts that began in the hour before
        // (not the month-old ones that fire throughout).
        let mut began: HashMap<String, i64> = HashMap::new();
        for l in rec.lines.iter().filter(|l| l["kind"] == "alertmanager") {
            for a in l["payload"]["alerts"].as_array().map(Vec::as_slice).unwrap_or_default() {
                began.insert(format!("alert:{}", a["fingerprint"].as_str().unwrap_or_default()), a["startsAt_offset_ms"].as_i64().unwrap_or_default());
            }
        }
        let recent = |id: &String| !id.starts_with("alert:") || began.get(id).is_some_and(|t| *t >= onset - HOUR_MS);
        let noisy = strs(&rec.truth["noise"]).iter().filter(|id| recent(id)).filter_map(|id| rec.truth["owners"][id].as_str().map(String::from)).collect();
        Facts {
            noisy,
            used: BTreeSet::new(),
            cluster: rec.truth["cluster"].as_str().unwrap_or_default().into(),
            namespace: rec.truth["namespace"].as_str().unwrap_or_default().into(),
            roles,
            edges,
            pod_service,
            pod_node,
            series,
        }
    }

    fn with_role(&self, role: &str) -> Vec<String> {
        self.roles.iter().filter(|(_, r)| *r == role).map(|(s, _)| s.clone()).collect()
    }

    fn callers(&self, server: &str) -> Vec<String> {
        let mut c: Vec<String> = self.edges.iter().filter(|(_, s)| s == server).map(|(c, _)| c.clone()).collect();
        c.sort();
        c.dedup();
        c
    }

    fn pods(&self, service: &str) -> Vec<String> {
        self.pod_service.iter().filter(|(_, s)| *s == service).map(|(p, _)| p.clone()).collect()
    }

    fn labels_where(&self, name: &str, pick: impl Fn(&Map<String, Value>) -> bool) -> Vec<Map<String, Value>> {
        self.series.iter().filter(|l| l.get("__name__").and_then(Value::as_str) == Some(name) && pick(l)).cloned().collect()
    }
}

fn label<'a>(l: &'a Map<String, Value>, k: &str) -> &'a str {
    l.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn named(name: &'static str) -> impl Fn(&Map<String, Value>) -> bool {
    move |l| label(l, "__name__") == name
}

/// One kind being laid over a cleared recording.
struct Lay<'r> {
    rec: &'r mut Recording,
    facts: &'r Facts,
    onset: i64,
    members: BTreeSet<String>,
    neutral: BTreeSet<String>,
    /// When each member series' change began.
    changed_at: Vec<i64>,
    /// (fires at, labels, owner).
    alerts: Vec<(i64, Map<String, Value>, String)>,
}

impl Lay<'_> {
    /// Calls `f` with the id and the series object of every series `pick` selects, in every
    /// remote_write line that carries it.
    fn each(&mut self, pick: impl Fn(&Map<String, Value>) -> bool, mut f: impl FnMut(String, &mut Value)) {
        for line in self.rec.lines.iter_mut().filter(|l| is_remote_write(l)) {
            for s in series_of(line) {
                let Some(labels) = s["labels"].as_object().filter(|l| pick(l)) else { continue };
                f(series_id(labels), s);
            }
        }
    }

    /// From `onset + after` on, every series `pick` selects sends `f(ms since then, value)`; they
    /// are members.
    fn shape(&mut self, pick: impl Fn(&Map<String, Value>) -> bool, after: i64, f: impl Fn(i64, f64) -> f64) -> usize {
        let start = self.onset + after;
        let mut touched = BTreeSet::new();
        self.each(pick, |id, s| {
            for p in s["samples"].as_array_mut().map(Vec::as_mut_slice).unwrap_or_default() {
                let t = p[0].as_i64().unwrap_or_default();
                if let (true, Some(v)) = (t >= start, p[1].as_f64()) {
                    p[1] = json!(f(t - start, v));
                }
            }
            touched.insert(id);
        });
        let n = touched.len();
        self.changed_at.extend(std::iter::repeat_n(start, n));
        self.members.extend(touched);
        n
    }

    /// At `onset + after` every series `pick` selects sends a staleness marker and then nothing,
    /// as when its exporter goes away; they are neutral.
    fn stop(&mut self, pick: impl Fn(&Map<String, Value>) -> bool, after: i64) -> usize {
        let start = self.onset + after;
        let mut marked: BTreeSet<String> = BTreeSet::new();
        let mut neutral = BTreeSet::new();
        self.each(pick, |id, s| {
            let Some(samples) = s["samples"].as_array_mut() else { return };
            if let Some(i) = samples.iter().position(|p| p[0].as_i64().is_some_and(|t| t >= start)) {
                samples.truncate(i);
                if marked.insert(id.clone()) {
                    samples.push(json!([start, "stale"]));
                }
            }
            neutral.insert(id);
        });
        self.neutral.extend(neutral);
        marked.len()
    }

    /// A series that begins at `onset + after` (a new pod's), sending `f(ms since then)` every
    /// step with the remote_write ticks; a member when `member`.
    fn begin(&mut self, labels: Map<String, Value>, after: i64, member: bool, f: impl Fn(i64) -> f64) {
        let start = self.onset + after;
        let step = self.rec.truth["step_ms"].as_i64().unwrap_or(15_000).max(1);
        let mut prev_tick = i64::MIN;
        let mut last_line_tick = None;
        for line in self.rec.lines.iter_mut().filter(|l| is_remote_write(l)) {
            let tick = line["offset_ms"].as_i64().unwrap_or_default();
            // The first line of each tick carries the new series' samples since the last tick.
            if last_line_tick == Some(tick) {
                continue;
            }
            last_line_tick = Some(tick);
            let from = prev_tick.saturating_add(1).max(start);
            prev_tick = tick;
            let first = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
            let samples: Vec<Value> = (0..).map(|k| first + k * step).take_while(|t| *t <= tick).map(|t| json!([t, f(t - start)])).collect();
            if !samples.is_empty()
                && let Some(series) = line["series"].as_array_mut()
            {
                series.push(json!({"labels": labels, "samples": samples}));
            }
        }
        let id = series_id(&labels);
        if member {
            self.changed_at.push(start);
            self.members.insert(id.clone());
        }
        if let Some(o) = self.rec.truth["owners"].as_object_mut()
            && let Some(svc) = labels.get("service").or_else(|| labels.get("deployment")).and_then(Value::as_str)
        {
            o.entry(id).or_insert_with(|| svc.into());
        }
    }

    /// An alert firing from `onset + after`, with the cluster's and Prometheus's labels added.
    fn alert(&mut self, after: i64, name: &str, severity: &str, labels: &[(&str, &str)], owner: &str) {
        let mut l = Map::new();
        l.insert("alertname".into(), name.into());
        l.insert("severity".into(), severity.into());
        for (k, v) in labels {
            l.insert((*k).into(), (*v).into());
        }
        l.insert("cluster".into(), self.facts.cluster.clone().into());
        l.insert("prometheus".into(), "monitoring/k8s".into());
        self.alerts.push((self.onset + after, l, owner.into()));
    }

    /// Delivers the alerts and writes the incident into `truth.json`.
    fn finish(self, scenario: &str, root: &str, action: &str, min_tier: Option<u32>) -> Result<()> {
        let Lay { rec, onset, members, neutral, changed_at, alerts, .. } = self;
        if members.is_empty() {
            bail!("{scenario} on {}: no series to change", rec.name);
        }
        // Notifications go out with the remote_write ticks; the last one repeats every firing alert.
        let ticks: BTreeSet<i64> = rec.lines.iter().filter(|l| is_remote_write(l)).filter_map(|l| l["offset_ms"].as_i64()).collect();
        let last_tick = *ticks.last().context("no remote_write lines")?;
        let mut fps = Vec::new();
        let mut first_delivery = Vec::new();
        for (fires, labels, owner) in alerts {
            let fp = fingerprint(&labels);
            let tick = *ticks.range(fires + GROUP_WAIT_MS..).next().unwrap_or(&last_tick);
            first_delivery.push(tick);
            let name = labels["alertname"].clone();
            let alert = json!({"status": "firing", "labels": labels, "annotations": {"summary": format!("{} ({scenario})", name.as_str().unwrap_or_default())},
                "startsAt_offset_ms": fires, "endsAt_offset_ms": null, "generatorURL": "http://prometheus.local:9090/graph", "fingerprint": fp});
            let payload = json!({"version": "4", "groupKey": format!("{{}}:{{alertname=\"{}\"}}", name.as_str().unwrap_or_default()), "truncatedAlerts": 0,
                "status": "firing", "receiver": "cairn", "groupLabels": {"alertname": name}, "commonLabels": labels, "commonAnnotations": {},
                "externalURL": "http://alertmanager.local:9093", "alerts": [alert]});
            for at in BTreeSet::from([tick, last_tick]) {
                // Two Alertmanagers, as in the corpus: each notifies.
                for _ in 0..2 {
                    rec.lines.push(json!({"offset_ms": at, "kind": "alertmanager", "payload": payload}));
                }
            }
            if let Some(a) = rec.truth["alerts"].as_object_mut() {
                a.insert(fp.clone(), json!({"alertname": name, "labels": labels, "owner": owner}));
            }
            if let Some(o) = rec.truth["owners"].as_object_mut() {
                o.insert(format!("alert:{fp}"), owner.into());
            }
            fps.push(format!("alert:{fp}"));
        }
        // Stable: what was sent at a time is sent before what is added at that time.
        rec.lines.sort_by_key(|l| l["offset_ms"].as_i64().unwrap_or_default());
        // The last new information: an alert's first notification, or the first tick carrying a
        // member series' changed samples.
        let last_signal = first_delivery
            .iter()
            .copied()
            .chain(changed_at.iter().map(|t| *ticks.range(t..).next().unwrap_or(&last_tick)))
            .max()
            .unwrap_or(last_tick);
        let all: Vec<String> = fps.into_iter().chain(members.into_iter().filter(|m| !neutral.contains(m))).collect();
        let incident = json!({
            "scenario": scenario, "root": root, "root_kind": if root.starts_with("node:") { "node" } else { "service" },
            "action": action, "min_tier": min_tier, "onset_offset_ms": onset,
            "last_signal_offset_ms": last_signal,
            "members": all, "neutral": neutral.into_iter().collect::<Vec<_>>(),
        });
        rec.truth["incidents"].as_array_mut().context("truth has no incidents list")?.push(incident);
        Ok(())
    }
}

/// `base` with its incident taken out and `kind` laid over its onset; `pick` chooses among the
/// candidate entities (a second base recording gets another service or node).
pub fn synthesise(mut base: Recording, kind: Kind, pick: usize) -> Result<Recording> {
    let onset = clear(&mut base)?;
    let facts = Facts::of(&base, onset);
    base.name = laid_name(kind.name(), &base.name);
    base.truth["mode"] = "isolated".into();
    lay_kind(&mut base, &facts, onset, kind, pick)?;
    place_last_lines(&mut base);
    Ok(base)
}

/// Each laid incident's `last_signal_line`: the last line sent at or before its last new signal.
/// Worked out once everything is laid, since each kind's alerts move the lines after them.
fn place_last_lines(rec: &mut Recording) {
    let offsets: Vec<i64> = rec.lines.iter().map(|l| l["offset_ms"].as_i64().unwrap_or_default()).collect();
    for inc in rec.truth["incidents"].as_array_mut().map(Vec::as_mut_slice).unwrap_or_default() {
        let last = inc["last_signal_offset_ms"].as_i64().unwrap_or(i64::MAX);
        inc["last_signal_line"] = offsets.iter().rposition(|o| *o <= last).unwrap_or(0).into();
    }
}

/// A storm: `kinds` laid over one cleared recording at onsets [`STORM_SPACING_MS`] apart, each on
/// entities the ones before did not touch (as the corpus's storms are).
pub fn storm(mut base: Recording, kinds: &[Kind], pick: usize) -> Result<Recording> {
    let onset = clear(&mut base)?;
    let mut facts = Facts::of(&base, onset);
    base.name = laid_name("storm", &base.name);
    base.truth["mode"] = "storm".into();
    for (k, &kind) in kinds.iter().enumerate() {
        lay_kind(&mut base, &facts, onset + k as i64 * STORM_SPACING_MS, kind, pick)?;
        let laid = base.truth["incidents"].as_array().and_then(|a| a.last()).map(|i| strs(&i["members"])).unwrap_or_default();
        facts.used.extend(laid.iter().filter_map(|m| base.truth["owners"][m].as_str().map(String::from)));
    }
    place_last_lines(&mut base);
    Ok(base)
}

/// Lays `kind` over `rec` at `onset`, on entities `facts` has not marked used.
fn lay_kind(rec: &mut Recording, facts: &Facts, onset: i64, kind: Kind, pick: usize) -> Result<()> {
    let mut lay = Lay { rec, facts, onset, members: BTreeSet::new(), neutral: BTreeSet::new(), changed_at: Vec::new(), alerts: Vec::new() };
    let ns = facts.namespace.as_str();
    let choose = |v: Vec<String>, what: &str| -> Result<String> {
        let v: Vec<String> = v.into_iter().filter(|e| !facts.used.contains(e) && !facts.used.contains(&format!("node:{e}"))).collect();
        if v.is_empty() {
            bail!("{}: no {what} in this recording", kind.name());
        }
        Ok(v[pick % v.len()].clone())
    };
    match kind {
        Kind::ConfigPush => {
            // An API others call, with a ConfigMap of its own.
            let candidates = facts
                .with_role("api")
                .into_iter()
                .filter(|s| !facts.noisy.contains(s) && !facts.callers(s).is_empty())
                .filter(|s| !facts.labels_where("kube_configmap_metadata_resource_version", |l| label(l, "configmap") == format!("{s}-config")).is_empty())
                .collect();
            let svc = choose(candidates, "API with a ConfigMap and callers")?;
            let cm = format!("{svc}-config");
            lay.shape(|l| label(l, "__name__") == "kube_configmap_metadata_resource_version" && label(l, "configmap") == cm, 0, |_, v| v + 1.0);
            // The reloader restarts the pods' config one after the other; its value is the reload's
            // time in seconds from the recording's start (the corpus shifts it to the server's clock).
            let pods = facts.pods(&svc);
            for (i, pod) in pods.iter().enumerate() {
                let at = 20_000 + 10_000 * i as i64;
                let reload_s = (onset + at) as f64 / 1000.0;
                lay.shape(|l| label(l, "__name__") == "reloader_last_reload_success_timestamp_seconds" && label(l, "pod") == pod, at, move |_, _| reload_s);
            }
            let errors = |l: &Map<String, Value>| label(l, "service") == svc && label(l, "__name__").ends_with("http_request_errors:ratio_rate5m");
            lay.shape(errors, 30_000, |ms, v| v + 0.2 * ramp(ms, 2 * MIN));
            let slow = |l: &Map<String, Value>| label(l, "service") == svc && label(l, "__name__").ends_with("http_request_duration_seconds:p99");
            lay.shape(slow, 30_000, |ms, v| v * (1.0 + 0.5 * ramp(ms, 2 * MIN)));
            let slo = format!("{svc}-availability");
            lay.alert(150_000, "ErrorBudgetBurn", "critical", &[("service", &svc), ("namespace", ns), ("slo", &slo), ("long", "1h"), ("short", "5m"), ("job", &svc)], &svc);
            lay.alert(5 * MIN, "HighRequestLatency", "warning", &[("service", &svc), ("namespace", ns), ("job", &svc)], &svc);
            lay.finish(kind.name(), &svc, "rollback_deploy", Some(2))?;
        }
        Kind::CacheDown => {
            let cache = choose(facts.with_role("cache"), "cache")?;
            let redis = |l: &Map<String, Value>| label(l, "service") == cache && label(l, "__name__").starts_with("redis_");
            lay.shape(|l| redis(l) && label(l, "__name__") == "redis_up", 0, |_, _| 0.0);
            lay.stop(|l| redis(l) && label(l, "__name__") != "redis_up", 15_000);
            let pods = facts.pods(&cache);
            lay.shape(|l| label(l, "__name__") == "kube_pod_status_ready" && pods.iter().any(|p| p == label(l, "pod")), 30_000, |_, v| if v > 0.5 { 0.0 } else { 1.0 });
            lay.shape(|l| label(l, "__name__") == "kube_statefulset_status_replicas_ready" && label(l, "statefulset") == cache, 30_000, |_, v| (v - 1.0).max(0.0));
            let callers = facts.callers(&cache);
            let hit = |l: &Map<String, Value>| callers.iter().any(|c| c == label(l, "service"));
            lay.shape(|l| hit(l) && label(l, "__name__").ends_with("http_request_errors:ratio_rate5m"), 30_000, |ms, v| v + 0.25 * ramp(ms, MIN));
            lay.shape(|l| hit(l) && label(l, "__name__").ends_with("http_request_duration_seconds:p99"), 30_000, |ms, v| v * (1.0 + 2.0 * ramp(ms, MIN)));
            let exporter = facts.labels_where("redis_up", |l| label(l, "service") == cache);
            let (instance, pod) = exporter.first().map(|l| (label(l, "instance").to_string(), label(l, "pod").to_string())).unwrap_or_default();
            lay.alert(MIN, "RedisDown", "critical", &[("service", &cache), ("namespace", ns), ("job", &cache), ("instance", &instance), ("pod", &pod)], &cache);
            let ksm = [("job", "kube-state-metrics"), ("container", "kube-state-metrics"), ("namespace", ns)];
            let mut sts = ksm.to_vec();
            sts.push(("statefulset", &cache));
            lay.alert(15 * MIN, "KubeStatefulSetReplicasMismatch", "warning", &sts, &cache);
            if let Some(c) = callers.first() {
                let slo = format!("{c}-availability");
                lay.alert(150_000, "ErrorBudgetBurn", "critical", &[("service", c), ("namespace", ns), ("slo", &slo), ("long", "1h"), ("short", "5m"), ("job", c)], c);
            }
            if let Some(c) = callers.get(1) {
                lay.alert(5 * MIN, "HighRequestLatency", "warning", &[("service", c), ("namespace", ns), ("job", c)], c);
            }
            lay.finish(kind.name(), &cache, "restart_process", Some(0))?;
        }
        Kind::DnsDown => {
            let dns = choose(facts.with_role("dns"), "DNS service")?;
            lay.shape(|l| label(l, "__name__") == "up" && label(l, "service") == dns, 0, |_, _| 0.0);
            lay.stop(|l| label(l, "service") == dns && label(l, "__name__").contains("coredns_"), 0);
            let pods = facts.pods(&dns);
            lay.shape(|l| label(l, "__name__") == "kube_pod_status_ready" && pods.iter().any(|p| p == label(l, "pod")), 30_000, |_, v| if v > 0.5 { 0.0 } else { 1.0 });
            lay.shape(|l| label(l, "__name__") == "kube_deployment_status_replicas_available" && label(l, "deployment") == dns, 30_000, |_, v| (v - 1.0).max(0.0));
            let probes = facts.labels_where("probe_success", |l| label(l, "module").starts_with("dns"));
            lay.shape(|l| named("probe_success")(l) && label(l, "module").starts_with("dns"), 0, |_, _| 0.0);
            let callers = facts.callers(&dns);
            let hit = |l: &Map<String, Value>| callers.iter().any(|c| c == label(l, "service"));
            lay.shape(|l| hit(l) && label(l, "__name__").ends_with("http_request_errors:ratio_rate5m"), 30_000, |ms, v| v + 0.3 * ramp(ms, MIN));
            lay.shape(|l| hit(l) && label(l, "__name__").ends_with("http_request_duration_seconds:p99"), 30_000, |ms, v| v * (1.0 + ramp(ms, MIN)));
            lay.alert(MIN, "CoreDNSDown", "critical", &[("job", &dns), ("namespace", ns)], &dns);
            lay.alert(10 * MIN, "TargetDown", "warning", &[("job", &dns), ("service", &dns), ("namespace", ns)], &dns);
            for p in &probes {
                lay.alert(MIN, "BlackboxProbeFailed", "critical", &[("instance", label(p, "instance")), ("job", label(p, "job")), ("module", label(p, "module")), ("namespace", label(p, "namespace"))], &dns);
            }
            if let Some(c) = callers.first() {
                let slo = format!("{c}-availability");
                lay.alert(150_000, "ErrorBudgetBurn", "critical", &[("service", c), ("namespace", ns), ("slo", &slo), ("long", "1h"), ("short", "5m"), ("job", c)], c);
            }
            let mut dep = vec![("job", "kube-state-metrics"), ("container", "kube-state-metrics"), ("namespace", ns)];
            dep.push(("deployment", &dns));
            lay.alert(15 * MIN, "KubeDeploymentReplicasMismatch", "warning", &dep, &dns);
            lay.finish(kind.name(), &dns, "restart_process", Some(0))?;
        }
        Kind::NoisyNeighbour => {
            // A node that runs pods of services that answer HTTP, is not itself under the labelled
            // noise, and hosts as few services under it as any (in this busy cluster every node
            // hosts one; the corpus's own node failures do too).
            let mut per_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (pod, node) in &facts.pod_node {
                if let Some(svc) = facts.pod_service.get(pod)
                    && !facts.labels_where("instance:http_request_duration_seconds:p99", |l| label(l, "pod") == pod).is_empty()
                {
                    per_node.entry(node).or_default().insert(svc);
                }
            }
            let noisy_on = |s: &BTreeSet<&str>| s.iter().filter(|s| facts.noisy.contains(**s)).count();
            let quiet: Vec<(&str, usize)> =
                per_node.iter().filter(|(n, _)| !facts.noisy.contains(&format!("node:{n}"))).map(|(n, s)| (*n, noisy_on(s))).collect();
            let least = quiet.iter().map(|(_, k)| *k).min().unwrap_or_default();
            let nodes = quiet.iter().filter(|(_, k)| *k == least).map(|(n, _)| n.to_string()).collect();
            let node = choose(nodes, "node with pods of HTTP services")?;
            let on_node = |l: &Map<String, Value>| label(l, "instance") == node && label(l, "job") == "node-exporter";
            lay.shape(|l| on_node(l) && label(l, "__name__") == "instance:node_cpu_steal:rate5m", 0, |ms, v| v + 0.35 * ramp(ms, 2 * MIN));
            lay.shape(|l| on_node(l) && label(l, "__name__") == "instance:node_load1_per_cpu:ratio", 0, |ms, v| v * (1.0 + 1.5 * ramp(ms, 2 * MIN)));
            let pods: Vec<&String> = facts.pod_node.iter().filter(|(_, n)| **n == node).map(|(p, _)| p).collect();
            lay.shape(|l| label(l, "__name__") == "instance:http_request_duration_seconds:p99" && pods.iter().any(|p| *p == label(l, "pod")), MIN, |ms, v| v * (1.0 + 1.5 * ramp(ms, 2 * MIN)));
            let exporter = facts.labels_where("instance:node_cpu_steal:rate5m", |l| label(l, "instance") == node);
            let pod = exporter.first().map(|l| label(l, "pod").to_string()).unwrap_or_default();
            let root = format!("node:{node}");
            lay.alert(5 * MIN, "HostCpuStealNoisyNeighbor", "warning", &[("instance", &node), ("job", "node-exporter"), ("namespace", "monitoring"), ("pod", &pod), ("service", "node-exporter")], &root);
            lay.finish(kind.name(), &root, "drain_node", Some(2))?;
        }
        Kind::CertExpired => {
            // A certificate with an HTTPS probe on its host (`accounts-example-org` and
            // `https://accounts.example.org/…`).
            let probes = facts.labels_where("probe_success", |l| label(l, "module") == "http_2xx");
            let host_probe = |cert: &str| -> Option<Map<String, Value>> {
                let host = cert.replace('-', ".");
                probes.iter().find(|p| label(p, "instance").split('/').nth(2) == Some(host.as_str())).cloned()
            };
            let certs: Vec<String> = facts
                .labels_where("certmanager_certificate_ready_status", |l| label(l, "condition") == "True")
                .iter()
                .map(|l| label(l, "name").to_string())
                .filter(|c| host_probe(c).is_some())
                .collect();
            let cert = choose(certs, "certificate with a probe")?;
            let probe = host_probe(&cert).context("probe")?;
            let ready = facts.labels_where("certmanager_certificate_ready_status", |l| label(l, "name") == cert && label(l, "condition") == "True");
            let owner = ready
                .first()
                .and_then(|l| base_owner(&lay.rec.truth, &series_id(l)))
                .context("the certificate's series has no owner in truth.json")?;
            lay.shape(|l| label(l, "__name__") == "certmanager_certificate_ready_status" && label(l, "name") == cert, 0, |_, v| if label_is_true(v) { 0.0 } else { 1.0 });
            let instance = label(&probe, "instance").to_string();
            lay.shape(|l| label(l, "__name__") == "probe_success" && label(l, "instance") == instance, 0, |_, _| 0.0);
            let cm = [("name", cert.as_str()), ("exported_namespace", ns), ("namespace", "cert-manager"), ("job", "cert-manager"), ("service", "cert-manager"), ("condition", "False")];
            lay.alert(MIN, "CertManagerCertNotReady", "critical", &cm, &owner);
            let pl = [("instance", instance.as_str()), ("job", label(&probe, "job")), ("module", "http_2xx"), ("namespace", label(&probe, "namespace"))];
            lay.alert(MIN, "BlackboxProbeFailed", "critical", &pl, &owner);
            lay.alert(MIN, "BlackboxSslCertificateExpired", "critical", &pl, &owner);
            lay.finish(kind.name(), &owner, "none", None)?;
        }
        Kind::QueueBacklog => {
            // A queue's consumer falls behind: each job takes three times as long, its pods' CPU
            // saturates and throttles, and one of the queue's queues grows steadily.
            let queue = choose(facts.with_role("queue"), "queue")?;
            let consumers = facts.callers(&queue).into_iter().filter(|c| facts.roles.get(c).is_some_and(|r| r == "api")).collect();
            let consumer = choose(consumers, "consumer of the queue")?;
            let pods = facts.pods(&consumer);
            let cpu = |l: &Map<String, Value>| label(l, "__name__").ends_with("container_cpu_usage_seconds_total:sum_irate") && pods.iter().any(|p| p == label(l, "pod"));
            lay.shape(cpu, 0, |ms, v| v * (1.0 + 2.0 * ramp(ms, 2 * MIN)));
            let slow = |l: &Map<String, Value>| label(l, "service") == consumer && label(l, "__name__").ends_with("http_request_duration_seconds:p99");
            lay.shape(slow, 30_000, |ms, v| v * (1.0 + 1.5 * ramp(ms, 2 * MIN)));
            let queues = facts.labels_where("rabbitmq_queue_messages_ready", |l| label(l, "service") == queue);
            let q = queues.get(pick % queues.len().max(1)).cloned().context("the queue service has no rabbitmq_queue_messages_ready")?;
            let name = label(&q, "queue").to_string();
            lay.shape(|l| named("rabbitmq_queue_messages_ready")(l) && label(l, "service") == queue && label(l, "queue") == name, MIN, |ms, v| v + v.max(10.0) * 30.0 * ramp(ms, 20 * MIN));
            for pod in &pods {
                let kubelet = [("namespace", ns), ("pod", pod.as_str()), ("container", consumer.as_str()), ("service", "kubelet"), ("endpoint", "https-metrics")];
                lay.alert(5 * MIN, "CPUThrottlingHigh", "info", &kubelet, &consumer);
            }
            let mq = [("service", queue.as_str()), ("namespace", ns), ("job", queue.as_str()), ("queue", name.as_str()), ("instance", label(&q, "instance")), ("vhost", label(&q, "vhost"))];
            lay.alert(10 * MIN, "RabbitmqTooManyMessagesInQueue", "warning", &mq, &queue);
            lay.finish(kind.name(), &consumer, "scale_out", Some(1))?;
        }
        Kind::CrashLoopRelease => {
            // A rolling update whose first new pod crash-loops: the rollout stalls one replica
            // short, the old pods keep serving.
            let candidates = facts.with_role("api").into_iter().filter(|s| !facts.noisy.contains(s) && facts.pods(s).len() >= 2).collect();
            let svc = choose(candidates, "API with two pods")?;
            lay.shape(|l| label(l, "__name__") == "kube_deployment_status_observed_generation" && label(l, "deployment") == svc, 0, |_, v| v + 1.0);
            lay.shape(|l| label(l, "__name__") == "kube_deployment_status_replicas_available" && label(l, "deployment") == svc, 30_000, |_, v| (v - 1.0).max(0.0));
            // The new pod: the old pods' labels with a new ReplicaSet's name, on the node of one.
            let old = facts.pods(&svc);
            let pod = format!("{svc}-7d9x2k4m8p-q2w8z");
            let replicaset = format!("{svc}-7d9x2k4m8p");
            let like = |name: &str| facts.labels_where(name, |l| label(l, "pod") == old[0]).into_iter().next();
            let renamed = |mut l: Map<String, Value>| {
                l.insert("pod".into(), pod.clone().into());
                if l.contains_key("created_by_name") {
                    l.insert("created_by_name".into(), replicaset.clone().into());
                }
                if l.contains_key("version") {
                    l.insert("version".into(), "2.8.0".into());
                }
                l
            };
            // Up for 40 s after each start, then down; the kubelet backs off between restarts.
            let restarts = |ms: i64| (ms / 90_000 + 1) as f64;
            let running = |ms: i64| ms % 90_000 < 40_000;
            if let Some(l) = like("kube_pod_info") {
                lay.begin(renamed(l), 0, false, |_| 1.0);
            }
            if let Some(l) = like("build_info") {
                lay.begin(renamed(l), 0, false, |_| 1.0);
            }
            if let Some(l) = like("up") {
                lay.begin(renamed(l), 0, false, move |ms| if running(ms) { 1.0 } else { 0.0 });
            }
            if let Some(l) = facts.labels_where("kube_pod_status_ready", |l| label(l, "pod") == old[0] && label(l, "condition") == "true").into_iter().next() {
                lay.begin(renamed(l), 0, true, |_| 0.0);
            }
            if let Some(l) = like("kube_pod_container_status_restarts_total") {
                lay.begin(renamed(l), 0, true, restarts);
            }
            let ksm = [("job", "kube-state-metrics"), ("container", "kube-state-metrics"), ("namespace", ns)];
            let mut crash = ksm.to_vec();
            crash.push(("pod", pod.as_str()));
            lay.alert(5 * MIN, "KubePodCrashLooping", "warning", &crash, &svc);
            let mut dep = ksm.to_vec();
            dep.push(("deployment", svc.as_str()));
            lay.alert(15 * MIN, "KubeDeploymentRolloutStuck", "warning", &dep, &svc);
            lay.alert(15 * MIN, "KubeDeploymentReplicasMismatch", "warning", &dep, &svc);
            lay.finish(kind.name(), &svc, "rollback_deploy", Some(2))?;
        }
    }
    Ok(())
}

/// A ready condition's value as a flag.
fn label_is_true(v: f64) -> bool {
    v > 0.5
}

fn base_owner(truth: &Value, id: &str) -> Option<String> {
    truth["owners"][id].as_str().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_id_is_written_as_the_corpus_writes_it() {
        let l = json!({"service": "a", "__name__": "up", "cluster": "c"});
        assert_eq!(series_id(l.as_object().unwrap()), "series:up{cluster=\"c\",service=\"a\"}");
    }

    /// A two-series, one-hour-and-a-half recording with an incident on `api`: clearing repeats
    /// the hour before, keeps the noise and drops the incident's alert.
    fn tiny() -> Recording {
        let step = 15 * 60_000;
        let samples = |f: &dyn Fn(i64) -> f64| -> Value { (0..7).map(|k| json!([k * step, f(k * step)])).collect::<Vec<_>>().into() };
        let api = json!({"__name__": "errors", "service": "api"});
        let noisy = json!({"__name__": "errors", "service": "noisy"});
        let lines = vec![
            json!({"offset_ms": 6 * step, "kind": "remote_write", "series": [
                {"labels": api, "samples": samples(&|t| if t >= 75 * 60_000 { 9.0 } else { t as f64 })},
                {"labels": noisy, "samples": samples(&|t| if t >= 75 * 60_000 { 7.0 } else { 1.0 })}]}),
            json!({"offset_ms": 6 * step, "kind": "alertmanager", "payload": {"alerts": [{"fingerprint": "aa"}, {"fingerprint": "bb"}]}}),
        ];
        let truth = json!({"incidents": [{"onset_offset_ms": 75 * 60_000, "members": ["alert:aa", series_id(api.as_object().unwrap())]}],
            "noise": ["alert:bb", series_id(noisy.as_object().unwrap())], "alerts": {"aa": {}, "bb": {}}});
        Recording { name: "tiny".into(), truth, topology: json!({}), lines }
    }

    #[test]
    fn clearing_repeats_the_hour_before_keeps_the_noise_and_drops_the_incidents_alerts() {
        let mut r = tiny();
        assert_eq!(clear(&mut r).unwrap(), 75 * 60_000);
        let s = &r.lines[0]["series"];
        // Samples at 0, 15, …, 90 minutes: from 65 minutes on (75 − 10) each repeats the one an
        // hour earlier, so 75 → 15 and 90 → 30 (in ms, the values were their own times).
        let values: Vec<f64> = s[0]["samples"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert_eq!(values, [0.0, 900_000.0, 1_800_000.0, 2_700_000.0, 3_600_000.0, 900_000.0, 1_800_000.0]);
        assert_eq!(s[1]["samples"][6][1], 7.0, "the noise is left as it was");
        assert_eq!(r.lines[1]["payload"]["alerts"], json!([{"fingerprint": "bb"}]));
        assert_eq!(r.truth["incidents"], json!([]));
        assert!(r.truth["alerts"].get("aa").is_none() && r.truth["alerts"].get("bb").is_some());
    }

    #[test]
    fn each_incident_points_at_the_last_line_sent_by_its_last_signal() {
        let lines = [0, 10, 10, 20].iter().map(|o| json!({"offset_ms": o, "kind": "remote_write"})).collect();
        let truth = json!({"incidents": [{"last_signal_offset_ms": 10}, {"last_signal_offset_ms": 15}, {"last_signal_offset_ms": 20}]});
        let mut r = Recording { name: "r".into(), truth, topology: json!({}), lines };
        place_last_lines(&mut r);
        let at: Vec<&Value> = r.truth["incidents"].as_array().unwrap().iter().map(|i| &i["last_signal_line"]).collect();
        assert_eq!(at, [&json!(2), &json!(2), &json!(3)]);
    }

    #[test]
    fn fingerprints_follow_the_labels_not_their_order() {
        let a = json!({"alertname": "X", "service": "a"});
        let b = json!({"service": "a", "alertname": "X"});
        let c = json!({"service": "b", "alertname": "X"});
        assert_eq!(fingerprint(a.as_object().unwrap()), fingerprint(b.as_object().unwrap()));
        assert_ne!(fingerprint(a.as_object().unwrap()), fingerprint(c.as_object().unwrap()));
        assert_eq!(fingerprint(a.as_object().unwrap()).len(), 16);
    }
}
