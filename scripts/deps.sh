#!/usr/bin/env bash
# Installs the Debian packages op-dbus needs at run and test time, if they are
# missing: dbus (dbus-daemon, dbus-send, dbus-monitor), util-linux (setpriv)
# and btrfs-progs (mkfs.btrfs, btrfs send/receive). With --bench also
# systemd's busctl, a peer in the load harness.
set -euo pipefail
need=()
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v dbus-send >/dev/null || need+=(dbus-bin)
command -v setpriv >/dev/null || need+=(util-linux)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
if [[ "${1:-}" == "--bench" ]]; then
    command -v busctl >/dev/null || need+=(systemd)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "installing: ${need[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
