//! Reading image archives into the store's blobs: OCI image layouts (a tar or a dir) and
//! `docker save` archives (both the classic one and Docker 25's OCI-layout hybrid), the
//! archive optionally gzip or zstd compressed as a whole. Every blob is verified against
//! the digest that names it; layers are verified against their diff ids when unpacked.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::layer::{decompress, HashingReader};
use super::{Image, ImageConfig, ImageError, ImageStore, Reference};

/// Archive members up to this size are kept in memory while reading (JSON files, small
/// layers); larger ones stream straight into the blob store.
const SMALL: u64 = 1 << 20;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image read from an archive, its blobs already in the store.
pub(super) struct Parsed {
    pub image: Image,
    /// Blob digest of each layer, in the order of `image.layers`.
    pub layer_blobs: Vec<String>,
}

enum Content {
    Small(Vec<u8>),
    Blob { digest: String, size: u64 },
}

/// Where the archive's files are.
enum Source {
    Dir(PathBuf),
    Archive(HashMap<String, Content>),
}

struct Reader<'a> {
    store: &'a ImageStore,
    what: PathBuf,
    source: Source,
}

pub(super) fn read(store: &ImageStore, path: &Path) -> Result<Vec<Parsed>, ImageError> {
    let source = if path.is_dir() {
        Source::Dir(path.to_path_buf())
    } else {
        Source::Archive(read_tar(store, path)?)
    };
    let reader = Reader {
        store,
        what: path.to_path_buf(),
        source,
    };
    if reader.exists("index.json") {
        reader.oci()
    } else if reader.exists("manifest.json") {
        reader.docker()
    } else {
        Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
        })
    }
}

/// Reads every member of a (compressed) tar: small ones into memory, large ones into blobs.
fn read_tar(store: &ImageStore, path: &Path) -> Result<HashMap<String, Content>, ImageError> {
    let file = std::fs::File::open(path).map_err(ImageError::io(path))?;
    let mut archive = tar::Archive::new(decompress(Box::new(file), path)?);
    let mut files = HashMap::new();
    let mut links = Vec::new();
    for entry in archive.entries().map_err(ImageError::io(path))? {
        let mut entry = entry.map_err(ImageError::io(path))?;
        let name = clean(
            &entry
                .path()
                .map_err(ImageError::io(path))?
                .to_string_lossy(),
        );
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let content = if entry.size() <= SMALL {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut data).map_err(ImageError::io(path))?;
                    Content::Small(data)
                } else {
                    let (digest, size) = store_blob(
                        store,
                        &mut entry,
                        None,
                        &format!("{}:{name}", path.display()),
                    )?;
                    Content::Blob { digest, size }
                };
                files.insert(name, content);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = entry.link_name().map_err(ImageError::io(path))? {
                    let target = target.to_string_lossy().into_owned();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                        clean(&format!("{parent}/{target}"))
                    } else {
                        clean(&target)
                    };
                    links.push((name, resolved));
                }
            }
            _ => {}
        }
    }
    for (name, target) in links {
        let content = match files.get(&target) {
            Some(Content::Small(data)) => Content::Small(data.clone()),
            Some(Content::Blob { digest, size }) => Content::Blob {
                digest: digest.clone(),
                size: *size,
            },
            None => continue,
        };
        files.insert(name, content);
    }
    Ok(files)
}

/// Normalises an archive path: no leading `./` or `/`, `..` applied.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// Streams `reader` into the blob store through a temp file, checking `expected`.
pub(super) fn store_blob(
    store: &ImageStore,
    reader: &mut dyn Read,
    expected: Option<&str>,
    what: &str,
) -> Result<(String, u64), ImageError> {
    let tmp = store
        .root()
        .join("tmp")
        .join(format!("blob-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut hashing = HashingReader::new(reader);
        let mut file = std::fs::File::create(&tmp).map_err(ImageError::io(&tmp))?;
        std::io::copy(&mut hashing, &mut file).map_err(ImageError::io(&tmp))?;
        file.flush().map_err(ImageError::io(&tmp))?;
        file.sync_all().map_err(ImageError::io(&tmp))?;
        let size = hashing.bytes;
        let digest = hashing.finish().map_err(ImageError::io(&tmp))?;
        place_blob(store, &tmp, &digest, expected, what)?;
        Ok((digest, size))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Moves a written and fsynced temp file whose content hashes to `actual` into the blob
/// store, refusing it unless it is the `expected` digest. Imports and pulls both end here.
pub(super) fn place_blob(
    store: &ImageStore,
    tmp: &Path,
    actual: &str,
    expected: Option<&str>,
    what: &str,
) -> Result<(), ImageError> {
    if let Some(expected) = expected {
        if expected != actual {
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    let dest = store.blob_path(actual);
    if !dest.exists() {
        std::fs::rename(tmp, &dest).map_err(ImageError::io(&dest))?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
pub(super) struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// An image manifest or an index (a manifest list), told apart by media type or by
/// `manifests` being present.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn is_index(&self, descriptor_type: &str) -> bool {
        let media_type = if self.media_type.is_empty() {
            descriptor_type
        } else {
            &self.media_type
        };
        INDEX_TYPES.contains(&media_type) || !self.manifests.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RuntimeConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<HashMap<String, serde_json::Value>>,
}

/// This node's architecture as OCI (Go) names it.
pub(super) fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        other => other,
    }
}

/// How well a platform fits this node: `None` if it cannot run here, lower is better
/// (as containerd: arm64 prefers v8 or no variant; 32-bit arm prefers v7, then v6, v5).
pub(super) fn platform_rank(platform: &Platform) -> Option<u8> {
    if platform.os != "linux" || platform.architecture != node_arch() {
        return None;
    }
    let variant = platform.variant.as_deref().unwrap_or("");
    match (node_arch(), variant) {
        ("arm64", "" | "v8") => Some(0),
        ("arm64", _) => None,
        ("arm", "v7") => Some(0),
        ("arm", "") => Some(1),
        ("arm", "v6") => Some(2),
        ("arm", "v5") => Some(3),
        ("arm", _) => None,
        (_, "") => Some(0),
        _ => Some(1),
    }
}

/// The entry of an index for this node (`None` if none fits).
pub(super) fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .filter_map(|d| match &d.platform {
            Some(p) => platform_rank(p).map(|rank| (rank, d)),
            // An entry without a platform (e.g. attestations are marked, images are not).
            None => Some((u8::MAX, d)),
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

impl Reader<'_> {
    fn exists(&self, name: &str) -> bool {
        match &self.source {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Archive(files) => files.contains_key(name),
        }
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = match &self.source {
            Source::Dir(dir) => dir.join(name),
            Source::Archive(files) => match files.get(name) {
                Some(Content::Small(data)) => return Ok(data.clone()),
                Some(Content::Blob { digest, .. }) => self.store.blob_path(digest),
                None => return Err(self.missing(name)),
            },
        };
        std::fs::read(&path).map_err(ImageError::io(path))
    }

    fn missing(&self, name: &str) -> ImageError {
        ImageError::invalid(
            self.what.display().to_string(),
            format!("{name} is missing"),
        )
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ImageError> {
        serde_json::from_slice(&self.bytes(name)?)
            .map_err(|e| ImageError::invalid(format!("{}: {name}", self.what.display()), e))
    }

    /// Puts member `name` into the blob store (checking `expected`); returns digest and size.
    fn ingest(&self, name: &str, expected: Option<&str>) -> Result<(String, u64), ImageError> {
        let what = format!("{}: {name}", self.what.display());
        match &self.source {
            Source::Dir(dir) => {
                let path = dir.join(name);
                let mut file = std::fs::File::open(&path).map_err(ImageError::io(&path))?;
                store_blob(self.store, &mut file, expected, &what)
            }
            Source::Archive(files) => match files.get(name) {
                Some(Content::Small(data)) => {
                    store_blob(self.store, &mut &data[..], expected, &what)
                }
                Some(Content::Blob { digest, size }) => match expected {
                    Some(expected) if expected != digest => Err(ImageError::DigestMismatch {
                        what,
                        expected: expected.to_string(),
                        actual: digest.clone(),
                    }),
                    _ => Ok((digest.clone(), *size)),
                },
                None => Err(self.missing(name)),
            },
        }
    }

    fn oci(&self) -> Result<Vec<Parsed>, ImageError> {
        let index: Index = self.json("index.json")?;
        // Docker 25+ writes both layouts; its manifest.json carries the familiar tags.
        let mut docker_tags: HashMap<String, Vec<String>> = HashMap::new();
        if self.exists("manifest.json") {
            if let Ok(entries) = self.json::<Vec<DockerEntry>>("manifest.json") {
                for entry in entries {
                    let digest = format!(
                        "sha256:{}",
                        entry
                            .config
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .trim_end_matches(".json")
                    );
                    docker_tags
                        .entry(digest)
                        .or_default()
                        .extend(entry.repo_tags.unwrap_or_default());
                }
            }
        }
        let mut images = Vec::new();
        let mut skipped = false;
        for descriptor in &index.manifests {
            let names = names_from_annotations(&descriptor.annotations);
            self.oci_descriptor(descriptor, names, &docker_tags, &mut images, &mut skipped)?;
        }
        if images.is_empty() && skipped {
            return Err(ImageError::NoMatchingPlatform {
                path: self.what.clone(),
                platform: format!("linux/{}", node_arch()),
            });
        }
        Ok(images)
    }

    fn oci_descriptor(
        &self,
        descriptor: &Descriptor,
        names: Vec<String>,
        docker_tags: &HashMap<String, Vec<String>>,
        images: &mut Vec<Parsed>,
        skipped: &mut bool,
    ) -> Result<(), ImageError> {
        if let Some(platform) = &descriptor.platform {
            if platform_rank(platform).is_none() {
                *skipped = true;
                return Ok(());
            }
        }
        let name = blob_name(&descriptor.digest);
        let (manifest_digest, manifest_size) = self.ingest(&name, Some(&descriptor.digest))?;
        let manifest: Manifest = self.json(&name)?;
        if manifest.is_index(&descriptor.media_type) {
            for child in &manifest.manifests {
                self.oci_descriptor(child, names.clone(), docker_tags, images, skipped)?;
            }
            return Ok(());
        }
        let Some(config) = &manifest.config else {
            return Err(self.missing(&format!("{name}: config")));
        };
        let config_name = blob_name(&config.digest);
        let (config_digest, config_size) = self.ingest(&config_name, Some(&config.digest))?;
        let mut layer_blobs = Vec::new();
        let mut size = manifest_size + config_size;
        for layer in &manifest.layers {
            let (digest, layer_size) =
                self.ingest(&blob_name(&layer.digest), Some(&layer.digest))?;
            size += layer_size;
            layer_blobs.push(digest);
        }
        let mut names = names;
        for tag in docker_tags.get(&config_digest).into_iter().flatten() {
            if let Ok(name) = super::normalize(tag) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let repo_digests = names
            .iter()
            .filter_map(|n| Reference::parse(n).ok())
            .map(|r| format!("{}@{manifest_digest}", r.name()))
            .collect();
        let mut blobs = vec![manifest_digest.clone(), config_digest.clone()];
        blobs.extend(layer_blobs.iter().cloned());
        let image = self.image(
            &config_name,
            config_digest,
            names,
            repo_digests,
            size,
            blobs,
            layer_blobs.len(),
        )?;
        images.push(Parsed { image, layer_blobs });
        Ok(())
    }

    fn docker(&self) -> Result<Vec<Parsed>, ImageError> {
        let entries: Vec<DockerEntry> = self.json("manifest.json")?;
        let mut images = Vec::new();
        for entry in entries {
            let config_name = clean(&entry.config);
            let (config_digest, mut size) = self.ingest(&config_name, None)?;
            let mut layer_blobs = Vec::new();
            for layer in &entry.layers {
                let (digest, layer_size) = self.ingest(&clean(layer), None)?;
                size += layer_size;
                layer_blobs.push(digest);
            }
            let mut names = Vec::new();
            for tag in entry.repo_tags.unwrap_or_default() {
                let name = super::normalize(&tag)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let mut blobs = vec![config_digest.clone()];
            blobs.extend(layer_blobs.iter().cloned());
            let image = self.image(
                &config_name,
                config_digest,
                names,
                Vec::new(),
                size,
                blobs,
                layer_blobs.len(),
            )?;
            images.push(Parsed { image, layer_blobs });
        }
        Ok(images)
    }

    /// The image from its config file (`name` in the archive, already stored as `id`).
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        name: &str,
        id: String,
        names: Vec<String>,
        repo_digests: Vec<String>,
        size: u64,
        blobs: Vec<String>,
        layer_count: usize,
    ) -> Result<Image, ImageError> {
        let what = format!("{}: config {id}", self.what.display());
        image_from_config(
            &what,
            &self.bytes(name)?,
            id,
            names,
            repo_digests,
            size,
            blobs,
            layer_count,
        )
    }
}

/// An image record from its config blob (`data`, stored as `id`): the runtime config and
/// the diff ids, which must be one per layer. Imports and pulls both build images here.
#[allow(clippy::too_many_arguments)]
pub(super) fn image_from_config(
    what: &str,
    data: &[u8],
    id: String,
    names: Vec<String>,
    repo_digests: Vec<String>,
    size: u64,
    blobs: Vec<String>,
    layer_count: usize,
) -> Result<Image, ImageError> {
    let config: ConfigFile =
        serde_json::from_slice(data).map_err(|e| ImageError::invalid(what, e))?;
    if config.rootfs.diff_ids.len() != layer_count {
        return Err(ImageError::invalid(
            what,
            format!(
                "{} diff ids for {layer_count} layers",
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    for diff_id in &config.rootfs.diff_ids {
        super::reference::validate_digest(diff_id).map_err(|e| ImageError::invalid(what, e))?;
    }
    let runtime = config.config.unwrap_or_default();
    let mut exposed_ports: Vec<String> = runtime
        .exposed_ports
        .unwrap_or_default()
        .into_keys()
        .collect();
    exposed_ports.sort();
    Ok(Image {
        id,
        names,
        repo_digests,
        size,
        config: ImageConfig {
            entrypoint: runtime.entrypoint.unwrap_or_default(),
            cmd: runtime.cmd.unwrap_or_default(),
            env: runtime.env.unwrap_or_default(),
            working_dir: runtime.working_dir.filter(|w| !w.is_empty()),
            user: runtime.user.filter(|u| !u.is_empty()),
            exposed_ports,
        },
        layers: config.rootfs.diff_ids,
        blobs,
    })
}

/// Names from an OCI descriptor: containerd's full-name annotation, else the OCI
/// `ref.name` when it is a full reference (a bare tag names no repository).
fn names_from_annotations(annotations: &HashMap<String, String>) -> Vec<String> {
    let full = annotations.get("io.containerd.image.name").or_else(|| {
        annotations
            .get("org.opencontainers.image.ref.name")
            .filter(|r| r.contains('/') || r.contains(':'))
    });
    full.and_then(|r| super::normalize(r).ok())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_archive_paths() {
        assert_eq!(clean("./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(clean("abc/../def/layer.tar"), "def/layer.tar");
    }

    #[test]
    fn names_need_a_repository() {
        let mut a = HashMap::new();
        a.insert(
            "org.opencontainers.image.ref.name".to_string(),
            "1.35".to_string(),
        );
        assert!(names_from_annotations(&a).is_empty());
        a.insert(
            "org.opencontainers.image.ref.name".to_string(),
            "busybox:1.35".to_string(),
        );
        assert_eq!(
            names_from_annotations(&a),
            vec!["docker.io/library/busybox:1.35"]
        );
    }
}
