//! Image garbage collection: last-use marks, removing least recently used images when the
//! file system is too full (as the kubelet's image GC), and pruning blobs and unpacked layers
//! no image needs.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use super::{index, Image, ImageError, ImageStore};

pub(super) fn mark_used(store: &ImageStore, id: &str) -> Result<(), ImageError> {
    let dir = store.root().join("used");
    std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
    let path = dir.join(id.trim_start_matches("sha256:"));
    let file = std::fs::File::create(&path).map_err(ImageError::io(&path))?;
    file.set_modified(SystemTime::now())
        .map_err(ImageError::io(&path))
}

/// When an image was last used: its last-use mark, else when it was recorded.
fn last_used(store: &ImageStore, image: &Image) -> SystemTime {
    let hex = image.id.trim_start_matches("sha256:");
    [
        store.root().join("used").join(hex),
        store.index_dir().join(format!("{hex}.json")),
    ]
    .iter()
    .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Capacity and available bytes of the file system holding `path`, as the kubelet's image
/// file system stats have them (blocks reserved for root count as used).
fn capacity_available(path: &Path) -> Result<(u64, u64), ImageError> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| ImageError::io(path)(e.into()))?;
    let fragment = stat.fragment_size() as u64;
    Ok((
        stat.blocks() as u64 * fragment,
        stat.blocks_available() as u64 * fragment,
    ))
}

/// What one garbage collection pass saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Percent of the image file system in use when the pass began.
    pub usage_percent: u8,
    /// Bytes the pass had to free to get down to the low threshold (0: below the high one).
    pub to_free: u64,
    /// Bytes of the removed images (their blobs; shared layers may free less, unpacked
    /// layers more).
    pub freed: u64,
    pub removed: Vec<Image>,
}

pub(super) fn garbage_collect(
    store: &ImageStore,
    in_use: &[String],
    high_percent: u8,
    low_percent: u8,
) -> Result<GcReport, ImageError> {
    let (capacity, available) = capacity_available(store.root())?;
    if capacity == 0 {
        return Ok(GcReport::default());
    }
    // Upstream's arithmetic (image_gc_manager.go), in whole percent.
    let usage_percent = (100 - available * 100 / capacity) as u8;
    let mut report = GcReport {
        usage_percent,
        ..GcReport::default()
    };
    if usage_percent < high_percent {
        return Ok(report);
    }
    report.to_free =
        (capacity * u64::from(100 - low_percent.min(100)) / 100).saturating_sub(available);
    // The in-use check runs under the index lock, so an image recorded meanwhile (a pull
    // that finished) is judged with the rest.
    let _lock = store.lock()?;
    let mut candidates: Vec<(SystemTime, Image)> = index::list(&store.index_dir())?
        .into_iter()
        .filter(|image| !in_use.iter().any(|r| image.answers_to(r)))
        .map(|i| (last_used(store, &i), i))
        .collect();
    candidates.sort_by_key(|(t, _)| *t);
    for (_, image) in candidates {
        if report.freed >= report.to_free {
            break;
        }
        index::delete(&store.index_dir(), &image.id)?;
        report.freed += image.size;
        tracing::info!(image = %image.id, names = ?image.names, "image garbage-collected");
        report.removed.push(image);
    }
    prune_unreferenced(store)?;
    Ok(report)
}

/// Removes blobs, layers and last-use marks of no image. The caller holds the index lock.
/// While an import or pull is storing blobs it has not recorded yet, blobs and layers stay.
pub(super) fn prune_unreferenced(store: &ImageStore) -> Result<(), ImageError> {
    let images = index::list(&store.index_dir())?;
    let ids: HashSet<&str> = images
        .iter()
        .map(|i| i.id.trim_start_matches("sha256:"))
        .collect();
    remove_unlisted(&store.root().join("used"), |name| ids.contains(name))?;

    let Some(_ingest) = store.try_lock_ingest_exclusive()? else {
        tracing::debug!("an import or pull is running; blobs and layers are pruned later");
        return Ok(());
    };
    let layers: HashSet<&str> = images
        .iter()
        .flat_map(|i| &i.layers)
        .map(|d| d.trim_start_matches("sha256:"))
        .collect();
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let layers_dir = store.root().join("layers");
    remove_unlisted(&layers_dir, |name| {
        name == "empty"
            || layers.contains(name)
            // Never pull a layer from under a running container's overlay.
            || mounted.contains(&layers_dir.join(name).display().to_string())
    })?;
    // Images recorded before blobs were tracked do not say which blobs they need.
    if images.iter().any(|i| i.blobs.is_empty()) {
        return Ok(());
    }
    let blobs: HashSet<&str> = images
        .iter()
        .flat_map(|i| &i.blobs)
        .map(|d| d.trim_start_matches("sha256:"))
        .collect();
    remove_unlisted(&store.root().join("blobs/sha256"), |name| {
        blobs.contains(name)
    })
}

fn remove_unlisted(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(ImageError::io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !keep(name) {
            super::remove_any(&path).map_err(ImageError::io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_sane() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, available) = capacity_available(dir.path()).unwrap();
        assert!(available < capacity, "{available} {capacity}");
    }
}
