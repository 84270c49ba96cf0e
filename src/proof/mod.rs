//! Tamper evidence against root (docs/FORMAT.md, "Tamper evidence"): the
//! Merkle tiles, the checkpoint logs, the epoch keys, the checkpointer that
//! keeps them current behind the ChainWriter, the audit `verify` runs, and
//! proof bundles. The formats themselves are below, in `merkle` (RFC 6962,
//! tlog-tiles) and `note` (signed notes, checkpoints, cosignatures).

pub mod audit;
pub mod bundle;
pub mod checkpointer;
#[cfg(test)]
mod format_example;
pub mod keys;
pub mod log;
pub mod push;
pub mod tiles;
