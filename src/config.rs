//! Configuration: defaults, then the TOML file, then environment
//! variables, then command-line flags. Every value is checked once, here;
//! an invalid one stops start-up with a message naming the key, the value
//! and what is allowed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ml::VectorLevel;

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
    pub state_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub vector_level: VectorLevel,
    pub model_dir: PathBuf,
    pub vector: VectorConfig,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub segment_max_bytes: u64,
    pub max_data_bytes: usize,
    pub max_depth: usize,
    pub index_sync_interval: Duration,
    pub metrics_enabled: bool,
    pub metrics_listen: SocketAddr,
    pub shutdown_deadline: Duration,
    pub bus: BusConfig,
    pub service: ServiceConfig,
    pub snapshot: SnapshotConfig,
    pub replicas: Vec<crate::storage::replicate::ReplicaConfig>,
}

/// The ML vector levels (`[vector]`, beside `level` and `model_dir`).
#[derive(Clone, Debug, PartialEq)]
pub struct VectorConfig {
    /// `int8` (the dynamically quantized model files) or `fp32`.
    pub precision: crate::ml::Precision,
    /// ONNX Runtime threads for the vector worker.
    pub threads: usize,
    /// Texts embedded per model run (sorted by length first).
    pub batch: usize,
    /// Entries the embedding cache keeps (two generations of half each); 0: no cache.
    pub cache_entries: u64,
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig { precision: crate::ml::Precision::Int8, threads: 2, batch: 8, cache_entries: 1_000_000 }
    }
}

/// Snapshots (`[snapshot]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    pub interval: crate::storage::retention::Interval,
    pub retention: crate::storage::retention::Retention,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            interval: crate::storage::retention::Interval::Every(Duration::from_secs(15 * 60)),
            retention: Default::default(),
        }
    }
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
    pub kind: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    /// Exact object path.
    pub path: Option<String>,
    /// Object path or anything below it.
    pub path_namespace: Option<String>,
    /// Unique name (`:1.42`) or a well-known name the sender owns.
    pub sender: Option<String>,
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

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
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
        }
    }
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

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            enabled: true,
            address: None,
            signal_rate: 10,
            submit_group: "opdbus".into(),
            read_group: "opdbus-read".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/op-dbus"),
            cache_dir: None,
            vector_level: VectorLevel::Heuristic,
            model_dir: PathBuf::from("/var/lib/op-dbus/models"),
            vector: VectorConfig::default(),
            max_batch: 4096,
            max_wait: Duration::from_millis(1),
            segment_max_bytes: 64 << 20,
            max_data_bytes: 1 << 20,
            max_depth: 64,
            index_sync_interval: Duration::from_secs(1),
            metrics_enabled: true,
            metrics_listen: "127.0.0.1:9464".parse().expect("valid address"),
            shutdown_deadline: Duration::from_secs(30),
            bus: BusConfig::default(),
            service: ServiceConfig::default(),
            snapshot: SnapshotConfig::default(),
            replicas: Vec::new(),
        }
    }
}

/// The TOML file; every field optional so that the file overrides only what it names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    chain: ChainSection,
    #[serde(default)]
    vector: VectorSection,
    #[serde(default)]
    input: InputSection,
    #[serde(default)]
    index: IndexSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    bus: BusSection,
    #[serde(default)]
    service: ServiceSection,
    #[serde(default)]
    snapshot: SnapshotSection,
    #[serde(default)]
    replica: Vec<crate::storage::replicate::ReplicaConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotSection {
    interval: Option<String>,
    max_recent: Option<i64>,
    hourly: Option<i64>,
    daily: Option<i64>,
    weekly: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusSection {
    enabled: Option<bool>,
    address: Option<String>,
    signals: Option<bool>,
    method_calls: Option<bool>,
    method_returns: Option<bool>,
    errors: Option<bool>,
    include: Option<Vec<MatchRule>>,
    exclude: Option<Vec<MatchRule>>,
    queue_policy: Option<String>,
    queue_messages: Option<i64>,
    queue_mb: Option<i64>,
    reconnect_max_s: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    enabled: Option<bool>,
    address: Option<String>,
    signal_rate: Option<i64>,
    submit_group: Option<String>,
    read_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainSection {
    max_batch: Option<i64>,
    max_wait_ms: Option<i64>,
    segment_max_mb: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorSection {
    level: Option<String>,
    model_dir: Option<PathBuf>,
    precision: Option<String>,
    threads: Option<i64>,
    batch: Option<i64>,
    cache_entries: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    max_data_bytes: Option<i64>,
    max_depth: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexSection {
    sync_interval_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    shutdown_deadline_s: Option<i64>,
}

/// Overrides from command-line flags.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub vector_level: Option<String>,
    pub max_batch: Option<i64>,
    pub max_wait_ms: Option<i64>,
    pub metrics_listen: Option<String>,
    pub no_metrics: bool,
    pub bus: Option<String>,
    pub no_bus: bool,
    pub no_service: bool,
}

/// A value with where it came from, for error messages.
struct Src<T> {
    value: T,
    origin: String,
}

fn int_in(key: &'static str, v: Src<i64>, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if v.value < lo || v.value > hi {
        return Err(ConfigError::Invalid {
            key,
            value: v.value.to_string(),
            origin: v.origin,
            allowed: format!("an integer from {lo} to {hi}"),
        });
    }
    Ok(v.value)
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
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None if default_path.exists() => Some(default_path.to_path_buf()),
            None => None,
        };
        let fc = match &path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse { path: p.clone(), message: e.to_string().trim().to_string() })?
            }
            None => FileConfig::default(),
        };
        let file_origin = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut c = Config::default();

        // Layered lookups: flag, then env, then file.
        let pick_int = |key: &'static str,
                        flag: Option<i64>,
                        env_name: &'static str,
                        file_val: Option<i64>|
         -> Result<Option<Src<i64>>, ConfigError> {
            if let Some(v) = flag {
                return Ok(Some(Src { value: v, origin: "command line".into() }));
            }
            if let Some(s) = env(env_name) {
                let value = s.trim().parse::<i64>().map_err(|_| ConfigError::Invalid {
                    key,
                    value: s.clone(),
                    origin: format!("environment {env_name}"),
                    allowed: "an integer".into(),
                })?;
                return Ok(Some(Src { value, origin: format!("environment {env_name}") }));
            }
            Ok(file_val.map(|v| Src { value: v, origin: file_origin.clone() }))
        };

        if let Some(p) =
            flags.state_dir.clone().or_else(|| env("OP_DBUS_STATE_DIR").map(PathBuf::from)).or(fc.state_dir)
        {
            c.state_dir = p;
        }
        c.cache_dir = env("OPDBUS_CACHE_DIR").map(PathBuf::from).or(fc.cache_dir);
        if let Some(p) = env("OP_DBUS_MODEL_DIR").map(PathBuf::from).or(fc.vector.model_dir) {
            c.model_dir = p;
        }

        let level = match (&flags.vector_level, env("OP_DBUS_VECTOR_LEVEL"), &fc.vector.level) {
            (Some(v), _, _) => Some(Src { value: v.clone(), origin: "command line".into() }),
            (None, Some(v), _) => Some(Src { value: v, origin: "environment OP_DBUS_VECTOR_LEVEL".into() }),
            (None, None, Some(v)) => Some(Src { value: v.clone(), origin: file_origin.clone() }),
            _ => None,
        };
        if let Some(l) = level {
            c.vector_level = VectorLevel::parse(&l.value).ok_or(ConfigError::Invalid {
                key: "vector.level",
                value: l.value.clone(),
                origin: l.origin,
                allowed: VectorLevel::ALLOWED.into(),
            })?;
        }

        let precision = match (env("OP_DBUS_VECTOR_PRECISION"), &fc.vector.precision) {
            (Some(v), _) => Some(Src { value: v, origin: "environment OP_DBUS_VECTOR_PRECISION".into() }),
            (None, Some(v)) => Some(Src { value: v.clone(), origin: file_origin.clone() }),
            _ => None,
        };
        if let Some(p) = precision {
            c.vector.precision = match p.value.trim().to_ascii_lowercase().as_str() {
                "int8" => crate::ml::Precision::Int8,
                "fp32" => crate::ml::Precision::Fp32,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "vector.precision",
                        value: p.value,
                        origin: p.origin,
                        allowed: "int8, fp32".into(),
                    })
                }
            };
        }
        if let Some(v) = pick_int("vector.threads", None, "OP_DBUS_VECTOR_THREADS", fc.vector.threads)? {
            c.vector.threads = int_in("vector.threads", v, 1, 64)? as usize;
        }
        if let Some(v) = pick_int("vector.batch", None, "OP_DBUS_VECTOR_BATCH", fc.vector.batch)? {
            c.vector.batch = int_in("vector.batch", v, 1, 1024)? as usize;
        }
        if let Some(v) =
            pick_int("vector.cache_entries", None, "OP_DBUS_VECTOR_CACHE_ENTRIES", fc.vector.cache_entries)?
        {
            c.vector.cache_entries = int_in("vector.cache_entries", v, 0, 1 << 32)? as u64;
        }

        if let Some(v) = pick_int("chain.max_batch", flags.max_batch, "OP_DBUS_MAX_BATCH", fc.chain.max_batch)? {
            c.max_batch = int_in("chain.max_batch", v, 1, 65_536)? as usize;
        }
        if let Some(v) = pick_int("chain.max_wait_ms", flags.max_wait_ms, "OP_DBUS_MAX_WAIT_MS", fc.chain.max_wait_ms)?
        {
            c.max_wait = Duration::from_millis(int_in("chain.max_wait_ms", v, 0, 1000)? as u64);
        }
        if let Some(v) = pick_int("chain.segment_max_mb", None, "OP_DBUS_SEGMENT_MAX_MB", fc.chain.segment_max_mb)? {
            c.segment_max_bytes = (int_in("chain.segment_max_mb", v, 1, 4096)? as u64) << 20;
        }
        if let Some(v) = pick_int("input.max_data_bytes", None, "OP_DBUS_MAX_DATA_BYTES", fc.input.max_data_bytes)? {
            c.max_data_bytes = int_in("input.max_data_bytes", v, 1024, 32 << 20)? as usize;
        }
        if let Some(v) = pick_int("input.max_depth", None, "OP_DBUS_MAX_DEPTH", fc.input.max_depth)? {
            c.max_depth = int_in("input.max_depth", v, 1, 100)? as usize;
        }
        if let Some(v) = pick_int("index.sync_interval_ms", None, "OP_DBUS_INDEX_SYNC_MS", fc.index.sync_interval_ms)? {
            c.index_sync_interval = Duration::from_millis(int_in("index.sync_interval_ms", v, 10, 600_000)? as u64);
        }
        if let Some(v) =
            pick_int("daemon.shutdown_deadline_s", None, "OP_DBUS_SHUTDOWN_DEADLINE_S", fc.daemon.shutdown_deadline_s)?
        {
            c.shutdown_deadline = Duration::from_secs(int_in("daemon.shutdown_deadline_s", v, 1, 3600)? as u64);
        }

        if let Some(e) = fc.metrics.enabled {
            c.metrics_enabled = e;
        }
        if let Some(s) = env("OP_DBUS_METRICS") {
            c.metrics_enabled = match s.trim() {
                "1" | "true" | "on" => true,
                "0" | "false" | "off" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "metrics.enabled",
                        value: s,
                        origin: "environment OP_DBUS_METRICS".into(),
                        allowed: "true or false".into(),
                    })
                }
            };
        }
        if flags.no_metrics {
            c.metrics_enabled = false;
        }
        let listen = match (&flags.metrics_listen, env("OP_DBUS_METRICS_LISTEN"), &fc.metrics.listen) {
            (Some(v), _, _) => Some(Src { value: v.clone(), origin: "command line".into() }),
            (None, Some(v), _) => Some(Src { value: v, origin: "environment OP_DBUS_METRICS_LISTEN".into() }),
            (None, None, Some(v)) => Some(Src { value: v.clone(), origin: file_origin.clone() }),
            _ => None,
        };
        if let Some(l) = listen {
            c.metrics_listen = l.value.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics.listen",
                value: l.value.clone(),
                origin: l.origin,
                allowed: "an IP address and port, such as 127.0.0.1:9464".into(),
            })?;
        }
        c.bus = bus_config(&fc.bus, &env, flags, &file_origin, &pick_int)?;
        c.service = service_config(&fc.service, &env, flags, &file_origin, &pick_int)?;
        c.snapshot = snapshot_config(&fc.snapshot, &env, &file_origin, &pick_int)?;
        for r in &fc.replica {
            let ok_source = r.dir.is_some() != r.command.as_ref().is_some_and(|c| !c.is_empty())
                && r.command.as_ref().is_none_or(|c| !c.is_empty());
            let bad = |allowed: &str| ConfigError::Invalid {
                key: "replica",
                value: r.name.clone(),
                origin: file_origin.clone(),
                allowed: allowed.into(),
            };
            if r.name.is_empty() || r.name.len() > 64 || r.name.chars().any(char::is_control) {
                return Err(bad("a name of 1 to 64 characters"));
            }
            if !ok_source {
                return Err(bad("exactly one of dir (a folder on BTRFS) or command (a non-empty argument list)"));
            }
            if fc.replica.iter().filter(|o| o.name == r.name).count() > 1 {
                return Err(bad("a name no other replica has"));
            }
        }
        c.replicas = fc.replica.clone();
        Ok(c)
    }

    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.state_dir, self.cache_dir.as_deref())
    }
}

type PickInt<'a> =
    dyn Fn(&'static str, Option<i64>, &'static str, Option<i64>) -> Result<Option<Src<i64>>, ConfigError> + 'a;

/// A string from flag, env or file, with its origin.
fn pick_str(
    flag: Option<&String>,
    env: Option<(String, &str)>,
    file: Option<&String>,
    file_origin: &str,
) -> Option<Src<String>> {
    if let Some(v) = flag {
        return Some(Src { value: v.clone(), origin: "command line".into() });
    }
    if let Some((v, name)) = env {
        return Some(Src { value: v, origin: format!("environment {name}") });
    }
    file.map(|v| Src { value: v.clone(), origin: file_origin.to_string() })
}

fn bus_address(key: &'static str, v: Src<String>) -> Result<BusAddress, ConfigError> {
    BusAddress::parse(&v.value).ok_or(ConfigError::Invalid {
        key,
        value: v.value,
        origin: v.origin,
        allowed: BusAddress::ALLOWED.into(),
    })
}

fn check_rules(key: &'static str, rules: &[MatchRule], origin: &str) -> Result<(), ConfigError> {
    for r in rules {
        if let Some(k) = &r.kind {
            if !matches!(k.as_str(), "signal" | "method_call" | "method_return" | "error") {
                return Err(ConfigError::Invalid {
                    key,
                    value: k.clone(),
                    origin: origin.to_string(),
                    allowed: "type = signal, method_call, method_return or error".into(),
                });
            }
        }
        if *r == MatchRule::default() {
            return Err(ConfigError::Invalid {
                key,
                value: "{}".into(),
                origin: origin.to_string(),
                allowed: "a rule naming at least one of type, interface, member, path, path_namespace, sender".into(),
            });
        }
    }
    Ok(())
}

fn bus_config(
    f: &BusSection,
    env: &impl Fn(&str) -> Option<String>,
    flags: &Overrides,
    file_origin: &str,
    pick_int: &PickInt<'_>,
) -> Result<BusConfig, ConfigError> {
    let mut b = BusConfig::default();
    if let Some(e) = f.enabled {
        b.enabled = e;
    }
    if flags.no_bus {
        b.enabled = false;
    }
    if let Some(v) =
        pick_str(flags.bus.as_ref(), env("OP_DBUS_BUS").map(|v| (v, "OP_DBUS_BUS")), f.address.as_ref(), file_origin)
    {
        b.address = bus_address("bus.address", v)?;
    }
    b.signals = f.signals.unwrap_or(b.signals);
    b.method_calls = f.method_calls.unwrap_or(b.method_calls);
    b.method_returns = f.method_returns.unwrap_or(b.method_returns);
    b.errors = f.errors.unwrap_or(b.errors);
    if let Some(r) = &f.include {
        check_rules("bus.include", r, file_origin)?;
        b.include = r.clone();
    }
    if let Some(r) = &f.exclude {
        check_rules("bus.exclude", r, file_origin)?;
        b.exclude = r.clone();
    }
    if let Some(v) = pick_str(
        None,
        env("OP_DBUS_QUEUE_POLICY").map(|v| (v, "OP_DBUS_QUEUE_POLICY")),
        f.queue_policy.as_ref(),
        file_origin,
    ) {
        b.queue_policy = QueuePolicy::parse(&v.value).ok_or(ConfigError::Invalid {
            key: "bus.queue_policy",
            value: v.value,
            origin: v.origin,
            allowed: QueuePolicy::ALLOWED.into(),
        })?;
    }
    if let Some(v) = pick_int("bus.queue_messages", None, "OP_DBUS_QUEUE_MESSAGES", f.queue_messages)? {
        b.queue_messages = int_in("bus.queue_messages", v, 16, 16 << 20)? as usize;
    }
    if let Some(v) = pick_int("bus.queue_mb", None, "OP_DBUS_QUEUE_MB", f.queue_mb)? {
        b.queue_bytes = (int_in("bus.queue_mb", v, 1, 4096)? as usize) << 20;
    }
    if let Some(v) = pick_int("bus.reconnect_max_s", None, "OP_DBUS_RECONNECT_MAX_S", f.reconnect_max_s)? {
        b.reconnect_max = Duration::from_secs(int_in("bus.reconnect_max_s", v, 1, 3600)? as u64);
    }
    Ok(b)
}

fn snapshot_config(
    f: &SnapshotSection,
    env: &impl Fn(&str) -> Option<String>,
    file_origin: &str,
    pick_int: &PickInt<'_>,
) -> Result<SnapshotConfig, ConfigError> {
    use crate::storage::retention::Interval;
    let mut s = SnapshotConfig::default();
    if let Some(v) = pick_str(
        None,
        env("OPDBUS_SNAPSHOT_INTERVAL").map(|v| (v, "OPDBUS_SNAPSHOT_INTERVAL")),
        f.interval.as_ref(),
        file_origin,
    ) {
        s.interval = Interval::parse(&v.value).ok_or(ConfigError::Invalid {
            key: "snapshot.interval",
            value: v.value,
            origin: v.origin,
            allowed: Interval::ALLOWED.into(),
        })?;
    }
    if let Some(v) = pick_int("snapshot.max_recent", None, "OPDBUS_MAX_CACHE_SNAPSHOTS", f.max_recent)? {
        s.retention.recent = int_in("snapshot.max_recent", v, 1, 100_000)? as usize;
    }
    for (key, val, slot) in [
        ("snapshot.hourly", f.hourly, &mut s.retention.hourly),
        ("snapshot.daily", f.daily, &mut s.retention.daily),
        ("snapshot.weekly", f.weekly, &mut s.retention.weekly),
    ] {
        if let Some(v) = val {
            *slot = int_in(key, Src { value: v, origin: file_origin.to_string() }, 0, 10_000)? as usize;
        }
    }
    Ok(s)
}

fn service_config(
    f: &ServiceSection,
    env: &impl Fn(&str) -> Option<String>,
    flags: &Overrides,
    file_origin: &str,
    pick_int: &PickInt<'_>,
) -> Result<ServiceConfig, ConfigError> {
    let mut s = ServiceConfig::default();
    if let Some(e) = f.enabled {
        s.enabled = e;
    }
    if flags.no_service {
        s.enabled = false;
    }
    if let Some(v) = pick_str(
        None,
        env("OP_DBUS_SERVICE_BUS").map(|v| (v, "OP_DBUS_SERVICE_BUS")),
        f.address.as_ref().filter(|a| !a.is_empty()),
        file_origin,
    ) {
        s.address = Some(bus_address("service.address", v)?);
    }
    if let Some(v) = pick_int("service.signal_rate", None, "OP_DBUS_SIGNAL_RATE", f.signal_rate)? {
        s.signal_rate = int_in("service.signal_rate", v, 1, 1000)? as u32;
    }
    for (key, val, slot) in [
        ("service.submit_group", &f.submit_group, &mut s.submit_group),
        ("service.read_group", &f.read_group, &mut s.read_group),
    ] {
        if let Some(g) = val {
            let ok = !g.is_empty()
                && g.len() <= 32
                && g.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                && !g.starts_with('-');
            if !ok {
                return Err(ConfigError::Invalid {
                    key,
                    value: g.clone(),
                    origin: file_origin.to_string(),
                    allowed: "a group name: letters, digits, _ and -".into(),
                });
            }
            *slot = g.clone();
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(toml: Option<&str>, env: &[(&str, &str)], flags: Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        if let Some(t) = toml {
            std::fs::write(&path, t).unwrap();
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(toml.map(|_| path.as_path()), |k| env.get(k).cloned(), &flags)
    }

    #[test]
    fn shipped_default_file_parses_to_the_defaults() {
        let text = include_str!("../config/op-dbus.toml");
        let c = load(Some(text), &[], Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
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
    }
}
