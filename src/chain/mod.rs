//! The chain on disk: append-only segment files under `@timing/`, their
//! vectors under `@vectors/<model>/`. docs/FORMAT.md is the normative
//! description of every byte written here.
//!
//! Only [`ChainStore`] (owned by the ChainWriter actor) appends; everything
//! else reads through [`reader`].

pub mod reader;
pub mod verify;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::codec::{self, BlockBodyRef, Footprint, Hash, VectorRef, FORMAT_VERSION, ZERO_HASH};
use crate::layout::Layout;

pub const SEGMENT_MAGIC: &[u8; 8] = b"OPDCHAIN";
pub const VECTOR_MAGIC: &[u8; 8] = b"OPDVECTR";
pub const HEADER_LEN: u64 = 24;
/// Frame header: payload length, its bitwise complement, CRC-32 of the payload.
pub const FRAME_HEADER_LEN: usize = 12;
/// No frame is larger: a length above it is corruption, not a big record.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("chain is corrupt at seq {seq} ({kind}): {detail}; run `op-dbus verify` for the full report")]
    Corrupt { seq: u64, kind: &'static str, detail: String },
    #[cfg(feature = "faults")]
    #[error("injected failure: {0}")]
    Injected(&'static str),
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

pub fn segment_header(magic: &[u8; 8], extra: u32, first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&extra.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// A vector to store with a block.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub(crate) model: &'static str,
    pub(crate) values: Vec<f32>,
}

/// A footprint waiting for its seq.
#[derive(Clone, Debug)]
pub struct Record {
    pub(crate) footprint: Footprint,
    pub(crate) embedding: Option<Embedding>,
}

/// What the index needs to know of a durable block.
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    pub seq: u64,
    pub hash: Hash,
    pub segment: u64,
    pub offset: u64,
    pub frame_len: u32,
    pub captured_ns: i64,
    pub plugin_id: String,
    pub operation: String,
}

impl Appended {
    /// The index entry of a block read back from a segment.
    pub fn from_stored(segment: u64, offset: u64, frame_len: u32, b: reader::StoredBlock) -> Appended {
        Appended {
            seq: b.body.seq,
            hash: b.hash,
            segment,
            offset,
            frame_len,
            captured_ns: b.body.footprint.captured_ns,
            plugin_id: b.body.footprint.plugin_id,
            operation: b.body.footprint.operation,
        }
    }
}

/// The head of the chain: the next seq to assign and the hash it links to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub(crate) next_seq: u64,
    pub(crate) hash: Hash,
    pub(crate) timestamp_ns: i64,
}

impl Head {
    pub const GENESIS: Head = Head { next_seq: 0, hash: ZERO_HASH, timestamp_ns: i64::MIN };

    /// Seq of the last block, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

/// What opening the chain found and did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// Bytes cut from the end of the last segment (a torn tail).
    pub(crate) cut_bytes: u64,
    /// Vector bytes cut (written for a batch whose blocks never became durable).
    pub(crate) cut_vector_bytes: u64,
}

struct VectorFile {
    file: File,
    path: PathBuf,
    /// Durable length; bytes past it belong to no block.
    len: u64,
}

/// The writer's handle on the chain. Exclusive: the state dir lock makes sure
/// only one process holds one.
pub struct ChainStore {
    layout: Layout,
    segment_max_bytes: u64,
    segment_first: u64,
    file: File,
    path: PathBuf,
    /// Durable length of the active segment.
    len: u64,
    vectors: BTreeMap<&'static str, VectorFile>,
    head: Head,
    buf: Vec<u8>,
    /// Test hook: fail the n-th append after writing half of it.
    #[cfg(feature = "faults")]
    fail_at_append: Option<u64>,
    appends: u64,
}

impl ChainStore {
    /// Opens the chain for appending, cutting a torn tail left by a crash.
    /// Corruption anywhere else is an error: committed records are never cut.
    pub fn open(layout: &Layout, segment_max_bytes: u64) -> Result<(ChainStore, Recovery), StoreError> {
        Self::open_with_witness(layout, segment_max_bytes, None)
    }

    /// As [`open`](Self::open), refusing (before cutting anything) when the
    /// chain ends before `witness`, the next seq after the last block the
    /// index recorded. The index only holds durable blocks and a crash
    /// cannot undo an fdatasync, so a chain shorter than its index has lost
    /// acknowledged blocks; that needs an operator, not an automatic cut.
    pub fn open_with_witness(
        layout: &Layout,
        segment_max_bytes: u64,
        witness: Option<u64>,
    ) -> Result<(ChainStore, Recovery), StoreError> {
        layout.create_dirs().map_err(io_err(&layout.state_dir))?;
        let segments = layout.segments().map_err(io_err(&layout.timing))?;
        let mut recovery = Recovery::default();
        let (segment_first, head, len, vector_ends) = match segments.last() {
            None => {
                create_segment(layout, 0)?;
                (0, Head::GENESIS, HEADER_LEN, BTreeMap::new())
            }
            Some(&first) => {
                let tail = reader::scan_tail(layout, &segments)?;
                if let Some(w) = witness.filter(|w| tail.head.next_seq < *w) {
                    return Err(StoreError::Corrupt {
                        seq: tail.head.next_seq,
                        kind: "truncation",
                        detail: format!(
                            "the chain ends before seq {} but the index recorded blocks up to seq {}: \
                             acknowledged blocks are missing; `op-dbus verify` shows the damage, \
                             `op-dbus reindex` accepts the loss",
                            tail.head.next_seq,
                            w - 1
                        ),
                    });
                }
                let path = layout.segment_path(first);
                let file_len = fs::metadata(&path).map_err(io_err(&path))?.len();
                if tail.valid_len < file_len {
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(tail.valid_len).map_err(io_err(&path))?;
                    f.sync_data().map_err(io_err(&path))?;
                    recovery.cut_bytes = file_len - tail.valid_len;
                    tracing::warn!(
                        segment = %path.display(),
                        cut_bytes = recovery.cut_bytes,
                        head_seq = ?tail.head.last_seq(),
                        "cut a torn tail left by an interrupted write"
                    );
                }
                (first, tail.head, tail.valid_len, tail.vector_ends)
            }
        };
        let path = layout.segment_path(segment_first);
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        let mut store = ChainStore {
            layout: layout.clone(),
            segment_max_bytes,
            segment_first,
            file,
            path,
            len,
            vectors: BTreeMap::new(),
            head,
            buf: Vec::with_capacity(1 << 20),
            #[cfg(feature = "faults")]
            fail_at_append: None,
            appends: 0,
        };
        recovery.cut_vector_bytes = store.trim_vector_files(&vector_ends)?;
        // Whatever is on disk now may be acknowledged after a writer restart
        // (see ChainWriter::reopen), so make sure it is durable.
        store.file.sync_data().map_err(io_err(&store.path))?;
        Ok((store, recovery))
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn segment_max_bytes(&self) -> u64 {
        self.segment_max_bytes
    }

    /// Makes the `n`-th call to [`append`](Self::append) from now fail after
    /// writing part of its batch (the `faults` feature, for tests).
    #[cfg(feature = "faults")]
    pub fn inject_failure_at_append(&mut self, n: u64) {
        self.fail_at_append = Some(self.appends + n);
    }

    /// Appends `records` as one durable batch: vectors are written and synced
    /// first, then the blocks, then one fdatasync. Returns only after both
    /// are on disk. On error nothing of the batch counts: the files are cut
    /// back to their durable length before the error is returned.
    pub fn append(&mut self, records: &[Record], now_ns: i64) -> Result<Vec<Appended>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if self.len >= self.segment_max_bytes {
            self.rotate()?;
        }
        self.appends += 1;
        debug_assert!(
            records.iter().all(|r| r.footprint.data.len() < (MAX_FRAME_LEN as usize) / 2),
            "the Footprinter caps data far below the frame limit"
        );
        let result = self.append_inner(records, now_ns);
        if result.is_err() {
            self.rollback();
        }
        result
    }

    fn append_inner(&mut self, records: &[Record], now_ns: i64) -> Result<Vec<Appended>, StoreError> {
        let mut out = Vec::with_capacity(records.len());
        let mut head = self.head;
        // Commit time never goes backwards, whatever the wall clock does.
        let ts = now_ns.max(head.timestamp_ns);
        let mut vec_bufs: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
        self.buf.clear();
        for rec in records {
            let vector = match &rec.embedding {
                None => None,
                Some(e) => {
                    let vf_len = self.vector_file(e.model, e.values.len() as u32)?.len;
                    let vb = vec_bufs.entry(e.model).or_default();
                    let at = vb.len();
                    for x in &e.values {
                        vb.extend_from_slice(&x.to_le_bytes());
                    }
                    Some(VectorRef {
                        model: e.model.to_string(),
                        dims: e.values.len() as u32,
                        offset: vf_len + at as u64,
                        // Hashed as stored, from the bytes just laid out.
                        hash: codec::vector_hash_le(&vb[at..]),
                    })
                }
            };
            let body = BlockBodyRef {
                version: FORMAT_VERSION,
                seq: head.next_seq,
                prev_hash: &head.hash,
                timestamp_ns: ts,
                footprint: &rec.footprint,
                vector: vector.as_ref(),
            };
            let start = self.buf.len();
            // Encode straight into the batch buffer, leaving room for the frame header.
            self.buf.resize(start + FRAME_HEADER_LEN, 0);
            body.encode_into(&mut self.buf);
            let hash = codec::block_hash(&self.buf[start + FRAME_HEADER_LEN..]);
            self.buf.extend_from_slice(&hash);
            let payload_len = (self.buf.len() - start - FRAME_HEADER_LEN) as u32;
            let crc = crc32fast::hash(&self.buf[start + FRAME_HEADER_LEN..]);
            self.buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&(!payload_len).to_le_bytes());
            self.buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
            out.push(Appended {
                seq: head.next_seq,
                hash,
                segment: self.segment_first,
                offset: self.len + start as u64,
                frame_len: (self.buf.len() - start) as u32,
                captured_ns: rec.footprint.captured_ns,
                plugin_id: rec.footprint.plugin_id.clone(),
                operation: rec.footprint.operation.clone(),
            });
            head = Head { next_seq: head.next_seq + 1, hash, timestamp_ns: ts };
        }

        // Vectors first: a durable block must never point at a vector that is not.
        for (model, vb) in &vec_bufs {
            let vf = self.vectors.get_mut(model).expect("opened above");
            vf.file.write_all(vb).map_err(io_err(&vf.path))?;
            vf.file.sync_data().map_err(io_err(&vf.path))?;
        }
        #[cfg(feature = "faults")]
        if self.fail_at_append == Some(self.appends) {
            let half = self.buf.len() / 2;
            self.file.write_all(&self.buf[..half]).map_err(io_err(&self.path))?;
            return Err(StoreError::Injected("append failed half-way"));
        }
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;

        for (model, vb) in &vec_bufs {
            self.vectors.get_mut(model).expect("opened above").len += vb.len() as u64;
        }
        self.len += self.buf.len() as u64;
        self.head = head;
        Ok(out)
    }

    /// Cuts both files back to their durable length after a failed append.
    /// Best effort: if this fails too, the next [`open`](Self::open) finds
    /// the bytes and the ChainWriter reconciles them with what it still holds.
    fn rollback(&mut self) {
        if let Err(e) = self.file.set_len(self.len).and_then(|_| self.file.sync_data()) {
            tracing::error!(error = %e, path = %self.path.display(), "could not cut a failed batch");
        }
        for vf in self.vectors.values_mut() {
            if let Err(e) = vf.file.set_len(vf.len).and_then(|_| vf.file.sync_data()) {
                tracing::error!(error = %e, path = %vf.path.display(), "could not cut failed vectors");
            }
        }
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        let first = self.head.next_seq;
        create_segment(&self.layout, first)?;
        let path = self.layout.segment_path(first);
        self.file = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        self.path = path;
        self.segment_first = first;
        self.len = HEADER_LEN;
        self.vectors.clear();
        tracing::info!(first_seq = first, "started a new segment");
        Ok(())
    }

    fn vector_file(&mut self, model: &'static str, dims: u32) -> Result<&mut VectorFile, StoreError> {
        if !self.vectors.contains_key(model) {
            let path = self.layout.vector_path(model, self.segment_first);
            let dir = path.parent().expect("vector path has a parent");
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let mut file =
                OpenOptions::new().create(true).append(true).read(true).open(&path).map_err(io_err(&path))?;
            let mut len = file.metadata().map_err(io_err(&path))?.len();
            if len == 0 {
                file.write_all(&segment_header(VECTOR_MAGIC, dims, self.segment_first)).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
                sync_dir(dir)?;
                len = HEADER_LEN;
            }
            self.vectors.insert(model, VectorFile { file, path, len });
        }
        Ok(self.vectors.get_mut(model).expect("inserted above"))
    }

    /// After a crash the vector files may hold vectors of a batch whose
    /// blocks never became durable; cut them to the end of the last vector a
    /// block of this segment references.
    fn trim_vector_files(&mut self, ends: &BTreeMap<String, u64>) -> Result<u64, StoreError> {
        let mut cut = 0;
        let models = match fs::read_dir(&self.layout.vectors) {
            Ok(d) => d,
            Err(_) => return Ok(0),
        };
        for m in models.flatten() {
            let model = m.file_name().to_string_lossy().into_owned();
            let path = self.layout.vector_path(&model, self.segment_first);
            let Ok(meta) = fs::metadata(&path) else { continue };
            // A file no block references is emptied, header included: its
            // header may not have reached the disk, and the next vector
            // written to it writes a fresh one.
            let end = ends.get(&model).copied().unwrap_or(0);
            if meta.len() > end {
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(end).map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
                cut += meta.len() - end;
            }
        }
        Ok(cut)
    }
}

fn create_segment(layout: &Layout, first_seq: u64) -> Result<(), StoreError> {
    let path = layout.segment_path(first_seq);
    let mut f = OpenOptions::new().create_new(true).write(true).open(&path).map_err(io_err(&path))?;
    f.write_all(&segment_header(SEGMENT_MAGIC, 0, first_seq)).map_err(io_err(&path))?;
    f.sync_data().map_err(io_err(&path))?;
    sync_dir(&layout.timing)
}

/// A new file's name is durable only once its directory is synced.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Records for unit tests across the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Embedding, Record};
    use crate::codec::{data_hash, Footprint, Source, Value};

    /// Record `i` of plugin `plugin`, data `{"i": i, "p": payload}`, captured at `i` ns.
    pub(crate) fn record(i: u64, plugin: &str, payload: &str, with_vector: bool) -> Record {
        let data = Value::map(vec![
            (Value::Str("i".into()), Value::UInt(i)),
            (Value::Str("p".into()), Value::Str(payload.into())),
        ])
        .encode();
        Record {
            footprint: Footprint {
                source: Source::Import,
                plugin_id: plugin.into(),
                operation: format!("{plugin}.Op"),
                path: None,
                sender: None,
                creds: None,
                captured_ns: i as i64,
                signature: String::new(),
                data_hash: data_hash(&data),
                data,
                flags: 0,
            },
            embedding: with_vector.then(|| Embedding { model: "heuristic-v1", values: vec![i as f32; 64] }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(i: u64, payload: &str, with_vector: bool) -> Record {
        testing::record(i, "p", payload, with_vector)
    }

    /// The follower's cursor reads every block once, in order, across
    /// segment cuts, stops at `to`, and repositions when asked elsewhere.
    #[test]
    fn a_cursor_follows_the_chain_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (mut store, _) = ChainStore::open(&layout, 2048).unwrap();
        let records: Vec<Record> = (0..300).map(|i| record(i, "payload payload", i % 2 == 0)).collect();
        for chunk in records.chunks(13) {
            store.append(chunk, 42).unwrap();
        }
        assert!(layout.segments().unwrap().len() > 5, "the test needs several segments");
        let mut cursor = reader::Cursor::default();
        let mut seen = Vec::new();
        while (seen.len() as u64) < 250 {
            let got = cursor.read(&layout, seen.len() as u64, 250, 7).unwrap();
            assert!(!got.is_empty() && got.len() <= 7);
            seen.extend(got.into_iter().map(|b| b.body.seq));
        }
        assert_eq!(seen, (0..250).collect::<Vec<u64>>());
        assert!(cursor.read(&layout, 250, 250, 7).unwrap().is_empty());
        // More appended later: the cursor goes on from where it was.
        store.append(&[record(300, "late", false)], 43).unwrap();
        let rest = cursor.read(&layout, 250, 301, 100).unwrap();
        assert_eq!(rest.iter().map(|b| b.body.seq).collect::<Vec<_>>(), (250..301).collect::<Vec<u64>>());
        // Asked for somewhere else, it finds its way.
        let got = cursor.read(&layout, 37, 40, 10).unwrap();
        assert_eq!(got.iter().map(|b| b.body.seq).collect::<Vec<_>>(), vec![37, 38, 39]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// However records are split into commits and segments, the chain
        /// reads back the same records and verifies; split into commits
        /// within one segment, it has the same head hash. (Across segment
        /// cuts the hash differs by design: a block's vector offset is
        /// relative to its segment's vector file.)
        #[test]
        fn batching_does_not_change_the_chain(
            payloads in proptest::collection::vec((".{0,200}", any::<bool>()), 1..60),
            splits in proptest::collection::vec(1usize..8, 1..20),
            segment_kib in 1u64..4,
        ) {
            let records: Vec<Record> =
                payloads.iter().enumerate().map(|(i, (p, v))| record(i as u64, p, *v)).collect();
            let mut heads = Vec::new();
            for (split, seg) in [(vec![records.len()], 1 << 30), (splits.clone(), 1 << 30), (splits.clone(), segment_kib << 10)] {
                let dir = tempfile::tempdir().unwrap();
                let layout = Layout::new(dir.path(), None);
                let (mut store, _) = ChainStore::open(&layout, seg).unwrap();
                let mut at = 0;
                let mut k = 0;
                while at < records.len() {
                    let n = split[k % split.len()].min(records.len() - at);
                    store.append(&records[at..at + n], 42).unwrap();
                    at += n;
                    k += 1;
                }
                let mut back = Vec::new();
                reader::scan_from(&layout, 0, |_, _, _, b| { back.push(b.body.footprint); true }).unwrap();
                prop_assert_eq!(back, records.iter().map(|r| r.footprint.clone()).collect::<Vec<_>>());
                let report = verify::verify(&layout, 2).unwrap();
                prop_assert!(report.ok, "{:?}", report);
                // Reopening finds the same head.
                let (reopened, recovery) = ChainStore::open(&layout, seg).unwrap();
                prop_assert_eq!(recovery, Recovery::default());
                prop_assert_eq!(reopened.head(), store.head());
                heads.push(store.head());
            }
            prop_assert_eq!(heads[0], heads[1]);
            prop_assert_eq!(heads[2].next_seq, heads[0].next_seq);
        }
    }

    #[test]
    fn a_failed_append_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (mut store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        let recs: Vec<Record> = (0..10).map(|i| record(i, "x", true)).collect();
        store.append(&recs[..5], 1).unwrap();
        let before = store.head();
        store.inject_failure_at_append(1);
        assert!(matches!(store.append(&recs[5..], 2), Err(StoreError::Injected(_))));
        assert_eq!(store.head(), before);
        let (reopened, recovery) = ChainStore::open(&layout, 1 << 30).unwrap();
        assert_eq!(recovery, Recovery::default(), "rollback already cut the partial batch");
        assert_eq!(reopened.head(), before);
        store.append(&recs[5..], 2).unwrap();
        assert!(verify::verify(&layout, 1).unwrap().ok);
        assert_eq!(store.head().next_seq, 10);
    }

    #[test]
    fn commit_time_never_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (mut store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        store.append(&[record(0, "a", false)], 1_000).unwrap();
        store.append(&[record(1, "b", false)], 10).unwrap(); // the clock stepped back
        assert_eq!(store.head().timestamp_ns, 1_000);
    }
}
