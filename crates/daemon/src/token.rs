//! Causal-context tokens: the version vector a client read, handed back
//! opaque so it can say "this write replaces what I read"
//! (`docs/design/http-api.md`, "Conventions").
//!
//! Format (owned by the HTTP edge, not the core): URL-safe base64 without
//! padding of `0x01 || postcard(VersionVector)`. The leading version byte
//! lets the format change without breaking old tokens silently.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_core::VersionVector;

const TOKEN_VERSION: u8 = 1;

/// Longest token accepted: bounds the work of decoding untrusted input.
pub const TOKEN_CHARS_MAX: usize = 64 * 1024;

/// Why a context token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("context token is {0} characters, above the {TOKEN_CHARS_MAX} limit")]
    TooLong(usize),
    #[error("context token is not URL-safe base64")]
    Base64,
    #[error("context token has unknown version {0}")]
    Version(u8),
    #[error("context token is malformed")]
    Malformed,
}

pub fn encode(context: &VersionVector) -> String {
    let mut bytes = vec![TOKEN_VERSION];
    // Serializing a map of integers into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(context).unwrap_or_default());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode(token: &str) -> Result<VersionVector, TokenError> {
    if token.len() > TOKEN_CHARS_MAX {
        return Err(TokenError::TooLong(token.len()));
    }
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| TokenError::Base64)?;
    match bytes.split_first() {
        Some((&TOKEN_VERSION, rest)) => {
            let (vv, tail): (VersionVector, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|_| TokenError::Malformed)?;
            if !tail.is_empty() {
                return Err(TokenError::Malformed);
            }
            Ok(vv)
        }
        Some((&v, _)) => Err(TokenError::Version(v)),
        None => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::NodeId;

    #[test]
    fn a_token_round_trips_its_version_vector() {
        let vv = VersionVector::from_entries([(NodeId(7), 3), (NodeId(u64::MAX), 1 << 40)]);
        let token = encode(&vv);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&token).unwrap(), vv);
    }

    #[test]
    fn garbage_tokens_are_refused_with_a_reason() {
        assert_eq!(decode("not base64!"), Err(TokenError::Base64));
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode([9u8, 0])), Err(TokenError::Version(9)));
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode([1u8, 0xff, 0xff])), Err(TokenError::Malformed));
        assert_eq!(decode(""), Err(TokenError::Malformed));
        let mut trailing = vec![1u8];
        trailing.extend(postcard::to_stdvec(&VersionVector::new()).unwrap());
        trailing.push(0);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode(trailing)), Err(TokenError::Malformed));
    }
}
