//! `op-dbus prove`: a C2SP tlog-proof for one block, or a consistency proof.

use std::io::Write;

use super::{existing_config, Failure, Global, ProveArgs, EXIT_PROBLEM};
use crate::proof::bundle::{self, ProveError};

pub(super) fn run(global: &Global, a: ProveArgs) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    let (identity, _) =
        crate::proof::audit::identity_key(&layout, None).map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
    if a.new.is_some() && !a.consistency {
        return Err(Failure::usage(anyhow::anyhow!("a second size is only for --consistency")));
    }
    let made = if a.consistency {
        bundle::prove_consistency(&layout, &identity, a.seq, a.new)
    } else {
        bundle::prove(&layout, &identity, a.seq)
    };
    let text = match made {
        Ok(t) => t,
        Err(
            e @ (ProveError::NotCovered { .. }
            | ProveError::NoBlock { .. }
            | ProveError::NoCheckpoint(_)
            | ProveError::Order { .. }),
        ) => {
            eprintln!("op-dbus: {e}");
            return Ok(EXIT_PROBLEM);
        }
        Err(e) => return Err(Failure::runtime(e)),
    };
    match &a.output {
        Some(p) => std::fs::write(p, &text).map_err(|e| Failure::runtime(anyhow::anyhow!("{}: {e}", p.display())))?,
        None => std::io::stdout().write_all(text.as_bytes()).map_err(Failure::runtime)?,
    }
    Ok(0)
}
