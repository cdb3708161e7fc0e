#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent.
# Today: only the Rust toolchain's own components (rustfmt, clippy), which the
# machine image ships. Later issues add iproute2/nftables (fault tests),
# etcd-server (benchmarks) and chromium (dashboard test) here.
set -euo pipefail
command -v cargo >/dev/null || { echo "setup: cargo is required" >&2; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
