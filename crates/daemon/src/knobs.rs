//! Test-only fault knobs of the daemon (`docs/design/fault-injection.md`,
//! "Knobs"). This module exists only in builds with the `test-knobs` cargo
//! feature: a production binary cannot read these variables, so no
//! environment can put a production node into an unsafe mode.

use chorus_core::wire::{Message, NamespaceDelta};
use chorus_core::{Entry, NodeId, PersistId};
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

/// `CHORUS_TEST_STRONG_SNAPSHOT_FAIL=1` makes every strong snapshot build
/// fail, which stops the node's Raft group (openraft treats a failed build
/// as fatal): how a stopped group is reported can then be tested.
pub const STRONG_SNAPSHOT_FAIL_ENV: &str = "CHORUS_TEST_STRONG_SNAPSHOT_FAIL";

/// `CHORUS_TEST_WATCH_DROP_EVENT=N` makes the node silently skip the N-th
/// data event it sends on watch streams (counted over all streams, from 1),
/// while the stream's position moves on as if it had been sent: the gap
/// the watch checkers must catch (`docs/design/watch.md`, "Testing").
pub const WATCH_DROP_EVENT_ENV: &str = "CHORUS_TEST_WATCH_DROP_EVENT";

/// The event the drop knob names, if set.
pub fn watch_drop_event_from_env() -> Option<u64> {
    static N: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::env::var(WATCH_DROP_EVENT_ENV).ok().and_then(|v| v.parse().ok()))
}

/// Count one data event; returns its number (from 1).
pub fn watch_event_counted() -> u64 {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Whether the snapshot-failure knob is set.
pub fn strong_snapshot_fail_from_env() -> bool {
    std::env::var(STRONG_SNAPSHOT_FAIL_ENV).is_ok_and(|v| v == "1")
}

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

/// `CHORUS_TEST_RELAY_FORGE=1` makes the node a forging relay: before it
/// sends anything, it alters what other nodes wrote — every LWW value whose
/// winner is a third node becomes `forged`, every third node's counter
/// contribution grows by [`FORGED_COUNTER_DELTA`], and every third node's
/// seen entry in its anti-entropy deltas grows by [`FORGED_SEEN_DELTA`]
/// (`docs/design/signing.md`, "Testing"). Its own writes stay honest.
pub const RELAY_FORGE_ENV: &str = "CHORUS_TEST_RELAY_FORGE";
pub const FORGED_COUNTER_DELTA: u64 = 1_000_000;
pub const FORGED_SEEN_DELTA: u64 = 1_000;
pub const FORGED_VALUE: &[u8] = b"forged";

/// Alter third nodes' data in `message` (neither `me` nor `to` wrote it).
pub fn forge_relayed(me: NodeId, to: NodeId, message: &mut Message) {
    let third = |n: NodeId| n != me && n != to;
    let forge_entry = |e: &mut Entry| match e {
        Entry::Lww(r) if third(r.ts.node) && r.value.is_some() => r.value = Some(FORGED_VALUE.to_vec()),
        Entry::Counter(c) => {
            for (n, t) in c.totals.iter_mut() {
                if third(*n) {
                    t.0 = t.0.saturating_add(FORGED_COUNTER_DELTA);
                }
            }
        }
        _ => {}
    };
    let forge_delta = |d: &mut NamespaceDelta| {
        for (_, e) in &mut d.entries {
            forge_entry(e);
        }
        for (n, c) in &mut d.seen.contiguous {
            if third(*n) {
                *c = c.saturating_add(FORGED_SEEN_DELTA);
            }
        }
    };
    match message {
        Message::Push(p) => p.items.iter_mut().for_each(|it| forge_entry(&mut it.entry)),
        Message::SyncReply(r) => r.deltas.iter_mut().for_each(forge_delta),
        Message::SyncPush(p) => p.deltas.iter_mut().for_each(forge_delta),
        _ => {}
    }
}

/// The node task's knobs.
#[derive(Default)]
pub struct DriverKnobs {
    pub ack_before_fsync: bool,
    /// See [`RELAY_FORGE_ENV`].
    pub relay_forge: bool,
    held: Option<(Vec<PersistId>, WriteBatch, Instant)>,
}

impl DriverKnobs {
    pub fn from_env() -> Self {
        let relay_forge = std::env::var(RELAY_FORGE_ENV).is_ok_and(|v| v == "1");
        if relay_forge {
            tracing::warn!("{RELAY_FORGE_ENV} is set: this node forges third nodes' data it relays (a test knob)");
        }
        DriverKnobs { ack_before_fsync: ack_before_fsync_from_env(), relay_forge, held: None }
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
