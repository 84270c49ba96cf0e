//! The `op-dbus` command line: the clap definitions, the dispatcher and
//! the exit codes (0 success, 1 a problem was found: verify failed, a bad
//! import line, no such block; 2 bad usage or configuration; 3 a runtime
//! failure). Each command is a file of its own, a thin shell: it reads its
//! arguments, calls one library function, prints the typed outcome and maps
//! it to an exit code. anyhow lives here, at the binary's edge, only.

mod dbus_policy;
mod embed;
mod import;
mod keys;
mod log;
mod prove;
mod reindex;
mod replicate;
mod run;
mod search;
mod show;
mod snapshot;
mod snapshots;
mod status;
mod submit;
mod verify;
mod verify_proof;
mod witness;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{BusAddress, Config, Overrides};
use crate::index::query::Filter;
use crate::index::Index;
use crate::layout::Layout;

pub const EXIT_PROBLEM: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_FAILURE: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "op-dbus", version, about = "Tamper-evident flight recorder of system state changes")]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// State directory (chain, vectors, index) [env: OP_DBUS_STATE_DIR] [default: /var/lib/op-dbus]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/op-dbus/op-dbus.toml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Make, show or renew the signing keys (identity and epoch keys).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Write a proof that block SEQ is in the signed log (a C2SP tlog-proof), or a consistency proof.
    Prove(ProveArgs),
    /// Check a proof bundle with public keys only (no state dir needed).
    VerifyProof(VerifyProofArgs),
    /// Serve a C2SP tlog-witness that cosigns the checkpoints of the logs it is given.
    Witness(WitnessArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Make the identity key and provision epoch keys (proof.epoch_seconds, proof.provision_hours).
    Init {
        /// The log's origin [default: proof.origin, else derived from /etc/machine-id]
        #[arg(long)]
        origin: Option<String>,
        /// Epoch length in seconds [default: proof.epoch_seconds]
        #[arg(long)]
        epoch_seconds: Option<u64>,
        /// Hours of epoch keys to provision [default: proof.provision_hours]
        #[arg(long)]
        hours: Option<u64>,
        /// Write the identity secret here instead of keys/identity.key (e.g. removable media)
        #[arg(long, value_name = "FILE")]
        identity_out: Option<PathBuf>,
    },
    /// Print the identity public key (a signed-note vkey) for auditors and witnesses.
    ExportPublic,
    /// Provision the next period of epoch keys; needs the identity secret.
    Renew {
        /// The identity secret (as keys init wrote it)
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// Hours to provision [default: proof.provision_hours]
        #[arg(long)]
        hours: Option<u64>,
    },
    /// The keys: origin, provisioned period, renewal due, whether the identity secret is on this host.
    Status(JsonArg),
}

#[derive(Debug, Args)]
pub(crate) struct ProveArgs {
    /// The block's seq (with --consistency: the old tree size)
    pub(crate) seq: u64,
    /// A consistency proof from tree size SEQ to NEW instead [NEW default: the newest checkpoint]
    #[arg(long)]
    pub(crate) consistency: bool,
    /// With --consistency: the new tree size
    pub(crate) new: Option<u64>,
    /// Write the bundle here instead of standard output
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyProofArgs {
    /// The bundle (.tlog-proof), or - for standard input
    pub(crate) file: PathBuf,
    /// The log's identity public key: a vkey, or a file holding one
    #[arg(long, value_name = "KEY")]
    pub(crate) key: String,
    /// A witness's public key (vkey or file); repeat for each
    #[arg(long = "witness", value_name = "KEY")]
    pub(crate) witnesses: Vec<String>,
    /// Require this many valid witness cosignatures
    #[arg(long, default_value_t = 0)]
    pub(crate) min_witnesses: usize,
    /// Print the outcome as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WitnessArgs {
    /// Address to listen on, such as 127.0.0.1:7380
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// The witness's own folder: its key and the newest checkpoint it cosigned of each log
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// A log's identity public key (vkey or file); repeat for each log
    #[arg(long = "log", value_name = "KEY", required = true)]
    pub(crate) logs: Vec<String>,
    /// The witness's name in its cosignatures, when its key is made [default: op-dbus-witness/<hostname>]
    #[arg(long)]
    pub(crate) name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotsCmd {
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
pub(crate) enum SnapshotCmd {
    /// Take a snapshot now.
    Now {
        /// Bus the running daemon serves on [default: service.address, else bus.address]
        #[arg(long)]
        bus: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    pub(crate) plugin_id: String,
    pub(crate) operation: String,
    /// Event data as JSON
    pub(crate) data_json: String,
    /// Bus the daemon serves on: system, session or an address [default: service.address, else bus.address]
    #[arg(long)]
    pub(crate) bus: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Vector level: none, heuristic, low, medium, high [env: OP_DBUS_VECTOR_LEVEL]
    #[arg(long)]
    pub(crate) vector_level: Option<String>,
    /// Most events per commit [env: OP_DBUS_MAX_BATCH]
    #[arg(long)]
    pub(crate) max_batch: Option<i64>,
    /// Longest wait for more events before a commit, in ms [env: OP_DBUS_MAX_WAIT_MS]
    #[arg(long)]
    pub(crate) max_wait_ms: Option<i64>,
    /// Address for /metrics and /health [env: OP_DBUS_METRICS_LISTEN]
    #[arg(long)]
    pub(crate) metrics_listen: Option<String>,
    /// Do not serve metrics
    #[arg(long)]
    pub(crate) no_metrics: bool,
    /// Bus to record: system, session, or an address such as unix:path=/run/bus [env: OP_DBUS_BUS]
    #[arg(long)]
    pub(crate) bus: Option<String>,
    /// Record no bus (only Submit and imports)
    #[arg(long)]
    pub(crate) no_bus: bool,
    /// Do not serve org.opdbus
    #[arg(long)]
    pub(crate) no_service: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// File to read, or - for standard input
    pub(crate) file: PathBuf,
    /// Skip bad lines (each is reported) instead of stopping at the first
    #[arg(long)]
    pub(crate) skip_invalid: bool,
    /// Print a JSON line to stdout each time a batch is durable
    #[arg(long)]
    pub(crate) report_commits: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// Vector level for these records [env: OP_DBUS_VECTOR_LEVEL]
    #[arg(long)]
    pub(crate) vector_level: Option<String>,
    /// Most events per commit [env: OP_DBUS_MAX_BATCH]
    #[arg(long)]
    pub(crate) max_batch: Option<i64>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// The identity public key to check checkpoints against (a vkey or a file) [default: keys/identity.pub of the state dir, else the copy @timing/identity.pub that snapshots and replicas carry]
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
}

/// The block filters `log` and `search` share.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Captured at or after this time (RFC 3339 or ns since the epoch)
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Captured before this time (RFC 3339 or ns since the epoch)
    #[arg(long)]
    pub(crate) until: Option<String>,
    #[arg(long)]
    pub(crate) plugin: Option<String>,
    #[arg(long)]
    pub(crate) operation: Option<String>,
}

impl FilterArgs {
    fn filter(&self, limit: Option<usize>) -> Result<Filter, Failure> {
        Ok(Filter {
            since: self.since.as_deref().map(|s| parse_time("since", s)).transpose().map_err(Failure::usage)?,
            until: self.until.as_deref().map(|s| parse_time("until", s)).transpose().map_err(Failure::usage)?,
            plugin: self.plugin.clone(),
            operation: self.operation.clone(),
            limit,
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Show only the most recent N matches
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// What to look for, in words (at the heuristic level: bus names, operations, paths, verbs)
    pub(crate) text: String,
    /// How many results
    #[arg(long, default_value_t = 10)]
    pub(crate) k: usize,
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Search this level's vectors [default: the level the daemon uses, else vector.level]
    #[arg(long)]
    pub(crate) level: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// Fill the store of the level's model from the chain (the daemon does this itself while it runs)
    #[arg(long, required = true)]
    pub(crate) backfill: bool,
    /// Vector level [env: OP_DBUS_VECTOR_LEVEL; default: vector.level]
    #[arg(long)]
    pub(crate) level: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A seq number or a block hash (64 hex digits)
    pub(crate) id: String,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    #[arg(long)]
    pub(crate) json: bool,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    /// Bad usage or configuration: exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: EXIT_USAGE, error: error.into() }
    }

    /// A runtime failure: exit 3.
    pub fn runtime(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: EXIT_FAILURE, error: error.into() }
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

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Run(a) => run::run(g, a),
        Command::Import(a) => import::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Log(a) => log::run(g, a),
        Command::Show(a) => show::run(g, a),
        Command::Status(a) => status::run(g, a),
        Command::Reindex => reindex::run(g),
        Command::Submit(a) => submit::run(g, a),
        Command::Snapshots(c) => snapshots::run(g, c),
        Command::Snapshot(SnapshotCmd::Now { bus }) => snapshot::run(g, bus),
        Command::Search(a) => search::run(g, a),
        Command::Embed(a) => embed::run(g, a),
        Command::Replicate { replica } => replicate::run(g, replica),
        Command::DbusPolicy => dbus_policy::run(g),
        Command::Keys(c) => keys::run(g, c),
        Command::Prove(a) => prove::run(g, a),
        Command::VerifyProof(a) => verify_proof::run(a),
        Command::Witness(a) => witness::run(a),
    }
}

/// The configuration: defaults < file < environment < `flags` (with the
/// global `--state-dir`). An invalid one is bad usage.
fn load_config(global: &Global, mut flags: Overrides) -> Result<Config, Failure> {
    flags.state_dir = global.state_dir.clone();
    Config::load(global.config.as_deref(), |k| std::env::var(k).ok(), &flags).map_err(Failure::usage)
}

/// Commands that read a chain refuse a state dir without one, so that a
/// mistyped `--state-dir` is not reported as an empty, sound chain.
fn existing(cfg: Config) -> Result<Config, Failure> {
    let timing = cfg.layout().timing;
    if !timing.is_dir() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no chain in {} ({} does not exist); check --state-dir or OP_DBUS_STATE_DIR",
            cfg.state_dir.display(),
            timing.display()
        )));
    }
    Ok(cfg)
}

/// [`load_config`] with no flags, for a state dir that must hold a chain.
fn existing_config(global: &Global) -> Result<Config, Failure> {
    existing(load_config(global, Overrides::default())?)
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

/// The index for reading, if there is one (read commands never create
/// it); one that cannot be opened is said and done without.
fn open_index(layout: &Layout) -> Option<Index> {
    match Index::open_existing(&layout.cache) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("op-dbus: index unavailable ({e}); reading the chain directly");
            None
        }
    }
}

/// The search vectors' engine settings, from `[vector]`.
fn engine_config(cfg: &Config) -> crate::ml::engine::EngineConfig {
    crate::ml::engine::EngineConfig {
        level: cfg.vector_level,
        model_dir: cfg.model_dir.clone(),
        precision: cfg.vector.precision,
        threads: cfg.vector.threads,
        batch: cfg.vector.batch,
    }
}

/// A `--bus` argument, which must be a bus.
fn parse_bus(b: &str) -> Result<BusAddress, Failure> {
    BusAddress::parse(b).ok_or_else(|| invalid_bus(b))
}

fn invalid_bus(b: &str) -> Failure {
    Failure::usage(anyhow::anyhow!("invalid --bus {b:?}: allowed: {}", BusAddress::ALLOWED))
}

/// A public key given on the command line: the vkey itself, or a file holding one.
fn read_vkey(what: &str, k: &str) -> Result<crate::note::Verifier, Failure> {
    let text = if std::path::Path::new(k).is_file() {
        std::fs::read_to_string(k).with_context(|| format!("{what} {k}")).map_err(Failure::usage)?
    } else {
        k.to_string()
    };
    crate::note::Verifier::parse_vkey(&text).with_context(|| format!("{what} {k:?}")).map_err(Failure::usage)
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
