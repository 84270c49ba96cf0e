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

#[cfg(test)]
mod tests {
    // Not `super::*`: `Input::recv` (by value) would shadow `Inbox::recv`.
    use super::{edge, Batch, Inbox};
    use std::time::{Duration, Instant};

    /// A batch of `.1` events, named `.0`.
    #[derive(Debug, PartialEq)]
    struct B(u32, usize);

    impl Batch for B {
        fn events(&self) -> usize {
            self.1
        }
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    fn names(got: &[B]) -> Vec<u32> {
        got.iter().map(|b| b.0).collect()
    }

    /// The names of what one `recv` gathers; it must return within `DEADLINE`.
    async fn gather(rx: &mut Inbox<B>, max_events: usize, linger: Duration) -> Vec<u32> {
        names(&tokio::time::timeout(DEADLINE, rx.recv(max_events, linger)).await.expect("recv did not return"))
    }

    #[actix_rt::test]
    async fn a_gathering_is_bounded_in_events_not_in_batches() {
        let (tx, mut rx) = edge("test", 8);
        for i in 0..4 {
            tx.send(B(i, 3)).await.unwrap();
        }
        // 3 + 3 reaches 5 events: two batches, though 4 are queued.
        assert_eq!(gather(&mut rx, 5, Duration::ZERO).await, [0, 1]);
        assert_eq!(gather(&mut rx, 100, Duration::ZERO).await, [2, 3]);
    }

    #[actix_rt::test]
    async fn without_linger_recv_takes_only_what_is_queued_and_returns_at_once() {
        let (tx, mut rx) = edge("test", 8);
        tx.send(B(0, 1)).await.unwrap();
        tx.send(B(1, 1)).await.unwrap();
        // The edge stays open: recv must not wait for more.
        assert_eq!(gather(&mut rx, 100, Duration::ZERO).await, [0, 1]);
    }

    #[actix_rt::test]
    async fn with_linger_recv_takes_what_arrives_meanwhile_and_returns_once_full() {
        let (tx, mut rx) = edge("test", 8);
        tx.send(B(0, 1)).await.unwrap();
        let start = Instant::now();
        // recv is polled first: it takes batch 0, finds the queue empty and
        // lingers; batch 1 arrives during the linger and fills the gathering.
        let (got, _) = tokio::join!(rx.recv(2, DEADLINE), tx.send(B(1, 1)));
        assert_eq!(names(&got), [0, 1]);
        assert!(start.elapsed() < DEADLINE / 2, "waited out the linger though full: {:?}", start.elapsed());
    }

    #[actix_rt::test]
    async fn with_linger_recv_returns_what_it_has_when_the_linger_ends() {
        let (tx, mut rx) = edge("test", 8);
        tx.send(B(0, 1)).await.unwrap();
        let linger = Duration::from_millis(50);
        let start = Instant::now();
        assert_eq!(gather(&mut rx, 100, linger).await, [0]);
        assert!(start.elapsed() >= linger, "did not linger: {:?}", start.elapsed());
    }

    #[actix_rt::test]
    async fn a_closed_edge_reads_empty_only_after_it_is_drained() {
        let (tx, mut rx) = edge("test", 8);
        for i in 0..3 {
            tx.send(B(i, 1)).await.unwrap();
        }
        drop(tx);
        for i in 0..3 {
            assert_eq!(gather(&mut rx, 1, Duration::ZERO).await, [i]);
        }
        assert!(gather(&mut rx, 1, Duration::from_millis(1)).await.is_empty());
    }

    #[test]
    fn try_send_on_a_full_edge_returns_false_without_waiting() {
        let (tx, mut rx) = edge("test", 1);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sent = (tx.try_send(B(0, 1)), tx.try_send(B(1, 1)));
            let _ = done_tx.send(sent);
        });
        assert_eq!(done.recv_timeout(DEADLINE).expect("try_send waited"), (true, false));
        // The refused batch is not queued.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        assert_eq!(rt.block_on(gather(&mut rx, 10, Duration::ZERO)), [0]);
    }

    #[actix_rt::test]
    async fn send_on_a_full_edge_waits_until_the_receiver_takes_one() {
        let (tx, mut rx) = edge("test", 1);
        tx.send(B(0, 1)).await.unwrap();
        let second = tx.send(B(1, 1));
        tokio::pin!(second);
        tokio::select! {
            biased;
            _ = &mut second => panic!("send did not wait for room"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(gather(&mut rx, 1, Duration::ZERO).await, [0]);
        tokio::time::timeout(DEADLINE, second).await.expect("send still waits after room was made").unwrap();
        assert_eq!(gather(&mut rx, 1, Duration::ZERO).await, [1]);
    }
}
