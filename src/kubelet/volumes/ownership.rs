//! fsGroup: a pod's volumes belong to its fsGroup, as upstream's `SetVolumeOwnership`
//! makes them: every file and dir gets the group, files become group-readable (and
//! writable for read-write volumes), dirs group-searchable with setgid so new files
//! inherit the group. Symlinks are left alone.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Gives `root` and everything below it group `gid`.
pub fn set_group(root: &Path, gid: u32, readonly: bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    let mask = if readonly { 0o440 } else { 0o660 };
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() {
        mode | mask | 0o110 | 0o2000
    } else {
        mode | mask
    };
    if wanted != mode {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(root)? {
            set_group(&entry?.path(), gid, readonly)?;
        }
    }
    Ok(())
}
