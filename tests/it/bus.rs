//! Live capture and the org.opdbus service, against a private dbus-daemon
//! that each test starts (scripts/private-bus.sh, the shipped policy) and
//! kills on drop. Never the host's bus.

use crate::common;
use crate::common::bus as private_bus;

use private_bus::Bus;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_op-dbus");

struct Daemon {
    child: Child,
    state: PathBuf,
}

impl Daemon {
    /// Starts a daemon and returns once it records: `/health` answers only
    /// when the bus monitor is attached (the service, which answers Head,
    /// connects before it, so Head alone raced the first signals).
    fn start(bus: &Bus, state: &Path, config: &str) -> Daemon {
        let port = common::free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut d = Daemon::start_args(bus, state, config, &["--metrics-listen", &listen]);
        common::wait_recording(&mut d.child, port);
        d
    }

    fn start_args(bus: &Bus, state: &Path, config: &str, args: &[&str]) -> Daemon {
        let cfg = state.with_extension("toml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(state)
            .args(["run", "--bus", &bus.address])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon { child, state: state.to_path_buf() };
        // Ready once it serves Head (or NotFound on an empty chain).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = call_head(bus);
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("empty") {
                break;
            }
            assert!(Instant::now() < deadline, "daemon never served: {err}");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "daemon exit {:?}: {err}", out.status);
        err
    }

    fn log(&self) -> Vec<Value> {
        common::log_json(&self.state, &[])
    }

    /// Waits until `pred` holds for the logged blocks.
    fn wait_log(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let blocks = self.log();
            if pred(&blocks) {
                return blocks;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; have {} blocks", blocks.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects BlocksAppended (first, last) ranges until `stop`, keeping the
/// highest `last` seen plus one in `covered`. Returns once its match rule
/// is in place on the bus, so that no signal sent after is missed.
fn listen_blocks_appended(
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    covered: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    use futures_util::StreamExt;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let conn = zbus::connection::Builder::address(address.as_str()).build().await.unwrap();
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface("org.opdbus.Chain1")
                .member("BlocksAppended")
                .build()
                .unwrap();
            // Returns once the bus has answered the AddMatch.
            let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None).await.unwrap();
            ready_tx.send(()).unwrap();
            let mut out = Vec::new();
            loop {
                tokio::select! {
                    m = stream.next() => {
                        let m = m.unwrap().unwrap();
                        let (first, last, _hash): (u64, u64, String) = m.body().deserialize().unwrap();
                        out.push((first, last));
                        covered.fetch_max(last + 1, std::sync::atomic::Ordering::AcqRel);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if stop.load(std::sync::atomic::Ordering::Acquire) {
                            return out;
                        }
                    }
                }
            }
        })
    });
    ready.recv_timeout(Duration::from_secs(20)).expect("the BlocksAppended listener did not subscribe");
    listener
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Calls Head with dbus-send (from the dbus package the tests install).
fn call_head(bus: &Bus) -> Output {
    Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.opdbus", "/org/opdbus/Chain", "org.opdbus.Chain1.Head"])
        .output()
        .unwrap()
}

fn member(b: &Value) -> &str {
    b["operation"].as_str().unwrap().rsplit('.').next().unwrap()
}

fn test_signals(blocks: &[Value]) -> Vec<&Value> {
    blocks.iter().filter(|b| b["operation"].as_str().unwrap().starts_with("org.opdbus.Test.")).collect()
}

#[test]
fn every_argument_type_becomes_a_block_with_exact_data() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let d = Daemon::start(&bus, &dir.path().join("state"), "");
    // The emitter stays a moment, so its credentials can be asked even on a
    // loaded machine (a sender that exits at once may be recorded without).
    bus.emit(&["--linger-ms", "500", "types"]);
    let blocks = d.wait_log("7 test signals", |b| test_signals(b).len() >= 7);
    let by: std::collections::HashMap<&str, &Value> =
        test_signals(&blocks).into_iter().map(|b| (member(b), b)).collect();
    let check = |m: &str, sig: &str, data: Value| {
        let b = by.get(m).unwrap_or_else(|| panic!("no {m}"));
        assert_eq!(b["signature"], sig, "{m}");
        assert_eq!(b["data"], data, "{m}");
        assert_eq!(b["source"], "dbus");
        assert_eq!(b["path"], "/org/opdbus/Test");
        assert!(b["sender"].as_str().unwrap().starts_with(':'));
        assert_eq!(b["creds"]["uid"], 0, "{m}: the emitter runs as root");
        assert!(b["creds"]["pid"].as_u64().unwrap() > 0);
    };
    check("Basic", "ybnqiuxtds", serde_json::json!([255, true, -2, 3, -4, 5, -6, u64::MAX, 8.5, "str"]));
    check("Names", "og", serde_json::json!(["/a/b", "a{sv}"]));
    check(
        "Dict",
        "a{sv}",
        serde_json::json!([{"int": ["i", 42], "list": ["as", ["a", "b"]], "nested": ["v", ["y", 1]]}]),
    );
    // One struct argument stays one argument.
    check("Struct", "(usv)", serde_json::json!([[1, "two", ["d", 3.0]]]));
    check("Nested", "aauaay", serde_json::json!([[[1, 2], [], [3]], [[97, 98], []]]));
    check("Fd", "hs", serde_json::json!([{"unix_fd": 0}, "after"]));
    check("Empty", "", serde_json::json!([]));
    assert_eq!(common::verify_json(&d.state).0, 0);
    d.stop();
}

#[test]
fn filters_include_and_exclude() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let cfg = "[[bus.include]]\ninterface = \"org.opdbus.Test\"\n[[bus.exclude]]\nmember = \"Basic\"\n";
    let d = Daemon::start(&bus, &dir.path().join("state"), cfg);
    bus.emit(&["types"]);
    bus.emit(&["sample"]);
    // A sentinel that passes the filter: everything before it is in.
    bus.emit(&["names", "org.example.Sentinel"]);
    let blocks = d.wait_log("the sentinel", |b| b.iter().any(|x| member(x) == "After"));
    let members: Vec<&str> = blocks.iter().map(member).collect();
    assert_eq!(
        members,
        ["Names", "Dict", "Struct", "Nested", "Fd", "Empty", "Before", "While", "After"],
        "only org.opdbus.Test, without Basic"
    );
    d.stop();
}

#[test]
fn plugin_id_follows_name_owner_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let d = Daemon::start(&bus, &dir.path().join("state"), "");
    bus.emit(&["names", "org.example.Named"]);
    let blocks = d.wait_log("3 signals", |b| test_signals(b).len() >= 3);
    let got: Vec<(&str, &str)> =
        test_signals(&blocks).iter().map(|b| (member(b), b["plugin_id"].as_str().unwrap())).collect();
    assert_eq!(got, [("Before", "org.opdbus.Test"), ("While", "org.example.Named"), ("After", "org.opdbus.Test")]);
    d.stop();
}

#[test]
fn submit_is_durable_before_the_reply_and_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let d = Daemon::start(&bus, &dir.path().join("state"), "");
    let out = Command::new(BIN)
        .args(["--config", "/dev/null", "submit", "--bus", &bus.address, "my.app", "my.app.Deployed", r#"{"v":[1,2]}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seq: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // Acknowledged means on disk: the block is there the moment the reply is.
    let shown = common::run(&d.state, &["show", &seq.to_string(), "--json"]).last_json();
    assert_eq!(shown["source"], "submit");
    assert_eq!(shown["plugin_id"], "my.app");
    assert_eq!(shown["data"], serde_json::json!({"v": [1, 2]}));
    assert_eq!(shown["creds"]["uid"], 0);

    // Bad JSON is an InvalidArgument error, exit 1.
    let out = Command::new(BIN)
        .args(["--config", "/dev/null", "submit", "--bus", &bus.address, "a", "b", "{nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("org.opdbus.Error.InvalidArgument"));

    // An unprivileged uid may not Submit under the shipped policy.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "dbus-send"])
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.opdbus", "/org/opdbus/Chain", "org.opdbus.Chain1.Submit"])
        .args(["string:a", "string:b", "string:{}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AccessDenied"), "{err}");
    // Nor read, unless in the read group.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "dbus-send"])
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.opdbus", "/org/opdbus/Chain", "org.opdbus.Chain1.Head"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDenied"));
    assert!(d.log().iter().all(|b| b["source"] != "submit" || b["seq"] == seq), "the denied call appended nothing");
    d.stop();
}

#[test]
fn feed_is_coalesced_and_its_own_traffic_is_never_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    // Record everything, method calls and returns included.
    let cfg = "[bus]\nmethod_calls = true\nmethod_returns = true\nerrors = true\n[service]\nsignal_rate = 5\n";
    let d = Daemon::start(&bus, &dir.path().join("state"), cfg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let covered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = listen_blocks_appended(bus.address.clone(), stop.clone(), covered.clone());
    let started = Instant::now();
    bus.emit(&["load", "--count", "3000", "--rate", "3000"]);
    for _ in 0..3 {
        let _ = call_head(&bus);
    }
    let blocks = d.wait_log("3000 ticks", |b| b.iter().filter(|x| x["plugin_id"] == "org.opdbus.Load").count() >= 3000);
    let last_tick = blocks.iter().rfind(|x| x["plugin_id"] == "org.opdbus.Load").unwrap()["seq"].as_u64().unwrap();
    // The feed's last signal (coalesced, at most 5/s) covers the last tick.
    common::wait_until("BlocksAppended up to the last tick", Duration::from_secs(10), || {
        covered.load(std::sync::atomic::Ordering::Acquire) > last_tick
    });
    stop.store(true, std::sync::atomic::Ordering::Release);
    let ranges = listener.join().unwrap();
    // Every signal counted arrived before now.
    let elapsed = started.elapsed().as_secs_f64();
    assert!(!ranges.is_empty(), "no BlocksAppended seen");
    assert!(ranges.len() as f64 <= elapsed * 5.0 + 2.0, "{} signals in {elapsed:.1}s exceeds 5/s", ranges.len());
    for w in ranges.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "ranges are contiguous: {ranges:?}");
    }
    assert!(ranges.last().unwrap().1 >= last_tick);
    // None of op-dbus's own traffic: no feed signal, no call to or reply from
    // the service, no lookups its resolver made.
    let all = d.log();
    for b in &all {
        let op = b["operation"].as_str().unwrap();
        assert!(!op.starts_with("org.opdbus.Chain1"), "own traffic recorded: {b}");
        assert!(
            !op.contains("GetConnectionCredentials") && !op.contains("ListNames"),
            "resolver traffic recorded: {b}"
        );
    }
    // The calls to Head were made and are not in the chain, while the
    // callers' own Hello calls are.
    assert!(all.iter().any(|b| b["operation"] == "org.freedesktop.DBus.Hello"));
    d.stop();
}

#[test]
fn bus_restart_reconnects_and_records_the_outage_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut bus = Bus::start(&dir.path().join("bus"));
    let d = Daemon::start(&bus, &dir.path().join("state"), "[bus]\nreconnect_max_s = 1\n");
    bus.emit(&["names", "org.example.A"]);
    d.wait_log("first signals", |b| test_signals(b).len() >= 3);
    bus.restart();
    let blocks = d.wait_log("a gap record", |b| b.iter().any(|x| x["operation"] == "org.opdbus.Gap"));
    let gap = blocks.iter().find(|x| x["operation"] == "org.opdbus.Gap").unwrap();
    assert_eq!(gap["source"], "internal");
    assert_eq!(gap["data"]["reason"], "bus-disconnected");
    assert!(gap["data"]["dropped"].is_null());
    assert!(gap["data"]["last_ns"].as_i64() >= gap["data"]["first_ns"].as_i64());
    // Recording goes on, and the service is back on the new bus.
    Daemon::wait_served(&bus);
    bus.emit(&["names", "org.example.B"]);
    d.wait_log("signals after the restart", |b| test_signals(b).len() >= 6);
    assert_eq!(common::verify_json(&d.state).0, 0);
    d.stop();
}

impl Daemon {
    fn wait_served(bus: &Bus) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !call_head(bus).status.success() {
            assert!(Instant::now() < deadline, "service did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn hostile_messages_are_recorded_and_do_not_crash_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start_args(&bus, &dir.path().join("state"), "", &["--metrics-listen", &listen]);
    bus.emit(&["hostile", "--big", "30000000"]);
    let blocks = d.wait_log("4 hostile signals", |b| test_signals(b).len() >= 4);
    let t = test_signals(&blocks);
    let big = t.iter().find(|b| member(b) == "Big").unwrap();
    assert_eq!(big["truncated"], true);
    assert_eq!(big["signature"], "ay");
    let deep = t.iter().find(|b| member(b) == "Deep").unwrap();
    let mut v = &deep["data"][0];
    let mut depth = 0;
    while v[0] == "v" {
        v = &v[1];
        depth += 1;
    }
    assert_eq!((depth, v.clone()), (60, serde_json::json!(["u", 7])));
    assert!(t.iter().any(|b| member(b) == "Empty" && b["data"] == serde_json::json!([])));
    let odd = t.iter().find(|b| member(b) == "Odd").unwrap();
    assert_eq!(odd["signature"], "a{oa{sa{sv}}}a(yv)");
    // Still serving, still recording, and saying so in its metrics.
    assert!(call_head(&bus).status.success());
    let metrics = http_get(port, "/metrics");
    for name in [
        "op_dbus_bus_connected 1",
        "op_dbus_bus_received_messages_total",
        "op_dbus_bus_recorded_messages_total",
        "op_dbus_bus_filtered_messages_total",
        "op_dbus_capture_queue_depth_messages",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    assert_eq!(common::verify_json(&d.state).0, 0);
    d.stop();
}

#[test]
fn a_denied_monitor_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                BIN,
                "--config",
                "/dev/null",
                "--state-dir",
            ])
            .arg(&state)
            .args(["run", "--no-metrics", "--bus", &bus.address])
            .args(extra)
            .output()
            .unwrap()
    };
    // The service comes first: the bus policy lets only root (and whoever
    // started this private bus) own org.opdbus.
    let out = as_nobody(&[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot own org.opdbus") && err.contains("policy"), "{err}");
    // Without it, the monitor: only root may BecomeMonitor.
    let out = as_nobody(&["--no-service"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BecomeMonitor") && err.contains("root"), "{err}");
}

/// Calls a Chain1 method with zbus and decodes the reply.
fn call<A, R>(bus: &Bus, method: &str, args: &A) -> Result<R, zbus::Error>
where
    A: serde::Serialize + zbus::wire::DynamicType,
    R: for<'d> zbus::wire::DynamicDeserialize<'d>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address.as_str()).build().await?;
        let reply =
            conn.call_method(Some("org.opdbus"), "/org/opdbus/Chain", Some("org.opdbus.Chain1"), method, args).await?;
        reply.body().deserialize::<R>()
    })
}

fn error_name(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, detail, _) => format!("{}: {}", name.as_str(), detail.unwrap_or_default()),
        other => panic!("not a method error: {other}"),
    }
}

#[test]
fn read_methods_answer_from_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let d = Daemon::start(&bus, &dir.path().join("state"), "");
    bus.emit(&["sample"]);
    // All six systemd1 signals of the sample (JobRemoved and
    // PropertiesChanged for three units), so that the two newest, which
    // Query answers below, are in `blocks`.
    let blocks =
        d.wait_log("the sample", |b| b.iter().filter(|x| x["plugin_id"] == "org.freedesktop.systemd1").count() >= 6);

    let (seq, hash): (u64, String) = call(&bus, "Head", &()).unwrap();
    assert!(seq as usize + 1 >= blocks.len());
    assert_eq!(hash.len(), 64);

    let json: String = call(&bus, "GetBlock", &(2u64,)).unwrap();
    let got: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(got, blocks[2]);
    let e = error_name(call::<_, String>(&bus, "GetBlock", &(1_000_000u64,)).unwrap_err());
    assert!(e.starts_with("org.opdbus.Error.NotFound"), "{e}");

    type Row = (u64, String, i64, String, String, String);
    let rows: Vec<Row> = call(&bus, "Query", &(0i64, 0i64, "org.freedesktop.systemd1", "", 2u32)).unwrap();
    let want: Vec<&Value> = blocks.iter().filter(|b| b["plugin_id"] == "org.freedesktop.systemd1").collect();
    let want = &want[want.len() - 2..];
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        want.iter().map(|b| b["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        "systemd1 blocks when waited: {:?}; now: {:?}",
        want.iter().map(|b| (b["seq"].clone(), b["operation"].clone())).collect::<Vec<_>>(),
        d.log()
            .iter()
            .filter(|b| b["plugin_id"] == "org.freedesktop.systemd1")
            .map(|b| (b["seq"].clone(), b["operation"].clone(), b["sender"].clone()))
            .collect::<Vec<_>>()
    );
    assert!(rows.iter().all(|r| r.3 == "org.freedesktop.systemd1" && r.1.len() == 64));
    let e = error_name(call::<_, Vec<Row>>(&bus, "Query", &(0i64, 0i64, "", "", 20_000u32)).unwrap_err());
    assert!(e.starts_with("org.opdbus.Error.InvalidArgument"), "{e}");

    let (ok, checked, problem): (bool, u64, String) = call(&bus, "Verify", &(0u64, seq)).unwrap();
    assert!(ok && checked > seq && problem.is_empty(), "{ok} {checked} {problem}");
    let e = error_name(call::<_, (bool, u64, String)>(&bus, "Verify", &(5u64, 1u64)).unwrap_err());
    assert!(e.starts_with("org.opdbus.Error.InvalidArgument"), "{e}");

    // Flip one bit of a stored block: Verify over the range names it.
    let (first, seg) = common::segments(&d.state)[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let victim = &common::parse_frames(&bytes)[3];
    let mid = (victim.range().start + victim.range().len() / 2) as u64;
    common::xor_byte_in_place(&seg, mid, 0x01);
    let (ok, _, problem): (bool, u64, String) = call(&bus, "Verify", &(0u64, seq)).unwrap();
    common::xor_byte_in_place(&seg, mid, 0x01);
    assert!(!ok && problem.starts_with(&format!("seq {}", first + 3)), "{problem}");
    d.stop();
}

/// `Search`'s reply: model, blocks with vectors, rows.
type SearchReply = (String, u64, Vec<(u64, f64, i64, String, String, String)>);

#[test]
fn search_method_answers_from_the_stored_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let models = std::env::var("OP_DBUS_MODEL_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/models").to_string());
    let config = format!("[vector]\nlevel = \"low\"\nprecision = \"fp32\"\nmodel_dir = \"{models}\"\n");
    let d = Daemon::start(&bus, &dir.path().join("state"), &config);
    bus.emit(&["sample"]);
    let blocks = d.wait_log("the sample", |b| b.iter().any(|x| x["plugin_id"] == "org.freedesktop.NetworkManager"));
    // The vector worker catches up with what is durable.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (model, vectors, rows) = loop {
        let (model, vectors, rows): SearchReply =
            call(&bus, "Search", &("user login session", 3u32, 0i64, 0i64, "", "")).unwrap();
        if vectors >= blocks.len() as u64 {
            break (model, vectors, rows);
        }
        assert!(Instant::now() < deadline, "vectors stayed at {vectors} of {}", blocks.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(model, "paraphrase-MiniLM-L3-v2");
    assert!(vectors >= blocks.len() as u64);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].3, "org.freedesktop.login1", "{rows:?}");
    assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {rows:?}");
    // The row is the block: its time and operation.
    let b = blocks.iter().find(|b| b["seq"] == rows[0].0).unwrap();
    assert_eq!((b["captured_ns"].as_i64().unwrap(), b["operation"].as_str().unwrap()), (rows[0].2, rows[0].4.as_str()));
    // A filter restricts the rows.
    let (_, _, rows): SearchReply =
        call(&bus, "Search", &("user login session", 10u32, 0i64, 0i64, "org.freedesktop.systemd1", "")).unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r.3 == "org.freedesktop.systemd1"), "{rows:?}");
    let e = error_name(call::<_, SearchReply>(&bus, "Search", &("x", 5000u32, 0i64, 0i64, "", "")).unwrap_err());
    assert!(e.starts_with("org.opdbus.Error.InvalidArgument"), "{e}");
    d.stop();
}

/// The size of a checkpoint note (its second line).
fn note_size(note: &str) -> u64 {
    note.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("not a checkpoint: {note}"))
}

/// GetCheckpoint, GetProof and GetConsistency answer with what the CLI
/// writes: a signed checkpoint and tlog-proof bundles that `verify-proof`
/// accepts with nothing but the identity key.
#[test]
fn checkpoints_and_proofs_are_served_on_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let state = dir.path().join("state");
    let d = Daemon::start(&bus, &state, "[proof]\ncheckpoint_interval_ms = 100\n");
    bus.emit(&["sample"]);
    let blocks = d.wait_log("the sample", |b| b.len() >= 6);
    let wait_checkpoint = |min: u64| {
        common::wait_for("a checkpoint covering the blocks", Duration::from_secs(30), || {
            let note: String = call(&bus, "GetCheckpoint", &()).ok()?;
            (note_size(&note) >= min).then_some(note)
        })
    };
    let first = wait_checkpoint(blocks.len() as u64);
    let old = note_size(&first);
    let key = state.join("keys/identity.pub");
    assert!(first.contains(&format!("\n— {} ", std::fs::read_to_string(&key).unwrap().split('+').next().unwrap())));

    let check = |bundle: &str, name: &str| -> Value {
        let path = dir.path().join(name);
        std::fs::write(&path, bundle).unwrap();
        let r = common::run_bare(&["verify-proof", path.to_str().unwrap(), "--key", key.to_str().unwrap(), "--json"]);
        r.expect_code(0);
        r.last_json()
    };
    let proof: String = call(&bus, "GetProof", &(2u64,)).unwrap();
    let got = check(&proof, "two.tlog-proof");
    assert_eq!(got["block"], blocks[2], "{got}");

    bus.emit(&["sample"]);
    d.wait_log("the second sample", |b| b.len() >= blocks.len() + 6);
    let newer = note_size(&wait_checkpoint(old + 6));
    let consistency: String = call(&bus, "GetConsistency", &(old, newer)).unwrap();
    let got = check(&consistency, "consistency.tlog-proof");
    assert_eq!((got["kind"].as_str(), got["old_size"].as_u64()), (Some("consistency"), Some(old)), "{got}");

    let e = error_name(call::<_, String>(&bus, "GetProof", &(1_000_000u64,)).unwrap_err());
    assert!(e.starts_with("org.opdbus.Error."), "{e}");
    d.stop();
}
