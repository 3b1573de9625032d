//! Whole-log verification: the hash chain entry by entry, then the Merkle tree against every
//! signed checkpoint, in the order the checkpoints were written.
//!
//! What each check catches:
//! - sequence gaps, broken links, modified entries: [`ChainVerifier`], at the first bad entry;
//! - a rewritten history whose hashes were all recomputed: the tree root at a checkpoint's size
//!   no longer matches what the key signed, located between the last matching checkpoint and it;
//! - a truncated tail: a checkpoint signs more entries than the log holds;
//! - forged or foreign checkpoints: signatures against the pinned keys;
//! - an old checkpoint replayed as the latest, or two checkpoints that disagree (a fork): sizes
//!   must not go down and equal sizes must have equal roots, in written order.
//!
//! Entries after the last checkpoint are the *unanchored tail*: chained, but not yet signed.

use crate::checkpoint::{CheckpointError, NoteVerifier, VerifiedCheckpoint, open_checkpoint};
use crate::merkle::{MemoryTree, ProofError, verify_consistency};
use crate::{ChainBreak, ChainSummary, ChainVerifier, entry_leaf};
use cairn_types::AuditEvent;

/// A checkpoint as read from its sink: where it came from (a file name) and its signed note.
#[derive(Clone, Debug)]
pub struct PresentedCheckpoint {
    pub label: String,
    pub note: String,
}

/// The first problem with the checkpoints, naming the checkpoint and, when it can be known, the
/// entries concerned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error("checkpoint {label}: {source}")]
    Signature { label: String, source: CheckpointError },
    #[error("checkpoint {label} has origin {found:?}, but this log is {expected:?}")]
    Origin { label: String, expected: String, found: String },
    #[error(
        "checkpoint {label} signs {signed} entries but the log holds {held}: entries {first_missing}..{signed} were removed (tail truncated)",
        first_missing = held + 1
    )]
    Truncated { label: String, signed: u64, held: u64 },
    #[error(
        "checkpoint {label}: the log's first {size} entries no longer hash to the signed root — an entry in {first}..{size} was rewritten (with its chain recomputed)"
    )]
    RootMismatch { label: String, size: u64, first: u64 },
    #[error(
        "checkpoint {label} (size {size}) was written after checkpoint {previous_label} (size {previous_size}): an older checkpoint is being presented as newer (replay)"
    )]
    OutOfOrder { label: String, size: u64, previous_label: String, previous_size: u64 },
    #[error("checkpoints {previous_label} and {label} both sign size {size} with different roots: the log was forked")]
    Fork { label: String, previous_label: String, size: u64 },
    #[error("checkpoint {label} is not consistent with checkpoint {previous_label}: {source}")]
    Inconsistent { label: String, previous_label: String, source: ProofError },
}

impl AnchorError {
    /// The first entry the problem concerns, when there is one.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            AnchorError::Truncated { held, .. } => Some(held + 1),
            AnchorError::RootMismatch { first, .. } => Some(*first),
            _ => None,
        }
    }
}

/// A verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    pub chain: ChainSummary,
    /// The Merkle root of the whole log.
    pub root: crate::merkle::Hash,
    pub checkpoints_checked: usize,
    /// The newest checkpoint, when there is one.
    pub latest: Option<VerifiedCheckpoint>,
    /// Entries after the newest checkpoint: chained but not yet signed.
    pub unanchored: u64,
}

/// Streams the log through the chain verifier while building the Merkle tree.
#[derive(Debug, Default)]
pub struct LogVerifier {
    chain: ChainVerifier,
    tree: MemoryTree,
}

impl LogVerifier {
    pub fn new() -> LogVerifier {
        LogVerifier::default()
    }

    pub fn push(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        self.chain.push(e)?;
        self.tree.push(entry_leaf(e));
        Ok(())
    }

    pub fn tree(&self) -> &MemoryTree {
        &self.tree
    }

    /// Checks the checkpoints, in written order, against the tree of the entries pushed.
    pub fn finish(
        self,
        checkpoints: &[PresentedCheckpoint],
        pinned: &[NoteVerifier],
        origin: Option<&str>,
    ) -> Result<LogReport, AnchorError> {
        let tree = &self.tree;
        let held = tree.size();
        let mut previous: Option<(String, VerifiedCheckpoint)> = None;
        // The largest size known to match the log: a mismatch is located after it.
        let mut good_up_to = 0u64;
        for p in checkpoints {
            let label = p.label.clone();
            let v = open_checkpoint(&p.note, pinned)
                .map_err(|source| AnchorError::Signature { label: label.clone(), source })?;
            let cp = &v.checkpoint;
            if let Some(expected) = origin
                && cp.origin != expected
            {
                return Err(AnchorError::Origin { label, expected: expected.into(), found: cp.origin.clone() });
            }
            if let Some((prev_label, prev)) = &previous {
                let prev = &prev.checkpoint;
                if cp.size < prev.size {
                    return Err(AnchorError::OutOfOrder {
                        label,
                        size: cp.size,
                        previous_label: prev_label.clone(),
                        previous_size: prev.size,
                    });
                }
                if cp.size == prev.size && cp.root != prev.root {
                    return Err(AnchorError::Fork { label, previous_label: prev_label.clone(), size: cp.size });
                }
            }
            if cp.size > held {
                return Err(AnchorError::Truncated { label, signed: cp.size, held });
            }
            if tree.root_at(cp.size) != Some(cp.root) {
                return Err(AnchorError::RootMismatch { label, size: cp.size, first: good_up_to + 1 });
            }
            if let Some((prev_label, prev)) = &previous {
                let prev = &prev.checkpoint;
                if prev.size > 0 {
                    let proof = tree.consistency_proof(prev.size, cp.size).unwrap_or_default();
                    verify_consistency(prev.size, cp.size, &prev.root, &cp.root, &proof).map_err(|source| {
                        AnchorError::Inconsistent { label: label.clone(), previous_label: prev_label.clone(), source }
                    })?;
                }
            }
            good_up_to = good_up_to.max(cp.size);
            previous = Some((label, v));
        }
        let latest = previous.map(|(_, v)| v);
        let unanchored = held - latest.as_ref().map_or(0, |v| v.checkpoint.size);
        Ok(LogReport {
            root: tree.root_at(held).unwrap_or_else(crate::merkle::empty_root),
            chain: self.chain.finish(),
            checkpoints_checked: checkpoints.len(),
            latest,
            unanchored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, NoteSigner};
    use crate::tests::chain;
    use crate::{BreakKind, entry_hash, seal};
    use cairn_types::AuditDraft;

    const ORIGIN: &str = "cairn.test/audit";

    fn key(seed: u8) -> NoteSigner {
        NoteSigner::from_seed("cairn-audit", [seed; 32]).expect("key")
    }

    /// Checkpoints of `events` at the given sizes, signed by `key`.
    fn checkpoints(events: &[AuditEvent], sizes: &[u64], key: &NoteSigner) -> Vec<PresentedCheckpoint> {
        let mut t = MemoryTree::new();
        for e in events {
            t.push(entry_leaf(e));
        }
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| PresentedCheckpoint {
                label: format!("{i:04}-{size}.checkpoint"),
                note: key.sign(&Checkpoint { origin: ORIGIN.into(), size, root: t.root_at(size).expect("root") }),
            })
            .collect()
    }

    fn verify(events: &[AuditEvent], cps: &[PresentedCheckpoint], pinned: &NoteSigner) -> Result<LogReport, String> {
        let mut v = LogVerifier::new();
        for e in events {
            v.push(e).map_err(|b| format!("chain: {b}"))?;
        }
        v.finish(cps, &[pinned.verifier()], Some(ORIGIN)).map_err(|e| format!("anchor: {e}"))
    }

    fn verify_err(events: &[AuditEvent], cps: &[PresentedCheckpoint], pinned: &NoteSigner) -> AnchorError {
        let mut v = LogVerifier::new();
        for e in events {
            v.push(e).expect("the chain itself is intact in this scenario");
        }
        v.finish(cps, &[pinned.verifier()], Some(ORIGIN)).expect_err("must be refused")
    }

    #[test]
    fn an_untouched_log_verifies_and_reports_its_unanchored_tail() {
        let k = key(1);
        let log = chain(10);
        let cps = checkpoints(&log, &[3, 3, 7], &k);
        let r = verify(&log, &cps, &k).expect("verifies");
        assert_eq!(r.chain.entries, 10);
        assert_eq!(r.checkpoints_checked, 3);
        assert_eq!(r.latest.expect("latest").checkpoint.size, 7);
        assert_eq!(r.unanchored, 3, "entries 8..10 are not signed yet");
    }

    #[test]
    fn a_modified_field_is_detected_at_that_entry() {
        let k = key(1);
        let mut log = chain(6);
        let cps = checkpoints(&log, &[6], &k);
        log[3].actor = "user:eve".into();
        let err = verify(&log, &cps, &k).expect_err("detected");
        assert!(err.starts_with("chain: entry 4:"), "{err}");
        let mut v = LogVerifier::new();
        let err = log.iter().try_for_each(|e| v.push(e)).expect_err("detected");
        assert_eq!((err.seq, err.kind), (4, BreakKind::HashMismatch));
    }

    #[test]
    fn deleting_or_reordering_entries_is_detected_at_the_place() {
        let mut log = chain(6);
        log.remove(2);
        let err = crate::verify_chain(log).expect_err("detected");
        assert_eq!((err.seq, err.kind), (3, BreakKind::Gap));
        let mut log = chain(6);
        log.swap(3, 4);
        let err = crate::verify_chain(log).expect_err("detected");
        assert_eq!((err.seq, err.kind), (4, BreakKind::Gap));
    }

    /// Someone rewrites entry 5 and recomputes every hash after it: the chain is self-consistent,
    /// but the checkpoint signed before the rewrite catches it and locates it after checkpoint 4.
    #[test]
    fn a_rewritten_history_with_recomputed_hashes_fails_against_the_checkpoint() {
        let k = key(1);
        let log = chain(8);
        let cps = checkpoints(&log, &[4, 8], &k);
        let mut forged: Vec<AuditEvent> = log[..4].to_vec();
        for e in &log[4..] {
            let mut d = AuditDraft {
                actor: e.actor.clone(),
                kind: e.kind.clone(),
                recommendation_id: e.recommendation_id.clone(),
                revision: e.revision,
                reason: e.reason.clone(),
                payload: e.payload.clone(),
                ..Default::default()
            };
            if e.seq == 5 {
                d.reason = "nothing happened".into();
            }
            let prev = forged.last().map(|p| p.hash.clone()).expect("prev");
            forged.push(seal(&prev, e.seq, e.at_ms, &d));
        }
        let err = verify_err(&forged, &cps, &k);
        assert!(matches!(err, AnchorError::RootMismatch { size: 8, first: 5, .. }), "{err}");
        assert_eq!(err.first_bad_seq(), Some(5));
    }

    #[test]
    fn a_truncated_tail_is_detected_against_the_checkpoint() {
        let k = key(1);
        let log = chain(9);
        let cps = checkpoints(&log, &[5, 9], &k);
        let err = verify_err(&log[..7], &cps, &k);
        assert_eq!(err, AnchorError::Truncated { label: cps[1].label.clone(), signed: 9, held: 7 });
        assert!(err.to_string().contains("entries 8..9 were removed"), "{err}");
    }

    #[test]
    fn an_inserted_forged_entry_is_detected() {
        let k = key(1);
        let log = chain(5);
        let cps = checkpoints(&log, &[5], &k);
        // A forged entry appended with a valid link: the chain accepts it, but it is beyond the
        // checkpoint (unanchored) — and inserting it in the middle breaks the chain or the root.
        let forged = seal(&log[4].hash, 6, 9999, &AuditDraft { actor: "user:eve".into(), kind: "change.approved".into(), ..Default::default() });
        let mut with_tail = log.clone();
        with_tail.push(forged);
        let r = verify(&with_tail, &cps, &k).expect("chain is intact");
        assert_eq!(r.unanchored, 1, "the forged entry is reported as not covered by any checkpoint");
        let mut mid = log[..2].to_vec();
        mid.push(seal(&log[1].hash, 3, 9999, &AuditDraft { actor: "user:eve".into(), ..Default::default() }));
        for e in &log[2..] {
            let mut e = e.clone();
            e.seq += 1;
            mid.push(e);
        }
        let err = crate::verify_chain(mid).expect_err("detected");
        assert_eq!(err.seq, 4);
    }

    #[test]
    fn a_forked_checkpoint_is_refused() {
        let k = key(1);
        let log = chain(6);
        let mut cps = checkpoints(&log, &[6], &k);
        let mut other = chain(6);
        other[5].reason = "another history".into();
        other[5].hash = entry_hash(&other[5]);
        cps.extend(checkpoints(&other, &[6], &k).into_iter().map(|mut c| {
            c.label = "0001-6.checkpoint".into();
            c
        }));
        let err = verify_err(&log, &cps, &k);
        assert!(matches!(err, AnchorError::Fork { size: 6, .. }), "{err}");
    }

    #[test]
    fn a_checkpoint_signed_with_the_wrong_key_is_refused() {
        let log = chain(4);
        let cps = checkpoints(&log, &[4], &key(2));
        let err = verify_err(&log, &cps, &key(1));
        assert!(matches!(err, AnchorError::Signature { source: CheckpointError::UnknownKey { .. }, .. }), "{err}");
    }

    #[test]
    fn an_old_checkpoint_replayed_as_the_latest_is_refused() {
        let k = key(1);
        let log = chain(8);
        let mut cps = checkpoints(&log, &[3, 8], &k);
        // The size-3 checkpoint is copied in again as if it had been written last.
        let mut replay = cps[0].clone();
        replay.label = "0002-3.checkpoint".into();
        cps.push(replay);
        let err = verify_err(&log, &cps, &k);
        assert!(matches!(err, AnchorError::OutOfOrder { size: 3, previous_size: 8, .. }), "{err}");
    }

    #[test]
    fn a_checkpoint_from_another_log_is_refused() {
        let k = key(1);
        let log = chain(3);
        let mut t = MemoryTree::new();
        log.iter().for_each(|e| t.push(entry_leaf(e)));
        let note = k.sign(&Checkpoint { origin: "other.example/log".into(), size: 3, root: t.root_at(3).expect("root") });
        let err = verify_err(&log, &[PresentedCheckpoint { label: "x".into(), note }], &k);
        assert!(matches!(err, AnchorError::Origin { .. }), "{err}");
    }
}
