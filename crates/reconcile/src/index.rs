//! The incrementally maintained summary of one namespace's items.
//!
//! Every item `(key, digest)` is mapped to a 64-bit *tag*, a keyed BLAKE3 hash
//! of the key and its version digest. Items are ordered by tag, so the tag is
//! also the item's position in a uniformly populated 64-bit hash space. A
//! *range* is a bit prefix of that space ([`Prefix`]); because both peers split
//! ranges at the same implicit boundaries, no boundary ever travels on the wire
//! (unlike negentropy, which sends a key prefix per range).
//!
//! A range's summary is a [`RangeFingerprint`]: the sum of its tags mod 2^64
//! and the sum of a non-linear 32-bit check of each tag mod 2^32. Sums (not XOR)
//! make the fingerprint an element of an abelian group, so it can be
//! maintained by adding and subtracting one item at a time, and the difference
//! of two peers' fingerprints over a range that differs in exactly one item
//! *is* that item's tag (the "pure cell" of an invertible Bloom lookup table).
//! The check sum recognises such pure differences.
//!
//! Range sums come from a Fenwick tree over `2^bucket_bits` equal buckets of
//! the hash space, plus a short ordered scan inside one bucket for ranges
//! narrower than a bucket: `O(log n)` per query and per update, no rescan.
//! The design is `docs/design/anti-entropy.md`, "2. Summary structure:
//! `ItemIndex`"; the papers behind both ideas are in its "References".

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::OnceLock;

/// A key as stored by the caller: at most [`KEY_BYTES_MAX`] bytes.
pub type Key = Vec<u8>;

/// The caller's hash of a key's current CRDT state.
pub type Digest = [u8; 16];

/// The largest key, in bytes: the product's key limit (4 KiB),
/// defined here once, at the bottom of the dependency graph; `chorus-core`
/// re-exports it as `limits::KEY_BYTES_MAX` and `chorus-strong` uses it too.
pub const KEY_BYTES_MAX: usize = 4096;

/// Bucket bits of a fresh index: a 4,096-bucket Fenwick tree (64 KiB), enough
/// for small namespaces; the index grows it as items arrive.
pub const BUCKET_BITS_DEFAULT: u8 = 12;

/// Upper bound on bucket bits (a 16 MiB Fenwick tree), reached at about 64
/// million items; beyond that, in-bucket scans grow slowly.
pub const BUCKET_BITS_MAX: u8 = 20;

/// The index regrows its Fenwick tree once buckets hold this many items on
/// average, so that in-bucket scans stay short.
const TARGET_ITEMS_PER_BUCKET_MAX: usize = 64;

/// BLAKE3 key-derivation context: separates item tags from every other use of
/// BLAKE3 in chorus.
const TAG_CONTEXT: &str = "chorus-reconcile 2026-11 item tag v1";

/// Errors of [`ItemIndex::insert`] and [`ItemIndex::from_items`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexError {
    /// The key exceeds [`KEY_BYTES_MAX`]; the index is unchanged.
    #[error("key of {len} bytes exceeds the {max}-byte limit")]
    KeyTooLong {
        /// Length of the rejected key.
        len: usize,
        /// The limit, [`KEY_BYTES_MAX`].
        max: usize,
    },
}

fn tag_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| blake3::derive_key(TAG_CONTEXT, &[]))
}

/// The 64-bit tag of one item: its position in the hash space and its
/// contribution to range fingerprints. The key length is hashed first so that
/// `(key, digest)` pairs cannot be confused by shifting bytes between them.
pub fn item_tag(key: &[u8], digest: &Digest) -> u64 {
    let mut hasher = blake3::Hasher::new_keyed(tag_key());
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(digest);
    let out = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The non-linear 32-bit check of a tag: MurmurHash3's 64-bit finaliser
/// (`fmix64`), upper half. Non-linearity is what makes a sum of several
/// checks unlikely (2^-32) to equal the check of the sum of their tags.
pub fn tag_check(tag: u64) -> u32 {
    let mut x = tag ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 32) as u32
}

/// The summary of a multiset of items: sums of tags and of tag checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeFingerprint {
    /// Sum of the items' tags, mod 2^64.
    pub tag_sum: u64,
    /// Sum of [`tag_check`] of the items' tags, mod 2^32.
    pub check_sum: u32,
}

impl RangeFingerprint {
    /// The fingerprint of an empty range.
    pub const EMPTY: RangeFingerprint = RangeFingerprint { tag_sum: 0, check_sum: 0 };

    /// The fingerprint of a single item with this tag.
    pub fn of_tag(tag: u64) -> Self {
        RangeFingerprint { tag_sum: tag, check_sum: tag_check(tag) }
    }

    /// Multiset union.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        RangeFingerprint {
            tag_sum: self.tag_sum.wrapping_add(other.tag_sum),
            check_sum: self.check_sum.wrapping_add(other.check_sum),
        }
    }

    /// Multiset difference (a group operation: `a.union(b).difference(b) == a`).
    #[must_use]
    pub fn difference(self, other: Self) -> Self {
        RangeFingerprint {
            tag_sum: self.tag_sum.wrapping_sub(other.tag_sum),
            check_sum: self.check_sum.wrapping_sub(other.check_sum),
        }
    }

    /// If this difference looks like exactly one item, its tag.
    pub fn single_tag(self) -> Option<u64> {
        (self != Self::EMPTY && self.check_sum == tag_check(self.tag_sum)).then_some(self.tag_sum)
    }

    /// This fingerprint as sent for a range at `depth`: the tag sum keeps
    /// only its low [`tag_sum_bytes`]`(depth)` bytes.
    #[must_use]
    pub fn truncated(self, depth: u8) -> Self {
        RangeFingerprint { tag_sum: self.tag_sum & tag_sum_mask(depth), check_sum: self.check_sum }
    }

    /// For the difference of two fingerprints of `range` (either or both
    /// truncated): whether they are equal.
    pub fn is_empty_in(self, range: Prefix) -> bool {
        self.truncated(range.depth()) == Self::EMPTY
    }

    /// For the difference of two fingerprints of `range` (either or both
    /// truncated): if it looks like exactly one item, that item's tag. The
    /// tag's top bits come from the range; the bits the sum carries beyond
    /// them must agree with the range, and the check must match.
    pub fn single_tag_in(self, range: Prefix) -> Option<u64> {
        if self.is_empty_in(range) {
            return None;
        }
        let mask = tag_sum_mask(range.depth());
        let tag = (range.first_tag() & !mask) | (self.tag_sum & mask);
        (range.contains(tag) && self.check_sum == tag_check(tag)).then_some(tag)
    }
}

/// Bytes of a range's tag sum on the wire for a range at `depth`. Every tag
/// in the range starts with the same `depth` bits, so the low `64 - depth`
/// bits of the sum (mod 2^(64-depth)) still decode a single-item difference
/// exactly; a group of four cells at depth 16 saves 8 of 48 bytes.
pub fn tag_sum_bytes(depth: u8) -> usize {
    (64usize.saturating_sub(usize::from(depth))).div_ceil(8).max(1)
}

/// The mask of the bits of a tag sum kept on the wire at `depth`.
pub fn tag_sum_mask(depth: u8) -> u64 {
    match tag_sum_bytes(depth) {
        8 => u64::MAX,
        bytes => (1u64 << (8 * bytes)) - 1,
    }
}

/// A range of the tag space: all tags whose top `depth` bits equal `bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    depth: u8,
    bits: u64,
}

impl Prefix {
    /// The whole tag space.
    pub const ROOT: Prefix = Prefix { depth: 0, bits: 0 };

    /// A prefix of `depth` bits (at most 64) whose value is `bits`
    /// (`bits < 2^depth`); `None` otherwise.
    pub fn new(depth: u8, bits: u64) -> Option<Self> {
        if depth > 64 || (depth < 64 && bits >> depth != 0) {
            return None;
        }
        Some(Prefix { depth, bits })
    }

    /// The prefix of length `depth` (at most 64) that contains `tag`.
    pub fn containing(tag: u64, depth: u8) -> Option<Self> {
        match depth {
            0 => Some(Self::ROOT),
            1..=64 => Some(Prefix { depth, bits: tag >> (64 - u32::from(depth)) }),
            _ => None,
        }
    }

    /// Number of leading tag bits fixed by this prefix.
    pub fn depth(self) -> u8 {
        self.depth
    }

    /// The value of those bits.
    pub fn bits(self) -> u64 {
        self.bits
    }

    /// Smallest tag in the range.
    pub fn first_tag(self) -> u64 {
        if self.depth == 0 { 0 } else { self.bits << (64 - u32::from(self.depth)) }
    }

    /// Largest tag in the range.
    pub fn last_tag(self) -> u64 {
        let free = 64 - u32::from(self.depth);
        if free == 64 { u64::MAX } else { self.first_tag() | ((1u64 << free) - 1) }
    }

    /// Whether `tag` lies in this range.
    pub fn contains(self, tag: u64) -> bool {
        self.first_tag() <= tag && tag <= self.last_tag()
    }

    /// Child `index` of a split into `2^fanout_bits` equal parts; `None` if
    /// the child would be deeper than 64 bits or `index` is out of range.
    pub fn child(self, fanout_bits: u8, index: u64) -> Option<Self> {
        let depth = self.depth.checked_add(fanout_bits)?;
        if depth > 64 || (fanout_bits < 64 && index >> fanout_bits != 0) {
            return None;
        }
        let bits = if fanout_bits == 64 { index } else { (self.bits << fanout_bits) | index };
        Some(Prefix { depth, bits })
    }
}

/// The set of items of one namespace, with range fingerprints kept current on
/// every write.
///
/// Invariants: `by_key` and `by_tag` hold the same items; `fenwick` is the
/// Fenwick tree of per-bucket fingerprints of exactly those items.
#[derive(Clone, Debug)]
pub struct ItemIndex {
    bucket_bits: u8,
    by_key: BTreeMap<Key, Digest>,
    by_tag: BTreeSet<(u64, Key)>,
    /// 1-based Fenwick tree with `2^bucket_bits` leaves.
    fenwick: Vec<RangeFingerprint>,
}

impl Default for ItemIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl ItemIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::with_bucket_bits(BUCKET_BITS_DEFAULT)
    }

    /// An empty index whose Fenwick tree starts with `2^bucket_bits` buckets
    /// (clamped to `1..=BUCKET_BITS_MAX`): for namespaces known to be large,
    /// and for tests of the regrowth path.
    pub fn with_bucket_bits(bucket_bits: u8) -> Self {
        let bucket_bits = bucket_bits.clamp(1, BUCKET_BITS_MAX);
        ItemIndex {
            bucket_bits,
            by_key: BTreeMap::new(),
            by_tag: BTreeSet::new(),
            fenwick: vec![RangeFingerprint::EMPTY; (1usize << bucket_bits) + 1],
        }
    }

    /// Current number of bucket bits of the Fenwick tree.
    pub fn bucket_bits(&self) -> u8 {
        self.bucket_bits
    }

    /// Rebuilds an index from a full item list (at restart): one sort and two
    /// bulk loads, `O(n log n)`, no per-item tree updates. A later duplicate
    /// key replaces an earlier one.
    pub fn from_items<I>(items: I) -> Result<Self, IndexError>
    where
        I: IntoIterator<Item = (Key, Digest)>,
    {
        let mut sorted: Vec<(Key, Digest)> = Vec::new();
        for (key, digest) in items {
            if key.len() > KEY_BYTES_MAX {
                return Err(IndexError::KeyTooLong { len: key.len(), max: KEY_BYTES_MAX });
            }
            sorted.push((key, digest));
        }
        // Stable, so that among duplicates the last one given comes last.
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut by_tag: Vec<(u64, Key)> = Vec::with_capacity(sorted.len());
        let mut deduplicated: Vec<(Key, Digest)> = Vec::with_capacity(sorted.len());
        let mut items = sorted.into_iter().peekable();
        while let Some((key, digest)) = items.next() {
            if items.peek().is_some_and(|(next, _)| *next == key) {
                continue;
            }
            by_tag.push((item_tag(&key, &digest), key.clone()));
            deduplicated.push((key, digest));
        }
        by_tag.sort_unstable();
        // Both inputs are sorted, so these are linear bulk loads.
        let by_key: BTreeMap<Key, Digest> = deduplicated.into_iter().collect();
        let by_tag: BTreeSet<(u64, Key)> = by_tag.into_iter().collect();
        let mut index = ItemIndex { bucket_bits: bucket_bits_for(by_key.len()), by_key, by_tag, fenwick: Vec::new() };
        index.rebuild_fenwick();
        Ok(index)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the index holds no item.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The digest stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Digest> {
        self.by_key.get(key)
    }

    /// Inserts or updates `key` with `digest`, returning the previous digest.
    /// `O(log n)` (amortised: the Fenwick tree is regrown, `O(n)`, each time
    /// the item count quadruples past a bucket threshold).
    pub fn insert(&mut self, key: Key, digest: Digest) -> Result<Option<Digest>, IndexError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(IndexError::KeyTooLong { len: key.len(), max: KEY_BYTES_MAX });
        }
        let previous = self.by_key.get(&key).copied();
        if previous == Some(digest) {
            return Ok(previous);
        }
        if let Some(old) = previous {
            let old_tag = item_tag(&key, &old);
            self.by_tag.remove(&(old_tag, key.clone()));
            self.fenwick_add(old_tag, RangeFingerprint::EMPTY.difference(RangeFingerprint::of_tag(old_tag)));
        }
        let tag = item_tag(&key, &digest);
        self.fenwick_add(tag, RangeFingerprint::of_tag(tag));
        self.by_tag.insert((tag, key.clone()));
        self.by_key.insert(key, digest);
        if self.bucket_bits < BUCKET_BITS_MAX && self.by_key.len() > TARGET_ITEMS_PER_BUCKET_MAX << self.bucket_bits {
            self.bucket_bits = bucket_bits_for(self.by_key.len()).max(self.bucket_bits + 1);
            self.rebuild_fenwick();
        }
        Ok(previous)
    }

    /// Removes `key`, returning its digest. `O(log n)`.
    pub fn remove(&mut self, key: &[u8]) -> Option<Digest> {
        let (key, digest) = self.by_key.remove_entry(key)?;
        let tag = item_tag(&key, &digest);
        self.by_tag.remove(&(tag, key));
        self.fenwick_add(tag, RangeFingerprint::EMPTY.difference(RangeFingerprint::of_tag(tag)));
        Some(digest)
    }

    /// Iterates over all items in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Digest)> {
        self.by_key.iter()
    }

    /// The fingerprint of the whole set.
    pub fn fingerprint(&self) -> RangeFingerprint {
        self.range_fingerprint(Prefix::ROOT)
    }

    /// The fingerprint of the items whose tags lie in `range`: `O(log n)`.
    pub fn range_fingerprint(&self, range: Prefix) -> RangeFingerprint {
        let buckets = self.bucket_bits;
        if range.depth() <= buckets {
            let shift = u32::from(buckets - range.depth());
            // depth <= bucket_bits <= 20, so these fit in usize.
            let first = (range.bits() as usize) << shift;
            let end = ((range.bits() as usize) + 1) << shift;
            self.fenwick_prefix(end).difference(self.fenwick_prefix(first))
        } else {
            self.tags_in(range).fold(RangeFingerprint::EMPTY, |acc, tag| acc.union(RangeFingerprint::of_tag(tag)))
        }
    }

    /// Number of items whose tags lie in `range` (an ordered scan: use for
    /// small ranges and tests only).
    pub fn count_in(&self, range: Prefix) -> usize {
        self.tags_in(range).count()
    }

    /// The keys of the items with exactly this tag (normally zero or one).
    pub fn keys_with_tag(&self, tag: u64) -> impl Iterator<Item = &Key> {
        self.by_tag
            .range((Bound::Included((tag, Vec::new())), Bound::Unbounded))
            .take_while(move |(t, _)| *t == tag)
            .map(|(_, key)| key)
    }

    fn tags_in(&self, range: Prefix) -> impl Iterator<Item = u64> + '_ {
        let low = Bound::Included((range.first_tag(), Vec::new()));
        let high = match range.last_tag().checked_add(1) {
            Some(next) => Bound::Excluded((next, Vec::new())),
            None => Bound::Unbounded,
        };
        self.by_tag.range((low, high)).map(|(tag, _)| *tag)
    }

    fn bucket_of(&self, tag: u64) -> usize {
        // bucket_bits is in 1..=20, so the shift is in 44..=63.
        (tag >> (64 - u32::from(self.bucket_bits))) as usize
    }

    fn fenwick_add(&mut self, tag: u64, delta: RangeFingerprint) {
        let mut i = self.bucket_of(tag) + 1;
        while i < self.fenwick.len() {
            self.fenwick[i] = self.fenwick[i].union(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Sum over buckets `[0, end)`.
    fn fenwick_prefix(&self, end: usize) -> RangeFingerprint {
        let mut sum = RangeFingerprint::EMPTY;
        let mut i = end;
        while i > 0 {
            sum = sum.union(self.fenwick[i]);
            i &= i - 1;
        }
        sum
    }

    fn rebuild_fenwick(&mut self) {
        let size = 1usize << self.bucket_bits;
        let mut tree = vec![RangeFingerprint::EMPTY; size + 1];
        for (tag, _) in &self.by_tag {
            let i = self.bucket_of(*tag) + 1;
            tree[i] = tree[i].union(RangeFingerprint::of_tag(*tag));
        }
        for i in 1..=size {
            let parent = i + (i & i.wrapping_neg());
            if parent <= size {
                tree[parent] = tree[parent].union(tree[i]);
            }
        }
        self.fenwick = tree;
    }
}

/// Bucket bits for `len` items: at most about 16 items per bucket, within
/// `[BUCKET_BITS_DEFAULT, BUCKET_BITS_MAX]`.
fn bucket_bits_for(len: usize) -> u8 {
    let mut bits = BUCKET_BITS_DEFAULT;
    while bits < BUCKET_BITS_MAX && (16usize << bits) < len {
        bits += 1;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_children_tile_their_parent() {
        let parent = Prefix::new(3, 0b101).unwrap();
        let first = parent.child(2, 0).unwrap();
        let last = parent.child(2, 3).unwrap();
        assert_eq!(first.first_tag(), parent.first_tag());
        assert_eq!(last.last_tag(), parent.last_tag());
        assert_eq!(first.last_tag() + 1, parent.child(2, 1).unwrap().first_tag());
        assert!(parent.child(2, 4).is_none());
        assert!(Prefix::new(64, u64::MAX).unwrap().child(1, 0).is_none());
        assert!(Prefix::new(3, 8).is_none());
    }

    #[test]
    fn a_single_item_difference_is_recognised_as_pure() {
        let tag = item_tag(b"k", &[7; 16]);
        let one = RangeFingerprint::of_tag(tag);
        let other = RangeFingerprint::of_tag(item_tag(b"j", &[7; 16]));
        assert_eq!(one.union(other).difference(other).single_tag(), Some(tag));
        assert_eq!(one.union(other).single_tag(), None);
        assert_eq!(RangeFingerprint::EMPTY.single_tag(), None);
    }

    #[test]
    fn updating_a_key_replaces_its_old_tag() {
        let mut index = ItemIndex::new();
        index.insert(b"a".to_vec(), [1; 16]).unwrap();
        index.insert(b"a".to_vec(), [2; 16]).unwrap();
        let expected = RangeFingerprint::of_tag(item_tag(b"a", &[2; 16]));
        assert_eq!(index.fingerprint(), expected);
        assert_eq!(index.len(), 1);
        assert_eq!(index.remove(b"a"), Some([2; 16]));
        assert_eq!(index.fingerprint(), RangeFingerprint::EMPTY);
    }

    #[test]
    fn a_rebuild_keeps_the_last_of_duplicate_keys() {
        let index = ItemIndex::from_items([
            (b"b".to_vec(), [1; 16]),
            (b"a".to_vec(), [1; 16]),
            (b"b".to_vec(), [2; 16]),
            (b"b".to_vec(), [3; 16]),
        ])
        .unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(b"b"), Some(&[3; 16]));
        let expected = RangeFingerprint::of_tag(item_tag(b"a", &[1; 16]))
            .union(RangeFingerprint::of_tag(item_tag(b"b", &[3; 16])));
        assert_eq!(index.fingerprint(), expected);
    }

    #[test]
    fn growing_past_the_bucket_threshold_regrows_the_fenwick_tree() {
        let mut index = ItemIndex::with_bucket_bits(1);
        for i in 0u32..200 {
            index.insert(i.to_le_bytes().to_vec(), [0; 16]).unwrap();
        }
        assert!(index.bucket_bits() > 1);
        let rebuilt = ItemIndex::from_items(index.iter().map(|(k, d)| (k.clone(), *d))).unwrap();
        for depth in [0u8, 1, 2, 7, 13, 30] {
            let prefix = Prefix::containing(0xdead_beef_0000_0000, depth).unwrap();
            assert_eq!(index.range_fingerprint(prefix), rebuilt.range_fingerprint(prefix));
        }
    }

    #[test]
    fn oversized_keys_are_rejected() {
        let mut index = ItemIndex::new();
        let err = index.insert(vec![0; KEY_BYTES_MAX + 1], [0; 16]).unwrap_err();
        assert_eq!(err, IndexError::KeyTooLong { len: KEY_BYTES_MAX + 1, max: KEY_BYTES_MAX });
        assert!(index.is_empty());
    }
}
