//! The text an ML model embeds for a footprint (`text-v1`). Stable: a
//! change makes stored embeddings incomparable, so it gets a new version.
//!
//! `<plugin> <interface words> <member words> <path tail> <key arguments>`:
//! - plugin as recorded (`org.freedesktop.systemd1`);
//! - the operation's last two components with CamelCase split into words
//!   (`org.freedesktop.systemd1.Manager.JobRemoved` → `Manager Job Removed`);
//! - the last two components of the object path, D-Bus escapes (`_2e`)
//!   decoded (`/org/freedesktop/systemd1/unit/nginx_2eservice` →
//!   `unit nginx.service`);
//! - the data's scalars in order, depth first, map entries as `key=value`,
//!   variant signatures dropped, at most 24 of them, each cut to 64 bytes;
//! - the whole cut to 512 bytes (at a character boundary).

use crate::codec::Value;

const MAX_ARGS: usize = 24;
const MAX_ARG: usize = 64;
const MAX_TEXT: usize = 512;

pub fn input_text(plugin: &str, operation: &str, path: Option<&str>, data: &Value) -> String {
    let mut parts: Vec<String> = vec![plugin.to_string()];
    let ops: Vec<&str> = operation.rsplit('.').take(2).collect();
    for op in ops.iter().rev() {
        parts.push(split_camel(op));
    }
    if let Some(p) = path {
        let tail: Vec<&str> = p.rsplit('/').filter(|c| !c.is_empty()).take(2).collect();
        for c in tail.iter().rev() {
            parts.push(unescape(c));
        }
    }
    let mut args = Vec::new();
    scalars(data, None, &mut args);
    parts.extend(args);
    cut(parts.join(" "), MAX_TEXT)
}

fn split_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        out.push(c);
    }
    out
}

/// D-Bus object paths escape bytes as `_xx` (systemd: `nginx_2eservice`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn scalars(v: &Value, key: Option<String>, out: &mut Vec<String>) {
    if out.len() >= MAX_ARGS {
        return;
    }
    let push = |out: &mut Vec<String>, text: String| {
        let text = cut(text, MAX_ARG);
        out.push(match &key {
            Some(k) => format!("{k}={text}"),
            None => text,
        });
    };
    match v {
        Value::Nil | Value::Bin(_) => {}
        Value::Bool(b) => push(out, b.to_string()),
        Value::Int(i) => push(out, i.to_string()),
        Value::UInt(u) => push(out, u.to_string()),
        Value::Float(f) => push(out, f.to_string()),
        Value::Str(s) => push(out, s.clone()),
        // A recorded variant is [signature, value]: keep the value.
        Value::Array(a) if a.len() == 2 && matches!(&a[0], Value::Str(s) if is_signature(s)) => {
            scalars(&a[1], key, out)
        }
        Value::Array(a) => {
            for x in a {
                scalars(x, key.clone(), out);
            }
        }
        Value::Map(m) => {
            for (k, x) in m {
                let k = match k {
                    Value::Str(s) => s.clone(),
                    other => other.to_json().to_string(),
                };
                scalars(x, Some(k), out);
            }
        }
    }
}

fn is_signature(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && crate::codec::dbus::parse_signature(s).is_ok_and(|t| t.len() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_job_removed() {
        let data = Value::Array(vec![
            Value::UInt(100),
            Value::Str("/org/freedesktop/systemd1/job/100".into()),
            Value::Str("nginx.service".into()),
            Value::Str("failed".into()),
        ]);
        let t = input_text(
            "org.freedesktop.systemd1",
            "org.freedesktop.systemd1.Manager.JobRemoved",
            Some("/org/freedesktop/systemd1/unit/nginx_2eservice"),
            &data,
        );
        assert_eq!(
            t,
            "org.freedesktop.systemd1 Manager Job Removed unit nginx.service 100 /org/freedesktop/systemd1/job/100 \
             nginx.service failed"
        );
    }

    #[test]
    fn maps_variants_and_limits() {
        let data = Value::Array(vec![
            Value::Str("org.freedesktop.systemd1.Unit".into()),
            Value::map(vec![(
                Value::Str("ActiveState".into()),
                Value::Array(vec![Value::Str("s".into()), Value::Str("active".into())]),
            )]),
        ]);
        let t = input_text("p", "a.B.PropertiesChanged", None, &data);
        assert_eq!(t, "p B Properties Changed org.freedesktop.systemd1.Unit ActiveState=active");
        let long = Value::Array((0..100).map(|i| Value::Str(format!("{i}{}", "é".repeat(100)))).collect());
        let t = input_text("p", "o", None, &long);
        assert!(t.len() <= MAX_TEXT);
    }
}
