//! Where the areas live: BTRFS subvolumes when the state dir is on BTRFS
//! (so that snapshots are copy-on-write and `btrfs send` can replicate
//! them), plain folders otherwise. Detection is by filesystem type
//! (statfs), never by trying commands and ignoring their errors.

pub mod btrfs;
pub mod replicate;
pub mod retention;
pub mod snapshot;

use std::io;
use std::path::Path;

/// The filesystem type name of `path`, from statfs.
pub fn filesystem_type(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return "unknown".into() };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        btrfs::BTRFS_SUPER_MAGIC => "btrfs".into(),
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// Creates `dir` if it is missing: as a subvolume when its parent is on
/// BTRFS, else as a folder. An existing folder is left as it is.
pub fn create_area(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    if filesystem_type(parent) == "btrfs" {
        btrfs::create_subvolume(dir)
    } else {
        std::fs::create_dir(dir)
    }
}

/// One line for the log and `status`: how the areas are stored.
pub fn describe(areas: &[&Path]) -> String {
    let Some(first) = areas.first() else { return String::new() };
    let fs = filesystem_type(first);
    if fs != "btrfs" {
        return format!("plain folders ({fs}, not BTRFS: snapshots are hard-link copies, replication is off)");
    }
    let plain: Vec<String> = areas
        .iter()
        .filter(|a| !btrfs::is_subvolume(a))
        .map(|a| a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    if plain.is_empty() {
        "btrfs subvolumes".into()
    } else {
        format!("btrfs, but {} are plain folders made before op-dbus used subvolumes", plain.join(", "))
    }
}

/// Checks a snapshot against itself and the live chain: its chain
/// verifies and ends at the head it claims, the live chain has the same
/// block (same hash) at that seq (by the hash links, the whole prefix is
/// then the same), and on BTRFS its subvolumes are the ones recorded.
/// `None` if sound, else what is wrong.
pub fn verify_snapshot(
    live: &crate::chain::Layout,
    index: Option<&crate::index::Index>,
    s: &snapshot::SnapshotMeta,
) -> Option<String> {
    let dir = snapshot::path_of(live, &s.name);
    let snap = crate::chain::Layout::new(&dir, None);
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
    match crate::query::by_seq(live, index, s.head_seq) {
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
