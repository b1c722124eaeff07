//! The agent's side of attach and resize: one `attach` connection to the shim, its frames
//! (see [`super::protocol`]) turned into plain async streams.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{exchange, ShimReader};
use super::exec_client::{ExecReader, ExecWriter};
use super::protocol::{self, Request, Response};
use super::ShimError;

/// Buffer between the connection and a stream's reader.
const PIPE: usize = 64 * 1024;

/// An attached session; output is live from the moment of attaching. Dropping every part
/// detaches.
pub struct AttachStreams {
    /// The container runs on a terminal: all output comes on `stdout`; resize with
    /// [`resize`].
    pub tty: bool,
    /// `Some` if the container has stdin (and, with stdinOnce, it was not closed yet).
    /// Shutting it down ends the input (closes the container's stdin with stdinOnce).
    pub stdin: Option<ExecWriter>,
    pub stdout: ExecReader,
    /// `None` with a tty.
    pub stderr: Option<ExecReader>,
}

/// Attaches to the running container of `container_dir`.
pub async fn attach(container_dir: &Path) -> Result<AttachStreams, ShimError> {
    let (answer, reader, mut writer) = request(container_dir, &Request::Attach).await?;
    let tty = answer.tty.unwrap_or(false);
    let has_stdin = answer.stdin.unwrap_or(false);

    let (stdout_mine, stdout_theirs) = tokio::io::duplex(PIPE);
    let (stderr_mine, stderr_theirs) = if tty {
        (None, None)
    } else {
        let (a, b) = tokio::io::duplex(PIPE);
        (Some(a), Some(b))
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(demux(reader, stdout_mine, stderr_mine, done_tx));

    let stdin = if has_stdin {
        let (mut input, theirs) = tokio::io::duplex(PIPE);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            let mut out = Vec::with_capacity(buf.len() + protocol::HEADER);
            loop {
                // A failed read ends the input like EOF.
                let n: usize = input.read(&mut buf).await.unwrap_or_default();
                out.clear();
                protocol::frame(&mut out, protocol::STDIN, &buf[..n]);
                if writer.write_all(&out).await.is_err() || n == 0 {
                    break;
                }
            }
            // Keep the connection open for output until the shim or the reader ends it.
            let _ = done_rx.await;
            drop(writer);
        });
        Some(Box::new(theirs) as ExecWriter)
    } else {
        tokio::spawn(async move {
            let _ = done_rx.await;
            drop(writer);
        });
        None
    };
    Ok(AttachStreams {
        tty,
        stdin,
        stdout: Box::new(stdout_theirs),
        stderr: stderr_theirs.map(|s| Box::new(s) as ExecReader),
    })
}

/// Copies the shim's output frames into the stream pipes until the shim closes the
/// connection or nobody reads any more.
async fn demux(
    mut reader: ShimReader,
    mut stdout: tokio::io::DuplexStream,
    mut stderr: Option<tokio::io::DuplexStream>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut stdout_open = true;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; protocol::HEADER];
        if reader.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        payload.resize(len, 0);
        if reader.read_exact(&mut payload).await.is_err() {
            break;
        }
        let target = match header[0] {
            protocol::STDOUT if stdout_open => Some(&mut stdout),
            protocol::STDERR => stderr.as_mut(),
            _ => None,
        };
        if let Some(target) = target {
            if target.write_all(&payload).await.is_err() {
                if header[0] == protocol::STDOUT {
                    stdout_open = false;
                } else {
                    stderr = None;
                }
            }
        }
        if !stdout_open && stderr.is_none() {
            break;
        }
    }
    let _ = done.send(());
}

/// Sets the terminal size of a tty container.
pub async fn resize(container_dir: &Path, cols: u16, rows: u16) -> Result<(), ShimError> {
    // `request` turns a refusal (no terminal) into an error.
    request(container_dir, &Request::Resize { cols, rows }).await?;
    Ok(())
}

/// Sends one request and reads the answer line, keeping the connection; a refusal is an
/// error.
async fn request(
    container_dir: &Path,
    request: &Request,
) -> Result<(Response, ShimReader, tokio::net::unix::OwnedWriteHalf), ShimError> {
    let (answer, reader, write) = exchange(container_dir, request).await?;
    if !answer.ok {
        return Err(ShimError::Shim {
            dir: container_dir.to_path_buf(),
            message: answer.error.unwrap_or_default(),
        });
    }
    Ok((answer, reader, write))
}
