//! Writing certificate, key, token and kubeconfig files safely: atomically (a crash leaves
//! the old file or the new one, never half of one) and never readable by others when
//! private, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::PkiError;

/// Makes temp names unique between threads of this process (the pid separates processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` with `mode`: a temp file in the same directory, created with
/// that mode (so a key is never briefly world-readable), fsync, rename over `path`, fsync of
/// the directory so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        PkiError::io(
            path,
            "writing",
            std::io::Error::other("path has no file name"),
        )
    })?;
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{unique}.tmp", std::process::id()));
    let result = (|| {
        // create_new: never follow a symlink or reuse a file someone else prepared.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode (e.g. 0644 under umask 077); set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| PkiError::io(path, "writing", e))
}

/// Creates `dir` (and missing parents) with `mode` if it does not exist; an existing
/// directory is left as it is.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| PkiError::io(dir, "creating", e))
}

/// Reads `path`, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io(path, "reading", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_replace_the_file_with_the_exact_mode_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path), 0o644);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/ca.key");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err().to_string();
        assert!(err.contains("missing-dir/ca.key"), "{err}");
    }

    #[test]
    fn directories_are_created_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("server/tls");
        ensure_dir(&tls, 0o700).unwrap();
        assert_eq!(mode_of(&tls), 0o700);
        ensure_dir(&tls, 0o755).unwrap();
        assert_eq!(mode_of(&tls), 0o700, "an existing directory is left alone");
        assert_eq!(read_optional(&tls.join("absent")).unwrap(), None);
    }
}
