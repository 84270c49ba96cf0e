//! `log`, `show`, `status` and `reindex` on a small dataset with known
//! capture times (out of order on purpose), checked against a model of
//! the dataset with the index complete, missing, lagging and rebuilt.

use crate::common;

use std::path::Path;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use common::*;
use serde_json::{json, Value};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000_000_000;
const SEC: i64 = 1_000_000_000;
const N: usize = 41;
/// Records imported before the saved copy of the index (for the lagging case).
const FIRST_PART: usize = 25;

#[derive(Clone, Debug)]
struct Rec {
    seq: u64,
    plugin: &'static str,
    op: &'static str,
    ns: i64,
}

fn rfc3339(ns: i64, offset_secs: i32) -> String {
    let t = DateTime::from_timestamp(ns.div_euclid(SEC), ns.rem_euclid(SEC) as u32).unwrap();
    t.with_timezone(&FixedOffset::east_opt(offset_secs).unwrap()).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The dataset: three plugins, an operation name shared by two of them,
/// capture times a permutation of T0 + 0..40 s (plus i ns), written as
/// integers, UTC RFC 3339 and RFC 3339 with an offset; one before 1970.
fn dataset() -> (Vec<Rec>, Vec<String>) {
    let mut recs = Vec::new();
    let mut lines = Vec::new();
    for i in 0..N {
        let (plugin, op) = match i % 3 {
            0 => ("org.freedesktop.systemd1", if i % 2 == 0 { "JobNew" } else { "JobRemoved" }),
            1 => ("org.freedesktop.login1", if i % 4 == 1 { "SessionNew" } else { "Changed" }),
            _ => ("net.example", "Changed"),
        };
        let ns = if i == N - 1 { -5 * SEC + 123 } else { T0 + ((i as i64 * 17) % 40) * SEC + i as i64 };
        let ts = match i % 3 {
            0 => json!(ns),
            1 => json!(rfc3339(ns, 0)),
            _ => json!(rfc3339(ns, 5 * 3600 + 1800)),
        };
        lines.push(
            json!({ "plugin_id": plugin, "operation": op, "data": { "i": i }, "timestamp": ts, "path": format!("/obj/{i}") })
                .to_string(),
        );
        recs.push(Rec { seq: i as u64, plugin, op, ns });
    }
    (recs, lines)
}

/// A query as CLI args and as a predicate over the model, with its limit.
struct Q {
    args: Vec<String>,
    since: Option<i64>,
    until: Option<i64>,
    plugin: Option<&'static str>,
    op: Option<&'static str>,
    limit: Option<usize>,
}

impl Q {
    fn expected(&self, recs: &[Rec]) -> Vec<u64> {
        let all: Vec<u64> = recs
            .iter()
            .filter(|r| {
                self.since.is_none_or(|s| r.ns >= s)
                    && self.until.is_none_or(|u| r.ns < u)
                    && self.plugin.is_none_or(|p| r.plugin == p)
                    && self.op.is_none_or(|o| r.op == o)
            })
            .map(|r| r.seq)
            .collect();
        let skip = all.len().saturating_sub(self.limit.unwrap_or(usize::MAX));
        all[skip..].to_vec()
    }
}

fn q() -> Q {
    Q { args: Vec::new(), since: None, until: None, plugin: None, op: None, limit: None }
}

impl Q {
    fn since(mut self, arg: &str, ns: i64) -> Q {
        self.args.push(format!("--since={arg}"));
        self.since = Some(ns);
        self
    }
    fn until(mut self, arg: &str, ns: i64) -> Q {
        self.args.push(format!("--until={arg}"));
        self.until = Some(ns);
        self
    }
    fn plugin(mut self, p: &'static str) -> Q {
        self.args.extend(["--plugin".to_string(), p.to_string()]);
        self.plugin = Some(p);
        self
    }
    fn op(mut self, o: &'static str) -> Q {
        self.args.extend(["--operation".to_string(), o.to_string()]);
        self.op = Some(o);
        self
    }
    fn limit(mut self, n: usize) -> Q {
        self.args.extend(["--limit".to_string(), n.to_string()]);
        self.limit = Some(n);
        self
    }
}

fn queries() -> Vec<Q> {
    let t = |s: i64| T0 + s * SEC;
    vec![
        q(),
        q().plugin("org.freedesktop.systemd1"),
        q().plugin("org.freedesktop.login1"),
        q().plugin("net.example"),
        q().plugin("no.such.plugin"),
        q().plugin("org.freedesktop.login1").op("Changed"),
        q().plugin("org.freedesktop.systemd1").op("JobRemoved"),
        q().plugin("org.freedesktop.systemd1").op("Changed"),
        q().op("Changed"),
        q().op("NoSuchOp"),
        q().since("2024-01-01T00:00:10Z", t(10)),
        q().since(&t(10).to_string(), t(10)),
        q().since("2024-01-01T01:00:10+01:00", t(10)),
        q().until("2024-01-01T00:00:10Z", t(10)),
        // Bounds that fall exactly on a capture time: since inclusive, until exclusive.
        q().since(&(t(17) + 1).to_string(), t(17) + 1).until(&(t(34) + 2).to_string(), t(34) + 2),
        q().since("2024-01-01T00:00:05.5Z", t(5) + SEC / 2).until("2024-01-01T00:00:20Z", t(20)),
        q().since("-10000000000", -10 * SEC).until("0", 0),
        q().until("1970-01-01T00:00:00Z", 0),
        q().limit(5),
        q().limit(1),
        q().limit(0),
        q().limit(1000),
        q().plugin("org.freedesktop.login1").limit(3),
        q().op("Changed").limit(4),
        q().since("2024-01-01T00:00:10Z", t(10)).limit(4),
        q().plugin("net.example").since("2024-01-01T00:00:05Z", t(5)).until("2024-01-01T00:00:30Z", t(30)).limit(2),
        q().plugin("org.freedesktop.systemd1").op("JobNew").since("2024-01-01T00:00:20Z", t(20)),
    ]
}

/// Runs every query and checks it against the model; returns the outputs.
#[track_caller]
fn check_queries(state: &Path, recs: &[Rec], what: &str) -> Vec<Vec<Value>> {
    let mut outputs = Vec::new();
    for query in queries() {
        let args: Vec<&str> = query.args.iter().map(String::as_str).collect();
        let got = log_json(state, &args);
        assert_eq!(seqs(&got), query.expected(recs), "{what}: log {}", query.args.join(" "));
        outputs.push(got);
    }
    outputs
}

fn import_dataset(state: &Path, lines: &[String]) {
    let input = state.parent().unwrap().join("in.jsonl");
    import_lines(state, &input, lines, &[], &[]).expect_code(0);
}

#[test]
fn log_filters_match_the_model_with_and_without_index() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (recs, lines) = dataset();
    import_dataset(&state, &lines);

    let full = log_json(&state, &[]);
    assert_linked(&full);
    assert_eq!(full.len(), N);
    for (b, r) in full.iter().zip(&recs) {
        assert_eq!(b["captured_ns"].as_i64(), Some(r.ns), "seq {}", r.seq);
        assert_eq!((b["plugin_id"].as_str(), b["operation"].as_str()), (Some(r.plugin), Some(r.op)));
        assert_eq!(b["data"], json!({ "i": r.seq }));
        assert_eq!(b["path"], format!("/obj/{}", r.seq));
    }
    let with_index = check_queries(&state, &recs, "complete index");

    // Without any index: the same answers, read from the chain.
    std::fs::remove_dir_all(state.join("@cache")).unwrap();
    let without = check_queries(&state, &recs, "no index");
    assert_eq!(with_index, without, "outputs differ without the index");
    assert!(!state.join("@cache").join("index").join("data.mdb").exists(), "a read command created the index");
    let st = status_json(&state);
    assert_eq!(st["index"]["present"], false, "{st}");
    assert_eq!(st["chain"]["blocks"], N, "{st}");

    // reindex rebuilds it; everything is identical again.
    run(&state, &["reindex"]).expect_code(0);
    let rebuilt = check_queries(&state, &recs, "rebuilt index");
    assert_eq!(with_index, rebuilt, "outputs differ after reindex");
    let st = status_json(&state);
    assert_eq!(st["index"]["lag"], 0, "{st}");
    assert_eq!(st["index"]["blocks"], N, "{st}");
}

#[test]
fn log_is_complete_when_the_index_lags() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (recs, lines) = dataset();
    import_dataset(&state, &lines[..FIRST_PART]);
    let saved = dir.path().join("saved-cache");
    copy_dir(&state.join("@cache"), &saved);
    import_dataset(&state, &lines[FIRST_PART..]);
    let reference = check_queries(&state, &recs, "complete index");

    // Put the older index back: it knows only the first part.
    std::fs::remove_dir_all(state.join("@cache")).unwrap();
    copy_dir(&saved, &state.join("@cache"));
    let st = status_json(&state);
    assert_eq!(st["index"]["blocks"], FIRST_PART, "{st}");
    assert_eq!(st["index"]["lag"], N - FIRST_PART, "{st}");
    assert_eq!(st["chain"]["blocks"], N, "{st}");
    let lagging = check_queries(&state, &recs, "lagging index");
    assert_eq!(reference, lagging, "outputs differ with a lagging index");

    // show finds blocks past the indexed head, by seq and by hash.
    let last = &reference[0][N - 1];
    let by_seq = run(&state, &["show", &(N - 1).to_string(), "--json"]);
    by_seq.expect_code(0);
    assert_eq!(&by_seq.last_json(), last);
    let by_hash = run(&state, &["show", last["hash"].as_str().unwrap(), "--json"]);
    by_hash.expect_code(0);
    assert_eq!(&by_hash.last_json(), last);

    // A verify with a lagging index is fine (the index is behind, not ahead).
    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "{report}");

    // The next writer catches the index up.
    let input = dir.path().join("one.jsonl");
    import_lines(&state, &input, [line("late", "Op", json!(null))], &[], &[]).expect_code(0);
    let st = status_json(&state);
    assert_eq!((st["index"]["blocks"].clone(), st["index"]["lag"].clone()), (json!(N + 1), json!(0)), "{st}");
    let all = log_json(&state, &[]);
    assert_eq!(&all[..N], &reference[0][..]);
    assert_eq!(seqs(&log_json(&state, &["--plugin", "late"])), vec![N as u64]);
}

#[test]
fn show_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (_, lines) = dataset();
    import_dataset(&state, &lines);
    let full = log_json(&state, &[]);

    for seq in [0, 7, N - 1] {
        let b = &full[seq];
        let by_seq = run(&state, &["show", &seq.to_string(), "--json"]);
        by_seq.expect_code(0);
        assert_eq!(&by_seq.last_json(), b, "show {seq}");
        let by_hash = run(&state, &["show", b["hash"].as_str().unwrap(), "--json"]);
        by_hash.expect_code(0);
        assert_eq!(&by_hash.last_json(), b, "show by hash of {seq}");
        // The human form is the same object, pretty-printed.
        let human = run(&state, &["show", &seq.to_string()]);
        human.expect_code(0);
        assert_eq!(&serde_json::from_str::<Value>(&human.stdout).unwrap(), b);
    }
    let r = run(&state, &["show", &N.to_string()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no block"), "{}", r.stderr);
    assert_eq!(run(&state, &["show", &"ab".repeat(32)]).code, 1);
    assert_eq!(run(&state, &["show", "not-a-seq"]).code, 2);
    assert_eq!(run(&state, &["log", "--since", "last tuesday"]).code, 2);

    let human = run(&state, &["log"]);
    human.expect_code(0);
    assert_eq!(human.stdout.lines().count(), N);
    for (l, b) in human.stdout.lines().zip(&full) {
        assert!(l.trim_start().starts_with(&b["seq"].to_string()), "{l}");
        assert!(l.contains(b["plugin_id"].as_str().unwrap()), "{l}");
    }

    let st = status_json(&state);
    let head = full.last().unwrap();
    assert_eq!(st["chain"]["blocks"], N, "{st}");
    assert_eq!(st["chain"]["head_seq"], N - 1, "{st}");
    assert_eq!(st["chain"]["head_hash"], head["hash"], "{st}");
    assert_eq!(st["chain"]["segments"], 1, "{st}");
    let bytes: u64 = segments(&state).iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(st["chain"]["bytes"], bytes, "{st}");
    assert_eq!(st["index"]["present"], true, "{st}");
    assert_eq!(st["index"]["blocks"], N, "{st}");
    assert_eq!(st["index"]["entries"], N, "{st}");
    assert_eq!(st["index"]["lag"], 0, "{st}");
    assert_eq!(st["writer_pid"], Value::Null, "{st}");
    assert_eq!(st["vector_level"], "heuristic", "{st}");

    // A state dir without a chain (a mistyped --state-dir) is refused,
    // never reported as an empty, sound chain.
    let missing = dir.path().join("missing");
    for args in [&["status", "--json"][..], &["log", "--json"], &["verify"], &["show", "0"]] {
        let r = run(&missing, args);
        r.expect_code(2);
        assert!(r.stderr.contains("no chain in"), "{args:?}: {}", r.stderr);
    }
    // A chain with no blocks yet (a writer created it) is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("@timing")).unwrap();
    let st = status_json(&empty);
    assert_eq!((st["chain"]["blocks"].clone(), st["chain"]["head_seq"].clone()), (json!(0), Value::Null), "{st}");
    assert!(log_json(&empty, &[]).is_empty());
}

/// `reindex` after deleting `@cache` gives the same answers as the index
/// built while importing, including across several segments.
#[test]
fn reindex_after_deleting_the_cache_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let (_, lines) = dataset();
    // Enough extra records of about 2 KiB to span a few 1 MiB segments.
    let mut all_lines = lines.clone();
    for i in 0..1200u64 {
        all_lines.push(line("bulk", "Fill", json!({ "i": i, "pad": "b".repeat(2000) })));
    }
    import_lines(&state, &input, &all_lines, &[], &[("OP_DBUS_SEGMENT_MAX_MB", "1"), ("OP_DBUS_MAX_BATCH", "64")])
        .expect_code(0);
    assert!(segments(&state).len() >= 2, "{:?}", segments(&state));
    let total = N + 1200;

    let filters: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--plugin", "bulk", "--limit", "3"],
        vec!["--plugin", "net.example"],
        vec!["--since", "2024-01-01T00:00:10Z", "--until", "2024-01-01T00:00:30Z"],
        vec!["--operation", "Changed"],
        vec!["--limit", "10"],
    ];
    let before: Vec<Vec<Value>> = filters.iter().map(|f| log_json(&state, f)).collect();
    assert_eq!(before[0].len(), total);
    assert_linked(&before[0]);
    let st_before = status_json(&state);

    std::fs::remove_dir_all(state.join("@cache")).unwrap();
    let r = run(&state, &["reindex"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with(&format!("reindexed {} blocks", total)), "{}", r.stdout);
    let after: Vec<Vec<Value>> = filters.iter().map(|f| log_json(&state, f)).collect();
    for (f, (b, a)) in filters.iter().zip(before.iter().zip(&after)) {
        assert!(b == a, "log {} differs after reindex", f.join(" "));
    }
    let st_after = status_json(&state);
    assert_eq!(st_after["index"]["blocks"], st_before["index"]["blocks"]);
    assert_eq!(st_after["index"]["entries"], st_before["index"]["entries"]);
    assert_eq!(st_after["chain"], st_before["chain"]);
    // reindex on an intact index is idempotent.
    run(&state, &["reindex"]).expect_code(0);
    assert!(log_json(&state, &[]) == before[0]);
}

/// Capture times at the ends of the i64 range are legal input and must be
/// found by open-ended time queries whether or not the index answers them.
#[test]
fn open_ended_time_queries_reach_the_extreme_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let lines: Vec<String> = [i64::MIN, -1, 0, T0, i64::MAX]
        .iter()
        .map(|ns| json!({ "plugin_id": "edge", "operation": "Time", "data": ns, "timestamp": ns }).to_string())
        .collect();
    import_dataset(&state, &lines);
    let cases: Vec<(Vec<String>, Vec<u64>)> = vec![
        (vec!["--since=0".into()], vec![2, 3, 4]),
        (vec![format!("--since={T0}")], vec![3, 4]),
        (vec!["--until=0".into()], vec![0, 1]),
        (vec!["--since=-1".into(), "--until=1".into()], vec![1, 2]),
        (vec![format!("--since={}", i64::MIN)], vec![0, 1, 2, 3, 4]),
    ];
    for index in ["with index", "without index"] {
        if index == "without index" {
            std::fs::remove_dir_all(state.join("@cache")).unwrap();
        }
        for (args, want) in &cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(&seqs(&log_json(&state, &args)), want, "{index}: log {}", args.join(" "));
        }
    }
}
