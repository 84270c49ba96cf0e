//! `op-dbus snapshot now`: through the running daemon, or in process.

use super::{existing_config, invalid_bus, Failure, Global};
use crate::maintenance::{snapshot_now, SnapshotNowError, SnapshotTaken};

pub(super) fn run(global: &Global, bus: Option<String>) -> Result<u8, Failure> {
    let cfg = existing_config(global)?;
    let taken = snapshot_now(&cfg, bus.as_deref()).map_err(|e| match e {
        SnapshotNowError::InvalidBus(b) => invalid_bus(&b),
        e => Failure::runtime(e),
    })?;
    match taken {
        SnapshotTaken::Here(Some(m)) => println!("{}", m.name),
        SnapshotTaken::Here(None) => println!("nothing new since the last snapshot (or the chain is empty)"),
        SnapshotTaken::ByDaemon(Some(name)) => println!("{name}"),
        SnapshotTaken::ByDaemon(None) => println!("nothing new since the last snapshot"),
    }
    Ok(0)
}
