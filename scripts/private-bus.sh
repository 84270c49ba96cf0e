#!/usr/bin/env bash
# Starts a private dbus-daemon for `make run` (no system bus), `make demo` and
# the load harness: DIR/bus is its socket, DIR/bus.conf its configuration
# (config/dbus/private-bus.conf with a <listen> of its own), DIR/bus.pid its pid.
# Prints the bus address. Stop it with: kill "$(cat DIR/bus.pid)".
set -euo pipefail
dir=${1:?usage: private-bus.sh DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
chmod 755 "$dir"
cat > "$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=$dir/bus</listen>
  <include ignore_missing="no">$here/config/dbus/private-bus.conf</include>
  <!-- Whoever started this bus may run op-dbus on it, as root may. -->
  <policy user="$(id -un)">
    <allow own="org.opdbus"/>
    <allow send_destination="org.opdbus" send_interface="org.opdbus.Chain1"/>
  </policy>
</busconfig>
CONF
out=$(dbus-daemon --config-file="$dir/bus.conf" --fork --print-address=1 --print-pid=1 2>"$dir/bus.log")
address=$(sed -n 1p <<<"$out")
sed -n 2p <<<"$out" > "$dir/bus.pid"
echo "$address"
