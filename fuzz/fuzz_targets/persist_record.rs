//! The core's records are read back from disk at every start
//! (`docs/design/storage.md`, "Records of the core"): bit rot, a torn or
//! foreign file must give a record or an error, never a panic, and a
//! decoded record must be one the core could have written: encoding it and
//! decoding again gives the same value.
//!
//! The first byte picks the decoder (bits 0–1: entry, namespace, HLC,
//! idempotency key) and, with bit 2, seals the rest as a record (its first
//! byte is the version, then the correct checksum of the remaining bytes),
//! so those inputs reach postcard and the version checks instead of
//! stopping at the checksum.

#![no_main]

use chorus_core::persist::{self, fuzz_api};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let record = if mode & 4 != 0 { fuzz_api::seal(rest) } else { rest.to_vec() };
    match mode & 3 {
        0 => {
            if let Ok(decoded) = persist::decode_entry(&record) {
                let again = persist::decode_entry(&fuzz_api::encode_entry_with(&decoded.entry, decoded.proof.as_ref()));
                assert_eq!(again, Ok(decoded), "a decoded entry record round-trips");
            }
        }
        1 => {
            if let Ok(decoded) = persist::decode_namespace(&record) {
                let again = persist::decode_namespace(&fuzz_api::encode_namespace_record(&decoded));
                assert_eq!(again, Ok(decoded), "a decoded namespace record round-trips");
            }
        }
        2 => {
            if let Ok(decoded) = persist::decode_hlc(&record) {
                let again = persist::decode_hlc(&fuzz_api::encode_hlc(&decoded));
                assert_eq!(again, Ok(decoded), "a decoded HLC record round-trips");
            }
        }
        _ => {
            if let Ok(decoded) = persist::decode_idempotency_record(&record) {
                let again = persist::decode_idempotency_record(&fuzz_api::encode_idempotency_record(&decoded));
                assert_eq!(again, Ok(decoded), "a decoded idempotency record round-trips");
            }
        }
    }
});
