//! `op-dbus run` as a library call: the pipeline, the bus (capture and the
//! `org.opdbus` service) and the metrics endpoint, until a stop is asked
//! for; then the pipeline drains ([`crate::pipeline::Pipeline::shutdown`]).

use std::future::Future;
use std::sync::atomic::Ordering::Acquire;

use crate::config::Config;
use crate::input::Limits;
use crate::pipeline::{attach_bus, spawn_pipeline, PipelineConfig};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Installing the metrics recorder failed.
    #[error(transparent)]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot listen for metrics on {addr} (metrics.listen)")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    /// Starting the pipeline (or attaching the bus) failed.
    #[error(transparent)]
    Start(#[from] crate::pipeline::StartError),
    /// Draining the pipeline failed.
    #[error(transparent)]
    Shutdown(#[from] crate::pipeline::ShutdownError),
    /// Waiting for the stop signal failed.
    #[error(transparent)]
    Signal(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), DaemonError> {
    run_until(cfg, stop_signal())
}

/// Runs the daemon until `stop` completes (first polled once everything
/// has started), then drains the pipeline.
pub fn run_until(cfg: &Config, stop: impl Future<Output = std::io::Result<()>>) -> Result<(), DaemonError> {
    raise_fd_limit();
    let handle =
        if cfg.metrics_enabled { Some(crate::metrics::install().map_err(DaemonError::Metrics)?) } else { None };
    let system = actix_rt::System::new();
    system.block_on(async move {
        // Bound first, so that a taken port fails start-up before anything
        // runs, rather than leaving the daemon running unobservable.
        let listener = match &handle {
            Some(_) => Some(
                tokio::net::TcpListener::bind(cfg.metrics_listen)
                    .await
                    .map_err(|source| DaemonError::Listen { addr: cfg.metrics_listen, source })?,
            ),
            None => None,
        };
        let mut pipeline = spawn_pipeline(PipelineConfig::new(cfg))?;
        let limits = Limits { max_data_bytes: cfg.max_data_bytes, max_depth: cfg.max_depth };
        if let Err(e) = attach_bus(&mut pipeline, &cfg.bus, &cfg.service, limits).await {
            // Nothing was recorded from the bus yet; close what did start.
            let _ = pipeline.shutdown(cfg.shutdown_deadline).await;
            return Err(e.into());
        }
        let health = pipeline.health.clone();
        tracing::info!(
            state_dir = %cfg.state_dir.display(),
            head = health.chain_height.load(Acquire),
            vector_level = cfg.vector_level.as_str(),
            bus = %if cfg.bus.enabled { cfg.bus.address.to_string() } else { "none".into() },
            service = cfg.service.enabled,
            storage = %{
                let l = cfg.layout();
                crate::layout::describe(&[&l.timing, &l.vectors, &l.cache])
            },
            "op-dbus is recording"
        );
        if let (Some(handle), Some(listener)) = (handle, listener) {
            let h = health.clone();
            actix_rt::spawn(async move {
                let health = move || {
                    let r = h.report();
                    (r.is_ok(), serde_json::to_string(&r).expect("a struct of numbers and a str serializes"))
                };
                crate::metrics::serve(listener, handle, health).await;
            });
        }
        stop.await.map_err(DaemonError::Signal)?;
        tracing::info!("stopping: draining the pipeline");
        pipeline.shutdown(cfg.shutdown_deadline).await?;
        tracing::info!(head = health.chain_height.load(Acquire), "stopped cleanly");
        Ok(())
    })
}

/// Completes at the first SIGTERM or SIGINT (the handlers are installed
/// when it is first polled).
pub async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Monitors receive the file descriptors of the messages they see, held
/// until the message is dropped; a full capture queue can hold thousands.
/// Raise the soft limit to the hard one, as daemons do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::bus::proxy::chain_proxy;
    use crate::bus::service::ChainError;
    use crate::config::{BusAddress, Overrides};

    /// A private dbus-daemon (scripts/private-bus.sh: the shipped policy),
    /// stopped when dropped.
    struct PrivateBus {
        address: String,
        pid: i32,
    }

    impl PrivateBus {
        fn start(dir: &Path) -> PrivateBus {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/private-bus.sh");
            let out = std::process::Command::new(script).arg(dir).output().expect("run scripts/private-bus.sh");
            assert!(out.status.success(), "dbus-daemon did not start: {}", String::from_utf8_lossy(&out.stderr));
            let pid = std::fs::read_to_string(dir.join("bus.pid")).unwrap().trim().parse().unwrap();
            PrivateBus { address: String::from_utf8(out.stdout).unwrap().trim().to_string(), pid }
        }
    }

    impl Drop for PrivateBus {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the pid of the dbus-daemon this test started.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
    }

    /// Every method and the signal of the proxy against the daemon's real
    /// service: the proxy's signatures are the interface's.
    #[test]
    fn the_daemon_serves_chain1_as_the_proxy_expects() {
        let dir = tempfile::tempdir().unwrap();
        let bus = PrivateBus::start(&dir.path().join("bus"));
        let flags = Overrides {
            state_dir: Some(dir.path().join("state")),
            no_metrics: true,
            no_bus: true,
            ..Default::default()
        };
        let service_bus = bus.address.clone();
        let env = move |k: &str| (k == "OP_DBUS_SERVICE_BUS").then(|| service_bus.clone());
        let cfg = Config::load(Some(Path::new("/dev/null")), env, &flags).unwrap();
        let addr = BusAddress::parse(&bus.address).unwrap();
        let within = |what: &'static str| move |_| panic!("no {what} within 10 s");
        let calls = async {
            let p = chain_proxy(&addr).await.unwrap();
            let mut appended = p.receive_blocks_appended().await.unwrap();
            assert!(matches!(p.head().await, Err(ChainError::NotFound(_))));

            let seq = p.submit("org.example.app", "org.example.app.Deployed", r#"{"v":[1,2]}"#).await.unwrap();
            assert_eq!(seq, 0);
            assert!(matches!(p.submit("a", "b", "{nope").await, Err(ChainError::InvalidArgument(_))));
            let (head, hash) = p.head().await.unwrap();
            assert_eq!(head, 0);
            let block: serde_json::Value = serde_json::from_str(&p.get_block(0).await.unwrap()).unwrap();
            assert_eq!((block["hash"].as_str(), block["source"].as_str()), (Some(hash.as_str()), Some("submit")));
            assert!(matches!(p.get_block(7).await, Err(ChainError::NotFound(_))));
            let rows = p.query(0, 0, "org.example.app", "", 0).await.unwrap();
            assert_eq!(rows.iter().map(|r| (r.seq, r.hash.as_str())).collect::<Vec<_>>(), [(0, hash.as_str())]);
            assert_eq!(p.verify(0, 0).await.unwrap(), (true, 1, String::new()));
            let (model, _, _) = p.search("org.example.app deployed", 5, 0, 0, "", "").await.unwrap();
            assert_eq!(model, crate::vector::HEURISTIC_MODEL);
            assert!(!p.snapshot().await.unwrap().is_empty(), "block 0 is new: a snapshot is taken");

            let signal = tokio::time::timeout(Duration::from_secs(10), appended.next())
                .await
                .unwrap_or_else(within("BlocksAppended"))
                .unwrap();
            let args = signal.args().unwrap();
            assert_eq!(*args.first_seq(), 0);
            std::io::Result::Ok(())
        };
        run_until(&cfg, calls).unwrap();
    }
}
