//! Container root file systems: an overlay of the image's unpacked layers (shared, read
//! only) with a per-container `upper/` and `work/` in the container dir.
//!
//! The mount options must fit in one page: with many layers the absolute lowerdir paths
//! would not, so they are then passed as `/proc/self/fd/<n>` of dirs opened for the mount.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::ImageError;

/// Leaves room below the 4 KiB page for the kernel's own additions.
const MAX_OPTIONS: usize = 4000;

pub(super) fn mount_overlay(
    lowers: &[PathBuf],
    container_dir: &Path,
) -> Result<PathBuf, ImageError> {
    let rootfs = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(dir).map_err(ImageError::io(dir))?;
    }
    if is_mount_point(&rootfs)? {
        return Ok(rootfs);
    }
    let tail = format!(",upperdir={},workdir={}", upper.display(), work.display());
    let absolute = lowers
        .iter()
        .map(|p| escape(&p.display().to_string()))
        .collect::<Vec<_>>()
        .join(":");
    // Keeps the opened dirs alive until the mount is done.
    let mut _fds: Vec<OwnedFd> = Vec::new();
    let lowerdir = if absolute.len() + tail.len() + 10 < MAX_OPTIONS {
        absolute
    } else {
        let mut paths = Vec::with_capacity(lowers.len());
        for lower in lowers {
            let fd = open(
                lower,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| ImageError::io(lower)(e.into()))?;
            // SAFETY: `open` returned a new descriptor this function now owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            paths.push(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            _fds.push(fd);
        }
        paths.join(":")
    };
    let options = format!("lowerdir={lowerdir}{tail}");
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| ImageError::Mount {
        path: rootfs.clone(),
        source,
    })?;
    Ok(rootfs)
}

pub(super) fn unmount_overlay(container_dir: &Path) -> Result<(), ImageError> {
    let rootfs = container_dir.join("rootfs");
    if !rootfs.exists() || !is_mount_point(&rootfs)? {
        return Ok(());
    }
    match umount2(&rootfs, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(ImageError::Mount {
            path: rootfs,
            source,
        }),
    }
}

/// Overlay separates lowerdirs with ':' and options with ','; both are escaped with '\'.
fn escape(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Whether `path` is the root of a mount, from /proc/self/mountinfo (which, unlike an
/// st_dev comparison, also sees bind mounts within one file system).
fn is_mount_point(path: &Path) -> Result<bool, ImageError> {
    let path = std::fs::canonicalize(path).map_err(ImageError::io(path))?;
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(ImageError::io(mountinfo))?;
    let wanted = path.display().to_string();
    Ok(text.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|mount_point| mount_point == wanted)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_separators() {
        assert_eq!(escape("/a:b,c"), "/a\\:b\\,c");
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")).unwrap());
    }
}
