//! C2SP tlog-cosignature v1 (timestamped Ed25519): what a witness adds to
//! a checkpoint it has checked. The signature line holds key id ‖ u64 BE
//! timestamp ‖ signature, over `cosignature/v1\ntime <t>\n` ‖ the
//! checkpoint text.

use super::{NoteError, SignatureLine, Signer, Verifier, ALG_COSIGNATURE_V1};

fn message(text: &[u8], timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(text);
    m
}

/// A witness's cosigning key.
#[derive(Debug)]
pub struct Cosigner(Signer);

impl Cosigner {
    pub fn generate(name: &str) -> Result<Cosigner, NoteError> {
        Signer::generate_alg(name, ALG_COSIGNATURE_V1).map(Cosigner)
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Cosigner, NoteError> {
        Signer::with_alg(name, ALG_COSIGNATURE_V1, seed).map(Cosigner)
    }

    /// The signer key form (`PRIVATE+KEY+…`, signature type 0x04).
    pub fn to_skey(&self) -> String {
        self.0.to_skey()
    }

    pub fn from_skey(text: &str) -> Result<Cosigner, NoteError> {
        let s = Signer::from_skey(text)?;
        if s.alg() != ALG_COSIGNATURE_V1 {
            return Err(NoteError::Key("not a cosignature/v1 key (signature type 0x04)".into()));
        }
        Ok(Cosigner(s))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The vkey witnesses publish: `<name>+<id>+<base64(0x04 ‖ key)>`.
    pub fn verifier(&self) -> Verifier {
        self.0.verifier()
    }

    /// The cosignature of a checkpoint `text` at `timestamp` (unix seconds).
    pub fn cosign(&self, text: &[u8], timestamp: u64) -> SignatureLine {
        let mut signature = timestamp.to_be_bytes().to_vec();
        signature.extend_from_slice(&self.0.sign_raw(&message(text, timestamp)));
        SignatureLine { name: self.0.name().to_string(), key_id: self.0.key_id(), signature }
    }
}

/// Checks a cosignature by `v` (a 0x04 key) on a checkpoint `text`;
/// returns its timestamp.
pub fn verify_cosignature(v: &Verifier, text: &[u8], line: &SignatureLine) -> Result<u64, NoteError> {
    let bad = || NoteError::BadSignature { name: line.name.clone() };
    if v.alg() != ALG_COSIGNATURE_V1 {
        return Err(NoteError::Key(format!("{} is not a cosignature/v1 key", v.name())));
    }
    if !v.matches(line) {
        return Err(NoteError::Unsigned { name: v.name().to_string(), key_id: super::hex(&v.key_id()) });
    }
    if line.signature.len() != 72 {
        return Err(bad());
    }
    let timestamp = u64::from_be_bytes(line.signature[..8].try_into().expect("8"));
    if timestamp > i64::MAX as u64 {
        return Err(bad());
    }
    v.verify_raw(&message(text, timestamp), &line.signature[8..]).map_err(|_| bad())?;
    Ok(timestamp)
}
