//! Snapshots on a loop-mounted BTRFS (and the fallback on an ordinary
//! folder), through the real binary: subvolumes, `snapshot now`, the
//! snapshot record, `snapshots verify` catching a modified snapshot,
//! restore, rotation, per-op snapshots under load and after kill -9.

use crate::common;
use crate::common::btrfs as loop_btrfs;
use crate::common::bus as private_bus;

use std::path::Path;
use std::process::Command;

use loop_btrfs::LoopBtrfs;
use serde_json::Value;

fn import_n(state: &Path, from: u64, n: u64) {
    let lines: Vec<String> = (from..from + n)
        .map(|i| common::line("org.example.app", "org.example.app.Changed", serde_json::json!({"i": i})))
        .collect();
    let file = state.with_extension(format!("{from}.jsonl"));
    common::import_lines(state, &file, lines, &[], &[]).expect_code(0);
}

fn snapshot_now(state: &Path) -> String {
    let r = common::run(state, &["snapshot", "now"]);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

fn list(state: &Path) -> Vec<Value> {
    common::run(state, &["snapshots", "list", "--json"]).json_lines()
}

/// An event for the in-process pipeline tests.
fn event(i: u64) -> op_dbus::messages::RawEvent {
    op_dbus::messages::RawEvent {
        source: op_dbus::codec::Source::Submit,
        plugin_id: "org.example.app".into(),
        operation: "org.example.app.Changed".into(),
        path: None,
        sender: None,
        creds: None,
        captured_ns: op_dbus::codec::now_ns(),
        signature: String::new(),
        data: op_dbus::codec::Value::UInt(i),
    }
}

/// An in-process pipeline at the product defaults, snapshotting every
/// `period` (not an interval the configuration accepts: the timer is the
/// same code at any period) and keeping every snapshot.
fn timed_pipeline(state: &Path, period: std::time::Duration) -> op_dbus::pipeline::Pipeline {
    use op_dbus::config::{Config, SnapshotConfig};
    use op_dbus::pipeline::{spawn_pipeline, PipelineConfig};
    use op_dbus::storage::retention::{Interval, Retention};
    let mut cfg = PipelineConfig {
        layout: op_dbus::layout::Layout::new(state, None),
        proof: crate::common::quick_proof(),
        ..PipelineConfig::new(&Config::default())
    };
    cfg.snapshot = SnapshotConfig {
        interval: Interval::Every(period),
        retention: Retention { recent: 100_000, ..Default::default() },
    };
    spawn_pipeline(cfg).unwrap()
}

fn is_subvolume(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino() == 256
}

#[test]
fn areas_are_subvolumes_on_btrfs_and_folders_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 300);
    let state = fs.mount.join("state");
    import_n(&state, 0, 10);
    for area in ["@timing", "@vectors", "@cache"] {
        assert!(is_subvolume(&state.join(area)), "{area} is not a subvolume");
    }
    assert_eq!(common::status_json(&state)["storage"], "btrfs subvolumes");

    let plain = dir.path().join("plain");
    import_n(&plain, 0, 10);
    assert!(!is_subvolume(&plain.join("@timing")));
    let storage = common::status_json(&plain)["storage"].as_str().unwrap().to_string();
    assert!(storage.starts_with("plain folders"), "{storage}");
}

#[test]
fn snapshot_is_recorded_verified_restorable_and_a_modified_one_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 400);
    let state = fs.mount.join("state");
    import_n(&state, 0, 3000);
    let name = snapshot_now(&state);
    let snaps = list(&state);
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s["name"], name.as_str());
    assert_eq!(s["kind"], "btrfs");
    assert_eq!(s["head_seq"], 2999);
    assert!(name.ends_with("-000000002999"), "{name}");
    let snap_dir = state.join("@snapshots").join(&name);
    for area in ["@timing", "@vectors", "@cache"] {
        assert!(is_subvolume(&snap_dir.join(area)));
        let show = Command::new("btrfs").args(["subvolume", "show"]).arg(snap_dir.join(area)).output().unwrap();
        let text = String::from_utf8_lossy(&show.stdout);
        let uuid = s["areas"].as_array().unwrap().iter().find(|a| a["area"] == area).unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains(&uuid), "{area}: recorded uuid {uuid} not in:\n{text}");
        assert!(text.contains("readonly"), "{area} is not read-only:\n{text}");
    }

    // The chain records the snapshot, after the blocks it holds.
    let recs = common::log_json(&state, &["--plugin", "org.opdbus", "--operation", "org.opdbus.Snapshot"]);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["source"], "internal");
    assert_eq!(recs[0]["seq"], 3000);
    assert_eq!(recs[0]["data"]["name"], name.as_str());
    assert_eq!(recs[0]["data"]["head_seq"], 2999);
    assert_eq!(recs[0]["data"]["head_hash"], s["head_hash"]);

    // The snapshot is a state dir of its own, and matches the live chain.
    assert_eq!(common::verify_json(&snap_dir).0, 0);
    common::run(&state, &["snapshots", "verify"]).expect_code(0);

    // More appends do not disturb it.
    import_n(&state, 3000, 500);
    common::run(&state, &["snapshots", "verify", &name]).expect_code(0);

    // Restore: a writable state dir that verifies, with its index.
    let restored = fs.mount.join("restored");
    common::run(&state, &["snapshots", "restore", &name, "--to", restored.to_str().unwrap()]).expect_code(0);
    let (code, report) = common::verify_json(&restored);
    assert_eq!((code, report["head_seq"].as_u64()), (0, Some(2999)));
    assert_eq!(common::log_json(&restored, &["--limit", "1"])[0]["seq"], 2999);

    // Make the snapshot writable and change one byte: verify names it.
    let seg = std::fs::read_dir(snap_dir.join("@timing")).unwrap().next().unwrap().unwrap().path();
    let st = Command::new("btrfs")
        .args(["property", "set", "-f", "-ts"])
        .arg(snap_dir.join("@timing"))
        .args(["ro", "false"])
        .status()
        .unwrap();
    assert!(st.success());
    common::xor_byte(&seg, 200, 0x01);
    let out = common::run(&state, &["snapshots", "verify", &name]);
    out.expect_code(1);
    assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
}

#[test]
fn rotation_keeps_the_most_recent() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 300);
    let state = fs.mount.join("state");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[snapshot]\nmax_recent = 2\nhourly = 0\ndaily = 0\nweekly = 0\n").unwrap();
    let mut names = Vec::new();
    for i in 0..4 {
        import_n(&state, i * 10, 10);
        let out = Command::new(env!("CARGO_BIN_EXE_op-dbus"))
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state)
            .args(["snapshot", "now"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        names.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let left: Vec<String> = list(&state).iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, names[2..].to_vec());
    // Rotated snapshots are gone from disk, subvolumes included.
    assert!(!state.join("@snapshots").join(&names[0]).exists());
}

#[test]
fn off_btrfs_snapshots_are_hard_links_and_copies_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.toml");
    // Small segments so that some are sealed.
    std::fs::write(&cfg, "[chain]\nsegment_max_mb = 1\n").unwrap();
    let lines: Vec<String> = (0..12_000)
        .map(|i| {
            common::line(
                "org.example.app",
                "org.example.app.Changed",
                serde_json::json!({"i": i, "pad": "x".repeat(100)}),
            )
        })
        .collect();
    let input = dir.path().join("in.jsonl");
    common::write_lines(&input, lines);
    let out = Command::new(env!("CARGO_BIN_EXE_op-dbus"))
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&state)
        .args(["import"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let segs = common::segments(&state);
    assert!(segs.len() >= 2, "need a sealed segment");
    let name = snapshot_now(&state);
    let s = &list(&state)[0];
    assert_eq!(s["kind"], "copy");
    let snap = state.join("@snapshots").join(&name);
    use std::os::unix::fs::MetadataExt;
    let sealed = &segs[0].1;
    let linked = snap.join("@timing").join(sealed.file_name().unwrap());
    assert_eq!(
        std::fs::metadata(sealed).unwrap().ino(),
        std::fs::metadata(&linked).unwrap().ino(),
        "sealed segment is a hard link"
    );
    let active = &segs.last().unwrap().1;
    let copied = snap.join("@timing").join(active.file_name().unwrap());
    assert_ne!(
        std::fs::metadata(active).unwrap().ino(),
        std::fs::metadata(&copied).unwrap().ino(),
        "active segment is a copy"
    );
    assert_eq!(common::verify_json(&snap).0, 0);
    common::run(&state, &["snapshots", "verify"]).expect_code(0);
    // The copied index opens and matches the chain.
    let restored = dir.path().join("restored");
    common::run(&state, &["snapshots", "restore", &name, "--to", restored.to_str().unwrap()]).expect_code(0);
    assert_eq!(common::log_json(&restored, &["--limit", "1"])[0]["seq"], s["head_seq"]);
}

/// Timed snapshots come from a timer: taken while nothing arrives, never
/// twice for the same head, and a final one at shutdown.
#[test]
fn timed_snapshots_run_from_a_timer_and_one_is_taken_at_shutdown() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 300);
    let state = fs.mount.join("state");
    let system = actix_rt::System::new();
    let (during, final_head) = system.block_on(async {
        let p = timed_pipeline(&state, Duration::from_millis(300));
        let mut last_event = 0;
        for i in 0..50 {
            last_event = p.submit(vec![event(i)]).await.unwrap().last_seq;
        }
        // Nothing arrives now; the timer still fires, once for what is new,
        // then finds nothing new (a snapshot's own record is not news).
        let layout = op_dbus::layout::Layout::new(&state, None);
        let during = common::wait_for_async("a timed snapshot of all 50 events", Duration::from_secs(30), || {
            let l = op_dbus::storage::snapshot::list(&layout);
            l.last().is_some_and(|s| s.head_seq >= last_event).then_some(l)
        })
        .await;
        // Three idle ticks: what must not happen has no condition to wait on.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(op_dbus::storage::snapshot::list(&layout), during, "idle ticks took snapshots of nothing new");
        let last = p.submit(vec![event(99)]).await.unwrap();
        p.shutdown(Duration::from_secs(30)).await.unwrap();
        (during, last.last_seq)
    });
    // Taken while idle, covering all 50 events (and the records of any
    // snapshot the timer took while they were arriving).
    assert!(during.last().unwrap().head_seq >= 49, "{during:?}");
    let all = list(&state);
    let last = all.last().unwrap();
    assert!(
        last["head_seq"].as_u64().unwrap() >= final_head,
        "the shutdown snapshot holds everything submitted: {last}"
    );
    let heads: Vec<u64> = all.iter().map(|s| s["head_seq"].as_u64().unwrap()).collect();
    let mut dedup = heads.clone();
    dedup.dedup();
    assert_eq!(heads, dedup, "never two snapshots of the same head");
    common::run(&state, &["snapshots", "verify"]).expect_code(0);
}

fn daemon(state: &Path, bus: &private_bus::Bus, interval: &str) -> std::process::Child {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_op-dbus"))
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(state)
        .args(["run", "--no-service", "--bus", &bus.address])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("OPDBUS_SNAPSHOT_INTERVAL", interval)
        .env("OP_DBUS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Recording once its chain exists and the bus sees its monitor.
    common::wait_recording(&mut child, port);
    child
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn per_op_snapshots_follow_commits_and_all_verify() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 400);
    let bus = private_bus::Bus::start(&dir.path().join("bus"));
    let state = fs.mount.join("state");
    let mut d = Kill(daemon(&state, &bus, "per-op"));
    for _ in 0..5 {
        bus.emit(&["load", "--count", "200", "--rate", "2000"]);
        // Paces the bursts apart (not a wait for anything).
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    assert!(d.0.wait().unwrap().success());
    let all = list(&state);
    assert!(all.len() >= 5, "per-op took only {} snapshots", all.len());
    // Each was recorded, and the last one was taken at shutdown, after the
    // last event: only its own record follows it.
    let recs = common::log_json(&state, &["--plugin", "org.opdbus", "--operation", "org.opdbus.Snapshot"]);
    assert!(recs.len() >= all.len());
    let head = common::verify_json(&state).1["head_seq"].as_u64().unwrap();
    assert_eq!(all.last().unwrap()["head_seq"].as_u64().unwrap() + 1, head);
    common::run(&state, &["snapshots", "verify"]).expect_code(0);
}

#[test]
fn after_kill_nine_under_load_every_snapshot_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 600);
    let bus = private_bus::Bus::start(&dir.path().join("bus"));
    let state = fs.mount.join("state");
    for round in 0..3 {
        let mut d = Kill(daemon(&state, &bus, "per-op"));
        let emitter = Command::new(private_bus::EMIT)
            .args(["--bus", &bus.address, "load", "--count", "100000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut emitter = Kill(emitter);
        // Load for a while, then kill at a different point each round.
        std::thread::sleep(std::time::Duration::from_millis(700 + round * 300));
        unsafe { libc::kill(d.0.id() as i32, libc::SIGKILL) };
        let _ = d.0.wait();
        let _ = emitter.0.kill();
    }
    // A restart cleans up a snapshot cut short and recovers the chain.
    let mut d = Kill(daemon(&state, &bus, "off"));
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    assert!(d.0.wait().unwrap().success());
    let all = list(&state);
    assert!(!all.is_empty(), "no snapshot was taken under load");
    common::run(&state, &["snapshots", "verify"]).expect_code(0);
    assert_eq!(common::verify_json(&state).0, 0);
    let dirs = std::fs::read_dir(state.join("@snapshots")).unwrap().count();
    assert_eq!(dirs, all.len(), "unfinished snapshot folders were left behind");
}

/// Requested snapshots racing the timer's: one at a time, never two of the
/// same head.
#[test]
fn requested_and_timed_snapshots_never_duplicate_a_head() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let fs = LoopBtrfs::new(dir.path(), 400);
    let state = fs.mount.join("state");
    let system = actix_rt::System::new();
    system.block_on(async {
        let p = timed_pipeline(&state, Duration::from_millis(20));
        for i in 0..40u64 {
            p.submit(vec![event(i)]).await.unwrap();
            let _ = p.snapshot_now().await.unwrap();
            // Paces the requests so that the 20 ms timer fires among them.
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        p.shutdown(Duration::from_secs(60)).await.unwrap();
    });
    let heads: Vec<u64> = list(&state).iter().map(|s| s["head_seq"].as_u64().unwrap()).collect();
    let mut dedup = heads.clone();
    dedup.dedup();
    assert_eq!(heads, dedup, "two snapshots of one head");
    assert!(heads.len() >= 20, "{heads:?}");
    common::run(&state, &["snapshots", "verify"]).expect_code(0);
}
