//! A [`StreamBackend`] that runs exec's command as a process on the host, with pipes or a
//! pseudo-terminal. It is what the protocol layers are tested against (a real program, its
//! real exit code and terminal), and stands in on nodes where no container runtime is
//! wired; it never runs anything a caller has not been authorised for (only the API
//! server's identity reaches the kubelet API).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::{Session, StreamBackend, StreamError, StreamOptions, TerminalSize};
use crate::kubelet::server::containers::ContainerRecord;

/// Runs exec commands on the host; attach is not possible (there is no container).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostProcess;

impl StreamBackend for HostProcess {
    fn exec(
        &self,
        _container: &ContainerRecord,
        options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let result = spawn(options);
        async move { result }.boxed()
    }

    fn attach(
        &self,
        container: &ContainerRecord,
        _options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let message = format!(
            "attaching to container {:?} needs the container runtime, which this kubelet does not run",
            container.container
        );
        async move { Err(StreamError::Unavailable(message)) }.boxed()
    }
}

/// Starts `options.command` on the host.
pub fn spawn(options: &StreamOptions) -> Result<Session, StreamError> {
    let (program, args) = options
        .command
        .split_first()
        .ok_or_else(|| StreamError::Start("no command".into()))?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    let start = |e: io::Error| StreamError::Start(format!("{program}: {e}"));
    if options.tty {
        return spawn_with_terminal(command, options).map_err(start);
    }
    command
        .stdin(if options.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if options.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if options.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().map_err(start)?;
    Ok(Session {
        stdin: child.stdin.take().map(|s| Box::new(s) as _),
        stdout: child.stdout.take().map(|s| Box::new(s) as _),
        stderr: child.stderr.take().map(|s| Box::new(s) as _),
        resize: None,
        exit: async move { child.wait().await.map(exit_code) }.boxed(),
    })
}

/// The exit code as a shell reports it: 128 + signal for a killed process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn set_size(fd: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn spawn_with_terminal(
    mut command: tokio::process::Command,
    options: &StreamOptions,
) -> io::Result<Session> {
    let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
    let (master, slave) = (pty.master, pty.slave);
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and ioctl.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // fd 0 is the terminal: make it the controlling one, as a login does.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    // The child's copies of the slave are closed with `command`; reading the master then
    // ends (EIO) when the last process on the terminal is gone.
    drop(command);
    let reader = dup(&master)?;
    let writer = dup(&master)?;
    let (resize_tx, mut resize_rx) = mpsc::unbounded_channel::<TerminalSize>();
    tokio::spawn(async move {
        while let Some(size) = resize_rx.recv().await {
            if let Err(e) = set_size(&master, size) {
                tracing::debug!(error = %e, "resizing the terminal failed");
            }
        }
    });
    Ok(Session {
        stdin: options
            .stdin
            .then(|| Box::new(tokio::fs::File::from_std(std::fs::File::from(writer))) as _),
        stdout: Some(Box::new(TerminalReader(tokio::fs::File::from_std(
            std::fs::File::from(reader),
        )))),
        stderr: None,
        resize: Some(resize_tx),
        exit: async move { child.wait().await.map(exit_code) }.boxed(),
    })
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: dup returns a new descriptor we own, or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A terminal master read as a byte stream: EIO (no process left on the terminal) is EOF.
struct TerminalReader(tokio::fs::File);

impl tokio::io::AsyncRead for TerminalReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{run, Input, Outcome, Output};
    use super::*;

    fn options(command: &[&str], stdin: bool, tty: bool) -> StreamOptions {
        StreamOptions {
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    async fn drive(options: &StreamOptions, input: Vec<Input>) -> (String, String, i32) {
        let (input_tx, input_rx) = mpsc::channel(16);
        let (output_tx, mut output_rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(spawn(options), input_rx, output_tx));
        for message in input {
            input_tx.send(message).await.unwrap();
        }
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(output) = output_rx.recv().await {
            match output {
                Output::Stdout(data) => stdout.extend_from_slice(&data),
                Output::Stderr(data) => stderr.extend_from_slice(&data),
            }
        }
        let code = match runner.await.unwrap() {
            Outcome::Exited(code) => code,
            Outcome::Failed(message) => panic!("{message}"),
        };
        (
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
            code,
        )
    }

    #[tokio::test]
    async fn pipes_carry_stdin_stdout_stderr_and_the_exit_code() {
        let options = options(&["sh", "-c", "cat; echo oops >&2; exit 7"], true, false);
        let (stdout, stderr, code) = drive(
            &options,
            vec![
                Input::Stdin(Bytes::from_static(b"hello\n")),
                Input::StdinClosed,
            ],
        )
        .await;
        assert_eq!(
            (stdout.as_str(), stderr.as_str(), code),
            ("hello\n", "oops\n", 7)
        );
    }

    #[tokio::test]
    async fn a_terminal_has_a_size_and_echoes() {
        let options = options(
            &["sh", "-c", "read line; stty size; echo got $line"],
            true,
            true,
        );
        let (stdout, _, code) = drive(
            &options,
            vec![
                Input::Resize(TerminalSize {
                    width: 91,
                    height: 37,
                }),
                Input::Stdin(Bytes::from_static(b"abc\n")),
            ],
        )
        .await;
        assert_eq!(code, 0);
        assert!(stdout.contains("37 91"), "{stdout:?}");
        assert!(stdout.contains("got abc"), "{stdout:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error() {
        let result = spawn(&options(&["/nonexistent/program"], false, false));
        assert!(matches!(result, Err(StreamError::Start(_))));
    }
}
