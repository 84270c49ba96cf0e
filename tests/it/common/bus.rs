//! A private dbus-daemon for a test: started with scripts/private-bus.sh
//! (the shipped policy), killed on drop, restartable on the same socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const EMIT: &str = env!("CARGO_BIN_EXE_op-dbus-emit");

pub struct Bus {
    pub dir: PathBuf,
    pub address: String,
    pub pid: i32,
}

impl Bus {
    pub fn start(dir: &Path) -> Bus {
        let out =
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/private-bus.sh")).arg(dir).output().unwrap();
        assert!(out.status.success(), "dbus-daemon did not start: {}", String::from_utf8_lossy(&out.stderr));
        let address = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let pid = std::fs::read_to_string(dir.join("bus.pid")).unwrap().trim().parse().unwrap();
        Bus { dir: dir.to_path_buf(), address, pid }
    }

    pub fn kill(&mut self) {
        if self.pid > 0 {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            // Wait until it is gone (it is not our child: it forked, so
            // whoever adopted it reaps it, maybe only later: a zombie has
            // closed its socket and counts as gone).
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.pid = 0;
        }
    }

    /// A new dbus-daemon on the same socket path.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("bus"));
        let b = Bus::start(&self.dir.clone());
        self.pid = b.pid;
        self.address = b.address.clone();
        std::mem::forget(b);
    }

    pub fn emit(&self, args: &[&str]) {
        let out = Command::new(EMIT).args(["--bus", &self.address]).args(args).output().unwrap();
        assert!(out.status.success(), "emit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // /proc/PID/stat: "pid (comm) state ...", comm may hold spaces.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.kill();
    }
}
