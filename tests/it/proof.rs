//! Tamper evidence against root (docs/FORMAT.md, "Checkpoints"): what a
//! root on the host can do to the chain, with no key it should not have,
//! and who notices. Every test runs the real binary, a real witness
//! process on 127.0.0.1, and the offline verifiers (`verify-proof` with no
//! state dir, and `scripts/verify_proof.py`, standard library only).

use crate::common::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use op_dbus::layout::Layout;
use op_dbus::note::checkpoint::{sign_checkpoint, EpochLine, OpCheckpoint, StartLine};
use op_dbus::proof::keys::EpochKeys;
use op_dbus::proof::log::{NoteLog, CHECKPOINTS_MAGIC};
use serde_json::{json, Value};

/// A witness process (`op-dbus witness`) on a free port; killed on drop.
struct Witness {
    child: Child,
    url: String,
    vkey: String,
    dir: PathBuf,
}

impl Witness {
    fn start(dir: &Path, log_key: &Path) -> Witness {
        let mut child = Command::new(BIN)
            .env("OP_DBUS_LOG", "warn")
            .args(["witness", "--listen", "127.0.0.1:0", "--name", "test-witness", "--dir"])
            .arg(dir)
            .arg("--log")
            .arg(log_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the witness");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut vkey) = (None, None);
        while url.is_none() || vkey.is_none() {
            let Some(Ok(l)) = lines.next() else {
                let _ = child.kill();
                panic!("the witness exited before it listened: {:?}", child.wait());
            };
            if let Some(v) = l.strip_prefix("witness ") {
                vkey = Some(v.to_string());
            } else if let Some(u) = l.strip_prefix("listening ") {
                url = Some(u.to_string());
            }
        }
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Witness { child, url: url.unwrap(), vkey: vkey.unwrap(), dir: dir.to_path_buf() }
    }

    /// The config that makes a daemon push to this witness.
    fn config(&self, path: &Path) -> PathBuf {
        std::fs::write(path, format!("[[witness]]\nurl = \"{}\"\nkey = \"{}\"\n", self.url, self.vkey)).unwrap();
        path.to_path_buf()
    }

    /// Checkpoints it refused although the log signed them.
    fn evidence(&self) -> usize {
        walk_files(&self.dir.join("evidence"))
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn walk_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 }).sum()
}

/// A state dir with keys, a witness enrolled with its identity, and a
/// config that pushes to it.
struct Host {
    dir: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    identity: PathBuf,
    witness: Witness,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        run(&state, &["keys", "init"]).expect_code(0);
        let identity = dir.path().join("identity.pub");
        // The auditor's copy, kept off the host.
        std::fs::copy(state.join("keys/identity.pub"), &identity).unwrap();
        let witness = Witness::start(&dir.path().join("witness"), &identity);
        let config = witness.config(&dir.path().join("op-dbus.toml"));
        Host { dir, state, config, identity, witness }
    }

    /// Imports `n` blocks `{"i": from + k}` with the witness configured.
    fn import(&self, from: u64, n: u64) -> Run {
        let input = self.dir.path().join(format!("in-{from}.jsonl"));
        write_lines(&input, (from..from + n).map(|i| line("proof.test", "Write", json!({ "i": i }))));
        run_config(&self.state, &self.config, &["import", input.to_str().unwrap()])
    }

    fn prove(&self, seq: u64, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        run(&self.state, &["prove", &seq.to_string(), "-o", out.to_str().unwrap()]).expect_code(0);
        out
    }

    fn identity(&self) -> &str {
        self.identity.to_str().unwrap()
    }

    /// `verify-proof` with the witness's key required, as an auditor runs it.
    fn verify_proof(&self, bundle: &Path) -> Run {
        run_bare(&[
            "verify-proof",
            bundle.to_str().unwrap(),
            "--key",
            self.identity(),
            "--witness",
            &self.witness.vkey,
            "--min-witnesses",
            "1",
            "--json",
        ])
    }

    fn python_verify(&self, bundle: &Path) -> Run {
        python_verify(bundle, self.identity(), Some(&self.witness.vkey))
    }
}

fn python_verify(bundle: &Path, key: &str, witness: Option<&str>) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_proof.py");
    let mut c = Command::new("python3");
    c.arg(script).arg("--key").arg(key).arg(bundle);
    if let Some(w) = witness {
        c.args(["--witness", w, "--min-witnesses", "1"]);
    }
    let o = c.output().expect("run python3");
    Run { code: o.status.code().unwrap_or(-1), stdout: lossy(&o.stdout), stderr: lossy(&o.stderr) }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What root does without a key: block `seq`'s data `{"i": seq}` becomes
/// `{"i": seq + 1}` (the MessagePack fixint's last byte), and every hash,
/// link and CRC after it is recomputed.
fn rewrite(state: &Path, seq: u64) {
    assert!(seq < 127, "the edit changes a positive fixint");
    let n = op_dbus::faults::rewrite_history(&Layout::new(state, None), seq, |d| {
        let last = d.len() - 1;
        assert_eq!(d[last], seq as u8, "the data of block {seq} is {{\"i\": {seq}}}");
        d[last] += 1;
    })
    .unwrap();
    assert!(n > 1, "rewrote {n} blocks");
}

fn checkpoints(report: &Value) -> &Value {
    &report["checkpoints"]
}

fn data_at(state: &Path, seq: u64) -> Value {
    let r = run(state, &["show", &seq.to_string(), "--json"]);
    r.expect_code(0);
    r.last_json()["data"].clone()
}

/// The attack of the issue: one old block changed, every later hash and
/// frame recomputed consistently, the index dropped. The chain checks pass;
/// the signed checkpoints name the block, the daemon refuses to record on
/// it, a proof made before still verifies against the witness, and no
/// proof of the forged block can be made.
#[test]
fn a_rewritten_block_is_named_by_the_checkpoints_and_refused() {
    let h = Host::new();
    h.import(0, 300).expect_code(0);
    let (code, report) = verify_json(&h.state);
    assert_eq!(code, 0, "{report}");
    assert!(checkpoints(&report)["cosigned"].as_u64().unwrap() >= 1, "never cosigned: {report}");
    let status = status_json(&h.state)["proof"].clone();
    assert_eq!(
        (status["last_checkpoint_size"].as_u64(), status["unsealed"].as_u64()),
        (Some(300), Some(0)),
        "{status}"
    );
    assert_eq!(status["identity"].as_str().map(|s| format!("{s}\n")), std::fs::read_to_string(&h.identity).ok());
    assert_eq!(status["identity_secret_on_host"], true);
    let before = h.prove(100, "before.tlog-proof");
    let r = h.verify_proof(&before);
    r.expect_code(0);
    assert_eq!(r.last_json()["block"]["data"], json!({"i": 100}), "{}", r.stdout);
    h.python_verify(&before).expect_code(0);

    rewrite(&h.state, 100);
    std::fs::remove_dir_all(h.state.join("@cache/index")).unwrap();
    assert_eq!(data_at(&h.state, 100), json!({"i": 101}));

    // The chain alone is sound; the checkpoints are not, and the tiles
    // (the tree as signed) give the exact block.
    let (code, report) = verify_json(&h.state);
    assert_eq!(code, 1, "{report}");
    assert!(report["fault"].is_null(), "the chain checks pass after a consistent rewrite: {report}");
    let fault = &checkpoints(&report)["fault"];
    assert_eq!(fault["kind"], "departs", "{report}");
    assert_eq!(fault["seq"], 100, "{report}");
    assert!(fault["checkpoint"]["size"].as_u64().unwrap() > 100, "{report}");
    let text = run(&h.state, &["verify"]);
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("departs") || text.stdout.contains("100"), "{}", text.stdout);

    // Nothing is recorded onto it, and no proof of the forged block is made.
    let r = h.import(300, 1);
    r.expect_code(3);
    assert!(r.stderr.contains("departs from the last signed checkpoint"), "{}", r.stderr);
    let forged = h.dir.path().join("forged.tlog-proof");
    let r = run(&h.state, &["prove", "100", "-o", forged.to_str().unwrap()]);
    assert_ne!(r.code, 0, "a proof of a forged block: {}", r.stdout);

    // The attacker also rebuilds the derived data (index and tiles) from
    // the forged chain: the exact block is no longer known, the range that
    // holds it is.
    run(&h.state, &["reindex"]).expect_code(0);
    let (code, report) = verify_json(&h.state);
    assert_eq!(code, 1, "{report}");
    let fault = &checkpoints(&report)["fault"];
    assert_eq!(fault["kind"], "departs", "{report}");
    let range = match (&fault["seq"], &fault["seq_range"]) {
        (Value::Number(s), _) => (s.as_u64().unwrap(), s.as_u64().unwrap()),
        (_, Value::Array(r)) => (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()),
        _ => panic!("no seq and no range: {report}"),
    };
    assert!(range.0 <= 100 && 100 <= range.1, "range {range:?} does not hold seq 100: {report}");

    // Offline, the proof made before the attack still verifies (the block
    // as it was, under a cosigned checkpoint): the auditor holds the truth.
    h.verify_proof(&before).expect_code(0);
    h.python_verify(&before).expect_code(0);
}

/// Root throws away the checkpoint logs too and lets the daemon sign the
/// forged history afresh with the host's own (current) epoch key. Locally
/// nothing is left to compare against; the witness, which cosigned the
/// real tree, refuses the forged one and keeps it as evidence, and an
/// auditor who requires a cosignature rejects every proof of the new log.
#[test]
fn a_rewrite_that_discards_the_checkpoints_is_refused_by_the_witness() {
    let h = Host::new();
    h.import(0, 300).expect_code(0);
    let before = h.prove(100, "before.tlog-proof");
    assert_eq!(h.witness.evidence(), 0);

    rewrite(&h.state, 100);
    for f in ["checkpoints", "cosigned"] {
        std::fs::remove_file(h.state.join("@timing").join(f)).unwrap();
    }
    run(&h.state, &["reindex"]).expect_code(0);
    // A restart in the epoch the last run signed in signs from the next one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = h.import(300, 20);
    r.expect_code(0);
    assert!(r.stderr.contains("witness push failed"), "{}", r.stderr);
    assert!(h.witness.evidence() >= 1, "the witness kept no evidence of the forged checkpoint");

    let (_, report) = verify_json(&h.state);
    assert_eq!(checkpoints(&report)["cosigned"], 0, "a forged checkpoint was cosigned: {report}");
    let after = h.prove(100, "after.tlog-proof");
    let r = h.verify_proof(&after);
    r.expect_code(1);
    assert!(r.stderr.contains("witness") || r.stdout.contains("witness"), "{}\n{}", r.stdout, r.stderr);
    assert_ne!(h.python_verify(&after).code, 0);
    // Without the witness requirement the forged proof is well signed: the
    // two bundles are then the fork itself, two blocks 100 under one key.
    let lax = run_bare(&["verify-proof", after.to_str().unwrap(), "--key", h.identity(), "--json"]);
    lax.expect_code(0);
    assert_eq!(lax.last_json()["block"]["data"], json!({"i": 101}));
    let r = h.verify_proof(&before);
    r.expect_code(0);
    assert_eq!(r.last_json()["block"]["data"], json!({"i": 100}));
}

/// Root restores an older copy of the chain (hiding the events after it)
/// and records on: the witness, which cosigned a larger tree, answers 409;
/// the daemon says the chain was rolled back, and nothing of the rolled
/// back log is cosigned.
#[test]
fn a_rollback_is_refused_by_the_witness() {
    let h = Host::new();
    h.import(0, 100).expect_code(0);
    let backup = h.dir.path().join("backup");
    for area in ["@timing", "@cache", "@vectors"] {
        copy_dir(&h.state.join(area), &backup.join(area));
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.import(100, 200).expect_code(0);
    let (_, report) = verify_json(&h.state);
    let cosigned = checkpoints(&report)["cosigned"].as_u64().unwrap();
    assert!(cosigned >= 1);

    // The keys stay (they are the current epoch's); the chain goes back.
    for area in ["@timing", "@cache", "@vectors"] {
        std::fs::remove_dir_all(h.state.join(area)).unwrap();
        copy_dir(&backup.join(area), &h.state.join(area));
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = h.import(100, 10);
    r.expect_code(0);
    assert!(r.stderr.contains("rolled back or forked"), "{}", r.stderr);
    let (code, report) = verify_json(&h.state);
    // The rolled-back log is well formed on its own ...
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["head_seq"], 109);
    // ... but the witness cosigned nothing of it after the rollback.
    let cosigned_now = checkpoints(&report)["cosigned"].as_u64().unwrap();
    assert!(cosigned_now < cosigned, "cosigned before {cosigned}, after the rollback {cosigned_now}: {report}");
    let after = h.prove(105, "after.tlog-proof");
    h.verify_proof(&after).expect_code(1);
}

/// With a new identity (root runs `keys init` again and re-signs the forged
/// history), nothing verifies against the identity the auditor holds, and
/// the witness, enrolled with the old one, refuses every checkpoint.
#[test]
fn a_new_identity_does_not_verify_against_the_original() {
    let h = Host::new();
    h.import(0, 50).expect_code(0);
    rewrite(&h.state, 10);
    std::fs::remove_dir_all(h.state.join("keys")).unwrap();
    for f in ["checkpoints", "cosigned", "identity.pub"] {
        std::fs::remove_file(h.state.join("@timing").join(f)).unwrap();
    }
    run(&h.state, &["keys", "init"]).expect_code(0);
    run(&h.state, &["reindex"]).expect_code(0);
    let r = h.import(50, 10);
    r.expect_code(0);
    assert!(r.stderr.contains("witness push failed"), "{}", r.stderr);

    // Against the host's own (new) key the forged chain looks fine ...
    let (code, report) = verify_json(&h.state);
    assert_eq!(code, 0, "{report}");
    // ... against the auditor's copy of the original it does not.
    let r = run(&h.state, &["verify", "--json", "--key", h.identity()]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let report = r.last_json();
    assert_eq!(checkpoints(&report)["identity_source"], "--key");
    assert_eq!(checkpoints(&report)["fault"]["kind"], "bad signature", "{report}");
    let bundle = h.prove(10, "forged.tlog-proof");
    let r = run_bare(&["verify-proof", bundle.to_str().unwrap(), "--key", h.identity()]);
    r.expect_code(1);
    assert_ne!(python_verify(&bundle, h.identity(), None).code, 0);
}

/// A bundle changed anywhere (the block, its index, a proof hash, the
/// checkpoint, a cosignature) is rejected by both offline verifiers.
#[test]
fn a_tampered_bundle_is_rejected_by_both_verifiers() {
    let h = Host::new();
    h.import(0, 200).expect_code(0);
    let good = h.prove(77, "good.tlog-proof");
    h.verify_proof(&good).expect_code(0);
    h.python_verify(&good).expect_code(0);
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut variants: Vec<(String, String)> = Vec::new();
    let mut change = |what: &str, i: usize, new: String| {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[i] = new;
        variants.push((what.to_string(), l.join("\n")));
    };
    let find = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
    let extra = find("extra ");
    change("the block", extra, flip_base64(lines[extra], 6 + 20));
    let index = find("index ");
    change("the index", index, "index 78".into());
    change("a proof hash", index + 1, flip_base64(lines[index + 1], 3));
    let blank = lines.iter().position(|l| l.is_empty()).unwrap();
    change("the tree size", blank + 2, "201".into());
    change("the root", blank + 3, flip_base64(lines[blank + 3], 2));
    change("the checkpoint time", blank + 4, format!("{}1", lines[blank + 4]));
    let sig = lines.iter().position(|l| l.starts_with("— op-dbus/")).unwrap();
    change("the log's signature", sig, flip_base64(lines[sig], lines[sig].len() - 10));
    let cosig = lines.iter().position(|l| l.starts_with("— test-witness")).expect("a cosigned checkpoint");
    change("the cosignature", cosig, flip_base64(lines[cosig], lines[cosig].len() - 10));
    for (what, bundle) in variants {
        let path = h.dir.path().join("bad.tlog-proof");
        std::fs::write(&path, &bundle).unwrap();
        let r = h.verify_proof(&path);
        assert_eq!(r.code, 1, "verify-proof accepted a bundle with {what} changed:\n{}", r.stdout);
        let p = h.python_verify(&path);
        assert_ne!(p.code, 0, "verify_proof.py accepted a bundle with {what} changed:\n{}", p.stdout);
    }
}

/// Changes one base64 character at `pos` of `line` into another valid one.
fn flip_base64(line: &str, pos: usize) -> String {
    let mut b = line.as_bytes().to_vec();
    b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// kill -9 at arbitrary points of a run that checkpoints every few
/// milliseconds and pushes to a witness: every time, the state verifies
/// (all checkpoints consistent; blocks of the cut run at worst unsealed or
/// sealed late by the next start, never a fault), and after the kills the
/// witness cosigns the next checkpoint (no fork was signed).
#[test]
fn kill_nine_while_checkpointing_leaves_a_chain_that_verifies() {
    let h = Host::new();
    let input = h.dir.path().join("big.jsonl");
    write_lines(&input, (0..20_000u64).map(|i| line("proof.kill", "Write", json!({ "i": i, "pad": "x".repeat(200) }))));
    h.import(0, 1).expect_code(0);
    let mut rng = Rng(11);
    let mut heads = Vec::new();
    for round in 0..6 {
        let mut c = command_config(&h.state, &h.config);
        c.args(["import", input.to_str().unwrap()])
            .env("OP_DBUS_CHECKPOINT_INTERVAL_MS", "10")
            .env("OP_DBUS_MAX_BATCH", "64")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.range(300, 1500)));
        let _ = child.kill();
        let _ = child.wait();
        let (code, report) = verify_json(&h.state);
        assert_eq!(code, 0, "round {round}: {report}");
        assert!(report["checkpoints"]["ok"].as_bool().unwrap(), "round {round}: {report}");
        heads.push(report["head_seq"].as_u64().unwrap());
    }
    assert!(heads.windows(2).all(|w| w[0] < w[1]), "every round recorded some blocks: heads {heads:?}");
    // A clean run after the kills seals everything, and the witness
    // cosigns its checkpoint: a consistent extension of what it saw.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = h.import(1_000_000, 1);
    r.expect_code(0);
    assert!(!r.stderr.contains("witness push failed"), "{}", r.stderr);
    let (code, report) = verify_json(&h.state);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["checkpoints"]["unsealed_tail"], 0, "{report}");
    let head = report["head_seq"].as_u64().unwrap();
    let bundle = h.prove(head, "head.tlog-proof");
    h.verify_proof(&bundle).expect_code(0);
    assert_eq!(h.witness.evidence(), 0, "the witness kept evidence of a fork");
}

/// What root holds at a time: the key of the epoch in progress (and the
/// certificates of every epoch). `forged` gets the last checkpoint and
/// that epoch's certificate line and returns the checkpoint to sign; the
/// note is appended to the checkpoint log as the checkpointer would.
fn append_forged(state: &Path, forged: impl FnOnce(OpCheckpoint, EpochLine) -> OpCheckpoint) -> OpCheckpoint {
    let layout = Layout::new(state, None);
    let keys = EpochKeys::open(state).unwrap().expect("keys");
    let last = op_dbus::proof::checkpointer::last_checkpoint(&layout).unwrap().expect("a checkpoint");
    let now = keys.schedule().epoch_of(op_dbus::codec::now_ns()).unwrap();
    let (signer, line) = keys.signer_for(now).unwrap();
    let cp = forged(last, line);
    let (mut log, _) = NoteLog::open(&state.join("@timing/checkpoints"), CHECKPOINTS_MAGIC).unwrap();
    log.append(&sign_checkpoint(&cp, &signer).to_bytes()).unwrap();
    cp
}

fn fault_of(state: &Path) -> Value {
    let (code, report) = verify_json(state);
    assert_eq!(code, 1, "{report}");
    assert!(report["fault"].is_null(), "the chain itself is sound: {report}");
    report["checkpoints"]["fault"].clone()
}

/// Root signs, with the key it holds now, a checkpoint dated in an epoch
/// that has ended (to back-date a sealed state): not its epoch's key.
#[test]
fn a_checkpoint_back_dated_with_the_current_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    import_lines(&state, &dir.path().join("a.jsonl"), (0..20).map(|i| line("p", "W", json!(i))), &[], &[])
        .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut back = 0;
    let cp = append_forged(&state, |last, line| {
        back = last.epoch.epoch;
        OpCheckpoint { time_ns: last.time_ns + 1, epoch: line, start: None, ..last }
    });
    assert!(cp.epoch.epoch > back, "signed with a later epoch's key");
    let f = fault_of(&state);
    assert_eq!(f["kind"], "wrong epoch key", "{f}");
    assert_eq!(f["checkpoint"]["time_ns"], cp.time_ns, "{f}");
}

/// A checkpoint two epochs after its predecessor with no start line: the
/// checkpoints of the epoch between were removed (a running daemon signs
/// every epoch; a stopped one declares the downtime when it starts).
#[test]
fn an_epoch_gap_fails() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    import_lines(&state, &dir.path().join("a.jsonl"), (0..20).map(|i| line("p", "W", json!(i))), &[], &[])
        .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let mut prev = 0;
    let cp = append_forged(&state, |last, line| {
        prev = last.epoch.epoch;
        OpCheckpoint { time_ns: op_dbus::codec::now_ns(), epoch: line, start: None, ..last }
    });
    assert!(cp.epoch.epoch >= prev + 2);
    let f = fault_of(&state);
    assert_eq!(f["kind"], "epoch gap", "{f}");

    // The same checkpoint with a start line that names its predecessor
    // exactly is a declared downtime, and verifies.
    let dir2 = tempfile::tempdir().unwrap();
    let state2 = dir2.path().join("state");
    import_lines(&state2, &dir2.path().join("a.jsonl"), (0..20).map(|i| line("p", "W", json!(i))), &[], &[])
        .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    append_forged(&state2, |last, line| OpCheckpoint {
        time_ns: op_dbus::codec::now_ns(),
        epoch: line,
        start: Some(StartLine::After { size: last.checkpoint.size, time_ns: last.time_ns }),
        ..last
    });
    let (code, report) = verify_json(&state2);
    assert_eq!(code, 0, "{report}");
}

/// Blocks recorded with the checkpoints off, long after the last
/// checkpoint, then sealed much later: a range of time that should have
/// been sealed and was not, named by its first seq (journald's
/// CVE-2023-31438 passed exactly this).
#[test]
fn an_unsealed_range_fails() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    import_lines(&state, &dir.path().join("a.jsonl"), (0..20).map(|i| line("p", "W", json!(i))), &[], &[])
        .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    import_lines(
        &state,
        &dir.path().join("b.jsonl"),
        (20..30).map(|i| line("p", "W", json!(i))),
        &[],
        &[("OP_DBUS_PROOF", "0")],
    )
    .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    import_lines(&state, &dir.path().join("c.jsonl"), [line("p", "W", json!(30))], &[], &[]).expect_code(0);
    let f = fault_of(&state);
    assert_eq!(f["kind"], "unsealed range", "{f}");
    assert_eq!(f["seq"], 20, "{f}");
}
