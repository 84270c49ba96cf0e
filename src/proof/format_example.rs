//! The worked example of docs/FORMAT.md, "Tamper evidence: worked
//! example", computed here and required verbatim in the document: a tree
//! of three blocks (the first is the genesis block of the chain's worked
//! example), the epoch certificate, the signed checkpoint and the
//! inclusion proof of block 1. Ed25519 (RFC 8032) is deterministic, so the
//! signatures are fixed too.

use crate::codec::{block_hash, hex};
use crate::merkle::{inclusion_proof, leaf_hash, root, verify_inclusion, MemTree};
use crate::note::checkpoint::{certify_epoch, sign_checkpoint, verify_checkpoint, Checkpoint, EpochLine, OpCheckpoint};
use crate::note::Signer;
use crate::proof::keys::{epoch_secret, next_seed, Schedule};
use base64::Engine;

const DOC: &str = include_str!("../../docs/FORMAT.md");

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[track_caller]
fn in_doc(what: &str, text: &str) {
    assert!(DOC.contains(text), "docs/FORMAT.md lacks the {what}:\n{text}");
}

#[test]
fn matches_the_document() {
    let origin = "example.org/host1";
    let identity = Signer::from_seed(origin, &[1u8; 32]).unwrap();
    let genesis = block_hash(&crate::codec::format_example::block().encode());
    let hashes = [genesis, block_hash(b"second"), block_hash(b"third")];
    let mut tree = MemTree::new(Vec::new());
    for h in &hashes {
        tree.push(leaf_hash(h));
    }
    let r = root(3, &tree).unwrap();
    let schedule = Schedule { t0: 1_700_000_000, len: 60 };
    let mut seed = [2u8; 32];
    for _ in 0..5 {
        seed = next_seed(&seed);
    }
    let key = Signer::from_seed(origin, &epoch_secret(&seed)).unwrap();
    let (start, end) = (schedule.start(5), schedule.start(5) + 60);
    let cert = certify_epoch(&identity, 5, start, end, &key.public_key());
    let cp = OpCheckpoint {
        checkpoint: Checkpoint { origin: origin.into(), size: 3, root: r, extensions: vec![] },
        time_ns: (start as i64 + 7) * 1_000_000_000,
        epoch: EpochLine { epoch: 5, start, end, public_key: key.public_key(), cert_signature: cert },
        start: None,
    };
    let note = sign_checkpoint(&cp, &key).to_bytes();
    verify_checkpoint(&note, &identity.verifier()).unwrap();
    let proof = inclusion_proof(1, 3, &tree).unwrap();
    verify_inclusion(1, 3, &leaf_hash(&hashes[1]), &proof, &r).unwrap();

    let text = format!(
        "identity vkey  {}\n\
         block hashes   {}\n               {}\n               {}\n\
         leaf hashes    {}\n               {}\n               {}\n\
         root (size 3)  {}\n\
         epoch 5 seed   {}\n\
         epoch 5 key    {} (public)\n",
        identity.verifier().to_vkey(),
        hex(&hashes[0]),
        hex(&hashes[1]),
        hex(&hashes[2]),
        hex(&leaf_hash(&hashes[0])),
        hex(&leaf_hash(&hashes[1])),
        hex(&leaf_hash(&hashes[2])),
        hex(&r),
        hex(&seed),
        hex(&key.public_key()),
    );
    let note = String::from_utf8(note).unwrap();
    let proof_lines: String = proof.iter().map(|h| format!("{}\n", b64(h))).collect();
    if std::env::var_os("PRINT_FORMAT_EXAMPLE").is_some() {
        println!("{text}\n{note}\n{proof_lines}");
    }
    in_doc("values", &text);
    in_doc("checkpoint", &note);
    in_doc("inclusion proof", &proof_lines);
}

/// A bundle for block 1 of a three-block tree, made by hand from the
/// format (no state dir): the fuzz cases below change it.
fn bundle() -> (String, Signer) {
    let origin = "example.org/host1";
    let identity = Signer::from_seed(origin, &[1u8; 32]).unwrap();
    let bodies: Vec<Vec<u8>> = (0..3u64)
        .map(|seq| {
            let mut b = crate::codec::format_example::block();
            b.seq = seq;
            b.encode()
        })
        .collect();
    let mut tree = MemTree::new(Vec::new());
    for b in &bodies {
        tree.push(leaf_hash(&block_hash(b)));
    }
    let key = Signer::from_seed(origin, &[3u8; 32]).unwrap();
    let (start, end) = (1_700_000_300, 1_700_000_360);
    let cp = OpCheckpoint {
        checkpoint: Checkpoint { origin: origin.into(), size: 3, root: root(3, &tree).unwrap(), extensions: vec![] },
        time_ns: 1_700_000_307_000_000_000,
        epoch: EpochLine {
            epoch: 5,
            start,
            end,
            public_key: key.public_key(),
            cert_signature: certify_epoch(&identity, 5, start, end, &key.public_key()),
        },
        start: None,
    };
    let note = String::from_utf8(sign_checkpoint(&cp, &key).to_bytes()).unwrap();
    let proof: String = inclusion_proof(1, 3, &tree).unwrap().iter().map(|h| format!("{}\n", b64(h))).collect();
    (format!("c2sp.org/tlog-proof@v1\nextra {}\nindex 1\n{proof}\n{note}", b64(&bodies[1])), identity)
}

#[test]
fn a_bundle_made_from_the_format_verifies() {
    let (b, identity) = bundle();
    crate::proof::bundle::verify_bundle(b.as_bytes(), &identity.verifier(), &[], 0).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any changed byte of a bundle is refused (or, for bytes that carry no
    /// meaning, such as base64 padding bits, still proves the same block),
    /// and the parser never panics.
    #[test]
    fn a_changed_byte_of_a_bundle_is_refused(pos in 0usize..4000, x in 1u8..=255) {
        let (b, identity) = bundle();
        let mut bytes = b.into_bytes();
        let p = pos % bytes.len();
        bytes[p] ^= x;
        let r = crate::proof::bundle::verify_bundle(&bytes, &identity.verifier(), &[], 0);
        proptest::prop_assert!(r.is_err(), "accepted with byte {} changed", p);
    }

    /// Arbitrary bytes, and truncations of a good bundle, never panic.
    #[test]
    fn garbage_and_truncations_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), cut in 0usize..4000) {
        let (b, identity) = bundle();
        let _ = crate::proof::bundle::verify_bundle(&bytes, &identity.verifier(), &[], 0);
        let cut = cut % b.len();
        proptest::prop_assert!(crate::proof::bundle::verify_bundle(&b.as_bytes()[..cut], &identity.verifier(), &[], 0).is_err());
    }
}
