//! Proof bundles (docs/FORMAT.md, "Proof bundles"): a C2SP tlog-proof for
//! one block, and op-dbus's consistency proof between two checkpoints.
//! Making one reads the state dir; checking one needs nothing but the
//! bundle and public keys.

use base64::Engine;

use super::log::{read_all, CHECKPOINTS_MAGIC, COSIGNED_MAGIC};
use super::tiles::TileReader;
use crate::layout::Layout;
use crate::merkle::{self, leaf_hash, Hash};
use crate::note::checkpoint::{verify_checkpoint, OpCheckpoint};
use crate::note::cosig::verify_cosignature;
use crate::note::{Note, Verifier};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
pub const CONSISTENCY_HEADER: &str = "op-dbus/consistency-proof@v1";
/// A bundle holds one block (data ≤ 1 MiB by default, 32 MiB at most, in
/// base64) and two checkpoints: anything larger is refused unread.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(
        "no checkpoint covers seq {seq} yet (the newest signed covers {covered} blocks); wait for the next checkpoint"
    )]
    NotCovered { seq: u64, covered: u64 },
    #[error("no block {seq} in the chain")]
    NoBlock { seq: u64 },
    #[error("no checkpoint of size {0} in the checkpoint logs")]
    NoCheckpoint(u64),
    #[error("old size {old} is larger than new size {new}")]
    Order { old: u64, new: u64 },
    #[error("the Merkle tiles do not prove what the checkpoint signed ({0}); run `op-dbus reindex` to rebuild them")]
    TilesDamaged(String),
    #[error(transparent)]
    Log(#[from] super::log::LogError),
    #[error(transparent)]
    Chain(#[from] crate::chain::StoreError),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("not a proof bundle: the first line is neither {TLOG_PROOF_HEADER} nor {CONSISTENCY_HEADER}")]
    UnknownKind,
    #[error("the bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("malformed bundle: {0}")]
    Malformed(String),
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(String),
    #[error("the block does not belong at index {index}: its seq is {seq}")]
    WrongIndex { index: u64, seq: u64 },
    #[error("the proof does not bind the block to the checkpoint: {0}")]
    Proof(String),
    #[error("{found} valid cosignatures from the given witnesses, {wanted} required")]
    Witnesses { found: usize, wanted: usize },
}

/// What a verified bundle proves.
#[derive(Debug, serde::Serialize)]
pub struct Proven {
    pub kind: &'static str,
    pub origin: String,
    pub checkpoint_size: u64,
    pub checkpoint_time_ns: i64,
    /// Witnesses whose cosignatures verified: (name, their timestamp).
    pub witnesses: Vec<(String, u64)>,
    /// Inclusion: the block, as `show --json` prints it.
    pub block: Option<serde_json::Value>,
    /// Consistency: the old size.
    pub old_size: Option<u64>,
}

struct Signed {
    cp: OpCheckpoint,
    note: Vec<u8>,
    cosigned: bool,
}

/// Every checkpoint in both logs that verifies under `identity`, oldest first.
fn checkpoints(layout: &Layout, identity: &Verifier) -> Result<Vec<Signed>, ProveError> {
    let mut out = Vec::new();
    for (name, magic, cosigned) in [("checkpoints", CHECKPOINTS_MAGIC, false), ("cosigned", COSIGNED_MAGIC, true)] {
        for (_, note) in read_all(&layout.timing.join(name), magic)?.notes {
            if let Ok(v) = verify_checkpoint(&note, identity) {
                out.push(Signed { cp: v.cp, note, cosigned });
            }
        }
    }
    Ok(out)
}

/// The body bytes of block `seq`, read from its frame.
fn block_body(layout: &Layout, seq: u64) -> Result<Vec<u8>, ProveError> {
    use crate::chain::reader::{split_payload, FrameReader, Step};
    let segments =
        layout.segments().map_err(|e| crate::chain::StoreError::Io { path: layout.timing.clone(), source: e })?;
    let i = segments.partition_point(|s| *s <= seq).checked_sub(1).ok_or(ProveError::NoBlock { seq })?;
    let first = segments[i];
    let (mut frames, _) = FrameReader::open(&layout.segment_path(first), first)?;
    let mut at = first;
    loop {
        match frames.next_frame()? {
            Step::Frame { payload, .. } => {
                if at == seq {
                    return Ok(split_payload(payload).0.to_vec());
                }
                at += 1;
            }
            _ => return Err(ProveError::NoBlock { seq }),
        }
    }
}

fn proof_lines(out: &mut String, proof: &[Hash]) {
    for h in proof {
        out.push_str(&B64.encode(h));
        out.push('\n');
    }
}

/// `op-dbus prove SEQ`: the newest cosigned checkpoint that covers the
/// block, else the newest one; the bundle is checked before it is returned.
pub fn prove(layout: &Layout, identity: &Verifier, seq: u64) -> Result<String, ProveError> {
    let cps = checkpoints(layout, identity)?;
    let pick =
        cps.iter().rev().filter(|c| c.cp.checkpoint.size > seq).max_by_key(|c| (c.cosigned, c.cp.time_ns)).ok_or(
            ProveError::NotCovered { seq, covered: cps.iter().map(|c| c.cp.checkpoint.size).max().unwrap_or(0) },
        )?;
    let size = pick.cp.checkpoint.size;
    let body = block_body(layout, seq)?;
    let reader = TileReader::new(&layout.cache.join("tiles"));
    let proof = merkle::inclusion_proof(seq, size, &reader.source(size))
        .map_err(|e| ProveError::TilesDamaged(e.to_string()))?;
    let leaf = leaf_hash(&crate::codec::block_hash(&body));
    merkle::verify_inclusion(seq, size, &leaf, &proof, &pick.cp.checkpoint.root)
        .map_err(|e| ProveError::TilesDamaged(e.to_string()))?;
    let mut out = format!("{TLOG_PROOF_HEADER}\nextra {}\nindex {seq}\n", B64.encode(&body));
    proof_lines(&mut out, &proof);
    out.push('\n');
    out.push_str(std::str::from_utf8(&pick.note).expect("a verified note is UTF-8"));
    Ok(out)
}

/// `op-dbus prove --consistency OLD [NEW]`.
pub fn prove_consistency(
    layout: &Layout,
    identity: &Verifier,
    old: u64,
    new: Option<u64>,
) -> Result<String, ProveError> {
    let cps = checkpoints(layout, identity)?;
    let newest = |size: Option<u64>| {
        cps.iter()
            .filter(|c| size.is_none_or(|s| c.cp.checkpoint.size == s))
            .max_by_key(|c| (c.cp.checkpoint.size, c.cosigned, c.cp.time_ns))
    };
    let o = newest(Some(old)).ok_or(ProveError::NoCheckpoint(old))?;
    let n = newest(new).ok_or(ProveError::NoCheckpoint(new.unwrap_or(0)))?;
    let new = n.cp.checkpoint.size;
    if old > new {
        return Err(ProveError::Order { old, new });
    }
    let reader = TileReader::new(&layout.cache.join("tiles"));
    let proof = merkle::consistency_proof(old, new, &reader.source(new))
        .map_err(|e| ProveError::TilesDamaged(e.to_string()))?;
    merkle::verify_consistency(old, new, &o.cp.checkpoint.root, &n.cp.checkpoint.root, &proof)
        .map_err(|e| ProveError::TilesDamaged(e.to_string()))?;
    let mut out = format!("{CONSISTENCY_HEADER}\nold {old}\nnew {new}\n");
    proof_lines(&mut out, &proof);
    for c in [o, n] {
        out.push('\n');
        out.push_str(std::str::from_utf8(&c.note).expect("a verified note is UTF-8"));
    }
    Ok(out)
}

fn malformed(s: impl Into<String>) -> BundleError {
    BundleError::Malformed(s.into())
}

fn parse_u64(line: Option<&str>, key: &str) -> Result<u64, BundleError> {
    let v = line
        .and_then(|l| l.strip_prefix(key))
        .and_then(|l| l.strip_prefix(' '))
        .ok_or_else(|| malformed(format!("expected a `{key} N` line")))?;
    crate::note::decimal(v)
        .ok_or_else(|| malformed(format!("`{key}` is not a decimal without leading zeros, or out of range")))
}

/// The hash lines up to the first empty line; returns them and the rest.
fn hashes<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Result<Vec<Hash>, BundleError> {
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.is_empty() {
            return Ok(out);
        }
        if out.len() >= 64 {
            return Err(malformed("more than 64 proof hashes"));
        }
        let h: Hash = B64
            .decode(l)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("a proof line is not a base64 SHA-256 hash"))?;
        out.push(h);
    }
    Err(malformed("no empty line before the checkpoint"))
}

/// Checks a checkpoint note and its cosignatures by `witnesses`.
/// The proof's hash lines (44 base64 characters and a newline each), the
/// blank line after them, and what follows: the note(s).
fn proof_then_notes(tail: Option<&str>) -> Result<(Vec<Hash>, &str), BundleError> {
    let tail = tail.ok_or_else(|| malformed("no proof"))?;
    let proof = hashes(&mut tail.split('\n'))?;
    let notes = tail.get(proof.len() * 45 + 1..).ok_or_else(|| malformed("no checkpoint"))?;
    Ok((proof, notes))
}

fn check_note(
    note: &[u8],
    identity: &Verifier,
    witnesses: &[Verifier],
    min: usize,
) -> Result<(OpCheckpoint, Vec<(String, u64)>), BundleError> {
    let v = verify_checkpoint(note, identity).map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    let parsed = Note::parse(note).map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    let mut ok = Vec::new();
    for w in witnesses {
        let good = parsed
            .signatures
            .iter()
            .filter(|l| w.matches(l))
            .find_map(|l| verify_cosignature(w, parsed.text.as_bytes(), l).ok());
        if let Some(ts) = good {
            if !ok.iter().any(|(n, _): &(String, u64)| n == w.name()) {
                ok.push((w.name().to_string(), ts));
            }
        }
    }
    if ok.len() < min {
        return Err(BundleError::Witnesses { found: ok.len(), wanted: min });
    }
    Ok((v.cp, ok))
}

/// Splits `text` into its first note (text, empty line, signature lines up
/// to an empty line or the end) and what follows.
fn split_note(text: &str) -> Result<(&str, &str), BundleError> {
    let body_end = text.find("\n\n").ok_or_else(|| malformed("a checkpoint without signatures"))? + 2;
    let rest = &text[body_end..];
    let sig_end = rest.find("\n\n").map_or(rest.len(), |i| i + 1);
    Ok((&text[..body_end + sig_end], rest.get(sig_end + 1..).unwrap_or("")))
}

/// `op-dbus verify-proof`: checks a bundle with public keys only.
pub fn verify_bundle(
    bytes: &[u8],
    identity: &Verifier,
    witnesses: &[Verifier],
    min: usize,
) -> Result<Proven, BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
    let (first, rest) = text.split_once('\n').ok_or(BundleError::UnknownKind)?;
    match first {
        TLOG_PROOF_HEADER => verify_inclusion_bundle(rest, identity, witnesses, min),
        CONSISTENCY_HEADER => verify_consistency_bundle(rest, identity, witnesses, min),
        _ => Err(BundleError::UnknownKind),
    }
}

fn verify_inclusion_bundle(
    rest: &str,
    identity: &Verifier,
    witnesses: &[Verifier],
    min: usize,
) -> Result<Proven, BundleError> {
    let mut parts = rest.splitn(3, '\n');
    let extra = parts
        .next()
        .and_then(|l| l.strip_prefix("extra "))
        .ok_or_else(|| malformed("expected an `extra` line holding the block"))?;
    let body = B64.decode(extra).map_err(|_| malformed("the extra line is not base64"))?;
    let index = parse_u64(parts.next(), "index")?;
    let (proof, note) = proof_then_notes(parts.next())?;
    let (cp, ok) = check_note(note.as_bytes(), identity, witnesses, min)?;
    let hash = crate::codec::block_hash(&body);
    let mut payload = body.clone();
    payload.extend_from_slice(&hash);
    let block = crate::chain::reader::decode_payload(&payload)
        .map_err(|e| malformed(format!("the block does not decode: {e}")))?;
    if block.body.seq != index {
        return Err(BundleError::WrongIndex { index, seq: block.body.seq });
    }
    merkle::verify_inclusion(index, cp.checkpoint.size, &leaf_hash(&hash), &proof, &cp.checkpoint.root)
        .map_err(|e| BundleError::Proof(e.to_string()))?;
    let json = serde_json::to_value(crate::index::query::block_json(&block)).map_err(|e| malformed(e.to_string()))?;
    Ok(Proven {
        kind: "inclusion",
        origin: cp.checkpoint.origin.clone(),
        checkpoint_size: cp.checkpoint.size,
        checkpoint_time_ns: cp.time_ns,
        witnesses: ok,
        block: Some(json),
        old_size: None,
    })
}

fn verify_consistency_bundle(
    rest: &str,
    identity: &Verifier,
    witnesses: &[Verifier],
    min: usize,
) -> Result<Proven, BundleError> {
    let mut parts = rest.splitn(3, '\n');
    let old = parse_u64(parts.next(), "old")?;
    let new = parse_u64(parts.next(), "new")?;
    let (proof, notes) = proof_then_notes(parts.next())?;
    let (old_note, new_note) = split_note(notes)?;
    // The old checkpoint needs no witnesses: the new one is what is trusted now.
    let (o, _) = check_note(old_note.as_bytes(), identity, &[], 0)?;
    let (n, ok) = check_note(new_note.as_bytes(), identity, witnesses, min)?;
    if o.checkpoint.size != old || n.checkpoint.size != new {
        return Err(malformed("the checkpoints' sizes are not the old and new sizes"));
    }
    if o.time_ns > n.time_ns {
        return Err(malformed("the old checkpoint is newer than the new one"));
    }
    merkle::verify_consistency(old, new, &o.checkpoint.root, &n.checkpoint.root, &proof)
        .map_err(|e| BundleError::Proof(e.to_string()))?;
    Ok(Proven {
        kind: "consistency",
        origin: n.checkpoint.origin.clone(),
        checkpoint_size: new,
        checkpoint_time_ns: n.time_ns,
        witnesses: ok,
        block: None,
        old_size: Some(old),
    })
}
