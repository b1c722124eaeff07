//! port-forward (`portforward.k8s.io`): for every connection kubectl opens a pair of SPDY
//! streams, `error` and `data`, tied by `requestID` and naming the pod's `port`; the data
//! stream is joined to a TCP connection to `127.0.0.1:<port>` inside the pod's network
//! namespace. Raw SPDY, or SPDY tunnelled in WebSocket (kubectl 1.31+), is the caller's
//! choice of `io`.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};

use super::spdy::{self, header, session::copy_to, SpdyStream};

/// The stream protocol negotiated for port-forward.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that carries SPDY frames for port-forward.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Connects to `port` on the loopback of the network namespace at `netns`.
pub async fn dial(netns: &Path, port: u16) -> io::Result<tokio::net::TcpStream> {
    crate::runtime::netns::connect_tcp(netns, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

/// Serves port-forward streams on `io` for the pod `pod` (namespace/name, for messages)
/// whose network namespace is `netns`, until the client closes the connection.
pub async fn serve<IO>(io: IO, pod: String, netns: PathBuf)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut incoming = spdy::accept(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        // Old clients do not send requestID; their pairs are consecutive streams.
        let request_id = header(&stream.headers, "requestid")
            .map(str::to_string)
            .unwrap_or_else(|| ((stream.id + 1) / 4).to_string());
        let pair = pairs.entry(request_id.clone()).or_default();
        match header(&stream.headers, "streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                tracing::debug!(stream_type = ?other, "ignoring an unknown port-forward stream");
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&request_id)
            {
                tokio::spawn(forward(error, data, pod.clone(), netns.clone()));
            }
        }
    }
}

async fn forward(error: SpdyStream, mut data: SpdyStream, pod: String, netns: PathBuf) {
    let port = header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok());
    let result = match port {
        Some(port) => match dial(&netns, port).await {
            Ok(tcp) => {
                let (read, write) = tcp.into_split();
                let outbound = data.writer.clone();
                let upstream = tokio::spawn(async move { outbound.copy_from(read).await });
                let downstream = copy_to(&mut data.data, write).await;
                let upstream = upstream.await;
                match (downstream, upstream) {
                    (Err(e), _) => Err(format!("copying to the pod: {e}")),
                    (_, Ok(Err(e))) => Err(format!("copying from the pod: {e}")),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(format!(
                "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside namespace: {e}"
            )),
        },
        None => Err("a port-forward stream without a valid port header".to_string()),
    };
    if let Err(message) = result {
        tracing::debug!(%pod, %message, "port-forward failed");
        let _ = error.writer.write(message.as_bytes()).await;
        let _ = data.writer.close().await;
    }
    let _ = error.writer.close().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::kubelet::server::spdy::frame::Frame;
    use crate::kubelet::server::spdy::session::tests::TestClient;

    /// An echo server on 127.0.0.1:7777 inside a fresh network namespace.
    async fn echo_in_netns(dir: &Path) -> PathBuf {
        let netns = dir.join("netns");
        crate::runtime::netns::create(&netns).unwrap();
        let listener = crate::runtime::netns::listen_tcp(&netns, ([127, 0, 0, 1], 7777).into())
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = tcp.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        netns
    }

    #[tokio::test]
    async fn a_stream_pair_reaches_a_port_inside_the_pods_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let netns = echo_in_netns(dir.path()).await;
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(server_io, "ns/web".into(), netns.clone()));
        let mut client = TestClient::new(client_io);
        let error = client
            .open(
                &[
                    ("streamType", "error"),
                    ("port", "7777"),
                    ("requestID", "0"),
                ],
                true,
            )
            .await;
        let data = client
            .open(
                &[("streamType", "data"), ("port", "7777"), ("requestID", "0")],
                false,
            )
            .await;
        client.data(data, b"echo me", true).await;
        let mut echoed = Vec::new();
        let mut closed = Vec::new();
        while closed.len() < 2 {
            match client.next().await.unwrap() {
                Frame::Data {
                    stream_id,
                    flags,
                    data: bytes,
                } => {
                    if stream_id == data {
                        echoed.extend_from_slice(&bytes);
                    } else {
                        assert!(bytes.is_empty(), "no error: {bytes:?}");
                    }
                    if flags & crate::kubelet::server::spdy::frame::FLAG_FIN != 0 {
                        closed.push(stream_id);
                    }
                }
                Frame::SynReply { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(echoed, b"echo me");
        assert!(closed.contains(&error));

        // A port nobody listens on: the error stream says so.
        let error = client
            .open(
                &[("streamType", "error"), ("port", "1"), ("requestID", "1")],
                true,
            )
            .await;
        let _data = client
            .open(
                &[("streamType", "data"), ("port", "1"), ("requestID", "1")],
                false,
            )
            .await;
        let mut message = Vec::new();
        loop {
            match client.next().await.unwrap() {
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } if stream_id == error => {
                    message.extend_from_slice(&data);
                    if flags & 1 != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        let message = String::from_utf8(message).unwrap();
        assert!(
            message.contains("error forwarding port 1 to pod ns/web"),
            "{message}"
        );
        let mut tcp = dial(&netns, 7777).await.unwrap();
        tcp.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        crate::runtime::netns::remove(&netns).unwrap();
    }
}
