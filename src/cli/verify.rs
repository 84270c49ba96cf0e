//! `op-dbus verify`: every hash and link, then every checkpoint (its
//! signature, its epoch key's binding to the identity, its root, the
//! sealing of every block); exit 1 on any fault.

use super::{existing_config, open_index, Failure, Global, VerifyArgs, EXIT_PROBLEM};
use crate::proof::audit::{identity_key, Audit, AuditReport};

pub(super) fn run(global: &Global, a: VerifyArgs) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let index = open_index(&layout);
    let has_checkpoints = layout.timing.join("checkpoints").exists();
    let identity = match identity_key(&layout, a.key.as_deref()) {
        Ok(k) => Some(k),
        Err(_) if !has_checkpoints && a.key.is_none() => None,
        Err(e) => return Err(Failure::usage(anyhow::anyhow!("{e}"))),
    };
    let mut audit = identity.map(|(k, source)| Audit::load(&layout, k, source));
    let report = {
        let mut observe = |seq: u64, hash: &crate::codec::Hash, ts: i64| {
            if let Some(a) = audit.as_mut() {
                a.observe(seq, hash, ts);
            }
        };
        crate::index::witness::verify_observed(&layout, index.as_ref(), threads, &mut observe)
            .map_err(Failure::runtime)?
    };
    // A chain fault stops the walk: the checkpoints are then checked only
    // as far as the chain is sound, and the first fault stays the chain's.
    let audit: Option<AuditReport> = audit.map(|a| a.finish(&layout));
    if a.json {
        // The chain's report as before, with the checkpoints' beside it.
        let mut v = serde_json::to_value(&report).map_err(Failure::runtime)?;
        v["ok"] = (report.ok && audit.as_ref().is_none_or(|a| a.ok)).into();
        v["checkpoints"] = serde_json::to_value(&audit).map_err(Failure::runtime)?;
        println!("{v}");
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
        match &audit {
            None => println!("note: no checkpoints and no keys: nothing anchors this chain against a rewrite by root"),
            Some(c) => print_audit(c),
        }
    }
    let all_ok = report.ok && audit.as_ref().is_none_or(|a| a.ok);
    Ok(if all_ok { 0 } else { EXIT_PROBLEM })
}

fn print_audit(c: &AuditReport) {
    for w in &c.warnings {
        println!("warning: {w}");
    }
    match &c.fault {
        None => {
            let last = c
                .last
                .as_ref()
                .map_or("none".to_string(), |l| format!("size {} time {} epoch {}", l.size, l.time_ns, l.epoch));
            println!(
                "ok: {} checkpoints and {} cosigned verified against {}; newest {last}; {} blocks not yet sealed",
                c.checkpoints, c.cosigned, c.identity, c.unsealed_tail
            );
            println!("     identity key from {}", c.identity_source);
        }
        Some(f) => {
            let at = match (f.seq, f.seq_range) {
                (Some(s), _) => format!(" at seq {s}"),
                (None, Some((lo, hi))) => format!(" between seq {lo} and {hi}"),
                _ => String::new(),
            };
            let which = f.checkpoint.as_ref().map_or(String::new(), |c| {
                format!(" (checkpoint #{} in {}: size {} time {} epoch {})", c.index, c.log, c.size, c.time_ns, c.epoch)
            });
            println!("FAILED{at}: {}{which}: {}", f.kind, f.detail);
        }
    }
}
