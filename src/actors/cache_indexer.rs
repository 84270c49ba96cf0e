//! CacheIndexer: consumes [`CommittedBlocks`] from the ChainWriter and
//! keeps the LMDB index (by seq, hash, time, plugin+operation) in step with
//! the chain. Owns the [`Index`]. **The index is derived**: at start it
//! catches up from the chain, and whenever a notification was dropped
//! (its queue was full) it reads the missing blocks from the chain, so a
//! slow index never blocks appends and never misses a block.
//!
//! It only ever reads blocks the ChainWriter has reported durable
//! (`Health::chain_height`), so nothing it indexes can be cut by recovery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::edge::Inbox;
use super::pipeline::Health;
use super::{count_restart, delivered, pull, Delivery, Stage};
use crate::chain::{reader, Appended, Layout, StoreError};
use crate::index::{Index, IndexError};
use crate::messages::CommittedBlocks;
use crate::metrics as m;

/// Notifications waiting for the indexer. When full, the ChainWriter
/// drops the notification (counted) and the indexer catches up from disk.
pub const INBOX_CAPACITY: usize = 16;

/// Blocks per LMDB transaction. A transaction's dirty pages live on the
/// heap until it commits and random by_hash keys dirty about one leaf per
/// block, so this bounds the indexer's memory (~4 KiB per block) at the
/// cost of a few more commits (cheap: the index is opened NO_SYNC).
const INDEX_TXN_BLOCKS: usize = 16_384;

/// Blocks read per step when catching up from the chain.
const CATCH_UP_CHUNK: usize = INDEX_TXN_BLOCKS;

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Chain(#[from] StoreError),
}

pub struct CacheIndexer {
    inbox: Inbox<CommittedBlocks>,
    index: Index,
    layout: Layout,
    /// Next seq the index expects.
    next: u64,
    health: Arc<Health>,
    sync_interval: Duration,
    last_sync: Instant,
    done: Option<oneshot::Sender<()>>,
    fail_at_batch: Option<u64>,
    batches: u64,
}

impl CacheIndexer {
    pub fn new(
        inbox: Inbox<CommittedBlocks>,
        index: Index,
        layout: Layout,
        health: Arc<Health>,
        sync_interval: Duration,
        done: oneshot::Sender<()>,
        fail_at_batch: Option<u64>,
    ) -> Self {
        CacheIndexer {
            inbox,
            index,
            layout,
            next: 0,
            health,
            sync_interval,
            last_sync: Instant::now(),
            done: Some(done),
            fail_at_batch,
            batches: 0,
        }
    }

    fn publish(&self) {
        self.health.index_height.store(self.next, Ordering::Release);
        let chain = self.health.chain_height.load(Ordering::Acquire);
        metrics::gauge!(m::INDEX_HEAD).set(self.next as f64);
        metrics::gauge!(m::INDEX_LAG).set(chain.saturating_sub(self.next) as f64);
    }
}

impl Actor for CacheIndexer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let limit = self.health.chain_height.load(Ordering::Acquire);
        match catch_up(&self.index, &self.layout, Some(limit)) {
            Ok(next) => {
                self.next = next;
                self.publish();
                pull(self, ctx);
            }
            Err(e) => {
                tracing::error!(error = %e, "index catch-up failed; restarting the indexer");
                ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.stop());
            }
        }
    }
}

impl Supervised for CacheIndexer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        count_restart(Self::NAME);
    }
}

impl Stage for CacheIndexer {
    type In = CommittedBlocks;
    const NAME: &'static str = "cache_indexer";

    fn inbox(&self) -> &Inbox<CommittedBlocks> {
        &self.inbox
    }

    fn gather(&self) -> (usize, Duration) {
        (CATCH_UP_CHUNK, Duration::ZERO)
    }

    fn on_batches(&mut self, batches: Vec<CommittedBlocks>, ctx: &mut Context<Self>) -> Delivery {
        self.batches += 1;
        let start = Instant::now();
        if self.fail_at_batch == Some(self.batches) {
            tracing::error!("injected index failure");
            ctx.stop();
            return delivered();
        }
        let result = self.index_batches(&batches);
        match result {
            Ok(()) => {
                metrics::histogram!(m::INDEX_DURATION).record(start.elapsed().as_secs_f64());
                metrics::counter!(m::STAGE_SENT, "stage" => Self::NAME)
                    .increment(batches.iter().map(|b| b.blocks.len() as u64).sum());
                if self.last_sync.elapsed() >= self.sync_interval {
                    if let Err(e) = self.index.sync() {
                        tracing::warn!(error = %e, "index sync failed");
                    }
                    self.last_sync = Instant::now();
                }
            }
            Err(e) => {
                // Nothing is lost: the restarted indexer catches up from the chain.
                tracing::error!(error = %e, "indexing failed; restarting the indexer");
                ctx.stop();
            }
        }
        self.publish();
        delivered()
    }

    fn on_closed(&mut self, _: &mut Context<Self>) {
        if let Err(e) = self.index.sync() {
            tracing::warn!(error = %e, "final index sync failed");
        }
        self.publish();
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl CacheIndexer {
    fn index_batches(&mut self, batches: &[CommittedBlocks]) -> Result<(), CatchUpError> {
        let Some(first) = batches.iter().find_map(|b| b.blocks.first()) else { return Ok(()) };
        if first.seq > self.next {
            // Notifications were dropped: read the gap from the chain.
            tracing::debug!(from = self.next, to = first.seq, "index catching up over dropped notifications");
            self.next = catch_up(&self.index, &self.layout, Some(first.seq))?;
        }
        let fresh: Vec<Appended> =
            batches.iter().flat_map(|b| b.blocks.iter()).filter(|b| b.seq >= self.next).cloned().collect();
        for chunk in fresh.chunks(INDEX_TXN_BLOCKS) {
            self.index.insert(chunk)?;
            self.next = chunk.last().map_or(self.next, |b| b.seq + 1);
        }
        Ok(())
    }
}

/// Brings the index up to the chain, reading blocks with seq < `limit`
/// (all of them when `None`). If the index does not agree with the chain
/// (a hash differs, or it knows blocks the chain does not have) it is
/// rebuilt from scratch. Returns the next seq to index.
pub fn catch_up(index: &Index, layout: &Layout, limit: Option<u64>) -> Result<u64, CatchUpError> {
    let mut next = match index.head()? {
        None => 0,
        Some(head) => {
            let agrees = match index.location(head.seq)? {
                Some(loc) => reader::read_block_at(layout, loc.segment, loc.offset, loc.frame_len)
                    .map(|b| b.hash == head.hash && b.body.seq == head.seq)
                    .unwrap_or(false),
                None => false,
            };
            if agrees {
                head.seq + 1
            } else {
                tracing::warn!(seq = head.seq, "index does not match the chain; rebuilding it");
                index.clear()?;
                0
            }
        }
    };
    let mut buf: Vec<Appended> = Vec::with_capacity(CATCH_UP_CHUNK);
    let mut failed: Option<IndexError> = None;
    reader::scan_from(layout, next, |segment, offset, frame_len, b| {
        if limit.is_some_and(|l| b.body.seq >= l) {
            return false;
        }
        buf.push(Appended::from_stored(segment, offset, frame_len, b));
        if buf.len() >= CATCH_UP_CHUNK {
            if let Err(e) = index.insert(&buf) {
                failed = Some(e);
                return false;
            }
            next = buf.last().map_or(next, |b| b.seq + 1);
            buf.clear();
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Some(last) = buf.last() {
        index.insert(&buf)?;
        next = last.seq + 1;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::edge::edge;
    use crate::chain::{ChainStore, Record};

    fn record(i: u64) -> Record {
        crate::chain::testing::record(i, &format!("p{}", i % 2), "", false)
    }

    /// Blocks already on disk are indexed at start, and a notification that
    /// skips blocks (its predecessors were dropped) makes the indexer read
    /// the gap from the chain.
    #[actix_rt::test]
    async fn catches_up_at_start_and_over_dropped_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (mut store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        let recs: Vec<Record> = (0..30).map(record).collect();
        store.append(&recs[..10], 1).unwrap(); // before the indexer starts
        let health = Arc::new(Health::default());
        health.chain_height.store(10, Ordering::Release);
        let index = Index::open(&layout.cache).unwrap();
        let (tx, inbox) = edge("test->cache_indexer", 4);
        let (done_tx, done) = oneshot::channel();
        let reader = index.clone();
        CacheIndexer::new(inbox, index, layout.clone(), health.clone(), Duration::from_secs(60), done_tx, None).start();
        store.append(&recs[10..20], 2).unwrap(); // its notification is "dropped"
        let last = store.append(&recs[20..], 3).unwrap();
        health.chain_height.store(30, Ordering::Release);
        tx.send(CommittedBlocks { blocks: Arc::new(last) }).await.unwrap();
        drop(tx);
        done.await.unwrap();
        assert_eq!(health.index_height.load(Ordering::Acquire), 30);
        assert_eq!(reader.stats().unwrap().0, 30, "the gap 10..20 was read from the chain");
        assert_eq!(reader.seqs_of_plugin("p1", None).unwrap(), (0..30).filter(|s| s % 2 == 1).collect::<Vec<_>>());
    }
}
