//! `op-dbus verify`: recompute every hash from the stored bytes, check seq
//! continuity, prev links and vectors, and name the first bad seq.
//!
//! Frames of a segment are found sequentially (cheap: a header and a CRC),
//! then decoded and hashed on all cores, then linked sequentially.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use serde::Serialize;

use super::reader::{check_header, next_frame, split_payload, Step};
use super::{io_err, StoreError, FRAME_HEADER_LEN, HEADER_LEN, SEGMENT_MAGIC, VECTOR_MAGIC};
use crate::codec::{self, hex, BlockView, Hash, FLAG_TRUNCATED, ZERO_HASH};
use crate::layout::Layout;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Stored bytes do not match their checksum or hash.
    BitFlip,
    /// Blocks are missing: a segment ends early or a later one is absent.
    Truncation,
    /// Blocks are present but out of order.
    Reordering,
    /// A block does not link to the hash of the block before it.
    BrokenLink,
    /// The block decodes but its data does not match its data hash.
    DataHashMismatch,
    /// The block references a vector that is not there.
    MissingVector,
    /// The vector is there but does not match the hash in the block.
    WrongVector,
    /// A segment or vector file header is damaged.
    BadHeader,
}

impl FaultKind {
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::BitFlip => "bit flip",
            FaultKind::Truncation => "truncation",
            FaultKind::Reordering => "reordering",
            FaultKind::BrokenLink => "broken link",
            FaultKind::DataHashMismatch => "data hash mismatch",
            FaultKind::MissingVector => "missing vector",
            FaultKind::WrongVector => "wrong vector",
            FaultKind::BadHeader => "bad header",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub seq: u64,
    pub(crate) kind: FaultKind,
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TornTail {
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub(crate) blocks: u64,
    pub segments: usize,
    pub head_seq: Option<u64>,
    pub(crate) head_hash: Option<String>,
    /// An unfinished write after the last sound block (a crash, or a
    /// writer still busy): not a fault; the next start cuts it.
    pub(crate) torn_tail: Option<TornTail>,
    pub fault: Option<Fault>,
    pub(crate) seconds: f64,
}

/// What each worker finds in one frame.
struct Checked {
    seq: u64,
    prev_hash: Hash,
    hash: Hash,
    timestamp_ns: i64,
    offset: u64,
}

pub fn verify(layout: &Layout, threads: usize) -> Result<Report, StoreError> {
    verify_range(layout, threads, 0, u64::MAX)
}

/// Verifies the blocks `from..=to` (and the rest of the segments holding
/// them): each hashes to its bytes, seqs follow, and each links to the one
/// before, the first to the stored hash of the block before its segment
/// (which is itself checked against its bytes). `blocks` counts the blocks
/// checked, which includes those around the range in the same segments.
pub fn verify_range(layout: &Layout, threads: usize, from: u64, to: u64) -> Result<Report, StoreError> {
    verify_inner(layout, threads, from, to, &mut |_, _, _| {})
}

/// [`verify`], handing each sound block's (seq, hash, timestamp) to
/// `observe` in seq order (the checkpoint audit grows its tree from them).
pub fn verify_observed(
    layout: &Layout,
    threads: usize,
    observe: &mut dyn FnMut(u64, &Hash, i64),
) -> Result<Report, StoreError> {
    verify_inner(layout, threads, 0, u64::MAX, observe)
}

fn verify_inner(
    layout: &Layout,
    threads: usize,
    from: u64,
    to: u64,
    observe: &mut dyn FnMut(u64, &Hash, i64),
) -> Result<Report, StoreError> {
    let started = Instant::now();
    let all = layout.segments().map_err(io_err(&layout.timing))?;
    // The segments that hold from..=to: the last one starting at or before
    // `from`, through the last one starting at or before `to`.
    let lo = all.partition_point(|s| *s <= from).saturating_sub(1);
    let hi = all.partition_point(|s| *s <= to).max(lo);
    let segments = &all[lo.min(all.len())..hi.max(lo).min(all.len())];
    let mut start_link = (0u64, ZERO_HASH);
    if let Some(&first) = segments.first() {
        if first > 0 && lo > 0 {
            // The block before the range's first segment: its stored hash
            // must match its bytes, and the range links to it.
            let prev_seg = all[lo - 1];
            // Its last frame, as stored: the hash is checked against the
            // stored bytes, as for every other block.
            let (mut frames, _) = super::reader::FrameReader::open(&layout.segment_path(prev_seg), prev_seg)?;
            let mut last: Option<(Vec<u8>, Hash)> = None;
            while let Step::Frame { payload, .. } = frames.next_frame()? {
                let (body, hash) = split_payload(payload);
                last = Some((body.to_vec(), hash));
            }
            let found = last.as_ref().and_then(|(body, hash)| BlockView::decode(body).ok().map(|v| (v.seq, *hash)));
            let Some((seq, hash)) = found.filter(|(seq, _)| *seq == first - 1) else {
                return Err(StoreError::Corrupt {
                    seq: first - 1,
                    kind: "truncation",
                    detail: format!("segment {prev_seg} does not end with seq {}", first - 1),
                });
            };
            let (body, _) = last.expect("found above");
            if codec::block_hash(&body) != hash {
                return Err(StoreError::Corrupt {
                    seq,
                    kind: "bit flip",
                    detail: "block hash does not match its bytes".into(),
                });
            }
            start_link = (first, hash);
        }
        // From the first segment on, the chain must start at seq 0 (a missing
        // first segment is a truncation).
    }
    let mut report = Report {
        ok: true,
        blocks: 0,
        segments: segments.len(),
        head_seq: None,
        head_hash: None,
        torn_tail: None,
        fault: None,
        seconds: 0.0,
    };
    let (mut expected_seq, mut prev_hash) = start_link;
    let mut prev_ts = i64::MIN;
    // Reused from segment to segment: fresh 64 MiB buffers cost a page
    // fault and a zeroed page per 4 KiB, a tenth of the run.
    let mut segment_buf = Vec::new();
    let mut vectors = VectorFiles::default();
    for &first in segments.iter() {
        // A torn tail is only possible in the chain's last segment.
        let is_last = all.last() == Some(&first);
        let path = layout.segment_path(first);
        let file = path.display().to_string();
        read_into(&path, &mut segment_buf).map_err(io_err(&path))?;
        let bytes = &segment_buf[..];
        let fault = |seq, kind, offset, detail: String| Fault { seq, kind, file: file.clone(), offset, detail };
        match check_header(bytes, SEGMENT_MAGIC) {
            Err(e) => {
                report.fault = Some(fault(expected_seq, FaultKind::BadHeader, 0, e.to_string()));
                break;
            }
            Ok((named, _)) if named != first => {
                report.fault =
                    Some(fault(expected_seq, FaultKind::BadHeader, 0, format!("header names first seq {named}")));
                break;
            }
            Ok((_, reserved)) if reserved != 0 => {
                report.fault = Some(fault(expected_seq, FaultKind::BadHeader, 12, "reserved field is not zero".into()));
                break;
            }
            Ok(_) => {}
        }
        if first != expected_seq {
            let kind = if first > expected_seq { FaultKind::Truncation } else { FaultKind::Reordering };
            report.fault =
                Some(fault(expected_seq, kind, 0, format!("segment starts at seq {first}, expected {expected_seq}")));
            break;
        }

        // 1. Find the frames.
        let mut frames: Vec<(u64, &[u8])> = Vec::new();
        let mut pos = HEADER_LEN as usize;
        let mut stop: Option<Fault> = None;
        loop {
            match next_frame(bytes, pos, 0) {
                Step::End => break,
                Step::Frame { offset, payload } => {
                    frames.push((offset, payload));
                    pos += FRAME_HEADER_LEN + payload.len();
                }
                Step::Torn { offset, reason } => {
                    let seq = expected_seq + frames.len() as u64;
                    if is_last {
                        report.torn_tail =
                            Some(TornTail { file: file.clone(), offset, bytes: bytes.len() as u64 - offset, reason });
                    } else {
                        stop = Some(fault(seq, FaultKind::Truncation, offset, format!("sealed segment: {reason}")));
                    }
                    break;
                }
                Step::Bad { offset, reason } => {
                    let seq = expected_seq + frames.len() as u64;
                    stop = Some(fault(seq, FaultKind::BitFlip, offset, reason.to_string()));
                    break;
                }
            }
        }

        // 2. Decode and hash on all cores.
        vectors = VectorFiles::load(layout, first, std::mem::take(&mut vectors));
        let base_seq = expected_seq;
        let chunk = frames.len().div_ceil(threads.max(1)).max(1);
        let results: Vec<Result<Checked, Fault>> = std::thread::scope(|s| {
            let handles: Vec<_> = frames
                .chunks(chunk)
                .enumerate()
                .map(|(ci, part)| {
                    let vectors = &vectors;
                    let file = &file;
                    s.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(j, (offset, payload))| {
                                check_frame(base_seq + (ci * chunk + j) as u64, *offset, payload, vectors, file)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("verify worker panicked")).collect()
        });

        // 3. Link in order.
        for r in results {
            let c = match r {
                Ok(c) => c,
                Err(f) => {
                    stop = Some(f);
                    break;
                }
            };
            if c.seq != expected_seq {
                stop = Some(fault(
                    expected_seq,
                    FaultKind::Reordering,
                    c.offset,
                    format!("found seq {} where seq {expected_seq} belongs", c.seq),
                ));
                break;
            }
            if c.prev_hash != prev_hash {
                stop = Some(fault(
                    c.seq,
                    FaultKind::BrokenLink,
                    c.offset,
                    format!(
                        "prev_hash {} does not match the hash of seq {}: {}",
                        hex(&c.prev_hash),
                        c.seq.wrapping_sub(1),
                        hex(&prev_hash)
                    ),
                ));
                break;
            }
            if c.timestamp_ns < prev_ts {
                stop = Some(fault(
                    c.seq,
                    FaultKind::Reordering,
                    c.offset,
                    format!("commit timestamp {} is before the previous block's {prev_ts}", c.timestamp_ns),
                ));
                break;
            }
            prev_ts = c.timestamp_ns;
            prev_hash = c.hash;
            observe(c.seq, &c.hash, c.timestamp_ns);
            expected_seq += 1;
            report.blocks += 1;
            report.head_seq = Some(c.seq);
            if c.seq >= to {
                break;
            }
        }
        if let Some(f) = stop {
            // Damage after the range is not the range's fault.
            if f.seq <= to {
                report.fault = Some(f);
            }
            break;
        }
    }
    report.head_hash = report.head_seq.map(|_| hex(&prev_hash));
    report.ok = report.fault.is_none();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn check_frame(seq: u64, offset: u64, payload: &[u8], vectors: &VectorFiles, file: &str) -> Result<Checked, Fault> {
    let fault = |kind, detail: String| Fault { seq, kind, file: file.to_string(), offset, detail };
    let (body_bytes, stored) = split_payload(payload);
    // The CRC passed, so a hash mismatch means the bytes were rewritten on purpose.
    if codec::block_hash(body_bytes) != stored {
        return Err(fault(FaultKind::BitFlip, "block hash does not match its bytes".into()));
    }
    let body = BlockView::decode(body_bytes).map_err(|e| fault(FaultKind::BitFlip, e.to_string()))?;
    if body.seq != seq {
        return Err(fault(FaultKind::Reordering, format!("found seq {} where seq {seq} belongs", body.seq)));
    }
    if body.footprint.flags & FLAG_TRUNCATED == 0 && codec::data_hash(body.footprint.data) != body.footprint.data_hash {
        return Err(fault(FaultKind::DataHashMismatch, "stored data does not hash to data_hash".into()));
    }
    if let Some(v) = &body.vector {
        let Some(vf) = vectors.files.get(v.model) else {
            return Err(fault(FaultKind::MissingVector, format!("no vector file for model {}", v.model)));
        };
        let (bytes, file_dims) = match vf {
            Ok(b) => b,
            Err(e) => return Err(fault(FaultKind::BadHeader, e.clone())),
        };
        if *file_dims != v.dims {
            return Err(fault(
                FaultKind::BadHeader,
                format!("{} vector file header says {file_dims} dims, the block says {}", v.model, v.dims),
            ));
        }
        let end = (v.dims as usize).checked_mul(4).and_then(|n| (v.offset as usize).checked_add(n));
        let Some(end) = end.filter(|e| v.offset >= HEADER_LEN && *e <= bytes.len()) else {
            return Err(fault(
                FaultKind::MissingVector,
                format!("vector at offset {} is past the end of the {} file", v.offset, v.model),
            ));
        };
        if codec::vector_hash_le(&bytes[v.offset as usize..end]) != v.hash {
            return Err(fault(FaultKind::WrongVector, format!("{} vector does not match its hash", v.model)));
        }
    }
    Ok(Checked { seq: body.seq, prev_hash: body.prev_hash, hash: stored, timestamp_ns: body.timestamp_ns, offset })
}

/// The vector files paired with one segment, per model, read whole, with
/// the dims their header declares.
#[derive(Default)]
struct VectorFiles {
    files: HashMap<String, Result<(Vec<u8>, u32), String>>,
}

impl VectorFiles {
    /// Loads the files of segment `first`, reusing the buffers of `previous`.
    fn load(layout: &Layout, first: u64, previous: VectorFiles) -> VectorFiles {
        let mut spare: HashMap<String, Vec<u8>> =
            previous.files.into_iter().filter_map(|(m, r)| r.ok().map(|(b, _)| (m, b))).collect();
        let mut files = HashMap::new();
        if let Ok(models) = fs::read_dir(&layout.vectors) {
            for m in models.flatten() {
                let model = m.file_name().to_string_lossy().into_owned();
                let path = layout.vector_path(&model, first);
                let mut buf = spare.remove(&model).unwrap_or_default();
                let loaded = match read_into(&path, &mut buf).map(|()| buf) {
                    Ok(b) => match check_header(&b, VECTOR_MAGIC) {
                        Ok((f, dims)) if f == first => Ok((b, dims)),
                        Ok((f, _)) => Err(format!("{}: header names first seq {f}", path.display())),
                        Err(e) => Err(format!("{}: {e}", path.display())),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => Err(format!("{}: {e}", path.display())),
                };
                files.insert(model, loaded);
            }
        }
        VectorFiles { files }
    }
}

/// Reads a whole file into `buf`, reusing its allocation.
fn read_into(path: &std::path::Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}
