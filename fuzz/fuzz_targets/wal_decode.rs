//! The write-ahead log is read back from disk at every open: any bytes
//! (torn appends, bit rot, a foreign file) must give batches or an error,
//! never a panic, and whatever decodes from a log in the current format
//! must re-encode to the same bytes.
#![no_main]

use chorus_storage::wal::{WAL_MAGIC, decode_log, encode_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Both the current format (after the magic) and legacy logs.
    let mut with_magic = WAL_MAGIC.to_vec();
    with_magic.extend_from_slice(data);
    for input in [&with_magic[..], data] {
        if let Ok(replay) = decode_log(input) {
            assert!(replay.valid_bytes <= input.len());
            if input.starts_with(&WAL_MAGIC[..]) {
                assert_eq!(&encode_log(&replay.batches)[..], &input[..replay.valid_bytes]);
            }
        }
    }
});
