//! The index as the chain's witness. It holds only durable blocks, so a
//! chain that ends before the index's head has lost acknowledged data: no
//! crash can cause that (ARCHITECTURE.md, invariants). Start-up refuses
//! such a chain (`ChainStore::open_with_witness`); `verify` reports it.

use crate::chain::verify::{self, Fault, FaultKind, Report};
use crate::chain::StoreError;
use crate::index::Index;
use crate::layout::Layout;

/// `op-dbus verify`: every hash and link of the chain on `threads` cores,
/// then, if that is sound, whether the chain reaches the last block the
/// index recorded (a truncation at seq = the chain's end if not). Each
/// sound block is handed to `observe` (the checkpoint audit).
pub fn verify_observed(
    layout: &Layout,
    index: Option<&Index>,
    threads: usize,
    observe: &mut dyn FnMut(u64, &crate::codec::Hash, i64),
) -> Result<Report, StoreError> {
    // Read before the chain, so that blocks a running writer adds
    // meanwhile cannot look missing.
    let witness = index.and_then(|i| i.head().ok().flatten());
    let mut report = verify::verify_observed(layout, threads, observe)?;
    if report.fault.is_none() {
        if let Some(head) = witness {
            let chain_next = report.head_seq.map_or(0, |s| s + 1);
            if head.seq >= chain_next {
                report.fault = Some(Fault {
                    seq: chain_next,
                    kind: FaultKind::Truncation,
                    file: layout.timing.display().to_string(),
                    offset: 0,
                    detail: format!("the index recorded seq {} but the chain ends before seq {chain_next}", head.seq),
                });
                report.ok = false;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::testing::record;
    use crate::chain::ChainStore;

    #[test]
    fn a_chain_shorter_than_its_index_is_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        layout.create_dirs().unwrap();
        let (mut store, _) = ChainStore::open(&layout, 1 << 20).unwrap();
        let records: Vec<_> = (0..4).map(|i| record(i, "p", "x", false)).collect();
        let appended = store.append(&records, 1).unwrap();
        drop(store);
        let index = Index::open(&layout.cache).unwrap();
        index.insert(&appended).unwrap();
        let r = verify_observed(&layout, Some(&index), 1, &mut |_, _, _| {}).unwrap();
        assert!(r.ok && r.fault.is_none(), "{r:?}");

        // Cut the chain at the third block's frame: two blocks left.
        let seg = layout.segment_path(0);
        let b2 = &appended[2];
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(b2.offset).unwrap();
        let r = verify_observed(&layout, Some(&index), 1, &mut |_, _, _| {}).unwrap();
        let f = r.fault.unwrap();
        assert!(!r.ok);
        assert_eq!((f.seq, f.kind), (2, FaultKind::Truncation));
        assert!(f.detail.contains("the index recorded seq 3"), "{}", f.detail);
        // Without the witness the shorter chain is sound.
        assert!(verify_observed(&layout, None, 1, &mut |_, _, _| {}).unwrap().ok);
    }
}
