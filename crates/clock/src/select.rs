//! Cluster-time selection: which clocks to believe and where cluster time is.
//!
//! Two regimes, tried in order:
//!
//! 1. **Intersection** (Marzullo's algorithm, as in NTP's selection): for the
//!    smallest f ≤ f_max, find the lowest and highest points covered by at
//!    least n−f intervals. If such a region exists, intervals that do not
//!    touch it are excluded (NTP's falsetickers), and the estimate is the
//!    unweighted mean of the rest (NTP's combine step weights them; see
//!    `combine` for why chorus does not), clamped into the region. Every
//!    point of the region lies in at least n−2f ≥ 1 correct interval.
//! 2. **Fault-tolerant average** (Lundelius Welch and Lynch's averaging, as
//!    in approximate agreement): when the correct clocks are further apart
//!    than their error bounds (normal for free-running OS clocks on a fast
//!    LAN) no majority region exists.
//!    Sort the offsets, drop the f_max lowest and f_max highest, and average
//!    the rest; with at most f_max faulty clocks every kept offset lies
//!    between two correct ones.
//!
//! In both regimes a clock is **flagged as a falseticker** when its interval
//! lies further than the caller's `falseticker_distance_us` (max_offset) from
//! the estimate: by the rule chorus applies to itself it would be unsafe. An
//! honest clock that merely misses the intersection region by a few
//! milliseconds is excluded from the combine but not flagged, so the alarm
//! means "this clock is wrong", not "this clock is not perfectly in step".
//!
//! f_max = ⌊(n−1)/3⌋: the 3f+1 bound tolerates two-faced clocks, which report
//! different times to different peers.
//!
//! The design is `docs/design/clock.md`, "Cluster time (selection)"; the NTP
//! specification and the papers behind both regimes are in its "References".

/// One clock's belief about cluster time, relative to our OS clock (µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockInterval {
    /// Best estimate of (that clock − our OS clock).
    pub offset_us: i64,
    /// Half-width λ of the interval; the true offset is within
    /// [offset_us − error_us, offset_us + error_us].
    pub error_us: u64,
}

impl ClockInterval {
    fn low_us(&self) -> i64 {
        self.offset_us.saturating_sub(self.error_us as i64)
    }
    fn high_us(&self) -> i64 {
        self.offset_us.saturating_add(self.error_us as i64)
    }
    fn distance_from(&self, point_us: i64) -> i64 {
        if point_us < self.low_us() {
            self.low_us().saturating_sub(point_us)
        } else if point_us > self.high_us() {
            point_us.saturating_sub(self.high_us())
        } else {
            0
        }
    }
}

/// Which rule produced an estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectionRegime {
    /// Only our own clock was available.
    LocalOnly,
    /// A region covered by at least n−f intervals exists (Marzullo's
    /// intersection).
    Intersection,
    /// Correct clocks disagree beyond their bounds; fault-tolerant average.
    FaultTolerantAverage,
}

/// Result of [`select_cluster_time`].
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Estimated (cluster time − our OS clock), µs.
    pub offset_us: i64,
    /// Region the estimate was confined to.
    pub low_us: i64,
    pub high_us: i64,
    pub regime: SelectionRegime,
    /// Faulty clocks the selection tolerates: ⌊(n−1)/3⌋.
    pub faults_tolerated: usize,
    /// Flagged falsetickers (further than `falseticker_distance_us` from the
    /// estimate), index-aligned with the input intervals.
    pub falseticker: Vec<bool>,
    /// Left out of the combine step (a superset of `falseticker`).
    pub excluded: Vec<bool>,
}

/// Selects cluster time from `intervals` (index 0 is conventionally our own
/// clock). Returns `None` for an empty input.
pub fn select_cluster_time(intervals: &[ClockInterval], falseticker_distance_us: i64) -> Option<Selection> {
    let n = intervals.len();
    if n == 0 {
        return None;
    }
    let faults_tolerated = (n - 1) / 3;
    if n == 1 {
        let only = intervals[0];
        return Some(Selection {
            offset_us: only.offset_us,
            low_us: only.low_us(),
            high_us: only.high_us(),
            regime: SelectionRegime::LocalOnly,
            faults_tolerated,
            falseticker: vec![false],
            excluded: vec![false],
        });
    }
    for faults in 0..=faults_tolerated {
        if let Some((low, high)) = majority_region(intervals, n - faults) {
            return Some(combine(intervals, low, high, faults_tolerated, falseticker_distance_us));
        }
    }
    Some(fault_tolerant_average(intervals, faults_tolerated, falseticker_distance_us))
}

/// Lowest and highest points covered by at least `needed` intervals, if the
/// lowest is not above the highest (the endpoint sweep of NTP's selection
/// algorithm).
fn majority_region(intervals: &[ClockInterval], needed: usize) -> Option<(i64, i64)> {
    // (value, kind): at equal values, lower ends (kind 0) sort before upper
    // ends (kind 1) because intervals are closed.
    let mut ascending: Vec<(i64, u8)> = Vec::with_capacity(intervals.len() * 2);
    for interval in intervals {
        ascending.push((interval.low_us(), 0));
        ascending.push((interval.high_us(), 1));
    }
    ascending.sort_unstable();
    let mut count = 0usize;
    let mut low = None;
    for &(value, kind) in &ascending {
        if kind == 0 {
            count += 1;
            if count >= needed {
                low = Some(value);
                break;
            }
        } else {
            count -= 1;
        }
    }
    // Descending sweep: upper ends first at equal values.
    let mut descending: Vec<(i64, u8)> = ascending.iter().map(|&(value, kind)| (value, 1 - kind)).collect();
    descending.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    count = 0;
    let mut high = None;
    for &(value, kind) in &descending {
        // kind 0 here is an upper end (flipped above).
        if kind == 0 {
            count += 1;
            if count >= needed {
                high = Some(value);
                break;
            }
        } else {
            count -= 1;
        }
    }
    match (low, high) {
        (Some(low), Some(high)) if low <= high => Some((low, high)),
        _ => None,
    }
}

fn combine(
    intervals: &[ClockInterval],
    low: i64,
    high: i64,
    faults_tolerated: usize,
    falseticker_distance_us: i64,
) -> Selection {
    let excluded: Vec<bool> =
        intervals.iter().map(|interval| interval.high_us() < low || interval.low_us() > high).collect();
    // Each truechimer counts once. NTP's combine step weights by 1/root
    // distance to track the best reference; chorus wants every node to
    // compute the same virtual cluster clock, and an unweighted mean over
    // (nearly) the same set of clocks agrees across nodes up to measurement
    // error, whereas each node's own zero-width interval would dominate a
    // weighted mean.
    let (sum, count) = intervals
        .iter()
        .zip(&excluded)
        .filter(|&(_, &is_excluded)| !is_excluded)
        .fold((0i128, 0i128), |(sum, count), (interval, _)| (sum + i128::from(interval.offset_us), count + 1));
    let mean = if count > 0 { (sum / count) as i64 } else { midpoint(low, high) };
    let offset_us = mean.clamp(low, high);
    let falseticker =
        intervals.iter().map(|interval| interval.distance_from(offset_us) > falseticker_distance_us).collect();
    Selection {
        offset_us,
        low_us: low,
        high_us: high,
        regime: SelectionRegime::Intersection,
        faults_tolerated,
        falseticker,
        excluded,
    }
}

fn midpoint(a: i64, b: i64) -> i64 {
    ((i128::from(a) + i128::from(b)) / 2) as i64
}

/// Fault-tolerant average: drop the `faults_tolerated` lowest and highest
/// offsets and average the rest. Each kept offset lies between the
/// (f+1)-th smallest and (f+1)-th largest, and both of those lie within the
/// correct clocks' offsets whenever at most f clocks are faulty.
///
/// A second pass drops the clocks found further than
/// `falseticker_distance_us` from the first average and trims f again from
/// each end of what is left (if at least 2f+1 remain). The guarantee holds
/// for any removed set, since at most f faulty clocks remain and f are
/// trimmed from each end; but when the removed clocks are the liars, every
/// correct node now averages the same correct clocks, so their estimates
/// agree up to measurement error instead of depending on which side a
/// two-faced clock lied to each of them.
fn fault_tolerant_average(
    intervals: &[ClockInterval],
    faults_tolerated: usize,
    falseticker_distance_us: i64,
) -> Selection {
    let offsets: Vec<i64> = intervals.iter().map(|interval| interval.offset_us).collect();
    let (first, _, _) = trimmed_mean(offsets.clone(), faults_tolerated);
    let falseticker: Vec<bool> =
        intervals.iter().map(|interval| interval.distance_from(first) > falseticker_distance_us).collect();
    let remaining: Vec<i64> =
        offsets.iter().zip(&falseticker).filter(|&(_, &is_false)| !is_false).map(|(&offset, _)| offset).collect();
    let (average, low_us, high_us) = if remaining.len() > 2 * faults_tolerated {
        trimmed_mean(remaining, faults_tolerated)
    } else {
        trimmed_mean(offsets, faults_tolerated)
    };
    Selection {
        offset_us: average,
        low_us,
        high_us,
        regime: SelectionRegime::FaultTolerantAverage,
        faults_tolerated,
        excluded: falseticker.clone(),
        falseticker,
    }
}

/// Mean of `values` without the `trim` lowest and `trim` highest, with the
/// lowest and highest kept value. Requires `values.len() > 2 * trim`.
fn trimmed_mean(mut values: Vec<i64>, trim: usize) -> (i64, i64, i64) {
    assert!(values.len() > 2 * trim, "trimmed mean of {} values trimming {trim}", values.len());
    values.sort_unstable();
    let kept = &values[trim..values.len() - trim];
    let sum: i128 = kept.iter().map(|&value| i128::from(value)).sum();
    ((sum / kept.len() as i128) as i64, kept[0], kept[kept.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(offset_us: i64, error_us: u64) -> ClockInterval {
        ClockInterval { offset_us, error_us }
    }

    #[test]
    fn overlapping_intervals_intersect_and_a_far_clock_is_a_falseticker() {
        let intervals = [iv(0, 100), iv(50, 100), iv(-30, 100), iv(10_000_000, 100)];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert_eq!(selection.regime, SelectionRegime::Intersection);
        assert_eq!(selection.falseticker, vec![false, false, false, true]);
        assert_eq!(selection.excluded, selection.falseticker);
        assert!((-50..=100).contains(&selection.offset_us), "{selection:?}");
        assert_eq!((selection.low_us, selection.high_us), (-50, 70));
    }

    #[test]
    fn disjoint_correct_clocks_use_the_trimmed_average_inside_their_range() {
        // Correct clocks at 0, 1 ms, 2 ms, 3 ms, 4 ms with tiny bounds; liars
        // at +10 s and −3 s. n = 7, f = 2.
        let intervals = [
            iv(0, 10),
            iv(1_000, 10),
            iv(2_000, 10),
            iv(3_000, 10),
            iv(4_000, 10),
            iv(10_000_000, 10),
            iv(-3_000_000, 10),
        ];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert_eq!(selection.regime, SelectionRegime::FaultTolerantAverage);
        // First pass keeps 0, 1 ms, 2 ms; the liars are beyond max_offset,
        // so the second pass keeps the median of the five correct clocks.
        assert_eq!(selection.offset_us, 2_000);
        assert_eq!(selection.falseticker, vec![false, false, false, false, false, true, true]);
    }

    #[test]
    fn two_liars_on_the_same_side_cannot_drag_the_estimate_out_of_range() {
        let intervals = [
            iv(0, 10),
            iv(1_000, 10),
            iv(2_000, 10),
            iv(3_000, 10),
            iv(4_000, 10),
            iv(10_000_000, 10),
            iv(9_000_000, 10),
        ];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert!((-10..=4_010).contains(&selection.offset_us), "{selection:?}");
        assert!(selection.falseticker[5] && selection.falseticker[6]);
        assert!(!selection.falseticker[..5].iter().any(|&f| f));
    }

    #[test]
    fn an_honest_clock_missing_the_region_is_excluded_but_not_flagged() {
        let intervals = [iv(0, 100), iv(50, 100), iv(-30, 100), iv(5_000, 100)];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert_eq!(selection.regime, SelectionRegime::Intersection);
        assert_eq!(selection.excluded, vec![false, false, false, true]);
        assert_eq!(selection.falseticker, vec![false; 4]);
        assert!((-50..=70).contains(&selection.offset_us), "{selection:?}");
    }

    #[test]
    fn a_mean_would_be_dragged_but_the_selection_is_not() {
        // Guard against a plain average: it would land near 1.43 s here.
        let intervals = [iv(0, 100), iv(0, 100), iv(0, 100), iv(10_000_000, 100)];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert!(selection.offset_us.abs() <= 100);
    }

    #[test]
    fn a_single_clock_is_local_only_and_empty_input_has_no_estimate() {
        let selection = select_cluster_time(&[iv(0, 0)], 1).unwrap();
        assert_eq!(selection.regime, SelectionRegime::LocalOnly);
        assert_eq!(selection.offset_us, 0);
        assert!(select_cluster_time(&[], 1).is_none());
    }

    #[test]
    fn combine_counts_each_truechimer_once_and_stays_in_the_region() {
        // A zero-width local interval must not dominate the estimate.
        let intervals = [iv(0, 0), iv(600, 1_000), iv(900, 1_000)];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert_eq!(selection.regime, SelectionRegime::Intersection);
        // Region is [0, 0] here (all three cover only 0): the mean 500 is
        // clamped to it.
        assert_eq!((selection.low_us, selection.high_us, selection.offset_us), (0, 0, 0));
        let intervals = [iv(0, 1_000), iv(600, 1_000), iv(900, 1_000)];
        let selection = select_cluster_time(&intervals, 500_000).unwrap();
        assert_eq!(selection.offset_us, 500);
    }
}
