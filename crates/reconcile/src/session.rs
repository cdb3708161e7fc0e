//! The sans-IO reconciliation session.
//!
//! # Call order
//!
//! 1. The initiator calls [`Reconciler::initiate`], which returns the session
//!    and the first message (the root fingerprint, 13 bytes).
//! 2. The responder creates [`Reconciler::responder`] and calls
//!    [`Reconciler::handle`] with that message.
//! 3. Each side passes every message it receives to `handle` and sends
//!    [`Step::reply`] when it is `Some`. The two sides strictly alternate.
//! 4. A side is finished when a [`Step`] has `done == true`; it must not call
//!    `handle` again. The last message of a session is always an empty
//!    message with `fin` set, and its receiver finishes without replying.
//!
//! # Termination
//!
//! Every split makes ranges strictly deeper (at most 64 bits), each received
//! cell queues at most one split, and a session handles at most
//! [`MESSAGES_PER_SESSION_MAX`] messages before failing with
//! [`ReconcileError::TooManyMessages`]. Equal sets finish in one round trip.
//!
//! # Results
//!
//! Both sides end knowing every differing key: each [`Step`] lists the keys
//! newly found to differ; [`Reconciler::have`] and [`Reconciler::need`] hold
//! the running totals. A key held on both sides in different versions appears
//! in both `have` and `need` on both sides.
//!
//! The session reads the index at each `handle` call; writes between calls
//! are allowed and at worst cause a spurious or missed difference that the
//! next session repairs.

use std::collections::{BTreeSet, VecDeque};

use crate::index::{ItemIndex, Key, Prefix, RangeFingerprint, item_tag};
use crate::wire::{
    ACKS_PER_MESSAGE_MAX, CELLS_PER_MESSAGE_MAX, Group, KEY_BYTES_PER_MESSAGE_MAX, KEYS_PER_MESSAGE_MAX, Message,
    WANTS_PER_MESSAGE_MAX, Want,
};

/// The root is split 16 ways: a differing root usually means several
/// differences, and one wider split saves two half round trips.
pub const ROOT_FANOUT_BITS: u8 = 4;

/// Deeper ranges are split 4 ways: measured as the cheapest fanout for sparse
/// differences (about 2.8 cells per difference, see
/// `docs/design/anti-entropy.md`).
pub const FANOUT_BITS: u8 = 2;

/// Most messages one side handles in a session.
pub const MESSAGES_PER_SESSION_MAX: u32 = 10_000;

/// Most queued outgoing items (splits, wants, announcements,
/// acknowledgements) plus keys reported as needed. An honest session queues
/// about one item per differing item, so this admits about four million
/// differences; beyond that the caller should fall back to snapshot catch-up
/// (`docs/design/anti-entropy.md`, "8. Failure cases and assumptions"), which
/// is cheaper anyway.
pub const SESSION_ITEMS_MAX: usize = 1 << 22;

/// Errors of [`Reconciler::handle`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconcileError {
    /// `handle` was called after the session finished; state is unchanged.
    #[error("the reconciliation session has already finished")]
    Finished,
    /// The message acknowledges a key sequence number this side never
    /// announced; nothing was processed and the session state is unchanged.
    #[error("acknowledgement of unknown key sequence number {seq}")]
    UnknownAck {
        /// The offending sequence number.
        seq: u32,
    },
    /// The session would hold more than [`SESSION_ITEMS_MAX`] queued items
    /// or needed keys; it is finished and its partial results stand.
    #[error("session exceeded {max} queued items")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
    /// The peer kept the session going beyond [`MESSAGES_PER_SESSION_MAX`]
    /// messages; the session is finished and its partial results stand.
    #[error("session exceeded {max} messages")]
    TooManyMessages {
        /// The limit.
        max: u32,
    },
}

/// The outcome of handling one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The message to send to the peer, if any.
    pub reply: Option<Message>,
    /// Keys newly found that I hold and the peer lacks or holds in another
    /// version: the caller ships these entries.
    pub have: Vec<Key>,
    /// Keys newly found that the peer holds and I lack or hold in another
    /// version.
    pub need: Vec<Key>,
    /// The session is over on this side.
    pub done: bool,
}

/// One side of one reconciliation session.
///
/// Memory is `O(d)`: the queues and the sets of differing keys found.
#[derive(Clone, Debug, Default)]
pub struct Reconciler {
    splits: VecDeque<(Prefix, u8)>,
    wants: VecDeque<Want>,
    announce: VecDeque<Key>,
    /// Peer sequence numbers of announced keys I hold in another version.
    acks: BTreeSet<u32>,
    /// Keys I announced, indexed by their session sequence number.
    announced: Vec<Key>,
    /// Number of keys the peer has announced so far (the next one's
    /// sequence number).
    peer_announced: u32,
    /// Tags of my items known to be absent on the peer. They are left out of
    /// every fingerprint I compute from then on: the peer lacks them too, so
    /// the comparison stays exact and the remaining differences in a range
    /// shrink, often to a single decodable one (peeling, as in IBLT decoding).
    excluded: BTreeSet<u64>,
    have: BTreeSet<Key>,
    need: BTreeSet<Key>,
    messages_handled: u32,
    done: bool,
}

impl Reconciler {
    /// Starts a session as initiator: returns the session and the first
    /// message, which carries the fingerprint of the whole set.
    pub fn initiate(index: &ItemIndex) -> (Reconciler, Message) {
        let mut session = Reconciler::default();
        session.splits.push_back((Prefix::ROOT, 0));
        let message = session.next_message(index);
        (session, message)
    }

    /// A session that waits for the initiator's first message.
    pub fn responder() -> Reconciler {
        Reconciler::default()
    }

    /// All keys found so far that I hold and the peer lacks or holds in a
    /// different version.
    pub fn have(&self) -> &BTreeSet<Key> {
        &self.have
    }

    /// All keys found so far that the peer holds and I lack or hold in a
    /// different version.
    pub fn need(&self) -> &BTreeSet<Key> {
        &self.need
    }

    /// Whether the session has finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles one message from the peer. See the module docs for the call
    /// order.
    pub fn handle(&mut self, index: &ItemIndex, message: Message) -> Result<Step, ReconcileError> {
        if self.done {
            return Err(ReconcileError::Finished);
        }
        if let Some(&seq) = message.acks.iter().find(|&&seq| seq as usize >= self.announced.len()) {
            return Err(ReconcileError::UnknownAck { seq });
        }
        self.messages_handled += 1;
        if self.messages_handled > MESSAGES_PER_SESSION_MAX {
            self.done = true;
            return Err(ReconcileError::TooManyMessages { max: MESSAGES_PER_SESSION_MAX });
        }
        let mut step = Step::default();
        let incoming_has_work = !message.is_empty();
        let incoming_fin = message.fin;

        // Announcements first: the exclusions they cause already apply to
        // this message's comparisons.
        for &seq in &message.acks {
            if let Some(key) = self.announced.get(seq as usize).cloned() {
                self.report_need(&key, &mut step);
            }
        }
        for key in &message.keys {
            let seq = self.peer_announced;
            self.peer_announced = self.peer_announced.saturating_add(1);
            self.report_need(key, &mut step);
            // One version per key and side: if I hold the key, my version is
            // one the peer lacks. The peer knows the key, so an acknowledgement
            // (about one byte) tells it that I hold it too.
            if index.get(key).is_some() {
                self.report_have(index, key, Some(seq), &mut step);
            }
        }
        for group in &message.groups {
            let fanout_bits = group.fanout_bits();
            for (i, theirs) in group.cells.iter().enumerate() {
                // The decoder guarantees depth + fanout <= 64 and i < 2^fanout.
                let Some(range) = group.parent.child(fanout_bits, i as u64) else {
                    continue;
                };
                self.compare(index, range, *theirs, &mut step);
            }
        }
        for want in &message.wants {
            let mut found = false;
            for key in index.keys_with_tag(want.tag) {
                found = true;
                self.report_have(index, key, None, &mut step);
            }
            if !found {
                // A false pure cell on the peer's side: fall back to splitting.
                self.queue_split(want.range);
            }
        }

        let queued = self.splits.len() + self.wants.len() + self.announce.len() + self.acks.len() + self.need.len();
        if queued > SESSION_ITEMS_MAX {
            self.done = true;
            return Err(ReconcileError::TooManyItems { max: SESSION_ITEMS_MAX });
        }
        let reply = self.next_message(index);
        if !reply.is_empty() {
            step.reply = Some(reply);
        } else if incoming_fin && !incoming_has_work {
            self.done = true;
        } else {
            step.reply = Some(reply);
            self.done = incoming_fin;
        }
        step.done = self.done;
        Ok(step)
    }

    fn compare(&mut self, index: &ItemIndex, range: Prefix, theirs: RangeFingerprint, step: &mut Step) {
        let mine = self.fingerprint(index, range);
        let difference = mine.difference(theirs);
        if difference.is_empty_in(range) {
            return;
        }
        if let Some(tag) = difference.single_tag_in(range) {
            let keys: Vec<Key> = index.keys_with_tag(tag).cloned().collect();
            for key in &keys {
                self.report_have(index, key, None, step);
            }
            if !keys.is_empty() {
                return;
            }
        }
        if let Some(tag) = theirs.difference(mine).single_tag_in(range)
            && index.keys_with_tag(tag).next().is_none()
        {
            self.wants.push_back(Want { range, tag });
            return;
        }
        self.queue_split(range);
    }

    fn queue_split(&mut self, range: Prefix) {
        let wanted = if range.depth() == 0 { ROOT_FANOUT_BITS } else { FANOUT_BITS };
        let fanout_bits = wanted.min(64 - range.depth());
        // A 64-bit range holds a single tag; it can differ only through a
        // 64-bit tag collision, which no split can resolve.
        if fanout_bits > 0 {
            self.splits.push_back((range, fanout_bits));
        }
    }

    /// My fingerprint of `range`, leaving out my items known to be absent on
    /// the peer (those still in the index: a concurrent write may have
    /// removed one).
    fn fingerprint(&self, index: &ItemIndex, range: Prefix) -> RangeFingerprint {
        let full = index.range_fingerprint(range);
        self.excluded
            .range(range.first_tag()..=range.last_tag())
            .filter(|&&tag| index.keys_with_tag(tag).next().is_some())
            .fold(full, |acc, &tag| acc.difference(RangeFingerprint::of_tag(tag)))
    }

    /// Records that I hold `key` in a version the peer lacks. The peer learns
    /// it by an acknowledgement of its own announcement `ack`, or else by an
    /// announcement of the key.
    fn report_have(&mut self, index: &ItemIndex, key: &Key, ack: Option<u32>, step: &mut Step) {
        if !self.have.insert(key.clone()) {
            return;
        }
        step.have.push(key.clone());
        if let Some(digest) = index.get(key) {
            self.excluded.insert(item_tag(key, digest));
        }
        match ack {
            Some(seq) => {
                self.acks.insert(seq);
            }
            None => self.announce.push_back(key.clone()),
        }
    }

    fn report_need(&mut self, key: &Key, step: &mut Step) {
        if self.need.insert(key.clone()) {
            step.need.push(key.clone());
        }
    }

    /// Builds the next message from the queues, within the per-message limits.
    fn next_message(&mut self, index: &ItemIndex) -> Message {
        let mut message = Message::default();
        let mut cells = 0usize;
        while let Some(&(parent, fanout_bits)) = self.splits.front() {
            let count = 1usize << fanout_bits;
            if cells + count > CELLS_PER_MESSAGE_MAX {
                break;
            }
            self.splits.pop_front();
            cells += count;
            let children = (0..count as u64)
                .filter_map(|i| parent.child(fanout_bits, i))
                .map(|child| self.fingerprint(index, child).truncated(child.depth()))
                .collect();
            message.groups.push(Group { parent, cells: children });
        }
        let take = self.wants.len().min(WANTS_PER_MESSAGE_MAX);
        message.wants.extend(self.wants.drain(..take));
        let mut key_bytes = 0usize;
        while let Some(key) = self.announce.front() {
            if message.keys.len() == KEYS_PER_MESSAGE_MAX || key_bytes + key.len() > KEY_BYTES_PER_MESSAGE_MAX {
                break;
            }
            key_bytes += key.len();
            if let Some(key) = self.announce.pop_front() {
                self.announced.push(key.clone());
                message.keys.push(key);
            }
        }
        while message.acks.len() < ACKS_PER_MESSAGE_MAX {
            let Some(seq) = self.acks.pop_first() else {
                break;
            };
            message.acks.push(seq);
        }
        message.fin =
            self.splits.is_empty() && self.wants.is_empty() && self.announce.is_empty() && self.acks.is_empty();
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::item_tag;

    fn index_of(keys: &[&[u8]]) -> ItemIndex {
        ItemIndex::from_items(keys.iter().map(|k| (k.to_vec(), [1u8; 16]))).unwrap()
    }

    #[test]
    fn a_want_for_an_unknown_tag_falls_back_to_splitting_its_range() {
        let index = index_of(&[b"a", b"b"]);
        let range = Prefix::containing(0x1234_5678_9abc_def0, 7).unwrap();
        let message =
            Message { fin: true, wants: vec![Want { range, tag: 0x1234_5678_9abc_def0 }], ..Message::default() };
        let mut session = Reconciler::responder();
        let step = session.handle(&index, message).unwrap();
        let reply = step.reply.unwrap();
        assert_eq!(reply.groups().len(), 1);
        assert_eq!(reply.groups()[0].parent, range);
        assert_eq!(reply.groups()[0].cells.len(), 1 << FANOUT_BITS);
        assert!(step.have.is_empty() && !step.done);
    }

    #[test]
    fn a_want_for_a_held_tag_is_answered_with_its_key() {
        let index = index_of(&[b"a", b"b"]);
        let tag = item_tag(b"b", &[1; 16]);
        let message = Message {
            fin: true,
            wants: vec![Want { range: Prefix::containing(tag, 9).unwrap(), tag }],
            ..Message::default()
        };
        let mut session = Reconciler::responder();
        let step = session.handle(&index, message).unwrap();
        assert_eq!(step.have, vec![b"b".to_vec()]);
        assert_eq!(step.reply.unwrap().keys(), &[b"b".to_vec()]);
    }

    #[test]
    fn handling_after_the_session_finished_is_an_error() {
        let index = index_of(&[b"a"]);
        let (mut initiator, first) = Reconciler::initiate(&index);
        let mut responder = Reconciler::responder();
        let step = responder.handle(&index, first).unwrap();
        assert!(step.done);
        let last = step.reply.unwrap();
        assert!(last.is_empty() && last.is_fin());
        let step = initiator.handle(&index, last.clone()).unwrap();
        assert!(step.done && step.reply.is_none());
        assert_eq!(initiator.handle(&index, last), Err(ReconcileError::Finished));
    }

    #[test]
    fn an_acknowledgement_of_an_unknown_key_is_rejected_without_effect() {
        let index = index_of(&[b"a"]);
        let message = Message { fin: true, keys: vec![b"a".to_vec()], acks: vec![5], ..Message::default() };
        let mut session = Reconciler::responder();
        assert_eq!(session.handle(&index, message), Err(ReconcileError::UnknownAck { seq: 5 }));
        assert!(session.need().is_empty() && session.have().is_empty());
        assert_eq!(session.messages_handled, 0);
    }

    #[test]
    fn an_announced_key_i_hold_is_acknowledged_not_echoed() {
        let index = index_of(&[b"a", b"b"]);
        let message = Message { fin: true, keys: vec![b"x".to_vec(), b"b".to_vec()], ..Message::default() };
        let mut session = Reconciler::responder();
        let step = session.handle(&index, message).unwrap();
        assert_eq!(step.need, vec![b"x".to_vec(), b"b".to_vec()]);
        assert_eq!(step.have, vec![b"b".to_vec()]);
        let reply = step.reply.unwrap();
        assert_eq!(reply.acks(), &[1]);
        assert!(reply.keys().is_empty());
        // My version of "b" is now left out of my fingerprints.
        assert_eq!(session.fingerprint(&index, Prefix::ROOT), RangeFingerprint::of_tag(item_tag(b"a", &[1; 16])));
    }

    fn arbitrary_message() -> impl proptest::strategy::Strategy<Value = Message> {
        use proptest::prelude::*;
        let group = (0u8..=64, any::<u64>(), 0u8..=3, any::<u64>()).prop_map(|(depth, bits, fanout, seed)| {
            let fanout = fanout.min(64 - depth);
            let parent = Prefix::containing(bits, depth).unwrap();
            let cells = (0..1u64 << fanout)
                .map(|i| {
                    let tag = seed.wrapping_mul(i + 1);
                    RangeFingerprint::of_tag(tag).truncated(depth + fanout)
                })
                .collect();
            Group { parent, cells }
        });
        let want = (0u8..=64, any::<u64>())
            .prop_map(|(depth, tag)| Want { range: Prefix::containing(tag, depth).unwrap(), tag });
        let key = prop_oneof![Just(b"a".to_vec()), Just(b"zz".to_vec()), prop::collection::vec(any::<u8>(), 0..8)];
        (
            any::<bool>(),
            prop::collection::vec(group, 0..6),
            prop::collection::vec(want, 0..6),
            prop::collection::vec(key, 0..4),
        )
            .prop_map(|(fin, groups, wants, keys)| Message { fin, groups, wants, keys, acks: Vec::new() })
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_of_well_formed_messages_is_handled_without_panicking(
            messages in proptest::collection::vec(arbitrary_message(), 1..6),
        ) {
            let index = index_of(&[b"a", b"b", b"c"]);
            let mut session = Reconciler::responder();
            for message in messages {
                let encoded = message.encode();
                let decoded = Message::decode(&encoded);
                proptest::prop_assert_eq!(decoded, Ok(message.clone()));
                match session.handle(&index, message) {
                    Ok(step) => {
                        if let Some(reply) = step.reply {
                            proptest::prop_assert!(reply.check_limits().is_ok());
                        }
                    }
                    Err(ReconcileError::Finished) => break,
                    Err(other) => proptest::prop_assert!(false, "unexpected error {other}"),
                }
            }
        }
    }

    #[test]
    fn the_root_is_split_wider_than_deeper_ranges() {
        let mut session = Reconciler::default();
        session.queue_split(Prefix::ROOT);
        session.queue_split(Prefix::new(62, 0).unwrap());
        session.queue_split(Prefix::new(64, 0).unwrap());
        let splits: Vec<_> = session.splits.iter().map(|(_, b)| *b).collect();
        assert_eq!(splits, vec![ROOT_FANOUT_BITS, 2]);
    }
}
