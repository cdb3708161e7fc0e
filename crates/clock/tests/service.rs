//! Behaviour of one node's clock service, fed hand-made exchanges.

use chorus_clock::{ClockConfig, ClockService, PeerKey, ProbeTimestamps, SampleError, SampleOutcome, SelectionRegime};

const START_US: u64 = 1_700_000_000_000_000;

/// An exchange sent at our time `t1_us` to a peer whose clock is
/// `offset_us` ahead, with the given one-way delays and processing time.
fn exchange(t1_us: u64, offset_us: i64, forward_us: u64, back_us: u64, processing_us: u64) -> ProbeTimestamps {
    let t2_us = (t1_us + forward_us).checked_add_signed(offset_us).unwrap();
    let t3_us = t2_us + processing_us;
    let t4_us = t1_us + forward_us + processing_us + back_us;
    ProbeTimestamps { t1_us, t2_us, t3_us, t4_us }
}

fn service() -> ClockService {
    ClockService::new(ClockConfig::default()).unwrap()
}

/// Feeds `peers` (offset µs, drift ppm) one symmetric exchange per second for
/// `secs` seconds; returns our local time after the last one.
fn feed(service: &mut ClockService, peers: &[(i64, f64)], secs: u64) -> u64 {
    let mut now = START_US;
    for second in 0..secs {
        now = START_US + second * 1_000_000;
        for (index, &(offset_us, drift_ppm)) in peers.iter().enumerate() {
            let offset = offset_us + (drift_ppm * second as f64).round() as i64;
            let ts = exchange(now, offset, 300, 300, 50);
            service.handle_sample(PeerKey(index as u64 + 1), 0, ts, ts.t4_us).unwrap();
        }
    }
    now + 1_000
}

#[test]
fn offset_and_delay_follow_the_ntp_formulas() {
    let mut service = service();
    // Asymmetric path: 1 ms out, 3 ms back; peer is 5 ms ahead.
    let ts = exchange(START_US, 5_000, 1_000, 3_000, 200);
    assert_eq!(service.handle_sample(PeerKey(7), 0, ts, ts.t4_us), Ok(SampleOutcome::Accepted));
    let report = service.peer_report(ts.t4_us);
    assert_eq!(report.len(), 1);
    // θ = ((t2−t1)+(t3−t4))/2 = 5 ms + (1 ms − 3 ms)/2: the path asymmetry
    // shows up as half its size.
    assert_eq!(report[0].offset_us, 4_000);
    // δ = (t4−t1)−(t3−t2) = 4200 − 200.
    assert_eq!(report[0].delay_us, 4_000);
    // λ = δ/2 plus 200 ppm over the 2.1 ms since the exchange midpoint.
    assert_eq!(report[0].error_bound_us, 2_000 + 1);
    assert!((report[0].offset_us - 5_000).unsigned_abs() <= report[0].error_bound_us);
}

#[test]
fn the_lowest_delay_sample_in_the_window_wins() {
    let mut service = service();
    let slow = exchange(START_US, 10_000, 30_000, 2_000, 100);
    let fast = exchange(START_US + 1_000_000, 10_000, 400, 300, 100);
    service.handle_sample(PeerKey(1), 0, slow, slow.t4_us).unwrap();
    service.handle_sample(PeerKey(1), 0, fast, fast.t4_us).unwrap();
    let report = &service.peer_report(fast.t4_us)[0];
    assert_eq!(report.delay_us, 700);
    assert_eq!(report.offset_us, 10_050);
}

#[test]
fn samples_from_non_adjacent_tiers_are_rejected_and_counted() {
    let config = ClockConfig { tier: 3, ..ClockConfig::default() };
    let mut service = ClockService::new(config).unwrap();
    let ts = exchange(START_US, 0, 100, 100, 10);
    for (tier, allowed) in [(2u8, true), (3, true), (4, true), (1, false), (5, false), (9, false)] {
        let result = service.handle_sample(PeerKey(u64::from(tier)), tier, ts, ts.t4_us);
        if allowed {
            assert_eq!(result, Ok(SampleOutcome::Accepted), "tier {tier}");
        } else {
            assert_eq!(result, Err(SampleError::TierNotAllowed { local_tier: 3, peer_tier: tier }));
        }
    }
    let counters = service.counters();
    assert_eq!(counters.samples_rejected_tier, 3);
    assert_eq!(counters.samples_accepted, 3);
    assert_eq!(service.peer_report(ts.t4_us).len(), 3);
}

#[test]
fn malformed_exchanges_are_rejected_without_changing_state() {
    let mut service = service();
    let good = exchange(START_US, 0, 100, 100, 10);
    let cases = [
        (ProbeTimestamps { t4_us: good.t1_us - 1, ..good }, "ReplyBeforeRequest"),
        (ProbeTimestamps { t3_us: good.t2_us - 1, ..good }, "PeerRepliedBeforeReceiving"),
        (ProbeTimestamps { t3_us: good.t2_us + 10_000, ..good }, "NegativeDelay"),
        (exchange(START_US, 0, 1_500_000, 1_500_000, 0), "DelayTooLarge"),
        (ProbeTimestamps { t1_us: u64::MAX, ..good }, "TimestampOutOfRange"),
    ];
    for (ts, name) in cases {
        let error = service.handle_sample(PeerKey(1), 0, ts, ts.t4_us.max(good.t4_us)).unwrap_err();
        assert!(format!("{error:?}").starts_with(name), "{error:?} is not {name}");
    }
    let error = service.handle_sample(PeerKey(1), 0, good, good.t4_us - 1).unwrap_err();
    assert!(matches!(error, SampleError::ReceivedAfterNow { .. }));
    assert_eq!(service.counters().samples_rejected_invalid, 6);
    assert!(service.peer_report(good.t4_us).is_empty());
}

#[test]
fn the_number_of_tracked_peers_is_bounded() {
    let config = ClockConfig { peers_max: 2, ..ClockConfig::default() };
    let mut service = ClockService::new(config).unwrap();
    let ts = exchange(START_US, 0, 100, 100, 10);
    service.handle_sample(PeerKey(1), 0, ts, ts.t4_us).unwrap();
    service.handle_sample(PeerKey(2), 0, ts, ts.t4_us).unwrap();
    assert_eq!(service.handle_sample(PeerKey(3), 0, ts, ts.t4_us), Err(SampleError::PeerLimitReached { peers_max: 2 }));
    // Known peers still update.
    service.handle_sample(PeerKey(1), 0, ts, ts.t4_us).unwrap();
    service.forget_peer(PeerKey(2));
    service.handle_sample(PeerKey(3), 0, ts, ts.t4_us).unwrap();
    assert_eq!(service.counters().samples_rejected_peer_limit, 1);
}

#[test]
fn a_node_beyond_max_offset_is_unsafe_and_the_reason_names_the_offset() {
    let mut service = service();
    // Every peer is 800 ms ahead of us: our clock is 800 ms behind.
    let now = feed(&mut service, &[(800_000, 0.0), (800_100, 0.0), (799_900, 0.0), (800_000, 0.0)], 5);
    let estimate = service.poll_estimate(now);
    assert!(estimate.local_clock_falseticker);
    let status = service.status(now);
    assert!(!status.safe, "{status:?}");
    assert!((799_000..=801_000).contains(&status.offset_us), "{status:?}");
    assert!(status.reason.contains(&status.offset_us.to_string()), "{}", status.reason);
    assert!(status.reason.contains("max_offset_ms = 500"), "{}", status.reason);
    assert_eq!(status.peers_used, 4);
}

#[test]
fn a_node_within_max_offset_is_safe() {
    let mut service = service();
    let now = feed(&mut service, &[(300_000, 0.0), (300_100, 0.0), (299_900, 0.0)], 5);
    let status = service.status(now);
    assert!(status.safe, "{status:?}");
    assert!((299_000..=301_000).contains(&status.offset_us), "{status:?}");
    assert_eq!(status.offset_max_us, 500_000);
}

#[test]
fn a_node_without_peer_samples_says_its_clock_is_unchecked() {
    let status = service().status(START_US);
    assert_eq!(status.peers_used, 0);
    assert!(status.reason.contains("unchecked"));
}

#[test]
fn a_lone_liar_among_four_is_a_falseticker_and_does_not_move_cluster_time() {
    let mut service = service();
    let now = feed(&mut service, &[(100, 0.0), (-100, 0.0), (10_000_000, 0.0)], 5);
    let estimate = service.poll_estimate(now);
    assert_eq!(estimate.clocks_considered, 4);
    assert_eq!(estimate.faults_tolerated, 1);
    assert_eq!(estimate.falsetickers, vec![PeerKey(3)]);
    assert!(estimate.offset_us.abs() <= 400, "{estimate:?}");
    let flagged: Vec<bool> = service.peer_report(now).iter().map(|r| r.falseticker).collect();
    assert_eq!(flagged, vec![false, false, true]);
}

#[test]
fn drift_is_measured_predicted_and_alarmed_beyond_tolerance() {
    let mut service = service();
    // Peers 1 and 2 run 50 ppm and 2 ppm fast relative to us.
    let now = feed(&mut service, &[(0, 50.0), (0, 2.0)], 120);
    let reports = service.peer_report(now);
    let fast = reports[0].drift_ppm.unwrap();
    assert!((fast - 50.0).abs() < 0.05, "{fast}");
    let prediction = reports[0].offset_predicted_60s_us - reports[0].offset_us;
    assert!((2_990..=3_010).contains(&prediction), "{prediction}");
    assert!(reports[0].drift_exceeds_tolerance);
    let estimate = service.poll_estimate(now);
    // Our frequency vs the cluster: minus the median of {0, 2, 50} = −2 ppm.
    let ours = estimate.drift_ppm.unwrap();
    assert!((ours + 2.0).abs() < 0.05, "{ours}");
    assert!(estimate.drift_alarm);
}

#[test]
fn drift_below_tolerance_raises_no_alarm() {
    let mut service = service();
    let now = feed(&mut service, &[(0, 0.1), (0, -0.1), (0, 0.2)], 120);
    let estimate = service.poll_estimate(now);
    assert!(!estimate.drift_alarm, "{estimate:?}");
    assert!(service.peer_report(now).iter().all(|r| !r.drift_exceeds_tolerance));
}

#[test]
fn a_single_spike_is_held_and_a_persistent_step_resets_the_peer() {
    let mut service = service();
    let mut now = START_US;
    for second in 0..10 {
        now = START_US + second * 1_000_000;
        let ts = exchange(now, 1_000, 300, 300, 10);
        service.handle_sample(PeerKey(1), 0, ts, ts.t4_us).unwrap();
    }
    let spike = exchange(now + 1_000_000, 3_000_000, 300, 300, 10);
    assert_eq!(
        service.handle_sample(PeerKey(1), 0, spike, spike.t4_us),
        Ok(SampleOutcome::HeldAsSpike { consecutive: 1 })
    );
    assert_eq!(service.peer_report(spike.t4_us)[0].offset_us, 1_000);
    let mut outcome = None;
    for k in 2..=3u64 {
        let step = exchange(now + k * 1_000_000, 3_000_000, 300, 300, 10);
        outcome = Some(service.handle_sample(PeerKey(1), 0, step, step.t4_us).unwrap());
    }
    assert_eq!(outcome, Some(SampleOutcome::PeerHistoryReset));
    assert_eq!(service.peer_report(now + 3_001_000)[0].offset_us, 3_000_000);
    assert_eq!(service.counters().peer_history_resets, 1);
}

#[test]
fn poll_estimate_sets_the_correction_target_and_the_corrected_clock_slews() {
    let mut service = service();
    let now = feed(&mut service, &[(20_000, 0.0), (20_000, 0.0), (20_000, 0.0)], 3);
    let estimate = service.poll_estimate(now);
    assert_eq!(estimate.regime, SelectionRegime::Intersection);
    let first = service.corrected_now_us(now);
    assert_eq!(first, now);
    // Our own interval misses the peers' region, so the target is their
    // 20 ms; 10 s later at 500 ppm the correction has covered 5 ms of it.
    assert!(estimate.local_clock_excluded);
    assert!(!estimate.local_clock_falseticker);
    assert!((19_000..=21_000).contains(&estimate.offset_us), "{estimate:?}");
    let later = service.corrected_now_us(now + 10_000_000);
    assert_eq!(later - (now + 10_000_000), 5_000);
    let report = service.correction_report();
    assert_eq!(report.target_us, estimate.offset_us);
    assert!((report.rate_ppm - 500.0).abs() < 1e-6);
    let status = service.status(now + 10_000_000);
    assert_eq!(status.corrected_offset_us, estimate.offset_us - 5_000);
}

#[test]
fn invalid_configuration_is_refused() {
    for config in [
        ClockConfig { tier: 9, ..ClockConfig::default() },
        ClockConfig { slew_rate_max_ppm: 0, ..ClockConfig::default() },
        ClockConfig { drift_tolerance_ppm: f64::NAN, ..ClockConfig::default() },
        ClockConfig { peers_max: 0, ..ClockConfig::default() },
    ] {
        assert!(ClockService::new(config).is_err());
    }
}
