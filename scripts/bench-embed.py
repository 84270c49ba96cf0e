#!/usr/bin/env python3
"""Python peer of `cargo bench --bench embed` (`make bench-embed` runs both).

Embeds the texts the Rust bench wrote (a JSON array of strings) with Python
onnxruntime on the same model files the daemon uses: tokenizers' Python
binding on the model's tokenizer.json, padding to the longest text of each
batch, truncation at the model's max tokens, masked mean pooling and L2
normalization in numpy. Batches in input order (no sorting); the timing
includes tokenization and pooling. For every model: load time and peak RSS
measured in a fresh Python process (`--child`), then embeddings/s for each
thread count (intra_op_num_threads, inter_op_num_threads = 1) and batch size.

Installs its pinned dependencies into a venv of its own on first use
(default target/bench-embed/venv, or $EMBED_VENV) and re-runs itself there.

Usage (the Rust bench passes all of these):
  scripts/bench-embed.py --texts target/bench-embed/texts.json \
      --model-dir models --models all-MiniLM-L6-v2,all-MiniLM-L6-v2-int8 \
      --threads 1,2 --batches 1,8,32 --out result.json [--vectors DIR]
Model names are the Rust `ModelSpec::id`s: `<model>` is `<model>/model.onnx`,
`<model>-int8` is `<model>/model.int8.onnx`. Missing files are reported
and skipped. With --vectors, the batch-1, one-thread vectors of each model
are written there as raw little-endian float32 (`py-<model>.f32`, one row
per text) so the Rust side can compare them with its own.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Same ONNX Runtime as `make models` installs for the daemon, and the same
# tokenizers release as the crate in Cargo.lock.
REQUIREMENTS = ["onnxruntime==1.32.0", "tokenizers==0.23.2", "numpy==2.4.6"]

# model id -> (max tokens, pad id, pad token), as src/ml/mod.rs has them.
MODELS = {
    "paraphrase-MiniLM-L3-v2": (128, 0, "[PAD]"),
    "all-MiniLM-L6-v2": (256, 0, "[PAD]"),
    "all-mpnet-base-v2": (384, 1, "<pad>"),
}


def log(*a):
    print("bench-embed.py:", *a, file=sys.stderr, flush=True)


def ensure_venv():
    """Re-executes this script in its venv, creating it first if needed."""
    venv = os.environ.get("EMBED_VENV") or os.path.join(ROOT, "target", "bench-embed", "venv")
    venv = os.path.abspath(venv)
    py = os.path.join(venv, "bin", "python")
    if os.path.abspath(sys.prefix) == venv:
        return
    stamp = os.path.join(venv, "requirements.txt")
    want = "\n".join(REQUIREMENTS) + "\n"
    have = open(stamp).read() if os.path.exists(stamp) else None
    if have != want:
        log(f"installing {' '.join(REQUIREMENTS)} into {venv}")
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS])
        with open(stamp, "w") as f:
            f.write(want)
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def split_spec(spec):
    """`<model>[-int8]` -> (model id, file name)."""
    if spec.endswith("-int8"):
        return spec[: -len("-int8")], "model.int8.onnx"
    return spec, "model.onnx"


def peak_rss_kib():
    """VmHWM, this process's own peak: ru_maxrss would include the peak of
    the parent it was forked from (Linux keeps it across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Model:
    def __init__(self, model_dir, spec, threads):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        kind, file = split_spec(spec)
        max_tokens, pad_id, pad_token = MODELS[kind]
        self.tok = Tokenizer.from_file(os.path.join(model_dir, kind, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the batch's longest
        self.tok.enable_truncation(max_tokens)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, kind, file), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        outs = [o.name for o in self.session.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in outs else "onnx::Shape_422"

    def embed(self, texts):
        import numpy as np

        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        h = self.session.run([self.output], feed)[0]
        m = mask[:, :, None].astype(np.float32)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def child(args, texts):
    """Load time and peak RSS of one model in this fresh process."""
    t = time.perf_counter()
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    import_s = time.perf_counter() - t
    rss_imported = peak_rss_kib()
    t = time.perf_counter()
    m = Model(args.model_dir, args.child, 1)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    m.embed(texts[:32])
    first_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "import_s": import_s,
                "load_s": load_s,
                "first_batch_s": first_s,
                "rss_after_import_kib": rss_imported,
                "peak_rss_kib": peak_rss_kib(),
            }
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True)
    ap.add_argument("--model-dir", default=os.environ.get("OP_DBUS_MODEL_DIR") or os.path.join(ROOT, "models"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--out")
    ap.add_argument("--vectors")
    ap.add_argument("--limit", type=int, help="embed only the first LIMIT texts")
    ap.add_argument("--child")
    args = ap.parse_args()
    ensure_venv()
    with open(args.texts) as f:
        texts = json.load(f)
    if args.limit:
        texts = texts[: args.limit]
    if args.child:
        return child(args, texts)

    import numpy as np
    import onnxruntime as ort

    threads = [int(x) for x in args.threads.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    result = {"onnxruntime": ort.__version__, "texts": len(texts), "models": {}}
    for spec in [s for s in args.models.split(",") if s]:
        kind, file = split_spec(spec)
        path = os.path.join(args.model_dir, kind, file)
        if kind not in MODELS or not os.path.isfile(path):
            log(f"skipping {spec}: no {path}")
            continue
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--texts", args.texts, "--model-dir", args.model_dir, "--child", spec],
            check=True,
            capture_output=True,
            text=True,
        )
        r = {"load": json.loads(out.stdout.strip().splitlines()[-1]), "runs": []}
        for th in threads:
            m = Model(args.model_dir, spec, th)
            # Warm-up: one batch of 32 and eight single texts.
            m.embed(texts[:32])
            for t in texts[:8]:
                m.embed([t])
            for b in batches:
                vecs = []
                t0 = time.perf_counter()
                for i in range(0, len(texts), b):
                    vecs.append(m.embed(texts[i : i + b]))
                secs = time.perf_counter() - t0
                r["runs"].append({"threads": th, "batch": b, "secs": secs, "per_s": len(texts) / secs})
                log(f"{spec} threads {th} batch {b}: {len(texts) / secs:.1f} emb/s")
                if args.vectors and th == threads[0] and b == batches[0]:
                    os.makedirs(args.vectors, exist_ok=True)
                    np.concatenate(vecs).astype("<f4").tofile(os.path.join(args.vectors, f"py-{spec}.f32"))
            del m
        result["models"][spec] = r
    js = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(js + "\n")
    else:
        print(js)


if __name__ == "__main__":
    main()
