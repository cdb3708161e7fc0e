//! Length-prefixed frames on QUIC streams.
//!
//! A frame is a `u32` big-endian payload length followed by the payload.
//! The reader enforces a maximum *before* allocating, so a peer cannot make
//! us allocate more than `frame_bytes_max` per stream (quinn bounds the
//! number of concurrent streams).

use bytes::Bytes;

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Why a frame could not be read. The stream is unusable afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The stream ended inside a header or payload.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed (reset, connection lost).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
}

impl FrameError {
    /// Whether the peer broke the framing rules (as opposed to the stream
    /// merely failing), which makes it a misbehaving peer to quarantine
    /// (`docs/design/transport-and-membership.md`, "3. Wire formats").
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Truncated)
    }
}

/// The header for a payload of `len` bytes; the caller has checked
/// `len <= frame_bytes_max <= u32::MAX`.
pub fn header(len: usize) -> Bytes {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    Bytes::copy_from_slice(&len.to_be_bytes())
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly between
/// frames.
pub async fn read_frame(recv: &mut quinn::RecvStream, frame_bytes_max: u32) -> Result<Option<Bytes>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let len = payload_len(head, frame_bytes_max)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Ok(Some(Bytes::from(payload))),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Read(e)),
    }
}

/// The payload length a frame header announces, refused when it is above
/// `frame_bytes_max`. [`read_frame`] and [`split_frame`] both decide here, so
/// the fuzzed rule is the one a peer's bytes meet.
pub fn payload_len(head: [u8; FRAME_HEADER_BYTES], frame_bytes_max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(head);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len: u64::from(len), max: u64::from(frame_bytes_max) });
    }
    Ok(len as usize)
}

/// What [`read_frame`] returns on a stream whose whole content is `bytes`,
/// without the stream: `Ok(None)` for no bytes, else the first frame's
/// payload and the bytes it took (header included), or the same error.
/// It exists so the framing rules can be fuzzed without QUIC
/// (`docs/design/fault-injection.md`, "Fuzzing").
pub fn split_frame(bytes: &[u8], frame_bytes_max: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let Some((head, rest)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated);
    };
    let len = payload_len(*head, frame_bytes_max)?;
    let payload = rest.get(..len).ok_or(FrameError::Truncated)?;
    Ok(Some((payload, FRAME_HEADER_BYTES + len)))
}
