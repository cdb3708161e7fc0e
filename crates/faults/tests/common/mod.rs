//! Shared by the live tests: where the `chorus` binary is.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `chorus` binary the harness runs: `$CHORUS_BIN` when set, else the
/// one built with the `test-knobs` feature (target/knobs/chorus, built on
/// first use by chorus-testkit). The harness needs the knobs: clock skew is
/// `CHORUS_TEST_CLOCK_OFFSET_MS`, and the injected-bug test uses
/// `CHORUS_TEST_ACK_BEFORE_FSYNC`; the normal binary ignores both.
pub fn chorus_bin() -> PathBuf {
    match std::env::var_os("CHORUS_BIN") {
        Some(p) => PathBuf::from(p),
        None => chorus_testkit::knobs_binary().to_path_buf(),
    }
}

/// Whether this run must have network namespaces: when `CI` is set the
/// tests that need them fail without them (CI runs as root), instead of
/// passing by skipping.
pub fn namespaces_required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A test that needs network namespaces calls this with the built network:
/// `true` means go on. Without namespaces it fails under `CI`, and outside CI
/// it says why it skips.
pub fn namespaces_or_skip(has_namespaces: bool, test: &str) -> bool {
    if has_namespaces {
        return true;
    }
    assert!(
        !namespaces_required(),
        "{test}: network namespaces are not available (needs root, iproute2 and nftables: scripts/setup.sh), and CI is set"
    );
    eprintln!("{test}: SKIPPED: network namespaces are not available here (needs root); CI fails instead of skipping");
    false
}
