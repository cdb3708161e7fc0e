//! `chorus sim --json` is a public interface: its last line is one JSON
//! object whose field names users' scripts rely on.

use std::process::Command;

fn last_json_line(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus")).args(args).output().expect("chorus runs");
    assert!(out.status.success(), "chorus {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).expect("last line is JSON")
}

#[test]
fn sim_json_reports_convergence_with_the_documented_fields() {
    let v = last_json_line(&["sim", "--nodes", "7", "--seed", "1", "--loss", "0.05", "--crashes", "--json"]);
    for field in [
        "nodes",
        "seed",
        "converged",
        "rounds_to_converge",
        "virtual_ms_to_converge",
        "messages_per_node",
        "bytes_per_node",
        "violations",
        "peak_rss_bytes",
    ] {
        assert!(v.get(field).is_some(), "missing field {field} in {v}");
    }
    assert_eq!(v["nodes"], 7);
    assert_eq!(v["seed"], 1);
    assert_eq!(v["converged"], true);
    assert_eq!(v["violations"], serde_json::json!([]));
    assert!(v["messages_per_node"].as_f64().is_some_and(|m| m > 0.0));
}

#[test]
fn clock_scenario_json_reports_the_documented_fields() {
    let v = last_json_line(&[
        "sim",
        "--scenario",
        "clock",
        "--nodes",
        "7",
        "--liars",
        "2",
        "--seed",
        "5",
        "--virtual-secs",
        "300",
        "--json",
    ]);
    for field in [
        "offset_error_p50_us",
        "offset_error_p99_us",
        "offset_bound_us",
        "drift_error_max_ppm",
        "liars",
        "liars_flagged",
        "estimate_outside_truechimers",
        "hlc_backwards",
    ] {
        assert!(v.get(field).is_some(), "missing field {field} in {v}");
    }
    assert_eq!(v["liars"], 2);
    assert_eq!(v["liars_flagged"], 2);
    assert_eq!(v["estimate_outside_truechimers"], 0);
    assert_eq!(v["hlc_backwards"], 0);
}

#[test]
fn sim_rejects_impossible_parameters_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus")).args(["sim", "--nodes", "1"]).output().expect("chorus runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}
