//! Where the areas live: BTRFS subvolumes when the state dir is on BTRFS
//! (so that snapshots are copy-on-write and `btrfs send` can replicate
//! them), plain folders otherwise. Detection is by filesystem type
//! (statfs), never by trying commands and ignoring their errors.

pub mod btrfs;
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
