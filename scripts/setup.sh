#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent.
# - the Rust toolchain's own components (rustfmt, clippy), which the
#   machine image ships;
# - iproute2 and nftables for the fault-injection tests (crates/faults):
#   network namespaces, veth links, tc, nft. Installed only when missing,
#   and only as root (without root the fault tests fall back to loopback).
# - strace for the fsync-before-acknowledgement test (crates/chorus/tests/fsync_order.rs).
# - etcd-server for `chorus bench strong --vs-etcd` (scripts/install-etcd.sh).
# - the nightly toolchain (minimal profile) when missing: the fuzz targets
#   (fuzz/, docs/design/fault-injection.md, "Fuzzing") need it, and CI
#   checks that they compile. With `--fuzz`, also cargo-fuzz when missing,
#   which only running the targets needs, never CI.
# Later issues add chromium (dashboard test).
set -euo pipefail
fuzz=false
for arg in "$@"; do
    case $arg in
        --fuzz) fuzz=true ;;
        *) echo "setup: unknown argument $arg (known: --fuzz)" >&2; exit 2 ;;
    esac
done
command -v cargo >/dev/null || { echo "setup: cargo is required" >&2; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if $fuzz && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# strace: the test that checks every acknowledgement leaves after its fsync.
command -v strace >/dev/null 2>&1 || missing+=(strace)
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        # Update the package lists only when apt cannot find the packages.
        if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            apt-get install -y -qq "${missing[@]}" >/dev/null
        fi
    else
        echo "setup: ${missing[*]} missing and not root: fault tests will use loopback" >&2
    fi
fi
"$(dirname "$0")/install-etcd.sh"
