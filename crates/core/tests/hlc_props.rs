//! Properties of the hybrid logical clock as chorus uses it (the HLC paper is
//! listed in `docs/design/replication.md`, "References"): physical time is an
//! argument and may jump backwards (NTP steps, a VM restored from a snapshot,
//! a node restarted with its clock set back), yet every timestamp a node
//! issues must exceed every one it issued before, and every one it merged.

use chorus_core::{Hlc, HlcError, NodeId, Timestamp};
use proptest::prelude::*;

const ME: NodeId = NodeId(7);
const OFFSET_MAX_US: u64 = 1_000;

#[derive(Clone, Debug)]
enum Call {
    Now {
        physical_us: u64,
    },
    /// A remote timestamp `remote_offset` µs around `physical_us` (may be
    /// beyond the maximum offset, then it must be refused).
    Update {
        physical_us: u64,
        remote_offset: i64,
        remote_logical: u32,
        remote_node: u64,
    },
}

fn physical() -> impl Strategy<Value = u64> {
    // A small range so that equal and backwards readings are frequent.
    prop_oneof![0u64..50, 1_000_000u64..1_000_050]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        physical().prop_map(|physical_us| Call::Now { physical_us }),
        (physical(), -3_000i64..3_000, prop_oneof![0u32..4, Just(u32::MAX - 1), Just(u32::MAX)], 0u64..10).prop_map(
            |(physical_us, remote_offset, remote_logical, remote_node)| Call::Update {
                physical_us,
                remote_offset,
                remote_logical,
                remote_node
            }
        ),
    ]
}

fn remote_of(physical_us: u64, offset: i64, logical: u32, node: u64) -> Timestamp {
    Timestamp { physical_us: physical_us.saturating_add_signed(offset), logical, node: NodeId(node) }
}

/// Run `calls`, checking every property on each step. Returns the greatest
/// timestamp issued.
fn drive(hlc: &mut Hlc, calls: &[Call], mut last: Option<Timestamp>) -> Result<Option<Timestamp>, TestCaseError> {
    for c in calls {
        let before = hlc.high_water();
        match *c {
            Call::Now { physical_us } => match hlc.now(physical_us) {
                Ok(ts) => {
                    prop_assert_eq!(ts.node, ME);
                    prop_assert!(last.is_none_or(|l| ts > l), "now() {} not above previous {:?}", ts, last);
                    prop_assert!(ts.physical_us >= physical_us, "now() is never behind physical time");
                    prop_assert_eq!(hlc.high_water(), ts);
                    last = Some(ts);
                }
                Err(e) => {
                    prop_assert!(matches!(e, HlcError::LogicalOverflow { .. }), "unexpected {:?}", e);
                    prop_assert_eq!(hlc.high_water(), before, "a refused call leaves the clock alone");
                }
            },
            Call::Update { physical_us, remote_offset, remote_logical, remote_node } => {
                let remote = remote_of(physical_us, remote_offset, remote_logical, remote_node);
                let ahead = remote.physical_us.saturating_sub(physical_us);
                match hlc.update(remote, physical_us) {
                    Ok(ts) => {
                        prop_assert!(ahead <= OFFSET_MAX_US, "accepted a remote {} µs ahead", ahead);
                        prop_assert_eq!(ts.node, ME);
                        prop_assert!(ts > remote, "update() {} not above remote {}", ts, remote);
                        prop_assert!(last.is_none_or(|l| ts > l), "update() {} not above previous {:?}", ts, last);
                        prop_assert!(ts.physical_us >= physical_us);
                        prop_assert_eq!(hlc.high_water(), ts);
                        last = Some(ts);
                    }
                    Err(HlcError::TooFarAhead { remote: r, local_us, ahead_us, offset_max_us }) => {
                        prop_assert!(ahead > OFFSET_MAX_US, "refused a remote only {} µs ahead", ahead);
                        prop_assert_eq!(r, remote);
                        prop_assert_eq!(local_us, physical_us);
                        prop_assert_eq!(ahead_us, ahead);
                        prop_assert_eq!(offset_max_us, OFFSET_MAX_US);
                        prop_assert_eq!(hlc.high_water(), before, "a refused remote leaves the clock alone");
                    }
                    Err(HlcError::LogicalOverflow { .. }) => {
                        prop_assert!(remote_logical >= u32::MAX - 1 || before.logical >= u32::MAX - 1);
                        prop_assert_eq!(hlc.high_water(), before, "a refused remote leaves the clock alone");
                    }
                    Err(e) => prop_assert!(false, "unexpected error {:?}", e),
                }
            }
        }
    }
    Ok(last)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn timestamps_strictly_increase_whatever_physical_time_does(calls in prop::collection::vec(call(), 1..64)) {
        let mut hlc = Hlc::new(ME, OFFSET_MAX_US);
        drive(&mut hlc, &calls, None)?;
    }

    #[test]
    fn a_remote_beyond_the_max_offset_is_refused_and_changes_nothing(
        warmup in prop::collection::vec(call(), 0..16),
        physical_us in physical(),
        excess in 1u64..1_000_000,
        logical in any::<u32>(),
    ) {
        let mut hlc = Hlc::new(ME, OFFSET_MAX_US);
        drive(&mut hlc, &warmup, None)?;
        let before = hlc.high_water();
        let remote = Timestamp { physical_us: physical_us + OFFSET_MAX_US + excess, logical, node: NodeId(1) };
        prop_assert_eq!(hlc.check(remote, physical_us), hlc.update(remote, physical_us).map(|_| ()));
        let refused = matches!(hlc.update(remote, physical_us), Err(HlcError::TooFarAhead { .. }));
        prop_assert!(refused);
        prop_assert_eq!(hlc.high_water(), before);
    }

    /// A restarted node resumes from its persisted high-water mark; its
    /// physical clock may now be far behind (set back, or a new machine).
    #[test]
    fn after_resume_every_timestamp_is_above_the_high_water_mark_even_with_the_clock_set_back(
        before in prop::collection::vec(call(), 1..32),
        setback in 0u64..2_000_000,
        after in prop::collection::vec(call(), 1..32),
    ) {
        let mut hlc = Hlc::new(ME, OFFSET_MAX_US);
        drive(&mut hlc, &before, None)?;
        let high_water = hlc.high_water();
        let mut resumed = Hlc::resume(ME, OFFSET_MAX_US, high_water);
        prop_assert_eq!(resumed.high_water(), high_water);
        let first = resumed.now(high_water.physical_us.saturating_sub(setback));
        if high_water.logical < u32::MAX {
            let first = first.map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert!(first > high_water);
            drive(&mut resumed, &after, Some(first))?;
        }
    }
}

#[test]
fn now_within_one_microsecond_counts_logically_and_resets_when_time_moves() {
    let mut hlc = Hlc::new(ME, OFFSET_MAX_US);
    assert_eq!(hlc.now(10), Ok(Timestamp { physical_us: 10, logical: 0, node: ME }));
    assert_eq!(hlc.now(10), Ok(Timestamp { physical_us: 10, logical: 1, node: ME }));
    assert_eq!(hlc.now(5), Ok(Timestamp { physical_us: 10, logical: 2, node: ME }));
    assert_eq!(hlc.now(11), Ok(Timestamp { physical_us: 11, logical: 0, node: ME }));
}

#[test]
fn a_remote_exactly_at_the_max_offset_is_accepted_and_one_beyond_is_refused() {
    let mut hlc = Hlc::new(ME, OFFSET_MAX_US);
    let at = Timestamp { physical_us: 100 + OFFSET_MAX_US, logical: 3, node: NodeId(1) };
    assert_eq!(hlc.update(at, 100), Ok(Timestamp { physical_us: 100 + OFFSET_MAX_US, logical: 4, node: ME }));
    let beyond = Timestamp { physical_us: 100 + 2 * OFFSET_MAX_US + 1, ..at };
    assert_eq!(
        hlc.update(beyond, 100 + OFFSET_MAX_US),
        Err(HlcError::TooFarAhead {
            remote: beyond,
            local_us: 100 + OFFSET_MAX_US,
            ahead_us: OFFSET_MAX_US + 1,
            offset_max_us: OFFSET_MAX_US
        })
    );
}

#[test]
fn logical_overflow_is_an_error_not_a_wrap() {
    let mut hlc = Hlc::resume(ME, OFFSET_MAX_US, Timestamp { physical_us: 9, logical: u32::MAX, node: ME });
    assert_eq!(hlc.now(9), Err(HlcError::LogicalOverflow { physical_us: 9 }));
    assert_eq!(hlc.high_water().logical, u32::MAX, "the clock is unchanged");
    assert!(hlc.now(10).is_ok(), "time moving on clears the condition");
}
