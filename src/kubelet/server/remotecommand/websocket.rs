//! remotecommand over WebSocket, kubectl's default for exec, attach and cp since 1.30:
//! each binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error
//! Status, 4 resize JSON). `v5.channel.k8s.io` adds 255, "close channel N" (kubectl's stdin
//! EOF); with `v4.channel.k8s.io` stdin ends with the connection.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{run, Input, Output, Session, StreamError, StreamOptions, TerminalSize};
use futures::future::BoxFuture;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// Subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Serves one exec or attach over an accepted WebSocket speaking `protocol` (one of
/// [`PROTOCOLS`]): opens the session, relays it, writes the outcome on the error channel
/// and closes.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    options: StreamOptions,
    session: BoxFuture<'static, Result<Session, StreamError>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == V5;
    let (mut sink, mut stream) = ws.split();
    let (input_tx, input_rx) = mpsc::channel(16);
    let (output_tx, mut output_rx) = mpsc::channel::<Output>(16);
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let input = match channel {
                STDIN => Input::Stdin(data.slice(1..)),
                RESIZE => match serde_json::from_slice::<TerminalSize>(payload) {
                    Ok(size) => Input::Resize(size),
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring a malformed resize message");
                        continue;
                    }
                },
                CLOSE if v5 && payload.first() == Some(&STDIN) => Input::StdinClosed,
                _ => continue,
            };
            if input_tx.send(input).await.is_err() {
                break;
            }
        }
        // The client is gone (or, v4, done sending): stdin ends.
        let _ = input_tx.send(Input::StdinClosed).await;
    });
    let command = options.command.clone();
    let runner = tokio::spawn(run(session.await, input_rx, output_tx));
    while let Some(output) = output_rx.recv().await {
        let (channel, data) = match output {
            Output::Stdout(data) => (STDOUT, data),
            Output::Stderr(data) => (STDERR, data),
        };
        if sink.send(framed(channel, &data)).await.is_err() {
            break;
        }
    }
    let outcome = match runner.await {
        Ok(outcome) => outcome,
        Err(e) => super::Outcome::Failed(format!("the session failed: {e}")),
    };
    let status = serde_json::to_vec(&outcome.status(&command)).unwrap_or_default();
    let _ = sink.send(framed(ERROR, &status)).await;
    // A normal closure: kubectl takes any other close as the error stream failing.
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
    reader.abort();
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    Message::Binary(message.into())
}
