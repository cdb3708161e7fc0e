//! Hybrid logical clock (HLC; the paper that defines it is listed in
//! `docs/design/replication.md`, "References").
//!
//! A timestamp is physical microseconds, a logical counter that breaks ties
//! inside one microsecond, and the issuing node's id, so two distinct writes
//! never carry equal timestamps. The clock takes physical time as an
//! argument: only the daemon reads the OS clock (through the clock service's
//! correction), and the simulator hands in virtual time.

use crate::types::NodeId;
use serde::{Deserialize, Serialize};

/// One HLC reading. Ordered by `(physical_us, logical, node)`: that order is
/// the last-writer-wins order of chorus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub physical_us: u64,
    pub logical: u32,
    pub node: NodeId,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp { physical_us: 0, logical: 0, node: NodeId(0) };
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_us, self.logical, self.node.0)
    }
}

/// Why a remote timestamp was refused. State is unchanged on error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    /// The remote timestamp is further ahead of our physical clock than
    /// `offset_max_us`: either its clock or ours is wrong, and accepting it
    /// would drag our clock (and every later LWW decision) into the future.
    #[error(
        "remote timestamp {remote} is {ahead_us} µs ahead of local physical time {local_us} µs (max offset {offset_max_us} µs)"
    )]
    TooFarAhead { remote: Timestamp, local_us: u64, ahead_us: u64, offset_max_us: u64 },
    /// The logical counter would overflow: 2^32 events inside one physical
    /// microsecond means physical time is not advancing at all.
    #[error("logical counter exhausted at physical time {physical_us} µs")]
    LogicalOverflow { physical_us: u64 },
}

/// The clock of one node.
///
/// Invariant: every timestamp returned by [`Hlc::now`] or [`Hlc::update`] is
/// strictly greater than every timestamp returned before, including across
/// restarts when the node resumes with [`Hlc::resume`] from its persisted
/// high-water mark.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    last_physical_us: u64,
    last_logical: u32,
    offset_max_us: u64,
}

impl Hlc {
    pub fn new(node: NodeId, offset_max_us: u64) -> Self {
        Self { node, last_physical_us: 0, last_logical: 0, offset_max_us }
    }

    /// Resume after a restart: every later timestamp is above `high_water`.
    pub fn resume(node: NodeId, offset_max_us: u64, high_water: Timestamp) -> Self {
        Self { node, last_physical_us: high_water.physical_us, last_logical: high_water.logical, offset_max_us }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn offset_max_us(&self) -> u64 {
        self.offset_max_us
    }

    /// The greatest timestamp issued so far (what must be persisted).
    pub fn high_water(&self) -> Timestamp {
        Timestamp { physical_us: self.last_physical_us, logical: self.last_logical, node: self.node }
    }

    /// A timestamp for a local event at physical time `physical_us`.
    pub fn now(&mut self, physical_us: u64) -> Result<Timestamp, HlcError> {
        if physical_us > self.last_physical_us {
            self.last_physical_us = physical_us;
            self.last_logical = 0;
        } else {
            self.last_logical = self
                .last_logical
                .checked_add(1)
                .ok_or(HlcError::LogicalOverflow { physical_us: self.last_physical_us })?;
        }
        Ok(self.high_water())
    }

    /// Merge a remote timestamp, returning a local timestamp above both it
    /// and everything issued before. Refuses timestamps more than
    /// `offset_max_us` ahead of `physical_us`.
    pub fn update(&mut self, remote: Timestamp, physical_us: u64) -> Result<Timestamp, HlcError> {
        self.check(remote, physical_us)?;
        let (old_p, old_l) = (self.last_physical_us, self.last_logical);
        let p = physical_us.max(old_p).max(remote.physical_us);
        let l = if p == old_p && p == remote.physical_us {
            old_l.max(remote.logical).checked_add(1)
        } else if p == old_p {
            old_l.checked_add(1)
        } else if p == remote.physical_us {
            remote.logical.checked_add(1)
        } else {
            Some(0)
        };
        let l = l.ok_or(HlcError::LogicalOverflow { physical_us: p })?;
        self.last_physical_us = p;
        self.last_logical = l;
        Ok(self.high_water())
    }

    /// Whether `remote` is acceptable at `physical_us`, without changing state.
    pub fn check(&self, remote: Timestamp, physical_us: u64) -> Result<(), HlcError> {
        let ahead_us = remote.physical_us.saturating_sub(physical_us);
        if ahead_us > self.offset_max_us {
            return Err(HlcError::TooFarAhead {
                remote,
                local_us: physical_us,
                ahead_us,
                offset_max_us: self.offset_max_us,
            });
        }
        Ok(())
    }
}
