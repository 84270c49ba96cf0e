//! The one layering mechanism. Each layer (the built-in defaults, the
//! file, the environment, the flags) is a TOML table merged over the ones
//! before it, and every key it sets remembers that layer as its origin.
//! The merged tree is deserialized once, into the file's typed sections.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::{ConfigError, Overrides};

/// The built-in defaults: the documented file itself.
const DEFAULTS: &str = include_str!("../../config/op-dbus.toml");

/// Each environment variable and the key it sets. Its value is read as the
/// type of the key's default: an integer, a switch (1/true/on, 0/false/off),
/// or else the text as it is.
pub(super) const ENV: &[(&str, &str)] = &[
    ("OP_DBUS_STATE_DIR", "state_dir"),
    ("OPDBUS_CACHE_DIR", "cache_dir"),
    ("OP_DBUS_VECTOR_LEVEL", "vector.level"),
    ("OP_DBUS_MODEL_DIR", "vector.model_dir"),
    ("OP_DBUS_VECTOR_PRECISION", "vector.precision"),
    ("OP_DBUS_VECTOR_THREADS", "vector.threads"),
    ("OP_DBUS_VECTOR_BATCH", "vector.batch"),
    ("OP_DBUS_VECTOR_CACHE_ENTRIES", "vector.cache_entries"),
    ("OP_DBUS_MAX_BATCH", "chain.max_batch"),
    ("OP_DBUS_MAX_WAIT_MS", "chain.max_wait_ms"),
    ("OP_DBUS_SEGMENT_MAX_MB", "chain.segment_max_mb"),
    ("OP_DBUS_MAX_DATA_BYTES", "input.max_data_bytes"),
    ("OP_DBUS_MAX_DEPTH", "input.max_depth"),
    ("OP_DBUS_INDEX_SYNC_MS", "index.sync_interval_ms"),
    ("OP_DBUS_SHUTDOWN_DEADLINE_S", "daemon.shutdown_deadline_s"),
    ("OP_DBUS_METRICS", "metrics.enabled"),
    ("OP_DBUS_METRICS_LISTEN", "metrics.listen"),
    ("OP_DBUS_BUS", "bus.address"),
    ("OP_DBUS_QUEUE_POLICY", "bus.queue_policy"),
    ("OP_DBUS_QUEUE_MESSAGES", "bus.queue_messages"),
    ("OP_DBUS_QUEUE_MB", "bus.queue_mb"),
    ("OP_DBUS_RECONNECT_MAX_S", "bus.reconnect_max_s"),
    ("OP_DBUS_SERVICE_BUS", "service.address"),
    ("OP_DBUS_SIGNAL_RATE", "service.signal_rate"),
    ("OPDBUS_SNAPSHOT_INTERVAL", "snapshot.interval"),
    ("OPDBUS_MAX_CACHE_SNAPSHOTS", "snapshot.max_recent"),
    ("OP_DBUS_PROOF", "proof.enabled"),
    ("OP_DBUS_PROOF_ORIGIN", "proof.origin"),
    ("OP_DBUS_CHECKPOINT_INTERVAL_MS", "proof.checkpoint_interval_ms"),
    ("OP_DBUS_PROOF_AUTO_INIT", "proof.auto_init"),
    ("OP_DBUS_EPOCH_SECONDS", "proof.epoch_seconds"),
    ("OP_DBUS_PROVISION_HOURS", "proof.provision_hours"),
];

/// The layer a key's value came from, as error messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(name) => write!(f, "environment {name}"),
            Origin::Flag => f.write_str("command line"),
        }
    }
}

/// The merged tree and the origin of every key a layer set.
pub(super) struct Layers {
    tree: Table,
    defaults: Table,
    origins: HashMap<String, Origin>,
    file: Option<PathBuf>,
}

impl Layers {
    pub(super) fn defaults() -> Layers {
        let defaults: Table = DEFAULTS.parse().expect("config/op-dbus.toml is TOML");
        Layers { tree: defaults.clone(), defaults, origins: HashMap::new(), file: None }
    }

    /// Merges the file, then checks that the tree still has the shape `T`:
    /// a key or a type the file got wrong is an error even where a later
    /// layer would set the key.
    pub(super) fn file<T: DeserializeOwned>(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().into(),
        })?;
        self.file = Some(path.to_path_buf());
        self.merge(table, Origin::File(path.to_path_buf()));
        self.resolve::<T>().map(drop)
    }

    /// Environment values are kept as text here and read as their key's
    /// type in [`Layers::resolve`], once a flag has had its say: a flag
    /// overrides even an unreadable variable.
    pub(super) fn env(&mut self, env: impl Fn(&str) -> Option<String>) {
        for &(name, key) in ENV {
            if let Some(v) = env(name) {
                self.merge(nested(key, Value::String(v)), Origin::Env(name));
            }
        }
    }

    /// `--state-dir` is not here: a flag's path need not be UTF-8, which a
    /// TOML string cannot hold, so the caller sets it on the typed value.
    pub(super) fn flags(&mut self, f: &Overrides) {
        let text = |v: &Option<String>| v.clone().map(Value::String);
        let off = |set: bool| set.then_some(Value::Boolean(false));
        for (key, value) in [
            ("vector.level", text(&f.vector_level)),
            ("chain.max_batch", f.max_batch.map(Value::Integer)),
            ("chain.max_wait_ms", f.max_wait_ms.map(Value::Integer)),
            ("metrics.enabled", off(f.no_metrics)),
            ("metrics.listen", text(&f.metrics_listen)),
            ("bus.enabled", off(f.no_bus)),
            ("bus.address", text(&f.bus)),
            ("service.enabled", off(f.no_service)),
        ] {
            if let Some(v) = value {
                self.merge(nested(key, v), Origin::Flag);
            }
        }
    }

    pub(super) fn origin(&self, key: &str) -> &Origin {
        self.origins.get(key).unwrap_or(&Origin::Default)
    }

    /// Reads the environment's values as their keys' types, then
    /// deserializes the tree into `T`. Only the file can hold a key or a
    /// type that `T` does not know, so such errors name the file.
    pub(super) fn resolve<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let mut tree = self.tree.clone();
        for &(name, key) in ENV {
            if *self.origin(key) != Origin::Env(name) {
                continue;
            }
            let Some(slot) = lookup_mut(&mut tree, key) else { continue };
            let Some(text) = slot.as_str() else { continue };
            let (read, allowed) = match lookup(&self.defaults, key) {
                Some(Value::Integer(_)) => (text.trim().parse().ok().map(Value::Integer), "an integer"),
                Some(Value::Boolean(_)) => (switch(text).map(Value::Boolean), "true or false"),
                _ => continue,
            };
            let Some(read) = read else {
                let origin = Origin::Env(name).to_string();
                return Err(ConfigError::Invalid { key, value: text.into(), origin, allowed: allowed.into() });
            };
            *slot = read;
        }
        T::deserialize(tree).map_err(|e| ConfigError::Parse {
            path: self.file.clone().unwrap_or_default(),
            // "unknown field `x`, expected ...\nin `chain`": one line.
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Merges `layer` over the tree: tables key by key, anything else replaced.
    fn merge(&mut self, layer: Table, origin: Origin) {
        fn walk(into: &mut Table, from: Table, prefix: &str, origin: &Origin, origins: &mut HashMap<String, Origin>) {
            for (k, v) in from {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match (into.get_mut(&k), v) {
                    (Some(Value::Table(into)), Value::Table(from)) => walk(into, from, &key, origin, origins),
                    (_, v) => {
                        origins.insert(key, origin.clone());
                        into.insert(k, v);
                    }
                }
            }
        }
        walk(&mut self.tree, layer, "", &origin, &mut self.origins);
    }
}

/// `a.b` = v as the table `{ a = { b = v } }`.
fn nested(key: &str, value: Value) -> Table {
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    let value = if rest.is_empty() { value } else { Value::Table(nested(rest, value)) };
    Table::from_iter([(head.to_string(), value)])
}

fn lookup<'a>(t: &'a Table, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        Some((head, rest)) => lookup(t.get(head)?.as_table()?, rest),
        None => t.get(key),
    }
}

fn lookup_mut<'a>(t: &'a mut Table, key: &str) -> Option<&'a mut Value> {
    match key.split_once('.') {
        Some((head, rest)) => lookup_mut(t.get_mut(head)?.as_table_mut()?, rest),
        None => t.get_mut(key),
    }
}

fn switch(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "true" | "on" => Some(true),
        "0" | "false" | "off" => Some(false),
        _ => None,
    }
}
