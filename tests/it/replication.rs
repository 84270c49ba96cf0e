//! Replication with btrfs send/receive between two loop-mounted BTRFS
//! filesystems: full then incremental, a replica that is down then back, a
//! failing command, names with shell metacharacters, a corrupted stream,
//! and rotation keeping a replica's parent.

use crate::common;
use crate::common::btrfs as loop_btrfs;
use crate::common::bus as private_bus;

use std::path::{Path, PathBuf};
use std::process::Command;

use loop_btrfs::LoopBtrfs;

/// Fields drop in order: the filesystems are unmounted before the temp
/// dir that holds their mount points is removed (the other way round, the
/// removal failed on the mounts and left the dir behind).
struct Setup {
    _src: LoopBtrfs,
    dst: Option<LoopBtrfs>,
    root: PathBuf,
    state: PathBuf,
    cfg: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(replicas: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let src = LoopBtrfs::new(&dir.path().join("a"), 400);
    let dst = LoopBtrfs::new(&dir.path().join("b"), 400);
    let root = dir.path().to_path_buf();
    let state = src.mount.join("state");
    let cfg = root.join("c.toml");
    let text = replicas.replace("{B}", dst.mount.to_str().unwrap()).replace("{ROOT}", root.to_str().unwrap());
    std::fs::write(&cfg, format!("{extra}\n{text}")).unwrap();
    Setup { _src: src, dst: Some(dst), root, state, cfg, _dir: dir }
}

fn op(s: &Setup, args: &[&str]) -> common::Run {
    let out = Command::new(env!("CARGO_BIN_EXE_op-dbus"))
        .arg("--config")
        .arg(&s.cfg)
        .arg("--state-dir")
        .arg(&s.state)
        .args(args)
        .env("OP_DBUS_LOG", "warn")
        .output()
        .unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn import(s: &Setup, from: u64, n: u64) {
    let lines: Vec<String> = (from..from + n)
        .map(|i| {
            common::line(
                "org.example.app",
                "org.example.app.Changed",
                serde_json::json!({"i": i, "pad": "y".repeat(200)}),
            )
        })
        .collect();
    let file = s.root.join(format!("in{from}.jsonl"));
    common::write_lines(&file, lines);
    op(s, &["import", file.to_str().unwrap()]).expect_code(0);
}

fn snapshot(s: &Setup) -> String {
    let r = op(s, &["snapshot", "now"]);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

/// (snapshot name, incremental, bytes) from `replicate` output lines.
fn sent(r: &common::Run) -> (String, bool, u64) {
    let line = r.stdout.lines().find(|l| l.contains(": sent ")).unwrap_or_else(|| panic!("nothing sent: {r:?}"));
    let rest = line.split(": sent ").nth(1).unwrap();
    let name = rest.split(' ').next().unwrap().to_string();
    let bytes = rest.rsplit(", ").next().unwrap().trim_end_matches(" bytes)").parse().unwrap();
    (name, rest.contains("incremental"), bytes)
}

fn verify_received(dir: &Path) {
    let (code, report) = common::verify_json(dir);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn full_then_incremental_and_the_received_snapshot_verifies() {
    let s = setup("[[replica]]\nname = \"b\"\ndir = \"{B}/replica\"\n", "");
    import(&s, 0, 5000);
    let first = snapshot(&s);
    let r = op(&s, &["replicate"]);
    r.expect_code(0);
    let (name, incremental, full_bytes) = sent(&r);
    assert_eq!((name.as_str(), incremental), (first.as_str(), false));
    let b = s.dst.as_ref().unwrap().mount.join("replica");
    verify_received(&b.join(&first));

    import(&s, 5000, 50);
    let second = snapshot(&s);
    let r = op(&s, &["replicate"]);
    let (name, incremental, inc_bytes) = sent(&r);
    assert_eq!((name.as_str(), incremental), (second.as_str(), true));
    assert!(inc_bytes * 10 < full_bytes, "incremental {inc_bytes} bytes vs full {full_bytes}");
    verify_received(&b.join(&second));
    // 5000 imports, the first snapshot's record (seq 5000), 50 more.
    assert_eq!(common::verify_json(&b.join(&second)).1["head_seq"], 5050);
    op(&s, &["replicate"]).expect_code(0);
    assert!(op(&s, &["replicate"]).stdout.contains("b: up to date"));
}

#[test]
fn a_replica_that_is_down_catches_up_when_back() {
    let s = setup("[[replica]]\nname = \"b\"\ndir = \"{B}/replica\"\n", "");
    let dst = s.dst.as_ref().unwrap();
    import(&s, 0, 1000);
    snapshot(&s);
    op(&s, &["replicate"]).expect_code(0);
    // Down: the filesystem is gone (the folder under the mount point is not BTRFS).
    dst.unmount();
    import(&s, 1000, 1000);
    let latest = snapshot(&s);
    let r = op(&s, &["replicate"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("b: FAILED"), "{}", r.stdout);
    // Back: one incremental transfer brings it up to date, nothing missing.
    dst.remount();
    let r = op(&s, &["replicate"]);
    let (name, incremental, _) = sent(&r);
    assert_eq!((name.as_str(), incremental), (latest.as_str(), true));
    let received = dst.mount.join("replica").join(&latest);
    verify_received(&received);
    assert_eq!(common::verify_json(&received).1["head_seq"], 2000);
}

#[test]
fn failing_command_and_shell_metacharacters() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("PWNED");
    let replicas = format!(
        "[[replica]]\nname = \"fails\"\ncommand = [\"false\"]\n\n[[replica]]\nname = \"x; touch {p} #\"\ndir = \"{{B}}/$(touch {p})\"\n",
        p = pwned.display()
    );
    let s = setup(&replicas, "");
    import(&s, 0, 100);
    snapshot(&s);
    let r = op(&s, &["replicate"]);
    assert_eq!(r.code, 3);
    assert!(r.stdout.contains("fails: FAILED"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("x; touch {} #: sent", pwned.display())), "{}", r.stdout);
    assert!(!pwned.exists(), "a name or path was run by a shell");
    let literal = s.dst.as_ref().unwrap().mount.join(format!("$(touch {})", pwned.display()));
    assert!(literal.is_dir(), "the path is used literally");
    // The failing replica's error is kept in the progress file.
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.state.join("replication.json")).unwrap()).unwrap();
    assert!(progress["fails"]["last_error"].as_str().unwrap().contains("receiver failed"));
}

#[test]
fn a_corrupted_stream_is_refused_and_nothing_is_acknowledged() {
    // A receiving command that passes the stream on, flipping one byte in
    // its middle when told to: the same command without the flip is the
    // control that shows the failure is the corruption.
    let script = "import os,subprocess,sys\n\
                  b=bytearray(sys.stdin.buffer.read())\n\
                  if sys.argv[2]=='flip': b[len(b)//2]^=0xff\n\
                  os.makedirs(sys.argv[1],exist_ok=True)\n\
                  sys.exit(subprocess.run(['btrfs','receive','-q',sys.argv[1]],input=bytes(b)).returncode)";
    let replica = |name: &str, sub: &str, mode: &str| {
        format!("[[replica]]\nname = \"{name}\"\ncommand = [\"python3\", \"-c\", {script:?}, \"{{B}}/{sub}/{{snapshot}}\", \"{mode}\"]\n")
    };
    let s = setup(&(replica("bad", "r", "flip") + &replica("good", "g", "keep")), "");
    import(&s, 0, 2000);
    let name = snapshot(&s);
    let r = op(&s, &["replicate"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("bad: FAILED") && r.stdout.contains("good: sent"), "{}", r.stdout);
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.state.join("replication.json")).unwrap()).unwrap();
    assert!(progress["bad"]["acked"].is_null(), "{progress}");
    assert_eq!(progress["good"]["acked"], name.as_str());
    verify_received(&s.dst.as_ref().unwrap().mount.join("g").join(&name));
}

#[test]
fn rotation_keeps_the_parent_a_replica_needs() {
    let s = setup(
        "[[replica]]\nname = \"b\"\ndir = \"{B}/replica\"\n",
        "[snapshot]\nmax_recent = 1\nhourly = 0\ndaily = 0\nweekly = 0\n",
    );
    import(&s, 0, 500);
    let parent = snapshot(&s);
    op(&s, &["replicate"]).expect_code(0);
    for i in 1..4 {
        import(&s, i * 500, 500);
        snapshot(&s);
    }
    let names: Vec<String> = op(&s, &["snapshots", "list", "--json"])
        .json_lines()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], parent, "the replica's parent survived rotation");
    let (_, incremental, _) = sent(&op(&s, &["replicate"]));
    assert!(incremental);
}

/// The daemon's Replicator: snapshots reach the replica without anyone
/// running `replicate`, and the lag goes to zero.
#[test]
fn the_daemon_replicates_its_snapshots() {
    let s = setup("[[replica]]\nname = \"b\"\ndir = \"{B}/replica\"\n", "[snapshot]\ninterval = \"per-op\"\n");
    let bus = private_bus::Bus::start(&s.root.join("bus"));
    let port = common::free_port();
    let mut d = Command::new(env!("CARGO_BIN_EXE_op-dbus"))
        .arg("--config")
        .arg(&s.cfg)
        .arg("--state-dir")
        .arg(&s.state)
        .args(["run", "--no-service", "--bus", &bus.address])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("OP_DBUS_LOG", "warn")
        .spawn()
        .unwrap();
    common::wait_recording(&mut d, port);
    bus.emit(&["load", "--count", "500"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let acked = loop {
        let p: serde_json::Value = std::fs::read_to_string(s.state.join("replication.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if p["b"]["acked_head_seq"].as_u64().is_some_and(|h| h >= 500) {
            break p["b"]["acked"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the replica never caught up: {p}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    verify_received(&s.dst.as_ref().unwrap().mount.join("replica").join(&acked));
}

/// Root on the source rewrites an old block (every later hash recomputed)
/// and, since the host refuses to snapshot it, also its checkpoint logs:
/// the replica's last checkpoint signed another tree at its size, so the
/// transfer is refused before the replica receives anything.
#[test]
fn a_replica_refuses_a_rewritten_history() {
    let s = setup("[[replica]]\nname = \"b\"\ndir = \"{B}/replica\"\n", "");
    import(&s, 0, 500);
    snapshot(&s);
    op(&s, &["replicate"]).expect_code(0);
    let replica = s.dst.as_ref().unwrap().mount.join("replica");
    let held = std::fs::read_dir(&replica).unwrap().count();

    let layout = op_dbus::layout::Layout::new(&s.state, None);
    op_dbus::faults::rewrite_history(&layout, 100, |d| {
        let last = d.len() - 1;
        assert_eq!(d[last], b'y');
        d[last] = b'z';
    })
    .unwrap();
    // The host refuses to go on from a chain that departs from what it
    // signed; root discards the checkpoint logs and the derived data too.
    let r = op(&s, &["snapshot", "now"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("departs from the last signed checkpoint"), "{r:?}");
    for f in ["checkpoints", "cosigned"] {
        let _ = std::fs::remove_file(s.state.join("@timing").join(f));
    }
    op(&s, &["reindex"]).expect_code(0);
    import(&s, 500, 10);
    let forged = snapshot(&s);
    let r = op(&s, &["replicate"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("b: FAILED") && r.stdout.contains("the history was rewritten"), "{r:?}");
    assert!(!replica.join(&forged).exists(), "the forged snapshot reached the replica");
    assert_eq!(std::fs::read_dir(&replica).unwrap().count(), held);
}
