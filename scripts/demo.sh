#!/usr/bin/env bash
# `make demo`: a private bus, the daemon recording it, a realistic burst of
# systemd / logind / NetworkManager-style signals and a Submit, then
# `op-dbus log` and `op-dbus verify` on what was recorded.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release/op-dbus"
emit="$here/target/release/op-dbus-emit"
work=$(mktemp -d /tmp/op-dbus-demo.XXXXXX)
address=$("$here/scripts/private-bus.sh" "$work/bus")
cleanup() {
    [[ -n "${daemon:-}" ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    kill "$(cat "$work/bus/bus.pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
echo "== private bus: $address"
"$bin" --config /dev/null --state-dir "$work/state" run --bus "$address" --no-metrics 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    dbus-send --bus="$address" --print-reply --dest=org.opdbus /org/opdbus/Chain org.opdbus.Chain1.Head \
        >/dev/null 2>&1 && break
    grep -q "empty" <(dbus-send --bus="$address" --print-reply --dest=org.opdbus /org/opdbus/Chain \
        org.opdbus.Chain1.Head 2>&1) && break
    sleep 0.1
done
echo "== emitting a sample burst"
"$emit" --bus "$address" sample
echo "== submitting a footprint over D-Bus"
"$bin" --config /dev/null submit --bus "$address" deploy.tool deploy.tool.Released '{"version":"1.4.2","hosts":3}'
sleep 1
kill -TERM "$daemon"; wait "$daemon"; daemon=""
echo "== op-dbus log"
"$bin" --state-dir "$work/state" log
echo "== op-dbus verify"
"$bin" --state-dir "$work/state" verify
