//! Snapshotter: decides when to snapshot and asks the ChainWriter to take
//! the snapshot between two commits ([`TakeSnapshot`]); writes each
//! snapshot into the chain as an `internal` record (`org.opdbus.Snapshot`,
//! FORMAT.md) through the pipeline's source, waiting until it is durable;
//! then rotates old snapshots. Consumes [`CommittedBlocks`] (per-op mode),
//! a timer (timed modes), and [`SnapshotNow`] commands (`snapshot now`,
//! the final snapshot at shutdown). Owns the retention rule.
//!
//! `per-op` means: a snapshot at the first commit boundary after each
//! committed batch. Batches that commit while a snapshot is being taken
//! are covered together by the next one (their notifications coalesce in
//! the bounded queue; drops are counted), and batches holding only
//! snapshot records do not trigger one.

use std::time::Duration;

use actix::prelude::*;

use super::chain_writer::ChainWriter;
use crate::codec::{Source, Value};
use crate::layout::Layout;
use crate::messages::{CommittedBlocks, RawEvent, SnapshotError, SnapshotNow, Submitter, TakeSnapshot};
use crate::metrics as m;
use crate::runtime::edge::Inbox;
use crate::runtime::{delivered, Delivery, Stage};
use crate::storage::retention::{keep, Interval, Retention};
use crate::storage::snapshot::{self, SnapshotMeta};

pub const SNAPSHOT_OPERATION: &str = "org.opdbus.Snapshot";

pub struct Snapshotter {
    writer: Addr<ChainWriter>,
    /// Where snapshot records go; let go of at the final snapshot.
    submitter: Option<Submitter>,
    layout: Layout,
    interval: Interval,
    retention: Retention,
    /// Snapshot names a replica still needs (its next parent): never deleted.
    protected: Box<dyn Fn() -> Vec<String> + Send>,
    /// The last seq the newest snapshot covers.
    last_head: Option<u64>,
}

impl Snapshotter {
    pub fn new(
        writer: Addr<ChainWriter>,
        submitter: Submitter,
        layout: Layout,
        interval: Interval,
        retention: Retention,
        protected: Box<dyn Fn() -> Vec<String> + Send>,
    ) -> Self {
        snapshot::remove_incomplete(&layout);
        let last_head = snapshot::list(&layout).last().map(|s| covered_up_to(&layout, s.head_seq));
        Snapshotter { writer, submitter: Some(submitter), layout, interval, retention, protected, last_head }
    }
}

impl Actor for Snapshotter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Interval::Every(d) = self.interval {
            ctx.run_interval(d, |act, ctx| {
                // After the final snapshot, nothing more is taken.
                if act.submitter.is_some() {
                    ctx.wait(act.take_and_record("timer").map(|_, _, _| ()));
                }
            });
        }
    }
}

/// `per-op` mode: fed the ChainWriter's committed batches.
impl Stage for Snapshotter {
    type Input = Inbox<CommittedBlocks>;
    const NAME: &'static str = "snapshotter";
    /// Committed-batch notifications waiting; a full queue drops the
    /// notification, and the next snapshot covers its batch.
    const INBOX_CAPACITY: usize = 8;

    fn gather(&self) -> (usize, Duration) {
        (usize::MAX, Duration::ZERO)
    }

    fn on_batches(&mut self, batches: Vec<CommittedBlocks>, ctx: &mut Context<Self>) -> Delivery<Self> {
        let news = batches.iter().any(|b| b.blocks.iter().any(|a| a.operation != SNAPSHOT_OPERATION));
        if news && self.submitter.is_some() {
            ctx.wait(self.take_and_record("per-op").map(|_, _, _| ()));
        }
        delivered()
    }

    fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
        delivered()
    }
}

impl Handler<SnapshotNow> for Snapshotter {
    type Result = AtomicResponse<Self, Result<Option<SnapshotMeta>, SnapshotError>>;

    /// Atomic: runs alone, like every snapshot (see `take_and_record`).
    fn handle(&mut self, msg: SnapshotNow, _: &mut Context<Self>) -> Self::Result {
        if msg.last && self.interval == Interval::Off {
            // Snapshots are off: no final one; just let go of the pipeline.
            self.submitter = None;
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(None))));
        }
        let fut = self.take_and_record(if msg.last { "shutdown" } else { "requested" });
        AtomicResponse::new(Box::pin(fut.map(move |r, act, _| {
            if msg.last {
                act.submitter = None;
            }
            r
        })))
    }
}

impl Snapshotter {
    /// Asks the writer for a snapshot, records it in the chain (waiting
    /// until the record is durable), rotates. Every caller runs it with
    /// `ctx.wait` (or an atomic response), which holds back the actor's
    /// mailbox, timer and inbox until it is done: one snapshot at a time.
    /// What it reads of the actor (the last head covered, whether the
    /// pipeline is still there) it reads when it starts, not when it is
    /// queued: actix's interval queues one call per missed period after a
    /// stall, and each must see what the one before it covered (read at
    /// queueing time, three of them snapshotted each other's records).
    fn take_and_record(
        &mut self,
        reason: &'static str,
    ) -> impl ActorFuture<Self, Output = Result<Option<SnapshotMeta>, SnapshotError>> + 'static {
        actix::fut::ready(()).then(move |(), act: &mut Self, _| act.start_snapshot(reason))
    }

    fn start_snapshot(
        &mut self,
        reason: &'static str,
    ) -> impl ActorFuture<Self, Output = Result<Option<SnapshotMeta>, SnapshotError>> + 'static {
        let (writer, unless) = (self.writer.clone(), self.last_head);
        // After the final snapshot the pipeline is let go of: nothing more
        // is taken (a timer tick queued behind the final one, say).
        let submitter = self.submitter.clone();
        let work = async move {
            let Some(submitter) = submitter else { return Ok(None) };
            let taken =
                writer.send(TakeSnapshot { unless_head: unless }).await.map_err(|_| SnapshotError::WriterGone)?;
            let Some(meta) = taken? else { return Ok(None) };
            let record = submitter.submit(vec![snapshot_record(&meta)]).await?;
            // Covered: the snapshot's blocks, and its own record when nothing
            // else was appended in between (a record alone is not worth the
            // next snapshot).
            let covered = if record.first_seq == meta.head_seq + 1 { record.last_seq } else { meta.head_seq };
            Ok(Some((meta, covered)))
        };
        actix::fut::wrap_future::<_, Self>(work).map(
            move |r: Result<Option<(SnapshotMeta, u64)>, SnapshotError>, act, _| match r {
                Ok(Some((meta, covered))) => {
                    act.last_head = Some(covered);
                    metrics::counter!(m::SNAPSHOTS_TAKEN).increment(1);
                    tracing::info!(snapshot = %meta.name, kind = %meta.kind, reason, "snapshot taken");
                    act.rotate();
                    Ok(Some(meta))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    metrics::counter!(m::SNAPSHOT_ERRORS).increment(1);
                    tracing::error!(error = %e, reason, "snapshot failed");
                    Err(e)
                }
            },
        )
    }

    fn rotate(&self) {
        let all = snapshot::list(&self.layout);
        let protected_names = (self.protected)();
        let taken: Vec<i64> = all.iter().map(|s| s.taken_ns).collect();
        let protected: Vec<i64> =
            all.iter().filter(|s| protected_names.contains(&s.name)).map(|s| s.taken_ns).collect();
        let kept = keep(&taken, &self.retention, &protected);
        let mut left = all.len();
        for (s, k) in all.iter().zip(kept) {
            if k {
                continue;
            }
            match snapshot::remove(&snapshot::path_of(&self.layout, &s.name)) {
                Ok(()) => {
                    left -= 1;
                    metrics::counter!(m::SNAPSHOTS_DELETED).increment(1);
                }
                Err(e) => tracing::warn!(snapshot = %s.name, error = %e, "cannot delete an old snapshot"),
            }
        }
        metrics::gauge!(m::SNAPSHOTS_KEPT).set(left as f64);
    }
}

/// How far a snapshot taken at `head` covers the chain: through its own
/// record when that record directly follows it.
fn covered_up_to(layout: &Layout, head: u64) -> u64 {
    match crate::index::query::by_seq(layout, None, head + 1) {
        Ok(Some(b)) if b.body.footprint.operation == SNAPSHOT_OPERATION => head + 1,
        _ => head,
    }
}

/// The chain's record of a snapshot: `internal`, plugin `org.opdbus`,
/// operation `org.opdbus.Snapshot`, data `{name, kind, head_seq, head_hash,
/// taken_ns, areas: [{area, uuid, generation}]}` (FORMAT.md).
pub fn snapshot_record(meta: &SnapshotMeta) -> RawEvent {
    let s = |x: &str| Value::Str(x.to_string());
    let areas = meta
        .areas
        .iter()
        .map(|a| {
            Value::map(vec![
                (s("area"), s(&a.area)),
                (s("uuid"), a.uuid.as_deref().map(s).unwrap_or(Value::Nil)),
                (s("generation"), a.generation.map(Value::UInt).unwrap_or(Value::Nil)),
            ])
        })
        .collect();
    RawEvent {
        source: Source::Internal,
        plugin_id: crate::bus::SERVICE_NAME.to_string(),
        operation: SNAPSHOT_OPERATION.to_string(),
        path: None,
        sender: None,
        creds: None,
        captured_ns: meta.taken_ns,
        signature: String::new(),
        data: Value::map(vec![
            (s("name"), s(&meta.name)),
            (s("kind"), s(&meta.kind)),
            (s("head_seq"), Value::UInt(meta.head_seq)),
            (s("head_hash"), s(&meta.head_hash)),
            (s("taken_ns"), Value::int(meta.taken_ns)),
            (s("areas"), Value::Array(areas)),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::actors::embedder::Embedder;
    use crate::actors::footprinter::Footprinter;
    use crate::chain::ChainStore;
    use crate::health::Health;
    use crate::index::Index;
    use crate::ml::VectorLevel;
    use crate::runtime::edge::edge;
    use crate::runtime::{start, start_actor, Running};

    /// The pipeline up to a real ChainWriter (chain and LMDB index in a
    /// tempdir), and a Snapshotter with it; `protected` is what the
    /// replicas still need.
    struct Rig {
        snapshotter: Running<Snapshotter>,
        submitter: Submitter,
        layout: Layout,
        protected: Arc<Mutex<Vec<String>>>,
        _stages: (Running<ChainWriter>, Running<Embedder>, Running<Footprinter>),
        _dir: tempfile::TempDir,
    }

    fn rig(interval: Interval, retention: Retention) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        layout.create_dirs().unwrap();
        let (store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        let index = Index::open_or_reset(&layout.cache).unwrap();
        let (chain_tx, chain_rx) = edge("embedder->chain_writer", ChainWriter::INBOX_CAPACITY);
        let (embed_tx, embed_rx) = edge("footprinter->embedder", Embedder::INBOX_CAPACITY);
        let (source_tx, source_rx) = edge("source->footprinter", Footprinter::INBOX_CAPACITY);
        let health = Arc::new(Health::default());
        let writer =
            start(chain_rx, move || ChainWriter::new(store, vec![], 4096, Duration::ZERO, health).with_index(index));
        let embedder = start(embed_rx, move || Embedder::new(chain_tx, VectorLevel::None));
        let footprinter = start(source_rx, move || Footprinter::new(embed_tx, 1 << 20));
        let submitter = Submitter::new(source_tx);
        let protected = Arc::new(Mutex::new(Vec::new()));
        let snapshotter = {
            let (addr, sub, layout, names) =
                (writer.addr.clone(), submitter.clone(), layout.clone(), protected.clone());
            let protected = Box::new(move || names.lock().unwrap().clone());
            start_actor(move || Snapshotter::new(addr, sub, layout, interval, retention, protected))
        };
        Rig { snapshotter, submitter, layout, protected, _stages: (writer, embedder, footprinter), _dir: dir }
    }

    const TIMED: Interval = Interval::Every(Duration::from_secs(3600));
    const KEEP_ALL: Retention = Retention { recent: 1000, hourly: 0, daily: 0, weekly: 0 };

    impl Rig {
        /// Appends `n` events, durably.
        async fn append(&self, n: u64) {
            let events = (0..n)
                .map(|i| RawEvent {
                    source: Source::Submit,
                    plugin_id: "org.example.app".into(),
                    operation: "org.example.app.Changed".into(),
                    path: None,
                    sender: None,
                    creds: None,
                    captured_ns: crate::codec::now_ns(),
                    signature: String::new(),
                    data: Value::UInt(i),
                })
                .collect();
            self.submitter.submit(events).await.unwrap();
        }

        async fn snapshot_now(&self, last: bool) -> Option<SnapshotMeta> {
            self.snapshotter.addr.send(SnapshotNow { last }).await.unwrap().unwrap()
        }

        fn names(&self) -> Vec<String> {
            snapshot::list(&self.layout).into_iter().map(|s| s.name).collect()
        }

        /// The block at `seq`, if the chain has it.
        fn block(&self, seq: u64) -> Option<crate::chain::reader::StoredBlock> {
            crate::index::query::by_seq(&self.layout, None, seq).unwrap()
        }
    }

    /// What actix's interval does after a stall: several timer snapshots
    /// queued in one go. Test-only.
    struct QueueTimerTicks(usize);
    impl actix::Message for QueueTimerTicks {
        type Result = ();
    }
    impl Handler<QueueTimerTicks> for Snapshotter {
        type Result = ();
        fn handle(&mut self, m: QueueTimerTicks, ctx: &mut Context<Self>) {
            for _ in 0..m.0 {
                ctx.wait(self.take_and_record("timer").map(|_, _, _| ()));
            }
        }
    }

    /// Timer ticks that pile up after a stall take one snapshot of what is
    /// new, not one of each other's records.
    #[actix_rt::test]
    async fn timer_ticks_queued_together_take_one_snapshot() {
        let r = rig(TIMED, KEEP_ALL);
        r.append(5).await;
        r.snapshotter.addr.send(QueueTimerTicks(3)).await.unwrap();
        // Every queued snapshot has run once this answer comes back (ctx.wait
        // holds the mailbox).
        assert_eq!(r.snapshot_now(false).await, None, "nothing new after the timer's snapshot");
        assert_eq!(r.names().len(), 1, "{:?}", r.names());
    }

    #[actix_rt::test]
    async fn snapshot_now_on_an_empty_chain_takes_nothing() {
        let r = rig(TIMED, KEEP_ALL);
        assert_eq!(r.snapshot_now(false).await, None);
        assert!(r.names().is_empty());
    }

    #[actix_rt::test]
    async fn a_snapshot_is_recorded_in_the_chain_right_after_its_head() {
        let r = rig(TIMED, KEEP_ALL);
        r.append(5).await;
        let meta = r.snapshot_now(false).await.expect("a snapshot");
        assert_eq!(meta.head_seq, 4);
        assert_eq!(r.names(), vec![meta.name.clone()]);
        let record = r.block(meta.head_seq + 1).expect("the snapshot's record");
        assert_eq!(record.body.footprint.operation, SNAPSHOT_OPERATION);
        assert_eq!(Value::decode(&record.body.footprint.data).unwrap(), snapshot_record(&meta).data);
    }

    #[actix_rt::test]
    async fn a_snapshot_with_nothing_new_since_the_last_one_and_its_record_is_not_taken() {
        let r = rig(TIMED, KEEP_ALL);
        r.append(3).await;
        let first = r.snapshot_now(false).await.expect("a snapshot");
        assert_eq!(r.snapshot_now(false).await, None, "its own record is not news");
        assert_eq!(r.names(), [first.name]);
        assert!(r.block(first.head_seq + 2).is_none(), "no second record");
    }

    #[actix_rt::test]
    async fn two_concurrent_snapshot_requests_never_snapshot_the_same_head_twice() {
        let r = rig(TIMED, KEEP_ALL);
        r.append(3).await;
        let (a, b) = tokio::join!(r.snapshot_now(false), r.snapshot_now(false));
        let heads: Vec<u64> = [a, b].into_iter().flatten().map(|m| m.head_seq).collect();
        assert!(!heads.is_empty());
        assert!(heads.len() == 1 || heads[0] != heads[1], "two snapshots of head {}", heads[0]);
        assert_eq!(r.names().len(), heads.len());
    }

    #[actix_rt::test]
    async fn the_final_snapshot_request_with_snapshots_off_takes_nothing() {
        let r = rig(Interval::Off, KEEP_ALL);
        r.append(3).await;
        assert_eq!(r.snapshot_now(true).await, None);
        assert!(r.names().is_empty());
        assert!(r.block(3).is_none(), "no record either");
    }

    const KEEP_ONE: Retention = Retention { recent: 1, hourly: 0, daily: 0, weekly: 0 };

    #[actix_rt::test]
    async fn rotation_keeps_only_the_newest_snapshot_when_max_recent_is_one() {
        let r = rig(TIMED, KEEP_ONE);
        let mut taken = Vec::new();
        for _ in 0..3 {
            r.append(1).await;
            taken.push(r.snapshot_now(false).await.expect("a snapshot").name);
        }
        assert_eq!(r.names(), [taken[2].clone()]);
    }

    #[actix_rt::test]
    async fn rotation_keeps_an_older_snapshot_a_replica_still_needs() {
        let r = rig(TIMED, KEEP_ONE);
        let mut taken = Vec::new();
        for _ in 0..3 {
            r.append(1).await;
            taken.push(r.snapshot_now(false).await.expect("a snapshot").name);
            if taken.len() == 1 {
                r.protected.lock().unwrap().push(taken[0].clone());
            }
        }
        assert_eq!(r.names(), [taken[0].clone(), taken[2].clone()]);
    }
}
