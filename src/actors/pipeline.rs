//! The one wiring function. Actors are built sink-first, each given its
//! downstream outbox in its constructor; nothing is looked up at run time.
//!
//! ```text
//! source --4--> Footprinter --4--> Embedder --8--> ChainWriter --8 (try_send)--> CacheIndexer
//! ```
//! (capacities in batches; see each actor's `INBOX_CAPACITY`.)
//!
//! Shutdown runs from the source (Vector's `RunningTopology::stop`,
//! mini-redis): the owner drops the source outbox, each stage drains its
//! inbox, flushes, and drops its own outbox, so the close travels down the
//! pipeline behind the last batch. The CacheIndexer, last in line, reports
//! done. Nothing is cut short except by the caller's deadline.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use tokio::sync::oneshot;

use super::cache_indexer::{self, CacheIndexer};
use super::chain_writer::{self, ChainWriter};
use super::edge::{edge, Outbox};
use super::embedder::{self, Embedder};
use super::footprinter::{self, Footprinter};
use crate::chain::{ChainStore, Layout, Recovery};
use crate::config::VectorLevel;
use crate::index::Index;
use crate::messages::{Committed, PipelineError, RawEvent, RawEventBatch};

/// Progress shared with the health endpoint and `status`.
#[derive(Debug, Default)]
pub struct Health {
    /// Durable blocks (the next seq to assign).
    pub chain_height: AtomicU64,
    /// Indexed blocks (the next seq to index).
    pub index_height: AtomicU64,
    /// The last commit failed and the writer is retrying.
    pub writer_failing: AtomicBool,
}

/// Failures to inject, for the supervision tests. Empty in production.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the n-th chain append half-way through its write.
    pub chain_append: Option<u64>,
    /// Fail the n-th index batch.
    pub index_batch: Option<u64>,
    /// Make every commit take at least this long (a slow disk).
    pub commit_delay: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub layout: Layout,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub segment_max_bytes: u64,
    pub vector_level: VectorLevel,
    pub max_data_bytes: usize,
    pub index_sync_interval: Duration,
    pub faults: Faults,
}

/// The actors' addresses. Nothing sends to them (data moves over edges),
/// but actix restarts a supervised actor only while its mailbox has a
/// connected address: drop these and a failed actor is gone for good.
struct Supervised {
    _footprinter: Addr<Footprinter>,
    _embedder: Addr<Embedder>,
    _chain_writer: Addr<ChainWriter>,
    _cache_indexer: Addr<CacheIndexer>,
}

pub struct Pipeline {
    source: Option<Outbox<RawEventBatch>>,
    _actors: Supervised,
    /// Everything submitted is durable.
    writer_done: oneshot::Receiver<()>,
    /// Everything durable is indexed (best effort: the index is derived).
    index_done: oneshot::Receiver<()>,
    arbiters: Vec<Arbiter>,
    pub health: Arc<Health>,
    /// What opening the chain had to repair.
    pub recovery: Recovery,
    _lock: Locks,
}

/// The writer's locks: the state dir's, and the cache dir's when it lives
/// elsewhere (`OPDBUS_CACHE_DIR`), so that two state dirs cannot share one
/// index and keep rebuilding it from different chains.
pub struct Locks {
    _state: File,
    _cache: Option<File>,
}

/// Takes the state dir's lock (and the cache dir's): one writer per state dir.
pub fn lock_state_dir(layout: &Layout) -> anyhow::Result<Locks> {
    layout.create_dirs().with_context(|| format!("cannot create state dir {}", layout.state_dir.display()))?;
    let state = lock_dir(&layout.state_dir)?;
    let cache = if layout.cache.starts_with(&layout.state_dir) { None } else { Some(lock_dir(&layout.cache)?) };
    Ok(Locks { _state: state, _cache: cache })
}

fn lock_dir(dir: &std::path::Path) -> anyhow::Result<File> {
    let path = dir.join("op-dbus.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "{} is in use by another op-dbus process (pid {}); stop it or use another --state-dir",
            dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Builds and starts the pipeline. Must run inside an actix `System`.
pub fn spawn_pipeline(cfg: PipelineConfig) -> anyhow::Result<Pipeline> {
    let lock = lock_state_dir(&cfg.layout)?;
    let index = Index::open_or_reset(&cfg.layout.cache).context("cannot open the index")?;
    // The index is the witness of how far the chain reached.
    let witness = index.head().ok().flatten().map(|h| h.seq + 1);
    let (mut store, recovery) = ChainStore::open_with_witness(&cfg.layout, cfg.segment_max_bytes, witness)
        .with_context(|| format!("cannot open the chain in {}", cfg.layout.timing.display()))?;
    if let Some(n) = cfg.faults.chain_append {
        store.inject_failure_at_append(n);
    }
    let health = Arc::new(Health::default());
    // Published before any actor starts: the indexer's start-up catch-up
    // reads up to this height, and it may run before the writer exists.
    health.chain_height.store(store.head().next_seq, std::sync::atomic::Ordering::Release);

    // Sink first.
    let (index_tx, index_rx) = edge("chain_writer->cache_indexer", cache_indexer::INBOX_CAPACITY);
    let (chain_tx, chain_rx) = edge("embedder->chain_writer", chain_writer::INBOX_CAPACITY);
    let (embed_tx, embed_rx) = edge("footprinter->embedder", embedder::INBOX_CAPACITY);
    let (source_tx, source_rx) = edge("source->footprinter", footprinter::INBOX_CAPACITY);
    let (done_tx, index_done) = oneshot::channel();
    let (writer_done_tx, writer_done) = oneshot::channel();

    let arbiters: Vec<Arbiter> = (0..4).map(|_| Arbiter::new()).collect();
    let cache_indexer = {
        let (layout, health, sync, fail) =
            (cfg.layout.clone(), health.clone(), cfg.index_sync_interval, cfg.faults.index_batch);
        Supervisor::start_in_arbiter(&arbiters[3].handle(), move |_| {
            CacheIndexer::new(index_rx, index, layout, health, sync, done_tx, fail)
        })
    };
    let chain_writer = {
        let (health, max_batch, max_wait, delay) =
            (health.clone(), cfg.max_batch, cfg.max_wait, cfg.faults.commit_delay);
        Supervisor::start_in_arbiter(&arbiters[2].handle(), move |_| {
            ChainWriter::new(chain_rx, store, vec![index_tx], max_batch, max_wait, health)
                .with_commit_delay(delay)
                .with_done(writer_done_tx)
        })
    };
    let level = cfg.vector_level;
    let embedder =
        Supervisor::start_in_arbiter(&arbiters[1].handle(), move |_| Embedder::new(embed_rx, chain_tx, level));
    let max_data = cfg.max_data_bytes;
    let footprinter =
        Supervisor::start_in_arbiter(&arbiters[0].handle(), move |_| Footprinter::new(source_rx, embed_tx, max_data));

    Ok(Pipeline {
        source: Some(source_tx),
        _actors: Supervised {
            _footprinter: footprinter,
            _embedder: embedder,
            _chain_writer: chain_writer,
            _cache_indexer: cache_indexer,
        },
        writer_done,
        index_done,
        arbiters,
        health,
        recovery,
        _lock: lock,
    })
}

impl Pipeline {
    /// The source end, for producers on other threads or tasks. Every
    /// clone must be dropped before [`shutdown`](Self::shutdown) can finish.
    pub fn source(&self) -> Outbox<RawEventBatch> {
        self.source.clone().expect("pipeline is running")
    }

    /// Submits events and waits until they are durable.
    pub async fn submit(&self, events: Vec<RawEvent>) -> Result<Committed, PipelineError> {
        let (ack, rx) = oneshot::channel();
        self.source
            .as_ref()
            .ok_or(PipelineError::Stopped)?
            .send(RawEventBatch { events, ack: Some(ack) })
            .await
            .map_err(|_| PipelineError::Stopped)?;
        rx.await.map_err(|_| PipelineError::Stopped)?
    }

    /// Closes the source and waits, at most `deadline`, for every submitted
    /// record to be durable (an error if not) and then for the index to
    /// catch up (a warning if not: it is derived, the next start finishes).
    pub async fn shutdown(mut self, deadline: Duration) -> anyhow::Result<()> {
        self.source = None;
        let end = tokio::time::Instant::now() + deadline;
        let durable = tokio::time::timeout_at(end, &mut self.writer_done).await;
        let indexed = match durable {
            Ok(Ok(())) => tokio::time::timeout_at(end, &mut self.index_done).await.ok().and_then(Result::ok),
            _ => None,
        };
        // Stop and join the stages' threads so that everything they own
        // (the chain file, the LMDB environment) is closed when this returns.
        for a in self.arbiters.drain(..) {
            a.stop();
            let _ = a.join();
        }
        match durable {
            Ok(Ok(())) => {
                if indexed.is_none() {
                    tracing::warn!("the index did not catch up before the deadline; the next start finishes it");
                }
                Ok(())
            }
            Ok(Err(_)) => anyhow::bail!("the pipeline stopped before everything was durable"),
            Err(_) => anyhow::bail!("the pipeline did not make everything durable within {deadline:?}"),
        }
    }
}
