//! Typed messages between the pipeline's stages. Data messages are nouns
//! and carry batches; their `Debug` prints counts and seq ranges, never
//! payloads (a footprint can hold megabytes of event data).

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

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
    pub head_hash: Hash,
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
    pub events: Vec<RawEvent>,
    pub ack: Option<Ack>,
}

/// Footprinter -> Embedder: footprints with the decoded data kept beside
/// them so the Embedder does not decode what the Footprinter just encoded.
pub struct FootprintBatch {
    pub items: Vec<(Footprint, Value)>,
    pub ack: Option<Ack>,
}

/// Embedder -> ChainWriter.
pub struct RecordBatch {
    pub records: Vec<Record>,
    pub ack: Option<Ack>,
}

/// ChainWriter -> CacheIndexer (and later Snapshotter, the feed): blocks
/// that are durable. Shared, because every subscriber gets the same batch.
#[derive(Clone)]
pub struct CommittedBlocks {
    pub blocks: Arc<Vec<Appended>>,
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

/// Takes a snapshot now; `last` also lets go of the source afterwards (the
/// final snapshot at shutdown). Answered with the snapshot, or `None` if
/// nothing was appended since the last one.
#[derive(actix::Message)]
#[rtype(result = "Result<Option<crate::storage::snapshot::SnapshotMeta>, String>")]
pub struct SnapshotNow {
    pub last: bool,
}
