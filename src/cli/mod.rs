//! The `op-dbus` command line. `main` only parses and maps the outcome to
//! an exit code: 0 success, 1 a problem was found (verify failed, a bad
//! import line), 2 bad usage or configuration, 3 a runtime failure.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::chain::{reader, verify};
use crate::codec::{hex, parse_hex_hash};
use crate::config::{Config, ConfigError, Overrides};
use crate::index::indexer::Indexer;
use crate::index::query::{self, Filter};
use crate::index::Index;
use crate::input::{self, Limits, LineReader, ReadLine};
use crate::layout::Layout;
use crate::messages::RawEventBatch;
use crate::pipeline::{attach_bus, lock_state_dir, spawn_pipeline};

pub const EXIT_PROBLEM: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_FAILURE: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "op-dbus", version, about = "Tamper-evident flight recorder of system state changes")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// State directory (chain, vectors, index) [env: OP_DBUS_STATE_DIR] [default: /var/lib/op-dbus]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/op-dbus/op-dbus.toml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: the pipeline and the metrics endpoint, until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Append footprints from a JSON-lines file (or - for stdin).
    Import(ImportArgs),
    /// Recompute every hash and check every link; exit 1 on any fault.
    Verify(VerifyArgs),
    /// List blocks, oldest first.
    Log(LogArgs),
    /// Show one block by seq or hash.
    Show(ShowArgs),
    /// Chain, index and storage status.
    Status(JsonArg),
    /// Rebuild the LMDB index from the chain.
    Reindex,
    /// Submit a footprint to the running daemon over D-Bus; prints its seq once durable.
    Submit(SubmitArgs),
    /// Print the D-Bus policy for org.opdbus (install it as /etc/dbus-1/system.d/org.opdbus.conf).
    DbusPolicy,
    /// List, verify or restore snapshots.
    #[command(subcommand)]
    Snapshots(SnapshotsCmd),
    /// Take a snapshot now (through the running daemon if there is one).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Semantic search: the blocks whose search vectors are nearest to TEXT.
    Search(SearchArgs),
    /// Compute the search vectors the chain lacks for the vector level, now.
    Embed(EmbedArgs),
    /// Send the newest snapshot to each replica that lacks it (one pass).
    Replicate {
        /// Only this replica
        #[arg(long)]
        replica: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCmd {
    /// Every snapshot, oldest first.
    List(JsonArg),
    /// Prove a snapshot's chain (or every snapshot's) matches the live chain up to its head.
    Verify {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot as a new state dir.
    Restore {
        name: String,
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot now.
    Now {
        /// Bus the running daemon serves on [default: service.address, else bus.address]
        #[arg(long)]
        bus: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    pub plugin_id: String,
    pub operation: String,
    /// Event data as JSON
    pub data_json: String,
    /// Bus the daemon serves on: system, session or an address [default: service.address, else bus.address]
    #[arg(long)]
    pub bus: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Vector level: none, heuristic, low, medium, high [env: OP_DBUS_VECTOR_LEVEL]
    #[arg(long)]
    pub vector_level: Option<String>,
    /// Most events per commit [env: OP_DBUS_MAX_BATCH]
    #[arg(long)]
    pub max_batch: Option<i64>,
    /// Longest wait for more events before a commit, in ms [env: OP_DBUS_MAX_WAIT_MS]
    #[arg(long)]
    pub max_wait_ms: Option<i64>,
    /// Address for /metrics and /health [env: OP_DBUS_METRICS_LISTEN]
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Do not serve metrics
    #[arg(long)]
    pub no_metrics: bool,
    /// Bus to record: system, session, or an address such as unix:path=/run/bus [env: OP_DBUS_BUS]
    #[arg(long)]
    pub bus: Option<String>,
    /// Record no bus (only Submit and imports)
    #[arg(long)]
    pub no_bus: bool,
    /// Do not serve org.opdbus
    #[arg(long)]
    pub no_service: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// File to read, or - for standard input
    pub file: PathBuf,
    /// Skip bad lines (each is reported) instead of stopping at the first
    #[arg(long)]
    pub skip_invalid: bool,
    /// Print a JSON line to stdout each time a batch is durable
    #[arg(long)]
    pub report_commits: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Vector level for these records [env: OP_DBUS_VECTOR_LEVEL]
    #[arg(long)]
    pub vector_level: Option<String>,
    /// Most events per commit [env: OP_DBUS_MAX_BATCH]
    #[arg(long)]
    pub max_batch: Option<i64>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// The block filters `log` and `search` share.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Captured at or after this time (RFC 3339 or ns since the epoch)
    #[arg(long)]
    pub since: Option<String>,
    /// Captured before this time (RFC 3339 or ns since the epoch)
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub plugin: Option<String>,
    #[arg(long)]
    pub operation: Option<String>,
}

impl FilterArgs {
    fn filter(&self, limit: Option<usize>) -> Result<Filter, Failure> {
        Ok(Filter {
            since: self.since.as_deref().map(|s| parse_time("since", s)).transpose().map_err(usage)?,
            until: self.until.as_deref().map(|s| parse_time("until", s)).transpose().map_err(usage)?,
            plugin: self.plugin.clone(),
            operation: self.operation.clone(),
            limit,
        })
    }
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show only the most recent N matches
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in words (at the heuristic level: bus names, operations, paths, verbs)
    pub text: String,
    /// How many results
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Search this level's vectors [default: the level the daemon uses, else vector.level]
    #[arg(long)]
    pub level: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Fill the store of the level's model from the chain (the daemon does this itself while it runs)
    #[arg(long, required = true)]
    pub backfill: bool,
    /// Vector level [env: OP_DBUS_VECTOR_LEVEL; default: vector.level]
    #[arg(long)]
    pub level: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A seq number or a block hash (64 hex digits)
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<ConfigError>().is_some() { EXIT_USAGE } else { EXIT_FAILURE };
        Failure { code, error }
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("op-dbus: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(global: &Global, mut flags: Overrides) -> Result<Config, Failure> {
    flags.state_dir = global.state_dir.clone();
    Ok(Config::load(global.config.as_deref(), |k| std::env::var(k).ok(), &flags).map_err(anyhow::Error::from)?)
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Run(a) => {
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
            run(load_config(&cli.global, flags)?)
        }
        Command::Import(a) => {
            let flags =
                Overrides { vector_level: a.vector_level.clone(), max_batch: a.max_batch, ..Default::default() };
            import(load_config(&cli.global, flags)?, &a)
        }
        Command::Verify(a) => verify_cmd(&existing(load_config(&cli.global, Overrides::default())?)?, a.json),
        Command::Log(a) => log(&existing(load_config(&cli.global, Overrides::default())?)?, &a),
        Command::Show(a) => show(&existing(load_config(&cli.global, Overrides::default())?)?, &a),
        Command::Status(a) => status(&existing(load_config(&cli.global, Overrides::default())?)?, a.json),
        Command::Reindex => reindex(&existing(load_config(&cli.global, Overrides::default())?)?),
        Command::Submit(a) => submit(&load_config(&cli.global, Overrides::default())?, &a),
        Command::Snapshots(c) => snapshots_cmd(&existing(load_config(&cli.global, Overrides::default())?)?, c),
        Command::Snapshot(SnapshotCmd::Now { bus }) => {
            snapshot_now(&existing(load_config(&cli.global, Overrides::default())?)?, bus.as_deref())
        }
        Command::Search(a) => {
            let flags = Overrides { vector_level: a.level.clone(), ..Default::default() };
            search_cmd(&existing(load_config(&cli.global, flags)?)?, &a)
        }
        Command::Embed(a) => {
            let flags = Overrides { vector_level: a.level.clone(), ..Default::default() };
            embed_cmd(&existing(load_config(&cli.global, flags)?)?)
        }
        Command::Replicate { replica } => {
            replicate_cmd(&existing(load_config(&cli.global, Overrides::default())?)?, replica.as_deref())
        }
        Command::DbusPolicy => {
            let cfg = load_config(&cli.global, Overrides::default())?;
            print!("{}", crate::bus::policy::render(&cfg.service));
            Ok(0)
        }
    }
}

/// Commands that read a chain refuse a state dir without one, so that a
/// mistyped `--state-dir` is not reported as an empty, sound chain.
fn existing(cfg: Config) -> Result<Config, Failure> {
    let timing = cfg.layout().timing;
    if !timing.is_dir() {
        return Err(usage(anyhow::anyhow!(
            "no chain in {} ({} does not exist); check --state-dir or OP_DBUS_STATE_DIR",
            cfg.state_dir.display(),
            timing.display()
        )));
    }
    Ok(cfg)
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OP_DBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn run(cfg: Config) -> Result<u8, Failure> {
    init_tracing();
    raise_fd_limit();
    let handle = if cfg.metrics_enabled { Some(crate::metrics::install()?) } else { None };
    let system = actix_rt::System::new();
    let result: anyhow::Result<()> = system.block_on(async move {
        // Bound first, so that a taken port fails start-up before anything
        // runs, rather than leaving the daemon running unobservable.
        let listener =
            match &handle {
                Some(_) => Some(tokio::net::TcpListener::bind(cfg.metrics_listen).await.with_context(|| {
                    format!("cannot listen for metrics on {} (metrics.listen)", cfg.metrics_listen)
                })?),
                None => None,
            };
        let mut pipeline = spawn_pipeline(crate::pipeline::PipelineConfig::new(&cfg))?;
        let limits = Limits { max_data_bytes: cfg.max_data_bytes, max_depth: cfg.max_depth };
        if let Err(e) = attach_bus(&mut pipeline, &cfg.bus, &cfg.service, limits).await {
            // Nothing was recorded from the bus yet; close what did start.
            let _ = pipeline.shutdown(cfg.shutdown_deadline).await;
            return Err(e);
        }
        let health = pipeline.health.clone();
        tracing::info!(
            state_dir = %cfg.state_dir.display(),
            head = health.chain_height.load(std::sync::atomic::Ordering::Acquire),
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
                    use std::sync::atomic::Ordering::Acquire;
                    let failing = h.writer_failing.load(Acquire) || h.ingest_failed.load(Acquire);
                    let chain = h.chain_height.load(Acquire);
                    let index = h.index_height.load(Acquire);
                    let body = json!({
                        "status": if failing { "failing" } else { "ok" },
                        "chain_height": chain,
                        "index_height": index,
                        "index_lag": chain.saturating_sub(index),
                    });
                    (!failing, body.to_string())
                };
                crate::metrics::serve(listener, handle, health).await;
            });
        }
        wait_for_signal().await?;
        tracing::info!("stopping: draining the pipeline");
        pipeline.shutdown(cfg.shutdown_deadline).await?;
        tracing::info!(head = health.chain_height.load(std::sync::atomic::Ordering::Acquire), "stopped cleanly");
        Ok(())
    });
    result?;
    Ok(0)
}

fn snapshots_cmd(cfg: &Config, c: SnapshotsCmd) -> Result<u8, Failure> {
    use crate::storage::snapshot;
    let layout = cfg.layout();
    match c {
        SnapshotsCmd::List(a) => {
            let all = snapshot::list(&layout);
            if a.json {
                for s in &all {
                    println!("{}", serde_json::to_string(s).map_err(anyhow::Error::from)?);
                }
            } else {
                for s in &all {
                    let uuids: Vec<String> = s.areas.iter().filter_map(|a| a.uuid.clone()).collect();
                    println!(
                        "{}  {}  head seq {}  {}{}",
                        s.name,
                        s.kind,
                        s.head_seq,
                        &s.head_hash[..16],
                        if uuids.is_empty() { String::new() } else { format!("  {}", uuids.join(" ")) }
                    );
                }
                if all.is_empty() {
                    println!("no snapshots in {}", snapshot::snapshots_dir(&layout).display());
                }
            }
            Ok(0)
        }
        SnapshotsCmd::Verify { name, json } => {
            let all = snapshot::list(&layout);
            let chosen: Vec<_> = match &name {
                Some(n) => all.into_iter().filter(|s| &s.name == n).collect(),
                None => all,
            };
            if let (Some(n), true) = (&name, chosen.is_empty()) {
                return Err(usage(anyhow::anyhow!("no snapshot named {n}; see `op-dbus snapshots list`")));
            }
            let index = open_index(&layout);
            let mut bad = 0;
            for s in &chosen {
                let problem = crate::storage::snapshot::verify(&layout, index.as_ref(), s);
                if problem.is_some() {
                    bad += 1;
                }
                if json {
                    println!("{}", json!({"name": s.name, "ok": problem.is_none(), "problem": problem}));
                } else {
                    match &problem {
                        None => println!("ok: {} matches the live chain up to seq {}", s.name, s.head_seq),
                        Some(p) => println!("FAILED: {}: {p}", s.name),
                    }
                }
            }
            Ok(if bad == 0 { 0 } else { EXIT_PROBLEM })
        }
        SnapshotsCmd::Restore { name, to } => {
            snapshot::restore(&layout, &name, &to)
                .with_context(|| format!("cannot restore snapshot {name} to {}", to.display()))?;
            println!(
                "restored {name} to {}; verify it with: op-dbus --state-dir {} verify",
                to.display(),
                to.display()
            );
            Ok(0)
        }
    }
}

fn replicate_cmd(cfg: &Config, only: Option<&str>) -> Result<u8, Failure> {
    if cfg.replicas.is_empty() {
        return Err(usage(anyhow::anyhow!("no [[replica]] in the configuration")));
    }
    if let Some(n) = only {
        if !cfg.replicas.iter().any(|r| r.name == n) {
            return Err(usage(anyhow::anyhow!("no replica named {n:?} in the configuration")));
        }
    }
    let mut failed = 0;
    for (name, r) in crate::storage::replicate::pass(&cfg.layout(), &cfg.replicas, only) {
        match r {
            Ok(Some(s)) => println!(
                "{name}: sent {} ({}, {} bytes)",
                s.snapshot,
                if s.incremental { "incremental" } else { "full" },
                s.bytes
            ),
            Ok(None) => println!("{name}: up to date"),
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    Ok(if failed == 0 { 0 } else { EXIT_FAILURE })
}

/// Through the running daemon's `Snapshot` method when it holds the state
/// dir; otherwise in this process (the writer's lock taken, the snapshot
/// recorded in the chain like the daemon's).
fn snapshot_now(cfg: &Config, bus: Option<&str>) -> Result<u8, Failure> {
    let layout = cfg.layout();
    let print = |m: &crate::storage::snapshot::SnapshotMeta| println!("{}", m.name);
    match lock_state_dir(&layout) {
        Ok(lock) => {
            drop(lock);
            let system = actix_rt::System::new();
            let r: anyhow::Result<Option<crate::storage::snapshot::SnapshotMeta>> = system.block_on(async {
                let mut pc = crate::pipeline::PipelineConfig::new(cfg);
                pc.snapshot.interval = crate::storage::retention::Interval::Off;
                let p = spawn_pipeline(pc)?;
                let r = p.snapshot_now().await.map_err(|e| anyhow::anyhow!(e));
                p.shutdown(cfg.shutdown_deadline).await?;
                r
            });
            match r? {
                Some(m) => print(&m),
                None => println!("nothing new since the last snapshot (or the chain is empty)"),
            }
            Ok(0)
        }
        Err(_) => {
            let addr = match bus {
                Some(b) => crate::config::BusAddress::parse(b).ok_or_else(|| {
                    usage(anyhow::anyhow!("invalid --bus {b:?}: allowed: {}", crate::config::BusAddress::ALLOWED))
                })?,
                None => cfg.service.address.clone().unwrap_or_else(|| cfg.bus.address.clone()),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let name: String = rt.block_on(async {
                let conn = crate::bus::connect(&addr).await?;
                let reply = conn
                    .call_method(
                        Some(crate::bus::SERVICE_NAME),
                        crate::bus::SERVICE_PATH,
                        Some(crate::bus::SERVICE_INTERFACE),
                        "Snapshot",
                        &(),
                    )
                    .await?;
                anyhow::Ok(reply.body().deserialize::<String>()?)
            })?;
            println!("{}", if name.is_empty() { "nothing new since the last snapshot".into() } else { name });
            Ok(0)
        }
    }
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

fn submit(cfg: &Config, a: &SubmitArgs) -> Result<u8, Failure> {
    let addr = match &a.bus {
        Some(b) => crate::config::BusAddress::parse(b).ok_or_else(|| {
            usage(anyhow::anyhow!("invalid --bus {b:?}: allowed: {}", crate::config::BusAddress::ALLOWED))
        })?,
        None => cfg.service.address.clone().unwrap_or_else(|| cfg.bus.address.clone()),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        let conn = crate::bus::connect(&addr).await.map_err(anyhow::Error::from)?;
        let reply = conn
            .call_method(
                Some(crate::bus::SERVICE_NAME),
                crate::bus::SERVICE_PATH,
                Some(crate::bus::SERVICE_INTERFACE),
                "Submit",
                &(a.plugin_id.as_str(), a.operation.as_str(), a.data_json.as_str()),
            )
            .await;
        match reply {
            Ok(m) => {
                let seq: u64 = m.body().deserialize().context("unexpected reply to Submit")?;
                println!("{seq}");
                Ok(0)
            }
            Err(zbus::Error::MethodError(name, detail, _)) => {
                eprintln!("op-dbus: Submit failed: {}: {}", name.as_str(), detail.unwrap_or_default());
                Ok(if name.as_str().ends_with("InvalidArgument") { EXIT_PROBLEM } else { EXIT_FAILURE })
            }
            Err(zbus::Error::FDO(e)) => {
                eprintln!("op-dbus: Submit failed: {e}");
                Ok(EXIT_FAILURE)
            }
            Err(e) => Err(Failure::from(anyhow::Error::from(e).context("Submit failed"))),
        }
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Lines per batch handed to the pipeline. Together with the queue
/// capacities this sets the import's memory: 512 keeps a 1M-line import
/// near 35 MB; 1024 cost ~7 MB more for no measurable speed.
const IMPORT_BATCH: usize = 512;

/// A batch is also handed over once its lines add up to this many bytes,
/// so that queues counted in batches stay bounded in bytes when events
/// are large (up to `input.max_data_bytes` each).
const IMPORT_BATCH_BYTES: usize = 4 << 20;

/// What the reader thread hands the acknowledgement task for each batch.
struct Sent {
    last_line: u64,
    count: usize,
    ack: tokio::sync::oneshot::Receiver<Result<crate::messages::Committed, crate::messages::PipelineError>>,
}

#[derive(Default)]
struct ReadOutcome {
    lines: u64,
    blank: u64,
    invalid: u64,
    /// The bad line that stopped the import (without --skip-invalid).
    stopped_at: Option<(u64, String)>,
    io_error: Option<String>,
}

fn import(cfg: Config, args: &ImportArgs) -> Result<u8, Failure> {
    init_tracing();
    let input: Box<dyn std::io::Read + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?)
    };
    let limits = Limits { max_data_bytes: cfg.max_data_bytes, max_depth: cfg.max_depth };
    let skip_invalid = args.skip_invalid;
    let report = args.report_commits;
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();

    let system = actix_rt::System::new();
    let outcome: anyhow::Result<(ReadOutcome, u64, Option<crate::messages::Committed>, bool)> =
        system.block_on(async move {
            // An import is not the daemon: it takes no snapshots.
            let mut pc = crate::pipeline::PipelineConfig::new(&cfg);
            pc.snapshot.interval = crate::storage::retention::Interval::Off;
            let pipeline = spawn_pipeline(pc)?;
            if pipeline.recovery.cut_bytes > 0 {
                eprintln!(
                    "op-dbus: recovered: cut {} bytes of an interrupted write at the end of the chain",
                    pipeline.recovery.cut_bytes
                );
            }
            let source = pipeline.source();
            let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<Sent>(256);
            let reader = std::thread::spawn(move || {
                let mut out = ReadOutcome::default();
                let mut lines =
                    LineReader::new(std::io::BufReader::with_capacity(256 << 10, input), limits.max_line_bytes());
                let mut buf = Vec::new();
                let mut batch = Vec::with_capacity(IMPORT_BATCH);
                let mut batch_bytes = 0usize;
                let flush = |batch: &mut Vec<_>, last_line: u64| -> bool {
                    if batch.is_empty() {
                        return true;
                    }
                    let (ack, rx) = tokio::sync::oneshot::channel();
                    let count = batch.len();
                    let events = std::mem::replace(batch, Vec::with_capacity(IMPORT_BATCH));
                    source.blocking_send(RawEventBatch { events, ack: Some(ack) }).is_ok()
                        && sent_tx.blocking_send(Sent { last_line, count, ack: rx }).is_ok()
                };
                loop {
                    // Hand over a partial batch before waiting on a slow pipe.
                    if !batch.is_empty() && lines.buffer_empty() {
                        batch_bytes = 0;
                        if !flush(&mut batch, lines.line_no) {
                            break;
                        }
                    }
                    let now = crate::codec::now_ns();
                    let event = match lines.next_line(&mut buf) {
                        Err(e) => {
                            out.io_error = Some(e.to_string());
                            break;
                        }
                        Ok(ReadLine::Eof) => break,
                        Ok(ReadLine::TooLong) => Err(format!("longer than {} bytes", limits.max_line_bytes())),
                        Ok(ReadLine::Line(l)) if l.iter().all(u8::is_ascii_whitespace) => {
                            out.blank += 1;
                            continue;
                        }
                        Ok(ReadLine::Line(l)) => {
                            batch_bytes += l.len();
                            input::parse_line(l, limits, now).map_err(|e| e.to_string())
                        }
                    };
                    out.lines = lines.line_no;
                    match event {
                        Ok(e) => {
                            batch.push(e);
                            if batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES {
                                batch_bytes = 0;
                                if !flush(&mut batch, lines.line_no) {
                                    break;
                                }
                            }
                        }
                        Err(msg) => {
                            out.invalid += 1;
                            if skip_invalid {
                                if out.invalid <= 20 {
                                    eprintln!("op-dbus: line {}: {msg} (skipped)", lines.line_no);
                                }
                            } else {
                                out.stopped_at = Some((lines.line_no, msg));
                                break;
                            }
                        }
                    }
                }
                let last = out.stopped_at.as_ref().map_or(lines.line_no, |(l, _)| l - 1);
                flush(&mut batch, last);
                out
            });

            let mut committed = 0u64;
            let mut head = None;
            let mut lost = false;
            let mut last_progress = Instant::now();
            while let Some(sent) = sent_rx.recv().await {
                match sent.ack.await {
                    Ok(Ok(c)) => {
                        committed += sent.count as u64;
                        head = Some(c);
                        if report {
                            let line = json!({
                                "committed": committed,
                                "through_line": sent.last_line,
                                "last_seq": c.last_seq,
                                "head_hash": hex(&c.head_hash),
                            });
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{line}");
                            let _ = out.flush();
                        }
                        if progress && last_progress.elapsed() > Duration::from_millis(250) {
                            eprint!("\rimported {committed} records (line {})", sent.last_line);
                            last_progress = Instant::now();
                        }
                    }
                    _ => {
                        lost = true;
                        break;
                    }
                }
            }
            drop(sent_rx);
            let outcome = reader.join().map_err(|_| anyhow::anyhow!("the import reader panicked"))?;
            if progress {
                eprintln!();
            }
            pipeline.shutdown(cfg.shutdown_deadline).await?;
            Ok((outcome, committed, head, lost))
        });
    let (outcome, committed, head, lost) = outcome?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "committed": committed,
                "lines": outcome.lines,
                "blank_lines": outcome.blank,
                "invalid_lines": outcome.invalid,
                "stopped_at_line": outcome.stopped_at.as_ref().map(|(l, _)| l),
                "error": outcome.stopped_at.as_ref().map(|(_, e)| e),
                "head_seq": head.map(|h| h.last_seq),
                "head_hash": head.map(|h| hex(&h.head_hash)),
                "seconds": secs,
            })
        );
    } else {
        let head_text = head.map_or("none".to_string(), |h| format!("seq {} hash {}", h.last_seq, hex(&h.head_hash)));
        println!(
            "committed {committed} records in {secs:.2}s ({:.0}/s); head {head_text}",
            committed as f64 / secs.max(1e-9)
        );
        if outcome.invalid > 0 && skip_invalid {
            println!("skipped {} invalid lines", outcome.invalid);
        }
        if outcome.blank > 0 {
            println!("ignored {} blank lines", outcome.blank);
        }
    }
    if let Some(e) = outcome.io_error {
        return Err(anyhow::anyhow!("reading input failed after line {}: {e}", outcome.lines).into());
    }
    if lost {
        return Err(anyhow::anyhow!("the pipeline stopped before all records were durable").into());
    }
    if let Some((line, msg)) = outcome.stopped_at {
        eprintln!("op-dbus: line {line}: {msg}; nothing from this line on was written (use --skip-invalid to go past bad lines)");
        return Ok(EXIT_PROBLEM);
    }
    Ok(0)
}

/// Opens the index for reading if it exists (read commands never create it).
fn open_index(layout: &Layout) -> Option<Index> {
    if !layout.cache.join("index").join("data.mdb").exists() {
        return None;
    }
    match Index::open(&layout.cache) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("op-dbus: index unavailable ({e}); reading the chain directly");
            None
        }
    }
}

fn verify_cmd(cfg: &Config, as_json: bool) -> Result<u8, Failure> {
    let layout = cfg.layout();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The index is a witness of how far the chain once reached: a chain
    // cut at a record boundary shows up here. Read it before the chain, so
    // that blocks a running writer adds meanwhile cannot look missing.
    let witness = open_index(&layout).and_then(|i| i.head().ok().flatten());
    let mut report = verify::verify(&layout, threads).map_err(anyhow::Error::from)?;
    if report.fault.is_none() {
        if let Some(head) = witness {
            let chain_next = report.head_seq.map_or(0, |s| s + 1);
            if head.seq >= chain_next {
                report.fault = Some(verify::Fault {
                    seq: chain_next,
                    kind: verify::FaultKind::Truncation,
                    file: layout.timing.display().to_string(),
                    offset: 0,
                    detail: format!("the index recorded seq {} but the chain ends before seq {chain_next}", head.seq),
                });
                report.ok = false;
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string(&report).map_err(anyhow::Error::from)?);
    } else {
        if let Some(t) = &report.torn_tail {
            println!(
                "note: {} bytes of an unfinished write at {} offset {} ({}); the next start cuts them",
                t.bytes, t.file, t.offset, t.reason
            );
        }
        match &report.fault {
            None => println!(
                "ok: {} blocks in {} segments verified in {:.2}s ({:.0} blocks/s); head seq {} hash {}",
                report.blocks,
                report.segments,
                report.seconds,
                report.blocks as f64 / report.seconds.max(1e-9),
                report.head_seq.map_or("none".into(), |s| s.to_string()),
                report.head_hash.as_deref().unwrap_or("none"),
            ),
            Some(f) => println!(
                "FAILED at seq {}: {} in {} at offset {}: {}",
                f.seq,
                f.kind.describe(),
                f.file,
                f.offset,
                f.detail
            ),
        }
    }
    Ok(if report.ok { 0 } else { EXIT_PROBLEM })
}

fn parse_time(key: &str, s: &str) -> anyhow::Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .with_context(|| format!("--{key} {s:?}: expected an RFC 3339 time or nanoseconds since the epoch"))
}

fn log(cfg: &Config, a: &LogArgs) -> Result<u8, Failure> {
    let layout = cfg.layout();
    let filter = a.filter.filter(a.limit)?;
    let index = open_index(&layout);
    let blocks = query::query(&layout, index.as_ref(), &filter).map_err(anyhow::Error::from)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for b in &blocks {
        let line = if a.json { query::block_json(b).to_string() } else { query::block_line(b) };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    let _ = out.flush();
    Ok(0)
}

fn usage(e: anyhow::Error) -> Failure {
    Failure { code: EXIT_USAGE, error: e }
}

fn show(cfg: &Config, a: &ShowArgs) -> Result<u8, Failure> {
    let layout = cfg.layout();
    let index = open_index(&layout);
    let block = if let Ok(seq) = a.id.parse::<u64>() {
        query::by_seq(&layout, index.as_ref(), seq)
    } else if let Some(hash) = parse_hex_hash(&a.id) {
        query::by_hash(&layout, index.as_ref(), &hash)
    } else {
        return Err(usage(anyhow::anyhow!("{:?} is neither a seq number nor a 64-digit hex hash", a.id)));
    }
    .map_err(anyhow::Error::from)?;
    let Some(b) = block else {
        eprintln!("op-dbus: no block {}", a.id);
        return Ok(EXIT_PROBLEM);
    };
    let j = query::block_json(&b);
    if a.json {
        println!("{j}");
    } else {
        println!("{}", serde_json::to_string_pretty(&j).map_err(anyhow::Error::from)?);
    }
    Ok(0)
}

fn status(cfg: &Config, as_json: bool) -> Result<u8, Failure> {
    let layout = cfg.layout();
    let segments = layout.segments().map_err(anyhow::Error::from)?;
    let head = reader::read_head(&layout).map_err(anyhow::Error::from)?;
    let chain_bytes: u64 =
        segments.iter().filter_map(|s| std::fs::metadata(layout.segment_path(*s)).ok()).map(|m| m.len()).sum();
    let index = open_index(&layout);
    let (index_next, index_entries, index_bytes) = match &index {
        Some(i) => {
            let next = i.head().ok().flatten().map_or(0, |h| h.seq + 1);
            let (n, size) = i.stats().unwrap_or((0, 0));
            (Some(next), n, size)
        }
        None => (None, 0, 0),
    };
    let lock = layout.state_dir.join("op-dbus.lock");
    let running = std::fs::File::open(&lock).ok().and_then(|f| match f.try_lock_shared() {
        Ok(()) => None,
        Err(_) => Some(std::fs::read_to_string(&lock).unwrap_or_default().trim().to_string()),
    });
    let fs = crate::layout::filesystem_type(&layout.state_dir);
    let storage = crate::layout::describe(&[&layout.timing, &layout.vectors, &layout.cache]);
    // What the daemon (or the last backfill) said it uses, and how far its
    // store reaches.
    let vstate = crate::ml::engine::read_state(&layout.state_dir);
    let vmodel = vstate.as_ref().and_then(|s| s.get("model")?.as_str().map(str::to_string));
    let vfallback = vstate.as_ref().and_then(|s| s.get("fallback")?.as_str().map(str::to_string));
    let vstored = vmodel
        .as_deref()
        .and_then(|m| crate::ml::store::StoreReader::open(&layout, m).ok().flatten())
        .map_or(0, |r| r.len());
    let j = json!({
        "state_dir": layout.state_dir,
        "filesystem": fs,
        "storage": storage,
        "writer_pid": running,
        "chain": {
            "blocks": head.next_seq,
            "head_seq": head.last_seq(),
            "head_hash": head.last_seq().map(|_| hex(&head.hash)),
            "segments": segments.len(),
            "bytes": chain_bytes,
        },
        "index": {
            "present": index.is_some(),
            "blocks": index_next,
            "entries": index_entries,
            "lag": index_next.map(|n| head.next_seq.saturating_sub(n)),
            "bytes": index_bytes,
        },
        "vector_level": cfg.vector_level.as_str(),
        "vectors": {
            "level": vstate.as_ref().and_then(|s| s.get("level").cloned()),
            "model": vmodel,
            "fallback": vfallback,
            "stored": vstored,
            "lag": head.next_seq.saturating_sub(vstored),
        },
    });
    if as_json {
        println!("{j}");
    } else {
        println!("state dir   {} ({fs}; storage: {storage})", layout.state_dir.display());
        println!("writer      {}", running.map_or("none running".into(), |p| format!("pid {p}")));
        println!(
            "chain       {} blocks in {} segments, {} bytes; head {}",
            head.next_seq,
            segments.len(),
            chain_bytes,
            head.last_seq().map_or("none".into(), |s| format!("seq {s} hash {}", hex(&head.hash)))
        );
        match index_next {
            Some(n) => {
                println!("index       {n} blocks ({} behind), {index_bytes} bytes", head.next_seq.saturating_sub(n))
            }
            None => println!("index       absent (run `op-dbus reindex`)"),
        }
        match (&vmodel, vstate.as_ref().and_then(|s| s.get("level")?.as_str().map(str::to_string))) {
            (Some(m), Some(level)) => {
                println!(
                    "vectors     level {level}: {m}, {vstored} blocks searchable ({} behind)",
                    head.next_seq.saturating_sub(vstored)
                );
                if let Some(r) = &vfallback {
                    println!("            FALLBACK: the level's model did not load: {r}");
                }
            }
            _ => println!("vectors     level {} (no search vectors yet)", cfg.vector_level.as_str()),
        }
    }
    Ok(0)
}

fn engine_config(cfg: &Config) -> crate::ml::engine::EngineConfig {
    crate::ml::engine::EngineConfig {
        level: cfg.vector_level,
        model_dir: cfg.model_dir.clone(),
        precision: cfg.vector.precision,
        threads: cfg.vector.threads,
        batch: cfg.vector.batch,
    }
}

fn search_cmd(cfg: &Config, a: &SearchArgs) -> Result<u8, Failure> {
    use crate::ml::engine::{self, Engine};
    use crate::ml::ModelSpec;
    let layout = cfg.layout();
    let filter = a.filter.filter(None)?;
    if cfg.vector_level == crate::ml::VectorLevel::None {
        return Err(usage(anyhow::anyhow!("vector level none stores no vectors: nothing to search")));
    }
    // The model the daemon uses (it may have fallen back), unless a level
    // was asked for.
    let recorded = engine::read_state(&layout.state_dir)
        .filter(|_| a.level.is_none())
        .and_then(|s| s.get("model").and_then(|m| m.as_str()).map(str::to_string));
    let id = recorded.unwrap_or_else(|| match engine::model_of(cfg.vector_level) {
        Some(kind) => ModelSpec { kind, precision: cfg.vector.precision }.id(),
        None => crate::vector::HEURISTIC_MODEL.to_string(),
    });
    let ml = id != crate::vector::HEURISTIC_MODEL;
    let cache =
        if ml { crate::ml::cache::EmbedCache::configured(&layout.cache, cfg.vector.cache_entries) } else { None };
    let mut ecfg = engine_config(cfg);
    ecfg.threads = ecfg.threads.max(1);
    let engine = Engine::for_search(&id, &ecfg, cache).map_err(anyhow::Error::from)?;
    let index = open_index(&layout);
    let chain = reader::read_head(&layout).map_err(anyhow::Error::from)?.next_seq;
    let r =
        crate::ml::search::search(&layout, index.as_ref(), &engine, &a.text, a.k, &filter).map_err(|e| match e {
            crate::ml::search::SearchError::BadK => usage(e.into()),
            e => Failure::from(anyhow::Error::from(e)),
        })?;
    if a.json {
        let mut j = serde_json::to_value(&r).map_err(anyhow::Error::from)?;
        j["chain"] = json!(chain);
        println!("{j}");
        return Ok(0);
    }
    if r.vectors < chain {
        eprintln!(
            "op-dbus: {} of {chain} blocks have {} vectors; the rest are not searched yet (the daemon fills them, or `op-dbus embed --backfill`)",
            r.vectors, r.model
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for h in &r.hits {
        let line = format!("{:>8} {:.3} {} {} {} {}", h.seq, h.score, h.time, h.plugin, h.operation, h.summary);
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    Ok(0)
}

fn embed_cmd(cfg: &Config) -> Result<u8, Failure> {
    use crate::ml::engine::{self, Engine};
    init_tracing();
    let layout = cfg.layout();
    let _lock = lock_state_dir(&layout)?;
    let ecfg = engine_config(cfg);
    let cache = engine::model_of(cfg.vector_level)
        .and_then(|_| crate::ml::cache::EmbedCache::configured(&layout.cache, cfg.vector.cache_entries));
    let Some(engine) = Engine::start(&ecfg, cache) else {
        return Err(usage(anyhow::anyhow!("vector level none stores no vectors: nothing to embed")));
    };
    engine::write_state(&layout.state_dir, cfg.vector_level, &engine).context("cannot write vectors.json")?;
    let mut store = crate::ml::store::StoreWriter::open(&layout, engine.id(), engine.dims())
        .context("cannot open the search vector store")?;
    let to = reader::read_head(&layout).map_err(anyhow::Error::from)?.next_seq;
    let (from, started) = (store.len(), Instant::now());
    let (mut hits, mut misses) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let mut cursor = reader::Cursor::default();
    while store.len() < to {
        let (n, stats) = crate::ml::worker::step(&layout, &mut cursor, &engine, &mut store, to)?;
        if n == 0 {
            break;
        }
        hits += stats.hits;
        misses += stats.misses;
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("embedded {} of {to}", store.len());
            last_report = Instant::now();
        }
    }
    if let Some(c) = engine.cache() {
        c.sync().context("cannot sync the embedding cache")?;
    }
    let (n, secs) = (store.len() - from, started.elapsed().as_secs_f64());
    let texts = hits + misses;
    println!(
        "embedded {n} blocks with {} in {secs:.2}s ({:.0}/s); {} of {to} have vectors; cache hits {hits} of {texts}{}",
        engine.id(),
        n as f64 / secs.max(1e-9),
        store.len(),
        if texts > 0 { format!(" ({:.1}%)", 100.0 * hits as f64 / texts as f64) } else { String::new() }
    );
    if let Some(reason) = engine.fallback() {
        eprintln!("op-dbus: the level's model did not load, so {} vectors were used: {reason}", engine.id());
    }
    Ok(0)
}

fn reindex(cfg: &Config) -> Result<u8, Failure> {
    init_tracing();
    let layout = cfg.layout();
    let _lock = lock_state_dir(&layout)?;
    let started = Instant::now();
    let index = Index::open_or_reset(&layout.cache).context("cannot open the index")?;
    let indexer = Indexer::rebuild(index, &layout).context("rebuilding the index")?;
    let next = indexer.next();
    indexer.index().sync().context("cannot sync the index")?;
    let secs = started.elapsed().as_secs_f64();
    println!("reindexed {next} blocks in {secs:.2}s ({:.0}/s)", next as f64 / secs.max(1e-9));
    Ok(0)
}
