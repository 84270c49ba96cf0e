//! `op-dbus status` as a library call: what a state dir holds, read from
//! disk by any process (the daemon may be running): the chain, the index
//! and how far behind it is, the search vectors of the model in use, the
//! storage, and who holds the writer's lock.

use std::path::PathBuf;

use serde::Serialize;

use crate::chain::{reader, StoreError};
use crate::codec::hex;
use crate::index::Index;
use crate::layout::Layout;
use crate::ml::VectorLevel;

/// A state dir's status. It is the JSON `status --json` prints: every
/// struct's fields are in alphabetical order, the key order of the
/// hand-built JSON this replaced (serde_json sorted its keys), because
/// tests and scripts read it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub(crate) chain: ChainStatus,
    /// The state dir's filesystem type (`btrfs`, `ext4`, ...).
    pub(crate) filesystem: String,
    pub(crate) index: IndexStatus,
    pub(crate) proof: ProofStatus,
    pub(crate) state_dir: PathBuf,
    /// How the areas are stored (`btrfs subvolumes`, ...).
    pub(crate) storage: String,
    /// The configured level (what the vectors of a next start will be).
    pub(crate) vector_level: &'static str,
    pub(crate) vectors: VectorStatus,
    /// The pid written in the lock file while a writer holds it.
    pub(crate) writer_pid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainStatus {
    /// Durable blocks (the next seq).
    pub(crate) blocks: u64,
    /// Bytes of all segments.
    pub(crate) bytes: u64,
    pub(crate) head_hash: Option<String>,
    pub(crate) head_seq: Option<u64>,
    pub(crate) segments: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexStatus {
    /// Indexed blocks (the next seq to index); `None` without an index.
    pub(crate) blocks: Option<u64>,
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    /// Chain blocks not indexed yet; `None` without an index.
    pub(crate) lag: Option<u64>,
    pub(crate) present: bool,
}

/// The signing keys and the newest checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProofStatus {
    /// Why the keys or the checkpoint log could not be read.
    pub(crate) error: Option<String>,
    /// The identity vkey; `None` before `keys init` (or the first start).
    pub(crate) identity: Option<String>,
    /// Whether the identity secret is still in `keys/` (move it off the host).
    pub(crate) identity_secret_on_host: bool,
    /// The newest checkpoint's tree size and time (unix ns).
    pub(crate) last_checkpoint_size: Option<u64>,
    pub(crate) last_checkpoint_time_ns: Option<i64>,
    /// When the last provisioned epoch ends (unix s): renew before.
    pub(crate) provisioned_until: Option<u64>,
    /// Durable blocks no checkpoint covers yet.
    pub(crate) unsealed: u64,
}

/// What `vectors.json` says the daemon (or the last backfill) uses, and how
/// far that model's store reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VectorStatus {
    /// Why the level's model did not load, when it fell back.
    pub(crate) fallback: Option<String>,
    /// Chain blocks without a vector of `model`.
    pub(crate) lag: u64,
    pub(crate) level: Option<String>,
    pub(crate) model: Option<String>,
    /// Blocks with a vector of `model`.
    pub(crate) stored: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Listing the segments failed.
    #[error(transparent)]
    Segments(std::io::Error),
    /// Reading the chain's head failed.
    #[error(transparent)]
    Chain(#[from] StoreError),
}

/// Reads the status of the state dir at `layout`. `index` is the index if
/// it could be opened (a missing index is reported, not created);
/// `vector_level` the configured one.
pub fn read(layout: &Layout, index: Option<&Index>, vector_level: VectorLevel) -> Result<Status, StatusError> {
    let segments = layout.segments().map_err(StatusError::Segments)?;
    let head = reader::read_head(layout)?;
    let chain_bytes: u64 =
        segments.iter().filter_map(|s| std::fs::metadata(layout.segment_path(*s)).ok()).map(|m| m.len()).sum();
    let (index_next, entries, index_bytes) = match index {
        Some(i) => {
            let next = i.head().ok().flatten().map_or(0, |h| h.seq + 1);
            let (n, size) = i.stats().unwrap_or((0, 0));
            (Some(next), n, size)
        }
        None => (None, 0, 0),
    };
    let vstate = crate::ml::engine::read_state(&layout.state_dir).unwrap_or_default();
    let stored = vstate
        .model
        .as_deref()
        .and_then(|m| crate::ml::store::StoreReader::open(layout, m).ok().flatten())
        .map_or(0, |r| r.len());
    Ok(Status {
        chain: ChainStatus {
            blocks: head.next_seq,
            bytes: chain_bytes,
            head_hash: head.last_seq().map(|_| hex(&head.hash)),
            head_seq: head.last_seq(),
            segments: segments.len(),
        },
        filesystem: crate::layout::filesystem_type(&layout.state_dir),
        index: IndexStatus {
            blocks: index_next,
            bytes: index_bytes,
            entries,
            lag: index_next.map(|n| head.next_seq.saturating_sub(n)),
            present: index.is_some(),
        },
        proof: proof_status(layout, head.next_seq),
        state_dir: layout.state_dir.clone(),
        storage: crate::layout::describe(&[&layout.timing, &layout.vectors, &layout.cache]),
        vector_level: vector_level.as_str(),
        vectors: VectorStatus {
            fallback: vstate.fallback,
            lag: head.next_seq.saturating_sub(stored),
            level: vstate.level,
            model: vstate.model,
            stored,
        },
        writer_pid: writer_pid(layout),
    })
}

fn proof_status(layout: &Layout, blocks: u64) -> ProofStatus {
    let mut p = ProofStatus {
        error: None,
        identity: None,
        identity_secret_on_host: false,
        last_checkpoint_size: None,
        last_checkpoint_time_ns: None,
        provisioned_until: None,
        unsealed: blocks,
    };
    match crate::proof::keys::EpochKeys::open(&layout.state_dir) {
        Ok(Some(k)) => {
            p.identity = Some(k.identity().to_vkey());
            p.identity_secret_on_host = k.identity_secret_on_host();
            p.provisioned_until = Some(k.provisioned_until());
        }
        Ok(None) => {}
        Err(e) => p.error = Some(e.to_string()),
    }
    match crate::proof::checkpointer::last_checkpoint(layout) {
        Ok(Some(cp)) => {
            p.last_checkpoint_size = Some(cp.checkpoint.size);
            p.last_checkpoint_time_ns = Some(cp.time_ns);
            p.unsealed = blocks.saturating_sub(cp.checkpoint.size);
        }
        Ok(None) => {}
        Err(e) => p.error = p.error.take().or(Some(e.to_string())),
    }
    p
}

/// The pid in the state dir's lock file while a process holds the lock.
fn writer_pid(layout: &Layout) -> Option<String> {
    let lock = layout.state_dir.join("op-dbus.lock");
    let file = std::fs::File::open(&lock).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => Some(std::fs::read_to_string(&lock).unwrap_or_default().trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::testing::record;
    use crate::chain::ChainStore;

    #[test]
    fn status_reads_chain_index_lag_and_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&dir.path().join("state"), None);
        layout.create_dirs().unwrap();
        let (mut store, _) = ChainStore::open(&layout, 1 << 20).unwrap();
        let records: Vec<_> = (0..5).map(|i| record(i, "org.example.app", "x", false)).collect();
        let appended = store.append(&records, 1).unwrap();
        let head = store.head();
        drop(store);

        let s = read(&layout, None, VectorLevel::Heuristic).unwrap();
        let chain_bytes = std::fs::metadata(layout.segment_path(0)).unwrap().len();
        assert_eq!(
            s.chain,
            ChainStatus {
                blocks: 5,
                bytes: chain_bytes,
                head_hash: Some(hex(&head.hash)),
                head_seq: Some(4),
                segments: 1
            }
        );
        assert_eq!(s.index, IndexStatus { blocks: None, bytes: 0, entries: 0, lag: None, present: false });
        assert_eq!((s.vector_level, s.writer_pid.as_deref()), ("heuristic", None));
        assert_eq!(s.vectors, VectorStatus { fallback: None, lag: 5, level: None, model: None, stored: 0 });

        // An index holding the first three blocks lags by two.
        let index = Index::open(&layout.cache).unwrap();
        index.insert(&appended[..3]).unwrap();
        std::fs::write(
            layout.state_dir.join("vectors.json"),
            r#"{"level":"medium","model":"heuristic-v1","dims":64,"fallback":"no model files"}"#,
        )
        .unwrap();
        let s = read(&layout, Some(&index), VectorLevel::Medium).unwrap();
        assert_eq!((s.index.blocks, s.index.entries, s.index.lag, s.index.present), (Some(3), 3, Some(2), true));
        assert_eq!(s.vectors.level.as_deref(), Some("medium"));
        assert_eq!(s.vectors.fallback.as_deref(), Some("no model files"));
        assert_eq!((s.vectors.stored, s.vectors.lag), (0, 5));

        // The JSON is the one `status --json` always printed: sorted keys.
        let typed = serde_json::to_string(&s).unwrap();
        assert_eq!(typed, serde_json::to_value(&s).unwrap().to_string());
        let j: serde_json::Value = serde_json::from_str(&typed).unwrap();
        assert_eq!((j["chain"]["blocks"].as_u64(), j["index"]["lag"].as_u64()), (Some(5), Some(2)));
        assert_eq!(j["vector_level"], "medium");
        assert_eq!(j["writer_pid"], serde_json::Value::Null);
    }

    #[test]
    fn a_held_lock_names_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        layout.create_dirs().unwrap();
        let lock = dir.path().join("op-dbus.lock");
        std::fs::write(&lock, "4242").unwrap();
        let held = std::fs::File::open(&lock).unwrap();
        held.lock().unwrap();
        assert_eq!(read(&layout, None, VectorLevel::None).unwrap().writer_pid.as_deref(), Some("4242"));
        drop(held);
        assert_eq!(read(&layout, None, VectorLevel::None).unwrap().writer_pid, None);
    }
}
