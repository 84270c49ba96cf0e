//! Copies of the state dir: snapshots (BTRFS read-only subvolume snapshots,
//! or hard-link copies elsewhere), their rotation, and replication with
//! `btrfs send`/`receive`. Where the areas are and what they are made of is
//! [`crate::layout`]'s business.

pub mod replicate;
pub mod retention;
pub mod snapshot;
