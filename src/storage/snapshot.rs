//! Snapshots of the state dir, taken by the ChainWriter between two
//! commits (so at a commit boundary: every block and vector written is
//! complete and synced). A snapshot is a folder
//! `@snapshots/<UTC time>-<head seq>/` holding `@timing`, `@vectors` and
//! `@cache`, so it is itself a state dir (`op-dbus verify --state-dir` works
//! on it), plus `snapshot.json` describing it.
//!
//! On BTRFS each area is a read-only subvolume snapshot (copy-on-write,
//! milliseconds). Elsewhere the fallback is correct for an append-only
//! chain: sealed segments and their vector files are hard links (they never
//! change again), the active ones are copied up to their committed length,
//! and the LMDB index is copied with `mdb_env_copy` (a consistent copy).
//!
//! The index in a snapshot may lag its chain (the index is derived and
//! written behind the chain); it never runs ahead of it, and opening the
//! snapshot as a state dir catches it up (`reindex` rebuilds it whole).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::btrfs;
use crate::chain::{Head, Layout};
use crate::codec::hex;
use crate::index::Index;

pub const SNAPSHOTS_DIR: &str = "@snapshots";
const META: &str = "snapshot.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AreaMeta {
    /// `@timing`, `@vectors` or `@cache`.
    pub area: String,
    /// Subvolume UUID and generation (BTRFS only).
    pub uuid: Option<String>,
    pub generation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: String,
    pub taken_ns: i64,
    /// The last block it holds.
    pub head_seq: u64,
    pub head_hash: String,
    /// `btrfs` or `copy`.
    pub kind: String,
    pub areas: Vec<AreaMeta>,
}

pub fn snapshots_dir(layout: &Layout) -> PathBuf {
    layout.state_dir.join(SNAPSHOTS_DIR)
}

/// `20261124T161200.123Z-000000000042`: sorts by time, says the head seq.
pub fn snapshot_name(taken_ns: i64, head_seq: u64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(taken_ns);
    format!("{}-{head_seq:012}", t.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Takes a snapshot of `layout` whose chain ends at `head`. Must be called
/// at a commit boundary, by the chain's writer. `index` is needed only off
/// BTRFS (to copy the LMDB environment consistently).
pub fn take(layout: &Layout, head: &Head, taken_ns: i64, index: Option<&Index>) -> io::Result<SnapshotMeta> {
    let head_seq = head.next_seq.checked_sub(1).ok_or_else(|| io::Error::other("the chain is empty"))?;
    let name = snapshot_name(taken_ns, head_seq);
    let root = snapshots_dir(layout);
    fs::create_dir_all(&root)?;
    let dir = root.join(&name);
    fs::create_dir(&dir)?;
    let btrfs = super::filesystem_type(&layout.state_dir) == "btrfs"
        && [&layout.timing, &layout.vectors, &layout.cache].iter().all(|a| btrfs::is_subvolume(a));
    let mut areas = Vec::new();
    let result = (|| -> io::Result<()> {
        for (area, src) in [("@timing", &layout.timing), ("@vectors", &layout.vectors), ("@cache", &layout.cache)] {
            let dest = dir.join(area);
            if btrfs {
                btrfs::snapshot_readonly(src, &dest)?;
                let info = btrfs::subvolume_info(&dest)?;
                areas.push(AreaMeta {
                    area: area.into(),
                    uuid: Some(btrfs::SubvolInfo::uuid_string(&info.uuid)),
                    generation: Some(info.generation),
                });
            } else {
                match area {
                    "@timing" | "@vectors" => copy_append_only(src, &dest)?,
                    _ => copy_cache(layout, &dest, index)?,
                }
                areas.push(AreaMeta { area: area.into(), uuid: None, generation: None });
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = remove(&dir);
        return Err(e);
    }
    let meta = SnapshotMeta {
        name,
        taken_ns,
        head_seq,
        head_hash: hex(&head.hash),
        kind: if btrfs { "btrfs" } else { "copy" }.into(),
        areas,
    };
    let mut f = fs::File::create(dir.join(META))?;
    f.write_all(serde_json::to_string_pretty(&meta).expect("serializable").as_bytes())?;
    f.sync_all()?;
    Ok(meta)
}

/// Sealed files are hard-linked, the newest file of each folder (the
/// active segment or vector file) is copied: at a commit boundary its
/// length is the committed length.
fn copy_append_only(src: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir(dest)?;
    let mut files = Vec::new();
    for e in fs::read_dir(src)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            copy_append_only(&p, &dest.join(e.file_name()))?;
        } else if p.extension().is_some_and(|x| x == "chain" || x == "vec" || x == "q8") {
            files.push(p);
        }
    }
    files.sort();
    let last = files.last().cloned();
    for f in files {
        let to = dest.join(f.file_name().expect("file name"));
        if Some(&f) == last.as_ref() {
            let len = fs::metadata(&f)?.len();
            let mut out = fs::File::create(&to)?;
            io::copy(&mut fs::File::open(&f)?.take(len), &mut out)?;
            out.sync_all()?;
        } else {
            fs::hard_link(&f, &to)?;
        }
    }
    Ok(())
}

fn copy_cache(layout: &Layout, dest: &Path, index: Option<&Index>) -> io::Result<()> {
    fs::create_dir(dest)?;
    if let Some(index) = index {
        index.copy_to(&dest.join("index")).map_err(|e| io::Error::other(e.to_string()))?;
    }
    // The hash files are derived too, and immutable once written.
    let hashes = layout.cache.join("hashes");
    if hashes.is_dir() {
        fs::create_dir(dest.join("hashes"))?;
        for e in fs::read_dir(&hashes)? {
            let e = e?;
            fs::hard_link(e.path(), dest.join("hashes").join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Every snapshot with its metadata, oldest first.
pub fn list(layout: &Layout) -> Vec<SnapshotMeta> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(snapshots_dir(layout)) else { return out };
    for e in entries.flatten() {
        if let Ok(text) = fs::read_to_string(e.path().join(META)) {
            if let Ok(m) = serde_json::from_str::<SnapshotMeta>(&text) {
                out.push(m);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Removes snapshots that were being taken when the process died (a
/// folder without `snapshot.json`): they were never recorded.
pub fn remove_incomplete(layout: &Layout) {
    let Ok(entries) = fs::read_dir(snapshots_dir(layout)) else { return };
    for e in entries.flatten() {
        if e.path().is_dir() && !e.path().join(META).exists() {
            match remove(&e.path()) {
                Ok(()) => tracing::warn!(path = %e.path().display(), "removed an unfinished snapshot"),
                Err(err) => {
                    tracing::error!(path = %e.path().display(), error = %err, "cannot remove an unfinished snapshot")
                }
            }
        }
    }
}

pub fn path_of(layout: &Layout, name: &str) -> PathBuf {
    snapshots_dir(layout).join(name)
}

/// Deletes a snapshot: its subvolumes (BTRFS) or its files.
pub fn remove(dir: &Path) -> io::Result<()> {
    for area in ["@timing", "@vectors", "@cache"] {
        let p = dir.join(area);
        if btrfs::is_subvolume(&p) {
            btrfs::delete_subvolume(&p)?;
        }
    }
    fs::remove_dir_all(dir)
}

/// Restores a snapshot as a new state dir `to` (which must not exist):
/// writable subvolume snapshots on the same BTRFS, else a copy.
pub fn restore(layout: &Layout, name: &str, to: &Path) -> io::Result<()> {
    let dir = path_of(layout, name);
    if !dir.join(META).exists() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no snapshot named {name}")));
    }
    if to.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", to.display())));
    }
    fs::create_dir_all(to)?;
    for area in ["@timing", "@vectors", "@cache"] {
        let src = dir.join(area);
        let dest = to.join(area);
        if btrfs::is_subvolume(&src)
            && super::filesystem_type(to) == "btrfs"
            && btrfs::snapshot_writable(&src, &dest).is_ok()
        {
            continue;
        }
        copy_tree(&src, &dest)?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let to = dest.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else if e.file_name() != "op-dbus.lock" {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}
