//! The wire decoder faces untrusted bytes: it must never panic, must reject
//! every malformed frame with the right [`DecodeError`], must not allocate
//! what a hostile header declares, and must round-trip everything a node
//! can legitimately send.

use chorus_core::wire::{
    self, DecodeError, Message, NamespaceDelta, NamespaceSummary, Push, PushItem, SyncPush, SyncReply, SyncRequest,
    WIRE_MAGIC, WIRE_VERSION, WireSeen,
};
use chorus_core::{Dot, Entry, NodeId, Op, Timestamp, ValueType, VersionVector, limits};
use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

const VALUE_MAX: usize = 1 << 20;
const HEADER: usize = 8;
const CHECK: usize = 8;

/// Records the largest single allocation each thread makes, so a test can
/// prove that a hostile declared length is not allocated.
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: delegates every call to `System` unchanged; the bookkeeping uses
// a const-initialized thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(new_size)));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

fn peak_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(|p| p.get()))
}

/// Build a frame around an arbitrary body, with a correct length and checksum.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&WIRE_MAGIC);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&blake3::hash(body).as_bytes()[..CHECK]);
    out
}

fn body_of(frame: &[u8]) -> &[u8] {
    &frame[HEADER..frame.len() - CHECK]
}

// ---- generators of valid messages -------------------------------------------

fn value_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![Just(ValueType::Lww), Just(ValueType::Mv), Just(ValueType::Counter), Just(ValueType::Set)]
}

fn namespace_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,24}"
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

/// A valid entry of type `ty`: the state of a replica that applied `writes`
/// from up to four nodes in order, finishing with a write by `last` (so a
/// push item's dot is reflected in it). Returns the entry and that last
/// write's dot and timestamp.
fn entry_of(ty: ValueType, writes: &[(u8, u8, u8)], last: u64) -> (Entry, Dot, Timestamp) {
    let mut entry = Entry::empty(ty);
    let mut counters = [0u64; 5];
    let mut tick = 0u64;
    let mut last_write = (Dot { node: NodeId(last), counter: 1 }, Timestamp::ZERO);
    let all = writes.iter().copied().chain(std::iter::once((last as u8, 1, 2)));
    for (who, a, b) in all {
        let n = usize::from(who % 5);
        counters[n] += 1 + u64::from(b % 3);
        tick += 1;
        let node = NodeId(n as u64);
        let dot = Dot { node, counter: counters[n] };
        let ts = Timestamp { physical_us: 1_000 + tick, logical: u32::from(b % 2), node };
        let ctx = if b % 2 == 0 { Some(entry.clock().clone()) } else { None };
        let op = match ty {
            ValueType::Lww | ValueType::Mv if a % 4 == 0 => Op::Delete { context: ctx },
            ValueType::Lww | ValueType::Mv => Op::Put { value: vec![a; usize::from(b % 16)], context: ctx },
            ValueType::Counter => Op::Increment { amount: i64::from(a) * if b % 2 == 0 { 1 } else { -1 } },
            ValueType::Set if a % 3 == 0 => Op::Remove { member: vec![b % 6], context: ctx },
            ValueType::Set => Op::Add { member: vec![b % 6] },
        };
        entry.apply(&op, dot, ts).expect("generated ops fit their type");
        last_write = (dot, ts);
    }
    (entry, last_write.0, last_write.1)
}

fn writes() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
    prop::collection::vec(any::<(u8, u8, u8)>(), 0..12)
}

fn push_item() -> impl Strategy<Value = PushItem> {
    (namespace_name(), value_type(), key(), writes(), 0u64..5).prop_map(|(namespace, value_type, key, w, last)| {
        let (entry, dot, ts) = entry_of(value_type, &w, last);
        PushItem { namespace, value_type, dot, ts, key, entry, proof: None }
    })
}

fn wire_seen() -> impl Strategy<Value = WireSeen> {
    (
        prop::collection::vec((any::<u64>().prop_map(NodeId), 0u64..1_000), 0..5),
        prop::collection::vec((any::<u64>().prop_map(NodeId), prop::collection::vec(0u64..2_000, 0..6)), 0..4),
    )
        .prop_map(|(contiguous, exceptions)| WireSeen { contiguous, exceptions })
}

fn delta() -> impl Strategy<Value = NamespaceDelta> {
    (
        namespace_name(),
        value_type(),
        prop::collection::vec((key(), writes(), 0u64..5), 0..4),
        any::<bool>(),
        wire_seen(),
    )
        .prop_map(|(namespace, value_type, entries, complete, seen)| NamespaceDelta {
            namespace,
            value_type,
            entries: entries.into_iter().map(|(k, w, last)| (k, entry_of(value_type, &w, last).0)).collect(),
            proofs: Vec::new(),
            heads: Vec::new(),
            complete,
            seen,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), prop::collection::vec(push_item(), 0..4), prop::collection::vec(any::<u64>(), 0..4)).prop_map(
            |(hops, items, covered)| Message::Push(Push {
                hops,
                items,
                covered: covered.into_iter().map(NodeId).collect()
            })
        ),
        prop::collection::vec(
            (namespace_name(), value_type(), wire_seen()).prop_map(|(namespace, value_type, seen)| NamespaceSummary {
                fingerprint: Default::default(),
                namespace,
                value_type,
                seen
            }),
            0..4
        )
        .prop_map(|summaries| Message::SyncRequest(SyncRequest { summaries })),
        prop::collection::vec(delta(), 0..3)
            .prop_map(|deltas| Message::SyncReply(SyncReply { deltas, in_sync: Vec::new() })),
        prop::collection::vec(delta(), 0..3).prop_map(|deltas| Message::SyncPush(SyncPush { deltas })),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Extend(more) = m {
            bytes.extend_from_slice(more);
        }
        return;
    }
    match m {
        Mutation::FlipBit(i, bit) => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::SetByte(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        Mutation::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
    }
}

/// Whatever decodes must be a message a node could itself send: it encodes
/// (which asserts validity) and decodes back to itself.
fn assert_decoded_is_sendable(result: &Result<Message, DecodeError>) -> Result<(), TestCaseError> {
    if let Ok(m) = result {
        let again = wire::decode(&wire::encode(m), VALUE_MAX);
        prop_assert_eq!(again.as_ref(), Ok(m));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_message_round_trips(m in message()) {
        let bytes = wire::encode(&m);
        prop_assert_eq!(&bytes[..3], &WIRE_MAGIC[..]);
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Ok(m));
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let r = wire::decode(&bytes, VALUE_MAX);
        assert_decoded_is_sendable(&r)?;
    }

    /// Random bodies in a correct frame get past the checksum, so they
    /// exercise postcard and the semantic validation.
    #[test]
    fn decoding_a_random_body_in_a_valid_frame_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let r = wire::decode(&frame(&body), VALUE_MAX);
        let framing_error = matches!(r, Err(DecodeError::Checksum | DecodeError::BadMagic | DecodeError::LengthMismatch { .. }));
        prop_assert!(!framing_error, "a correct frame failed framing checks: {:?}", r);
        assert_decoded_is_sendable(&r)?;
    }

    #[test]
    fn decoding_a_mutated_frame_never_panics_and_only_accepts_sendable_messages(
        m in message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = wire::encode(&m);
        for x in &mutations {
            mutate(&mut bytes, x);
        }
        let r = wire::decode(&bytes, VALUE_MAX);
        assert_decoded_is_sendable(&r)?;
    }

    /// Mutating the body and then re-framing it (fixing length and checksum)
    /// reaches the body decoder with near-valid input: the harshest test of
    /// the semantic checks.
    #[test]
    fn decoding_a_mutated_body_in_a_valid_frame_never_panics_and_only_accepts_sendable_messages(
        m in message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let encoded = wire::encode(&m);
        let mut body = body_of(&encoded).to_vec();
        for x in &mutations {
            mutate(&mut body, x);
        }
        let r = wire::decode(&frame(&body), VALUE_MAX);
        assert_decoded_is_sendable(&r)?;
    }

    #[test]
    fn a_corrupted_checksum_is_reported_as_a_checksum_error(m in message(), at in 0usize..CHECK, bit in 0u8..8) {
        let mut bytes = wire::encode(&m);
        let i = bytes.len() - CHECK + at;
        bytes[i] ^= 1 << bit;
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Err(DecodeError::Checksum));
    }

    #[test]
    fn a_corrupted_body_is_caught_by_the_checksum(m in message(), at in any::<Index>(), bit in 0u8..8) {
        let mut bytes = wire::encode(&m);
        let body_len = bytes.len() - HEADER - CHECK;
        prop_assume!(body_len > 0);
        bytes[HEADER + at.index(body_len)] ^= 1 << bit;
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Err(DecodeError::Checksum));
    }

    #[test]
    fn a_bad_magic_is_reported_as_bad_magic(m in message(), at in 0usize..3, bit in 0u8..8) {
        let mut bytes = wire::encode(&m);
        bytes[at] ^= 1 << bit;
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Err(DecodeError::BadMagic));
    }

    #[test]
    fn another_wire_version_is_reported_as_unsupported(m in message(), version in any::<u8>()) {
        prop_assume!(version != WIRE_VERSION);
        let mut bytes = wire::encode(&m);
        bytes[3] = version;
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Err(DecodeError::UnsupportedVersion(version)));
    }

    #[test]
    fn a_truncated_or_extended_frame_is_a_length_mismatch(m in message(), change in -8i64..64) {
        prop_assume!(change != 0);
        let mut bytes = wire::encode(&m);
        let declared = (bytes.len() - HEADER - CHECK) as u64;
        let new_len = bytes.len() as i64 + change;
        prop_assume!(new_len >= (HEADER + CHECK) as i64);
        bytes.resize(new_len as usize, 0xAB);
        let available = (new_len as usize - HEADER - CHECK) as u64;
        prop_assert_eq!(wire::decode(&bytes, VALUE_MAX), Err(DecodeError::LengthMismatch { declared, available }));
    }

    #[test]
    fn a_frame_shorter_than_header_and_checksum_is_truncated(m in message(), keep in 0usize..(HEADER + CHECK)) {
        let bytes = wire::encode(&m);
        prop_assert_eq!(wire::decode(&bytes[..keep], VALUE_MAX), Err(DecodeError::Truncated { len: keep }));
    }
}

#[test]
fn a_declared_length_over_the_frame_limit_is_refused_without_allocating_it() {
    for declared in [limits::FRAME_BYTES_MAX as u32 + 1, u32::MAX] {
        let mut bytes = frame(b"");
        bytes[4..8].copy_from_slice(&declared.to_le_bytes());
        let (r, peak) = peak_allocation_during(|| wire::decode(&bytes, VALUE_MAX));
        assert_eq!(r, Err(DecodeError::TooLarge(u64::from(declared))));
        assert!(peak < 4096, "decoding allocated {peak} bytes for a frame declaring {declared}");
    }
}

#[test]
fn a_declared_length_under_the_limit_but_beyond_the_data_is_refused_without_allocating_it() {
    let declared = limits::FRAME_BYTES_MAX as u32;
    let mut bytes = frame(&[0u8; 16]);
    bytes[4..8].copy_from_slice(&declared.to_le_bytes());
    let (r, peak) = peak_allocation_during(|| wire::decode(&bytes, VALUE_MAX));
    assert_eq!(r, Err(DecodeError::LengthMismatch { declared: u64::from(declared), available: 16 }));
    assert!(peak < 4096, "decoding allocated {peak} bytes");
}

/// A body whose postcard sequence length claims billions of elements must
/// fail on the missing bytes, not preallocate the claim.
#[test]
fn a_body_declaring_a_huge_sequence_is_refused_without_allocating_it() {
    // Message::Push (variant 0), hops 0, then a varint item count of 2^32-1.
    let body = [0u8, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
    let (r, peak) = peak_allocation_during(|| wire::decode(&frame(&body), VALUE_MAX));
    assert!(matches!(r, Err(DecodeError::Body(_))), "got {r:?}");
    assert!(peak <= 2 << 20, "decoding a 7-byte body allocated {peak} bytes");
}

#[test]
fn a_push_naming_more_covered_nodes_than_the_bound_is_refused() {
    let push = |n: u64| Message::Push(Push { hops: 0, items: Vec::new(), covered: (1..=n).map(NodeId).collect() });
    let at_bound = push(wire::PUSH_COVERED_MAX as u64);
    assert_eq!(wire::decode(&wire::encode(&at_bound), VALUE_MAX), Ok(at_bound));
    let body = postcard::to_stdvec(&push(wire::PUSH_COVERED_MAX as u64 + 1)).unwrap();
    let r = wire::decode(&frame(&body), VALUE_MAX);
    assert!(matches!(&r, Err(DecodeError::Invalid(m)) if m.contains("covered")), "got {r:?}");
}

#[test]
fn an_entry_whose_value_exceeds_the_receivers_limit_is_refused() {
    let node = NodeId(1);
    let mut entry = Entry::empty(ValueType::Lww);
    let dot = Dot { node, counter: 1 };
    let ts = Timestamp { physical_us: 1, logical: 0, node };
    entry.apply(&Op::Put { value: vec![7; 100], context: None }, dot, ts).unwrap();
    let m = Message::Push(Push {
        hops: 0,
        items: vec![PushItem {
            namespace: "ns".into(),
            value_type: ValueType::Lww,
            dot,
            ts,
            key: b"k".to_vec(),
            entry,
            proof: None,
        }],
        covered: Vec::new(),
    });
    let bytes = wire::encode(&m);
    assert_eq!(wire::decode(&bytes, 100), Ok(m));
    assert!(matches!(wire::decode(&bytes, 99), Err(DecodeError::Entry { key_len: 1, .. })));
}

#[test]
fn an_element_dot_outside_the_entry_clock_is_refused() {
    let node = NodeId(1);
    let mut entry = Entry::empty(ValueType::Mv);
    let dot = Dot { node, counter: 2 };
    let ts = Timestamp { physical_us: 1, logical: 0, node };
    entry.apply(&Op::Put { value: vec![1], context: None }, dot, ts).unwrap();
    let Entry::Mv(mut r) = entry else { unreachable!("mv entry") };
    r.clock = VersionVector::from_entries([(node, 1)]);
    let delta = NamespaceDelta {
        namespace: "ns".into(),
        value_type: ValueType::Mv,
        entries: vec![(b"k".to_vec(), Entry::Mv(r))],
        proofs: Vec::new(),
        heads: Vec::new(),
        complete: true,
        seen: WireSeen { contiguous: vec![], exceptions: vec![] },
    };
    let body =
        postcard::to_stdvec(&Message::SyncReply(SyncReply { deltas: vec![delta], in_sync: Vec::new() })).unwrap();
    assert!(matches!(wire::decode(&frame(&body), VALUE_MAX), Err(DecodeError::Entry { .. })));
}
