//! Verification, tree heads and evidence over a *stored* audit log, whatever backend holds it.
//!
//! A backend gives one consistent read of its log ([`StoredLog`]: the entries in sequence order and
//! the Merkle tree nodes it keeps beside them); what is checked, rebuilt and proven is decided here,
//! once, so that a second backend implements two reads, not the rules. Never writes.

use crate::bundle::{EvidenceBundle, build_bundle};
use crate::checkpoint::NoteVerifier;
use crate::merkle::{self, Hash, NodeSource};
use crate::verify::{AnchorError, LogReport, LogVerifier, PresentedCheckpoint};
use crate::{ChainBreak, ChainSummary, ChainVerifier};
use cairn_types::AuditEvent;

/// One consistent read of a stored audit log (a read transaction, a snapshot).
pub trait StoredLog: NodeSource {
    /// Calls `push` with every entry, in sequence order, and stops at the first error it returns
    /// (a broken chain, which the backend reports as its own error).
    fn scan(&self, push: &mut dyn FnMut(&AuditEvent) -> Result<(), ChainBreak>) -> Result<(), Self::Error>;
    /// Leaves held by the stored tree.
    fn tree_size(&self) -> Result<u64, Self::Error>;
}

/// What fails here beyond the backend's own errors.
#[derive(Debug, thiserror::Error)]
pub enum StoredLogError {
    #[error("the checkpoint signs {signed} entries but the log holds {held}")]
    CheckpointBeyondLog { signed: u64, held: u64 },
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Streams the whole log through the chain verifier.
pub fn verify<L: StoredLog + ?Sized>(log: &L) -> Result<ChainSummary, L::Error> {
    let mut verifier = ChainVerifier::new();
    log.scan(&mut |e| verifier.push(e))?;
    Ok(verifier.finish())
}

/// Streams the whole log through the chain verifier while rebuilding the Merkle tree from the
/// entries (never trusting the stored nodes), then checks the checkpoints, in written order.
pub fn verify_anchored<L>(
    log: &L,
    checkpoints: &[PresentedCheckpoint],
    pinned: &[NoteVerifier],
    origin: Option<&str>,
) -> Result<LogReport, L::Error>
where
    L: StoredLog + ?Sized,
    L::Error: From<StoredLogError>,
{
    let mut verifier = LogVerifier::new();
    log.scan(&mut |e| verifier.push(e))?;
    verifier.finish(checkpoints, pinned, origin).map_err(|e| StoredLogError::from(e).into())
}

/// The tree head (size, root), from the stored nodes.
pub fn tree_head<L: StoredLog + ?Sized>(log: &L) -> Result<(u64, Hash), L::Error> {
    let size = log.tree_size()?;
    Ok((size, merkle::root(log, size)?))
}

/// The root of the stored tree's first `size` leaves; `None` past the tree's size.
pub fn tree_root_at<L: StoredLog + ?Sized>(log: &L, size: u64) -> Result<Option<Hash>, L::Error> {
    if size > log.tree_size()? {
        return Ok(None);
    }
    merkle::root(log, size).map(Some)
}

/// An evidence bundle: `events` (ascending, as the backend selected them), each with its inclusion
/// proof in the tree of `checkpoint_size` entries that `checkpoint_note` signs; later events are
/// listed unproven. Refused when the checkpoint signs more entries than the log holds.
pub fn evidence<L>(
    log: &L,
    events: Vec<AuditEvent>,
    subject: &str,
    checkpoint_note: &str,
    checkpoint_size: u64,
) -> Result<EvidenceBundle, L::Error>
where
    L: StoredLog + ?Sized,
    L::Error: From<StoredLogError>,
{
    let held = log.tree_size()?;
    if checkpoint_size > held {
        return Err(StoredLogError::CheckpointBeyondLog { signed: checkpoint_size, held }.into());
    }
    build_bundle(subject, checkpoint_note, checkpoint_size, events, log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::verify_bundle;
    use crate::checkpoint::{Checkpoint, NoteSigner};
    use crate::merkle::{MemoryTree, MissingNode};
    use crate::{GENESIS_HASH, entry_leaf, seal};
    use cairn_types::AuditDraft;

    /// A second backend in a few lines: the entries and the tree nodes kept beside them.
    struct Memory {
        events: Vec<AuditEvent>,
        tree: MemoryTree,
    }

    #[derive(Debug, PartialEq)]
    enum MemoryError {
        Broken(u64),
        Node(MissingNode),
        Log(String),
    }

    impl From<MissingNode> for MemoryError {
        fn from(e: MissingNode) -> Self {
            MemoryError::Node(e)
        }
    }

    impl From<StoredLogError> for MemoryError {
        fn from(e: StoredLogError) -> Self {
            MemoryError::Log(e.to_string())
        }
    }

    impl NodeSource for Memory {
        type Error = MemoryError;
        fn node(&self, level: u32, index: u64) -> Result<Hash, MemoryError> {
            Ok(self.tree.node(level, index)?)
        }
    }

    impl StoredLog for Memory {
        fn scan(&self, push: &mut dyn FnMut(&AuditEvent) -> Result<(), ChainBreak>) -> Result<(), MemoryError> {
            self.events.iter().try_for_each(|e| push(e).map_err(|b| MemoryError::Broken(b.seq)))
        }
        fn tree_size(&self) -> Result<u64, MemoryError> {
            Ok(self.tree.size())
        }
    }

    fn log(n: u64) -> Memory {
        let mut m = Memory { events: Vec::new(), tree: MemoryTree::new() };
        for seq in 1..=n {
            let prev = m.events.last().map_or(GENESIS_HASH.to_string(), |e| e.hash.clone());
            let e = seal(
                &prev,
                seq,
                seq as i64 * 1000,
                &AuditDraft { actor: "user:alice".into(), kind: "change.approved".into(), ..Default::default() },
            );
            m.tree.push(entry_leaf(&e));
            m.events.push(e);
        }
        m
    }

    #[test]
    fn a_backend_that_gives_its_entries_and_nodes_gets_verification_heads_and_evidence() {
        let m = log(7);
        assert_eq!(verify(&m).unwrap().entries, 7);
        let (size, root) = tree_head(&m).unwrap();
        assert_eq!((size, Some(root)), (7, m.tree.root_at(7)));
        assert_eq!(tree_root_at(&m, 5).unwrap(), m.tree.root_at(5));
        assert_eq!(tree_root_at(&m, 8).unwrap(), None);

        let key = NoteSigner::from_seed("cairn-test", [7; 32]).expect("key");
        let note = key.sign(&Checkpoint { origin: "cairn.test/stored".into(), size: 5, root: m.tree.root_at(5).unwrap() });
        let cps = [PresentedCheckpoint { label: "0001-5.checkpoint".into(), note: note.clone() }];
        let report = verify_anchored(&m, &cps, &[key.verifier()], Some("cairn.test/stored")).unwrap();
        assert_eq!(report.chain.entries, 7);

        // Entries 4 and 6: the first proven in the checkpoint's tree, the second after it.
        let picked = vec![m.events[3].clone(), m.events[5].clone()];
        let bundle = evidence(&m, picked.clone(), "change chg-1", &note, 5).unwrap();
        let checked = verify_bundle(&bundle, &[key.verifier()]).unwrap();
        assert_eq!((checked.proven_seqs, checked.unanchored_seqs), (vec![4], vec![6]));
        // A checkpoint claiming more entries than the log holds is refused, not half-proven.
        let err = evidence(&m, picked, "change chg-1", &note, 9).unwrap_err();
        assert_eq!(err, MemoryError::Log("the checkpoint signs 9 entries but the log holds 7".into()));
    }

    #[test]
    fn an_edited_entry_or_a_forged_checkpoint_is_refused() {
        let mut m = log(4);
        m.events[2].actor = "user:mallory".into();
        assert_eq!(verify(&m).unwrap_err(), MemoryError::Broken(3));

        let m = log(4);
        let key = NoteSigner::from_seed("cairn-test", [7; 32]).expect("key");
        let wrong_root = m.tree.root_at(3).unwrap();
        let note = key.sign(&Checkpoint { origin: "cairn.test/stored".into(), size: 4, root: wrong_root });
        let cps = [PresentedCheckpoint { label: "0001-4.checkpoint".into(), note }];
        let err = verify_anchored(&m, &cps, &[key.verifier()], Some("cairn.test/stored")).unwrap_err();
        assert!(matches!(err, MemoryError::Log(ref s) if s.contains("0001-4.checkpoint")), "{err:?}");
    }
}
