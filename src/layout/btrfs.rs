//! The BTRFS operations op-dbus needs, as ioctls: detect the filesystem,
//! create a subvolume, take a read-only snapshot, read a subvolume's UUID
//! and generation, delete a subvolume. No process is spawned on these paths
//! (a snapshot is taken between two commits, so it must be quick); only
//! `btrfs send`/`receive` run the btrfs-progs tools (see `replicate.rs`).
//!
//! The structs mirror `linux/btrfs.h` (`#[repr(C)]`, same field order and
//! sizes); the ioctl numbers are computed from their sizes as `_IOW`/`_IOR`
//! do, and a test checks the sizes against the kernel's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const BTRFS_IOCTL_MAGIC: u64 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

#[repr(C)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr
}

const IOC_SUBVOL_CREATE: u64 = iow(14, std::mem::size_of::<VolArgs>());
const IOC_SNAP_DESTROY: u64 = iow(15, std::mem::size_of::<VolArgs>());
const IOC_SNAP_CREATE_V2: u64 = iow(23, std::mem::size_of::<VolArgsV2>());
const IOC_GET_SUBVOL_INFO: u64 = ior(60, std::mem::size_of::<GetSubvolInfoArgs>());

/// Whether `path` is the root of a subvolume (its inode number is 256).
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.ino() == 256 && m.is_dir())
}

fn split(path: &Path) -> io::Result<(File, &[u8])> {
    let parent = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?.as_bytes();
    Ok((File::open(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?, name))
}

fn ioctl<T>(fd: &File, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a #[repr(C)] struct of the size encoded in `request`.
    // Some btrfs ioctls return a positive value on success (GET_SUBVOL_INFO: 1).
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the subvolume `path` (its parent must exist).
pub fn create_subvolume(path: &Path) -> io::Result<()> {
    let (parent, name) = split(path)?;
    if name.len() > BTRFS_PATH_NAME_MAX {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    args.name[..name.len()].copy_from_slice(name);
    ioctl(&parent, IOC_SUBVOL_CREATE, &mut args)
}

/// Takes a read-only snapshot of the subvolume `source` at `dest`.
pub fn snapshot_readonly(source: &Path, dest: &Path) -> io::Result<()> {
    snapshot(source, dest, BTRFS_SUBVOL_RDONLY)
}

/// Takes a writable snapshot (a restore).
pub fn snapshot_writable(source: &Path, dest: &Path) -> io::Result<()> {
    snapshot(source, dest, 0)
}

fn snapshot(source: &Path, dest: &Path, flags: u64) -> io::Result<()> {
    let src = File::open(source)?;
    let (parent, name) = split(dest)?;
    if name.len() > BTRFS_SUBVOL_NAME_MAX {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut args = VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags,
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name);
    ioctl(&parent, IOC_SNAP_CREATE_V2, &mut args)
}

/// Deletes the subvolume `path` (root, or `user_subvol_rm_allowed`).
pub fn delete_subvolume(path: &Path) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    args.name[..name.len()].copy_from_slice(name);
    ioctl(&parent, IOC_SNAP_DESTROY, &mut args)
}

/// What the chain records about a snapshot's subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubvolInfo {
    pub(crate) uuid: [u8; 16],
    pub(crate) generation: u64,
    pub(crate) received_uuid: [u8; 16],
}

impl SubvolInfo {
    /// The UUID in the usual 8-4-4-4-12 form.
    pub fn uuid_string(uuid: &[u8; 16]) -> String {
        let h = crate::codec::hex(uuid);
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

pub fn subvolume_info(path: &Path) -> io::Result<SubvolInfo> {
    let f = File::open(path)?;
    // SAFETY: all-zero is a valid value of this plain-data struct.
    let mut args: GetSubvolInfoArgs = unsafe { std::mem::zeroed() };
    ioctl(&f, IOC_GET_SUBVOL_INFO, &mut args)?;
    Ok(SubvolInfo { uuid: args.uuid, generation: args.generation, received_uuid: args.received_uuid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_linux_btrfs_h() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<GetSubvolInfoArgs>(), 504);
        // The numbers btrfs-progs uses (ioctl.h), as the kernel computes them.
        assert_eq!(IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(IOC_GET_SUBVOL_INFO, 0x81f8_943c);
    }
}
