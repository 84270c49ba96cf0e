//! What a source hands in, checked before it becomes an event: the JSON
//! lines of `op-dbus import` (one object per line), the checks every
//! submitted event passes (D-Bus `Submit` too), and the bounded line reader.
//! The import itself (reading, batching, acks) is [`crate::import`].
//!
//! Fields: `plugin_id` (string, required), `operation` (string, required),
//! `data` (any JSON, required; `null` is allowed), `timestamp` (RFC 3339
//! string or integer nanoseconds since the epoch; default: now), `path`,
//! `sender` (strings). Unknown fields are rejected, so a misspelt one is
//! not silently dropped.

use std::io::BufRead;

use serde::Deserialize;

use crate::codec::{DataError, Source, Value, MAX_FIELD_BYTES};
use crate::messages::RawEvent;

/// Limit on plugin_id and operation, in bytes (D-Bus names are at most 255).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    plugin_id: String,
    operation: String,
    /// `Some(Nil)` for an explicit null, `None` when the field is missing.
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    sender: Option<String>,
}

/// Parses `data` straight into canonical [`Value`]s (no intermediate JSON tree).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LineError {
    #[error("not valid UTF-8")]
    Utf8,
    #[error("{field} is longer than {MAX_FIELD_BYTES} bytes")]
    TooLongField { field: &'static str },
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("{0}")]
    Json(String),
    #[error("missing field `data` (use null for no data)")]
    MissingData,
    #[error("{field} must be 1 to {MAX_NAME_BYTES} bytes without control characters")]
    BadName { field: &'static str },
    #[error("timestamp must be an RFC 3339 string or integer nanoseconds since the epoch, got {0}")]
    BadTimestamp(String),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Limits applied to each line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_data_bytes: usize,
    pub max_depth: usize,
}

impl Limits {
    /// The longest line read whole: JSON is larger than its MessagePack, but
    /// not by more than escaping inflates it (6 bytes for one).
    pub fn max_line_bytes(&self) -> usize {
        self.max_data_bytes * 6 + 64 * 1024
    }
}

/// Parses one line into an event. `now_ns` is used when the line has no timestamp.
pub fn parse_line(bytes: &[u8], limits: Limits, now_ns: i64) -> Result<RawEvent, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LineError::Utf8)?;
    let line: Line = serde_json::from_str(text).map_err(|e| LineError::Json(json_error(e)))?;
    let value = line.data.ok_or(LineError::MissingData)?;
    check_event(&line.plugin_id, &line.operation, &value, limits)?;
    for (field, v) in [("path", &line.path), ("sender", &line.sender)] {
        if v.as_ref().is_some_and(|s| s.len() > MAX_FIELD_BYTES) {
            return Err(LineError::TooLongField { field });
        }
    }
    let captured_ns = match &line.timestamp {
        None | Some(serde_json::Value::Null) => now_ns,
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| LineError::BadTimestamp(n.to_string()))?,
        Some(serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| LineError::BadTimestamp(format!("{s:?}")))?,
        Some(other) => return Err(LineError::BadTimestamp(other.to_string())),
    };
    Ok(RawEvent {
        source: Source::Import,
        plugin_id: line.plugin_id,
        operation: line.operation,
        path: line.path,
        sender: line.sender,
        creds: None,
        captured_ns,
        signature: String::new(),
        data: value,
    })
}

/// The checks every submitted event passes, from a file or over D-Bus:
/// names present, short and without control characters; data within the
/// depth and size caps.
pub fn check_event(plugin_id: &str, operation: &str, value: &Value, limits: Limits) -> Result<(), LineError> {
    check_name("plugin_id", plugin_id)?;
    check_name("operation", operation)?;
    if value.depth() > limits.max_depth {
        return Err(DataError::TooDeep { max: limits.max_depth }.into());
    }
    let size = value.encoded_len();
    if size > limits.max_data_bytes {
        return Err(DataError::TooLarge { size, max: limits.max_data_bytes }.into());
    }
    Ok(())
}

/// serde_json stops at 128 levels with "recursion limit exceeded"; say it
/// in the same words as the configured depth cap.
fn json_error(e: serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("recursion limit exceeded") {
        format!("data nests deeper than the parser's 128 levels ({msg})")
    } else {
        msg
    }
}

fn check_name(field: &'static str, s: &str) -> Result<(), LineError> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES || s.chars().any(char::is_control) {
        return Err(LineError::BadName { field });
    }
    Ok(())
}

/// Reads lines up to `max` bytes. A longer line is consumed to its end and
/// reported as too long, so one bad line cannot exhaust memory.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    pub(crate) line_no: u64,
}

pub enum ReadLine<'a> {
    Line(&'a [u8]),
    TooLong,
    Eof,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader { inner, max, line_no: 0 }
    }

    /// True when the next read would have to wait for the OS: the caller
    /// should hand over what it has batched so far.
    pub fn buffer_empty(&mut self) -> bool {
        self.inner.fill_buf().map(|b| b.is_empty()).unwrap_or(true)
    }

    pub fn next_line<'a>(&mut self, buf: &'a mut Vec<u8>) -> std::io::Result<ReadLine<'a>> {
        buf.clear();
        let mut too_long = false;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                if buf.is_empty() && !too_long {
                    return Ok(ReadLine::Eof);
                }
                break;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if buf.len() + take > self.max + 1 {
                    too_long = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(take);
            if done {
                break;
            }
        }
        self.line_no += 1;
        if too_long {
            return Ok(ReadLine::TooLong);
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(ReadLine::Line(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_data_bytes: 1024, max_depth: 8 };

    #[test]
    fn good_line_with_both_timestamp_forms() {
        let a = parse_line(br#"{"plugin_id":"p","operation":"p.Op","data":{"b":1,"a":[true,null]},"timestamp":"2024-01-02T03:04:05.5Z"}"#, L, 0).unwrap();
        assert_eq!(a.captured_ns, 1_704_164_645_500_000_000);
        let b = parse_line(
            br#"{"plugin_id":"p","operation":"p.Op","data":null,"timestamp":-5,"path":"/x","sender":":1.1"}"#,
            L,
            0,
        )
        .unwrap();
        assert_eq!((b.captured_ns, b.path.as_deref(), b.data), (-5, Some("/x"), Value::Nil));
        let c = parse_line(br#"{"plugin_id":"p","operation":"p.Op","data":1}"#, L, 99).unwrap();
        assert_eq!(c.captured_ns, 99);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "key must be a string"),
            (br#"{"operation":"x","data":1}"#, "missing field `plugin_id`"),
            (br#"{"plugin_id":"p","operation":"x"}"#, "missing field `data`"),
            (br#"{"plugin_id":"","operation":"x","data":1}"#, "plugin_id must be"),
            (br#"{"plugin_id":"p","operation":"a\u0000b","data":1}"#, "operation must be"),
            (br#"{"plugin_id":"p","operation":"x","data":1,"timestamp":"yesterday"}"#, "timestamp must be"),
            (br#"{"plugin_id":"p","operation":"x","data":1,"extra":2}"#, "unknown field `extra`"),
            (br#"{"plugin_id":"p","operation":"x","data":[[[[[[[[[1]]]]]]]]]}"#, "deeper than 8"),
            (b"\xff\xfe", "UTF-8"),
            (b"[1,2]", "invalid type"),
        ];
        for (line, want) in cases {
            let e = parse_line(line, L, 0).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
        let long_path = format!(r#"{{"plugin_id":"p","operation":"x","data":1,"path":"/{}"}}"#, "a".repeat(4096));
        let e = parse_line(long_path.as_bytes(), L, 0).unwrap_err().to_string();
        assert!(e.contains("path is longer than 4096 bytes"), "{e}");
        let big = format!(r#"{{"plugin_id":"p","operation":"x","data":"{}"}}"#, "x".repeat(2000));
        let e = parse_line(big.as_bytes(), L, 0).unwrap_err().to_string();
        assert!(e.contains("above the cap of 1024"), "{e}");
    }

    #[test]
    fn line_reader_caps_long_lines_and_counts() {
        let input = b"short\nxxxxxxxxxxxxxxxxxxxx\nlast";
        let mut r = LineReader::new(&input[..], 10);
        let mut buf = Vec::new();
        assert!(matches!(r.next_line(&mut buf).unwrap(), ReadLine::Line(b"short")));
        assert!(matches!(r.next_line(&mut buf).unwrap(), ReadLine::TooLong));
        assert!(matches!(r.next_line(&mut buf).unwrap(), ReadLine::Line(b"last")));
        assert!(matches!(r.next_line(&mut buf).unwrap(), ReadLine::Eof));
        assert_eq!(r.line_no, 3);
    }
}
