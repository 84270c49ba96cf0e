//! `op-dbus witness`: a C2SP tlog-witness for op-dbus logs (docs/FORMAT.md,
//! "Witnesses"), and the client the daemon pushes checkpoints with.
//!
//! The witness keeps, per log origin, the newest checkpoint it cosigned,
//! in `<dir>/logs/<origin hash>`; checking a request against it and
//! replacing it happen under that origin's lock, and the file is durable
//! (temporary file, fdatasync, rename, folder fsync) before the
//! cosignature is returned. Its key is `<dir>/witness.key` (made on first
//! start; the vkey is `<dir>/witness.pub` and printed at start).
//! Refused checkpoints that were correctly signed (a fork, a rollback, a
//! rewrite) are kept in `<dir>/evidence/` (at most [`MAX_EVIDENCE`] per
//! log), since they prove the log misbehaved.

pub mod client;
mod http;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::merkle::{empty_root, verify_consistency, Hash};
use crate::note::checkpoint::{verify_checkpoint, CheckpointError};
use crate::note::cosig::Cosigner;
use crate::note::{Note, Verifier};
use client::origin_hash;

/// The largest add-checkpoint body accepted.
pub const MAX_BODY: usize = 64 << 10;
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may sit idle or take to send a request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused checkpoints kept per log.
pub const MAX_EVIDENCE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("two --log keys have the origin {0:?}")]
    DuplicateLog(String),
    #[error("--log {0:?} is not an Ed25519 log key (signature type 0x01)")]
    NotALogKey(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WitnessError + '_ {
    move |source| WitnessError::Io { path: path.to_path_buf(), source }
}

/// The newest cosigned checkpoint of one log.
#[derive(Clone, Debug)]
struct Latest {
    size: u64,
    root: Hash,
    time_ns: i64,
    text: String,
    /// The note as served: the log's signature and ours.
    note: Vec<u8>,
}

struct Log {
    identity: Verifier,
    latest: Mutex<Option<Latest>>,
    evidence: AtomicUsize,
}

/// The witness: its key, its folder and the logs it knows.
pub struct Witness {
    dir: PathBuf,
    key: Cosigner,
    logs: HashMap<String, Log>,
}

/// An answer: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn answer(status: u16, body: impl Into<Vec<u8>>) -> Answer {
    let mut body = body.into();
    if status != 200 && !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    Answer { status, content_type: "text/plain; charset=utf-8", body }
}

fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WitnessError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    let d = path.parent().unwrap_or(Path::new("."));
    File::open(d).and_then(|f| f.sync_all()).map_err(io_err(d))
}

impl Witness {
    /// Opens (or makes) the witness folder; `name` names a key made now.
    pub fn open(dir: &Path, name: &str, logs: Vec<Verifier>) -> Result<Witness, WitnessError> {
        for d in [dir.to_path_buf(), dir.join("logs"), dir.join("evidence")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let key_path = dir.join("witness.key");
        let key = match fs::read_to_string(&key_path) {
            Ok(t) => Cosigner::from_skey(&t)
                .map_err(|e| WitnessError::Damaged { path: key_path.clone(), detail: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let k = Cosigner::generate(name)
                    .map_err(|e| WitnessError::Damaged { path: key_path.clone(), detail: e.to_string() })?;
                write_durable(&key_path, format!("{}\n", k.to_skey()).as_bytes(), 0o600)?;
                k
            }
            Err(e) => return Err(WitnessError::Io { path: key_path, source: e }),
        };
        write_durable(&dir.join("witness.pub"), format!("{}\n", key.verifier().to_vkey()).as_bytes(), 0o644)?;
        let mut map = HashMap::new();
        for identity in logs {
            if identity.alg() != crate::note::ALG_ED25519 {
                return Err(WitnessError::NotALogKey(identity.to_vkey()));
            }
            let origin = identity.name().to_string();
            let path = dir.join("logs").join(origin_hash(&origin));
            let latest = match fs::read(&path) {
                Ok(b) => {
                    let v = verify_checkpoint(&b, &identity)
                        .map_err(|e| WitnessError::Damaged { path: path.clone(), detail: e.to_string() })?;
                    Some(Latest {
                        size: v.cp.checkpoint.size,
                        root: v.cp.checkpoint.root,
                        time_ns: v.cp.time_ns,
                        text: v.note.text.clone(),
                        note: b,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(WitnessError::Io { path, source: e }),
            };
            let evidence = fs::read_dir(dir.join("evidence").join(origin_hash(&origin))).map_or(0, |r| r.count());
            let log = Log { identity, latest: Mutex::new(latest), evidence: AtomicUsize::new(evidence) };
            if map.insert(origin.clone(), log).is_some() {
                return Err(WitnessError::DuplicateLog(origin));
            }
        }
        Ok(Witness { dir: dir.to_path_buf(), key, logs: map })
    }

    pub fn verifier(&self) -> Verifier {
        self.key.verifier()
    }

    /// `POST /add-checkpoint` (tlog-witness), with op-dbus's extra rule:
    /// a checkpoint's time must be after the last cosigned one's.
    pub fn add_checkpoint(&self, body: &[u8]) -> Answer {
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(_) => return answer(400, "the body is not UTF-8"),
        };
        let Some((first, mut rest)) = text.split_once('\n') else { return answer(400, "no old size line") };
        let Some(old) = first.strip_prefix("old ").and_then(crate::note::decimal::<u64>) else {
            return answer(400, "the first line is not `old N` with N a decimal without leading zeros");
        };
        let mut proof: Vec<Hash> = Vec::new();
        loop {
            let Some((line, r)) = rest.split_once('\n') else {
                return answer(400, "no empty line before the checkpoint");
            };
            rest = r;
            if line.is_empty() {
                break;
            }
            if proof.len() == 63 {
                return answer(400, "more than 63 consistency proof lines");
            }
            match crate::note::b64_decode(line).and_then(|b| Hash::try_from(b).ok()) {
                Some(h) => proof.push(h),
                None => return answer(400, "a proof line is not a base64 SHA-256 hash"),
            }
        }
        let note = rest.as_bytes();
        let parsed = match Note::parse(note) {
            Ok(n) => n,
            Err(e) => return answer(400, e.to_string()),
        };
        let origin = parsed.text.split('\n').next().unwrap_or("");
        let Some(log) = self.logs.get(origin) else { return answer(404, format!("unknown log origin {origin:?}")) };
        let cp = match verify_checkpoint(note, &log.identity) {
            Ok(v) => v.cp,
            Err(e @ (CheckpointError::Malformed(_) | CheckpointError::Note(crate::note::NoteError::Malformed(_)))) => {
                return answer(400, e.to_string())
            }
            Err(e) => return answer(403, e.to_string()),
        };
        let (size, root) = (cp.checkpoint.size, cp.checkpoint.root);
        if old > size {
            return answer(400, format!("old size {old} is larger than the checkpoint's size {size}"));
        }
        let mut latest = log.latest.lock().expect("the log's lock");
        let known = latest.as_ref().map_or(0, |l| l.size);
        if let Some(l) = latest.as_ref() {
            // A retry of what was cosigned (its answer was lost): the same answer.
            if l.text == parsed.text {
                return self.cosignature_of(l);
            }
        }
        if old != known {
            return Answer { status: 409, content_type: "text/x.tlog.size", body: format!("{known}\n").into_bytes() };
        }
        if size == 0 && root != empty_root() {
            return self.refuse(
                log,
                origin,
                note,
                422,
                "a checkpoint of size 0 must have the empty tree's root".into(),
            );
        }
        if old == 0 && !proof.is_empty() {
            return answer(422, "old size 0 takes an empty proof");
        }
        if let Some(l) = latest.as_ref() {
            if let Err(e) = verify_consistency(l.size, size, &l.root, &root, &proof) {
                return self.refuse(
                    log,
                    origin,
                    note,
                    422,
                    format!("not consistent with the checkpoint of size {} this witness cosigned: {e}", l.size),
                );
            }
            if cp.time_ns <= l.time_ns {
                return self.refuse(
                    log,
                    origin,
                    note,
                    403,
                    format!(
                        "its time {} is not after the time {} of the checkpoint this witness cosigned last",
                        cp.time_ns, l.time_ns
                    ),
                );
            }
        }
        let now = (crate::codec::now_ns() / 1_000_000_000).max(1) as u64;
        let line = self.key.cosign(parsed.text.as_bytes(), now);
        let mut stored = parsed.clone();
        stored.signatures.retain(|s| !(s.name == line.name && s.key_id == line.key_id));
        stored.signatures.push(line);
        let bytes = stored.to_bytes();
        let path = self.dir.join("logs").join(origin_hash(origin));
        if let Err(e) = write_durable(&path, &bytes, 0o644) {
            tracing::error!(error = %e, "cannot persist the cosigned checkpoint; refusing to cosign");
            return answer(503, "the witness cannot persist its state");
        }
        let l = Latest { size, root, time_ns: cp.time_ns, text: parsed.text.clone(), note: bytes };
        let a = self.cosignature_of(&l);
        *latest = Some(l);
        tracing::info!(origin, size, "cosigned");
        a
    }

    /// Our cosignature lines on a stored checkpoint.
    fn cosignature_of(&self, l: &Latest) -> Answer {
        let v = self.key.verifier();
        let mut body = String::new();
        if let Ok(n) = Note::parse(&l.note) {
            for s in n.signatures.iter().filter(|s| v.matches(s)) {
                body.push_str(&s.to_line());
                body.push('\n');
            }
        }
        Answer { status: 200, content_type: "text/plain; charset=utf-8", body: body.into_bytes() }
    }

    /// Refuses a correctly signed checkpoint and keeps it as evidence.
    fn refuse(&self, log: &Log, origin: &str, note: &[u8], status: u16, why: String) -> Answer {
        tracing::error!(origin, why, "refused a checkpoint signed by the log: evidence of a fork, rollback or rewrite");
        if log.evidence.load(Ordering::Relaxed) < MAX_EVIDENCE {
            let d = self.dir.join("evidence").join(origin_hash(origin));
            let p = d.join(format!("{}.note", crate::codec::now_ns()));
            let mut text = format!("# {status}: {why}\n").into_bytes();
            text.extend_from_slice(note);
            if fs::create_dir_all(&d).is_ok() && write_durable(&p, &text, 0o644).is_ok() {
                log.evidence.fetch_add(1, Ordering::Relaxed);
            }
        }
        answer(status, why)
    }

    /// `GET /<origin hash>/checkpoint`.
    pub fn get_checkpoint(&self, hash: &str) -> Answer {
        for (origin, log) in &self.logs {
            if origin_hash(origin) == hash {
                if let Some(l) = log.latest.lock().expect("the log's lock").as_ref() {
                    return Answer { status: 200, content_type: "text/plain; charset=utf-8", body: l.note.clone() };
                }
            }
        }
        answer(404, "no checkpoint cosigned for that origin")
    }

    fn route(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        let path = path.split('?').next().unwrap_or(path);
        match (method, path) {
            ("POST", "/add-checkpoint") => self.add_checkpoint(body),
            (_, "/add-checkpoint") => answer(405, "add-checkpoint is a POST"),
            ("GET", p) if p.ends_with("/checkpoint") && p.matches('/').count() == 2 => {
                self.get_checkpoint(&p[1..p.len() - "/checkpoint".len()])
            }
            _ => answer(404, "not found"),
        }
    }
}

/// Serves one connection: requests until close, error or idle timeout.
fn serve(w: &Witness, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else { return };
    let mut r = BufReader::new(stream);
    loop {
        match http::read_message(&mut r, MAX_BODY, false) {
            Ok(m) => {
                let a = w.route(&m.start.0, &m.start.1, &m.body);
                let close = m.wants_close();
                if http::write_response(&mut out, a.status, a.content_type, &a.body, close).is_err() || close {
                    return;
                }
            }
            Err(http::HttpError::Closed) => return,
            Err(http::HttpError::Io(_)) => return, // timeout or reset: nothing to answer
            Err(e @ http::HttpError::TooLarge(_)) => {
                let _ = http::write_response(&mut out, 413, "text/plain", format!("{e}\n").as_bytes(), true);
                return;
            }
            Err(e) => {
                let _ = http::write_response(&mut out, 400, "text/plain", format!("{e}\n").as_bytes(), true);
                return;
            }
        }
    }
}

/// Accepts connections until the process ends, each on its own thread,
/// at most [`MAX_CONNECTIONS`] at once.
pub fn serve_forever(w: Arc<Witness>, listener: TcpListener) {
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::AcqRel);
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = http::write_response(&mut s, 503, "text/plain", b"too many connections\n", true);
            continue;
        }
        let (w, live2) = (w.clone(), live.clone());
        let spawned = std::thread::Builder::new().name("witness-conn".into()).spawn(move || {
            serve(&w, s);
            live2.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// `op-dbus witness`: opens the folder, prints the key and address, serves.
/// It is stopped by a signal; its state is durable after every answer, so
/// any stop is clean.
pub fn run_cli(listen: SocketAddr, dir: &Path, name: &str, logs: Vec<Verifier>) -> Result<(), WitnessError> {
    let w = Witness::open(dir, name, logs)?;
    let listener = TcpListener::bind(listen).map_err(|source| WitnessError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| WitnessError::Listen { addr: listen, source })?;
    println!("witness {}", w.verifier().to_vkey());
    println!("listening http://{addr}");
    for origin in w.logs.keys() {
        println!("log {origin}");
    }
    let _ = io::stdout().flush();
    serve_forever(Arc::new(w), listener);
    Ok(())
}

#[cfg(test)]
mod tests;
