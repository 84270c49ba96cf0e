//! Snapshot and replication benchmarks on loop-mounted BTRFS (needs root
//! and btrfs-progs; `make bench-snapshots`):
//!
//! 1. durable ingest throughput with snapshots off, `1min` and `per-op`
//!    (in process, batches of 512 realistic events as `import` sends them);
//! 2. snapshot latency (p50/p99) as the chain grows to 10k, 100k, 1M
//!    records, against `btrfs subvolume snapshot -r` (the seed's way) on
//!    the same subvolumes;
//! 3. replication: send-stream bytes per 1000 footprints (incremental),
//!    plain and with `compress=zstd` + `--compressed-data`, and the time to
//!    replicate one interval's change.
//!
//! SNAP_N (default 200000) events for part 1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use op_dbus::codec::{Source, Value};
use op_dbus::config::{Config, SnapshotConfig};
use op_dbus::layout::Layout;
use op_dbus::messages::RawEvent;
use op_dbus::pipeline::{spawn_pipeline, Pipeline, PipelineConfig};
use op_dbus::storage::replicate::{self, ReplicaConfig, ReplicaProgress};
use op_dbus::storage::retention::{Interval, Retention};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Fs {
    mount: PathBuf,
    image: PathBuf,
}

impl Fs {
    fn new(dir: &Path, name: &str, mb: u64, opts: &str) -> Fs {
        let image = dir.join(format!("{name}.img"));
        let mount = dir.join(name);
        std::fs::create_dir_all(&mount).unwrap();
        assert!(Command::new("truncate").arg("-s").arg(format!("{mb}M")).arg(&image).status().unwrap().success());
        assert!(Command::new("mkfs.btrfs").arg("-q").arg(&image).status().unwrap().success());
        let o = if opts.is_empty() { "loop".to_string() } else { format!("loop,{opts}") };
        assert!(Command::new("mount").args(["-o", &o]).arg(&image).arg(&mount).status().unwrap().success());
        Fs { mount, image }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn event(i: u64) -> RawEvent {
    let plugins = [
        ("org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager.JobRemoved"),
        ("org.freedesktop.login1", "org.freedesktop.login1.Manager.SessionNew"),
        ("org.freedesktop.NetworkManager", "org.freedesktop.DBus.Properties.PropertiesChanged"),
        ("org.freedesktop.PackageKit", "org.freedesktop.PackageKit.Transaction.Finished"),
        ("org.freedesktop.UDisks2", "org.freedesktop.DBus.ObjectManager.InterfacesAdded"),
    ];
    let (p, op) = plugins[(i % 5) as usize];
    let s = |x: &str| Value::Str(x.into());
    RawEvent {
        source: Source::Import,
        plugin_id: p.into(),
        operation: op.into(),
        path: Some(format!("/org/freedesktop/{}/{}", i % 5, i % 37)),
        sender: None,
        creds: None,
        captured_ns: 1_750_000_000_000_000_000 + i as i64 * 1_000_000,
        signature: String::new(),
        data: Value::map(vec![
            (s("id"), Value::UInt(i)),
            (s("unit"), s(&format!("svc{}.service", (i * 7919) % 200))),
            (s("result"), s(["done", "failed", "canceled"][(i % 3) as usize])),
            (s("job"), Value::UInt((i * 104_729) % 100_000)),
        ]),
    }
}

fn pipeline(state: &Path, interval: Interval) -> Pipeline {
    let mut cfg = PipelineConfig { layout: Layout::new(state, None), ..PipelineConfig::new(&Config::default()) };
    cfg.snapshot = SnapshotConfig { interval, retention: Retention { recent: 1_000_000, ..Default::default() } };
    spawn_pipeline(cfg).unwrap()
}

/// Submits `n` events from `from` in batches of 512, four batches in flight.
async fn ingest(p: &Pipeline, from: u64, n: u64) {
    let mut inflight = std::collections::VecDeque::new();
    let mut i = from;
    while i < from + n {
        let k = 512.min(from + n - i);
        let events: Vec<RawEvent> = (i..i + k).map(event).collect();
        let rx = p.submitter().send(events).await.unwrap();
        inflight.push_back(rx);
        if inflight.len() >= 4 {
            inflight.pop_front().unwrap().durable().await.unwrap();
        }
        i += k;
    }
    for rx in inflight {
        rx.durable().await.unwrap();
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` support
    }
    assert!(unsafe { libc::geteuid() } == 0, "the snapshot benchmarks mount loop devices: run as root");
    let n = env_u64("SNAP_N", 200_000);
    let work = tempfile::tempdir_in(std::env::var("SNAP_DIR").unwrap_or_else(|_| ".".into())).unwrap();

    println!("## 1. durable ingest with snapshots (N = {n}, batches of 512)");
    println!("| snapshots | events/s | snapshots taken | vs off |");
    println!("|---|---|---|---|");
    let mut off_rate = 0.0;
    for (label, interval) in
        [("off", Interval::Off), ("1min", Interval::Every(Duration::from_secs(60))), ("per-op", Interval::PerOp)]
    {
        let fs = Fs::new(work.path(), &format!("t-{label}"), 4096, "");
        let state = fs.mount.join("state");
        let system = actix_rt::System::new();
        let secs = system.block_on(async {
            let p = pipeline(&state, interval);
            let t = Instant::now();
            ingest(&p, 0, n).await;
            let secs = t.elapsed().as_secs_f64();
            p.shutdown(Duration::from_secs(120)).await.unwrap();
            secs
        });
        let taken = op_dbus::storage::snapshot::list(&Layout::new(&state, None)).len();
        let rate = n as f64 / secs;
        if label == "off" {
            off_rate = rate;
        }
        println!("| {label} | {rate:.0} | {taken} (incl. the one at shutdown) | {:.3}× |", rate / off_rate);
    }

    println!();
    println!("## 2. snapshot latency as the chain grows (20 snapshots per size)");
    println!("| records | op-dbus ioctl snapshot of 3 areas, p50 / p99 | `btrfs subvolume snapshot -r` ×3, p50 / p99 | ratio (p50) |");
    println!("|---|---|---|---|");
    {
        let fs = Fs::new(work.path(), "latency", 8192, "");
        let state = fs.mount.join("state");
        let layout = Layout::new(&state, None);
        let system = actix_rt::System::new();
        let mut have = 0;
        for size in [10_000u64, 100_000, 1_000_000] {
            let (ours, cli) = system.block_on(async {
                let p = pipeline(&state, Interval::Off);
                ingest(&p, have, size - have).await;
                p.shutdown(Duration::from_secs(300)).await.unwrap();
                // Quiescent: the chain is at a commit boundary and no writer runs.
                let head = op_dbus::chain::reader::read_head(&layout).unwrap();
                let mut ours = Vec::new();
                for k in 0..20 {
                    let t = Instant::now();
                    let m =
                        op_dbus::storage::snapshot::take(&layout, &head, op_dbus::codec::now_ns() + k, None).unwrap();
                    ours.push(t.elapsed().as_secs_f64() * 1e3);
                    op_dbus::storage::snapshot::remove(&op_dbus::storage::snapshot::path_of(&layout, &m.name)).unwrap();
                }
                let mut cli = Vec::new();
                let peer = state.join("peer");
                std::fs::create_dir_all(&peer).unwrap();
                for k in 0..20 {
                    let t = Instant::now();
                    for area in ["@timing", "@vectors", "@cache"] {
                        let ok = Command::new("btrfs")
                            .args(["subvolume", "snapshot", "-r"])
                            .arg(state.join(area))
                            .arg(peer.join(format!("{area}-{k}")))
                            .stdout(std::process::Stdio::null())
                            .status()
                            .unwrap()
                            .success();
                        assert!(ok);
                    }
                    cli.push(t.elapsed().as_secs_f64() * 1e3);
                }
                for e in std::fs::read_dir(&peer).unwrap() {
                    op_dbus::layout::btrfs::delete_subvolume(&e.unwrap().path()).unwrap();
                }
                (ours, cli)
            });
            have = size;
            println!(
                "| {size} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1}× faster |",
                pct(ours.clone(), 0.5),
                pct(ours.clone(), 0.99),
                pct(cli.clone(), 0.5),
                pct(cli.clone(), 0.99),
                pct(cli, 0.5) / pct(ours, 0.5)
            );
        }
    }

    println!();
    println!("## 3. incremental replication of 1000 footprints (after 100,000)");
    println!("| source mount | full stream (100k) | incremental stream per 1000 footprints | time to replicate it |");
    println!("|---|---|---|---|");
    for (label, opts, compressed) in [("plain", "", false), ("compress=zstd, --compressed-data", "compress=zstd", true)]
    {
        let src = Fs::new(work.path(), &format!("src-{}", compressed as u8), 2048, opts);
        let dst = Fs::new(work.path(), &format!("dst-{}", compressed as u8), 2048, opts);
        let state = src.mount.join("state");
        let layout = Layout::new(&state, None);
        let replica = ReplicaConfig {
            name: "b".into(),
            dir: Some(dst.mount.join("r")),
            command: None,
            compressed_data: compressed,
        };
        let mut progress = ReplicaProgress::default();
        let system = actix_rt::System::new();
        let full = system.block_on(async {
            let p = pipeline(&state, Interval::Off);
            ingest(&p, 0, 100_000).await;
            p.snapshot_now().await.unwrap().unwrap();
            p.shutdown(Duration::from_secs(120)).await.unwrap();
            replicate::replicate_one(&layout, &replica, &mut progress).unwrap().unwrap().bytes
        });
        let (inc, secs) = system.block_on(async {
            let p = pipeline(&state, Interval::Off);
            ingest(&p, 100_000, 1000).await;
            p.snapshot_now().await.unwrap().unwrap();
            p.shutdown(Duration::from_secs(120)).await.unwrap();
            let t = Instant::now();
            let sent = replicate::replicate_one(&layout, &replica, &mut progress).unwrap().unwrap();
            assert!(sent.incremental);
            (sent.bytes, t.elapsed().as_secs_f64())
        });
        println!("| {label} | {:.1} MB | {:.1} KB | {:.0} ms |", full as f64 / 1e6, inc as f64 / 1e3, secs * 1e3);
    }
}
