//! Block hash -> seq lookups, kept out of LMDB on purpose.
//!
//! Block hashes are random, so a B-tree keyed by them takes every insert at
//! a random leaf: each indexed block dirtied a page, and over an import the
//! whole tree was read through LMDB's map (see BENCHMARKS.md). Hash lookups
//! are rare (`show HASH`), so instead each *sealed* segment gets one file,
//! written once when the indexer moves past the segment's last block:
//!
//! ```text
//! @cache/hashes/<first seq, 20 digits>.hashes
//!   header (32 bytes): magic "OPDHASHS", u32 LE version 1, u32 LE 0,
//!                      u64 LE first seq, u64 LE entry count
//!   entries (16 bytes each), sorted: hash[0..8] ‖ seq u64 BE
//! ```
//!
//! A lookup binary-searches every file (a few dozen 16-byte reads each) and
//! the caller scans the blocks no file covers yet (the active segment).
//! Like the rest of `@cache` these files are derived: missing ones are
//! rebuilt from the chain by the indexer, and `reindex` rewrites them all.
//! An 8-byte prefix can collide; callers compare the full hash in the block.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::Hash;
use crate::layout::Layout;

const MAGIC: &[u8; 8] = b"OPDHASHS";
const HEADER: u64 = 32;
const ENTRY: u64 = 16;

/// One entry: the first 8 bytes of a block hash and the block's seq.
pub type Entry = ([u8; 8], u64);

pub fn entry(hash: &Hash, seq: u64) -> Entry {
    (hash[..8].try_into().expect("8 bytes"), seq)
}

pub struct HashFiles {
    dir: PathBuf,
}

impl HashFiles {
    pub fn new(cache_dir: &Path) -> HashFiles {
        HashFiles { dir: cache_dir.join("hashes") }
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:020}.hashes"))
    }

    /// True if the segment's file is there and its size matches its header
    /// (a file cut short by a power loss is treated as missing and rebuilt).
    pub fn is_valid(&self, segment: u64) -> bool {
        let check = || -> std::io::Result<bool> {
            let f = fs::File::open(self.path(segment))?;
            let mut header = [0u8; HEADER as usize];
            f.read_exact_at(&mut header, 0)?;
            let count = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
            let first = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
            Ok(&header[..8] == MAGIC && first == segment && f.metadata()?.len() == HEADER + count * ENTRY)
        };
        check().unwrap_or(false)
    }

    /// Writes the file of a sealed segment (atomically: temp file, rename).
    pub fn write(&self, segment: u64, entries: &mut [Entry]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        entries.sort_unstable();
        let mut buf = Vec::with_capacity(HEADER as usize + entries.len() * ENTRY as usize);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&segment.to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (prefix, seq) in entries.iter() {
            buf.extend_from_slice(prefix);
            buf.extend_from_slice(&seq.to_be_bytes());
        }
        let tmp = self.dir.join(format!("{segment:020}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        drop(f);
        fs::rename(&tmp, self.path(segment))
    }

    /// Deletes every file (before a rebuild).
    pub fn clear(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn segments(&self) -> Vec<u64> {
        let mut out: Vec<u64> = fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".hashes")?.parse().ok()).collect()
            })
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Seqs whose hash starts like `hash`, from every file. A damaged file
    /// is skipped with a warning; [`covered_until`](Self::covered_until)
    /// does not count it, so the caller's scan covers its blocks.
    pub fn lookup(&self, hash: &Hash) -> Vec<u64> {
        let mut out = Vec::new();
        for seg in self.segments() {
            if let Err(e) = self.lookup_in(seg, &hash[..8], &mut out) {
                tracing::warn!(segment = seg, error = %e, "hash file unreadable; run `op-dbus reindex`");
            }
        }
        out
    }

    fn lookup_in(&self, segment: u64, prefix: &[u8], out: &mut Vec<u64>) -> std::io::Result<()> {
        let f = fs::File::open(self.path(segment))?;
        let mut header = [0u8; HEADER as usize];
        f.read_exact_at(&mut header, 0)?;
        let count = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
        if &header[..8] != MAGIC || f.metadata()?.len() != HEADER + count * ENTRY {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad hash file"));
        }
        let read = |i: u64| -> std::io::Result<[u8; 16]> {
            let mut e = [0u8; 16];
            f.read_exact_at(&mut e, HEADER + i * ENTRY)?;
            Ok(e)
        };
        // First entry whose prefix is >= the one sought.
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if &read(mid)?[..8] < prefix {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        while lo < count {
            let e = read(lo)?;
            if &e[..8] != prefix {
                break;
            }
            out.push(u64::from_be_bytes(e[8..].try_into().expect("8 bytes")));
            lo += 1;
        }
        Ok(())
    }

    /// The first seq no file covers: the first seq of the oldest segment
    /// without a sound hash file (`u64::MAX` if every segment has one).
    pub fn covered_until(&self, layout: &Layout) -> u64 {
        let segments = layout.segments().unwrap_or_default();
        segments.into_iter().find(|s| !self.is_valid(*s)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_entry_and_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let files = HashFiles::new(dir.path());
        let mut entries: Vec<Entry> = (0..1000u64).map(|s| ((s * 7919 % 1000).to_be_bytes(), s)).collect();
        entries.push((5u64.to_be_bytes(), 2000)); // a prefix collision
        files.write(0, &mut entries).unwrap();
        let mut more: Vec<Entry> = vec![(5u64.to_be_bytes(), 3000), (u64::MAX.to_be_bytes(), 3001)];
        files.write(3000, &mut more).unwrap();
        for (prefix, seq) in entries.iter().filter(|e| e.1 < 1000) {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(prefix);
            let found = files.lookup(&hash);
            assert!(found.contains(seq), "{seq}");
        }
        let mut five = [0u8; 32];
        five[..8].copy_from_slice(&5u64.to_be_bytes());
        let mut found = files.lookup(&five);
        found.sort_unstable();
        assert_eq!(found.len(), 3);
        assert_eq!(&found[1..], &[2000, 3000]);
        assert!(files.lookup(&[0xee; 32]).is_empty());
        assert!(files.is_valid(0) && files.is_valid(3000));
        // A file cut short is not valid (and so not counted as covering).
        let f = fs::OpenOptions::new().write(true).open(files.path(3000)).unwrap();
        f.set_len(40).unwrap();
        assert!(!files.is_valid(3000));
        assert!(!files.lookup(&five).contains(&3000));
        files.clear().unwrap();
        assert!(files.lookup(&five).is_empty());
    }
}
