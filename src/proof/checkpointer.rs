//! The checkpointer: integrates durable blocks into the Merkle tiles and
//! signs checkpoints. Sequencing and integration are two steps, as in
//! trillian-tessera: the ChainWriter appends and acknowledges; this thread
//! follows the chain behind it (the chain is its queue, as for the vector
//! worker: it reads `tree size .. durable height` from the segments, so it
//! can fall behind, `op_dbus_tree_lag_entries`, but never lose anything, and
//! it never delays an acknowledgement).
//!
//! A checkpoint is signed after a commit that grew the tree, at most every
//! `proof.checkpoint_interval_ms`; once in every epoch even when idle, so
//! that every stretch of time the daemon ran is sealed; as soon as it can
//! after a start (the start line declares the downtime); and at shutdown.
//! Order for each: tiles synced, checkpoint appended and synced, then
//! published (the watch that the D-Bus service and the witness pusher read,
//! and the tiles' `checkpoint` file). At shutdown the epoch's secret is
//! erased, so a stopped host holds no secret of an epoch that can still
//! end: a restart within the same epoch signs from the next one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::keys::{EpochKeys, KeyError};
use super::log::{NoteLog, CHECKPOINTS_MAGIC};
use super::tiles::{TileReader, TileWriter};
use crate::chain::reader::{split_payload, FrameReader, Step};
use crate::chain::HEADER_LEN;
use crate::health::Health;
use crate::layout::Layout;
use crate::merkle::{Hash, NodeSource};
use crate::metrics as m;
use crate::note::checkpoint::{sign_checkpoint, verify_checkpoint, Checkpoint, OpCheckpoint, StartLine};

/// A checkpoint that is durable, as published.
#[derive(Clone, Debug)]
pub struct Published {
    pub note: Vec<u8>,
    pub size: u64,
    pub root: Hash,
    pub time_ns: i64,
}

pub type Latest = watch::Receiver<Option<Arc<Published>>>;

#[derive(Debug, thiserror::Error)]
pub enum ProofStartError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Log(#[from] super::log::LogError),
    #[error(transparent)]
    Tiles(#[from] super::tiles::TileError),
    #[error("cannot read the chain to build the Merkle tree")]
    Chain(#[from] crate::chain::StoreError),
    #[error("the last checkpoint in {} does not verify: {source}", path.display())]
    BadCheckpoint { path: PathBuf, source: crate::note::checkpoint::CheckpointError },
    #[error("the chain departs from the last signed checkpoint (size {size}, time {time_ns}): {detail}; run `op-dbus verify` to see where. Nothing is recorded onto a chain that departs from what it signed: to accept the loss, move @timing/checkpoints and @timing/cosigned aside (keep them as evidence) and a new log starts; its witnesses then refuse it until they are re-enrolled, and `verify` reports the history before it as not sealed in time")]
    Departed { size: u64, time_ns: i64, detail: String },
    #[error("the keys are for origin {keys:?}, but proof.origin is {config:?}")]
    OriginMismatch { keys: String, config: String },
}

/// Reads block hashes in seq order from the segments, remembering where it
/// stopped.
#[derive(Debug, Default)]
struct HashFollower {
    /// (segment, offset of the frame of `next`), once positioned.
    at: Option<(u64, u64)>,
    next: u64,
}

impl HashFollower {
    /// Calls `f` with the hash of each block `from..to`, in order; returns how many.
    fn read(
        &mut self,
        layout: &Layout,
        from: u64,
        to: u64,
        mut f: impl FnMut(&Hash) -> Result<(), super::tiles::TileError>,
    ) -> Result<u64, ProofStartError> {
        if from >= to {
            return Ok(0);
        }
        let segments =
            layout.segments().map_err(|e| crate::chain::StoreError::Io { path: layout.timing.clone(), source: e })?;
        if self.next != from || self.at.is_none() {
            let i = segments.partition_point(|s| *s <= from).saturating_sub(1);
            let Some(&seg) = segments.get(i) else { return Ok(0) };
            self.at = Some((seg, HEADER_LEN));
            self.next = seg;
        }
        let mut done = 0;
        while let Some((seg, offset)) = self.at {
            let (mut frames, _) = FrameReader::open(&layout.segment_path(seg), seg)?;
            frames.seek_to(offset)?;
            loop {
                if self.next >= to {
                    return Ok(done);
                }
                match frames.next_frame()? {
                    Step::Frame { payload, .. } => {
                        let (_, hash) = split_payload(payload);
                        if self.next >= from {
                            f(&hash)?;
                            done += 1;
                        }
                        self.next += 1;
                        self.at = Some((seg, frames.position()));
                    }
                    Step::Bad { offset, reason } => {
                        return Err(crate::chain::StoreError::Corrupt {
                            seq: self.next,
                            kind: "bit flip",
                            detail: format!("{} offset {offset}: {reason}", layout.segment_path(seg).display()),
                        }
                        .into())
                    }
                    Step::End | Step::Torn { .. } => {
                        match segments.iter().find(|s| **s > seg) {
                            Some(&next) if next == self.next => self.at = Some((next, HEADER_LEN)),
                            _ => return Ok(done),
                        }
                        break;
                    }
                }
            }
        }
        Ok(done)
    }
}

/// The root of the tree of the first `size` blocks of the chain in
/// `layout`, computed from the chain itself (not from tiles, which could
/// have been rebuilt from a rewritten chain). `None` if the chain is shorter.
pub fn chain_root_at(layout: &Layout, size: u64) -> Result<Option<Hash>, ProofStartError> {
    let mut f = crate::merkle::Frontier::new();
    let n = HashFollower::default().read(layout, 0, size, |h| {
        f.push(crate::merkle::leaf_hash(h), |_, _, _| {});
        Ok(())
    })?;
    Ok((n == size).then(|| f.root()))
}

/// The last checkpoint of a state dir (a snapshot, a replica), unverified.
pub fn last_checkpoint(layout: &Layout) -> Result<Option<OpCheckpoint>, ProofStartError> {
    let r = super::log::read_all(&layout.timing.join("checkpoints"), CHECKPOINTS_MAGIC)?;
    Ok(r.notes.last().and_then(|(_, n)| {
        let note = crate::note::Note::parse(n).ok()?;
        OpCheckpoint::from_checkpoint(Checkpoint::parse_text(&note.text).ok()?).ok()
    }))
}

/// `op-dbus reindex`: the tiles again from the chain (they are derived).
pub fn rebuild_tiles(layout: &Layout) -> Result<u64, ProofStartError> {
    let dir = layout.cache.join("tiles");
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(super::tiles::TileError::Io { path: dir, source: e }.into());
        }
    }
    let mut tiles = TileWriter::open(&dir);
    let head = crate::chain::reader::read_head(layout)?;
    HashFollower::default().read(layout, 0, head.next_seq, |h| tiles.push(h))?;
    tiles.flush()?;
    if let Some((_, note)) = super::log::read_all(&layout.timing.join("checkpoints"), CHECKPOINTS_MAGIC)?.notes.pop() {
        tiles.publish_checkpoint(&note)?;
    }
    Ok(tiles.size())
}

/// The tree and the log, opened and checked against the chain before the
/// pipeline accepts anything.
pub struct Integration {
    layout: Layout,
    tiles: TileWriter,
    follower: HashFollower,
    log: NoteLog,
    keys: EpochKeys,
    last: Option<OpCheckpoint>,
    /// The start line of the next checkpoint, until one is signed.
    start: Option<StartLine>,
    /// The key of the epoch in progress was erased (by the run before this
    /// one, in the same epoch): nothing is signed before this time (ns).
    not_before: i64,
}

/// Whether tiles of `size` leaves end on the chain: their last leaf is the
/// leaf of the chain's block `size - 1`. The tiles are derived data and
/// the tree they hold is what gets signed next, so a chain that changed
/// under them (a history rewritten by root recomputes every later hash,
/// the last block's too) must not be extended with them. `follower` reads
/// its segment up to that block and is left after it, where the tiles
/// continue from.
fn tiles_end_on_chain(
    layout: &Layout,
    dir: &std::path::Path,
    size: u64,
    follower: &mut HashFollower,
) -> Result<bool, ProofStartError> {
    if size == 0 {
        return Ok(true);
    }
    let mut last = None;
    follower.read(layout, size - 1, size, |h| {
        last = Some(*h);
        Ok(())
    })?;
    let Some(last) = last else { return Ok(false) };
    let leaf = TileReader::new(dir).source(size).node(0, size - 1);
    Ok(leaf.ok() == Some(crate::merkle::leaf_hash(&last)))
}

impl Integration {
    /// Opens the tiles (rebuilding or extending them from the chain up to
    /// `chain_height`) and the checkpoint log, and refuses a chain whose
    /// tree at the last checkpoint's size is not the one it signed.
    pub fn open(layout: &Layout, keys: EpochKeys, chain_height: u64) -> Result<Integration, ProofStartError> {
        let log_path = layout.timing.join("checkpoints");
        let (log, notes) = NoteLog::open(&log_path, CHECKPOINTS_MAGIC)?;
        let last = match notes.last() {
            None => None,
            Some(n) => Some(
                verify_checkpoint(n, keys.identity())
                    .map_err(|source| ProofStartError::BadCheckpoint { path: log_path.clone(), source })?
                    .cp,
            ),
        };
        let dir = layout.cache.join("tiles");
        let mut tiles = TileWriter::open(&dir);
        let mut follower = HashFollower::default();
        let why = if tiles.size() > chain_height {
            Some("the Merkle tiles are ahead of the chain; rebuilding them")
        } else if !tiles_end_on_chain(layout, &dir, tiles.size(), &mut follower)? {
            // The chain changed under the tiles. If they still hold the
            // signed tree, the chain departs from it: refuse, and keep the
            // tiles (`verify` finds the first changed block with them).
            if let Some(cp) = &last {
                let (size, time_ns) = (cp.checkpoint.size, cp.time_ns);
                let reader = TileReader::new(&dir);
                if size <= tiles.size()
                    && crate::merkle::root(size, &reader.source(size)).ok() == Some(cp.checkpoint.root)
                {
                    return Err(ProofStartError::Departed {
                        size,
                        time_ns,
                        detail: format!(
                            "the chain's block {} is not the one in the signed tree, so a block at or before it was changed",
                            tiles.size() - 1
                        ),
                    });
                }
            }
            Some("the Merkle tiles are not of this chain (their last leaf is not the chain's block): rebuilding them")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(tiles = tiles.size(), chain = chain_height, "{why}");
            let _ = std::fs::remove_dir_all(&dir);
            tiles = TileWriter::open(&dir);
        }
        let from = tiles.size();
        follower.read(layout, from, chain_height, |h| tiles.push(h))?;
        tiles.flush()?;
        if let Some(cp) = &last {
            let (size, time_ns) = (cp.checkpoint.size, cp.time_ns);
            if size > tiles.size() {
                return Err(ProofStartError::Departed {
                    size,
                    time_ns,
                    detail: format!("the chain has {} blocks", tiles.size()),
                });
            }
            let reader = TileReader::new(&dir);
            let root = crate::merkle::root(size, &reader.source(size)).map_err(super::tiles::TileError::from)?;
            if root != cp.checkpoint.root {
                return Err(ProofStartError::Departed { size, time_ns, detail: "the tree has another root".into() });
            }
        }
        // The identity's public key travels with the chain (it is public):
        // a snapshot or a replica, which never holds `keys/`, can then be
        // verified where it lies. Written after the log was checked against
        // the identity, so it names the key the log is signed under.
        let carried = layout.timing.join(super::keys::CARRIED_IDENTITY);
        let vkey = format!("{}\n", keys.identity().to_vkey());
        if std::fs::read_to_string(&carried).ok().as_deref() != Some(vkey.as_str()) {
            super::keys::write_atomic(&carried, vkey.as_bytes(), 0o644)?;
        }
        let start = Some(match &last {
            None => StartLine::None,
            Some(cp) => StartLine::After { size: cp.checkpoint.size, time_ns: cp.time_ns },
        });
        let mut integ = Integration { layout: layout.clone(), tiles, follower, log, keys, last, start, not_before: 0 };
        integ.follower.next = integ.tiles.size();
        Ok(integ)
    }

    pub fn tree_size(&self) -> u64 {
        self.tiles.size()
    }

    /// Reads durable blocks up to `height` into the tree.
    fn integrate(&mut self, height: u64) -> Result<(), ProofStartError> {
        let from = self.tiles.size();
        let tiles = &mut self.tiles;
        self.follower.read(&self.layout, from, height, |h| tiles.push(h))?;
        metrics::gauge!(m::TREE_SIZE).set(self.tiles.size() as f64);
        metrics::gauge!(m::TREE_LAG).set(height.saturating_sub(self.tiles.size()) as f64);
        Ok(())
    }

    /// When the next checkpoint is due (ns), given the time now.
    fn due(&self, now: i64, interval: Duration) -> i64 {
        let s = self.keys.schedule();
        let next_epoch = |t: i64| {
            let e = s.epoch_of(t).map_or(0, |e| e + 1);
            (s.start(e) as i64) * 1_000_000_000
        };
        let at = match &self.last {
            _ if self.start.is_some() => now,
            None => now,
            Some(cp) => {
                let mut at = next_epoch(cp.time_ns.max(now));
                // The heartbeat: once in every epoch. The epoch of the last
                // checkpoint is sealed by it; the next one is due at its start.
                if s.epoch_of(now) > s.epoch_of(cp.time_ns) {
                    at = now;
                }
                if self.tiles.size() > cp.checkpoint.size {
                    at = at.min(cp.time_ns.saturating_add(interval.as_nanos() as i64));
                }
                at
            }
        };
        at.max(self.not_before)
    }

    /// Signs a checkpoint of the current tree. `Ok(None)`: nothing can be
    /// signed before `not_before` (the epoch's key was erased).
    fn sign(&mut self, now: i64) -> Result<Option<Published>, SignError> {
        let last_time = self.last.as_ref().map_or(i64::MIN, |c| c.time_ns);
        if now.saturating_add(1_000_000_000) < last_time {
            metrics::counter!(m::CLOCK_STEPS).increment(1);
            tracing::warn!(
                now,
                last_time,
                "the clock is behind the last checkpoint; signing with the last checkpoint's epoch until it catches up"
            );
        }
        let time = now.max(last_time.saturating_add(1));
        let s = self.keys.schedule();
        let epoch = s.epoch_of(time).ok_or(SignError::Keys(KeyError::BeforeFirstEpoch))?;
        let (signer, line) = match self.keys.signer_for(epoch) {
            Ok(k) => k,
            Err(KeyError::Erased { held, .. }) if s.start(held) as i64 * 1_000_000_000 > now => {
                self.not_before = s.start(held) as i64 * 1_000_000_000;
                return Ok(None);
            }
            Err(e) => return Err(SignError::Keys(e)),
        };
        self.tiles.flush().map_err(SignError::Tiles)?;
        let cp = OpCheckpoint {
            checkpoint: Checkpoint {
                origin: self.keys.origin().to_string(),
                size: self.tiles.size(),
                root: self.tiles.root(),
                extensions: Vec::new(),
            },
            time_ns: time,
            epoch: line,
            start: self.start,
        };
        let note = sign_checkpoint(&cp, &signer).to_bytes();
        self.log.append(&note).map_err(SignError::Log)?;
        self.start = None;
        if let Err(e) = self.tiles.publish_checkpoint(&note) {
            tracing::warn!(error = %e, "cannot write the tiles' checkpoint file");
        }
        metrics::counter!(m::CHECKPOINTS_SIGNED).increment(1);
        metrics::gauge!(m::CHECKPOINT_SIZE).set(cp.checkpoint.size as f64);
        let p = Published { note, size: cp.checkpoint.size, root: cp.checkpoint.root, time_ns: time };
        self.last = Some(cp);
        Ok(Some(p))
    }

    /// Erases the secret of the last epoch signed in (at shutdown).
    fn retire(&self) {
        let Some(cp) = &self.last else { return };
        if let Err(e) = self.keys.retire(cp.epoch.epoch) {
            tracing::error!(error = %e, "cannot erase the epoch secret at shutdown");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error(transparent)]
    Keys(KeyError),
    #[error(transparent)]
    Tiles(super::tiles::TileError),
    #[error(transparent)]
    Log(super::log::LogError),
}

/// The running checkpointer thread.
pub struct Checkpointer {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    latest: Latest,
}

impl Checkpointer {
    /// Starts the thread.
    pub fn spawn(
        mut integ: Integration,
        health: Arc<Health>,
        interval: Duration,
        renew_warning: Duration,
    ) -> Checkpointer {
        let (tx, latest) = watch::channel(None);
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let (stop2, stopping2) = (stop.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
                rt.block_on(run(&mut integ, &health, interval, renew_warning, &tx, &stop2, &stopping2));
            })
            .expect("spawn the checkpointer thread");
        Checkpointer { thread: Some(thread), stop, stopping, latest }
    }

    pub fn latest(&self) -> Latest {
        self.latest.clone()
    }

    /// Integrates what is durable, signs the last checkpoint, erases the
    /// epoch's secret and joins. Call after the writer is done.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stopping.store(true, Ordering::Release);
            self.stop.notify_one();
            let _ = t.join();
        }
    }
}

async fn run(
    integ: &mut Integration,
    health: &Health,
    interval: Duration,
    renew_warning: Duration,
    tx: &watch::Sender<Option<Arc<Published>>>,
    stop: &Notify,
    stopping: &AtomicBool,
) {
    let mut head = health.head.subscribe();
    let mut unsigned_since: Option<i64> = None;
    let mut warned_renewal: Option<i64> = None;
    loop {
        let stop_now = stopping.load(Ordering::Acquire);
        let height = health.chain_height.load(Ordering::Acquire);
        if let Err(e) = integ.integrate(height) {
            metrics::counter!(m::CHECKPOINT_ERRORS).increment(1);
            tracing::error!(error = %e, "cannot integrate durable blocks into the Merkle tree");
        }
        let now = crate::codec::now_ns();
        let grew = integ.last.as_ref().is_none_or(|c| integ.tiles.size() > c.checkpoint.size);
        let due = integ.due(now, interval);
        if (due <= now && !stop_now) || (stop_now && (grew || integ.start.is_some())) {
            match integ.sign(now) {
                Ok(Some(p)) => {
                    unsigned_since = None;
                    metrics::gauge!(m::CHECKPOINT_UNSIGNED).set(0.0);
                    metrics::gauge!(m::CHECKPOINT_LAG_ENTRIES).set(height.saturating_sub(p.size) as f64);
                    tx.send_replace(Some(Arc::new(p)));
                }
                Ok(None) if stop_now => {
                    // Waiting for the next epoch would hold up the stop by
                    // up to an epoch; the next start seals these blocks.
                    tracing::warn!(
                        unsealed = integ.tiles.size().saturating_sub(integ.last.as_ref().map_or(0, |c| c.checkpoint.size)),
                        "the last blocks are sealed at the next start: this epoch's key was erased by the run before this one"
                    );
                    break;
                }
                Ok(None) => {
                    let len = integ.keys.schedule().len as i64 * 1_000_000_000;
                    if integ.not_before - now > 2 * len && unsigned_since.is_none() {
                        unsigned_since = Some(now);
                        metrics::counter!(m::CLOCK_STEPS).increment(1);
                        metrics::gauge!(m::CHECKPOINT_UNSIGNED).set(1.0);
                        tracing::error!(
                            signs_again_at_ns = integ.not_before,
                            "the clock is behind the epoch whose key this host holds (the keys of earlier epochs are erased): nothing is signed until the clock reaches it; fix the clock"
                        );
                    }
                }
                Err(e) => {
                    metrics::counter!(m::CHECKPOINT_ERRORS).increment(1);
                    metrics::gauge!(m::CHECKPOINT_UNSIGNED).set(1.0);
                    if unsigned_since.is_none() {
                        tracing::error!(error = %e, "cannot sign a checkpoint: the record is not sealed until this is fixed");
                        unsigned_since = Some(now);
                    }
                    if stop_now {
                        break;
                    }
                    // Retry at most once a second (a full disk, a key problem).
                    integ.not_before = now + 1_000_000_000;
                }
            }
        }
        if stop_now {
            break;
        }
        let left = integ.keys.provisioned_until() as i64 - now / 1_000_000_000;
        metrics::gauge!(m::KEYS_REMAINING).set(left.max(0) as f64);
        if left < renew_warning.as_secs() as i64
            && warned_renewal.is_none_or(|w| now.saturating_sub(w) > 86_400 * 1_000_000_000)
        {
            warned_renewal = Some(now);
            tracing::warn!(
                seconds_left = left,
                "the epoch keys end soon: renew with `op-dbus keys renew --identity FILE`"
            );
        }
        let due = integ.due(crate::codec::now_ns(), interval);
        let sleep = Duration::from_nanos(due.saturating_sub(crate::codec::now_ns()).max(0) as u64);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = head.changed() => {}
            _ = stop.notified() => {}
        }
    }
    integ.retire();
}
