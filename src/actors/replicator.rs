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
    /// Per replica: when to try again, and the current backoff.
    backoff: HashMap<String, (Instant, Duration)>,
    health: std::sync::Arc<crate::health::Health>,
}

impl Replicator {
    pub fn new(layout: Layout, replicas: Vec<ReplicaConfig>, health: std::sync::Arc<crate::health::Health>) -> Self {
        Replicator { layout, replicas, backoff: HashMap::new(), health }
    }
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, _| crate::runtime::guarded(NAME, || act.tick()));
    }
}

impl Replicator {
    fn tick(&mut self) {
        let newest = snapshot::list(&self.layout).pop();
        let head = self.health.chain_height.load(std::sync::atomic::Ordering::Acquire);
        let now = Instant::now();
        let mut all = replicate::load_progress(&self.layout);
        for r in self.replicas.clone() {
            let progress = all.remove(&r.name).unwrap_or_default();
            let behind = newest.as_ref().is_some_and(|n| progress.acked.as_deref() != Some(n.name.as_str()));
            let waiting = self.backoff.get(&r.name).is_some_and(|(at, _)| now < *at);
            // An attempt updates the progress file: read this replica's again.
            let progress = if behind && !waiting {
                self.attempt(&r);
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

    fn attempt(&mut self, r: &ReplicaConfig) {
        let results = replicate::pass(&self.layout, std::slice::from_ref(r), Some(&r.name));
        for (name, result) in results {
            match result {
                Ok(Some(sent)) => {
                    self.backoff.remove(&name);
                    metrics::counter!(m::REPLICATION_BYTES, "replica" => name.clone()).increment(sent.bytes);
                    tracing::info!(replica = %name, snapshot = %sent.snapshot, incremental = sent.incremental, bytes = sent.bytes, "replicated");
                }
                Ok(None) => {
                    self.backoff.remove(&name);
                }
                Err(e) => {
                    let next = self.backoff.get(&name).map_or(TICK, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                    self.backoff.insert(name.clone(), (Instant::now() + next, next));
                    metrics::counter!(m::REPLICATION_ERRORS, "replica" => name.clone()).increment(1);
                    tracing::warn!(replica = %name, error = %e, retry_in = ?next, "replication failed");
                }
            }
        }
    }
}
