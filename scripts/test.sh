#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs the
# whole suite. `.ci/run` calls this too, so CI and a newcomer run the same.
#
#   scripts/test.sh [extra cargo test args]
#
# The tests that need a fault or bug knob run a second `chorus` binary built
# with the `test-knobs` feature into target/knobs/ (crates/testkit); it is
# built first here so its time shows on its own line, and the test run then
# finds it up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { printf '== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
started=$SECONDS
phase "setup (scripts/setup.sh)"
bash scripts/setup.sh
t=$SECONDS
phase "build the test-knobs binary (target/knobs/chorus)"
cargo build -p chorus --features test-knobs --profile knobs
echo "   $((SECONDS - t)) s"
t=$SECONDS
phase "cargo test --workspace"
cargo test --workspace "$@"
echo "   $((SECONDS - t)) s"
echo "scripts/test.sh: all tests passed in $((SECONDS - started)) s"
