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
    pub writer_failing: AtomicBool,
    /// DbusIngest is gone (a bug): the bus is no longer being recorded.
    pub ingest_failed: AtomicBool,
    /// The last durable block (seq, hash); `None` for an empty chain. A
    /// watch: the feed waits on it, and a slow reader only ever misses
    /// intermediate values, never holds the writer.
    pub head: tokio::sync::watch::Sender<Option<(u64, Hash)>>,
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
