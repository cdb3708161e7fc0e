//! The versioned binary encoding of reconciliation messages.
//!
//! Layout: one version byte ([`WIRE_VERSION`]) followed by a postcard body.
//! Integers that are random (tag sums, checks, wanted tags) are fixed-width
//! little-endian byte arrays, because a varint of a uniform 64-bit value costs
//! ten bytes; small integers (depths, prefixes, lengths) are postcard varints.
//! Nothing on the wire is a `usize`.
//!
//! Every message is bounded: a decoder rejects anything above
//! [`MESSAGE_BYTES_MAX`] or with more than the per-kind limits below, and the
//! [`crate::Reconciler`] never builds a message that exceeds them, so a large
//! difference is reconciled over several round trips.

use serde::{Deserialize, Serialize};

use crate::index::{KEY_BYTES_MAX, Key, Prefix, RangeFingerprint, tag_sum_bytes};

/// Version byte that starts every message.
pub const WIRE_VERSION: u8 = 1;

/// Largest encoded message accepted by [`Message::decode`].
pub const MESSAGE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most range fingerprints (cells) in one message: 16,384 × 12 bytes ≈ 192 KiB.
pub const CELLS_PER_MESSAGE_MAX: usize = 16_384;

/// Most wanted tags in one message.
pub const WANTS_PER_MESSAGE_MAX: usize = 16_384;

/// Most announced keys in one message.
pub const KEYS_PER_MESSAGE_MAX: usize = 16_384;

/// Most acknowledged keys in one message.
pub const ACKS_PER_MESSAGE_MAX: usize = 16_384;

/// Most key bytes in one message (a single key of [`KEY_BYTES_MAX`] always
/// fits).
pub const KEY_BYTES_PER_MESSAGE_MAX: usize = 512 * 1024;

/// Largest split: a group carries at most `2^FANOUT_BITS_MAX` cells.
pub const FANOUT_BITS_MAX: u8 = 8;

/// The children of one range, split into `cells.len()` (a power of two) equal
/// parts, with the sender's fingerprint of each part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The range that was split.
    pub parent: Prefix,
    /// The sender's fingerprint of child `i` of `parent`, truncated to the
    /// child's depth ([`RangeFingerprint::truncated`]).
    pub cells: Vec<RangeFingerprint>,
}

impl Group {
    /// `log2(cells.len())`; the decoder guarantees a power of two.
    pub fn fanout_bits(&self) -> u8 {
        // cells.len() is at most 2^FANOUT_BITS_MAX, so trailing_zeros < 9.
        self.cells.len().trailing_zeros() as u8
    }
}

/// "My fingerprints say you hold an item with this tag in this range that I
/// lack: tell me its key." If the receiver holds no such item (a false pure
/// cell, probability about 2^-32 per impure cell), it splits `range` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// The range whose cell difference decoded to `tag`.
    pub range: Prefix,
    /// The decoded tag; `range.contains(tag)` holds.
    pub tag: u64,
}

/// One reconciliation message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// The sender has nothing queued beyond this message.
    pub(crate) fin: bool,
    pub(crate) groups: Vec<Group>,
    pub(crate) wants: Vec<Want>,
    /// Keys of items the sender holds and the receiver lacks or holds in a
    /// different version.
    pub(crate) keys: Vec<Key>,
    /// Session-wide sequence numbers (strictly increasing) of keys the
    /// receiver announced that the sender holds in another version.
    pub(crate) acks: Vec<u32>,
}

/// Errors of [`Message::decode`]. Decoding changes no state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is empty.
    #[error("empty message")]
    Empty,
    /// The input exceeds [`MESSAGE_BYTES_MAX`].
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The version byte is not [`WIRE_VERSION`].
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    /// The body is not a valid postcard encoding of a message.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// Bytes remain after the message body.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A group's fanout exceeds [`FANOUT_BITS_MAX`].
    #[error("group fanout of 2^{0} exceeds 2^{FANOUT_BITS_MAX}")]
    BadFanout(u8),
    /// A group's cell bytes do not match its fanout and depth.
    #[error("group has {len} cell bytes; its fanout and depth need {expected}")]
    BadCells {
        /// Cell bytes found.
        len: usize,
        /// Cell bytes required.
        expected: usize,
    },
    /// A range prefix is longer than 64 bits or has bits beyond its depth, or
    /// a split goes deeper than 64 bits.
    #[error("invalid range prefix (depth {depth})")]
    BadRange {
        /// The offending depth.
        depth: u8,
    },
    /// A wanted tag lies outside its range.
    #[error("wanted tag lies outside its range")]
    WantOutsideRange,
    /// More cells, wants, keys or key bytes than the per-message limits.
    #[error("message exceeds the per-message limit on {what} ({count} > {max})")]
    OverLimit {
        /// Which limit.
        what: &'static str,
        /// The count found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Acknowledgement sequence numbers overflow `u32` or do not increase.
    #[error("acknowledgement sequence numbers overflow or do not increase")]
    BadAcks,
    /// A key exceeds [`KEY_BYTES_MAX`].
    #[error("key of {len} bytes exceeds the {max}-byte limit", max = KEY_BYTES_MAX)]
    KeyTooLong {
        /// Length of the key.
        len: usize,
    },
}

#[derive(Serialize, Deserialize)]
struct WireGroup {
    depth: u8,
    bits: u64,
    fanout_bits: u8,
    /// `2^fanout_bits` cells, each the low `tag_sum_bytes(depth +
    /// fanout_bits)` bytes of the tag sum then the 4-byte check sum, all
    /// little-endian.
    cells: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WireWant {
    depth: u8,
    tag: [u8; 8],
}

#[derive(Serialize, Deserialize)]
struct WireMessage {
    fin: bool,
    groups: Vec<WireGroup>,
    wants: Vec<WireWant>,
    keys: Vec<Vec<u8>>,
    /// First value absolute, then gaps minus one: mostly one byte each.
    ack_gaps: Vec<u32>,
}

impl Message {
    /// Whether the sender said it has nothing queued beyond this message.
    pub fn is_fin(&self) -> bool {
        self.fin
    }

    /// Range splits carried by this message.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Tags the sender asks the receiver to name.
    pub fn wants(&self) -> &[Want] {
        &self.wants
    }

    /// Keys the sender announces as differing.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Sequence numbers of the receiver's announced keys that the sender
    /// holds in another version.
    pub fn acks(&self) -> &[u32] {
        &self.acks
    }

    /// Whether the message carries no work (only the `fin` flag).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.wants.is_empty() && self.keys.is_empty() && self.acks.is_empty()
    }

    /// Number of cells over all groups.
    pub fn cell_count(&self) -> usize {
        self.groups.iter().map(|g| g.cells.len()).sum()
    }

    /// Encodes the message. Messages built by [`crate::Reconciler`] always
    /// respect the limits; the assertion guards that invariant.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.check_limits(), Ok(()));
        let wire = WireMessage {
            fin: self.fin,
            groups: self
                .groups
                .iter()
                .map(|g| {
                    let fanout_bits = g.fanout_bits();
                    let width = tag_sum_bytes(g.parent.depth() + fanout_bits);
                    let mut cells = Vec::with_capacity(g.cells.len() * (width + 4));
                    for cell in &g.cells {
                        debug_assert_eq!(*cell, cell.truncated(g.parent.depth() + fanout_bits));
                        cells.extend_from_slice(&cell.tag_sum.to_le_bytes()[..width]);
                        cells.extend_from_slice(&cell.check_sum.to_le_bytes());
                    }
                    WireGroup { depth: g.parent.depth(), bits: g.parent.bits(), fanout_bits, cells }
                })
                .collect(),
            wants: self.wants.iter().map(|w| WireWant { depth: w.range.depth(), tag: w.tag.to_le_bytes() }).collect(),
            keys: self.keys.clone(),
            ack_gaps: self
                .acks
                .iter()
                .scan(None::<u32>, |previous, &ack| {
                    let gap = match *previous {
                        None => ack,
                        Some(p) => ack.wrapping_sub(p).wrapping_sub(1),
                    };
                    *previous = Some(ack);
                    Some(gap)
                })
                .collect(),
        };
        let mut out = vec![WIRE_VERSION];
        // Serialising plain structs into a Vec cannot fail.
        match postcard::to_extend(&wire, out) {
            Ok(bytes) => {
                out = bytes;
            }
            Err(err) => unreachable!("postcard serialisation into a Vec failed: {err}"),
        }
        debug_assert!(out.len() <= MESSAGE_BYTES_MAX);
        out
    }

    /// Decodes and validates a message. Never panics; any malformed,
    /// oversized or out-of-range input yields a [`DecodeError`].
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MESSAGE_BYTES_MAX });
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (wire, rest): (WireMessage, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        let mut groups = Vec::with_capacity(wire.groups.len());
        for g in wire.groups {
            let parent = Prefix::new(g.depth, g.bits).ok_or(DecodeError::BadRange { depth: g.depth })?;
            if g.fanout_bits > FANOUT_BITS_MAX {
                return Err(DecodeError::BadFanout(g.fanout_bits));
            }
            let child_depth = g.depth + g.fanout_bits;
            if child_depth > 64 {
                return Err(DecodeError::BadRange { depth: g.depth });
            }
            let count = 1usize << g.fanout_bits;
            let width = tag_sum_bytes(child_depth);
            if g.cells.len() != count * (width + 4) {
                return Err(DecodeError::BadCells { len: g.cells.len(), expected: count * (width + 4) });
            }
            let cells = g
                .cells
                .chunks_exact(width + 4)
                .map(|chunk| {
                    let (sum, check) = chunk.split_at(width);
                    let mut sum_bytes = [0u8; 8];
                    sum_bytes[..width].copy_from_slice(sum);
                    let mut check_bytes = [0u8; 4];
                    check_bytes.copy_from_slice(check);
                    RangeFingerprint {
                        tag_sum: u64::from_le_bytes(sum_bytes),
                        check_sum: u32::from_le_bytes(check_bytes),
                    }
                })
                .collect();
            groups.push(Group { parent, cells });
        }
        let mut wants = Vec::with_capacity(wire.wants.len());
        for w in wire.wants {
            let tag = u64::from_le_bytes(w.tag);
            let range = Prefix::containing(tag, w.depth).ok_or(DecodeError::BadRange { depth: w.depth })?;
            wants.push(Want { range, tag });
        }
        let mut acks = Vec::with_capacity(wire.ack_gaps.len());
        for gap in wire.ack_gaps {
            let ack = match acks.last() {
                None => Some(gap),
                Some(&previous) => u32::checked_add(previous, 1).and_then(|p| p.checked_add(gap)),
            };
            acks.push(ack.ok_or(DecodeError::BadAcks)?);
        }
        let message = Message { fin: wire.fin, groups, wants, keys: wire.keys, acks };
        message.check_limits()?;
        Ok(message)
    }

    /// Checks the per-message limits (used after decoding and, as an
    /// assertion, before encoding).
    pub(crate) fn check_limits(&self) -> Result<(), DecodeError> {
        let over = |what, count, max| {
            if count > max { Err(DecodeError::OverLimit { what, count, max }) } else { Ok(()) }
        };
        over("cells", self.cell_count(), CELLS_PER_MESSAGE_MAX)?;
        over("wants", self.wants.len(), WANTS_PER_MESSAGE_MAX)?;
        over("keys", self.keys.len(), KEYS_PER_MESSAGE_MAX)?;
        over("acks", self.acks.len(), ACKS_PER_MESSAGE_MAX)?;
        if self.acks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::BadAcks);
        }
        let mut key_bytes = 0usize;
        for key in &self.keys {
            if key.len() > KEY_BYTES_MAX {
                return Err(DecodeError::KeyTooLong { len: key.len() });
            }
            key_bytes += key.len();
        }
        over("key bytes", key_bytes, KEY_BYTES_PER_MESSAGE_MAX)?;
        for w in &self.wants {
            if !w.range.contains(w.tag) {
                return Err(DecodeError::WantOutsideRange);
            }
        }
        Ok(())
    }
}
