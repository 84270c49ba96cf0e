//! The embedding cache: LMDB under `@cache/embeddings/`, derived data like
//! the index (opened `NO_SYNC`; a damaged one is moved aside and started
//! anew). D-Bus traffic repeats itself (the same property changes, the same
//! jobs), so most texts have been embedded before.
//!
//! - `gen0`, `gen1`: `sha256(model ‖ 0 ‖ text)[..16]` → the stored record
//!   (`scale ‖ i8 × dims`, as in the store). Bounded by two generations:
//!   new entries go to the current one; when it holds `max_entries / 2`,
//!   the other is emptied and becomes current. A hit in the old generation
//!   is copied forward, so what keeps recurring stays (an LRU in two steps,
//!   with no bookkeeping per read).
//! - `queries`: the same key of a search's text → its f32 query vector,
//!   so a repeated search needs no model at all; emptied at `QUERY_ENTRIES`.
//! - `meta`: `current` → 0 or 1.

use std::path::{Path, PathBuf};

use heed::types::{Bytes, Str};
use heed::{Database, Env};
use sha2::{Digest, Sha256};

const MAP_SIZE: usize = 16 << 30;
const QUERY_ENTRIES: u64 = 10_000;

pub type Key = [u8; 16];

/// The cache key of `text` for `model`.
pub fn key(model: &str, text: &str) -> Key {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize()[..16].try_into().expect("16 bytes")
}

#[derive(Debug, thiserror::Error)]
#[error("embedding cache {path}: {detail}")]
pub struct CacheError {
    path: PathBuf,
    detail: String,
}

#[derive(Clone)]
pub struct EmbedCache {
    env: Env,
    path: PathBuf,
    gens: [Database<Bytes, Bytes>; 2],
    queries: Database<Bytes, Bytes>,
    meta: Database<Str, Bytes>,
    max_entries: u64,
}

impl EmbedCache {
    /// The cache for `[vector] cache_entries` (`None` when 0: no cache), or
    /// none with a warning when it cannot be opened: embedding goes on.
    pub fn configured(cache_dir: &Path, max_entries: u64) -> Option<EmbedCache> {
        if max_entries == 0 {
            return None;
        }
        Self::open(cache_dir, max_entries)
            .map_err(|e| tracing::warn!(error = %e, "running without the embedding cache"))
            .ok()
    }

    /// Opens (creating) the cache in `<cache dir>/embeddings`; one per process.
    pub fn open(cache_dir: &Path, max_entries: u64) -> Result<EmbedCache, CacheError> {
        let path = cache_dir.join("embeddings");
        match Self::open_at(&path, max_entries) {
            Ok(c) => Ok(c),
            Err(e) if path.exists() => {
                let aside = path.with_extension(format!(
                    "damaged-{}",
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                ));
                tracing::warn!(error = %e, moved_to = %aside.display(), "the embedding cache cannot be read; starting a new one");
                std::fs::rename(&path, &aside).map_err(|e| CacheError { path: path.clone(), detail: e.to_string() })?;
                Self::open_at(&path, max_entries)
            }
            Err(e) => Err(e),
        }
    }

    fn open_at(path: &Path, max_entries: u64) -> Result<EmbedCache, CacheError> {
        let err = |e: &dyn std::fmt::Display| CacheError { path: path.to_path_buf(), detail: e.to_string() };
        std::fs::create_dir_all(path).map_err(|e| err(&e))?;
        // NO_SYNC (crate::index::open_env) only risks losing cached vectors, which are recomputed.
        let env = crate::index::open_env(path, MAP_SIZE, 4).map_err(|e| err(&e))?;
        let mut wtxn = env.write_txn().map_err(|e| err(&e))?;
        let gen0 = env.create_database(&mut wtxn, Some("gen0")).map_err(|e| err(&e))?;
        let gen1 = env.create_database(&mut wtxn, Some("gen1")).map_err(|e| err(&e))?;
        let queries = env.create_database(&mut wtxn, Some("queries")).map_err(|e| err(&e))?;
        let meta = env.create_database(&mut wtxn, Some("meta")).map_err(|e| err(&e))?;
        wtxn.commit().map_err(|e| err(&e))?;
        Ok(EmbedCache {
            env,
            path: path.to_path_buf(),
            gens: [gen0, gen1],
            queries,
            meta,
            max_entries: max_entries.max(2),
        })
    }

    fn err(&self) -> impl Fn(heed::Error) -> CacheError + '_ {
        |e| CacheError { path: self.path.clone(), detail: e.to_string() }
    }

    fn current(&self, txn: &heed::RoTxn) -> Result<usize, CacheError> {
        Ok(self.meta.get(txn, "current").map_err(self.err())?.and_then(|v| v.first().copied()).unwrap_or(0) as usize
            & 1)
    }

    /// Looks up every key; hits in the old generation are copied forward.
    pub fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let cur = self.current(&rtxn)?;
        let mut out = Vec::with_capacity(keys.len());
        let mut forward = Vec::new();
        for k in keys {
            let v = match self.gens[cur].get(&rtxn, k).map_err(self.err())? {
                Some(v) => Some(v.to_vec()),
                None => {
                    let old = self.gens[1 - cur].get(&rtxn, k).map_err(self.err())?.map(<[u8]>::to_vec);
                    if let Some(v) = &old {
                        forward.push((*k, v.clone()));
                    }
                    old
                }
            };
            out.push(v);
        }
        drop(rtxn);
        if !forward.is_empty() {
            self.put_many(&forward)?;
        }
        Ok(out)
    }

    /// Stores entries in the current generation, turning generations over
    /// when it is full.
    pub fn put_many(&self, entries: &[(Key, Vec<u8>)]) -> Result<(), CacheError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        let mut cur = self.current(&wtxn)?;
        if self.gens[cur].len(&wtxn).map_err(self.err())? + entries.len() as u64 > self.max_entries / 2 {
            cur = 1 - cur;
            self.gens[cur].clear(&mut wtxn).map_err(self.err())?;
            self.meta.put(&mut wtxn, "current", &[cur as u8]).map_err(self.err())?;
        }
        for (k, v) in entries {
            self.gens[cur].put(&mut wtxn, k, v).map_err(self.err())?;
        }
        wtxn.commit().map_err(self.err())
    }

    pub fn get_query(&self, key: &Key) -> Result<Option<Vec<f32>>, CacheError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        Ok(self
            .queries
            .get(&rtxn, key)
            .map_err(self.err())?
            .map(|v| v.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
    }

    pub fn put_query(&self, key: &Key, v: &[f32]) -> Result<(), CacheError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        if self.queries.len(&wtxn).map_err(self.err())? >= QUERY_ENTRIES {
            self.queries.clear(&mut wtxn).map_err(self.err())?;
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.queries.put(&mut wtxn, key, &bytes).map_err(self.err())?;
        wtxn.commit().map_err(self.err())
    }

    /// Entries held (both generations).
    pub fn entries(&self) -> Result<u64, CacheError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        Ok(self.gens[0].len(&rtxn).map_err(self.err())? + self.gens[1].len(&rtxn).map_err(self.err())?)
    }

    /// Flushes to disk (the environment runs with NO_SYNC).
    pub fn sync(&self) -> Result<(), CacheError> {
        self.env.force_sync().map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_bound_the_size_and_keep_what_recurs() {
        let dir = tempfile::tempdir().unwrap();
        let c = EmbedCache::open(dir.path(), 10).unwrap();
        let k = |i: u32| key("m", &format!("text {i}"));
        c.put_many(&[(k(0), vec![0])]).unwrap();
        for i in 1..5 {
            c.put_many(&[(k(i), vec![i as u8])]).unwrap();
        }
        // Generation full (5): the next put turns over; 0..5 are the old one.
        c.put_many(&[(k(5), vec![5])]).unwrap();
        // 0 recurs: copied forward.
        assert_eq!(c.get_many(&[k(0)]).unwrap(), vec![Some(vec![0])]);
        for i in 6..9 {
            c.put_many(&[(k(i), vec![i as u8])]).unwrap();
        }
        // Turned over again: 1..5 are gone, 0 survived.
        c.put_many(&[(k(9), vec![9])]).unwrap();
        let got = c.get_many(&[k(0), k(1), k(9)]).unwrap();
        assert_eq!(got, vec![Some(vec![0]), None, Some(vec![9])]);
        assert!(c.entries().unwrap() <= 10);
        assert_ne!(key("a", "x"), key("b", "x"));
    }

    #[test]
    fn queries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = EmbedCache::open(dir.path(), 10).unwrap();
        let q = key("m", "nginx failed");
        assert_eq!(c.get_query(&q).unwrap(), None);
        c.put_query(&q, &[0.5, -0.25]).unwrap();
        assert_eq!(c.get_query(&q).unwrap(), Some(vec![0.5, -0.25]));
    }
}
