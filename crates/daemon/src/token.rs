//! Causal-context tokens: the version vector a client read, handed back
//! opaque so it can say "this write replaces what I read"
//! (`docs/design/http-api.md`, "Conventions").
//!
//! Format (owned by the HTTP edge, not the core): URL-safe base64 without
//! padding of `0x01 || postcard(VersionVector)`. The leading version byte
//! lets the format change without breaking old tokens silently.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_core::watch::{POSITION_KEYS_MAX, StreamPosition};
use chorus_core::{VersionVector, limits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    #[error("a session tracks at most {SESSION_NAMESPACES_MAX} namespaces")]
    TooManyNamespaces,
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

// ------------------------------------------------------- watch positions

/// What a watch stream's resume token names (`docs/design/watch.md`,
/// "Tokens"): a causal position in an eventual namespace, or a revision of
/// the strong store. Bound to the namespace and key prefix it was issued
/// for (`scope`), so a token cannot be replayed against another stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchToken {
    Eventual { scope: u64, position: StreamPosition },
    Strong { scope: u64, revision: u64 },
}

const WATCH_TOKEN_VERSION: u8 = 2;
const SESSION_TOKEN_VERSION: u8 = 3;

#[derive(Serialize, Deserialize)]
enum WireWatch {
    Eventual { scope: u64, prefix: VersionVector, above: Vec<(Vec<u8>, VersionVector)> },
    Strong { scope: u64, revision: u64 },
}

/// The scope of a stream: FNV-1a over the namespace, a zero byte and the
/// key prefix. Not a secret: it only catches a token used on the wrong stream.
pub fn watch_scope(ns: &str, prefix: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in ns.as_bytes().iter().chain(std::iter::once(&0u8)).chain(prefix) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn encode_watch(token: &WatchToken) -> String {
    let wire = match token {
        WatchToken::Eventual { scope, position } => WireWatch::Eventual {
            scope: *scope,
            prefix: position.prefix.clone(),
            above: position.above.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        },
        WatchToken::Strong { scope, revision } => WireWatch::Strong { scope: *scope, revision: *revision },
    };
    let mut bytes = vec![WATCH_TOKEN_VERSION];
    // Serializing vectors of integers and bytes into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(&wire).unwrap_or_default());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn versioned(token: &str, version: u8) -> Result<Vec<u8>, TokenError> {
    if token.len() > TOKEN_CHARS_MAX {
        return Err(TokenError::TooLong(token.len()));
    }
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| TokenError::Base64)?;
    match bytes.split_first() {
        Some((&v, rest)) if v == version => Ok(rest.to_vec()),
        Some((&v, _)) => Err(TokenError::Version(v)),
        None => Err(TokenError::Malformed),
    }
}

fn take_all<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, TokenError> {
    let (value, tail): (T, &[u8]) = postcard::take_from_bytes(bytes).map_err(|_| TokenError::Malformed)?;
    if !tail.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(value)
}

/// Decode a resume token, checking every bound a position has.
pub fn decode_watch(token: &str) -> Result<WatchToken, TokenError> {
    let bytes = versioned(token, WATCH_TOKEN_VERSION)?;
    match take_all::<WireWatch>(&bytes)? {
        WireWatch::Strong { scope, revision } => Ok(WatchToken::Strong { scope, revision }),
        WireWatch::Eventual { scope, prefix, above } => {
            if above.len() > POSITION_KEYS_MAX {
                return Err(TokenError::Malformed);
            }
            let mut position = StreamPosition { prefix, above: Default::default() };
            for (key, clock) in above {
                if key.len() > limits::KEY_BYTES_MAX || position.above.contains_key(&key) {
                    return Err(TokenError::Malformed);
                }
                position.record(&key, &clock).map_err(|_| TokenError::Malformed)?;
            }
            Ok(WatchToken::Eventual { scope, position })
        }
    }
}

// ---------------------------------------------------------------- sessions

/// Namespaces one session token tracks at most: a session that touches
/// more is refused (`session_too_large`) rather than silently weakened.
pub const SESSION_NAMESPACES_MAX: usize = 64;

/// A client's position (`docs/design/watch.md`, "Sessions"): per eventual
/// namespace, a version vector covering every state the client saw or
/// wrote; for strong namespaces, the highest revision it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub eventual: BTreeMap<String, VersionVector>,
    pub strong_revision: u64,
}

impl Session {
    /// Fold in a state of `ns` the client observed. Fails when the session
    /// would track more than [`SESSION_NAMESPACES_MAX`] namespaces.
    pub fn observe(&mut self, ns: &str, clock: &VersionVector) -> Result<(), TokenError> {
        if !self.eventual.contains_key(ns) && self.eventual.len() >= SESSION_NAMESPACES_MAX {
            return Err(TokenError::TooManyNamespaces);
        }
        self.eventual.entry(ns.to_string()).or_default().merge(clock);
        Ok(())
    }

    pub fn observe_revision(&mut self, revision: u64) {
        self.strong_revision = self.strong_revision.max(revision);
    }
}

pub fn encode_session(session: &Session) -> String {
    let mut bytes = vec![SESSION_TOKEN_VERSION];
    bytes.extend(postcard::to_stdvec(session).unwrap_or_default());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode_session(token: &str) -> Result<Session, TokenError> {
    let bytes = versioned(token, SESSION_TOKEN_VERSION)?;
    let session: Session = take_all(&bytes)?;
    if session.eventual.len() > SESSION_NAMESPACES_MAX
        || session.eventual.values().any(|vv| vv.len() > limits::CLOCK_ENTRIES_MAX)
    {
        return Err(TokenError::Malformed);
    }
    Ok(session)
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

    #[test]
    fn watch_and_session_tokens_round_trip_and_refuse_each_other() {
        let mut position = StreamPosition::origin();
        position.raise(NodeId(1), 5);
        position.record(b"k", &VersionVector::from_entries([(NodeId(2), 3)])).unwrap();
        let t = WatchToken::Eventual { scope: watch_scope("ns", b"p/"), position };
        let text = encode_watch(&t);
        assert_eq!(decode_watch(&text), Ok(t));
        let strong = WatchToken::Strong { scope: 7, revision: 42 };
        assert_eq!(decode_watch(&encode_watch(&strong)), Ok(strong));
        let mut session = Session::default();
        session.observe("ns", &VersionVector::from_entries([(NodeId(1), 9)])).unwrap();
        session.observe_revision(12);
        let text = encode_session(&session);
        assert_eq!(decode_session(&text), Ok(session));
        assert_eq!(decode_watch(&text), Err(TokenError::Version(SESSION_TOKEN_VERSION)));
        assert_eq!(decode_session(&encode(&VersionVector::new())), Err(TokenError::Version(TOKEN_VERSION)));
        assert_ne!(watch_scope("a", b"bc"), watch_scope("ab", b"c"));
    }

    #[test]
    fn a_session_refuses_to_track_too_many_namespaces() {
        let mut session = Session::default();
        let vv = VersionVector::from_entries([(NodeId(1), 1)]);
        for i in 0..SESSION_NAMESPACES_MAX {
            session.observe(&format!("ns{i}"), &vv).unwrap();
        }
        assert_eq!(session.observe("one-more", &vv), Err(TokenError::TooManyNamespaces));
        session.observe("ns0", &vv).unwrap();
    }
}
