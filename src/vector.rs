//! The heuristic vector (`heuristic-v1`, 64 dims): hand-made features
//! computed from the footprint alone (its own capture time, never the wall
//! clock), so the same event always gets the same vector. Every component is
//! finite and lies in [-1, 1]. The layout is part of the chain's contract
//! through the vector hash; docs/FORMAT.md lists it.

use crate::codec::{Footprint, Source, Value};
use sha2::{Digest, Sha256};

pub const HEURISTIC_MODEL: &str = "heuristic-v1";
pub const HEURISTIC_DIMS: usize = 64;

/// Operation categories, by the verb in the member name (dims 8..16).
const CATEGORIES: [(&str, &[&str]); 7] = [
    ("create", &["new", "add", "create", "insert", "register", "install"]),
    ("remove", &["remove", "delete", "unregister", "uninstall", "drop", "destroy"]),
    ("change", &["changed", "set", "update", "modify", "rename", "reload"]),
    ("start", &["start", "activate", "enable", "open", "connect", "up"]),
    ("stop", &["stop", "deactivate", "disable", "close", "disconnect", "down", "kill"]),
    ("query", &["get", "list", "query", "read", "introspect", "ping"]),
    ("error", &["error", "fail", "failed", "denied", "timeout"]),
];

/// Computes the 64-dim heuristic vector of a footprint whose data decodes
/// to `value` (callers pass the value they already have, to avoid decoding).
pub fn heuristic(fp: &Footprint, value: &Value) -> [f32; HEURISTIC_DIMS] {
    let mut v = [0f32; HEURISTIC_DIMS];

    // 0..8: plugin id hash, one byte per dim scaled to [0, 1].
    let ph = Sha256::digest(fp.plugin_id.as_bytes());
    for i in 0..8 {
        v[i] = ph[i] as f32 / 255.0;
    }

    // 8..16: operation category one-hot (15 = other): the first category with
    // a verb contained in the lower-cased member name.
    let member = fp.operation.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    let cat = CATEGORIES.iter().position(|(_, verbs)| verbs.iter().any(|verb| member.contains(verb))).unwrap_or(7);
    v[8 + cat] = 1.0;

    // 16..24: operation hash bucket one-hot.
    let oh = Sha256::digest(fp.operation.as_bytes());
    v[16 + (oh[0] as usize % 8)] = 1.0;

    // 24..32: top-level shape of the data.
    let top = match value {
        Value::Nil => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => 2,
        Value::Str(_) | Value::Bin(_) => 3,
        Value::Array(_) => 4,
        Value::Map(_) => 5,
    };
    v[24 + top] = 1.0;
    let top_len = match value {
        Value::Array(a) => a.len(),
        Value::Map(m) => m.len(),
        Value::Str(s) => s.len(),
        Value::Bin(b) => b.len(),
        _ => 0,
    };
    v[30] = squash(top_len as f32, 64.0);
    let mut stats = Stats::default();
    stats.walk(value, 0);
    v[31] = (stats.max_depth as f32 / 64.0).min(1.0);

    // 32..40: distribution of value types over all nodes.
    let total = stats.counts.iter().sum::<u32>().max(1) as f32;
    for (i, c) in stats.counts.iter().enumerate() {
        v[32 + i] = *c as f32 / total;
    }

    // 40..48: sizes and context.
    v[40] = squash(total, 256.0);
    v[41] = squash(fp.data.len() as f32, 4096.0);
    v[42] = squash(stats.string_bytes as f32 / stats.strings.max(1) as f32, 64.0);
    v[43] = squash(stats.map_keys as f32, 128.0);
    let path_depth = fp.path.as_deref().map(|p| p.split('/').filter(|s| !s.is_empty()).count()).unwrap_or(0);
    v[44] = squash(path_depth as f32, 8.0);
    v[45] = if fp.sender.is_some() { 1.0 } else { 0.0 };
    v[46] = if fp.path.is_some() { 1.0 } else { 0.0 };
    v[47] = match fp.source {
        Source::Dbus => 0.25,
        Source::Submit => 0.5,
        Source::Import => 0.75,
        Source::Internal => 1.0,
    };

    // 48..56: time of the event (UTC), as points on circles.
    let secs = fp.captured_ns.div_euclid(1_000_000_000);
    let day_secs = secs.rem_euclid(86_400) as f32;
    let hour = day_secs / 3600.0;
    let minute = (day_secs % 3600.0) / 60.0;
    // 1970-01-01 was a Thursday; 0 = Monday.
    let weekday = ((secs.div_euclid(86_400) + 3).rem_euclid(7)) as f32;
    let tau = std::f32::consts::TAU;
    v[48] = (tau * hour / 24.0).sin();
    v[49] = (tau * hour / 24.0).cos();
    v[50] = (tau * weekday / 7.0).sin();
    v[51] = (tau * weekday / 7.0).cos();
    v[52] = (tau * minute / 60.0).sin();
    v[53] = (tau * minute / 60.0).cos();
    v[54] = if weekday >= 5.0 { 1.0 } else { 0.0 };
    v[55] = if (9.0..18.0).contains(&hour) { 1.0 } else { 0.0 };

    // 56..64: path hash bucket one-hot (no path: all zero).
    if let Some(p) = &fp.path {
        let h = Sha256::digest(p.as_bytes());
        v[56 + (h[0] as usize % 8)] = 1.0;
    }

    for x in &mut v {
        if !x.is_finite() {
            *x = 0.0;
        }
    }
    v
}

/// The heuristic vector of a search text, for searching at the heuristic
/// level: words that look like a bus name (`org.freedesktop.login1`), an
/// operation (`org.freedesktop.login1.Manager.SessionNew`, last component
/// capitalized) or an object path (`/org/...`) fill those features; the
/// other words only pick the operation category (`failed` → error). The
/// features a text cannot know (time, data shape, sizes) are left at zero,
/// so they do not favour any event.
pub fn heuristic_query(text: &str) -> [f32; HEURISTIC_DIMS] {
    let mut plugin = None;
    let mut operation = None;
    let mut path = None;
    let mut words = Vec::new();
    for w in text.split_whitespace() {
        let last = w.rsplit('.').next().unwrap_or("");
        if w.starts_with('/') {
            path = Some(w.to_string());
        } else if w.contains('.') && last.starts_with(char::is_uppercase) {
            operation = Some(w.to_string());
        } else if w.contains('.') {
            plugin = Some(w.to_string());
        } else {
            words.push(w.to_ascii_lowercase());
        }
    }
    let fp = Footprint {
        source: Source::Dbus,
        plugin_id: plugin.clone().unwrap_or_default(),
        operation: operation.clone().unwrap_or_else(|| words.join("")),
        path: path.clone(),
        sender: None,
        creds: None,
        captured_ns: 0,
        signature: String::new(),
        data_hash: [0; 32],
        data: Vec::new(),
        flags: 0,
    };
    let mut v = heuristic(&fp, &Value::Nil);
    if plugin.is_none() {
        v[..8].fill(0.0);
    }
    if operation.is_none() {
        v[16..24].fill(0.0);
        // Words with no known verb say nothing about the category.
        if v[15] == 1.0 {
            v[15] = 0.0;
        }
    }
    v[24..56].fill(0.0);
    if path.is_some() {
        let depth = path.as_deref().map_or(0, |p| p.split('/').filter(|s| !s.is_empty()).count());
        v[44] = squash(depth as f32, 8.0);
        v[46] = 1.0;
    }
    v
}

/// Maps a non-negative count onto [0, 1) with `scale` giving 0.5.
fn squash(x: f32, scale: f32) -> f32 {
    let x = x.max(0.0);
    x / (x + scale)
}

#[derive(Default)]
struct Stats {
    /// nil, bool, int, float, str, bin, array, map.
    counts: [u32; 8],
    max_depth: usize,
    strings: u32,
    string_bytes: u64,
    map_keys: u32,
}

impl Stats {
    fn walk(&mut self, v: &Value, depth: usize) {
        self.max_depth = self.max_depth.max(depth);
        match v {
            Value::Nil => self.counts[0] += 1,
            Value::Bool(_) => self.counts[1] += 1,
            Value::Int(_) | Value::UInt(_) => self.counts[2] += 1,
            Value::Float(_) => self.counts[3] += 1,
            Value::Str(s) => {
                self.counts[4] += 1;
                self.strings += 1;
                self.string_bytes += s.len() as u64;
            }
            Value::Bin(_) => self.counts[5] += 1,
            Value::Array(a) => {
                self.counts[6] += 1;
                for x in a {
                    self.walk(x, depth + 1);
                }
            }
            Value::Map(m) => {
                self.counts[7] += 1;
                self.map_keys += m.len() as u32;
                for (k, x) in m {
                    self.walk(k, depth + 1);
                    self.walk(x, depth + 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::data_hash;

    fn fp(op: &str, ts: i64, value: &Value) -> Footprint {
        let data = value.encode();
        Footprint {
            source: Source::Dbus,
            plugin_id: "org.freedesktop.login1".into(),
            operation: op.into(),
            path: Some("/org/freedesktop/login1/session/_32".into()),
            sender: Some(":1.4".into()),
            creds: None,
            captured_ns: ts,
            signature: "a{sv}".into(),
            data_hash: data_hash(&data),
            data,
            flags: 0,
        }
    }

    #[test]
    fn same_event_same_vector_and_finite() {
        let value = Value::map(vec![(Value::Str("x".into()), Value::Float(f64::MAX))]);
        let a = heuristic(&fp("org.freedesktop.login1.Manager.SessionNew", 42, &value), &value);
        let b = heuristic(&fp("org.freedesktop.login1.Manager.SessionNew", 42, &value), &value);
        assert_eq!(a, b);
        assert!(a.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
        assert_eq!(a[8], 1.0, "SessionNew is a create");
    }

    #[test]
    fn a_query_text_is_nearest_to_what_it_names() {
        let value = Value::Nil;
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let login = heuristic(&fp("org.freedesktop.login1.Manager.SessionNew", 7, &value), &value);
        let mut job = fp("org.freedesktop.systemd1.Manager.JobRemoved", 7, &value);
        job.plugin_id = "org.freedesktop.systemd1".into();
        let job = heuristic(&job, &value);
        let q = heuristic_query("org.freedesktop.login1 new");
        assert!(dot(&q, &login) > dot(&q, &job));
        let q = heuristic_query("org.freedesktop.systemd1 removed");
        assert!(dot(&q, &job) > dot(&q, &login));
        // A text with nothing it can read is all zeros.
        assert!(heuristic_query("zzz").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn time_features_follow_the_event_not_the_clock() {
        let value = Value::Nil;
        let noon = 12 * 3600 * 1_000_000_000i64;
        let midnight = 0i64;
        let a = heuristic(&fp("a.B.JobRemoved", noon, &value), &value);
        let b = heuristic(&fp("a.B.JobRemoved", midnight, &value), &value);
        assert!((a[49] - -1.0).abs() < 1e-5, "cos(noon) = -1");
        assert!((b[49] - 1.0).abs() < 1e-5, "cos(midnight) = 1");
        assert_eq!(a[9], 1.0, "JobRemoved is a remove");
        // Pre-epoch timestamps are fine too.
        let c = heuristic(&fp("a.B.X", -5, &value), &value);
        assert!(c.iter().all(|x| x.is_finite()));
    }
}
