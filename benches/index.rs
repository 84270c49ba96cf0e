//! The LMDB index against SQLite (rusqlite, bundled; the seed's choice)
//! indexing the same records in the same batch sizes, each batch one
//! transaction, both without a per-transaction fsync (the index is derived
//! data in both designs: LMDB NO_SYNC, SQLite WAL with synchronous=OFF).
//! SQLite gets the same three lookups the LMDB index holds (by seq, time,
//! plugin+operation); hash lookups live in per-segment files in op-dbus,
//! written once per sealed segment, outside this measurement.
//! `cargo bench --bench index`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use op_dbus::chain::Appended;
use op_dbus::index::Index;

fn blocks(start: u64, n: u64) -> Vec<Appended> {
    (start..start + n)
        .map(|seq| {
            let mut hash = [0u8; 32];
            for (i, chunk) in hash.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&(seq ^ i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            }
            let p = seq % 5;
            Appended {
                seq,
                hash,
                segment: 0,
                offset: 24 + seq * 300,
                frame_len: 300,
                captured_ns: 1_750_000_000_000_000_000 + seq as i64 * 1000,
                plugin_id: format!("org.freedesktop.plugin{p}"),
                operation: format!("org.freedesktop.plugin{p}.Manager.Op{}", seq % 3),
            }
        })
        .collect()
}

fn sqlite_open(dir: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("index.db")).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         CREATE TABLE by_seq (seq INTEGER PRIMARY KEY, segment INTEGER, offset INTEGER, frame_len INTEGER,
                              hash BLOB, captured_ns INTEGER, plugin TEXT, operation TEXT);
         CREATE INDEX by_time ON by_seq(captured_ns, seq);
         CREATE INDEX by_plugin_op ON by_seq(plugin, operation, seq);",
    )
    .unwrap();
    c
}

fn sqlite_insert(c: &mut rusqlite::Connection, blocks: &[Appended]) {
    let tx = c.transaction().unwrap();
    {
        let mut st = tx.prepare_cached("INSERT INTO by_seq VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)").unwrap();
        for b in blocks {
            st.execute(rusqlite::params![
                b.seq as i64,
                b.segment as i64,
                b.offset as i64,
                b.frame_len,
                &b.hash[..],
                b.captured_ns,
                b.plugin_id,
                b.operation
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn bench(c: &mut Criterion) {
    for batch in [256u64, 4096] {
        let mut g = c.benchmark_group(format!("index_batch_{batch}"));
        g.throughput(Throughput::Elements(batch));
        g.sample_size(20);
        // Each measurement inserts the next batch into a store that already
        // holds 100k records and keeps growing, as a live index does.
        g.bench_function("lmdb", |b| {
            let dir = tempfile::tempdir().unwrap();
            let index = Index::open(dir.path()).unwrap();
            index.insert(&blocks(0, 100_000)).unwrap();
            let mut next = 100_000;
            b.iter_batched(
                || {
                    let v = blocks(next, batch);
                    next += batch;
                    v
                },
                |v| index.insert(&v).unwrap(),
                BatchSize::LargeInput,
            )
        });
        g.bench_function("sqlite", |b| {
            let dir = tempfile::tempdir().unwrap();
            let mut conn = sqlite_open(dir.path());
            sqlite_insert(&mut conn, &blocks(0, 100_000));
            let mut next = 100_000;
            b.iter_batched(
                || {
                    let v = blocks(next, batch);
                    next += batch;
                    v
                },
                |v| sqlite_insert(&mut conn, &v),
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
