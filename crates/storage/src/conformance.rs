//! The conformance suite of the [`Storage`] contract.
//!
//! One public function per property. Each takes a fresh, empty store and
//! panics (with a message naming the property) if the store breaks the
//! contract. Every backend runs all of them (`tests/conformance.rs`); a crate
//! with its own backend enables the `conformance` feature and does the same,
//! ideally through [`run_all`].
//!
//! [`run_model`] drives a sequence of steps against a store and a naive
//! `BTreeMap` model and compares every read; [`steps_from_bytes`] turns
//! arbitrary bytes into such a sequence, for proptest and `cargo fuzz`
//! (the approach of redb's own `fuzz_redb` target).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use crate::{
    BATCH_OPS_MAX, BatchOp, CommitError, InvalidInput, KeyRange, ReadError, SCAN_LIMIT_MAX, SPACE_NAME_BYTES_MAX,
    STORE_KEY_BYTES_MAX, STORE_VALUE_BYTES_MAX, ScanPage, Storage, WriteBatch,
};

fn commit<S: Storage + ?Sized>(store: &S, batch: WriteBatch) {
    if let Err(err) = store.commit(batch) {
        panic!("a valid batch must commit: {err}");
    }
}

fn get<S: Storage + ?Sized>(store: &S, space: &str, key: &[u8]) -> Option<Vec<u8>> {
    match store.get(space, key) {
        Ok(value) => value,
        Err(err) => panic!("get({space:?}, {key:?}) failed: {err}"),
    }
}

fn scan<S: Storage + ?Sized>(store: &S, space: &str, range: &KeyRange, limit: usize) -> ScanPage {
    match store.scan(space, range, limit) {
        Ok(page) => page,
        Err(err) => panic!("scan({space:?}, {range:?}, {limit}) failed: {err}"),
    }
}

fn spaces<S: Storage + ?Sized>(store: &S) -> Vec<String> {
    match store.spaces() {
        Ok(spaces) => spaces,
        Err(err) => panic!("spaces() failed: {err}"),
    }
}

fn all_entries<S: Storage + ?Sized>(store: &S, space: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    let result = store.for_each(space, &mut |key, value| {
        entries.push((key.to_vec(), value.to_vec()));
        ControlFlow::Continue(())
    });
    if let Err(err) = result {
        panic!("for_each({space:?}) failed: {err}");
    }
    entries
}

fn entry(key: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (key.to_vec(), value.to_vec())
}

/// Runs every property, each on a fresh store from `fresh`.
pub fn run_all<S: Storage>(mut fresh: impl FnMut() -> S) {
    get_of_a_missing_key_returns_none(&fresh());
    put_then_get_returns_the_value(&fresh());
    later_ops_in_a_batch_override_earlier_ones(&fresh());
    delete_removes_only_that_key(&fresh());
    delete_range_removes_exactly_the_keys_in_range(&fresh());
    scan_returns_keys_in_lexicographic_byte_order(&fresh());
    scan_respects_inclusive_exclusive_and_empty_bounds(&fresh());
    scan_pages_cover_the_range_exactly_once(&fresh());
    scan_with_zero_limit_returns_the_first_key_as_resume(&fresh());
    scan_never_returns_more_than_the_page_limit(&fresh());
    keyspaces_are_isolated(&fresh());
    spaces_lists_exactly_the_non_empty_keyspaces(&fresh());
    invalid_batch_is_refused_and_changes_nothing(&fresh());
    invalid_read_arguments_are_refused(&fresh());
    empty_batch_commits_and_changes_nothing(&fresh());
    empty_keys_and_values_are_stored(&fresh());
    large_values_round_trip(&fresh());
    for_each_visits_every_entry_in_order_and_stops_on_break(&fresh());
    concurrent_commits_from_many_threads_are_all_visible(&fresh());
    readers_never_observe_part_of_a_batch(&fresh());
}

/// Reading an absent key, in an absent or present keyspace, gives `None`.
pub fn get_of_a_missing_key_returns_none<S: Storage + ?Sized>(store: &S) {
    assert_eq!(get(store, "absent", b"k"), None);
    let mut batch = WriteBatch::new();
    batch.put("s", b"k".to_vec(), b"v".to_vec());
    commit(store, batch);
    assert_eq!(get(store, "s", b"other"), None);
    assert_eq!(get(store, "s", b"k\0"), None, "a key's extension is another key");
    assert_eq!(get(store, "s", b""), None);
}

/// A committed put is read back, and a second put replaces the value.
pub fn put_then_get_returns_the_value<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch.put("meta", b"term".to_vec(), b"7".to_vec());
    commit(store, batch);
    assert_eq!(get(store, "meta", b"term"), Some(b"7".to_vec()));
    let mut batch = WriteBatch::new();
    batch.put("meta", b"term".to_vec(), b"8".to_vec());
    commit(store, batch);
    assert_eq!(get(store, "meta", b"term"), Some(b"8".to_vec()));
}

/// Operations of one batch apply in order: the last one on a key wins.
pub fn later_ops_in_a_batch_override_earlier_ones<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch
        .put("s", b"a".to_vec(), b"1".to_vec())
        .delete("s", b"a".to_vec())
        .put("s", b"a".to_vec(), b"3".to_vec())
        .put("s", b"b".to_vec(), b"1".to_vec())
        .delete_range("s", KeyRange::all())
        .put("s", b"c".to_vec(), b"2".to_vec())
        .put("s", b"d".to_vec(), b"1".to_vec())
        .delete("s", b"d".to_vec());
    commit(store, batch);
    assert_eq!(all_entries(store, "s"), vec![entry(b"c", b"2")]);
}

/// A delete removes its key and nothing else; deleting an absent key or
/// from an absent keyspace is not an error and creates nothing.
pub fn delete_removes_only_that_key<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    for key in [&b"a"[..], b"ab", b"b"] {
        batch.put("s", key.to_vec(), b"v".to_vec());
    }
    commit(store, batch);
    let mut batch = WriteBatch::new();
    batch.delete("s", b"a".to_vec()).delete("s", b"zz".to_vec()).delete("ghost", b"a".to_vec());
    commit(store, batch);
    assert_eq!(all_entries(store, "s"), vec![entry(b"ab", b"v"), entry(b"b", b"v")]);
    assert_eq!(spaces(store), vec!["s".to_owned()]);
}

/// A range delete removes exactly the keys its bounds contain.
pub fn delete_range_removes_exactly_the_keys_in_range<S: Storage + ?Sized>(store: &S) {
    let keys: Vec<Vec<u8>> = (0u8..10).map(|i| vec![i]).collect();
    let fill = |store: &S| {
        let mut batch = WriteBatch::new();
        for key in &keys {
            batch.put("log", key.clone(), key.clone());
        }
        commit(store, batch);
    };
    let ranges = [
        KeyRange::between(vec![2], vec![5]),
        KeyRange { start: Bound::Excluded(vec![2]), end: Bound::Included(vec![5]) },
        KeyRange::from_key(vec![7]),
        KeyRange::before_key(vec![3]),
        KeyRange::between(vec![6], vec![6]),
        KeyRange::between(vec![8], vec![1]),
        KeyRange::prefix(vec![4]),
    ];
    for range in ranges {
        fill(store);
        let mut batch = WriteBatch::new();
        batch.delete_range("log", range.clone());
        commit(store, batch);
        let expected: Vec<_> =
            keys.iter().filter(|key| !range.contains(key)).map(|key| (key.clone(), key.clone())).collect();
        assert_eq!(all_entries(store, "log"), expected, "after deleting {range:?}");
    }
    let mut batch = WriteBatch::new();
    batch.delete_range("log", KeyRange::all());
    commit(store, batch);
    assert!(all_entries(store, "log").is_empty());
    assert!(spaces(store).is_empty(), "a keyspace emptied by a range delete disappears");
}

/// Keys come back ordered by unsigned bytes, a prefix before its extensions.
pub fn scan_returns_keys_in_lexicographic_byte_order<S: Storage + ?Sized>(store: &S) {
    let sorted: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 0xff],
        vec![1],
        vec![1, 0],
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0xff],
    ];
    let mut batch = WriteBatch::new();
    for key in sorted.iter().rev() {
        batch.put("s", key.clone(), b"v".to_vec());
    }
    commit(store, batch);
    let page = scan(store, "s", &KeyRange::all(), SCAN_LIMIT_MAX);
    let keys: Vec<Vec<u8>> = page.entries.into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, sorted);
    assert_eq!(page.resume, None);
}

/// Inclusive, exclusive and unbounded ends are honoured; empty and inverted
/// ranges return nothing.
pub fn scan_respects_inclusive_exclusive_and_empty_bounds<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    for i in 0u8..6 {
        batch.put("s", vec![i], vec![i]);
    }
    commit(store, batch);
    let keys = |range: KeyRange| -> Vec<u8> {
        scan(store, "s", &range, SCAN_LIMIT_MAX).entries.into_iter().map(|(key, _)| key[0]).collect()
    };
    assert_eq!(keys(KeyRange::between(vec![1], vec![4])), vec![1, 2, 3]);
    assert_eq!(keys(KeyRange { start: Bound::Excluded(vec![1]), end: Bound::Included(vec![4]) }), vec![2, 3, 4]);
    assert_eq!(keys(KeyRange::after_key(vec![3])), vec![4, 5]);
    assert_eq!(keys(KeyRange::before_key(vec![2])), vec![0, 1]);
    assert_eq!(keys(KeyRange::between(vec![3], vec![3])), Vec::<u8>::new());
    assert_eq!(keys(KeyRange::between(vec![4], vec![2])), Vec::<u8>::new());
    assert_eq!(keys(KeyRange::prefix(vec![5])), vec![5]);
    assert_eq!(scan(store, "absent", &KeyRange::all(), 10), ScanPage::default());
}

/// Following `resume` from page to page returns every entry exactly once.
pub fn scan_pages_cover_the_range_exactly_once<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    for i in 0u16..100 {
        batch.put("s", i.to_be_bytes().to_vec(), vec![1]);
    }
    commit(store, batch);
    let full = KeyRange::between(5u16.to_be_bytes().to_vec(), 95u16.to_be_bytes().to_vec());
    for limit in [1, 7, 90, 1000] {
        let mut seen = Vec::new();
        let mut range = full.clone();
        let mut pages = 0;
        loop {
            let page = scan(store, "s", &range, limit);
            pages += 1;
            assert!(page.entries.len() <= limit);
            seen.extend(page.entries.into_iter().map(|(key, _)| key));
            match page.resume {
                Some(next) => range = full.resume_at(next),
                None => break,
            }
            assert!(pages <= 100, "paging with limit {limit} does not terminate");
        }
        let expected: Vec<Vec<u8>> = (5u16..95).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(seen, expected, "paging with limit {limit}");
        assert_eq!(pages, 90usize.div_ceil(limit), "pages with limit {limit}");
    }
}

/// `limit == 0` returns no entries and names the first key of the range.
pub fn scan_with_zero_limit_returns_the_first_key_as_resume<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch.put("s", vec![3], vec![]).put("s", vec![9], vec![]);
    commit(store, batch);
    let page = scan(store, "s", &KeyRange::from_key(vec![4]), 0);
    assert!(page.entries.is_empty());
    assert_eq!(page.resume, Some(vec![9]));
    let page = scan(store, "s", &KeyRange::after_key(vec![9]), 0);
    assert_eq!(page, ScanPage::default());
}

/// No page holds more than [`SCAN_LIMIT_MAX`] entries, whatever `limit` asks.
pub fn scan_never_returns_more_than_the_page_limit<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    let total = SCAN_LIMIT_MAX + 5;
    for i in 0..total {
        batch.put("s", (i as u32).to_be_bytes().to_vec(), vec![]);
    }
    commit(store, batch);
    let page = scan(store, "s", &KeyRange::all(), usize::MAX);
    assert_eq!(page.entries.len(), SCAN_LIMIT_MAX);
    assert_eq!(page.resume, Some((SCAN_LIMIT_MAX as u32).to_be_bytes().to_vec()));
}

/// The same key in two keyspaces names two entries, and a keyspace whose
/// name extends another's shares nothing with it.
pub fn keyspaces_are_isolated<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch.put("a", b"k".to_vec(), b"1".to_vec()).put("a/b", b"k".to_vec(), b"2".to_vec()).put(
        "ns/x/entries",
        b"k".to_vec(),
        b"3".to_vec(),
    );
    commit(store, batch);
    assert_eq!(get(store, "a", b"k"), Some(b"1".to_vec()));
    assert_eq!(get(store, "a/b", b"k"), Some(b"2".to_vec()));
    let mut batch = WriteBatch::new();
    batch.delete_range("a", KeyRange::all());
    commit(store, batch);
    assert_eq!(get(store, "a", b"k"), None);
    assert_eq!(get(store, "a/b", b"k"), Some(b"2".to_vec()));
    assert_eq!(all_entries(store, "ns/x/entries"), vec![entry(b"k", b"3")]);
}

/// `spaces` lists the keyspaces holding keys, sorted, and drops emptied ones.
pub fn spaces_lists_exactly_the_non_empty_keyspaces<S: Storage + ?Sized>(store: &S) {
    assert!(spaces(store).is_empty());
    let mut batch = WriteBatch::new();
    batch
        .put("zeta", b"k".to_vec(), b"v".to_vec())
        .put("alpha", b"k".to_vec(), b"v".to_vec())
        .put("ns/é", b"k".to_vec(), b"v".to_vec())
        .put("gone", b"k".to_vec(), b"v".to_vec())
        .delete("gone", b"k".to_vec())
        .delete("never", b"k".to_vec());
    commit(store, batch);
    assert_eq!(spaces(store), vec!["alpha", "ns/é", "zeta"]);
    let mut batch = WriteBatch::new();
    batch.delete("zeta", b"k".to_vec());
    commit(store, batch);
    assert_eq!(spaces(store), vec!["alpha", "ns/é"]);
}

/// A batch breaking any bound is refused whole, with `Invalid`, and every
/// valid operation before the bad one is left unapplied.
pub fn invalid_batch_is_refused_and_changes_nothing<S: Storage + ?Sized>(store: &S) {
    let mut good = WriteBatch::new();
    good.put("s", b"keep".to_vec(), b"1".to_vec());
    commit(store, good);
    let bad_ops = [
        BatchOp::Put { space: String::new(), key: b"k".to_vec(), value: vec![] },
        BatchOp::Delete { space: "x".repeat(SPACE_NAME_BYTES_MAX + 1), key: b"k".to_vec() },
        BatchOp::Put { space: "s".to_owned(), key: vec![0; STORE_KEY_BYTES_MAX + 1], value: vec![] },
        BatchOp::Put { space: "s".to_owned(), key: b"k".to_vec(), value: vec![0; STORE_VALUE_BYTES_MAX + 1] },
        BatchOp::DeleteRange { space: "s".to_owned(), range: KeyRange::from_key(vec![0; STORE_KEY_BYTES_MAX + 1]) },
    ];
    for bad in bad_ops {
        let mut batch = WriteBatch::new();
        batch.put("s", b"keep".to_vec(), b"2".to_vec()).put("new", b"k".to_vec(), b"v".to_vec()).push(bad);
        match store.commit(batch) {
            Err(CommitError::Invalid(_)) => {}
            other => panic!("an invalid batch must be refused with Invalid, got {other:?}"),
        }
        assert_eq!(get(store, "s", b"keep"), Some(b"1".to_vec()));
        assert_eq!(spaces(store), vec!["s"]);
    }
    let too_many: WriteBatch =
        (0..=BATCH_OPS_MAX).map(|_| BatchOp::Delete { space: "s".to_owned(), key: b"keep".to_vec() }).collect();
    assert!(matches!(store.commit(too_many), Err(CommitError::Invalid(InvalidInput::TooManyOps { .. }))));
    assert_eq!(get(store, "s", b"keep"), Some(b"1".to_vec()));
    let mut after = WriteBatch::new();
    after.put("s", b"keep".to_vec(), b"3".to_vec());
    commit(store, after);
    assert_eq!(get(store, "s", b"keep"), Some(b"3".to_vec()), "the store stays usable");
}

/// Reads with an invalid keyspace name or range bound are refused with
/// `Invalid`, not answered as if the keyspace were empty.
pub fn invalid_read_arguments_are_refused<S: Storage + ?Sized>(store: &S) {
    let long = "x".repeat(SPACE_NAME_BYTES_MAX + 1);
    for space in ["", long.as_str()] {
        assert!(matches!(store.get(space, b"k"), Err(ReadError::Invalid(_))));
        assert!(matches!(store.scan(space, &KeyRange::all(), 1), Err(ReadError::Invalid(_))));
        let visited = store.for_each(space, &mut |_, _| ControlFlow::Continue(()));
        assert!(matches!(visited, Err(ReadError::Invalid(_))));
    }
    let huge = KeyRange::before_key(vec![0; STORE_KEY_BYTES_MAX + 1]);
    assert!(matches!(store.scan("s", &huge, 1), Err(ReadError::Invalid(_))));
    let longest = "y".repeat(SPACE_NAME_BYTES_MAX);
    let mut batch = WriteBatch::new();
    batch.put(longest.clone(), b"k".to_vec(), b"v".to_vec());
    commit(store, batch);
    assert_eq!(get(store, &longest, b"k"), Some(b"v".to_vec()));
}

/// An empty batch commits and changes nothing.
pub fn empty_batch_commits_and_changes_nothing<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch.put("s", b"k".to_vec(), b"v".to_vec());
    commit(store, batch);
    commit(store, WriteBatch::new());
    assert_eq!(all_entries(store, "s"), vec![entry(b"k", b"v")]);
    assert_eq!(spaces(store), vec!["s"]);
}

/// The empty key and the empty value are ordinary data.
pub fn empty_keys_and_values_are_stored<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    batch.put("s", Vec::new(), Vec::new()).put("s", vec![0], Vec::new());
    commit(store, batch);
    assert_eq!(get(store, "s", b""), Some(Vec::new()));
    assert_eq!(all_entries(store, "s"), vec![entry(b"", b""), entry(&[0], b"")]);
    let mut batch = WriteBatch::new();
    batch.delete("s", Vec::new());
    commit(store, batch);
    assert_eq!(get(store, "s", b""), None);
}

/// Keys and values at their size limits round-trip byte for byte.
pub fn large_values_round_trip<S: Storage + ?Sized>(store: &S) {
    let key: Vec<u8> = (0..STORE_KEY_BYTES_MAX).map(|i| (i % 251) as u8).collect();
    let value: Vec<u8> = (0..STORE_VALUE_BYTES_MAX).map(|i| (i % 253) as u8).collect();
    let mut batch = WriteBatch::new();
    batch.put("big", key.clone(), value.clone());
    commit(store, batch);
    assert!(get(store, "big", &key) == Some(value), "the largest value must round-trip");
}

/// `for_each` visits all entries ascending and stops at `Break`.
pub fn for_each_visits_every_entry_in_order_and_stops_on_break<S: Storage + ?Sized>(store: &S) {
    let mut batch = WriteBatch::new();
    for i in (0u8..20).rev() {
        batch.put("s", vec![i], vec![i, i]);
    }
    batch.put("other", vec![0], vec![]);
    commit(store, batch);
    let expected: Vec<_> = (0u8..20).map(|i| (vec![i], vec![i, i])).collect();
    assert_eq!(all_entries(store, "s"), expected);
    let mut visited = 0;
    let result = store.for_each("s", &mut |_, _| {
        visited += 1;
        if visited == 5 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    assert!(result.is_ok());
    assert_eq!(visited, 5);
    assert!(all_entries(store, "absent").is_empty());
}

/// Commits from many threads at once all land (the store is `Send + Sync`).
pub fn concurrent_commits_from_many_threads_are_all_visible<S: Storage + ?Sized>(store: &S) {
    const THREADS: u8 = 8;
    const COMMITS_PER_THREAD: u8 = 20;
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                for i in 0..COMMITS_PER_THREAD {
                    let mut batch = WriteBatch::new();
                    batch.put("c", vec![thread, i], vec![thread ^ i]);
                    commit(store, batch);
                }
            });
        }
    });
    let entries = all_entries(store, "c");
    assert_eq!(entries.len(), usize::from(THREADS) * usize::from(COMMITS_PER_THREAD));
    for (key, value) in entries {
        assert_eq!(value, vec![key[0] ^ key[1]]);
    }
}

/// A concurrent reader sees every batch whole or not at all: two keys that
/// every batch sets to the same counter always read equal.
pub fn readers_never_observe_part_of_a_batch<S: Storage + ?Sized>(store: &S) {
    const ROUNDS: u32 = 50;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..ROUNDS {
                let mut batch = WriteBatch::new();
                batch.put("pair", b"a".to_vec(), round.to_be_bytes().to_vec()).put(
                    "pair",
                    b"b".to_vec(),
                    round.to_be_bytes().to_vec(),
                );
                commit(store, batch);
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut observed = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || observed == 0 {
            let page = scan(store, "pair", &KeyRange::all(), 10);
            if let [(_, a), (_, b)] = page.entries.as_slice() {
                assert_eq!(a, b, "a scan saw part of a batch");
                observed += 1;
            } else {
                assert!(page.entries.is_empty(), "a scan saw one key of a pair");
            }
        }
    });
}

/// One step of a model-checked run.
#[derive(Clone, Debug)]
pub enum ModelStep {
    /// Commit a batch (possibly invalid; the model predicts the refusal).
    Commit(WriteBatch),
    /// Compare `get`.
    Get {
        /// Keyspace.
        space: String,
        /// Key.
        key: Vec<u8>,
    },
    /// Compare one `scan` page.
    Scan {
        /// Keyspace.
        space: String,
        /// Range.
        range: KeyRange,
        /// Page size asked for.
        limit: usize,
    },
    /// Compare `spaces` and the full contents of every keyspace.
    Everything,
}

/// A deliberately naive reference model: keyspaces kept even when empty,
/// ranges checked key by key with [`KeyRange::contains`].
#[derive(Debug, Default, Clone)]
pub struct Model {
    spaces: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Model {
    /// Applies a batch the model accepts (the caller checks validity).
    pub fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                BatchOp::Put { space, key, value } => {
                    self.spaces.entry(space.clone()).or_default().insert(key.clone(), value.clone());
                }
                BatchOp::Delete { space, key } => {
                    self.spaces.entry(space.clone()).or_default().remove(key);
                }
                BatchOp::DeleteRange { space, range } => {
                    self.spaces.entry(space.clone()).or_default().retain(|key, _| !range.contains(key));
                }
            }
        }
    }

    /// The model's `get`.
    pub fn get(&self, space: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.spaces.get(space)?.get(key).cloned()
    }

    /// The model's `scan`.
    pub fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> ScanPage {
        let limit = limit.min(SCAN_LIMIT_MAX);
        let mut matching = self.spaces.get(space).into_iter().flatten().filter(|(key, _)| range.contains(key));
        let entries: Vec<_> = matching.by_ref().take(limit).map(|(key, value)| (key.clone(), value.clone())).collect();
        let resume = matching.next().map(|(key, _)| key.clone());
        ScanPage { entries, resume }
    }

    /// The model's `spaces`.
    pub fn spaces(&self) -> Vec<String> {
        self.spaces.iter().filter(|(_, entries)| !entries.is_empty()).map(|(name, _)| name.clone()).collect()
    }

    /// Every entry of `space`, ascending.
    pub fn entries(&self, space: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.spaces.get(space).into_iter().flatten().map(|(key, value)| (key.clone(), value.clone())).collect()
    }
}

/// Runs `steps` against `store` (fresh and empty) and a [`Model`], panicking
/// at the first divergence. Returns the final model, so a caller can check a
/// reopened store against it.
pub fn run_model<S: Storage + ?Sized>(store: &S, steps: &[ModelStep]) -> Model {
    let mut model = Model::default();
    for (index, step) in steps.iter().enumerate() {
        match step {
            ModelStep::Commit(batch) => {
                let expected_valid = batch.validate().is_ok();
                match store.commit(batch.clone()) {
                    Ok(()) => {
                        assert!(expected_valid, "step {index}: invalid batch accepted");
                        model.apply(batch);
                    }
                    Err(CommitError::Invalid(_)) => {
                        assert!(!expected_valid, "step {index}: valid batch refused");
                    }
                    Err(err) => panic!("step {index}: commit failed: {err}"),
                }
            }
            ModelStep::Get { space, key } => {
                assert_eq!(get(store, space, key), model.get(space, key), "step {index}: {step:?}");
            }
            ModelStep::Scan { space, range, limit } => {
                assert_eq!(
                    scan(store, space, range, *limit),
                    model.scan(space, range, *limit),
                    "step {index}: {step:?}"
                );
            }
            ModelStep::Everything => check_everything(store, &model),
        }
    }
    check_everything(store, &model);
    model
}

/// Asserts that `store` holds exactly what `model` holds.
pub fn check_everything<S: Storage + ?Sized>(store: &S, model: &Model) {
    let names = model.spaces();
    assert_eq!(spaces(store), names, "keyspace lists differ");
    for name in &names {
        assert_eq!(all_entries(store, name), model.entries(name), "keyspace {name:?} differs");
    }
}

/// Keyspace names the decoded steps use; two of them share a prefix on purpose.
const MODEL_SPACES: [&str; 4] = ["a", "a/b", "meta", "ns/x/entries"];

/// Key bytes the decoded steps use: few, so keys collide, and including the
/// extremes of the byte order.
const MODEL_KEY_BYTES: [u8; 4] = [0x00, 0x01, 0x7f, 0xff];

/// Most steps decoded from one input, so a fuzz input bounds its own cost.
pub const MODEL_STEPS_MAX: usize = 256;

struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    fn space(&mut self) -> Option<String> {
        let choice = self.byte()?;
        Some(MODEL_SPACES[usize::from(choice) % MODEL_SPACES.len()].to_owned())
    }

    fn key(&mut self) -> Option<Vec<u8>> {
        let len = self.byte()? % 4;
        (0..len).map(|_| self.byte().map(|b| MODEL_KEY_BYTES[usize::from(b) % MODEL_KEY_BYTES.len()])).collect()
    }

    fn value(&mut self) -> Option<Vec<u8>> {
        let len = self.byte()? % 4;
        (0..len).map(|_| self.byte()).collect()
    }

    fn bound(&mut self) -> Option<Bound<Vec<u8>>> {
        Some(match self.byte()? % 3 {
            0 => Bound::Included(self.key()?),
            1 => Bound::Excluded(self.key()?),
            _ => Bound::Unbounded,
        })
    }

    fn range(&mut self) -> Option<KeyRange> {
        Some(KeyRange { start: self.bound()?, end: self.bound()? })
    }

    fn op(&mut self) -> Option<BatchOp> {
        Some(match self.byte()? % 16 {
            0..=6 => BatchOp::Put { space: self.space()?, key: self.key()?, value: self.value()? },
            7..=11 => BatchOp::Delete { space: self.space()?, key: self.key()? },
            12..=14 => BatchOp::DeleteRange { space: self.space()?, range: self.range()? },
            // Rarely an invalid op, so refusal and its atomicity are exercised.
            _ => BatchOp::Put { space: String::new(), key: self.key()?, value: Vec::new() },
        })
    }

    fn step(&mut self) -> Option<ModelStep> {
        Some(match self.byte()? % 8 {
            0..=3 => {
                let count = self.byte()? % 6;
                let mut batch = WriteBatch::new();
                for _ in 0..count {
                    batch.push(self.op()?);
                }
                ModelStep::Commit(batch)
            }
            4 => ModelStep::Get { space: self.space()?, key: self.key()? },
            5 | 6 => {
                ModelStep::Scan { space: self.space()?, range: self.range()?, limit: usize::from(self.byte()? % 5) }
            }
            _ => ModelStep::Everything,
        })
    }
}

/// Decodes arbitrary bytes into at most [`MODEL_STEPS_MAX`] steps; every
/// input decodes, trailing bytes that do not make a whole step are ignored.
pub fn steps_from_bytes(data: &[u8]) -> Vec<ModelStep> {
    let mut cursor = Cursor { data };
    let mut steps = Vec::new();
    while steps.len() < MODEL_STEPS_MAX {
        match cursor.step() {
            Some(step) => steps.push(step),
            None => break,
        }
    }
    steps
}
