//! Fuzz the body decoder and the semantic checks behind it: the input is
//! wrapped in a correct frame (magic, version, length, checksum), so every
//! input reaches postcard and `wire::validate` instead of stopping at the
//! checksum as almost all inputs to `decode_message` do.

#![no_main]

use chorus_core::wire::{self, WIRE_MAGIC, WIRE_VERSION};
use libfuzzer_sys::fuzz_target;

const VALUE_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|body: &[u8]| {
    let Ok(len) = u32::try_from(body.len()) else { return };
    let mut frame = Vec::with_capacity(body.len() + 16);
    frame.extend_from_slice(&WIRE_MAGIC);
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    frame.extend_from_slice(&blake3::hash(body).as_bytes()[..8]);
    if let Ok(message) = wire::decode(&frame, VALUE_BYTES_MAX) {
        let again = wire::decode(&wire::encode(&message), VALUE_BYTES_MAX);
        assert_eq!(again.as_ref(), Ok(&message), "a decoded message must round-trip");
    }
});
