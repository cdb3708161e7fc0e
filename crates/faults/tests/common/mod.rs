//! Shared by the live tests: where the `chorus` binary is.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `chorus` binary built by this workspace. `cargo test --workspace`
/// builds it (the `chorus` package has integration tests); a nested
/// `cargo build` from inside a test would block on cargo's build lock, so
/// with `cargo test -p chorus-faults` alone run `cargo build -p chorus`
/// first (or set `$CHORUS_BIN`).
pub fn chorus_bin() -> PathBuf {
    let bin = chorus_faults::run::default_chorus_bin();
    assert!(
        bin.is_file(),
        "the chorus binary is not at {}: run `cargo build -p chorus` (or set CHORUS_BIN) first",
        bin.display()
    );
    bin
}
