//! Acceptance runs of the seeded clock scenario (virtual time; fast in debug).

use chorus_clock::{ClockScenarioParams, ClockScenarioReport, run_clock_scenario};

fn assert_invariants(report: &ClockScenarioReport) {
    assert_eq!(report.offset_bound_violations, 0, "{report:#?}");
    assert!(report.offset_error_max_us <= report.offset_bound_us, "{report:#?}");
    assert_eq!(report.estimate_outside_truechimers, 0, "{report:#?}");
    assert_eq!(report.hlc_backwards, 0, "{report:#?}");
    assert_eq!(report.liars_flagged, report.liars, "{report:#?}");
    assert_eq!(report.correct_peers_flagged, 0, "{report:#?}");
    assert_eq!(report.correct_nodes_unsafe, 0, "{report:#?}");
    assert_eq!(report.samples_rejected, 0, "{report:#?}");
}

#[test]
fn estimated_offsets_stay_within_the_theoretical_bound_on_a_wan() {
    let report = run_clock_scenario(ClockScenarioParams::new(5, 0, 11, 180));
    assert_invariants(&report);
    // The asymmetry term dominates: errors are real but bounded.
    assert!(report.offset_error_p50_us > 0);
    assert!(report.offset_error_p99_us <= report.offset_bound_us);
}

#[test]
fn estimated_offsets_stay_within_the_theoretical_bound_on_a_lan() {
    let mut params = ClockScenarioParams::new(5, 0, 12, 180);
    params.delay_base_min_us = 50;
    params.delay_base_max_us = 400;
    params.jitter_max_us = 300;
    params.processing_max_us = 50;
    let report = run_clock_scenario(params);
    assert_invariants(&report);
    assert!(report.offset_bound_us < 500, "{report:#?}");
}

#[test]
fn drift_is_estimated_within_half_a_ppm_after_ten_minutes() {
    let mut params = ClockScenarioParams::new(4, 0, 21, 600);
    params.drift_max_ppm = 100.0;
    let report = run_clock_scenario(params);
    assert_invariants(&report);
    assert!(report.drift_error_max_ppm < 0.5, "{report:#?}");
}

#[test]
fn seven_nodes_with_two_liars_stay_in_the_correct_range_and_flag_both_liars() {
    let report = run_clock_scenario(ClockScenarioParams::new(7, 2, 7, 300));
    assert_eq!(report.liars, 2);
    assert_invariants(&report);
    // Correct nodes agree on cluster time up to path asymmetry, far from the
    // 10 s and 1–5 s lies.
    assert!(report.cluster_estimate_spread_max_us < 50_000, "{report:#?}");
}

#[test]
fn twenty_seeds_of_the_seven_node_two_liar_scenario_pass() {
    for seed in 100..120 {
        let report = run_clock_scenario(ClockScenarioParams::new(7, 2, seed, 240));
        assert_invariants(&report);
    }
}

#[test]
fn the_scenario_is_deterministic_in_its_seed() {
    let a = run_clock_scenario(ClockScenarioParams::new(5, 1, 3, 90));
    let b = run_clock_scenario(ClockScenarioParams::new(5, 1, 3, 90));
    let c = run_clock_scenario(ClockScenarioParams::new(5, 1, 4, 90));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn tiers_limit_who_probes_whom_in_the_scenario() {
    // Tiers 0,0,0,0,1,1,2: the tier-2 node only talks to tier 1.
    let mut params = ClockScenarioParams::new(7, 0, 5, 120);
    params.tiers = vec![0, 0, 0, 0, 1, 1, 2];
    let report = run_clock_scenario(params);
    assert_invariants(&report);
}

#[test]
fn the_report_serializes_with_the_cli_field_names() {
    let report = run_clock_scenario(ClockScenarioParams::new(4, 1, 1, 30));
    let json = serde_json::to_value(&report).unwrap();
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
        assert!(json.get(field).is_some(), "missing {field}");
    }
}
