//! Test-only fault knobs of the daemon (`docs/design/fault-injection.md`,
//! "Knobs"). This module exists only in builds with the `test-knobs` cargo
//! feature: a production binary cannot read these variables, so no
//! environment can put a production node into an unsafe mode.

use chorus_core::PersistId;
use chorus_storage::WriteBatch;
use std::time::{Duration, Instant};

/// `CHORUS_TEST_ACK_BEFORE_FSYNC=1` makes the node answer clients *before*
/// their writes are durable and hold its commits back for up to
/// [`DEFERRED_COMMIT_MAX`]: a `kill -9` in that window loses acknowledged
/// writes. It exists so the fault-injection checkers can prove they catch a
/// real durability bug.
pub const ACK_BEFORE_FSYNC_ENV: &str = "CHORUS_TEST_ACK_BEFORE_FSYNC";

/// Shifts the OS clock the node reads by this many milliseconds (may be
/// negative), as if the machine's clock were wrong by that much: probe
/// timestamps, the HLC's physical time and the generation all move.
pub const CLOCK_OFFSET_ENV: &str = "CHORUS_TEST_CLOCK_OFFSET_MS";

/// How long the ack-before-fsync knob holds commits back.
pub const DEFERRED_COMMIT_MAX: Duration = Duration::from_secs(2);

/// Whether the durability-breaking knob is set.
pub fn ack_before_fsync_from_env() -> bool {
    std::env::var(ACK_BEFORE_FSYNC_ENV).is_ok_and(|v| v == "1")
}

/// The clock shift the environment asks for, µs.
pub fn clock_offset_us_from_env() -> i64 {
    let offset_ms = std::env::var(CLOCK_OFFSET_ENV).ok().and_then(|v| v.trim().parse::<i64>().ok());
    offset_ms.unwrap_or(0).saturating_mul(1000)
}

/// The node task's knobs.
#[derive(Default)]
pub struct DriverKnobs {
    pub ack_before_fsync: bool,
    held: Option<(Vec<PersistId>, WriteBatch, Instant)>,
}

impl DriverKnobs {
    pub fn from_env() -> Self {
        DriverKnobs { ack_before_fsync: ack_before_fsync_from_env(), held: None }
    }

    /// With ack-before-fsync: keep the batch back (its clients were already
    /// answered by the core's injected bug) and release everything held
    /// once the oldest has waited [`DEFERRED_COMMIT_MAX`].
    pub fn hold_back(&mut self, ids: Vec<PersistId>, batch: WriteBatch) -> Option<(Vec<PersistId>, WriteBatch)> {
        if !self.ack_before_fsync {
            return Some((ids, batch));
        }
        let held = self.held.get_or_insert_with(|| (Vec::new(), WriteBatch::new(), Instant::now()));
        held.0.extend(ids);
        held.1.append(batch);
        self.release_due()
    }

    /// The held batches, once they have waited long enough.
    pub fn release_due(&mut self) -> Option<(Vec<PersistId>, WriteBatch)> {
        if self.held.as_ref().is_some_and(|(_, _, since)| since.elapsed() >= DEFERRED_COMMIT_MAX) {
            return self.held.take().map(|(ids, batch, _)| (ids, batch));
        }
        None
    }

    /// Whether batches are held back (the node task must wake to release them).
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Wake the node task in time to release held batches.
    pub fn earlier_wake(&self, timer: Option<tokio::time::Instant>) -> Option<tokio::time::Instant> {
        let release =
            self.held.as_ref().map(|(_, _, since)| tokio::time::Instant::from_std(*since + DEFERRED_COMMIT_MAX));
        match (timer, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
