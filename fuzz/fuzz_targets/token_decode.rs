//! Tokens come from HTTP clients (`docs/design/http-api.md`,
//! "Conventions"; `docs/design/watch.md`, "Tokens"): causal contexts, watch
//! resume tokens and session tokens. Any text must give a value or a
//! `TokenError`, never a panic; a decoded value must survive `encode` →
//! `decode` unchanged, and a decoded watch position must respect its
//! bounds. Tokens are text, so inputs that are not UTF-8 are skipped; an
//! input whose first byte is odd is base64-encoded first, so those bytes
//! reach the version byte and postcard instead of stopping at base64; bits
//! 1–2 of the first byte choose the version byte put in front (context,
//! watch, session, or none), so every decoder sees well-versioned input.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_core::watch::{POSITION_BYTES_MAX, POSITION_KEYS_MAX};
use chorus_daemon::token::{self, TOKEN_CHARS_MAX, TokenError, WatchToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = if mode & 1 == 1 {
        let mut bytes = match (mode >> 1) & 3 {
            0 => vec![],
            v => vec![v],
        };
        bytes.extend_from_slice(rest);
        URL_SAFE_NO_PAD.encode(bytes)
    } else {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    };
    match token::decode(&text) {
        Ok(context) => {
            assert!(text.len() <= TOKEN_CHARS_MAX, "a token above the limit was accepted");
            assert_eq!(token::decode(&token::encode(&context)), Ok(context), "a decoded token round-trips");
        }
        Err(TokenError::TooLong(len)) => assert!(len > TOKEN_CHARS_MAX),
        Err(_) => {}
    }
    if let Ok(watch) = token::decode_watch(&text) {
        if let WatchToken::Eventual { position, .. } = &watch {
            assert!(position.above.len() <= POSITION_KEYS_MAX, "a position above its key bound was accepted");
            assert!(position.bytes() <= POSITION_BYTES_MAX, "a position above its byte bound was accepted");
            for clock in position.above.values() {
                assert!(!clock.is_empty(), "an empty clock above the prefix was kept");
                for (n, c) in clock.iter() {
                    assert!(c > position.prefix.get(n), "an entry the prefix covers was kept above it");
                }
            }
        }
        assert_eq!(token::decode_watch(&token::encode_watch(&watch)), Ok(watch), "a decoded watch token round-trips");
    }
    if let Ok(session) = token::decode_session(&text) {
        assert_eq!(token::decode_session(&token::encode_session(&session)), Ok(session), "a session round-trips");
    }
});
