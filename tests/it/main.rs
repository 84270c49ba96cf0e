//! The integration tests, as one test binary: each binary links the whole
//! crate and its dependencies (ONNX Runtime bindings, zbus, LMDB), so one
//! binary instead of one per file makes a change relink once, not twelve
//! times. Cargo finds it as the `it` test (tests/it/main.rs).
//!
//! `make test` runs it with cargo-nextest, which runs each test in its own
//! process; `cargo test --test it bus::` runs one area.

mod common;

mod bad_input;
mod bus;
mod capture;
mod crash;
mod daemon;
mod ml;
mod pipeline;
mod proof;
mod query;
mod replication;
mod snapshots;
mod tamper;
mod vectors;
