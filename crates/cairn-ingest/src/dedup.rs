//! De-duplication of alert deliveries: each replica of a clustered Alertmanager sends every group,
//! so the same alert state arrives more than once.

use cairn_types::AlertEvent;
use std::collections::{HashMap, VecDeque};

type Key = (String, &'static str, i64, Option<i64>);

/// Remembers recently seen alert states, bounded in count and in time.
#[derive(Debug)]
pub struct AlertDeduper {
    seen: RecentKeys<Key>,
}

impl AlertDeduper {
    pub fn new(capacity: usize, ttl_ms: i64) -> AlertDeduper {
        AlertDeduper { seen: RecentKeys::new(capacity, ttl_ms) }
    }

    /// True the first time this (fingerprint, status, start, end) is seen within the TTL: keep it.
    /// False for a repeat delivery.
    pub fn admit(&mut self, ev: &AlertEvent, now_ms: i64) -> bool {
        let key = (ev.fingerprint.clone(), ev.status.as_str(), ev.starts_at_ms, ev.ends_at_ms);
        if self.seen.contains(&key, now_ms) {
            return false;
        }
        self.seen.insert(key, now_ms);
        true
    }

    /// Forgets a delivery admitted by [`AlertDeduper::admit`] that could not be kept, so that its
    /// retry is admitted again.
    pub fn forget(&mut self, ev: &AlertEvent) {
        self.seen.remove(&(ev.fingerprint.clone(), ev.status.as_str(), ev.starts_at_ms, ev.ends_at_ms));
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Keys seen recently, bounded in count (the oldest is forgotten first) and in time: the memory
/// behind alert de-duplication and `Push` idempotency keys.
#[derive(Debug)]
pub struct RecentKeys<K> {
    capacity: usize,
    ttl_ms: i64,
    seen: HashMap<K, i64>,
    order: VecDeque<(i64, K)>,
}

impl<K: std::hash::Hash + Eq + Clone> RecentKeys<K> {
    pub fn new(capacity: usize, ttl_ms: i64) -> RecentKeys<K> {
        RecentKeys { capacity: capacity.max(1), ttl_ms, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `key` was inserted within the TTL.
    pub fn contains(&mut self, key: &K, now_ms: i64) -> bool {
        self.forget_older_than(now_ms - self.ttl_ms);
        self.seen.contains_key(key)
    }

    /// Remembers `key` as seen at `now_ms`, forgetting the oldest keys beyond the capacity.
    pub fn insert(&mut self, key: K, now_ms: i64) {
        if self.seen.contains_key(&key) {
            return;
        }
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((t, k)) => self.forget_slot(t, &k),
                None => break,
            }
        }
        self.seen.insert(key.clone(), now_ms);
        self.order.push_back((now_ms, key));
    }

    /// Forgets `key` (its slot in the age order is dropped when it comes due).
    pub fn remove(&mut self, key: &K) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_older_than(&mut self, cutoff: i64) {
        while let Some((t, _)) = self.order.front() {
            if *t > cutoff {
                break;
            }
            if let Some((t, k)) = self.order.pop_front() {
                self.forget_slot(t, &k);
            }
        }
    }

    /// Drops `key` if `t` is still its time: a key removed and inserted again has a newer slot.
    fn forget_slot(&mut self, t: i64, key: &K) {
        if self.seen.get(key) == Some(&t) {
            self.seen.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::{AlertStatus, Labels};

    fn alert(fp: &str, status: AlertStatus) -> AlertEvent {
        AlertEvent {
            fingerprint: fp.into(),
            status,
            labels: Labels::new(),
            annotations: Labels::new(),
            starts_at_ms: 1,
            ends_at_ms: (status == AlertStatus::Resolved).then_some(9),
            generator_url: String::new(),
            source: "t".into(),
        }
    }

    #[test]
    fn a_forgotten_delivery_is_admitted_again_and_keeps_its_new_time() {
        let mut d = AlertDeduper::new(10, 100);
        let a = alert("f", AlertStatus::Firing);
        assert!(d.admit(&a, 0));
        d.forget(&a);
        assert!(d.admit(&a, 50), "a delivery that could not be kept is taken again");
        assert!(!d.admit(&a, 120), "its first, forgotten slot does not end the new one early");
        assert!(d.admit(&a, 151));
    }

    #[test]
    fn a_group_delivered_twice_is_admitted_once() {
        let mut d = AlertDeduper::new(100, 60_000);
        assert!(d.admit(&alert("a", AlertStatus::Firing), 0));
        assert!(!d.admit(&alert("a", AlertStatus::Firing), 10));
    }

    #[test]
    fn firing_then_resolved_are_both_admitted() {
        let mut d = AlertDeduper::new(100, 60_000);
        assert!(d.admit(&alert("a", AlertStatus::Firing), 0));
        assert!(d.admit(&alert("a", AlertStatus::Resolved), 1));
    }

    #[test]
    fn entries_are_forgotten_after_the_ttl() {
        let mut d = AlertDeduper::new(100, 1_000);
        assert!(d.admit(&alert("a", AlertStatus::Firing), 0));
        assert!(!d.admit(&alert("a", AlertStatus::Firing), 999));
        assert!(d.admit(&alert("a", AlertStatus::Firing), 1_000));
    }

    #[test]
    fn memory_never_exceeds_capacity() {
        let mut d = AlertDeduper::new(3, 1_000_000);
        for i in 0..10 {
            assert!(d.admit(&alert(&format!("a{i}"), AlertStatus::Firing), i));
            assert!(d.len() <= 3);
        }
        // The oldest were evicted, the newest are remembered.
        assert!(!d.admit(&alert("a9", AlertStatus::Firing), 11));
        assert!(d.admit(&alert("a0", AlertStatus::Firing), 12));
    }
}
