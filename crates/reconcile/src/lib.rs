//! Sans-IO set reconciliation for chorus anti-entropy.
//!
//! Two nodes each hold, for one namespace, a set of items `(key, digest)`,
//! where the digest is the caller's hash of the key's current CRDT state.
//! A session finds exactly the keys whose items differ — present on one side
//! only, or present on both with different digests — with traffic that grows
//! with the number of differences `d` and not with the set size `n`.
//!
//! The method is range-based set reconciliation (as in the negentropy
//! protocol) over a hash-ordered keyspace, where ranges are bit prefixes of a
//! 64-bit item tag, so range boundaries are implicit, and where a range that
//! differs in exactly one item is decoded directly from the fingerprint
//! difference, as a pure cell of an invertible Bloom lookup table. See
//! `docs/design/anti-entropy.md`; the papers are in its "References".
//!
//! - [`ItemIndex`]: the per-namespace summary, updated in `O(log n)` on every
//!   insert, update and remove, rebuildable from a full item list.
//! - [`Reconciler`]: one side of one session; [`Reconciler::initiate`] and
//!   [`Reconciler::handle`] consume and produce [`Message`]s, never I/O.
//! - [`Message::encode`] / [`Message::decode`]: the versioned wire format.
//!
//! The benchmark against negentropy and a full-state transfer is not here:
//! it reads the clock, so it lives in the `chorus` binary
//! (`chorus bench anti-entropy`).

mod index;
mod session;
mod wire;

pub use index::{
    BUCKET_BITS_DEFAULT, BUCKET_BITS_MAX, Digest, IndexError, ItemIndex, KEY_BYTES_MAX, Key, Prefix, RangeFingerprint,
    item_tag, tag_check, tag_sum_bytes, tag_sum_mask,
};
pub use session::{
    FANOUT_BITS, MESSAGES_PER_SESSION_MAX, ROOT_FANOUT_BITS, ReconcileError, Reconciler, SESSION_ITEMS_MAX, Step,
};
pub use wire::{
    ACKS_PER_MESSAGE_MAX, CELLS_PER_MESSAGE_MAX, DecodeError, FANOUT_BITS_MAX, Group, KEY_BYTES_PER_MESSAGE_MAX,
    KEYS_PER_MESSAGE_MAX, MESSAGE_BYTES_MAX, Message, WANTS_PER_MESSAGE_MAX, WIRE_VERSION, Want,
};
