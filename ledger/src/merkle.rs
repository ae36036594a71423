//! The RFC 6962 / RFC 9162 Merkle tree over the ledger's entries: tree hashing, inclusion and
//! consistency proofs, and their verifiers. Plain code, no IO.
//!
//! ```text
//! leaf hash   = SHA-256(0x00 || leaf)
//! node hash   = SHA-256(0x01 || left || right)
//! MTH({})     = SHA-256("")
//! MTH(D[n])   = node hash(MTH(D[0:k]), MTH(D[k:n])),  k = the largest power of two < n
//! ```
//!
//! **What the leaves are.** Leaf `i` is the stored entry bytes (`entry::frame` output: framing,
//! body *and* signature) of the `i`-th *valid* event of the ledger, which is the event whose chain
//! index is `i`. Foreign messages that landed in the stream are not events and are not leaves, so
//! the leaf index is the chain index, never the stream sequence. A tree of size `n` therefore
//! commits to exactly the chain prefix `[0, n)` that `verify::ChainState` accepted, and nothing
//! else (no tree prefix is ever bridged to an unchecked chain suffix).
//!
//! **Why SHA-256.** The C2SP / tlog ecosystem (checkpoints, witnesses, tiles) fixes SHA-256 for
//! the tree, so standard verifiers can check our proofs. The per-event chain stays BLAKE3.
//!
//! Proofs are produced by [`Tree`] with the recursive definitions of RFC 9162 §2.1.3.1 (`PATH`)
//! and §2.1.4.1 (`SUBPROOF`). They are checked by [`verify_inclusion`] and
//! [`verify_consistency`], which implement the iterative algorithms of RFC 9162 §2.1.3.2 and
//! §2.1.4.2 and share nothing with the prover except [`node_hash`].

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash (leaf, node or root).
pub type Hash = [u8; 32];

/// `MTH({})`, the root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of one leaf: `SHA-256(0x00 || leaf)`. For keyledger, `leaf` is a stored entry.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (`n > 1`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a [`Tree`] cannot produce a root or proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("tree size {size} is beyond the {len} leaves held")]
    SizeBeyondTree { size: u64, len: u64 },
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldSizeBeyondNew { old: u64, new: u64 },
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldSizeBeyondNew { old: u64, new: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyOldTree,
    #[error("equal tree sizes need an empty proof, got {len} hashes")]
    ProofForEqualSizes { len: usize },
    #[error("consistency proof is empty")]
    EmptyProof,
    #[error("proof of {len} hashes is too long for the tree sizes")]
    ProofTooLong { len: usize },
    #[error("proof of {len} hashes is too short for the tree sizes")]
    ProofTooShort { len: usize },
    #[error("proof leads to a different root")]
    RootMismatch,
    #[error("proof does not lead to the old root")]
    OldRootMismatch,
    #[error("proof does not lead to the new root")]
    NewRootMismatch,
}

// ---- the tree ---------------------------------------------------------------------------------

/// Height of the lowest cached perfect subtrees: roots of aligned runs of 16 leaves and above are
/// kept (about 4 bytes per leaf on top of the 32-byte leaf hash); smaller ones are recomputed
/// from the leaf hashes (at most 15 node hashes each).
const CACHE_FROM: u32 = 4;

/// An append-only RFC 6962 tree of leaf hashes that can answer roots and proofs for any prefix.
///
/// It keeps every leaf hash (32 bytes per leaf) and the roots of all complete, aligned subtrees
/// of 16 leaves or more, updated on [`push`](Tree::push) (amortised about 1.07 node hashes per
/// leaf). The cached roots at the set bits of the size are exactly the RFC 9162 §2.1.2 stack, so
/// any root costs O(log n) and a proof O(log² n) lookups plus a few hashes at the bottom level.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    leaves: Vec<Hash>,
    /// `perfect[j][i]` is the root of leaves `[i·2^h, (i+1)·2^h)` with `h = CACHE_FROM + j`.
    perfect: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// A tree of these leaf hashes, in order.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Tree {
        let mut t = Tree::new();
        for h in leaves {
            t.push(h);
        }
        t
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Appends a leaf hash; returns its index.
    pub fn push(&mut self, leaf_hash: Hash) -> u64 {
        let index = self.size();
        self.leaves.push(leaf_hash);
        let unit = 1usize << CACHE_FROM;
        let n = self.leaves.len();
        if n.is_multiple_of(unit) {
            let mut h = self.hash_from_leaves(n - unit, CACHE_FROM);
            let mut level = 0;
            loop {
                if self.perfect.len() == level {
                    self.perfect.push(Vec::new());
                }
                let row = &mut self.perfect[level];
                row.push(h);
                if row.len() % 2 == 1 {
                    break;
                }
                h = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
                level += 1;
            }
        }
        index
    }

    /// Appends a leaf (for keyledger: a stored entry); returns its index.
    pub fn push_leaf(&mut self, leaf: &[u8]) -> u64 {
        self.push(leaf_hash(leaf))
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.leaves.get(i))
            .copied()
    }

    /// All leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// The root of the whole tree.
    pub fn current_root(&self) -> Hash {
        self.mth_or_empty(self.size())
    }

    /// The root of the first `size` leaves, `MTH(D[0:size])`.
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        self.check_size(size)?;
        Ok(self.mth_or_empty(size))
    }

    /// The inclusion proof (audit path, leaf to root) of leaf `index` in the tree of the first
    /// `size` leaves: RFC 9162 §2.1.3.1 `PATH(index, D[0:size])`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TreeError::IndexBeyondSize { index, size });
        }
        let mut out = Vec::with_capacity(64);
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    /// The consistency proof from the first `old_size` leaves to the first `new_size`:
    /// RFC 9162 §2.1.4.1 `PROOF(old_size, D[0:new_size])`.
    ///
    /// Empty when the sizes are equal or `old_size` is 0. Note that [`verify_consistency`]
    /// refuses `old_size == 0`: every tree extends the empty tree, so there is nothing to prove,
    /// and the first checkpoint a party sees is trusted on first use.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(TreeError::OldSizeBeyondNew {
                old: old_size,
                new: new_size,
            });
        }
        let mut out = Vec::with_capacity(64);
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut out);
        }
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.size() {
            return Err(TreeError::SizeBeyondTree {
                size,
                len: self.size(),
            });
        }
        Ok(())
    }

    fn mth_or_empty(&self, size: u64) -> Hash {
        if size == 0 {
            EMPTY_ROOT
        } else {
            self.mth(0, size)
        }
    }

    /// `PATH(m, D[start:start+n])`, appended to `out` (deepest sibling first).
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n == 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.mth(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.mth(start, k));
        }
    }

    /// `SUBPROOF(m, D[start:start+n], known)`, appended to `out`.
    fn subproof(&self, m: u64, start: u64, n: u64, known: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !known {
                out.push(self.mth(start, n));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, k, known, out);
            out.push(self.mth(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.mth(start, k));
        }
    }

    /// `MTH(D[start:start+n])` for `n >= 1`, all leaves held.
    fn mth(&self, start: u64, n: u64) -> Hash {
        debug_assert!(n >= 1 && start + n <= self.size());
        if n.is_power_of_two() && start.is_multiple_of(n) {
            return self.perfect_root(n.trailing_zeros(), start >> n.trailing_zeros());
        }
        let k = split_point(n);
        node_hash(&self.mth(start, k), &self.mth(start + k, n - k))
    }

    /// Root of the complete subtree of height `h` covering leaves `[i·2^h, (i+1)·2^h)`.
    fn perfect_root(&self, h: u32, i: u64) -> Hash {
        // Invariant: callers only ask for subtrees inside the leaves held, and every complete
        // aligned subtree of height >= CACHE_FROM inside them is cached by `push`; indexes fit
        // in usize because they are below `leaves.len()`.
        if h >= CACHE_FROM {
            self.perfect[(h - CACHE_FROM) as usize][i as usize]
        } else {
            self.hash_from_leaves((i << h) as usize, h)
        }
    }

    /// Root of the `2^h` leaves starting at `start`, from the leaf hashes.
    fn hash_from_leaves(&self, start: usize, h: u32) -> Hash {
        if h == 0 {
            return self.leaves[start];
        }
        let half = 1usize << (h - 1);
        node_hash(
            &self.hash_from_leaves(start, h - 1),
            &self.hash_from_leaves(start + half, h - 1),
        )
    }
}

// ---- the frontier -----------------------------------------------------------------------------

/// The O(log n) frontier of a growing tree (RFC 9162 §2.1.2): enough to compute the root of the
/// leaves pushed so far, without keeping them. For an auditor that replays the log and only
/// needs roots at checkpoint sizes; use [`Tree`] to produce proofs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the complete subtrees at the set bits of `size`, largest (leftmost) first.
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns its index.
    pub fn push(&mut self, leaf_hash: Hash) -> u64 {
        let index = self.size;
        let mut h = leaf_hash;
        let mut merges = index.trailing_ones();
        while merges > 0 {
            // Invariant: one node per set bit of `size`, so `merges` pops always find one.
            if let Some(left) = self.nodes.pop() {
                h = node_hash(&left, &h);
            }
            merges -= 1;
        }
        self.nodes.push(h);
        self.size += 1;
        index
    }

    /// The root of all leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return EMPTY_ROOT;
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

// ---- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ---------------------------------------------

/// Right-shifts `fn_` and `sn` together until the low bit of `fn_` is set or `fn_` is 0.
fn shift_to_set_bit(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Checks that `proof` shows the leaf with hash `leaf_hash` at `index` in the tree of `size`
/// leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// `root` and `size` must come from one verified checkpoint, never from the proof's sender. The
/// proof binds the index, but binds the size only through the root: the same proof can verify
/// for another size with the *same* root (the RFC algorithm only checks the path's shape), so a
/// size is meaningful only together with the root signed for it.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexBeyondSize { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(VerifyError::ProofTooLong { len: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            shift_to_set_bit(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(VerifyError::ProofTooShort { len: proof.len() });
    }
    if r != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Checks that `proof` shows the tree of `old_size` leaves with root `old_root` is a prefix of
/// the tree of `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
///
/// Beyond the RFC's `0 < first < second` case: equal sizes need an empty proof and equal roots;
/// `old_size == 0` is refused ([`VerifyError::EmptyOldTree`]), as in transparency-dev/merkle.
/// As for [`verify_inclusion`], `new_size` is bound only through `new_root`: take both from one
/// verified checkpoint.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return Err(VerifyError::OldSizeBeyondNew {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(VerifyError::EmptyOldTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(VerifyError::ProofForEqualSizes { len: proof.len() });
        }
        if old_root != new_root {
            return Err(VerifyError::RootMismatch);
        }
        return Ok(());
    }
    // Step 1.
    let Some(first) = proof.first() else {
        return Err(VerifyError::EmptyProof);
    };
    // Step 2: when the old tree is a complete subtree, its root is the path's implicit start.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, &proof[1..])
    };
    // Steps 3 and 4.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let (mut fr, mut sr) = (*seed, *seed);
    // Step 6.
    for c in rest {
        if sn == 0 {
            return Err(VerifyError::ProofTooLong { len: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            shift_to_set_bit(&mut fn_, &mut sn);
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(VerifyError::ProofTooShort { len: proof.len() });
    }
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(VerifyError::NewRootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 9162 §2.1.1 definition, straight from the leaves.
    fn reference_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&reference_mth(&leaves[..k]), &reference_mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        let h: Hash = Sha256::digest([]).into();
        assert_eq!(EMPTY_ROOT, h);
        assert_eq!(Tree::new().current_root(), EMPTY_ROOT);
        assert_eq!(Frontier::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn split_points() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 40, 1 << 39),
        ] {
            assert_eq!(split_point(n), k, "n = {n}");
        }
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn roots_match_the_definition_for_every_prefix() {
        let all = leaves(300);
        let tree = Tree::from_leaf_hashes(all.iter().copied());
        let mut frontier = Frontier::new();
        for n in 0..=300u64 {
            let want = reference_mth(&all[..n as usize]);
            assert_eq!(tree.root(n).unwrap(), want, "n = {n}");
            assert_eq!(frontier.root(), want, "frontier n = {n}");
            if n < 300 {
                frontier.push(all[n as usize]);
            }
        }
        assert_eq!(tree.current_root(), reference_mth(&all));
    }

    #[test]
    fn refusals() {
        let tree = Tree::from_leaf_hashes(leaves(5));
        assert_eq!(
            tree.root(6),
            Err(TreeError::SizeBeyondTree { size: 6, len: 5 })
        );
        assert_eq!(
            tree.inclusion_proof(5, 5),
            Err(TreeError::IndexBeyondSize { index: 5, size: 5 })
        );
        assert_eq!(
            tree.consistency_proof(4, 3),
            Err(TreeError::OldSizeBeyondNew { old: 4, new: 3 })
        );
        assert_eq!(tree.consistency_proof(0, 5), Ok(vec![]));
        assert_eq!(tree.consistency_proof(5, 5), Ok(vec![]));
        let root = tree.current_root();
        assert_eq!(
            verify_consistency(0, 5, &EMPTY_ROOT, &root, &[]),
            Err(VerifyError::EmptyOldTree)
        );
        assert_eq!(verify_consistency(5, 5, &root, &root, &[]), Ok(()));
        assert_eq!(
            verify_inclusion(&tree.leaf(0).unwrap(), 0, 0, &[], &root),
            Err(VerifyError::IndexBeyondSize { index: 0, size: 0 })
        );
    }
}
