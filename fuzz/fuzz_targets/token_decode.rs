//! Causal-context tokens come from HTTP clients (`docs/design/http-api.md`,
//! "Conventions"): any text must give a version vector or a `TokenError`,
//! never a panic, and a decoded vector must survive `encode` → `decode`
//! unchanged. Tokens are text, so inputs that are not UTF-8 are skipped;
//! an input whose first byte is odd is base64-encoded first, so those bytes
//! reach the version byte and postcard instead of stopping at base64.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_daemon::token::{self, TOKEN_CHARS_MAX, TokenError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = if mode & 1 == 1 {
        URL_SAFE_NO_PAD.encode(rest)
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
});
