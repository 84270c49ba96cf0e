//! Damage a real chain on disk (bit flips, cuts, swaps, forged blocks,
//! missing files) and check that `verify` names the first bad seq and the
//! kind of damage, and that a restart never cuts a committed record.
//!
//! One chain of several segments is built once and copied for each test.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

const RECORDS: u64 = 3000;
const SEGMENT_ENV: (&str, &str) = ("OP_DBUS_SEGMENT_MAX_MB", "1");

struct Template {
    /// Removed at process exit (`remove_template`): a static is never dropped.
    dir: PathBuf,
    state: PathBuf,
    /// `log --json` of the template.
    log: Vec<Value>,
}

fn pad(i: u64) -> String {
    let mut rng = Rng(i);
    (0..1000).map(|_| (b'a' + rng.range(0, 26) as u8) as char).collect()
}

static TEMPLATE: OnceLock<Template> = OnceLock::new();

fn template() -> &'static Template {
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let input = dir.path().join("in.jsonl");
        let lines = (0..RECORDS).map(|i| line("tamper.test", "Write", json!({ "id": i, "pad": pad(i) })));
        // Small commits, so segments end close to the 1 MiB mark whatever the timing.
        import_lines(&state, &input, lines, &[], &[SEGMENT_ENV, ("OP_DBUS_MAX_BATCH", "64")]).expect_code(0);
        let segs = segments(&state);
        assert!(segs.len() >= 3, "expected several segments, got {segs:?}");
        let (code, report) = verify_json(&state);
        assert_eq!(code, 0, "{report}");
        let log = log_json(&state, &[]);
        assert_eq!(log.len() as u64, RECORDS);
        // SAFETY: registers a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(remove_template) };
        Template { dir: dir.keep(), state, log }
    })
}

extern "C" fn remove_template() {
    if let Some(t) = TEMPLATE.get() {
        let _ = std::fs::remove_dir_all(&t.dir);
    }
}

/// A private copy of the template chain.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let t = template();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    copy_dir(&t.state, &state);
    (dir, state)
}

/// Asserts that verify fails with `kind` at `seq`, in `file` if given.
#[track_caller]
fn assert_fault(state: &Path, kind: &str, seq: u64, file: Option<&Path>, what: &str) -> Value {
    let (code, report) = verify_json(state);
    assert_eq!(code, 1, "{what}: verify passed: {report}");
    let fault = &report["fault"];
    assert_eq!(fault["kind"], kind, "{what}: wrong kind: {report}");
    assert_eq!(fault["seq"].as_u64(), Some(seq), "{what}: wrong seq: {report}");
    if let Some(file) = file {
        let named = fault["file"].as_str().unwrap();
        assert!(Path::new(named).ends_with(file.file_name().unwrap()), "{what}: wrong file: {report}");
    }
    assert_eq!(report["head_seq"].as_u64(), seq.checked_sub(1), "{what}: head should stop before the fault: {report}");
    report
}

/// (a) One flipped byte anywhere in a frame: verify names that frame's block.
#[test]
fn byte_flips_name_the_block_whose_frame_holds_them() {
    let (_dir, state) = fresh();
    let segs = segments(&state);
    let mut checked = 0;
    for (si, (first, path)) in segs.iter().enumerate() {
        let original = std::fs::read(path).unwrap();
        let frames = parse_frames(&original);
        assert_eq!(frames[0].seq, *first, "segment {first} starts with another seq");
        let last = frames.last().unwrap();
        let mut positions = vec![
            frames[0].offset,                              // length field
            frames[0].offset + 5,                          // its complement
            frames[0].offset + 9,                          // CRC
            frames[0].offset + FRAME_HEADER_LEN,           // first body byte
            frames[1].offset + frames[1].len - 1,          // last byte of the stored hash
            last.offset + FRAME_HEADER_LEN + last.len / 2, // middle of the last frame
            original.len() - 1,                            // the very last byte
        ];
        let mut rng = Rng(0xf11b + si as u64);
        positions.extend((0..7).map(|_| rng.range(HEADER_LEN as u64, original.len() as u64) as usize));
        for (pi, &pos) in positions.iter().enumerate() {
            let frame = frames.iter().find(|f| f.range().contains(&pos)).expect("position inside a frame");
            let mut bytes = original.clone();
            bytes[pos] ^= 1 << (pi % 8);
            std::fs::write(path, &bytes).unwrap();
            let what = format!("flip at {}:{pos} (seq {})", path.display(), frame.seq);
            let report = assert_fault(&state, "bit-flip", frame.seq, Some(path), &what);
            assert_eq!(report["fault"]["offset"].as_u64(), Some(frame.offset as u64), "{what}: {report}");
            checked += 1;

            // Damage inside the last segment is corruption, not a torn
            // tail: a restart must refuse to start rather than cut it.
            if si + 1 == segs.len() && pi == 5 {
                let input = state.parent().unwrap().join("one.jsonl");
                let r = import_lines(&state, &input, [line("p", "o", json!(1))], &[], &[SEGMENT_ENV]);
                assert_eq!(r.code, 3, "{what}: import started on a corrupt chain\n{}\n{}", r.stdout, r.stderr);
                assert!(r.stderr.contains("corrupt"), "{what}: {}", r.stderr);
                assert_eq!(std::fs::read(path).unwrap(), bytes, "{what}: the failed start changed the segment");
            }
        }
        std::fs::write(path, &original).unwrap();
    }
    assert!(checked >= 36);
    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "restored chain: {report}");
}

/// First and last byte of each header field: magic (0..8), format version
/// (8..12), the u32 after it (12..16: 0 in a segment, the dimension count
/// in a vector file) and the first seq (16..24).
const HEADER_PROBES: [usize; 8] = [0, 7, 8, 11, 12, 15, 16, 23];

/// (a) The segment header: every field is covered.
#[test]
fn segment_header_flips_name_the_segment_first_seq() {
    let (_dir, state) = fresh();
    let (first, path) = segments(&state)[1].clone();
    let original = std::fs::read(&path).unwrap();
    let mut missed = Vec::new();
    for pos in HEADER_PROBES {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (code, report) = verify_json(&state);
        if code == 0 {
            missed.push(pos);
            continue;
        }
        assert_eq!(report["fault"]["kind"], "bad-header", "header byte {pos}: {report}");
        assert_eq!(report["fault"]["seq"].as_u64(), Some(first), "header byte {pos}: {report}");
    }
    std::fs::write(&path, &original).unwrap();
    assert!(missed.is_empty(), "verify passed with a flipped segment header byte at offsets {missed:?}");
}

/// (b) A record written only in part, as a crash leaves it (never
/// acknowledged, so neither indexed nor sealed by a checkpoint): verify
/// reports a torn tail, not a fault; the next start cuts it and the next
/// record takes its seq.
#[test]
fn torn_last_record_is_a_torn_tail_and_is_cut_on_restart() {
    let t = template();
    let (_dir, state) = fresh();
    let (_, path) = segments(&state).last().unwrap().clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = parse_frames(&bytes).last().unwrap().clone();
    assert_eq!(last.seq, RECORDS - 1);
    // The first half of a frame the size of the last one, after it.
    let torn_at = bytes.len();
    let half = last.len / 2;
    bytes.extend_from_within(last.offset..last.offset + half);
    std::fs::write(&path, &bytes).unwrap();

    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "{report}");
    assert!(report["fault"].is_null());
    assert_eq!(report["head_seq"].as_u64(), Some(RECORDS - 1), "{report}");
    let torn = &report["torn_tail"];
    assert!(Path::new(torn["file"].as_str().unwrap()).ends_with(path.file_name().unwrap()), "{report}");
    assert_eq!(torn["offset"].as_u64(), Some(torn_at as u64), "{report}");
    assert_eq!(torn["bytes"].as_u64(), Some(half as u64), "{report}");

    let input = state.parent().unwrap().join("one.jsonl");
    let r =
        import_lines(&state, &input, [line("after.crash", "Write", json!({"id": "new"}))], &["--json"], &[SEGMENT_ENV]);
    r.expect_code(0);
    assert_eq!(r.last_json()["head_seq"].as_u64(), Some(RECORDS), "{}", r.stdout);
    assert!(r.stderr.contains("cut"), "the restart should say it cut the tail: {}", r.stderr);

    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "{report}");
    assert!(report["torn_tail"].is_null(), "{report}");
    assert_eq!(report["head_seq"].as_u64(), Some(RECORDS), "{report}");
    let log = log_json(&state, &[]);
    assert_linked(&log);
    assert_eq!(log.len() as u64, RECORDS + 1);
    assert_eq!(&log[..RECORDS as usize], &t.log[..], "earlier blocks changed");
    assert_eq!(log.last().unwrap()["data"], json!({"id": "new"}));
    assert_eq!(log.last().unwrap()["prev_hash"], t.log[RECORDS as usize - 1]["hash"]);
}

/// (b) The same cut below a record the index has seen is a lost
/// acknowledged record: truncation, with the torn bytes still reported.
#[test]
fn cutting_an_indexed_record_is_truncation() {
    let t = template();
    let (_dir, state) = fresh();
    let (_, path) = segments(&state).last().unwrap().clone();
    let bytes = std::fs::read(&path).unwrap();
    let frames = parse_frames(&bytes);
    let last = frames.last().unwrap().clone();

    // At a frame boundary: the chain alone looks sound, the index knows better.
    std::fs::write(&path, &bytes[..last.offset]).unwrap();
    let report = assert_fault(&state, "truncation", RECORDS - 1, None, "last record removed");
    assert!(report["torn_tail"].is_null(), "{report}");

    // In the middle of the record.
    std::fs::write(&path, &bytes[..last.offset + 40]).unwrap();
    let report = assert_fault(&state, "truncation", RECORDS - 1, None, "last record cut");
    assert_eq!(report["torn_tail"]["offset"].as_u64(), Some(last.offset as u64), "{report}");

    // A restart refuses: an indexed (so acknowledged) block is gone, which
    // no crash can do. Nothing is cut and the witness is kept.
    let input = state.parent().unwrap().join("one.jsonl");
    let r = import_lines(&state, &input, [line("after.cut", "Write", json!("new"))], &[], &[SEGMENT_ENV]);
    r.expect_code(3);
    assert!(r.stderr.contains("truncation") && r.stderr.contains("reindex"), "{}", r.stderr);
    assert_eq!(std::fs::read(&path).unwrap().len(), last.offset + 40, "nothing was cut");
    assert_fault(&state, "truncation", RECORDS - 1, None, "still reported after the refused start");

    // `reindex` makes the index follow the chain, but the block was also
    // sealed by a signed checkpoint: the start still refuses, and says how
    // the operator accepts the loss (a new checkpoint log).
    run(&state, &["reindex"]).expect_code(0);
    let r = import_lines(&state, &input, [line("after.cut", "Write", json!("new"))], &[], &[SEGMENT_ENV]);
    r.expect_code(3);
    assert!(r.stderr.contains("departs from the last signed checkpoint"), "{}", r.stderr);
    assert!(r.stderr.contains("@timing/checkpoints"), "{}", r.stderr);
    let evidence = state.parent().unwrap().join("evidence");
    std::fs::create_dir(&evidence).unwrap();
    for log in ["checkpoints", "cosigned"] {
        let from = state.join("@timing").join(log);
        if from.exists() {
            std::fs::rename(&from, evidence.join(log)).unwrap();
        }
    }
    // Then the next start cuts the tail and the index follows the chain
    // (no stale entry); the chain verifies, and the new log's first
    // checkpoint vouches for the blocks before it only if it was signed in
    // the epoch after theirs (here epochs are 1 s: it depends on the pace).
    // A start inside the epoch the last run signed in cannot sign before the
    // next one (that run erased its key): wait for it, so that this run's
    // shutdown checkpoint is signed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = import_lines(&state, &input, [line("after.cut", "Write", json!("new"))], &[], &[SEGMENT_ENV]);
    r.expect_code(0);
    let (code, report) = verify_json(&state);
    assert!(report["fault"].is_null(), "{report}");
    assert_eq!(report["head_seq"].as_u64(), Some(RECORDS - 1));
    let cp = &report["checkpoints"];
    assert_eq!(cp["last"]["size"], RECORDS, "{report}");
    match code {
        0 => assert!(cp["fault"].is_null(), "{report}"),
        _ => assert_eq!(cp["fault"]["kind"], "unsealed range", "{report}"),
    }
    let old_hash = t.log.last().unwrap()["hash"].as_str().unwrap();
    assert_eq!(run(&state, &["show", old_hash]).code, 1, "the cut block is still found by its hash");
    let shown = run(&state, &["show", &(RECORDS - 1).to_string(), "--json"]);
    shown.expect_code(0);
    assert_eq!(shown.last_json()["data"], "new");
    let by_plugin = log_json(&state, &["--plugin", "after.cut"]);
    assert_eq!(seqs(&by_plugin), vec![RECORDS - 1]);
    assert_eq!(log_json(&state, &["--plugin", "tamper.test"]).len() as u64, RECORDS - 1);
}

/// (c) Two adjacent complete frames swapped: reordering at the first of them.
#[test]
fn swapped_frames_are_reordering() {
    let (_dir, state) = fresh();
    let segs = segments(&state);
    for (path, k) in [(&segs[1].1, 17usize), (&segs.last().unwrap().1, 200)] {
        let original = std::fs::read(path).unwrap();
        let frames = parse_frames(&original);
        let k = k.min(frames.len() - 2);
        let (a, b) = (&frames[k], &frames[k + 1]);
        let mut bytes = original[..a.offset].to_vec();
        bytes.extend_from_slice(&original[b.range()]);
        bytes.extend_from_slice(&original[a.range()]);
        bytes.extend_from_slice(&original[b.offset + b.len..]);
        assert_eq!(bytes.len(), original.len());
        std::fs::write(path, &bytes).unwrap();
        assert_fault(&state, "reordering", a.seq, Some(path), &format!("seqs {} and {} swapped", a.seq, b.seq));
        std::fs::write(path, &original).unwrap();
    }
}

/// (d) Vectors: a flipped byte, a deleted file, a cut file.
#[test]
fn damaged_vectors_are_wrong_or_missing() {
    let t = template();
    let (_dir, state) = fresh();
    let segs = segments(&state);
    let (first, _) = segs[1];
    let target = first + 100;
    let v = &t.log[target as usize]["vector"];
    assert_eq!(v["model"], HEURISTIC, "{v}");
    assert_eq!(v["dims"], 64, "{v}");
    let offset = v["offset"].as_u64().unwrap() as usize;
    let vf = vector_file(&state, first);
    let original = std::fs::read(&vf).unwrap();
    assert!(offset >= HEADER_LEN && offset + 256 <= original.len());

    for delta in [0, 3, 130, 255] {
        xor_byte(&vf, offset + delta, 0x01);
        assert_fault(&state, "wrong-vector", target, None, &format!("vector byte {delta} of seq {target}"));
        std::fs::write(&vf, &original).unwrap();
    }

    std::fs::remove_file(&vf).unwrap();
    assert_fault(&state, "missing-vector", first, None, "vector file deleted");
    std::fs::write(&vf, &original).unwrap();

    let (last_first, _) = *segs.last().unwrap();
    let last_vf = vector_file(&state, last_first);
    let len = std::fs::metadata(&last_vf).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&last_vf).unwrap().set_len(len - 100).unwrap();
    assert_fault(&state, "missing-vector", RECORDS - 1, None, "vector file cut");
}

/// (d) The vector file header: every field is covered.
#[test]
fn vector_header_flips_are_detected() {
    let (_dir, state) = fresh();
    let (first, _) = segments(&state)[1];
    let vf = vector_file(&state, first);
    let original = std::fs::read(&vf).unwrap();
    let mut missed = Vec::new();
    for pos in HEADER_PROBES {
        xor_byte(&vf, pos, 0x10);
        let (code, report) = verify_json(&state);
        if code == 0 {
            missed.push(pos);
        } else {
            assert_eq!(report["fault"]["seq"].as_u64(), Some(first), "vector header byte {pos}: {report}");
        }
        std::fs::write(&vf, &original).unwrap();
    }
    assert!(missed.is_empty(), "verify passed with a flipped vector header byte at offsets {missed:?}");
}

/// (e) Missing segments: truncation at the first seq that is gone.
#[test]
fn missing_segments_are_truncation() {
    let (_dir, state) = fresh();
    let segs = segments(&state);
    let (mid, mid_path) = segs[1].clone();
    let restore = hide(&mid_path);
    assert_fault(&state, "truncation", mid, None, "middle segment deleted");
    restore();

    let restore = hide(&segs[0].1);
    assert_fault(&state, "truncation", 0, None, "first segment deleted");
    restore();

    // The last one: only the index knows it existed.
    let (last, last_path) = segs.last().unwrap().clone();
    let restore = hide(&last_path);
    assert_fault(&state, "truncation", last, None, "last segment deleted");
    restore();

    let (code, report) = verify_json(&state);
    assert_eq!(code, 0, "{report}");
}

/// A forger who recomputes the block hash and the CRC: editing a field
/// breaks the next block's link; editing the data breaks the data hash.
#[test]
fn forged_blocks_with_recomputed_hashes_are_caught() {
    let (_dir, state) = fresh();
    let (_, path) = segments(&state)[1].clone();
    let original = std::fs::read(&path).unwrap();
    let frames = parse_frames(&original);
    let f = frames[10].clone();

    // plugin_id "tamper.test" -> "Tamper.test": a consistent block, but the next one links to the old hash.
    let mut bytes = original.clone();
    let at = find(f.payload(&bytes), b"tamper.test").expect("plugin id in the body") + f.offset + FRAME_HEADER_LEN;
    bytes[at] = b'T';
    reseal_frame(&mut bytes, &f);
    std::fs::write(&path, &bytes).unwrap();
    assert_fault(&state, "broken-link", f.seq + 1, Some(&path), "plugin id rewritten and resealed");

    // One character of the pad: the block hash is consistent, the data hash is not.
    let mut bytes = original.clone();
    let pad_at = find(f.payload(&bytes), b"pad").expect("pad key in the data") + f.offset + FRAME_HEADER_LEN + 10;
    bytes[pad_at] = if bytes[pad_at] == b'z' { b'y' } else { b'z' };
    reseal_frame(&mut bytes, &f);
    std::fs::write(&path, &bytes).unwrap();
    assert_fault(&state, "data-hash-mismatch", f.seq, Some(&path), "data rewritten and resealed");
    std::fs::write(&path, &original).unwrap();
}

/// Moves a file out of the way; the returned closure puts it back.
fn hide(p: &Path) -> impl FnOnce() + '_ {
    let to = p.with_extension("hidden");
    std::fs::rename(p, &to).unwrap();
    move || std::fs::rename(&to, p).unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A range's verification (the D-Bus `Verify`): damage inside the range is
/// named, damage after it is not the range's, and the block the range links
/// to (the end of the segment before) is checked against its stored bytes.
#[test]
fn a_range_is_verified_on_its_own_and_linked_to_the_block_before() {
    use op_dbus::chain::verify;
    use op_dbus::layout::Layout;
    let (_dir, state) = fresh();
    let layout = Layout::new(&state, None);
    let segs = segments(&state);
    assert!(segs.len() >= 3);
    let (s1, s2) = (segs[1].0, segs[2].0);
    let range = |from, to| verify::verify_range(&layout, 2, from, to);
    let ok = range(s1 + 1, s2 - 1).unwrap();
    assert!(ok.fault.is_none() && ok.head_seq == Some(s2 - 1), "{:?}", ok.fault);

    // Damage in the segment after the range: not this range's fault.
    let bytes = std::fs::read(&segs[2].1).unwrap();
    let frame = &parse_frames(&bytes)[2];
    xor_byte(&segs[2].1, frame.range().start + frame.range().len() / 2, 0x01);
    assert!(range(s1 + 1, s2 - 1).unwrap().fault.is_none());
    let r = range(s2, s2 + 5).unwrap();
    assert_eq!(r.fault.map(|f| f.seq), Some(s2 + 2));
    xor_byte(&segs[2].1, frame.range().start + frame.range().len() / 2, 0x01);

    // The last block of the segment before, rewritten with a valid CRC but
    // a wrong hash: the range starting after it refuses to link to it.
    let before = std::fs::read(&segs[0].1).unwrap();
    let frames = parse_frames(&before);
    let last = frames.last().unwrap();
    let mut forged = before.clone();
    let start = last.range().start + FRAME_HEADER_LEN;
    let body_len = last.range().end - 32 - start;
    forged[start + body_len / 2] ^= 0x01;
    // Keep the CRC valid so that only the hash can tell.
    let crc = crc32fast::hash(&forged[start..last.range().end]);
    forged[last.range().start + 8..last.range().start + 12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segs[0].1, &forged).unwrap();
    let err = range(s1, s1 + 3).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
}
