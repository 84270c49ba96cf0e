//! Bounded data edges between stages.
//!
//! actix's `Addr::send` waits for room in the mailbox *and* for the reply,
//! so a stage forwarding with it would wait for its downstream to finish
//! each batch and the pipeline would run one stage at a time. A data edge
//! only needs the first wait, so edges are tokio mpsc channels: the sender
//! waits for room (that wait is exported as blocked time), the receiving
//! actor pulls batches in order. The capacity belongs to the receiver: each
//! actor module declares `INBOX_CAPACITY`, and the wiring passes it here.
//!
//! The receiving end is owned by the stage's pull loop ([`super::pull`]),
//! which moves it into each read and gets it back.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Batch, Input, Received};
use crate::metrics as m;

/// The downstream end is gone: the pipeline is shutting down or broken.
#[derive(Debug, thiserror::Error)]
#[error("edge {0} is closed")]
pub struct Closed(pub &'static str);

pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    edge: &'static str,
    capacity: usize,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox { tx: self.tx.clone(), edge: self.edge, capacity: self.capacity }
    }
}

pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    edge: &'static str,
}

/// A bounded edge named `edge` (e.g. `footprinter->embedder`) holding at most `capacity` batches.
pub fn edge<T>(edge: &'static str, capacity: usize) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    metrics::gauge!(m::QUEUE_CAPACITY, "edge" => edge).set(capacity as f64);
    (Outbox { tx, edge, capacity }, Inbox { rx, edge })
}

impl<T: Batch> Outbox<T> {
    /// Sends, waiting for room. Time spent waiting is exported.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(Closed(self.edge)),
            Err(TrySendError::Full(item)) => {
                let start = Instant::now();
                self.tx.send(item).await.map_err(|_| Closed(self.edge))?;
                metrics::counter!(m::QUEUE_BLOCKED, "edge" => self.edge).increment(start.elapsed().as_micros() as u64);
            }
        }
        self.record_depth();
        Ok(())
    }

    /// As [`send`](Self::send), for threads outside the async runtime.
    pub fn blocking_send(&self, item: T) -> Result<(), Closed> {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(Closed(self.edge)),
            Err(TrySendError::Full(item)) => {
                let start = Instant::now();
                self.tx.blocking_send(item).map_err(|_| Closed(self.edge))?;
                metrics::counter!(m::QUEUE_BLOCKED, "edge" => self.edge).increment(start.elapsed().as_micros() as u64);
            }
        }
        self.record_depth();
        Ok(())
    }

    /// Sends only if there is room; a full queue is counted. For edges to
    /// derived-data stages that can catch up from the chain on their own.
    pub fn try_send(&self, item: T) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.record_depth();
                true
            }
            Err(_) => {
                metrics::counter!(m::QUEUE_DROPPED, "edge" => self.edge).increment(1);
                false
            }
        }
    }

    fn record_depth(&self) {
        metrics::gauge!(m::QUEUE_DEPTH, "edge" => self.edge).set((self.capacity - self.tx.capacity()) as f64);
    }
}

impl<T: Batch> Inbox<T> {
    /// Waits for at least one batch, then takes what is queued until the
    /// batches hold `max_events` events; with `linger` > 0 it waits up to
    /// that long for more. Returns an empty vector once the edge is closed
    /// and drained. Cancel-safe only while waiting for the first batch: a
    /// call dropped while lingering drops what it took. The pull loop never
    /// drops a call mid-way except when the whole system stops.
    pub async fn recv(&mut self, max_events: usize, linger: Duration) -> Vec<T> {
        let rx = &mut self.rx;
        let mut out = Vec::new();
        let Some(first) = rx.recv().await else { return out };
        let mut n = first.events();
        out.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while n < max_events {
            let next = match rx.try_recv() {
                Ok(b) => Some(b),
                Err(_) if linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
            };
            match next {
                Some(b) => {
                    n += b.events();
                    out.push(b);
                }
                None => break,
            }
        }
        metrics::gauge!(m::QUEUE_DEPTH, "edge" => self.edge).set(rx.len() as f64);
        out
    }
}

impl<T: Batch + Send + 'static> Input for Inbox<T> {
    type Item = T;

    fn recv(mut self, max_events: usize, linger: Duration) -> Received<Self> {
        Box::pin(async move {
            let got = Inbox::recv(&mut self, max_events, linger).await;
            (self, got)
        })
    }
}
