#!/usr/bin/env bash
# Installs etcd (Debian package etcd-server, 3.4.x) for
# `chorus bench strong --vs-etcd`, which runs its own 3-member etcd cluster
# as child processes. Idempotent.
# - etcd already on PATH (or /usr/bin/etcd): nothing to do.
# - root with apt-get: `apt-get install etcd-server` with the package's
#   service held back (a policy-rc.d that exits 101 during the install),
#   then checks that nothing listens on 127.0.0.1:2379 afterwards.
# - otherwise: says why and exits 0; the benchmark then reports etcd as
#   missing and names this script.
set -euo pipefail

if command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]]; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "install-etcd: etcd missing and not root: run this script as root to install etcd-server" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-etcd: etcd missing and no apt-get: install etcd 3.4 by hand" >&2
    exit 0
fi

# Keep the package from starting its service: invoke-rc.d and
# deb-systemd-invoke consult /usr/sbin/policy-rc.d, and 101 means "action
# forbidden". An existing policy is left exactly as it was.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() {
    if ((own_policy)); then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when apt cannot find the package.
if ! apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi

listening() {
    (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null
}
if listening; then
    # The service started anyway (a host with a service manager that ignores
    # policy-rc.d): stop and disable it, the benchmark runs its own members.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        service etcd stop >/dev/null 2>&1 || true
    fi
    for _ in $(seq 50); do
        listening || break
        sleep 0.1
    done
    if listening; then
        echo "install-etcd: something still listens on 127.0.0.1:2379 after stopping the etcd service" >&2
        exit 1
    fi
fi
etcd --version | head -n 1
