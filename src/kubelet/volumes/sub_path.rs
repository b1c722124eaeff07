//! subPath and subPathExpr, as upstream's kubelet prepares them: no absolute paths, no
//! `..`, symlinks resolved and required to stay inside the volume, missing directories
//! created, and the result opened component by component without following symlinks and
//! bind-mounted from that open file descriptor to a stable place under the pod dir, so a
//! container cannot swap a symlink in between the check and the mount.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::mounts;

/// `$(VAR)` of a subPathExpr replaced from the container's environment (`$$` is a `$`),
/// as upstream's expansion: unknown variables are kept as written.
pub fn expand(expr: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(close) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + close];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&tail[..3 + close]),
            }
            rest = &tail[3 + close..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Checks `sub_path` as upstream does before touching the disk.
pub fn validate(sub_path: &str) -> Result<(), String> {
    if Path::new(sub_path).is_absolute() {
        return Err(format!(
            "error SubPath `{sub_path}` must not be an absolute path"
        ));
    }
    if Path::new(sub_path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!(
            "unable to provision SubPath `{sub_path}`: must not contain '..'"
        ));
    }
    Ok(())
}

fn not_within(sub_path: &str, volume: &Path) -> String {
    format!(
        "subpath {sub_path:?} not within volume path {:?}",
        volume.display().to_string()
    )
}

/// Creates the missing directories of `sub_path` inside `volume` (with the volume root's
/// mode, as upstream), refusing any existing part that leads outside of it.
fn make_dirs(volume: &Path, base: &Path, sub_path: &str) -> Result<(), String> {
    let mut current = volume.to_path_buf();
    for component in Path::new(sub_path).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        current.push(part);
        match std::fs::canonicalize(&current) {
            Ok(real) if !real.starts_with(base) => return Err(not_within(sub_path, volume)),
            Ok(_) => {}
            Err(_) if std::fs::symlink_metadata(&current).is_ok() => {
                // A dangling symlink: where it points is not ours to create.
                return Err(not_within(sub_path, volume));
            }
            Err(_) => {
                std::fs::create_dir(&current)
                    .map_err(|e| format!("failed to create subPath directory {sub_path:?}: {e}"))?;
                if let Ok(meta) = std::fs::metadata(volume) {
                    let _ = std::fs::set_permissions(&current, meta.permissions());
                }
            }
        }
    }
    Ok(())
}

/// Opens `relative` below the directory `base` one component at a time, never following
/// a symlink.
fn open_no_follow(base: &Path, relative: &Path) -> Result<OwnedFd, std::io::Error> {
    let open = |dir: Option<&OwnedFd>, name: &std::ffi::OsStr| -> std::io::Result<OwnedFd> {
        let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let dirfd = dir.map_or(libc::AT_FDCWD, std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: a valid C string and directory fd; the returned fd is owned below.
        let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat on an fd we own into a properly sized buffer.
        let rc = unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), stat.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so the buffer is initialised.
        let stat = unsafe { stat.assume_init() };
        if stat.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(std::io::Error::other(format!(
                "{} is a symlink",
                name.to_string_lossy()
            )));
        }
        Ok(fd)
    };
    let mut fd = open(None, base.as_os_str())?;
    for component in relative.components() {
        if let Component::Normal(part) = component {
            fd = open(Some(&fd), part)?;
        }
    }
    Ok(fd)
}

/// Makes `sub_path` of the volume at `volume` safe to mount: returns the path to give the
/// container runtime, a bind mount at `target` of the checked directory or file.
pub fn prepare(volume: &Path, sub_path: &str, target: &Path) -> Result<PathBuf, String> {
    validate(sub_path)?;
    let base = std::fs::canonicalize(volume)
        .map_err(|e| format!("error preparing subpath {sub_path:?}: {e}"))?;
    make_dirs(volume, &base, sub_path)?;
    let real = std::fs::canonicalize(volume.join(sub_path))
        .map_err(|e| format!("error preparing subpath {sub_path:?}: {e}"))?;
    let relative = real
        .strip_prefix(&base)
        .map_err(|_| not_within(sub_path, volume))?
        .to_path_buf();
    let fd = open_no_follow(&base, &relative)
        .map_err(|e| format!("error preparing subpath {sub_path:?}: {e}"))?;
    let fd_path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    let is_dir = std::fs::metadata(&fd_path).is_ok_and(|m| m.is_dir());
    let mkerr = |e: std::io::Error| format!("error creating subpath mount point {target:?}: {e}");
    if mounts::is_mount_point(target).unwrap_or(false) {
        mounts::unmount_all(target).map_err(mkerr)?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(mkerr)?;
    }
    if is_dir {
        if !target.is_dir() {
            let _ = std::fs::remove_file(target);
            std::fs::create_dir(target).map_err(mkerr)?;
        }
    } else if !target.is_file() {
        let _ = std::fs::remove_dir(target);
        std::fs::File::create(target).map_err(mkerr)?;
    }
    mounts::bind(&fd_path, target)
        .map_err(|e| format!("error mounting subpath {sub_path:?} at {target:?}: {e}"))?;
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_expand_from_the_environment() {
        let env = HashMap::from([("POD".to_string(), "web-0".to_string())]);
        assert_eq!(expand("logs/$(POD)", &env), "logs/web-0");
        assert_eq!(expand("$(NOPE)/$$x", &env), "$(NOPE)/$x");
    }

    #[test]
    fn backsteps_and_absolute_paths_are_refused() {
        assert!(validate("../x")
            .unwrap_err()
            .contains("must not contain '..'"));
        assert!(validate("/etc").unwrap_err().contains("absolute"));
        assert!(validate("a/b").is_ok());
    }
}
