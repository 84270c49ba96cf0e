//! The LMDB index under `@cache/index/`: the one place that touches heed.
//!
//! Derived data: every entry can be rebuilt from the chain (`reindex`), so the
//! environment is opened with `NO_SYNC` (a process crash loses nothing, the
//! kernel still has the pages; a power cut can lose the last transactions or,
//! on filesystems that reorder writes, damage the file, and then it is
//! rebuilt) and synced on a timer. The indexed head (seq and hash) is written
//! in the same transaction as the entries, so the index is always a prefix
//! of the chain and catching up starts right after it.
//!
//! Databases (integers big-endian so that LMDB's byte order is numeric order):
//! - `meta`:         `head` -> seq u64 ‖ hash[32]; `next_name` -> u32
//! - `names`:        plugin or operation name -> id u32 (ids keep the keys below short)
//! - `by_seq`:       seq -> segment u64 ‖ offset u64 ‖ frame_len u32
//! - `by_time`:      captured_ns (sign bit flipped) u64 ‖ seq -> ()
//! - `by_plugin_op`: plugin id u32 ‖ operation id u32 -> seq, duplicates sorted
//!
//! Page fill is what decides the size and the memory touched: by_seq always
//! appends, by_time appends whenever a batch is newer than what is stored
//! (the common case), and by_plugin_op appends each seq at the end of its
//! key's duplicates (`APPEND_DUP`), so every tree is written at its right
//! edge and stays packed. Hash lookups, whose keys are random, live in
//! per-segment files instead ([`crate::index::hashes`]).

pub(crate) mod hashes;
pub(crate) mod indexer;
pub(crate) mod query;
pub(crate) mod witness;

use std::path::{Path, PathBuf};

use heed::types::{Bytes, Str, Unit};
use std::collections::HashMap;

use heed::{Database, DatabaseFlags, Env, EnvFlags, EnvOpenOptions, PutFlags, RwTxn};

use crate::chain::Appended;
use crate::codec::Hash;

/// Initial map size. LMDB reserves address space, not disk; the map grows
/// by doubling when a write transaction hits `MDB_MAP_FULL`.
const INITIAL_MAP_SIZE: usize = 256 << 20;
const MAX_MAP_SIZE: usize = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index at {path}: {source}")]
    Lmdb { path: PathBuf, source: heed::Error },
    #[error("index at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("index at {path}: map size would exceed {MAX_MAP_SIZE} bytes")]
    MapLimit { path: PathBuf },
}

/// Position of a block in the chain files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) frame_len: u32,
}

/// Cheap to clone: the environment is shared (heed's `Env` is reference-counted).
#[derive(Clone)]
pub struct Index {
    env: Env,
    path: PathBuf,
    meta: Database<Str, Bytes>,
    names: Database<Str, Bytes>,
    by_seq: Database<Bytes, Bytes>,
    by_time: Database<Bytes, Unit>,
    by_plugin_op: Database<Bytes, Bytes>,
}

/// Seq and hash of the last indexed block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedHead {
    pub seq: u64,
    pub(crate) hash: Hash,
}

pub fn time_key(captured_ns: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&((captured_ns as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The `names` key of a name. LMDB keys are at most 511 bytes; a longer
/// name (the Footprinter allows up to 4096) is keyed by `#` and the hex
/// SHA-256 of the name, which no D-Bus name can look like.
fn name_key(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= 400 {
        std::borrow::Cow::Borrowed(name)
    } else {
        use sha2::Digest;
        std::borrow::Cow::Owned(format!("#{}", crate::codec::hex(&sha2::Sha256::digest(name.as_bytes()))))
    }
}

fn seq_from_tail(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"))
}

/// Opens the LMDB environment in `path`: the one place op-dbus opens
/// LMDB, for the index and for the embedding cache (`ml::cache`). Both are
/// derived data under `@cache`, so both run `NO_SYNC` (a crash loses at
/// most what the next start rebuilds) and `NO_READ_AHEAD` (lookups read
/// single pages).
pub fn open_env(path: &Path, map_size: usize, max_dbs: u32) -> heed::Result<Env> {
    let mut opts = EnvOpenOptions::new();
    opts.map_size(map_size).max_dbs(max_dbs);
    // SAFETY: heed's flags and open are unsafe because the memory map must
    // not be modified behind LMDB's back. Only op-dbus opens these
    // directories, through this function, once per process; concurrent
    // processes (the daemon and a CLI reader) coordinate through LMDB's own
    // lock file, which we never touch, and the directories are never on a
    // network filesystem (they live in the state dir). NO_SYNC is safe for
    // derived data (see the module comment).
    unsafe {
        opts.flags(EnvFlags::NO_SYNC | EnvFlags::NO_READ_AHEAD);
    }
    unsafe { opts.open(path) }
}

impl Index {
    /// Opens (creating if needed) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        Self::open_with_map_size(dir, INITIAL_MAP_SIZE)
    }

    /// Opens the index in `dir` for reading if there is one: read commands
    /// never create it. `Ok(None)` when there is none.
    pub fn open_existing(dir: &Path) -> Result<Option<Index>, IndexError> {
        if !dir.join("index").join("data.mdb").exists() {
            return Ok(None);
        }
        Self::open(dir).map(Some)
    }

    /// As [`open`](Self::open), but an environment that cannot be opened
    /// or read (a power cut can damage it: it runs `NO_SYNC`) is moved
    /// aside to `index.damaged-<unix time>` and a new, empty one is opened;
    /// the indexer then rebuilds it from the chain.
    pub fn open_or_reset(dir: &Path) -> Result<Index, IndexError> {
        let damage = match Self::open(dir) {
            Ok(index) => match index.head() {
                Ok(_) => return Ok(index),
                Err(e) => e,
            },
            Err(IndexError::Io { path, source }) => return Err(IndexError::Io { path, source }),
            Err(e) => e,
        };
        let path = dir.join("index");
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("index.damaged-{stamp}"));
        tracing::warn!(error = %damage, moved_to = %aside.display(), "the index cannot be read; rebuilding it");
        std::fs::rename(&path, &aside).map_err(|source| IndexError::Io { path: path.clone(), source })?;
        Self::open(dir)
    }

    /// As [`open`](Self::open), starting from a given map size.
    pub fn open_with_map_size(dir: &Path, initial_map_size: usize) -> Result<Index, IndexError> {
        let path = dir.join("index");
        std::fs::create_dir_all(&path).map_err(|source| IndexError::Io { path: path.clone(), source })?;
        let lmdb = |source| IndexError::Lmdb { path: path.clone(), source };
        // Start at least as large as the file already is, or LMDB refuses it.
        let existing = std::fs::metadata(path.join("data.mdb")).map(|m| m.len() as usize).unwrap_or(0);
        let mut map_size = initial_map_size;
        while map_size < existing * 2 {
            map_size *= 2;
        }
        let env = open_env(&path, map_size, 8).map_err(lmdb)?;
        let mut wtxn = env.write_txn().map_err(lmdb)?;
        let meta = env.create_database(&mut wtxn, Some("meta")).map_err(lmdb)?;
        let names = env.create_database(&mut wtxn, Some("names")).map_err(lmdb)?;
        let by_seq = env.create_database(&mut wtxn, Some("by_seq")).map_err(lmdb)?;
        let dups = DatabaseFlags::DUP_SORT | DatabaseFlags::DUP_FIXED;
        let by_time = env.create_database(&mut wtxn, Some("by_time")).map_err(lmdb)?;
        let by_plugin_op = env
            .database_options()
            .types::<Bytes, Bytes>()
            .name("by_plugin_op")
            .flags(dups)
            .create(&mut wtxn)
            .map_err(lmdb)?;
        wtxn.commit().map_err(lmdb)?;
        Ok(Index { env, path, meta, names, by_seq, by_time, by_plugin_op })
    }

    fn lmdb(&self) -> impl Fn(heed::Error) -> IndexError + '_ {
        |source| IndexError::Lmdb { path: self.path.clone(), source }
    }

    pub fn head(&self) -> Result<Option<IndexedHead>, IndexError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        Ok(self.meta.get(&rtxn, "head").map_err(self.lmdb())?.and_then(|v| {
            let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            let hash: Hash = v.get(8..40)?.try_into().ok()?;
            Some(IndexedHead { seq, hash })
        }))
    }

    /// Indexes a run of consecutive blocks in one transaction, growing the
    /// map if it is full. Blocks at or below the indexed head are skipped,
    /// so replaying a batch is harmless.
    pub fn insert(&self, blocks: &[Appended]) -> Result<(), IndexError> {
        loop {
            match self.try_insert(blocks) {
                Err(heed::Error::Mdb(heed::MdbError::MapFull)) => self.grow()?,
                other => return other.map_err(self.lmdb()),
            }
        }
    }

    fn try_insert(&self, blocks: &[Appended]) -> Result<(), heed::Error> {
        let mut wtxn = self.env.write_txn()?;
        let head = self.meta.get(&wtxn, "head")?.map(|v| u64::from_be_bytes(v[..8].try_into().expect("8 bytes")));
        let fresh: Vec<&Appended> = blocks.iter().filter(|b| head.is_none_or(|h| b.seq > h)).collect();
        let Some(last) = fresh.last() else { return Ok(()) };
        // by_seq keys only ever grow: APPEND skips the search and fills pages completely.
        for b in &fresh {
            let mut loc = [0u8; 20];
            loc[..8].copy_from_slice(&b.segment.to_be_bytes());
            loc[8..16].copy_from_slice(&b.offset.to_be_bytes());
            loc[16..].copy_from_slice(&b.frame_len.to_be_bytes());
            self.by_seq.put_with_flags(&mut wtxn, PutFlags::APPEND, &b.seq.to_be_bytes(), &loc)?;
        }
        // by_time: append when the whole batch is newer than what is stored.
        let mut times: Vec<[u8; 16]> = fresh.iter().map(|b| time_key(b.captured_ns, b.seq)).collect();
        times.sort_unstable();
        let newer = match self.by_time.last(&wtxn)? {
            Some((k, ())) => times.first().is_some_and(|t| &t[..] > k),
            None => true,
        };
        let flags = if newer { PutFlags::APPEND } else { PutFlags::empty() };
        for k in &times {
            self.by_time.put_with_flags(&mut wtxn, flags, k, &())?;
        }
        // by_plugin_op: seqs grow, so each one goes at the end of its key's duplicates.
        let mut ids: HashMap<&str, [u8; 4]> = HashMap::new();
        for b in &fresh {
            let p = match ids.get(b.plugin_id.as_str()) {
                Some(id) => *id,
                None => {
                    let id = self.name_id(&mut wtxn, &b.plugin_id)?;
                    *ids.entry(&b.plugin_id).or_insert(id)
                }
            };
            let o = match ids.get(b.operation.as_str()) {
                Some(id) => *id,
                None => {
                    let id = self.name_id(&mut wtxn, &b.operation)?;
                    *ids.entry(&b.operation).or_insert(id)
                }
            };
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&p);
            k[4..].copy_from_slice(&o);
            self.by_plugin_op.put_with_flags(&mut wtxn, PutFlags::APPEND_DUP, &k, &b.seq.to_be_bytes())?;
        }
        let mut head = [0u8; 40];
        head[..8].copy_from_slice(&last.seq.to_be_bytes());
        head[8..].copy_from_slice(&last.hash);
        self.meta.put(&mut wtxn, "head", &head)?;
        wtxn.commit()
    }

    /// The id of a name, assigning the next one if it is new.
    fn name_id(&self, wtxn: &mut RwTxn, name: &str) -> Result<[u8; 4], heed::Error> {
        let key = name_key(name);
        let name: &str = &key;
        if let Some(id) = self.names.get(wtxn, name)? {
            return Ok(id.try_into().expect("4 bytes"));
        }
        let next = self.meta.get(wtxn, "next_name")?.map_or(0, |v| u32::from_be_bytes(v.try_into().expect("4 bytes")));
        let id = next.to_be_bytes();
        self.names.put(wtxn, name, &id)?;
        self.meta.put(wtxn, "next_name", &(next + 1).to_be_bytes())?;
        Ok(id)
    }

    fn lookup_name(&self, rtxn: &heed::RoTxn, name: &str) -> Result<Option<[u8; 4]>, IndexError> {
        Ok(self.names.get(rtxn, &name_key(name)).map_err(self.lmdb())?.map(|v| v.try_into().expect("4 bytes")))
    }

    fn grow(&self) -> Result<(), IndexError> {
        let size = self.env.info().map_size * 2;
        if size > MAX_MAP_SIZE {
            return Err(IndexError::MapLimit { path: self.path.clone() });
        }
        tracing::info!(map_size = size, "growing the LMDB map");
        // SAFETY: resize requires that no transaction is open in this
        // process. Only the CacheIndexer writes, from one thread, and it
        // calls this between transactions; readers in other processes pick
        // the new size up on their next transaction (LMDB handles that).
        unsafe { self.env.resize(size) }.map_err(self.lmdb())
    }

    /// Unmaps the pages of the index file from this process (they stay in
    /// the page cache; the next access maps them again, a minor fault).
    ///
    /// Why: LMDB reads every page through its memory map, and each fault
    /// also maps up to 15 neighbouring pages already in the page cache (the
    /// kernel's fault-around). Every transaction copies the right edges of
    /// the trees to new pages, so over a long import the mapped part of the
    /// file creeps towards the whole file and shows up as RSS, although
    /// each transaction reads only a few pages. Dropping the mapping after
    /// a transaction costs a few faults on the next one.
    ///
    /// The map's address is not exposed by heed (LMDB reports it only for
    /// fixed maps), so it is found in /proc/self/maps by the file's path.
    /// A consistent copy of the environment into the new folder `dir`
    /// (`mdb_env_copy`: a read transaction, so writers go on meanwhile).
    pub fn copy_to(&self, dir: &Path) -> Result<(), IndexError> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io { path: dir.to_path_buf(), source })?;
        self.env
            .copy_to_path(dir.join("data.mdb"), heed::CompactionOption::Disabled)
            .map_err(|source| IndexError::Lmdb { path: dir.to_path_buf(), source })?;
        Ok(())
    }

    pub fn release_mapped_pages(&self) {
        let Ok(file) = std::fs::canonicalize(self.path.join("data.mdb")) else { return };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
        let file = file.to_string_lossy();
        for line in maps.lines().filter(|l| l.ends_with(&*file)) {
            let Some((range, _)) = line.split_once(' ') else { continue };
            let Some((lo, hi)) = range.split_once('-') else { continue };
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) else { continue };
            // SAFETY: this range is LMDB's read-only, shared mapping of the
            // index file (the environment is opened without WRITE_MAP, so
            // LMDB writes with pwrite, never through the map). For a shared
            // file mapping MADV_DONTNEED only drops this process's page
            // table entries; later reads, including through pointers LMDB
            // still holds, fault the same file pages back in. No data is lost.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED);
            }
        }
    }

    /// Flushes to disk (the environment runs with NO_SYNC).
    pub fn sync(&self) -> Result<(), IndexError> {
        self.env.force_sync().map_err(self.lmdb())
    }

    /// Removes every entry (before a rebuild).
    pub fn clear(&self) -> Result<(), IndexError> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb())?;
        self.meta.clear(&mut wtxn).map_err(self.lmdb())?;
        self.names.clear(&mut wtxn).map_err(self.lmdb())?;
        self.by_seq.clear(&mut wtxn).map_err(self.lmdb())?;
        self.by_time.clear(&mut wtxn).map_err(self.lmdb())?;
        self.by_plugin_op.clear(&mut wtxn).map_err(self.lmdb())?;
        wtxn.commit().map_err(self.lmdb())
    }

    pub fn location(&self, seq: u64) -> Result<Option<Location>, IndexError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        Ok(self.by_seq.get(&rtxn, &seq.to_be_bytes()).map_err(self.lmdb())?.map(|v| Location {
            segment: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(v[8..16].try_into().expect("8 bytes")),
            frame_len: u32::from_be_bytes(v[16..20].try_into().expect("4 bytes")),
        }))
    }

    /// Seqs of blocks captured in [since, until), in time order; `None` is open-ended.
    pub fn seqs_in_time(&self, since: Option<i64>, until: Option<i64>) -> Result<Vec<u64>, IndexError> {
        use std::ops::Bound;
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        let lo = since.map(|t| time_key(t, 0));
        let hi = until.map(|t| time_key(t, 0));
        let range = (
            lo.as_ref().map_or(Bound::Unbounded, |k| Bound::Included(&k[..])),
            hi.as_ref().map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..])),
        );
        let mut out = Vec::new();
        for item in self.by_time.range(&rtxn, &range).map_err(self.lmdb())? {
            let (k, ()) = item.map_err(self.lmdb())?;
            out.push(seq_from_tail(k));
        }
        Ok(out)
    }

    /// Seqs of blocks of a plugin (and operation), in seq order.
    pub fn seqs_of_plugin(&self, plugin_id: &str, operation: Option<&str>) -> Result<Vec<u64>, IndexError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        let Some(p) = self.lookup_name(&rtxn, plugin_id)? else { return Ok(Vec::new()) };
        let mut prefix = p.to_vec();
        if let Some(op) = operation {
            let Some(o) = self.lookup_name(&rtxn, op)? else { return Ok(Vec::new()) };
            prefix.extend_from_slice(&o);
        }
        let mut out = Vec::new();
        for item in self.by_plugin_op.prefix_iter(&rtxn, &prefix).map_err(self.lmdb())? {
            let (_, v) = item.map_err(self.lmdb())?;
            out.push(u64::from_be_bytes(v.try_into().expect("8 bytes")));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Seqs of blocks with this operation, of any plugin, in seq order (a
    /// walk over the plugin+operation tree: no key starts with the operation).
    pub fn seqs_of_operation(&self, operation: &str) -> Result<Vec<u64>, IndexError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        let Some(o) = self.lookup_name(&rtxn, operation)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in self.by_plugin_op.iter(&rtxn).map_err(self.lmdb())? {
            let (k, v) = item.map_err(self.lmdb())?;
            if k.get(4..8) == Some(&o[..]) {
                out.push(u64::from_be_bytes(v.try_into().expect("8 bytes")));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Number of indexed blocks and the size of the environment on disk.
    pub fn stats(&self) -> Result<(u64, u64), IndexError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb())?;
        let n = self.by_seq.len(&rtxn).map_err(self.lmdb())?;
        let size = std::fs::metadata(self.path.join("data.mdb")).map(|m| m.len()).unwrap_or(0);
        Ok((n, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended(seq: u64, plugin: &str, ts: i64) -> Appended {
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&seq.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes());
        Appended {
            seq,
            hash,
            segment: 0,
            offset: 24 + seq * 100,
            frame_len: 100,
            captured_ns: ts,
            plugin_id: plugin.into(),
            operation: format!("{plugin}.Changed"),
        }
    }

    #[test]
    fn lookups_by_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let blocks: Vec<_> = (0..100).map(|i| appended(i, if i % 2 == 0 { "a" } else { "b" }, i as i64 - 50)).collect();
        index.insert(&blocks[..60]).unwrap();
        index.insert(&blocks[40..]).unwrap(); // overlap is skipped
        assert_eq!(index.head().unwrap().unwrap().seq, 99);
        assert_eq!(index.location(7).unwrap().unwrap().offset, 724);
        assert_eq!(index.seqs_in_time(Some(-50), Some(-45)).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(index.seqs_in_time(Some(48), None).unwrap(), vec![98, 99]);
        let b = index.seqs_of_plugin("b", Some("b.Changed")).unwrap();
        assert_eq!(b.len(), 50);
        assert!(b.iter().all(|s| s % 2 == 1));
        assert_eq!(index.seqs_of_plugin("a", None).unwrap().len(), 50);
        assert_eq!(index.stats().unwrap().0, 100);
    }

    #[test]
    fn out_of_order_times_are_indexed_too() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.insert(&[appended(0, "a", 100), appended(1, "a", 200)]).unwrap();
        index.insert(&[appended(2, "a", 50)]).unwrap();
        assert_eq!(index.seqs_in_time(Some(0), Some(150)).unwrap(), vec![2, 0]);
    }

    #[test]
    fn names_longer_than_a_key_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut b = appended(0, &"i".repeat(4096), 0);
        b.operation = format!("{}.{}", "i".repeat(255), "m".repeat(255));
        index.insert(&[b.clone()]).unwrap();
        assert_eq!(index.seqs_of_plugin(&b.plugin_id, Some(&b.operation)).unwrap(), vec![0]);
    }

    #[test]
    fn map_grows_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open_with_map_size(dir.path(), 1 << 20).unwrap();
        let before = index.env.info().map_size;
        // Long names fill the map quickly, and longer than a key may be.
        let plugin = "p".repeat(255);
        for chunk in 0..40u64 {
            let blocks: Vec<_> = (chunk * 1000..(chunk + 1) * 1000).map(|i| appended(i, &plugin, i as i64)).collect();
            index.insert(&blocks).unwrap();
            if index.env.info().map_size > before {
                return;
            }
        }
        panic!("map never grew");
    }
}
