//! The witness pusher: every configured witness (`[[witness]]`) gets the
//! newest checkpoint with a consistency proof from the size it last
//! cosigned (C2SP tlog-witness `add-checkpoint`), on a thread of its own,
//! with backoff while it is unreachable. Cosignatures are checked against
//! the witness's key and appended, with the checkpoint, to
//! `@timing/cosigned` before they count. Only the newest checkpoint is
//! pushed (a witness needs no intermediate ones), so a witness that was
//! down catches up in one request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::checkpointer::{Latest, Published};
use super::log::{NoteLog, COSIGNED_MAGIC};
use super::tiles::TileReader;
use crate::layout::Layout;
use crate::metrics as m;
use crate::note::cosig::verify_cosignature;
use crate::note::{Note, Verifier};
use crate::witness::client::{add_checkpoint, PushOutcome};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long one request may take once the daemon is stopping.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Pusher {
    threads: Vec<std::thread::JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

/// A witness, parsed from the config (checked there already).
#[derive(Clone, Debug)]
pub struct Witness {
    pub url: String,
    pub key: Verifier,
}

impl Pusher {
    pub fn spawn(layout: &Layout, witnesses: Vec<Witness>, latest: Latest) -> Result<Pusher, super::log::LogError> {
        let stopping = Arc::new(AtomicBool::new(false));
        if witnesses.is_empty() {
            return Ok(Pusher { threads: Vec::new(), stopping });
        }
        let (log, _) = NoteLog::open(&layout.timing.join("cosigned"), COSIGNED_MAGIC)?;
        let log = Arc::new(Mutex::new(log));
        let tiles = TileReader::new(&layout.cache.join("tiles"));
        let threads = witnesses
            .into_iter()
            .map(|w| {
                let (log, tiles, latest, stopping) = (log.clone(), tiles.clone(), latest.clone(), stopping.clone());
                std::thread::Builder::new()
                    .name("witness-push".into())
                    .spawn(move || push_loop(w, &log, &tiles, latest, &stopping))
                    .expect("spawn a witness pusher thread")
            })
            .collect();
        Ok(Pusher { threads, stopping })
    }

    /// Stops after the request in flight (each is bounded by its timeout).
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn push_loop(w: Witness, log: &Mutex<NoteLog>, tiles: &TileReader, mut latest: Latest, stopping: &AtomicBool) {
    let name = w.key.name().to_string();
    // Unknown until the witness says: size 0 gets a 409 with its size.
    let mut known: u64 = 0;
    let mut cosigned: Option<Arc<Published>> = None;
    let mut backoff = Duration::from_secs(1);
    let mut failing_since: Option<std::time::Instant> = None;
    // After the stop: a few quick requests for the last checkpoint (the
    // one signed at shutdown), so that a stopped log is witnessed up to its end.
    let mut after_stop = 3;
    loop {
        let stop = stopping.load(Ordering::Acquire);
        if stop {
            if after_stop == 0 {
                break;
            }
            after_stop -= 1;
        }
        let current = latest.borrow_and_update().clone();
        let Some(p) = current.filter(|p| cosigned.as_ref().is_none_or(|c| c.time_ns != p.time_ns)) else {
            if stop {
                break;
            }
            // Nothing new: look again shortly (the watch is read without a runtime).
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let now = crate::codec::now_ns();
        metrics::gauge!(m::WITNESS_LAG_ENTRIES, "witness" => name.clone()).set(p.size.saturating_sub(known) as f64);
        metrics::gauge!(m::WITNESS_LAG_SECONDS, "witness" => name.clone()).set(((now - p.time_ns).max(0) as f64) / 1e9);
        let timeout = if stop { STOP_TIMEOUT } else { REQUEST_TIMEOUT };
        match push_one(&w, tiles, &p, known, timeout) {
            Ok(Step::Cosigned(note)) => {
                let r = log.lock().expect("cosigned log lock").append(&note);
                match r {
                    Ok(()) => {
                        known = p.size;
                        cosigned = Some(p.clone());
                        backoff = Duration::from_secs(1);
                        failing_since = None;
                        metrics::counter!(m::WITNESS_COSIGNED, "witness" => name.clone()).increment(1);
                        metrics::gauge!(m::WITNESS_LAG_ENTRIES, "witness" => name.clone()).set(0.0);
                        metrics::gauge!(m::WITNESS_LAG_SECONDS, "witness" => name.clone()).set(0.0);
                    }
                    Err(e) => fail(&name, &format!("cannot store the cosignature: {e}"), &mut failing_since),
                }
            }
            Ok(Step::Conflict(size)) if size > p.size => {
                fail(
                    &name,
                    &format!("the witness has cosigned a tree of {size} entries, larger than ours ({}): this chain was rolled back or forked", p.size),
                    &mut failing_since,
                );
                known = size;
            }
            Ok(Step::Conflict(size)) if size == known => {
                // We sent the size it names and it still disagrees.
                fail(
                    &name,
                    &format!("the witness answers 409 with size {size}, the size just sent"),
                    &mut failing_since,
                );
            }
            Ok(Step::Conflict(size)) => {
                known = size;
                continue; // again at once, with the right proof
            }
            Err(e) => fail(&name, &e, &mut failing_since),
        }
        if failing_since.is_some() && !stop {
            sleep_unless_stopping(backoff, stopping);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn fail(name: &str, why: &str, since: &mut Option<std::time::Instant>) {
    metrics::counter!(m::WITNESS_ERRORS, "witness" => name.to_string()).increment(1);
    if since.is_none() {
        tracing::warn!(witness = name, error = why, "witness push failed; retrying with backoff");
        *since = Some(std::time::Instant::now());
    }
}

fn sleep_unless_stopping(d: Duration, stopping: &AtomicBool) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end && !stopping.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

enum Step {
    Cosigned(Vec<u8>),
    Conflict(u64),
}

fn push_one(w: &Witness, tiles: &TileReader, p: &Published, known: u64, timeout: Duration) -> Result<Step, String> {
    let proof = if known == 0 || known >= p.size {
        Vec::new()
    } else {
        crate::merkle::consistency_proof(known, p.size, &tiles.source(p.size)).map_err(|e| e.to_string())?
    };
    match add_checkpoint(&w.url, known.min(p.size), &proof, &p.note, timeout).map_err(|e| e.to_string())? {
        PushOutcome::Conflict(size) => Ok(Step::Conflict(size)),
        PushOutcome::Cosigned(lines) => {
            let mut note = Note::parse(&p.note).map_err(|e| e.to_string())?;
            let mut good = 0;
            for l in lines {
                if w.key.matches(&l) && verify_cosignature(&w.key, note.text.as_bytes(), &l).is_ok() {
                    note.signatures.push(l);
                    good += 1;
                }
            }
            if good == 0 {
                return Err("the witness answered without a valid cosignature by its configured key".into());
            }
            Ok(Step::Cosigned(note.to_bytes()))
        }
    }
}
