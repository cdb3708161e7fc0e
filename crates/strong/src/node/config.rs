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

/// The only source of wall-clock time of this crate: lease deadlines are
/// stamped with it by the leader. The daemon passes its corrected clock.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
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
    /// The wall clock for lease time.
    pub clock: Arc<dyn WallClock>,
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
            clock: Arc::new(SystemClock),
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
            install_snapshot_timeout: 10_000,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| StartError::Config(e.to_string()))
    }
}
