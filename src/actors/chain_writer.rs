//! ChainWriter: consumes [`RecordBatch`]es from the Embedder, appends them
//! to the chain in group commits (one fdatasync per commit), then — and
//! only then — acknowledges each batch to its submitter and emits
//! [`CommittedBlocks`] to its subscribers (the CacheIndexer). Owns the
//! [`ChainStore`]: **only ChainWriter appends to the chain.**
//!
//! Group commit: each pull takes everything queued, up to `max_batch`
//! events, lingering up to `max_wait` for more; while a commit's fdatasync
//! runs, the next batches queue up, so batches grow with the load.
//!
//! Failure: a failed append leaves nothing of the batch behind (the store
//! cuts it back), the records stay pending, and the writer starts over: it
//! reopens the chain, takes as committed any pending record that did reach
//! the disk (so nothing is written twice), and retries the rest after a
//! backoff. Upstream waits meanwhile: the pull loop takes nothing new until
//! the retry's delivery completes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::chain::{reader, Appended, ChainStore, Record};
use crate::health::Health;
use crate::messages::{Ack, CommittedBlocks, PipelineError, RecordBatch, SnapshotError, TakeSnapshot};
use crate::metrics as m;
use crate::runtime::edge::{Inbox, Outbox};
use crate::runtime::{count_restart, delivered, Delivery, Stage};
use crate::storage::snapshot::{self, SnapshotMeta};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct ChainWriter {
    store: ChainStore,
    subscribers: Vec<Outbox<CommittedBlocks>>,
    max_batch: usize,
    max_wait: Duration,
    /// Records taken from the inbox and not yet durable, in order.
    pending: Vec<Record>,
    /// Submitters of the pending records, in order.
    acks: VecDeque<PendingAck>,
    failures: u32,
    health: Arc<Health>,
    /// Test hook: a slow disk.
    commit_delay: Option<Duration>,
    /// Told once the input is closed and everything is durable.
    done: Option<tokio::sync::oneshot::Sender<()>>,
    /// For snapshots off BTRFS (a consistent copy of the LMDB index).
    index: Option<crate::index::Index>,
}

impl ChainWriter {
    pub fn new(
        store: ChainStore,
        subscribers: Vec<Outbox<CommittedBlocks>>,
        max_batch: usize,
        max_wait: Duration,
        health: Arc<Health>,
    ) -> Self {
        metrics::gauge!(m::CHAIN_HEIGHT).set(store.head().next_seq as f64);
        ChainWriter {
            store,
            subscribers,
            max_batch,
            max_wait,
            pending: Vec::new(),
            acks: VecDeque::new(),
            failures: 0,
            health,
            commit_delay: None,
            done: None,
            index: None,
        }
    }

    /// The index to copy into snapshots taken off BTRFS.
    pub fn with_index(mut self, index: crate::index::Index) -> Self {
        self.index = Some(index);
        self
    }

    /// Reports to `done` once the input is closed and everything is durable.
    pub fn with_done(mut self, done: tokio::sync::oneshot::Sender<()>) -> Self {
        self.done = Some(done);
        self
    }

    /// Makes every commit take at least `delay` (backpressure tests).
    pub fn with_commit_delay(mut self, delay: Option<Duration>) -> Self {
        self.commit_delay = delay;
        self
    }
}

impl Actor for ChainWriter {
    type Context = Context<Self>;
}

impl Handler<TakeSnapshot> for ChainWriter {
    type Result = Result<Option<SnapshotMeta>, SnapshotError>;

    /// Runs between two commits: commits are synchronous inside the pull
    /// loop's handler, so a message is only ever handled at a boundary.
    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        if !self.pending.is_empty() {
            return Err(SnapshotError::NotAtBoundary);
        }
        let head = self.store.head();
        let Some(last) = head.next_seq.checked_sub(1) else { return Ok(None) };
        if msg.unless_head == Some(last) {
            return Ok(None);
        }
        let start = Instant::now();
        let layout = self.store.layout().clone();
        let meta = snapshot::take(&layout, &head, crate::codec::now_ns(), self.index.as_ref())?;
        metrics::histogram!(m::SNAPSHOT_DURATION).record(start.elapsed().as_secs_f64());
        Ok(Some(meta))
    }
}

impl Stage for ChainWriter {
    type Input = Inbox<RecordBatch>;
    const NAME: &'static str = "chain_writer";
    /// Larger than the others so that a commit's fdatasync has a full
    /// default `max_batch` (8 import batches of 512) queued behind it for
    /// the next group commit; together with `max_batch` it bounds the
    /// records held between the Embedder and the disk.
    const INBOX_CAPACITY: usize = 8;

    fn gather(&self) -> (usize, Duration) {
        (self.max_batch, self.max_wait)
    }

    fn on_batches(&mut self, batches: Vec<RecordBatch>, _: &mut Context<Self>) -> Delivery<Self> {
        for b in batches {
            if b.records.is_empty() {
                // Nothing to make durable, and no seq range to report.
                if let Some(ack) = b.ack {
                    let _ = ack.send(Err(PipelineError::EmptyBatch));
                }
                continue;
            }
            self.acks.push_back(PendingAck { ack: b.ack, remaining: b.records.len(), first_seq: None });
            self.pending.extend(b.records);
        }
        self.commit_until_durable()
    }

    fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
        Box::pin(self.commit_until_durable().map(|(), act, _| act.finish()))
    }
}

impl ChainWriter {
    /// Commits what is pending. After a failure: reopens the chain and
    /// retries, with backoff, until everything pending is durable.
    fn commit_until_durable(&mut self) -> Delivery<Self> {
        if self.commit() {
            return delivered();
        }
        count_restart(Self::NAME);
        self.reopen();
        if self.pending.is_empty() {
            return delivered();
        }
        let backoff = (Duration::from_millis(50) * 2u32.saturating_pow(self.failures.min(8))).min(MAX_BACKOFF);
        tracing::info!(pending = self.pending.len(), ?backoff, "retrying the pending commit");
        Box::pin(
            actix::fut::wrap_future::<_, Self>(tokio::time::sleep(backoff))
                .then(|(), act, _| act.commit_until_durable()),
        )
    }

    /// Appends everything pending as one durable batch. Returns false when
    /// the append failed (nothing of it is left on disk).
    fn commit(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let start = Instant::now();
        if let Some(d) = self.commit_delay {
            // This actor's own thread: sleeping here is what a slow disk does.
            std::thread::sleep(d);
        }
        match self.store.append(&self.pending, crate::codec::now_ns()) {
            Ok(appended) => {
                self.failures = 0;
                self.health.writer_failing.store(false, Ordering::Release);
                metrics::histogram!(m::COMMIT_DURATION).record(start.elapsed().as_secs_f64());
                metrics::histogram!(m::COMMIT_BATCH).record(appended.len() as f64);
                self.pending.clear();
                self.acknowledge(appended);
                true
            }
            Err(e) => {
                self.failures += 1;
                self.health.writer_failing.store(true, Ordering::Release);
                metrics::counter!(m::COMMIT_ERRORS).increment(1);
                tracing::error!(error = %e, pending = self.pending.len(), "commit failed; reopening the chain to retry");
                false
            }
        }
    }

    /// The records in `appended` are durable: tell their submitters and the subscribers.
    fn acknowledge(&mut self, appended: Vec<Appended>) {
        let Some(last) = appended.last() else { return };
        let head = self.store.head();
        self.health.set_head(&head);
        metrics::gauge!(m::CHAIN_HEIGHT).set(head.next_seq as f64);
        metrics::counter!(m::STAGE_SENT, "stage" => Self::NAME).increment(appended.len() as u64);
        let mut next = appended[0].seq;
        let mut remaining = appended.len();
        while remaining > 0 {
            let Some(front) = self.acks.front_mut() else { break };
            front.first_seq.get_or_insert(next);
            if front.remaining > remaining {
                // Part of this submitter's batch is durable; the rest is still pending.
                front.remaining -= remaining;
                break;
            }
            let done = self.acks.pop_front().expect("front exists");
            next += done.remaining as u64;
            remaining -= done.remaining;
            if let Some(ack) = done.ack {
                let last_seq = next - 1;
                let hash = appended[(last_seq - appended[0].seq) as usize].hash;
                let first_seq = done.first_seq.expect("set above");
                // A submitter that stopped waiting is not an error.
                let _ = ack.send(Ok(crate::messages::Committed { first_seq, last_seq, head_hash: hash }));
            }
        }
        debug_assert_eq!(last.seq + 1, head.next_seq);
        let blocks = CommittedBlocks { blocks: Arc::new(appended) };
        for s in &self.subscribers {
            // Never wait on a derived-data stage; a full queue is counted and
            // the subscriber catches up from the chain.
            s.try_send(blocks.clone());
        }
    }

    /// After a failure: reopen the chain (cutting whatever a failed write
    /// left), and take as committed any pending record that reached the disk.
    fn reopen(&mut self) {
        let before = self.store.head();
        let layout = self.store.layout().clone();
        let (store, recovery) = match ChainStore::open(&layout, self.store.segment_max_bytes()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the chain; will retry");
                return;
            }
        };
        if recovery.cut_bytes > 0 {
            tracing::warn!(bytes = recovery.cut_bytes, "cut a partial commit");
        }
        self.store = store;
        let after = self.store.head();
        if after.next_seq <= before.next_seq {
            return;
        }
        let mut found = Vec::new();
        let read = reader::scan_from(&layout, before.next_seq, |segment, offset, frame_len, b| {
            found.push((segment, offset, frame_len, b));
            true
        });
        if let Err(e) = read {
            tracing::error!(error = %e, "cannot read back blocks written before the failure");
            return;
        }
        let matches = found.len() <= self.pending.len()
            && found.iter().zip(&self.pending).all(|((_, _, _, b), r)| b.body.footprint == r.footprint);
        if !matches {
            tracing::error!(
                blocks = found.len(),
                "blocks appeared on disk that this writer did not write; keeping its pending records"
            );
            return;
        }
        tracing::warn!(blocks = found.len(), "a failed commit reached the disk; taking it as committed");
        let appended: Vec<Appended> = found
            .into_iter()
            .map(|(segment, offset, frame_len, b)| Appended::from_stored(segment, offset, frame_len, b))
            .collect();
        self.pending.drain(..appended.len());
        self.acknowledge(appended);
    }

    /// Input closed and everything is durable: let the subscribers finish.
    fn finish(&mut self) {
        self.subscribers.clear();
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        tracing::debug!("chain writer drained");
    }
}

/// A submitter waiting for its records: how many are not durable yet, and
/// the seq of its first record once that one is.
struct PendingAck {
    ack: Option<Ack>,
    remaining: usize,
    first_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::runtime::edge::edge;

    fn record(i: u64) -> Record {
        crate::chain::testing::record(i, "p", "", true)
    }

    /// The writer with a probe in place of the CacheIndexer, and a probe
    /// that never reads: acks carry the right seqs, notifications come after
    /// the blocks are on disk, and a full subscriber never blocks appends.
    #[actix_rt::test]
    async fn acks_after_durable_and_never_waits_on_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        let (store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        let (tx, inbox) = edge("test->chain_writer", 4);
        let (probe_tx, mut probe) = edge("chain_writer->probe", 64);
        let (stuck_tx, _stuck) = edge::<CommittedBlocks>("chain_writer->stuck", 1);
        let health = Arc::new(Health::default());
        let h = health.clone();
        let _stage = crate::runtime::start(inbox, move || {
            ChainWriter::new(store, vec![probe_tx, stuck_tx], 100, Duration::ZERO, h)
        });
        let mut acks = Vec::new();
        for b in 0..10u64 {
            let (ack, rx) = tokio::sync::oneshot::channel();
            tx.send(RecordBatch { records: (b * 3..b * 3 + 3).map(record).collect(), ack: Some(ack) }).await.unwrap();
            acks.push(rx);
        }
        for (b, rx) in acks.into_iter().enumerate() {
            let c = rx.await.unwrap().unwrap();
            assert_eq!((c.first_seq, c.last_seq), (b as u64 * 3, b as u64 * 3 + 2));
        }
        assert_eq!(health.chain_height.load(Ordering::Acquire), 30);
        drop(tx);
        let mut seen = 0;
        loop {
            let got = probe.recv(1000, Duration::ZERO).await;
            if got.is_empty() {
                break;
            }
            for n in got {
                for b in n.blocks.iter() {
                    assert_eq!(b.seq, seen);
                    let stored = reader::read_block_at(&layout, b.segment, b.offset, b.frame_len).unwrap();
                    assert_eq!(stored.hash, b.hash, "notified blocks are on disk");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 30);
    }
}
