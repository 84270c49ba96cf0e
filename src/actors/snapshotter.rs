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

use super::chain_writer::{ChainWriter, TakeSnapshot};
use crate::codec::{Source, Value};
use crate::layout::Layout;
use crate::messages::{CommittedBlocks, RawEvent, RawEventBatch, SnapshotNow};
use crate::metrics as m;
use crate::runtime::count_restart;
use crate::runtime::edge::{Inbox, Outbox};
use crate::storage::retention::{keep, Interval, Retention};
use crate::storage::snapshot::{self, SnapshotMeta};

/// Committed-batch notifications waiting (per-op mode only); a full queue
/// drops the notification, and the next snapshot covers its batch.
pub const INBOX_CAPACITY: usize = 8;

pub const NAME: &str = "snapshotter";
pub const SNAPSHOT_OPERATION: &str = "org.opdbus.Snapshot";

pub struct Snapshotter {
    writer: Addr<ChainWriter>,
    /// Where snapshot records go; dropped at the final snapshot.
    source: Option<Outbox<RawEventBatch>>,
    inbox: Option<Inbox<CommittedBlocks>>,
    layout: Layout,
    interval: Interval,
    retention: Retention,
    /// Snapshot names a replica still needs (its next parent): never deleted.
    protected: Box<dyn Fn() -> Vec<String> + Send>,
    last_head: Option<u64>,
    busy: bool,
    turn: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Snapshotter {
    pub fn new(
        writer: Addr<ChainWriter>,
        source: Outbox<RawEventBatch>,
        inbox: Option<Inbox<CommittedBlocks>>,
        layout: Layout,
        interval: Interval,
        retention: Retention,
        protected: Box<dyn Fn() -> Vec<String> + Send>,
    ) -> Self {
        snapshot::remove_incomplete(&layout);
        let last_head = snapshot::list(&layout).last().map(|s| covered_up_to(&layout, s.head_seq));
        Snapshotter {
            writer,
            source: Some(source),
            inbox,
            layout,
            interval,
            retention,
            protected,
            last_head,
            busy: false,
            turn: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

impl Actor for Snapshotter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.interval {
            Interval::Every(d) => {
                ctx.run_interval(d, |act, ctx| act.snapshot(ctx, "timer", None));
            }
            Interval::PerOp => pull_committed(self, ctx),
            Interval::Off => {}
        }
    }
}

impl Supervised for Snapshotter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        count_restart(NAME);
        self.busy = false;
    }
}

impl Handler<SnapshotNow> for Snapshotter {
    type Result = ResponseActFuture<Self, Result<Option<SnapshotMeta>, String>>;

    fn handle(&mut self, msg: SnapshotNow, _: &mut Context<Self>) -> Self::Result {
        if msg.last && self.interval == Interval::Off {
            // Snapshots are off: no final one; just let go of the source.
            self.source = None;
            self.inbox = None;
            return Box::pin(actix::fut::ready(Ok(None)));
        }
        let fut = take_and_record(self, if msg.last { "shutdown" } else { "requested" });
        Box::pin(fut.map(move |r, act, _| {
            if msg.last {
                act.source = None;
                act.inbox = None;
            }
            r
        }))
    }
}

fn pull_committed(act: &mut Snapshotter, ctx: &mut Context<Snapshotter>) {
    let Some(inbox) = act.inbox.clone() else { return };
    let fut = async move { inbox.recv(64, Duration::ZERO).await }.into_actor(act).map(|batches, act, ctx| {
        if batches.is_empty() {
            return; // closed
        }
        let news = batches.iter().any(|b| b.blocks.iter().any(|a| a.operation != SNAPSHOT_OPERATION));
        if news {
            act.snapshot(ctx, "per-op", Some(Box::new(pull_committed)));
        } else {
            pull_committed(act, ctx);
        }
    });
    ctx.spawn(fut);
}

type Then = Box<dyn FnOnce(&mut Snapshotter, &mut Context<Snapshotter>)>;

impl Snapshotter {
    /// One snapshot (skipped while another is being taken), then `then`.
    fn snapshot(&mut self, ctx: &mut Context<Self>, reason: &'static str, then: Option<Then>) {
        if self.busy || self.source.is_none() {
            if let Some(t) = then {
                t(self, ctx);
            }
            return;
        }
        let fut = take_and_record(self, reason).map(move |_, act, ctx| {
            if let Some(t) = then {
                t(act, ctx);
            }
        });
        ctx.spawn(fut);
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

/// Asks the writer for a snapshot, records it in the chain (waiting until
/// the record is durable), rotates.
fn take_and_record(
    act: &mut Snapshotter,
    reason: &'static str,
) -> impl ActorFuture<Snapshotter, Output = Result<Option<SnapshotMeta>, String>> {
    act.busy = true;
    // One snapshot at a time: a requested or final snapshot arriving while
    // a timed one is in flight waits for it, then sees what it covered.
    let turn = act.turn.clone();
    async move { turn.acquire_owned().await.expect("never closed") }
        .into_actor(act)
        .then(|permit, act, _| {
            let writer = act.writer.clone();
            let unless = act.last_head;
            async move {
                let taken = writer.send(TakeSnapshot { unless_head: unless }).await.map_err(|e| e.to_string());
                (permit, taken.and_then(|r| r))
            }
            .into_actor(act)
        })
        .then(move |(permit, taken), act, _| {
            let source = act.source.clone();
            let meta = taken.clone();
            async move {
                let meta = meta?;
                let Some(meta) = meta else { return Ok(None) };
                let Some(source) = source else {
                    let head = meta.head_seq;
                    return Ok(Some((meta, head)));
                };
                let (ack, rx) = tokio::sync::oneshot::channel();
                source
                    .send(RawEventBatch { events: vec![snapshot_record(&meta)], ack: Some(ack) })
                    .await
                    .map_err(|e| e.to_string())?;
                drop(source);
                let record = rx.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                // Covered: the snapshot's blocks, and its own record when
                // nothing else was appended in between (a record alone is
                // not worth the next snapshot).
                let covered = if record.first_seq == meta.head_seq + 1 { record.last_seq } else { meta.head_seq };
                Ok(Some((meta, covered)))
            }
            .into_actor(act)
            .map(move |r, _, _| (permit, r))
        })
        .map(move |(permit, r): (_, Result<Option<(SnapshotMeta, u64)>, String>), act, _| {
            // Released once `last_head` says what this snapshot covered.
            let _permit: tokio::sync::OwnedSemaphorePermit = permit;
            act.busy = false;
            let r = r.map(|o| {
                o.map(|(meta, covered)| {
                    act.last_head = Some(covered);
                    meta
                })
            });
            match &r {
                Ok(Some(meta)) => {
                    metrics::counter!(m::SNAPSHOTS_TAKEN).increment(1);
                    tracing::info!(snapshot = %meta.name, kind = %meta.kind, reason, "snapshot taken");
                    act.rotate();
                }
                Ok(None) => {}
                Err(e) => {
                    metrics::counter!(m::SNAPSHOT_ERRORS).increment(1);
                    tracing::error!(error = %e, reason, "snapshot failed");
                }
            }
            r
        })
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
