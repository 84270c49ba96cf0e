//! `op-dbus import` against bad and borderline input: every bad line is
//! named by its line number, nothing from it on is written (unless
//! `--skip-invalid`), limits hold at their exact edges, and good data comes
//! back exactly as it went in.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn good(i: u64) -> Vec<u8> {
    line("bad.input", "Good", json!({ "id": i })).into_bytes()
}

fn ids(blocks: &[Value]) -> Vec<u64> {
    blocks.iter().map(|b| b["data"]["id"].as_u64().expect("numeric id")).collect()
}

fn nested_arrays(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth))
}

fn raw(data: &str) -> Vec<u8> {
    format!(r#"{{"plugin_id":"bad.input","operation":"Edge","data":{data}}}"#).into_bytes()
}

/// Lines that must be rejected, with a piece of the message that says why.
fn bad_lines() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let b = |s: &str| s.as_bytes().to_vec();
    let mut invalid_utf8 = b(r#"{"plugin_id":"p","operation":"o","data":"caf"#);
    invalid_utf8.extend_from_slice(b"\xc3\x28\xff");
    invalid_utf8.extend_from_slice(br#""}"#);
    vec![
        ("malformed JSON", b("{not json"), "key must be a string"),
        ("truncated JSON", b(r#"{"plugin_id":"p","operation":"o","data":"#), "EOF while parsing"),
        ("trailing garbage", b(r#"{"plugin_id":"p","operation":"o","data":1} x"#), "trailing characters"),
        ("not an object", b("[1,2]"), "invalid type"),
        ("a bare null", b("null"), "invalid type"),
        ("missing plugin_id", b(r#"{"operation":"o","data":1}"#), "missing field `plugin_id`"),
        ("missing operation", b(r#"{"plugin_id":"p","data":1}"#), "missing field `operation`"),
        ("missing data", b(r#"{"plugin_id":"p","operation":"o"}"#), "missing field `data`"),
        ("plugin_id is a number", b(r#"{"plugin_id":5,"operation":"o","data":1}"#), "invalid type"),
        ("operation is an array", b(r#"{"plugin_id":"p","operation":["o"],"data":1}"#), "invalid type"),
        ("path is a number", b(r#"{"plugin_id":"p","operation":"o","data":1,"path":7}"#), "invalid type"),
        ("sender is a bool", b(r#"{"plugin_id":"p","operation":"o","data":1,"sender":true}"#), "invalid type"),
        (
            "timestamp is a bool",
            b(r#"{"plugin_id":"p","operation":"o","data":1,"timestamp":true}"#),
            "timestamp must be",
        ),
        (
            "timestamp is prose",
            b(r#"{"plugin_id":"p","operation":"o","data":1,"timestamp":"noon"}"#),
            "timestamp must be",
        ),
        (
            "timestamp is a float",
            b(r#"{"plugin_id":"p","operation":"o","data":1,"timestamp":1.5}"#),
            "timestamp must be",
        ),
        ("unknown field", b(r#"{"plugin_id":"p","operation":"o","data":1,"extra":2}"#), "unknown field `extra`"),
        ("misspelt field", b(r#"{"plugin":"p","operation":"o","data":1}"#), "unknown field `plugin`"),
        ("invalid UTF-8", invalid_utf8, "not valid UTF-8"),
        ("empty plugin_id", b(r#"{"plugin_id":"","operation":"o","data":1}"#), "plugin_id must be"),
        ("control character", b(r#"{"plugin_id":"p","operation":"a\u0001b","data":1}"#), "operation must be"),
        ("256-byte plugin_id", line(&"p".repeat(256), "o", json!(1)).into_bytes(), "plugin_id must be"),
        ("65 levels of arrays", raw(&nested_arrays(65)), "deeper than 64 levels"),
        ("65 levels of objects", raw(&nested_objects(65)), "deeper than 64 levels"),
        ("1000 levels", raw(&nested_arrays(1000)), "nests deeper"),
        ("100000 levels", raw(&nested_objects(100_000)), "nests deeper"),
    ]
}

/// good, good, BAD, good, good: exit 1, stderr names line 3 and the
/// reason, and only the first two records are written.
#[test]
fn each_bad_line_stops_the_import_at_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (name, bad, why)) in bad_lines().into_iter().enumerate() {
        let state = dir.path().join(format!("state{n}"));
        let input = dir.path().join(format!("in{n}.jsonl"));
        let lines = vec![good(0), good(1), bad, good(3), good(4)];
        let r = import_lines(&state, &input, &lines, &["--json", "--report-commits"], &[]);
        assert_eq!(r.code, 1, "{name}: exit code\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
        assert!(r.stderr.contains("line 3: "), "{name}: line number not named: {}", r.stderr);
        assert!(r.stderr.contains(why), "{name}: expected {why:?} in: {}", r.stderr);
        let summary = r.last_json();
        assert_eq!(summary["committed"], 2, "{name}: {summary}");
        assert_eq!(summary["stopped_at_line"], 3, "{name}: {summary}");
        assert_eq!(summary["invalid_lines"], 1, "{name}: {summary}");
        assert_eq!(summary["head_seq"], 1, "{name}: {summary}");
        assert!(summary["error"].as_str().unwrap().contains(why), "{name}: {summary}");
        let reports: Vec<Value> = r.json_lines().into_iter().filter(|j| j.get("through_line").is_some()).collect();
        assert_eq!(reports.last().map(|j| j["through_line"].clone()), Some(json!(2)), "{name}: {}", r.stdout);
        assert_eq!(ids(&log_json(&state, &[])), vec![0, 1], "{name}: records from the bad line on were written");
    }
}

/// The same bad lines between good ones with `--skip-invalid`: every good
/// line is written, every bad one is counted.
#[test]
fn skip_invalid_writes_every_good_line_and_counts_the_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let bad = bad_lines();
    let mut lines = Vec::new();
    let mut bad_line_numbers = Vec::new();
    for (i, (_, b, _)) in bad.iter().enumerate() {
        lines.push(good(i as u64));
        lines.push(b.clone());
        bad_line_numbers.push(lines.len());
    }
    lines.push(good(bad.len() as u64));
    let r = import_lines(&state, &input, &lines, &["--skip-invalid", "--json"], &[]);
    r.expect_code(0);
    let summary = r.last_json();
    assert_eq!(summary["invalid_lines"].as_u64(), Some(bad.len() as u64), "{summary}");
    assert_eq!(summary["committed"].as_u64(), Some(bad.len() as u64 + 1), "{summary}");
    assert_eq!(summary["lines"].as_u64(), Some(lines.len() as u64), "{summary}");
    assert!(summary["stopped_at_line"].is_null(), "{summary}");
    for (n, (name, _, why)) in bad_line_numbers.iter().zip(&bad).take(20) {
        let said = r.stderr.lines().any(|l| l.contains(&format!("line {n}: ")) && l.contains(why));
        assert!(said, "bad line {n} ({name}) not reported: {}", r.stderr);
    }
    assert_eq!(ids(&log_json(&state, &[])), (0..=bad.len() as u64).collect::<Vec<_>>());

    // The text summary says how many were skipped.
    let r = import_lines(&state, &input, &lines, &["--skip-invalid"], &[]);
    r.expect_code(0);
    assert!(r.stdout.contains(&format!("skipped {} invalid lines", bad.len())), "{}", r.stdout);
    assert_eq!(log_json(&state, &[]).len(), 2 * (bad.len() + 1));
}

#[test]
fn empty_and_blank_input() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");

    std::fs::write(&input, b"").unwrap();
    let r = run(&state, &["import", input.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("committed 0 records"), "{}", r.stdout);
    let r = run(&state, &["import", "--json", input.to_str().unwrap()]);
    r.expect_code(0);
    let s = r.last_json();
    assert_eq!((s["committed"].clone(), s["lines"].clone(), s["head_seq"].clone()), (json!(0), json!(0), Value::Null));
    assert!(log_json(&state, &[]).is_empty());
    let (code, report) = verify_json(&state);
    assert_eq!((code, report["blocks"].as_u64()), (0, Some(0)), "{report}");

    // Blank lines are skipped but still count as lines.
    let lines: Vec<Vec<u8>> =
        vec![good(0), b"".to_vec(), b"   ".to_vec(), good(1), b"\t".to_vec(), b"{".to_vec(), good(2)];
    let r = import_lines(&state, &input, &lines, &["--json"], &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("line 6: "), "{}", r.stderr);
    let s = r.last_json();
    assert_eq!((s["committed"].clone(), s["blank_lines"].clone()), (json!(2), json!(3)), "{s}");
    assert_eq!(ids(&log_json(&state, &[])), vec![0, 1]);

    // CRLF endings and no newline at the end of the file.
    std::fs::write(&input, [good(3), b"\r\n".to_vec(), b"\r\n".to_vec(), good(4)].concat()).unwrap();
    let r = run(&state, &["import", "--json", input.to_str().unwrap()]);
    r.expect_code(0);
    assert_eq!(r.last_json()["blank_lines"], 1);
    assert_eq!(ids(&log_json(&state, &[])), vec![0, 1, 3, 4]);

    // Standard input.
    let mut child = command(&state)
        .args(["import", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for i in 5..8 {
            stdin.write_all(&good(i)).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s: Value = serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
    assert_eq!(s["committed"], 3);
    assert_eq!(ids(&log_json(&state, &[])), vec![0, 1, 3, 4, 5, 6, 7]);
}

const CAP: usize = 65_536;
const CAP_ENV: (&str, &str) = ("OP_DBUS_MAX_DATA_BYTES", "65536");

/// Data encoding to exactly the cap is accepted and comes back whole; one
/// byte more is rejected with a message naming the cap.
#[test]
fn data_size_cap_holds_at_its_edge() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");

    // A string of n bytes (256 <= n < 65536) encodes to 3 + n bytes.
    let at_cap = json!("é".repeat((CAP - 3) / 2) + "x");
    assert_eq!(at_cap.as_str().unwrap().len(), CAP - 3);
    // An array of 16..65535 small uints: 3 + n bytes; one string element of 200 ASCII bytes adds 2 + 200.
    let mut arr: Vec<Value> = (0..(CAP - 3 - 202 - 1)).map(|i| json!(i % 128)).collect();
    arr.push(json!("s".repeat(200)));
    let under_cap = Value::Array(arr);
    let over_cap = json!("x".repeat(CAP - 2));

    let lines = vec![line("big", "AtCap", at_cap.clone()), line("big", "UnderCap", under_cap.clone())];
    let r = import_lines(&state, &input, &lines, &["--json"], &[CAP_ENV]);
    r.expect_code(0);
    assert_eq!(r.last_json()["committed"], 2);
    for (seq, want) in [(0, &at_cap), (1, &under_cap)] {
        let shown = run(&state, &["show", &seq.to_string(), "--json"]);
        shown.expect_code(0);
        let b = shown.last_json();
        assert_eq!(&b["data"], want, "seq {seq} did not round-trip");
        assert_eq!(b["truncated"], false);
    }

    let lines = vec![line("big", "Fine", json!(1)), line("big", "OverCap", over_cap)];
    let r = import_lines(&state, &input, &lines, &[], &[CAP_ENV]);
    r.expect_code(1);
    assert!(r.stderr.contains("line 2: "), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{} bytes, above the cap of {CAP} bytes", CAP + 1)), "{}", r.stderr);
    let ops: Vec<Value> = log_json(&state, &[]).iter().map(|b| b["operation"].clone()).collect();
    assert_eq!(ops, vec![json!("AtCap"), json!("UnderCap"), json!("Fine")]);

    // The cap itself is checked at start-up.
    let r = import_lines(&state, &input, [line("p", "o", json!(1))], &[], &[("OP_DBUS_MAX_DATA_BYTES", "1023")]);
    r.expect_code(2);
    assert!(r.stderr.contains("input.max_data_bytes") && r.stderr.contains("1023"), "{}", r.stderr);
    assert_eq!(log_json(&state, &[]).len(), 3);
}

/// Depth 64 is the default cap: 64 levels pass, 65 do not (see `bad_lines`).
#[test]
fn nesting_at_the_depth_cap_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let arrays: Value = serde_json::from_str(&nested_arrays(64)).unwrap();
    let objects: Value = {
        let mut v = json!(1);
        for _ in 0..64 {
            v = json!({ "k": v });
        }
        v
    };
    let r = import_lines(&state, &input, [raw(&nested_arrays(64)), raw(&nested_objects(64))], &[], &[]);
    r.expect_code(0);
    let log = log_json(&state, &[]);
    assert_eq!(log[0]["data"], arrays);
    assert_eq!(log[1]["data"], objects);

    // A lower configured cap applies at its own edge.
    let r = import_lines(
        &state,
        &input,
        [raw(&nested_arrays(3)), raw(&nested_arrays(4))],
        &[],
        &[("OP_DBUS_MAX_DEPTH", "3")],
    );
    r.expect_code(1);
    assert!(r.stderr.contains("line 2: ") && r.stderr.contains("deeper than 3 levels"), "{}", r.stderr);
    assert_eq!(log_json(&state, &[]).len(), 3);
}

/// A line longer than the line limit (6 x the data cap + 64 KiB) is
/// rejected without being read whole, and the reader resumes after it.
#[test]
fn overlong_line_is_rejected_and_skippable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let limit = CAP * 6 + 64 * 1024;
    let long = line("p", "o", json!("y".repeat(limit + 10)));
    let lines = vec![good(0), long.into_bytes(), good(2)];

    let r = import_lines(&state, &input, &lines, &[], &[CAP_ENV]);
    r.expect_code(1);
    assert!(r.stderr.contains(&format!("line 2: longer than {limit} bytes")), "{}", r.stderr);
    assert_eq!(ids(&log_json(&state, &[])), vec![0]);

    let r = import_lines(&state, &input, &lines, &["--skip-invalid", "--json"], &[CAP_ENV]);
    r.expect_code(0);
    let s = r.last_json();
    assert_eq!(
        (s["committed"].clone(), s["invalid_lines"].clone(), s["lines"].clone()),
        (json!(2), json!(1), json!(3))
    );
    assert_eq!(ids(&log_json(&state, &[])), vec![0, 0, 2]);
}

/// What goes in comes out: strings with any Unicode, integers at every
/// encoding width and sign, floats, nesting, key order and duplicates.
#[test]
fn data_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let data: Vec<&str> = vec![
        r#"null"#,
        r#"true"#,
        r#"false"#,
        r#""""#,
        r#""héllo wörld — 日本語 🦀 \u2028 \ud83d\ude00""#,
        r#""nul \u0000 tab \t newline \n quote \" backslash \\ slash \/""#,
        r#"0"#,
        r#"[1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, 9223372036854775807, 18446744073709551615]"#,
        r#"[-1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649, -9223372036854775808]"#,
        r#"[0.5, -0.5, 1.0, -0.0, 0.1, 3.141592653589793, 1e300, -2.5e-300, 5e-324, 1.7976931348623157e308]"#,
        r#"100000000000000000000"#,
        r#"{}"#,
        r#"[]"#,
        r#"{"z": 1, "a": {"y": [], "b": {}}, "m": [null, true, "x", 1.5, -7, {"k": "v"}]}"#,
        r#"{"ключ": "значение", "": "empty key", "🔑": ["🦀"], "a b": {"c\nd": 1}}"#,
        r#"{"dup": 1, "dup": 2}"#,
        r#"{"long": "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}"#,
    ];
    let lines: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(i, d)| format!(r#"{{"plugin_id":"round.trip","operation":"Op{i}","data":{d}}}"#))
        .collect();
    let r = import_lines(&state, &input, &lines, &[], &[]);
    r.expect_code(0);
    let log = log_json(&state, &[]);
    assert_eq!(log.len(), data.len());
    for (b, d) in log.iter().zip(&data) {
        let want: Value = serde_json::from_str(d).unwrap();
        assert_eq!(b["data"], want, "data {d} came back as {}", b["data"]);
        // Text equality too: catches -0.0 -> 0 and 1.0 -> 1.
        assert_eq!(b["data"].to_string(), want.to_string(), "data {d}");
        assert_eq!(b["source"], "import");
        assert_eq!(b["truncated"], false);
    }
    for seq in [4, 9, 14] {
        let shown = run(&state, &["show", &seq.to_string(), "--json"]);
        shown.expect_code(0);
        assert_eq!(shown.last_json(), log[seq], "show {seq} and log disagree");
    }

    // Canonical encoding: the same object in another key order has the same data hash.
    let same = [r#"{"b": 1, "a": [2, {"y": 3, "x": 4}]}"#, r#"{"a": [2, {"x": 4, "y": 3}], "b": 1}"#];
    let lines: Vec<String> =
        same.iter().map(|d| format!(r#"{{"plugin_id":"round.trip","operation":"Same","data":{d}}}"#)).collect();
    import_lines(&state, &input, &lines, &[], &[]).expect_code(0);
    let log = log_json(&state, &["--operation", "Same"]);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["data_hash"], log[1]["data_hash"]);
    assert_ne!(log[0]["hash"], log[1]["hash"]);

    // The other fields: path, sender, both timestamp forms.
    let lines = [
        r#"{"plugin_id":"org.example","operation":"org.example.Changed","data":1,"path":"/org/example/1","sender":":1.42","timestamp":"2024-02-29T12:34:56.123456789+02:00"}"#,
        r#"{"plugin_id":"org.example","operation":"org.example.Changed","data":2,"timestamp":-1500000000,"path":null,"sender":null}"#,
        r#"{"timestamp":1700000000000000001,"data":3,"operation":"org.example.Changed","plugin_id":"org.example"}"#,
    ];
    import_lines(&state, &input, lines, &[], &[]).expect_code(0);
    let log = log_json(&state, &["--plugin", "org.example"]);
    assert_eq!(log.len(), 3);
    assert_eq!((log[0]["path"].clone(), log[0]["sender"].clone()), (json!("/org/example/1"), json!(":1.42")));
    assert_eq!(log[0]["captured_ns"], 1_709_202_896_123_456_789i64);
    assert_eq!(log[0]["captured"], "2024-02-29T10:34:56.123456789Z");
    assert_eq!((log[1]["path"].clone(), log[1]["sender"].clone()), (Value::Null, Value::Null));
    assert_eq!(log[1]["captured_ns"], -1_500_000_000i64);
    assert_eq!(log[1]["captured"], "1969-12-31T23:59:58.500000000Z");
    assert_eq!(log[2]["captured_ns"], 1_700_000_000_000_000_001i64);
    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn usage_and_runtime_errors_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let missing: PathBuf = dir.path().join("no-such-file.jsonl");

    let r = run(&state, &["import", "--no-such-flag", "x"]);
    r.expect_code(2);
    let r = run(&state, &["import"]);
    r.expect_code(2);
    let r = run_env(&state, &["import", missing.to_str().unwrap()], &[("OP_DBUS_MAX_DEPTH", "deep")]);
    r.expect_code(2);
    assert!(r.stderr.contains("input.max_depth") && r.stderr.contains("deep"), "{}", r.stderr);

    let r = run(&state, &["import", missing.to_str().unwrap()]);
    assert!(r.code == 2 || r.code == 3, "missing input file: exit {}\n{}", r.code, r.stderr);
    assert!(r.stderr.contains("no-such-file.jsonl"), "{}", r.stderr);
    assert!(!Path::new(&state).join("@timing").exists() || log_json(&state, &[]).is_empty());
}
