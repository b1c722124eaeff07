//! exec and attach: a process's stdin, stdout, stderr, terminal size and exit code carried
//! over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`: [`websocket`]) or SPDY/3.1
//! (`v4.channel.k8s.io`: [`spdy`]).
//!
//! The process itself is a [`Session`] opened by a [`StreamBackend`]: the container shim's
//! exec/attach in production, or [`host::HostProcess`], a process on the host, where no
//! container runtime is involved (the protocol tests). Owns the protocols, not processes.

pub mod host;
pub mod spdy;
pub mod websocket;

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::ContainerRecord;

/// Which streams the client asked for, and the command (exec only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// exec's `command` parameters, in order (empty for attach).
    pub command: Vec<String>,
}

impl StreamOptions {
    /// Reads the query of an exec or attach request, as upstream: at least one stream,
    /// and with a terminal there is no separate stderr.
    pub fn from_query(query: &str, exec: bool) -> Result<StreamOptions, String> {
        let mut options = StreamOptions::default();
        let flag = |v: &str| v != "0" && !v.eq_ignore_ascii_case("false");
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "stdin" | "input" => options.stdin = flag(&value),
                "stdout" | "output" => options.stdout = flag(&value),
                "stderr" | "error" => options.stderr = flag(&value),
                "tty" => options.tty = flag(&value),
                "command" => options.command.push(value.into_owned()),
                _ => {}
            }
        }
        if !options.stdin && !options.stdout && !options.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        if exec && options.command.is_empty() {
            return Err("you must specify a command".into());
        }
        if options.tty {
            options.stderr = false;
        }
        Ok(options)
    }
}

/// A terminal size as the resize channel sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

pub type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A running process (exec) or container (attach) as the protocols drive it: the seam a
/// container runtime plugs into.
pub struct Session {
    /// Present when stdin was asked for.
    pub stdin: Option<BoxedWriter>,
    /// With a terminal: the terminal's output (stdout and stderr both).
    pub stdout: Option<BoxedReader>,
    pub stderr: Option<BoxedReader>,
    /// Terminal sizes go here (terminal sessions only).
    pub resize: Option<mpsc::UnboundedSender<TerminalSize>>,
    /// Resolves to the exit code when the process ended (attach: when the container did).
    pub exit: BoxFuture<'static, io::Result<i32>>,
}

/// Why a session could not be opened; reported on the error channel as upstream does.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Unavailable(String),
    #[error("failed to exec in container: {0}")]
    Start(String),
}

/// Opens sessions in containers.
pub trait StreamBackend: Send + Sync {
    fn exec(
        &self,
        container: &ContainerRecord,
        options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>>;
    fn attach(
        &self,
        container: &ContainerRecord,
        options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>>;
}

/// What the client sent, whatever the protocol.
#[derive(Debug)]
pub(crate) enum Input {
    Stdin(Bytes),
    StdinClosed,
    Resize(TerminalSize),
}

/// What goes to the client, whatever the protocol.
#[derive(Debug)]
pub(crate) enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// How the session ended, for the error channel.
pub(crate) enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The `Status` upstream writes on the error channel (v4 and later): Success, or a
    /// Failure that kubectl turns into its own exit code.
    pub(crate) fn status(&self, command: &[String]) -> Value {
        match self {
            Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            }),
        }
    }
}

/// Runs `session`: `input` feeds its stdin and terminal, its output goes to `output`.
/// Returns once it exited and its output is drained.
pub(crate) async fn run(
    session: Result<Session, StreamError>,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) -> Outcome {
    let session = match session {
        Ok(session) => session,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let Session {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let pumps: Vec<_> = [(stdout, false), (stderr, true)]
        .into_iter()
        .filter_map(|(reader, is_stderr)| {
            let reader = reader?;
            let output = output.clone();
            Some(tokio::spawn(pump(reader, output, is_stderr)))
        })
        .collect();
    drop(output);
    let feeder = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(message) = input.recv().await {
            match message {
                Input::Stdin(data) => {
                    if let Some(writer) = &mut stdin {
                        let written = async {
                            writer.write_all(&data).await?;
                            writer.flush().await
                        };
                        if written.await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Input::StdinClosed => {
                    if let Some(mut writer) = stdin.take() {
                        let _ = writer.shutdown().await;
                    }
                }
                Input::Resize(size) => {
                    if let Some(resize) = &resize {
                        let _ = resize.send(size);
                    }
                }
            }
        }
    });
    let outcome = match exit.await {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(format!("waiting for the process: {e}")),
    };
    for pump in pumps {
        let _ = pump.await;
    }
    feeder.abort();
    outcome
}

async fn pump(mut reader: BoxedReader, output: mpsc::Sender<Output>, is_stderr: bool) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let message = if is_stderr {
            Output::Stderr(data)
        } else {
            Output::Stdout(data)
        };
        if output.send(message).await.is_err() {
            return;
        }
    }
}

/// The query of a request as a map, for the endpoints that take single values.
pub(crate) fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_as_upstream() {
        let exec = StreamOptions::from_query(
            "command=sh&command=-c&command=echo+hi&stdin=true&stdout=1&stderr=true&tty=true",
            true,
        )
        .unwrap();
        assert_eq!(exec.command, ["sh", "-c", "echo hi"]);
        assert!(exec.stdin && exec.stdout && exec.tty);
        assert!(!exec.stderr, "a terminal has no separate stderr");
        assert!(StreamOptions::from_query("command=ls", true).is_err());
        assert!(StreamOptions::from_query("stdout=true", true).is_err());
        assert!(StreamOptions::from_query("stdout=true", false).is_ok());
    }

    #[test]
    fn exit_codes_become_upstreams_status() {
        let command = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            Outcome::Exited(0).status(&command),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = Outcome::Exited(3).status(&command);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
    }
}
