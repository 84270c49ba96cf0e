//! Helpers shared by the integration tests: run the real `op-dbus` binary
//! against a state dir in a temp folder, write JSON-lines input, parse the
//! JSON the CLI prints, and walk segment files byte by byte; a private
//! dbus-daemon (`bus`) and a loop-mounted BTRFS (`btrfs`).

pub mod btrfs;
pub mod bus;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_op-dbus");

/// Segment and vector file header length.
pub const HEADER_LEN: usize = 24;
/// Frame header: len, !len, crc32.
pub const FRAME_HEADER_LEN: usize = 12;
/// Vector model folder of the default (heuristic) level.
pub const HEURISTIC: &str = "heuristic-v1";

/// A command for `op-dbus --state-dir DIR --config /dev/null`, with every
/// `OP_DBUS_*` / `OPDBUS_*` variable of the caller's environment removed so
/// that only what a test sets applies.
pub fn command(state: &Path) -> Command {
    command_config(state, Path::new("/dev/null"))
}

/// As [`command`], with the configuration file `config` (for what only a
/// file can set, such as `[[witness]]`).
pub fn command_config(state: &Path, config: &Path) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("OP_DBUS_") || k.starts_with("OPDBUS_") {
            c.env_remove(k);
        }
    }
    c.env("OP_DBUS_LOG", "warn");
    // Keys made at first start: one-second epochs for an hour, so that
    // making them is instant and a restart never waits long for the next epoch.
    c.env("OP_DBUS_EPOCH_SECONDS", "1").env("OP_DBUS_PROVISION_HOURS", "1");
    c.arg("--config").arg(config).arg("--state-dir").arg(state);
    c.stdin(Stdio::null());
    c
}

/// `[proof]` for pipelines the tests start in process: as `command` sets it.
pub fn quick_proof() -> op_dbus::config::ProofConfig {
    op_dbus::config::ProofConfig { epoch_seconds: 1, provision_hours: 1, ..Default::default() }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Run {
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The stdout lines that parse as JSON objects.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(Value::is_object).collect()
    }

    /// The last stdout line as JSON (a `--json` summary or report).
    #[track_caller]
    pub fn last_json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr:\n{}", self.stderr));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nstderr:\n{}", self.stderr))
    }
}

/// Runs `op-dbus --state-dir state ARGS` with extra environment variables.
pub fn run_env(state: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut c = command(state);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    Run::from_output(c.output().expect("spawn op-dbus"))
}

/// Runs `op-dbus --config config --state-dir state ARGS`.
pub fn run_config(state: &Path, config: &Path, args: &[&str]) -> Run {
    Run::from_output(command_config(state, config).args(args).output().expect("spawn op-dbus"))
}

/// Runs `op-dbus ARGS` with no state dir and no configuration (`verify-proof`, `witness`).
pub fn run_bare(args: &[&str]) -> Run {
    let mut c = Command::new(BIN);
    c.env("OP_DBUS_LOG", "warn").args(args).stdin(Stdio::null());
    Run::from_output(c.output().expect("spawn op-dbus"))
}

pub fn run(state: &Path, args: &[&str]) -> Run {
    run_env(state, args, &[])
}

/// Writes one line per item (each followed by `\n`).
pub fn write_lines<S: AsRef<[u8]>>(path: &Path, lines: impl IntoIterator<Item = S>) {
    let f = std::fs::File::create(path).expect("create input file");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    for l in lines {
        w.write_all(l.as_ref()).unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
}

/// One import line with the required fields.
pub fn line(plugin: &str, operation: &str, data: Value) -> String {
    serde_json::json!({ "plugin_id": plugin, "operation": operation, "data": data }).to_string()
}

/// Writes `lines` to `file` and imports them with `args` (e.g. `--json`).
pub fn import_lines<S: AsRef<[u8]>>(
    state: &Path,
    file: &Path,
    lines: impl IntoIterator<Item = S>,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Run {
    write_lines(file, lines);
    let mut a = vec!["import", file.to_str().expect("utf-8 path")];
    a.extend_from_slice(args);
    run_env(state, &a, envs)
}

/// `log --json ARGS`: one object per block. Panics unless the command succeeds.
#[track_caller]
pub fn log_json(state: &Path, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["log", "--json"];
    a.extend_from_slice(args);
    let r = run(state, &a);
    r.expect_code(0);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect()
}

/// `verify --json`: the exit code and the report.
#[track_caller]
pub fn verify_json(state: &Path) -> (i32, Value) {
    let r = run(state, &["verify", "--json"]);
    assert!(r.code == 0 || r.code == 1, "verify failed to run\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let report = r.last_json();
    assert_eq!(report["ok"].as_bool(), Some(r.code == 0), "exit code and `ok` disagree: {report}");
    (r.code, report)
}

/// `status --json`.
#[track_caller]
pub fn status_json(state: &Path) -> Value {
    let r = run(state, &["status", "--json"]);
    r.expect_code(0);
    r.last_json()
}

/// Seqs of a log, as u64.
pub fn seqs(blocks: &[Value]) -> Vec<u64> {
    blocks.iter().map(|b| b["seq"].as_u64().expect("seq")).collect()
}

/// Checks that `blocks` (a full log) is seqs 0..n linked by prev_hash.
#[track_caller]
pub fn assert_linked(blocks: &[Value]) {
    let zero = "0".repeat(64);
    let mut prev = zero.as_str();
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b["seq"].as_u64(), Some(i as u64), "seqs are not contiguous at position {i}");
        assert_eq!(b["prev_hash"].as_str(), Some(prev), "seq {i} does not link to the block before it");
        prev = b["hash"].as_str().expect("hash");
    }
}

/// Recursively copies a directory (state dirs hold only files and folders).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Segment files of a state dir, in order, with their first seq.
pub fn segments(state: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(state.join("@timing"))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let seq = p.file_name()?.to_str()?.strip_suffix(".chain")?.parse().ok()?;
            Some((seq, p))
        })
        .collect();
    out.sort();
    out
}

/// Path of the vector file paired with a segment.
pub fn vector_file(state: &Path, first_seq: u64) -> PathBuf {
    state.join("@vectors").join(HEURISTIC).join(format!("{first_seq:020}.vec"))
}

/// One frame of a segment file, found by walking the length fields.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Offset of the frame header in the file.
    pub offset: usize,
    /// Frame length including its 12-byte header.
    pub len: usize,
    /// The seq stored in the block body.
    pub seq: u64,
}

impl Frame {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    pub fn payload<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.offset + FRAME_HEADER_LEN..self.offset + self.len]
    }
}

/// Walks the frames of a segment file's bytes (which must be sound) and
/// reads each block's seq from its MessagePack body, independently of the
/// crate's own parser.
pub fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    assert!(bytes.len() >= HEADER_LEN, "segment shorter than its header");
    assert_eq!(&bytes[..8], b"OPDCHAIN", "segment magic");
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let inv = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        assert_eq!(inv, !(len as u32), "frame length check at offset {pos}");
        let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        let payload = &bytes[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len];
        assert_eq!(crc32fast::hash(payload), crc, "frame checksum at offset {pos}");
        out.push(Frame { offset: pos, len: FRAME_HEADER_LEN + len, seq: body_seq(payload) });
        pos += FRAME_HEADER_LEN + len;
    }
    assert_eq!(pos, bytes.len(), "frames do not end at the end of the file");
    out
}

/// The seq of a block body: a 6-element MessagePack array
/// `[version, seq, prev_hash, timestamp, footprint, vector]`.
pub fn body_seq(payload: &[u8]) -> u64 {
    assert_eq!(payload[0], 0x96, "block body is a fixarray of 6");
    assert_eq!(payload[1], 0x01, "format version 1 as a positive fixint");
    let p = &payload[2..];
    match p[0] {
        b @ 0x00..=0x7f => b as u64,
        0xcc => p[1] as u64,
        0xcd => u16::from_be_bytes(p[1..3].try_into().unwrap()) as u64,
        0xce => u32::from_be_bytes(p[1..5].try_into().unwrap()) as u64,
        0xcf => u64::from_be_bytes(p[1..9].try_into().unwrap()),
        other => panic!("seq is not a MessagePack uint (marker {other:#x})"),
    }
}

/// Recomputes a frame's stored block hash and CRC after its body was
/// edited in place (what a careful forger would do).
pub fn reseal_frame(file: &mut [u8], frame: &Frame) {
    use sha2::Digest;
    let start = frame.offset + FRAME_HEADER_LEN;
    let end = frame.offset + frame.len;
    let body_end = end - 32;
    let mut h = sha2::Sha256::new();
    h.update(b"op-dbus:block:v1\0");
    h.update(&file[start..body_end]);
    let hash: [u8; 32] = h.finalize().into();
    file[body_end..end].copy_from_slice(&hash);
    let crc = crc32fast::hash(&file[start..end]);
    file[frame.offset + 8..frame.offset + 12].copy_from_slice(&crc.to_le_bytes());
}

/// XORs one byte of a file with `mask` in place (no rewrite of the file,
/// so a writer appending to it meanwhile loses nothing).
pub fn xor_byte_in_place(path: &Path, pos: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, pos).unwrap();
}

/// XORs one byte of a file with `mask`.
pub fn xor_byte(path: &Path, pos: usize, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[pos] ^= mask;
    std::fs::write(path, b).unwrap();
}

/// Polls `probe` until it returns `Some`, and returns that; panics naming
/// `what` once `timeout` has passed. The probe runs at once, then after
/// pauses growing from 10 ms to 200 ms: a wait for a condition, never a
/// guess of how long it takes.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls `cond` until it holds (see `wait_for`).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()))
}

/// `wait_for` inside an async test: it pauses with tokio's timer, so that
/// the runtime's other tasks (the pipeline's actors) go on meanwhile.
pub async fn wait_for_async<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a daemon's
/// `--metrics-listen`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /health` on 127.0.0.1:`port`: the whole response, or `None` while
/// nothing answers (within a second).
fn get_health(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// Waits until a daemon started with `--metrics-listen 127.0.0.1:PORT`
/// records: it answers `/health` only once its pipeline runs and its bus
/// monitor (and service, if any) are attached. Panics if the daemon exits
/// first, does not answer in time or reports itself unhealthy (and then
/// kills it, so that it does not hold the state dir or a mount).
#[track_caller]
pub fn wait_recording(daemon: &mut Child, port: u16) {
    struct KillOnPanic<'a>(&'a mut Child);
    impl Drop for KillOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = KillOnPanic(daemon);
    let health = wait_for("the daemon to answer /health", Duration::from_secs(30), || {
        if let Some(status) = guard.0.try_wait().unwrap() {
            panic!("the daemon exited at start-up: {status}");
        }
        get_health(port)
    });
    assert!(health.starts_with("HTTP/1.0 200"), "the daemon is not healthy:\n{health}");
}

/// Deterministic PRNG (SplitMix64): the tests must be reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}
