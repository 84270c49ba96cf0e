# Build an ONNX graph for sentence-transformers/all-mpnet-base-v2 directly from model.safetensors,
# using only numpy + safetensors + onnx (NO torch, no optimum). Output: last_hidden_state [B,S,768]
# plus sentence_embedding [B,768] (masked mean pooling + L2 normalize, as modules.json says).
# usage: python mpnet_to_onnx.py <model_dir> <out.onnx>
import sys, math, numpy as np, onnx
from onnx import helper as h, TensorProto as TP, numpy_helper as nh
from safetensors.numpy import load_file

src, out = sys.argv[1], sys.argv[2]
w = load_file(src + "/model.safetensors")
H, NH, L, EPS, PAD = 768, 12, 12, 1e-5, 1
DH = H // NH
nodes, inits = [], []
cnt = [0]
def name(p): cnt[0] += 1; return f"{p}_{cnt[0]}"
def init(n, arr): inits.append(nh.from_array(np.ascontiguousarray(arr), n)); return n
def const(arr, p="c"): return init(name(p), np.asarray(arr))
def op(t, ins, p=None, **kw):
    o = name(p or t); nodes.append(h.make_node(t, ins, [o], name=o, **kw)); return o

def linear(x, pfx):  # x @ W^T + b   (store W^T so MatMul is direct; quantize_dynamic likes MatMul)
    wt = init(pfx + ".weight_T", w[pfx + ".weight"].T.copy()); b = init(pfx + ".bias", w[pfx + ".bias"])
    return op("Add", [op("MatMul", [x, wt]), b])
def layernorm(x, pfx):
    g = init(pfx + ".weight", w[pfx + ".weight"]); b = init(pfx + ".bias", w[pfx + ".bias"])
    return op("LayerNormalization", [x, g, b], axis=-1, epsilon=EPS)

ids, mask = "input_ids", "attention_mask"
# --- embeddings: MPNet position ids = cumsum(ids != pad) * (ids != pad) + pad  (HF create_position_ids_from_input_ids)
notpad = op("Cast", [op("Not", [op("Equal", [ids, const(np.int64(PAD))])])], to=TP.INT64)
pos = op("Add", [op("Mul", [op("CumSum", [notpad, const(np.int64(1))]), notpad]), const(np.int64(PAD))])
we = op("Gather", [init("word_emb", w["embeddings.word_embeddings.weight"]), ids], axis=0)
pe = op("Gather", [init("pos_emb", w["embeddings.position_embeddings.weight"]), pos], axis=0)
x = layernorm(op("Add", [we, pe]), "embeddings.LayerNorm")

# --- relative position bias [1,NH,S,S]: bucket table precomputed for 514x514, sliced to S x S, then Gather.
def bucket(rel, num_buckets=32, max_distance=128):
    ret = np.zeros_like(rel); n = -rel; num_buckets //= 2
    ret += (n < 0).astype(np.int64) * num_buckets; n = np.abs(n); max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        # torch: (log(n.float()/max_exact)/log(max_distance/max_exact)*(num_buckets-max_exact)).to(long) -> fp32 math, trunc
        v = (np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    v = np.where(is_small, 0, v).astype(np.int64) + max_exact
    v = np.minimum(v, num_buckets - 1)
    return ret + np.where(is_small, n, v)
P = 514
ar = np.arange(P, dtype=np.int64)
table = bucket(ar[None, :] - ar[:, None])  # [q,k] memory - context
S = op("Slice", [op("Shape", [ids]), const(np.array([1])), const(np.array([2]))])  # [S]
zero = const(np.array([0, 0], dtype=np.int64))
SS = op("Concat", [S, S], axis=0)
bk = op("Slice", [init("rel_bucket_table", table), zero, SS, const(np.array([0, 1]))])
rb = op("Gather", [init("rel_attn_bias", w["encoder.relative_attention_bias.weight"]), bk], axis=0)  # [S,S,NH]
pos_bias = op("Unsqueeze", [op("Transpose", [rb], perm=[2, 0, 1]), const(np.array([0]))])  # [1,NH,S,S]
# additive mask [B,1,1,S]
m = op("Cast", [mask], to=TP.FLOAT)
addmask = op("Mul", [op("Sub", [const(np.float32(1.0)), op("Unsqueeze", [m, const(np.array([1, 2]))])]), const(np.float32(-1e9))])
bias = op("Add", [pos_bias, addmask])  # [B,NH,S,S]

shape_bsh = const(np.array([0, 0, NH, DH], dtype=np.int64))
shape_bsH = const(np.array([0, 0, H], dtype=np.int64))
scale = const(np.float32(1 / math.sqrt(DH)))
for l in range(L):
    p = f"encoder.layer.{l}."
    def heads(t): return op("Transpose", [op("Reshape", [t, shape_bsh])], perm=[0, 2, 1, 3])
    q = heads(linear(x, p + "attention.attn.q")); k = heads(linear(x, p + "attention.attn.k")); v = heads(linear(x, p + "attention.attn.v"))
    sc = op("Add", [op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
    ctx = op("MatMul", [op("Softmax", [sc], axis=-1), v])
    ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), shape_bsH])
    x = layernorm(op("Add", [linear(ctx, p + "attention.attn.o"), x]), p + "attention.LayerNorm")
    it = linear(x, p + "intermediate.dense")
    it = op("Mul", [op("Mul", [it, const(np.float32(0.5))]), op("Add", [op("Erf", [op("Div", [it, const(np.float32(math.sqrt(2)))])]), const(np.float32(1))])])  # exact gelu
    x = layernorm(op("Add", [linear(it, p + "output.dense"), x]), p + "output.LayerNorm")
nodes.append(h.make_node("Identity", [x], ["last_hidden_state"]))
# mean pooling + L2 normalize
m3 = op("Unsqueeze", [m, const(np.array([2]))])
summ = op("ReduceSum", [op("Mul", [x, m3]), const(np.array([1]))], keepdims=0)
cntm = op("Max", [op("ReduceSum", [m3, const(np.array([1]))], keepdims=0), const(np.float32(1e-9))])
mean = op("Div", [summ, cntm])
nrm = op("Max", [op("ReduceL2", [mean], axes=[1], keepdims=1), const(np.float32(1e-12))])
nodes.append(h.make_node("Div", [mean, nrm], ["sentence_embedding"]))

g = h.make_graph(nodes, "all-mpnet-base-v2",
    [h.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
     h.make_tensor_value_info("attention_mask", TP.INT64, ["batch", "sequence"])],
    [h.make_tensor_value_info("last_hidden_state", TP.FLOAT, ["batch", "sequence", H]),
     h.make_tensor_value_info("sentence_embedding", TP.FLOAT, ["batch", H])], inits)
model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="mpnet_to_onnx.py (numpy, no torch)")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out)
print("wrote", out)
