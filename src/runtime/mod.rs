//! The stage runtime: what every actor of the pipeline runs on.
//!
//! A stage is an actix actor on its own thread ([`start`] makes the
//! `Arbiter`), so the blocking work it owns (fdatasync in ChainWriter, LMDB
//! in CacheIndexer) blocks only that stage, which is exactly the
//! backpressure we want, and never an executor shared with the metrics
//! server or a bus connection. A stage has two ways in:
//!
//! - its **data inbox**, an [`Input`]: a bounded [`edge`] whose capacity the
//!   stage declares ([`Stage::INBOX_CAPACITY`]), or the capture queue.
//!   [`pull`] is the one loop that reads it: take a gathering, handle it,
//!   wait for the delivery downstream, take the next. The loop owns the
//!   input; it passes it into each read and gets it back with the batches,
//!   so there is no lock and nothing a restart could drop.
//! - its **commands**: actix messages to its `Addr`. actix serves the
//!   mailbox before the actor's running futures each time it polls the
//!   actor, and a stage's handler runs synchronously inside one poll, so a
//!   command (such as `TakeSnapshot`) always runs between two gatherings:
//!   at a commit boundary, by construction.
//!
//! A panic in a handler is caught, counted (`op_dbus_actor_restarts_total`)
//! and handed to [`Stage::after_panic`]; the loop goes on with the same
//! actor and its state. The batches the handler held are dropped, which
//! their submitters see as an error on their ack, never as a silent loss.
//! There is no supervisor to restart an actor, so nothing keeps addresses
//! alive for one.

pub(crate) mod edge;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics as m;

/// How many events a message carries, for batching and metrics.
pub trait Batch {
    fn events(&self) -> usize;
}

/// What [`Input::recv`] returns: the input back, and what it read.
pub type Received<I> = Pin<Box<dyn Future<Output = (I, Vec<<I as Input>::Item>)>>>;

/// Where a stage's data comes from. `recv` takes the input by value and
/// gives it back with what it read: the pull loop owns it across reads.
pub trait Input: Sized + 'static {
    type Item: Batch + 'static;

    /// Waits for at least one item, then takes what is queued up to
    /// `max_events` events, waiting up to `linger` for more. Empty once the
    /// input is closed and drained.
    fn recv(self, max_events: usize, linger: Duration) -> Received<Self>;
}

/// The delivery of a stage's output downstream (or a retry of its own
/// work); the next gathering is pulled once it completes.
pub type Delivery<A> = Pin<Box<dyn ActorFuture<A, Output = ()>>>;

/// Nothing to wait for.
pub fn delivered<A: Actor>() -> Delivery<A> {
    Box::pin(actix::fut::ready(()))
}

/// A delivery that needs no access to the stage (sending downstream).
pub fn delivery<A: Actor>(f: impl Future<Output = ()> + 'static) -> Delivery<A> {
    Box::pin(actix::fut::wrap_future(f))
}

/// A pipeline stage: an actor that pulls batches from its input.
pub trait Stage: Actor<Context = Context<Self>> {
    type Input: Input;
    const NAME: &'static str;
    /// Batches its inbox holds: the capacity of the edge that feeds it.
    const INBOX_CAPACITY: usize;

    /// How many events to take per pull, and how long to wait for more.
    /// By default one batch at a time: a stage holds at most one batch in
    /// hand, so what is in flight is bounded by the queue capacities.
    fn gather(&self) -> (usize, Duration) {
        (1, Duration::ZERO)
    }

    /// Does the stage's work on what was pulled and returns the delivery of
    /// its output (or of a retry: the loop waits for it either way).
    fn on_batches(&mut self, batches: Vec<<Self::Input as Input>::Item>, ctx: &mut Context<Self>) -> Delivery<Self>;

    /// The input is closed and drained: flush, drop the outboxes so the
    /// next stage sees its inbox close too.
    fn on_closed(&mut self, ctx: &mut Context<Self>) -> Delivery<Self>;

    /// A handler panicked; its batches are gone. Put the state right.
    fn after_panic(&mut self, _ctx: &mut Context<Self>) {}
}

/// A stage running on its own thread.
pub struct Running<A: Actor> {
    pub(crate) addr: Addr<A>,
    thread: Arbiter,
}

impl<A: Actor> Running<A> {
    /// Stops the stage's thread and waits for it, so that whatever the
    /// stage owns (a chain file, an LMDB environment) is closed on return.
    pub fn join(self) {
        self.thread.stop();
        let _ = self.thread.join();
    }
}

/// Starts an actor that is not fed by an input (a timer stage) on its own thread.
pub fn start_actor<A>(make: impl FnOnce() -> A + Send + 'static) -> Running<A>
where
    A: Actor<Context = Context<A>>,
{
    let thread = Arbiter::new();
    let addr = A::start_in_arbiter(&thread.handle(), move |_| make());
    Running { addr, thread }
}

/// Starts `make()` on its own thread and its pull loop over `input`.
pub fn start<S>(input: S::Input, make: impl FnOnce() -> S + Send + 'static) -> Running<S>
where
    S: Stage,
    S::Input: Send,
{
    let thread = Arbiter::new();
    let addr = S::start_in_arbiter(&thread.handle(), move |ctx: &mut Context<S>| {
        ctx.spawn(actix::fut::ready(()).map(move |(), act: &mut S, ctx: &mut Context<S>| pull(input, act, ctx)));
        make()
    });
    Running { addr, thread }
}

/// Pulls one gathering, handles it, waits for the delivery, and pulls
/// again, until the input is closed and drained.
pub fn pull<S: Stage>(input: S::Input, act: &mut S, ctx: &mut Context<S>) {
    let (max, linger) = act.gather();
    let fut = actix::fut::wrap_future::<_, S>(input.recv(max, linger)).then(|(input, batches), act, ctx| {
        if batches.is_empty() {
            return act.on_closed(ctx);
        }
        let n: usize = batches.iter().map(Batch::events).sum();
        metrics::counter!(m::STAGE_RECEIVED, "stage" => S::NAME).increment(n as u64);
        let delivery = match std::panic::catch_unwind(AssertUnwindSafe(|| act.on_batches(batches, ctx))) {
            Ok(d) => d,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(stage = S::NAME, panic = %what, events = n, "stage panicked; its batches are dropped");
                count_restart(S::NAME);
                act.after_panic(ctx);
                delivered()
            }
        };
        Box::pin(delivery.map(move |(), act, ctx| pull(input, act, ctx)))
    });
    ctx.spawn(fut);
}

/// Runs a stage's timer work; a panic in it is caught and counted like
/// one in a handler, and the stage goes on at the next tick.
pub fn guarded(stage: &'static str, f: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(stage, "stage panicked in its timer");
        count_restart(stage);
    }
}

/// Counts a restart: a stage that panicked, or failed and started over.
pub fn count_restart(stage: &'static str) {
    metrics::counter!(m::ACTOR_RESTARTS, "actor" => stage).increment(1);
    tracing::warn!(actor = stage, "actor restarted");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
    use tokio::sync::Semaphore;

    use super::edge::{edge, Inbox, Outbox};
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Batch `n`, of one event.
    struct N(u32);

    impl Batch for N {
        fn events(&self) -> usize {
            1
        }
    }

    /// What the test stage did, in order.
    #[derive(Clone, Debug, PartialEq)]
    enum Did {
        Gathered(Vec<u32>),
        /// A command, and the batches handled when it ran.
        Command(Vec<u32>),
        AfterPanic,
        Closed,
    }

    /// A stage that records what it does; it panics on batch `panic_on`,
    /// and each gathering's delivery waits for a permit of `gate`.
    struct Probe {
        gather: (usize, Duration),
        panic_on: Option<u32>,
        gate: Arc<Semaphore>,
        handled: Vec<u32>,
        restarts: u32,
        did: Vec<Did>,
        tell: UnboundedSender<Did>,
    }

    impl Probe {
        fn record(&mut self, d: Did) {
            self.did.push(d.clone());
            let _ = self.tell.send(d);
        }
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Stage for Probe {
        type Input = Inbox<N>;
        const NAME: &'static str = "probe";
        const INBOX_CAPACITY: usize = 8;

        fn gather(&self) -> (usize, Duration) {
            self.gather
        }

        fn on_batches(&mut self, batches: Vec<N>, _: &mut Context<Self>) -> Delivery<Self> {
            let ids: Vec<u32> = batches.iter().map(|b| b.0).collect();
            self.record(Did::Gathered(ids.clone()));
            if self.panic_on.is_some_and(|p| ids.contains(&p)) {
                panic!("test panic on {ids:?}");
            }
            self.handled.extend(ids);
            let gate = self.gate.clone();
            delivery(async move { gate.acquire().await.expect("gate open").forget() })
        }

        fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
            self.record(Did::Closed);
            delivered()
        }

        fn after_panic(&mut self, _: &mut Context<Self>) {
            self.restarts += 1;
            self.record(Did::AfterPanic);
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Poke;

    impl Handler<Poke> for Probe {
        type Result = ();
        fn handle(&mut self, _: Poke, _: &mut Context<Self>) {
            let seen = self.handled.clone();
            self.record(Did::Command(seen));
        }
    }

    /// The stage's own state: what it handled, its restarts, everything it did.
    #[derive(Message)]
    #[rtype(result = "(Vec<u32>, u32, Vec<Did>)")]
    struct State;

    impl Handler<State> for Probe {
        type Result = MessageResult<State>;
        fn handle(&mut self, _: State, _: &mut Context<Self>) -> Self::Result {
            MessageResult((self.handled.clone(), self.restarts, self.did.clone()))
        }
    }

    /// Starts a probe stage over batches `1..=n`, queued before it starts.
    async fn probe(
        n: u32,
        gather: (usize, Duration),
        panic_on: Option<u32>,
        gate: Arc<Semaphore>,
    ) -> (Running<Probe>, Outbox<N>, UnboundedReceiver<Did>) {
        let (tx, inbox) = edge("test->probe", Probe::INBOX_CAPACITY);
        for i in 1..=n {
            tx.send(N(i)).await.unwrap();
        }
        let (tell, told) = unbounded_channel();
        let stage = start(inbox, move || Probe {
            gather,
            panic_on,
            gate,
            handled: Vec::new(),
            restarts: 0,
            did: Vec::new(),
            tell,
        });
        (stage, tx, told)
    }

    /// What the stage does next, within the deadline.
    async fn next(told: &mut UnboundedReceiver<Did>) -> Did {
        tokio::time::timeout(DEADLINE, told.recv()).await.expect("the stage stalled").expect("the stage is gone")
    }

    #[actix_rt::test]
    async fn a_stage_that_panics_on_a_batch_keeps_its_state_and_handles_the_next() {
        let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let (stage, tx, mut told) = probe(3, (1, Duration::ZERO), Some(2), open).await;
        drop(tx);
        while next(&mut told).await != Did::Closed {}
        let (handled, restarts, did) = stage.addr.send(State).await.unwrap();
        assert_eq!(handled, [1, 3], "batch 1 is still in the state; batch 3 was handled");
        assert_eq!(restarts, 1);
        use Did::*;
        assert_eq!(did, [Gathered(vec![1]), Gathered(vec![2]), AfterPanic, Gathered(vec![3]), Closed]);
        // Nothing after `on_closed`, up to the stage's end.
        stage.join();
        assert_eq!(tokio::time::timeout(DEADLINE, told.recv()).await.expect("the stage outlived its join"), None);
    }

    #[actix_rt::test]
    async fn a_command_sent_while_batches_are_queued_runs_between_two_gatherings() {
        let gate = Arc::new(Semaphore::new(0));
        let (stage, tx, mut told) = probe(6, (2, Duration::ZERO), None, gate.clone()).await;
        assert_eq!(next(&mut told).await, Did::Gathered(vec![1, 2]));
        // Batches 3..=6 are queued and the first gathering's delivery is
        // waiting: the command runs now, not once the queue is drained.
        tokio::time::timeout(DEADLINE, stage.addr.send(Poke)).await.expect("the command waited").unwrap();
        gate.add_permits(Semaphore::MAX_PERMITS);
        drop(tx);
        while next(&mut told).await != Did::Closed {}
        let (_, _, did) = stage.addr.send(State).await.unwrap();
        use Did::*;
        assert_eq!(
            did,
            [Gathered(vec![1, 2]), Command(vec![1, 2]), Gathered(vec![3, 4]), Gathered(vec![5, 6]), Closed]
        );
        stage.join();
    }
}
