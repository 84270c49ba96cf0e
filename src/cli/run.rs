//! `op-dbus run`: the daemon, until SIGTERM or SIGINT.

use super::{init_tracing, load_config, Failure, Global, RunArgs};
use crate::config::Overrides;

pub(super) fn run(global: &Global, a: RunArgs) -> Result<u8, Failure> {
    let flags = Overrides {
        vector_level: a.vector_level,
        max_batch: a.max_batch,
        max_wait_ms: a.max_wait_ms,
        metrics_listen: a.metrics_listen,
        no_metrics: a.no_metrics,
        bus: a.bus,
        no_bus: a.no_bus,
        no_service: a.no_service,
        ..Default::default()
    };
    let cfg = load_config(global, flags)?;
    init_tracing();
    crate::daemon::run(&cfg).map_err(Failure::runtime)?;
    Ok(0)
}
