//! Snapshots on a loop-mounted BTRFS (and the fallback on an ordinary
//! folder), through the real binary: subvolumes, `snapshot now`, the
//! snapshot record, `snapshots verify` catching a modified snapshot,
//! restore, rotation, per-op snapshots under load and after kill -9.

mod common;
#[path = "common/btrfs.rs"]
mod loop_btrfs;

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
