#!/usr/bin/env python3
"""A synthetic D-Bus trace as `op-dbus import` JSON lines, shaped like a
busy host's system bus: unit property changes (a third carry a fresh
timestamp), jobs with increasing ids, battery readings, network and login
events, name owner changes with fresh unique names, PackageKit and bluez.
What repeats and what does not follows the real services' habits, so the
embedding cache's hit rate on it is a fair estimate (BENCHMARKS.md).

Usage: gen-trace.py N [SEED] > trace.jsonl
"""
import json
import random
import sys

n = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
UNITS = [f"{u}.service" for u in (
    "nginx sshd cron docker containerd postgresql redis rsyslog systemd-journald systemd-logind "
    "systemd-resolved systemd-timesyncd NetworkManager ModemManager bluetooth cups avahi-daemon "
    "polkit udisks2 upower accounts-daemon snapd unattended-upgrades apt-daily fwupd packagekit "
    "thermald irqbalance colord gdm wpa_supplicant dbus user@1000 getty@tty1 kubelet prometheus "
    "node-exporter grafana-server haproxy").split()]
STATES = [("active", "running"), ("inactive", "dead"), ("activating", "start"), ("deactivating", "stop"),
          ("failed", "failed")]
SD = "org.freedesktop.systemd1"
clock = 1_750_000_000_000_000
job = 1000
unique = 300


def esc(unit):
    return "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in unit)


def event():
    global clock, job, unique
    clock += rng.randint(1000, 5_000_000)
    r = rng.random()
    if r < 0.35:
        unit = rng.choice(UNITS[:12]) if rng.random() < 0.7 else rng.choice(UNITS)
        active, sub = rng.choice(STATES[:2]) if rng.random() < 0.8 else rng.choice(STATES)
        changed = {"ActiveState": active, "SubState": sub}
        if rng.random() < 0.33:
            changed["StateChangeTimestamp"] = clock
        return SD, "org.freedesktop.DBus.Properties.PropertiesChanged", f"/org/freedesktop/systemd1/unit/{esc(unit)}", \
            ["org.freedesktop.systemd1.Unit", changed, []]
    if r < 0.45:
        job += 1
        unit = rng.choice(UNITS)
        if rng.random() < 0.5:
            return SD, "org.freedesktop.systemd1.Manager.JobNew", "/org/freedesktop/systemd1", \
                [job, f"/org/freedesktop/systemd1/job/{job}", unit]
        return SD, "org.freedesktop.systemd1.Manager.JobRemoved", "/org/freedesktop/systemd1", \
            [job, f"/org/freedesktop/systemd1/job/{job}", unit, "done" if rng.random() < 0.95 else "failed"]
    if r < 0.60:
        pct = rng.randint(20, 100)
        props = {"Percentage": float(pct), "State": rng.choice([1, 2, 4])}
        if rng.random() < 0.3:
            props["TimeToEmpty"] = rng.randint(600, 30000)
        return "org.freedesktop.UPower", "org.freedesktop.DBus.Properties.PropertiesChanged", \
            "/org/freedesktop/UPower/devices/battery_BAT0", ["org.freedesktop.UPower.Device", props, []]
    if r < 0.70:
        if rng.random() < 0.5:
            return "org.freedesktop.NetworkManager", "org.freedesktop.NetworkManager.StateChanged", \
                "/org/freedesktop/NetworkManager", [rng.choice([20, 50, 60, 70])]
        dev = rng.randint(1, 4)
        return "org.freedesktop.NetworkManager", "org.freedesktop.DBus.Properties.PropertiesChanged", \
            f"/org/freedesktop/NetworkManager/Devices/{dev}", \
            ["org.freedesktop.NetworkManager.Device", {"State": rng.choice([30, 100]), "StateReason": [rng.choice([30, 100]), 0]}, []]
    if r < 0.80:
        sid = rng.randint(1, 12)
        kind = rng.random()
        if kind < 0.4:
            return "org.freedesktop.login1", "org.freedesktop.login1.Manager.SessionNew", "/org/freedesktop/login1", \
                [str(sid), f"/org/freedesktop/login1/session/_3{sid}"]
        if kind < 0.7:
            return "org.freedesktop.login1", "org.freedesktop.login1.Manager.SessionRemoved", "/org/freedesktop/login1", \
                [str(sid), f"/org/freedesktop/login1/session/_3{sid}"]
        return "org.freedesktop.login1", "org.freedesktop.DBus.Properties.PropertiesChanged", \
            f"/org/freedesktop/login1/session/_3{sid}", ["org.freedesktop.login1.Session", {"IdleHint": rng.random() < 0.5}, []]
    if r < 0.90:
        unique += 1
        name = rng.choice(["org.freedesktop.Notifications", "org.freedesktop.portal.Desktop", ""])
        if name:
            return "org.freedesktop.DBus", "org.freedesktop.DBus.NameOwnerChanged", "/org/freedesktop/DBus", \
                [name, "", f":1.{unique}"]
        return "org.freedesktop.DBus", "org.freedesktop.DBus.NameOwnerChanged", "/org/freedesktop/DBus", \
            [f":1.{unique}", "", f":1.{unique}"]
    if r < 0.95:
        return "org.freedesktop.PackageKit", "org.freedesktop.PackageKit.Transaction.Finished", \
            f"/{rng.randint(1, 40)}_transaction", [rng.choice([1, 1, 1, 2]), rng.randint(100, 9000)]
    dev = rng.choice(["dev_A4_C1_38_11_22_33", "dev_00_1B_66_AA_BB_CC"])
    return "org.bluez", "org.freedesktop.DBus.Properties.PropertiesChanged", f"/org/bluez/hci0/{dev}", \
        ["org.bluez.Device1", {"Connected": rng.random() < 0.5} if rng.random() < 0.7 else {"RSSI": rng.randint(-90, -40)}, []]


out = sys.stdout
for _ in range(n):
    plugin, op, path, data = event()
    out.write(json.dumps({"plugin_id": plugin, "operation": op, "path": path, "data": data}) + "\n")
