//! Configuration: defaults, then the TOML file, then environment
//! variables, then command-line flags, layered by one mechanism
//! (`layers.rs`) and deserialized once into the file's typed sections. Every
//! value is checked once, here; an invalid one stops start-up with a
//! message naming the key, the value, where it came from and what is allowed.

mod layers;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;

use crate::ml::{Precision, VectorLevel};
use crate::storage::replicate::ReplicaConfig;
use crate::storage::retention::{Interval, Retention};
use layers::{Layers, Origin};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key} = {value:?} (from {origin}): allowed: {allowed}")]
    Invalid { key: &'static str, value: String, origin: String, allowed: String },
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub(crate) state_dir: PathBuf,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) vector_level: VectorLevel,
    pub(crate) model_dir: PathBuf,
    pub(crate) vector: VectorConfig,
    pub(crate) max_batch: usize,
    pub(crate) max_wait: Duration,
    pub(crate) segment_max_bytes: u64,
    pub(crate) max_data_bytes: usize,
    pub(crate) max_depth: usize,
    pub(crate) index_sync_interval: Duration,
    pub(crate) metrics_enabled: bool,
    pub(crate) metrics_listen: SocketAddr,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) bus: BusConfig,
    pub(crate) service: ServiceConfig,
    pub(crate) snapshot: SnapshotConfig,
    pub(crate) replicas: Vec<ReplicaConfig>,
    pub(crate) proof: ProofConfig,
}

/// Tiles, checkpoints and keys (`[proof]`), and the witnesses (`[[witness]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProofConfig {
    pub enabled: bool,
    /// Empty: derived from the machine id (`proof::keys::default_origin`).
    pub origin: String,
    pub checkpoint_interval: Duration,
    pub auto_init: bool,
    pub epoch_seconds: u64,
    pub provision_hours: u64,
    pub renew_warning: Duration,
    pub witnesses: Vec<WitnessConfig>,
}

/// One witness: where its tlog-witness API is and the key it cosigns with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    pub url: String,
    pub key: String,
}

/// The ML vector levels (`[vector]`, beside `level` and `model_dir`).
#[derive(Clone, Debug, PartialEq)]
pub struct VectorConfig {
    /// `int8` (the dynamically quantized model files) or `fp32`.
    pub precision: Precision,
    /// ONNX Runtime threads for the vector worker.
    pub(crate) threads: usize,
    /// Texts embedded per model run (sorted by length first).
    pub batch: usize,
    /// Entries the embedding cache keeps (two generations of half each); 0: no cache.
    pub(crate) cache_entries: u64,
}

/// Snapshots (`[snapshot]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    pub interval: Interval,
    pub retention: Retention,
}

/// Which bus to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusAddress {
    System,
    Session,
    /// A D-Bus address such as `unix:path=/run/dbus/system_bus_socket`.
    Address(String),
}

impl BusAddress {
    pub const ALLOWED: &'static str = "system, session, or a D-Bus address such as unix:path=/run/my-bus";

    pub fn parse(s: &str) -> Option<BusAddress> {
        let s = s.trim();
        Some(match s {
            "system" => BusAddress::System,
            "session" => BusAddress::Session,
            _ if s.contains(':') && s.split(':').next().is_some_and(|t| !t.is_empty()) => {
                BusAddress::Address(s.to_string())
            }
            _ => return None,
        })
    }
}

impl std::fmt::Display for BusAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusAddress::System => f.write_str("system"),
            BusAddress::Session => f.write_str("session"),
            BusAddress::Address(a) => f.write_str(a),
        }
    }
}

/// What the capture does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePolicy {
    /// Stop reading the bus until there is room: nothing is dropped here,
    /// but dbus-daemon buffers the backlog in its own memory.
    Block,
    /// Keep reading; count what does not fit and record it as a gap.
    Drop,
}

impl QueuePolicy {
    pub const ALLOWED: &'static str = "block, drop";

    pub fn parse(s: &str) -> Option<QueuePolicy> {
        match s.trim() {
            "block" => Some(QueuePolicy::Block),
            "drop" => Some(QueuePolicy::Drop),
            _ => None,
        }
    }
}

/// One include or exclude rule: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    /// signal, method_call, method_return or error
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) interface: Option<String>,
    pub(crate) member: Option<String>,
    /// Exact object path.
    pub(crate) path: Option<String>,
    /// Object path or anything below it.
    pub(crate) path_namespace: Option<String>,
    /// Unique name (`:1.42`) or a well-known name the sender owns.
    pub(crate) sender: Option<String>,
}

/// Live capture from a bus (`[bus]`).
#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    /// Record a bus at all (`op-dbus run --no-bus` turns it off).
    pub enabled: bool,
    pub address: BusAddress,
    pub signals: bool,
    pub method_calls: bool,
    pub method_returns: bool,
    pub errors: bool,
    pub include: Vec<MatchRule>,
    pub exclude: Vec<MatchRule>,
    pub queue_policy: QueuePolicy,
    /// Capture queue bound, in messages.
    pub queue_messages: usize,
    /// Capture queue bound, in bytes of message bodies.
    pub queue_bytes: usize,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

/// The op-dbus D-Bus service (`[service]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub enabled: bool,
    /// The bus to serve on; `None` means the recorded bus.
    pub address: Option<BusAddress>,
    /// Most `BlocksAppended` signals per second.
    pub signal_rate: u32,
    /// Groups the generated bus policy lets call `Submit`, and the read methods.
    pub submit_group: String,
    pub read_group: String,
}

/// Overrides from command-line flags.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) vector_level: Option<String>,
    pub(crate) max_batch: Option<i64>,
    pub(crate) max_wait_ms: Option<i64>,
    pub(crate) metrics_listen: Option<String>,
    pub(crate) no_metrics: bool,
    pub(crate) bus: Option<String>,
    pub(crate) no_bus: bool,
    pub(crate) no_service: bool,
}

/// The built-in defaults (`config/op-dbus.toml`, compiled in), checked once like any other layer.
static DEFAULT: LazyLock<Config> =
    LazyLock::new(|| Config::from_layers(&Layers::defaults(), None).expect("the built-in defaults are valid"));

impl Default for Config {
    fn default() -> Self {
        DEFAULT.clone()
    }
}

impl Default for VectorConfig {
    fn default() -> Self {
        DEFAULT.vector.clone()
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        DEFAULT.snapshot.clone()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        DEFAULT.bus.clone()
    }
}

impl Default for ProofConfig {
    fn default() -> Self {
        DEFAULT.proof.clone()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        DEFAULT.service.clone()
    }
}

impl Config {
    /// Loads the configuration. `file` is the `--config` path; without it
    /// `/etc/op-dbus/op-dbus.toml` is read if it exists. `env` looks up
    /// environment variables (a parameter so tests need not touch the process environment).
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let default_path = Path::new("/etc/op-dbus/op-dbus.toml");
        let mut layers = Layers::defaults();
        match file {
            Some(p) => layers.file::<File>(p)?,
            None if default_path.exists() => layers.file::<File>(default_path)?,
            None => {}
        }
        layers.env(env);
        layers.flags(flags);
        Config::from_layers(&layers, flags.state_dir.clone())
    }

    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.state_dir, self.cache_dir.as_deref())
    }

    /// `state_dir` is the `--state-dir` flag, which [`Layers::flags`] leaves out.
    fn from_layers(layers: &Layers, state_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
        let f: File = layers.resolve()?;
        let c = Check(layers);
        Ok(Config {
            state_dir: state_dir.unwrap_or(f.state_dir),
            cache_dir: f.cache_dir,
            vector_level: c.word("vector.level", &f.vector.level, VectorLevel::parse, VectorLevel::ALLOWED)?,
            model_dir: f.vector.model_dir,
            vector: VectorConfig {
                precision: c.word("vector.precision", &f.vector.precision, precision, "int8, fp32")?,
                threads: c.int("vector.threads", f.vector.threads, 1..=64)?,
                batch: c.int("vector.batch", f.vector.batch, 1..=1024)?,
                cache_entries: c.int("vector.cache_entries", f.vector.cache_entries, 0..=1 << 32)?,
            },
            max_batch: c.int("chain.max_batch", f.chain.max_batch, 1..=65_536)?,
            max_wait: Duration::from_millis(c.int("chain.max_wait_ms", f.chain.max_wait_ms, 0..=1000)?),
            segment_max_bytes: c.int::<u64>("chain.segment_max_mb", f.chain.segment_max_mb, 1..=4096)? << 20,
            max_data_bytes: c.int("input.max_data_bytes", f.input.max_data_bytes, 1024..=32 << 20)?,
            max_depth: c.int("input.max_depth", f.input.max_depth, 1..=100)?,
            index_sync_interval: Duration::from_millis(c.int(
                "index.sync_interval_ms",
                f.index.sync_interval_ms,
                10..=600_000,
            )?),
            shutdown_deadline: Duration::from_secs(c.int(
                "daemon.shutdown_deadline_s",
                f.daemon.shutdown_deadline_s,
                1..=3600,
            )?),
            metrics_enabled: f.metrics.enabled,
            metrics_listen: c.word(
                "metrics.listen",
                &f.metrics.listen,
                |s| s.parse().ok(),
                "an IP address and port, such as 127.0.0.1:9464",
            )?,
            bus: BusConfig {
                enabled: f.bus.enabled,
                address: c.word("bus.address", &f.bus.address, BusAddress::parse, BusAddress::ALLOWED)?,
                signals: f.bus.signals,
                method_calls: f.bus.method_calls,
                method_returns: f.bus.method_returns,
                errors: f.bus.errors,
                include: c.rules("bus.include", f.bus.include)?,
                exclude: c.rules("bus.exclude", f.bus.exclude)?,
                queue_policy: c.word(
                    "bus.queue_policy",
                    &f.bus.queue_policy,
                    QueuePolicy::parse,
                    QueuePolicy::ALLOWED,
                )?,
                queue_messages: c.int("bus.queue_messages", f.bus.queue_messages, 16..=16 << 20)?,
                queue_bytes: c.int::<usize>("bus.queue_mb", f.bus.queue_mb, 1..=4096)? << 20,
                reconnect_max: Duration::from_secs(c.int("bus.reconnect_max_s", f.bus.reconnect_max_s, 1..=3600)?),
            },
            service: ServiceConfig {
                enabled: f.service.enabled,
                // Empty means the recorded bus; from the environment, empty
                // was always an invalid address, and still is.
                address: match f.service.address.as_str() {
                    "" if !matches!(layers.origin("service.address"), Origin::Env(_)) => None,
                    a => Some(c.word("service.address", a, BusAddress::parse, BusAddress::ALLOWED)?),
                },
                signal_rate: c.int("service.signal_rate", f.service.signal_rate, 1..=1000)?,
                submit_group: c.group("service.submit_group", f.service.submit_group)?,
                read_group: c.group("service.read_group", f.service.read_group)?,
            },
            snapshot: SnapshotConfig {
                interval: c.word("snapshot.interval", &f.snapshot.interval, Interval::parse, Interval::ALLOWED)?,
                retention: Retention {
                    recent: c.int("snapshot.max_recent", f.snapshot.max_recent, 1..=100_000)?,
                    hourly: c.int("snapshot.hourly", f.snapshot.hourly, 0..=10_000)?,
                    daily: c.int("snapshot.daily", f.snapshot.daily, 0..=10_000)?,
                    weekly: c.int("snapshot.weekly", f.snapshot.weekly, 0..=10_000)?,
                },
            },
            replicas: c.replicas(f.replica)?,
            proof: ProofConfig {
                enabled: f.proof.enabled,
                origin: c.origin("proof.origin", f.proof.origin)?,
                checkpoint_interval: Duration::from_millis(c.int(
                    "proof.checkpoint_interval_ms",
                    f.proof.checkpoint_interval_ms,
                    10..=3_600_000,
                )?),
                auto_init: f.proof.auto_init,
                epoch_seconds: c.int("proof.epoch_seconds", f.proof.epoch_seconds, 1..=86_400)?,
                provision_hours: c.int("proof.provision_hours", f.proof.provision_hours, 1..=87_600)?,
                renew_warning: Duration::from_secs(
                    c.int::<u64>("proof.renew_warning_days", f.proof.renew_warning_days, 0..=3650)? * 86_400,
                ),
                witnesses: c.witnesses(f.witness)?,
            },
        })
    }
}

fn precision(s: &str) -> Option<Precision> {
    match s.trim().to_ascii_lowercase().as_str() {
        "int8" => Some(Precision::Int8),
        "fp32" => Some(Precision::Fp32),
        _ => None,
    }
}

/// The file's shape, which every layer shares. Numbers stay `i64` until
/// checked, so that an error quotes the value as it was given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: PathBuf,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    replica: Vec<ReplicaConfig>,
    #[serde(default)]
    witness: Vec<WitnessConfig>,
    proof: ProofSection,
    chain: ChainSection,
    vector: VectorSection,
    input: InputSection,
    index: IndexSection,
    metrics: MetricsSection,
    daemon: DaemonSection,
    bus: BusSection,
    service: ServiceSection,
    snapshot: SnapshotSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainSection {
    max_batch: i64,
    max_wait_ms: i64,
    segment_max_mb: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorSection {
    level: String,
    model_dir: PathBuf,
    precision: String,
    threads: i64,
    batch: i64,
    cache_entries: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    max_data_bytes: i64,
    max_depth: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexSection {
    sync_interval_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    enabled: bool,
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    shutdown_deadline_s: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BusSection {
    enabled: bool,
    address: String,
    signals: bool,
    method_calls: bool,
    method_returns: bool,
    errors: bool,
    #[serde(default)]
    include: Vec<MatchRule>,
    #[serde(default)]
    exclude: Vec<MatchRule>,
    queue_policy: String,
    queue_messages: i64,
    queue_mb: i64,
    reconnect_max_s: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    enabled: bool,
    address: String,
    signal_rate: i64,
    submit_group: String,
    read_group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofSection {
    enabled: bool,
    origin: String,
    checkpoint_interval_ms: i64,
    auto_init: bool,
    epoch_seconds: i64,
    provision_hours: i64,
    renew_warning_days: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotSection {
    interval: String,
    max_recent: i64,
    hourly: i64,
    daily: i64,
    weekly: i64,
}

/// What each kind of value allows, said the same way for every key; an
/// error names the layer the key's value came from.
struct Check<'a>(&'a Layers);

impl Check<'_> {
    fn invalid(&self, key: &'static str, value: impl Into<String>, allowed: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            value: value.into(),
            origin: self.0.origin(key).to_string(),
            allowed: allowed.into(),
        }
    }

    fn int<T: TryFrom<i64>>(&self, key: &'static str, v: i64, allowed: RangeInclusive<i64>) -> Result<T, ConfigError> {
        let (lo, hi) = (allowed.start(), allowed.end());
        let bad = || self.invalid(key, v.to_string(), format!("an integer from {lo} to {hi}"));
        if !allowed.contains(&v) {
            return Err(bad());
        }
        T::try_from(v).map_err(|_| bad())
    }

    fn word<T>(
        &self,
        key: &'static str,
        v: &str,
        parse: impl Fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Result<T, ConfigError> {
        parse(v).ok_or_else(|| self.invalid(key, v, allowed))
    }

    fn group(&self, key: &'static str, g: String) -> Result<String, ConfigError> {
        let ok = !g.is_empty()
            && g.len() <= 32
            && g.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            && !g.starts_with('-');
        if !ok {
            return Err(self.invalid(key, g, "a group name: letters, digits, _ and -"));
        }
        Ok(g)
    }

    fn rules(&self, key: &'static str, rules: Vec<MatchRule>) -> Result<Vec<MatchRule>, ConfigError> {
        for r in &rules {
            if let Some(k) = &r.kind {
                if !matches!(k.as_str(), "signal" | "method_call" | "method_return" | "error") {
                    return Err(self.invalid(key, k, "type = signal, method_call, method_return or error"));
                }
            }
            if *r == MatchRule::default() {
                let allowed = "a rule naming at least one of type, interface, member, path, path_namespace, sender";
                return Err(self.invalid(key, "{}", allowed));
            }
        }
        Ok(rules)
    }

    /// A checkpoint origin: empty (derived), or a signed-note key name of
    /// at most 255 bytes (no spaces, no `+`).
    fn origin(&self, key: &'static str, o: String) -> Result<String, ConfigError> {
        if !(o.is_empty() || o.len() <= 255 && crate::note::valid_key_name(&o)) {
            return Err(self.invalid(
                key,
                o,
                "empty (derived from the machine id), or a name without spaces or +, such as example.com/host42",
            ));
        }
        Ok(o)
    }

    fn witnesses(&self, ws: Vec<WitnessConfig>) -> Result<Vec<WitnessConfig>, ConfigError> {
        for w in &ws {
            if !w.url.starts_with("http://") || w.url.len() <= "http://".len() {
                return Err(self.invalid(
                    "witness.url",
                    &w.url,
                    "an http:// URL (a witness's answers are signed, so plain HTTP is safe)",
                ));
            }
            match crate::note::Verifier::parse_vkey(&w.key) {
                Ok(v) if v.alg() == crate::note::ALG_COSIGNATURE_V1 => {}
                _ => {
                    return Err(self.invalid(
                        "witness.key",
                        &w.key,
                        "a witness vkey: name+id+base64(0x04 ‖ Ed25519 public key), as `op-dbus witness` prints it",
                    ))
                }
            }
        }
        Ok(ws)
    }

    fn replicas(&self, replicas: Vec<ReplicaConfig>) -> Result<Vec<ReplicaConfig>, ConfigError> {
        for r in &replicas {
            let bad = |allowed: &str| self.invalid("replica", &r.name, allowed);
            if r.name.is_empty() || r.name.len() > 64 || r.name.chars().any(char::is_control) {
                return Err(bad("a name of 1 to 64 characters"));
            }
            let command = r.command.as_ref().map(|c| !c.is_empty());
            if r.dir.is_some() == (command == Some(true)) || command == Some(false) {
                return Err(bad("exactly one of dir (a folder on BTRFS) or command (a non-empty argument list)"));
            }
            if replicas.iter().filter(|o| o.name == r.name).count() > 1 {
                return Err(bad("a name no other replica has"));
            }
        }
        Ok(replicas)
    }
}

#[cfg(test)]
mod tests;
