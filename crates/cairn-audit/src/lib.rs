//! The audit log: hash chain, Merkle tree, signed checkpoints, proofs and their verification.
//!
//! Owns how an [`AuditDraft`] becomes a sealed [`AuditEvent`] (sequence number, time, previous
//! hash, own hash) and how a sequence of events is verified. Each entry's hash covers the previous
//! entry's hash and every field of its own, so changing, dropping, inserting or reordering any past
//! entry breaks the chain at a precise place.
//!
//! On top of the chain, as Certificate Transparency logs do:
//! - [`merkle`]: an RFC 6962 Merkle tree whose leaf `seq - 1` is entry `seq`'s hash, with
//!   inclusion and consistency proofs;
//! - [`checkpoint`]: ed25519-signed checkpoints (tree size + root) in the C2SP signed-note format,
//!   verified against a set of pinned public keys so keys can rotate;
//! - [`verify`]: the whole-log verifier (chain, then every checkpoint in written order);
//! - [`bundle`]: evidence bundles an auditor verifies offline with only the public key.
//!
//! Pure: it never reads a clock, a store or a file. The store seals drafts inside the transaction
//! of the state change they record and keeps the tree's nodes; the server signs and writes
//! checkpoints; the CLI reads files and calls the verifiers here.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod checkpoint;
pub mod export;
pub mod merkle;
pub mod stored;
pub mod verify;

use cairn_types::{AuditDraft, AuditEvent};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Everything an entry's hash covers, in a fixed order. `serde_json::Value` objects serialise with
/// sorted keys (the workspace does not enable `preserve_order`), so the bytes are canonical.
#[derive(Serialize)]
struct Covered<'a> {
    seq: u64,
    at_ms: i64,
    actor: &'a str,
    kind: &'a str,
    incident_id: &'a Option<String>,
    recommendation_id: &'a Option<String>,
    revision: Option<u32>,
    change_id: &'a Option<String>,
    policy_version: &'a Option<String>,
    reason: &'a str,
    payload: &'a serde_json::Value,
    // Fields added after the first release are left out when empty, so entries written before
    // them keep their hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: &'a Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    reason_codes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    diff_summary: &'a Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    affected_resources: &'a [String],
    prev_hash: &'a str,
}

/// The hash an event should have, from its contents.
pub fn entry_hash(e: &AuditEvent) -> String {
    let covered = Covered {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: &e.actor,
        kind: &e.kind,
        incident_id: &e.incident_id,
        recommendation_id: &e.recommendation_id,
        revision: e.revision,
        change_id: &e.change_id,
        policy_version: &e.policy_version,
        reason: &e.reason,
        payload: &e.payload,
        signal_id: &e.signal_id,
        model_version: &e.model_version,
        reason_codes: &e.reason_codes,
        diff_summary: &e.diff_summary,
        affected_resources: &e.affected_resources,
        prev_hash: &e.prev_hash,
    };
    // Serialising plain data into a Vec cannot fail.
    let body = serde_json::to_vec(&covered).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(e.prev_hash.as_bytes());
    h.update(b"\n");
    h.update(&body);
    hex::encode(h.finalize())
}

/// The Merkle leaf hash of an entry: `leaf_hash` of its 32-byte entry hash.
pub fn entry_leaf(e: &AuditEvent) -> merkle::Hash {
    match hex::decode(&e.hash) {
        Ok(raw) => merkle::leaf_hash(&raw),
        // Not hex: the chain check reports it; the leaf must still differ from any honest one.
        Err(_) => merkle::leaf_hash(e.hash.as_bytes()),
    }
}

/// Seals a draft as entry `seq`, chained to `prev_hash`.
pub fn seal(prev_hash: &str, seq: u64, at_ms: i64, draft: &AuditDraft) -> AuditEvent {
    let mut e = AuditEvent {
        seq,
        at_ms,
        actor: draft.actor.clone(),
        kind: draft.kind.clone(),
        incident_id: draft.incident_id.clone(),
        recommendation_id: draft.recommendation_id.clone(),
        revision: draft.revision,
        change_id: draft.change_id.clone(),
        policy_version: draft.policy_version.clone(),
        reason: draft.reason.clone(),
        payload: draft.payload.clone(),
        signal_id: draft.signal_id.clone(),
        model_version: draft.model_version.clone(),
        reason_codes: draft.reason_codes.clone(),
        diff_summary: draft.diff_summary.clone(),
        affected_resources: draft.affected_resources.clone(),
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
    };
    e.hash = entry_hash(&e);
    e
}

/// A verified chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSummary {
    pub entries: u64,
    /// Hash of the last entry (the genesis hash for an empty log).
    pub head_hash: String,
}

/// What is wrong at the first bad entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// The sequence number is not the next one: an entry was dropped, inserted or reordered.
    Gap,
    /// The entry does not point at the previous entry's hash: the chain was cut or spliced.
    PrevHashMismatch,
    /// The stored hash does not match the entry's contents: the entry was modified.
    HashMismatch,
}

/// The first place the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ChainBreak {
    pub seq: u64,
    pub kind: BreakKind,
    pub detail: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}: {}", self.seq, self.detail)
    }
}

/// Incremental verifier, for logs too long to hold in memory: feed entries in stored order.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier { expected_seq: 1, prev_hash: GENESIS_HASH.to_string() }
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        if e.seq != self.expected_seq {
            let detail = if e.seq > self.expected_seq {
                format!(
                    "expected entry {} next but found {}: entries {}..{} are missing",
                    self.expected_seq,
                    e.seq,
                    self.expected_seq,
                    e.seq - 1
                )
            } else {
                format!("expected entry {} next but found {}: entries were reordered or duplicated", self.expected_seq, e.seq)
            };
            return Err(ChainBreak { seq: self.expected_seq.min(e.seq), kind: BreakKind::Gap, detail });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainBreak {
                seq: e.seq,
                kind: BreakKind::PrevHashMismatch,
                detail: "does not link to the previous entry's hash — an entry before it was replaced, or the chain was spliced".into(),
            });
        }
        if entry_hash(e) != e.hash {
            return Err(ChainBreak {
                seq: e.seq,
                kind: BreakKind::HashMismatch,
                detail: "stored hash does not match its contents — the entry was modified".into(),
            });
        }
        self.expected_seq += 1;
        self.prev_hash = e.hash.clone();
        Ok(())
    }

    pub fn finish(self) -> ChainSummary {
        ChainSummary { entries: self.expected_seq - 1, head_hash: self.prev_hash }
    }
}

/// Verifies a whole chain in order, naming the first bad entry.
pub fn verify_chain(events: impl IntoIterator<Item = AuditEvent>) -> Result<ChainSummary, ChainBreak> {
    let mut v = ChainVerifier::new();
    for e in events {
        v.push(&e)?;
    }
    Ok(v.finish())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn chain(n: u64) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map(|e| e.hash.clone()).unwrap_or_else(|| GENESIS_HASH.into());
            let d = AuditDraft {
                actor: "system:cairn".into(),
                kind: "decision.made".into(),
                recommendation_id: Some(format!("rec-{i}")),
                revision: Some(1),
                reason: format!("reason {i}"),
                payload: json!({"b": i, "a": [1, 2]}),
                ..Default::default()
            };
            out.push(seal(&prev, i, 1000 + i as i64, &d));
        }
        out
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        let s = verify_chain(c.clone()).unwrap();
        assert_eq!(s.entries, 5);
        assert_eq!(s.head_hash, c[4].hash);
        assert_eq!(verify_chain(Vec::new()).unwrap().head_hash, GENESIS_HASH);
    }

    /// Entries written before the extra fields existed keep their hashes: this value was
    /// computed by the release that had only the original fields.
    const GOLDEN_FIRST_HASH: &str = "bd77e2aaeadd1bcbef3b3ba0444a253fc03e63431e015f25e5a5b291696f877e";

    #[test]
    fn hashes_of_entries_without_the_newer_fields_are_unchanged() {
        let c = chain(1);
        assert_eq!(c[0].hash, GOLDEN_FIRST_HASH);
    }

    #[test]
    fn payload_keys_serialise_sorted() {
        let v: serde_json::Value = serde_json::from_str(r#"{"z": 1, "a": 2}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"a":2,"z":1}"#);
    }

    #[test]
    fn modifying_any_field_is_detected_at_that_entry() {
        type Mutation = Box<dyn Fn(&mut AuditEvent)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|e| e.actor = "user:eve".into()),
            Box::new(|e| e.kind = "change.approved".into()),
            Box::new(|e| e.reason.push('!')),
            Box::new(|e| e.at_ms += 1),
            Box::new(|e| e.revision = Some(2)),
            Box::new(|e| e.payload = json!({"b": 0})),
            Box::new(|e| e.policy_version = Some("sha256:forged".into())),
            Box::new(|e| e.signal_id = Some("fp-forged".into())),
            Box::new(|e| e.model_version = Some("detector-v0".into())),
            Box::new(|e| e.reason_codes.push("forged".into())),
            Box::new(|e| e.diff_summary = Some("nothing changed".into())),
            Box::new(|e| e.affected_resources.push("prod/db".into())),
        ];
        for m in mutations {
            let mut c = chain(5);
            m(&mut c[2]);
            let b = verify_chain(c).unwrap_err();
            assert_eq!(b.seq, 3);
            assert_eq!(b.kind, BreakKind::HashMismatch);
        }
    }

    #[test]
    fn a_modified_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].reason = "rewritten".into();
        c[2].hash = entry_hash(&c[2]);
        let b = verify_chain(c).unwrap_err();
        assert_eq!((b.seq, b.kind), (4, BreakKind::PrevHashMismatch));
    }

    #[test]
    fn dropping_an_entry_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        let b = verify_chain(c).unwrap_err();
        assert_eq!((b.seq, b.kind), (2, BreakKind::Gap));
        assert!(b.to_string().contains("missing"), "{b}");
    }

    #[test]
    fn swapping_two_entries_is_detected() {
        let mut c = chain(5);
        c.swap(1, 2);
        let b = verify_chain(c).unwrap_err();
        assert_eq!((b.seq, b.kind), (2, BreakKind::Gap));
    }

    #[test]
    fn a_forged_entry_inserted_is_detected() {
        let mut c = chain(4);
        let forged = seal(&c[1].hash, 3, 5000, &AuditDraft { actor: "user:eve".into(), kind: "change.approved".into(), ..Default::default() });
        c.insert(2, forged);
        // Renumbering the rest is not enough: their links no longer match.
        for (i, e) in c.iter_mut().enumerate().skip(3) {
            e.seq = i as u64 + 1;
        }
        let b = verify_chain(c).unwrap_err();
        assert_eq!(b.seq, 4);
    }
}
