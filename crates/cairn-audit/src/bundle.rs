//! Evidence bundles: the audit entries about one subject (a recommendation, say), each with its
//! inclusion proof, and the signed checkpoint they are proven against. An auditor checks a bundle
//! offline with nothing but the log's public key: each entry's hash is recomputed from its fields,
//! each proof must lead to the signed root, and the checkpoint's signature must verify.
//!
//! The JSON shape is stable (`format: "cairn.audit.evidence.v1"`); hashes in proofs are hex.

use crate::checkpoint::{CheckpointError, NoteVerifier, VerifiedCheckpoint, open_checkpoint};
use crate::merkle::{Hash, NodeSource, ProofError, inclusion_proof, verify_inclusion};
use crate::{entry_hash, entry_leaf};
use cairn_types::AuditEvent;
use serde::{Deserialize, Serialize};

pub const BUNDLE_FORMAT: &str = "cairn.audit.evidence.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundle {
    pub format: String,
    /// What the bundle is about, e.g. `recommendation rec-…`.
    pub subject: String,
    /// The signed checkpoint (C2SP signed note) every proof leads to.
    pub checkpoint: String,
    /// Ascending by sequence number.
    pub entries: Vec<ProvenEntry>,
    /// Entries about the subject written after the checkpoint: listed, not proven. Prove again
    /// after the next checkpoint to cover them.
    #[serde(default)]
    pub unanchored_seqs: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenEntry {
    pub event: AuditEvent,
    /// The audit path of leaf `seq - 1` in the checkpoint's tree, hex, leaf side first.
    pub inclusion_proof: Vec<String>,
}

/// Why a bundle was refused. Names the entry when one is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not an evidence bundle of format {BUNDLE_FORMAT}: {0}")]
    Format(String),
    #[error("the bundle's checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("entry {seq}: its fields do not hash to its recorded hash — the entry was modified")]
    EntryModified { seq: u64 },
    #[error("entry {seq}: not proven to be in the signed log: {source}")]
    NotIncluded { seq: u64, source: ProofError },
    #[error("entry {seq}: a proof hash is not 32 bytes of hex")]
    MalformedProof { seq: u64 },
    #[error("entries are not in ascending sequence order at entry {seq}")]
    Order { seq: u64 },
    #[error("the bundle proves no entries")]
    Empty,
}

/// What a verified bundle established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleReport {
    pub checkpoint: VerifiedCheckpoint,
    pub proven_seqs: Vec<u64>,
    pub unanchored_seqs: Vec<u64>,
}

/// Builds a bundle: `events` (ascending) are proven against the tree of `checkpoint_size` entries
/// held by `nodes`; later ones are listed as unanchored.
pub fn build_bundle<S: NodeSource + ?Sized>(
    subject: &str,
    checkpoint_note: &str,
    checkpoint_size: u64,
    events: Vec<AuditEvent>,
    nodes: &S,
) -> Result<EvidenceBundle, S::Error> {
    let mut entries = Vec::new();
    let mut unanchored_seqs = Vec::new();
    for event in events {
        if event.seq == 0 || event.seq > checkpoint_size {
            unanchored_seqs.push(event.seq);
            continue;
        }
        let proof = inclusion_proof(nodes, event.seq - 1, checkpoint_size)?.unwrap_or_default();
        entries.push(ProvenEntry { event, inclusion_proof: proof.iter().map(hex::encode).collect() });
    }
    Ok(EvidenceBundle {
        format: BUNDLE_FORMAT.into(),
        subject: subject.into(),
        checkpoint: checkpoint_note.into(),
        entries,
        unanchored_seqs,
    })
}

/// Verifies a bundle offline against pinned public keys.
pub fn verify_bundle(bundle: &EvidenceBundle, pinned: &[NoteVerifier]) -> Result<BundleReport, BundleError> {
    if bundle.format != BUNDLE_FORMAT {
        return Err(BundleError::Format(format!("format is {:?}", bundle.format)));
    }
    let checkpoint = open_checkpoint(&bundle.checkpoint, pinned)?;
    if bundle.entries.is_empty() {
        return Err(BundleError::Empty);
    }
    let cp = &checkpoint.checkpoint;
    let mut proven = Vec::new();
    let mut last = 0u64;
    for entry in &bundle.entries {
        let e = &entry.event;
        if e.seq <= last {
            return Err(BundleError::Order { seq: e.seq });
        }
        last = e.seq;
        if entry_hash(e) != e.hash {
            return Err(BundleError::EntryModified { seq: e.seq });
        }
        let proof: Vec<Hash> = entry
            .inclusion_proof
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
            .collect::<Option<_>>()
            .ok_or(BundleError::MalformedProof { seq: e.seq })?;
        let index = e.seq.checked_sub(1).ok_or(BundleError::Order { seq: 0 })?;
        verify_inclusion(index, cp.size, &entry_leaf(e), &proof, &cp.root)
            .map_err(|source| BundleError::NotIncluded { seq: e.seq, source })?;
        proven.push(e.seq);
    }
    Ok(BundleReport { checkpoint, proven_seqs: proven, unanchored_seqs: bundle.unanchored_seqs.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, NoteSigner};
    use crate::merkle::MemoryTree;
    use crate::tests::chain;

    fn setup(n: u64, size: u64) -> (Vec<AuditEvent>, MemoryTree, NoteSigner, String) {
        let log = chain(n);
        let mut t = MemoryTree::new();
        log.iter().for_each(|e| t.push(entry_leaf(e)));
        let k = NoteSigner::from_seed("cairn-audit", [4; 32]).expect("key");
        let note = k.sign(&Checkpoint { origin: "cairn.test/audit".into(), size, root: t.root_at(size).expect("root") });
        (log, t, k, note)
    }

    fn bundle_of(seqs: &[u64]) -> (EvidenceBundle, NoteSigner) {
        let (log, t, k, note) = setup(11, 9);
        let events = log.into_iter().filter(|e| seqs.contains(&e.seq)).collect();
        (build_bundle("recommendation rec-x", &note, 9, events, &t).expect("bundle"), k)
    }

    #[test]
    fn a_bundle_round_trips_through_json_and_verifies() {
        let (b, k) = bundle_of(&[2, 5, 9, 10]);
        let json = serde_json::to_string_pretty(&b).expect("json");
        let back: EvidenceBundle = serde_json::from_str(&json).expect("parses");
        let r = verify_bundle(&back, &[k.verifier()]).expect("verifies");
        assert_eq!(r.proven_seqs, vec![2, 5, 9]);
        assert_eq!(r.unanchored_seqs, vec![10]);
        assert_eq!(r.checkpoint.checkpoint.size, 9);
    }

    #[test]
    fn a_modified_entry_in_a_bundle_is_refused_and_named() {
        let (mut b, k) = bundle_of(&[2, 5]);
        b.entries[1].event.reason = "edited".into();
        assert_eq!(verify_bundle(&b, &[k.verifier()]), Err(BundleError::EntryModified { seq: 5 }));
        // Recomputing the entry's hash does not help: it is no longer the leaf the log signed.
        b.entries[1].event.hash = entry_hash(&b.entries[1].event);
        assert!(matches!(verify_bundle(&b, &[k.verifier()]), Err(BundleError::NotIncluded { seq: 5, .. })));
    }

    #[test]
    fn forged_proofs_in_a_bundle_are_refused() {
        let (b, k) = bundle_of(&[3]);
        let pinned = [k.verifier()];
        let mut flipped = b.clone();
        let mut h = hex::decode(&flipped.entries[0].inclusion_proof[0]).expect("hex");
        h[0] ^= 1;
        flipped.entries[0].inclusion_proof[0] = hex::encode(h);
        assert!(matches!(verify_bundle(&flipped, &pinned), Err(BundleError::NotIncluded { seq: 3, .. })));
        let mut short = b.clone();
        short.entries[0].inclusion_proof.pop();
        assert!(matches!(verify_bundle(&short, &pinned), Err(BundleError::NotIncluded { seq: 3, .. })));
        let mut garbage = b.clone();
        garbage.entries[0].inclusion_proof[0] = "zz".into();
        assert_eq!(verify_bundle(&garbage, &pinned), Err(BundleError::MalformedProof { seq: 3 }));
        // The same entry and proof claimed at another position.
        let mut moved = b.clone();
        moved.entries[0].event.seq = 4;
        assert!(verify_bundle(&moved, &pinned).is_err());
    }

    #[test]
    fn a_bundle_with_a_replaced_checkpoint_is_refused() {
        let (b, k) = bundle_of(&[3]);
        let mut other = b.clone();
        let eve = NoteSigner::from_seed("cairn-audit", [9; 32]).expect("key");
        let cp = Checkpoint::parse_body(b.checkpoint.split("\n\n").next().map(|s| format!("{s}\n")).as_deref().unwrap_or(""))
            .expect("body");
        other.checkpoint = eve.sign(&cp);
        assert!(matches!(verify_bundle(&other, &[k.verifier()]), Err(BundleError::Checkpoint(_))));
        let mut resized = b.clone();
        resized.checkpoint = b.checkpoint.replacen("\n9\n", "\n10\n", 1);
        assert!(matches!(verify_bundle(&resized, &[k.verifier()]), Err(BundleError::Checkpoint(_))));
    }
}
