//! Upstream's AtomicWriter layout for configMap, secret, downwardAPI and projected volumes:
//!
//! ```text
//! <volume>/..2026_11_29_09_30_00.123456789/   the files of one version (mode 0755 dir)
//! <volume>/..data -> ..2026_11_29_09_30_00.123456789
//! <volume>/<key>  -> ..data/<key>             what the container sees
//! ```
//!
//! An update writes a new timestamped dir and renames a `..data_tmp` symlink over `..data`,
//! so a reader sees either the old or the new set of files, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

pub const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path (`key`, `dir/key`) → content.
pub type Payload = BTreeMap<String, FileContent>;

/// The mode a file ends up with: with an fsGroup, group-readable as upstream's
/// `SetVolumeOwnership` makes read-only volumes.
fn final_mode(mode: u32, fs_group: Option<u32>) -> u32 {
    let mode = mode & 0o7777;
    if fs_group.is_some() {
        mode | 0o440
    } else {
        mode
    }
}

/// The files of the current version, read back (relative path → content).
fn current(dir: &Path) -> Option<Payload> {
    let data = dir.join(DATA_DIR);
    std::fs::read_link(&data).ok()?;
    let mut files = Payload::new();
    collect(&data, &data, &mut files).ok()?;
    Some(files)
}

fn collect(root: &Path, dir: &Path, files: &mut Payload) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            collect(root, &path, files)?;
        } else if meta.is_file() {
            let relative = path
                .strip_prefix(root)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            files.insert(
                relative,
                FileContent {
                    data: std::fs::read(&path)?,
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
        }
    }
    Ok(())
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

fn timestamped_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year]_[month]_[day]_[hour]_[minute]_[second]");
    let stamp = now.format(&format).unwrap_or_else(|_| "0".to_string());
    let random = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
    format!("..{stamp}.{random:09}")
}

/// Writes `payload` into `dir` atomically; does nothing when the files are already those.
/// Returns whether anything changed. `fs_group` makes every file and dir of the new
/// version owned by that group, readable by it.
pub fn write(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let wanted: Payload = payload
        .iter()
        .map(|(path, file)| {
            let content = FileContent {
                data: file.data.clone(),
                mode: final_mode(file.mode, fs_group),
            };
            (path.clone(), content)
        })
        .collect();
    let tops: BTreeSet<&str> = wanted.keys().map(|p| top_level(p)).collect();
    let links_ok = tops
        .iter()
        .all(|t| std::fs::symlink_metadata(dir.join(t)).is_ok_and(|m| m.file_type().is_symlink()));
    if links_ok && current(dir).as_ref() == Some(&wanted) {
        return Ok(false);
    }
    let old = std::fs::read_link(dir.join(DATA_DIR)).ok();

    let name = timestamped_name();
    let version = dir.join(&name);
    std::fs::create_dir(&version)?;
    std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in &wanted {
        let target = version.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
    }
    if let Some(gid) = fs_group {
        super::ownership::set_group(&version, gid, true)?;
    }

    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_DIR))?;

    for top in &tops {
        let link = dir.join(top);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a symlink", link.display()),
                ))
            }
            Err(_) => symlink(PathBuf::from(DATA_DIR).join(top), &link)?,
        }
    }
    // User-visible links of keys that are gone.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with("..") || tops.contains(file_name.as_str()) {
            continue;
        }
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != name.as_str()) {
        let old = dir.join(old);
        if old.starts_with(dir) && old.file_name().is_some_and(|n| n != DATA_DIR) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(true)
}

/// The content of `path` in the current version, if there is one.
pub fn read_current(dir: &Path, path: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(DATA_DIR).join(path)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileContent {
        FileContent {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn updates_swap_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("v");
        let mut payload = Payload::new();
        payload.insert("a".into(), file("1", 0o644));
        payload.insert("sub/b".into(), file("2", 0o600));
        assert!(write(&volume, &payload, None).unwrap());
        assert!(!write(&volume, &payload, None).unwrap());
        let first = std::fs::read_link(volume.join(DATA_DIR)).unwrap();
        assert!(first.to_string_lossy().starts_with("..20"));
        assert_eq!(
            std::fs::read_link(volume.join("sub")).unwrap(),
            PathBuf::from("..data/sub")
        );
        assert_eq!(std::fs::read_to_string(volume.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(volume.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        payload.remove("sub/b");
        payload.insert("a".into(), file("changed", 0o644));
        assert!(write(&volume, &payload, None).unwrap());
        assert_eq!(
            std::fs::read_to_string(volume.join("a")).unwrap(),
            "changed"
        );
        assert!(std::fs::symlink_metadata(volume.join("sub")).is_err());
        assert!(!volume.join(&first).exists(), "old version removed");
    }
}
