//! Signed notes against the spec's example and an independent
//! implementation (cloudflare's `signed_note`, a port of Go's x/mod/sumdb/note).

use super::checkpoint::*;
use super::cosig::*;
use super::*;
use proptest::prelude::*;

/// The example of c2sp.org/signed-note.
const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const SPEC_NOTE: &str = "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

#[test]
fn the_spec_example_verifies() {
    let v = Verifier::parse_vkey(SPEC_VKEY).unwrap();
    assert_eq!(v.to_vkey(), SPEC_VKEY);
    let n = Note::parse(SPEC_NOTE.as_bytes()).unwrap();
    assert_eq!(n.text, "This is an example message.\n");
    n.verify_by(&v).unwrap();
    assert_eq!(n.to_bytes(), SPEC_NOTE.as_bytes());
    let mut forged = n.clone();
    forged.text = "This is an example massage.\n".into();
    assert!(matches!(forged.verify_by(&v), Err(NoteError::BadSignature { .. })));
}

#[test]
fn notes_and_keys_interoperate_with_signed_note() {
    use signed_note::Verifier as _;
    let s = Signer::generate("example.org/log").unwrap();
    // Our vkey and signature, their verifier.
    let theirs = signed_note::StandardVerifier::new(&s.verifier().to_vkey()).unwrap();
    assert_eq!(theirs.key_id(), u32::from_be_bytes(s.key_id()));
    let note = s.sign_note("hello\nworld\n").to_bytes();
    let parsed = signed_note::Note::from_bytes(&note).unwrap();
    let list = signed_note::VerifierList::new(vec![Box::new(theirs.clone())]);
    parsed.verify(&list).unwrap();
    // Their signer key and signature, our verifier.
    let (skey, vkey) = signed_note::generate_key(&mut rand_core::OsRng, "example.net/other");
    let ours = Signer::from_skey(&skey).unwrap();
    assert_eq!(ours.verifier().to_vkey(), vkey);
    let signer = signed_note::StandardSigner::new(&skey).unwrap();
    let mut n = signed_note::Note::new(b"text\n", &[]).unwrap();
    n.add_sigs(&[&signer]).unwrap();
    Note::parse(&n.to_bytes()).unwrap().verify_by(&Verifier::parse_vkey(&vkey).unwrap()).unwrap();
    // And the signer key form round-trips.
    assert_eq!(Signer::from_skey(&s.to_skey()).unwrap().verifier(), s.verifier());
}

#[test]
fn malformed_notes_and_keys_are_refused() {
    for bad in [
        "no signatures\n",
        "text\n\n",
        "text\n\n— name\n",
        "text\n\n- name AAAAAAAA\n",
        "te\x01xt\n\n— a Uw2QOkn8\n",
        "text\n\n— a Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=",
    ] {
        assert!(Note::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    for bad in [
        "",
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
        "example.com/foo+530d903a+A+ekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "exa mple+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ] {
        assert!(Verifier::parse_vkey(bad).is_err(), "{bad:?}");
    }
    assert!(
        !valid_key_name("a+b") && !valid_key_name("") && !valid_key_name("a\u{2003}b") && valid_key_name("op-dbus/abc")
    );
}

fn epoch_checkpoint(identity: &Signer, t0: u64, len: u64, e: u64, time_ns: i64, size: u64) -> (Vec<u8>, Signer) {
    let key = Signer::from_seed(identity.name(), &[e as u8 + 1; 32]).unwrap();
    let (start, end) = (t0 + e * len, t0 + (e + 1) * len);
    let cert = certify_epoch(identity, e, start, end, &key.public_key());
    let cp = OpCheckpoint {
        checkpoint: Checkpoint {
            origin: identity.name().into(),
            size,
            root: crate::merkle::empty_root(),
            extensions: vec![],
        },
        time_ns,
        epoch: EpochLine { epoch: e, start, end, public_key: key.public_key(), cert_signature: cert },
        start: Some(StartLine::After { size: 3, time_ns: 17 }),
    };
    (sign_checkpoint(&cp, &key).to_bytes(), key)
}

#[test]
fn a_checkpoint_verifies_with_the_identity_key_alone() {
    let id = Signer::from_seed("example.org/log", &[9; 32]).unwrap();
    let (note, _) = epoch_checkpoint(&id, 1000, 60, 2, 1_125_000_000_000, 5);
    let v = verify_checkpoint(&note, &id.verifier()).unwrap();
    assert_eq!(
        (v.cp.checkpoint.size, v.cp.epoch.epoch, v.cp.start),
        (5, 2, Some(StartLine::After { size: 3, time_ns: 17 }))
    );
    assert_eq!(schedule_of(&v.cp.epoch), Some((1000, 60)));
    // A standard tlog-checkpoint parser reads it too.
    let text = Note::parse(&note).unwrap().text;
    let c = tlog_tiles::checkpoint::Checkpoint::from_bytes(text.as_bytes()).unwrap();
    assert_eq!((c.origin(), c.size()), ("example.org/log", 5));
    assert_eq!(c.hash().0, crate::merkle::empty_root());

    // Time outside the certified epoch: not signed with its own epoch's key.
    let (note, _) = epoch_checkpoint(&id, 1000, 60, 2, 1_185_000_000_000, 5);
    assert!(matches!(
        verify_checkpoint(&note, &id.verifier()),
        Err(CheckpointError::TimeOutsideEpoch { epoch: 2, .. })
    ));
    // A key certified by another identity.
    let other = Signer::from_seed("example.org/log", &[8; 32]).unwrap();
    let (note, _) = epoch_checkpoint(&other, 1000, 60, 2, 1_125_000_000_000, 5);
    assert!(matches!(verify_checkpoint(&note, &id.verifier()), Err(CheckpointError::Certificate { .. })));
    // Signed by a key other than the certified one.
    let (note, _) = epoch_checkpoint(&id, 1000, 60, 2, 1_125_000_000_000, 5);
    let mut n = Note::parse(&note).unwrap();
    let wrong = Signer::from_seed(id.name(), &[77; 32]).unwrap();
    n.signatures = vec![wrong.sign(n.text.as_bytes())];
    assert!(verify_checkpoint(&n.to_bytes(), &id.verifier()).is_err());
    // Another origin.
    let elsewhere = Signer::from_seed("example.org/other", &[9; 32]).unwrap();
    assert!(matches!(verify_checkpoint(&note, &elsewhere.verifier()), Err(CheckpointError::Origin { .. })));
}

#[test]
fn cosignatures_verify_and_bind_the_text_and_time() {
    let w = Cosigner::from_seed("witness.example/w1", &[3; 32]).unwrap();
    let v = Verifier::parse_vkey(&w.verifier().to_vkey()).unwrap();
    assert_eq!(v.alg(), ALG_COSIGNATURE_V1);
    let text = b"example.org/log\n5\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
    let line = w.cosign(text, 1_700_000_000);
    assert_eq!(verify_cosignature(&v, text, &line), Ok(1_700_000_000));
    let back = SignatureLine::parse(&line.to_line()).unwrap();
    assert_eq!(verify_cosignature(&v, text, &back), Ok(1_700_000_000));
    let mut later = back.clone();
    later.signature[7] ^= 1;
    assert!(verify_cosignature(&v, text, &later).is_err());
    assert!(
        verify_cosignature(&v, b"example.org/log\n6\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", &back).is_err()
    );
    // An Ed25519 note key is not a cosigner key, and the reverse.
    let s = Signer::from_seed("witness.example/w1", &[3; 32]).unwrap();
    assert!(verify_cosignature(&s.verifier(), text, &line).is_err());
    assert!(Cosigner::from_skey(&s.to_skey()).is_err());
    assert_eq!(Cosigner::from_skey(&w.to_skey()).unwrap().verifier(), w.verifier());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The parser never panics, and what it accepts prints back as it was.
    #[test]
    fn parse_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(n) = Note::parse(&bytes) {
            prop_assert_eq!(n.to_bytes(), bytes.clone());
        }
        let s = String::from_utf8_lossy(&bytes);
        let _ = Checkpoint::parse_text(&s).map(OpCheckpoint::from_checkpoint);
        let _ = Verifier::parse_vkey(&s);
    }

    /// Any changed byte of a signed checkpoint is caught.
    #[test]
    fn a_changed_byte_fails(pos in 0usize..2000, x in 1u8..=255) {
        let id = Signer::from_seed("example.org/log", &[9; 32]).unwrap();
        let (note, _) = epoch_checkpoint(&id, 1000, 60, 2, 1_125_000_000_000, 5);
        let mut b = note.clone();
        let p = pos % b.len();
        b[p] ^= x;
        prop_assert!(verify_checkpoint(&b, &id.verifier()).is_err());
    }
}
