//! Failures to inject, for the tests of how the pipeline recovers. The
//! hooks exist only with the `faults` cargo feature, which only the tests
//! and benches enable (`[dev-dependencies]` in Cargo.toml); in the daemon
//! `Faults` is empty and every accessor is a constant `None`.

use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the n-th chain append half-way through its write.
    #[cfg(feature = "faults")]
    pub chain_append: Option<u64>,
    /// Fail the n-th index batch.
    #[cfg(feature = "faults")]
    pub index_batch: Option<u64>,
    /// Make every commit take at least this long (a slow disk).
    #[cfg(feature = "faults")]
    pub commit_delay: Option<Duration>,
}

impl Faults {
    pub fn chain_append(&self) -> Option<u64> {
        #[cfg(feature = "faults")]
        return self.chain_append;
        #[cfg(not(feature = "faults"))]
        None
    }

    pub fn index_batch(&self) -> Option<u64> {
        #[cfg(feature = "faults")]
        return self.index_batch;
        #[cfg(not(feature = "faults"))]
        None
    }

    pub fn commit_delay(&self) -> Option<Duration> {
        #[cfg(feature = "faults")]
        return self.commit_delay;
        #[cfg(not(feature = "faults"))]
        None
    }
}
