//! Length-prefixed frames on QUIC streams.
//!
//! A frame is a `u32` big-endian payload length followed by the payload.
//! A peer controls the announced length, so reading a frame never trusts it
//! with memory (`docs/design/transport-and-membership.md`, "3. Wire
//! formats"):
//!
//! - the length is checked against `frame_bytes_max` before anything else;
//! - the announced length is reserved from the sending peer's budget of
//!   in-flight frame bytes ([`FrameLimits::budget`]) before any payload is
//!   read; a frame that does not fit gets its stream refused at once;
//! - the payload buffer grows as bytes arrive, at most
//!   [`FRAME_READ_CHUNK_BYTES`] at a time, so an announced length costs
//!   nothing until the bytes are actually sent;
//! - the whole frame, from its first header byte, must arrive within
//!   [`FrameLimits::deadline`]: a stalled sender is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Most payload bytes taken from the stream (and added to the buffer) per
/// read; the buffer grows by at most this much beyond what has arrived.
pub const FRAME_READ_CHUNK_BYTES: usize = 64 * 1024;

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
    /// The frame did not arrive completely within its deadline (the sender
    /// stalled).
    #[error("frame not complete within {deadline_ms} ms")]
    Deadline {
        /// The deadline that passed.
        deadline_ms: u64,
    },
    /// The peer's other frames in flight hold so much of its budget that
    /// this frame's announced length does not fit.
    #[error("frame of {len} bytes does not fit the peer's {in_flight_max} in-flight frame bytes")]
    OverBudget {
        /// Announced payload length.
        len: u64,
        /// The peer's budget of in-flight frame bytes.
        in_flight_max: u64,
    },
    /// The stream failed (reset, connection lost).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
}

impl FrameError {
    /// Whether the peer broke the framing rules (as opposed to the stream
    /// merely failing or being slow), which makes it a misbehaving peer to
    /// quarantine (`docs/design/transport-and-membership.md`, "3. Wire
    /// formats").
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Truncated)
    }
}

/// What bounds the reading of one frame.
#[derive(Clone, Debug)]
pub struct FrameLimits {
    /// Largest payload accepted.
    pub frame_bytes_max: u32,
    /// Time from a frame's first header byte to its last payload byte.
    pub deadline: Duration,
    /// The sending peer's budget of in-flight frame bytes: every frame
    /// being read holds its announced length from it until the frame has
    /// been handed on.
    pub budget: Arc<Semaphore>,
    /// The budget's size (for error messages).
    pub in_flight_max: u32,
}

/// A frame read off a stream. The permit holds the frame's share of the
/// peer's in-flight budget; drop it once the frame has been handed on.
#[derive(Debug)]
pub struct Frame {
    /// The payload.
    pub payload: Bytes,
    /// The frame's share of the peer's budget.
    pub permit: OwnedSemaphorePermit,
}

/// The header for a payload of `len` bytes; the caller has checked
/// `len <= frame_bytes_max <= u32::MAX`.
pub fn header(len: usize) -> Bytes {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    Bytes::copy_from_slice(&len.to_be_bytes())
}

/// The payload length a header announces, checked against
/// `frame_bytes_max`.
pub fn parse_header(head: [u8; FRAME_HEADER_BYTES], frame_bytes_max: u32) -> Result<u32, FrameError> {
    let len = u32::from_be_bytes(head);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len: u64::from(len), max: u64::from(frame_bytes_max) });
    }
    Ok(len)
}

/// A payload being assembled from the chunks a stream delivers. Its buffer
/// never holds more than what has arrived plus one growth step, and never
/// more than the announced length.
#[derive(Debug)]
pub struct FrameAssembler {
    len: usize,
    /// A first chunk that may turn out to be the whole payload (no copy).
    first: Option<Bytes>,
    buf: Vec<u8>,
}

impl FrameAssembler {
    /// An empty payload of announced length `len`.
    pub fn new(len: u32) -> Self {
        FrameAssembler { len: len as usize, first: None, buf: Vec::new() }
    }

    /// Bytes still missing.
    pub fn remaining(&self) -> usize {
        self.len - self.filled()
    }

    fn filled(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.buf.len()
    }

    /// Bytes the buffer has reserved (for tests of the growth bound).
    pub fn capacity(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.buf.capacity()
    }

    /// Appends a chunk of at most [`remaining`](Self::remaining) bytes
    /// (longer chunks are cut: the caller asks the stream for no more).
    pub fn push(&mut self, chunk: Bytes) {
        let chunk = chunk.slice(..chunk.len().min(self.remaining()));
        if self.first.is_none() && self.buf.is_empty() {
            self.first = Some(chunk);
            return;
        }
        if let Some(first) = self.first.take() {
            self.grow(first.len() + chunk.len());
            self.buf.extend_from_slice(&first);
        } else {
            self.grow(self.buf.len() + chunk.len());
        }
        self.buf.extend_from_slice(&chunk);
    }

    /// Makes room for `needed` bytes in total, doubling at most and never
    /// past the announced length.
    fn grow(&mut self, needed: usize) {
        if needed <= self.buf.capacity() {
            return;
        }
        let target = needed.max(self.buf.capacity().saturating_mul(2)).min(self.len);
        self.buf.reserve_exact(target - self.buf.len());
    }

    /// The payload, once [`remaining`](Self::remaining) is 0.
    pub fn finish(self) -> Bytes {
        match self.first {
            Some(first) if self.buf.is_empty() => first,
            _ => Bytes::from(self.buf),
        }
    }
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly between
/// frames. Waiting for a frame's first byte has no deadline (a message
/// stream is idle between frames); callers that expect a frame at once
/// bound the whole call.
pub async fn read_frame(recv: &mut quinn::RecvStream, limits: &FrameLimits) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    match recv.read(&mut head[..1]).await? {
        None => return Ok(None),
        Some(0) => return Err(FrameError::Truncated),
        Some(_) => {}
    }
    let deadline_ms = limits.deadline.as_millis() as u64;
    let deadline = tokio::time::Instant::now() + limits.deadline;
    let rest = async {
        match recv.read_exact(&mut head[1..]).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
        }
        let len = parse_header(head, limits.frame_bytes_max)?;
        // Refused at once rather than queued: a peer that keeps its budget
        // full with stalled frames must not make its other frames wait.
        let Ok(permit) = limits.budget.clone().try_acquire_many_owned(len) else {
            return Err(FrameError::OverBudget { len: u64::from(len), in_flight_max: u64::from(limits.in_flight_max) });
        };
        let mut payload = FrameAssembler::new(len);
        while payload.remaining() > 0 {
            let want = payload.remaining().min(FRAME_READ_CHUNK_BYTES);
            match recv.read_chunk(want, true).await? {
                Some(chunk) => payload.push(chunk.bytes),
                None => return Err(FrameError::Truncated),
            }
        }
        Ok(Frame { payload: payload.finish(), permit })
    };
    match tokio::time::timeout_at(deadline, rest).await {
        Ok(frame) => frame.map(Some),
        Err(_) => Err(FrameError::Deadline { deadline_ms }),
    }
}

/// What [`read_frame`] returns on a stream whose whole content is `bytes`,
/// without the stream, for frames within the peer's budget and deadline:
/// `Ok(None)` for no bytes, else the first frame's payload and the bytes it
/// took (header included), or the same error. It exists so the framing
/// rules can be fuzzed without QUIC (`docs/design/fault-injection.md`,
/// "Fuzzing"); both decide the header with [`parse_header`].
pub fn split_frame(bytes: &[u8], frame_bytes_max: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let Some((head, rest)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated);
    };
    let len = parse_header(*head, frame_bytes_max)? as usize;
    let payload = rest.get(..len).ok_or(FrameError::Truncated)?;
    Ok(Some((payload, FRAME_HEADER_BYTES + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_length_costs_nothing_until_bytes_arrive_and_the_buffer_tracks_them() {
        let mut frame = FrameAssembler::new(64 << 20);
        assert_eq!(frame.capacity(), 0);
        frame.push(Bytes::from(vec![1u8; 1000]));
        assert_eq!(frame.capacity(), 1000);
        for _ in 0..10 {
            frame.push(Bytes::from(vec![2u8; FRAME_READ_CHUNK_BYTES]));
        }
        let filled = 1000 + 10 * FRAME_READ_CHUNK_BYTES;
        assert_eq!(frame.remaining(), (64 << 20) - filled);
        // Doubling growth: never more than twice what arrived.
        assert!(frame.capacity() <= 2 * filled, "{} for {filled}", frame.capacity());
    }

    #[test]
    fn a_payload_assembled_from_chunks_is_the_bytes_sent_and_never_outgrows_its_length() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut frame = FrameAssembler::new(data.len() as u32);
        for chunk in data.chunks(70_001) {
            frame.push(Bytes::copy_from_slice(chunk));
            assert!(frame.capacity() <= data.len());
        }
        assert_eq!(frame.remaining(), 0);
        assert_eq!(frame.finish(), Bytes::from(data));

        let mut one = FrameAssembler::new(5);
        one.push(Bytes::from_static(b"hello, and more"));
        assert_eq!(one.remaining(), 0);
        assert_eq!(one.finish(), Bytes::from_static(b"hello"));
    }

    #[test]
    fn a_header_over_the_maximum_is_refused() {
        assert!(matches!(
            parse_header(1025u32.to_be_bytes(), 1024),
            Err(FrameError::TooLarge { len: 1025, max: 1024 })
        ));
        assert_eq!(parse_header(1024u32.to_be_bytes(), 1024).ok(), Some(1024));
    }
}
