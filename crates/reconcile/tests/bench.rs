//! The benchmark function used by `chorus bench anti-entropy --json`.

use chorus_reconcile::bench_compare;

#[test]
fn bench_report_serialises_with_the_documented_field_names() {
    let report = bench_compare(2_000, 30, 9);
    let json = serde_json::to_value(&report).unwrap();
    let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["bytes", "cpu_ms", "d", "diff_bytes", "full_state_bytes", "n", "negentropy_bytes", "round_trips"]
    );
    assert_eq!((report.n, report.d), (2_000, 30));
}

#[test]
fn the_protocol_beats_negentropy_and_full_state_on_the_same_sets() {
    let report = bench_compare(5_000, 50, 10);
    assert!(report.bytes < report.negentropy_bytes, "{report:?}");
    assert!(report.bytes < report.diff_bytes, "{report:?}");
    assert!(report.diff_bytes < report.full_state_bytes / 10, "{report:?}");
    // Total anti-entropy traffic within the target 1.5 × diff_bytes + 64 KiB.
    assert!(report.bytes + report.diff_bytes <= report.diff_bytes * 3 / 2 + 64 * 1024);
    assert!(report.round_trips >= 2);
}

#[test]
fn a_benchmark_without_differences_finishes_in_one_round_trip() {
    let report = bench_compare(1_000, 0, 11);
    assert_eq!((report.round_trips, report.diff_bytes), (1, 0));
    assert!(report.bytes < 64, "{report:?}");
}
