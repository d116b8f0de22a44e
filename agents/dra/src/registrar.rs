//! The registration socket's server: the kubelet's plugin watcher dials it with the socket's path as the HTTP/2
//! `:authority`, which the `h2` crate (under tonic) refuses as malformed, so this answers the watcher's two unary
//! calls over a minimal HTTP/2 of its own. `GetInfo` sends an empty message and `NotifyRegistrationStatus` a
//! non-empty one (the kubelet always sets `plugin_registered` or `error`), so the body tells them apart without
//! decoding HPACK.

use std::collections::HashMap;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::plugin::registration::{PluginInfo, RegistrationStatus, RegistrationStatusResponse};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// The largest frame accepted (HTTP/2's default SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    /// The socket failed.
    #[error("registration socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not speak HTTP/2 as expected.
    #[error("registration socket: {0}")]
    Protocol(&'static str),
}

/// One HTTP/2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(conn: &mut UnixStream) -> Result<Option<Frame>, RegistrarError> {
    let mut head = [0u8; 9];
    match conn.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_FRAME {
        return Err(RegistrarError::Protocol("frame larger than 16 KiB"));
    }
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok(Some(Frame { kind: head[3], flags: head[4], stream, payload }))
}

/// A DATA frame's content without its padding.
fn unpad(f: &Frame) -> Result<&[u8], RegistrarError> {
    if f.flags & PADDED == 0 {
        return Ok(&f.payload);
    }
    let pad =
        *f.payload.first().ok_or(RegistrarError::Protocol("padded frame without a pad length"))? as usize;
    f.payload
        .get(1..f.payload.len().saturating_sub(pad))
        .ok_or(RegistrarError::Protocol("padding longer than the frame"))
}

/// A response's frames: headers (`:status 200`, `content-type application/grpc`), one gRPC message, and trailers
/// (`grpc-status 0`). Header blocks are HPACK literals without indexing or Huffman, so no table is shared.
fn respond(stream: u32, message: &[u8]) -> Vec<u8> {
    let mut headers = vec![0x88]; // :status 200 (static table entry 8)
    headers.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (static 31), literal not indexed
    headers.extend_from_slice(b"application/grpc");
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    let mut out = encode(HEADERS, END_HEADERS, stream, &headers);
    out.extend(encode(DATA, 0, stream, &body));
    out.extend(encode(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
    out
}

/// The answer to one call, from its request body (a gRPC message with its 5-byte prefix).
fn answer(body: &[u8], info: &PluginInfo) -> Vec<u8> {
    let message = body.get(5..).unwrap_or_default();
    if message.is_empty() {
        return info.encode_to_vec();
    }
    match RegistrationStatus::decode(message) {
        Ok(s) if s.plugin_registered => eprintln!("haiyun-dra: the kubelet registered {}", info.name),
        Ok(s) => eprintln!("haiyun-dra: the kubelet refused {}: {}", info.name, s.error),
        Err(e) => eprintln!("haiyun-dra: unreadable registration status from the kubelet: {e}"),
    }
    RegistrationStatusResponse {}.encode_to_vec()
}

/// Serves one connection until the kubelet closes it.
async fn serve_conn(mut conn: UnixStream, info: &PluginInfo) -> Result<(), RegistrarError> {
    let mut preface = [0u8; 24];
    conn.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(RegistrarError::Protocol("the client did not open with the HTTP/2 preface"));
    }
    conn.write_all(&encode(SETTINGS, 0, 0, &[])).await?;
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    while let Some(f) = read_frame(&mut conn).await? {
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => conn.write_all(&encode(SETTINGS, ACK, 0, &[])).await?,
            PING if f.flags & ACK == 0 => conn.write_all(&encode(PING, ACK, 0, &f.payload)).await?,
            GOAWAY => return Ok(()),
            HEADERS | CONTINUATION => {
                bodies.entry(f.stream).or_default();
                if f.kind == HEADERS && f.flags & END_STREAM != 0 {
                    conn.write_all(&respond(f.stream, &answer(&[], info))).await?;
                    bodies.remove(&f.stream);
                }
            }
            DATA => {
                let chunk = unpad(&f)?.to_vec();
                let body = bodies.entry(f.stream).or_default();
                body.extend_from_slice(&chunk);
                if f.flags & END_STREAM != 0 {
                    let body = bodies.remove(&f.stream).unwrap_or_default();
                    conn.write_all(&respond(f.stream, &answer(&body, info))).await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Serves the registration socket forever.
pub async fn serve(listener: UnixListener, info: PluginInfo) -> Result<(), RegistrarError> {
    let info = std::sync::Arc::new(info);
    loop {
        let (conn, _) = listener.accept().await?;
        let info = info.clone();
        tokio::spawn(async move {
            match serve_conn(conn, &info).await {
                Ok(()) => {}
                // The kubelet hangs up as soon as it has its answer.
                Err(RegistrarError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => eprintln!("haiyun-dra: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::registration::InfoRequest;
    use crate::plugin::registration::registration_client::RegistrationClient;

    fn info() -> PluginInfo {
        PluginInfo {
            r#type: "DRAPlugin".into(),
            name: "gpu.haiyun.io".into(),
            endpoint: "/x/dra.sock".into(),
            supported_versions: vec!["v1.DRAPlugin".into()],
        }
    }

    /// A real gRPC client (tonic, over the socket) gets the plugin's info and its status is taken.
    #[tokio::test]
    async fn a_grpc_client_gets_the_info_and_reports_its_status() {
        let dir = std::env::temp_dir().join(format!("haiyun-dra-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("reg.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(listener, info()));
        let p = path.clone();
        let channel =
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(p).await?))
                    }
                }))
                .await
                .unwrap();
        let mut client = RegistrationClient::new(channel);
        let got = client.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(got, info());
        client
            .notify_registration_status(RegistrationStatus { plugin_registered: true, error: String::new() })
            .await
            .unwrap();
        let again = client.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(again.endpoint, "/x/dra.sock");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn frames_encode_their_length_type_flags_and_stream() {
        let f = encode(DATA, END_STREAM, 3, b"abc");
        assert_eq!(f, vec![0, 0, 3, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c']);
        let padded = Frame { kind: DATA, flags: PADDED, stream: 1, payload: vec![2, b'x', b'y', 0, 0] };
        assert_eq!(unpad(&padded).unwrap(), b"xy");
    }
}
