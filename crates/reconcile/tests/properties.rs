//! Property tests: incremental maintenance equals a rebuild; the decoder
//! never panics and round-trips what the encoder produces.

use std::collections::BTreeMap;

use chorus_reconcile::{ItemIndex, Message, Prefix, Reconciler};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Upsert(u8, u8),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Upsert(k, v)),
        1 => any::<u8>().prop_map(Op::Remove),
    ]
}

fn key_of(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

fn prefixes() -> Vec<Prefix> {
    let mut out = vec![Prefix::ROOT];
    for depth in [1u8, 2, 3, 5, 8, 13, 21] {
        for bits in 0..(1u64 << depth.min(4)) {
            out.push(Prefix::new(depth, bits).unwrap());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_updates_give_the_same_fingerprints_as_a_rebuild(
        ops in prop::collection::vec(op(), 0..400),
        bucket_bits in 1u8..6,
    ) {
        let mut index = ItemIndex::with_bucket_bits(bucket_bits);
        let mut model: BTreeMap<Vec<u8>, [u8; 16]> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Upsert(k, v) => {
                    let previous = index.insert(key_of(k), [v; 16]).unwrap();
                    prop_assert_eq!(previous, model.insert(key_of(k), [v; 16]));
                }
                Op::Remove(k) => {
                    prop_assert_eq!(index.remove(&key_of(k)), model.remove(&key_of(k)));
                }
            }
        }
        let rebuilt = ItemIndex::from_items(model.clone()).unwrap();
        prop_assert_eq!(index.len(), model.len());
        for prefix in prefixes() {
            prop_assert_eq!(index.range_fingerprint(prefix), rebuilt.range_fingerprint(prefix));
        }
        prop_assert!(index.iter().map(|(k, d)| (k.clone(), *d)).eq(model.into_iter()));
    }

    #[test]
    fn the_decoder_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let mut versioned = bytes;
        versioned.insert(0, 1);
        let _ = Message::decode(&versioned);
    }

    #[test]
    fn the_decoder_never_panics_on_mutated_valid_messages(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in any::<prop::sample::Index>(),
    ) {
        let a = ItemIndex::from_items((0u8..50).map(|k| (key_of(k), [k; 16]))).unwrap();
        let b = ItemIndex::from_items((25u8..75).map(|k| (key_of(k), [k; 16]))).unwrap();
        let (_, first) = Reconciler::initiate(&a);
        let mut responder = Reconciler::responder();
        let reply = responder.handle(&b, first).unwrap().reply.unwrap();
        let encoded = reply.encode();
        prop_assert_eq!(Message::decode(&encoded).unwrap(), reply);
        let mut mutated = encoded.clone();
        for (at, byte) in flips {
            let i = at.index(mutated.len());
            mutated[i] = byte;
        }
        let _ = Message::decode(&mutated);
        let cut = truncate.index(encoded.len());
        prop_assert!(Message::decode(&encoded[..cut]).is_err());
    }
}
