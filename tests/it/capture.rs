//! The capture queue's overflow policies, in process, against a private
//! dbus-daemon: a slow chain (an injected commit delay) makes the queue
//! overflow. Under `drop`, every emitted signal is either in the chain or
//! counted in a gap record, exactly; under `block`, every one is in the chain.

use crate::common::bus as private_bus;

use std::collections::BTreeSet;
use std::time::Duration;

use op_dbus::chain::reader;
use op_dbus::codec::Value;
use op_dbus::config::{BusAddress, BusConfig, Config, QueuePolicy, ServiceConfig, SnapshotConfig};
use op_dbus::faults::Faults;
use op_dbus::input::Limits;
use op_dbus::layout::Layout;
use op_dbus::pipeline::{attach_bus, spawn_pipeline, PipelineConfig};
use op_dbus::storage::retention::Interval;
use private_bus::Bus;

const N: u64 = 3000;

/// Records N load signals through a pipeline whose commits take 20 ms, with
/// a capture queue of 16 messages; returns the tick seqs found and the gaps.
/// What a run left in the chain.
struct Recorded {
    /// Tick sequence numbers, in chain order.
    ticks: Vec<u64>,
    /// Blocks from the bus (ticks and the emitter's name signals).
    dbus_blocks: u64,
    /// Gap records: reason and dropped count.
    gaps: Vec<(String, Option<u64>)>,
}

fn record(policy: QueuePolicy) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&dir.path().join("bus"));
    let state = dir.path().join("state");
    // The product defaults, but snapshots off and a slow disk.
    let cfg = PipelineConfig {
        layout: Layout::new(&state, None),
        max_batch: 64,
        snapshot: SnapshotConfig { interval: Interval::Off, ..Default::default() },
        proof: crate::common::quick_proof(),
        faults: Faults { commit_delay: Some(Duration::from_millis(20)), ..Default::default() },
        ..PipelineConfig::new(&Config::default())
    };
    let bus_cfg = BusConfig {
        address: BusAddress::Address(bus.address.clone()),
        queue_policy: policy,
        queue_messages: 16,
        ..Default::default()
    };
    let service = ServiceConfig { enabled: false, ..Default::default() };
    let system = actix_rt::System::new();
    system.block_on(async {
        let mut p = spawn_pipeline(cfg).unwrap();
        attach_bus(&mut p, &bus_cfg, &service, Limits { max_data_bytes: 1 << 20, max_depth: 64 }).await.unwrap();
        let address = bus.address.clone();
        let emitter = tokio::task::spawn_blocking(move || {
            std::process::Command::new(private_bus::EMIT)
                .args(["--bus", &address, "load", "--count", &N.to_string()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(emitter.status.success());
        // Let the capture read what the bus still holds for it: wait until
        // the chain has stopped growing for a second. (An absence: under
        // `drop` the last gap record, and so the final count, comes only at
        // shutdown, so there is no height to wait for.)
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = p.health.chain_height.load(std::sync::atomic::Ordering::Acquire);
            if now == last {
                break;
            }
            last = now;
        }
        p.shutdown(Duration::from_secs(120)).await.unwrap();
    });
    let mut ticks = Vec::new();
    let mut gaps = Vec::new();
    let mut dbus_blocks = 0;
    reader::scan_from(&Layout::new(&state, None), 0, |_, _, _, b| {
        let fp = &b.body.footprint;
        let data = Value::decode(&fp.data).unwrap();
        if fp.source == op_dbus::codec::Source::Dbus {
            dbus_blocks += 1;
        }
        if fp.operation == "org.opdbus.Load.Tick" {
            let Value::Array(args) = data else { panic!("args") };
            let Value::UInt(seq) = args[0] else { panic!("seq") };
            ticks.push(seq);
        } else if fp.operation == "org.opdbus.Gap" {
            let j = data.to_json();
            gaps.push((j["reason"].as_str().unwrap().to_string(), j["dropped"].as_u64()));
        }
        true
    })
    .unwrap();
    Recorded { ticks, dbus_blocks, gaps }
}

/// Besides its N ticks, the emitter's connection puts four signals on the
/// bus that a signal monitor sees: NameOwnerChanged and NameAcquired when
/// it connects, NameLost and NameOwnerChanged when it leaves.
const LIFECYCLE_SIGNALS: u64 = 4;

#[test]
fn drop_policy_records_every_loss_as_a_gap_with_the_exact_count() {
    let Recorded { ticks, dbus_blocks, gaps } = record(QueuePolicy::Drop);
    let distinct: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "no signal recorded twice");
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "bus order kept");
    assert!(!gaps.is_empty(), "the queue of 16 never overflowed; the test proves nothing");
    assert!(gaps.iter().all(|(r, d)| r == "queue-full" && d.unwrap() > 0), "{gaps:?}");
    let dropped: u64 = gaps.iter().map(|(_, d)| d.unwrap()).sum();
    // Every message the monitor received is either a block or counted as dropped.
    assert_eq!(
        dbus_blocks + dropped,
        N + LIFECYCLE_SIGNALS,
        "recorded {dbus_blocks} ({} ticks) + dropped {dropped} != emitted {N} + {LIFECYCLE_SIGNALS}",
        ticks.len()
    );
}

#[test]
fn block_policy_loses_nothing() {
    let Recorded { ticks, dbus_blocks, gaps } = record(QueuePolicy::Block);
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(dbus_blocks, N + LIFECYCLE_SIGNALS);
    assert_eq!(ticks, (0..N).collect::<Vec<_>>());
}
