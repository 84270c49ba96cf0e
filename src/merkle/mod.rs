//! RFC 6962 / RFC 9162 Merkle trees (docs/FORMAT.md, "Tamper evidence"):
//! hashes, the right edge of a growing tree, roots, inclusion and
//! consistency proofs and their verification. Storage is elsewhere: a
//! [`NodeSource`] hands out the roots of complete subtrees (from tiles, see
//! [`tiles`], or from memory, [`MemTree`]), and every algorithm here asks it
//! only for those.
//!
//! A node is named by its level (the height of its subtree: 0 for a leaf)
//! and its index among the nodes of that level, so node (l, i) covers the
//! leaves `i·2^l .. (i+1)·2^l`.

pub mod tiles;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of an entry: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("the proof has {got} hashes; a proof between these sizes has {want}")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
    #[error("the tree does not hold the node at level {level}, index {index}")]
    Missing { level: u8, index: u64 },
    #[error("malformed tile: {0}")]
    BadTile(String),
}

/// Where the roots of complete subtrees come from.
pub trait NodeSource {
    /// The root of the complete subtree at `level` and `index`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError>;
}

/// The largest power of two below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of the leaves `lo..hi` (hi > lo), where `lo` is a multiple of
/// the largest power of two not above `hi - lo` (as in every subtree the
/// RFC 6962 recursion visits).
fn subtree<S: NodeSource + ?Sized>(lo: u64, hi: u64, src: &S) -> Result<Hash, ProofError> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return src.node(n.trailing_zeros() as u8, lo >> n.trailing_zeros());
    }
    let k = split_point(n);
    let left = subtree(lo, lo + k, src)?;
    let right = subtree(lo + k, hi, src)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `size` leaves.
pub fn root<S: NodeSource + ?Sized>(size: u64, src: &S) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(0, size, src)
}

/// The inclusion proof of leaf `index` in the tree of `size` (RFC 9162
/// 2.1.3.1), leaf side first.
pub fn inclusion_proof<S: NodeSource + ?Sized>(index: u64, size: u64, src: &S) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::with_capacity(64);
    path(index, 0, size, src, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource + ?Sized>(m: u64, lo: u64, hi: u64, src: &S, out: &mut Vec<Hash>) -> Result<(), ProofError> {
    let n = hi - lo;
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(m, lo, lo + k, src, out)?;
        out.push(subtree(lo + k, hi, src)?);
    } else {
        path(m - k, lo + k, hi, src, out)?;
        out.push(subtree(lo, lo + k, src)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old` leaves to the tree of
/// `new` (RFC 9162 2.1.4.1); empty when `old` is 0 or equals `new`.
pub fn consistency_proof<S: NodeSource + ?Sized>(old: u64, new: u64, src: &S) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::SizeOrder { old, new });
    }
    let mut out = Vec::with_capacity(64);
    if old > 0 && old < new {
        subproof(old, 0, new, true, src, &mut out)?;
    }
    Ok(out)
}

fn subproof<S: NodeSource + ?Sized>(
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    src: &S,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(subtree(lo, hi, src)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, lo, lo + k, whole, src, out)?;
        out.push(subtree(lo + k, hi, src)?);
    } else {
        subproof(m - k, lo + k, hi, false, src, out)?;
        out.push(subtree(lo, lo + k, src)?);
    }
    Ok(())
}

/// How many hashes the inclusion proof of `index` in a tree of `size` has.
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let (mut m, mut n, mut len) = (index, size, 0);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            n = k;
        } else {
            m -= k;
            n -= k;
        }
        len += 1;
    }
    len
}

/// The size in bytes of the inclusion proof of `index` in a tree of `size`.
pub fn proof_size_bytes(index: u64, size: u64) -> usize {
    inclusion_proof_len(index, size) * 32
}

/// Checks that `leaf` is entry `index` of the tree of `size` with `root`
/// (RFC 9162 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_proof_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength { got: proof.len(), want });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength { got: proof.len(), want });
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
    if s != 0 || r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `old` leaves with `old_root` is a prefix of the
/// tree of `new` leaves with `new_root` (RFC 9162 2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizeOrder { old, new });
    }
    if old == new || old == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { got: proof.len(), want: 0 });
        }
        let ok = if old == 0 { *old_root == empty_root() } else { old_root == new_root };
        return if ok { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    let mut hashes: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        hashes.push(old_root);
    }
    hashes.extend(proof.iter());
    let Some((first, rest)) = hashes.split_first() else {
        return Err(ProofError::WrongLength { got: 0, want: 1 });
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (**first, **first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::RootMismatch);
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
    if s != 0 || fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its complete subtrees,
/// largest first, one per set bit of the size. O(log n) memory.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `completed(level, index, hash)` is called for
    /// every interior node this completes, lowest first (never for the
    /// leaf itself).
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, &Hash)) {
        let mut h = leaf;
        let merges = self.size.trailing_ones();
        for level in 1..=merges {
            let left = self.nodes.pop().expect("one node per set bit");
            h = node_hash(&left, &h);
            completed(level as u8, ((self.size + 1) >> level) - 1, &h);
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else { return empty_root() };
        it.fold(*last, |r, left| node_hash(left, &r))
    }

    /// The right edge of the tree of `size` leaves held by `src`.
    pub fn from_source<S: NodeSource + ?Sized>(size: u64, src: &S) -> Result<Frontier, ProofError> {
        let mut nodes = Vec::with_capacity(size.count_ones() as usize);
        let mut lo = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                nodes.push(src.node(level as u8, lo >> level)?);
                lo += 1 << level;
            }
        }
        Ok(Frontier { size, nodes })
    }
}

/// A whole tree in memory, every level kept (tests, benchmarks, small trees).
#[derive(Clone, Debug, Default)]
pub struct MemTree {
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    /// A tree of these leaf hashes.
    pub fn new(leaves: Vec<Hash>) -> MemTree {
        let mut t = MemTree { levels: vec![Vec::with_capacity(leaves.len())] };
        for l in leaves {
            t.push(l);
        }
        t
    }

    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let h = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(h);
            level += 1;
        }
    }

    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }
}

impl NodeSource for MemTree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(ProofError::Missing { level, index })
    }
}

#[cfg(test)]
mod tests;
