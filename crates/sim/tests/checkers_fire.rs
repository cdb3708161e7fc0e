//! Every checker of the simulator fires on the bug it exists to catch, and
//! the test names which one fired. The bugs are test-only knobs, so these
//! runs go through the `chorus` binary built with the `test-knobs` feature
//! (`chorus sim --inject-bug NAME --json`, see crates/testkit): the
//! simulator is the same code, the production binary carries no bug.

use serde_json::Value;
use std::process::Command;

/// One simulated run with `bug` injected; its JSON report.
fn run_with_bug(bug: &str, seed: u64, extra: &[&str]) -> Value {
    let bin = chorus_testkit::knobs_binary();
    let seed = seed.to_string();
    let mut args = vec!["sim", "--nodes", "7", "--seed", &seed, "--inject-bug", bug, "--json"];
    args.extend_from_slice(extra);
    let out = Command::new(bin).args(&args).output().expect("chorus sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout} {}", String::from_utf8_lossy(&out.stderr)))
}

/// How many violations `checker` reported.
fn fired(report: &Value, checker: &str) -> u64 {
    report["violations_by_checker"][checker].as_u64().unwrap_or(0)
}

/// Runs `seeds` with `bug`, asserting `checker` fired on every one.
fn caught_by(bug: &str, checker: &str, seeds: std::ops::RangeInclusive<u64>, extra: &[&str]) {
    for seed in seeds {
        let report = run_with_bug(bug, seed, extra);
        assert!(report["writes_acked"].as_u64().unwrap_or(0) > 0, "seed {seed}: no write was acknowledged");
        assert!(
            fired(&report, checker) > 0,
            "seed {seed}: {bug} was not caught by {checker}; report: {}",
            report["violations_by_checker"]
        );
    }
}

#[test]
fn a_node_that_marks_pushed_writes_seen_without_merging_them_is_caught() {
    caught_by("skip-merge-on-push", "acked_writes_survive", 1..=3, &[]);
}

#[test]
fn a_node_that_sends_before_its_batch_is_durable_is_caught_by_sent_before_durable() {
    caught_by("release-sends-before-durable", "sent_before_durable", 1..=3, &[]);
}

#[test]
fn a_node_that_acknowledges_before_its_batch_is_durable_is_caught_by_ack_before_durable() {
    caught_by("release-receipts-before-durable", "ack_before_durable", 1..=3, &[]);
}

#[test]
fn a_node_that_forgets_its_own_dots_on_recovery_is_caught_by_dot_reused() {
    // Only a restart can reuse a dot: crashes on.
    caught_by("forget-own-dots-on-recovery", "dot_reused", 1..=3, &["--crashes"]);
}

#[test]
fn a_node_that_accuses_honest_peers_of_forging_dots_is_caught_by_false_alarm() {
    caught_by("accuse-honest-peers", "false_alarm", 1..=3, &[]);
}

#[test]
fn without_a_bug_the_same_runs_report_no_violation() {
    // The control: the knobs binary with no bug injected passes every
    // checker on the same seeds (so the checkers above fired on the bug).
    let bin = chorus_testkit::knobs_binary();
    for seed in 1..=3u64 {
        let out = Command::new(bin)
            .args(["sim", "--nodes", "7", "--seed", &seed.to_string(), "--crashes", "--json"])
            .output()
            .expect("chorus sim runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON report");
        assert_eq!(report["violations"], Value::Array(vec![]), "seed {seed}");
    }
}
