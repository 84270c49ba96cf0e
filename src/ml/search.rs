//! Semantic search: the query text's vector against the stored search
//! vectors of the active model, top-k by cosine, optionally restricted by
//! time, plugin and operation (through the index). The scan is exact: every
//! candidate vector is scored (see `store::top_k`); there is no
//! approximate index to go stale or to tune.

use std::time::Instant;

use super::engine::{model_of, read_state, Engine, EngineConfig};
use super::store::StoreReader;
use super::{ModelSpec, VectorLevel};
use crate::index::query::{self, Filter};
use crate::index::Index;
use crate::layout::Layout;
use crate::metrics as m;

/// Threads the scan uses.
const SCAN_THREADS: usize = 2;
/// Most results one search returns.
pub const MAX_K: usize = 1000;

/// One result. Fields in alphabetical order, as `search --json` has always
/// printed them (it went through a sorted `serde_json::Value`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hit {
    pub(crate) captured_ns: i64,
    pub(crate) operation: String,
    pub(crate) plugin: String,
    /// Printed as the f64 it widens to, as it always was.
    #[serde(serialize_with = "f32_as_f64")]
    pub(crate) score: f32,
    pub(crate) seq: u64,
    pub(crate) summary: String,
    pub(crate) time: String,
}

fn f32_as_f64<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(f64::from(*v))
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    pub(crate) hits: Vec<Hit>,
    /// The model whose vectors were searched.
    pub(crate) model: String,
    /// Blocks scored (after the filters).
    pub(crate) scored: u64,
    /// Blocks with a vector (the rest of the chain is not searched yet).
    pub(crate) vectors: u64,
}

/// A search of a state dir ([`search_state`]): the result and the chain's
/// length, to say how much of it has no vector yet. `search --json` prints
/// it: `chain` and then the result's fields, in alphabetical order.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchOutcome {
    pub(crate) chain: u64,
    #[serde(flatten)]
    pub(crate) result: SearchResult,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot make the query vector")]
    Query(#[from] super::MlError),
    /// The model to search with did not load.
    #[error(transparent)]
    Model(super::MlError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error(transparent)]
    Lookup(#[from] query::QueryError),
    #[error(transparent)]
    Chain(#[from] crate::chain::StoreError),
    #[error("k must be 1..={MAX_K}")]
    BadK,
    #[error("vector level none stores no vectors: nothing to search")]
    LevelNone,
}

/// What to search a state dir for, and with which model.
pub struct SearchRequest<'a> {
    pub(crate) text: &'a str,
    pub(crate) k: usize,
    pub(crate) filter: &'a Filter,
    /// The configured level, model files and precision.
    pub(crate) engine: &'a EngineConfig,
    /// `vector.cache_entries` (the query cache of an ML model).
    pub(crate) cache_entries: u64,
    /// Search the model the daemon says it uses (`vectors.json`: it may
    /// have fallen back); false when a level was asked for.
    pub(crate) recorded_model: bool,
}

/// `op-dbus search`: picks the model (the daemon's, else the level's),
/// loads it (a query already in the cache needs no model), and searches
/// its store, from another process than the daemon's.
pub fn search_state(layout: &Layout, index: Option<&Index>, req: &SearchRequest) -> Result<SearchOutcome, SearchError> {
    if req.engine.level == VectorLevel::None {
        return Err(SearchError::LevelNone);
    }
    let recorded = if req.recorded_model { read_state(&layout.state_dir).and_then(|s| s.model) } else { None };
    let id = recorded.unwrap_or_else(|| match model_of(req.engine.level) {
        Some(kind) => ModelSpec { kind, precision: req.engine.precision }.id(),
        None => crate::vector::HEURISTIC_MODEL.to_string(),
    });
    let cache = if id != crate::vector::HEURISTIC_MODEL {
        super::cache::EmbedCache::configured(&layout.cache, req.cache_entries)
    } else {
        None
    };
    let mut ecfg = req.engine.clone();
    ecfg.threads = ecfg.threads.max(1);
    let engine = Engine::for_search(&id, &ecfg, cache).map_err(SearchError::Model)?;
    let chain = crate::chain::reader::read_head(layout)?.next_seq;
    let result = search(layout, index, &engine, req.text, req.k, req.filter)?;
    Ok(SearchOutcome { chain, result })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_is_the_one_search_always_printed() {
        let hit = Hit {
            captured_ns: 5,
            operation: "o".into(),
            plugin: "p".into(),
            score: 0.1,
            seq: 3,
            summary: "{}".into(),
            time: "t".into(),
        };
        let result = SearchResult { hits: vec![hit], model: "heuristic-v1".into(), scored: 4, vectors: 9 };
        // What `search --json` built by hand: the result as a Value (keys
        // sorted, the f32 score widened), plus "chain".
        let mut old = serde_json::to_value(&result).unwrap();
        old["chain"] = serde_json::json!(10);
        let typed = serde_json::to_string(&SearchOutcome { chain: 10, result }).unwrap();
        assert_eq!(typed, old.to_string());
        assert!(typed.contains(r#""score":0.10000000149011612"#), "{typed}");
    }
}
