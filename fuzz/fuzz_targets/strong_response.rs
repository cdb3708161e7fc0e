//! A strong request's answer comes from a peer (`docs/design/strong.md`,
//! "RPC mapping (`network`)"): the decoder must return a response or an
//! error, never panic, and a decoded response must re-encode to bytes that
//! decode and encode to the same bytes again.

#![no_main]

use chorus_strong::network::fuzz_api::{decode_response, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = decode_response(data) else { return };
    let bytes = encode_response(&response);
    let again = decode_response(&bytes).expect("a node decodes its own encoding");
    assert_eq!(encode_response(&again), bytes, "the encoding of a response is stable");
});
