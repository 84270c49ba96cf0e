#!/usr/bin/env bash
# `make run`: the daemon on the system bus when there is one and we are root
# (installing the org.opdbus bus policy first), otherwise on a private
# dbus-daemon that this script starts, names, and stops on exit.
set -euo pipefail
bin=${BIN:-./target/release/op-dbus}
state=${STATE_DIR:?}
metrics=${METRICS:-127.0.0.1:9464}
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ -S /run/dbus/system_bus_socket && $(id -u) -eq 0 ]]; then
    if ! cmp -s "$here/config/dbus/org.opdbus.conf" /etc/dbus-1/system.d/org.opdbus.conf; then
        echo "installing the bus policy: /etc/dbus-1/system.d/org.opdbus.conf"
        install -D -m 644 "$here/config/dbus/org.opdbus.conf" /etc/dbus-1/system.d/org.opdbus.conf
        dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
            org.freedesktop.DBus.ReloadConfig >/dev/null
    fi
    echo "recording the system bus; state in $state"
    exec "$bin" --state-dir "$state" run --bus system --metrics-listen "$metrics"
fi
why="no system bus here"
[[ -S /run/dbus/system_bus_socket ]] && why="recording the system bus needs root"
busdir=$(mktemp -d /tmp/op-dbus-bus.XXXXXX)
address=$("$here/scripts/private-bus.sh" "$busdir")
trap 'kill "$(cat "$busdir/bus.pid")" 2>/dev/null; rm -rf "$busdir"' EXIT
echo "$why: started a private bus at $address"
echo "  try: DBUS_SYSTEM_BUS_ADDRESS=$address busctl --system tree org.opdbus"
echo "       ./target/release/op-dbus-emit --bus '$address' sample"
echo "state in $state"
"$bin" --state-dir "$state" run --bus "$address" --metrics-listen "$metrics"
