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
mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    fn load(toml: Option<&str>, env: &[(&str, &str)], flags: Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        if let Some(t) = toml {
            std::fs::write(&path, t).unwrap();
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(toml.map(|_| path.as_path()), |k| env.get(k).cloned(), &flags)
    }

    /// The error of a load, with the temporary file's path written FILE.
    fn message(toml: Option<&str>, env: &[(&str, &str)], flags: Overrides) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        if let Some(t) = toml {
            std::fs::write(&path, t).unwrap();
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let e = Config::load(toml.map(|_| path.as_path()), |k| env.get(k).cloned(), &flags).unwrap_err();
        e.to_string().replace(&path.display().to_string(), "FILE")
    }

    #[test]
    fn shipped_default_file_parses_to_the_defaults() {
        let text = include_str!("../../config/op-dbus.toml");
        let c = load(Some(text), &[], Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    /// The defaults as they were written out before they became a layer.
    #[test]
    fn defaults_are_the_documented_values() {
        let want = Config {
            state_dir: PathBuf::from("/var/lib/op-dbus"),
            cache_dir: None,
            vector_level: VectorLevel::Heuristic,
            model_dir: PathBuf::from("/var/lib/op-dbus/models"),
            vector: VectorConfig { precision: Precision::Int8, threads: 2, batch: 8, cache_entries: 1_000_000 },
            max_batch: 4096,
            max_wait: Duration::from_millis(1),
            segment_max_bytes: 64 << 20,
            max_data_bytes: 1 << 20,
            max_depth: 64,
            index_sync_interval: Duration::from_secs(1),
            metrics_enabled: true,
            metrics_listen: "127.0.0.1:9464".parse().unwrap(),
            shutdown_deadline: Duration::from_secs(30),
            bus: BusConfig {
                enabled: true,
                address: BusAddress::System,
                signals: true,
                method_calls: false,
                method_returns: false,
                errors: false,
                include: Vec::new(),
                exclude: Vec::new(),
                queue_policy: QueuePolicy::Drop,
                queue_messages: 65_536,
                queue_bytes: 64 << 20,
                reconnect_max: Duration::from_secs(10),
            },
            service: ServiceConfig {
                enabled: true,
                address: None,
                signal_rate: 10,
                submit_group: "opdbus".into(),
                read_group: "opdbus-read".into(),
            },
            snapshot: SnapshotConfig {
                interval: Interval::Every(Duration::from_secs(15 * 60)),
                retention: Retention::default(),
            },
            replicas: Vec::new(),
        };
        assert_eq!(Config::default(), want);
        assert_eq!(load(None, &[], Overrides::default()).unwrap(), want);
        assert_eq!(
            (BusConfig::default(), ServiceConfig::default(), VectorConfig::default(), SnapshotConfig::default()),
            (want.bus, want.service, want.vector, want.snapshot)
        );
    }

    /// Every environment variable is documented where the keys are.
    #[test]
    fn every_variable_is_in_the_documented_file() {
        let text = include_str!("../../config/op-dbus.toml");
        for (name, _) in layers::ENV {
            assert!(text.contains(name), "{name} is not in config/op-dbus.toml");
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let toml = "[chain]\nmax_batch = 10\n[vector]\nlevel = \"none\"\n";
        assert_eq!(load(Some(toml), &[], Overrides::default()).unwrap().max_batch, 10);
        let env = [("OP_DBUS_MAX_BATCH", "20"), ("OP_DBUS_VECTOR_LEVEL", "heuristic")];
        let c = load(Some(toml), &env, Overrides::default()).unwrap();
        assert_eq!((c.max_batch, c.vector_level), (20, VectorLevel::Heuristic));
        let c = load(Some(toml), &env, Overrides { max_batch: Some(30), ..Default::default() }).unwrap();
        assert_eq!(c.max_batch, 30);
    }

    /// One key set by the file, the environment and a flag: the last layer
    /// wins, and an invalid value names the layer it came from.
    #[test]
    fn the_last_layer_wins_and_is_named() {
        let file = "state_dir = \"/file\"\n[chain]\nmax_wait_ms = 5\n[metrics]\nlisten = \"127.0.0.1:1\"\n";
        let env =
            [("OP_DBUS_STATE_DIR", "/env"), ("OP_DBUS_MAX_WAIT_MS", "6"), ("OP_DBUS_METRICS_LISTEN", "127.0.0.1:2")];
        let flags = || Overrides {
            state_dir: Some("/flag".into()),
            max_wait_ms: Some(7),
            metrics_listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let got = |c: Config| (c.state_dir, c.max_wait.as_millis(), c.metrics_listen.port());
        assert_eq!(got(load(Some(file), &[], Overrides::default()).unwrap()), ("/file".into(), 5, 1));
        assert_eq!(got(load(Some(file), &env, Overrides::default()).unwrap()), ("/env".into(), 6, 2));
        assert_eq!(got(load(Some(file), &env, flags()).unwrap()), ("/flag".into(), 7, 3));

        let bad_file = "[chain]\nmax_wait_ms = 2000\n";
        let allowed = "allowed: an integer from 0 to 1000";
        assert_eq!(
            message(Some(bad_file), &[], Overrides::default()),
            format!("invalid chain.max_wait_ms = \"2000\" (from FILE): {allowed}")
        );
        assert_eq!(
            message(Some(file), &[("OP_DBUS_MAX_WAIT_MS", "3000")], Overrides::default()),
            format!("invalid chain.max_wait_ms = \"3000\" (from environment OP_DBUS_MAX_WAIT_MS): {allowed}")
        );
        assert_eq!(
            message(
                Some(bad_file),
                &[("OP_DBUS_MAX_WAIT_MS", "6")],
                Overrides { max_wait_ms: Some(4000), ..Default::default() }
            ),
            format!("invalid chain.max_wait_ms = \"4000\" (from command line): {allowed}")
        );
        // A later layer's valid value covers an earlier invalid one.
        let c = load(Some(bad_file), &[("OP_DBUS_MAX_WAIT_MS", "6")], Overrides::default()).unwrap();
        assert_eq!(c.max_wait, Duration::from_millis(6));
    }

    /// An environment value is read only if it is the one that counts.
    #[test]
    fn a_flag_hides_an_unreadable_variable() {
        let env = [("OP_DBUS_MAX_BATCH", "lots"), ("OP_DBUS_VECTOR_LEVEL", "ultra")];
        let flags = Overrides { max_batch: Some(9), vector_level: Some("none".into()), ..Default::default() };
        let c = load(None, &env, flags).unwrap();
        assert_eq!((c.max_batch, c.vector_level), (9, VectorLevel::None));
    }

    #[test]
    fn switches_from_each_layer() {
        for (word, on) in [("1", true), (" true", true), ("on", true), ("0", false), ("false ", false), ("off", false)]
        {
            let c = load(Some("[metrics]\nenabled = false\n"), &[("OP_DBUS_METRICS", word)], Overrides::default());
            assert_eq!(c.unwrap().metrics_enabled, on, "{word:?}");
        }
        let all_off = Overrides { no_metrics: true, no_bus: true, no_service: true, ..Default::default() };
        let c = load(None, &[("OP_DBUS_METRICS", "true")], all_off).unwrap();
        assert_eq!((c.metrics_enabled, c.bus.enabled, c.service.enabled), (false, false, false));
        let c = load(Some("[bus]\nenabled = false\nmethod_calls = true\n"), &[], Overrides::default()).unwrap();
        assert_eq!((c.bus.enabled, c.bus.method_calls), (false, true));
    }

    #[test]
    fn invalid_values_name_key_value_and_allowed() {
        let e = load(None, &[("OP_DBUS_VECTOR_LEVEL", "huge")], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("vector.level") && e.contains("huge") && e.contains("none, heuristic"), "{e}");
        let e = load(Some("[chain]\nmax_batch = 0\n"), &[], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("chain.max_batch") && e.contains("\"0\"") && e.contains("1 to 65536"), "{e}");
        let e = load(None, &[("OP_DBUS_MAX_WAIT_MS", "soon")], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("chain.max_wait_ms") && e.contains("soon"), "{e}");
        let e = load(Some("[chain]\nmax_btach = 3\n"), &[], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("max_btach"), "{e}");
        let e = load(None, &[], Overrides { metrics_listen: Some("nowhere".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.listen") && e.contains("command line"), "{e}");
    }

    /// The exact words of each invalid-value message, from each layer a key can come from.
    #[test]
    fn invalid_value_messages_word_for_word() {
        const ADDRESS: &str = "system, session, or a D-Bus address such as unix:path=/run/my-bus";
        const LISTEN: &str = "an IP address and port, such as 127.0.0.1:9464";
        const GROUP: &str = "a group name: letters, digits, _ and -";
        const SOURCE: &str = "exactly one of dir (a folder on BTRFS) or command (a non-empty argument list)";
        let range = |key: &str, v: &str, from: &str, lo: i64, hi: i64| {
            format!("invalid {key} = {v:?} (from {from}): allowed: an integer from {lo} to {hi}")
        };
        let word = |key: &str, v: &str, from: &str, allowed: &str| {
            format!("invalid {key} = {v:?} (from {from}): allowed: {allowed}")
        };

        let file = [
            ("[chain]\nmax_batch = 0", range("chain.max_batch", "0", "FILE", 1, 65_536)),
            ("[chain]\nsegment_max_mb = 4097", range("chain.segment_max_mb", "4097", "FILE", 1, 4096)),
            ("[vector]\nprecision = \"fp16\"", word("vector.precision", "fp16", "FILE", "int8, fp32")),
            ("[vector]\nthreads = 65", range("vector.threads", "65", "FILE", 1, 64)),
            ("[vector]\ncache_entries = -1", range("vector.cache_entries", "-1", "FILE", 0, 1 << 32)),
            ("[input]\nmax_data_bytes = 1023", range("input.max_data_bytes", "1023", "FILE", 1024, 32 << 20)),
            ("[index]\nsync_interval_ms = 9", range("index.sync_interval_ms", "9", "FILE", 10, 600_000)),
            ("[metrics]\nlisten = \"127.0.0.1\"", word("metrics.listen", "127.0.0.1", "FILE", LISTEN)),
            ("[bus]\nqueue_messages = 15", range("bus.queue_messages", "15", "FILE", 16, 16 << 20)),
            ("[bus]\nreconnect_max_s = 3601", range("bus.reconnect_max_s", "3601", "FILE", 1, 3600)),
            (
                "[[bus.include]]\ntype = \"sig\"",
                word("bus.include", "sig", "FILE", "type = signal, method_call, method_return or error"),
            ),
            (
                "[[bus.exclude]]",
                word(
                    "bus.exclude",
                    "{}",
                    "FILE",
                    "a rule naming at least one of type, interface, member, path, path_namespace, sender",
                ),
            ),
            ("[service]\naddress = \"nowhere\"", word("service.address", "nowhere", "FILE", ADDRESS)),
            ("[service]\nsubmit_group = \"a b\"", word("service.submit_group", "a b", "FILE", GROUP)),
            ("[service]\nread_group = \"-x\"", word("service.read_group", "-x", "FILE", GROUP)),
            ("[snapshot]\nhourly = -1", range("snapshot.hourly", "-1", "FILE", 0, 10_000)),
            ("[snapshot]\nweekly = 10001", range("snapshot.weekly", "10001", "FILE", 0, 10_000)),
            ("[[replica]]\nname = \"\"\ndir = \"/x\"", word("replica", "", "FILE", "a name of 1 to 64 characters")),
            ("[[replica]]\nname = \"r\"\ndir = \"/x\"\ncommand = [\"c\"]", word("replica", "r", "FILE", SOURCE)),
            ("[[replica]]\nname = \"r\"\ncommand = []", word("replica", "r", "FILE", SOURCE)),
            (
                "[[replica]]\nname = \"r\"\ndir = \"/x\"\n[[replica]]\nname = \"r\"\ndir = \"/y\"",
                word("replica", "r", "FILE", "a name no other replica has"),
            ),
        ];
        for (toml, want) in file {
            assert_eq!(message(Some(toml), &[], Overrides::default()), want);
        }

        let env = |name: &str| format!("environment {name}");
        let envs = [
            ("OP_DBUS_MAX_BATCH", "70000", range("chain.max_batch", "70000", &env("OP_DBUS_MAX_BATCH"), 1, 65_536)),
            (
                "OP_DBUS_MAX_WAIT_MS",
                " soon",
                word("chain.max_wait_ms", " soon", &env("OP_DBUS_MAX_WAIT_MS"), "an integer"),
            ),
            // Read trimmed, quoted as read.
            ("OP_DBUS_MAX_WAIT_MS", " 1001 ", range("chain.max_wait_ms", "1001", &env("OP_DBUS_MAX_WAIT_MS"), 0, 1000)),
            (
                "OP_DBUS_VECTOR_LEVEL",
                "huge",
                word("vector.level", "huge", &env("OP_DBUS_VECTOR_LEVEL"), "none, heuristic, low, medium, high"),
            ),
            ("OP_DBUS_VECTOR_BATCH", "0", range("vector.batch", "0", &env("OP_DBUS_VECTOR_BATCH"), 1, 1024)),
            ("OP_DBUS_MAX_DEPTH", "101", range("input.max_depth", "101", &env("OP_DBUS_MAX_DEPTH"), 1, 100)),
            (
                "OP_DBUS_SHUTDOWN_DEADLINE_S",
                "0",
                range("daemon.shutdown_deadline_s", "0", &env("OP_DBUS_SHUTDOWN_DEADLINE_S"), 1, 3600),
            ),
            ("OP_DBUS_METRICS", "yes", word("metrics.enabled", "yes", &env("OP_DBUS_METRICS"), "true or false")),
            ("OP_DBUS_BUS", "nowhere", word("bus.address", "nowhere", &env("OP_DBUS_BUS"), ADDRESS)),
            (
                "OP_DBUS_QUEUE_POLICY",
                "maybe",
                word("bus.queue_policy", "maybe", &env("OP_DBUS_QUEUE_POLICY"), "block, drop"),
            ),
            ("OP_DBUS_QUEUE_MB", "0", range("bus.queue_mb", "0", &env("OP_DBUS_QUEUE_MB"), 1, 4096)),
            // Empty in the file means the recorded bus; from the environment it never did.
            ("OP_DBUS_SERVICE_BUS", "", word("service.address", "", &env("OP_DBUS_SERVICE_BUS"), ADDRESS)),
            ("OP_DBUS_SIGNAL_RATE", "1001", range("service.signal_rate", "1001", &env("OP_DBUS_SIGNAL_RATE"), 1, 1000)),
            (
                "OPDBUS_SNAPSHOT_INTERVAL",
                "2min",
                word("snapshot.interval", "2min", &env("OPDBUS_SNAPSHOT_INTERVAL"), Interval::ALLOWED),
            ),
            (
                "OPDBUS_MAX_CACHE_SNAPSHOTS",
                "0",
                range("snapshot.max_recent", "0", &env("OPDBUS_MAX_CACHE_SNAPSHOTS"), 1, 100_000),
            ),
        ];
        for (name, value, want) in envs {
            assert_eq!(message(None, &[(name, value)], Overrides::default()), want);
        }

        let flags = [
            (
                Overrides { max_batch: Some(-1), ..Default::default() },
                range("chain.max_batch", "-1", "command line", 1, 65_536),
            ),
            (
                Overrides { metrics_listen: Some("nowhere".into()), ..Default::default() },
                word("metrics.listen", "nowhere", "command line", LISTEN),
            ),
            (
                Overrides { bus: Some(":x".into()), ..Default::default() },
                word("bus.address", ":x", "command line", ADDRESS),
            ),
        ];
        for (flags, want) in flags {
            assert_eq!(message(None, &[], flags), want);
        }

        // And one spelled out in full, so that the format itself is pinned.
        assert_eq!(
            message(Some("[chain]\nmax_batch = 0\n"), &[], Overrides::default()),
            r#"invalid chain.max_batch = "0" (from FILE): allowed: an integer from 1 to 65536"#
        );
    }

    /// Keys the file does not know, and values of the wrong type, are
    /// errors naming the file and where in it.
    #[test]
    fn unknown_keys_and_wrong_types_in_the_file() {
        for (toml, words) in [
            ("stat_dir = \"/x\"\n", &["unknown field `stat_dir`", "`state_dir`"][..]),
            ("[chain]\nmax_btach = 3\n", &["unknown field `max_btach`", "`max_batch`", "in `chain`"]),
            ("[chian]\nmax_batch = 3\n", &["unknown field `chian`", "`chain`"]),
            ("[[bus.include]]\niface = \"a\"\n", &["unknown field `iface`", "`interface`", "in `bus.include`"]),
            ("[[replica]]\nname = \"r\"\ndir = \"/x\"\nzip = true\n", &["unknown field `zip`", "in `replica`"]),
            ("[chain]\nmax_batch = \"10\"\n", &["invalid type: string \"10\", expected i64", "in `chain.max_batch`"]),
            ("[metrics]\nenabled = 1\n", &["invalid type: integer `1`, expected a boolean", "in `metrics.enabled`"]),
            ("chain = 5\n", &["invalid type", "in `chain`"]),
        ] {
            let e = message(Some(toml), &[], Overrides::default());
            assert!(e.starts_with("config file FILE: "), "{e}");
            for w in words {
                assert!(e.contains(w), "{toml:?}: {e:?} lacks {w:?}");
            }
        }
        let e = message(Some("[chain\n"), &[], Overrides::default());
        assert!(e.starts_with("config file FILE: TOML parse error at line 1"), "{e}");
        let e = Config::load(Some(Path::new("/no/such/op-dbus.toml")), |_| None, &Overrides::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot read config file /no/such/op-dbus.toml: "), "{e}");
    }

    #[test]
    fn bus_and_service_settings() {
        let toml =
            "[bus]\naddress = \"unix:path=/tmp/x\"\nqueue_policy = \"block\"\n[[bus.exclude]]\ninterface = \"a.b\"\n";
        let c = load(Some(toml), &[], Overrides::default()).unwrap();
        assert_eq!(c.bus.address, BusAddress::Address("unix:path=/tmp/x".into()));
        assert_eq!(c.bus.queue_policy, QueuePolicy::Block);
        assert_eq!(c.bus.exclude[0].interface.as_deref(), Some("a.b"));
        let c = load(
            Some(toml),
            &[("OP_DBUS_BUS", "session")],
            Overrides { bus: Some("system".into()), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.bus.address, BusAddress::System);
        let e = load(None, &[("OP_DBUS_BUS", "nowhere")], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("bus.address") && e.contains("nowhere") && e.contains("OP_DBUS_BUS"), "{e}");
        let e = load(None, &[("OP_DBUS_QUEUE_POLICY", "maybe")], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("bus.queue_policy") && e.contains("block, drop"), "{e}");
        let e = load(Some("[[bus.include]]\ntype = \"sig\"\n"), &[], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("bus.include") && e.contains("method_call"), "{e}");
        let e = load(Some("[service]\nsubmit_group = \"a b\"\n"), &[], Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("service.submit_group"), "{e}");

        let c = load(Some("[service]\naddress = \"session\"\n"), &[], Overrides::default()).unwrap();
        assert_eq!(c.service.address, Some(BusAddress::Session));
        let c = load(
            Some("[service]\naddress = \"session\"\n"),
            &[("OP_DBUS_SERVICE_BUS", "system")],
            Overrides::default(),
        );
        assert_eq!(c.unwrap().service.address, Some(BusAddress::System));
        let toml = "cache_dir = \"/c\"\n[[replica]]\nname = \"a\"\ncommand = [\"cat\"]\n[[replica]]\nname = \"b\"\ndir = \"/b\"\n";
        let c = load(Some(toml), &[("OPDBUS_SNAPSHOT_INTERVAL", "per-op")], Overrides::default()).unwrap();
        assert_eq!(c.cache_dir, Some("/c".into()));
        assert_eq!(c.replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.snapshot.interval, Interval::PerOp);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Each integer variable sets the key it is listed with: any value
        /// is accepted exactly when it is in that key's range, and a refusal
        /// names the key and the variable.
        #[test]
        fn each_integer_variable_sets_its_key(i in 0..layers::ENV.len(), v in prop_oneof![-10i64..70_000, any::<i64>()]) {
            let (name, key) = layers::ENV[i];
            let Err(ConfigError::Invalid { key: k, allowed, .. }) = load(None, &[(name, "x")], Overrides::default()) else {
                return Ok(()); // not an integer key: text is taken as it is
            };
            prop_assert_eq!(k, key);
            if allowed != "an integer" {
                return Ok(()); // a switch
            }
            let Err(ConfigError::Invalid { allowed, .. }) = load(None, &[(name, &i64::MIN.to_string())], Overrides::default()) else {
                panic!("{name}: i64::MIN accepted");
            };
            let range = allowed.strip_prefix("an integer from ").expect("a range");
            let (lo, hi) = range.split_once(" to ").unwrap();
            let (lo, hi): (i64, i64) = (lo.parse().unwrap(), hi.parse().unwrap());
            match load(None, &[(name, &v.to_string())], Overrides::default()) {
                Ok(_) => prop_assert!((lo..=hi).contains(&v), "{name} = {v} accepted, range {lo}..={hi}"),
                Err(ConfigError::Invalid { key: k, value, origin, .. }) => {
                    prop_assert!(!(lo..=hi).contains(&v));
                    prop_assert_eq!((k, value, origin), (key, v.to_string(), format!("environment {name}")));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        /// Whichever layers set a key, the last one's value is the result.
        #[test]
        fn the_last_layer_that_sets_a_key_wins(
            file in proptest::option::of(1i64..=65_536),
            env in proptest::option::of(1i64..=65_536),
            flag in proptest::option::of(1i64..=65_536),
        ) {
            let toml = file.map(|v| format!("[chain]\nmax_batch = {v}\n"));
            let env_text = env.map(|v| v.to_string());
            let env: Vec<(&str, &str)> = env_text.iter().map(|v| ("OP_DBUS_MAX_BATCH", v.as_str())).collect();
            let c = load(toml.as_deref(), &env, Overrides { max_batch: flag, ..Default::default() }).unwrap();
            let want = flag.or(env_text.map(|v| v.parse().unwrap())).or(file).unwrap_or(4096);
            prop_assert_eq!(c.max_batch as i64, want);
        }
    }
}
