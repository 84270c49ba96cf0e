//! The embedding engine against Python onnxruntime, the reference, on the
//! models `make models` installs (OP_DBUS_MODEL_DIR, default ./models):
//! same texts, cosine ≥ 0.999; and a damaged model is an error.

use std::path::PathBuf;

use op_dbus::ml::{Embedder, ModelKind};

fn model_dir() -> PathBuf {
    std::env::var_os("OP_DBUS_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_python_onnxruntime() {
    let reference: serde_json::Value = serde_json::from_str(include_str!("fixtures/ml_reference.json")).unwrap();
    let texts: Vec<&str> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for kind in [ModelKind::MiniLmL6, ModelKind::MiniLmL3] {
        let mut e = Embedder::load(&model_dir(), kind, 2).unwrap_or_else(|e| panic!("{e}"));
        // One batch: the shorter texts are padded, which must not change them.
        let got = e.embed(&texts).unwrap();
        let want = reference["models"][kind.id()].as_array().unwrap();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.len(), kind.dims());
            let w: Vec<f64> = w.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let c = cosine(g, &w);
            assert!(c >= 0.999, "{} text {i}: cosine {c}", kind.id());
        }
    }
}

#[test]
fn a_truncated_model_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    std::fs::create_dir_all(dir.path().join("onnxruntime")).unwrap();
    std::fs::copy(src.join("onnxruntime/libonnxruntime.so"), dir.path().join("onnxruntime/libonnxruntime.so")).unwrap();
    let m = dir.path().join(ModelKind::MiniLmL3.id());
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(src.join(ModelKind::MiniLmL3.id()).join("tokenizer.json"), m.join("tokenizer.json")).unwrap();
    let model = std::fs::read(src.join(ModelKind::MiniLmL3.id()).join("model.onnx")).unwrap();
    std::fs::write(m.join("model.onnx"), &model[..model.len() / 3]).unwrap();
    let e = Embedder::load(dir.path(), ModelKind::MiniLmL3, 1).err().expect("a truncated model must not load");
    assert!(e.to_string().contains("paraphrase-MiniLM-L3-v2"), "{e}");
    std::fs::remove_file(m.join("model.onnx")).unwrap();
    let e = Embedder::load(dir.path(), ModelKind::MiniLmL3, 1).err().expect("a missing model must not load");
    assert!(e.to_string().contains("make models"), "{e}");
}
