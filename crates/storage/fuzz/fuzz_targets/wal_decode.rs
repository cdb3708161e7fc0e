//! The write-ahead log is read back from disk at every open: any bytes
//! (torn appends, bit rot, a foreign file) must give batches or an error,
//! never a panic, and whatever decodes must re-encode to the same frames.
#![no_main]

use chorus_storage::wal::{decode_log, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(replay) = decode_log(data) {
        assert!(replay.valid_bytes <= data.len());
        let again: Vec<u8> = replay.batches.iter().flat_map(encode_frame).collect();
        assert_eq!(&again[..], &data[..replay.valid_bytes]);
    }
});
