//! `op-dbus reindex`: rebuild the index from the chain.

use super::{existing_config, init_tracing, Failure, Global};

pub(super) fn run(global: &Global) -> Result<u8, Failure> {
    let layout = existing_config(global)?.layout();
    init_tracing();
    let r = crate::maintenance::reindex(&layout).map_err(Failure::runtime)?;
    println!(
        "reindexed {} blocks and {} Merkle tree entries in {:.2}s ({:.0}/s)",
        r.blocks,
        r.tiles,
        r.seconds,
        r.blocks as f64 / r.seconds.max(1e-9)
    );
    Ok(0)
}
