//! Grouping decided by a person: merging two incidents the rules kept apart, and splitting signals
//! out of an incident the rules put together. Both are feedback the rules learn from (as a
//! responder's merges teach PagerDuty's grouping): the entities a split separated are not joined
//! through a link again, and those a merge put together are linked from then on, so that the next
//! time both are in trouble at once they are one incident without anyone merging them. Each memory
//! is bounded (the oldest pair goes first), and a later decision about a pair replaces an earlier.

use crate::{Correlator, Open};
use cairn_types::{Incident, IncidentId, IncidentMember};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Entity pairs a person separated, remembered at most this many (oldest forgotten first).
pub const MAX_KEPT_APART: usize = 10_000;

/// Why a person's regrouping was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegroupRefused {
    /// No open incident has this id (it closed, was merged away, or never was).
    NotOpen(IncidentId),
    /// Merging an incident into itself.
    SameIncident(IncidentId),
    /// The two together would hold more than `max_members`.
    TooLarge { members: usize, max: usize },
    /// The incident holds no member with this id (`alert:<fingerprint>` or `series:<id>`).
    NoSuchMember { incident: IncidentId, member: String },
    /// A split must leave at least one member behind and move at least one.
    NothingLeft(IncidentId),
}

impl std::fmt::Display for RegroupRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegroupRefused::NotOpen(id) => write!(f, "incident {id} is not open (closed, merged away, or unknown)"),
            RegroupRefused::SameIncident(id) => write!(f, "incident {id} cannot be merged into itself"),
            RegroupRefused::TooLarge { members, max } => {
                write!(f, "the merged incident would hold {members} members, more than correlate.max_members ({max})")
            }
            RegroupRefused::NoSuchMember { incident, member } => {
                write!(f, "incident {incident} holds no member {member} (members are named alert:<fingerprint> or series:<id>)")
            }
            RegroupRefused::NothingLeft(id) => {
                write!(f, "a split of {id} must move at least one member and leave at least one")
            }
        }
    }
}

impl std::error::Error for RegroupRefused {}

/// Entity pairs persons' regroupings taught: those a split separated (not joined through a link
/// again) or those a merge put together (linked from then on). At most [`MAX_KEPT_APART`] pairs
/// each, oldest forgotten first; a later decision about a pair replaces an earlier one.
#[derive(Debug, Default)]
pub(crate) struct Pairs {
    /// Each remembered pair, with the generation it was remembered in.
    pairs: HashMap<(String, String), u64>,
    /// Pairs in the order they were remembered, with their generation. An entry whose generation
    /// no longer matches (the pair was forgotten, or remembered again later) is stale and skipped,
    /// so forgetting is O(1); stale entries are compacted away before they double the queue.
    order: VecDeque<((String, String), u64)>,
    generation: u64,
    /// Entity → the entities it is paired with.
    partners: HashMap<String, BTreeSet<String>>,
}

impl Pairs {
    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) }
    }

    fn remember(&mut self, a: &str, b: &str) {
        if a == b {
            return;
        }
        let key = Self::key(a, b);
        if self.pairs.contains_key(&key) {
            return;
        }
        self.generation += 1;
        self.pairs.insert(key.clone(), self.generation);
        self.partners.entry(key.0.clone()).or_default().insert(key.1.clone());
        self.partners.entry(key.1.clone()).or_default().insert(key.0.clone());
        self.order.push_back((key, self.generation));
        while self.pairs.len() > MAX_KEPT_APART {
            let Some((old, generation)) = self.order.pop_front() else { break };
            if self.pairs.get(&old) == Some(&generation) {
                self.drop_pair(&old);
            }
        }
        if self.order.len() > 2 * MAX_KEPT_APART {
            let pairs = &self.pairs;
            self.order.retain(|(k, g)| pairs.get(k) == Some(g));
        }
    }

    fn forget(&mut self, a: &str, b: &str) {
        let key = Self::key(a, b);
        if self.pairs.contains_key(&key) {
            self.drop_pair(&key);
        }
    }

    fn drop_pair(&mut self, key: &(String, String)) {
        self.pairs.remove(key);
        for (x, y) in [(&key.0, &key.1), (&key.1, &key.0)] {
            if let Some(set) = self.partners.get_mut(x) {
                set.remove(y);
                if set.is_empty() {
                    self.partners.remove(x);
                }
            }
        }
    }

    /// Forgets every pair `a` is in.
    pub(crate) fn forget_all(&mut self, a: &str) {
        for b in self.partners.get(a).cloned().unwrap_or_default() {
            self.drop_pair(&Self::key(a, &b));
        }
    }

    /// Whether `a` and `b` are a remembered pair.
    pub(crate) fn holds(&self, a: &str, b: &str) -> bool {
        !self.pairs.is_empty() && self.pairs.contains_key(&Self::key(a, b))
    }

    /// The entities `a` is paired with.
    pub(crate) fn partners(&self, a: &str) -> impl Iterator<Item = &String> {
        self.partners.get(a).into_iter().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.pairs.len()
    }
}

/// The entities only one side holds, paired with those only the other holds.
fn across<'a>(left: &'a HashSet<String>, right: &'a HashSet<String>) -> impl Iterator<Item = (&'a String, &'a String)> {
    left.difference(right).flat_map(move |a| right.difference(left).map(move |b| (a, b)))
}

pub(crate) fn identity_of(m: &IncidentMember) -> String {
    match m {
        IncidentMember::Alert { fingerprint, .. } => format!("alert:{fingerprint}"),
        IncidentMember::Anomaly(a) => format!("series:{}", a.series),
    }
}

impl Correlator {
    /// A person merges `from` into `into`: one incident holding both, re-ranked; `from` is emptied,
    /// naming `into`, and handed out by [`Correlator::take_merged`] like any merge.
    pub fn merge_by_person(&mut self, into: &IncidentId, from: &IncidentId, why: &str, now_ms: i64) -> Result<Incident, RegroupRefused> {
        if into == from {
            return Err(RegroupRefused::SameIncident(into.clone()));
        }
        let size = |id: &IncidentId| self.open.get(id).map(|o| o.incident.members.len()).ok_or_else(|| RegroupRefused::NotOpen(id.clone()));
        let members = size(into)? + size(from)?;
        if members > self.cfg.max_members {
            return Err(RegroupRefused::TooLarge { members, max: self.cfg.max_members });
        }
        let entities = |c: &Correlator, id: &IncidentId| -> HashSet<String> {
            c.open.get(id).map(|o| o.entities.keys().cloned().collect()).unwrap_or_default()
        };
        let (a, b) = (entities(self, into), entities(self, from));
        for (x, y) in across(&a, &b) {
            self.kept_apart.forget(x, y);
            self.kept_together.remember(x, y);
        }
        self.split_apart.forget(&into.0, &from.0);
        self.merge(into, from, why, now_ms);
        self.changed(into, now_ms).ok_or_else(|| RegroupRefused::NotOpen(into.clone()))
    }

    /// A person moves `members` (ids `alert:<fingerprint>` or `series:<id>`) of `from` into a new
    /// incident. Both are rebuilt from their members and re-ranked; `from` keeps its id. The
    /// entities that end up only on one side are remembered as kept apart from those only on the
    /// other. Returns (what is left of `from`, the new incident).
    pub fn split_by_person(&mut self, from: &IncidentId, members: &[String], why: &str, now_ms: i64) -> Result<(Incident, Incident), RegroupRefused> {
        let open = self.open.get(from).ok_or_else(|| RegroupRefused::NotOpen(from.clone()))?;
        for m in members {
            if !open.index.contains_key(m) {
                return Err(RegroupRefused::NoSuchMember { incident: from.clone(), member: m.clone() });
            }
        }
        let moving: HashSet<&String> = members.iter().collect();
        if moving.is_empty() || moving.len() >= open.incident.members.len() {
            return Err(RegroupRefused::NothingLeft(from.clone()));
        }
        let Some(old) = self.take_open(from) else { return Err(RegroupRefused::NotOpen(from.clone())) };
        let Open { incident, dropped_members, .. } = old;
        let (mut stay, mut go) = (Vec::new(), Vec::new());
        for member in incident.members {
            if moving.contains(&identity_of(&member)) { go.push(member) } else { stay.push(member) }
        }
        let first_moved = go.first().map(|m| (self.topology.resolve(m.labels()).entity, m.event_ms()));
        let (entity, t) = first_moved.unwrap_or_default();
        // Named like any incident, from its first signal and the time; never the name of one
        // that is open, `from` among them (a split within the millisecond `from` was opened in,
        // of signals on its entity and time, would otherwise replace it).
        let mut new_id = crate::incident_id(&entity, t, now_ms);
        let mut at = now_ms;
        while self.open.contains_key(&new_id) || new_id == *from {
            at += 1;
            new_id = crate::incident_id(&entity, t, at);
        }

        self.open.insert(from.clone(), Open::empty(from.clone(), incident.opened_ms, now_ms));
        if let Some(o) = self.open.get_mut(from) {
            o.incident.version = incident.version;
            o.dropped_members = dropped_members;
            o.incident.grouping_reasons = incident.grouping_reasons;
            o.incident.grouping_reasons.push(format!("split by a person: {} signals moved to {new_id}: {why}", go.len()));
        }
        self.by_age.insert((now_ms, from.clone()));
        self.open.insert(new_id.clone(), Open::empty(new_id.clone(), now_ms, now_ms));
        self.by_age.insert((now_ms, new_id.clone()));
        let stay_entities = self.reinsert(from, stay, None);
        let go_entities = self.reinsert(&new_id, go, Some(&format!("moved here from {from} by a person: {why}")));
        for (a, b) in across(&go_entities, &stay_entities) {
            self.kept_together.forget(a, b);
            self.kept_apart.remember(a, b);
        }
        // Signals on an entity both sides hold would merge them again at the next one.
        self.split_apart.remember(&from.0, &new_id.0);
        let left = self.changed(from, now_ms).ok_or_else(|| RegroupRefused::NotOpen(from.clone()))?;
        let new = self.changed(&new_id, now_ms).ok_or_else(|| RegroupRefused::NotOpen(new_id.clone()))?;
        Ok((left, new))
    }

    /// Pairs of open incidents a person split from one another (for `/metrics`).
    pub fn split_apart_count(&self) -> usize {
        self.split_apart.len()
    }

    /// Entity pairs persons' splits keep apart (for `/metrics`).
    pub fn kept_apart_count(&self) -> usize {
        self.kept_apart.len()
    }

    /// Entity pairs persons' merges linked (for `/metrics`).
    pub fn kept_together_count(&self) -> usize {
        self.kept_together.len()
    }

    /// Puts `members` into the open incident `id`, each with `reason` among the grouping reasons
    /// (none: the incident's reasons stay as they were); returns the entities they are about.
    fn reinsert(&mut self, id: &IncidentId, members: Vec<IncidentMember>, reason: Option<&str>) -> HashSet<String> {
        let mut entities = HashSet::new();
        for member in members {
            let r = self.topology.resolve(member.labels());
            entities.insert(r.entity.clone());
            let (resources, identity) = (crate::member_resources(&member), identity_of(&member));
            self.insert(id, identity, member, &r, resources, reason.unwrap_or_default().to_string());
            if reason.is_none()
                && let Some(o) = self.open.get_mut(id)
            {
                o.incident.grouping_reasons.pop();
            }
        }
        entities
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_memory_keeps_the_newest_pairs_and_forgetting_does_not_lose_newer_ones() {
        let mut p = Pairs::default();
        for i in 0..MAX_KEPT_APART + 5 {
            p.remember(&format!("a{i}"), "b");
        }
        assert_eq!(p.len(), MAX_KEPT_APART);
        assert!(!p.holds("a0", "b") && !p.holds("a4", "b"), "the oldest are forgotten first");
        assert!(p.holds("b", &format!("a{}", MAX_KEPT_APART + 4)), "order within a pair does not matter");
        // Forget a pair and remember it again: its old place in the queue must not evict it.
        p.forget("a5", "b");
        assert!(!p.holds("a5", "b") && !p.partners("a5").any(|_| true));
        p.remember("a5", "b");
        for i in 0..10 {
            p.remember(&format!("c{i}"), "d");
        }
        assert!(p.holds("a5", "b"), "remembered again, it is among the newest");
        assert_eq!(p.len(), MAX_KEPT_APART);
        // Churn leaves the queue bounded too.
        for i in 0..3 * MAX_KEPT_APART {
            p.remember(&format!("e{i}"), "f");
            p.forget(&format!("e{i}"), "f");
        }
        assert!(p.order.len() <= 2 * MAX_KEPT_APART + 1, "{}", p.order.len());
    }
}
