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

use crate::chain::Head;
use crate::codec::hex;
use crate::index::Index;
use crate::layout::Layout;
use crate::layout::{btrfs, filesystem_type, Area, SNAPSHOTS_DIR};

const META: &str = "snapshot.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AreaMeta {
    /// `@timing`, `@vectors` or `@cache`.
    pub(crate) area: String,
    /// Subvolume UUID and generation (BTRFS only).
    pub(crate) uuid: Option<String>,
    pub(crate) generation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: String,
    pub(crate) taken_ns: i64,
    /// The last block it holds.
    pub head_seq: u64,
    pub(crate) head_hash: String,
    /// `btrfs` or `copy`.
    pub(crate) kind: String,
    pub(crate) areas: Vec<AreaMeta>,
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
    let btrfs = filesystem_type(&layout.state_dir) == "btrfs"
        && [&layout.timing, &layout.vectors, &layout.cache].iter().all(|a| btrfs::is_subvolume(a));
    let mut areas = Vec::new();
    let result = (|| -> io::Result<()> {
        for area in Area::ALL {
            let (src, dest) = (layout.area(area), dir.join(area.dir_name()));
            if btrfs {
                btrfs::snapshot_readonly(src, &dest)?;
                let info = btrfs::subvolume_info(&dest)?;
                areas.push(AreaMeta {
                    area: area.dir_name().into(),
                    uuid: Some(btrfs::SubvolInfo::uuid_string(&info.uuid)),
                    generation: Some(info.generation),
                });
            } else {
                match area {
                    Area::Timing | Area::Vectors => copy_append_only(src, &dest)?,
                    Area::Cache => copy_cache(layout, &dest, index)?,
                }
                areas.push(AreaMeta { area: area.dir_name().into(), uuid: None, generation: None });
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
    for area in Area::ALL {
        let p = dir.join(area.dir_name());
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
    for area in Area::ALL {
        let src = dir.join(area.dir_name());
        let dest = to.join(area.dir_name());
        if btrfs::is_subvolume(&src) && filesystem_type(to) == "btrfs" && btrfs::snapshot_writable(&src, &dest).is_ok()
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

/// Checks a snapshot against itself and the live chain: its chain
/// verifies and ends at the head it claims, the live chain has the same
/// block (same hash) at that seq (by the hash links, the whole prefix is
/// then the same), and on BTRFS its subvolumes are the ones recorded.
/// `None` if sound, else what is wrong.
pub fn verify(live: &crate::layout::Layout, index: Option<&crate::index::Index>, s: &SnapshotMeta) -> Option<String> {
    let dir = path_of(live, &s.name);
    let snap = crate::layout::Layout::new(&dir, None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = match crate::chain::verify::verify(&snap, threads) {
        Ok(r) => r,
        Err(e) => return Some(format!("cannot read the snapshot's chain: {e}")),
    };
    if let Some(f) = report.fault {
        return Some(format!("its chain fails at seq {}: {} ({})", f.seq, f.kind.describe(), f.detail));
    }
    if report.head_seq != Some(s.head_seq) || report.head_hash.as_deref() != Some(s.head_hash.as_str()) {
        return Some(format!(
            "its chain ends at seq {:?} hash {:?}, but it was taken at seq {} hash {}",
            report.head_seq, report.head_hash, s.head_seq, s.head_hash
        ));
    }
    match crate::index::query::by_seq(live, index, s.head_seq) {
        Ok(Some(b)) if crate::codec::hex(&b.hash) == s.head_hash => {}
        Ok(Some(b)) => {
            return Some(format!(
                "the live chain has hash {} at seq {}, the snapshot {}",
                crate::codec::hex(&b.hash),
                s.head_seq,
                s.head_hash
            ))
        }
        Ok(None) => return Some(format!("the live chain has no seq {}", s.head_seq)),
        Err(e) => return Some(format!("cannot read the live chain: {e}")),
    }
    for a in &s.areas {
        if let Some(uuid) = &a.uuid {
            match btrfs::subvolume_info(&dir.join(&a.area)) {
                Ok(info) if &btrfs::SubvolInfo::uuid_string(&info.uuid) == uuid => {}
                Ok(info) => {
                    return Some(format!(
                        "{} is subvolume {}, not the {uuid} that was recorded",
                        a.area,
                        btrfs::SubvolInfo::uuid_string(&info.uuid)
                    ))
                }
                Err(e) => return Some(format!("{}: {e}", a.area)),
            }
        }
    }
    None
}

/// The verdict on one snapshot (`snapshots verify --json` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotCheck {
    pub(crate) name: String,
    pub(crate) ok: bool,
    /// What is wrong, if anything (see [`verify`]).
    pub(crate) problem: Option<String>,
    /// The seq the snapshot was taken at.
    #[serde(skip)]
    pub(crate) head_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot named {0}")]
    NotFound(String),
}

/// `op-dbus snapshots verify`: [`verify`] for the snapshot called `name`,
/// or for every snapshot, oldest first. Lazy: each snapshot is verified
/// when the iterator reaches it, so a caller can report as it goes.
pub fn verify_named<'a>(
    live: &'a Layout,
    index: Option<&'a Index>,
    name: Option<&str>,
) -> Result<impl Iterator<Item = SnapshotCheck> + 'a, SnapshotError> {
    let chosen: Vec<SnapshotMeta> = list(live).into_iter().filter(|s| name.is_none_or(|n| s.name == n)).collect();
    if let (Some(n), true) = (name, chosen.is_empty()) {
        return Err(SnapshotError::NotFound(n.to_string()));
    }
    Ok(chosen.into_iter().map(move |s| {
        let problem = verify(live, index, &s);
        SnapshotCheck { ok: problem.is_none(), problem, head_seq: s.head_seq, name: s.name }
    }))
}
