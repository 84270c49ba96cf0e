//! Typed messages between the pipeline's stages. Data messages are nouns
//! and carry batches; their `Debug` prints counts and seq ranges, never
//! payloads (a footprint can hold megabytes of event data).

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::runtime::edge::Outbox;
use crate::storage::snapshot::SnapshotMeta;

use crate::chain::{Appended, Record};
use crate::codec::{Credentials, Footprint, Hash, Source, Value};
use crate::runtime::Batch;

/// Reply to whoever submitted a batch, sent once its records are durable.
pub type Ack = oneshot::Sender<Result<Committed, PipelineError>>;

/// Seq range of a durable batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub first_seq: u64,
    pub last_seq: u64,
    pub(crate) head_hash: Hash,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PipelineError {
    #[error("the pipeline stopped before the batch was durable")]
    Stopped,
    #[error("a batch must hold at least one event")]
    EmptyBatch,
}

/// An event as a source saw it, before canonical encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct RawEvent {
    pub source: Source,
    pub plugin_id: String,
    pub operation: String,
    pub path: Option<String>,
    pub sender: Option<String>,
    pub creds: Option<Credentials>,
    pub captured_ns: i64,
    pub signature: String,
    pub data: Value,
}

/// Source -> Footprinter.
pub struct RawEventBatch {
    pub(crate) events: Vec<RawEvent>,
    pub(crate) ack: Option<Ack>,
}

/// Footprinter -> Embedder: footprints with the decoded data kept beside
/// them so the Embedder does not decode what the Footprinter just encoded.
pub struct FootprintBatch {
    pub(crate) items: Vec<(Footprint, Value)>,
    pub(crate) ack: Option<Ack>,
}

/// Embedder -> ChainWriter.
pub struct RecordBatch {
    pub(crate) records: Vec<Record>,
    pub(crate) ack: Option<Ack>,
}

/// ChainWriter -> CacheIndexer (and later Snapshotter, the feed): blocks
/// that are durable. Shared, because every subscriber gets the same batch.
#[derive(Clone)]
pub struct CommittedBlocks {
    pub(crate) blocks: Arc<Vec<Appended>>,
}

impl Batch for RawEventBatch {
    fn events(&self) -> usize {
        self.events.len()
    }
}
impl Batch for FootprintBatch {
    fn events(&self) -> usize {
        self.items.len()
    }
}
impl Batch for RecordBatch {
    fn events(&self) -> usize {
        self.records.len()
    }
}
impl Batch for CommittedBlocks {
    fn events(&self) -> usize {
        self.blocks.len()
    }
}

impl fmt::Debug for RawEventBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawEventBatch({} events, ack: {})", self.events.len(), self.ack.is_some())
    }
}
impl fmt::Debug for FootprintBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FootprintBatch({} footprints, ack: {})", self.items.len(), self.ack.is_some())
    }
}
impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordBatch({} records, ack: {})", self.records.len(), self.ack.is_some())
    }
}
impl fmt::Debug for CommittedBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.blocks.first(), self.blocks.last()) {
            (Some(a), Some(b)) => write!(f, "CommittedBlocks(seq {}..={})", a.seq, b.seq),
            _ => write!(f, "CommittedBlocks(empty)"),
        }
    }
}

/// The pipeline's entrance, for every producer: the bus, `Submit`,
/// `import` and the Snapshotter's own records. `send` waits for room in the
/// Footprinter's queue (backpressure) and returns a [`Receipt`]; the
/// receipt resolves once the batch is durable.
#[derive(Clone)]
pub struct Submitter {
    source: Outbox<RawEventBatch>,
}

/// A batch in the pipeline: resolves to its seq range once durable.
pub struct Receipt(oneshot::Receiver<Result<Committed, PipelineError>>);

impl Submitter {
    pub fn new(source: Outbox<RawEventBatch>) -> Self {
        Submitter { source }
    }

    /// Hands `events` to the pipeline, waiting for room.
    pub async fn send(&self, events: Vec<RawEvent>) -> Result<Receipt, PipelineError> {
        let (ack, rx) = oneshot::channel();
        self.source.send(RawEventBatch { events, ack: Some(ack) }).await.map_err(|_| PipelineError::Stopped)?;
        Ok(Receipt(rx))
    }

    /// As [`send`](Self::send), for threads outside the async runtime.
    pub fn blocking_send(&self, events: Vec<RawEvent>) -> Result<Receipt, PipelineError> {
        let (ack, rx) = oneshot::channel();
        self.source.blocking_send(RawEventBatch { events, ack: Some(ack) }).map_err(|_| PipelineError::Stopped)?;
        Ok(Receipt(rx))
    }

    /// Hands `events` on without asking to be told when they are durable
    /// (the bus: its loss accounting is the gap record, not an ack).
    pub async fn send_unacked(&self, events: Vec<RawEvent>) -> Result<(), PipelineError> {
        self.source.send(RawEventBatch { events, ack: None }).await.map_err(|_| PipelineError::Stopped)
    }

    /// Sends and waits until durable.
    pub async fn submit(&self, events: Vec<RawEvent>) -> Result<Committed, PipelineError> {
        self.send(events).await?.durable().await
    }
}

impl Receipt {
    /// Waits until the batch is durable (or the pipeline stopped without it).
    pub async fn durable(self) -> Result<Committed, PipelineError> {
        self.0.await.map_err(|_| PipelineError::Stopped)?
    }

    /// As [`durable`](Self::durable), for threads outside the async runtime.
    pub fn blocking_durable(self) -> Result<Committed, PipelineError> {
        self.0.blocking_recv().map_err(|_| PipelineError::Stopped)?
    }
}

/// Why a snapshot was not taken or not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("a failed commit is being retried; not at a commit boundary")]
    NotAtBoundary,
    #[error("snapshot failed: {0}")]
    Take(#[from] std::io::Error),
    #[error("the chain writer is gone")]
    WriterGone,
    #[error("the snapshot was taken but its record was not: {0}")]
    Record(#[from] PipelineError),
}

/// Command to the ChainWriter: take a snapshot now, at this commit
/// boundary. Answered with `None` when there is nothing new since
/// `unless_head` (or the chain is empty).
#[derive(actix::Message)]
#[rtype(result = "Result<Option<SnapshotMeta>, SnapshotError>")]
pub struct TakeSnapshot {
    pub(crate) unless_head: Option<u64>,
}

/// Command to the Snapshotter: take a snapshot now and record it; `last`
/// also lets go of the pipeline afterwards (the final snapshot at
/// shutdown). Answered with the snapshot, or `None` if nothing was
/// appended since the last one.
#[derive(actix::Message)]
#[rtype(result = "Result<Option<SnapshotMeta>, SnapshotError>")]
pub struct SnapshotNow {
    pub(crate) last: bool,
}
