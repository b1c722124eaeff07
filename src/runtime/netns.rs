//! Network namespaces: one per pod, kept alive by a bind mount on a file (as `ip netns`
//! does) so that it outlives the containers in it and survives an agent restart.
//!
//! Namespace switches affect only the calling thread, so every switch happens on a fresh
//! thread that does its one job and ends: the agent's tokio workers never change namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Creates a network namespace bind-mounted at `path` (the file is created; its folder must
/// exist) with its loopback interface up. An existing namespace at `path` is kept.
pub fn create(path: &Path) -> io::Result<()> {
    if is_namespace(path) {
        return Ok(());
    }
    File::create(path).map_err(|e| with_path(e, "creating", path))?;
    let target = path.to_path_buf();
    on_own_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| with_path(e.into(), "bind-mounting the namespace on", &target))?;
        loopback_up()
    })
}

/// Unmounts and deletes the namespace file at `path`; the namespace itself goes away with
/// its last process. A missing file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(with_path(e.into(), "unmounting", path)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, "removing", path)),
        _ => Ok(()),
    }
}

/// Whether `path` is a mounted network namespace (not just a leftover empty file).
pub fn is_namespace(path: &Path) -> bool {
    // A namespace file reports the nsfs magic; an empty regular file does not.
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Runs `work` on a new thread that has joined the namespace at `path`, and returns its
/// result. File descriptors it opens (sockets) stay in that namespace when used elsewhere.
pub fn run_in<T, F>(path: &Path, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let namespace = File::open(path).map_err(|e| with_path(e, "opening", path))?;
    on_own_thread(move || {
        setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        work()
    })
}

/// Connects to `addr` from inside the namespace at `path` (probes, port-forward).
pub async fn connect_tcp(path: &Path, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let path: PathBuf = path.to_path_buf();
    let socket = tokio::task::spawn_blocking(move || {
        run_in(&path, move || {
            let socket = socket2_like_nonblocking(addr)?;
            Ok(socket)
        })
    })
    .await
    .map_err(io::Error::other)??;
    let socket = tokio::net::TcpSocket::from_std_stream(socket);
    socket.connect(addr).await
}

/// A listener on `addr` inside the namespace at `path` (the twin of [`connect_tcp`]).
pub async fn listen_tcp(path: &Path, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let path: PathBuf = path.to_path_buf();
    let listener = tokio::task::spawn_blocking(move || {
        run_in(&path, move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
    })
    .await
    .map_err(io::Error::other)??;
    tokio::net::TcpListener::from_std(listener)
}

/// A non-blocking, unconnected TCP socket for `addr`'s family, created in the calling
/// thread's namespace.
fn socket2_like_nonblocking(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    Ok(std::net::TcpStream::from(fd))
}

fn on_own_thread<T, F>(work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    std::thread::Builder::new()
        .name("kedge-netns".into())
        .spawn(work)?
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// Sets `lo` up in the calling thread's namespace.
fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain data; the ioctls read and write only within it.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn with_path(error: io::Error, verb: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{verb} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn a_created_namespace_has_its_own_loopback_and_is_removed() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        create(&path).unwrap();
        assert!(is_namespace(&path));
        create(&path).unwrap(); // idempotent

        // A listener inside the namespace is reachable from inside, not from the host.
        let listener = run_in(&path, || std::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::thread::spawn(move || listener.accept().map(|_| ()));
        connect_tcp(&path, addr).await.unwrap();
        accepted.join().unwrap().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_err());

        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
