//! Metric co-movement: series that move together join their incidents.
//!
//! Topology says which entities *may* share a problem; the values of their series can show that
//! they *do*. This module owns a bounded recorder of the recent raw values of series that were
//! recently anomalous (recording starts at the first anomaly on a series, seeded with its observed
//! value), and a periodic check that correlates recorded series of *different* open incidents
//! (Pearson's r over points aligned on timestamps bucketed to the scrape step). A pair whose
//! |r| reaches `comove_min_r` over at least `comove_min_points` common points is a link like any
//! other ([`crate::Link::Moved`], "moved together with ..."), with the rules every link has: both
//! sides in trouble ([`crate::Span::carries`]), within `link_window_ms` of each other, and never
//! across a pair a person's split kept apart. The two incidents are merged through the
//! correlator's one merge path, so they come out of [`crate::Correlator::take_merged`] like any
//! merge.
//!
//! Bounds: at most `comove_max_series` series are recorded, [`RING`] points each (the oldest
//! recording is evicted first), and the text kept per series is capped, so memory stays under
//! [`Recorder::max_bytes`] and is reported ([`crate::Correlator::comove_size`]). CPU is bounded by
//! checking at most every `comove_every_ms` of event time, only pairs involving a series that gained
//! points since the last check, and at most `comove_max_pairs` pairs per check (rayon across them).
//!
//! It must never record a series that was not anomalous, never join incidents on its own reading of
//! labels or topology (that is the rest of the correlator), and never merge anything outside the
//! correlator's merge path.
//!
//! Off by default (`comove = false`), because on `incidents-dev` it merged nothing: with topology,
//! and without it (`cairn eval triage --no-topology`), at every candidate threshold (|r| 0.8, 0.9,
//! 0.95 × 12 or 24 points), 0 co-movement merges in 14 recordings, so every figure is the same on
//! and off. Its faults are steps, and what is recorded from the anomaly on is the plateau after
//! them: callers' error ratios and the database's series correlate at |r| < 0.7 there. Given the
//! batch that carried the anomaly as well (about a minute before it in the replay; an experiment,
//! not this code), Pearson on values (|r| >= 0.9, 12 points) merged
//! unrelated incidents of a storm (request rates with a replica's lag, both following the
//! traffic's hourly cycle: storm precision 1.00 → 0.52), and on changes (first differences) merged
//! nothing. What it would need to earn its keep is context before the onset, kept for every series
//! (memory the detector's budget would have to make room for), and changes rather than values.

use crate::{Correlator, Link};
use cairn_types::{IncidentId, SampleBatch, SeriesId};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Points kept per recorded series: 16 minutes at a 15 s scrape, an hour at 1 m.
pub const RING: usize = 64;
/// Text kept per recorded series (its display name, its entity), in bytes: a longer entity is not
/// recorded, a longer name is cut.
const MAX_TEXT: usize = 256;

/// One recorded series: a ring of its latest points, in time order.
#[derive(Debug)]
struct Track {
    /// The member identity (`series:<id>`) the correlator files it under.
    identity: String,
    /// What a reason calls it (its selector, cut at [`MAX_TEXT`] / 2).
    name: String,
    entity: String,
    ring: [(i64, f64); RING],
    /// Where the next point goes, and how many points the ring holds.
    head: usize,
    len: usize,
    last_ms: i64,
    /// The smallest gap between consecutive points seen: the scrape step (0 until known).
    step_ms: i64,
    /// Whether it gained points since the last check.
    fresh: bool,
    /// When recording began (order of arrival), for evicting the oldest.
    seq: u64,
}

impl Track {
    fn push(&mut self, t: i64, v: f64) {
        // Out-of-order and repeated timestamps are dropped: the ring stays in time order.
        if !v.is_finite() || (self.len > 0 && t <= self.last_ms) {
            return;
        }
        if self.len > 0 {
            let gap = t - self.last_ms;
            self.step_ms = if self.step_ms == 0 { gap } else { self.step_ms.min(gap) };
        }
        self.ring[self.head] = (t, v);
        self.head = (self.head + 1) % RING;
        self.len = (self.len + 1).min(RING);
        self.last_ms = t;
        self.fresh = true;
    }

    /// The points, oldest first.
    fn points(&self) -> Vec<(i64, f64)> {
        let start = (self.head + RING - self.len) % RING;
        (0..self.len).map(|k| self.ring[(start + k) % RING]).collect()
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Track>() + std::mem::size_of::<SeriesId>() + self.identity.capacity() + self.name.capacity() + self.entity.capacity()
    }
}

/// The recent raw values of at most `max_series` recently anomalous series.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    tracks: HashMap<SeriesId, Track>,
    /// Recording order → series, to evict the oldest.
    order: BTreeMap<u64, SeriesId>,
    seq: u64,
    max_series: usize,
    bytes: usize,
    /// The latest point recorded (event time), and when the last check ran.
    latest_ms: i64,
    checked_ms: Option<i64>,
}

impl Recorder {
    pub(crate) fn new(max_series: usize) -> Recorder {
        Recorder { max_series: max_series.max(1), latest_ms: i64::MIN, ..Recorder::default() }
    }

    /// The most a full recorder holds, in bytes.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_series * (std::mem::size_of::<Track>() + std::mem::size_of::<SeriesId>() + 2 * MAX_TEXT + "series:".len() + 20)
    }

    pub(crate) fn len(&self) -> usize {
        self.tracks.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Starts recording `series` (anomalous at `first`), unless it is already recorded; the oldest
    /// recording goes when the recorder is full.
    pub(crate) fn start(&mut self, series: SeriesId, name: &str, entity: &str, first: (i64, f64)) {
        if self.tracks.contains_key(&series) || entity.len() > MAX_TEXT {
            return;
        }
        while self.tracks.len() >= self.max_series {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.remove(oldest);
        }
        let mut cut = name.len().min(MAX_TEXT);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        self.seq += 1;
        let mut track = Track {
            identity: format!("series:{series}"),
            name: name[..cut].to_string(),
            entity: entity.to_string(),
            ring: [(0, 0.0); RING],
            head: 0,
            len: 0,
            last_ms: i64::MIN,
            step_ms: 0,
            fresh: true,
            seq: self.seq,
        };
        track.push(first.0, first.1);
        self.latest_ms = self.latest_ms.max(first.0);
        self.bytes += track.bytes();
        self.order.insert(self.seq, series);
        self.tracks.insert(series, track);
    }

    fn remove(&mut self, series: SeriesId) {
        if let Some(t) = self.tracks.remove(&series) {
            self.order.remove(&t.seq);
            self.bytes -= t.bytes();
        }
    }

    /// Appends the points of the recorded series in a batch.
    pub(crate) fn record(&mut self, batch: &SampleBatch) {
        if self.tracks.is_empty() {
            return;
        }
        for s in batch.iter() {
            if let Some(track) = self.tracks.get_mut(&s.id) {
                for &(t, v) in s.points {
                    track.push(t, v);
                }
                self.latest_ms = self.latest_ms.max(track.last_ms);
            }
        }
    }

    /// Forgets series that have not moved for `idle_ms` of event time (gone or stale).
    fn forget_idle(&mut self, idle_ms: i64) {
        let latest = self.latest_ms;
        let idle: Vec<SeriesId> = self.tracks.iter().filter(|(_, t)| latest.saturating_sub(t.last_ms) > idle_ms).map(|(s, _)| *s).collect();
        for s in idle {
            self.remove(s);
        }
    }
}

/// Pearson's r of two series over their common points, and how many there are. Points are aligned
/// on timestamps bucketed to `bucket_ms` (the coarser scrape step of the two; the last point of a
/// bucket counts). None with fewer than two common points or a flat series.
///
/// Plain slices rather than ndarray windows: the two series are aligned per pair by a merge join
/// on their buckets (their scrapes need not share timestamps), so there is no shared window to
/// view, and two passes over at most [`RING`] aligned points is all the arithmetic.
pub(crate) fn pearson(a: &[(i64, f64)], b: &[(i64, f64)], bucket_ms: i64) -> Option<(f64, usize)> {
    let bucket_ms = bucket_ms.max(1);
    let mut pairs = [(0.0f64, 0.0f64); RING];
    let mut n = 0;
    // The last point of each bucket, in order.
    let buckets = |s: &[(i64, f64)]| {
        let mut out: Vec<(i64, f64)> = Vec::with_capacity(s.len());
        for &(t, v) in s {
            let k = t.div_euclid(bucket_ms);
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out
    };
    let (a, b) = (buckets(a), buckets(b));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() && n < RING {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                pairs[n] = (a[i].1, b[j].1);
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    if n < 2 {
        return None;
    }
    let pairs = &pairs[..n];
    // Two passes: the values may be large (bytes) and move little, where one-pass sums lose it.
    let (mx, my) = pairs.iter().fold((0.0, 0.0), |(x, y), p| (x + p.0, y + p.1));
    let (mx, my) = (mx / n as f64, my / n as f64);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    // Flat within rounding: no movement to share.
    let flat = |s: f64, m: f64| s <= f64::EPSILON * (n as f64) * m.abs().max(1.0).powi(2);
    if flat(sxx, mx) || flat(syy, my) {
        return None;
    }
    Some(((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0), n))
}

/// A recorded series the check may pair: its points, where it is and when its entity's trouble
/// began there.
struct Candidate {
    series: SeriesId,
    points: Vec<(i64, f64)>,
    step_ms: i64,
    incident: IncidentId,
    entity: String,
    name: String,
    onset_ms: i64,
    fresh: bool,
}

/// A pair found to move together.
struct Found {
    a: usize,
    b: usize,
    r: f64,
    n: usize,
}

impl Correlator {
    /// Starts recording an anomalous series (a no-op when co-movement is off or it is recorded).
    pub(crate) fn start_recording(&mut self, a: &cairn_types::Anomaly) {
        if !self.cfg.comove {
            return;
        }
        let entity = self.topology.resolve(&a.labels).entity;
        self.comove.start(a.series, &a.labels.to_string(), &entity, (a.timestamp_ms, a.observed));
    }

    /// Series recorded and the bytes they take (for `/metrics`).
    pub fn comove_size(&self) -> (usize, usize) {
        (self.comove.len(), self.comove.bytes())
    }

    /// The most bytes the co-movement recorder may take (`comove_max_series` full recordings).
    pub fn comove_max_bytes(&self) -> usize {
        self.comove.max_bytes()
    }

    /// Checks whether recorded series of different open incidents move together, and merges the
    /// incidents of those that do (within the rules every link has). At most every
    /// `comove_every_ms` of event time; returns whether an incident changed, which then comes out
    /// of [`Correlator::settle`] and [`Correlator::take_merged`].
    pub fn co_move(&mut self, now_ms: i64) -> bool {
        if !self.cfg.comove || self.comove.len() < 2 {
            return false;
        }
        let latest = self.comove.latest_ms;
        if self.comove.checked_ms.is_some_and(|c| latest < c.saturating_add(self.cfg.comove_every_ms)) {
            return false;
        }
        self.comove.checked_ms = Some(latest);
        self.comove.forget_idle(self.cfg.window_ms);
        let cands = self.candidates();
        let found = self.correlated(&cands);
        tracing::debug!(recorded = self.comove.len(), candidates = cands.len(), linked = found.len(), "co-movement check");
        let mut changed = false;
        for f in found {
            changed |= self.join_moved(&cands[f.a], &cands[f.b], f.r, f.n, now_ms);
        }
        changed
    }

    /// The recorded series held by an open incident with enough points, by series id; each
    /// loses its freshness.
    fn candidates(&mut self) -> Vec<Candidate> {
        let min_points = self.cfg.comove_min_points.max(2);
        let mut out = Vec::new();
        for (series, t) in self.comove.tracks.iter_mut() {
            let fresh = std::mem::replace(&mut t.fresh, false);
            if t.len < min_points {
                continue;
            }
            let Some(id) = self.member_of.get(&t.identity) else { continue };
            let Some(span) = self.open.get(id).and_then(|o| o.entities.get(&t.entity)) else { continue };
            out.push(Candidate {
                series: *series,
                points: t.points(),
                step_ms: t.step_ms,
                incident: id.clone(),
                entity: t.entity.clone(),
                name: t.name.clone(),
                onset_ms: span.onset_ms,
                fresh,
            });
        }
        out.sort_by_key(|c| c.series.0);
        out
    }

    /// The pairs of candidates in different incidents, with trouble begun within the link window
    /// of each other, one of them fresh, that move together; strongest first. At most
    /// `comove_max_pairs` pairs are computed, rayon across them.
    fn correlated(&self, cands: &[Candidate]) -> Vec<Found> {
        let window = self.cfg.link_window_ms;
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        'outer: for (i, a) in cands.iter().enumerate() {
            for (j, b) in cands.iter().enumerate().skip(i + 1) {
                if pairs.len() >= self.cfg.comove_max_pairs {
                    tracing::debug!(max = self.cfg.comove_max_pairs, "co-movement: pair cap reached, the rest wait for the next check");
                    break 'outer;
                }
                if (a.fresh || b.fresh) && a.incident != b.incident && (a.onset_ms - b.onset_ms).abs() <= window {
                    pairs.push((i, j));
                }
            }
        }
        let (min_r, min_points) = (self.cfg.comove_min_r, self.cfg.comove_min_points.max(2));
        let mut found: Vec<Found> = pairs
            .into_par_iter()
            .filter_map(|(a, b)| {
                let (x, y) = (&cands[a], &cands[b]);
                let (r, n) = pearson(&x.points, &y.points, x.step_ms.max(y.step_ms))?;
                (n >= min_points && r.abs() >= min_r).then_some(Found { a, b, r, n })
            })
            .collect();
        found.sort_by(|p, q| q.r.abs().total_cmp(&p.r.abs()).then((p.a, p.b).cmp(&(q.a, q.b))));
        found
    }

    /// Joins the incidents of two series found to move together, if the rules every link has
    /// allow: both entities in trouble there, within the link window, no pair across the two
    /// incidents kept apart by a person. The larger (then older) incident takes the other.
    fn join_moved(&mut self, a: &Candidate, b: &Candidate, r: f64, n: usize, now_ms: i64) -> bool {
        // Earlier joins of this check may have moved either series.
        let (Some(ia), Some(ib)) = (self.member_of.get(&format!("series:{}", a.series)), self.member_of.get(&format!("series:{}", b.series))) else {
            return false;
        };
        let (ia, ib) = (ia.clone(), ib.clone());
        if ia == ib {
            return false;
        }
        let (Some(oa), Some(ob)) = (self.open.get(&ia), self.open.get(&ib)) else { return false };
        let (Some(sa), Some(sb)) = (oa.entities.get(&a.entity), ob.entities.get(&b.entity)) else { return false };
        let link = Link::Moved { other: b.entity.clone(), words: format!("{} moved together with {} (r = {r:.2} over {n} points)", a.name, b.name) };
        if self.admits(&a.entity, sa, sb, &link).is_none() {
            return false;
        }
        if oa.entities.keys().any(|x| ob.entities.keys().any(|y| self.kept_apart.holds(x, y))) {
            return false;
        }
        let key = |o: &crate::Open| (std::cmp::Reverse(o.incident.members.len()), o.incident.opened_ms, o.incident.id.clone());
        let (into, from) = if key(oa) <= key(ob) { (ia, ib) } else { (ib, ia) };
        let why = format!("{} within {} in event time", link.words(&a.entity), crate::window_words(self.cfg.link_window_ms));
        self.merge(&into, &from, &why, now_ms);
        if self.open.contains_key(&from) {
            return false;
        }
        tracing::debug!(into = %into, from = %from, r, n, "co-movement merged incidents");
        self.touch(&into, now_ms).is_some()
    }
}

/// Whether `s` is the span of trouble a link may carry (used by tests).
#[cfg(test)]
fn carries(s: &crate::Span) -> bool {
    s.carries()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CorrelatorConfig;
    use cairn_types::{Anomaly, Labels, MetricSample};

    const STEP: i64 = 15_000;

    /// Co-movement on, with the rules' thresholds the tests are written for (not the defaults,
    /// which are chosen by `cairn eval triage`).
    fn on() -> CorrelatorConfig {
        CorrelatorConfig { comove: true, comove_min_r: 0.9, comove_min_points: 12, ..CorrelatorConfig::default() }
    }

    fn labels(service: &str, name: &str) -> Labels {
        [("__name__", name), ("service", service)].into_iter().collect()
    }

    fn anomaly(service: &str, name: &str, t: i64, observed: f64) -> Anomaly {
        cairn_types::fixtures::anomaly(labels(service, name), t, observed)
    }

    /// Two services with no topology between them, each in trouble (two anomalous series), so
    /// two incidents; `errors` of each is recorded from t = 0.
    fn two_incidents(cfg: CorrelatorConfig) -> Correlator {
        let mut c = Correlator::new(cfg);
        for s in ["a", "b"] {
            for name in ["errors", "latency"] {
                c.note_anomaly(&anomaly(s, name, 0, 0.0), 1);
            }
        }
        c.settle();
        assert_eq!(c.open_count(), 2);
        c
    }

    /// Feeds steps `ks` of the two `errors` series: `fa(k)` and `fb(k)`.
    fn feed(c: &mut Correlator, ks: std::ops::RangeInclusive<usize>, fa: impl Fn(usize) -> f64, fb: impl Fn(usize) -> f64) {
        for k in ks {
            let t = k as i64 * STEP;
            let batch: SampleBatch = [
                MetricSample { labels: labels("a", "errors"), timestamp_ms: t, value: fa(k) },
                MetricSample { labels: labels("b", "errors"), timestamp_ms: t, value: fb(k) },
            ]
            .iter()
            .collect();
            c.learn(&batch);
        }
    }

    fn noise(k: usize, seed: u64) -> f64 {
        let x = (k as u64 ^ seed).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    }

    fn ramp(k: usize) -> f64 {
        k as f64 + 2.0 * noise(k, 7)
    }

    #[test]
    fn two_series_that_ramp_together_join_their_incidents_with_the_reason() {
        let mut c = two_incidents(on());
        feed(&mut c, 1..=20, ramp, |k| 3.0 * k as f64 + 5.0 * noise(k, 11));
        assert!(c.co_move(2));
        let merged = c.settle();
        assert_eq!(c.open_count(), 1);
        assert_eq!(merged.len(), 1);
        let gone = c.take_merged();
        assert_eq!(gone.len(), 1, "the merged-away incident comes out of take_merged");
        let reasons = c.get(&merged[0]).unwrap().grouping_reasons.join("\n");
        assert!(reasons.contains("moved together with"), "{reasons}");
        assert!(reasons.contains("r = 0.9") && reasons.contains("over 21 points"), "{reasons}");
    }

    #[test]
    fn uncorrelated_series_do_not_join() {
        let mut c = two_incidents(on());
        feed(&mut c, 1..=40, |k| noise(k, 1), |k| noise(k, 2));
        assert!(!c.co_move(2));
        assert_eq!(c.open_count(), 2);
        assert!(c.take_merged().is_empty());
    }

    #[test]
    fn too_few_common_points_do_not_join() {
        // Both rings hold 25 points, but b's begin where a's are about to end: they share the
        // seed at t = 0 and steps 16..=24, ten points, fewer than the twelve asked for.
        let mut c = two_incidents(on());
        for k in 1..=39 {
            let t = k as i64 * STEP;
            let mut samples = Vec::new();
            if k <= 24 {
                samples.push(MetricSample { labels: labels("a", "errors"), timestamp_ms: t, value: ramp(k) });
            }
            if k >= 16 {
                samples.push(MetricSample { labels: labels("b", "errors"), timestamp_ms: t, value: ramp(k) });
            }
            c.learn(&samples.iter().collect());
        }
        assert!(!c.co_move(2));
        assert_eq!(c.open_count(), 2);
    }

    #[test]
    fn a_persons_split_keeps_series_that_move_together_apart() {
        let mut c = two_incidents(on());
        feed(&mut c, 1..=20, ramp, ramp);
        assert!(c.co_move(2));
        let one = c.settle().remove(0);
        let one = c.get(&one).unwrap().clone();
        let b_members: Vec<String> =
            one.members.iter().filter(|m| m.labels().get("service") == Some("b")).map(crate::regroup::identity_of).collect();
        c.split_by_person(&one.id, &b_members, "different problems (user:alice)", 3).unwrap();
        assert_eq!(c.open_count(), 2);
        // More of the same movement: the split holds.
        feed(&mut c, 21..=40, ramp, ramp);
        assert!(!c.co_move(4));
        assert_eq!(c.open_count(), 2);
    }

    #[test]
    fn co_movement_switched_off_joins_nothing_and_records_nothing() {
        let mut c = two_incidents(CorrelatorConfig { comove: false, ..on() });
        feed(&mut c, 1..=20, ramp, ramp);
        assert!(!c.co_move(2));
        assert_eq!((c.open_count(), c.comove_size()), (2, (0, 0)));
    }

    #[test]
    fn a_lone_anomaly_on_either_side_links_nothing() {
        // One anomalous series per service: neither carries, as for any link.
        let mut c = Correlator::new(on());
        c.note_anomaly(&anomaly("a", "errors", 0, 0.0), 1);
        c.note_anomaly(&anomaly("b", "errors", 0, 0.0), 1);
        feed(&mut c, 1..=20, ramp, ramp);
        assert!(!c.co_move(2));
        assert_eq!(c.open_count(), 2);
        let id = c.member_of.get(&format!("series:{}", labels("a", "errors").series_id())).cloned().unwrap();
        assert!(!carries(&c.open[&id].entities["service:a"]));
    }

    #[test]
    fn the_recorder_evicts_the_oldest_series_and_stays_under_its_byte_cap() {
        let max = 8;
        let mut r = Recorder::new(max);
        let long = "x".repeat(10 * MAX_TEXT);
        for i in 0..=max as u64 {
            r.start(SeriesId(i), &long, "service:s", (0, 1.0));
            assert!(r.bytes() <= r.max_bytes(), "{} > {}", r.bytes(), r.max_bytes());
        }
        assert_eq!(r.len(), max);
        assert!(!r.tracks.contains_key(&SeriesId(0)), "the N+1th series evicts the oldest");
        assert!(r.tracks.contains_key(&SeriesId(max as u64)));
        // A full ring holds RING points; more replace the oldest.
        let batch: SampleBatch = (1..=2 * RING as i64)
            .map(|k| MetricSample { labels: Labels::new(), timestamp_ms: k * STEP, value: k as f64 })
            .collect::<Vec<_>>()
            .iter()
            .collect();
        let id = batch.series(0).id;
        r.start(id, "empty", "service:s", (0, 0.0));
        r.record(&batch);
        let t = &r.tracks[&id];
        assert_eq!(t.len, RING);
        assert_eq!(t.points().first().map(|p| p.0), Some((RING as i64 + 1) * STEP));
        assert_eq!(t.step_ms, STEP);
        assert!(r.bytes() <= r.max_bytes());
        // Removal gives the bytes back.
        let keys: Vec<SeriesId> = r.tracks.keys().copied().collect();
        for k in keys {
            r.remove(k);
        }
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn pearson_aligns_on_buckets_and_refuses_flat_series() {
        // b is scraped 7 s later than a: same buckets at a 15 s step.
        let a: Vec<(i64, f64)> = (0..20).map(|k| (k * STEP, k as f64)).collect();
        let b: Vec<(i64, f64)> = (0..20).map(|k| (k * STEP + 7_000, -(k as f64))).collect();
        let (r, n) = pearson(&a, &b, STEP).unwrap();
        assert_eq!(n, 20);
        assert!((r + 1.0).abs() < 1e-9, "{r}");
        let flat: Vec<(i64, f64)> = (0..20).map(|k| (k * STEP, 1e9)).collect();
        assert!(pearson(&a, &flat, STEP).is_none());
    }
}
