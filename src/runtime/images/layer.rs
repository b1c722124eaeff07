//! Unpacking one layer blob (gzip, zstd or plain tar, told apart by magic bytes) into a
//! directory overlayfs can use as a lowerdir: OCI whiteouts become overlay whiteouts
//! (`.wh.<name>` → a 0/0 character device, `.wh..wh..opq` → `trusted.overlay.opaque=y`);
//! ownership, modes, symlinks, hardlinks and xattrs are kept. Dirs an entry needs but the
//! layer does not list take their mode, owner and xattrs from the lower layers, as
//! containerd's archive applier does. It unpacks into a temp dir and renames, so a crash
//! never leaves half a layer under its final name.

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
/// uncompressed content against `diff_id`. `lowers` are the unpacked layers below it in the
/// image, nearest first.
pub(super) fn unpack(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    tmp_dir: &Path,
    lowers: &[PathBuf],
) -> Result<(), ImageError> {
    let tmp = tmp_dir.join(format!("layer-{}", uuid::Uuid::new_v4().simple()));
    let result = unpack_into(blob, diff_id, &tmp, lowers).and_then(|()| {
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

fn unpack_into(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    lowers: &[PathBuf],
) -> Result<(), ImageError> {
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
            let parent = relative.parent().unwrap_or(Path::new(""));
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let real = make_parents(dest, parent, lowers).map_err(|reason| {
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
            // A parent that is no dir here (a symlink in this layer) is left to the tar
            // crate, which follows it only if it stays inside the layer; its error, if
            // any, is the one to report.
            let _ = make_parents(dest, parent, lowers);
            entry.unpack_in(dest).map_err(|e| {
                ImageError::io(dest.join(&relative))(std::io::Error::new(
                    e.kind(),
                    format!(
                        "unpack from {}: {}",
                        blob.display(),
                        super::error::chain(&e)
                    ),
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

/// Creates the dirs of `relative` under `dest` that this layer has no entry for (yet), as
/// containerd's `mkparent` does: 0755, then the mode, owner and xattrs of the same dir in the
/// nearest lower layer that has it, so that overlay shows the dir as it was below; a lower
/// layer that replaced it with a non-dir ends the search. A symlink on the way is refused:
/// it could lead out of the layer. Returns the dir.
fn make_parents(dest: &Path, relative: &Path, lowers: &[PathBuf]) -> Result<PathBuf, String> {
    let mut dir = dest.to_path_buf();
    let mut rel = PathBuf::new();
    for part in relative.components() {
        dir.push(part);
        rel.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                copy_dir_info(&dir, &rel, lowers).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("{} : {e}", dir.display())),
        }
    }
    Ok(dir)
}

/// Gives the new dir `dir` (`rel` in the image) the mode, owner and xattrs of `rel` in the
/// nearest lower layer holding it, or 0755 if none does.
fn copy_dir_info(dir: &Path, rel: &Path, lowers: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut found = None;
    'lowers: for lower in lowers {
        // Walked one component at a time so that a symlink in a lower layer is never
        // followed (it could point out of it): a non-dir on the way means the dir was
        // replaced there.
        let mut path = lower.clone();
        for part in rel.components() {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => break 'lowers,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'lowers,
                Err(e) => return Err(e),
            }
        }
        found = Some(path);
        break;
    }
    let Some(lower) = found else {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    };
    let meta = std::fs::symlink_metadata(&lower)?;
    std::os::unix::fs::lchown(dir, Some(meta.uid()), Some(meta.gid()))?;
    // After chown, which clears set-id bits.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for name in xattr::list(&lower)? {
        // overlay's own attributes (opaque) belong to that layer, not to this one.
        if name.to_string_lossy().starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(&lower, &name)? {
            xattr::set(dir, &name, &value)?;
        }
    }
    Ok(())
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
        assert!(make_parents(dir.path(), Path::new("evil/x"), &[]).is_err());
        let made = make_parents(dir.path(), Path::new("a/b"), &[]).unwrap();
        assert!(made.is_dir());
    }

    /// A layer listing `a/b/c` and `w/.wh.x` but not their dirs: the dirs come out as the
    /// lower layers have them (mode, owner), 0755 root where no lower layer has them or one
    /// replaced them with a file.
    #[test]
    fn missing_parents_copy_the_lower_layers() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let mkdir = |path: PathBuf, mode: u32, owner: u32| {
            std::fs::create_dir_all(&path).unwrap();
            std::os::unix::fs::lchown(&path, Some(owner), Some(owner)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Nearest first: `upper` replaced `r` with a file; `lower` has a, w and r as dirs.
        let upper = dir.path().join("upper");
        let lower = dir.path().join("lower");
        mkdir(upper.clone(), 0o755, 0);
        std::fs::write(upper.join("r"), "").unwrap();
        mkdir(lower.join("a"), 0o1750, 1000);
        mkdir(lower.join("w"), 0o700, 1001);
        mkdir(lower.join("r"), 0o700, 1002);

        let mut builder = tar::Builder::new(Vec::new());
        for path in ["a/b/c", "w/.wh.x", "r/f"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, &b""[..]).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, &tar).unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let dest = dir.path().join("layer");
        unpack(&blob, &diff_id, &dest, dir.path(), &[upper, lower]).unwrap();

        let info = |rel: &str| {
            let meta = std::fs::symlink_metadata(dest.join(rel)).unwrap();
            (meta.mode() & 0o7777, meta.uid(), meta.gid())
        };
        assert_eq!(info("a"), (0o1750, 1000, 1000));
        assert_eq!(info("a/b"), (0o755, 0, 0));
        assert_eq!(info("w"), (0o700, 1001, 1001));
        assert_eq!(info("r"), (0o755, 0, 0));
        assert!(dest.join("a/b/c").is_file());
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
