#!/usr/bin/env python3
"""Live-capture load harness: op-dbus against dbus-monitor and busctl.

For each capturer, on a fresh private dbus-daemon: start it, emit BUS_N
signals `org.opdbus.Load.Tick(t seq, s payload)` with op-dbus-emit (as fast
as the bus takes them, or BUS_RATE per second), wait until the capturer has
written everything it is going to, then report how many distinct sequence
numbers it captured, the emit rate the bus sustained with it attached, its
capture rate, and its CPU seconds per 100k events (from /proc/PID/stat).

  op-dbus:       durably chained (fdatasync per commit) and indexed in LMDB
  dbus-monitor:  `dbus-monitor --monitor` text to a file
  busctl:        `busctl monitor --json=short` to a file

Run with `make bench-bus` (BUS_N, BUS_RATE, BUS_LEVELS in the environment; an ML
level in BUS_LEVELS needs `make models`).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPDBUS = os.path.join(HERE, "target/release/op-dbus")
EMIT = os.path.join(HERE, "target/release/op-dbus-emit")
MODELS = os.environ.get("OP_DBUS_MODEL_DIR", os.path.join(HERE, "models"))
# op-dbus runs once per level; an ML level shows that the model's work does
# not slow capture (BUS_LEVELS=heuristic,medium).
LEVELS = os.environ.get("BUS_LEVELS", "heuristic").split(",")
N = int(os.environ.get("BUS_N", "200000"))
RATE = int(os.environ.get("BUS_RATE", "0"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def start_bus(work):
    out = subprocess.run([os.path.join(HERE, "scripts/private-bus.sh"), os.path.join(work, "bus")],
                         check=True, capture_output=True, text=True)
    pid = int(open(os.path.join(work, "bus", "bus.pid")).read())
    return out.stdout.strip(), pid


def wait_quiet(size_of, quiet=1.5, limit=600):
    """Waits until size_of() has not changed for `quiet` seconds."""
    last, since, start = None, time.time(), time.time()
    while time.time() - start < limit:
        now = size_of()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return time.time() - quiet
        time.sleep(0.1)
    return time.time()


def emit(address):
    args = [EMIT, "--bus", address, "load", "--count", str(N), "--rate", str(RATE)]
    t0 = time.time()
    subprocess.run(args, check=True, capture_output=True)
    return t0, time.time()


def run_opdbus(work, address, level="heuristic"):
    state = os.path.join(work, "state")
    cfg = os.path.join(work, "op-dbus.toml")
    with open(cfg, "w") as f:
        # The recorder at its defaults, except: no metrics port, and the
        # load signals only (the bus's own name signals are not the workload).
        f.write("[[bus.include]]\ninterface = \"org.opdbus.Load\"\n")
        # An ML level: the vector worker embeds behind the chain meanwhile.
        f.write(f"[vector]\nlevel = \"{level}\"\nmodel_dir = \"{MODELS}\"\n")
    p = subprocess.Popen([OPDBUS, "--config", cfg, "--state-dir", state, "run", "--no-metrics", "--bus", address],
                         stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        r = subprocess.run(["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.opdbus",
                            "/org/opdbus/Chain", "org.opdbus.Chain1.Head"], capture_output=True, text=True)
        if r.returncode == 0 or "empty" in r.stderr:
            break
        time.sleep(0.05)
    t0, t_emit = emit(address)
    timing = os.path.join(state, "@timing")
    done = wait_quiet(lambda: sum(os.path.getsize(os.path.join(timing, s)) for s in os.listdir(timing)))
    cpu = cpu_seconds(p.pid)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    out = subprocess.run([OPDBUS, "--state-dir", state, "log", "--json", "--plugin", "org.opdbus.Load"],
                         check=True, capture_output=True, text=True).stdout
    seqs = {json.loads(line)["data"][0] for line in out.splitlines()}
    verify = subprocess.run([OPDBUS, "--state-dir", state, "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return seqs, t0, t_emit, done, cpu


def run_file_capturer(work, address, argv, parse):
    path = os.path.join(work, "capture.out")
    with open(path, "w") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # connected and monitoring
        t0, t_emit = emit(address)
        done = wait_quiet(lambda: os.path.getsize(path))
        cpu = cpu_seconds(p.pid)
        p.terminate()
        p.wait(timeout=30)
    with open(path, errors="replace") as f:
        seqs = parse(f)
    return seqs, t0, t_emit, done, cpu


def parse_dbus_monitor(f):
    seqs, in_tick = set(), False
    for line in f:
        if line.startswith("signal "):
            in_tick = "member=Tick" in line
        elif in_tick:
            m = re.match(r"\s+uint64 (\d+)", line)
            if m:
                seqs.add(int(m.group(1)))
                in_tick = False
    return seqs


def parse_busctl(f):
    seqs = set()
    for line in f:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("member") == "Tick":
            seqs.add(m["payload"]["data"][0])
    return seqs


def one(name):
    work = tempfile.mkdtemp(prefix="op-dbus-bench-")
    address, bus_pid = start_bus(work)
    try:
        if name.startswith("op-dbus"):
            r = run_opdbus(work, address, name.split(" ")[1] if " " in name else "heuristic")
        elif name == "dbus-monitor":
            r = run_file_capturer(work, address, ["dbus-monitor", "--address", address, "--monitor"],
                                  parse_dbus_monitor)
        elif name == "busctl":
            r = run_file_capturer(work, address, ["busctl", f"--address={address}", "monitor", "--json=short"],
                                  parse_busctl)
        else:  # the bus alone, no monitor
            t0, t1 = emit(address)
            r = (set(range(N)), t0, t1, t1, 0.0)
        bus_cpu = cpu_seconds(bus_pid)
    finally:
        os.kill(bus_pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    seqs, t0, t_emit, done, cpu = r
    return {
        "capturer": name,
        "captured": len(seqs),
        "emit_per_s": N / (t_emit - t0),
        "capture_per_s": len(seqs) / max(done - t0, 1e-9),
        "cpu_s_per_100k": cpu / max(len(seqs), 1) * 100_000,
        "bus_cpu_s": bus_cpu,
    }


def main():
    for tool in ("dbus-monitor", "busctl", "dbus-send"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/deps.sh --bench")
    names = ["op-dbus" if lv == "heuristic" else f"op-dbus {lv}" for lv in LEVELS]
    rows = [one(n) for n in ("bus alone", *names, "dbus-monitor", "busctl")]
    print(f"N = {N} signals, rate = {'max' if RATE == 0 else RATE}/s")
    print(f"{'capturer':<18}{'captured':>12}{'bus emit/s':>12}{'capture/s':>12}{'CPU-s/100k':>12}{'bus CPU-s':>11}")
    for r in rows:
        print(f"{r['capturer']:<18}{r['captured']:>12}{r['emit_per_s']:>12.0f}{r['capture_per_s']:>12.0f}"
              f"{r['cpu_s_per_100k']:>12.2f}{r['bus_cpu_s']:>11.1f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
