//! The configuration's tests: every message word for word, the layering
//! order, unknown keys, and property tests of the environment layer.

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
        proof: ProofConfig {
            enabled: true,
            origin: String::new(),
            checkpoint_interval: Duration::from_secs(1),
            auto_init: true,
            epoch_seconds: 60,
            provision_hours: 720,
            renew_warning: Duration::from_secs(7 * 86_400),
            witnesses: Vec::new(),
        },
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
    let env = [("OP_DBUS_STATE_DIR", "/env"), ("OP_DBUS_MAX_WAIT_MS", "6"), ("OP_DBUS_METRICS_LISTEN", "127.0.0.1:2")];
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
    for (word, on) in [("1", true), (" true", true), ("on", true), ("0", false), ("false ", false), ("off", false)] {
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
        ("OP_DBUS_MAX_WAIT_MS", " soon", word("chain.max_wait_ms", " soon", &env("OP_DBUS_MAX_WAIT_MS"), "an integer")),
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
    let c =
        load(Some(toml), &[("OP_DBUS_BUS", "session")], Overrides { bus: Some("system".into()), ..Default::default() })
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
    let c =
        load(Some("[service]\naddress = \"session\"\n"), &[("OP_DBUS_SERVICE_BUS", "system")], Overrides::default());
    assert_eq!(c.unwrap().service.address, Some(BusAddress::System));
    let toml =
        "cache_dir = \"/c\"\n[[replica]]\nname = \"a\"\ncommand = [\"cat\"]\n[[replica]]\nname = \"b\"\ndir = \"/b\"\n";
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
