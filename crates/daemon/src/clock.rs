//! The only place the daemon reads the OS clock (STYLE §4: the core takes
//! time as an argument). Behind a trait so the clock service (issue 6) can
//! hand in corrected time instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Physical time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> u64;
}

/// Environment variable shifting [`SystemClock`] by this many milliseconds
/// (may be negative): lets tests run a node with a skewed clock.
pub const TEST_CLOCK_OFFSET_ENV: &str = "CHORUS_TEST_CLOCK_OFFSET_MS";

/// The OS real-time clock, optionally shifted for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    offset_us: i64,
}

impl SystemClock {
    /// The OS clock shifted by `$CHORUS_TEST_CLOCK_OFFSET_MS` when set.
    pub fn from_env() -> Self {
        let offset_ms = std::env::var(TEST_CLOCK_OFFSET_ENV).ok().and_then(|v| v.trim().parse::<i64>().ok());
        SystemClock { offset_us: offset_ms.unwrap_or(0).saturating_mul(1000) }
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
