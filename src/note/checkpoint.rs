//! C2SP tlog-checkpoint, and op-dbus's checkpoint (docs/FORMAT.md,
//! "Checkpoints"): origin, size, root, then the `op-dbus-time`,
//! `op-dbus-epoch` and optional `op-dbus-start` extension lines, signed by
//! the key of the epoch that holds its time, which the identity key
//! certified.

use base64::Engine;

use super::{b64_decode, Note, NoteError, SignatureLine, Signer, Verifier, ALG_ED25519};
use crate::merkle::Hash;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("the checkpoint's origin is {found:?}, the key's is {expected:?}")]
    Origin { found: String, expected: String },
    #[error("the certificate of epoch {epoch} does not verify under the identity key: {detail}")]
    Certificate { epoch: u64, detail: String },
    #[error("not signed with its own epoch's key: time {time_ns} ns is outside epoch {epoch} [{start}, {end}) s")]
    TimeOutsideEpoch { time_ns: i64, epoch: u64, start: u64, end: u64 },
    #[error("the checkpoint's signature by the key of epoch {epoch} does not verify: {source}")]
    Signature { epoch: u64, source: NoteError },
}

fn malformed(s: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(s.into())
}

/// A decimal without leading zeros or sign.
fn parse_dec<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, CheckpointError> {
    super::decimal(s)
        .ok_or_else(|| malformed(format!("{what} {s:?} is not a decimal without leading zeros, or out of range")))
}

fn parse_hash(s: &str, what: &str) -> Result<Hash, CheckpointError> {
    b64_decode(s)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(format!("{what} is not a base64 SHA-256 hash")))
}

/// A tlog-checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extension lines, in order, without newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or_else(|| malformed("the text does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or("");
        if origin.is_empty() {
            return Err(malformed("an empty origin line"));
        }
        let size = parse_dec(lines.next().ok_or_else(|| malformed("no size line"))?, "size")?;
        let root = parse_hash(lines.next().ok_or_else(|| malformed("no root line"))?, "the root")?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("an empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_string(), size, root, extensions })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }
}

/// The `op-dbus-epoch` line: the epoch, its bounds (unix seconds), its
/// public key and the identity's certificate signature (key id ‖ signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochLine {
    pub epoch: u64,
    pub start: u64,
    pub end: u64,
    pub public_key: [u8; 32],
    pub cert_signature: Vec<u8>,
}

/// The `op-dbus-start` line of the first checkpoint after a start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// No checkpoint came before.
    None,
    /// The last checkpoint before the start.
    After { size: u64, time_ns: i64 },
}

/// An op-dbus checkpoint: a tlog-checkpoint with its three extension lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpCheckpoint {
    /// The origin, size and root (its `extensions` are rebuilt by `to_text`).
    pub checkpoint: Checkpoint,
    pub time_ns: i64,
    pub epoch: EpochLine,
    pub start: Option<StartLine>,
}

impl OpCheckpoint {
    pub fn to_text(&self) -> String {
        let e = &self.epoch;
        let mut c = self.checkpoint.clone();
        c.extensions = vec![
            format!("op-dbus-time {}", self.time_ns),
            format!(
                "op-dbus-epoch {} {} {} {} {}",
                e.epoch,
                e.start,
                e.end,
                B64.encode(e.public_key),
                B64.encode(&e.cert_signature)
            ),
        ];
        match self.start {
            Some(StartLine::None) => c.extensions.push("op-dbus-start none".into()),
            Some(StartLine::After { size, time_ns }) => c.extensions.push(format!("op-dbus-start {size} {time_ns}")),
            None => {}
        }
        c.to_text()
    }

    pub fn from_checkpoint(c: Checkpoint) -> Result<OpCheckpoint, CheckpointError> {
        let mut ext = c.extensions.iter();
        let time = ext
            .next()
            .and_then(|l| l.strip_prefix("op-dbus-time "))
            .ok_or_else(|| malformed("the first extension line is not op-dbus-time"))?;
        let time_ns: i64 = parse_dec(time, "op-dbus-time")?;
        let epoch = ext
            .next()
            .and_then(|l| l.strip_prefix("op-dbus-epoch "))
            .ok_or_else(|| malformed("the second extension line is not op-dbus-epoch"))?;
        let f: Vec<&str> = epoch.split(' ').collect();
        let [e, start, end, pk, sig] = f[..] else {
            return Err(malformed("op-dbus-epoch has five fields: epoch, start, end, key, certificate"));
        };
        let public_key = parse_hash(pk, "the epoch key")?;
        let cert_signature = b64_decode(sig)
            .filter(|b| b.len() == 68)
            .ok_or_else(|| malformed("the epoch certificate is not 68 bytes of base64"))?;
        let epoch = EpochLine {
            epoch: parse_dec(e, "the epoch")?,
            start: parse_dec(start, "the epoch start")?,
            end: parse_dec(end, "the epoch end")?,
            public_key,
            cert_signature,
        };
        let start = match ext.next() {
            None => None,
            Some(l) => match l.strip_prefix("op-dbus-start ") {
                Some("none") => Some(StartLine::None),
                Some(v) => {
                    let (size, t) =
                        v.split_once(' ').ok_or_else(|| malformed("op-dbus-start is `none` or a size and a time"))?;
                    Some(StartLine::After {
                        size: parse_dec(size, "op-dbus-start size")?,
                        time_ns: parse_dec(t, "op-dbus-start time")?,
                    })
                }
                None => return Err(malformed(format!("unknown extension line {l:?}"))),
            },
        };
        if let Some(l) = ext.next() {
            return Err(malformed(format!("unknown extension line {l:?}")));
        }
        let cp = OpCheckpoint { checkpoint: Checkpoint { extensions: Vec::new(), ..c }, time_ns, epoch, start };
        Ok(cp)
    }
}

/// The text the identity signs to certify the key of epoch `e`.
pub fn epoch_cert_text(origin: &str, e: u64, start: u64, end: u64, public_key: &[u8; 32]) -> String {
    format!("op-dbus/epoch-key/v1\n{origin}\n{e}\n{start}\n{end}\n{}\n", B64.encode(public_key))
}

/// The certificate signature of epoch `e`'s key: identity key id ‖ signature.
pub fn certify_epoch(identity: &Signer, e: u64, start: u64, end: u64, public_key: &[u8; 32]) -> Vec<u8> {
    let text = epoch_cert_text(identity.name(), e, start, end, public_key);
    let mut out = identity.key_id().to_vec();
    out.extend_from_slice(&identity.sign_raw(text.as_bytes()));
    out
}

/// Signs a checkpoint with its epoch's key (`signer` must be that key, named by the origin).
pub fn sign_checkpoint(cp: &OpCheckpoint, signer: &Signer) -> Note {
    signer.sign_note(&cp.to_text())
}

/// The epoch schedule a certificate line implies: (T0, L) in seconds.
pub fn schedule_of(e: &EpochLine) -> Option<(u64, u64)> {
    let len = e.end.checked_sub(e.start).filter(|l| *l > 0)?;
    let t0 = e.start.checked_sub(e.epoch.checked_mul(len)?)?;
    Some((t0, len))
}

/// A checkpoint that verified, with its note.
#[derive(Clone, Debug)]
pub struct VerifiedCheckpoint {
    pub cp: OpCheckpoint,
    pub note: Note,
}

/// Checks a checkpoint note with nothing but the identity key
/// (docs/FORMAT.md, "What verify checks", point 1).
pub fn verify_checkpoint(bytes: &[u8], identity: &Verifier) -> Result<VerifiedCheckpoint, CheckpointError> {
    let note = Note::parse(bytes)?;
    let cp = OpCheckpoint::from_checkpoint(Checkpoint::parse_text(&note.text)?)?;
    if cp.checkpoint.origin != identity.name() {
        return Err(CheckpointError::Origin {
            found: cp.checkpoint.origin.clone(),
            expected: identity.name().to_string(),
        });
    }
    let e = &cp.epoch;
    if schedule_of(e).is_none() {
        return Err(CheckpointError::Certificate {
            epoch: e.epoch,
            detail: "the epoch's bounds are impossible".into(),
        });
    }
    let cert_text = epoch_cert_text(identity.name(), e.epoch, e.start, e.end, &e.public_key);
    let cert = SignatureLine {
        name: identity.name().to_string(),
        key_id: e.cert_signature[..4].try_into().expect("68 bytes"),
        signature: e.cert_signature[4..].to_vec(),
    };
    identity
        .verify(cert_text.as_bytes(), &cert)
        .map_err(|err| CheckpointError::Certificate { epoch: e.epoch, detail: err.to_string() })?;
    let start_ns = i128::from(e.start) * 1_000_000_000;
    let end_ns = i128::from(e.end) * 1_000_000_000;
    if !(start_ns..end_ns).contains(&i128::from(cp.time_ns)) {
        return Err(CheckpointError::TimeOutsideEpoch {
            time_ns: cp.time_ns,
            epoch: e.epoch,
            start: e.start,
            end: e.end,
        });
    }
    let key = Verifier::new(identity.name(), ALG_ED25519, &e.public_key)
        .map_err(|err| CheckpointError::Certificate { epoch: e.epoch, detail: err.to_string() })?;
    note.verify_by(&key).map_err(|source| CheckpointError::Signature { epoch: e.epoch, source })?;
    // The text must be exactly what this checkpoint renders to (no second
    // spelling of the same checkpoint).
    if cp.to_text() != note.text {
        return Err(malformed("the text is not in canonical form"));
    }
    Ok(VerifiedCheckpoint { cp, note })
}
