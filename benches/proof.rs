//! Tamper evidence, measured (BENCHMARKS.md, "Proofs"):
//!
//! - the Merkle tree over the chain against cloudflare's `tlog_tiles` (a
//!   port of Go's sumdb `tlog`, the reference the C2SP specs grew from) on
//!   the same `PROOF_N` (10,000,000) entries: building it, and making
//!   inclusion and consistency proofs, p50 / p99 over 100,000 random
//!   indexes. Ours reads the tiles from disk as `prove` does (page cache
//!   warm, its small tile cache); the peer reads its stored hashes from a
//!   `Vec` in memory, the easier job;
//! - the size of an inclusion proof at 10^9 entries, from the format;
//! - the checkpoint → cosignature round trip to an `op-dbus witness`
//!   process on loopback (signature and proof checked, state fsync'ed),
//!   against the same witness answering a stale size with 409 (no check, no
//!   write), p50 / p99 over `PROOF_COSIGN` (2000) checkpoints;
//! - `keys init` with the defaults (60 s epochs for 720 h): time and disk.
//!
//! `cargo bench --bench proof`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use op_dbus::merkle::{consistency_proof, inclusion_proof, inclusion_proof_len, leaf_hash, root, Hash, MemTree};
use op_dbus::note::checkpoint::{certify_epoch, sign_checkpoint, Checkpoint, EpochLine, OpCheckpoint};
use op_dbus::note::Signer;
use op_dbus::proof::tiles::{TileReader, TileWriter};
use op_dbus::witness::client::{add_checkpoint, PushOutcome};
use tlog_tiles::tlog;

const BIN: &str = env!("CARGO_BIN_EXE_op-dbus");

struct Theirs(Vec<tlog::Hash>);

impl tlog::HashReader for Theirs {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        Ok(indexes.iter().map(|i| self.0[*i as usize]).collect())
    }
}

fn entry(i: u64) -> Hash {
    op_dbus::codec::block_hash(&i.to_be_bytes())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (p50, p99) in µs of `f` over `n` calls.
fn percentiles(n: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        f(i);
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[n / 2], t[(n * 99) / 100])
}

fn index(i: usize, n: u64) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % n
}

fn tree(n: u64) {
    let dir = tempfile::tempdir_in(std::env::var("PROOF_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let tiles = dir.path().join("tiles");
    let s = Instant::now();
    let mut w = TileWriter::open(&tiles);
    for i in 0..n {
        w.push(&entry(i)).unwrap();
    }
    w.flush().unwrap();
    let ours_build = s.elapsed().as_secs_f64();
    let s = Instant::now();
    let mut theirs = Theirs(Vec::with_capacity(2 * n as usize));
    for i in 0..n {
        let add = tlog::stored_hashes(i, &entry(i), &theirs).unwrap();
        theirs.0.extend(add);
    }
    let theirs_build = s.elapsed().as_secs_f64();
    let reader = TileReader::new(&tiles);
    let src = reader.source(n);
    let our_root = root(n, &src).unwrap();
    assert_eq!(our_root, tlog::tree_hash(n, &theirs).unwrap().0, "the two trees disagree");
    let bytes: u64 = walk(&tiles);

    const K: usize = 100_000;
    // Warm the page cache the way a running daemon has it.
    for i in 0..K {
        inclusion_proof(index(i, n), n, &src).unwrap();
    }
    // As `prove` and GetProof run: a fresh source per proof, tiles read
    // from the (warm) page cache and expanded.
    let ours_cold = percentiles(K, |i| {
        let p = inclusion_proof(index(i, n), n, &reader.source(n)).unwrap();
        std::hint::black_box(p);
    });
    // Tiles cached: every tile in memory with its interior nodes, as the
    // peer holds every stored hash.
    let cached = reader.source_cached(n, 1 << 20);
    for i in 0..K {
        inclusion_proof(index(i, n), n, &cached).unwrap();
    }
    let all = n.div_ceil(256);
    for t in 0..all {
        inclusion_proof(t * 256, n, &cached).unwrap();
    }
    let src = cached;
    let ours_incl = percentiles(K, |i| {
        let p = inclusion_proof(index(i, n), n, &src).unwrap();
        std::hint::black_box(p);
    });
    let theirs_incl = percentiles(K, |i| {
        let p = tlog::prove_record(n, index(i, n), &theirs).unwrap();
        std::hint::black_box(p);
    });
    // Consistency from a random older size to the whole tree.
    let old = |i: usize| index(i, n - 1) + 1;
    let ours_cons = percentiles(K / 10, |i| {
        std::hint::black_box(consistency_proof(old(i), n, &src).unwrap());
    });
    let theirs_cons = percentiles(K / 10, |i| {
        std::hint::black_box(tlog::prove_tree(n, old(i), &theirs).unwrap());
    });
    // Each proof is checked once against the other implementation.
    for i in 0..1000 {
        let k = index(i, n);
        let p = inclusion_proof(k, n, &src).unwrap();
        let t: Vec<Hash> = tlog::prove_record(n, k, &theirs).unwrap().iter().map(|h| h.0).collect();
        assert_eq!(p, t);
    }
    println!("| tree of {n} entries | op-dbus tiles (on disk) | tlog_tiles (in memory) |");
    println!("|---|---|---|");
    println!(
        "| build | {:.2} s ({:.0} leaves/s, {} MiB of tiles) | {:.2} s ({:.0} leaves/s, {} MiB in memory) |",
        ours_build,
        n as f64 / ours_build,
        bytes >> 20,
        theirs_build,
        n as f64 / theirs_build,
        (theirs.0.len() * 32) >> 20
    );
    println!(
        "| inclusion proof, tiles cached, p50 / p99 | {:.1} / {:.1} µs | {:.1} / {:.1} µs |",
        ours_incl.0, ours_incl.1, theirs_incl.0, theirs_incl.1
    );
    println!(
        "| inclusion proof, a fresh source per proof (as `prove`), p50 / p99 | {:.1} / {:.1} µs | |",
        ours_cold.0, ours_cold.1
    );
    println!(
        "| consistency proof to the full tree, tiles cached, p50 / p99 | {:.1} / {:.1} µs | {:.1} / {:.1} µs |",
        ours_cons.0, ours_cons.1, theirs_cons.0, theirs_cons.1
    );
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| if e.path().is_dir() { walk(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
                .sum()
        })
        .unwrap_or(0)
}

fn proof_size() {
    let n = 1_000_000_000u64;
    let longest = (0..n).step_by(999_983).map(|i| inclusion_proof_len(i, n)).max().unwrap();
    let longest = longest.max(inclusion_proof_len(n - 1, n));
    println!(
        "| inclusion proof at {n} entries | at most {longest} hashes: {} bytes of hashes, {} bytes as the bundle's base64 lines |",
        longest * 32,
        longest * 45
    );
}

/// A log with the checkpoint shape op-dbus signs (epoch lines bound to an
/// identity), for the witness.
struct Log {
    identity: Signer,
    tree: MemTree,
}

impl Log {
    fn checkpoint(&self, size: u64, t: u64) -> Vec<u8> {
        let e = t / 60;
        let key = Signer::from_seed(self.identity.name(), &op_dbus::codec::block_hash(&e.to_be_bytes())).unwrap();
        let (start, end) = (e * 60, e * 60 + 60);
        let cp = OpCheckpoint {
            checkpoint: Checkpoint {
                origin: self.identity.name().into(),
                size,
                root: root(size, &self.tree).unwrap(),
                extensions: vec![],
            },
            time_ns: t as i64 * 1_000_000_000,
            epoch: EpochLine {
                epoch: e,
                start,
                end,
                public_key: key.public_key(),
                cert_signature: certify_epoch(&self.identity, e, start, end, &key.public_key()),
            },
            start: None,
        };
        sign_checkpoint(&cp, &key).to_bytes()
    }
}

fn cosign() {
    let count = env_u64("PROOF_COSIGN", 2000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        Log { identity: Signer::from_seed("bench.example/log", &[7; 32]).unwrap(), tree: MemTree::new(Vec::new()) };
    for i in 0..(count as u64 + 10) * 4 {
        log.tree.push(leaf_hash(&entry(i)));
    }
    let mut child = Command::new(BIN)
        .args(["witness", "--listen", "127.0.0.1:0", "--name", "bench-witness", "--dir"])
        .arg(dir.path().join("w"))
        .arg("--log")
        .arg(log.identity.verifier().to_vkey())
        .env("OP_DBUS_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("the witness exited").unwrap();
        if let Some(u) = l.strip_prefix("listening ") {
            break u.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let timeout = Duration::from_secs(10);
    // Checkpoint times from a fixed past second on, one second apart.
    let t0 = 1_700_000_000u64;
    let first = log.checkpoint(4, t0);
    assert!(matches!(add_checkpoint(&url, 0, &[], &first, timeout).unwrap(), PushOutcome::Cosigned(_)));
    let notes: Vec<(u64, u64, Vec<Hash>, Vec<u8>)> = (1..=count as u64)
        .map(|k| {
            let (old, new) = (4 * k, 4 * (k + 1));
            (old, new, consistency_proof(old, new, &log.tree).unwrap(), log.checkpoint(new, t0 + k))
        })
        .collect();
    let cosigned = percentiles(count, |i| {
        let (old, _, proof, note) = &notes[i];
        match add_checkpoint(&url, *old, proof, note, timeout).unwrap() {
            PushOutcome::Cosigned(_) => {}
            other => panic!("{other:?}"),
        }
    });
    // The peer: the same witness refusing a stale old size (409), which it
    // answers before any signature check or write.
    let (_, _, proof, note) = &notes[0];
    let refused = percentiles(count, |_| {
        assert!(matches!(add_checkpoint(&url, 1, proof, note, timeout).unwrap(), PushOutcome::Conflict(_)));
    });
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "| checkpoint → cosignature round trip, witness on loopback ({count}) | p50 {:.0} µs, p99 {:.0} µs | the same witness answering 409: p50 {:.0} µs, p99 {:.0} µs |",
        cosigned.0, cosigned.1, refused.0, refused.1
    );
}

fn keys_init() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = Instant::now();
    let out = Command::new(BIN)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(&state)
        .args(["keys", "init"])
        .env("OP_DBUS_LOG", "error")
        .output()
        .unwrap();
    let secs = s.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "| `keys init` (60 s epochs, 720 h: 43,200 epoch keys) | {secs:.2} s, {} KiB in keys/ |",
        walk(&state.join("keys")) >> 10
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    keys_init();
    proof_size();
    cosign();
    tree(env_u64("PROOF_N", 10_000_000));
}
