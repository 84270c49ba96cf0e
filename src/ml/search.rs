//! Semantic search: the query text's vector against the stored search
//! vectors of the active model, top-k by cosine, optionally restricted by
//! time, plugin and operation (through the index). The scan is exact: every
//! candidate vector is scored (see `store::top_k`); there is no
//! approximate index to go stale or to tune.

use std::time::Instant;

use super::engine::Engine;
use super::store::StoreReader;
use crate::index::query::{self, Filter};
use crate::index::Index;
use crate::layout::Layout;
use crate::metrics as m;

/// Threads the scan uses.
const SCAN_THREADS: usize = 2;
/// Most results one search returns.
pub const MAX_K: usize = 1000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Hit {
    pub seq: u64,
    pub score: f32,
    pub captured_ns: i64,
    pub time: String,
    pub plugin: String,
    pub operation: String,
    pub summary: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    /// The model whose vectors were searched.
    pub model: String,
    /// Blocks with a vector (the rest of the chain is not searched yet).
    pub vectors: u64,
    /// Blocks scored (after the filters).
    pub scored: u64,
    pub hits: Vec<Hit>,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot make the query vector")]
    Query(#[from] super::MlError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error(transparent)]
    Lookup(#[from] query::QueryError),
    #[error("k must be 1..={MAX_K}")]
    BadK,
}

/// Searches the store of `engine`'s model.
pub fn search(
    layout: &Layout,
    index: Option<&Index>,
    engine: &Engine,
    text: &str,
    k: usize,
    filter: &Filter,
) -> Result<SearchResult, SearchError> {
    if k == 0 || k > MAX_K {
        return Err(SearchError::BadK);
    }
    let started = Instant::now();
    let q = engine.query(text)?;
    let Some(store) = StoreReader::open(layout, engine.id())? else {
        return Ok(SearchResult { model: engine.id().into(), vectors: 0, scored: 0, hits: Vec::new() });
    };
    if store.dims() != q.len() {
        return Err(super::MlError::Run(format!(
            "the store holds {}-dim vectors and the query has {}",
            store.dims(),
            q.len()
        ))
        .into());
    }
    let candidates = query::matching_seqs(layout, index, filter, store.len())?;
    let scored = candidates.as_ref().map_or(store.len(), |c| c.len() as u64);
    let top = store.top_k(&q, k, candidates.as_deref(), SCAN_THREADS);
    let mut hits = Vec::with_capacity(top.len());
    // A score of 0 or less shares nothing with the query (at the heuristic
    // level that is common): not a result.
    for (seq, score) in top.into_iter().filter(|(_, s)| *s > 0.0) {
        let Some(b) = query::by_seq(layout, index, seq)? else { continue };
        let fp = &b.body.footprint;
        hits.push(Hit {
            seq,
            score,
            captured_ns: fp.captured_ns,
            time: query::rfc3339(fp.captured_ns),
            plugin: fp.plugin_id.clone(),
            operation: fp.operation.clone(),
            summary: query::data_summary(&b, 96),
        });
    }
    metrics::histogram!(m::SEARCH_DURATION).record(started.elapsed().as_secs_f64());
    Ok(SearchResult { model: engine.id().into(), vectors: store.len(), scored, hits })
}
