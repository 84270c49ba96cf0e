//! What the daemon's parts tell each other and the outside about their
//! progress: heights, the durable head, and the failure flags behind
//! `/health`. Atomics and one watch; nothing here ever blocks a writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::chain::Head;
use crate::codec::Hash;

/// Progress shared with the health endpoint, `status` and the D-Bus feed.
#[derive(Debug)]
pub struct Health {
    /// Durable blocks (the next seq to assign).
    pub chain_height: AtomicU64,
    /// Indexed blocks (the next seq to index).
    pub index_height: AtomicU64,
    /// The last commit failed and the writer is retrying.
    pub(crate) writer_failing: AtomicBool,
    /// DbusIngest is gone (a bug): the bus is no longer being recorded.
    pub(crate) ingest_failed: AtomicBool,
    /// The last durable block (seq, hash); `None` for an empty chain. A
    /// watch: the feed waits on it, and a slow reader only ever misses
    /// intermediate values, never holds the writer.
    pub(crate) head: tokio::sync::watch::Sender<Option<(u64, Hash)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            chain_height: AtomicU64::new(0),
            index_height: AtomicU64::new(0),
            writer_failing: AtomicBool::new(false),
            ingest_failed: AtomicBool::new(false),
            head: tokio::sync::watch::channel(None).0,
        }
    }
}

impl Health {
    /// Publishes a new durable head.
    pub fn set_head(&self, head: &Head) {
        self.chain_height.store(head.next_seq, Ordering::Release);
        let last = head.next_seq.checked_sub(1).map(|seq| (seq, head.hash));
        self.head.send_replace(last);
    }
}

/// The body of `GET /health`. Fields in alphabetical order: the key order
/// of the hand-built JSON this replaced.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthReport {
    pub(crate) chain_height: u64,
    pub(crate) index_height: u64,
    pub(crate) index_lag: u64,
    /// `ok`, or `failing` when the writer is retrying a failed commit or
    /// the bus is no longer recorded.
    pub(crate) status: &'static str,
}

impl HealthReport {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl Health {
    /// What `/health` answers now.
    pub fn report(&self) -> HealthReport {
        let failing = self.writer_failing.load(Ordering::Acquire) || self.ingest_failed.load(Ordering::Acquire);
        let chain = self.chain_height.load(Ordering::Acquire);
        let index = self.index_height.load(Ordering::Acquire);
        HealthReport {
            chain_height: chain,
            index_height: index,
            index_lag: chain.saturating_sub(index),
            status: if failing { "failing" } else { "ok" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_failing_and_keeps_the_key_order() {
        let h = Health::default();
        h.chain_height.store(10, Ordering::Release);
        h.index_height.store(7, Ordering::Release);
        let r = h.report();
        assert_eq!((r.index_lag, r.is_ok()), (3, true));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"chain_height":10,"index_height":7,"index_lag":3,"status":"ok"}"#
        );
        h.ingest_failed.store(true, Ordering::Release);
        assert_eq!(h.report().status, "failing");
    }
}
