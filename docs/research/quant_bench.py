#!/usr/bin/env python3
"""int8 vs fp32: cosine per text and throughput, with Python onnxruntime, on
the models `scripts/models.sh` installs (results in ml-embeddings.md §7).

Usage: quant_bench.py MODEL_DIR [cosine|speed|all] [MODEL ...]
  MODEL: paraphrase-MiniLM-L3-v2, all-MiniLM-L6-v2, all-mpnet-base-v2 (default: those present)
Needs onnxruntime, numpy, tokenizers (the venv models.sh makes has them).

- texts: 240 distinct D-Bus-like texts (text-v1 style: plugin, operation
  words, path tail, key arguments; plus a few plain sentences), made from
  templates with a fixed seed, and the 6 fixture texts.
- cosine: each text alone (no padding), 1 thread, mean pooling over the
  mask, L2 normalize; cosine(model.int8.onnx, model.onnx); min and mean.
- speed: emb/s at batch 1, 8, 32 (padding to the longest of the batch,
  truncation 128, tokenization included, one warm-up batch), intra-op
  threads 2 and 1, best of 3 passes over the 240 texts.
"""
import json
import os
import random
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PAD = {"all-mpnet-base-v2": 1}
MAXLEN = {"paraphrase-MiniLM-L3-v2": 128, "all-MiniLM-L6-v2": 256, "all-mpnet-base-v2": 384}


def make_texts(n=240, seed=7):
    r = random.Random(seed)
    svc = ["nginx.service", "sshd.service", "docker.service", "cups.service", "NetworkManager.service",
           "bluetooth.service", "cron.service", "systemd-resolved.service", "postgresql.service",
           "apache2.service", "user@1000.service", "systemd-journald.service"]
    users = ["alice", "bob", "carol", "dave", "root", "gdm"]
    n99 = lambda: r.randint(1, 99)
    T = [
        lambda: f"org.freedesktop.systemd1 Manager Job Removed job {r.randint(1,999)} {r.randint(1,999)} /org/freedesktop/systemd1/job/{r.randint(1,999)} {r.choice(svc)} {r.choice(['done','failed','canceled','timeout','dependency'])}",
        lambda: f"org.freedesktop.systemd1 Manager Job New job {r.randint(1,999)} {r.randint(1,999)} /org/freedesktop/systemd1/job/{r.randint(1,999)} {r.choice(svc)}",
        lambda: f"org.freedesktop.systemd1 Properties Properties Changed unit {r.choice(svc)} org.freedesktop.systemd1.Unit ActiveState={r.choice(['active','inactive','failed','activating','deactivating'])} SubState={r.choice(['running','dead','exited','start'])}",
        lambda: f"org.freedesktop.login1 Manager Session New login1 {n99()} {n99()} /org/freedesktop/login1/session/_3{n99()}",
        lambda: f"org.freedesktop.login1 Manager Session Removed login1 {n99()} {n99()} /org/freedesktop/login1/session/_3{n99()}",
        lambda: f"org.freedesktop.login1 Manager User New login1 {r.randint(1000,1010)} /org/freedesktop/login1/user/_{r.randint(1000,1010)} {r.choice(users)}",
        lambda: f"org.freedesktop.NetworkManager NetworkManager State Changed freedesktop NetworkManager {r.choice([20,30,40,50,60,70])}",
        lambda: f"org.freedesktop.NetworkManager Device State Changed Devices {r.randint(1,9)} {r.choice([30,40,50,100,110,120])} {r.choice([30,40,50,100])} {r.randint(0,60)}",
        lambda: f"org.bluez Properties Properties Changed dev_{'_'.join('%02X' % r.randint(0,255) for _ in range(6))} org.bluez.Device1 Connected={r.choice(['true','false'])} RSSI=-{r.randint(30,90)}",
        lambda: f"org.freedesktop.UPower Properties Properties Changed devices battery_BAT0 org.freedesktop.UPower.Device Percentage={r.randint(1,100)} State={r.randint(1,4)} TimeToEmpty={r.randint(0,20000)}",
        lambda: f"org.freedesktop.Notifications Notifications Notification Closed freedesktop Notifications {r.randint(1,500)} {r.randint(1,4)}",
        lambda: f"org.freedesktop.PackageKit Transaction Finished Transaction {n99()}_{''.join(r.choice('abcdef0123456789') for _ in range(8))} {r.choice(['success','failed','cancelled'])} {r.randint(10,99999)}",
        lambda: f"org.freedesktop.DBus DBus Name Owner Changed freedesktop DBus :1.{r.randint(1,999)} {r.choice(['',':1.%d' % r.randint(1,999)])} {r.choice(['',':1.%d' % r.randint(1,999)])}",
        lambda: f"org.freedesktop.resolve1 Manager Resolve Hostname resolve1 0 {r.choice(['example.com','debian.org','localhost','printer.local'])} 0 0",
        lambda: f"org.freedesktop.timedate1 timedate1 Set Time Zone timedate1 {r.choice(['Europe/Berlin','UTC','America/New_York','Asia/Tokyo'])} false",
        lambda: f"org.freedesktop.udisks2 Object Manager Interfaces Added block_devices {r.choice(['sda1','sdb','nvme0n1p2','loop3'])} org.freedesktop.UDisks2.Block Device=/dev/{r.choice(['sda1','sdb','loop3'])} Size={r.randint(1,999)*1048576} IdType={r.choice(['ext4','btrfs','vfat','swap'])}",
        lambda: "org.freedesktop.systemd1 Manager Unit Files Changed freedesktop systemd1",
        lambda: f"org.gnome.Shell Screensaver Active Changed gnome ScreenSaver {r.choice(['true','false'])}",
        lambda: r.choice(["a system service failed to start", "a user logged in and opened a session",
                          "network connectivity went down", "the battery is almost empty",
                          "a bluetooth headset connected", "hello world", "disk mounted", "package update finished"]),
        lambda: f"org.freedesktop.systemd1 {r.choice(['JobRemoved','JobNew'])} {r.choice(svc)} {r.choice(['done','start'])}",
        lambda: f"org.freedesktop.systemd1 Properties Properties Changed unit {r.choice(svc)} org.freedesktop.systemd1.Service " + " ".join(
            f"{k}={v}" for k, v in r.sample([("MainPID", r.randint(1, 99999)), ("ExecMainStatus", r.randint(0, 255)),
                ("ActiveEnterTimestamp", r.randint(10**15, 10**16)), ("MemoryCurrent", r.randint(10**6, 10**9)),
                ("CPUUsageNSec", r.randint(10**6, 10**11)), ("TasksCurrent", r.randint(1, 300)), ("Result", r.choice(["success", "exit-code", "signal"])),
                ("StatusText", r.choice(["Ready.", "Processing requests...", "Reloading configuration"])), ("NRestarts", r.randint(0, 9)),
                ("ControlGroup", f"/system.slice/{r.choice(svc)}"), ("FragmentPath", f"/lib/systemd/system/{r.choice(svc)}"),
                ("InvocationID", "".join(r.choice("0123456789abcdef") for _ in range(32))), ("SubState", r.choice(["running", "dead", "exited"])),
                ("ActiveState", r.choice(["active", "failed"])), ("LoadState", "loaded"), ("UnitFileState", r.choice(["enabled", "disabled", "static"]))],
                r.randint(8, 16))),
    ]
    out, seen = [], set()
    while len(out) < n:
        t = r.choice(T)()
        if t not in seen:
            seen.add(t)
            out.append(t)
    fixture = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/ml_reference.json")
    if os.path.exists(fixture):
        out += json.load(open(fixture))["texts"]
    return out


class Model:
    def __init__(self, path, tokenizer, pad, maxlen, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.s.get_inputs()}
        self.out = next(o.name for o in self.s.get_outputs() if len(o.shape) == 3)
        self.tok = Tokenizer.from_file(tokenizer)
        self.tok.no_padding()
        self.tok.enable_padding(pad_id=pad)
        self.tok.enable_truncation(maxlen)

    def embed(self, texts):
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        am = np.array([e.attention_mask for e in enc], np.int64)
        feed = {"input_ids": ids, "attention_mask": am}
        if "token_type_ids" in self.names:
            feed["token_type_ids"] = np.zeros_like(ids)
        h = self.s.run([self.out], feed)[0]
        e = (h * am[:, :, None]).sum(1) / am.sum(1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def main():
    d = sys.argv[1]
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    names = sys.argv[3:] or [m for m in MAXLEN if os.path.exists(f"{d}/{m}/model.onnx")]
    texts = make_texts()
    for name in names:
        files = [f for f in ("model.onnx", "model.int8.onnx") if os.path.exists(f"{d}/{name}/{f}")]
        args = lambda th: (f"{d}/{name}/tokenizer.json", PAD.get(name, 0), MAXLEN[name], th)
        if what in ("cosine", "all") and len(files) == 2:
            a, b = (Model(f"{d}/{name}/{f}", *args(1)) for f in files)
            va = np.concatenate([a.embed([t]) for t in texts])
            vb = np.concatenate([b.embed([t]) for t in texts])
            c = (va * vb).sum(1)
            print(f"{name}: cosine(int8, fp32) over {len(texts)} texts: min {c.min():.4f} mean {c.mean():.4f}", flush=True)
        if what in ("speed", "all"):
            for f in files:
                for th in (2, 1):
                    m = Model(f"{d}/{name}/{f}", *args(th))
                    m.embed(texts[:8])
                    res = []
                    for bs in (1, 8, 32):
                        best = 0.0
                        for _ in range(3):
                            t = time.perf_counter()
                            for i in range(0, 240, bs):
                                m.embed(texts[i:i + bs])
                            best = max(best, 240 / (time.perf_counter() - t))
                        res.append(f"batch {bs:2d}: {best:6.0f}")
                    print(f"{name}/{f:16s} threads {th}: " + " | ".join(res) + " emb/s", flush=True)


if __name__ == "__main__":
    main()
