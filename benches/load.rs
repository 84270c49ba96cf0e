//! End-to-end load harness: durable import of N footprints through the real
//! binary, `verify`, and submit-to-durable latency at a steady rate, each
//! side by side with a named peer measured in the same run.
//!
//! Import and verify are run three times and the median is reported.
//! `cargo bench --bench load` (env: LOAD_N, default 1000000; LOAD_RATE,
//! default 10000 events/s; LOAD_SECONDS, default 10; LOAD_DIR, where the
//! temporary files go, default the current dir). Prints a markdown table
//! for BENCHMARKS.md.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use op_dbus::codec::{Source, Value};
use op_dbus::faults::Faults;
use op_dbus::layout::Layout;
use op_dbus::messages::RawEvent;
use op_dbus::pipeline::{spawn_pipeline, PipelineConfig};

const BIN: &str = env!("CARGO_BIN_EXE_op-dbus");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Realistic systemd / logind / NetworkManager / PackageKit / UDisks traffic.
fn generate(path: &Path, n: u64) {
    let plugins = [
        ("org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager.JobRemoved"),
        ("org.freedesktop.login1", "org.freedesktop.login1.Manager.SessionNew"),
        ("org.freedesktop.NetworkManager", "org.freedesktop.DBus.Properties.PropertiesChanged"),
        ("org.freedesktop.PackageKit", "org.freedesktop.PackageKit.Transaction.Finished"),
        ("org.freedesktop.UDisks2", "org.freedesktop.DBus.ObjectManager.InterfacesAdded"),
    ];
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let t0 = 1_750_000_000_000_000_000i64;
    let results = ["done", "failed", "canceled"];
    for i in 0..n {
        let (p, op) = plugins[(i % 5) as usize];
        writeln!(
            f,
            r#"{{"plugin_id":"{p}","operation":"{op}","path":"/org/freedesktop/{}/{}","timestamp":{},"data":{{"id":{i},"unit":"svc{}.service","result":"{}","job":{}}}}}"#,
            i % 5,
            i % 37,
            t0 + i as i64 * 1_000_000,
            (i * 7919) % 200,
            results[(i % 3) as usize],
            (i * 104_729) % 100_000
        )
        .unwrap();
    }
}

/// Peak memory of a finished child: `ru_maxrss` (what `/usr/bin/time -v`
/// reports as "Maximum resident set size") and the peaks of its anonymous and
/// file-backed parts, sampled from /proc every 20 ms.
#[derive(Default)]
struct Memory {
    max_rss_kib: u64,
    peak_anon_kib: u64,
    peak_file_kib: u64,
}

/// Runs a command; returns (wall seconds, memory, stdout).
// The child is reaped by wait4 below (which also yields its rusage); clippy cannot see that.
#[allow(clippy::zombie_processes)]
fn timed(args: &[&str]) -> (f64, Memory, String) {
    let start = Instant::now();
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let mut mem = Memory::default();
    let status_path = format!("/proc/{pid}/status");
    loop {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain wait4 on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let secs = start.elapsed().as_secs_f64();
            mem.max_rss_kib = usage.ru_maxrss as u64;
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{args:?} failed");
            return (secs, mem, reader.join().unwrap());
        }
        if let Ok(st) = std::fs::read_to_string(&status_path) {
            for line in st.lines() {
                let kib = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if line.starts_with("RssAnon:") {
                    mem.peak_anon_kib = mem.peak_anon_kib.max(kib(line));
                } else if line.starts_with("RssFile:") {
                    mem.peak_file_kib = mem.peak_file_kib.max(kib(line));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The peer for import: the same lines into SQLite, durably (WAL,
/// synchronous=FULL, one transaction per 4096 lines), data and its SHA-256
/// stored, with the same four lookups indexed.
fn sqlite_import(jsonl: &Path, db: &Path) -> f64 {
    use sha2::Digest;
    let start = Instant::now();
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, hash BLOB, captured_ns INTEGER, plugin TEXT,
                              operation TEXT, path TEXT, data TEXT, data_hash BLOB);
         CREATE INDEX by_hash ON events(hash);
         CREATE INDEX by_time ON events(captured_ns, seq);
         CREATE INDEX by_plugin_op ON events(plugin, operation, seq);",
    )
    .unwrap();
    let reader = std::io::BufReader::new(std::fs::File::open(jsonl).unwrap());
    let mut lines = reader.lines();
    let mut seq = 0i64;
    let mut prev = [0u8; 32];
    loop {
        let tx = c.transaction().unwrap();
        let mut n = 0;
        {
            let mut st = tx.prepare_cached("INSERT INTO events VALUES (?1,?2,?3,?4,?5,?6,?7,?8)").unwrap();
            for line in lines.by_ref().take(4096) {
                let line = line.unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let data = v["data"].to_string();
                let data_hash = sha2::Sha256::digest(data.as_bytes());
                // Chain the rows like op-dbus does, so the peer does the same hashing.
                let mut h = sha2::Sha256::new();
                h.update(prev);
                h.update(line.as_bytes());
                prev = h.finalize().into();
                st.execute(rusqlite::params![
                    seq,
                    &prev[..],
                    v["timestamp"].as_i64(),
                    v["plugin_id"].as_str(),
                    v["operation"].as_str(),
                    v["path"].as_str(),
                    data,
                    &data_hash[..]
                ])
                .unwrap();
                seq += 1;
                n += 1;
            }
        }
        tx.commit().unwrap();
        if n < 4096 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Submit-to-durable latency at a steady rate, in ms: (p50, p99, max).
fn steady_latency(dir: &Path, rate: u64, seconds: u64, proof: bool) -> (f64, f64, f64) {
    let system = actix_rt::System::new();
    system.block_on(async {
        // The product defaults (config/op-dbus.toml).
        let defaults = op_dbus::config::Config::default();
        let mut cfg = PipelineConfig {
            layout: Layout::new(dir, None),
            faults: Faults::default(),
            ..PipelineConfig::new(&defaults)
        };
        cfg.snapshot.interval = op_dbus::storage::retention::Interval::Off;
        cfg.proof.enabled = proof;
        let p = spawn_pipeline(cfg).unwrap();
        // One event per submission, paced every 1/rate s in ticks of 1 ms.
        let per_tick = (rate / 1000).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut waits = Vec::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut i = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            for _ in 0..per_tick {
                let sent = Instant::now();
                let event = RawEvent {
                    source: Source::Submit,
                    plugin_id: "org.freedesktop.systemd1".into(),
                    operation: "org.freedesktop.systemd1.Manager.JobRemoved".into(),
                    path: Some("/org/freedesktop/systemd1".into()),
                    sender: None,
                    creds: None,
                    captured_ns: i as i64,
                    signature: String::new(),
                    data: Value::map(vec![(Value::Str("id".into()), Value::UInt(i))]),
                };
                i += 1;
                let rx = p.submitter().send(vec![event]).await.unwrap();
                waits.push(actix_rt::spawn(async move {
                    rx.durable().await.unwrap();
                    sent.elapsed().as_secs_f64() * 1000.0
                }));
            }
        }
        let mut lat = Vec::with_capacity(waits.len());
        for w in waits {
            lat.push(w.await.unwrap());
        }
        p.shutdown(Duration::from_secs(30)).await.unwrap();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(&lat, 0.5), percentile(&lat, 0.99), *lat.last().unwrap())
    })
}

/// The peer for latency: one SQLite transaction (WAL, synchronous=FULL) per 1 ms tick.
fn sqlite_latency(db: &Path, rate: u64, seconds: u64) -> (f64, f64, f64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE e (seq INTEGER PRIMARY KEY, data TEXT);",
    )
    .unwrap();
    let per_tick = (rate / 1000).max(1);
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0i64;
    let mut due = start;
    while start.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        // Events became due at `due`; they are durable after this commit.
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..per_tick {
            c.execute("INSERT INTO e VALUES (?1, ?2)", rusqlite::params![i, format!("{{\"id\":{i}}}")]).unwrap();
            i += 1;
        }
        c.execute_batch("COMMIT").unwrap();
        let l = due.elapsed().as_secs_f64() * 1000.0;
        lat.extend(std::iter::repeat_n(l, per_tick as usize));
        due += Duration::from_millis(1);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&lat, 0.5), percentile(&lat, 0.99), *lat.last().unwrap())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_u64("LOAD_N", 1_000_000);
    let rate = env_u64("LOAD_RATE", 10_000);
    let seconds = env_u64("LOAD_SECONDS", 10);
    let dir = tempfile::tempdir_in(std::env::var("LOAD_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let jsonl = dir.path().join("events.jsonl");
    generate(&jsonl, n);
    let state = dir.path().join("state");
    let state_s = state.to_str().unwrap();

    // Three runs each, median reported; `sync` first so that writeback of
    // the previous step does not land on the next one.
    let settle = || assert!(Command::new("sync").status().unwrap().success());
    let mut imports = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&state);
        // The keys are made once per host (`keys init`, measured in `bench
        // --bench proof`), not per import: made here, outside the timing.
        let keys = Command::new(BIN).args(["--config", "/dev/null", "--state-dir", state_s, "keys", "init"]).output();
        assert!(keys.unwrap().status.success(), "keys init failed");
        settle();
        imports.push(timed(&[BIN, "--config", "/dev/null", "--state-dir", state_s, "import", jsonl.to_str().unwrap()]));
    }
    imports.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (import_s, import_mem, _) = imports.swap_remove(1);
    // The same import with the Merkle tree and checkpoints off
    // (`OP_DBUS_PROOF=0`): what tamper evidence costs.
    let mut unproven = Vec::new();
    let off = dir.path().join("state-noproof");
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&off);
        settle();
        unproven.push(timed(&[
            "env",
            "OP_DBUS_PROOF=0",
            BIN,
            "--config",
            "/dev/null",
            "--state-dir",
            off.to_str().unwrap(),
            "import",
            jsonl.to_str().unwrap(),
        ]));
    }
    let _ = std::fs::remove_dir_all(&off);
    unproven.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (off_s, off_mem, _) = unproven.swap_remove(1);
    settle();
    let sqlite_s = sqlite_import(&jsonl, &dir.path().join("peer.db"));

    let mut verifies = Vec::new();
    for _ in 0..3 {
        settle();
        verifies.push(timed(&[BIN, "--state-dir", state_s, "verify"]));
    }
    verifies.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (verify_s, verify_mem, out) = verifies.swap_remove(1);
    assert!(out.starts_with("ok:"), "{out}");
    settle();
    let segments: Vec<String> = std::fs::read_dir(state.join("@timing"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    let mut sha = vec!["sha256sum"];
    sha.extend(segments.iter().map(String::as_str));
    let (sha_s, _, _) = timed(&sha);

    let (p50, p99, max) = steady_latency(&dir.path().join("latency"), rate, seconds, true);
    let (np50, np99, nmax) = steady_latency(&dir.path().join("latency-noproof"), rate, seconds, false);
    let (sp50, sp99, smax) = sqlite_latency(&dir.path().join("latency.db"), rate, seconds);

    println!("\n| measurement | op-dbus | peer | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| durable import of {n} footprints (heuristic vectors, index on) | {:.0}/s ({import_s:.2} s) | SQLite WAL synchronous=FULL, 4096/txn: {:.0}/s ({sqlite_s:.2} s) | {:.2}x |",
        n as f64 / import_s,
        n as f64 / sqlite_s,
        sqlite_s / import_s
    );
    println!(
        "| the same import with proofs off (OP_DBUS_PROOF=0) | {:.0}/s ({off_s:.2} s, peak RSS {} KiB) | proofs on, above | on takes {:.2}x the time |",
        n as f64 / off_s,
        off_mem.max_rss_kib,
        import_s / off_s
    );
    println!(
        "| peak RSS of that import | {} KiB (peaks sampled: anonymous {} KiB, file-backed {} KiB) | | |",
        import_mem.max_rss_kib, import_mem.peak_anon_kib, import_mem.peak_file_kib
    );
    println!(
        "| verify {n} blocks (all hashes, links, vectors) | {:.0} blocks/s ({verify_s:.2} s, peak RSS {} KiB) | sha256sum of the segment files: {sha_s:.2} s | {:.2}x the time |",
        n as f64 / verify_s,
        verify_mem.max_rss_kib,
        verify_s / sha_s
    );
    println!(
        "| submit-to-durable latency at {rate}/s for {seconds} s | p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms | SQLite commit per 1 ms tick: p50 {sp50:.2} ms, p99 {sp99:.2} ms, max {smax:.2} ms | p99 {:.2}x |",
        p99 / sp99
    );
    println!(
        "| the same latency with proofs off | p50 {np50:.2} ms, p99 {np99:.2} ms, max {nmax:.2} ms | proofs on, above | p99 on/off {:.2}x |",
        p99 / np99
    );
}
