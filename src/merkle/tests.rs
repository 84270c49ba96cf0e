//! The tree against an independent implementation (cloudflare's
//! `tlog_tiles`, a port of Go's sumdb tlog) and against itself.

use super::*;
use proptest::prelude::*;
use tlog_tiles::tlog;

/// tlog_tiles' stored-hash model of the same entries.
struct Theirs(Vec<tlog::Hash>);

impl tlog::HashReader for Theirs {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        Ok(indexes.iter().map(|i| self.0[*i as usize]).collect())
    }
}

fn entry(i: u64) -> Hash {
    crate::codec::block_hash(&i.to_be_bytes())
}

fn both(n: u64) -> (MemTree, Theirs) {
    let mut ours = MemTree::new(Vec::new());
    let mut theirs = Theirs(Vec::new());
    for i in 0..n {
        ours.push(leaf_hash(&entry(i)));
        let add = tlog::stored_hashes(i, &entry(i), &theirs).unwrap();
        theirs.0.extend(add);
    }
    (ours, theirs)
}

#[test]
fn hashes_are_rfc6962() {
    assert_eq!(empty_root(), tlog::EMPTY_HASH.0);
    assert_eq!(leaf_hash(b"abc"), tlog::record_hash(b"abc").0);
    let (a, b) = ([1u8; 32], [2u8; 32]);
    assert_eq!(node_hash(&a, &b), tlog::node_hash(tlog::Hash(a), tlog::Hash(b)).0);
}

#[test]
fn roots_and_proofs_match_tlog_tiles_for_every_small_tree() {
    let (ours, theirs) = both(70);
    let mut f = Frontier::new();
    for n in 0..=70u64 {
        let r = root(n, &ours).unwrap();
        assert_eq!(r, tlog::tree_hash(n, &theirs).unwrap().0, "root of {n}");
        assert_eq!(f.root(), r);
        assert_eq!(Frontier::from_source(n, &ours).unwrap().root(), r);
        for i in 0..n {
            let p = inclusion_proof(i, n, &ours).unwrap();
            let t: Vec<Hash> = tlog::prove_record(n, i, &theirs).unwrap().iter().map(|h| h.0).collect();
            assert_eq!(p, t, "inclusion {i} in {n}");
            assert_eq!(p.len(), inclusion_proof_len(i, n));
            verify_inclusion(i, n, &leaf_hash(&entry(i)), &p, &r).unwrap();
        }
        for m in 1..=n {
            let p = consistency_proof(m, n, &ours).unwrap();
            let t: Vec<Hash> = tlog::prove_tree(n, m, &theirs).unwrap().iter().map(|h| h.0).collect();
            assert_eq!(p, t, "consistency {m} → {n}");
            verify_consistency(m, n, &root(m, &ours).unwrap(), &r, &p).unwrap();
        }
        if n < 70 {
            f.push(leaf_hash(&entry(n)), |_, _, _| {});
        }
    }
}

#[test]
fn frontier_reports_every_completed_node() {
    let (ours, _) = both(300);
    let mut f = Frontier::new();
    let mut seen = Vec::new();
    for i in 0..300 {
        f.push(leaf_hash(&entry(i)), |l, idx, h| seen.push((l, idx, *h)));
    }
    // One interior node per pair merged: n - popcount(n).
    assert_eq!(seen.len() as u64, 300 - 300u64.count_ones() as u64);
    for (l, idx, h) in seen {
        assert_eq!(ours.node(l, idx).unwrap(), h);
    }
}

#[test]
fn a_proof_at_a_billion_entries_is_under_a_kibibyte() {
    assert_eq!(inclusion_proof_len(0, 1), 0);
    assert_eq!(proof_size_bytes(123_456_789, 1_000_000_000), 30 * 32);
    assert!((0..1000u64).all(|k| proof_size_bytes(k * 999_999, 1_000_000_000) <= 960));
}

#[test]
fn errors_name_what_is_wrong() {
    let (ours, _) = both(10);
    let r = root(10, &ours).unwrap();
    assert_eq!(inclusion_proof(10, 10, &ours), Err(ProofError::IndexOutOfRange { index: 10, size: 10 }));
    assert_eq!(consistency_proof(11, 10, &ours), Err(ProofError::SizeOrder { old: 11, new: 10 }));
    assert!(matches!(root(11, &ours), Err(ProofError::Missing { .. })));
    let p = inclusion_proof(3, 10, &ours).unwrap();
    assert!(matches!(verify_inclusion(3, 10, &leaf_hash(&entry(3)), &p[1..], &r), Err(ProofError::WrongLength { .. })));
    assert_eq!(verify_inclusion(4, 10, &leaf_hash(&entry(3)), &p, &r), Err(ProofError::RootMismatch));
    assert_eq!(verify_consistency(0, 10, &empty_root(), &r, &[]), Ok(()));
    assert_eq!(verify_consistency(0, 10, &r, &r, &[]), Err(ProofError::RootMismatch));
    assert_eq!(verify_consistency(10, 10, &r, &r, &[]), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any single changed bit in a proof, leaf or root is caught.
    #[test]
    fn tampered_proofs_fail(n in 2u64..600, i in 0u64..600, m in 1u64..600, bit in 0usize..256, which in 0usize..64) {
        let (ours, _) = both(n);
        let i = i % n;
        let m = 1 + m % n;
        let r = root(n, &ours).unwrap();
        let leaf = leaf_hash(&entry(i));
        let mut p = inclusion_proof(i, n, &ours).unwrap();
        prop_assert!(verify_inclusion(i, n, &leaf, &p, &r).is_ok());
        let k = which % p.len();
        p[k][bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(i, n, &leaf, &p, &r).is_err());
        let mut bad_leaf = leaf;
        bad_leaf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(i, n, &bad_leaf, &inclusion_proof(i, n, &ours).unwrap(), &r).is_err());

        let old = root(m, &ours).unwrap();
        let mut c = consistency_proof(m, n, &ours).unwrap();
        prop_assert!(verify_consistency(m, n, &old, &r, &c).is_ok());
        if !c.is_empty() {
            let k = which % c.len();
            c[k][bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_consistency(m, n, &old, &r, &c).is_err());
        }
        if m < n {
            // The proof for another old size does not pass for this one.
            let other = if m > 1 { m - 1 } else { m + 1 };
            if other < n {
                let c2 = consistency_proof(other, n, &ours).unwrap();
                prop_assert!(verify_consistency(m, n, &old, &r, &c2).is_err() || c2 == consistency_proof(m, n, &ours).unwrap());
            }
        }
    }
}
