//! DbusIngest: consumes what the capture task queued (bus messages, gaps,
//! reconnections; see [`crate::bus::capture`]), maps it to events with
//! [`crate::bus::mapping`], fills in each sender's credentials (looked up
//! once per unique name, and as soon as a connection joins), and hands
//! the events to the pipeline's [`Submitter`] in batches.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::bus::capture::{CaptureQueue, Captured, Gap};
use crate::bus::mapping::{gap_event, Mapper};
use crate::bus::names::CredsCache;
use crate::codec::Credentials;
use crate::messages::{RawEvent, Submitter};
use crate::metrics as m;
use crate::runtime::{delivered, Delivery, Stage};

/// Items taken from the capture queue per round.
const TAKE: usize = 1024;
/// How long to wait for a fuller round once something is queued: the
/// wake-ups between threads, not the work, dominate the cost of small rounds.
const LINGER: Duration = Duration::from_millis(2);
/// A batch is handed on at this many events or bytes of bodies.
const BATCH_EVENTS: usize = 512;
const BATCH_BYTES: usize = 4 << 20;
/// How long a credentials lookup may take before the event goes without
/// (the round waits for its lookups, so this bounds the stall).
const CREDS_TIMEOUT: Duration = Duration::from_millis(250);

pub const NAME: &str = "dbus_ingest";

pub struct DbusIngest {
    out: Option<Submitter>,
    mapper: Mapper,
    creds: CredsCache,
    /// The capture's ordinary connection, for credentials lookups.
    resolver: Option<zbus::Connection>,
    /// Says so in `/health` if this actor is dropped before the capture
    /// ended (a panic outside its handler).
    watch: Option<Watch>,
}

struct Watch(Option<std::sync::Arc<crate::health::Health>>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            tracing::error!("dbus_ingest is gone before the capture ended; the bus is no longer recorded");
            h.ingest_failed.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl DbusIngest {
    pub fn new(out: Submitter, mapper: Mapper, creds: CredsCache) -> Self {
        DbusIngest { out: Some(out), mapper, creds, resolver: None, watch: None }
    }

    /// Reports to `health` if the actor dies before the capture ends.
    pub fn watched_by(mut self, health: std::sync::Arc<crate::health::Health>) -> Self {
        self.watch = Some(Watch(Some(health)));
        self
    }
}

impl Actor for DbusIngest {
    type Context = Context<Self>;
}

/// One round: take what is queued, map it, look up missing credentials,
/// hand the events on (waiting for room). The queue closing ends the stage
/// and drops its outbox, which lets the pipeline drain.
impl Stage for DbusIngest {
    type Input = Arc<CaptureQueue>;
    const NAME: &'static str = NAME;
    /// Not an edge: the capture queue is bounded in messages, bytes and fds
    /// by `[bus]` (see `bus::capture`).
    const INBOX_CAPACITY: usize = 0;

    fn gather(&self) -> (usize, Duration) {
        (TAKE, LINGER)
    }

    fn on_batches(&mut self, items: Vec<Captured>, _: &mut Context<Self>) -> Delivery<Self> {
        let n = items.len();
        let creds = &self.creds;
        let mapper = &mut self.mapper;
        let round = std::panic::catch_unwind(AssertUnwindSafe(|| mapper.map_items(items, creds)));
        let (pending, joined, left) = match round {
            Ok(r) => {
                if let Some(resolver) = r.resolver {
                    self.resolver = Some(resolver);
                }
                (r.events, r.joined, r.left)
            }
            Err(_) => {
                // A bug, not the message's fault: what was taken is lost, so
                // it is recorded as a gap rather than disappearing.
                tracing::error!(items = n, "dbus_ingest panicked while mapping; recording a gap");
                let now = crate::codec::now_ns();
                let gap = Gap {
                    reason: crate::bus::capture::GapReason::IngestFailed,
                    dropped: Some(n as u64),
                    first_ns: now,
                    last_ns: now,
                };
                (vec![gap_event(&gap, self.mapper.bus())], Vec::new(), Vec::new())
            }
        };
        let lookups = self.missing_creds(&pending, joined);
        let resolver = self.resolver.clone();
        let work = async move { (lookup_creds(resolver, lookups).await, pending) }.into_actor(self).then(
            move |(found, mut pending), act, _| {
                for e in pending.iter_mut().filter(|e| e.creds.is_none()) {
                    if let Some(s) = &e.sender {
                        e.creds = found.iter().find(|(n, _)| n == s).map(|(_, c)| c.clone());
                    }
                }
                // Cached for later messages; those that left are forgotten.
                for (sender, creds) in found {
                    act.creds.insert(&sender, creds);
                }
                for gone in &left {
                    act.creds.remove(gone);
                }
                let out = act.out.clone();
                async move {
                    if let Some(out) = out {
                        send_batches(&out, pending).await;
                    }
                }
                .into_actor(act)
            },
        );
        Box::pin(work)
    }

    /// The capture ended and everything it queued is handed on: let go of
    /// the pipeline so it drains.
    fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
        self.out = None;
        // A normal end: disarm the watch.
        if let Some(w) = self.watch.as_mut() {
            w.0 = None;
        }
        delivered()
    }
}

impl DbusIngest {
    /// Senders (unique names) of events still without credentials, and
    /// the connections that joined this round.
    fn missing_creds(&self, events: &[RawEvent], joined: Vec<String>) -> Vec<String> {
        let mut v: Vec<String> = events
            .iter()
            .filter(|e| e.creds.is_none())
            .filter_map(|e| e.sender.as_deref())
            .filter(|s| s.starts_with(':'))
            .map(str::to_string)
            .collect();
        v.extend(joined.into_iter().filter(|n| !self.creds.contains(n)));
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Asks the bus for each sender's uid and pid (concurrently, bounded in
/// time); a sender that has already left gets empty credentials, cached
/// like any other so it is not asked again.
/// Asks for each sender's credentials, concurrently and bounded in time
/// (the round waits for them). Those the bus did not answer in time are
/// left out, to be asked again; a sender that has left gets empty ones.
async fn lookup_creds(resolver: Option<zbus::Connection>, senders: Vec<String>) -> Vec<(String, Credentials)> {
    let Some(conn) = resolver else { return Vec::new() };
    if senders.is_empty() {
        return Vec::new();
    }
    let Ok(proxy) = zbus::fdo::DBusProxy::new(&conn).await else { return Vec::new() };
    let proxy = &proxy;
    let lookups = senders.into_iter().map(|s| async move {
        let found = crate::bus::names::lookup(proxy, &s, CREDS_TIMEOUT).await;
        found.map(|c| (s, c))
    });
    futures_util::future::join_all(lookups).await.into_iter().flatten().collect()
}

async fn send_batches(out: &Submitter, events: Vec<RawEvent>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let total = events.len() as u64;
    for e in events {
        bytes += e.data.encoded_len();
        batch.push(e);
        if batch.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES {
            if out.send_unacked(std::mem::take(&mut batch)).await.is_err() {
                tracing::error!("the pipeline is gone; bus events are lost");
                return;
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() && out.send_unacked(batch).await.is_err() {
        tracing::error!("the pipeline is gone; bus events are lost");
        return;
    }
    metrics::counter!(m::STAGE_SENT, "stage" => NAME).increment(total);
}
