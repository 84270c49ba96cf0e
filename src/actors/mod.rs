//! The pipeline's actors, one per file. They run on [`crate::runtime`];
//! [`crate::pipeline`] wires them.

pub mod cache_indexer;
pub mod chain_writer;
pub mod dbus_ingest;
pub mod embedder;
pub mod footprinter;
pub mod replicator;
pub mod snapshotter;
