//! What the audit trail costs: appending an entry (seal + Merkle nodes, in its own SQLite
//! transaction on a file store), proving and checking inclusion, signing and opening a checkpoint,
//! and verifying a whole log (chain + tree + checkpoint) — at a log of 10 000 entries.
//!
//! `cargo bench -p cairn-bench --bench audit`. Deterministic inputs; throughput in entries.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use cairn_audit::checkpoint::{Checkpoint, NoteSigner, open_checkpoint};
use cairn_audit::merkle::{MemoryTree, verify_inclusion};
use cairn_audit::verify::PresentedCheckpoint;
use cairn_store::{AuditLog, AuditProofs, SqliteStore};
use cairn_types::AuditDraft;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const LOG: u64 = 10_000;

fn draft(i: u64) -> AuditDraft {
    AuditDraft {
        actor: "user:alice".into(),
        kind: "change.approved".into(),
        recommendation_id: Some(format!("rec-{}", i % 500)),
        revision: Some(1),
        change_id: Some(format!("chg-{}", i % 500)),
        policy_version: Some("sha256:0123456789abcdef".into()),
        reason: "checked the rollback plan".into(),
        payload: serde_json::json!({ "state": "approved", "version": i, "approvals": ["user:alice"] }),
        ..Default::default()
    }
}

fn filled_store(dir: &std::path::Path) -> SqliteStore {
    let s = SqliteStore::open(&dir.join("cairn.db")).unwrap();
    let batch: Vec<AuditDraft> = (0..LOG).map(draft).collect();
    for chunk in batch.chunks(1000) {
        s.record_audit(chunk, 1).unwrap();
    }
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = filled_store(dir.path());
    let key = NoteSigner::from_seed("cairn.bench/audit", [3; 32]).unwrap();
    let (size, root) = store.audit_tree_head().unwrap();
    let note = key.sign(&Checkpoint { origin: "cairn.bench/audit".into(), size, root });
    let pinned = [key.verifier()];

    let mut g = c.benchmark_group("audit");
    g.sample_size(30);
    g.throughput(Throughput::Elements(1));
    let mut i = LOG;
    g.bench_function("append_one_entry_own_transaction", |b| {
        b.iter(|| {
            i += 1;
            store.record_audit(&[draft(i)], 2).unwrap();
        })
    });
    // The same append as a pure computation, without SQLite: the seal and the tree's node hashes.
    let events = store.audit_events(&cairn_store::AuditQuery::default()).unwrap();
    let mut tree = MemoryTree::new();
    events.iter().for_each(|e| tree.push(cairn_audit::entry_leaf(e)));
    let mut prev = events.last().unwrap().hash.clone();
    let mut seq = events.len() as u64;
    g.bench_function("seal_and_tree_push_in_memory", |b| {
        b.iter(|| {
            seq += 1;
            let e = cairn_audit::seal(&prev, seq, 2, &draft(seq));
            tree.push(cairn_audit::entry_leaf(&e));
            prev = e.hash;
        })
    });
    g.bench_function("bundle_for_one_recommendation_from_store", |b| {
        let q = cairn_store::AuditQuery { recommendation_id: Some("rec-7".into()), ..Default::default() };
        b.iter(|| black_box(store.audit_evidence(&q, "recommendation rec-7", &note, size).unwrap()))
    });
    let t2 = {
        let mut t = MemoryTree::new();
        events.iter().take(size as usize).for_each(|e| t.push(cairn_audit::entry_leaf(e)));
        t
    };
    let proof = t2.inclusion_proof(4321, size).unwrap();
    let leaf = cairn_audit::entry_leaf(&events[4321]);
    g.bench_function("verify_one_inclusion_proof", |b| {
        b.iter(|| verify_inclusion(black_box(4321), size, &leaf, &proof, &root).unwrap())
    });
    g.bench_function("sign_checkpoint", |b| {
        b.iter(|| black_box(key.sign(&Checkpoint { origin: "cairn.bench/audit".into(), size, root })))
    });
    g.bench_function("open_checkpoint", |b| b.iter(|| black_box(open_checkpoint(&note, &pinned).unwrap())));
    g.finish();

    let mut g = c.benchmark_group("audit_verify_whole_log");
    g.sample_size(10);
    let fresh = tempfile::tempdir().unwrap();
    let small = filled_store(fresh.path());
    let (s2, r2) = small.audit_tree_head().unwrap();
    let cp = vec![PresentedCheckpoint {
        label: "1".into(),
        note: key.sign(&Checkpoint { origin: "cairn.bench/audit".into(), size: s2, root: r2 }),
    }];
    g.throughput(Throughput::Elements(LOG));
    g.bench_function("chain_tree_and_checkpoint_10k_entries", |b| {
        b.iter_batched(
            || (),
            |()| black_box(small.verify_audit_anchored(&cp, &pinned, Some("cairn.bench/audit")).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("chain_only_10k_entries", |b| b.iter(|| black_box(small.verify_audit().unwrap())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
