#!/usr/bin/env bash
# Fault-injection runs against real chorus agents (issue 7,
# docs/design/fault-injection.md).
#
#   scripts/faults.sh [--runs N] [--seed S] [--nodes K] [other chorus-faults flags]
#
# Builds chorus WITH the `test-knobs` feature (clock skew and the injected
# bug are test knobs, absent from normal builds) and chorus-faults, into
# target/knobs-release when FAULTS_PROFILE=release, else target/knobs (a
# debug build takes a few minutes here, release more), then runs the harness. Each run prints its seed and the exact command replaying it;
# the LAST line is `faults: runs=N ops=M faults=F violations=V`, and the exit
# status is non-zero when V > 0 (or when a run could not be carried out).
# As root it builds network namespaces (install iproute2/nftables with
# scripts/setup.sh); otherwise it falls back to loopback with kill/stop
# faults only. Long version before releases: scripts/faults.sh --runs 200
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${FAULTS_PROFILE:-debug}"
if [[ "$profile" == release ]]; then
    dir=knobs-release
else
    dir=knobs
fi
cargo build --profile "$dir" -p chorus -p chorus-faults --features chorus/test-knobs >&2
dir="target/$dir"
exec "$dir/chorus-faults" --chorus-bin "$dir/chorus" "$@"
