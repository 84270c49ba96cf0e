//! `op-dbus verify`: every hash and link; exit 1 on any fault.

use super::{existing_config, open_index, Failure, Global, VerifyArgs, EXIT_PROBLEM};

pub(super) fn run(global: &Global, a: VerifyArgs) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let index = open_index(&layout);
    let report = crate::index::witness::verify(&layout, index.as_ref(), threads).map_err(Failure::runtime)?;
    if a.json {
        println!("{}", serde_json::to_string(&report).map_err(Failure::runtime)?);
    } else {
        if let Some(t) = &report.torn_tail {
            println!(
                "note: {} bytes of an unfinished write at {} offset {} ({}); the next start cuts them",
                t.bytes, t.file, t.offset, t.reason
            );
        }
        match &report.fault {
            None => println!(
                "ok: {} blocks in {} segments verified in {:.2}s ({:.0} blocks/s); head seq {} hash {}",
                report.blocks,
                report.segments,
                report.seconds,
                report.blocks as f64 / report.seconds.max(1e-9),
                report.head_seq.map_or("none".into(), |s| s.to_string()),
                report.head_hash.as_deref().unwrap_or("none"),
            ),
            Some(f) => println!(
                "FAILED at seq {}: {} in {} at offset {}: {}",
                f.seq,
                f.kind.describe(),
                f.file,
                f.offset,
                f.detail
            ),
        }
    }
    Ok(if report.ok { 0 } else { EXIT_PROBLEM })
}
