//! The `org.opdbus` service: object `/org/opdbus/Chain`, interface
//! `org.opdbus.Chain1`.
//!
//! | member | signature | |
//! |---|---|---|
//! | `Head() -> (t seq, s hash)` | | the last durable block; `NotFound` on an empty chain |
//! | `GetBlock(t seq) -> s` | | the block as JSON (the form `show --json` prints) |
//! | `Query(x since, x until, s plugin, s operation, u limit) -> a(tsxsss)` | | (seq, hash, captured_ns, plugin, operation, path) of the most recent `limit` matches, oldest first; 0 / "" mean "any"; `limit` 0 means 100, at most 10000 |
//! | `Verify(t from_seq, t to_seq) -> (b ok, t blocks, s problem)` | | recomputes hashes and links over the range |
//! | `Search(s text, u k, x since, x until, s plugin, s operation) -> (s model, t vectors, a(tdxsss))` | | semantic search: `k` (1..1000, 0 means 10) rows (seq, cosine, captured_ns, plugin, operation, data summary), best first, over the `vectors` blocks that have a search vector of `model`; 0 / "" mean "any"; `Unavailable` at vector level none |
//! | `Submit(s plugin_id, s operation, s data_json) -> t seq` | | appends a `submit` footprint; replies once it is durable |
//! | `Snapshot() -> s name` | | takes a snapshot now (root only); "" when nothing is new |
//! | signal `BlocksAppended(t first_seq, t last_seq, s head_hash)` | | new durable blocks, coalesced to at most `service.signal_rate` per second |
//! | `GetCheckpoint() -> s` | | the newest signed checkpoint (a C2SP signed note, with any cosignatures); `NotFound` before the first |
//! | `GetProof(t seq) -> s` | | a C2SP tlog-proof bundle for block `seq` (what `op-dbus prove SEQ` writes); `NotFound` if no checkpoint covers it yet |
//! | `GetConsistency(t old, t new) -> s` | | a consistency proof between the checkpoints of sizes `old` and `new` (0: the newest) |
//! | signal `CheckpointSigned(t size, s checkpoint)` | | a new checkpoint is durable (at most one per `proof.checkpoint_interval_ms`, and one per epoch) |
//!
//! Errors are `org.opdbus.Error.{NotFound, InvalidArgument, Unavailable,
//! Failed}` with a message saying what was wrong. Who may call what is the
//! bus's policy (`op-dbus dbus-policy`, `config/dbus/org.opdbus.conf`).
//! Reads run on blocking threads; at most one `Verify` runs at a time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use zbus::message::Header;

use super::{connect, BusError, OwnNames, SERVICE_INTERFACE, SERVICE_NAME, SERVICE_PATH};
use crate::chain::verify;
use crate::codec::{hex, Credentials, Source, Value};
use crate::config::BusAddress;
use crate::health::Health;
use crate::index::query::{self, Filter};
use crate::index::Index;
use crate::input::{check_event, Limits};
use crate::layout::Layout;
use crate::messages::{PipelineError, RawEvent, SnapshotNow, Submitter};
use crate::metrics as m;

const QUERY_DEFAULT: u32 = 100;
const QUERY_MAX: u32 = 10_000;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.opdbus.Error")]
pub enum ChainError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No such block, or the chain is empty.
    NotFound(String),
    /// An argument is out of range or malformed.
    InvalidArgument(String),
    /// op-dbus is stopping and takes no more submissions.
    Unavailable(String),
    /// Reading the chain or the index failed.
    Failed(String),
}

/// What the service reads from and submits to.
#[derive(Clone)]
pub struct ServiceParts {
    pub(crate) layout: Layout,
    pub(crate) index: Index,
    pub(crate) health: Arc<Health>,
    /// Taken away at shutdown, so that the pipeline can drain.
    pub(crate) source: Arc<Mutex<Option<Submitter>>>,
    pub(crate) limits: Limits,
    pub(crate) snapshotter: actix::Recipient<SnapshotNow>,
    /// The search vectors' engine; `None` at vector level none.
    pub(crate) vectors: Option<Arc<crate::ml::engine::Engine>>,
    /// The newest durable checkpoint; `None` with `proof.enabled = false`.
    pub(crate) checkpoints: Option<crate::proof::checkpointer::Latest>,
}

pub struct ChainService {
    parts: ServiceParts,
    verify_slot: Arc<Semaphore>,
}

impl ChainService {
    pub fn new(parts: ServiceParts) -> Self {
        ChainService { parts, verify_slot: Arc::new(Semaphore::new(1)) }
    }
}

fn count(method: &'static str, ok: bool) {
    metrics::counter!(m::SERVICE_CALLS, "method" => method, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChainError> + Send + 'static,
) -> Result<T, ChainError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ChainError::Failed(format!("worker failed: {e}")))?
}

/// One result row of `Search`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, zbus::Type)]
pub struct SearchRow {
    pub(crate) seq: u64,
    pub(crate) score: f64,
    pub(crate) captured_ns: i64,
    pub(crate) plugin_id: String,
    pub(crate) operation: String,
    pub(crate) summary: String,
}

/// One result row of `Query`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, zbus::Type)]
pub struct BlockSummary {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) captured_ns: i64,
    pub(crate) plugin_id: String,
    pub(crate) operation: String,
    pub(crate) path: String,
}

#[zbus::interface(name = "org.opdbus.Chain1")]
impl ChainService {
    async fn head(&self) -> Result<(u64, String), ChainError> {
        let head = *self.parts.health.head.borrow();
        count("Head", head.is_some());
        head.map(|(seq, h)| (seq, hex(&h))).ok_or_else(|| ChainError::NotFound("the chain is empty".into()))
    }

    async fn get_block(&self, seq: u64) -> Result<String, ChainError> {
        let (layout, index) = (self.parts.layout.clone(), self.parts.index.clone());
        let r = blocking(move || match query::by_seq(&layout, Some(&index), seq) {
            Ok(Some(b)) => serde_json::to_string(&query::block_json(&b))
                .map_err(|e| ChainError::Failed(format!("cannot encode block {seq}: {e}"))),
            Ok(None) => Err(ChainError::NotFound(format!("no block with seq {seq}"))),
            Err(e) => Err(ChainError::Failed(e.to_string())),
        })
        .await;
        count("GetBlock", r.is_ok());
        r
    }

    async fn query(
        &self,
        since: i64,
        until: i64,
        plugin: String,
        operation: String,
        limit: u32,
    ) -> Result<Vec<BlockSummary>, ChainError> {
        if limit > QUERY_MAX {
            count("Query", false);
            return Err(ChainError::InvalidArgument(format!("limit {limit} is above the maximum of {QUERY_MAX}")));
        }
        let filter = Filter {
            since: (since != 0).then_some(since),
            until: (until != 0).then_some(until),
            plugin: (!plugin.is_empty()).then_some(plugin),
            operation: (!operation.is_empty()).then_some(operation),
            limit: Some(if limit == 0 { QUERY_DEFAULT } else { limit } as usize),
        };
        let (layout, index) = (self.parts.layout.clone(), self.parts.index.clone());
        let r = blocking(move || {
            let found = query::query(&layout, Some(&index), &filter).map_err(|e| ChainError::Failed(e.to_string()))?;
            Ok(found
                .iter()
                .map(|b| {
                    let fp = &b.body.footprint;
                    BlockSummary {
                        seq: b.body.seq,
                        hash: hex(&b.hash),
                        captured_ns: fp.captured_ns,
                        plugin_id: fp.plugin_id.clone(),
                        operation: fp.operation.clone(),
                        path: fp.path.clone().unwrap_or_default(),
                    }
                })
                .collect())
        })
        .await;
        count("Query", r.is_ok());
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn search(
        &self,
        text: String,
        k: u32,
        since: i64,
        until: i64,
        plugin: String,
        operation: String,
    ) -> Result<(String, u64, Vec<SearchRow>), ChainError> {
        let Some(engine) = self.parts.vectors.clone() else {
            count("Search", false);
            return Err(ChainError::Unavailable("vector level none stores no vectors".into()));
        };
        let k = if k == 0 { 10 } else { k as usize };
        if k > crate::ml::search::MAX_K {
            count("Search", false);
            return Err(ChainError::InvalidArgument(format!("k {k} is above {}", crate::ml::search::MAX_K)));
        }
        let filter = Filter {
            since: (since != 0).then_some(since),
            until: (until != 0).then_some(until),
            plugin: (!plugin.is_empty()).then_some(plugin),
            operation: (!operation.is_empty()).then_some(operation),
            limit: None,
        };
        let (layout, index) = (self.parts.layout.clone(), self.parts.index.clone());
        let r = blocking(move || {
            let r =
                crate::ml::search::search(&layout, Some(&index), &engine, &text, k, &filter).map_err(|e| match e {
                    crate::ml::search::SearchError::Query(e) => ChainError::InvalidArgument(e.to_string()),
                    e => ChainError::Failed(e.to_string()),
                })?;
            let rows = r
                .hits
                .into_iter()
                .map(|h| SearchRow {
                    seq: h.seq,
                    score: h.score as f64,
                    captured_ns: h.captured_ns,
                    plugin_id: h.plugin,
                    operation: h.operation,
                    summary: h.summary,
                })
                .collect();
            Ok((r.model, r.vectors, rows))
        })
        .await;
        count("Search", r.is_ok());
        r
    }

    async fn verify(&self, from_seq: u64, to_seq: u64) -> Result<(bool, u64, String), ChainError> {
        let height = self.parts.health.chain_height.load(std::sync::atomic::Ordering::Acquire);
        if from_seq > to_seq || to_seq >= height {
            count("Verify", false);
            return Err(ChainError::InvalidArgument(format!(
                "range {from_seq}..={to_seq} is not within the chain's blocks 0..{height}"
            )));
        }
        let _slot = self.verify_slot.acquire().await.map_err(|_| ChainError::Unavailable("stopping".into()))?;
        let layout = self.parts.layout.clone();
        let r = blocking(move || {
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let report = verify::verify_range(&layout, threads, from_seq, to_seq);
            Ok(match report {
                Ok(rep) => match rep.fault {
                    None if rep.head_seq.is_some_and(|h| h >= to_seq) => (true, rep.blocks, String::new()),
                    None => (false, rep.blocks, format!("the chain ends at seq {:?}, before {to_seq}", rep.head_seq)),
                    Some(f) => (
                        false,
                        rep.blocks,
                        format!("seq {}: {} ({} offset {}: {})", f.seq, f.kind.describe(), f.file, f.offset, f.detail),
                    ),
                },
                Err(e) => (false, 0, e.to_string()),
            })
        })
        .await;
        count("Verify", r.is_ok());
        r
    }

    async fn submit(
        &self,
        plugin_id: String,
        operation: String,
        data_json: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<u64, ChainError> {
        let r = self.submit_inner(plugin_id, operation, data_json, hdr, conn).await;
        count("Submit", r.is_ok());
        r
    }

    /// Takes a snapshot now; returns its name, or "" if nothing is new.
    async fn snapshot(&self) -> Result<String, ChainError> {
        let r = self
            .parts
            .snapshotter
            .send(SnapshotNow { last: false })
            .await
            .map_err(|_| ChainError::Unavailable("op-dbus is stopping".into()))
            .and_then(|r| r.map_err(|e| ChainError::Failed(e.to_string())))
            .map(|m| m.map(|m| m.name).unwrap_or_default());
        count("Snapshot", r.is_ok());
        r
    }

    async fn get_checkpoint(&self) -> Result<String, ChainError> {
        let latest = self.parts.checkpoints.as_ref().and_then(|l| l.borrow().clone());
        let r = match latest {
            Some(p) => {
                String::from_utf8(p.note.clone()).map_err(|_| ChainError::Failed("a checkpoint is not UTF-8".into()))
            }
            None => {
                let path = self.parts.layout.timing.join("checkpoints");
                blocking(move || {
                    let r = crate::proof::log::read_all(&path, crate::proof::log::CHECKPOINTS_MAGIC)
                        .map_err(|e| ChainError::Failed(e.to_string()))?;
                    let (_, note) =
                        r.notes.last().ok_or_else(|| ChainError::NotFound("no checkpoint signed yet".into()))?;
                    String::from_utf8(note.clone()).map_err(|_| ChainError::Failed("a checkpoint is not UTF-8".into()))
                })
                .await
            }
        };
        count("GetCheckpoint", r.is_ok());
        r
    }

    async fn get_proof(&self, seq: u64) -> Result<String, ChainError> {
        let layout = self.parts.layout.clone();
        let r = blocking(move || {
            let (id, _) = crate::proof::audit::identity_key(&layout, None).map_err(ChainError::Unavailable)?;
            crate::proof::bundle::prove(&layout, &id, seq).map_err(prove_error)
        })
        .await;
        count("GetProof", r.is_ok());
        r
    }

    async fn get_consistency(&self, old: u64, new: u64) -> Result<String, ChainError> {
        let layout = self.parts.layout.clone();
        let r = blocking(move || {
            let (id, _) = crate::proof::audit::identity_key(&layout, None).map_err(ChainError::Unavailable)?;
            crate::proof::bundle::prove_consistency(&layout, &id, old, (new != 0).then_some(new)).map_err(prove_error)
        })
        .await;
        count("GetConsistency", r.is_ok());
        r
    }

    #[zbus(signal)]
    async fn checkpoint_signed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        size: u64,
        checkpoint: String,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn blocks_appended(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        first_seq: u64,
        last_seq: u64,
        head_hash: String,
    ) -> zbus::Result<()>;
}

fn prove_error(e: crate::proof::bundle::ProveError) -> ChainError {
    use crate::proof::bundle::ProveError as P;
    match e {
        P::NotCovered { .. } | P::NoBlock { .. } | P::NoCheckpoint(_) => ChainError::NotFound(e.to_string()),
        P::Order { .. } => ChainError::InvalidArgument(e.to_string()),
        _ => ChainError::Failed(e.to_string()),
    }
}

/// The next new checkpoint, or never (no checkpointer).
async fn next_checkpoint(
    rx: &mut Option<crate::proof::checkpointer::Latest>,
) -> Option<Arc<crate::proof::checkpointer::Published>> {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
                return std::future::pending().await;
            }
            r.borrow_and_update().clone()
        }
        None => std::future::pending().await,
    }
}

impl ChainService {
    async fn submit_inner(
        &self,
        plugin_id: String,
        operation: String,
        data_json: String,
        hdr: Header<'_>,
        conn: &zbus::Connection,
    ) -> Result<u64, ChainError> {
        // The size first: parsing is on the executor, and JSON is larger
        // than its canonical form by at most what escaping adds.
        if data_json.len() > self.parts.limits.max_line_bytes() {
            return Err(ChainError::InvalidArgument(format!(
                "data_json is {} bytes, above the {} accepted for input.max_data_bytes = {}",
                data_json.len(),
                self.parts.limits.max_line_bytes(),
                self.parts.limits.max_data_bytes
            )));
        }
        let data: Value = serde_json::from_str(&data_json)
            .map_err(|e| ChainError::InvalidArgument(format!("data_json is not valid JSON: {e}")))?;
        check_event(&plugin_id, &operation, &data, self.parts.limits)
            .map_err(|e| ChainError::InvalidArgument(e.to_string()))?;
        let sender = hdr.sender().map(|s| s.to_string());
        let creds = match &sender {
            Some(s) => caller_creds(conn, s).await,
            None => None,
        };
        let source = self.parts.source.lock().expect("source lock").clone();
        let source = source.ok_or_else(|| ChainError::Unavailable("op-dbus is stopping".into()))?;
        let event = RawEvent {
            source: Source::Submit,
            plugin_id,
            operation,
            path: None,
            sender,
            creds,
            captured_ns: crate::codec::now_ns(),
            signature: String::new(),
            data,
        };
        let receipt =
            source.send(vec![event]).await.map_err(|_| ChainError::Unavailable("op-dbus is stopping".into()))?;
        drop(source);
        match receipt.durable().await {
            Ok(c) => Ok(c.first_seq),
            Err(PipelineError::Stopped) => {
                Err(ChainError::Unavailable("op-dbus stopped before the footprint was durable".into()))
            }
            Err(e) => Err(ChainError::Unavailable(e.to_string())),
        }
    }
}

async fn caller_creds(conn: &zbus::Connection, sender: &str) -> Option<Credentials> {
    let proxy = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    let name = zbus::names::BusName::try_from(sender).ok()?;
    let c = proxy.get_connection_credentials(name).await.ok()?;
    let pid = c.process_id();
    Some(Credentials { uid: c.unix_user_id(), pid, unit: pid.and_then(super::names::unit_of_pid) })
}

/// Connects, serves the object and owns the name (never taking it from
/// another owner, nor letting one take it).
pub async fn open_service(
    addr: &BusAddress,
    parts: ServiceParts,
    own: &OwnNames,
) -> Result<zbus::Connection, BusError> {
    let conn = connect(addr).await?;
    // Known as ours from here on. (At start-up the service connects before
    // the monitor exists; after a reconnect, its Hello and NameAcquired may
    // be seen before this line and are recorded as the bus's traffic.)
    own.set("service", conn.unique_name().map(|n| n.as_str()));
    conn.object_server().at(SERVICE_PATH, ChainService::new(parts)).await.map_err(BusError::Call)?;
    let flags = zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
    let reply = conn.request_name_with_flags(SERVICE_NAME, flags).await;
    match reply {
        Ok(zbus::fdo::RequestNameReply::PrimaryOwner) | Ok(zbus::fdo::RequestNameReply::AlreadyOwner) => Ok(conn),
        Ok(other) => {
            Err(BusError::NameTaken { name: SERVICE_NAME, bus: addr.to_string(), detail: format!("{other:?}") })
        }
        Err(e) => Err(BusError::NameTaken { name: SERVICE_NAME, bus: addr.to_string(), detail: e.to_string() }),
    }
}

/// Serves until `stop` fires: emits `BlocksAppended` for each change of
/// the durable head, at most `rate` per second (a change arriving sooner
/// waits, and everything appended meanwhile goes into that one signal),
/// and reconnects with backoff when the bus goes away.
pub async fn run_service(
    addr: BusAddress,
    first: zbus::Connection,
    parts: ServiceParts,
    rate: u32,
    reconnect_max: Duration,
    own: OwnNames,
    stop: Arc<Notify>,
) {
    let period = Duration::from_secs(1) / rate.max(1);
    let mut head_rx = parts.health.head.subscribe();
    // Blocks already durable at start are not news.
    let mut announced = head_rx.borrow_and_update().map(|(seq, _)| seq);
    let mut cp_rx = parts.checkpoints.clone();
    let mut conn = Some(first);
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => {
                let mut delay = Duration::from_millis(100);
                loop {
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    match open_service(&addr, parts.clone(), &own).await {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::debug!(error = %e, "service: bus still unavailable");
                            delay = (delay * 2).min(reconnect_max);
                        }
                    }
                }
            }
        };
        tracing::info!(bus = %addr, name = SERVICE_NAME, path = SERVICE_PATH, "serving {SERVICE_INTERFACE}");
        // After a failed emit the head has not changed, but it is still news.
        let mut retry = false;
        loop {
            if !retry {
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = c.closed() => break,
                    changed = head_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    cp = next_checkpoint(&mut cp_rx) => {
                        if let Some(p) = cp {
                            let emitter = zbus::object_server::SignalEmitter::new(&c, SERVICE_PATH).expect("valid object path");
                            let note = String::from_utf8_lossy(&p.note).into_owned();
                            if let Err(e) = ChainService::checkpoint_signed(&emitter, p.size, note).await {
                                tracing::debug!(error = %e, "could not emit CheckpointSigned");
                            }
                        }
                        continue;
                    }
                }
            }
            retry = false;
            let Some((last, hash)) = *head_rx.borrow_and_update() else { continue };
            let first = announced.map_or(0, |a| a + 1);
            if first > last {
                continue;
            }
            let emitter = zbus::object_server::SignalEmitter::new(&c, SERVICE_PATH).expect("valid object path");
            match ChainService::blocks_appended(&emitter, first, last, hex(&hash)).await {
                Ok(()) => {
                    announced = Some(last);
                    metrics::counter!(m::FEED_SIGNALS).increment(1);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not emit BlocksAppended; retrying");
                    retry = !c.is_closed();
                }
            }
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
        tracing::warn!(bus = %addr, "service lost the bus connection; reconnecting");
    }
}
