//! DbusIngest: consumes what the capture task queued (bus messages, gaps,
//! reconnections; see [`crate::bus::capture`]), emits [`RawEventBatch`]es
//! to the Footprinter. Owns the mapping from a D-Bus message to an event:
//! which messages are op-dbus's own (never recorded), the filter rules,
//! the plugin id (the sender's well-known name, tracked from
//! `NameOwnerChanged` in bus order), the sender's credentials (looked up
//! once per unique name), and the body decoded with its signature kept.
//! Gaps become `internal` records (`org.opdbus.Gap`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::bus::capture::{CaptureQueue, Captured, Gap};
use crate::bus::names::{CredsCache, Names};
use crate::bus::rules::{Filter, Kind, Meta};
use crate::bus::{OwnNames, SERVICE_NAME};
use crate::codec::dbus::{header_signature, BodyDecoder};
use crate::codec::{Credentials, Source, Value};
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
/// Nesting accepted in a body. dbus-daemon forwards up to 64 nested
/// variants inside 32 arrays and 32 structs; each level counts once here.
const MAX_DEPTH: usize = 160;
/// How long a credentials lookup may take before the event goes without
/// (the round waits for its lookups, so this bounds the stall).
const CREDS_TIMEOUT: Duration = Duration::from_millis(250);
/// Memory a body's decoding may take, as a multiple of `max_data_bytes`.
const DECODE_BUDGET_FACTOR: usize = 8;

pub const NAME: &str = "dbus_ingest";

pub struct DbusIngest {
    out: Option<Submitter>,
    filter: Filter,
    own: OwnNames,
    names: Names,
    /// The unique names of the capture's connections, as of the last
    /// `Connected` item processed.
    capture_own: Vec<String>,
    creds: CredsCache,
    resolver: Option<zbus::Connection>,
    decoder: BodyDecoder,
    bus: String,
    /// `input.max_data_bytes`: bodies above it are stored raw (and then
    /// truncated); decoding is bounded to a multiple of it.
    max_data_bytes: usize,
    /// Unique names that joined the bus this round: looked up at once, so
    /// that a short-lived sender is still there when asked.
    joined: Vec<String>,
    /// Unique names that left this round: not cached.
    left: Vec<String>,
    /// Says so in `/health` if this actor is dropped before the capture
    /// ended (a panic that the supervisor does not see).
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
    pub fn new(
        out: Submitter,
        filter: Filter,
        own: OwnNames,
        bus: String,
        max_data_bytes: usize,
        creds: CredsCache,
    ) -> Self {
        DbusIngest {
            out: Some(out),
            filter,
            own,
            names: Names::new(),
            capture_own: Vec::new(),
            creds,
            resolver: None,
            decoder: BodyDecoder::new(),
            bus,
            max_data_bytes,
            joined: Vec::new(),
            left: Vec::new(),
            watch: None,
        }
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
        let pending = match std::panic::catch_unwind(AssertUnwindSafe(|| self.map_items(items))) {
            Ok(p) => p,
            Err(_) => {
                // A bug, not the message's fault: what was taken is lost, so
                // it is recorded as a gap rather than disappearing.
                tracing::error!(items = n, "dbus_ingest panicked while mapping; recording a gap");
                let now = crate::codec::now_ns();
                vec![gap_event(
                    &Gap {
                        reason: crate::bus::capture::GapReason::IngestFailed,
                        dropped: Some(n as u64),
                        first_ns: now,
                        last_ns: now,
                    },
                    &self.bus,
                )]
            }
        };
        let lookups = self.missing_creds(&pending);
        let left = std::mem::take(&mut self.left);
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
    /// Applies control items and name changes in order; returns the events
    /// to record (credentials filled in later).
    fn map_items(&mut self, items: Vec<Captured>) -> Vec<RawEvent> {
        // The service's name from the registry (its connection comes and
        // goes on its own), the capture's own names in bus order.
        let mut own = self.own.snapshot();
        own.extend(self.capture_own.iter().cloned());
        let mut out = Vec::with_capacity(items.len());
        let (mut filtered, mut recorded) = (0u64, 0u64);
        for item in items {
            match item {
                Captured::Connected { names, resolver, own: capture_own } => {
                    self.names = *names;
                    self.resolver = Some(resolver);
                    own.retain(|n| !self.capture_own.contains(n));
                    own.extend(capture_own.iter().cloned());
                    self.capture_own = capture_own;
                }
                Captured::Gap(g) => out.push(gap_event(&g, &self.bus)),
                Captured::Message { msg, captured_ns } => match self.map_message(&msg, captured_ns, &own) {
                    Some(e) => {
                        recorded += 1;
                        out.push(e)
                    }
                    None => filtered += 1,
                },
            }
        }
        metrics::counter!(m::BUS_RECORDED).increment(recorded);
        metrics::counter!(m::BUS_FILTERED).increment(filtered);
        out
    }

    fn map_message(&mut self, msg: &zbus::Message, captured_ns: i64, own: &[String]) -> Option<RawEvent> {
        let h = msg.header();
        let kind = match h.message_type() {
            zbus::message::Type::MethodCall => Kind::MethodCall,
            zbus::message::Type::MethodReturn => Kind::MethodReturn,
            zbus::message::Type::Error => Kind::Error,
            zbus::message::Type::Signal => Kind::Signal,
        };
        let sender = h.sender().map(|s| s.as_str());
        let interface = h.interface().map(|s| s.as_str());
        let member = h.member().map(|s| s.as_str());
        let bytes = msg.data().bytes();
        let (big_endian, signature) = header_signature(bytes).unwrap_or((false, ""));
        let body = msg.body();
        let body_bytes: &[u8] = body.data();

        // Names first, for every NameOwnerChanged, recorded or not.
        if kind == Kind::Signal
            && sender == Some("org.freedesktop.DBus")
            && interface == Some("org.freedesktop.DBus")
            && member == Some("NameOwnerChanged")
            && signature == "sss"
        {
            if let Ok(Value::Array(a)) = self.decoder.decode(body_bytes, "sss", big_endian, 4) {
                if let [Value::Str(n), Value::Str(old), Value::Str(new)] = a.as_slice() {
                    if n.starts_with(':') && old.is_empty() {
                        self.joined.push(n.clone());
                    } else if n.starts_with(':') && new.is_empty() {
                        self.left.push(n.clone());
                    }
                    self.names.owner_changed(n, old, new);
                }
            }
        }

        // op-dbus's own traffic: from or to its connections, or to its name.
        let dest = h.destination().map(|d| d.as_str());
        let is_own = |n: Option<&str>| n.is_some_and(|n| n == SERVICE_NAME || own.iter().any(|o| o == n));
        if is_own(sender) || is_own(dest) {
            return None;
        }

        let path = h.path().map(|p| p.as_str());
        let names = sender.map(|s| self.names.names_of(s)).unwrap_or(&[]);
        if !self.filter.accepts(&Meta { kind, interface, member, path, sender }, names) {
            return None;
        }
        let error_name = h.error_name().map(|e| e.as_str());
        let plugin_id = names.first().map(String::as_str).or(interface).or(error_name).unwrap_or("dbus").to_string();
        let operation = match kind {
            Kind::Signal | Kind::MethodCall => match (interface, member) {
                (Some(i), Some(m)) => format!("{i}.{m}"),
                (None, Some(m)) => m.to_string(),
                _ => kind.as_str().to_string(),
            },
            Kind::MethodReturn => "method_return".to_string(),
            Kind::Error => error_name.unwrap_or("error").to_string(),
        };
        // A body above the cap would be stored truncated anyway: store it raw
        // without decoding. Smaller ones decode within a memory budget.
        let decoded = if body_bytes.len() > self.max_data_bytes {
            Err(crate::codec::dbus::WireError::TooLarge(self.max_data_bytes))
        } else {
            self.decoder.decode_bounded(
                body_bytes,
                signature,
                big_endian,
                MAX_DEPTH,
                DECODE_BUDGET_FACTOR * self.max_data_bytes,
            )
        };
        let data = match decoded {
            Ok(v) => v,
            Err(e) => {
                // Kept, not skipped: the raw body and why it did not decode.
                metrics::counter!(m::BUS_UNDECODABLE).increment(1);
                tracing::debug!(error = %e, signature, "undecodable body; storing it raw");
                Value::map(vec![
                    (Value::Str("undecodable".into()), Value::Bin(body_bytes.to_vec())),
                    (Value::Str("error".into()), Value::Str(e.to_string())),
                ])
            }
        };
        let creds = sender.and_then(|s| self.creds.get(s));
        Some(RawEvent {
            source: Source::Dbus,
            plugin_id,
            operation,
            path: path.map(str::to_string),
            sender: sender.map(str::to_string),
            creds,
            captured_ns,
            signature: signature.to_string(),
            data,
        })
    }

    /// Senders (unique names) of events still without credentials, and
    /// the connections that joined this round.
    fn missing_creds(&mut self, events: &[RawEvent]) -> Vec<String> {
        let mut v: Vec<String> = events
            .iter()
            .filter(|e| e.creds.is_none())
            .filter_map(|e| e.sender.as_deref())
            .filter(|s| s.starts_with(':'))
            .map(str::to_string)
            .collect();
        v.extend(self.joined.drain(..).filter(|n| !self.creds.contains(n)));
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

/// A gap as a chain record: `internal`, plugin `org.opdbus`, operation
/// `org.opdbus.Gap`, data `{reason, dropped, first_ns, last_ns, bus}`
/// (`dropped` nil when unknown).
pub fn gap_event(g: &Gap, bus: &str) -> RawEvent {
    let s = |x: &str| Value::Str(x.to_string());
    RawEvent {
        source: Source::Internal,
        plugin_id: SERVICE_NAME.to_string(),
        operation: "org.opdbus.Gap".to_string(),
        path: None,
        sender: None,
        creds: None,
        captured_ns: g.last_ns,
        signature: String::new(),
        data: Value::map(vec![
            (s("reason"), s(g.reason.as_str())),
            (s("dropped"), g.dropped.map(Value::UInt).unwrap_or(Value::Nil)),
            (s("first_ns"), Value::int(g.first_ns)),
            (s("last_ns"), Value::int(g.last_ns)),
            (s("bus"), s(bus)),
        ]),
    }
}
