//! In-memory backend for the deterministic simulator and tests.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::batch::{BatchOp, WriteBatch, validate_space_name};
use crate::error::{CommitError, ReadError};
use crate::range::KeyRange;
use crate::storage::{EntryVisitor, SCAN_LIMIT_MAX, ScanPage, Storage};

type Space = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug, Default)]
struct State {
    spaces: BTreeMap<String, Space>,
    /// Commits still to fail on purpose, see [`MemoryStorage::fail_next_commits`].
    commit_failures_pending: u32,
}

/// A [`Storage`] held in a `BTreeMap` per keyspace.
///
/// It honours the whole [`Storage`] contract except durability across a real
/// process crash; the simulator models a crash with
/// [`MemoryStorage::crash_image`]. Deterministic: no clocks, no threads, no
/// randomness.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    state: RwLock<State>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a node restarting after a crash would find: every committed
    /// batch, nothing else. Commits are atomic and applied under one lock, so
    /// that is the current contents. Injected failures are not carried over.
    pub fn crash_image(&self) -> Result<MemoryStorage, ReadError> {
        let state = self.read()?;
        Ok(MemoryStorage { state: RwLock::new(State { spaces: state.spaces.clone(), commit_failures_pending: 0 }) })
    }

    /// Makes the next `count` commits fail with an I/O error without applying
    /// anything, so callers' error paths can be tested. Unlike a real disk
    /// failure this does not poison the store: later commits succeed.
    pub fn fail_next_commits(&self, count: u32) -> Result<(), CommitError> {
        self.write()?.commit_failures_pending = count;
        Ok(())
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, State>, ReadError> {
        // A poisoned lock means a panic while a batch was being applied, so
        // the state may hold part of a batch: refuse rather than expose it.
        self.state.read().map_err(|_| ReadError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, State>, CommitError> {
        self.state.write().map_err(|_| CommitError::Poisoned)
    }
}

impl Storage for MemoryStorage {
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        batch.validate()?;
        let mut state = self.write()?;
        if state.commit_failures_pending > 0 {
            state.commit_failures_pending -= 1;
            return Err(CommitError::Io(std::io::Error::other(
                "commit failure injected by MemoryStorage::fail_next_commits",
            )));
        }
        // Validation above is the only way a batch can fail, so applying in
        // place is atomic: no error can occur half way.
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => {
                    state.spaces.entry(space).or_default().insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    if let Some(entries) = state.spaces.get_mut(&space) {
                        entries.remove(&key);
                        if entries.is_empty() {
                            state.spaces.remove(&space);
                        }
                    }
                }
                BatchOp::DeleteRange { space, range } => {
                    if range.is_empty() {
                        continue;
                    }
                    if let Some(entries) = state.spaces.get_mut(&space) {
                        let doomed: Vec<Vec<u8>> =
                            entries.range::<[u8], _>(range.as_slices()).map(|(key, _)| key.clone()).collect();
                        for key in doomed {
                            entries.remove(&key);
                        }
                        if entries.is_empty() {
                            state.spaces.remove(&space);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        validate_space_name(space)?;
        let state = self.read()?;
        Ok(state.spaces.get(space).and_then(|entries| entries.get(key)).cloned())
    }

    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError> {
        validate_space_name(space)?;
        range.validate()?;
        let limit = limit.min(SCAN_LIMIT_MAX);
        let state = self.read()?;
        let Some(entries) = state.spaces.get(space) else {
            return Ok(ScanPage::default());
        };
        if range.is_empty() {
            return Ok(ScanPage::default());
        }
        let mut page = ScanPage::default();
        for (key, value) in entries.range::<[u8], _>(range.as_slices()) {
            if page.entries.len() == limit {
                page.resume = Some(key.clone());
                break;
            }
            page.entries.push((key.clone(), value.clone()));
        }
        Ok(page)
    }

    fn spaces(&self) -> Result<Vec<String>, ReadError> {
        Ok(self.read()?.spaces.keys().cloned().collect())
    }

    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError> {
        validate_space_name(space)?;
        let state = self.read()?;
        if let Some(entries) = state.spaces.get(space) {
            for (key, value) in entries {
                if visit(key, value).is_break() {
                    break;
                }
            }
        }
        Ok(())
    }
}
