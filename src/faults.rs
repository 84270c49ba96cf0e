//! Failures to inject, for the tests of how the pipeline recovers. The
//! hooks exist only with the `faults` cargo feature, which only the tests
//! and benches enable (`[dev-dependencies]` in Cargo.toml); in the daemon
//! `Faults` is empty and every accessor is a constant `None`.

use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the n-th chain append half-way through its write.
    #[cfg(feature = "faults")]
    pub chain_append: Option<u64>,
    /// Fail the n-th index batch.
    #[cfg(feature = "faults")]
    pub index_batch: Option<u64>,
    /// Make every commit take at least this long (a slow disk).
    #[cfg(feature = "faults")]
    pub commit_delay: Option<Duration>,
}

impl Faults {
    pub fn chain_append(&self) -> Option<u64> {
        #[cfg(feature = "faults")]
        return self.chain_append;
        #[cfg(not(feature = "faults"))]
        None
    }

    pub fn index_batch(&self) -> Option<u64> {
        #[cfg(feature = "faults")]
        return self.index_batch;
        #[cfg(not(feature = "faults"))]
        None
    }

    pub fn commit_delay(&self) -> Option<Duration> {
        #[cfg(feature = "faults")]
        return self.commit_delay;
        #[cfg(not(feature = "faults"))]
        None
    }
}

/// What root can do to a chain without any key: change the data of block
/// `seq` (with `edit`), then recompute its data hash, its block hash,
/// every later block's `prev_hash` and hash, and every frame's CRC, and
/// write the segments back whole. The chain checks of `verify` pass after
/// this; only a signed checkpoint (or a witness) can tell. For the tests
/// of tamper evidence.
#[cfg(feature = "faults")]
pub fn rewrite_history(
    layout: &crate::layout::Layout,
    seq: u64,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Result<u64, String> {
    use crate::chain::reader::{split_payload, FrameReader, Step};
    use crate::codec::{block_hash, data_hash, BlockBody};
    let segments = layout.segments().map_err(|e| e.to_string())?;
    let mut edit = Some(edit);
    let mut prev: Option<crate::codec::Hash> = None;
    let mut rewritten = 0;
    for first in segments {
        let path = layout.segment_path(first);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (mut frames, _) = FrameReader::open(&path, first).map_err(|e| e.to_string())?;
        let mut out = bytes[..crate::chain::HEADER_LEN as usize].to_vec();
        let mut changed = false;
        while let Step::Frame { payload, .. } = frames.next_frame().map_err(|e| e.to_string())? {
            let payload = payload.to_vec();
            let (body, hash) = split_payload(&payload);
            let mut b = BlockBody::decode(body).map_err(|e| e.to_string())?;
            let mut touched = false;
            if b.seq == seq {
                if let Some(f) = edit.take() {
                    f(&mut b.footprint.data);
                    b.footprint.data_hash = data_hash(&b.footprint.data);
                    touched = true;
                }
            }
            if let Some(p) = prev {
                if b.prev_hash != p {
                    b.prev_hash = p;
                    touched = true;
                }
            }
            let (body, hash) = if touched {
                let body = b.encode();
                let h = block_hash(&body);
                rewritten += 1;
                changed = true;
                (body, h)
            } else {
                (body.to_vec(), hash)
            };
            prev = if b.seq >= seq { Some(hash) } else { None };
            let mut payload = body;
            payload.extend_from_slice(&hash);
            let len = payload.len() as u32;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        if changed {
            std::fs::write(&path, &out).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if edit.is_some() {
        return Err(format!("no block {seq}"));
    }
    Ok(rewritten)
}
