//! The settings of a strong node and its only source of wall-clock time.
//! [`StrongConfig`] checks itself and turns into openraft's configuration.
//! The clock is injected: the daemon passes its corrected clock, so lease
//! grants and expiry never use the raw OS clock ([`SystemClock`], the
//! default of [`StrongConfig::new`], is for tests and tools). See
//! `docs/design/strong.md`, sections "Failover tuning" and "In the daemon".

use std::fmt;
use std::sync::Arc;

use openraft::SnapshotPolicy;

use crate::error::StartError;
use crate::kv::{HistoryLimits, IDEMPOTENCY_WINDOW_MS_MAX, WATCH_HISTORY_BYTES_DEFAULT, WATCH_HISTORY_MAX};

/// Default bytes of one snapshot chunk, on disk and on the wire.
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 4 * 1024 * 1024;
/// Smallest snapshot chunk accepted.
pub const SNAPSHOT_CHUNK_BYTES_MIN: usize = 4 * 1024;
/// Largest snapshot chunk accepted: below the storage layer's value limit
/// (16 MiB) and the transport's frame limit (16 MiB) with room to spare.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Default idempotency window of strong writes.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 60_000;

/// The only source of wall-clock time of this crate: lease deadlines are
/// stamped with it by the leader. The daemon passes its corrected clock.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Whether this clock may stamp lease time: the daemon's is not while
    /// the clock service finds it further than `max_offset_ms` from
    /// cluster time. A leader whose clock is unsafe refuses lease grants and
    /// keep-alives and expires nothing (`docs/design/strong.md`, "Lease time").
    fn is_safe(&self) -> bool {
        true
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Settings of a strong node. [`StrongConfig::new`] gives LAN defaults.
#[derive(Clone)]
pub struct StrongConfig {
    /// This node's Raft id (stable across restarts, unique in the cluster).
    pub node_id: u64,
    /// Address peers reach this node at; `None`: the transport's bound address.
    pub advertise_addr: Option<std::net::SocketAddr>,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range; followers wait a random time in it without
    /// hearing from a leader before campaigning.
    pub election_timeout_min_ms: u64,
    /// Upper end of the election timeout range.
    pub election_timeout_max_ms: u64,
    /// Run a pre-vote round before a real election (see
    /// `docs/design/strong.md`, "Failover tuning" and "References"), so a
    /// partitioned node that rejoins does not depose a healthy leader.
    pub pre_vote: bool,
    /// Deadline of a client write or linearizable read, forwarding included.
    pub request_timeout_ms: u64,
    /// Period of the reachability probe to every voter.
    pub probe_interval_ms: u64,
    /// A voter counts as reachable if it answered a probe within this window.
    pub reachable_window_ms: u64,
    /// Period at which the leader checks for expired leases.
    pub lease_tick_ms: u64,
    /// Build a snapshot (and purge the log) every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging
    /// followers catch up from the log rather than a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Bytes of one snapshot chunk: the unit written to the store, read
    /// back, and sent to a follower in one request
    /// (`docs/design/strong.md`, "Snapshot format").
    pub snapshot_chunk_bytes: usize,
    /// Deadline of one snapshot chunk request to a follower (the final
    /// install request gets more, in proportion to the snapshot's size).
    pub snapshot_chunk_timeout_ms: u64,
    /// How much watch history this replica keeps.
    pub watch_history: HistoryLimits,
    /// How long the leader stamps an idempotency key to be remembered.
    pub idempotency_window_ms: u64,
    /// The wall clock for lease time.
    pub clock: Arc<dyn WallClock>,
    /// Test knob (`docs/design/fault-injection.md`, "Knobs"): every
    /// snapshot build fails, which stops the Raft group, so tests can see
    /// how a stopped group is reported.
    #[cfg(feature = "test-knobs")]
    pub fail_snapshot_builds: bool,
}

impl fmt::Debug for StrongConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrongConfig")
            .field("node_id", &self.node_id)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("election_timeout_min_ms", &self.election_timeout_min_ms)
            .field("election_timeout_max_ms", &self.election_timeout_max_ms)
            .field("pre_vote", &self.pre_vote)
            .finish_non_exhaustive()
    }
}

impl StrongConfig {
    /// LAN defaults: heartbeat 50 ms, election timeout 150–300 ms, pre-vote on.
    pub fn new(node_id: u64) -> Self {
        Self {
            node_id,
            advertise_addr: None,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            pre_vote: true,
            request_timeout_ms: 2_000,
            probe_interval_ms: 100,
            reachable_window_ms: 1_500,
            lease_tick_ms: 100,
            snapshot_every_entries: 100_000,
            log_kept_behind_snapshot: 5_000,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
            snapshot_chunk_timeout_ms: 10_000,
            watch_history: HistoryLimits { events_max: WATCH_HISTORY_MAX, bytes_max: WATCH_HISTORY_BYTES_DEFAULT },
            idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            clock: Arc::new(SystemClock),
            #[cfg(feature = "test-knobs")]
            fail_snapshot_builds: false,
        }
    }

    pub(super) fn raft_config(&self) -> Result<openraft::Config, StartError> {
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(StartError::Config(
                "need 0 < heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if self.request_timeout_ms == 0 || self.probe_interval_ms == 0 || self.lease_tick_ms == 0 {
            return Err(StartError::Config("timeouts and periods must be > 0".into()));
        }
        if self.reachable_window_ms <= self.probe_interval_ms {
            return Err(StartError::Config("reachable_window_ms must exceed probe_interval_ms".into()));
        }
        if !(SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX).contains(&self.snapshot_chunk_bytes) {
            return Err(StartError::Config(format!(
                "snapshot_chunk_bytes must be in {SNAPSHOT_CHUNK_BYTES_MIN}..={SNAPSHOT_CHUNK_BYTES_MAX}"
            )));
        }
        if self.snapshot_every_entries == 0 || self.snapshot_chunk_timeout_ms == 0 {
            return Err(StartError::Config("snapshot_every_entries and snapshot_chunk_timeout_ms must be > 0".into()));
        }
        if self.watch_history.events_max == 0 || self.watch_history.bytes_max == 0 {
            return Err(StartError::Config("the watch history limits must be > 0".into()));
        }
        if self.idempotency_window_ms == 0 || self.idempotency_window_ms > IDEMPOTENCY_WINDOW_MS_MAX {
            return Err(StartError::Config(format!(
                "idempotency_window_ms must be in 1..={IDEMPOTENCY_WINDOW_MS_MAX}"
            )));
        }
        let config = openraft::Config {
            cluster_name: "chorus-strong".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            enable_pre_vote: Some(self.pre_vote),
            // Reconnect attempts to a dead peer: start quickly (a restarted
            // node is back within a heartbeat or two), cap at one second.
            backoff: "50ms 100ms ...1s".into(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_kept_behind_snapshot,
            install_snapshot_timeout: self.snapshot_chunk_timeout_ms,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| StartError::Config(e.to_string()))
    }
}
