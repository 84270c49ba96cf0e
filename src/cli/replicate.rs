//! `op-dbus replicate`: one pass; exit 3 if any replica failed.

use super::{existing_config, Failure, Global, EXIT_FAILURE};

pub(super) fn run(global: &Global, only: Option<String>) -> Result<u8, Failure> {
    let cfg = existing_config(global)?;
    let outcomes =
        crate::storage::replicate::replicate(&cfg.layout(), &cfg.replicas, only.as_deref()).map_err(Failure::usage)?;
    let mut failed = 0;
    for o in outcomes {
        match o.result {
            Ok(Some(s)) => println!(
                "{}: sent {} ({}, {} bytes)",
                o.name,
                s.snapshot,
                if s.incremental { "incremental" } else { "full" },
                s.bytes
            ),
            Ok(None) => println!("{}: up to date", o.name),
            Err(e) => {
                failed += 1;
                println!("{}: FAILED: {e}", o.name);
            }
        }
    }
    Ok(if failed == 0 { 0 } else { EXIT_FAILURE })
}
