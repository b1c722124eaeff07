//! Unpacking one layer blob (gzip, zstd or plain tar, told apart by magic bytes) into a
//! directory overlayfs can use as a lowerdir: OCI whiteouts become overlay whiteouts
//! (`.wh.<name>` → a 0/0 character device, `.wh..wh..opq` → `trusted.overlay.opaque=y`);
//! ownership, modes, symlinks, hardlinks and xattrs are kept. It unpacks into a temp dir and
//! renames, so a crash never leaves half a layer under its final name.

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Opens a blob, transparently decompressing gzip or zstd.
pub(super) fn open_decompressed(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let file = std::fs::File::open(path).map_err(ImageError::io(path))?;
    decompress(Box::new(file), path)
}

/// Wraps `reader` in a gzip or zstd decoder if its first bytes say so.
pub(super) fn decompress(reader: Box<dyn Read>, what: &Path) -> Result<Box<dyn Read>, ImageError> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let head = reader.fill_buf().map_err(ImageError::io(what))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(reader).map_err(ImageError::io(what))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// Computes the sha256 of everything read through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub(super) bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left and returns `sha256:<hex>`.
    pub(super) fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks the layer `blob` into `dest` (which must not exist yet), checking the
/// uncompressed content against `diff_id`.
pub(super) fn unpack(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    tmp_dir: &Path,
) -> Result<(), ImageError> {
    let tmp = tmp_dir.join(format!("layer-{}", uuid::Uuid::new_v4().simple()));
    let result = unpack_into(blob, diff_id, &tmp).and_then(|()| {
        match std::fs::rename(&tmp, dest) {
            Ok(()) => Ok(()),
            // Another import unpacked the same layer meanwhile.
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(ImageError::io(dest)(e)),
        }
    });
    if tmp.exists() {
        let _ = super::remove_any(&tmp);
    }
    result
}

fn unpack_into(blob: &Path, diff_id: &str, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir(dest).map_err(ImageError::io(dest))?;
    let mut hashing = HashingReader::new(open_decompressed(blob)?);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let entries = archive.entries().map_err(ImageError::io(blob))?;
        for entry in entries {
            let mut entry = entry.map_err(ImageError::io(blob))?;
            let path = entry.path().map_err(ImageError::io(blob))?.into_owned();
            let Some(relative) = clean(&path) else {
                return Err(ImageError::invalid(
                    blob.display().to_string(),
                    format!("entry {path:?} points outside the layer"),
                ));
            };
            let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let real = whiteout_parent(dest, relative.parent().unwrap_or(Path::new("")))
                    .map_err(|reason| {
                        ImageError::invalid(
                            blob.display().to_string(),
                            format!("whiteout {path:?}: {reason}"),
                        )
                    })?;
                if name == OPAQUE {
                    xattr::set(&real, "trusted.overlay.opaque", b"y")
                        .map_err(ImageError::io(&real))?;
                } else {
                    whiteout(&real.join(hidden))?;
                }
                continue;
            }
            entry.unpack_in(dest).map_err(|e| {
                ImageError::io(dest.join(&relative))(std::io::Error::new(
                    e.kind(),
                    format!("unpack from {}: {e}", blob.display()),
                ))
            })?;
        }
    }
    let actual = hashing.finish().map_err(ImageError::io(blob))?;
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            what: format!("uncompressed layer {}", blob.display()),
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}

/// The dir a whiteout goes in, created if this layer has no entry for it. A symlink on
/// the way is refused: it could lead the whiteout out of the layer.
// TODO(issue 5): a dir created here gets mode 0755 root, which overlay then shows instead
// of the lower layer's (layers normally carry their parent dirs, so this is rare).
fn whiteout_parent(dest: &Path, relative: &Path) -> Result<PathBuf, String> {
    let mut dir = dest.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(dir)
}

/// An overlay whiteout: a character device 0/0 in place of `path`.
fn whiteout(path: &Path) -> Result<(), ImageError> {
    let _ = super::remove_any(path);
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|e| ImageError::io(path)(e.into()))
}

/// The entry's path relative to the layer root, or `None` if it climbs out with `..`.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(clean(Path::new("a/../../b")), None);
    }

    #[test]
    fn whiteouts_stay_in_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("evil")).unwrap();
        assert!(whiteout_parent(dir.path(), Path::new("evil/x")).is_err());
        let made = whiteout_parent(dir.path(), Path::new("a/b")).unwrap();
        assert!(made.is_dir());
    }

    #[test]
    fn hashes_what_it_reads() {
        let reader = HashingReader::new(&b"abc"[..]);
        assert_eq!(
            reader.finish().unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
