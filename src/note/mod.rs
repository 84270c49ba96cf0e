//! C2SP signed notes (docs/FORMAT.md, "Tamper evidence"): text signed by
//! one or more keys, Ed25519 signers and verifier keys ("vkeys"), and the
//! two note kinds op-dbus makes: checkpoints ([`checkpoint`]) and, as a
//! witness, cosignatures ([`cosig`]).
//!
//! Parsing is strict (a note is evidence): valid UTF-8, no control
//! characters but newline, canonical base64, bounded sizes.

pub mod checkpoint;
pub mod cosig;

use base64::Engine;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Signature type of signed-note Ed25519 signatures.
pub const ALG_ED25519: u8 = 0x01;
/// Signature type of tlog-cosignature v1 (timestamped Ed25519) cosignatures.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The largest note accepted (a checkpoint with many cosignatures is ~2 KiB).
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// The most signature lines accepted on one note (the spec asks for ≥ 16).
pub const MAX_SIGNATURES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("invalid key name {0:?}: it must be non-empty, with no spaces or +")]
    KeyName(String),
    #[error("malformed key: {0}")]
    Key(String),
    #[error("no signature by {name} (key id {key_id}) on the note")]
    Unsigned { name: String, key_id: String },
    #[error("the signature by {name} does not verify")]
    BadSignature { name: String },
}

fn malformed(s: impl Into<String>) -> NoteError {
    NoteError::Malformed(s.into())
}

/// Decodes canonical padded standard base64 (what was encoded is re-encoded alike).
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let b = B64.decode(s).ok()?;
    (B64.encode(&b) == s).then_some(b)
}

/// A decimal without sign or leading zeros (as every number in these formats is written).
pub(crate) fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A signed-note key name: non-empty, no Unicode whitespace, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// `SHA-256(name ‖ "\n" ‖ alg ‖ public key)[0..4]`.
pub fn key_id(name: &str, alg: u8, public_key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public_key);
    h.finalize()[..4].try_into().expect("4 bytes")
}

/// One signature line: `— <name> <base64(key id ‖ signature)>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLine {
    pub name: String,
    pub key_id: [u8; 4],
    /// The bytes after the key id (for a cosignature: timestamp ‖ signature).
    pub signature: Vec<u8>,
}

impl SignatureLine {
    /// The line, without its newline.
    pub fn to_line(&self) -> String {
        let mut b = self.key_id.to_vec();
        b.extend_from_slice(&self.signature);
        format!("— {} {}", self.name, B64.encode(b))
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<SignatureLine, NoteError> {
        let rest = line
            .strip_prefix("— ")
            .ok_or_else(|| malformed("a signature line does not start with an em dash and a space"))?;
        let (name, sig) = rest.split_once(' ').ok_or_else(|| malformed("a signature line has no signature"))?;
        if !valid_key_name(name) {
            return Err(NoteError::KeyName(name.to_string()));
        }
        let b = b64_decode(sig).ok_or_else(|| malformed("a signature is not canonical base64"))?;
        if b.len() < 5 {
            return Err(malformed("a signature is shorter than a key id"));
        }
        Ok(SignatureLine { name: name.to_string(), key_id: b[..4].try_into().expect("4"), signature: b[4..].to_vec() })
    }
}

/// A note: its text (ending in a newline) and its signature lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<SignatureLine>,
}

impl Note {
    pub fn parse(bytes: &[u8]) -> Result<Note, NoteError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(malformed(format!("larger than {MAX_NOTE_BYTES} bytes")));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
        if s.chars().any(|c| c < ' ' && c != '\n') {
            return Err(malformed("a control character other than newline"));
        }
        if !s.ends_with('\n') {
            return Err(malformed("does not end with a newline"));
        }
        // The text ends at the last empty line.
        let split = s.rfind("\n\n").ok_or_else(|| malformed("no empty line before the signatures"))?;
        let text = &s[..split + 1];
        let sigs = &s[split + 2..];
        if sigs.is_empty() {
            return Err(malformed("no signature lines"));
        }
        let lines: Vec<&str> = sigs.strip_suffix('\n').unwrap_or(sigs).split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(malformed(format!("more than {MAX_SIGNATURES} signatures")));
        }
        let signatures = lines.into_iter().map(SignatureLine::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Note { text: text.to_string(), signatures })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.text.clone();
        s.push('\n');
        for l in &self.signatures {
            s.push_str(&l.to_line());
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Checks the signature(s) by `v`: at least one is present, and every
    /// line with its name and key id verifies.
    pub fn verify_by(&self, v: &Verifier) -> Result<(), NoteError> {
        let mut found = false;
        for l in self.signatures.iter().filter(|l| v.matches(l)) {
            v.verify(self.text.as_bytes(), l)?;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(NoteError::Unsigned { name: v.name.clone(), key_id: hex(&v.key_id) })
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex4(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    let v = u32::from_str_radix(s, 16).ok()?;
    Some(v.to_be_bytes())
}

/// A public key that checks signatures of one name and signature type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    alg: u8,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl Verifier {
    pub fn new(name: &str, alg: u8, public_key: &[u8; 32]) -> Result<Verifier, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::KeyName(name.to_string()));
        }
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE_V1 {
            return Err(NoteError::Key(format!(
                "signature type {alg:#04x} is not Ed25519 (0x01) or cosignature/v1 (0x04)"
            )));
        }
        let key =
            VerifyingKey::from_bytes(public_key).map_err(|_| NoteError::Key("not an Ed25519 public key".into()))?;
        if key.is_weak() {
            return Err(NoteError::Key("a small-order Ed25519 public key".into()));
        }
        Ok(Verifier { name: name.to_string(), alg, key_id: key_id(name, alg, public_key), key })
    }

    /// Parses `<name>+<hex key id>+<base64(alg ‖ public key)>`.
    pub fn parse_vkey(text: &str) -> Result<Verifier, NoteError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("a vkey is three parts joined by +: name, key id, key".into()));
        };
        let id = unhex4(id).ok_or_else(|| NoteError::Key("the key id is not 8 lowercase hex digits".into()))?;
        let b = b64_decode(key).ok_or_else(|| NoteError::Key("the key is not canonical base64".into()))?;
        let (&alg, pk) = b.split_first().ok_or_else(|| NoteError::Key("an empty key".into()))?;
        let pk: &[u8; 32] =
            pk.try_into().map_err(|_| NoteError::Key(format!("{} bytes of key material, not 32", pk.len())))?;
        let v = Verifier::new(name, alg, pk)?;
        if v.key_id != id {
            return Err(NoteError::Key(format!(
                "the key id {} does not match the name and key ({})",
                hex(&id),
                hex(&v.key_id)
            )));
        }
        Ok(v)
    }

    pub fn to_vkey(&self) -> String {
        let mut b = vec![self.alg];
        b.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex(&self.key_id), B64.encode(b))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn alg(&self) -> u8 {
        self.alg
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Whether a signature line claims to be by this key (name and key id).
    pub fn matches(&self, line: &SignatureLine) -> bool {
        line.name == self.name && line.key_id == self.key_id
    }

    /// Checks an Ed25519 signature line over `msg`.
    pub fn verify(&self, msg: &[u8], line: &SignatureLine) -> Result<(), NoteError> {
        let bad = || NoteError::BadSignature { name: line.name.clone() };
        if !self.matches(line) {
            return Err(NoteError::Unsigned { name: self.name.clone(), key_id: hex(&self.key_id) });
        }
        self.verify_raw(msg, &line.signature).map_err(|_| bad())
    }

    /// An Ed25519 signature (64 bytes) over `msg`, strictly (RFC 8032 with
    /// canonical encodings).
    pub(crate) fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> Result<(), ()> {
        let sig: [u8; 64] = sig.try_into().map_err(|_| ())?;
        self.key.verify_strict(msg, &Signature::from_bytes(&sig)).map_err(|_| ())
    }
}

/// A private key that makes signature lines for one name.
pub struct Signer {
    name: String,
    alg: u8,
    key_id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}+{})", self.name, hex(&self.key_id))
    }
}

impl Signer {
    /// An Ed25519 signer from a 32-byte RFC 8032 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Signer, NoteError> {
        Self::with_alg(name, ALG_ED25519, seed)
    }

    pub(crate) fn with_alg(name: &str, alg: u8, seed: &[u8; 32]) -> Result<Signer, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::KeyName(name.to_string()));
        }
        let key = SigningKey::from_bytes(seed);
        Ok(Signer { name: name.to_string(), alg, key_id: key_id(name, alg, key.verifying_key().as_bytes()), key })
    }

    /// A new random Ed25519 signer.
    pub fn generate(name: &str) -> Result<Signer, NoteError> {
        Self::generate_alg(name, ALG_ED25519)
    }

    pub(crate) fn generate_alg(name: &str, alg: u8) -> Result<Signer, NoteError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| NoteError::Key(format!("no randomness: {e}")))?;
        Self::with_alg(name, alg, &seed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn verifier(&self) -> Verifier {
        Verifier { name: self.name.clone(), alg: self.alg, key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// The raw 64-byte Ed25519 signature of `msg`.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(msg).to_bytes()
    }

    /// The signature line of `msg` (an Ed25519 note signature).
    pub fn sign(&self, msg: &[u8]) -> SignatureLine {
        SignatureLine { name: self.name.clone(), key_id: self.key_id, signature: self.sign_raw(msg).to_vec() }
    }

    /// Signs `text` (which must end with a newline) as a note.
    pub fn sign_note(&self, text: &str) -> Note {
        debug_assert!(text.ends_with('\n'));
        Note { text: text.to_string(), signatures: vec![self.sign(text.as_bytes())] }
    }

    /// `PRIVATE+KEY+<name>+<hex key id>+<base64(alg ‖ seed)>` (Go's note signer key form).
    pub fn to_skey(&self) -> String {
        let mut b = zeroize::Zeroizing::new(vec![self.alg]);
        b.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{}+{}", self.name, hex(&self.key_id), B64.encode(&*b))
    }

    pub fn from_skey(text: &str) -> Result<Signer, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::Key("a signer key starts with PRIVATE+KEY+".into()))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("a signer key is PRIVATE+KEY+name+id+key".into()));
        };
        let id = unhex4(id).ok_or_else(|| NoteError::Key("the key id is not 8 lowercase hex digits".into()))?;
        let b = zeroize::Zeroizing::new(
            b64_decode(key).ok_or_else(|| NoteError::Key("the key is not canonical base64".into()))?,
        );
        let (&alg, seed) = b.split_first().ok_or_else(|| NoteError::Key("an empty key".into()))?;
        let seed: &[u8; 32] = seed.try_into().map_err(|_| NoteError::Key("the seed is not 32 bytes".into()))?;
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE_V1 {
            return Err(NoteError::Key(format!("signature type {alg:#04x} is not supported")));
        }
        let s = Self::with_alg(name, alg, seed)?;
        if s.key_id != id {
            return Err(NoteError::Key("the key id does not match the name and key".into()));
        }
        Ok(s)
    }

    pub(crate) fn alg(&self) -> u8 {
        self.alg
    }
}

#[cfg(test)]
mod tests;
