//! Queries behind `log` and `show`: the index answers for what it holds,
//! and blocks past the indexed head are read from the chain, so a lagging
//! (or missing) index never hides a durable block.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::json;

use crate::chain::reader::{self, StoredBlock};
use crate::chain::StoreError;
use crate::codec::{hex, parse_hex_hash, Hash, Value, FLAG_TRUNCATED};
use crate::index::hashes::HashFiles;
use crate::index::{Index, IndexError};
use crate::layout::Layout;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Capture time, inclusive lower bound (ns).
    pub(crate) since: Option<i64>,
    /// Capture time, exclusive upper bound (ns).
    pub(crate) until: Option<i64>,
    pub(crate) plugin: Option<String>,
    pub(crate) operation: Option<String>,
    /// Keep only the most recent `limit` matches.
    pub(crate) limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, b: &StoredBlock) -> bool {
        let fp = &b.body.footprint;
        self.since.is_none_or(|s| fp.captured_ns >= s)
            && self.until.is_none_or(|u| fp.captured_ns < u)
            && self.plugin.as_deref().is_none_or(|p| fp.plugin_id == p)
            && self.operation.as_deref().is_none_or(|o| fp.operation == o)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Chain(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Blocks matching `filter`, in seq order.
pub fn query(layout: &Layout, index: Option<&Index>, filter: &Filter) -> Result<Vec<StoredBlock>, QueryError> {
    let indexed_next = match index {
        Some(i) => i.head()?.map_or(0, |h| h.seq + 1),
        None => 0,
    };
    let keep = filter.limit.unwrap_or(usize::MAX);
    let mut out: VecDeque<StoredBlock> = VecDeque::new();
    let push = |out: &mut VecDeque<StoredBlock>, b: StoredBlock| {
        out.push_back(b);
        if out.len() > keep {
            out.pop_front();
        }
    };
    let selective = filter.plugin.is_some() || filter.since.is_some() || filter.until.is_some();
    // Where the chain scan starts: after what the index answered, or, when
    // the index cannot narrow the query, wherever the answer can begin.
    let scan_from = match index {
        Some(index) if selective && indexed_next > 0 => {
            let mut seqs = if let Some(p) = &filter.plugin {
                index.seqs_of_plugin(p, filter.operation.as_deref())?
            } else {
                index.seqs_in_time(filter.since, filter.until)?
            };
            seqs.sort_unstable();
            seqs.retain(|s| *s < indexed_next);
            // Newest first, so a limit reads only what it keeps.
            let mut found = Vec::new();
            for seq in seqs.into_iter().rev() {
                if found.len() >= keep {
                    break;
                }
                let b = read_indexed(layout, index, seq)?;
                if filter.matches(&b) {
                    found.push(b);
                }
            }
            for b in found.into_iter().rev() {
                push(&mut out, b);
            }
            indexed_next
        }
        // Unfiltered with a limit: start just before the indexed end.
        _ if filter.limit.is_some() && filter.operation.is_none() => {
            indexed_next.saturating_sub(filter.limit.unwrap_or(0) as u64)
        }
        _ => 0,
    };
    reader::scan_from(layout, scan_from, |_, _, _, b| {
        if filter.matches(&b) {
            push(&mut out, b);
        }
        true
    })?;
    Ok(out.into())
}

/// The seqs below `limit` that match `filter` (its `limit` aside), sorted;
/// `None` when the filter is empty (everything matches). The index answers
/// for what it holds; blocks past it are read from the chain.
pub fn matching_seqs(
    layout: &Layout,
    index: Option<&Index>,
    filter: &Filter,
    limit: u64,
) -> Result<Option<Vec<u64>>, QueryError> {
    let timed = filter.since.is_some() || filter.until.is_some();
    if !timed && filter.plugin.is_none() && filter.operation.is_none() {
        return Ok(None);
    }
    let indexed_next = match index {
        Some(i) => i.head()?.map_or(0, |h| h.seq + 1).min(limit),
        None => 0,
    };
    let mut out = Vec::new();
    if let (Some(index), true) = (index, indexed_next > 0) {
        let mut seqs = match (&filter.plugin, &filter.operation) {
            (Some(p), op) => index.seqs_of_plugin(p, op.as_deref())?,
            (None, Some(op)) => index.seqs_of_operation(op)?,
            (None, None) => {
                let mut s = index.seqs_in_time(filter.since, filter.until)?;
                s.sort_unstable();
                s
            }
        };
        if timed && (filter.plugin.is_some() || filter.operation.is_some()) {
            let mut in_time = index.seqs_in_time(filter.since, filter.until)?;
            in_time.sort_unstable();
            seqs.retain(|s| in_time.binary_search(s).is_ok());
        }
        seqs.retain(|s| *s < indexed_next);
        out = seqs;
    }
    reader::scan_from(layout, indexed_next, |_, _, _, b| {
        if b.body.seq >= limit {
            return false;
        }
        if b.body.seq >= indexed_next && filter.matches(&b) {
            out.push(b.body.seq);
        }
        true
    })?;
    Ok(Some(out))
}

/// A one-line summary of a block's data, at most `max` characters.
pub fn data_summary(b: &StoredBlock, max: usize) -> String {
    let s = match data_json(b) {
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    };
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The block with this seq, through the index or, past it, the chain.
pub fn by_seq(layout: &Layout, index: Option<&Index>, seq: u64) -> Result<Option<StoredBlock>, QueryError> {
    if let Some(index) = index {
        if let Some(loc) = index.location(seq)? {
            return Ok(Some(reader::read_block_at(layout, loc.segment, loc.offset, loc.frame_len)?));
        }
    }
    let mut found = None;
    reader::scan_from(layout, seq, |_, _, _, b| {
        if b.body.seq == seq {
            found = Some(b);
        }
        false
    })?;
    Ok(found)
}

/// The block with this hash: through the hash files of sealed segments,
/// then by scanning what they do not cover (the active segment, or
/// everything when the index is missing).
pub fn by_hash(layout: &Layout, index: Option<&Index>, hash: &Hash) -> Result<Option<StoredBlock>, QueryError> {
    let mut from = 0;
    if index.is_some() {
        let files = HashFiles::new(&layout.cache);
        for seq in files.lookup(hash) {
            if let Some(b) = by_seq(layout, index, seq)? {
                if &b.hash == hash {
                    return Ok(Some(b));
                }
            }
        }
        from = files.covered_until(layout);
    }
    let mut found = None;
    reader::scan_from(layout, from, |_, _, _, b| {
        if &b.hash == hash {
            found = Some(b);
            return false;
        }
        true
    })?;
    Ok(found)
}

fn read_indexed(layout: &Layout, index: &Index, seq: u64) -> Result<StoredBlock, QueryError> {
    let loc = index.location(seq)?.ok_or_else(|| StoreError::Corrupt {
        seq,
        kind: "index",
        detail: "indexed elsewhere but not by seq; run `op-dbus reindex`".into(),
    })?;
    Ok(reader::read_block_at(layout, loc.segment, loc.offset, loc.frame_len)?)
}

pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_else(|| ns.to_string())
}

/// The event data as JSON; truncated data is shown as what it is.
pub fn data_json(b: &StoredBlock) -> serde_json::Value {
    match Value::decode(&b.body.footprint.data) {
        Ok(Value::Bin(prefix)) if b.body.footprint.flags & FLAG_TRUNCATED != 0 => {
            json!({ "truncated_prefix_bytes": prefix.len() })
        }
        Ok(v) => v.to_json(),
        Err(e) => json!({ "undecodable": e.to_string() }),
    }
}

/// One block as `log --json`, `show --json` and D-Bus `GetBlock` give it.
/// Fields in alphabetical order: the key order of the hand-built JSON this
/// replaced (serde_json sorted its keys), which scripts compare.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockJson {
    pub(crate) captured: String,
    pub(crate) captured_ns: i64,
    pub(crate) creds: Option<CredsJson>,
    /// The event data (see [`data_json`]).
    pub(crate) data: serde_json::Value,
    pub(crate) data_hash: String,
    pub(crate) hash: String,
    pub(crate) operation: String,
    pub(crate) path: Option<String>,
    pub(crate) plugin_id: String,
    pub(crate) prev_hash: String,
    pub(crate) sender: Option<String>,
    pub(crate) seq: u64,
    pub(crate) signature: String,
    pub(crate) source: &'static str,
    pub(crate) timestamp: String,
    pub(crate) timestamp_ns: i64,
    pub(crate) truncated: bool,
    pub(crate) vector: Option<VectorJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredsJson {
    pub(crate) pid: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VectorJson {
    pub(crate) dims: u32,
    pub(crate) hash: String,
    pub(crate) model: String,
    pub(crate) offset: u64,
}

/// One block as [`BlockJson`].
pub fn block_json(b: &StoredBlock) -> BlockJson {
    let body = &b.body;
    let fp = &body.footprint;
    BlockJson {
        captured: rfc3339(fp.captured_ns),
        captured_ns: fp.captured_ns,
        creds: fp.creds.as_ref().map(|c| CredsJson { pid: c.pid, uid: c.uid, unit: c.unit.clone() }),
        data: data_json(b),
        data_hash: hex(&fp.data_hash),
        hash: hex(&b.hash),
        operation: fp.operation.clone(),
        path: fp.path.clone(),
        plugin_id: fp.plugin_id.clone(),
        prev_hash: hex(&body.prev_hash),
        sender: fp.sender.clone(),
        seq: body.seq,
        signature: fp.signature.clone(),
        source: fp.source.as_str(),
        timestamp: rfc3339(body.timestamp_ns),
        timestamp_ns: body.timestamp_ns,
        truncated: fp.flags & FLAG_TRUNCATED != 0,
        vector: body.vector.as_ref().map(|v| VectorJson {
            dims: v.dims,
            hash: hex(&v.hash),
            model: v.model.clone(),
            offset: v.offset,
        }),
    }
}

/// How `show` names a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRef {
    Seq(u64),
    Hash(Hash),
}

impl BlockRef {
    /// A seq number, or a block hash in 64 hex digits.
    pub fn parse(s: &str) -> Option<BlockRef> {
        if let Ok(seq) = s.parse::<u64>() {
            return Some(BlockRef::Seq(seq));
        }
        parse_hex_hash(s).map(BlockRef::Hash)
    }
}

/// The block `r` names, through the index or the chain; `None` if there is none.
pub fn find(layout: &Layout, index: Option<&Index>, r: BlockRef) -> Result<Option<StoredBlock>, QueryError> {
    match r {
        BlockRef::Seq(seq) => by_seq(layout, index, seq),
        BlockRef::Hash(hash) => by_hash(layout, index, &hash),
    }
}

/// One line for the human `log` output.
pub fn block_line(b: &StoredBlock) -> String {
    let fp = &b.body.footprint;
    let mut data = data_json(b).to_string();
    if data.len() > 100 {
        let mut cut = 97;
        while !data.is_char_boundary(cut) {
            cut -= 1;
        }
        data.truncate(cut);
        data.push_str("...");
    }
    format!(
        "{:>8}  {}  {}  {}  {}  {}",
        b.body.seq,
        rfc3339(fp.captured_ns),
        fp.plugin_id,
        fp.operation,
        fp.path.as_deref().unwrap_or("-"),
        data
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::testing::record;
    use crate::chain::ChainStore;
    use crate::codec::Credentials;

    /// The JSON `show --json` printed before it was typed.
    fn hand_built(b: &StoredBlock) -> serde_json::Value {
        let body = &b.body;
        let fp = &body.footprint;
        json!({
            "seq": body.seq,
            "hash": hex(&b.hash),
            "prev_hash": hex(&body.prev_hash),
            "timestamp": rfc3339(body.timestamp_ns),
            "timestamp_ns": body.timestamp_ns,
            "captured": rfc3339(fp.captured_ns),
            "captured_ns": fp.captured_ns,
            "source": fp.source.as_str(),
            "plugin_id": fp.plugin_id,
            "operation": fp.operation,
            "path": fp.path,
            "sender": fp.sender,
            "creds": fp.creds.as_ref().map(|c| json!({"uid": c.uid, "pid": c.pid, "unit": c.unit})),
            "signature": fp.signature,
            "data": data_json(b),
            "data_hash": hex(&fp.data_hash),
            "truncated": fp.flags & FLAG_TRUNCATED != 0,
            "vector": body.vector.as_ref().map(|v| json!({
                "model": v.model, "dims": v.dims, "offset": v.offset, "hash": hex(&v.hash)
            })),
        })
    }

    #[test]
    fn block_json_is_byte_for_byte_the_hand_built_json_and_find_finds_by_seq_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), None);
        layout.create_dirs().unwrap();
        let (mut store, _) = ChainStore::open(&layout, 1 << 20).unwrap();
        let plain = record(0, "org.example.app", "x", false);
        let mut full = record(1, "org.example.app", "y", true);
        full.footprint.path = Some("/org/example".into());
        full.footprint.sender = Some(":1.7".into());
        full.footprint.signature = "a{sv}".into();
        full.footprint.creds = Some(Credentials { uid: Some(0), pid: Some(42), unit: Some("x.service".into()) });
        let appended = store.append(&[plain, full], 1_700_000_000_000_000_000).unwrap();
        drop(store);
        for a in &appended {
            let b = find(&layout, None, BlockRef::Seq(a.seq)).unwrap().unwrap();
            let typed = block_json(&b);
            assert_eq!(serde_json::to_string(&typed).unwrap(), hand_built(&b).to_string());
            assert_eq!(
                serde_json::to_string_pretty(&typed).unwrap(),
                serde_json::to_string_pretty(&hand_built(&b)).unwrap()
            );
            let by_hash = find(&layout, None, BlockRef::parse(&hex(&a.hash)).unwrap()).unwrap().unwrap();
            assert_eq!(by_hash.body.seq, a.seq);
        }
        assert_eq!(find(&layout, None, BlockRef::Seq(2)).unwrap(), None);
        assert_eq!(BlockRef::parse("12"), Some(BlockRef::Seq(12)));
        assert_eq!(BlockRef::parse("nope"), None);
    }
}
