//! Key ranges over lexicographically ordered byte strings.

use std::ops::Bound;

use crate::batch::validate_key;
use crate::error::InvalidInput;

/// A range of keys, compared as byte strings (lexicographic, shorter prefix
/// first: `[1] < [1, 0] < [2]`). Owned, so it can travel in a [`crate::WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// The half-open range `start..end`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self { start: Bound::Included(start.into()), end: Bound::Excluded(end.into()) }
    }

    /// Every key at or after `start`.
    pub fn from_key(start: impl Into<Vec<u8>>) -> Self {
        Self { start: Bound::Included(start.into()), end: Bound::Unbounded }
    }

    /// Every key strictly after `start`, used to resume a scan after the last
    /// key seen.
    pub fn after_key(start: impl Into<Vec<u8>>) -> Self {
        Self { start: Bound::Excluded(start.into()), end: Bound::Unbounded }
    }

    /// Every key strictly before `end`.
    pub fn before_key(end: impl Into<Vec<u8>>) -> Self {
        Self { start: Bound::Unbounded, end: Bound::Excluded(end.into()) }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let prefix = prefix.into();
        // The first key after every key with this prefix: drop trailing 0xff
        // bytes and increment the last remaining byte. An all-0xff prefix has
        // no successor, so the range is unbounded above.
        let mut successor = prefix.clone();
        while successor.last() == Some(&0xff) {
            successor.pop();
        }
        let end = match successor.last_mut() {
            Some(last) => {
                *last += 1;
                Bound::Excluded(successor)
            }
            None => Bound::Unbounded,
        };
        Self { start: Bound::Included(prefix), end }
    }

    /// Same range with the start replaced by `start` (inclusive); how a caller
    /// continues from [`crate::ScanPage::resume`].
    pub fn resume_at(&self, start: impl Into<Vec<u8>>) -> Self {
        Self { start: Bound::Included(start.into()), end: self.end.clone() }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above_start = match &self.start {
            Bound::Included(start) => key >= start.as_slice(),
            Bound::Excluded(start) => key > start.as_slice(),
            Bound::Unbounded => true,
        };
        let below_end = match &self.end {
            Bound::Included(end) => key <= end.as_slice(),
            Bound::Excluded(end) => key < end.as_slice(),
            Bound::Unbounded => true,
        };
        above_start && below_end
    }

    /// Whether no key can lie inside the range (start after end, or an
    /// exclusive bound on an equal start and end). `BTreeMap::range` panics on
    /// such ranges, so backends check this first.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Unbounded, _) | (_, Bound::Unbounded) => false,
            (Bound::Included(start), Bound::Included(end)) => start > end,
            (Bound::Included(start), Bound::Excluded(end))
            | (Bound::Excluded(start), Bound::Included(end))
            | (Bound::Excluded(start), Bound::Excluded(end)) => start >= end,
        }
    }

    /// The bounds as borrowed slices, the form `BTreeMap::range` and redb take.
    pub fn as_slices(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (as_slice(&self.start), as_slice(&self.end))
    }

    pub(crate) fn bound_bytes(&self) -> usize {
        bound_len(&self.start) + bound_len(&self.end)
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidInput> {
        for bound in [&self.start, &self.end] {
            if let Bound::Included(key) | Bound::Excluded(key) = bound {
                validate_key(key)?;
            }
        }
        Ok(())
    }
}

impl Default for KeyRange {
    fn default() -> Self {
        Self::all()
    }
}

fn as_slice(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn bound_len(bound: &Bound<Vec<u8>>) -> usize {
    match bound {
        Bound::Included(key) | Bound::Excluded(key) => key.len(),
        Bound::Unbounded => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_contains_exactly_the_keys_with_that_prefix() {
        let range = KeyRange::prefix(vec![1, 0xff]);
        assert!(range.contains(&[1, 0xff]));
        assert!(range.contains(&[1, 0xff, 0xff, 7]));
        assert!(!range.contains(&[1, 0xfe, 0xff]));
        assert!(!range.contains(&[2]));
        assert_eq!(range.end, Bound::Excluded(vec![2]));
        assert_eq!(KeyRange::prefix(vec![0xff, 0xff]).end, Bound::Unbounded);
        assert_eq!(KeyRange::prefix(Vec::new()), KeyRange::from_key(Vec::new()));
    }

    #[test]
    fn inverted_and_degenerate_ranges_are_empty() {
        assert!(KeyRange::between(vec![2], vec![1]).is_empty());
        assert!(KeyRange::between(vec![1], vec![1]).is_empty());
        let single = KeyRange { start: Bound::Included(vec![1]), end: Bound::Included(vec![1]) };
        assert!(!single.is_empty());
        assert!(single.contains(&[1]));
        assert!(!KeyRange::all().is_empty());
    }
}
