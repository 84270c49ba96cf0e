//! A BTRFS filesystem on a loop device for one test: an image file made
//! with truncate and mkfs.btrfs, mounted with `mount -o loop` (tests run
//! as root), unmounted and deleted on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    pub mount: PathBuf,
    image: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl LoopBtrfs {
    pub fn new(dir: &Path, mb: u64) -> LoopBtrfs {
        let image = dir.join("btrfs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        run(Command::new("truncate").arg("-s").arg(format!("{mb}M")).arg(&image));
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount));
        LoopBtrfs { mount, image }
    }
}

impl LoopBtrfs {
    /// Takes the filesystem away (a replica that is down).
    pub fn unmount(&self) {
        run(Command::new("umount").arg(&self.mount));
    }

    /// Brings the same filesystem back.
    pub fn remount(&self) {
        run(Command::new("mount").args(["-o", "loop"]).arg(&self.image).arg(&self.mount));
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Still busy (a process of a failed test): detach lazily.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}
