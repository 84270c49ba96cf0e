//! The witness's answers, status by status (C2SP tlog-witness), against
//! real checkpoints of a test log, and over HTTP with the client.

use super::*;
use crate::merkle::{consistency_proof, leaf_hash, root, MemTree};
use crate::note::checkpoint::{certify_epoch, sign_checkpoint, Checkpoint, EpochLine, OpCheckpoint};
use crate::note::cosig::verify_cosignature;
use crate::note::Signer;

struct TestLog {
    identity: Signer,
    tree: MemTree,
}

impl TestLog {
    fn new(name: &str) -> TestLog {
        TestLog { identity: Signer::from_seed(name, &[5; 32]).unwrap(), tree: MemTree::new(Vec::new()) }
    }

    fn grow(&mut self, to: u64) {
        while self.tree.len() < to {
            self.tree.push(leaf_hash(&self.tree.len().to_be_bytes()));
        }
    }

    /// A checkpoint of the first `size` leaves at `t` seconds (epoch of 60 s from 0).
    fn checkpoint(&self, size: u64, t: i64) -> Vec<u8> {
        let e = t as u64 / 60;
        let key = Signer::from_seed(self.identity.name(), &[(e % 250) as u8 + 1; 32]).unwrap();
        let (start, end) = (e * 60, e * 60 + 60);
        let cp = OpCheckpoint {
            checkpoint: Checkpoint {
                origin: self.identity.name().into(),
                size,
                root: root(size, &self.tree).unwrap(),
                extensions: vec![],
            },
            time_ns: t * 1_000_000_000,
            epoch: EpochLine {
                epoch: e,
                start,
                end,
                public_key: key.public_key(),
                cert_signature: certify_epoch(&self.identity, e, start, end, &key.public_key()),
            },
            start: None,
        };
        sign_checkpoint(&cp, &key).to_bytes()
    }

    fn body(&self, old: u64, size: u64, t: i64) -> Vec<u8> {
        let proof = consistency_proof(old, size, &self.tree).unwrap();
        let mut b = format!("old {old}\n").into_bytes();
        for h in proof {
            b.extend_from_slice(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h).as_bytes());
            b.push(b'\n');
        }
        b.push(b'\n');
        b.extend_from_slice(&self.checkpoint(size, t));
        b
    }
}

#[test]
fn every_rule_of_add_checkpoint_answers_its_status() {
    let d = tempfile::tempdir().unwrap();
    let mut log = TestLog::new("example.org/log");
    log.grow(100);
    let w = Witness::open(d.path(), "witness.example/w", vec![log.identity.verifier()]).unwrap();
    let wv = w.verifier();

    // First contact: old 0, no proof.
    let a = w.add_checkpoint(&log.body(0, 10, 1000));
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let line = crate::note::SignatureLine::parse(std::str::from_utf8(&a.body).unwrap().trim_end()).unwrap();
    let text = Note::parse(&log.checkpoint(10, 1000)).unwrap().text;
    assert!(verify_cosignature(&wv, text.as_bytes(), &line).is_ok());
    // The same again (a lost answer): the same cosignature.
    assert_eq!(w.add_checkpoint(&log.body(0, 10, 1000)).body, a.body);
    // A wrong old size: 409 with the witness's size.
    let a = w.add_checkpoint(&log.body(0, 20, 1001));
    assert_eq!((a.status, a.content_type, a.body.as_slice()), (409, "text/x.tlog.size", &b"10\n"[..]));
    // Growth with a proof.
    assert_eq!(w.add_checkpoint(&log.body(10, 20, 1001)).status, 200);
    // Old size above the checkpoint's: 400.
    assert_eq!(w.add_checkpoint(&log.body(20, 20, 1002)).status, 200);
    let mut b = log.body(20, 20, 1003);
    b.splice(0..6, b"old 30".iter().copied());
    assert_eq!(w.add_checkpoint(&b).status, 400);
    // Not after the last cosigned time: 403, kept as evidence.
    assert_eq!(w.add_checkpoint(&log.body(20, 30, 1002)).status, 403);
    // A rewritten history: another tree of a larger size, not consistent: 422.
    let mut other = TestLog::new("example.org/log");
    other.tree.push(leaf_hash(b"rewritten"));
    other.grow(100);
    let mut b = b"old 20\n".to_vec();
    for h in consistency_proof(20, 40, &other.tree).unwrap() {
        b.extend_from_slice(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h).as_bytes());
        b.push(b'\n');
    }
    b.push(b'\n');
    b.extend_from_slice(&other.checkpoint(40, 1010));
    assert_eq!(w.add_checkpoint(&b).status, 422);
    // Same size, another root: 422.
    let mut b = b"old 20\n\n".to_vec();
    b.extend_from_slice(&other.checkpoint(20, 1011));
    assert_eq!(w.add_checkpoint(&b).status, 422);
    assert_eq!(fs::read_dir(d.path().join("evidence").join(origin_hash("example.org/log"))).unwrap().count(), 3);
    // Unknown origin: 404; bad signature: 403; garbage: 400.
    let stranger = TestLog::new("example.org/stranger");
    assert_eq!(w.add_checkpoint(&stranger.body(0, 0, 1000)).status, 404);
    let mut forged = log.body(20, 20, 1020);
    let n = forged.len();
    forged[n - 10] ^= 1;
    assert!(matches!(w.add_checkpoint(&forged).status, 400 | 403));
    let impostor =
        TestLog { identity: Signer::from_seed("example.org/log", &[6; 32]).unwrap(), tree: log.tree.clone() };
    assert_eq!(w.add_checkpoint(&impostor.body(20, 30, 1030)).status, 403);
    assert_eq!(w.add_checkpoint(b"old 01\n\n").status, 400);
    assert_eq!(w.add_checkpoint(b"nonsense").status, 400);
    // The state survives a restart, and GET serves it with both signatures.
    drop(w);
    let w = Witness::open(d.path(), "ignored", vec![log.identity.verifier()]).unwrap();
    assert_eq!(w.verifier(), wv);
    let g = w.get_checkpoint(&origin_hash("example.org/log"));
    assert_eq!(g.status, 200);
    let n = Note::parse(&g.body).unwrap();
    assert!(n.text.starts_with("example.org/log\n20\n"));
    assert_eq!(n.signatures.len(), 2);
    assert_eq!(w.add_checkpoint(&log.body(10, 30, 1040)).body, b"20\n");
    assert_eq!(w.get_checkpoint(&origin_hash("nobody")).status, 404);
}

#[test]
fn the_client_and_server_speak_http() {
    let d = tempfile::tempdir().unwrap();
    let mut log = TestLog::new("example.org/log");
    log.grow(50);
    let w = Arc::new(Witness::open(d.path(), "witness.example/w", vec![log.identity.verifier()]).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let w2 = w.clone();
    std::thread::spawn(move || serve_forever(w2, listener));
    let t = Duration::from_secs(5);
    let proof = consistency_proof(0, 0, &log.tree).unwrap();
    match client::add_checkpoint(&url, 0, &proof, &log.checkpoint(10, 1000), t).unwrap() {
        client::PushOutcome::Cosigned(lines) => {
            assert_eq!(lines.len(), 1);
            assert!(w.verifier().matches(&lines[0]));
        }
        other => panic!("{other:?}"),
    }
    match client::add_checkpoint(&url, 0, &[], &log.checkpoint(20, 1001), t).unwrap() {
        client::PushOutcome::Conflict(10) => {}
        other => panic!("{other:?}"),
    }
    let proof = consistency_proof(10, 20, &log.tree).unwrap();
    assert!(matches!(
        client::add_checkpoint(&url, 10, &proof, &log.checkpoint(20, 1001), t),
        Ok(client::PushOutcome::Cosigned(_))
    ));
    let got = client::get_checkpoint(&url, "example.org/log", t).unwrap().unwrap();
    assert!(Note::parse(&got).unwrap().text.contains("\n20\n"));
    assert!(client::get_checkpoint(&url, "other", t).unwrap().is_none());
    let err = client::add_checkpoint(&url, 20, &[], b"not a note", t).unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // A body over the limit is refused without being read whole.
    let big = vec![b'a'; MAX_BODY + 1];
    let err = client::add_checkpoint(&url, 0, &[], &big, t).unwrap_err();
    assert!(err.to_string().contains("413") || err.to_string().contains("did not answer"), "{err}");
    // Nobody listening: a clear error, quickly.
    let err = client::add_checkpoint("http://127.0.0.1:1", 0, &[], b"", t).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(client::check_url("https://x:1").is_err() && client::check_url("http://x").is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the body, the witness answers (4xx) and never panics; its
    /// state is unchanged: a good checkpoint is still cosigned afterwards.
    #[test]
    fn any_request_body_is_answered_and_changes_nothing(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..800),
        pos in 0usize..4000,
        x in 1u8..=255,
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut log = TestLog::new("example.org/log");
        log.grow(20);
        let w = Witness::open(d.path(), "witness.example/w", vec![log.identity.verifier()]).unwrap();
        proptest::prop_assert!(w.add_checkpoint(&bytes).status >= 400);
        let mut body = log.body(0, 10, 1000);
        let p = pos % body.len();
        body[p] ^= x;
        let a = w.add_checkpoint(&body);
        // A change in the proof section of an empty proof or a signature
        // byte is refused; nothing else is accepted either.
        proptest::prop_assert!(a.status >= 400 || a.status == 200 && body == log.body(0, 10, 1000));
        proptest::prop_assert_eq!(w.add_checkpoint(&log.body(0, 10, 1000)).status, 200);
    }
}
