//! remotecommand over SPDY/3.1 (`v4.channel.k8s.io`), what kubectl falls back to when
//! WebSocket is refused: the client opens one stream per channel, named by its
//! `streamType` header (error, stdin, stdout, stderr, resize), then the server relays.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::{run, Input, Outcome, Output, Session, StreamError, StreamOptions, TerminalSize};
use crate::kubelet::server::spdy::{self, header, SpdyStream};

/// The one stream protocol served over SPDY (kubectl offers v4 first; v1-v3 predate the
/// exit-code Status and are not served).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client gets to open its streams, as upstream.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Streams {
    fn complete(&self, options: &StreamOptions) -> bool {
        self.error.is_some()
            && (!options.stdin || self.stdin.is_some())
            && (!options.stdout || self.stdout.is_some())
            && (!options.stderr || self.stderr.is_some())
            && (!options.tty || self.resize.is_some())
    }
}

/// Serves one exec or attach on an upgraded SPDY connection.
pub async fn serve<IO>(
    io: IO,
    options: StreamOptions,
    session: BoxFuture<'static, Result<Session, StreamError>>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut incoming = spdy::accept(io);
    let mut streams = Streams::default();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !streams.complete(&options) {
            let Some(stream) = incoming.recv().await else {
                return false;
            };
            let kind = header(&stream.headers, "streamtype").unwrap_or_default();
            let slot = match kind {
                "error" => &mut streams.error,
                "stdin" => &mut streams.stdin,
                "stdout" => &mut streams.stdout,
                "stderr" => &mut streams.stderr,
                "resize" => &mut streams.resize,
                other => {
                    tracing::debug!(stream_type = other, "ignoring an unknown SPDY stream");
                    continue;
                }
            };
            *slot = Some(stream);
        }
        true
    })
    .await;
    if !matches!(gathered, Ok(true)) {
        tracing::debug!("the client did not open its exec/attach streams in time");
        if let Some(error) = &streams.error {
            let status = Outcome::Failed("timed out waiting for client to create streams".into())
                .status(&options.command);
            let _ = error
                .writer
                .write(&serde_json::to_vec(&status).unwrap_or_default())
                .await;
            let _ = error.writer.close().await;
        }
        return;
    }
    let (input_tx, input_rx) = mpsc::channel(16);
    let mut feeders = Vec::new();
    if let Some(mut stdin) = streams.stdin.take() {
        let input = input_tx.clone();
        feeders.push(tokio::spawn(async move {
            while let Some(data) = stdin.data.recv().await {
                if input.send(Input::Stdin(data)).await.is_err() {
                    return;
                }
            }
            let _ = input.send(Input::StdinClosed).await;
        }));
    }
    if let Some(mut resize) = streams.resize.take() {
        let input = input_tx.clone();
        feeders.push(tokio::spawn(async move {
            // A stream of JSON objects, not delimited.
            let mut pending = Vec::new();
            while let Some(data) = resize.data.recv().await {
                pending.extend_from_slice(&data);
                let mut sizes =
                    serde_json::Deserializer::from_slice(&pending).into_iter::<TerminalSize>();
                let mut consumed = 0;
                while let Some(Ok(size)) = sizes.next() {
                    consumed = sizes.byte_offset();
                    if input.send(Input::Resize(size)).await.is_err() {
                        return;
                    }
                }
                pending.drain(..consumed);
            }
        }));
    }
    drop(input_tx);
    let (output_tx, mut output_rx) = mpsc::channel::<Output>(16);
    let command = options.command.clone();
    let runner = tokio::spawn(run(session.await, input_rx, output_tx));
    while let Some(output) = output_rx.recv().await {
        let (stream, data): (&Option<SpdyStream>, Bytes) = match output {
            Output::Stdout(data) => (&streams.stdout, data),
            Output::Stderr(data) => (&streams.stderr, data),
        };
        if let Some(stream) = stream {
            if stream.writer.write(&data).await.is_err() {
                break;
            }
        }
    }
    let outcome = runner
        .await
        .unwrap_or_else(|e| Outcome::Failed(format!("the session failed: {e}")));
    for stream in [&streams.stdout, &streams.stderr].into_iter().flatten() {
        let _ = stream.writer.close().await;
    }
    if let Some(error) = &streams.error {
        // Success is written too, as upstream does.
        let status = serde_json::to_vec(&outcome.status(&command)).unwrap_or_default();
        let _ = error.writer.write(&status).await;
        let _ = error.writer.close().await;
    }
    for feeder in feeders {
        feeder.abort();
    }
}
