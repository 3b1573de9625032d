//! Correlation: alerts and anomalies that look like one problem become one [`Incident`], with the
//! reasons they were grouped and a ranked list of probable causes.
//!
//! Grouping is by a key label — the first of `group_by` (default `service`, `namespace`, `cluster`,
//! `instance`, `job`) present on the member — within a time window: a member joins the open
//! incident with the same key if that incident changed within `window_ms`, and starts a new one
//! otherwise. An alert is one member across its life (same fingerprint: firing, then resolved); an
//! anomalous series is one member however many times it fires, so ongoing anomalies do not churn
//! the incident. Probable causes are ranked by an explainable heuristic: each member's weight
//! (alert severity, or anomaly score) times a bonus for having appeared first.
//!
//! Pure: time is passed in, memory is bounded (open incidents, members per incident). It never
//! recommends or routes.

#![forbid(unsafe_code)]

use cairn_types::{AlertEvent, AlertStatus, Anomaly, Incident, IncidentId, IncidentMember, Labels, Severity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelatorConfig {
    /// A member more than this long after the incident's last change starts a new incident.
    pub window_ms: i64,
    /// Label names tried in order for the grouping key.
    pub group_by: Vec<String>,
    /// Open incidents kept; the least recently changed is closed beyond this.
    pub max_open_incidents: usize,
    /// Members per incident; further members are counted, not stored.
    pub max_members: usize,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        CorrelatorConfig {
            window_ms: 15 * 60 * 1000,
            group_by: ["service", "namespace", "cluster", "instance", "job"].map(String::from).to_vec(),
            max_open_incidents: 10_000,
            max_members: 500,
        }
    }
}

#[derive(Debug)]
struct Open {
    incident: Incident,
    /// Member identity (`alert:<fingerprint>` or `series:<id>`) → index in `members`.
    index: HashMap<String, usize>,
    dropped_members: u64,
}

/// The correlator's state: open incidents by grouping key.
#[derive(Debug)]
pub struct Correlator {
    cfg: CorrelatorConfig,
    open: HashMap<(String, String), Open>,
}

fn window_words(ms: i64) -> String {
    if ms % 60_000 == 0 { format!("{}m", ms / 60_000) } else { format!("{}s", ms / 1000) }
}

fn severity_weight(s: Severity) -> f64 {
    match s {
        Severity::Low => 0.25,
        Severity::Medium => 0.5,
        Severity::High => 0.75,
        Severity::Critical => 1.0,
    }
}

impl Correlator {
    pub fn new(cfg: CorrelatorConfig) -> Correlator {
        Correlator { cfg, open: HashMap::new() }
    }

    pub fn get(&self, id: &IncidentId) -> Option<&Incident> {
        self.open.values().map(|o| &o.incident).find(|i| &i.id == id)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn key_of(&self, labels: &Labels, fallback: (&str, &str)) -> (String, String) {
        self.cfg
            .group_by
            .iter()
            .find_map(|name| labels.get(name).filter(|v| !v.is_empty()).map(|v| (name.clone(), v.to_string())))
            .unwrap_or_else(|| (fallback.0.to_string(), fallback.1.to_string()))
    }

    /// Adds or updates an alert member; returns the incident if it changed.
    pub fn observe_alert(&mut self, a: &AlertEvent, now_ms: i64) -> Option<Incident> {
        let key = self.key_of(&a.labels, ("alertname", a.alertname()));
        let member = IncidentMember::Alert {
            fingerprint: a.fingerprint.clone(),
            alertname: a.alertname().to_string(),
            status: a.status,
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            severity: a.severity(),
            starts_at_ms: a.starts_at_ms,
            summary: a.annotations.get("summary").or_else(|| a.annotations.get("description")).unwrap_or("").to_string(),
        };
        let reason = format!("alert {} joined", a.alertname());
        self.add(key, format!("alert:{}", a.fingerprint), member, reason, now_ms)
    }

    /// Adds an anomaly member (one per series); returns the incident if it changed.
    pub fn observe_anomaly(&mut self, a: &Anomaly, now_ms: i64) -> Option<Incident> {
        let name = a.labels.metric_name().unwrap_or("series").to_string();
        let key = self.key_of(&a.labels, ("__name__", &name));
        let reason = format!("anomaly on {} joined", a.labels);
        self.add(key, format!("series:{}", a.series), IncidentMember::Anomaly(a.clone()), reason, now_ms)
    }

    fn add(&mut self, key: (String, String), identity: String, member: IncidentMember, what: String, now_ms: i64) -> Option<Incident> {
        let window = self.cfg.window_ms;
        let stale = self.open.get(&key).is_some_and(|o| now_ms - o.incident.updated_ms > window);
        if stale {
            self.open.remove(&key);
        }
        if !self.open.contains_key(&key) {
            self.make_room();
            let id = incident_id(&key, now_ms);
            self.open.insert(
                key.clone(),
                Open {
                    incident: Incident {
                        id,
                        opened_ms: now_ms,
                        updated_ms: now_ms,
                        members: Vec::new(),
                        affected_services: Vec::new(),
                        common_labels: Labels::new(),
                        grouping_reasons: Vec::new(),
                        probable_causes: Vec::new(),
                        severity: Severity::Low,
                        version: 0,
                    },
                    index: HashMap::new(),
                    dropped_members: 0,
                },
            );
        }
        let max_members = self.cfg.max_members;
        let open = self.open.get_mut(&key)?;
        let changed = match open.index.get(&identity).copied() {
            Some(i) => match (&mut open.incident.members[i], &member) {
                // An alert's state change is news; the same state again is not.
                (IncidentMember::Alert { status, .. }, IncidentMember::Alert { status: new, .. }) if status != new => {
                    open.incident.members[i] = member;
                    true
                }
                (IncidentMember::Anomaly(old), IncidentMember::Anomaly(new)) => {
                    // Keep the strongest evidence for the series without changing the member set.
                    if new.score > old.score {
                        *old = new.clone();
                    }
                    false
                }
                _ => false,
            },
            None if open.incident.members.len() >= max_members => {
                open.dropped_members += 1;
                false
            }
            None => {
                open.index.insert(identity, open.incident.members.len());
                open.incident.members.push(member);
                let joined = if open.incident.members.len() == 1 {
                    format!("{what}: opened on label {}={:?}", key.0, key.1)
                } else {
                    format!("{what} on shared label {}={:?} within {}", key.0, key.1, window_words(window))
                };
                open.incident.grouping_reasons.push(joined);
                true
            }
        };
        if !changed {
            return None;
        }
        let inc = &mut open.incident;
        inc.updated_ms = now_ms;
        inc.version += 1;
        summarise(inc);
        Some(inc.clone())
    }

    fn make_room(&mut self) {
        while self.open.len() >= self.cfg.max_open_incidents.max(1) {
            let Some(oldest) = self.open.iter().min_by_key(|(_, o)| o.incident.updated_ms).map(|(k, _)| k.clone()) else {
                return;
            };
            self.open.remove(&oldest);
        }
    }

    /// Closes incidents unchanged for longer than the window; returns their ids.
    pub fn close_idle(&mut self, now_ms: i64) -> Vec<IncidentId> {
        let window = self.cfg.window_ms;
        let mut closed: Vec<IncidentId> = Vec::new();
        self.open.retain(|_, o| {
            let keep = now_ms - o.incident.updated_ms <= window;
            if !keep {
                closed.push(o.incident.id.clone());
            }
            keep
        });
        closed.sort();
        closed
    }
}

fn incident_id(key: &(String, String), opened_ms: i64) -> IncidentId {
    let mut h = Sha256::new();
    h.update(key.0.as_bytes());
    h.update([0]);
    h.update(key.1.as_bytes());
    h.update(opened_ms.to_be_bytes());
    IncidentId(format!("inc-{}", &hex::encode(h.finalize())[..16]))
}

/// Recomputes the derived fields of an incident from its members.
fn summarise(inc: &mut Incident) {
    let mut common: Option<Labels> = None;
    let mut services: Vec<String> = Vec::new();
    let mut severity = Severity::Low;
    for m in &inc.members {
        let labels = m.labels();
        common = Some(match common {
            None => labels.clone(),
            Some(c) => c.iter().filter(|(k, v)| labels.get(k) == Some(*v)).collect(),
        });
        if let Some(s) = labels.get("service") {
            services.push(s.to_string());
        }
        let s = match m {
            IncidentMember::Alert { severity, status: AlertStatus::Firing, .. } => *severity,
            IncidentMember::Alert { .. } => Severity::Low,
            IncidentMember::Anomaly(a) => a.severity,
        };
        severity = severity.max(s);
    }
    services.sort();
    services.dedup();
    inc.common_labels = common.unwrap_or_default();
    inc.affected_services = services;
    inc.severity = severity;

    // Rank: weight × (1.5 for the earliest member, 1.0 otherwise), normalised to the best.
    let time_of = |m: &IncidentMember| match m {
        IncidentMember::Alert { starts_at_ms, .. } => *starts_at_ms,
        IncidentMember::Anomaly(a) => a.timestamp_ms,
    };
    let earliest = inc.members.iter().map(time_of).min().unwrap_or(0);
    let mut causes: Vec<(f64, String)> = inc
        .members
        .iter()
        .map(|m| {
            let (w, d) = match m {
                IncidentMember::Alert { alertname, severity, status, labels, .. } => (
                    severity_weight(*severity) * if *status == AlertStatus::Firing { 1.0 } else { 0.5 },
                    format!("{alertname} ({}, {}) on {}", severity, status.as_str(), labels.get("instance").or(labels.get("service")).unwrap_or("?")),
                ),
                IncidentMember::Anomaly(a) => (
                    a.score * 0.9,
                    format!("{} observed {:.4} where {:.4} was expected", a.labels, a.observed, a.expected),
                ),
            };
            let first = if time_of(m) == earliest { 1.5 } else { 1.0 };
            (w * first, d)
        })
        .collect();
    causes.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let top = causes.first().map(|c| c.0).unwrap_or(1.0).max(f64::MIN_POSITIVE);
    inc.probable_causes = causes
        .into_iter()
        .take(5)
        .map(|(w, description)| cairn_types::ProbableCause { description, score: (w / top).clamp(0.0, 1.0) })
        .collect();
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
    fn different_services_are_different_incidents() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        let b = c.observe_alert(&alert("X", "b", "f2", AlertStatus::Firing), 0).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(c.open_count(), 2);
    }

    #[test]
    fn outside_the_window_a_new_incident_starts() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        let a = c.observe_alert(&alert("X", "a", "f1", AlertStatus::Firing), 0).unwrap();
        let b = c.observe_alert(&alert("Y", "a", "f2", AlertStatus::Firing), 15 * 60 * 1000 + 1).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(b.members.len(), 1);
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
        assert!(c.close_idle(1000).is_empty());
        assert_eq!(c.close_idle(15 * 60 * 1000 + 1), vec![a.id]);
    }
}
