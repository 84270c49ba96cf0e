//! Per-block CPU costs of the write and verify paths.
//! `cargo bench --bench codec`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use op_dbus::actors::footprinter::footprint;
use op_dbus::codec::{block_hash, BlockBody, Source, Value, FORMAT_VERSION, ZERO_HASH};
use op_dbus::messages::RawEvent;
use op_dbus::vector::heuristic;

fn sample() -> RawEvent {
    let data: Value = serde_json::from_str(
        r#"{"id":4711,"unit":"svc17.service","result":"done","job":12345,"path":"/org/freedesktop/systemd1/job/12345"}"#,
    )
    .unwrap();
    RawEvent {
        source: Source::Import,
        plugin_id: "org.freedesktop.systemd1".into(),
        operation: "org.freedesktop.systemd1.Manager.JobRemoved".into(),
        path: Some("/org/freedesktop/systemd1".into()),
        sender: Some(":1.5".into()),
        creds: None,
        captured_ns: 1_750_000_000_000_000_000,
        signature: String::new(),
        data,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("block");
    g.throughput(Throughput::Elements(1));
    let line = br#"{"plugin_id":"org.freedesktop.systemd1","operation":"org.freedesktop.systemd1.Manager.JobRemoved","path":"/org/freedesktop/systemd1","timestamp":1750000000000000000,"data":{"id":4711,"unit":"svc17.service","result":"done","job":12345}}"#;
    let limits = op_dbus::input::Limits { max_data_bytes: 1 << 20, max_depth: 64 };
    g.bench_function("parse_json_line", |b| b.iter(|| op_dbus::input::parse_line(line, limits, 0).unwrap()));
    let raw = sample();
    g.bench_function("footprint", |b| b.iter_batched(|| raw.clone(), |e| footprint(e, 1 << 20), BatchSize::SmallInput));
    let (fp, value) = footprint(sample(), 1 << 20);
    g.bench_function("heuristic_vector", |b| b.iter(|| heuristic(&fp, &value)));
    let body = BlockBody {
        version: FORMAT_VERSION,
        seq: 1,
        prev_hash: ZERO_HASH,
        timestamp_ns: 1,
        footprint: fp,
        vector: None,
    };
    let mut buf = Vec::with_capacity(512);
    g.bench_function("encode_body", |b| {
        b.iter(|| {
            buf.clear();
            body.encode_into(&mut buf);
        })
    });
    let bytes = body.encode();
    g.bench_function("hash_body", |b| b.iter(|| block_hash(&bytes)));
    g.bench_function("decode_body", |b| b.iter(|| BlockBody::decode(&bytes).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
