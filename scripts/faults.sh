#!/usr/bin/env bash
# Fault-injection runs against real chorus agents (issue 7,
# docs/design/fault-injection.md).
#
#   scripts/faults.sh [--runs N] [--seed S] [--nodes K] [other chorus-faults flags]
#
# Builds chorus and chorus-faults (release when FAULTS_PROFILE=release,
# else debug: a debug build of both takes ~1 min here, release ~5), then runs
# the harness. Each run prints its seed and the exact command replaying it;
# the LAST line is `faults: runs=N ops=M faults=F violations=V`, and the exit
# status is non-zero when V > 0 (or when a run could not be carried out).
# As root it builds network namespaces (install iproute2/nftables with
# scripts/setup.sh); otherwise it falls back to loopback with kill/stop
# faults only. Long version before releases: scripts/faults.sh --runs 200
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${FAULTS_PROFILE:-debug}"
if [[ "$profile" == release ]]; then
    cargo build --release -p chorus -p chorus-faults >&2
    dir=target/release
else
    cargo build -p chorus -p chorus-faults >&2
    dir=target/debug
fi
exec "$dir/chorus-faults" --chorus-bin "$dir/chorus" "$@"
