//! `op-dbus run` as a process: metrics and health endpoints, the state dir
//! lock, configuration errors, and a clean drain on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_op-dbus");

/// Kills the daemon if a test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn start(state: &std::path::Path, port: u16) -> Daemon {
    let child = Command::new(BIN)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(state)
        .args(["run", "--no-bus", "--no-service", "--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Daemon(child)
}

fn wait_healthy(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((status, body)) = http_get(port, "/health") {
            assert!(status.contains("200"), "{status}");
            return body;
        }
        assert!(Instant::now() < deadline, "daemon never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_metrics_and_health_then_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Some history for the daemon to find at start.
    let lines = (0..50)
        .map(|i| format!(r#"{{"plugin_id":"p","operation":"p.Op","data":{{"i":{i}}}}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines).unwrap();
    let st = Command::new(BIN).arg("--state-dir").arg(dir.path()).arg("import").arg(&input).status().unwrap();
    assert!(st.success());

    let port = free_port();
    let mut d = start(dir.path(), port);
    let health: serde_json::Value = serde_json::from_str(&wait_healthy(port)).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["chain_height"], 50);

    let (status, metrics) = http_get(port, "/metrics").unwrap();
    assert!(status.contains("200"));
    for name in ["op_dbus_chain_height_blocks 50", "op_dbus_queue_capacity_batches{edge=\"embedder->chain_writer\"}"] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let (status, _) = http_get(port, "/nope").unwrap();
    assert!(status.contains("404"));

    // A second writer on the same state dir is refused with a clear message.
    let second = Command::new(BIN)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(dir.path())
        .args(["run", "--no-metrics"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another op-dbus process"));

    // SIGTERM: drain and exit 0.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    d.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    let v = Command::new(BIN).arg("--state-dir").arg(dir.path()).arg("verify").output().unwrap();
    assert!(v.status.success());
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[chain]\nmax_batch = -3\n").unwrap();
    let out =
        Command::new(BIN).arg("--config").arg(&cfg).arg("--state-dir").arg(dir.path()).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chain.max_batch") && err.contains("-3") && err.contains("1 to 65536"), "{err}");

    let out = Command::new(BIN)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(dir.path())
        .arg("run")
        .env("OP_DBUS_VECTOR_LEVEL", "ultra")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vector.level") && err.contains("OP_DBUS_VECTOR_LEVEL") && err.contains("ultra"), "{err}");
}

#[test]
fn metrics_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(dir.path())
        .args(["run", "--no-bus", "--no-service", "--metrics-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen for metrics"));
}
