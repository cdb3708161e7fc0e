//! Time for the daemon: the only place the OS clock is read (the core takes
//! time as an argument: `docs/ARCHITECTURE.md`, "Architecture invariants"),
//! and the home of the node's clock service.
//!
//! Two clocks exist and must not be confused:
//!
//! * the **raw OS clock** ([`SystemClock`], or whatever [`Clock`] the caller
//!   of `chorus_daemon::start` passes in). Clock probes are stamped with it
//!   (t1..t4), because the clock service measures the OS clock; stamping
//!   with the corrected clock would bend its drift regression;
//! * the **corrected clock** ([`ClockHandle`] as a [`Clock`]): the OS clock
//!   plus the clock service's slewed correction, monotone across calls and
//!   restarts. This is the physical time the HLC (the core) receives.
//!
//! See `docs/design/clock.md` ("Daemon integration").

use chorus_clock::{
    ClockConfig, ClockCounters, ClockService, ClockStatus, ClusterTimeEstimate, ConfigError, CorrectionReport,
    PeerClockReport, PeerKey, ProbeTimestamps, SampleError, SampleOutcome,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Physical time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> u64;
}

/// The OS real-time clock. Builds with the `test-knobs` feature can shift
/// it ([`SystemClock::from_env`]), as if the machine's clock were wrong.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    offset_us: i64,
}

impl SystemClock {
    /// The OS clock, unshifted.
    pub fn os() -> Self {
        SystemClock { offset_us: 0 }
    }

    /// The OS clock shifted by the test knob `CHORUS_TEST_CLOCK_OFFSET_MS`
    /// (see `crate::knobs`); only builds with the `test-knobs` feature have it.
    #[cfg(feature = "test-knobs")]
    pub fn from_env() -> Self {
        SystemClock { offset_us: crate::knobs::clock_offset_us_from_env() }
    }

    /// The shift applied by the test knob, µs (0 in production).
    pub fn test_offset_us(&self) -> i64 {
        self.offset_us
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        // A clock before 1970 reads as the epoch; the HLC then keeps
        // issuing increasing timestamps from its high-water mark.
        let os = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        os.saturating_add_signed(self.offset_us)
    }
}

/// Everything the metrics and `/v1/status` show about the clock, taken at
/// one instant.
#[derive(Clone, Debug)]
pub struct ClockSnapshot {
    /// The status cached by the last [`ClockHandle::refresh`].
    pub status: ClockStatus,
    /// The last cluster-time estimate (drift, falsetickers, regime).
    pub estimate: Option<ClusterTimeEstimate>,
    pub peers: Vec<PeerClockReport>,
    pub correction: CorrectionReport,
    pub counters: ClockCounters,
}

/// The node's clock service behind a lock, with its raw OS clock source.
///
/// As a [`Clock`], it returns the corrected time (for the HLC). The lock is
/// held for microseconds (no I/O inside `ClockService`); the write path
/// reads only the cached `safe` flag, so it never waits for a selection.
pub struct ClockHandle {
    os: Arc<dyn Clock>,
    service: Mutex<ClockService>,
    status: RwLock<ClockStatus>,
    safe: AtomicBool,
}

impl ClockHandle {
    /// A clock service for a node with this tier and `offset_max_ms`,
    /// reading the OS clock through `os`.
    pub fn new(os: Arc<dyn Clock>, config: ClockConfig) -> Result<Self, ConfigError> {
        let service = ClockService::new(config)?;
        let status = service.status(os.now_us());
        Ok(ClockHandle {
            os,
            safe: AtomicBool::new(status.safe),
            service: Mutex::new(service),
            status: RwLock::new(status),
        })
    }

    fn service(&self) -> MutexGuard<'_, ClockService> {
        // ClockService has no invariants a panicking caller could break
        // half-way (every method validates before it mutates).
        self.service.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The raw OS clock (µs): what probes are stamped with.
    pub fn os_now_us(&self) -> u64 {
        self.os.now_us()
    }

    /// Restores the corrected clock's floor (the HLC's persisted
    /// high-water mark) so corrected time never goes back across restarts.
    pub fn set_floor_us(&self, floor_us: u64) {
        self.service().set_corrected_floor_us(floor_us);
    }

    /// Feeds one completed probe exchange.
    pub fn sample(&self, peer: PeerKey, peer_tier: u8, ts: ProbeTimestamps) -> Result<SampleOutcome, SampleError> {
        let now = self.os.now_us();
        self.service().handle_sample(peer, peer_tier, ts, now)
    }

    /// Drops a peer that left the membership.
    pub fn forget(&self, peer: PeerKey) {
        self.service().forget_peer(peer);
    }

    /// One probe round is over: run selection (sets the correction's
    /// target and the falsetickers) and cache the safety status.
    pub fn refresh(&self) -> ClockStatus {
        let now = self.os.now_us();
        let status = {
            let mut service = self.service();
            service.poll_estimate(now);
            service.status(now)
        };
        self.safe.store(status.safe, Ordering::Release);
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = status.clone();
        status
    }

    /// Whether the last refresh found the local clock fit for writes.
    pub fn is_safe(&self) -> bool {
        self.safe.load(Ordering::Acquire)
    }

    /// The status cached by the last refresh.
    pub fn status(&self) -> ClockStatus {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Per-peer reports at the current OS time.
    pub fn peer_reports(&self) -> Vec<PeerClockReport> {
        let now = self.os.now_us();
        self.service().peer_report(now)
    }

    pub fn snapshot(&self) -> ClockSnapshot {
        let now = self.os.now_us();
        let service = self.service();
        ClockSnapshot {
            status: self.status(),
            estimate: service.last_estimate().cloned(),
            peers: service.peer_report(now),
            correction: service.correction_report(),
            counters: service.counters(),
        }
    }
}

impl Clock for ClockHandle {
    /// Corrected physical time for the HLC (monotone).
    fn now_us(&self) -> u64 {
        let os = self.os.now_us();
        self.service().corrected_now_us(os)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct FakeOs(AtomicU64);
    impl Clock for FakeOs {
        fn now_us(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_corrected_clock_never_goes_back_even_when_the_os_clock_does() {
        let os = Arc::new(FakeOs(AtomicU64::new(1_000_000_000)));
        let clock = ClockHandle::new(os.clone(), ClockConfig::default()).unwrap();
        let a = clock.now_us();
        os.0.store(900_000_000, Ordering::SeqCst);
        let b = clock.now_us();
        assert!(b >= a, "{b} < {a}");
    }

    #[test]
    fn the_floor_from_the_hlc_high_water_mark_holds_the_corrected_clock() {
        let os = Arc::new(FakeOs(AtomicU64::new(1_000_000_000)));
        let clock = ClockHandle::new(os, ClockConfig::default()).unwrap();
        clock.set_floor_us(2_000_000_000);
        assert!(clock.now_us() >= 2_000_000_000);
    }

    #[test]
    fn a_node_without_samples_is_safe_but_unchecked() {
        let os = Arc::new(FakeOs(AtomicU64::new(1_000_000_000)));
        let clock = ClockHandle::new(os, ClockConfig::default()).unwrap();
        let status = clock.refresh();
        assert!(status.safe && clock.is_safe());
        assert_eq!(status.peers_used, 0);
        assert!(status.reason.contains("unchecked"), "{}", status.reason);
    }

    #[test]
    fn samples_two_seconds_off_make_the_clock_unsafe_and_the_reason_names_the_offset() {
        let os = Arc::new(FakeOs(AtomicU64::new(1_000_000_000)));
        let clock = ClockHandle::new(os.clone(), ClockConfig::default()).unwrap();
        for (i, peer) in [PeerKey(1), PeerKey(2), PeerKey(3)].into_iter().enumerate() {
            let t1 = 1_000_000_000 + i as u64 * 1000;
            let ts = ProbeTimestamps { t1_us: t1, t2_us: t1 + 2_000_100, t3_us: t1 + 2_000_150, t4_us: t1 + 300 };
            os.0.store(t1 + 300, Ordering::SeqCst);
            clock.sample(peer, 0, ts).unwrap();
        }
        let status = clock.refresh();
        assert!(!status.safe && !clock.is_safe());
        assert!(status.reason.contains("max_offset_ms"), "{}", status.reason);
    }
}
