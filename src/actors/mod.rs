//! The pipeline's actors, one per file. They run on [`crate::runtime`];
//! [`crate::pipeline`] wires them.

pub(crate) mod cache_indexer;
pub mod chain_writer;
pub(crate) mod dbus_ingest;
pub mod embedder;
pub mod footprinter;
pub(crate) mod replicator;
pub(crate) mod snapshotter;
