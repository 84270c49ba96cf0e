//! Sentence embeddings with ONNX Runtime (the ML vector levels): the
//! runtime library is loaded at run time from the model dir (the PyPI
//! `onnxruntime` wheel's, installed by `make models`), the tokenizer is the
//! models' `tokenizer.json` with its fixed 128-token padding replaced by
//! padding to the longest text of each batch, and the token embeddings are
//! mean-pooled over the attention mask and L2-normalized. Loading never
//! panics: a missing or corrupt library or model is an error the caller
//! turns into the heuristic fallback.
//!
//! [`SentenceModel::embed_sorted`] is the throughput path: it tokenizes a whole
//! set of texts, sorts them by token count and runs sub-batches of similar
//! length, so padding costs little; vectors come back in input order.

use std::path::Path;
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{MlError, ModelSpec};

/// The runtime, loaded once per process (ort keeps the first success).
static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads `<model_dir>/onnxruntime/libonnxruntime.so`. Must succeed before
/// any other ort call: ort would otherwise look for a library on its own
/// and panic if it finds none.
pub fn load_runtime(model_dir: &Path) -> Result<&'static ort::environment::Environment, MlError> {
    let path = model_dir.join("onnxruntime").join("libonnxruntime.so");
    let r = RUNTIME.get_or_init(|| {
        if !path.is_file() {
            return Err("no such file".to_string());
        }
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder.with_name("op-dbus").build().map_err(|e| e.to_string())
    });
    r.as_ref().map_err(|detail| MlError::Runtime { path, detail: detail.clone() })
}

pub struct SentenceModel {
    spec: ModelSpec,
    session: Session,
    tokenizer: Tokenizer,
    token_type_ids: bool,
}

impl SentenceModel {
    /// Loads `<model_dir>/<model>/{model[.int8].onnx,tokenizer.json}` to run
    /// on `threads` threads.
    pub fn load(model_dir: &Path, spec: impl Into<ModelSpec>, threads: usize) -> Result<SentenceModel, MlError> {
        let spec = spec.into();
        let kind = spec.kind;
        let env = load_runtime(model_dir)?;
        let dir = model_dir.join(kind.id());
        let err = |path: &Path, detail: String| MlError::Model { model: spec.id(), path: path.to_path_buf(), detail };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| err(&tok_path, e.to_string()))?;
        // The file pads every text to 128 tokens; pad each batch to its
        // longest text instead (most D-Bus texts are ~20 tokens).
        let (pad_id, pad_token) = kind.pad();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.into(),
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: kind.max_tokens(), ..Default::default() }))
            .map_err(|e| err(&tok_path, e.to_string()))?;
        let model_path = dir.join(spec.file());
        if !model_path.is_file() {
            return Err(err(&model_path, "no such file".into()));
        }
        let session = Session::builder(env)
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(ort::Error::<()>::from))
            // Idle pool threads sleep instead of spinning: a spinning thread
            // takes a core from the capture even at idle priority.
            .and_then(|b| b.with_intra_op_spinning(false).map_err(ort::Error::<()>::from))
            .and_then(|mut b| b.commit_from_file(&model_path))
            .map_err(|e| err(&model_path, e.to_string()))?;
        let token_type_ids = session.inputs().iter().any(|i| i.name() == "token_type_ids");
        Ok(SentenceModel { spec, session, tokenizer, token_type_ids })
    }

    pub fn spec(&self) -> ModelSpec {
        self.spec
    }

    pub fn dims(&self) -> usize {
        self.spec.kind.dims()
    }

    /// One unit-length vector per text, all texts in one batch (padded to
    /// the longest).
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, MlError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encs = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| MlError::Run(e.to_string()))?;
        self.run(&encs)
    }

    /// One unit-length vector per text, in input order, computed in batches
    /// of at most `batch` texts of similar token count.
    pub fn embed_sorted(&mut self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>, MlError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Tokenize without padding, sort by length, then pad each chunk.
        let saved = self.tokenizer.get_padding().cloned();
        self.tokenizer.with_padding(None);
        let encs = self.tokenizer.encode_batch(texts.to_vec(), true);
        self.tokenizer.with_padding(saved.clone());
        let mut encs = encs.map_err(|e| MlError::Run(e.to_string()))?;
        let mut order: Vec<usize> = (0..encs.len()).collect();
        order.sort_by_key(|&i| encs[i].get_ids().len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let params = saved.unwrap_or_default();
        for chunk in order.chunks(batch.max(1)) {
            let mut group: Vec<tokenizers::Encoding> = chunk.iter().map(|&i| std::mem::take(&mut encs[i])).collect();
            tokenizers::utils::padding::pad_encodings(&mut group, &params).map_err(|e| MlError::Run(e.to_string()))?;
            for (&i, v) in chunk.iter().zip(self.run(&group)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Runs the model on encodings of equal length.
    fn run(&mut self, encs: &[tokenizers::Encoding]) -> Result<Vec<Vec<f32>>, MlError> {
        let run = |e: String| MlError::Run(e);
        let (batch, seq) = (encs.len(), encs[0].get_ids().len());
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut types = Vec::with_capacity(batch * seq);
        for e in encs {
            ids.extend(e.get_ids().iter().map(|&x| x as i64));
            mask.extend(e.get_attention_mask().iter().map(|&x| x as i64));
            types.extend(e.get_type_ids().iter().map(|&x| x as i64));
        }
        let tensor = |v: Vec<i64>| Tensor::from_array(([batch, seq], v)).map_err(|e| run(e.to_string()));
        let (ids_t, mask_t) = (tensor(ids)?, tensor(mask.clone())?);
        let outputs = if self.token_type_ids {
            let types_t = tensor(types)?;
            self.session
                .run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t, "token_type_ids" => types_t])
        } else {
            self.session.run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
        }
        .map_err(|e| run(e.to_string()))?;
        let (shape, data) =
            outputs[self.spec.kind.token_output()].try_extract_tensor::<f32>().map_err(|e| run(e.to_string()))?;
        let dims = shape[2] as usize;
        Ok((0..batch)
            .map(|b| mean_pool(&data[b * seq * dims..(b + 1) * seq * dims], &mask[b * seq..(b + 1) * seq], dims))
            .collect())
    }
}

/// Mean of the token vectors the mask keeps, scaled to unit length.
fn mean_pool(tokens: &[f32], mask: &[i64], dims: usize) -> Vec<f32> {
    let mut out = vec![0f32; dims];
    let mut n = 0f32;
    for (t, &m) in tokens.chunks_exact(dims).zip(mask) {
        if m != 0 {
            n += 1.0;
            out.iter_mut().zip(t).for_each(|(o, x)| *o += x);
        }
    }
    let n = n.max(1.0);
    out.iter_mut().for_each(|o| *o /= n);
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    out.iter_mut().for_each(|o| *o /= norm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::ModelKind;

    #[test]
    fn pooling_skips_padding_and_normalizes() {
        let tokens = [1.0, 0.0, 3.0, 0.0, 100.0, 100.0];
        let v = mean_pool(&tokens, &[1, 1, 0], 2);
        assert_eq!(v, vec![1.0, 0.0]);
    }

    #[test]
    fn a_missing_runtime_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        // Only when no runtime was loaded yet in this test process.
        if RUNTIME.get().is_none() {
            let e = SentenceModel::load(d.path(), ModelKind::MiniLmL6, 1).err().expect("no runtime there");
            assert!(e.to_string().contains("make models"), "{e}");
        }
    }
}
