//! The monitor connection and the capture queue.
//!
//! zbus delivers messages to a `MessageStream` through a small channel; a
//! stream that is not polled stalls the whole connection, and dbus-daemon
//! then buffers the backlog in its own memory without limit. So the
//! capture task does nothing but poll the stream, stamp each message with
//! its capture time and put it in the [`CaptureQueue`], which is bounded in
//! messages and bytes. When the queue is full, the policy decides:
//! `block` stops polling (the bus buffers), `drop` keeps polling and counts
//! what it could not queue; the run of dropped messages becomes one gap
//! record, queued ahead of the next message that fits, so that the chain
//! says exactly how many were lost and between which capture times.
//!
//! A lost connection (bus restart) is retried with backoff, and the outage
//! is queued as a gap record too. Gap records are not counted against the
//! bounds: there is at most one per overflow or outage, and they must not be
//! lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::names::{CredsCache, Names};
use super::{connect, BusError};
use crate::codec::now_ns;
use crate::config::{BusAddress, QueuePolicy};
use crate::metrics as m;

/// Why there is a gap in the record of the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The capture queue was full under the `drop` policy.
    QueueFull,
    /// The bus connection was lost (bus restart); what happened on the
    /// bus meanwhile is unknown.
    Disconnected,
    /// DbusIngest failed on what it had taken (a bug); counted, not lost silently.
    IngestFailed,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::QueueFull => "queue-full",
            GapReason::Disconnected => "bus-disconnected",
            GapReason::IngestFailed => "ingest-failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub(crate) reason: GapReason,
    /// Messages lost; `None` when unknown (an outage).
    pub(crate) dropped: Option<u64>,
    /// Capture time of the first lost message, or when the outage began.
    pub(crate) first_ns: i64,
    /// Capture time of the last lost message, or when the bus was back.
    pub(crate) last_ns: i64,
}

/// What the capture task hands DbusIngest, in bus order.
pub enum Captured {
    Message {
        msg: zbus::Message,
        captured_ns: i64,
    },
    Gap(Gap),
    /// A (re)connection: the names owned at that moment, the ordinary
    /// connection to look up senders' credentials with, and the unique names
    /// of the capture's own two connections, which apply from here on in
    /// bus order (a restarted bus hands the same names to others).
    Connected {
        names: Box<Names>,
        resolver: zbus::Connection,
        own: Vec<String>,
    },
}

struct State {
    /// Each item with its size and file descriptor count, or `None` for
    /// control items (not bounded).
    items: VecDeque<(Captured, Option<(usize, usize)>)>,
    messages: usize,
    bytes: usize,
    fds: usize,
    closed: bool,
}

enum Take {
    Items(Vec<Captured>),
    Closed,
    Empty,
    Linger,
}

/// Items waiting that wake a lingering consumer at once.
const WAKE_AT: usize = 512;

/// A queue bounded in messages and bytes, with one producer (the capture
/// task) and one consumer (DbusIngest).
pub struct CaptureQueue {
    state: Mutex<State>,
    not_empty: Notify,
    not_full: Notify,
    max_messages: usize,
    max_bytes: usize,
    /// Monitors receive the fds of the messages they see, held until the
    /// message is dropped: a queue of them must not exhaust the process's
    /// descriptors.
    max_fds: usize,
}

impl CaptureQueue {
    pub fn new(max_messages: usize, max_bytes: usize, max_fds: usize) -> Self {
        CaptureQueue {
            state: Mutex::new(State { items: VecDeque::new(), messages: 0, bytes: 0, fds: 0, closed: false }),
            not_empty: Notify::new(),
            not_full: Notify::new(),
            max_messages,
            max_bytes,
            max_fds,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("capture queue lock")
    }

    fn fits(&self, s: &State, size: usize, fds: usize) -> bool {
        s.messages == 0
            || (s.messages < self.max_messages && s.bytes + size <= self.max_bytes && s.fds + fds <= self.max_fds)
    }

    fn is_full(&self, s: &State) -> bool {
        s.messages >= self.max_messages || s.bytes >= self.max_bytes || s.fds >= self.max_fds
    }

    /// Queues a message if it fits. A message larger than the whole budget
    /// fits only into an empty queue, so it is never refused forever.
    pub fn try_push(&self, item: Captured, size: usize, fds: usize) -> Result<(), Captured> {
        let mut s = self.lock();
        if !self.fits(&s, size, fds) {
            return Err(item);
        }
        s.messages += 1;
        s.bytes += size;
        s.fds += fds;
        s.items.push_back((item, Some((size, fds))));
        // Wake the consumer when there is something after nothing, and when
        // a full batch is waiting; in between it lingers (see `pop_many`),
        // so a busy bus costs one wake-up per batch, not per message.
        let full = self.is_full(&s);
        let wake = s.items.len() == 1 || s.items.len() == WAKE_AT || full;
        if s.items.len().is_multiple_of(4096) {
            record_depth(&s);
        }
        drop(s);
        if wake {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    /// Queues a message, waiting for room.
    pub async fn push(&self, mut item: Captured, size: usize, fds: usize) {
        loop {
            match self.try_push(item, size, fds) {
                Ok(()) => return,
                Err(back) => item = back,
            }
            self.not_full.notified().await;
        }
    }

    /// Queues a control item (gap, connection) regardless of the bounds.
    pub fn push_control(&self, item: Captured) {
        let mut s = self.lock();
        s.items.push_back((item, None));
        drop(s);
        self.not_empty.notify_one();
    }

    /// Waits for at least one item, then up to `linger` for `WAKE_AT`
    /// items, and takes up to `max`; empty once the queue is closed and
    /// drained.
    pub async fn pop_many(&self, max: usize, linger: Duration) -> Vec<Captured> {
        let mut lingered = false;
        loop {
            match self.take(max, !lingered) {
                Take::Items(out) => return out,
                Take::Closed => return Vec::new(),
                Take::Linger => {
                    lingered = true;
                    let _ = tokio::time::timeout(linger, self.not_empty.notified()).await;
                }
                Take::Empty => self.not_empty.notified().await,
            }
        }
    }

    fn take(&self, max: usize, may_linger: bool) -> Take {
        let mut s = self.lock();
        if s.items.is_empty() {
            return if s.closed { Take::Closed } else { Take::Empty };
        }
        let full = self.is_full(&s);
        if may_linger && !s.closed && !full && s.items.len() < WAKE_AT {
            return Take::Linger;
        }
        let n = max.min(s.items.len());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (item, size) = s.items.pop_front().expect("n items");
            if let Some((size, fds)) = size {
                s.messages -= 1;
                s.bytes -= size;
                s.fds -= fds;
            }
            out.push(item);
        }
        record_depth(&s);
        drop(s);
        self.not_full.notify_one();
        Take::Items(out)
    }

    /// No more items will come; the consumer drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_one();
    }
}

fn record_depth(s: &State) {
    metrics::gauge!(m::CAPTURE_DEPTH).set(s.messages as f64);
    metrics::gauge!(m::CAPTURE_BYTES).set(s.bytes as f64);
}

/// An open monitor: the stream to drain and the connection that keeps it.
pub struct Monitor {
    stream: zbus::MessageStream,
    _conn: zbus::Connection,
    resolver: zbus::Connection,
    /// The unique names of the resolver and the monitor.
    own: Vec<String>,
}

/// Connects twice: an ordinary connection, which reads who owns which name
/// now and later looks up credentials (a monitor may not send), and the
/// monitor. The names are read before `BecomeMonitor`, so that every
/// `NameOwnerChanged` after them is in the stream.
pub async fn open_monitor(addr: &BusAddress, rules: &[String]) -> Result<(Monitor, Names), BusError> {
    let resolver = connect(addr).await?;
    let names = read_names(&resolver).await?;
    let conn = connect(addr).await?;
    let own = [&resolver, &conn].iter().filter_map(|c| c.unique_name().map(|n| n.to_string())).collect();
    // The stream must exist before BecomeMonitor, or the first messages are missed.
    let stream = zbus::MessageStream::from(&conn);
    let mut parsed = Vec::with_capacity(rules.len());
    for r in rules {
        parsed.push(zbus::MatchRule::try_from(r.as_str()).map_err(BusError::Call)?);
    }
    let proxy = zbus::fdo::MonitoringProxy::new(&conn).await.map_err(BusError::Call)?;
    if let Err(e) = proxy.become_monitor(&parsed, 0).await {
        return Err(match e {
            zbus::fdo::Error::AccessDenied(detail) => BusError::MonitorDenied { bus: addr.to_string(), detail },
            other => BusError::Monitor { bus: addr.to_string(), source: other.into() },
        });
    }
    Ok((Monitor { stream, _conn: conn, resolver, own }, names))
}

async fn read_names(conn: &zbus::Connection) -> Result<Names, BusError> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let mut names = Names::new();
    for name in dbus.list_names().await.map_err(zbus::Error::from)? {
        if name.as_str().starts_with(':') || name.as_str() == "org.freedesktop.DBus" {
            continue;
        }
        // A name released since ListNames has no owner: skip it.
        if let Ok(owner) = dbus.get_name_owner(name.as_ref()).await {
            names.owner_changed(name.as_str(), "", owner.as_str());
        }
    }
    Ok(names)
}

/// The capture task's settings.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub(crate) address: BusAddress,
    pub(crate) rules: Vec<String>,
    pub(crate) policy: QueuePolicy,
    pub(crate) reconnect_max: Duration,
}

/// Drains `first` (an already open monitor, so that start-up reports a
/// bad bus or a denied monitor itself), then reconnects whenever the bus
/// goes away, until `stop` fires. Closes the queue when it returns.
pub async fn run_capture(
    cfg: CaptureConfig,
    first: (Monitor, Names),
    queue: std::sync::Arc<CaptureQueue>,
    stop: std::sync::Arc<Notify>,
    creds: CredsCache,
) {
    let mut next = Some(first);
    let mut outage_since: Option<i64> = None;
    loop {
        let (monitor, names) = match next.take() {
            Some(m) => m,
            None => match reconnect(&cfg, &stop).await {
                Some(m) => m,
                None => break,
            },
        };
        // A new bus instance hands out the same unique names again.
        creds.clear();
        queue.push_control(Captured::Connected {
            names: Box::new(names),
            resolver: monitor.resolver.clone(),
            own: monitor.own.clone(),
        });
        if let Some(since) = outage_since.take() {
            let back = now_ns();
            tracing::info!(bus = %cfg.address, "bus connection is back; recording the outage as a gap");
            metrics::counter!(m::BUS_GAPS).increment(1);
            queue.push_control(Captured::Gap(Gap {
                reason: GapReason::Disconnected,
                dropped: None,
                first_ns: since,
                last_ns: back,
            }));
        }
        metrics::gauge!(m::BUS_CONNECTED).set(1.0);
        let stopped = drain(monitor.stream, &queue, cfg.policy, &stop, &monitor.resolver, &creds).await;
        metrics::gauge!(m::BUS_CONNECTED).set(0.0);
        if stopped {
            break;
        }
        tracing::warn!(bus = %cfg.address, "lost the bus connection; reconnecting");
        outage_since = Some(now_ns());
    }
    // Stopped while the bus was away: the outage still goes in the chain.
    if let Some(since) = outage_since {
        metrics::counter!(m::BUS_GAPS).increment(1);
        queue.push_control(Captured::Gap(Gap {
            reason: GapReason::Disconnected,
            dropped: None,
            first_ns: since,
            last_ns: now_ns(),
        }));
    }
    queue.close();
}

/// How long a stopping capture keeps reading what the bus already sent.
const QUIET: Duration = Duration::from_millis(100);
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// Polls the stream until it ends (false) or `stop` fires and the bus has
/// gone quiet (true).
async fn drain(
    mut stream: zbus::MessageStream,
    queue: &CaptureQueue,
    policy: QueuePolicy,
    stop: &Notify,
    resolver: &zbus::Connection,
    creds: &CredsCache,
) -> bool {
    let mut overflow: Option<Gap> = None;
    // Set once `stop` fires: what the bus already sent us is still read,
    // until it has been quiet for QUIET or for at most STOP_DRAIN.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let next = match stopping {
            None => tokio::select! {
                biased;
                _ = stop.notified() => {
                    stopping = Some(tokio::time::Instant::now() + STOP_DRAIN);
                    continue;
                }
                n = stream.next() => n,
            },
            Some(deadline) => {
                let quiet = (tokio::time::Instant::now() + QUIET).min(deadline);
                match tokio::time::timeout_at(quiet, stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        flush_overflow(queue, &mut overflow);
                        return true;
                    }
                }
            }
        };
        let msg = match next {
            None => {
                flush_overflow(queue, &mut overflow);
                return stopping.is_some();
            }
            Some(Err(e)) => {
                // zbus could not parse what the bus sent; nothing to record.
                tracing::warn!(error = %e, "unreadable message from the bus");
                metrics::counter!(m::BUS_UNDECODABLE).increment(1);
                continue;
            }
            Some(Ok(msg)) => msg,
        };
        metrics::counter!(m::BUS_RECEIVED).increment(1);
        let captured_ns = now_ns();
        if let Some(joined) = joined_connection(&msg) {
            ask_credentials(resolver.clone(), joined, creds.clone());
        }
        let size = msg.data().len();
        let fds = msg.data().fds().len();
        let item = Captured::Message { msg, captured_ns };
        match policy {
            QueuePolicy::Block => queue.push(item, size, fds).await,
            QueuePolicy::Drop => {
                // A pending gap goes in first, once the next message fits.
                if overflow.is_some() {
                    match queue.try_push_after(item, size, fds, &mut overflow) {
                        Ok(()) => {}
                        Err(()) => count_drop(&mut overflow, captured_ns),
                    }
                } else if queue.try_push(item, size, fds).is_err() {
                    count_drop(&mut overflow, captured_ns);
                }
            }
        }
    }
}

/// The unique name of a connection that just joined, if `msg` is the
/// bus's `NameOwnerChanged(":1.n", "", ":1.n")`.
fn joined_connection(msg: &zbus::Message) -> Option<String> {
    let h = msg.header();
    if h.message_type() != zbus::message::Type::Signal
        || h.member().map(|m| m.as_str()) != Some("NameOwnerChanged")
        || h.sender().map(|s| s.as_str()) != Some("org.freedesktop.DBus")
    {
        return None;
    }
    let (name, old, new): (String, String, String) = msg.body().deserialize().ok()?;
    (name.starts_with(':') && old.is_empty() && new == name).then_some(name)
}

/// Asks for a joining connection's credentials at once, on this thread's
/// runtime, without waiting for the answer: a sender that lives for a few
/// milliseconds is usually still there.
fn ask_credentials(resolver: zbus::Connection, unique: String, creds: CredsCache) {
    tokio::spawn(async move {
        let Ok(proxy) = zbus::fdo::DBusProxy::new(&resolver).await else { return };
        if let Some(c) = super::names::lookup(&proxy, &unique, std::time::Duration::from_secs(2)).await {
            creds.insert(&unique, c);
        }
    });
}

fn count_drop(overflow: &mut Option<Gap>, at: i64) {
    metrics::counter!(m::BUS_DROPPED).increment(1);
    match overflow {
        Some(g) => {
            g.dropped = Some(g.dropped.unwrap_or(0) + 1);
            g.last_ns = at;
        }
        None => {
            *overflow = Some(Gap { reason: GapReason::QueueFull, dropped: Some(1), first_ns: at, last_ns: at });
        }
    }
}

fn flush_overflow(queue: &CaptureQueue, overflow: &mut Option<Gap>) {
    if let Some(g) = overflow.take() {
        tracing::warn!(dropped = g.dropped, "capture queue overflowed; recording a gap");
        metrics::counter!(m::BUS_GAPS).increment(1);
        queue.push_control(Captured::Gap(g));
    }
}

impl CaptureQueue {
    /// Queues the pending gap and then the message, if the message fits.
    fn try_push_after(&self, item: Captured, size: usize, fds: usize, overflow: &mut Option<Gap>) -> Result<(), ()> {
        if !self.fits(&self.lock(), size, fds) {
            return Err(());
        }
        // One producer: the room seen above can only have grown.
        flush_overflow(self, overflow);
        self.try_push(item, size, fds).map_err(|_| ())
    }
}

async fn reconnect(cfg: &CaptureConfig, stop: &Notify) -> Option<(Monitor, Names)> {
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = stop.notified() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match open_monitor(&cfg.address, &cfg.rules).await {
            Ok(m) => {
                metrics::counter!(m::BUS_RECONNECTS).increment(1);
                return Some(m);
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?delay, "bus still unavailable");
                delay = (delay * 2).min(cfg.reconnect_max);
            }
        }
    }
}

impl crate::runtime::Batch for Captured {
    fn events(&self) -> usize {
        1
    }
}

/// DbusIngest's input: the queue is shared with the capture thread, so the
/// pull loop holds one handle of it.
impl crate::runtime::Input for Arc<CaptureQueue> {
    type Item = Captured;

    fn recv(self, max_events: usize, linger: Duration) -> crate::runtime::Received<Self> {
        Box::pin(async move {
            let got = self.pop_many(max_events, linger).await;
            (self, got)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(n: u64) -> Captured {
        Captured::Gap(Gap { reason: GapReason::QueueFull, dropped: Some(n), first_ns: 0, last_ns: 0 })
    }

    #[test]
    fn bounds_messages_and_bytes_but_not_control_items() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let q = CaptureQueue::new(2, 100, 3);
            // Control items fit regardless; messages are stood in for by gaps
            // pushed through the bounded path with a size.
            assert!(q.try_push(gap(1), 60, 0).is_ok());
            assert!(q.try_push(gap(2), 60, 0).is_err(), "over the byte bound");
            assert!(q.try_push(gap(3), 40, 0).is_ok());
            assert!(q.try_push(gap(4), 0, 0).is_err(), "over the message bound");
            q.push_control(gap(5));
            let got = q.pop_many(10, Duration::ZERO).await;
            assert_eq!(got.len(), 3);
            // Popped messages free their room; an oversized one fits an empty queue.
            assert!(q.try_push(gap(6), 1000, 0).is_ok());
            // File descriptors are bounded too.
            assert!(q.try_push(gap(7), 1, 3).is_err(), "over the fd bound");
            q.close();
            assert_eq!(q.pop_many(10, Duration::ZERO).await.len(), 1);
            assert!(q.pop_many(10, Duration::ZERO).await.is_empty());
        });
    }

    #[test]
    fn push_waits_for_room() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let q = std::sync::Arc::new(CaptureQueue::new(1, 100, 10));
            q.try_push(gap(1), 1, 0).ok().unwrap();
            let q2 = q.clone();
            let waiter = tokio::spawn(async move { q2.push(gap(2), 1, 0).await });
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            assert_eq!(q.pop_many(1, Duration::ZERO).await.len(), 1);
            waiter.await.unwrap();
            assert_eq!(q.pop_many(5, Duration::ZERO).await.len(), 1);
        });
    }
}
