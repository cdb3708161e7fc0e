//! `split_frame` is what the fuzz target `frame_split` exercises in place of
//! `read_frame` (`docs/design/fault-injection.md`, "Fuzzing"), so the two
//! must agree. Here every stream of a table of tricky inputs (clean end,
//! cut headers, cut payloads, oversized announcements, several frames) is
//! sent over a real mutual-TLS QUIC connection on loopback, read with
//! `read_frame` until it ends or fails, and compared with `split_frame` on
//! the same bytes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chorus_net::frame::{FrameError, FrameLimits, read_frame, split_frame};
use chorus_net::{ClusterCa, RevocationList, tls};

const FRAME_BYTES_MAX: u32 = 64;
const DEADLINE: Duration = Duration::from_secs(10);

/// One frame outcome, comparable across the two readers.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Frame(Vec<u8>),
    End,
    TooLarge { len: u64, max: u64 },
    Truncated,
}

fn outcome_of(result: Result<Option<&[u8]>, FrameError>) -> Outcome {
    match result {
        Ok(Some(payload)) => Outcome::Frame(payload.to_vec()),
        Ok(None) => Outcome::End,
        Err(FrameError::TooLarge { len, max }) => Outcome::TooLarge { len, max },
        Err(FrameError::Truncated) => Outcome::Truncated,
        Err(other) => panic!("a stream of bytes that ends cleanly cannot fail with {other}"),
    }
}

/// The outcomes `split_frame` gives, frame after frame, up to the first end
/// or error.
fn split_all(mut bytes: &[u8]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    loop {
        match split_frame(bytes, FRAME_BYTES_MAX) {
            Ok(Some((payload, taken))) => {
                outcomes.push(Outcome::Frame(payload.to_vec()));
                bytes = &bytes[taken..];
            }
            other => {
                outcomes.push(outcome_of(other.map(|frame| frame.map(|(payload, _)| payload))));
                return outcomes;
            }
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).expect("short payload").to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn endpoints() -> (quinn::Endpoint, quinn::Endpoint) {
    let ca = ClusterCa::generate("frame-test").expect("a CA");
    let creds = |name: &str| ca.issue_node(name, &["127.0.0.1".parse().expect("ip")]).expect("credentials");
    let revocations = Arc::new(RwLock::new(RevocationList::default()));
    let server_tls = tls::server_config(&creds("server"), revocations.clone()).expect("server TLS");
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).expect("QUIC server TLS");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server endpoint");
    let client_tls = tls::client_config(&creds("client"), revocations, false).expect("client TLS");
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("QUIC client TLS");
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    (server, client)
}

#[tokio::test]
async fn split_frame_gives_what_read_frame_reads_from_a_real_quic_stream() {
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0, 0, 0],
        frame(b""),
        frame(b"hello"),
        frame(&[9; FRAME_BYTES_MAX as usize]),
        frame(&[9; FRAME_BYTES_MAX as usize + 1]),
        u32::MAX.to_be_bytes().to_vec(),
        frame(b"cut payload")[..8].to_vec(),
        [frame(b"one"), frame(b""), frame(b"three")].concat(),
        [frame(b"one"), vec![0, 0]].concat(),
        [frame(b"one"), vec![0, 0, 1, 0], vec![1; 300]].concat(),
    ];
    let (server, client) = endpoints();
    let server_addr = server.local_addr().expect("server address");
    let connecting = client.connect(server_addr, "server").expect("connect");
    let accepted = server.accept();
    let (client_connection, server_connection) = tokio::time::timeout(DEADLINE, async {
        let incoming = accepted.await.expect("an incoming connection");
        tokio::join!(connecting, incoming)
    })
    .await
    .expect("handshake before the deadline");
    let client_connection = client_connection.expect("client handshake");
    let server_connection = server_connection.expect("server handshake");

    // A budget and a deadline no case comes near: only the framing rule
    // is compared.
    let limits = FrameLimits {
        frame_bytes_max: FRAME_BYTES_MAX,
        deadline: DEADLINE,
        budget: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
        in_flight_max: 1 << 20,
    };
    for bytes in &cases {
        let (mut send, _recv) = client_connection.open_bi().await.expect("open a stream");
        send.write_all(bytes).await.expect("write the stream");
        send.finish().expect("finish the stream");
        // A stream is announced to the peer by its first bytes; an empty one
        // by its FIN alone.
        let (_send, mut recv) =
            tokio::time::timeout(DEADLINE, server_connection.accept_bi()).await.expect("a stream").expect("accept");
        let mut read = Vec::new();
        loop {
            let result = tokio::time::timeout(DEADLINE, read_frame(&mut recv, &limits))
                .await
                .expect("a frame outcome before the deadline");
            let outcome =
                outcome_of(result.as_ref().map(|f| f.as_ref().map(|frame| &frame.payload[..])).map_err(clone_error));
            let last = !matches!(outcome, Outcome::Frame(_));
            read.push(outcome);
            if last {
                break;
            }
        }
        assert_eq!(read, split_all(bytes), "stream {bytes:?}");
    }
}

fn clone_error(error: &FrameError) -> FrameError {
    match error {
        FrameError::TooLarge { len, max } => FrameError::TooLarge { len: *len, max: *max },
        FrameError::Truncated => FrameError::Truncated,
        other => panic!("a stream of bytes that ends cleanly cannot fail with {other}"),
    }
}
