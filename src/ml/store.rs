//! The search vectors: derived data, one store per model under
//! `@vectors/search/<model id>/embeddings.q8`, holding one vector per block
//! **in seq order from seq 0**, so a block's vector is found by arithmetic
//! and a search is one sequential scan.
//!
//! File: the 24-byte header of every op-dbus file (magic `OPDVECQ8`, format
//! version, dims, first seq = 0), then fixed-size records of
//! `scale: f32 LE ‖ dims × i8`; the vector is `scale × i8[i]`. A stored
//! vector is unit length before quantization, and its scale is
//! `max |x| / 127`, so it is never zero: a record of zeros is a hole a
//! crash left (the file grew, the data never reached the disk) and is cut
//! at open, with any partial record. Nothing else is ever rewritten: the
//! only writer appends and fdatasyncs each batch.
//!
//! Quantizing a unit vector this way moves its cosine to the original by
//! less than 1e-4 (tested); the query stays in f32, so scores are exact
//! dot products with the stored vectors.

use memmap2::{Mmap, MmapOptions};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::chain::{segment_header, HEADER_LEN};
use crate::layout::Layout;

pub const STORE_MAGIC: &[u8; 8] = b"OPDVECQ8";
const FILE_NAME: &str = "embeddings.q8";
/// Records checked for crash holes at open: more than one batch ever writes.
const TAIL_CHECK: u64 = 8192;

/// The folder of a model's store.
pub fn store_dir(layout: &Layout, model: &str) -> PathBuf {
    layout.vectors.join("search").join(model)
}

/// Bytes of one record.
pub fn stride(dims: usize) -> usize {
    4 + dims
}

/// Whether a record (starting at `rec`) was written: `quantize` never
/// makes a zero, negative or non-finite scale, so one is a crash hole.
fn written(rec: &[u8]) -> bool {
    let scale = f32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
    scale > 0.0 && scale.is_finite()
}

/// A unit vector as stored: `(scale, values)`.
pub fn quantize(v: &[f32], out: &mut Vec<u8>) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    // A zero vector (never produced by the models) gets the smallest scale,
    // so that its record is still not a hole.
    let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { f32::MIN_POSITIVE };
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend(v.iter().map(|x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8));
}

/// The stored vector of a record, back in f32.
pub fn dequantize(record: &[u8]) -> Vec<f32> {
    let scale = f32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
    record[4..].iter().map(|&b| b as i8 as f32 * scale).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {detail}")]
    Bad { path: PathBuf, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The one writer of a store (the vector worker, or `embed --backfill`
/// under the state dir's lock).
pub struct StoreWriter {
    file: File,
    path: PathBuf,
    dims: usize,
    len: u64,
}

impl StoreWriter {
    /// Opens or creates the store of `model`, cutting what a crash left.
    pub fn open(layout: &Layout, model: &str, dims: usize) -> Result<StoreWriter, StoreError> {
        let dir = store_dir(layout, model);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        if size < HEADER_LEN {
            file.set_len(0).map_err(io_err(&path))?;
            file.write_all(&segment_header(STORE_MAGIC, dims as u32, 0)).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            crate::chain::sync_dir(&dir).map_err(|e| StoreError::Bad { path: dir.clone(), detail: e.to_string() })?;
            return Ok(StoreWriter { file, path, dims, len: 0 });
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact(&mut header).map_err(io_err(&path))?;
        let (_, stored_dims) = crate::chain::reader::check_header(&header, STORE_MAGIC)
            .map_err(|e| StoreError::Bad { path: path.clone(), detail: e.into() })?;
        if stored_dims as usize != dims {
            return Err(StoreError::Bad { path, detail: format!("holds {stored_dims}-dim vectors, not {dims}") });
        }
        let st = stride(dims) as u64;
        let mut len = (size - HEADER_LEN) / st;
        // Holes at the tail: records whose scale is zero.
        let check_from = len.saturating_sub(TAIL_CHECK);
        let mut buf = vec![0u8; ((len - check_from) * st) as usize];
        file.seek(SeekFrom::Start(HEADER_LEN + check_from * st)).map_err(io_err(&path))?;
        file.read_exact(&mut buf).map_err(io_err(&path))?;
        for (i, rec) in buf.chunks_exact(st as usize).enumerate() {
            if !written(rec) {
                len = check_from + i as u64;
                tracing::warn!(path = %path.display(), from = len, "cutting search vectors a crash left unwritten");
                break;
            }
        }
        let end = HEADER_LEN + len * st;
        if end != size {
            file.set_len(end).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        Ok(StoreWriter { file, path, dims, len })
    }

    /// Vectors stored: the next seq to embed.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Appends the quantized records of seqs `len..len + n` (`records` is
    /// `n × stride` bytes) and makes them durable.
    pub fn append(&mut self, records: &[u8]) -> Result<(), StoreError> {
        let st = stride(self.dims);
        assert_eq!(records.len() % st, 0, "whole records only");
        self.file.seek(SeekFrom::Start(HEADER_LEN + self.len * st as u64)).map_err(io_err(&self.path))?;
        self.file.write_all(records).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.len += (records.len() / st) as u64;
        Ok(())
    }
}

/// A read-only view of a store, mapped into memory.
pub struct StoreReader {
    map: Mmap,
    dims: usize,
    len: u64,
}

impl StoreReader {
    /// Opens the store of `model`; `Ok(None)` if there is none yet.
    pub fn open(layout: &Layout, model: &str) -> Result<Option<StoreReader>, StoreError> {
        let path = store_dir(layout, model).join(FILE_NAME);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let size = file.metadata().map_err(io_err(&path))?.len();
        if size < HEADER_LEN {
            return Ok(None);
        }
        let map = map(&file, size as usize).map_err(io_err(&path))?;
        let (_, dims) = crate::chain::reader::check_header(&map[..HEADER_LEN as usize], STORE_MAGIC)
            .map_err(|e| StoreError::Bad { path: path.clone(), detail: e.into() })?;
        let dims = dims as usize;
        if dims == 0 {
            return Err(StoreError::Bad { path, detail: "0 dims".into() });
        }
        let mut len = (size - HEADER_LEN) / stride(dims) as u64;
        let body = &map[HEADER_LEN as usize..];
        // A reader may race the writer's crash recovery: stop at a hole.
        while len > 0 && !written(&body[(len as usize - 1) * stride(dims)..]) {
            len -= 1;
        }
        Ok(Some(StoreReader { map, dims, len }))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    fn body(&self) -> &[u8] {
        &self.map[HEADER_LEN as usize..HEADER_LEN as usize + self.len as usize * stride(self.dims)]
    }

    /// The stored record of `seq`.
    pub fn record(&self, seq: u64) -> Option<&[u8]> {
        (seq < self.len).then(|| &self.body()[seq as usize * stride(self.dims)..][..stride(self.dims)])
    }

    /// The `k` best (seq, cosine) for a unit-length `query`, best first,
    /// over every stored vector or only over `candidates` (sorted seqs).
    /// Ties go to the newer block. Scans on up to `threads` threads.
    pub fn top_k(&self, query: &[f32], k: usize, candidates: Option<&[u64]>, threads: usize) -> Vec<(u64, f32)> {
        assert_eq!(query.len(), self.dims, "query dims");
        if k == 0 || self.len == 0 {
            return Vec::new();
        }
        let st = stride(self.dims);
        let body = self.body();
        let score = |seq: u64| {
            let r = &body[seq as usize * st..][..st];
            f32::from_le_bytes(r[..4].try_into().expect("4 bytes")) * dot_i8(query, &r[4..])
        };
        let len = self.len;
        let work: Vec<Vec<(u64, f32)>> = match candidates {
            None => {
                let threads = threads.clamp(1, 8).min(len.div_ceil(4096) as usize).max(1);
                let per = len.div_ceil(threads as u64);
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads as u64)
                        .map(|t| {
                            let score = &score;
                            s.spawn(move || {
                                let mut top = TopK::new(k);
                                for seq in t * per..((t + 1) * per).min(len) {
                                    top.push(seq, score(seq));
                                }
                                top.into_vec()
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().expect("scan thread")).collect()
                })
            }
            Some(c) => {
                let mut top = TopK::new(k);
                for &seq in c.iter().filter(|s| **s < len) {
                    top.push(seq, score(seq));
                }
                vec![top.into_vec()]
            }
        };
        let mut top = TopK::new(k);
        for (seq, s) in work.into_iter().flatten() {
            top.push(seq, s);
        }
        top.into_vec()
    }
}

/// The best `k` (seq, score) seen, kept in a small sorted vector (k is
/// small; a push that does not beat the worst is one comparison).
struct TopK {
    k: usize,
    items: Vec<(u64, f32)>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK { k, items: Vec::with_capacity(k + 1) }
    }

    fn better(a: (u64, f32), b: (u64, f32)) -> bool {
        a.1 > b.1 || (a.1 == b.1 && a.0 > b.0)
    }

    #[inline]
    fn push(&mut self, seq: u64, score: f32) {
        if !score.is_finite() {
            return;
        }
        if self.items.len() == self.k && !Self::better((seq, score), self.items[self.k - 1]) {
            return;
        }
        let at = self.items.partition_point(|&x| Self::better(x, (seq, score)));
        self.items.insert(at, (seq, score));
        self.items.truncate(self.k);
    }

    fn into_vec(self) -> Vec<(u64, f32)> {
        self.items
    }
}

/// `Σ q[i] × x[i]` with `x` as i8: the scan's inner loop. Written so the
/// compiler vectorizes it; on x86-64 with AVX2+FMA (checked once at run
/// time) the same loop is compiled for those.
pub fn dot_i8(q: &[f32], x: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { dot_i8_avx2(q, x) };
        }
    }
    dot_i8_generic(q, x)
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_avx2(q: &[f32], x: &[u8]) -> f32 {
    dot_i8_generic(q, x)
}

#[inline(always)]
fn dot_i8_generic(q: &[f32], x: &[u8]) -> f32 {
    // Eight independent sums, so the loop needs no reordering of float adds.
    let mut acc = [0f32; 8];
    let (qc, qr) = q.as_chunks::<8>();
    let (xc, xr) = x[..q.len()].as_chunks::<8>();
    for (a, b) in qc.iter().zip(xc) {
        for i in 0..8 {
            acc[i] += a[i] * (b[i] as i8 as f32);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (a, b) in qr.iter().zip(xr) {
        sum += a * (*b as i8 as f32);
    }
    sum
}

/// Maps a store's first `len` bytes, read-only.
fn map(file: &File, len: usize) -> io::Result<Mmap> {
    // SAFETY: a read-only shared mapping (memmap2 maps MAP_SHARED, so pages
    // are the page cache's; nothing is copied). The contract memmap2 asks
    // us to keep is that the mapped bytes do not change or vanish while
    // mapped. They do not: the store is append-only, its one writer never
    // rewrites a byte below the length mapped here, and the one truncation
    // (cutting a crash's torn tail when the writer opens the store) happens
    // before any reader in this process maps it and past any vector a
    // reader in another process counts (a reader stops at holes).
    unsafe { MmapOptions::new().len(len).map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        d / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    }

    #[test]
    fn quantization_keeps_the_direction() {
        for seed in 0..200 {
            let v = unit(seed, 384);
            let mut rec = Vec::new();
            quantize(&v, &mut rec);
            assert_eq!(rec.len(), stride(384));
            assert!(cos(&v, &dequantize(&rec)) > 0.9999, "seed {seed}");
        }
    }

    #[test]
    fn kernels_agree_and_scan_finds_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let mut w = StoreWriter::open(&layout, "m", 384).unwrap();
        let mut buf = Vec::new();
        let vs: Vec<Vec<f32>> = (0..10_000).map(|s| unit(s, 384)).collect();
        for v in &vs {
            quantize(v, &mut buf);
        }
        w.append(&buf).unwrap();
        let r = StoreReader::open(&layout, "m").unwrap().unwrap();
        assert_eq!(r.len(), 10_000);
        let q = &vs[4321];
        let rec = r.record(4321).unwrap();
        let exact = f32::from_le_bytes(rec[..4].try_into().unwrap()) * dot_i8_generic(q, &rec[4..]);
        assert!((exact - dot_i8(q, &rec[4..]) * f32::from_le_bytes(rec[..4].try_into().unwrap())).abs() < 1e-4);
        let top = r.top_k(q, 5, None, 2);
        assert_eq!(top[0].0, 4321);
        assert!((top[0].1 - 1.0).abs() < 1e-3);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        // Brute force in f64 agrees on the order.
        let mut all: Vec<(u64, f64)> = (0..10_000u64)
            .map(|s| {
                let d = dequantize(r.record(s).unwrap());
                (s, q.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum())
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), all[..5].iter().map(|t| t.0).collect::<Vec<_>>());
        // Candidates restrict the answer.
        let only = r.top_k(q, 3, Some(&[1, 2, 3, 99_999]), 2);
        assert!(only.iter().all(|(s, _)| [1, 2, 3].contains(s)) && only.len() == 3);
    }

    #[test]
    fn a_crash_tail_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let mut w = StoreWriter::open(&layout, "m", 8).unwrap();
        let mut buf = Vec::new();
        for s in 0..5 {
            quantize(&unit(s, 8), &mut buf);
        }
        w.append(&buf).unwrap();
        drop(w);
        let path = store_dir(&layout, "m").join(FILE_NAME);
        // Two holes (the file grew, the data did not arrive) and half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 2 * 12 + 5]).unwrap();
        drop(f);
        assert_eq!(StoreReader::open(&layout, "m").unwrap().unwrap().len(), 5);
        let w = StoreWriter::open(&layout, "m", 8).unwrap();
        assert_eq!(w.len(), 5);
        assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_LEN + 5 * 12);
        // Other dims are refused.
        assert!(StoreWriter::open(&layout, "m", 16).is_err());
    }
}
