//! The node's image store under `<data-dir>/agent/images`: content-addressed blobs, layers
//! unpacked once per diff id, one index file per image, and overlayfs root file systems for
//! containers with the image's layers as shared lowerdirs.
//!
//! Owns: that directory only. Import from archives (OCI archive or layout dir, `docker save`,
//! each optionally gzip/zstd compressed), resolve references (Docker Hub normalisation),
//! mount and unmount container rootfs overlays.
//!
//! Must not touch: Kubernetes types, container processes (the shim), the container dir
//! beyond `rootfs/`, `upper/` and `work/`.
//!
//! Layout (every write is temp + rename, so the `kedge images` CLI and a running server can
//! share it; mutations also take `lock` with flock):
//! ```text
//! blobs/sha256/<hex>      manifests, configs, layer blobs, verified by digest
//! layers/<hex>/           a layer unpacked (hex of its diff id, the uncompressed digest)
//! index/<hex>.json        one image (hex of its id, the config digest)
//! tmp/                    in-flight downloads and unpacks
//! used/<hex>              touched when a container starts from the image (GC's LRU)
//! *.tar[.gz|.zst]         archives dropped here are imported at start
//! ```

mod archive;
pub mod cli;
mod error;
mod gc;
mod index;
mod layer;
mod mount;
mod pull;
mod reference;
pub mod registries;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::ImageError;
pub use gc::GcReport;
pub use reference::{normalize, Reference};

/// One image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Normalised names, e.g. `docker.io/library/busybox:latest`.
    pub names: Vec<String>,
    /// `docker.io/library/busybox@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    /// Bytes of the image's blobs (manifest, config, compressed layers).
    pub size: u64,
    pub config: ImageConfig,
    /// Diff ids (`sha256:` of each uncompressed layer), bottom layer first.
    pub layers: Vec<String>,
    /// Digests of the blobs this image needs (manifest, config, layers): what garbage
    /// collection keeps.
    #[serde(default)]
    pub blobs: Vec<String>,
}

impl Image {
    /// Whether `reference` (a name, `name@digest`, id or id prefix) names this image.
    pub fn answers_to(&self, reference: &str) -> bool {
        index::resolve(std::slice::from_ref(self), reference).is_ok_and(|found| found.is_some())
    }
}

/// The runtime part of an image config (what the kubelet needs to start a container).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp` style.
    pub exposed_ports: Vec<String>,
}

/// Credentials for one registry host (from imagePullSecrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAuth {
    pub registry: String,
    pub username: String,
    pub password: String,
}

/// The store; cheap to clone, shared between threads.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    registries_file: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` (`<data-dir>/agent/images`).
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "layers", "index", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(ImageError::io(&path))?;
        }
        // Leftovers of an import or unpack that a crash interrupted.
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = remove_any(&entry.path());
            }
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                registries_file: PathBuf::from(registries::DEFAULT_PATH),
            }),
        })
    }

    /// The same store, pulling with mirrors and credentials from `path` (k3s'
    /// `registries.yaml` format) instead of `/etc/kedge/registries.yaml`.
    pub fn with_registries_file(self, path: &Path) -> ImageStore {
        ImageStore {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                registries_file: path.to_path_buf(),
            }),
        }
    }

    /// Pulls `reference` (tag or digest; Docker Hub names normalised) from the mirrors in
    /// registries.yaml, then from its registry; a multi-arch index resolves to linux/<this
    /// arch>. `auth` are imagePullSecrets' credentials, matched by registry host. Every blob
    /// is verified; layers are unpacked as for an import. Reads registries.yaml each time.
    pub async fn pull(&self, reference: &str, auth: &[RegistryAuth]) -> Result<Image, ImageError> {
        let registries = registries::Registries::load(&self.inner.registries_file)?;
        pull::pull(self, &registries, reference, auth).await
    }

    /// Records that a container starts from image `id` now (garbage collection removes the
    /// least recently used images first).
    pub fn mark_used(&self, id: &str) -> Result<(), ImageError> {
        gc::mark_used(self, id)
    }

    /// When the file system holding the store is at least `high_percent` full, removes
    /// images none of `in_use` names (names, ids or digests, as [`resolve`](Self::resolve)
    /// takes them), least recently used first, until about `low_percent` is reached
    /// (upstream kubelet defaults: 85 and 80); then removes blobs and layers no image needs.
    pub fn garbage_collect(
        &self,
        in_use: &[String],
        high_percent: u8,
        low_percent: u8,
    ) -> Result<GcReport, ImageError> {
        gc::garbage_collect(self, in_use, high_percent, low_percent)
    }

    /// Removes blobs and unpacked layers that no image needs (a layer still mounted by a
    /// container stays usable: overlay keeps the lower dirs it opened).
    pub fn prune_unreferenced(&self) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        gc::prune_unreferenced(self)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Imports every image of an archive or OCI layout dir; unpacks their layers.
    pub fn import_file(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let _ingest = self.lock_ingest_shared()?;
        let parsed = archive::read(self, path)?;
        let _lock = self.lock()?;
        let mut images = Vec::new();
        for image in parsed {
            images.push(self.commit(image.image, &image.layer_blobs)?);
        }
        Ok(images)
    }

    /// Imports each `*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst` in the store's root (air-gap
    /// images dropped there, as k3s' `agent/images`). A broken archive is logged and skipped.
    pub fn import_dropped_archives(&self) -> Result<Vec<Image>, ImageError> {
        let root = self.root();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(ImageError::io(root))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                p.is_file()
                    && [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"]
                        .iter()
                        .any(|ext| name.ends_with(ext))
            })
            .collect();
        paths.sort();
        let mut images = Vec::new();
        for path in paths {
            match self.import_file(&path) {
                Ok(imported) => images.extend(imported),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping image archive")
                }
            }
        }
        Ok(images)
    }

    /// Every image, sorted by first name (unnamed last, by id).
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        index::list(&self.index_dir())
    }

    /// Finds an image by name (normalised), `name@digest`, id or unique id prefix. Reads the
    /// index each time, so changes made by the CLI are seen at once.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        index::resolve(&self.list()?, reference)
    }

    /// Removes an image by any reference [`resolve`](Self::resolve) accepts. A name removes
    /// only that name while the image has others (as `docker rmi`); the image goes with its
    /// last name or when removed by id; then its blobs and layers no other image needs.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_one(reference)?;
        self.prune_unreferenced()
    }

    fn remove_one(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let images = self.list()?;
        let image = index::resolve(&images, reference)?.ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        let by_name = Reference::parse(reference)
            .ok()
            .map(|r| r.canonical())
            .filter(|name| image.names.contains(name));
        match by_name {
            Some(name) if image.names.len() > 1 => {
                let mut image = image;
                image.names.retain(|n| *n != name);
                index::write(&self.index_dir(), &self.tmp_dir(), &image)
            }
            _ => index::delete(&self.index_dir(), &image.id),
        }
    }

    /// Mounts the image's overlay rootfs at `<container_dir>/rootfs` (`upper/` and `work/`
    /// beside it); idempotent; returns the rootfs path. Unpacks missing layers first.
    pub fn mount_rootfs(&self, image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
        let mut lowers = Vec::with_capacity(image.layers.len());
        for diff_id in &image.layers {
            let dir = self.layer_dir(diff_id);
            if !dir.is_dir() {
                return Err(ImageError::Layer {
                    image: image.id.clone(),
                    diff_id: diff_id.clone(),
                    source: Box::new(ImageError::invalid(
                        dir.display().to_string(),
                        "layer is not unpacked; import or pull the image again",
                    )),
                });
            }
            lowers.push(dir);
        }
        if lowers.is_empty() {
            // An image without layers (FROM scratch + config only) still needs a lowerdir.
            let empty = self.root().join("layers").join("empty");
            std::fs::create_dir_all(&empty).map_err(ImageError::io(&empty))?;
            lowers.push(empty);
        }
        // Overlay lists the topmost lower first.
        lowers.reverse();
        mount::mount_overlay(&lowers, container_dir)
    }

    /// Unmounts `<container_dir>/rootfs` if mounted (lazily, so a process still inside does
    /// not fail the kubelet); the dirs stay for the caller to remove.
    pub fn unmount_rootfs(container_dir: &Path) -> Result<(), ImageError> {
        mount::unmount_overlay(container_dir)
    }

    fn index_dir(&self) -> PathBuf {
        self.root().join("index")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root().join("tmp")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        self.root()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub(crate) fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root()
            .join("layers")
            .join(diff_id.trim_start_matches("sha256:"))
    }

    /// Serialises index changes between threads and processes (the CLI and the server).
    fn lock(&self) -> Result<index::Lock, ImageError> {
        index::Lock::acquire(&self.root().join("lock"))
    }

    /// Held (shared) while blobs are stored that no index entry names yet, so that pruning
    /// (which takes it exclusively, without waiting) leaves them alone.
    fn lock_ingest_shared(&self) -> Result<index::Lock, ImageError> {
        index::Lock::acquire_shared(&self.root().join("ingest.lock"))
    }

    fn try_lock_ingest_exclusive(&self) -> Result<Option<index::Lock>, ImageError> {
        index::Lock::try_exclusive(&self.root().join("ingest.lock"))
    }

    /// Unpacks the image's layers (if not yet) and records it, taking its names from any
    /// other image (a name points at one image).
    fn commit(&self, mut image: Image, layer_blobs: &[String]) -> Result<Image, ImageError> {
        for (i, (diff_id, blob)) in image.layers.iter().zip(layer_blobs).enumerate() {
            let dir = self.layer_dir(diff_id);
            if dir.is_dir() {
                continue;
            }
            // Dirs the layer needs but does not list are copied from these (nearest first).
            // Layers are shared by diff_id, so a layer first unpacked over other lowers keeps
            // what those had.
            let lowers: Vec<PathBuf> = image.layers[..i]
                .iter()
                .rev()
                .map(|d| self.layer_dir(d))
                .collect();
            let unpacked = layer::unpack(
                &self.blob_path(blob),
                diff_id,
                &dir,
                &self.tmp_dir(),
                &lowers,
            );
            unpacked.map_err(|e| ImageError::Layer {
                image: image.id.clone(),
                diff_id: diff_id.clone(),
                source: Box::new(e),
            })?;
        }
        let index_dir = self.index_dir();
        let existing = index::list(&index_dir)?;
        for mut other in existing {
            if other.id == image.id {
                // Re-import: keep the names it had too.
                for name in other.names {
                    if !image.names.contains(&name) {
                        image.names.push(name);
                    }
                }
                for digest in other.repo_digests {
                    if !image.repo_digests.contains(&digest) {
                        image.repo_digests.push(digest);
                    }
                }
                for blob in other.blobs {
                    if !image.blobs.contains(&blob) {
                        image.blobs.push(blob);
                    }
                }
                continue;
            }
            let before = other.names.len();
            other.names.retain(|n| !image.names.contains(n));
            if other.names.len() != before {
                index::write(&index_dir, &self.tmp_dir(), &other)?;
            }
        }
        image.names.sort();
        image.repo_digests.sort();
        index::write(&index_dir, &self.tmp_dir(), &image)?;
        Ok(image)
    }
}

/// Removes a file or a dir tree.
pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
