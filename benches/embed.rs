//! Embedding benchmark (`make bench-embed`, i.e. `cargo bench --bench embed`):
//! the ML levels' models through `op_dbus::ml::onnx::SentenceModel` against Python
//! onnxruntime (`scripts/bench-embed.py`, run from here) on the same model
//! files and the same texts, in the same run.
//!
//! 1. A fixed text set: EMBED_N (default 1024) `input_text`s of realistic
//!    systemd / logind / NetworkManager / UPower / PackageKit / bluez events
//!    (short signals, property maps up to the 512-byte cut), deterministic,
//!    written to `target/bench-embed/texts.json` for the Python side.
//! 2. For every model file present (L3, L6, MPNet; fp32 `model.onnx` and
//!    int8 `model.int8.onnx`): embeddings/s at 1 and 2 threads, batches of
//!    1, 8 and 32, with `embed` on chunks in input order (what Python does)
//!    and with `embed_sorted` (length-sorted sub-batches); tokenization
//!    included; a warm-up first.
//! 3. Load time and peak RSS of each model in a fresh process (this binary
//!    re-run with EMBED_CHILD set): load, embed one batch of 32, read
//!    VmHWM (its own peak; `ru_maxrss` would include the parent's).
//! 4. Agreement: cosine of int8 to fp32 vectors, of Rust to Python on the
//!    same file, and of sorted to plain batches.
//!
//! Env: EMBED_N; EMBED_MODELS (comma list of l3, l3-int8, l6, l6-int8,
//! mpnet, mpnet-int8; default all present); EMBED_THREADS (default 1,2);
//! EMBED_BATCHES (default 1,8,32); EMBED_N_MPNET (MPNet embeds only the
//! first texts of the set, default 256: it is ~6x slower than MiniLM-L6);
//! EMBED_PYTHON (interpreter for the peer, default python3; `none` skips
//! it); OP_DBUS_MODEL_DIR (default ./models); EMBED_OUT (work dir, default
//! target/bench-embed); EMBED_TRACE (an `op-dbus import` file, e.g. made by
//! `scripts/gen-trace.py`: its first EMBED_N events' texts replace the set
//! of step 1, so the daemon path's cache sees a trace's real repeats).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use op_dbus::codec::Value;
use op_dbus::ml::cache::EmbedCache;
use op_dbus::ml::engine::{Engine, EngineConfig};
use op_dbus::ml::onnx::SentenceModel;
use op_dbus::ml::text::input_text;
use op_dbus::ml::worker::CHUNK;
use op_dbus::ml::VectorLevel;
use op_dbus::ml::{ModelKind, ModelSpec, Precision};

const ALL: [(&str, ModelKind, Precision); 6] = [
    ("l3", ModelKind::MiniLmL3, Precision::Fp32),
    ("l3-int8", ModelKind::MiniLmL3, Precision::Int8),
    ("l6", ModelKind::MiniLmL6, Precision::Fp32),
    ("l6-int8", ModelKind::MiniLmL6, Precision::Int8),
    ("mpnet", ModelKind::MpNet, Precision::Fp32),
    ("mpnet-int8", ModelKind::MpNet, Precision::Int8),
];

fn vector_level(kind: ModelKind) -> VectorLevel {
    match kind {
        ModelKind::MiniLmL3 => VectorLevel::Low,
        ModelKind::MiniLmL6 => VectorLevel::Medium,
        ModelKind::MpNet => VectorLevel::High,
    }
}

fn short_model(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::MiniLmL3 => "MiniLM-L3",
        ModelKind::MiniLmL6 => "MiniLM-L6",
        ModelKind::MpNet => "MPNet-base",
    }
}

fn prec(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "fp32",
        Precision::Int8 => "int8",
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

// ---------------------------------------------------------------- texts

/// splitmix64: a fixed sequence, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}
/// A recorded variant: `[signature, value]`.
fn v(sig: &str, x: Value) -> Value {
    Value::Array(vec![s(sig), x])
}
fn props(entries: Vec<(&str, Value)>) -> Value {
    Value::map(entries.into_iter().map(|(k, x)| (s(k), x)).collect())
}
/// `PropertiesChanged(s interface, a{sv} changed, as invalidated)`.
fn changed(iface: &str, entries: Vec<(&str, Value)>) -> Value {
    Value::Array(vec![s(iface), props(entries), Value::Array(vec![])])
}

/// systemd's object path escaping: everything but [A-Za-z0-9] as `_xx`.
fn bus_escape(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() && !(i == 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

const UNITS: [&str; 24] = [
    "nginx.service",
    "sshd.service",
    "docker.service",
    "containerd.service",
    "cups.service",
    "NetworkManager.service",
    "bluetooth.service",
    "cron.service",
    "systemd-resolved.service",
    "systemd-journald.service",
    "systemd-logind.service",
    "user@1000.service",
    "session-3.scope",
    "packagekit.service",
    "upower.service",
    "apt-daily.timer",
    "apt-daily-upgrade.service",
    "fstrim.timer",
    "logrotate.service",
    "postgresql@15-main.service",
    "dev-disk-by\\x2duuid-4f2a.device",
    "home.mount",
    "snapd.socket",
    "getty@tty1.service",
];
const PACKAGES: [(&str, &str, &str); 12] = [
    ("bash", "5.2.15-2+b7", "GNU Bourne Again SHell"),
    ("openssl", "3.0.15-1~deb12u1", "Secure Sockets Layer toolkit - cryptographic utility"),
    ("linux-image-6.1.0-28-amd64", "6.1.119-1", "Linux 6.1 for 64-bit PCs (signed)"),
    ("libc6", "2.36-9+deb12u9", "GNU C Library: Shared libraries"),
    ("firefox-esr", "128.5.0esr-1~deb12u1", "Mozilla Firefox web browser - Extended Support Release (ESR)"),
    ("python3.11", "3.11.2-6+deb12u4", "Interactive high-level object-oriented language (version 3.11)"),
    ("curl", "7.88.1-10+deb12u8", "command line tool for transferring data with URL syntax"),
    ("systemd", "252.33-1~deb12u1", "system and service manager"),
    ("tzdata", "2024b-0+deb12u1", "time zone and daylight-saving time data"),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u1", "GNOME XML library"),
    ("git", "1:2.39.5-0+deb12u1", "fast, scalable, distributed revision control system"),
    ("vim", "2:9.0.1378-2", "Vi IMproved - enhanced vi editor"),
];
const JOB_RESULTS: [&str; 5] = ["done", "done", "done", "failed", "canceled"];

fn systemd(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let unit = r.pick(&UNITS);
    let unit_path = format!("/org/freedesktop/systemd1/unit/{}", bus_escape(unit));
    let job = 1000 + i;
    let job_path = format!("/org/freedesktop/systemd1/job/{job}");
    let p = "org.freedesktop.systemd1".to_string();
    let m = |x: &str| format!("org.freedesktop.systemd1.Manager.{x}");
    let ts = 1_750_000_000_000_000u64 + i * 1_234_567;
    match r.below(10) {
        0 | 1 => (
            p,
            m("JobNew"),
            Some("/org/freedesktop/systemd1".into()),
            Value::Array(vec![Value::UInt(job), s(&job_path), s(unit)]),
        ),
        2 | 3 => (
            p,
            m("JobRemoved"),
            Some("/org/freedesktop/systemd1".into()),
            Value::Array(vec![Value::UInt(job), s(&job_path), s(unit), s(r.pick(&JOB_RESULTS))]),
        ),
        4 => {
            let op = if r.chance(50) { "UnitNew" } else { "UnitRemoved" };
            (p, m(op), Some("/org/freedesktop/systemd1".into()), Value::Array(vec![s(unit), s(&unit_path)]))
        }
        5 => {
            (p, m("Reloading"), Some("/org/freedesktop/systemd1".into()), Value::Array(vec![Value::Bool(r.chance(50))]))
        }
        6..=7 => {
            let (active, sub) = *r.pick(&[
                &("active", "running"),
                &("inactive", "dead"),
                &("activating", "start"),
                &("deactivating", "stop-sigterm"),
                &("failed", "failed"),
            ]);
            let data = changed(
                "org.freedesktop.systemd1.Unit",
                vec![
                    ("ActiveState", v("s", s(active))),
                    ("SubState", v("s", s(sub))),
                    ("StateChangeTimestamp", v("t", Value::UInt(ts))),
                    ("StateChangeTimestampMonotonic", v("t", Value::UInt(ts % 9_000_000_000))),
                    ("InactiveExitTimestamp", v("t", Value::UInt(ts - 2_000_000))),
                    ("InactiveExitTimestampMonotonic", v("t", Value::UInt((ts - 2_000_000) % 9_000_000_000))),
                    ("ActiveEnterTimestamp", v("t", Value::UInt(ts))),
                    ("ActiveEnterTimestampMonotonic", v("t", Value::UInt(ts % 9_000_000_000))),
                    ("ActiveExitTimestamp", v("t", Value::UInt(0))),
                    ("InactiveEnterTimestamp", v("t", Value::UInt(0))),
                    ("Job", v("(uo)", Value::Array(vec![Value::UInt(0), s("/")]))),
                    ("ConditionResult", v("b", Value::Bool(true))),
                    ("AssertResult", v("b", Value::Bool(true))),
                    ("ConditionTimestamp", v("t", Value::UInt(ts - 2_100_000))),
                    ("AssertTimestamp", v("t", Value::UInt(ts - 2_100_000))),
                    ("FreezerState", v("s", s("running"))),
                ],
            );
            (p, "org.freedesktop.DBus.Properties.PropertiesChanged".into(), Some(unit_path), data)
        }
        _ => {
            let pid = 300 + r.below(60000);
            let mut e = vec![
                ("MainPID", v("u", Value::UInt(pid))),
                ("ExecMainPID", v("u", Value::UInt(pid))),
                ("ExecMainStartTimestamp", v("t", Value::UInt(ts))),
                ("ExecMainStatus", v("i", Value::Int(0))),
                ("Result", v("s", s(if r.chance(85) { "success" } else { "exit-code" }))),
                ("NRestarts", v("u", Value::UInt(r.below(4)))),
                ("StatusText", v("s", s(r.pick(&["", "Ready.", "Processing requests...", "Startup finished"])))),
            ];
            if r.chance(60) {
                e.extend([
                    ("MemoryCurrent", v("t", Value::UInt(1_000_000 + r.below(900_000_000)))),
                    ("MemoryPeak", v("t", Value::UInt(2_000_000 + r.below(900_000_000)))),
                    ("CPUUsageNSec", v("t", Value::UInt(r.below(90_000_000_000)))),
                    ("TasksCurrent", v("t", Value::UInt(1 + r.below(200)))),
                    ("IPIngressBytes", v("t", Value::UInt(u64::MAX))),
                    ("ControlGroup", v("s", s(&format!("/system.slice/{unit}")))),
                    ("ExecMainCode", v("i", Value::Int(0))),
                    ("ReloadResult", v("s", s("success"))),
                ]);
            }
            let data = changed("org.freedesktop.systemd1.Service", e);
            (p, "org.freedesktop.DBus.Properties.PropertiesChanged".into(), Some(unit_path), data)
        }
    }
}

fn logind(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let p = "org.freedesktop.login1".to_string();
    let sid = format!("{}", 1 + i % 97);
    let spath = format!("/org/freedesktop/login1/session/{}", bus_escape(&sid));
    let uid = *r.pick(&[&0u64, &1000, &1001, &118]);
    let m = |x: &str| format!("org.freedesktop.login1.Manager.{x}");
    let root = Some("/org/freedesktop/login1".to_string());
    match r.below(8) {
        0 => (p, m("SessionNew"), root, Value::Array(vec![s(&sid), s(&spath)])),
        1 => (p, m("SessionRemoved"), root, Value::Array(vec![s(&sid), s(&spath)])),
        2 => {
            let op = if r.chance(50) { "UserNew" } else { "UserRemoved" };
            (p, m(op), root, Value::Array(vec![Value::UInt(uid), s(&format!("/org/freedesktop/login1/user/_{uid}"))]))
        }
        3 => {
            let op = if r.chance(80) { "PrepareForSleep" } else { "PrepareForShutdown" };
            (p, m(op), root, Value::Array(vec![Value::Bool(r.chance(50))]))
        }
        4..=6 => {
            let mut e = vec![
                ("IdleHint", v("b", Value::Bool(r.chance(50)))),
                ("IdleSinceHint", v("t", Value::UInt(1_750_000_000_000_000 + i * 1000))),
            ];
            if r.chance(50) {
                e.extend([
                    ("Active", v("b", Value::Bool(r.chance(70)))),
                    ("LockedHint", v("b", Value::Bool(r.chance(30)))),
                    ("IdleSinceHintMonotonic", v("t", Value::UInt(i * 77_777))),
                ]);
            }
            (
                p,
                "org.freedesktop.DBus.Properties.PropertiesChanged".into(),
                Some(spath),
                changed("org.freedesktop.login1.Session", e),
            )
        }
        _ => (
            p,
            "org.freedesktop.DBus.Properties.PropertiesChanged".into(),
            Some("/org/freedesktop/login1/seat/seat0".into()),
            changed(
                "org.freedesktop.login1.Seat",
                vec![("ActiveSession", v("(so)", Value::Array(vec![s(&sid), s(&spath)])))],
            ),
        ),
    }
}

fn network_manager(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let p = "org.freedesktop.NetworkManager".to_string();
    let dev = 1 + r.below(6);
    let dpath = format!("/org/freedesktop/NetworkManager/Devices/{dev}");
    let pc = "org.freedesktop.DBus.Properties.PropertiesChanged".to_string();
    match r.below(9) {
        0 => (
            p,
            "org.freedesktop.NetworkManager.StateChanged".into(),
            Some("/org/freedesktop/NetworkManager".into()),
            Value::Array(vec![Value::UInt(*r.pick(&[&20u64, &40, &50, &60, &70]))]),
        ),
        1 | 2 => (
            p,
            "org.freedesktop.NetworkManager.Device.StateChanged".into(),
            Some(dpath),
            Value::Array(vec![
                Value::UInt(*r.pick(&[&30u64, &40, &50, &70, &80, &100, &110])),
                Value::UInt(*r.pick(&[&20u64, &30, &40, &100])),
                Value::UInt(r.below(60)),
            ]),
        ),
        3 => {
            let c = 10 + i % 40;
            let data = changed(
                "org.freedesktop.NetworkManager.Device",
                vec![
                    ("State", v("u", Value::UInt(100))),
                    ("StateReason", v("(uu)", Value::Array(vec![Value::UInt(100), Value::UInt(0)]))),
                    ("ActiveConnection", v("o", s(&format!("/org/freedesktop/NetworkManager/ActiveConnection/{c}")))),
                    ("Ip4Config", v("o", s(&format!("/org/freedesktop/NetworkManager/IP4Config/{}", c * 2)))),
                    ("Ip6Config", v("o", s(&format!("/org/freedesktop/NetworkManager/IP6Config/{}", c * 2 + 1)))),
                    ("Dhcp4Config", v("o", s(&format!("/org/freedesktop/NetworkManager/DHCP4Config/{c}")))),
                    ("Interface", v("s", s(r.pick(&["wlp3s0", "enp0s31f6", "docker0", "virbr0"])))),
                ],
            );
            (p, pc, Some(dpath), data)
        }
        4 | 5 => {
            let ap = format!("/org/freedesktop/NetworkManager/AccessPoint/{}", 100 + r.below(300));
            let mut e = vec![("Strength", v("y", Value::UInt(20 + r.below(80))))];
            if r.chance(40) {
                e.push(("LastSeen", v("i", Value::Int(10_000 + i as i64))));
            }
            (p, pc, Some(ap), changed("org.freedesktop.NetworkManager.AccessPoint", e))
        }
        6 => {
            let ap = format!("/org/freedesktop/NetworkManager/AccessPoint/{}", 100 + r.below(300));
            let ssid = r.pick(&["HomeNet-5G", "eduroam", "FRITZ!Box 7590 XY", "CoffeeShop_Guest", "DIRECT-4a-HP"]);
            let data = changed(
                "org.freedesktop.NetworkManager.AccessPoint",
                vec![
                    ("Ssid", v("ay", Value::Bin(ssid.as_bytes().to_vec()))),
                    ("Frequency", v("u", Value::UInt(*r.pick(&[&2412u64, &2437, &5180, &5500])))),
                    (
                        "HwAddress",
                        v("s", s(&format!("AC:84:C6:{:02X}:{:02X}:{:02X}", i % 256, (i * 7) % 256, (i * 13) % 256))),
                    ),
                    ("Mode", v("u", Value::UInt(2))),
                    ("MaxBitrate", v("u", Value::UInt(*r.pick(&[&54000u64, &270000, &866700])))),
                    ("Flags", v("u", Value::UInt(1))),
                    ("WpaFlags", v("u", Value::UInt(0))),
                    ("RsnFlags", v("u", Value::UInt(392))),
                    ("Strength", v("y", Value::UInt(20 + r.below(80)))),
                    ("LastSeen", v("i", Value::Int(10_000 + i as i64))),
                ],
            );
            (p, pc, Some(ap), data)
        }
        7 => {
            let c = 2 * (10 + i % 40);
            let octet = 2 + r.below(250);
            let addr =
                |a: &str, prefix: u64| props(vec![("address", v("s", s(a))), ("prefix", v("u", Value::UInt(prefix)))]);
            let route = |d: &str, prefix: u64, hop: &str, metric: u64| {
                props(vec![
                    ("dest", v("s", s(d))),
                    ("prefix", v("u", Value::UInt(prefix))),
                    ("next-hop", v("s", s(hop))),
                    ("metric", v("u", Value::UInt(metric))),
                ])
            };
            let data = changed(
                "org.freedesktop.NetworkManager.IP4Config",
                vec![
                    ("AddressData", v("aa{sv}", Value::Array(vec![addr(&format!("192.168.1.{octet}"), 24)]))),
                    ("Gateway", v("s", s("192.168.1.1"))),
                    (
                        "RouteData",
                        v(
                            "aa{sv}",
                            Value::Array(vec![
                                route("192.168.1.0", 24, "0.0.0.0", 600),
                                route("0.0.0.0", 0, "192.168.1.1", 600),
                                route("169.254.0.0", 16, "0.0.0.0", 1000),
                            ]),
                        ),
                    ),
                    (
                        "NameserverData",
                        v("aa{sv}", Value::Array(vec![props(vec![("address", v("s", s("192.168.1.1")))])])),
                    ),
                    ("Domains", v("as", Value::Array(vec![s("fritz.box"), s("lan")]))),
                    ("Searches", v("as", Value::Array(vec![]))),
                ],
            );
            (p, pc, Some(format!("/org/freedesktop/NetworkManager/IP4Config/{c}")), data)
        }
        _ => (
            p,
            "org.freedesktop.NetworkManager.Device.Wireless.AccessPointAdded".into(),
            Some(format!("/org/freedesktop/NetworkManager/Devices/{dev}")),
            Value::Array(vec![s(&format!("/org/freedesktop/NetworkManager/AccessPoint/{}", 100 + r.below(300)))]),
        ),
    }
}

fn upower(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let p = "org.freedesktop.UPower".to_string();
    let pc = "org.freedesktop.DBus.Properties.PropertiesChanged".to_string();
    let dev = r.pick(&["battery_BAT0", "battery_BAT0", "line_power_AC", "battery_hidpp_battery_0", "DisplayDevice"]);
    let dpath = format!("/org/freedesktop/UPower/devices/{dev}");
    let pct = (i % 100) as f64 + 0.5 * (r.below(2) as f64);
    match r.below(6) {
        0 => {
            let op = if r.chance(50) { "DeviceAdded" } else { "DeviceRemoved" };
            (
                p,
                format!("org.freedesktop.UPower.{op}"),
                Some("/org/freedesktop/UPower".into()),
                Value::Array(vec![s(&dpath)]),
            )
        }
        1 => (
            p,
            pc,
            Some("/org/freedesktop/UPower".into()),
            changed("org.freedesktop.UPower", vec![("OnBattery", v("b", Value::Bool(r.chance(50))))]),
        ),
        2 | 3 => (
            p,
            pc,
            Some(dpath),
            changed(
                "org.freedesktop.UPower.Device",
                vec![
                    ("Percentage", v("d", Value::Float(pct))),
                    ("UpdateTime", v("t", Value::UInt(1_750_000_000 + i * 30))),
                ],
            ),
        ),
        _ => {
            let data = changed(
                "org.freedesktop.UPower.Device",
                vec![
                    ("Percentage", v("d", Value::Float(pct))),
                    ("Energy", v("d", Value::Float(pct * 0.5312))),
                    ("EnergyFull", v("d", Value::Float(53.12))),
                    ("EnergyFullDesign", v("d", Value::Float(57.0))),
                    ("EnergyRate", v("d", Value::Float(4.0 + (i % 13) as f64 * 0.731))),
                    ("Voltage", v("d", Value::Float(11.4 + (i % 9) as f64 * 0.1))),
                    ("TimeToEmpty", v("x", Value::Int((i % 100) as i64 * 97))),
                    ("TimeToFull", v("x", Value::Int(0))),
                    ("State", v("u", Value::UInt(*r.pick(&[&1u64, &2, &4])))),
                    ("WarningLevel", v("u", Value::UInt(1))),
                    ("IconName", v("s", s("battery-good-symbolic"))),
                    ("UpdateTime", v("t", Value::UInt(1_750_000_000 + i * 30))),
                    ("ChargeCycles", v("i", Value::Int(412))),
                ],
            );
            (p, pc, Some(dpath), data)
        }
    }
}

fn packagekit(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let p = "org.freedesktop.PackageKit".to_string();
    let tid = format!("/{}_{}", 100 + i % 50, ["abbbcdae", "eddcabfa", "cadbbaed"][(i % 3) as usize]);
    let &(name, version, summary) = r.pick(&PACKAGES.iter().collect::<Vec<_>>());
    let pid = format!("{name};{version};amd64;debian-stable-main");
    let t = |x: &str| format!("org.freedesktop.PackageKit.Transaction.{x}");
    match r.below(9) {
        0..=2 => (
            p,
            t("Package"),
            Some(tid),
            Value::Array(vec![Value::UInt(*r.pick(&[&2u64, &10, &11, &18])), s(&pid), s(summary)]),
        ),
        3 => (
            p,
            t("ItemProgress"),
            Some(tid),
            Value::Array(vec![s(&pid), Value::UInt(*r.pick(&[&8u64, &9, &10])), Value::UInt(r.below(101))]),
        ),
        4 => (p, t("Finished"), Some(tid), Value::Array(vec![Value::UInt(1), Value::UInt(200 + r.below(90_000))])),
        5 => (
            p,
            t("ErrorCode"),
            Some(tid),
            Value::Array(vec![
                Value::UInt(*r.pick(&[&6u64, &32, &55])),
                s(&format!(
                    "E: Failed to fetch http://deb.debian.org/debian/pool/main/{}/{name}/{name}_{version}_amd64.deb  \
                 Temporary failure resolving 'deb.debian.org'",
                    &name[..1]
                )),
            ]),
        ),
        6 => {
            let data = changed(
                "org.freedesktop.PackageKit.Transaction",
                vec![
                    ("Percentage", v("u", Value::UInt(r.below(101)))),
                    ("Status", v("u", Value::UInt(*r.pick(&[&2u64, &8, &9, &10, &18])))),
                    ("Role", v("u", Value::UInt(*r.pick(&[&10u64, &22, &23])))),
                    ("AllowCancel", v("b", Value::Bool(r.chance(50)))),
                    ("ElapsedTime", v("u", Value::UInt(r.below(100_000)))),
                    ("RemainingTime", v("u", Value::UInt(r.below(1000)))),
                    ("Speed", v("u", Value::UInt(r.below(20_000_000)))),
                    ("DownloadSizeRemaining", v("t", Value::UInt(r.below(200_000_000)))),
                    ("TransactionFlags", v("t", Value::UInt(2))),
                    ("LastPackage", v("s", s(&pid))),
                    ("CallerActive", v("b", Value::Bool(true))),
                    ("Uid", v("u", Value::UInt(1000))),
                    ("Sender", v("s", s(&format!(":1.{}", 40 + i % 300)))),
                ],
            );
            (p, "org.freedesktop.DBus.Properties.PropertiesChanged".into(), Some(tid), data)
        }
        7 => (
            p,
            "org.freedesktop.PackageKit.TransactionListChanged".into(),
            Some("/org/freedesktop/PackageKit".into()),
            {
                let k = 1 + r.below(4);
                Value::Array(vec![Value::Array(
                    (0..k).map(|j| s(&format!("/{}_{}", 100 + (i + j) % 50, "abbbcdae"))).collect(),
                )])
            },
        ),
        _ => (
            p,
            "org.freedesktop.PackageKit.UpdatesChanged".into(),
            Some("/org/freedesktop/PackageKit".into()),
            Value::Array(vec![]),
        ),
    }
}

fn bluez(r: &mut Rng, i: u64) -> (String, String, Option<String>, Value) {
    let p = "org.bluez".to_string();
    let mac = format!("{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", 0x00, 0x1A, 0x7D, i % 7, (i % 7) * 31 % 256, 0x42);
    let dpath = format!("/org/bluez/hci0/dev_{}", mac.replace(':', "_"));
    let pc = "org.freedesktop.DBus.Properties.PropertiesChanged".to_string();
    let (name, icon, class) = *r.pick(&[
        &("WH-1000XM4", "audio-headset", 2360344u64),
        &("MX Master 3", "input-mouse", 9600),
        &("Pixel 7", "phone", 5898764),
        &("JBL Flip 5", "audio-card", 2360340),
        &("Keychron K2", "input-keyboard", 9536),
    ]);
    match r.below(8) {
        0 => {
            let uuids: Vec<Value> = [
                "0000110b-0000-1000-8000-00805f9b34fb",
                "0000110c-0000-1000-8000-00805f9b34fb",
                "0000110e-0000-1000-8000-00805f9b34fb",
                "0000111e-0000-1000-8000-00805f9b34fb",
                "00001108-0000-1000-8000-00805f9b34fb",
                "0000180f-0000-1000-8000-00805f9b34fb",
                "0000fe03-0000-1000-8000-00805f9b34fb",
            ]
            .iter()
            .take(2 + r.below(6) as usize)
            .map(|u| s(u))
            .collect();
            let dev = props(vec![
                ("Address", v("s", s(&mac))),
                ("AddressType", v("s", s("public"))),
                ("Name", v("s", s(name))),
                ("Alias", v("s", s(name))),
                ("Class", v("u", Value::UInt(class))),
                ("Icon", v("s", s(icon))),
                ("Paired", v("b", Value::Bool(r.chance(60)))),
                ("Bonded", v("b", Value::Bool(r.chance(60)))),
                ("Trusted", v("b", Value::Bool(r.chance(50)))),
                ("Blocked", v("b", Value::Bool(false))),
                ("LegacyPairing", v("b", Value::Bool(false))),
                ("RSSI", v("n", Value::Int(-40 - r.below(50) as i64))),
                ("Connected", v("b", Value::Bool(false))),
                ("UUIDs", v("as", Value::Array(uuids))),
                ("Modalias", v("s", s("usb:v054Cp0D58d0100"))),
                ("Adapter", v("o", s("/org/bluez/hci0"))),
                ("ServicesResolved", v("b", Value::Bool(false))),
            ]);
            let ifaces = Value::map(vec![
                (s("org.bluez.Device1"), dev),
                (s("org.freedesktop.DBus.Properties"), Value::map(vec![])),
                (s("org.freedesktop.DBus.Introspectable"), Value::map(vec![])),
            ]);
            (
                p,
                "org.freedesktop.DBus.ObjectManager.InterfacesAdded".into(),
                Some("/".into()),
                Value::Array(vec![s(&dpath), ifaces]),
            )
        }
        1 => (
            p,
            "org.freedesktop.DBus.ObjectManager.InterfacesRemoved".into(),
            Some("/".into()),
            Value::Array(vec![
                s(&dpath),
                Value::Array(vec![s("org.bluez.Device1"), s("org.freedesktop.DBus.Properties")]),
            ]),
        ),
        2 | 3 => (
            p,
            pc,
            Some(dpath),
            changed("org.bluez.Device1", vec![("RSSI", v("n", Value::Int(-40 - r.below(50) as i64)))]),
        ),
        4 => (
            p,
            pc,
            Some(dpath),
            changed(
                "org.bluez.Device1",
                vec![
                    ("Connected", v("b", Value::Bool(r.chance(50)))),
                    ("ServicesResolved", v("b", Value::Bool(r.chance(50)))),
                ],
            ),
        ),
        5 => (
            p,
            pc,
            Some("/org/bluez/hci0".into()),
            changed("org.bluez.Adapter1", vec![("Discovering", v("b", Value::Bool(r.chance(50))))]),
        ),
        6 => {
            (p, pc, Some(dpath), changed("org.bluez.Battery1", vec![("Percentage", v("y", Value::UInt(r.below(101))))]))
        }
        _ => {
            let (title, artist, album) = *r.pick(&[
                &("Bohemian Rhapsody", "Queen", "A Night at the Opera (2011 Remaster)"),
                &("Clair de Lune, L. 32", "Claude Debussy; Isao Tomita", "Snowflakes Are Dancing"),
                &("Midnight City", "M83", "Hurry Up, We're Dreaming"),
            ]);
            let track = props(vec![
                ("Title", v("s", s(title))),
                ("Artist", v("s", s(artist))),
                ("Album", v("s", s(album))),
                ("Genre", v("s", s("Rock"))),
                ("TrackNumber", v("u", Value::UInt(1 + r.below(12)))),
                ("NumberOfTracks", v("u", Value::UInt(12))),
                ("Duration", v("u", Value::UInt(180_000 + r.below(200_000)))),
            ]);
            (
                p,
                pc,
                Some(format!("{dpath}/player0")),
                changed(
                    "org.bluez.MediaPlayer1",
                    vec![
                        ("Track", v("a{sv}", track)),
                        ("Status", v("s", s("playing"))),
                        ("Position", v("u", Value::UInt(r.below(180_000)))),
                    ],
                ),
            )
        }
    }
}

/// The i-th text of the fixed set; a prefix of a longer set is the shorter one.
/// The first `n` events of an `op-dbus import` file (EMBED_TRACE, e.g. from
/// `scripts/gen-trace.py`), as `input_text`s: a trace's own repeats are
/// what the daemon's cache sees.
fn trace_texts(path: &Path, n: usize) -> Vec<String> {
    let limits = op_dbus::input::Limits { max_data_bytes: 1 << 20, max_depth: 64 };
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("EMBED_TRACE {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| {
            let e = op_dbus::input::parse_line(l.as_bytes(), limits, 0).expect("an import line");
            input_text(&e.plugin_id, &e.operation, e.path.as_deref(), &e.data)
        })
        .collect()
}

fn texts(n: usize) -> Vec<String> {
    let mut r = Rng(0x006f_702d_6462_7573);
    (0..n as u64)
        .map(|i| {
            // Rough mix of a desktop's traffic: systemd and NetworkManager busiest.
            let (p, op, path, data) = match r.below(20) {
                0..=5 => systemd(&mut r, i),
                6..=7 => logind(&mut r, i),
                8..=11 => network_manager(&mut r, i),
                12..=13 => upower(&mut r, i),
                14..=16 => packagekit(&mut r, i),
                _ => bluez(&mut r, i),
            };
            input_text(&p, &op, path.as_deref(), &data)
        })
        .collect()
}

// ---------------------------------------------------------------- measuring

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Child mode: load one model in this fresh process, embed one batch of 32,
/// print the times and peak RSS as one JSON line.
fn child(model_dir: &Path, name: &str, texts_path: &Path) {
    let (_, kind, precision) = *ALL.iter().find(|(n, ..)| *n == name).expect("a known model name");
    let texts: Vec<String> = serde_json::from_slice(&std::fs::read(texts_path).unwrap()).unwrap();
    let refs: Vec<&str> = texts.iter().take(32).map(String::as_str).collect();
    let before = rss_kib("VmRSS:");
    let t = Instant::now();
    op_dbus::ml::onnx::load_runtime(model_dir).unwrap();
    let runtime_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut e = SentenceModel::load(model_dir, ModelSpec { kind, precision }, 1).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let rss_loaded = rss_kib("VmRSS:");
    let t = Instant::now();
    e.embed(&refs).unwrap();
    let first_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "runtime_s": runtime_s, "load_s": load_s, "first_batch_s": first_s,
            "rss_before_kib": before, "rss_loaded_kib": rss_loaded,
            // VmHWM, not ru_maxrss: that one includes the parent's peak
            // (Linux keeps it across fork and exec).
            "peak_rss_kib": rss_kib("VmHWM:"),
        })
    );
}

fn run_child(name: &str, texts_path: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env("EMBED_CHILD", name)
        .env("EMBED_CHILD_TEXTS", texts_path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("child exited with {}", out.status));
    }
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))
}

/// Cosine of two vectors (the engine's are unit length already; normalized anyway).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// (min, mean) of the row-wise cosines.
fn cos_stats(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    let c: Vec<f64> = a.iter().zip(b).map(|(x, y)| cosine(x, y)).collect();
    (c.iter().cloned().fold(f64::INFINITY, f64::min), c.iter().sum::<f64>() / c.len().max(1) as f64)
}

fn pct_of(mut v: Vec<usize>, p: f64) -> usize {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The daemon's path over the set: a cold cache (hits are the set's own
/// repeats) and then a warm one (every text a hit).
struct Daemon {
    batch: usize,
    cold: f64,
    hits: usize,
    warm: f64,
}

/// The vector worker's own path (`Engine::embed_texts`, what
/// `embed_blocks` does once it has the blocks' texts): chunks of CHUNK, the
/// cache, each text once, sorted batches, int8 records. Returns (texts/s, hits).
fn daemon_pass(engine: &Engine, texts: &[&str]) -> (f64, usize) {
    let t = Instant::now();
    let mut hits = 0;
    let mut out = Vec::new();
    for chunk in texts.chunks(CHUNK) {
        out.clear();
        hits += engine.embed_texts(chunk, &mut out).unwrap().hits as usize;
        std::hint::black_box(&out);
    }
    (texts.len() as f64 / t.elapsed().as_secs_f64(), hits)
}

/// The share of texts the cache must serve for the daemon's path to reach
/// twice Python's best fp32 rate: a miss costs what the cold pass spent per
/// text it embedded, a hit what the warm pass spent per text.
fn hits_needed(d: &Daemon, py: Option<(f64, usize)>, n: usize) -> String {
    let Some((py, _)) = py else { return "–".into() };
    let misses = n.saturating_sub(d.hits).max(1) as f64;
    let t_miss = n as f64 / d.cold / misses;
    let t_hit = 1.0 / d.warm;
    let h = (t_miss - 1.0 / (2.0 * py)) / (t_miss - t_hit);
    if h <= 0.0 {
        "none (met without)".into()
    } else {
        format!("{:.0} %", h * 100.0)
    }
}

#[derive(Default)]
struct Run {
    plain: f64,
    sorted: f64,
}

struct Measured {
    /// How many texts (a prefix of the set) this model embedded.
    n: usize,
    kind: ModelKind,
    precision: Precision,
    runs: BTreeMap<(usize, usize), Run>,
    /// Vectors of the first thread count: plain at the smallest batch,
    /// sorted at the largest.
    plain_vecs: Vec<Vec<f32>>,
    sorted_vecs: Vec<Vec<f32>>,
    /// By threads: the daemon's path (worker chunks + cache).
    daemon: BTreeMap<usize, Daemon>,
    load: Result<serde_json::Value, String>,
    file_mb: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` support
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_dir = std::env::var_os("OP_DBUS_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    if let Ok(name) = std::env::var("EMBED_CHILD") {
        let texts = PathBuf::from(std::env::var_os("EMBED_CHILD_TEXTS").expect("EMBED_CHILD_TEXTS"));
        return child(&model_dir, &name, &texts);
    }
    let n: usize = std::env::var("EMBED_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1024).max(1);
    let n_mpnet: usize = std::env::var("EMBED_N_MPNET").ok().and_then(|v| v.parse().ok()).unwrap_or(256).max(1);
    let threads: Vec<usize> = env_list("EMBED_THREADS", "1,2").iter().filter_map(|x| x.parse().ok()).collect();
    let batches: Vec<usize> = env_list("EMBED_BATCHES", "1,8,32").iter().filter_map(|x| x.parse().ok()).collect();
    let wanted = env_list("EMBED_MODELS", &ALL.iter().map(|a| a.0).collect::<Vec<_>>().join(","));
    let python = std::env::var("EMBED_PYTHON").unwrap_or_else(|_| "python3".into());
    let work = std::env::var_os("EMBED_OUT").map(PathBuf::from).unwrap_or_else(|| root.join("target/bench-embed"));
    std::fs::create_dir_all(&work).unwrap();
    let work = work.canonicalize().unwrap();
    let note = |s: String| eprintln!("bench-embed: {s}");

    // 1. The text set, written for the Python side.
    let texts = match std::env::var_os("EMBED_TRACE") {
        Some(p) => trace_texts(Path::new(&p), n),
        None => texts(n),
    };
    let n = texts.len();
    let texts_path = work.join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let distinct = texts.iter().collect::<HashSet<_>>().len();
    let bytes: Vec<usize> = texts.iter().map(String::len).collect();
    note(format!("{n} texts in {}", texts_path.display()));

    if let Err(e) = op_dbus::ml::onnx::load_runtime(&model_dir) {
        note(format!("no ONNX Runtime, nothing to measure: {e}"));
        return;
    }

    // Token counts per tokenizer, untruncated.
    let mut token_stats: Vec<(ModelKind, Vec<usize>)> = Vec::new();
    for kind in [ModelKind::MiniLmL3, ModelKind::MiniLmL6, ModelKind::MpNet] {
        let path = model_dir.join(kind.id()).join("tokenizer.json");
        if !wanted.iter().any(|w| ALL.iter().any(|a| a.0 == w && a.1 == kind)) {
            continue;
        }
        if let Ok(mut tok) = tokenizers::Tokenizer::from_file(&path) {
            tok.with_padding(None);
            let _ = tok.with_truncation(None);
            let lens = tok.encode_batch(refs.clone(), true).unwrap().iter().map(|e| e.get_ids().len()).collect();
            token_stats.push((kind, lens));
        }
    }

    // 2. Each model present: load in a child, then throughput here, then Python.
    let mut measured: Vec<Measured> = Vec::new();
    let mut python_out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    for &(name, kind, precision) in ALL.iter().filter(|a| wanted.iter().any(|w| w == a.0)) {
        let spec = ModelSpec { kind, precision };
        let file = model_dir.join(kind.id()).join(spec.file());
        if !file.is_file() || !model_dir.join(kind.id()).join("tokenizer.json").is_file() {
            let msg = format!("{name}: no {} (skipped)", file.display());
            note(msg.clone());
            skipped.push(msg);
            continue;
        }
        let file_mb = std::fs::metadata(&file).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        note(format!("{name}: load time and peak RSS in a child process"));
        let load = run_child(name, &texts_path);
        // MPNet is ~6x slower than MiniLM-L6: a prefix of the set by default.
        let n = if kind == ModelKind::MpNet { n.min(n_mpnet) } else { n };
        let refs = &refs[..n];
        let mut m = Measured {
            n,
            kind,
            precision,
            runs: BTreeMap::new(),
            plain_vecs: Vec::new(),
            sorted_vecs: Vec::new(),
            daemon: BTreeMap::new(),
            load,
            file_mb,
        };
        for (ti, &th) in threads.iter().enumerate() {
            let mut e = match SentenceModel::load(&model_dir, spec, th) {
                Ok(e) => e,
                Err(err) => {
                    note(format!("{name}: {err} (skipped)"));
                    break;
                }
            };
            // Warm-up: one batch of 32 and eight single texts (as the Python side).
            e.embed(&refs[..32.min(n)]).unwrap();
            for t in refs.iter().take(8) {
                e.embed(&[t]).unwrap();
            }
            for (bi, &b) in batches.iter().enumerate() {
                let t = Instant::now();
                let mut vecs = Vec::with_capacity(n);
                for chunk in refs.chunks(b) {
                    vecs.extend(e.embed(chunk).unwrap());
                }
                let plain = n as f64 / t.elapsed().as_secs_f64();
                if ti == 0 && bi == 0 {
                    m.plain_vecs = vecs;
                }
                let t = Instant::now();
                let vecs = e.embed_sorted(refs, b).unwrap();
                let sorted = n as f64 / t.elapsed().as_secs_f64();
                if ti == 0 && bi + 1 == batches.len() {
                    m.sorted_vecs = vecs;
                }
                note(format!("{name} threads {th} batch {b}: {plain:.1} emb/s, sorted {sorted:.1} emb/s"));
                m.runs.insert((th, b), Run { plain, sorted });
            }
            // The daemon's path at its default batch: worker chunks, the
            // LMDB cache, each text once, int8 records.
            {
                let b = op_dbus::config::VectorConfig::default().batch;
                let dir = tempfile::tempdir_in(&work).unwrap();
                let cache = EmbedCache::open(dir.path(), 1_000_000).unwrap();
                let cfg = EngineConfig {
                    level: vector_level(kind),
                    model_dir: model_dir.clone(),
                    precision,
                    threads: th,
                    batch: b,
                };
                let engine = Engine::start(&cfg, Some(cache)).expect("an ML level has an engine");
                assert_eq!(engine.id(), spec.id(), "the daemon's engine fell back: {:?}", engine.fallback());
                let (cold, hits) = daemon_pass(&engine, refs);
                let (warm, _) = daemon_pass(&engine, refs);
                note(format!(
                    "{name} threads {th} daemon path: cold cache {cold:.1} emb/s ({hits} hits), warm {warm:.1}"
                ));
                m.daemon.insert(th, Daemon { batch: b, cold, hits, warm });
            }
        }
        measured.push(m);

        if python != "none" {
            let out = work.join(format!("python-{}.json", spec.id()));
            let _ = std::fs::remove_file(&out);
            let join = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
            let status = Command::new(&python)
                .arg(root.join("scripts/bench-embed.py"))
                .arg("--texts")
                .arg(&texts_path)
                .arg("--model-dir")
                .arg(&model_dir)
                .args(["--models", &spec.id(), "--threads", &join(&threads), "--batches", &join(&batches)])
                .args(["--limit", &n.to_string()])
                .arg("--out")
                .arg(&out)
                .arg("--vectors")
                .arg(&work)
                .status();
            match status {
                Ok(s) if s.success() => {
                    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
                    if let Some(x) = r["models"].get(spec.id()) {
                        python_out.insert(spec.id(), x.clone());
                    }
                }
                other => note(format!("{name}: the Python peer failed: {other:?}")),
            }
        }
    }

    // 3. The tables.
    let py_rate = |id: &str, th: usize, b: usize| -> Option<f64> {
        python_out.get(id)?["runs"]
            .as_array()?
            .iter()
            .find(|r| r["threads"].as_u64() == Some(th as u64) && r["batch"].as_u64() == Some(b as u64))?["per_s"]
            .as_f64()
    };
    let fp32_of = |kind: ModelKind| measured.iter().find(|m| m.kind == kind && m.precision == Precision::Fp32);
    let fmt = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    println!();
    println!(
        "## Embeddings (N = {n} texts, {distinct} distinct; ONNX Runtime 1.32.0 both sides; load average at the end: {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!(
        "Text bytes: mean {:.0}, p50 {}, p95 {}, max {}.",
        bytes.iter().sum::<usize>() as f64 / n as f64,
        pct_of(bytes.clone(), 0.5),
        pct_of(bytes.clone(), 0.95),
        bytes.iter().max().unwrap()
    );
    for (kind, lens) in &token_stats {
        println!(
            "Tokens ({} tokenizer, with CLS/SEP, before truncation): mean {:.1}, p50 {}, p95 {}, max {}.",
            short_model(*kind),
            lens.iter().sum::<usize>() as f64 / n as f64,
            pct_of(lens.clone(), 0.5),
            pct_of(lens.clone(), 0.95),
            lens.iter().max().unwrap()
        );
    }
    for s in &skipped {
        println!("Skipped {s}.");
    }
    for m in measured.iter().filter(|m| m.n != n) {
        println!(
            "{} {}: the first {} texts only (EMBED_N_MPNET), for Rust and Python alike.",
            short_model(m.kind),
            prec(m.precision),
            m.n
        );
    }
    println!();
    println!("### Throughput (embeddings/s; tokenization, pooling and normalization included)");
    println!();
    println!(
        "| model | precision | threads | batch | Rust emb/s | Rust sorted emb/s | Python emb/s | ratio (best Rust / Python fp32) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for m in &measured {
        let spec = ModelSpec { kind: m.kind, precision: m.precision };
        let fp32_id = ModelSpec { kind: m.kind, precision: Precision::Fp32 }.id();
        for (&(th, b), r) in &m.runs {
            let base = py_rate(&fp32_id, th, b);
            let best = r.plain.max(r.sorted);
            println!(
                "| {} | {} | {th} | {b} | {:.1} | {:.1} | {} | {} |",
                short_model(m.kind),
                prec(m.precision),
                r.plain,
                r.sorted,
                fmt(py_rate(&spec.id(), th, b)),
                base.map(|p| format!("{:.2}×", best / p)).unwrap_or_else(|| "–".into())
            );
        }
    }

    // The daemon's path, per model file.
    println!();
    println!(
        "### The daemon's path (vector worker: chunks of {CHUNK}, LMDB cache, each text once, `embed_sorted`, int8 records)"
    );
    println!();
    println!("| model | precision | threads | batch | cold cache emb/s (hits: the set's own repeats) | warm cache emb/s (all hits) |");
    println!("|---|---|---|---|---|---|");
    for m in &measured {
        for (th, d) in &m.daemon {
            println!(
                "| {} | {} | {th} | {} | {:.1} ({} of {}) | {:.0} |",
                short_model(m.kind),
                prec(m.precision),
                d.batch,
                d.cold,
                d.hits,
                m.n,
                d.warm
            );
        }
    }

    // Per level: the best Rust configuration whose vectors stay within
    // cosine 0.99 of fp32, against Python's best fp32 configuration.
    println!();
    println!("### Per level (target: ≥ 2× Python's fp32 throughput, cosine ≥ 0.99 to fp32)");
    println!();
    println!(
        "| level | threads | best Python fp32 (batch) | best Rust engine (precision, mode, batch) | ratio | daemon path, cold cache (precision) | ratio | cache hits needed for 2× |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kind in [ModelKind::MiniLmL3, ModelKind::MiniLmL6, ModelKind::MpNet] {
        let fp32_id = ModelSpec { kind, precision: Precision::Fp32 }.id();
        let qualifies = |m: &&Measured| {
            m.kind == kind
                && match (m.precision, fp32_of(kind)) {
                    (Precision::Fp32, _) => true,
                    (Precision::Int8, Some(f)) => cos_stats(&m.plain_vecs, &f.plain_vecs).0 >= 0.99,
                    (Precision::Int8, None) => false,
                }
        };
        for &th in &threads {
            let mut best: Option<(f64, String)> = None;
            let mut daemon: Option<(&Daemon, Precision)> = None;
            for m in measured.iter().filter(qualifies) {
                for (&(_, b), r) in m.runs.iter().filter(|((t, _), _)| *t == th) {
                    for (rate, mode) in [(r.plain, "in order"), (r.sorted, "sorted")] {
                        if best.as_ref().is_none_or(|x| rate > x.0) {
                            best = Some((rate, format!("{}, {mode}, {b}", prec(m.precision))));
                        }
                    }
                }
                if let Some(d) = m.daemon.get(&th) {
                    if daemon.is_none_or(|x| d.cold > x.0.cold) {
                        daemon = Some((d, m.precision));
                    }
                }
            }
            let py =
                batches.iter().filter_map(|&b| py_rate(&fp32_id, th, b).map(|r| (r, b))).fold(
                    None,
                    |acc, x| match acc {
                        Some((r, _)) if r >= x.0 => acc,
                        _ => Some(x),
                    },
                );
            let Some((rate, what)) = best else { continue };
            let ratio = |x: f64| py.map(|(r, _)| format!("{:.2}×", x / r)).unwrap_or_else(|| "–".into());
            let (d_cold, d_ratio, needed) = match daemon {
                Some((d, p)) => (format!("{:.1} ({})", d.cold, prec(p)), ratio(d.cold), hits_needed(d, py, n)),
                None => ("–".into(), "–".into(), "–".into()),
            };
            println!(
                "| {} ({}) | {th} | {} | {rate:.1} ({what}) | {} | {d_cold} | {d_ratio} | {needed} |",
                vector_level(kind).as_str(),
                short_model(kind),
                py.map(|(r, b)| format!("{r:.1} ({b})")).unwrap_or_else(|| "–".into()),
                ratio(rate),
            );
        }
    }

    println!();
    println!("### Load time and peak RSS (a fresh process per model, 1 thread; first batch = the first 32 texts)");
    println!();
    println!(
        "| model | precision | file | Rust: runtime init / model load / first batch | Rust peak RSS (before load) | Python: import / load / first batch | Python peak RSS (after import) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mib =
        |v: &serde_json::Value, k: &str| v[k].as_f64().map(|x| format!("{:.0} MiB", x / 1024.0)).unwrap_or("–".into());
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().map(|x| format!("{:.0} ms", x * 1e3)).unwrap_or("–".into());
    for m in &measured {
        let id = ModelSpec { kind: m.kind, precision: m.precision }.id();
        let (rust_t, rust_m) = match &m.load {
            Ok(l) => (
                format!("{} / {} / {}", ms(l, "runtime_s"), ms(l, "load_s"), ms(l, "first_batch_s")),
                format!("{} ({})", mib(l, "peak_rss_kib"), mib(l, "rss_before_kib")),
            ),
            Err(e) => (format!("failed: {e}"), "–".into()),
        };
        let (py_t, py_m) = match python_out.get(&id).map(|p| &p["load"]) {
            Some(l) => (
                format!("{} / {} / {}", ms(l, "import_s"), ms(l, "load_s"), ms(l, "first_batch_s")),
                format!("{} ({})", mib(l, "peak_rss_kib"), mib(l, "rss_after_import_kib")),
            ),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {} | {} | {:.1} MB | {rust_t} | {rust_m} | {py_t} | {py_m} |",
            short_model(m.kind),
            prec(m.precision),
            m.file_mb
        );
    }

    println!();
    println!("### Agreement (cosine per text, min / mean)");
    println!();
    println!(
        "| model | precision | texts | vs fp32 (Rust, batch {}) | Rust vs Python, same file | sorted (batch {}) vs in order (batch {}) |",
        batches[0],
        batches[batches.len() - 1],
        batches[0]
    );
    println!("|---|---|---|---|---|---|");
    let pair = |(a, b): (f64, f64)| format!("{a:.4} / {b:.4}");
    for m in &measured {
        let id = ModelSpec { kind: m.kind, precision: m.precision }.id();
        let vs_fp32 = match (m.precision, fp32_of(m.kind)) {
            (Precision::Fp32, _) => "(itself)".to_string(),
            (Precision::Int8, Some(f)) => pair(cos_stats(&m.plain_vecs, &f.plain_vecs)),
            (Precision::Int8, None) => "– (no fp32 file)".into(),
        };
        let py =
            std::fs::read(work.join(format!("py-{id}.f32"))).ok().filter(|_| python_out.contains_key(&id)).map(|b| {
                let dims = m.kind.dims();
                let floats: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                floats.chunks_exact(dims).map(|c| c.to_vec()).collect::<Vec<_>>()
            });
        let vs_py = match py {
            Some(p) if p.len() == m.plain_vecs.len() => pair(cos_stats(&m.plain_vecs, &p)),
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {vs_fp32} | {vs_py} | {} |",
            short_model(m.kind),
            prec(m.precision),
            m.n,
            cos_pair(&m.sorted_vecs, &m.plain_vecs, pair)
        );
    }
}

fn cos_pair(a: &[Vec<f32>], b: &[Vec<f32>], pair: impl Fn((f64, f64)) -> String) -> String {
    if a.len() == b.len() && !a.is_empty() {
        pair(cos_stats(a, b))
    } else {
        "–".into()
    }
}
