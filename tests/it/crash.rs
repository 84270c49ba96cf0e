//! `kill -9` during `import`, over and over, on one state dir: each round's
//! import is also the restart (recovery) after the previous round's kill.
//! Nothing acknowledged (reported by `--report-commits`) may be lost,
//! nothing may be written twice, and `verify` must pass after every kill
//! (a torn tail is allowed, a fault is not).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ROUNDS: u64 = 20;
/// Lines in a round's input. Most rounds get far more than a debug build
/// imports before the kill; every fifth round gets a small file that may be
/// finished by then, so kills also land after a clean exit.
const BIG_FILE: u64 = 60_000;

/// One `--report-commits` line.
#[derive(Debug, Clone)]
struct Report {
    committed: u64,
    through_line: u64,
    last_seq: u64,
    head_hash: String,
}

struct Round {
    lines: u64,
    reports: Vec<Report>,
    /// The import exited on its own before the kill (code 0).
    finished: bool,
}

fn parse_report(line: &[u8]) -> Option<Report> {
    let v: Value = serde_json::from_slice(line).ok()?;
    Some(Report {
        committed: v.get("committed")?.as_u64()?,
        through_line: v.get("through_line")?.as_u64()?,
        last_seq: v.get("last_seq")?.as_u64()?,
        head_hash: v.get("head_hash")?.as_str()?.to_string(),
    })
}

#[test]
fn kill_nine_during_import_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("input.jsonl");
    let mut rounds: Vec<Round> = Vec::new();
    let mut torn_tails = 0;
    let mut injected = 0;

    for round in 0..ROUNDS {
        let mut rng = Rng(0x5eed_0000 + round);
        let lines = if round % 5 == 4 { rng.range(200, 2_000) } else { BIG_FILE };
        write_lines(
            &input,
            (0..lines).map(|i| {
                format!(
                    r#"{{"plugin_id":"crash.test","operation":"Round{round}","data":{{"id":"r{round}-{i}","n":{i}}},"timestamp":{}}}"#,
                    1_700_000_000_000_000_000u64 + round * 1_000_000_000 + i
                )
            }),
        );
        let delay = Duration::from_millis(rng.range(20, 600));

        let mut child = command(&state)
            // Small segments, so kills also land around segment rotation.
            .env("OP_DBUS_SEGMENT_MAX_MB", "1")
            .args(["import", "--report-commits", input.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn import");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            // Only complete lines count: the kill may cut the last one short.
            let mut r = BufReader::new(stdout);
            let mut complete = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.ends_with(b"\n") => complete.push(buf.clone()),
                    Ok(_) => break,
                }
            }
            complete
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        // The kill lands at a random point of the import (not a wait).
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; harmless if it already exited
        let status = child.wait().unwrap();
        let out = out_reader.join().unwrap();
        let err = err_reader.join().unwrap();

        let finished = status.code() == Some(0);
        assert!(
            finished || status.code().is_none(),
            "round {round}: import failed on its own ({status}); stderr:\n{err}"
        );
        let mut reports = Vec::new();
        for l in &out {
            if let Some(r) = parse_report(l) {
                // Every line is valid, so lines and records are counted alike.
                assert_eq!(r.committed, r.through_line, "round {round}: {r:?}");
                reports.push(r);
            }
        }
        // Reports only grow.
        for w in reports.windows(2) {
            assert!(
                w[0].committed < w[1].committed
                    && w[0].through_line < w[1].through_line
                    && w[0].last_seq < w[1].last_seq,
                "round {round}: reports go backwards: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        if finished {
            let summary = String::from_utf8_lossy(out.last().expect("summary line"));
            assert!(summary.starts_with(&format!("committed {lines} records")), "round {round}: {summary}");
            let last = reports.last().expect("a finished import reported its commits");
            assert_eq!((last.committed, last.through_line), (lines, lines), "round {round}");
        }

        // Right after the kill: sound, maybe with a torn tail, never a fault.
        let (code, report) = verify_json(&state);
        assert_eq!(code, 0, "round {round}: verify after kill -9 found a fault: {report}\nimport stderr:\n{err}");
        assert!(report["fault"].is_null(), "round {round}: {report}");
        if !report["torn_tail"].is_null() {
            torn_tails += 1;
        }
        if let Some(last) = reports.last() {
            let head = report["head_seq"].as_u64().expect("head_seq");
            assert!(
                head >= last.last_seq,
                "round {round}: acknowledged seq {} but the chain ends at {head}",
                last.last_seq
            );
        }
        // A kill rarely lands inside a write(2), so make sure the next start
        // also has to cut a torn tail now and then: half a frame (as an
        // interrupted write leaves it) or zeros (a crash after the file grew),
        // plus vector bytes that no block references.
        if (round == 7 || round == 13) && report["torn_tail"].is_null() {
            let (first, path) = segments(&state).last().cloned().expect("a segment");
            let bytes = std::fs::read(&path).unwrap();
            let tail = match parse_frames(&bytes).last() {
                Some(f) if round == 7 => bytes[f.offset..f.offset + f.len / 2].to_vec(),
                _ => vec![0u8; 4096],
            };
            append(&path, &tail);
            let vf = vector_file(&state, first);
            if vf.exists() {
                append(&vf, &[0xab; 100]);
            }
            let (code, after) = verify_json(&state);
            assert_eq!(code, 0, "round {round}: a torn tail is not a fault: {after}");
            assert_eq!(after["torn_tail"]["offset"].as_u64(), Some(bytes.len() as u64), "round {round}: {after}");
            assert_eq!(after["head_seq"], report["head_seq"], "round {round}: {after}");
            injected += 1;
        }
        eprintln!(
            "round {round}: {lines} lines, kill after {delay:?}, {} reports (through line {}), finished: {finished}, torn tail: {}",
            reports.len(),
            reports.last().map_or(0, |r| r.through_line),
            !report["torn_tail"].is_null()
        );
        rounds.push(Round { lines, reports, finished });
    }

    // A last, uninterrupted import: the restart after the last kill.
    let final_lines: Vec<String> = (0..10)
        .map(|i| line("crash.test", "Final", serde_json::json!({ "id": format!("final-{i}"), "n": i })))
        .collect();
    let r = import_lines(&state, &input, &final_lines, &["--json"], &[("OP_DBUS_SEGMENT_MAX_MB", "1")]);
    r.expect_code(0);
    assert_eq!(r.last_json()["committed"], 10, "{}", r.stdout);

    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "final verify: {report}");
    assert!(report["torn_tail"].is_null(), "the restart should have cut any torn tail: {report}");

    let blocks = log_json(&state, &[]);
    assert_linked(&blocks);
    assert_eq!(report["blocks"].as_u64(), Some(blocks.len() as u64));
    let hash_of: Vec<&str> = blocks.iter().map(|b| b["hash"].as_str().unwrap()).collect();

    // No id twice, anywhere.
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for b in &blocks {
        let id = b["data"]["id"].as_str().expect("every block has an id");
        let seq = b["seq"].as_u64().unwrap();
        if let Some(first) = seen.insert(id, seq) {
            panic!("id {id} written twice: seqs {first} and {seq}");
        }
    }

    // Per round, in chain order: the ids present are a prefix r-0 .. r-(k-1)
    // of the input (recovery keeps or drops whole records, never a middle
    // one), covering at least everything acknowledged.
    let mut present: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new(); // round -> (i, seq)
    let mut order: Vec<u64> = Vec::new();
    for b in &blocks {
        let id = b["data"]["id"].as_str().unwrap();
        let seq = b["seq"].as_u64().unwrap();
        let Some(rest) = id.strip_prefix('r') else { continue };
        let (round, i) = rest.split_once('-').expect("id shape");
        let (round, i): (u64, u64) = (round.parse().unwrap(), i.parse().unwrap());
        assert_eq!(b["operation"].as_str(), Some(format!("Round{round}").as_str()));
        assert_eq!(b["data"]["n"].as_u64(), Some(i));
        present.entry(round).or_default().push((i, seq));
        if order.last() != Some(&round) {
            order.push(round);
        }
    }
    let mut sorted_order = order.clone();
    sorted_order.sort_unstable();
    sorted_order.dedup();
    assert_eq!(order, sorted_order, "rounds interleave in the chain");

    let mut acknowledged_total = 0;
    for (round, info) in rounds.iter().enumerate() {
        let round = round as u64;
        let got = present.get(&round).map(Vec::as_slice).unwrap_or(&[]);
        for (pos, (i, _)) in got.iter().enumerate() {
            assert_eq!(*i, pos as u64, "round {round}: records are not a prefix of the input (gap or reorder)");
        }
        let kept = got.len() as u64;
        let acked = info.reports.last().map_or(0, |r| r.through_line);
        acknowledged_total += acked;
        assert!(kept >= acked, "round {round}: {acked} lines acknowledged but only {kept} records survived");
        assert!(kept <= info.lines);
        if info.finished {
            assert_eq!(kept, info.lines, "round {round} finished but lost records");
        }
        // Every acknowledged head is exactly where the report said.
        for r in &info.reports {
            let (i, seq) = got[(r.through_line - 1) as usize];
            assert_eq!(i, r.through_line - 1);
            assert_eq!(seq, r.last_seq, "round {round}: report {r:?} names the wrong seq");
            assert_eq!(hash_of[seq as usize], r.head_hash, "round {round}: report {r:?} names the wrong hash");
        }
    }
    let finals = blocks.iter().filter(|b| b["operation"] == "Final").count();
    assert_eq!(finals, 10);
    assert_eq!(blocks.last().unwrap()["data"]["id"], "final-9");
    eprintln!(
        "{} blocks; {acknowledged_total} acknowledged before kills; {torn_tails} torn tails left by kills, \
             {injected} injected; {} rounds finished",
        blocks.len(),
        rounds.iter().filter(|r| r.finished).count()
    );
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}
