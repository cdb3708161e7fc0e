//! Signed writes (`docs/design/signing.md`): the stored signing records
//! (key proofs, origin heads, the block-chain head) are read back from disk
//! at every start, and key proofs arrive from peers with every entry. Any
//! bytes must give a value or an error, never a panic; a decoded record
//! re-encodes to itself; and checking any decodable (entry, proof) pair
//! against any key answers without panicking (with the test signer, whose
//! signatures the fuzzer can also produce, so inputs get past the signature
//! to the state checks).
//!
//! The first byte picks: bits 0–1 the decoder (proof record, heads record,
//! block head record, a postcard `(namespace, key, entry, proof)` to check);
//! bit 2 seals a record input with a correct checksum; bit 3 re-signs every
//! block header of a checked proof with the test signer.

#![no_main]

use chorus_core::crdt::Entry;
use chorus_core::persist::{self, fuzz_api};
use chorus_core::signing::{self, KeyProof, Signing, TestSigning, VerifiedBlocks};
use chorus_core::{NodeId, limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let record = if mode & 4 != 0 { fuzz_api::seal(rest) } else { rest.to_vec() };
    match mode & 3 {
        0 => {
            if let Ok(p) = persist::decode_proof(&record) {
                assert_eq!(persist::decode_proof(&fuzz_api::encode_proof(&p)), Ok(p), "a proof record round-trips");
            }
        }
        1 => {
            if let Ok(h) = persist::decode_heads(&record) {
                assert_eq!(persist::decode_heads(&fuzz_api::encode_heads(&h)), Ok(h), "a heads record round-trips");
            }
        }
        2 => {
            if let Ok((seq, hash)) = persist::decode_block_head(&record) {
                let again = persist::decode_block_head(&fuzz_api::encode_block_head(seq, &hash));
                assert_eq!(again, Ok((seq, hash)), "a block head round-trips");
            }
        }
        _ => {
            let Ok((namespace, key, entry, mut proof)) = postcard::from_bytes::<(String, Vec<u8>, Entry, KeyProof)>(rest)
            else {
                return;
            };
            // What the wire decoder checks before the core sees a proof.
            if entry.validate(limits::VALUE_BYTES_DEFAULT).is_err() || signing::validate_proof(&proof).is_err() {
                return;
            }
            if mode & 8 != 0 {
                for a in &mut proof.attestations {
                    let resigned = TestSigning::new(a.block.header.origin).sign(&a.block.header.hash());
                    std::sync::Arc::make_mut(&mut a.block).signature = resigned;
                }
            }
            let verifier = TestSigning::new(NodeId(0));
            let mut verified = VerifiedBlocks::default();
            let first = signing::check_entry(&namespace, &key, &entry, &proof, &verifier, &mut verified);
            // Cached blocks change the cost, never the answer.
            let second = signing::check_entry(&namespace, &key, &entry, &proof, &verifier, &mut verified);
            assert_eq!(first, second, "a check answers the same with its blocks cached");
            if first.is_ok() {
                assert_eq!(signing::rebuild(&entry, [&proof]).as_ref(), Some(&proof), "a checked proof is minimal");
            }
        }
    }
});
