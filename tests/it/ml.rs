//! The embedding engine against Python onnxruntime, the reference, on the
//! models `make models` installs (OP_DBUS_MODEL_DIR, default ./models):
//! same texts, cosine ≥ 0.999; and a damaged model is an error.

use std::path::PathBuf;

use op_dbus::ml::onnx::SentenceModel;
use op_dbus::ml::{ModelKind, ModelSpec, Precision};

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

fn reference_vectors(reference: &serde_json::Value, key: &str) -> Vec<Vec<f64>> {
    let want = reference["models"][key].as_array().unwrap_or_else(|| panic!("fixture has no {key}"));
    want.iter().map(|w| w.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// Every model file `make models` installs, fp32 and int8, against Python
/// onnxruntime running the same file on the same text alone; and each int8
/// file, batched, against its fp32 original (the quantization's cost).
///
/// Alone, because a dynamic int8 model quantizes its activations per call,
/// with one scale over the whole batch: an int8 vector depends a little on
/// the texts it was batched with (cosine ≥ 0.99 to fp32 either way), where
/// an fp32 one does not.
#[test]
fn embeddings_match_python_onnxruntime() {
    let reference: serde_json::Value = serde_json::from_str(include_str!("../fixtures/ml_reference.json")).unwrap();
    let texts: Vec<&str> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for kind in [ModelKind::MiniLmL6, ModelKind::MiniLmL3, ModelKind::MpNet] {
        for precision in [Precision::Fp32, Precision::Int8] {
            let spec = ModelSpec { kind, precision };
            let key = match precision {
                Precision::Fp32 => kind.id().to_string(),
                Precision::Int8 => format!("{}/int8", kind.id()),
            };
            let mut e = SentenceModel::load(&model_dir(), spec, 2).unwrap_or_else(|e| panic!("{e}"));
            let same = reference_vectors(&reference, &key);
            let fp32 = reference_vectors(&reference, kind.id());
            for (i, text) in texts.iter().enumerate() {
                let alone = e.embed(&[*text]).unwrap().remove(0);
                assert_eq!(alone.len(), kind.dims());
                let c = cosine(&alone, &same[i]);
                assert!(c >= 0.999, "{key} text {i}: cosine {c} to Python on the same file");
            }
            // One batch: the shorter texts are padded, which must not change
            // an fp32 vector, and must keep an int8 one close to fp32.
            let batched = e.embed(&texts).unwrap();
            for (i, b) in batched.iter().enumerate() {
                let (want, floor) = match precision {
                    Precision::Fp32 => (&same[i], 0.999),
                    Precision::Int8 => (&fp32[i], 0.99),
                };
                let c = cosine(b, want);
                assert!(c >= floor, "{key} text {i} in a batch: cosine {c} (want ≥ {floor})");
            }
        }
    }
}

#[test]
fn length_sorted_batches_keep_the_input_order() {
    let reference: serde_json::Value = serde_json::from_str(include_str!("../fixtures/ml_reference.json")).unwrap();
    let texts: Vec<&str> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let kind = ModelKind::MiniLmL3;
    let mut e = SentenceModel::load(&model_dir(), kind, 1).unwrap();
    let want = reference["models"][kind.id()].as_array().unwrap();
    for batch in [1, 2, 4] {
        let got = e.embed_sorted(&texts, batch).unwrap();
        assert_eq!(got.len(), texts.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let w: Vec<f64> = w.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let c = cosine(g, &w);
            assert!(c >= 0.999, "batch {batch}, text {i}: cosine {c}");
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
    let e = SentenceModel::load(dir.path(), ModelKind::MiniLmL3, 1).err().expect("a truncated model must not load");
    assert!(e.to_string().contains("paraphrase-MiniLM-L3-v2"), "{e}");
    std::fs::remove_file(m.join("model.onnx")).unwrap();
    let e = SentenceModel::load(dir.path(), ModelKind::MiniLmL3, 1).err().expect("a missing model must not load");
    assert!(e.to_string().contains("make models"), "{e}");
}

/// On a labelled set of systemd / logind / NetworkManager-style events,
/// turned into text with `text-v1`, a query's nearest events are the
/// related ones.
#[test]
fn related_events_rank_above_unrelated_ones() {
    use op_dbus::codec::Value;
    use op_dbus::ml::text::input_text;
    let s = |x: &str| Value::Str(x.into());
    let job = |unit: &str, result: &str| {
        (
            "units",
            input_text(
                "org.freedesktop.systemd1",
                "org.freedesktop.systemd1.Manager.JobRemoved",
                Some("/org/freedesktop/systemd1"),
                &Value::Array(vec![Value::UInt(7), s("/org/freedesktop/systemd1/job/7"), s(unit), s(result)]),
            ),
        )
    };
    let session = |op: &str, id: &str, user: &str| {
        (
            "sessions",
            input_text(
                "org.freedesktop.login1",
                &format!("org.freedesktop.login1.Manager.{op}"),
                Some("/org/freedesktop/login1"),
                &Value::Array(vec![s(id), s(&format!("/org/freedesktop/login1/session/_3{id}")), s(user)]),
            ),
        )
    };
    let net = |state: &str| {
        (
            "network",
            input_text(
                "org.freedesktop.NetworkManager",
                "org.freedesktop.NetworkManager.StateChanged",
                Some("/org/freedesktop/NetworkManager"),
                &Value::Array(vec![s(state)]),
            ),
        )
    };
    let events = [
        job("nginx.service", "failed"),
        job("sshd.service", "failed"),
        job("postgresql.service", "failed"),
        session("SessionNew", "2", "alice"),
        session("SessionNew", "3", "bob"),
        session("SessionRemoved", "4", "carol"),
        net("connected global"),
        net("disconnected"),
        net("connecting"),
    ];
    let mut e = SentenceModel::load(&model_dir(), ModelKind::MiniLmL6, 2).unwrap();
    let texts: Vec<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
    let vecs = e.embed(&texts).unwrap();
    for (query, label) in [
        ("a system service failed to start", "units"),
        ("a user logged in and opened a session", "sessions"),
        ("network connectivity went down", "network"),
    ] {
        let q = e.embed(&[query]).unwrap().remove(0);
        let mut scored: Vec<(f32, &str)> =
            vecs.iter().zip(&events).map(|(v, (l, _))| (v.iter().zip(&q).map(|(a, b)| a * b).sum(), *l)).collect();
        scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let top: Vec<&str> = scored.iter().take(3).map(|(_, l)| *l).collect();
        assert_eq!(top, [label; 3], "{query:?}: {scored:?}");
    }
}
