//! The image index: one JSON file per image (`index/<id hex>.json`), written atomically
//! (temp + fsync + rename) so readers in other processes never see half a file, and the
//! flock that serialises writers.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{Image, ImageError, Reference};

pub(super) fn list(dir: &Path) -> Result<Vec<Image>, ImageError> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ImageError::io(dir))? {
        let path = entry.map_err(ImageError::io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // Removed between read_dir and read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io(&path)(e)),
        };
        let image: Image = serde_json::from_slice(&data)
            .map_err(|e| ImageError::invalid(path.display().to_string(), e))?;
        images.push(image);
    }
    images.sort_by(|a, b| match (a.names.first(), b.names.first()) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    Ok(images)
}

fn file_name(id: &str) -> String {
    format!("{}.json", id.trim_start_matches("sha256:"))
}

pub(super) fn write(dir: &Path, tmp_dir: &Path, image: &Image) -> Result<(), ImageError> {
    let data = serde_json::to_vec_pretty(image).map_err(|e| ImageError::invalid(&image.id, e))?;
    write_atomic(&dir.join(file_name(&image.id)), tmp_dir, &data)
}

pub(super) fn delete(dir: &Path, id: &str) -> Result<(), ImageError> {
    let path = dir.join(file_name(id));
    std::fs::remove_file(&path).map_err(ImageError::io(&path))?;
    sync_dir(dir)
}

/// Writes `data` to `path` through a temp file in `tmp_dir` (same file system), fsynced
/// before the rename, and the directory after it.
pub(super) fn write_atomic(path: &Path, tmp_dir: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = tmp_dir.join(format!("index-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(ImageError::io(&tmp))?;
        file.write_all(data).map_err(ImageError::io(&tmp))?;
        file.sync_all().map_err(ImageError::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(ImageError::io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io(dir))
}

/// Finds an image: by exact id (`sha256:<hex>` or `<hex>`), by normalised name, by
/// `name@digest` among repo digests, then by a unique id prefix (as `docker`).
pub(super) fn resolve(images: &[Image], reference: &str) -> Result<Option<Image>, ImageError> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() == 64 {
        if let Some(image) = images
            .iter()
            .find(|i| i.id.trim_start_matches("sha256:") == hex)
        {
            return Ok(Some(image.clone()));
        }
    }
    if let Ok(parsed) = Reference::parse(reference) {
        let canonical = parsed.canonical();
        let found = if parsed.digest.is_some() {
            images.iter().find(|i| i.repo_digests.contains(&canonical))
        } else {
            images.iter().find(|i| i.names.contains(&canonical))
        };
        if let Some(image) = found {
            return Ok(Some(image.clone()));
        }
        // `name@digest` where the digest is the image id (e.g. a kubelet's imageID).
        if let Some(digest) = &parsed.digest {
            if let Some(image) = images.iter().find(|i| i.id == *digest) {
                return Ok(Some(image.clone()));
            }
        }
    }
    if !hex.is_empty() && hex.len() < 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let matches: Vec<&Image> = images
            .iter()
            .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex))
            .collect();
        match matches.as_slice() {
            [] => {}
            [one] => return Ok(Some((*one).clone())),
            many => {
                return Err(ImageError::Ambiguous {
                    reference: reference.to_string(),
                    candidates: many.iter().map(|i| i.id.clone()).collect(),
                })
            }
        }
    }
    Ok(None)
}

/// An exclusive flock on the store's lock file, released on drop.
pub(super) struct Lock {
    _lock: nix::fcntl::Flock<File>,
}

impl Lock {
    pub(super) fn acquire(path: &Path) -> Result<Lock, ImageError> {
        Self::take(path, nix::fcntl::FlockArg::LockExclusive)?
            .ok_or_else(|| ImageError::io(path)(std::io::ErrorKind::WouldBlock.into()))
    }

    pub(super) fn acquire_shared(path: &Path) -> Result<Lock, ImageError> {
        Self::take(path, nix::fcntl::FlockArg::LockShared)?
            .ok_or_else(|| ImageError::io(path)(std::io::ErrorKind::WouldBlock.into()))
    }

    /// An exclusive lock if nobody holds one now.
    pub(super) fn try_exclusive(path: &Path) -> Result<Option<Lock>, ImageError> {
        Self::take(path, nix::fcntl::FlockArg::LockExclusiveNonblock)
    }

    fn take(path: &Path, arg: nix::fcntl::FlockArg) -> Result<Option<Lock>, ImageError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ImageError::io(path))?;
        // flock is per open file description, so threads of one process exclude each other too.
        match nix::fcntl::Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(Lock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(ImageError::io(path)(e.into())),
        }
    }
}
