//! Search latency (`make bench-search`): top-10 by cosine over 100k and 1M
//! stored 384-dim vectors, one query at a time, against numpy (`M @ q` +
//! argpartition) and faiss `IndexFlatIP` (exact) on the same vectors, in
//! the same run (scripts/bench-search.py).
//!
//! The vectors are synthetic but shaped like embeddings (unit length, in
//! clusters): an exact scan costs the same whatever they hold. op-dbus
//! scans its int8 store file (mapped; 388 bytes a vector) on two threads;
//! the peers hold the dequantized f32 matrix (1540 bytes a vector) in RAM.
//! The top-10 seqs are compared with faiss's: they must agree.
//!
//! SEARCH_N (default "100000,1000000"), SEARCH_QUERIES (default 100).

use std::path::Path;
use std::time::Instant;

use op_dbus::layout::Layout;
use op_dbus::ml::store::{quantize, StoreReader, StoreWriter};

const DIMS: usize = 384;
const K: usize = 10;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
    fn unit(&mut self, around: Option<&[f32]>, noise: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIMS).map(|i| around.map_or(0.0, |c| c[i]) + noise * self.next()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let ns: Vec<u64> = std::env::var("SEARCH_N")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SEARCH_N: numbers"))
        .collect();
    let queries: usize = std::env::var("SEARCH_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-search");
    std::fs::create_dir_all(&work).unwrap();
    println!("| stored vectors | op-dbus p50 / p99 | numpy p50 / p99 | faiss flat p50 / p99 | vs numpy | vs faiss | top-10 = faiss | memory: op-dbus map / peers' f32 |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in ns {
        let dir = tempfile::tempdir_in(&work).unwrap();
        let layout = Layout::new(dir.path(), None);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let centers: Vec<Vec<f32>> = (0..256).map(|_| rng.unit(None, 1.0)).collect();
        let mut w = StoreWriter::open(&layout, "bench", DIMS).unwrap();
        let mut buf = Vec::new();
        for i in 0..n {
            let v = rng.unit(Some(&centers[(i % 256) as usize]), 0.08);
            quantize(&v, &mut buf);
            if buf.len() >= 64 << 20 {
                w.append(&buf).unwrap();
                buf.clear();
            }
        }
        w.append(&buf).unwrap();
        drop(w);
        let qs: Vec<Vec<f32>> = (0..queries).map(|i| rng.unit(Some(&centers[(i * 37) % 256]), 0.1)).collect();
        let qfile = dir.path().join("queries.f32");
        std::fs::write(&qfile, qs.iter().flatten().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();

        let store = StoreReader::open(&layout, "bench").unwrap().unwrap();
        assert_eq!(store.len(), n);
        store.top_k(&qs[0], K, None, 2); // warm-up: the pages are in memory, as for the peers
        let mut times = Vec::new();
        let mut tops = Vec::new();
        for q in &qs {
            let t = Instant::now();
            let top = store.top_k(q, K, None, 2);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            tops.push(top.iter().map(|(s, _)| *s).collect::<Vec<u64>>());
        }
        times.sort_by(f64::total_cmp);

        let path = layout.vectors.join("search/bench/embeddings.q8");
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-search.py"))
            .arg(&path)
            .arg(&qfile)
            .arg(K.to_string())
            .arg("2")
            .output()
            .expect("run scripts/bench-search.py");
        assert!(out.status.success(), "peer failed: {}", String::from_utf8_lossy(&out.stderr));
        let peer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let faiss_tops: Vec<Vec<u64>> = serde_json::from_value(peer["faiss"]["top"].clone()).unwrap();
        let same = tops
            .iter()
            .zip(&faiss_tops)
            .filter(|(a, b)| {
                let (mut a, mut b) = ((*a).clone(), (*b).clone());
                a.sort_unstable();
                b.sort_unstable();
                a == b
            })
            .count();
        let (ours, np, fs) =
            (pct(&times, 0.5), peer["numpy"]["p50_ms"].as_f64().unwrap(), peer["faiss"]["p50_ms"].as_f64().unwrap());
        println!(
            "| {n} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2}× | {:.2}× | {same} of {queries} | {} MB / {} MB |",
            ours,
            pct(&times, 0.99),
            np,
            peer["numpy"]["p99_ms"].as_f64().unwrap(),
            fs,
            peer["faiss"]["p99_ms"].as_f64().unwrap(),
            np / ours,
            fs / ours,
            std::fs::metadata(&path).unwrap().len() >> 20,
            peer["peer_matrix_bytes"].as_u64().unwrap() >> 20,
        );
    }
}
