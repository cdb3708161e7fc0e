//! The protocol crates do no I/O (docs/ARCHITECTURE.md, "Architecture
//! invariants"). Their `clippy.toml` forbids std's clocks, files, sockets,
//! threads and environment in their own code; these tests close the other
//! doors: a dependency that brings an async runtime, sockets or a global RNG
//! in, a library `allow` that silences the lints, and the three copies of
//! `clippy.toml` drifting apart.

// This test runs `cargo metadata` and reads the crates' sources: a test may do
// the I/O that `clippy.toml` forbids in the protocol crates' library code.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The crates bound by the no-I/O invariant.
const PROTOCOL_CRATES: [&str; 3] = ["chorus-core", "chorus-clock", "chorus-reconcile"];

/// Packages that must not be in a protocol crate's normal dependency closure,
/// each with what it would bring in.
const FORBIDDEN: [(&str, &str); 7] = [
    ("tokio", "async runtime, timers and sockets"),
    ("mio", "OS event polling and sockets"),
    ("socket2", "sockets"),
    ("rand", "global RNG `thread_rng`; randomness is injected"),
    ("getrandom", "OS entropy; randomness is injected"),
    ("quinn", "QUIC over UDP sockets"),
    ("negentropy", "benchmark comparison only; belongs to the `chorus` binary"),
];

fn workspace_metadata() -> Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // With dependencies (no `--no-deps`): the `resolve` graph is what tells
    // normal dependencies from dev- and build-dependencies.
    // Only this machine's platform: the other platforms' dependencies would
    // be downloaded just to be listed, and they never build here.
    let version = Command::new(env!("CARGO")).arg("-vV").output().expect("cargo runs");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let host = version.lines().find_map(|l| l.strip_prefix("host: ")).expect("cargo -vV names the host").to_string();
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--filter-platform", &host, "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Package id → "name version".
fn package_names(metadata: &Value) -> BTreeMap<&str, (&str, &str)> {
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let id = package["id"].as_str().expect("package id");
            let name = package["name"].as_str().expect("package name");
            let version = package["version"].as_str().expect("package version");
            (id, (name, version))
        })
        .collect()
}

/// Package id → the ids of its normal (non-dev, non-build) dependencies, on
/// any target platform. Features are those cargo resolved for the whole
/// workspace, so this over-approximates a crate built alone: a forbidden
/// package enabled by another member's feature counts too.
fn normal_edges(metadata: &Value) -> BTreeMap<&str, Vec<&str>> {
    metadata["resolve"]["nodes"]
        .as_array()
        .expect("cargo metadata without --no-deps has a resolve graph")
        .iter()
        .map(|node| {
            let id = node["id"].as_str().expect("node id");
            let deps = node["deps"]
                .as_array()
                .expect("node deps")
                .iter()
                .filter(|dep| dep["dep_kinds"].as_array().expect("dep kinds").iter().any(|kind| kind["kind"].is_null()))
                .map(|dep| dep["pkg"].as_str().expect("dep pkg"))
                .collect();
            (id, deps)
        })
        .collect()
}

/// Every forbidden package reachable from `root` by normal dependencies, each
/// with the shortest chain of packages that pulls it in
/// (`root -> dependency -> … -> forbidden`).
fn forbidden_paths(root: &str, edges: &BTreeMap<&str, Vec<&str>>, names: &BTreeMap<&str, (&str, &str)>) -> Vec<String> {
    let mut parent: BTreeMap<&str, Option<&str>> = BTreeMap::from([(root, None)]);
    let mut queue = VecDeque::from([root]);
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        let (name, version) = names[id];
        if let Some((_, why)) = FORBIDDEN.iter().find(|(forbidden, _)| *forbidden == name) {
            let mut chain = vec![name.to_owned()];
            let mut at = parent[id];
            while let Some(up) = at {
                chain.push(names[up].0.to_owned());
                at = parent[up];
            }
            chain.reverse();
            found.push(format!("{name} {version} ({why}) via {}", chain.join(" -> ")));
        }
        for &dep in edges.get(id).map(Vec::as_slice).unwrap_or_default() {
            if !parent.contains_key(dep) {
                parent.insert(dep, Some(id));
                queue.push_back(dep);
            }
        }
    }
    found
}

#[test]
fn protocol_crates_depend_on_no_runtime_socket_or_global_rng_crate() {
    let metadata = workspace_metadata();
    let names = package_names(&metadata);
    let edges = normal_edges(&metadata);
    let members: Vec<&str> =
        metadata["workspace_members"].as_array().expect("members").iter().filter_map(Value::as_str).collect();

    let mut violations = Vec::new();
    for krate in PROTOCOL_CRATES {
        let root = members.iter().copied().find(|id| names[id].0 == krate);
        let root = root.unwrap_or_else(|| panic!("{krate} is a workspace member"));
        assert!(edges.contains_key(root), "{krate} is in the resolve graph");
        for path in forbidden_paths(root, &edges, &names) {
            violations.push(format!("{krate} pulls in {path}"));
        }
    }
    assert!(
        violations.is_empty(),
        "protocol crates must not do I/O (docs/ARCHITECTURE.md, \"Architecture invariants\"); \
         forbidden normal dependencies:\n  {}",
        violations.join("\n  ")
    );
}

fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn protocol_library_code_does_not_silence_the_no_io_lints() {
    let mut offenders = Vec::new();
    for dir in ["core", "clock", "reconcile"] {
        let mut files = Vec::new();
        rust_files(&crate_dir(dir).join("src"), &mut files);
        assert!(!files.is_empty(), "crates/{dir}/src has Rust files");
        for file in files {
            let source = std::fs::read_to_string(&file).expect("source is UTF-8");
            for (line_number, line) in source.lines().enumerate() {
                if line.contains("clippy::disallowed_methods") || line.contains("clippy::disallowed_types") {
                    offenders.push(format!("{}:{}: {}", file.display(), line_number + 1, line.trim()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "library code must not allow the no-I/O lints:\n  {}", offenders.join("\n  "));
}

#[test]
fn the_three_protocol_clippy_configs_are_identical_and_forbid_the_os_clock() {
    let core = include_str!("../clippy.toml");
    let clock = include_str!("../../clock/clippy.toml");
    let reconcile = include_str!("../../reconcile/clippy.toml");
    assert_eq!(core, clock, "crates/clock/clippy.toml differs from crates/core/clippy.toml");
    assert_eq!(core, reconcile, "crates/reconcile/clippy.toml differs from crates/core/clippy.toml");
    for path in [
        "\"std::time::Instant::now\"",
        "\"std::time::SystemTime::now\"",
        "\"std::time::Instant\"",
        "\"std::time::SystemTime\"",
        "\"std::fs::File\"",
        "\"std::net::TcpStream\"",
        "\"std::net::TcpListener\"",
        "\"std::net::UdpSocket\"",
        "\"std::thread::spawn\"",
        "\"std::env::var\"",
    ] {
        assert!(core.contains(path), "clippy.toml forbids {path}");
    }
}
