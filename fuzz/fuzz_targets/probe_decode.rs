//! Clock probes and their replies arrive from any peer that passed mutual
//! TLS (`docs/design/clock.md`, "Daemon integration"). Both decoders must
//! refuse every other layout with an error, never panic, and accept only
//! what the encoders write: the layout is fixed-size, so whatever decodes
//! re-encodes to the very same bytes, and no payload is both a probe and a
//! reply.

#![no_main]

use chorus_daemon::probe::{decode_probe, decode_reply, encode_probe, encode_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let probe = decode_probe(data);
    let reply = decode_reply(data);
    if let Ok(p) = &probe {
        assert_eq!(encode_probe(p), data, "a decoded probe re-encodes to its bytes");
    }
    if let Ok(r) = &reply {
        assert_eq!(encode_reply(r), data, "a decoded reply re-encodes to its bytes");
    }
    assert!(probe.is_err() || reply.is_err(), "no payload is both a probe and a reply");
});
