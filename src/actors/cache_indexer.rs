//! CacheIndexer: consumes [`CommittedBlocks`] from the ChainWriter and
//! keeps the index (LMDB by seq, time, plugin+operation; per-segment hash
//! files) in step with the chain through an [`Indexer`]. Owns the
//! [`Index`]. **The index is derived**: at start it
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

use crate::health::Health;
use crate::index::indexer::{Indexer, IndexingError, TXN_BLOCKS};
use crate::index::Index;
use crate::layout::Layout;
use crate::messages::CommittedBlocks;
use crate::metrics as m;
use crate::runtime::edge::Inbox;
use crate::runtime::{count_restart, delivered, Delivery, Stage};

/// How often the indexer checks for durable blocks it was not told about.
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

pub struct CacheIndexer {
    index: Index,
    layout: Layout,
    /// Built in `started`, again after every failure (it re-reads its state
    /// from disk); `None` while it cannot be built, retried each second.
    indexer: Option<Indexer>,
    health: Arc<Health>,
    sync_interval: Duration,
    last_sync: Instant,
    done: Option<oneshot::Sender<()>>,
    fail_at_batch: Option<u64>,
    batches: u64,
}

impl CacheIndexer {
    pub fn new(
        index: Index,
        layout: Layout,
        health: Arc<Health>,
        sync_interval: Duration,
        done: oneshot::Sender<()>,
        fail_at_batch: Option<u64>,
    ) -> Self {
        CacheIndexer {
            index,
            layout,
            indexer: None,
            health,
            sync_interval,
            last_sync: Instant::now(),
            done: Some(done),
            fail_at_batch,
            batches: 0,
        }
    }

    fn publish(&self) {
        let next = self.indexer.as_ref().map_or(0, Indexer::next);
        self.health.index_height.store(next, Ordering::Release);
        let chain = self.health.chain_height.load(Ordering::Acquire);
        metrics::gauge!(m::INDEX_HEAD).set(next as f64);
        metrics::gauge!(m::INDEX_LAG).set(chain.saturating_sub(next) as f64);
    }
}

impl Actor for CacheIndexer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.open();
        // Dropped notifications are otherwise only noticed when the next
        // one arrives; an idle daemon would keep a lagging index. The same
        // tick rebuilds an indexer that failed.
        ctx.run_interval(CATCH_UP_INTERVAL, |act, _| {
            if act.indexer.is_none() {
                act.open();
            } else if let Err(e) = act.catch_up_to_durable() {
                act.start_over(&e);
            }
            act.publish();
        });
    }
}

impl Stage for CacheIndexer {
    type Input = Inbox<CommittedBlocks>;
    const NAME: &'static str = "cache_indexer";
    /// Each notification holds up to a commit (4096 blocks by default).
    /// When full, the ChainWriter drops the notification (counted) and the
    /// indexer catches up from disk, so this is sized for memory, not for
    /// bursts.
    const INBOX_CAPACITY: usize = 8;

    fn gather(&self) -> (usize, Duration) {
        (TXN_BLOCKS, Duration::ZERO)
    }

    fn on_batches(&mut self, batches: Vec<CommittedBlocks>, _: &mut Context<Self>) -> Delivery<Self> {
        self.batches += 1;
        let start = Instant::now();
        if self.fail_at_batch == Some(self.batches) {
            self.start_over(&"injected index failure");
            return delivered();
        }
        if self.indexer.is_none() {
            // Being rebuilt: it catches up from the chain, which holds these blocks.
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
            // Nothing is lost: the rebuilt indexer catches up from the chain.
            Err(e) => self.start_over(&e),
        }
        self.publish();
        delivered()
    }

    fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
        // The writer has drained: everything durable is readable now.
        if let Err(e) = self.catch_up_to_durable() {
            tracing::warn!(error = %e, "final index catch-up failed; the next start finishes it");
        }
        if let Err(e) = self.index.sync() {
            tracing::warn!(error = %e, "final index sync failed");
        }
        self.publish();
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        delivered()
    }
}

impl CacheIndexer {
    /// Builds the indexer from what the index holds and catches it up with
    /// the durable chain; on failure it stays unbuilt and the tick retries.
    fn open(&mut self) {
        let limit = self.health.chain_height.load(Ordering::Acquire);
        let opened = Indexer::open(self.index.clone(), &self.layout).and_then(|mut i| {
            i.catch_up(Some(limit))?;
            Ok(i)
        });
        match opened {
            Ok(indexer) => self.indexer = Some(indexer),
            Err(e) => tracing::error!(error = %e, "cannot build the indexer; retrying in 1 s"),
        }
        self.publish();
    }

    /// After a failure: drop the indexer's state and rebuild it from disk.
    fn start_over(&mut self, why: &dyn std::fmt::Display) {
        tracing::error!(error = %why, "indexing failed; rebuilding the indexer from the index and the chain");
        count_restart(Self::NAME);
        self.indexer = None;
        self.open();
    }

    /// Indexes whatever is durable and not indexed yet, from the chain.
    fn catch_up_to_durable(&mut self) -> Result<(), IndexingError> {
        let durable = self.health.chain_height.load(Ordering::Acquire);
        match self.indexer.as_mut() {
            Some(i) if i.next() < durable => i.catch_up(Some(durable)),
            _ => Ok(()),
        }
    }

    fn index_batches(&mut self, batches: &[CommittedBlocks]) -> Result<(), IndexingError> {
        let indexer = self.indexer.as_mut().expect("started");
        for b in batches {
            indexer.add(&b.blocks)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ChainStore, Record};
    use crate::runtime::edge::edge;

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
        let (l, h) = (layout.clone(), health.clone());
        let _stage = crate::runtime::start(inbox, move || {
            CacheIndexer::new(index, l, h, Duration::from_secs(60), done_tx, None)
        });
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
