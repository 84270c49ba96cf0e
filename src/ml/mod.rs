//! Search vectors: the vocabulary shared by the folder (the levels, the
//! models, their precision and errors), and one module per job:
//! [`onnx`] runs a sentence model, [`text`] makes its input, [`engine`]
//! picks the level's model or the heuristic vector, [`store`] keeps one
//! vector per block, [`cache`] remembers embeddings, [`worker`] follows the
//! chain, [`search`] answers queries.

pub mod cache;
pub mod engine;
pub mod onnx;
pub(crate) mod search;
pub mod store;
pub mod text;
pub mod worker;

use std::path::PathBuf;

/// The ML levels' models, by the folder they live in under the model dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// `low`: paraphrase-MiniLM-L3-v2, inputs ids and mask, 384 dims.
    MiniLmL3,
    /// `medium`: all-MiniLM-L6-v2, inputs ids, mask and type ids, 384 dims.
    MiniLmL6,
    /// `high`: all-mpnet-base-v2 (converted to ONNX by `make models`), 768 dims.
    MpNet,
}

impl ModelKind {
    pub fn id(self) -> &'static str {
        match self {
            ModelKind::MiniLmL3 => "paraphrase-MiniLM-L3-v2",
            ModelKind::MiniLmL6 => "all-MiniLM-L6-v2",
            ModelKind::MpNet => "all-mpnet-base-v2",
        }
    }

    pub fn dims(self) -> usize {
        match self {
            ModelKind::MpNet => 768,
            _ => 384,
        }
    }

    fn token_output(self) -> &'static str {
        match self {
            ModelKind::MiniLmL3 => "onnx::Shape_422",
            ModelKind::MiniLmL6 | ModelKind::MpNet => "last_hidden_state",
        }
    }

    fn max_tokens(self) -> usize {
        match self {
            ModelKind::MiniLmL3 => 128,
            ModelKind::MiniLmL6 => 256,
            ModelKind::MpNet => 384,
        }
    }

    /// MPNet's tokenizer pads with `<pad>` = 1; the BERT ones with `[PAD]` = 0.
    fn pad(self) -> (u32, &'static str) {
        match self {
            ModelKind::MpNet => (1, "<pad>"),
            _ => (0, "[PAD]"),
        }
    }
}

/// How a model computes: as shipped, or dynamically quantized to int8 by
/// `make models` (`model.int8.onnx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Int8,
}

/// One model file: a model and its precision. Its [`ModelSpec::id`] names the
/// stored vectors, since the two precisions give (slightly) different ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    pub kind: ModelKind,
    pub precision: Precision,
}

impl ModelSpec {
    pub fn id(self) -> String {
        match self.precision {
            Precision::Fp32 => self.kind.id().to_string(),
            Precision::Int8 => format!("{}-int8", self.kind.id()),
        }
    }

    pub fn file(self) -> &'static str {
        match self.precision {
            Precision::Fp32 => "model.onnx",
            Precision::Int8 => "model.int8.onnx",
        }
    }
}

impl From<ModelKind> for ModelSpec {
    fn from(kind: ModelKind) -> ModelSpec {
        ModelSpec { kind, precision: Precision::Fp32 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("cannot load ONNX Runtime from {path}: {detail}; run `make models`")]
    Runtime { path: PathBuf, detail: String },
    #[error("cannot load model {model} from {path}: {detail}; run `make models`")]
    Model { model: String, path: PathBuf, detail: String },
    #[error("embedding failed: {0}")]
    Run(String),
}

/// How much search a host gets: no vectors, the heuristic vector, or one of
/// the three sentence models (`[vector] level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorLevel {
    None,
    Heuristic,
    Low,
    Medium,
    High,
}

impl VectorLevel {
    pub const ALLOWED: &'static str = "none, heuristic, low, medium, high";

    pub fn parse(s: &str) -> Option<VectorLevel> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "none" => VectorLevel::None,
            "heuristic" => VectorLevel::Heuristic,
            "low" => VectorLevel::Low,
            "medium" => VectorLevel::Medium,
            "high" => VectorLevel::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VectorLevel::None => "none",
            VectorLevel::Heuristic => "heuristic",
            VectorLevel::Low => "low",
            VectorLevel::Medium => "medium",
            VectorLevel::High => "high",
        }
    }
}
