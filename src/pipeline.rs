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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, Notify};

use crate::actors::cache_indexer::CacheIndexer;
use crate::actors::chain_writer::ChainWriter;
use crate::actors::dbus_ingest::DbusIngest;
use crate::actors::embedder::Embedder;
use crate::actors::footprinter::Footprinter;
use crate::actors::replicator::Replicator;
use crate::actors::snapshotter::Snapshotter;
use crate::bus::capture::{open_monitor, run_capture, CaptureConfig, CaptureQueue};
use crate::bus::mapping::Mapper;
use crate::bus::rules::Filter;
use crate::bus::service::{open_service, run_service, ServiceParts};
use crate::bus::OwnNames;
use crate::chain::{ChainStore, Recovery};
use crate::config::{BusConfig, Config, ServiceConfig};
use crate::faults::Faults;
use crate::health::Health;
use crate::index::Index;
use crate::layout::Layout;
use crate::messages::{Committed, PipelineError, RawEvent, SnapshotError, SnapshotNow, Submitter};
use crate::ml::VectorLevel;
use crate::runtime::edge::edge;
use crate::runtime::{self, Running, Stage};
use crate::storage::retention::Interval;
use crate::storage::snapshot::SnapshotMeta;

/// Why the pipeline, or its bus parts, did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create state dir {}", path.display())]
    CreateStateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open {}", path.display())]
    LockFile { path: PathBuf, source: std::io::Error },
    #[error("{} is in use by another op-dbus process (pid {pid}); stop it or use another --state-dir", dir.display())]
    InUse { dir: PathBuf, pid: String },
    #[error("cannot open the index")]
    Index(#[source] crate::index::IndexError),
    #[error("cannot open the chain in {}", dir.display())]
    Chain { dir: PathBuf, source: crate::chain::StoreError },
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("the capture thread stopped")]
    CaptureStopped,
    #[error(transparent)]
    Proof(#[from] crate::proof::checkpointer::ProofStartError),
}

/// Why a shutdown did not make everything durable.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the pipeline stopped before everything was durable")]
    Stopped,
    #[error("the pipeline did not make everything durable within {0:?}")]
    Deadline(Duration),
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub layout: Layout,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub segment_max_bytes: u64,
    pub vector_level: VectorLevel,
    /// Where the ML levels' models are (`make models`).
    pub model_dir: std::path::PathBuf,
    pub vector: crate::config::VectorConfig,
    pub max_data_bytes: usize,
    pub index_sync_interval: Duration,
    pub snapshot: crate::config::SnapshotConfig,
    pub replicas: Vec<crate::storage::replicate::ReplicaConfig>,
    /// Tiles, checkpoints, keys and witnesses.
    pub proof: crate::config::ProofConfig,
    /// Empty unless built with the `faults` feature (tests).
    pub faults: Faults,
}

impl PipelineConfig {
    /// The pipeline's part of the configuration.
    pub fn new(c: &Config) -> PipelineConfig {
        PipelineConfig {
            layout: c.layout(),
            max_batch: c.max_batch,
            max_wait: c.max_wait,
            segment_max_bytes: c.segment_max_bytes,
            vector_level: c.vector_level,
            model_dir: c.model_dir.clone(),
            vector: c.vector.clone(),
            max_data_bytes: c.max_data_bytes,
            index_sync_interval: c.index_sync_interval,
            snapshot: c.snapshot.clone(),
            replicas: c.replicas.clone(),
            proof: c.proof.clone(),
            faults: Default::default(),
        }
    }

    /// For a command that writes and exits (`import`, `snapshot now`): no
    /// timed snapshots and no Replicator. A Replicator in a command that
    /// runs longer than its 1 s tick sent the newest snapshot behind the
    /// operator's back, so the next `replicate` found nothing to do.
    pub fn one_shot(c: &Config) -> PipelineConfig {
        let mut pc = PipelineConfig::new(c);
        pc.snapshot.interval = Interval::Off;
        pc.replicas.clear();
        pc
    }
}

/// The stages' threads, joined at shutdown; the Snapshotter's address
/// takes `snapshot now` commands.
struct Stages {
    footprinter: Running<Footprinter>,
    embedder: Running<Embedder>,
    chain_writer: Running<ChainWriter>,
    cache_indexer: Running<CacheIndexer>,
    snapshotter: Running<Snapshotter>,
    replicator: Option<Running<Replicator>>,
}

impl Stages {
    fn join(self) {
        // Source first, so each joins after the one feeding it.
        self.footprinter.join();
        self.embedder.join();
        self.chain_writer.join();
        self.cache_indexer.join();
        self.snapshotter.join();
        if let Some(r) = self.replicator {
            r.join();
        }
    }
}

pub struct Pipeline {
    submitter: Option<Submitter>,
    stages: Option<Stages>,
    /// Everything submitted is durable.
    writer_done: oneshot::Receiver<()>,
    /// Everything durable is indexed (best effort: the index is derived).
    index_done: oneshot::Receiver<()>,
    pub health: Arc<Health>,
    /// What opening the chain had to repair.
    pub(crate) recovery: Recovery,
    /// The index the CacheIndexer writes, for readers in this process (an
    /// LMDB environment is opened once per process).
    pub(crate) index: Index,
    layout: Layout,
    bus: Option<BusParts>,
    /// The search vectors' engine (none at level `none`), for searches in
    /// this process; the worker that fills its store.
    pub vectors: Option<Arc<crate::ml::engine::Engine>>,
    vector_worker: Option<crate::ml::worker::Worker>,
    /// Take a snapshot when shutting down (snapshots are on).
    final_snapshot: bool,
    /// Integrates durable blocks into the tiles and signs checkpoints (none with `proof.enabled = false`).
    checkpointer: Option<crate::proof::checkpointer::Checkpointer>,
    pusher: Option<crate::proof::push::Pusher>,
    _lock: Locks,
}

/// The live parts attached by [`attach_bus`]: stopped first at shutdown.
struct BusParts {
    capture_stop: Option<Arc<Notify>>,
    service_stop: Option<Arc<Notify>>,
    service_source: Arc<Mutex<Option<Submitter>>>,
    /// The capture's own thread (a zbus stream must be polled without pause).
    capture: Option<Arbiter>,
    ingest: Option<Running<DbusIngest>>,
}

impl BusParts {
    fn join(self) {
        if let Some(capture) = self.capture {
            capture.stop();
            let _ = capture.join();
        }
        if let Some(ingest) = self.ingest {
            ingest.join();
        }
    }
}

/// File descriptors the capture queue may hold: half the soft limit (`run`
/// raises it to the hard one first), the rest for files, sockets and LMDB.
fn fd_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    let soft =
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur as usize } else { 1024 };
    (soft / 2).max(64)
}

/// Attaches the bus: the capture task (its own thread) feeding DbusIngest
/// (its own thread) feeding the pipeline's source, and the `org.opdbus`
/// service on the calling runtime. Fails, with what to do, if the bus is
/// missing, BecomeMonitor is denied, or the name is taken.
pub async fn attach_bus(
    p: &mut Pipeline,
    bus: &BusConfig,
    service: &ServiceConfig,
    limits: crate::input::Limits,
) -> Result<(), StartError> {
    let own = OwnNames::default();
    let service_source = Arc::new(Mutex::new(Some(p.submitter())));
    // Registered before anything can fail, so that `shutdown` stops
    // whatever did start.
    p.bus = Some(BusParts {
        capture_stop: None,
        service_stop: None,
        service_source: service_source.clone(),
        capture: None,
        ingest: None,
    });
    // The service first: a missing policy or a name already owned fails
    // start-up before anything is captured, and the service connection's
    // own start (Hello, NameAcquired) happens before the monitor exists.
    if service.enabled {
        let addr = service.address.clone().unwrap_or_else(|| bus.address.clone());
        // Its unique name is op-dbus's own only on the bus that is recorded.
        let service_own = if addr == bus.address { own.clone() } else { OwnNames::default() };
        let sp = ServiceParts {
            layout: p.layout.clone(),
            index: p.index.clone(),
            health: p.health.clone(),
            source: service_source,
            limits,
            snapshotter: p.snapshotter().clone().recipient(),
            vectors: p.vectors.clone(),
            checkpoints: p.latest_checkpoint(),
        };
        let conn = open_service(&addr, sp.clone(), &service_own).await?;
        let stop = Arc::new(Notify::new());
        actix_rt::spawn(run_service(addr, conn, sp, service.signal_rate, bus.reconnect_max, service_own, stop.clone()));
        p.bus.as_mut().expect("set above").service_stop = Some(stop);
    }
    if bus.enabled {
        let filter = Filter::new(bus);
        let queue = Arc::new(CaptureQueue::new(bus.queue_messages, bus.queue_bytes, fd_budget()));
        let cfg = CaptureConfig {
            address: bus.address.clone(),
            rules: filter.monitor_rules(),
            policy: bus.queue_policy,
            reconnect_max: bus.reconnect_max,
        };
        let stop = Arc::new(Notify::new());
        let capture = Arbiter::new();
        let (opened_tx, opened) = oneshot::channel();
        let creds = crate::bus::names::CredsCache::default();
        {
            let (queue, stop, creds) = (queue.clone(), stop.clone(), creds.clone());
            capture.spawn(async move {
                match open_monitor(&cfg.address, &cfg.rules).await {
                    Ok(first) => {
                        let _ = opened_tx.send(Ok(()));
                        run_capture(cfg, first, queue, stop, creds).await;
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            });
        }
        p.bus.as_mut().expect("set above").capture = Some(capture);
        opened.await.map_err(|_| StartError::CaptureStopped)??;
        let (submitter, label, own, max_data) =
            (p.submitter(), bus.address.to_string(), own.clone(), limits.max_data_bytes);
        let health = p.health.clone();
        let ingest = runtime::start(queue.clone(), move || {
            DbusIngest::new(submitter, Mapper::new(filter, own, label, max_data), creds).watched_by(health)
        });
        let parts = p.bus.as_mut().expect("set above");
        parts.capture_stop = Some(stop);
        parts.ingest = Some(ingest);
    }
    Ok(())
}

/// The writer's locks: the state dir's, and the cache dir's when it lives
/// elsewhere (`OPDBUS_CACHE_DIR`), so that two state dirs cannot share one
/// index and keep rebuilding it from different chains.
pub struct Locks {
    _state: File,
    _cache: Option<File>,
}

/// Takes the state dir's lock (and the cache dir's): one writer per state dir.
pub fn lock_state_dir(layout: &Layout) -> Result<Locks, StartError> {
    layout.create_dirs().map_err(|source| StartError::CreateStateDir { path: layout.state_dir.clone(), source })?;
    let state = lock_dir(&layout.state_dir)?;
    let cache = if layout.cache.starts_with(&layout.state_dir) { None } else { Some(lock_dir(&layout.cache)?) };
    Ok(Locks { _state: state, _cache: cache })
}

fn lock_dir(dir: &std::path::Path) -> Result<File, StartError> {
    let path = dir.join("op-dbus.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::LockFile { path: path.clone(), source })?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(StartError::InUse { dir: dir.to_path_buf(), pid: holder.trim().to_string() });
    }
    let write_pid = |mut f: &File| -> std::io::Result<()> {
        f.set_len(0)?;
        write!(f, "{}", std::process::id())
    };
    write_pid(&file).map_err(|source| StartError::LockFile { path, source })?;
    Ok(file)
}

/// Builds and starts the pipeline. Must run inside an actix `System`.
pub fn spawn_pipeline(cfg: PipelineConfig) -> Result<Pipeline, StartError> {
    let lock = lock_state_dir(&cfg.layout)?;
    let index = Index::open_or_reset(&cfg.layout.cache).map_err(StartError::Index)?;
    let index_reader = index.clone();
    // The index is the witness of how far the chain reached.
    let witness = index.head().ok().flatten().map(|h| h.seq + 1);
    #[cfg_attr(not(feature = "faults"), allow(unused_mut))]
    let (mut store, recovery) = ChainStore::open_with_witness(&cfg.layout, cfg.segment_max_bytes, witness)
        .map_err(|source| StartError::Chain { dir: cfg.layout.timing.clone(), source })?;
    #[cfg(feature = "faults")]
    if let Some(n) = cfg.faults.chain_append() {
        store.inject_failure_at_append(n);
    }
    let health = Arc::new(Health::default());
    // Published before any actor starts: the indexer's start-up catch-up
    // reads up to this height, and it may run before the writer exists.
    health.set_head(&store.head());
    // The tree and the checkpoint log are checked against the chain before
    // anything is appended: a chain that departs from its last signed
    // checkpoint does not start (a log never signs two inconsistent ones).
    let (checkpointer, pusher) = if cfg.proof.enabled {
        let keys = open_keys(&cfg.proof, &cfg.layout.state_dir)?;
        let integ = crate::proof::checkpointer::Integration::open(&cfg.layout, keys, store.head().next_seq)?;
        let cp = crate::proof::checkpointer::Checkpointer::spawn(
            integ,
            health.clone(),
            cfg.proof.checkpoint_interval,
            cfg.proof.renew_warning,
        );
        let witnesses = cfg
            .proof
            .witnesses
            .iter()
            .filter_map(|w| {
                let key = crate::note::Verifier::parse_vkey(&w.key).ok()?;
                Some(crate::proof::push::Witness { url: w.url.clone(), key })
            })
            .collect();
        let pusher = crate::proof::push::Pusher::spawn(&cfg.layout, witnesses, cp.latest())
            .map_err(|e| StartError::Proof(crate::proof::checkpointer::ProofStartError::Log(e)))?;
        (Some(cp), Some(pusher))
    } else {
        (None, None)
    };

    // Sink first.
    let (index_tx, index_rx) = edge("chain_writer->cache_indexer", CacheIndexer::INBOX_CAPACITY);
    let (chain_tx, chain_rx) = edge("embedder->chain_writer", ChainWriter::INBOX_CAPACITY);
    let (embed_tx, embed_rx) = edge("footprinter->embedder", Embedder::INBOX_CAPACITY);
    let (source_tx, source_rx) = edge("source->footprinter", Footprinter::INBOX_CAPACITY);
    let submitter = Submitter::new(source_tx);
    let (done_tx, index_done) = oneshot::channel();
    let (writer_done_tx, writer_done) = oneshot::channel();

    let per_op = cfg.snapshot.interval == Interval::PerOp;
    let (snap_tx, snap_rx) = if per_op {
        let (tx, rx) = edge("chain_writer->snapshotter", Snapshotter::INBOX_CAPACITY);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let writer_index = index.clone();
    let cache_indexer = {
        let (layout, health, sync, fail) =
            (cfg.layout.clone(), health.clone(), cfg.index_sync_interval, cfg.faults.index_batch());
        runtime::start(index_rx, move || CacheIndexer::new(index, layout, health, sync, done_tx, fail))
    };
    let chain_writer = {
        let (health, max_batch, max_wait, delay) =
            (health.clone(), cfg.max_batch, cfg.max_wait, cfg.faults.commit_delay());
        let subscribers: Vec<_> = std::iter::once(index_tx).chain(snap_tx).collect();
        runtime::start(chain_rx, move || {
            ChainWriter::new(store, subscribers, max_batch, max_wait, health)
                .with_commit_delay(delay)
                .with_done(writer_done_tx)
                .with_index(writer_index)
        })
    };
    let level = cfg.vector_level;
    let embedder = runtime::start(embed_rx, move || Embedder::new(chain_tx, level));
    let snapshotter = {
        let (writer, submitter, layout, snap) =
            (chain_writer.addr.clone(), submitter.clone(), cfg.layout.clone(), cfg.snapshot.clone());
        let make = move || {
            let protected_layout = layout.clone();
            let protected = Box::new(move || crate::storage::replicate::protected(&protected_layout));
            Snapshotter::new(writer, submitter, layout, snap.interval, snap.retention, protected)
        };
        match snap_rx {
            Some(rx) => runtime::start(rx, make),
            None => runtime::start_actor(make),
        }
    };
    let replicator = (!cfg.replicas.is_empty()).then(|| {
        let (layout, replicas, health) = (cfg.layout.clone(), cfg.replicas.clone(), health.clone());
        runtime::start_actor(move || Replicator::new(layout, replicas, health))
    });
    let max_data = cfg.max_data_bytes;
    let footprinter = runtime::start(source_rx, move || Footprinter::new(embed_tx, max_data));
    let (vector_worker, vectors) = start_vectors(&cfg, health.clone());

    Ok(Pipeline {
        submitter: Some(submitter),
        stages: Some(Stages { footprinter, embedder, chain_writer, cache_indexer, snapshotter, replicator }),
        final_snapshot: cfg.snapshot.interval != Interval::Off,
        writer_done,
        index_done,
        health,
        recovery,
        index: index_reader,
        bus: None,
        vectors,
        vector_worker,
        layout: cfg.layout.clone(),
        checkpointer,
        pusher,
        _lock: lock,
    })
}

/// The keys of a state dir for the pipeline: opened, or made now when there
/// are none and `proof.auto_init` allows it (the identity secret is then on
/// the host, which the log says, and `keys status` keeps saying).
fn open_keys(
    cfg: &crate::config::ProofConfig,
    state_dir: &std::path::Path,
) -> Result<crate::proof::keys::EpochKeys, crate::proof::checkpointer::ProofStartError> {
    use crate::proof::checkpointer::ProofStartError;
    use crate::proof::keys::{self, EpochKeys};
    if let Some(k) = EpochKeys::open(state_dir)? {
        if !cfg.origin.is_empty() && k.origin() != cfg.origin {
            return Err(ProofStartError::OriginMismatch { keys: k.origin().into(), config: cfg.origin.clone() });
        }
        return Ok(k);
    }
    if !cfg.auto_init {
        return Err(keys::KeyError::Missing { dir: keys::keys_dir(state_dir) }.into());
    }
    let origin = if cfg.origin.is_empty() { keys::default_origin()? } else { cfg.origin.clone() };
    let now = (crate::codec::now_ns() / 1_000_000_000) as u64;
    let p = keys::init(state_dir, &origin, cfg.epoch_seconds, cfg.provision_hours, None, now)?;
    tracing::warn!(
        origin,
        identity = %p.identity.to_vkey(),
        until = p.until,
        secret = %p.identity_secret.display(),
        "made signing keys; the identity secret is on this host: move it off (it is needed only to renew) so that root here cannot certify keys for past epochs"
    );
    Ok(EpochKeys::open(state_dir)?.ok_or_else(|| keys::KeyError::Missing { dir: keys::keys_dir(state_dir) })?)
}

/// Starts the vector worker for the configured level (nothing at `none`):
/// it loads the model on its own idle-priority thread, falling back to
/// heuristic vectors, and says which model it uses in `vectors.json`.
fn start_vectors(
    cfg: &PipelineConfig,
    health: Arc<Health>,
) -> (Option<crate::ml::worker::Worker>, Option<Arc<crate::ml::engine::Engine>>) {
    use crate::ml::engine::{model_of, Engine, EngineConfig};
    if cfg.vector_level == VectorLevel::None {
        let _ = std::fs::remove_file(crate::ml::engine::state_path(&cfg.layout.state_dir));
        return (None, None);
    }
    let ecfg = EngineConfig {
        level: cfg.vector_level,
        model_dir: cfg.model_dir.clone(),
        precision: cfg.vector.precision,
        threads: cfg.vector.threads,
        batch: cfg.vector.batch,
    };
    let (cache_dir, entries) = (cfg.layout.cache.clone(), cfg.vector.cache_entries);
    let with_cache = model_of(cfg.vector_level).is_some();
    let height: crate::ml::worker::Height =
        Arc::new(move || health.chain_height.load(std::sync::atomic::Ordering::Acquire));
    let (worker, engine) = crate::ml::worker::Worker::spawn(cfg.layout.clone(), height, move || {
        let cache = with_cache.then(|| crate::ml::cache::EmbedCache::configured(&cache_dir, entries)).flatten();
        Engine::start(&ecfg, cache)
    });
    if let Some(e) = &engine {
        tracing::info!(level = cfg.vector_level.as_str(), model = e.id(), dims = e.dims(), "search vectors");
        if let Err(err) = crate::ml::engine::write_state(&cfg.layout.state_dir, cfg.vector_level, e) {
            tracing::warn!(error = %err, "cannot write vectors.json");
        }
    }
    (Some(worker), engine)
}

impl Pipeline {
    /// Takes a snapshot now (at the next commit boundary) and records it.
    pub async fn snapshot_now(&self) -> Result<Option<SnapshotMeta>, SnapshotError> {
        self.snapshotter().send(SnapshotNow { last: false }).await.map_err(|_| SnapshotError::WriterGone)?
    }

    fn snapshotter(&self) -> &Addr<Snapshotter> {
        &self.stages.as_ref().expect("pipeline is running").snapshotter.addr
    }

    /// The newest durable checkpoint (none until the first is signed, or without `proof.enabled`).
    pub fn latest_checkpoint(&self) -> Option<crate::proof::checkpointer::Latest> {
        self.checkpointer.as_ref().map(|c| c.latest())
    }

    /// The pipeline's entrance, for producers on other threads or tasks.
    /// Every clone must be dropped before [`shutdown`](Self::shutdown) can finish.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone().expect("pipeline is running")
    }

    /// Submits events and waits until they are durable.
    pub async fn submit(&self, events: Vec<RawEvent>) -> Result<Committed, PipelineError> {
        self.submitter.as_ref().ok_or(PipelineError::Stopped)?.submit(events).await
    }

    /// Closes the source and waits, at most `deadline`, for every submitted
    /// record to be durable (an error if not) and then for the index to
    /// catch up (a warning if not: it is derived, the next start finishes).
    pub async fn shutdown(mut self, deadline: Duration) -> Result<(), ShutdownError> {
        // Sources first: no new submissions, the capture stops reading and
        // DbusIngest drains its queue, then lets go of its outbox.
        if let Some(bus) = &self.bus {
            bus.service_source.lock().expect("source lock").take();
            for stop in [&bus.service_stop, &bus.capture_stop].into_iter().flatten() {
                stop.notify_one();
            }
        }
        let end = tokio::time::Instant::now() + deadline;
        // The final snapshot: everything submitted before the stop is in it
        // (the bus capture has stopped reading; Submit no longer accepts).
        // The Snapshotter lets go of its source either way.
        let last = self.snapshotter().send(SnapshotNow { last: true });
        match tokio::time::timeout_at(end, last).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) if self.final_snapshot => tracing::error!(error = %e, "the final snapshot failed"),
            Ok(_) => {}
            Err(_) => tracing::error!("the final snapshot did not finish before the deadline"),
        }
        self.submitter = None;
        let durable = tokio::time::timeout_at(end, &mut self.writer_done).await;
        let indexed = match durable {
            Ok(Ok(())) => tokio::time::timeout_at(end, &mut self.index_done).await.ok().and_then(Result::ok),
            _ => None,
        };
        if let Some(mut w) = self.vector_worker.take() {
            w.stop();
        }
        // After the writer is done: the last checkpoint covers everything
        // durable, and the epoch's secret is erased.
        if durable.as_ref().is_ok_and(|r| r.is_ok()) {
            if let Some(c) = self.checkpointer.take() {
                c.stop();
            }
        }
        if let Some(p) = self.pusher.take() {
            p.stop();
        }
        // Stop and join the stages' threads so that everything they own
        // (the chain file, the LMDB environment) is closed when this returns.
        if let Some(bus) = self.bus.take() {
            bus.join();
        }
        if let Some(stages) = self.stages.take() {
            stages.join();
        }
        match durable {
            Ok(Ok(())) => {
                if indexed.is_none() {
                    tracing::warn!("the index did not catch up before the deadline; the next start finishes it");
                }
                Ok(())
            }
            Ok(Err(_)) => Err(ShutdownError::Stopped),
            Err(_) => Err(ShutdownError::Deadline(deadline)),
        }
    }
}
