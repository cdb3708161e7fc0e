//! The frame reader (`chorus_net::frame`) takes length-prefixed frames from
//! a peer's QUIC streams. `split_frame` is its decision over bytes: the same
//! header rule (`parse_header`) and outcomes as `read_frame` on a stream that
//! ends after the input. The first byte picks a small `frame_bytes_max` so
//! both sides of the limit are reached; the rest is read as consecutive
//! frames of one stream until it ends or fails. Contract: never a panic; a
//! returned payload is within the limit; the header of every frame taken
//! re-encodes to the bytes it was read from; a refusal is a protocol
//! violation that the announced length or the missing bytes explain.

#![no_main]

use chorus_net::frame::{FRAME_HEADER_BYTES, FrameError, header, split_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut stream)) = data.split_first() else { return };
    let frame_bytes_max = u32::from(limit) * 4;
    loop {
        match split_frame(stream, frame_bytes_max) {
            Ok(None) => {
                assert!(stream.is_empty(), "a clean end only between frames");
                break;
            }
            Ok(Some((payload, taken))) => {
                assert!(payload.len() <= frame_bytes_max as usize, "payload above the limit");
                assert_eq!(taken, FRAME_HEADER_BYTES + payload.len());
                let mut again = header(payload.len()).to_vec();
                again.extend_from_slice(payload);
                assert_eq!(&again[..], &stream[..taken], "the frame re-encodes to its bytes");
                stream = &stream[taken..];
            }
            Err(error) => {
                assert!(error.is_protocol_violation(), "bytes alone cannot fail a read: {error}");
                match error {
                    FrameError::TooLarge { len, max } => {
                        assert!(len > max && max == u64::from(frame_bytes_max));
                        assert_eq!(len.to_be_bytes()[4..], stream[..FRAME_HEADER_BYTES]);
                    }
                    FrameError::Truncated => {
                        let announced = stream
                            .get(..FRAME_HEADER_BYTES)
                            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
                        assert!(announced.is_none_or(|len| stream.len() < FRAME_HEADER_BYTES + len));
                    }
                    other => panic!("unexpected frame error {other}"),
                }
                break;
            }
        }
    }
});
