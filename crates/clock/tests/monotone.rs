//! Property tests: the corrected clock never goes backwards and never slews
//! faster than configured, whatever the OS clock and the estimates do.

use chorus_clock::{ClockConfig, ClockService, PeerKey, ProbeTimestamps, SlewedCorrection};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Move the OS clock by this many µs (negative: a backward step).
    Os(i64),
    Target(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-5_000_000i64..5_000_000).prop_map(Op::Os),
        1 => (-2_000_000_000i64..2_000_000_000).prop_map(Op::Target),
    ]
}

proptest! {
    #[test]
    fn corrected_clock_is_monotone_and_slew_is_bounded(
        ops in proptest::collection::vec(op(), 1..200),
        slew_ppm in 1u32..5_000,
    ) {
        let mut correction = SlewedCorrection::new(slew_ppm);
        let mut os: u64 = 1_700_000_000_000_000;
        let mut high_water = os;
        let mut last_output = correction.corrected_now_us(os);
        let mut last_correction = correction.report().correction_us;
        for op in ops {
            match op {
                Op::Target(target) => correction.set_target_us(target),
                Op::Os(delta) => {
                    os = os.checked_add_signed(delta).unwrap();
                    let output = correction.corrected_now_us(os);
                    prop_assert!(output >= last_output, "went back from {} to {}", last_output, output);
                    let gained = os.saturating_sub(high_water);
                    high_water = high_water.max(os);
                    let moved = correction.report().correction_us.abs_diff(last_correction);
                    // Budget may carry a fraction of a µs from earlier calls.
                    let budget = (u128::from(gained) * u128::from(slew_ppm)).div_ceil(1_000_000) as u64 + 1;
                    prop_assert!(moved <= budget, "moved {} with budget {}", moved, budget);
                    last_correction = correction.report().correction_us;
                    last_output = output;
                }
            }
        }
    }

    #[test]
    fn service_corrected_clock_is_monotone_under_jumping_estimates_and_os_steps(
        steps in proptest::collection::vec((-3_000_000i64..3_000_000, -900_000i64..900_000), 1..80),
    ) {
        let mut service = ClockService::new(ClockConfig::default()).unwrap();
        let mut os: u64 = 1_700_000_000_000_000;
        let mut last_output = 0u64;
        for (index, (os_delta, peer_offset)) in steps.into_iter().enumerate() {
            os = os.checked_add_signed(os_delta).unwrap();
            let t1 = os.saturating_sub(1_000);
            let t2 = t1.checked_add_signed(peer_offset + 400).unwrap();
            let ts = ProbeTimestamps { t1_us: t1, t2_us: t2, t3_us: t2 + 100, t4_us: os };
            // Some samples are rejected (e.g. after a step); that is fine here.
            let _ = service.handle_sample(PeerKey((index % 3) as u64), 0, ts, os);
            service.poll_estimate(os);
            let output = service.corrected_now_us(os);
            prop_assert!(output >= last_output);
            last_output = output;
        }
    }
}
