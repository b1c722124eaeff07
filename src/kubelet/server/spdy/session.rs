//! A server-side SPDY connection: streams the client opens arrive as [`SpdyStream`]s
//! (headers, a receiver of their data, a writer for ours); PINGs are answered; a GOAWAY or
//! the end of the connection ends it.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{Codec, Frame, Headers, FLAG_FIN};
use super::SpdyError;

/// Largest DATA frame sent; spdystream reads any size, smaller frames interleave streams.
const MAX_DATA: usize = 32 << 10;
/// RST_STREAM status for a stream we cannot take.
const REFUSED_STREAM: u32 = 3;

/// A stream the client opened.
pub struct SpdyStream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; `None` once it half-closed (FIN) or reset the stream.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

/// Sends data on one stream. Cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` (split into frames as needed).
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        for chunk in data.chunks(MAX_DATA) {
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our side (FIN): the client reads EOF.
    pub async fn close(&self) -> Result<(), SpdyError> {
        self.send(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Resets the stream.
    pub async fn reset(&self, status: u32) -> Result<(), SpdyError> {
        self.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    /// Copies `reader` into the stream until EOF, then half-closes it.
    pub async fn copy_from(&self, mut reader: impl AsyncRead + Unpin) -> Result<(), SpdyError> {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return self.close().await;
            }
            self.write(&buf[..n]).await?;
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.frames.send(frame).await.map_err(|_| SpdyError::Closed)
    }
}

/// Copies what the client sends on a stream into `writer` until it half-closes.
pub async fn copy_to(
    data: &mut mpsc::Receiver<Bytes>,
    mut writer: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    while let Some(chunk) = data.recv().await {
        writer.write_all(&chunk).await?;
        writer.flush().await?;
    }
    writer.shutdown().await
}

/// Runs the server side of a SPDY connection on `io`: returns the streams the client opens,
/// in order. The connection ends when the client closes it or sends GOAWAY, or when the
/// receiver and every stream writer are dropped.
pub fn accept<IO>(io: IO) -> mpsc::Receiver<SpdyStream>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let (frames_tx, frames_rx) = mpsc::channel::<Frame>(64);
    let (streams_tx, streams_rx) = mpsc::channel(16);
    tokio::spawn(write_frames(write, frames_rx));
    tokio::spawn(async move {
        if let Err(e) = read_frames(read, frames_tx, streams_tx).await {
            tracing::debug!(error = %e, "SPDY connection ended");
        }
    });
    streams_rx
}

async fn write_frames(
    mut write: impl AsyncWrite + Unpin,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<(), SpdyError> {
    let mut codec = Codec::new();
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        codec.encode(&frame, &mut buf)?;
        // Batch what is queued into one write.
        while buf.len() < MAX_DATA {
            match frames.try_recv() {
                Ok(frame) => codec.encode(&frame, &mut buf)?,
                Err(_) => break,
            }
        }
        write.write_all(&buf).await?;
        write.flush().await?;
        buf.clear();
        if matches!(frame, Frame::GoAway { .. }) {
            break;
        }
    }
    let _ = write.shutdown().await;
    Ok(())
}

async fn read_frames(
    mut read: impl AsyncRead + Unpin,
    frames: mpsc::Sender<Frame>,
    streams: mpsc::Sender<SpdyStream>,
) -> Result<(), SpdyError> {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        while let Some(frame) = codec.decode(&mut buf)? {
            match frame {
                Frame::SynStream {
                    stream_id,
                    flags,
                    headers,
                    ..
                } => {
                    let (data_tx, data_rx) = mpsc::channel(64);
                    if flags & FLAG_FIN == 0 {
                        open.insert(stream_id, data_tx);
                    }
                    // spdystream's CreateStream waits for this reply.
                    send(
                        &frames,
                        Frame::SynReply {
                            stream_id,
                            flags: 0,
                            headers: Vec::new(),
                        },
                    )
                    .await?;
                    let stream = SpdyStream {
                        id: stream_id,
                        headers,
                        data: data_rx,
                        writer: StreamWriter {
                            id: stream_id,
                            frames: frames.clone(),
                        },
                    };
                    if streams.send(stream).await.is_err() {
                        send(
                            &frames,
                            Frame::RstStream {
                                stream_id,
                                status: REFUSED_STREAM,
                            },
                        )
                        .await?;
                    }
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    if let Some(tx) = open.get(&stream_id) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            // Nobody reads this stream any more; drop what comes.
                            open.remove(&stream_id);
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        open.remove(&stream_id);
                    }
                }
                Frame::Headers {
                    stream_id, flags, ..
                } if flags & FLAG_FIN != 0 => {
                    open.remove(&stream_id);
                }
                Frame::RstStream { stream_id, .. } => {
                    open.remove(&stream_id);
                }
                Frame::Ping { id } => send(&frames, Frame::Ping { id }).await?,
                Frame::GoAway { .. } => return Ok(()),
                Frame::SynReply { .. }
                | Frame::Headers { .. }
                | Frame::Settings { .. }
                | Frame::WindowUpdate { .. } => {}
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn send(frames: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), SpdyError> {
    frames.send(frame).await.map_err(|_| SpdyError::Closed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kubelet::server::spdy::frame::header;

    /// A minimal SPDY client for tests: opens streams and reads frames.
    pub(crate) struct TestClient<IO> {
        pub io: IO,
        codec: Codec,
        buf: BytesMut,
        next_id: u32,
    }

    impl<IO: AsyncRead + AsyncWrite + Unpin> TestClient<IO> {
        pub(crate) fn new(io: IO) -> Self {
            TestClient {
                io,
                codec: Codec::new(),
                buf: BytesMut::new(),
                next_id: 1,
            }
        }

        pub(crate) async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&frame, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }

        pub(crate) async fn open(&mut self, headers: &[(&str, &str)], fin: bool) -> u32 {
            let id = self.next_id;
            self.next_id += 2;
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: if fin { FLAG_FIN } else { 0 },
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            })
            .await;
            id
        }

        pub(crate) async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
            self.send(Frame::Data {
                stream_id,
                flags: if fin { FLAG_FIN } else { 0 },
                data: Bytes::copy_from_slice(data),
            })
            .await;
        }

        pub(crate) async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let mut streams = accept(server_io);
        let mut client = TestClient::new(client_io);
        let id = client.open(&[("streamType", "stdin")], false).await;
        assert_eq!(
            client.next().await,
            Some(Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: vec![]
            })
        );
        let mut stream = streams.recv().await.unwrap();
        assert_eq!(header(&stream.headers, "streamtype"), Some("stdin"));
        client.data(id, b"ping", true).await;
        assert_eq!(
            stream.data.recv().await.unwrap(),
            Bytes::from_static(b"ping")
        );
        assert!(stream.data.recv().await.is_none(), "FIN ends the data");

        stream.writer.write(b"pong").await.unwrap();
        stream.writer.close().await.unwrap();
        assert_eq!(
            client.next().await,
            Some(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::from_static(b"pong")
            })
        );
        assert!(matches!(
            client.next().await,
            Some(Frame::Data {
                flags: FLAG_FIN,
                ..
            })
        ));

        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.next().await, Some(Frame::Ping { id: 1 }));
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        assert!(streams.recv().await.is_none());
    }
}
