//! The tests' container images: OCI (or `docker save`) archives built from Debian's
//! `busybox-static` (`/bin/busybox`) and, for tests that need UDP servers and clients,
//! Debian's `socat`, so no test downloads an image.
//!
//! `busybox_oci_archive` / `busybox_docker_archive` give the standard image
//! `docker.io/library/busybox:1.35`; `socat_oci_archive` the image `socat:test` (busybox
//! plus `/usr/bin/socat` and its shared libraries); [`LayerBuilder`] and [`TestImage`] build
//! any other image (several layers, whiteouts, zstd or plain layers) for the image store's
//! own tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The name the busybox archives carry (tests write `image: busybox:1.35`).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:1.35";
/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// The name the socat archive carries (tests write `image: socat:test`).
pub const SOCAT_IMAGE: &str = "docker.io/library/socat:test";
/// Where Debian's `socat` installs the binary.
pub const SOCAT_BIN: &str = "/usr/bin/socat";
/// The image's `PATH` (Docker's default).
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const ETC_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const ETC_GROUP: &str = "root:x:0:\napp:x:1000:\nnobody:x:65534:\n";

/// The busybox image as an OCI image-layout tar, copied (hard-linked) into directory `dest`
/// as `busybox-oci.tar`; built once per busybox binary and cached under the target dir.
pub fn busybox_oci_archive(dest: &Path) -> PathBuf {
    let cached = cached("busybox", "oci", &[BUSYBOX_BIN], busybox_image);
    place(&cached, &dest.join("busybox-oci.tar"))
}

/// The busybox image as a `docker save` tar (manifest.json, `<id>.json`, `<layer>/layer.tar`),
/// placed in directory `dest` as `busybox-docker.tar`.
pub fn busybox_docker_archive(dest: &Path) -> PathBuf {
    let cached = cached("busybox", "docker", &[BUSYBOX_BIN], busybox_image);
    place(&cached, &dest.join("busybox-docker.tar"))
}

/// The socat image as an OCI image-layout tar, placed in directory `dest` as
/// `socat-oci.tar` (an agent imports every archive of its `agent/images` at start).
pub fn socat_oci_archive(dest: &Path) -> PathBuf {
    let cached = cached("socat", "oci", &[BUSYBOX_BIN, SOCAT_BIN], socat_image);
    place(&cached, &dest.join("socat-oci.tar"))
}

/// The socat image: the busybox layer (a shell, `hostname`, `cat`) and one with
/// `/usr/bin/socat` and every shared library `ldd` says it loads, at the same paths as on
/// this machine (the dynamic loader finds them in its default directories).
pub fn socat_image() -> TestImage {
    let binary = read_binary(SOCAT_BIN, "socat");
    let ldd = std::process::Command::new("ldd")
        .arg(SOCAT_BIN)
        .output()
        .expect("ldd runs");
    assert!(ldd.status.success(), "ldd {SOCAT_BIN} failed");
    // Lines are `name => /path (0x…)`, `/path (0x…)` (the loader) or `linux-vdso… (0x…)`.
    let libraries: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.rsplit_once(" => ").map_or(line, |(_, p)| p).trim();
            let path = path.split(" (").next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect();
    // Every folder on the way to each library, parents first (a sorted set puts `a`
    // before `a/b`).
    let dirs: std::collections::BTreeSet<String> = libraries
        .iter()
        .flat_map(|library| Path::new(library).ancestors().skip(1))
        .filter_map(|dir| dir.to_str()?.strip_prefix('/').map(str::to_string))
        .filter(|dir| !dir.is_empty())
        .collect();
    let mut layer = LayerBuilder::new();
    for dir in &dirs {
        layer.dir(dir, 0o755, 0, 0);
    }
    for library in &libraries {
        // The file itself, not the symlink the path may be (`/lib64/ld-linux…`).
        let data = std::fs::read(library).unwrap_or_else(|e| panic!("{library}: {e}"));
        layer.file(library.trim_start_matches('/'), 0o755, 0, 0, &data);
    }
    layer.file("usr/bin/socat", 0o755, 0, 0, &binary);
    TestImage::new(SOCAT_IMAGE, vec![busybox_layer(), layer.finish()])
}

/// The busybox root file system as one uncompressed layer tar: `bin/busybox` and a symlink
/// per applet, `/etc/passwd` and `/etc/group` (root 0, app 1000, nobody 65534), the usual
/// top-level dirs, `tmp` 1777.
pub fn busybox_layer() -> Vec<u8> {
    let binary = read_binary(BUSYBOX_BIN, "busybox-static");
    let list = std::process::Command::new(BUSYBOX_BIN)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    let applets = String::from_utf8(list.stdout).expect("applet names are UTF-8");

    let mut layer = LayerBuilder::new();
    for dir in ["bin", "dev", "etc", "proc", "sys", "usr", "usr/bin", "var"] {
        layer.dir(dir, 0o755, 0, 0);
    }
    layer.dir("root", 0o700, 0, 0);
    layer.dir("tmp", 0o1777, 0, 0);
    layer.dir("home", 0o755, 0, 0);
    layer.dir("home/app", 0o755, 1000, 1000);
    layer.file("bin/busybox", 0o755, 0, 0, &binary);
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.file("etc/passwd", 0o644, 0, 0, ETC_PASSWD.as_bytes());
    layer.file("etc/group", 0o644, 0, 0, ETC_GROUP.as_bytes());
    layer.finish()
}

/// The busybox test image.
pub fn busybox_image() -> TestImage {
    TestImage::new(BUSYBOX_IMAGE, vec![busybox_layer()])
}

/// `path`, a binary Debian's `package` installs.
fn read_binary(path: &str, package: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (install Debian's {package})"))
}

/// Builds the archive of image `name` in `format` (`oci` or `docker`) once per version of
/// the `binaries` it is made of (keyed by their hash) in the target dir; concurrent test
/// processes race benignly (write temp, then rename).
fn cached(name: &str, format: &str, binaries: &[&str], image: fn() -> TestImage) -> PathBuf {
    let mut hash = Sha256::new();
    for binary in binaries {
        hash.update(read_binary(binary, name));
    }
    let key = &hex::encode(hash.finalize())[..16];
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-images");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{key}-{format}.tar"));
    if path.exists() {
        return path;
    }
    // Unique per process and thread: tests in one process may build it at the same time.
    let tmp = dir.join(format!(
        ".{name}-{key}-{format}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let image = image();
    match format {
        "oci" => image.write_oci(&tmp),
        _ => image.write_docker(&tmp),
    }
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Hard-links `cached` to `dest` (copies across file systems).
fn place(cached: &Path, dest: &Path) -> PathBuf {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let _ = std::fs::remove_file(dest);
    if std::fs::hard_link(cached, dest).is_err() {
        std::fs::copy(cached, dest).unwrap();
    }
    dest.to_path_buf()
}

/// Builds one layer: an uncompressed tar with fixed timestamps (so digests are stable).
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(size);
        header.set_mtime(1_700_000_000);
        header
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Directory, mode, uid, gid, 0);
        self.tar
            .append_data(&mut header, format!("{path}/"), std::io::empty())
            .unwrap();
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.tar.append_data(&mut header, path, data).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.tar.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.tar.append_link(&mut header, path, target).unwrap();
        self
    }

    /// Deletes `path` of a lower layer (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, 0, 0, b"")
    }

    /// Hides everything lower layers have in `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, 0, 0, b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }
}

/// How a layer blob is compressed in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn apply(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(data).unwrap();
                gz.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }
}

/// An image to write as an archive: a name, layers (uncompressed tars, bottom first) and
/// the runtime config.
pub struct TestImage {
    /// Full reference, e.g. `docker.io/library/busybox:1.35`; empty for an unnamed image.
    pub reference: String,
    pub layers: Vec<Vec<u8>>,
    /// Compression of the layer blobs in OCI archives (docker save is always plain).
    pub compression: Compression,
    /// The config's `config` object (Cmd, Env, Entrypoint, User, WorkingDir...).
    pub config: Value,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// This machine's architecture in OCI terms.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

impl TestImage {
    pub fn new(reference: &str, layers: Vec<Vec<u8>>) -> TestImage {
        TestImage {
            reference: reference.to_string(),
            layers,
            compression: Compression::Gzip,
            config: json!({ "Env": [PATH_ENV], "Cmd": ["sh"] }),
        }
    }

    /// The image config JSON (its digest is the image id).
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| sha256(l)).collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|_| json!({ "created": "2023-11-14T22:13:20Z", "created_by": "kedge tests" }))
            .collect();
        serde_json::to_vec(&json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": oci_arch(),
            "os": "linux",
            "config": self.config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }))
        .unwrap()
    }

    /// The image id the store should report: `sha256:<config digest>`.
    pub fn id(&self) -> String {
        sha256(&self.config_json())
    }

    /// Writes an OCI image layout as a tar at `path`.
    pub fn write_oci(&self, path: &Path) {
        let mut out = tar::Builder::new(std::fs::File::create(path).unwrap());
        let config = self.config_json();
        let mut layers = Vec::new();
        for layer in &self.layers {
            let blob = self.compression.apply(layer);
            let digest = sha256(&blob);
            append(&mut out, &blob_path(&digest), &blob);
            layers.push(json!({
                "mediaType": self.compression.media_type(),
                "digest": digest,
                "size": blob.len(),
            }));
        }
        let config_digest = sha256(&config);
        append(&mut out, &blob_path(&config_digest), &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers,
        }))
        .unwrap();
        let manifest_digest = sha256(&manifest);
        append(&mut out, &blob_path(&manifest_digest), &manifest);
        let mut descriptor = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
        });
        if !self.reference.is_empty() {
            descriptor["annotations"] = json!({
                "io.containerd.image.name": self.reference,
                "org.opencontainers.image.ref.name": self.reference,
            });
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor],
        }))
        .unwrap();
        append(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        append(&mut out, "index.json", &index);
        out.into_inner().unwrap().sync_all().unwrap();
    }

    /// Writes a `docker save` archive at `path` (RepoTags in Docker's short form).
    pub fn write_docker(&self, path: &Path) {
        let mut out = tar::Builder::new(std::fs::File::create(path).unwrap());
        let config = self.config_json();
        let id = hex::encode(Sha256::digest(&config));
        let mut layer_paths = Vec::new();
        for layer in &self.layers {
            let layer_id = hex::encode(Sha256::digest(layer));
            let layer_path = format!("{layer_id}/layer.tar");
            append(&mut out, &layer_path, layer);
            append(&mut out, &format!("{layer_id}/VERSION"), b"1.0");
            layer_paths.push(layer_path);
        }
        append(&mut out, &format!("{id}.json"), &config);
        let short = self
            .reference
            .strip_prefix("docker.io/library/")
            .or_else(|| self.reference.strip_prefix("docker.io/"))
            .unwrap_or(&self.reference);
        let repo_tags: Vec<&str> = if short.is_empty() {
            vec![]
        } else {
            vec![short]
        };
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{id}.json"),
            "RepoTags": repo_tags,
            "Layers": layer_paths,
        }]))
        .unwrap();
        append(&mut out, "manifest.json", &manifest);
        out.into_inner().unwrap().sync_all().unwrap();
    }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn append<W: Write>(out: &mut tar::Builder<W>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(1_700_000_000);
    out.append_data(&mut header, path, data).unwrap();
}
