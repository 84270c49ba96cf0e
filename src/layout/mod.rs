//! The state dir: where each area lives and what it is made of. An area
//! is a BTRFS subvolume when the state dir is on BTRFS (so that snapshots
//! are copy-on-write and `btrfs send` can replicate them), a plain folder
//! otherwise. Detection is by filesystem type (statfs), never by trying
//! commands and ignoring their errors.
//!
//! This is the bottom of the house: the chain, the index, snapshots and
//! the search stores all find their files through [`Layout`].

pub mod btrfs;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The areas of a state dir, each a subvolume on BTRFS. Snapshots and
/// replicas hold the same three, under the same names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// The chain's segments (`@timing/*.chain`).
    Timing,
    /// Vector files next to the segments, and the search stores.
    Vectors,
    /// Derived data: the LMDB index, hash files, the embedding cache.
    Cache,
}

impl Area {
    pub const ALL: [Area; 3] = [Area::Timing, Area::Vectors, Area::Cache];

    /// The area's folder name in a state dir, a snapshot or a replica.
    pub fn dir_name(self) -> &'static str {
        match self {
            Area::Timing => "@timing",
            Area::Vectors => "@vectors",
            Area::Cache => "@cache",
        }
    }

    /// The area named `name` (`@timing`, ...), if any.
    pub fn from_dir_name(name: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| a.dir_name() == name)
    }
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// The folder that holds the snapshots, inside the state dir.
pub const SNAPSHOTS_DIR: &str = "@snapshots";

/// The three areas of a state dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub(crate) state_dir: PathBuf,
    pub(crate) timing: PathBuf,
    pub vectors: PathBuf,
    pub cache: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path, cache_dir: Option<&Path>) -> Layout {
        Layout {
            state_dir: state_dir.to_path_buf(),
            timing: state_dir.join(Area::Timing.dir_name()),
            vectors: state_dir.join(Area::Vectors.dir_name()),
            cache: cache_dir.map(Path::to_path_buf).unwrap_or_else(|| state_dir.join(Area::Cache.dir_name())),
        }
    }

    /// Creates the state dir and the areas: subvolumes on BTRFS, folders otherwise.
    pub fn create_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(&self.state_dir)?;
        for d in [&self.timing, &self.vectors, &self.cache] {
            create_area(d)?;
        }
        Ok(())
    }

    /// Where `area` is (the cache may live outside the state dir).
    pub fn area(&self, area: Area) -> &Path {
        match area {
            Area::Timing => &self.timing,
            Area::Vectors => &self.vectors,
            Area::Cache => &self.cache,
        }
    }

    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.timing.join(format!("{first_seq:020}.chain"))
    }

    pub fn vector_path(&self, model: &str, first_seq: u64) -> PathBuf {
        self.vectors.join(model).join(format!("{first_seq:020}.vec"))
    }

    /// First seqs of all segments, in order.
    pub fn segments(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.timing) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            // Exactly the names the writer makes: 20 digits, `.chain`.
            if let Some(stem) = name.strip_suffix(".chain") {
                if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(seq) = stem.parse::<u64>() {
                        out.push(seq);
                    }
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

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
