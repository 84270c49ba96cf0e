//! Replicator: sends snapshots to the configured replicas (see
//! [`crate::storage::replicate`]). Consumes nothing but a 1 s tick: each
//! tick, a replica that lacks the newest snapshot and is not backing off
//! gets one attempt. Owns the replicas' backoff and their metrics. Runs on
//! its own thread, and `btrfs send`/`receive` block only it: a replica
//! that is down or slow never slows recording.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::layout::Layout;
use crate::metrics as m;
use crate::storage::replicate::{self, ReplicaConfig};
use crate::storage::snapshot;

pub const NAME: &str = "replicator";
const TICK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Replicator {
    layout: Layout,
    replicas: Vec<ReplicaConfig>,
    backoff: Backoff,
    health: std::sync::Arc<crate::health::Health>,
}

impl Replicator {
    pub fn new(layout: Layout, replicas: Vec<ReplicaConfig>, health: std::sync::Arc<crate::health::Health>) -> Self {
        Replicator { layout, replicas, backoff: Backoff::default(), health }
    }
}

/// When each failing replica may be tried again: 1 s after its first
/// failure, then twice the previous wait, at most [`MAX_BACKOFF`]; a
/// success forgets it. Takes the time as an argument, so the rule is
/// tested without waiting.
#[derive(Default)]
struct Backoff {
    /// Per replica: when to try again, and the current wait.
    by_replica: HashMap<String, (Instant, Duration)>,
}

impl Backoff {
    /// Whether `replica` may be tried at `now`.
    fn due(&self, replica: &str, now: Instant) -> bool {
        self.by_replica.get(replica).is_none_or(|(at, _)| now >= *at)
    }

    /// `replica` failed at `now`: returns the wait before its next attempt.
    fn failed(&mut self, replica: &str, now: Instant) -> Duration {
        let next = next_backoff(self.by_replica.get(replica).map(|(_, d)| *d));
        self.by_replica.insert(replica.to_string(), (now + next, next));
        next
    }

    fn succeeded(&mut self, replica: &str) {
        self.by_replica.remove(replica);
    }
}

/// The wait after a failure, given the wait after the previous failure
/// (none if the last attempt succeeded).
fn next_backoff(prev: Option<Duration>) -> Duration {
    prev.map_or(TICK, |d| (d * 2).min(MAX_BACKOFF))
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, _| crate::runtime::guarded(NAME, || act.tick(Instant::now())));
    }
}

impl Replicator {
    fn tick(&mut self, now: Instant) {
        let newest = snapshot::list(&self.layout).pop();
        let head = self.health.chain_height.load(std::sync::atomic::Ordering::Acquire);
        let mut all = replicate::load_progress(&self.layout);
        for r in self.replicas.clone() {
            let progress = all.remove(&r.name).unwrap_or_default();
            let behind = newest.as_ref().is_some_and(|n| progress.acked.as_deref() != Some(n.name.as_str()));
            // An attempt updates the progress file: read this replica's again.
            let progress = if behind && self.backoff.due(&r.name, now) {
                self.attempt(&r, now);
                replicate::load_progress(&self.layout).remove(&r.name).unwrap_or_default()
            } else {
                progress
            };
            let label = r.name.clone();
            let lag_records = head.saturating_sub(progress.acked_head_seq.map_or(0, |s| s + 1));
            metrics::gauge!(m::REPLICATION_LAG_RECORDS, "replica" => label.clone()).set(lag_records as f64);
            let lag_s = match progress.acked_taken_ns {
                Some(t) if lag_records > 0 => (crate::codec::now_ns() - t).max(0) as f64 / 1e9,
                Some(_) => 0.0,
                None => f64::NAN,
            };
            metrics::gauge!(m::REPLICATION_LAG_SECONDS, "replica" => label).set(lag_s);
        }
    }

    /// One attempt for `r`, in the tick of `now`. A failure's wait counts
    /// from the tick, not from the end of the attempt: counted from the end
    /// (a few ms later), the wait ran past the tick at `now + wait`, and
    /// every retry came one tick late (2, 3, 5, 9 s instead of 1, 2, 4, 8 s).
    fn attempt(&mut self, r: &ReplicaConfig, now: Instant) {
        let results = replicate::pass(&self.layout, std::slice::from_ref(r), Some(&r.name));
        for (name, result) in results {
            match result {
                Ok(Some(sent)) => {
                    self.backoff.succeeded(&name);
                    metrics::counter!(m::REPLICATION_BYTES, "replica" => name.clone()).increment(sent.bytes);
                    tracing::info!(replica = %name, snapshot = %sent.snapshot, incremental = sent.incremental, bytes = sent.bytes, "replicated");
                }
                Ok(None) => {
                    self.backoff.succeeded(&name);
                }
                Err(e) => {
                    let next = self.backoff.failed(&name, now);
                    metrics::counter!(m::REPLICATION_ERRORS, "replica" => name.clone()).increment(1);
                    tracing::warn!(replica = %name, error = %e, retry_in = ?next, "replication failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainStore;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_failing_replica_waits_1_s_then_twice_as_long_each_time_up_to_300_s() {
        let (mut b, mut now) = (Backoff::default(), Instant::now());
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert!(b.due("r", now), "not retried after {waits:?}");
            let wait = b.failed("r", now);
            assert!(!b.due("r", now + wait - Duration::from_millis(1)), "retried before {wait:?}");
            now += wait;
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let (mut b, now) = (Backoff::default(), Instant::now());
        for _ in 0..4 {
            b.failed("r", now);
        }
        b.succeeded("r");
        assert!(b.due("r", now));
        assert_eq!(b.failed("r", now), secs(1));
    }

    #[test]
    fn a_failing_replica_does_not_delay_another() {
        let (mut b, now) = (Backoff::default(), Instant::now());
        for _ in 0..4 {
            b.failed("down", now);
        }
        assert!(b.due("up", now));
        assert_eq!(b.failed("up", now), secs(1));
    }

    /// Through the Replicator's tick, with a real snapshot and a receiver that fails.
    #[test]
    fn a_failing_replica_is_not_tried_again_before_its_wait_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        layout.create_dirs().unwrap();
        let (mut store, _) = ChainStore::open(&layout, 1 << 30).unwrap();
        store.append(&[crate::chain::testing::record(0, "p", "", true)], crate::codec::now_ns()).unwrap();
        snapshot::take(&layout, &store.head(), crate::codec::now_ns(), None).unwrap();
        let replica =
            ReplicaConfig { name: "r".into(), dir: None, command: Some(vec!["false".into()]), compressed_data: false };
        let mut rep = Replicator::new(layout, vec![replica], Default::default());
        let wait = |rep: &Replicator| rep.backoff.by_replica.get("r").map(|(_, d)| *d);
        let t0 = Instant::now();
        rep.tick(t0);
        assert_eq!(wait(&rep), Some(secs(1)));
        rep.tick(t0 + Duration::from_millis(999));
        assert_eq!(wait(&rep), Some(secs(1)), "tried again within its wait");
        // The next 1 s tick retries: the wait counts from the failing tick.
        rep.tick(t0 + secs(1));
        assert_eq!(wait(&rep), Some(secs(2)), "not tried at the tick its wait ended");
    }
}
