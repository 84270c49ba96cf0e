//! The stage runtime: what every actor of the pipeline runs on.
//!
//! Every stage runs on its own actix `Arbiter` (a dedicated OS thread), so
//! the blocking work a stage owns (fdatasync in ChainWriter, LMDB in
//! CacheIndexer) blocks only that stage, which is exactly the backpressure
//! we want, and never an executor shared with the metrics server or a bus
//! connection. Data moves over bounded [`edge`]s; [`pull`] is the one loop
//! that every stage runs.

pub mod edge;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics as m;
use edge::Inbox;

/// How many events a message carries, for batching and metrics.
pub trait Batch {
    fn events(&self) -> usize;
}

/// The delivery of a stage's output downstream; it completes when the
/// downstream queue has taken it.
pub type Delivery = Pin<Box<dyn Future<Output = ()>>>;

pub fn delivered() -> Delivery {
    Box::pin(async {})
}

/// A pipeline stage: an actor that pulls batches from its inbox.
pub trait Stage: Actor<Context = Context<Self>> {
    type In: Batch + Send + 'static;
    const NAME: &'static str;

    fn inbox(&self) -> &Inbox<Self::In>;

    /// How many events to take per pull, and how long to wait for more.
    /// By default one batch at a time: a stage holds at most one batch in
    /// hand, so what is in flight is bounded by the queue capacities.
    fn gather(&self) -> (usize, Duration) {
        (1, Duration::ZERO)
    }

    /// Does the stage's work on what was pulled and returns the delivery of
    /// its output. To fail, keep what must be retried and call `ctx.stop()`:
    /// the supervisor restarts the actor with its state.
    fn on_batches(&mut self, batches: Vec<Self::In>, ctx: &mut Context<Self>) -> Delivery;

    /// The inbox is closed and drained: flush, drop the outboxes so the
    /// next stage sees its inbox close too.
    fn on_closed(&mut self, ctx: &mut Context<Self>);
}

/// Pulls one gathering of batches, handles it, waits for the delivery, and
/// pulls again. A panic in a handler is caught, counted and turned into a
/// restart; the batches it was handling are dropped, which their
/// submitters see as an error on their ack, never as a silent loss.
pub fn pull<A: Stage>(act: &mut A, ctx: &mut Context<A>) {
    let inbox = act.inbox().clone();
    let (max, linger) = act.gather();
    let fut = async move { inbox.recv(max, linger).await }.into_actor(act).then(|batches, act, ctx| {
        let closed = batches.is_empty();
        let delivery = if closed {
            act.on_closed(ctx);
            delivered()
        } else {
            let n: usize = batches.iter().map(Batch::events).sum();
            metrics::counter!(m::STAGE_RECEIVED, "stage" => A::NAME).increment(n as u64);
            match std::panic::catch_unwind(AssertUnwindSafe(|| act.on_batches(batches, ctx))) {
                Ok(d) => d,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(stage = A::NAME, panic = %what, events = n, "stage panicked; restarting it");
                    ctx.stop();
                    delivered()
                }
            }
        };
        delivery.into_actor(act).map(move |(), act, ctx| {
            if !closed && ctx.state() == ActorState::Running {
                pull(act, ctx);
            }
        })
    });
    ctx.spawn(fut);
}

/// Counts a restart; called from every stage's `Supervised::restarting`.
pub fn count_restart(stage: &'static str) {
    metrics::counter!(m::ACTOR_RESTARTS, "actor" => stage).increment(1);
    tracing::warn!(actor = stage, "actor restarted");
}
