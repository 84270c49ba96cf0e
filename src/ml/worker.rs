//! The vector worker: follows the chain and stores a search vector for
//! every durable block, in seq order, on its own thread at idle priority.
//!
//! Its queue is the chain itself. It never receives events from the
//! pipeline: it reads the blocks the ChainWriter reported durable
//! (`Health::chain_height`) from the segments, a chunk at a time. So the
//! chain never waits on it, a burst far above ML speed costs nothing but
//! lag (`op_dbus_vector_lag_blocks`), nothing can be dropped, and a level
//! change, a crash or a new model is the same case: the store of the
//! active model is behind the chain, and the worker fills it from where it
//! stops (`op-dbus embed --backfill` does the same in the foreground).
//! Memory is bounded by one chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{EmbedStats, Engine};
use super::store::StoreWriter;
use crate::chain::reader::Cursor;
use crate::layout::Layout;
use crate::metrics as m;

/// Blocks read and embedded per step with a model: two batches, so that a
/// stop is noticed within about two seconds even at the slowest level
/// (MPNet, ~35 texts/s on two cores) and each fsync covers a useful amount.
pub const CHUNK: usize = 64;
/// Blocks per step with heuristic vectors (microseconds each).
pub const HEURISTIC_CHUNK: usize = 4096;
/// How often an idle worker looks for new durable blocks.
const POLL: Duration = Duration::from_millis(200);
/// While the chain grows faster than this (blocks a second), a burst is
/// being recorded and a model waits: even at idle priority its memory
/// traffic and wake-ups cost the capture a fifth of its rate on two cores
/// (BENCHMARKS.md). The lag drains once the burst is over.
pub const BUSY_RATE: u64 = 1000;
/// A model never waits longer than this at a time: on a host that is always
/// that busy, it embeds one chunk per period (the lag metric shows it).
pub const MAX_DEFER: Duration = Duration::from_secs(30);

/// Whether the model should wait for a burst to pass (see BUSY_RATE).
pub struct Burst {
    last: (u64, Instant),
    busy: bool,
    since: Option<Instant>,
}

impl Burst {
    pub fn new(height: u64, now: Instant) -> Self {
        Burst { last: (height, now), busy: false, since: None }
    }

    /// Called each round with the durable height: true to wait this round.
    pub fn defer(&mut self, height: u64, now: Instant) -> bool {
        let dt = now.duration_since(self.last.1);
        if dt >= POLL {
            let grown = height.saturating_sub(self.last.0);
            self.busy = grown as f64 > BUSY_RATE as f64 * dt.as_secs_f64();
            self.last = (height, now);
        }
        if !self.busy {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < MAX_DEFER {
            return true;
        }
        self.since = Some(now); // one chunk now, then wait again
        false
    }
}

/// Why a chunk was not embedded and stored.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Chain(#[from] crate::chain::StoreError),
    #[error("chain read returned seq {got} where {expected} was expected")]
    OutOfOrder { got: u64, expected: u64 },
    #[error(transparent)]
    Embed(#[from] super::MlError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

/// Embeds and stores the next chunk below `to`; returns how many blocks.
/// `cursor` remembers where in the chain the last chunk ended.
pub fn step(
    layout: &Layout,
    cursor: &mut Cursor,
    engine: &Engine,
    store: &mut StoreWriter,
    to: u64,
) -> Result<(u64, EmbedStats), StepError> {
    let from = store.len();
    let max = if engine.is_heuristic() { HEURISTIC_CHUNK } else { CHUNK };
    let blocks = cursor.read(layout, from, to, max)?;
    if blocks.is_empty() {
        return Ok((0, EmbedStats::default()));
    }
    // The store is dense by seq: the chain must hand back exactly from..
    if let Some((i, b)) = blocks.iter().enumerate().find(|(i, b)| b.body.seq != from + *i as u64) {
        return Err(StepError::OutOfOrder { got: b.body.seq, expected: from + i as u64 });
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(blocks.len() * super::store::stride(engine.dims()));
    let stats = engine.embed_blocks(&blocks, &mut out)?;
    store.append(&out)?;
    metrics::histogram!(m::VECTOR_DURATION).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::VECTOR_EMBEDDED, "model" => engine.id().to_string()).increment(blocks.len() as u64);
    metrics::counter!(m::VECTOR_CACHE_HITS).increment(stats.hits);
    metrics::counter!(m::VECTOR_CACHE_MISSES).increment(stats.misses);
    Ok((blocks.len() as u64, stats))
}

/// How often [`backfill`] reports progress, at most.
const BACKFILL_PROGRESS: Duration = Duration::from_secs(5);

/// What a backfill did.
#[derive(Clone, Debug, PartialEq)]
pub struct Backfill {
    /// The model whose store was filled.
    pub(crate) model: String,
    /// Blocks embedded now.
    pub(crate) blocks: u64,
    /// Blocks with a vector of `model` now.
    pub(crate) stored: u64,
    /// The chain's length when the backfill started (how far it filled).
    pub(crate) chain: u64,
    /// Texts found in the embedding cache, and not.
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) seconds: f64,
    /// Why the level's model did not load, if `model` is the fallback.
    pub(crate) fallback: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("cannot open the search vector store")]
    Store(#[source] super::store::StoreError),
    #[error(transparent)]
    Chain(#[from] crate::chain::StoreError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("cannot sync the embedding cache")]
    Cache(#[source] super::cache::CacheError),
}

/// Fills `engine`'s store from the chain up to its current end, in the
/// foreground (`embed --backfill`; the caller holds the writer's lock, so
/// no worker writes the store meanwhile). `progress(stored, chain)` is
/// called at most every 5 s.
pub fn backfill(
    layout: &Layout,
    engine: &Engine,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Backfill, BackfillError> {
    let mut store = StoreWriter::open(layout, engine.id(), engine.dims()).map_err(BackfillError::Store)?;
    let to = crate::chain::reader::read_head(layout)?.next_seq;
    let (from, started) = (store.len(), Instant::now());
    let (mut hits, mut misses) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let mut cursor = Cursor::default();
    while store.len() < to {
        let (n, stats) = step(layout, &mut cursor, engine, &mut store, to)?;
        if n == 0 {
            break;
        }
        hits += stats.hits;
        misses += stats.misses;
        if last_report.elapsed() >= BACKFILL_PROGRESS {
            progress(store.len(), to);
            last_report = Instant::now();
        }
    }
    if let Some(c) = engine.cache() {
        c.sync().map_err(BackfillError::Cache)?;
    }
    Ok(Backfill {
        model: engine.id().to_string(),
        blocks: store.len() - from,
        stored: store.len(),
        chain: to,
        hits,
        misses,
        seconds: started.elapsed().as_secs_f64(),
        fallback: engine.fallback().map(str::to_string),
    })
}

/// Lowers the calling thread (and the threads it creates later, such as
/// ONNX Runtime's pool) to `SCHED_IDLE`: it runs only when the CPU has
/// nothing else to do, so capture and commits always come first.
pub fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid local.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        // SAFETY: as above; nice 19 is the fallback when SCHED_IDLE is refused.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the worker needs to know of the chain: how far it is durable.
pub type Height = Arc<dyn Fn() -> u64 + Send + Sync>;

impl Worker {
    /// Starts the worker. `make` builds the engine on the worker's thread
    /// (after lowering its priority, so that the model's threads inherit
    /// it); the engine is handed back once loaded, for searches.
    pub fn spawn(
        layout: Layout,
        height: Height,
        make: impl FnOnce() -> Option<Engine> + Send + 'static,
    ) -> (Worker, Option<Arc<Engine>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("vector-worker".into())
                .spawn(move || {
                    lower_priority();
                    let Some(engine) = make().map(Arc::new) else {
                        let _ = tx.send(None);
                        return;
                    };
                    let _ = tx.send(Some(engine.clone()));
                    run(&layout, &engine, &*height, &stop);
                })
                .expect("spawn the vector worker")
        };
        let engine = rx.recv().ok().flatten();
        (Worker { stop, thread: Some(thread) }, engine)
    }

    /// Stops after the current chunk and joins the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(layout: &Layout, engine: &Engine, height: &(dyn Fn() -> u64 + Send + Sync), stop: &AtomicBool) {
    let mut store = loop {
        match StoreWriter::open(layout, engine.id(), engine.dims()) {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the search vector store; retrying in 5 s");
                metrics::counter!(m::VECTOR_ERRORS).increment(1);
                std::thread::park_timeout(Duration::from_secs(5));
                if stop.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    };
    let mut backoff = Duration::from_secs(1);
    let mut cursor = Cursor::default();
    let mut burst = Burst::new(height(), Instant::now());
    while !stop.load(Ordering::Acquire) {
        let to = height();
        metrics::gauge!(m::VECTOR_HEIGHT).set(store.len() as f64);
        metrics::gauge!(m::VECTOR_LAG).set(to.saturating_sub(store.len()) as f64);
        let defer = !engine.is_heuristic() && burst.defer(to, Instant::now());
        metrics::gauge!(m::VECTOR_DEFERRED).set(defer as u8 as f64);
        if store.len() >= to || defer {
            std::thread::park_timeout(POLL);
            continue;
        }
        match step(layout, &mut cursor, engine, &mut store, to) {
            // Nothing readable below the durable height yet: wait, never spin.
            Ok((0, _)) => std::thread::park_timeout(POLL),
            Ok(_) => backoff = Duration::from_secs(1),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "embedding failed");
                metrics::counter!(m::VECTOR_ERRORS).increment(1);
                std::thread::park_timeout(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
    // Heuristic vectors cost ~1 µs a block: finish them, so that a stopped
    // daemon (or an `import`) leaves a complete store, and a snapshot taken
    // next does not carry the rest. A model's lag is left to the next start.
    if engine.is_heuristic() {
        while store.len() < height() {
            match step(layout, &mut cursor, engine, &mut store, height()) {
                Ok((0, _)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    if let Some(c) = engine.cache() {
        let _ = c.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_waits_out_a_burst_but_not_forever() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Burst::new(0, t0);
        // Quiet: 100 blocks a second.
        assert!(!b.defer(20, at(200)));
        assert!(!b.defer(40, at(400)));
        // A burst: 10,000 blocks a second.
        assert!(b.defer(2040, at(600)));
        // Inside a poll window the last verdict holds.
        assert!(b.defer(2100, at(650)));
        // Sustained: after MAX_DEFER one round goes through, then it waits again.
        let mut h = 2100;
        let mut ms = 800;
        let mut passed = 0;
        while ms < 600 + 2 * MAX_DEFER.as_millis() as u64 + 100 {
            h += 2000;
            if !b.defer(h, at(ms)) {
                passed += 1;
            }
            ms += 200;
        }
        assert_eq!(passed, 2, "one round per MAX_DEFER under a sustained burst");
        // The burst ends: no more waiting.
        assert!(!b.defer(h + 10, at(ms)));
        assert!(!b.defer(h + 20, at(ms + 200)));
    }
}
