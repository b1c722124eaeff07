//! Pseudo-terminals: the pty master libcontainer sends over a console socket (SCM_RIGHTS),
//! resizing it (TIOCSWINSZ), hanging it up, and an async reader/writer over it for the agent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Receives the one fd libcontainer sends on a console-socket connection (blocking or
/// non-blocking, as `socket` is).
pub fn recv_fd(socket: RawFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<UnixAddr>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table; we own it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no pty master in the console socket message",
    ))
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets the terminal size (the process gets SIGWINCH).
pub fn resize(master: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and a valid winsize for the duration of the call.
    unsafe { tiocswinsz(master, &size) }?;
    Ok(())
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A pty master for tokio; clones share the fd (one reads, one writes).
#[derive(Clone)]
pub struct Pty {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Pty {
    pub fn new(master: OwnedFd) -> io::Result<Pty> {
        set_nonblocking(master.as_raw_fd())?;
        Ok(Pty {
            // SAFETY: the OwnedFd is a valid fd, owned by the AsyncFd and never replaced.
            fd: Arc::new(unsafe { AsyncFd::register(master)? }),
        })
    }

    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize(self.fd.get_ref().as_raw_fd(), cols, rows)
    }

    /// Hangs the terminal up, as closing its master would: the session's leader and
    /// foreground processes get SIGHUP, their reads of it end. What containerd's shim does
    /// (closing the console) when a tty exec's stdin ends; done here on the slave
    /// (TIOCGPTPEER, then TIOCVHANGUP) so that the master, shared with the output reader,
    /// stays open until that output is drained.
    pub fn hangup(&self) -> io::Result<()> {
        let master = self.fd.get_ref().as_raw_fd();
        // SAFETY: plain ioctls on fds this process owns; the peer fd is owned right away.
        let slave = unsafe {
            let fd = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: as above.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCVHANGUP) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last process holding the slave is gone: end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The end of the terminal's input (an exec's stdin closed): the terminal is hung up.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.hangup())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A shell on the terminal ends when it is hung up (128 + SIGHUP), and the master's
    /// reader sees the end.
    #[tokio::test]
    async fn hangup_ends_the_session() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "read line; echo got $line"])
            .stdin(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty's slave.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        drop(command);
        drop(pty.slave);
        let master = Pty::new(pty.master).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        master.hangup().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
        let mut reader = master.clone();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
            .await
            .unwrap();
    }
}
