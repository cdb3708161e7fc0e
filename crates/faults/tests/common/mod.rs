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
