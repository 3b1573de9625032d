//! Root-cause ranking: each entity of an incident is a candidate, scored by stated factors.
//!
//! | factor | contribution |
//! |---|---|
//! | upstream: other affected entities depend on it (they call it, or have pods on the node when the node has three signals or more), and their trouble started no earlier than its own | +0.10 each, at most +0.30 |
//! | downstream: it calls another affected entity | −0.20 |
//! | a change on it (a rollout, a new build, a config reload) | +0.25 |
//! | cause-type evidence (saturation, availability, resources) rather than only symptoms (errors, latency) | +0.20 |
//! | earliest onset in event time (a signal more than 15 minutes before the next is stale, not the onset), decaying over 5 minutes | up to +0.15 |
//! | breadth: how many signals it has, 0.08 × ln(1 + n) | up to +0.25 |
//! | strength of its strongest signal (alert severity, anomaly score) | up to +0.20 |
//! | a fleet of per-node agents, or an unknown entity | −0.30 |
//!
//! In the spirit of Datadog Watchdog, errors and latency are symptoms and rarely the root; in the
//! spirit of Dynatrace, the topology decides more than the clock does.

use crate::topology::Topology;
use cairn_types::{AlertStatus, Incident, IncidentMember, ProbableCause, Severity};
use std::collections::{BTreeMap, BTreeSet};

pub use cairn_types::{SignalKind, signal_kind as classify};

pub(crate) fn severity_weight(s: Severity) -> f64 {
    match s {
        Severity::Low => 0.25,
        Severity::Medium => 0.5,
        Severity::High => 0.75,
        Severity::Critical => 1.0,
    }
}

fn member_weight(m: &IncidentMember) -> f64 {
    match m {
        IncidentMember::Alert { severity, status, .. } => {
            severity_weight(*severity) * if *status == AlertStatus::Firing { 1.0 } else { 0.5 }
        }
        IncidentMember::Anomaly(a) => a.score * 0.9,
    }
}

fn describe(m: &IncidentMember) -> String {
    match m {
        IncidentMember::Alert { alertname, severity, status, .. } => format!("{alertname} ({severity}, {})", status.as_str()),
        IncidentMember::Anomaly(a) => format!(
            "{} {} ({:.4} where {:.4} was expected)",
            a.labels.metric_name().unwrap_or("series"),
            if a.anomaly_kind.is_empty() { "anomaly" } else { &a.anomaly_kind },
            a.observed,
            a.expected
        ),
    }
}

/// Member ids named as evidence per cause.
const MAX_EVIDENCE: usize = 20;
/// Signals a node needs before its pods' trouble is put down to it.
pub(crate) const NODE_TROUBLE: usize = 3;
/// A leading signal this far before the next one is stale, not the onset.
pub(crate) const STALE_LEAD_MS: i64 = 15 * 60_000;

#[derive(Default)]
struct Candidate<'a> {
    members: Vec<&'a IncidentMember>,
    /// Event times of its members.
    times: Vec<i64>,
    onset: i64,
    /// The node entities its pod-level members run on.
    nodes: BTreeSet<String>,
    weight: f64,
    change: bool,
    cause: bool,
}

/// Ranks the incident's entities as root-cause candidates, best first, at most `keep`.
pub fn rank(inc: &Incident, nodes_of: &[Option<String>], topo: &Topology, keep: usize, onset_slack_ms: i64) -> Vec<ProbableCause> {
    let mut cands: BTreeMap<&str, Candidate> = BTreeMap::new();
    // What each name says, once per distinct name (a fleet's members share one).
    let mut kinds: std::collections::HashMap<&str, SignalKind> = std::collections::HashMap::new();
    for (i, m) in inc.members.iter().enumerate() {
        let c = cands.entry(inc.entity_of(i)).or_insert_with(|| Candidate { onset: i64::MAX, ..Default::default() });
        c.members.push(m);
        c.times.push(m.event_ms());
        c.weight = c.weight.max(member_weight(m));
        let name = m.name();
        match *kinds.entry(name).or_insert_with(|| classify(name)) {
            SignalKind::Change => c.change = true,
            SignalKind::Cause => c.cause = true,
            SignalKind::Symptom => {}
        }
        if let Some(Some(n)) = nodes_of.get(i) {
            // Copied once per node, not once per member: ranking runs every pass.
            if !c.nodes.contains(n) {
                c.nodes.insert(n.clone());
            }
        }
    }
    for c in cands.values_mut() {
        c.times.sort_unstable();
        // The onset is the earliest time, leaving out leading signals far (more than 15 minutes)
        // before the next one: a stale signal is not when the trouble began.
        let first = (0..c.times.len()).find(|&i| c.times.get(i + 1).is_none_or(|next| next - c.times[i] <= STALE_LEAD_MS)).unwrap_or(0);
        c.onset = c.times[first];
    }
    let earliest = cands.values().map(|c| c.onset).min().unwrap_or(0);
    let entities: Vec<&str> = cands.keys().copied().collect();
    let mut scored: Vec<(f64, ProbableCause)> = cands
        .iter()
        .map(|(&e, c)| {
            let mut factors: Vec<(f64, String)> = Vec::new();
            // A dependent counts only if its trouble did not start before this entity's: a cause
            // precedes its effects (within the scrape jitter).
            let after = |o: &str| cands.get(o).is_some_and(|oc| oc.onset >= c.onset - onset_slack_ms);
            // A node hosts trouble only when it has some of its own: a one-off blip on a node that
            // runs one of a service's pods says nothing about the service.
            let node_trouble = |n: &str| cands.get(n).is_some_and(|nc| nc.members.len() >= NODE_TROUBLE);
            let hosted = |oc: &Candidate| oc.nodes.contains(e) && node_trouble(e);
            let dependents: Vec<&str> = if e.starts_with("node:") {
                cands.iter().filter(|(o, oc)| **o != e && hosted(oc) && after(o)).map(|(o, _)| *o).collect()
            } else {
                entities.iter().copied().filter(|o| *o != e && topo.calls(o, e) && after(o)).collect()
            };
            if !dependents.is_empty() {
                let w = (0.10 * dependents.len() as f64).min(0.30);
                factors.push((w, format!("upstream of {}", dependents.join(", "))));
            }
            let upstream: Vec<&str> = entities
                .iter()
                .copied()
                .filter(|o| *o != e && (topo.calls(e, o) || (c.nodes.contains(*o) && node_trouble(o))))
                .collect();
            if !upstream.is_empty() {
                factors.push((-0.20, format!("downstream of {}", upstream.join(", "))));
            }
            if c.change {
                factors.push((0.25, "a change on it".into()));
            }
            if c.cause {
                factors.push((0.20, "cause-type evidence (saturation, availability, resources)".into()));
            } else if !c.change {
                factors.push((0.0, "symptoms only (errors, latency)".into()));
            }
            let lead_min = (c.onset - earliest) as f64 / 60_000.0;
            let onset = 0.15 * (-lead_min / 5.0).exp();
            factors.push((onset, if c.onset == earliest { "earliest onset".into() } else { format!("onset {lead_min:.1} min after the first") }));
            factors.push((0.20 * c.weight, "strongest signal".into()));
            let breadth = (0.08 * (1.0 + c.members.len() as f64).ln()).min(0.25);
            factors.push((breadth, format!("{} signal(s)", c.members.len())));
            if e.starts_with("fleet:") || e.starts_with("other:") || e.is_empty() {
                factors.push((-0.30, "a fleet or unknown entity, rarely the root".into()));
            }
            let score: f64 = factors.iter().map(|f| f.0).sum();
            let mut strongest: Vec<&&IncidentMember> = c.members.iter().collect();
            strongest.sort_by(|a, b| member_weight(b).total_cmp(&member_weight(a)));
            let shown: Vec<String> = strongest.iter().take(3).map(|m| describe(m)).collect();
            let more = c.members.len().saturating_sub(shown.len());
            let description = format!(
                "{}: {}{}",
                if e.is_empty() { "unknown" } else { e },
                shown.join("; "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            );
            let cause = ProbableCause {
                description,
                score,
                entity: e.to_string(),
                factors: factors.iter().map(|(w, f)| format!("{f} ({w:+.2})")).collect(),
                // The strongest evidence, bounded: an incident of hundreds of members names its
                // best few, not all of them, on every change.
                members: strongest.iter().take(MAX_EVIDENCE).map(|m| m.id()).collect(),
            };
            (score, cause)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.entity.cmp(&b.1.entity)));
    let top = scored.first().map(|s| s.0).unwrap_or(1.0);
    let bottom = scored.iter().map(|s| s.0).fold(f64::INFINITY, f64::min).min(0.0);
    scored
        .into_iter()
        .take(keep)
        .map(|(s, mut c)| {
            c.score = if top > bottom { ((s - bottom) / (top - bottom)).clamp(0.0, 1.0) } else { 1.0 };
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symptoms_changes_and_causes_are_told_apart() {
        assert_eq!(classify("ErrorBudgetBurn"), SignalKind::Symptom);
        assert_eq!(classify("instance:http_request_duration_seconds:p99"), SignalKind::Symptom);
        assert_eq!(classify("HighRequestLatency"), SignalKind::Symptom);
        assert_eq!(classify("kube_deployment_status_observed_generation"), SignalKind::Change);
        assert_eq!(classify("PostgresqlDown"), SignalKind::Cause);
        assert_eq!(classify("KubeNodeNotReady"), SignalKind::Cause);
        assert_eq!(classify("process_resident_memory_bytes"), SignalKind::Cause);
    }
}
