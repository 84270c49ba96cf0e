//! The vector engine: turns blocks into search vectors and search texts
//! into query vectors, for one model: an ML model of the configured level,
//! or the heuristic vector (level `heuristic`, or the fallback when the
//! model cannot load). Every vector it makes is unit length.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::cache::{self, EmbedCache};
use super::onnx::SentenceModel;
use super::store::quantize;
use super::text::input_text;
use super::{MlError, ModelKind, ModelSpec, Precision};
use crate::chain::reader::StoredBlock;
use crate::codec::Value;
use crate::metrics as m;
use crate::ml::VectorLevel;
use crate::vector::{heuristic, heuristic_query, HEURISTIC_DIMS, HEURISTIC_MODEL};

/// The model of an ML level.
pub fn model_of(level: VectorLevel) -> Option<ModelKind> {
    match level {
        VectorLevel::Low => Some(ModelKind::MiniLmL3),
        VectorLevel::Medium => Some(ModelKind::MiniLmL6),
        VectorLevel::High => Some(ModelKind::MpNet),
        VectorLevel::None | VectorLevel::Heuristic => None,
    }
}

/// The engine's settings, from `[vector]`.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub level: VectorLevel,
    pub model_dir: PathBuf,
    pub precision: Precision,
    pub threads: usize,
    pub batch: usize,
}

struct Model {
    spec: ModelSpec,
    dir: PathBuf,
    threads: usize,
    batch: usize,
    loaded: Mutex<Option<SentenceModel>>,
}

impl Model {
    fn with<T>(&self, f: impl FnOnce(&mut SentenceModel) -> Result<T, MlError>) -> Result<T, MlError> {
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(SentenceModel::load(&self.dir, self.spec, self.threads)?);
        }
        f(slot.as_mut().expect("loaded above"))
    }
}

pub struct Engine {
    id: String,
    dims: usize,
    model: Option<Model>,
    cache: Option<EmbedCache>,
    fallback: Option<String>,
}

/// What one [`Engine::embed_blocks`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Texts found in the cache or earlier in the same call.
    pub hits: u64,
    /// Texts the model embedded.
    pub(crate) misses: u64,
}

impl Engine {
    /// Heuristic search vectors.
    pub fn heuristic(cache: Option<EmbedCache>) -> Engine {
        Engine { id: HEURISTIC_MODEL.into(), dims: HEURISTIC_DIMS, model: None, cache, fallback: None }
    }

    /// The engine of the configured level, its model loaded now: `None`
    /// for level `none`. A model that does not load falls back (int8 to
    /// the same model in fp32, then to heuristic vectors), and the reason
    /// is kept in [`fallback`](Self::fallback).
    pub fn start(cfg: &EngineConfig, cache: Option<EmbedCache>) -> Option<Engine> {
        if cfg.level == VectorLevel::None {
            return None;
        }
        let Some(kind) = model_of(cfg.level) else { return Some(Engine::heuristic(cache)) };
        let mut reasons = Vec::new();
        let mut precisions = vec![cfg.precision];
        if cfg.precision == Precision::Int8 {
            precisions.push(Precision::Fp32);
        }
        for precision in precisions {
            let spec = ModelSpec { kind, precision };
            match SentenceModel::load(&cfg.model_dir, spec, cfg.threads) {
                Ok(e) => {
                    let fallback = (!reasons.is_empty()).then(|| reasons.join("; "));
                    if let Some(r) = &fallback {
                        tracing::warn!(reason = %r, model = %spec.id(), "using the fp32 model instead of int8");
                    }
                    let model = Model {
                        spec,
                        dir: cfg.model_dir.clone(),
                        threads: cfg.threads,
                        batch: cfg.batch,
                        loaded: Mutex::new(Some(e)),
                    };
                    metrics::gauge!(m::VECTOR_FALLBACK).set(0.0);
                    return Some(Engine { id: spec.id(), dims: kind.dims(), model: Some(model), cache, fallback });
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        let reason = reasons.join("; ");
        tracing::error!(
            level = cfg.level.as_str(),
            %reason,
            "the vector level's model cannot be loaded; using heuristic vectors (recording continues)"
        );
        metrics::gauge!(m::VECTOR_FALLBACK).set(1.0);
        let mut e = Engine::heuristic(cache);
        e.fallback = Some(reason);
        Some(e)
    }

    /// The engine that searches the store of `id` (as the daemon recorded
    /// it): the model is loaded only when a query is not in the cache.
    pub fn for_search(id: &str, cfg: &EngineConfig, cache: Option<EmbedCache>) -> Result<Engine, MlError> {
        if id == HEURISTIC_MODEL {
            return Ok(Engine::heuristic(cache));
        }
        let spec = [ModelKind::MiniLmL3, ModelKind::MiniLmL6, ModelKind::MpNet]
            .into_iter()
            .flat_map(|kind| [Precision::Fp32, Precision::Int8].map(|precision| ModelSpec { kind, precision }))
            .find(|s| s.id() == id)
            .ok_or_else(|| MlError::Run(format!("unknown vector model {id:?}")))?;
        let model = Model {
            spec,
            dir: cfg.model_dir.clone(),
            threads: cfg.threads,
            batch: cfg.batch,
            loaded: Mutex::new(None),
        };
        Ok(Engine { id: spec.id(), dims: spec.kind.dims(), model: Some(model), cache, fallback: None })
    }

    /// The model id, which names the store under `@vectors/search/`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Heuristic vectors, no model.
    pub fn is_heuristic(&self) -> bool {
        self.model.is_none()
    }

    /// Why the configured model is not the one in use, if it is not.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn cache(&self) -> Option<&EmbedCache> {
        self.cache.as_ref()
    }

    /// Appends the quantized search vector of each block to `out`, in order.
    pub fn embed_blocks(&self, blocks: &[StoredBlock], out: &mut Vec<u8>) -> Result<EmbedStats, MlError> {
        let values: Vec<Value> =
            blocks.iter().map(|b| Value::decode(&b.body.footprint.data).unwrap_or(Value::Nil)).collect();
        let Some(model) = &self.model else {
            for (b, v) in blocks.iter().zip(&values) {
                quantize(&unit(heuristic(&b.body.footprint, v).to_vec()), out);
            }
            return Ok(EmbedStats::default());
        };
        let texts: Vec<String> = blocks
            .iter()
            .zip(&values)
            .map(|(b, v)| {
                let fp = &b.body.footprint;
                input_text(&fp.plugin_id, &fp.operation, fp.path.as_deref(), v)
            })
            .collect();
        self.embed_texts_with(model, &texts, out)
    }

    /// Appends the quantized vector of each input text to `out`, in order,
    /// as [`embed_blocks`](Self::embed_blocks) does for a model engine: the
    /// cache first, each missing text embedded once, in sorted batches.
    /// An error for a heuristic engine, whose vectors come from footprints.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S], out: &mut Vec<u8>) -> Result<EmbedStats, MlError> {
        let model =
            self.model.as_ref().ok_or_else(|| MlError::Run("heuristic vectors embed footprints, not texts".into()))?;
        self.embed_texts_with(model, texts, out)
    }

    fn embed_texts_with<S: AsRef<str>>(
        &self,
        model: &Model,
        texts: &[S],
        out: &mut Vec<u8>,
    ) -> Result<EmbedStats, MlError> {
        let keys: Vec<cache::Key> = texts.iter().map(|t| cache::key(&self.id, t.as_ref())).collect();
        let mut records: Vec<Option<Vec<u8>>> = match &self.cache {
            Some(c) => c.get_many(&keys).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "embedding cache read failed; embedding without it");
                vec![None; keys.len()]
            }),
            None => vec![None; keys.len()],
        };
        // The texts to embed, each once.
        let mut first_of: std::collections::HashMap<cache::Key, usize> = Default::default();
        let mut todo: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if records[i].is_none() && !first_of.contains_key(k) {
                first_of.insert(*k, i);
                todo.push(i);
            }
        }
        let stats = EmbedStats { hits: (texts.len() - todo.len()) as u64, misses: todo.len() as u64 };
        if !todo.is_empty() {
            let batch: Vec<&str> = todo.iter().map(|&i| texts[i].as_ref()).collect();
            let vecs = model.with(|e| e.embed_sorted(&batch, model.batch))?;
            let mut fresh = Vec::with_capacity(todo.len());
            for (&i, v) in todo.iter().zip(vecs) {
                let mut rec = Vec::with_capacity(4 + self.dims);
                quantize(&v, &mut rec);
                fresh.push((keys[i], rec.clone()));
                records[i] = Some(rec);
            }
            if let Some(c) = &self.cache {
                if let Err(e) = c.put_many(&fresh) {
                    tracing::warn!(error = %e, "embedding cache write failed");
                }
            }
        }
        for (i, k) in keys.iter().enumerate() {
            match &records[i] {
                Some(r) => out.extend_from_slice(r),
                None => {
                    let r = records[first_of[k]].as_ref().expect("embedded above");
                    out.extend_from_slice(r);
                }
            }
        }
        Ok(stats)
    }

    /// The unit-length query vector of a search text (from the query cache
    /// when it was searched before).
    pub fn query(&self, text: &str) -> Result<Vec<f32>, MlError> {
        let Some(model) = &self.model else {
            let v = heuristic_query(text).to_vec();
            if v.iter().all(|x| *x == 0.0) {
                return Err(MlError::Run(
                    "at the heuristic level a search text needs a bus name, an operation, an object path or an \
                     operation word (new, removed, changed, started, stopped, failed, …)"
                        .into(),
                ));
            }
            return Ok(unit(v));
        };
        let key = cache::key(&format!("query:{}", self.id), text);
        if let Some(c) = &self.cache {
            if let Ok(Some(v)) = c.get_query(&key) {
                if v.len() == self.dims {
                    return Ok(v);
                }
            }
        }
        let v = model.with(|e| e.embed(&[text]))?.pop().ok_or_else(|| MlError::Run("no vector".into()))?;
        if let Some(c) = &self.cache {
            if let Err(e) = c.put_query(&key, &v) {
                tracing::warn!(error = %e, "query cache write failed");
            }
        }
        Ok(v)
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// Where the daemon says which model it uses: `<state dir>/vectors.json`,
/// for `status` and `search` in other processes.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vectors.json")
}

/// Writes the engine's state for other processes (atomically).
pub fn write_state(state_dir: &Path, level: VectorLevel, engine: &Engine) -> std::io::Result<()> {
    let j = serde_json::json!({
        "level": level.as_str(),
        "model": engine.id(),
        "dims": engine.dims(),
        "fallback": engine.fallback(),
    });
    let path = state_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, j.to_string())?;
    std::fs::rename(&tmp, &path)
}

/// What `vectors.json` says: the level, the model in use (the heuristic
/// one after a fallback) and why it fell back. Every field is optional so
/// that a file from another version still says what it can.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct VectorState {
    #[serde(default)]
    pub(crate) level: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) dims: Option<usize>,
    #[serde(default)]
    pub(crate) fallback: Option<String>,
}

/// The state the daemon (or the last backfill) wrote, if any.
pub fn read_state(state_dir: &Path) -> Option<VectorState> {
    serde_json::from_str(&std::fs::read_to_string(state_path(state_dir)).ok()?).ok()
}
