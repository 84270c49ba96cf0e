//! Keeping the derived index (LMDB plus the per-segment hash files) in step
//! with the chain. Used by the CacheIndexer actor and by `op-dbus reindex`;
//! it only reads the chain, through [`crate::chain::reader`].

use crate::chain::{reader, Appended, StoreError};
use crate::index::hashes::{self, Entry, HashFiles};
use crate::index::{Index, IndexError};
use crate::layout::Layout;

/// Blocks per LMDB transaction. Every index tree is written at its right
/// edge, so a transaction dirties a handful of pages whatever its size;
/// larger ones only hold more entries in memory.
pub const TXN_BLOCKS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IndexingError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Chain(#[from] StoreError),
    #[error("writing a hash file: {0}")]
    HashFile(#[from] std::io::Error),
}

pub struct Indexer {
    index: Index,
    hashes: HashFiles,
    layout: Layout,
    /// The next seq to index.
    next: u64,
    /// The segment whose hash file is not written yet, and its entries so far.
    open_segment: Option<(u64, Vec<Entry>)>,
}

impl Indexer {
    /// Checks the index against the chain and prepares to continue it. If
    /// they disagree (a different hash at the index's head, or a head the
    /// chain does not have) everything derived is dropped and rebuilt from
    /// the start. Missing hash files of indexed, sealed segments are
    /// rebuilt, and the hashes of the segment being filled are read back.
    pub fn open(index: Index, layout: &Layout) -> Result<Indexer, IndexingError> {
        let hashes = HashFiles::new(&layout.cache);
        let next = match index.head()? {
            None => 0,
            Some(head) => {
                let agrees = match index.location(head.seq)? {
                    Some(loc) => reader::read_block_at(layout, loc.segment, loc.offset, loc.frame_len)
                        .map(|b| b.hash == head.hash && b.body.seq == head.seq)
                        .unwrap_or(false),
                    None => false,
                };
                if agrees {
                    head.seq + 1
                } else {
                    tracing::warn!(seq = head.seq, "index does not match the chain; rebuilding it");
                    index.clear()?;
                    0
                }
            }
        };
        if next == 0 {
            hashes.clear()?;
        }
        let mut me = Indexer { index, hashes, layout: layout.clone(), next, open_segment: None };
        let segments = layout.segments().map_err(|e| StoreError::Io { path: layout.timing.clone(), source: e })?;
        for pair in segments.windows(2) {
            let (seg, successor) = (pair[0], pair[1]);
            if successor <= next && !me.hashes.is_valid(seg) {
                let mut entries = me.segment_entries(seg, successor)?;
                me.hashes.write(seg, &mut entries)?;
            }
        }
        if let Some(last) = next.checked_sub(1) {
            let holding = segments.partition_point(|s| *s <= last).checked_sub(1).map(|i| segments[i]);
            if let Some(seg) = holding.filter(|s| !me.hashes.is_valid(*s)) {
                me.open_segment = Some((seg, me.segment_entries(seg, next)?));
            }
        }
        Ok(me)
    }

    /// Drops everything derived and indexes the whole chain again.
    pub fn rebuild(index: Index, layout: &Layout) -> Result<Indexer, IndexingError> {
        index.clear()?;
        HashFiles::new(&layout.cache).clear()?;
        let mut me = Indexer::open(index, layout)?;
        me.catch_up(None)?;
        Ok(me)
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Hash entries of the blocks of segment `seg` with seq < `until`.
    fn segment_entries(&self, seg: u64, until: u64) -> Result<Vec<Entry>, IndexingError> {
        let mut entries = Vec::new();
        reader::for_each_block(&self.layout, seg, 0, |_, _, b| {
            if b.body.seq >= until {
                return false;
            }
            entries.push(hashes::entry(&b.hash, b.body.seq));
            true
        })?;
        Ok(entries)
    }

    /// Indexes blocks read from the chain, from `next` up to `limit`
    /// (exclusive; the whole chain when `None`).
    pub fn catch_up(&mut self, limit: Option<u64>) -> Result<(), IndexingError> {
        let mut buf: Vec<Appended> = Vec::with_capacity(TXN_BLOCKS);
        let mut failed = None;
        let layout = self.layout.clone();
        reader::scan_from(&layout, self.next, |segment, offset, frame_len, b| {
            if limit.is_some_and(|l| b.body.seq >= l) {
                return false;
            }
            buf.push(Appended::from_stored(segment, offset, frame_len, b));
            if buf.len() >= TXN_BLOCKS {
                if let Err(e) = self.add(&buf) {
                    failed = Some(e);
                    return false;
                }
                buf.clear();
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.add(&buf)
    }

    /// Indexes consecutive durable blocks; those below `next` are skipped.
    /// A notification that starts past `next` (earlier ones were dropped)
    /// first reads the gap from the chain.
    pub fn add(&mut self, blocks: &[Appended]) -> Result<(), IndexingError> {
        let Some(first) = blocks.iter().find(|b| b.seq >= self.next) else { return Ok(()) };
        if first.seq > self.next {
            tracing::debug!(from = self.next, to = first.seq, "index catching up over dropped notifications");
            self.catch_up(Some(first.seq))?;
        }
        let start = blocks.partition_point(|b| b.seq < self.next);
        for chunk in blocks[start..].chunks(TXN_BLOCKS) {
            self.index.insert(chunk)?;
            self.index.release_mapped_pages();
            for b in chunk {
                self.track_hash(b)?;
            }
            self.next = chunk.last().map_or(self.next, |b| b.seq + 1);
        }
        Ok(())
    }

    /// Blocks arrive in seq order, so a block of a new segment means the
    /// previous segment is sealed and its hash file can be written.
    fn track_hash(&mut self, b: &Appended) -> Result<(), IndexingError> {
        if self.open_segment.as_ref().map(|(s, _)| *s) != Some(b.segment) {
            if let Some((seg, mut entries)) = self.open_segment.take() {
                self.hashes.write(seg, &mut entries)?;
            }
            self.open_segment = Some((b.segment, Vec::new()));
        }
        self.open_segment.as_mut().expect("set above").1.push(hashes::entry(&b.hash, b.seq));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::testing::record;
    use crate::chain::ChainStore;

    /// Every block of every sealed segment is findable by hash, including
    /// segments that were half indexed when the indexer stopped, and the
    /// active segment has no file yet.
    #[test]
    fn hash_files_cover_sealed_segments_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (mut store, _) = ChainStore::open(&layout, 4096).unwrap();
        let mut appended = Vec::new();
        let mut indexer = Indexer::open(Index::open(&layout.cache).unwrap(), &layout).unwrap();
        for i in 0..200u64 {
            let a = store.append(&[record(i, "p", &"x".repeat(100), false)], 1).unwrap();
            if i < 120 {
                indexer.add(&a).unwrap();
            }
            appended.extend(a);
            if i == 60 {
                // Stop and reopen half-way through a segment.
                let index = indexer.index().clone();
                drop(indexer);
                indexer = Indexer::open(index, &layout).unwrap();
            }
        }
        // The rest arrives through a catch-up, as after dropped notifications.
        indexer.catch_up(None).unwrap();
        assert_eq!(indexer.next(), 200);
        let files = HashFiles::new(&layout.cache);
        let segments = layout.segments().unwrap();
        assert!(segments.len() > 3);
        let active = *segments.last().unwrap();
        assert_eq!(files.covered_until(&layout), active, "every sealed segment has its file");
        for a in appended.iter().filter(|a| a.segment != active) {
            assert_eq!(files.lookup(&a.hash), vec![a.seq], "seq {}", a.seq);
        }
        // Deleted files come back at the next open; a rebuild gives the same answers.
        files.clear().unwrap();
        let indexer = Indexer::open(indexer.index().clone(), &layout).unwrap();
        assert_eq!(files.covered_until(&layout), active);
        let indexer = Indexer::rebuild(indexer.index().clone(), &layout).unwrap();
        assert_eq!(indexer.next(), 200);
        assert_eq!(files.lookup(&appended[5].hash), vec![5]);
    }
}
