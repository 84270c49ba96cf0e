//! Reading frames and blocks back. Shared by recovery, `verify`, the index
//! catch-up and the query commands, so that there is exactly one parser of
//! the on-disk framing.

use std::collections::BTreeMap;
use std::path::Path;

use super::{io_err, Head, StoreError, FRAME_HEADER_LEN, HEADER_LEN, MAX_FRAME_LEN, SEGMENT_MAGIC};
use crate::codec::{BlockBody, BlockView, Hash, FORMAT_VERSION};
use crate::layout::Layout;

/// One step of the frame parser.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// A frame whose header and checksum are sound.
    Frame { offset: u64, payload: &'a [u8] },
    /// Clean end of the bytes.
    End,
    /// The bytes end inside a frame, or only zeros remain: what a crash
    /// leaves behind. Only legitimate at the end of the last segment.
    Torn { offset: u64, reason: &'static str },
    /// The bytes are complete but wrong: tampering or bit rot.
    Bad { offset: u64, reason: &'static str },
}

/// A frame header: payload length and CRC, if its check passes.
fn parse_header(h: &[u8]) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
    let inv = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    (inv == !len && len > 32 && len <= MAX_FRAME_LEN).then_some((len, crc))
}

/// Classifies what follows a header that failed its check: zeros to the
/// end are a torn tail (a crash after the file grew), anything else is damage.
fn bad_header(offset: u64, rest_is_zero: bool) -> Step<'static> {
    if rest_is_zero {
        Step::Torn { offset, reason: "zero-filled tail" }
    } else {
        Step::Bad { offset, reason: "frame header check failed" }
    }
}

/// Parses the frame at `pos` of `bytes`, a segment's content from offset `base`.
pub fn next_frame(bytes: &[u8], pos: usize, base: u64) -> Step<'_> {
    let offset = base + pos as u64;
    let rest = &bytes[pos..];
    if rest.is_empty() {
        return Step::End;
    }
    if rest.len() < FRAME_HEADER_LEN {
        return Step::Torn { offset, reason: "incomplete frame header" };
    }
    let Some((len, crc)) = parse_header(&rest[..FRAME_HEADER_LEN]) else {
        return bad_header(offset, rest.iter().all(|b| *b == 0));
    };
    let end = FRAME_HEADER_LEN + len as usize;
    if rest.len() < end {
        return Step::Torn { offset, reason: "incomplete frame" };
    }
    let payload = &rest[FRAME_HEADER_LEN..end];
    if crc32fast::hash(payload) != crc {
        return Step::Bad { offset, reason: "checksum mismatch" };
    }
    Step::Frame { offset, payload }
}

/// Streams the frames of one segment file without holding it in memory
/// (a segment is about `chain.segment_max_mb`, 64 MiB by default; the
/// daemon's memory budget is smaller).
/// Reads up to the length the file had when opened.
pub struct FrameReader {
    r: std::io::BufReader<std::fs::File>,
    pos: u64,
    len: u64,
    buf: Vec<u8>,
    path: std::path::PathBuf,
}

impl FrameReader {
    /// Opens a segment and checks its header; returns the reader and the
    /// header's first seq. A bad header is reported at seq `first`, the
    /// segment's first seq by its name.
    pub fn open(path: &Path, first: u64) -> Result<(FrameReader, u64), StoreError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut r = std::io::BufReader::with_capacity(256 << 10, file);
        let mut header = [0u8; HEADER_LEN as usize];
        let n = r.read(&mut header).map_err(io_err(path))?;
        let bad = |detail: String| StoreError::Corrupt { seq: first, kind: "bad segment header", detail };
        let (named, reserved) =
            check_header(&header[..n], SEGMENT_MAGIC).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if reserved != 0 {
            return Err(bad(format!("{}: reserved field is not zero", path.display())));
        }
        Ok((FrameReader { r, pos: HEADER_LEN, len, buf: Vec::new(), path: path.to_path_buf() }, named))
    }

    /// Offset of the next frame.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Continues at `offset`, which must be a frame boundary this reader
    /// (or an earlier one of the same file) reported.
    pub fn seek_to(&mut self, offset: u64) -> Result<(), StoreError> {
        use std::io::Seek;
        self.r.seek(std::io::SeekFrom::Start(offset)).map_err(io_err(&self.path))?;
        self.pos = offset;
        Ok(())
    }

    pub fn next_frame(&mut self) -> Result<Step<'_>, StoreError> {
        use std::io::Read;
        let offset = self.pos;
        let remaining = self.len - self.pos;
        if remaining == 0 {
            return Ok(Step::End);
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            return Ok(Step::Torn { offset, reason: "incomplete frame header" });
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        self.r.read_exact(&mut h).map_err(io_err(&self.path))?;
        let Some((len, crc)) = parse_header(&h) else {
            let mut rest = Vec::new();
            self.r
                .by_ref()
                .take(remaining - FRAME_HEADER_LEN as u64)
                .read_to_end(&mut rest)
                .map_err(io_err(&self.path))?;
            return Ok(bad_header(offset, h.iter().chain(&rest).all(|b| *b == 0)));
        };
        if remaining < FRAME_HEADER_LEN as u64 + len as u64 {
            return Ok(Step::Torn { offset, reason: "incomplete frame" });
        }
        self.buf.resize(len as usize, 0);
        self.r.read_exact(&mut self.buf).map_err(io_err(&self.path))?;
        if crc32fast::hash(&self.buf) != crc {
            return Ok(Step::Bad { offset, reason: "checksum mismatch" });
        }
        self.pos += FRAME_HEADER_LEN as u64 + len as u64;
        Ok(Step::Frame { offset, payload: &self.buf })
    }
}

/// A block as stored: its body and the hash written after it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBlock {
    pub body: BlockBody,
    pub(crate) hash: Hash,
}

/// Splits a frame payload into body bytes and stored hash.
pub fn split_payload(payload: &[u8]) -> (&[u8], Hash) {
    let (body, hash) = payload.split_at(payload.len() - 32);
    (body, hash.try_into().expect("32 bytes"))
}

pub fn decode_payload(payload: &[u8]) -> Result<StoredBlock, crate::codec::CodecError> {
    let (body, hash) = split_payload(payload);
    Ok(StoredBlock { body: BlockBody::decode(body)?, hash })
}

/// Checks a segment header; returns its first seq.
pub fn check_header(bytes: &[u8], magic: &[u8; 8]) -> Result<(u64, u32), &'static str> {
    if bytes.len() < HEADER_LEN as usize {
        return Err("header is incomplete");
    }
    if &bytes[..8] != magic {
        return Err("bad magic");
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err("unknown format version");
    }
    let extra = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    Ok((u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")), extra))
}

/// Result of scanning the tail of the chain at open.
pub struct TailScan {
    pub(crate) head: Head,
    /// Length of the last segment up to its last sound frame.
    pub(crate) valid_len: u64,
    /// Per vector model: end of the last vector referenced from the last segment.
    pub(crate) vector_ends: BTreeMap<String, u64>,
}

/// Scans the last segment (and the one before it when the last is empty) to
/// find the head and where a torn tail starts.
pub fn scan_tail(layout: &Layout, segments: &[u64]) -> Result<TailScan, StoreError> {
    let last = *segments.last().expect("caller checked");
    let path = layout.segment_path(last);
    let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
    // A header that never reached the disk (power cut right after the
    // segment was created) reads as zeros; with no frame behind it the
    // segment holds nothing and gets its header again.
    let zero_header = len == HEADER_LEN && std::fs::read(&path).map_err(io_err(&path))?.iter().all(|b| *b == 0);
    if len < HEADER_LEN || zero_header {
        // Crashed while creating the segment: it holds no block; write its header again.
        let header = super::segment_header(SEGMENT_MAGIC, 0, last);
        std::fs::write(&path, header).map_err(io_err(&path))?;
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io_err(&path))?;
    }
    let corrupt = |seq, kind, detail: String| StoreError::Corrupt { seq, kind, detail };
    let (mut frames, first) = FrameReader::open(&path, last)?;
    if first != last {
        return Err(corrupt(last, "bad segment header", format!("{} names first seq {first}", path.display())));
    }
    let mut head = if segments.len() >= 2 {
        // A sealed segment always holds blocks; an empty one is damage, not a genesis.
        let prev = segments[segments.len() - 2];
        let b = last_block_of(layout, prev)?.ok_or_else(|| {
            corrupt(
                prev,
                "truncation",
                format!("sealed segment {} holds no block", layout.segment_path(prev).display()),
            )
        })?;
        Head { next_seq: b.body.seq + 1, hash: b.hash, timestamp_ns: b.body.timestamp_ns }
    } else {
        Head { next_seq: last, ..Head::GENESIS }
    };
    if head.next_seq != last {
        return Err(corrupt(head.next_seq, "truncation", format!("segment {} starts at seq {last}", path.display())));
    }
    let mut vector_ends = BTreeMap::new();
    loop {
        match frames.next_frame()? {
            Step::End | Step::Torn { .. } => break,
            Step::Bad { offset, reason } => {
                return Err(corrupt(head.next_seq, "bit flip", format!("{} offset {offset}: {reason}", path.display())))
            }
            Step::Frame { offset, payload } => {
                let block = decode_payload(payload)
                    .map_err(|e| corrupt(head.next_seq, "undecodable block", format!("offset {offset}: {e}")))?;
                if block.body.seq != head.next_seq {
                    return Err(corrupt(
                        head.next_seq,
                        "reordering",
                        format!("found seq {} at offset {offset}", block.body.seq),
                    ));
                }
                if block.body.prev_hash != head.hash {
                    return Err(corrupt(head.next_seq, "broken link", "prev_hash does not match".into()));
                }
                if let Some(v) = &block.body.vector {
                    let end =
                        (v.dims as u64).checked_mul(4).and_then(|n| v.offset.checked_add(n)).ok_or_else(|| {
                            corrupt(
                                head.next_seq,
                                "bad vector reference",
                                format!("offset {} dims {}", v.offset, v.dims),
                            )
                        })?;
                    vector_ends.insert(v.model.clone(), end);
                }
                head = Head { next_seq: head.next_seq + 1, hash: block.hash, timestamp_ns: block.body.timestamp_ns };
            }
        }
    }
    Ok(TailScan { head, valid_len: frames.position(), vector_ends })
}

/// The head of the chain, read-only (for `status`): the last sound block
/// of the last segment, or of the one before when the last is empty.
pub fn read_head(layout: &Layout) -> Result<Head, StoreError> {
    let segments = layout.segments().map_err(io_err(&layout.timing))?;
    for &seg in segments.iter().rev().take(2) {
        if let Some(b) = last_block_of(layout, seg)? {
            return Ok(Head { next_seq: b.body.seq + 1, hash: b.hash, timestamp_ns: b.body.timestamp_ns });
        }
    }
    Ok(segments.last().map_or(Head::GENESIS, |&s| Head { next_seq: s, ..Head::GENESIS }))
}

/// The last sound block of a sealed segment.
fn last_block_of(layout: &Layout, first: u64) -> Result<Option<StoredBlock>, StoreError> {
    let mut last = None;
    for_each_block(layout, first, 0, |_, _, b| {
        last = Some(b);
        true
    })?;
    Ok(last)
}

/// Calls `f(offset, frame_len, block)` for each block with seq >= `from` of
/// the segment starting at `first`, until `f` returns false. Blocks below
/// `from` are skipped after a borrowed decode (no copies). Stops quietly
/// at a torn tail (a reader may race the writer); corruption is an error.
pub fn for_each_block(
    layout: &Layout,
    first: u64,
    from: u64,
    mut f: impl FnMut(u64, u32, StoredBlock) -> bool,
) -> Result<(), StoreError> {
    let path = layout.segment_path(first);
    let (mut frames, _) = FrameReader::open(&path, first)?;
    loop {
        match frames.next_frame()? {
            Step::End | Step::Torn { .. } => return Ok(()),
            Step::Bad { offset, reason } => {
                return Err(StoreError::Corrupt {
                    seq: first,
                    kind: "bit flip",
                    detail: format!("{} offset {offset}: {reason}", path.display()),
                })
            }
            Step::Frame { offset, payload } => {
                if BlockView::decode(split_payload(payload).0).is_ok_and(|v| v.seq < from) {
                    continue;
                }
                let frame_len = (FRAME_HEADER_LEN + payload.len()) as u32;
                let block = decode_payload(payload).map_err(|e| StoreError::Corrupt {
                    seq: first,
                    kind: "undecodable block",
                    detail: format!("{} offset {offset}: {e}", path.display()),
                })?;
                if !f(offset, frame_len, block) {
                    return Ok(());
                }
            }
        }
    }
}

/// Calls `f(segment, offset, frame_len, block)` for every block with seq >= `from`, in order.
pub fn scan_from(
    layout: &Layout,
    from: u64,
    mut f: impl FnMut(u64, u64, u32, StoredBlock) -> bool,
) -> Result<(), StoreError> {
    let segments = layout.segments().map_err(io_err(&layout.timing))?;
    let start = segments.partition_point(|s| *s <= from).saturating_sub(1);
    for &seg in &segments[start.min(segments.len())..] {
        let mut go_on = true;
        for_each_block(layout, seg, from, |offset, len, b| {
            go_on = f(seg, offset, len, b);
            go_on
        })?;
        if !go_on {
            break;
        }
    }
    Ok(())
}

/// Reads blocks in seq order, remembering where it stopped, so that a
/// follower (the vector worker) reads each frame once instead of scanning
/// its segment from the start at every step.
#[derive(Debug, Default)]
pub struct Cursor {
    /// (segment, offset of the frame of `next_seq`), once positioned.
    at: Option<(u64, u64)>,
    next_seq: u64,
}

impl Cursor {
    /// Up to `max` blocks `from..to`; fewer if the chain ends first.
    pub fn read(&mut self, layout: &Layout, from: u64, to: u64, max: usize) -> Result<Vec<StoredBlock>, StoreError> {
        let mut out = Vec::new();
        if from >= to || max == 0 {
            return Ok(out);
        }
        let segments = layout.segments().map_err(io_err(&layout.timing))?;
        if self.next_seq != from || self.at.is_none() {
            let i = segments.partition_point(|s| *s <= from).saturating_sub(1);
            let Some(&seg) = segments.get(i) else { return Ok(out) };
            self.at = Some((seg, HEADER_LEN));
            self.next_seq = seg;
        }
        while let Some((seg, offset)) = self.at {
            let (mut frames, _) = FrameReader::open(&layout.segment_path(seg), seg)?;
            frames.seek_to(offset)?;
            loop {
                if out.len() >= max || self.next_seq >= to {
                    return Ok(out);
                }
                match frames.next_frame()? {
                    Step::Frame { offset, payload } => {
                        let b = decode_payload(payload).map_err(|e| StoreError::Corrupt {
                            seq: seg,
                            kind: "undecodable block",
                            detail: format!("{} offset {offset}: {e}", layout.segment_path(seg).display()),
                        })?;
                        let seq = b.body.seq;
                        self.next_seq = seq + 1;
                        self.at = Some((seg, frames.position()));
                        if seq >= from {
                            out.push(b);
                        }
                    }
                    Step::Bad { offset, reason } => {
                        return Err(StoreError::Corrupt {
                            seq: seg,
                            kind: "bit flip",
                            detail: format!("{} offset {offset}: {reason}", layout.segment_path(seg).display()),
                        })
                    }
                    // The end of what is written: the next segment, if the
                    // chain goes on there.
                    Step::End | Step::Torn { .. } => {
                        match segments.iter().find(|s| **s > seg) {
                            Some(&next) if next == self.next_seq => self.at = Some((next, HEADER_LEN)),
                            _ => return Ok(out),
                        }
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Reads the block at a known position (from the index).
pub fn read_block_at(layout: &Layout, segment: u64, offset: u64, frame_len: u32) -> Result<StoredBlock, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = layout.segment_path(segment);
    let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
    let mut buf = vec![0u8; frame_len as usize];
    f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
    f.read_exact(&mut buf).map_err(io_err(&path))?;
    match next_frame(&buf, 0, offset) {
        Step::Frame { payload, .. } => decode_payload(payload).map_err(|e| StoreError::Corrupt {
            seq: segment,
            kind: "undecodable block",
            detail: format!("{} offset {offset}: {e}", path.display()),
        }),
        _ => Err(StoreError::Corrupt {
            seq: segment,
            kind: "bad frame",
            detail: format!("{} offset {offset}: index points at no sound frame", path.display()),
        }),
    }
}
