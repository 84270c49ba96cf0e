//! op-dbus: a tamper-evident flight recorder of system state changes.
//! See ARCHITECTURE.md for the map of this crate and docs/FORMAT.md for the
//! chain's on-disk format.

pub mod actors;
pub mod bus;
pub mod chain;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod faults;
pub mod health;
pub mod import;
pub mod index;
pub mod input;
pub mod layout;
pub mod maintenance;
pub mod merkle;
pub mod messages;
pub mod metrics;
pub mod ml;
pub mod note;
pub mod pipeline;
pub mod proof;
pub mod runtime;
pub mod status;
pub mod storage;
pub mod vector;
pub mod witness;
