//! op-dbus: a tamper-evident flight recorder of system state changes.
//! See ARCHITECTURE.md for the map of this crate and docs/FORMAT.md for the
//! chain's on-disk format.

pub mod actors;
pub mod bus;
pub mod chain;
pub mod cli;
pub mod codec;
pub mod config;
pub mod health;
pub mod index;
pub mod input;
pub mod layout;
pub mod messages;
pub mod metrics;
pub mod ml;
pub mod pipeline;
pub mod runtime;
pub mod storage;
pub mod vector;

/// The line format's former path, until `import` is a module of its own again.
pub use input as import;
