#!/usr/bin/env python3
"""The peers of `cargo bench --bench search`: exact top-k search with the
tools a user would reach for, on the very vectors op-dbus stores.

  numpy  scores = M @ q, then argpartition (f32, BLAS)
  faiss  IndexFlatIP (exact inner product, f32, SIMD), faiss-cpu from PyPI

Reads op-dbus's store file (24-byte header, then records of f32 scale and
i8 x dims), dequantizes it to an f32 matrix once (not timed: the peers keep
f32 in memory, 4x what op-dbus maps), then times one query at a time.
Installs numpy and faiss-cpu into target/bench-search/venv on first use.

Usage: bench-search.py STORE.q8 QUERIES.f32 K THREADS  -> JSON on stdout
"""
import json, os, subprocess, sys, time
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / "target" / "bench-search" / "venv"
PINS = ["numpy==2.4.6", "faiss-cpu==1.15.1"]

if os.environ.get("BENCH_SEARCH_IN_VENV") != "1":
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PINS], check=True)
    os.environ["BENCH_SEARCH_IN_VENV"] = "1"
    os.execv(str(py), [str(py), *sys.argv])

store, queries, k, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["OMP_NUM_THREADS"] = str(threads)
import numpy as np  # noqa: E402
import faiss  # noqa: E402

faiss.omp_set_num_threads(threads)
raw = np.fromfile(store, dtype=np.uint8)
dims = int.from_bytes(raw[12:16].tobytes(), "little")
body = raw[24:]
n = len(body) // (4 + dims)
recs = body[: n * (4 + dims)].reshape(n, 4 + dims)
scale = recs[:, :4].copy().view("<f4").reshape(n)
m = recs[:, 4:].view(np.int8).astype(np.float32) * scale[:, None]
q = np.fromfile(queries, dtype="<f4").reshape(-1, dims)


def timed(fn):
    fn(q[0])  # warm-up
    times, tops = [], []
    for x in q:
        t = time.perf_counter()
        top = fn(x)
        times.append(time.perf_counter() - t)
        tops.append([int(s) for s in top])
    times.sort()
    return {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.99))], "top": tops}


def numpy_search(x):
    s = m @ x
    idx = np.argpartition(-s, k)[:k]
    return idx[np.argsort(-s[idx], kind="stable")]


index = faiss.IndexFlatIP(dims)
index.add(m)


def faiss_search(x):
    _, idx = index.search(x.reshape(1, -1), k)
    return idx[0]


print(json.dumps({"n": n, "dims": dims, "numpy": timed(numpy_search), "faiss": timed(faiss_search),
                  "peer_matrix_bytes": int(m.nbytes)}))
