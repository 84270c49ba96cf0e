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
