//! The RFC 6962 Merkle tree over the audit log (the tree Certificate Transparency logs use, also
//! specified in RFC 9162 §2.1 and C2SP tlog-checkpoint).
//!
//! Leaves and interior nodes are hashed with different prefixes (`0x00` and `0x01`) so a leaf can
//! never be passed off as a node. The leaf data of audit entry `seq` is its 32-byte entry hash, at
//! leaf index `seq - 1`.
//!
//! Every hash this module needs is the root of a *perfect* subtree (2^level leaves starting at a
//! multiple of 2^level), asked of a [`NodeSource`]. The store keeps those nodes in a table as it
//! appends, so roots and proofs never re-read the whole log; [`MemoryTree`] keeps them in memory
//! for verifiers that stream the log once.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where perfect-subtree hashes come from. `node(level, index)` is the root of leaves
/// `index·2^level .. (index+1)·2^level`; level 0 holds the leaf hashes.
pub trait NodeSource {
    type Error;
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly below `n` (n ≥ 2): where RFC 6962 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The hash of the `n` leaves starting at `start` (MTH of that range).
fn subtree<S: NodeSource + ?Sized>(src: &S, start: u64, n: u64) -> Result<Hash, S::Error> {
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return src.node(level, start >> level);
    }
    let k = split(n);
    Ok(node_hash(&subtree(src, start, k)?, &subtree(src, start + k, n - k)?))
}

/// The root of the tree of the first `size` leaves.
pub fn root<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 { Ok(empty_root()) } else { subtree(src, 0, size) }
}

/// The nodes that become complete when leaf number `index` (0-based; the tree had `index` leaves)
/// is appended: the leaf itself and each perfect subtree it closes. The source must already hold
/// every node of the first `index` leaves.
pub fn nodes_completed_by<S: NodeSource + ?Sized>(src: &S, index: u64, leaf: Hash) -> Result<Vec<(u32, u64, Hash)>, S::Error> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut i, mut h) = (0u32, index, leaf);
    while i & 1 == 1 {
        let left = src.node(level, i - 1)?;
        h = node_hash(&left, &h);
        level += 1;
        i >>= 1;
        out.push((level, i, h));
    }
    Ok(out)
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 6962 §2.1.1), leaf-side first.
pub fn inclusion_proof<S: NodeSource + ?Sized>(src: &S, index: u64, size: u64) -> Result<Option<Vec<Hash>>, S::Error> {
    if index >= size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof)?;
    Ok(Some(proof))
}

fn path<S: NodeSource + ?Sized>(src: &S, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, start, k, out)?;
        out.push(subtree(src, start + k, n - k)?);
    } else {
        path(src, m - k, start + k, n - k, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// The proof that the tree of `old_size` leaves is a prefix of the tree of `new_size` leaves
/// (RFC 6962 §2.1.2). `None` when `old_size` is 0 or greater than `new_size`.
pub fn consistency_proof<S: NodeSource + ?Sized>(src: &S, old_size: u64, new_size: u64) -> Result<Option<Vec<Hash>>, S::Error> {
    if old_size == 0 || old_size > new_size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    subproof(src, old_size, 0, new_size, true, &mut proof)?;
    Ok(Some(proof))
}

fn subproof<S: NodeSource + ?Sized>(src: &S, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    if m == n {
        if !whole {
            out.push(subtree(src, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, k, whole, out)?;
        out.push(subtree(src, start + k, n - k)?);
    } else {
        subproof(src, m - k, start + k, n - k, false, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// Why a proof was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} entries")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("the old tree size {old} is larger than the new tree size {new}: a log never shrinks")]
    SizeDecreased { old: u64, new: u64 },
    #[error("equal tree sizes ({size}) with different root hashes: the log was forked")]
    Fork { size: u64 },
    #[error("a consistency proof from an empty tree proves nothing")]
    EmptyOldTree,
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeDecreased { old: old_size, new: new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::Fork { size: old_size }) };
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Every perfect-subtree hash of a tree, in memory: `levels[l][i]` is `node(l, i)`. About 64 bytes
/// per leaf; for verifiers that read the log once and then answer roots and proofs at any size.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

/// A node a tree does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the tree holds no node at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u32,
    pub index: u64,
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;
    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

impl MemoryTree {
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash (already `leaf_hash`ed).
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut h = leaf;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
            let n = self.levels[level].len();
            if n % 2 == 1 {
                break;
            }
            h = node_hash(&self.levels[level][n - 2], &h);
            level += 1;
        }
    }

    /// The root at any size up to the current one.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        root(self, size).ok()
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if size > self.size() {
            return None;
        }
        inclusion_proof(self, index, size).ok().flatten()
    }

    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Option<Vec<Hash>> {
        if new_size > self.size() {
            return None;
        }
        consistency_proof(self, old_size, new_size).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).expect("hex");
        v.try_into().expect("32 bytes")
    }

    // Known-answer vectors from the transparency-dev reference tests:
    // github.com/transparency-dev/merkle, testonly/constants.go (LeafInputs, RootHashes,
    // NodeHashes) and proof/verify_test.go (inclusionProofs, consistencyProofs; leaf numbers
    // there are 1-based). They descend from Google's certificate-transparency merkle_tree_test.
    const LEAF_INPUTS: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf number, 1-based; tree size; proof)
    const INCLUSION: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (3, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            2,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, proof)
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn reference_tree() -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in LEAF_INPUTS {
            t.push(leaf_hash(&hex::decode(l).expect("hex")));
        }
        t
    }

    fn hashes(v: &[&str]) -> Vec<Hash> {
        v.iter().map(|s| h(s)).collect()
    }

    #[test]
    fn roots_match_the_reference_vectors_at_every_size() {
        let t = reference_tree();
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(t.root_at(size as u64), Some(h(want)), "size {size}");
        }
        assert_eq!(empty_root(), h(ROOTS[0]));
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let t = reference_tree();
        for &(leaf, size, proof) in INCLUSION {
            let index = leaf - 1;
            let want = hashes(proof);
            assert_eq!(t.inclusion_proof(index, size), Some(want.clone()), "leaf {leaf} size {size}");
            let lh = leaf_hash(&hex::decode(LEAF_INPUTS[index as usize]).expect("hex"));
            verify_inclusion(index, size, &lh, &want, &h(ROOTS[size as usize])).expect("verifies");
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let t = reference_tree();
        for &(old, new, proof) in CONSISTENCY {
            let want = hashes(proof);
            assert_eq!(t.consistency_proof(old, new), Some(want.clone()), "{old} -> {new}");
            verify_consistency(old, new, &h(ROOTS[old as usize]), &h(ROOTS[new as usize]), &want).expect("verifies");
        }
    }

    /// The corruptions the reference generator applies to each valid inclusion proof; each must be
    /// refused.
    #[test]
    fn forged_inclusion_proofs_are_refused() {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        for &(leaf, size, proof) in INCLUSION {
            let index = leaf - 1;
            let root = h(ROOTS[size as usize]);
            let lh = leaf_hash(&hex::decode(LEAF_INPUTS[index as usize]).expect("hex"));
            let proof = hashes(proof);
            let mut probes: Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> = vec![
                ("index+1".into(), index + 1, size, root, lh, proof.clone()),
                ("index^2".into(), index ^ 2, size, root, lh, proof.clone()),
                ("size*2".into(), index, size * 2, root, lh, proof.clone()),
                ("size/2".into(), index, size / 2, root, lh, proof.clone()),
                ("wrong leaf".into(), index, size, root, some, proof.clone()),
                ("empty root".into(), index, size, empty_root(), lh, proof.clone()),
                ("random root".into(), index, size, some, lh, proof.clone()),
                ("trailing root".into(), index, size, root, lh, [proof.clone(), vec![root]].concat()),
                ("preceding root".into(), index, size, root, lh, [vec![root], proof.clone()].concat()),
            ];
            if index > 0 {
                probes.push(("index-1".into(), index - 1, size, root, lh, proof.clone()));
            }
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i][0] ^= 8;
                probes.push((format!("bit flipped in proof[{i}]"), index, size, root, lh, p));
            }
            if !proof.is_empty() {
                probes.push(("removed component".into(), index, size, root, lh, proof[..proof.len() - 1].to_vec()));
            }
            if proof.len() > 1 {
                let p = [vec![proof[0], some], proof[1..].to_vec()].concat();
                probes.push(("inserted component".into(), index, size, root, lh, p));
            }
            for (desc, i, s, r, l, p) in probes {
                assert!(verify_inclusion(i, s, &l, &p, &r).is_err(), "leaf {leaf} size {size}: {desc} was accepted");
            }
        }
    }

    #[test]
    fn forged_consistency_proofs_are_refused() {
        for &(old, new, proof) in CONSISTENCY {
            if proof.is_empty() {
                continue;
            }
            let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
            let proof = hashes(proof);
            let mut probes: Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> = vec![
                ("old-1".into(), old - 1, new, r1, r2, proof.clone()),
                ("old+1".into(), old + 1, new, r1, r2, proof.clone()),
                ("old^2".into(), old ^ 2, new, r1, r2, proof.clone()),
                ("new*2".into(), old, new * 2, r1, r2, proof.clone()),
                ("new/2".into(), old, new / 2, r1, r2, proof.clone()),
                ("swapped roots".into(), old, new, r2, r1, proof.clone()),
                ("wrong root1".into(), old, new, empty_root(), r2, proof.clone()),
                ("wrong root2".into(), old, new, r1, empty_root(), proof.clone()),
                ("empty proof".into(), old, new, r1, r2, vec![]),
                ("trailing root2".into(), old, new, r1, r2, [proof.clone(), vec![r2]].concat()),
                ("preceding root1".into(), old, new, r1, r2, [vec![r1], proof.clone()].concat()),
                ("preceding proof[0]".into(), old, new, r1, r2, [vec![proof[0]], proof.clone()].concat()),
                ("truncated".into(), old, new, r1, r2, proof[..proof.len() - 1].to_vec()),
            ];
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i][0] ^= 16;
                probes.push((format!("bit flipped in proof[{i}]"), old, new, r1, r2, p));
            }
            for (desc, o, n, a, b, p) in probes {
                assert!(verify_consistency(o, n, &a, &b, &p).is_err(), "{old}->{new}: {desc} was accepted");
            }
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        assert_eq!(verify_consistency(0, 0, &a, &a, &[]), Ok(()));
        assert_eq!(verify_consistency(3, 3, &a, &b, &[]), Err(ProofError::Fork { size: 3 }));
        assert_eq!(verify_consistency(3, 3, &a, &a, &[b]), Err(ProofError::WrongLength));
        assert_eq!(verify_consistency(0, 1, &a, &b, &[]), Err(ProofError::EmptyOldTree));
        assert_eq!(verify_consistency(2, 1, &a, &b, &[]), Err(ProofError::SizeDecreased { old: 2, new: 1 }));
    }

    /// A node source that counts lookups, to show the store's table is enough for everything.
    struct OnlyNodes(MemoryTree);
    impl NodeSource for OnlyNodes {
        type Error = MissingNode;
        fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
            self.0.node(level, index)
        }
    }

    #[test]
    fn incremental_nodes_rebuild_the_same_tree() {
        // Build a tree only from what `nodes_completed_by` returns, as the store does.
        let mut t = MemoryTree::new();
        let mut rebuilt = OnlyNodes(MemoryTree::new());
        for i in 0..37u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            t.push(leaf);
            for (level, index, hash) in nodes_completed_by(&rebuilt, i, leaf).expect("nodes") {
                let levels = &mut rebuilt.0.levels;
                while levels.len() <= level as usize {
                    levels.push(Vec::new());
                }
                assert_eq!(levels[level as usize].len() as u64, index, "appended in order");
                levels[level as usize].push(hash);
            }
            assert_eq!(root(&rebuilt, i + 1), Ok(t.root_at(i + 1).expect("root")));
        }
    }

    proptest! {
        /// For any append sequence, every earlier tree head is provably consistent with every
        /// later one, and every leaf is provably included in every tree that contains it.
        #[test]
        fn every_earlier_checkpoint_is_consistent_with_every_later_one(
            leaves in proptest::collection::vec(any::<u64>(), 1..60),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 1..8),
        ) {
            let mut t = MemoryTree::new();
            for l in &leaves {
                t.push(leaf_hash(&l.to_be_bytes()));
            }
            let n = leaves.len();
            let mut sizes: Vec<u64> = cuts.iter().map(|c| c.index(n) as u64 + 1).collect();
            sizes.sort_unstable();
            sizes.dedup();
            for (i, &old) in sizes.iter().enumerate() {
                for &new in &sizes[i..] {
                    let p = t.consistency_proof(old, new).expect("proof");
                    let (r1, r2) = (t.root_at(old).expect("root"), t.root_at(new).expect("root"));
                    prop_assert_eq!(verify_consistency(old, new, &r1, &r2, &p), Ok(()));
                    if old < new {
                        // A different old root (another history) is refused.
                        prop_assert!(verify_consistency(old, new, &leaf_hash(b"other"), &r2, &p).is_err());
                    }
                }
                let idx = old - 1;
                let p = t.inclusion_proof(idx, old).expect("proof");
                prop_assert_eq!(
                    verify_inclusion(idx, old, &leaf_hash(&leaves[idx as usize].to_be_bytes()), &p, &t.root_at(old).expect("root")),
                    Ok(())
                );
            }
        }
    }
}
