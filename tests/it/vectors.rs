//! Search vectors end to end, with the real models `make models` installs
//! (OP_DBUS_MODEL_DIR, default ./models) and the real binary: backfill
//! after a level change, the embedding cache, the fallback when a model is
//! missing or truncated, a burst far above ML speed, and search with its
//! filters and ordering.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{import_lines, line, run_env};
use op_dbus::codec::{Source, Value as V};
use op_dbus::config::{Config, SnapshotConfig, VectorConfig};
use op_dbus::layout::Layout;
use op_dbus::messages::RawEvent;
use op_dbus::ml::store::StoreReader;
use op_dbus::ml::Precision;
use op_dbus::ml::VectorLevel;
use op_dbus::pipeline::{spawn_pipeline, PipelineConfig};
use op_dbus::storage::retention::Interval;
use serde_json::{json, Value};

fn model_dir() -> PathBuf {
    std::env::var_os("OP_DBUS_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

fn envs(dir: &Path) -> Vec<(&'static str, String)> {
    vec![("OP_DBUS_MODEL_DIR", dir.to_string_lossy().into_owned()), ("OP_DBUS_VECTOR_PRECISION", "fp32".into())]
}

fn run(state: &Path, args: &[&str], dir: &Path) -> common::Run {
    let e = envs(dir);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(state, args, &e)
}

/// A labelled set: unit jobs (some failed), logins, network changes and
/// battery updates, with repeats as on a real bus.
fn labelled_lines() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..40u64 {
        let unit = ["nginx.service", "sshd.service", "cron.service", "postgresql.service"][i as usize % 4];
        let result = if i % 5 == 0 { "failed" } else { "done" };
        out.push(line(
            "org.freedesktop.systemd1",
            "org.freedesktop.systemd1.Manager.JobRemoved",
            json!([i, format!("/org/freedesktop/systemd1/job/{i}"), unit, result]),
        ));
        if i % 2 == 0 {
            out.push(line(
                "org.freedesktop.login1",
                "org.freedesktop.login1.Manager.SessionNew",
                json!([format!("{}", i % 7), format!("/org/freedesktop/login1/session/_3{}", i % 7)]),
            ));
        }
        if i % 3 == 0 {
            let state = [20u64, 40, 70][(i as usize / 3) % 3];
            out.push(line(
                "org.freedesktop.NetworkManager",
                "org.freedesktop.NetworkManager.StateChanged",
                json!([state]),
            ));
        }
        out.push(line(
            "org.freedesktop.UPower",
            "org.freedesktop.DBus.Properties.PropertiesChanged",
            json!(["org.freedesktop.UPower.Device", {"Percentage": 50 + i % 3, "State": 2}, []]),
        ));
    }
    out
}

fn stored(state: &Path, model: &str) -> u64 {
    StoreReader::open(&Layout::new(state, None), model).unwrap().map_or(0, |r| r.len())
}

fn embed(state: &Path, level: &str, dir: &Path) -> String {
    let r = run(state, &["embed", "--backfill", "--level", level], dir);
    r.expect_code(0);
    r.stdout
}

#[test]
fn backfill_after_a_level_change_and_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let models = model_dir();
    let lines = labelled_lines();
    let n = lines.len() as u64;
    let e = envs(&models);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    import_lines(&state, &dir.path().join("in.jsonl"), &lines, &[], &e).expect_code(0);

    // Level low: every block gets an L3 vector; the repeats are cache hits.
    let out = embed(&state, "low", &models);
    assert!(out.contains(&format!("embedded {n} blocks with paraphrase-MiniLM-L3-v2")), "{out}");
    assert_eq!(stored(&state, "paraphrase-MiniLM-L3-v2"), n);
    let hits: u64 = out.split("cache hits ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(hits > 0, "the labelled set repeats itself: {out}");
    // Nothing left to do.
    assert!(embed(&state, "low", &models).contains("embedded 0 blocks"));

    // The level changes: medium backfills its own store from the chain.
    let out = embed(&state, "medium", &models);
    assert!(out.contains(&format!("embedded {n} blocks with all-MiniLM-L6-v2")), "{out}");
    assert_eq!(stored(&state, "all-MiniLM-L6-v2"), n);
    let status: Value = serde_json::from_str(&run(&state, &["status", "--json"], &models).stdout).unwrap();
    assert_eq!(status["vectors"]["model"], "all-MiniLM-L6-v2");
    assert_eq!(status["vectors"]["lag"], 0);

    // A lost store is rebuilt from the chain, now entirely from the cache,
    // with the same bytes.
    let file = Layout::new(&state, None).vectors.join("search/paraphrase-MiniLM-L3-v2/embeddings.q8");
    let before = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let out = embed(&state, "low", &models);
    assert!(out.contains(&format!("cache hits {n} of {n}")), "{out}");
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // The stored vector is the model's vector of the block's text.
    let mut m = op_dbus::ml::onnx::SentenceModel::load(&models, op_dbus::ml::ModelKind::MiniLmL3, 1).unwrap();
    let b = &common::log_json(&state, &[])[3];
    let text = op_dbus::ml::text::input_text(
        b["plugin_id"].as_str().unwrap(),
        b["operation"].as_str().unwrap(),
        b["path"].as_str(),
        &json_value(&b["data"]),
    );
    let want = m.embed(&[&text]).unwrap().pop().unwrap();
    let r = StoreReader::open(&Layout::new(&state, None), "paraphrase-MiniLM-L3-v2").unwrap().unwrap();
    let got = op_dbus::ml::store::dequantize(r.record(3).unwrap());
    let cos: f32 =
        got.iter().zip(&want).map(|(a, b)| a * b).sum::<f32>() / got.iter().map(|a| a * a).sum::<f32>().sqrt();
    assert!(cos > 0.9999, "stored vector of seq 3: cosine {cos}");
}

/// The JSON data `log --json` prints, back as a Value (maps and arrays,
/// integers and strings are all the labelled set uses).
fn json_value(j: &Value) -> V {
    match j {
        Value::Null => V::Nil,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => n.as_u64().map(V::UInt).or(n.as_i64().map(V::Int)).unwrap_or(V::Float(n.as_f64().unwrap())),
        Value::String(s) => V::Str(s.clone()),
        Value::Array(a) => V::Array(a.iter().map(json_value).collect()),
        Value::Object(o) => V::map(o.iter().map(|(k, v)| (V::Str(k.clone()), json_value(v))).collect()),
    }
}

#[test]
fn search_ranks_related_events_first_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let models = model_dir();
    let e = envs(&models);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    import_lines(&state, &dir.path().join("in.jsonl"), labelled_lines(), &[], &e).expect_code(0);
    embed(&state, "medium", &models);

    let search = |args: &[&str]| -> Value {
        let mut a = vec!["search", "--level", "medium", "--json"];
        a.extend_from_slice(args);
        let r = run(&state, &a, &models);
        r.expect_code(0);
        r.last_json()
    };
    let r = search(&["user session login", "--k", "5"]);
    assert_eq!(r["model"], "all-MiniLM-L6-v2");
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h["plugin"] == "org.freedesktop.login1"), "{r:#}");
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");

    let r = search(&["network connectivity changed", "--k", "3"]);
    assert!(r["hits"].as_array().unwrap().iter().all(|h| h["plugin"] == "org.freedesktop.NetworkManager"), "{r:#}");
    let r = search(&["nginx service job failed", "--k", "1"]);
    let top = &r["hits"][0];
    assert_eq!(top["plugin"], "org.freedesktop.systemd1", "{r:#}");
    assert!(top["summary"].as_str().unwrap().contains("nginx.service"), "{r:#}");

    // Filters: only what matches, still best first.
    let r = search(&["user session login", "--plugin", "org.freedesktop.systemd1", "--k", "50"]);
    let hits = r["hits"].as_array().unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h["plugin"] == "org.freedesktop.systemd1"));
    let op = "org.freedesktop.DBus.Properties.PropertiesChanged";
    let r = search(&["battery", "--operation", op]);
    assert!(r["hits"].as_array().unwrap().iter().all(|h| h["operation"] == op));
    let all = common::log_json(&state, &[]);
    let mid = all[all.len() / 2]["captured_ns"].as_i64().unwrap();
    let r = search(&["nginx", "--since", &mid.to_string(), "--k", "1000"]);
    let hits = r["hits"].as_array().unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h["captured_ns"].as_i64().unwrap() >= mid));
    let r = search(&["nginx", "--until", &mid.to_string(), "--k", "1000"]);
    assert!(r["hits"].as_array().unwrap().iter().all(|h| h["captured_ns"].as_i64().unwrap() < mid));
    // The second search of a text needs no model: its vector is cached.
    let broken = dir.path().join("no-models");
    let r = run(&state, &["search", "--level", "medium", "--json", "user session login", "--k", "5"], &broken);
    r.expect_code(0);
    assert_eq!(r.last_json()["hits"].as_array().unwrap().len(), 5);
    // A bad k is a usage error.
    run(&state, &["search", "--level", "medium", "x", "--k", "0"], &models).expect_code(2);

    // The heuristic level searches its own vectors, by bus name and verb.
    embed(&state, "heuristic", &models);
    let r = run(&state, &["search", "--level", "heuristic", "--json", "org.freedesktop.login1 new"], &models);
    r.expect_code(0);
    let r = r.last_json();
    assert_eq!(r["model"], "heuristic-v1");
    assert_eq!(r["hits"][0]["plugin"], "org.freedesktop.login1", "{r:#}");
}

#[test]
fn a_missing_or_truncated_model_falls_back_and_recording_continues() {
    let dir = tempfile::tempdir().unwrap();
    let models = model_dir();
    // A model dir with the runtime and a truncated L3 model.
    let broken = dir.path().join("models");
    std::fs::create_dir_all(broken.join("onnxruntime")).unwrap();
    std::fs::copy(models.join("onnxruntime/libonnxruntime.so"), broken.join("onnxruntime/libonnxruntime.so")).unwrap();
    let l3 = broken.join("paraphrase-MiniLM-L3-v2");
    std::fs::create_dir_all(&l3).unwrap();
    std::fs::copy(models.join("paraphrase-MiniLM-L3-v2/tokenizer.json"), l3.join("tokenizer.json")).unwrap();
    let model = std::fs::read(models.join("paraphrase-MiniLM-L3-v2/model.onnx")).unwrap();
    std::fs::write(l3.join("model.onnx"), &model[..model.len() / 2]).unwrap();

    for (name, level) in [("truncated", "low"), ("missing", "medium")] {
        let state = dir.path().join(name);
        let e = envs(&broken);
        let mut e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.push(("OP_DBUS_VECTOR_LEVEL", level));
        e.push(("OP_DBUS_LOG", "warn"));
        let r = import_lines(&state, &dir.path().join("in.jsonl"), labelled_lines(), &[], &e);
        r.expect_code(0);
        assert!(r.stderr.contains("heuristic vectors"), "said once in the log: {}", r.stderr);
        assert_eq!(r.stderr.matches("cannot be loaded").count(), 1, "{}", r.stderr);
        assert_eq!(common::log_json(&state, &[]).len(), labelled_lines().len(), "recording continued");
        let status = run(&state, &["status", "--json"], &broken);
        let s: Value = serde_json::from_str(&status.stdout).unwrap();
        assert_eq!(s["vectors"]["model"], "heuristic-v1", "{s:#}");
        assert!(s["vectors"]["fallback"].as_str().unwrap().contains("make models"), "{s:#}");
        assert!(run(&state, &["status"], &broken).stdout.contains("FALLBACK"));
    }
}

#[test]
fn a_burst_far_above_ml_speed_loses_no_block_and_the_lag_drains() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let n = 3000u64;
    let cfg = PipelineConfig {
        layout: Layout::new(&state, None),
        vector_level: VectorLevel::Low,
        model_dir: model_dir(),
        // The product default: the int8 model.
        vector: VectorConfig::default(),
        snapshot: SnapshotConfig { interval: Interval::Off, ..Default::default() },
        proof: crate::common::quick_proof(),
        ..PipelineConfig::new(&Config::default())
    };
    assert_eq!(cfg.vector.precision, Precision::Int8);
    let system = actix_rt::System::new();
    system.block_on(async {
        let p = spawn_pipeline(cfg).unwrap();
        let engine = p.vectors.clone().expect("level low has an engine");
        assert_eq!(engine.id(), "paraphrase-MiniLM-L3-v2-int8");
        let started = Instant::now();
        for chunk in 0..n / 500 {
            let events = (chunk * 500..(chunk + 1) * 500)
                .map(|i| RawEvent {
                    source: Source::Submit,
                    plugin_id: "org.example.burst".into(),
                    operation: "org.example.Burst.Tick".into(),
                    path: Some("/org/example".into()),
                    sender: None,
                    creds: None,
                    captured_ns: i as i64,
                    signature: String::new(),
                    // Every text differs: no cache hit can help.
                    data: V::map(vec![
                        (V::Str("tick".into()), V::UInt(i)),
                        (V::Str("word".into()), V::Str(format!("w{}", i * 7919))),
                    ]),
                })
                .collect();
            p.submit(events).await.unwrap();
        }
        let burst = started.elapsed();
        // Everything is durable; the vectors are behind.
        assert_eq!(p.health.chain_height.load(std::sync::atomic::Ordering::Acquire), n);
        let behind = n - stored(&state, engine.id());
        assert!(behind > 0, "the burst ({burst:?}) should outrun the model");
        // The lag drains.
        let deadline = Instant::now() + Duration::from_secs(180);
        while stored(&state, engine.id()) < n {
            assert!(Instant::now() < deadline, "lag did not drain: {} of {n}", stored(&state, engine.id()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p.shutdown(Duration::from_secs(30)).await.unwrap();
    });
    assert_eq!(common::log_json(&state, &[]).len() as u64, n);
}
