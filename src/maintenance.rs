//! Operations on a state dir that need its writer's lock (so no daemon is
//! running on it, or they go through the daemon): rebuilding the index,
//! filling the search vectors now, taking a snapshot now. Each takes the
//! lock ([`crate::pipeline::lock_state_dir`]) and calls the module that
//! does the work.

use std::time::Instant;

use crate::bus::proxy::{self, ClientError};
use crate::config::{BusAddress, Config};
use crate::index::indexer::{Indexer, IndexingError};
use crate::index::{Index, IndexError};
use crate::layout::Layout;
use crate::ml::cache::EmbedCache;
use crate::ml::engine::{self, Engine, EngineConfig};
use crate::ml::worker::{self, Backfill, BackfillError};
use crate::pipeline::{lock_state_dir, spawn_pipeline, PipelineConfig};
use crate::storage::snapshot::SnapshotMeta;

/// What `reindex` did.
#[derive(Clone, Debug, PartialEq)]
pub struct Reindexed {
    /// Blocks indexed (the chain's length).
    pub(crate) blocks: u64,
    /// Entries in the rebuilt Merkle tiles.
    pub(crate) tiles: u64,
    pub(crate) seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// The state dir is in use, or cannot be created.
    #[error(transparent)]
    Lock(crate::pipeline::StartError),
    #[error("cannot open the index")]
    Open(#[source] IndexError),
    #[error("rebuilding the index")]
    Rebuild(#[source] IndexingError),
    #[error("cannot sync the index")]
    Sync(#[source] IndexError),
    #[error("rebuilding the Merkle tiles")]
    Tiles(#[source] crate::proof::checkpointer::ProofStartError),
}

/// `op-dbus reindex`: drops the index and rebuilds it (and the hash files)
/// from the chain as it is, accepting a chain that lost blocks.
pub fn reindex(layout: &Layout) -> Result<Reindexed, ReindexError> {
    let _lock = lock_state_dir(layout).map_err(ReindexError::Lock)?;
    let started = Instant::now();
    let index = Index::open_or_reset(&layout.cache).map_err(ReindexError::Open)?;
    let indexer = Indexer::rebuild(index, layout).map_err(ReindexError::Rebuild)?;
    let blocks = indexer.next();
    indexer.index().sync().map_err(ReindexError::Sync)?;
    let tiles = crate::proof::checkpointer::rebuild_tiles(layout).map_err(ReindexError::Tiles)?;
    Ok(Reindexed { blocks, tiles, seconds: started.elapsed().as_secs_f64() })
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Lock(crate::pipeline::StartError),
    #[error("vector level none stores no vectors: nothing to embed")]
    LevelNone,
    #[error("cannot write vectors.json")]
    State(#[source] std::io::Error),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
}

/// `op-dbus embed --backfill`: loads the level's model (or falls back to
/// heuristic vectors, as the daemon would), says so in `vectors.json`, and
/// fills its store from the chain ([`worker::backfill`]).
pub fn embed_backfill(
    layout: &Layout,
    ecfg: &EngineConfig,
    cache_entries: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Backfill, EmbedError> {
    let _lock = lock_state_dir(layout).map_err(EmbedError::Lock)?;
    let cache = engine::model_of(ecfg.level).and_then(|_| EmbedCache::configured(&layout.cache, cache_entries));
    let engine = Engine::start(ecfg, cache).ok_or(EmbedError::LevelNone)?;
    engine::write_state(&layout.state_dir, ecfg.level, &engine).map_err(EmbedError::State)?;
    Ok(worker::backfill(layout, &engine, progress)?)
}

/// Who took the snapshot `snapshot now` asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotTaken {
    /// This process (no daemon held the state dir); `None` when nothing
    /// was appended since the last snapshot, or the chain is empty.
    Here(Option<SnapshotMeta>),
    /// The running daemon, through D-Bus `Snapshot`: its name, `None` when
    /// nothing was new.
    ByDaemon(Option<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotNowError {
    /// Starting the pipeline (or attaching the bus) failed.
    #[error(transparent)]
    Start(#[from] crate::pipeline::StartError),
    /// Draining the pipeline failed.
    #[error(transparent)]
    Shutdown(#[from] crate::pipeline::ShutdownError),
    /// The snapshot was not taken or not recorded.
    #[error(transparent)]
    Snapshot(#[from] crate::messages::SnapshotError),
    /// The daemon holds the state dir, and `bus` is not a bus address.
    #[error("invalid bus address {0:?}")]
    InvalidBus(String),
    #[error(transparent)]
    Daemon(#[from] ClientError),
}

/// `op-dbus snapshot now`: in this process when no daemon holds the state
/// dir (the snapshot is recorded in the chain like the daemon's), else
/// through the daemon's `Snapshot` method on `bus` (default:
/// `service.address`, else `bus.address`).
pub fn snapshot_now(cfg: &Config, bus: Option<&str>) -> Result<SnapshotTaken, SnapshotNowError> {
    let layout = cfg.layout();
    if let Ok(lock) = lock_state_dir(&layout) {
        // The pipeline takes it again.
        drop(lock);
        let system = actix_rt::System::new();
        return system.block_on(async {
            let p = spawn_pipeline(PipelineConfig::one_shot(cfg))?;
            let taken = p.snapshot_now().await.map_err(SnapshotNowError::Snapshot);
            p.shutdown(cfg.shutdown_deadline).await?;
            taken.map(SnapshotTaken::Here)
        });
    }
    let addr = match bus {
        Some(b) => BusAddress::parse(b).ok_or_else(|| SnapshotNowError::InvalidBus(b.to_string()))?,
        None => cfg.service.address.clone().unwrap_or_else(|| cfg.bus.address.clone()),
    };
    let name = proxy::snapshot(&addr)?;
    Ok(SnapshotTaken::ByDaemon(Some(name).filter(|n| !n.is_empty())))
}
