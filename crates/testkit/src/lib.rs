//! # chorus-testkit (tests only)
//!
//! Fault and bug knobs live behind the `test-knobs` cargo feature, so no
//! production binary can be switched into an unsafe mode
//! (`docs/design/fault-injection.md`, "Knobs"). `cargo test --workspace`
//! builds `target/debug/chorus` once, without that feature; the tests that
//! need a knob run a second binary, built here with the feature in its own
//! profile directory, `target/knobs/chorus`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The cargo profile (and directory under `target/`) of the knobs binary.
pub const KNOBS_PROFILE: &str = "knobs";

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map(Path::to_path_buf).unwrap_or_default()
}

/// The target directory the workspace builds into.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// Path of the `chorus` binary built with the `test-knobs` feature, building
/// it first (once per test process; cargo makes a rebuild of an up-to-date
/// binary a no-op and serializes concurrent builds with its lock). Panics
/// with cargo's output when the build fails: a test that needs a knob
/// cannot run without it.
pub fn knobs_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(workspace_root()).args([
            "build",
            "-p",
            "chorus",
            "--features",
            "test-knobs",
            "--profile",
            KNOBS_PROFILE,
        ]);
        // Cargo sets the test package's own variables (CARGO_MANIFEST_DIR,
        // CARGO_PKG_*, …) for a test. Build scripts that watch them (ring's
        // watches CARGO_MANIFEST_DIR) would make every test package rebuild
        // the whole binary from ring up, minutes each: build with the
        // environment a shell would have.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_test_package_variable) {
                build.env_remove(&name);
            }
        }
        let out = build.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building the test-knobs binary failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = target_dir().join(KNOBS_PROFILE).join("chorus");
        assert!(bin.exists(), "the test-knobs binary is not at {}", bin.display());
        bin
    })
}

/// Variables cargo sets for the package whose test is running, not for the
/// user: CARGO_HOME, CARGO_TARGET_DIR and cargo's configuration stay.
fn is_test_package_variable(name: &str) -> bool {
    ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || matches!(name, "OUT_DIR" | "CARGO_RUSTC_CURRENT_DIR")
}

#[cfg(test)]
mod tests {
    use super::is_test_package_variable;

    #[test]
    fn only_the_test_packages_own_cargo_variables_are_dropped() {
        for dropped in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_BIN_EXE_chorus", "CARGO_CRATE_NAME", "OUT_DIR"] {
            assert!(is_test_package_variable(dropped), "{dropped}");
        }
        for kept in ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_COLOR", "CARGO_BUILD_JOBS", "CARGO", "PATH"] {
            assert!(!is_test_package_variable(kept), "{kept}");
        }
    }
}
