//! Fuzz the wire decoder: it must never panic on any input, and whatever it
//! accepts must be a message a node could send itself — re-encoding it and
//! decoding again gives the same message.

#![no_main]

use chorus_core::wire;
use libfuzzer_sys::fuzz_target;

/// The value limit the daemon uses by default (1 MiB).
const VALUE_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = wire::decode(data, VALUE_BYTES_MAX) {
        let again = wire::decode(&wire::encode(&message), VALUE_BYTES_MAX);
        assert_eq!(again.as_ref(), Ok(&message), "a decoded message must round-trip");
    }
});
