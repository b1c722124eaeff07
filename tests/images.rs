//! The image store: importing the busybox test image (OCI and `docker save` archives),
//! listing, resolving, mounting its overlay rootfs and removing it.

mod common;

use std::process::Command;

use common::image;

/// The tests' archives are real archives: GNU tar reads them and the OCI layout is there.
#[test]
fn busybox_archives_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let oci = image::busybox_oci_archive(dir.path());
    let out = Command::new("tar").arg("-tf").arg(&oci).output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains("oci-layout"), "{listing}");
    assert!(listing.contains("index.json"), "{listing}");

    let docker = image::busybox_docker_archive(dir.path());
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&docker)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains("manifest.json"), "{listing}");
    assert!(listing.contains("/layer.tar"), "{listing}");

    // The layer holds a working shell.
    let layer = image::busybox_layer();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    tar::Archive::new(&layer[..]).unpack(&root).unwrap();
    let out = Command::new(root.join("bin/sh"))
        .args(["-c", "echo hello"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(root
        .join("bin/wget")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
}

use kedge::runtime::images::{normalize, ImageStore};

#[test]
fn import_list_resolve_mount_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let want_id = image::busybox_image().id();

    let imported = store
        .import_file(&image::busybox_oci_archive(dir.path()))
        .unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].id, want_id);
    assert_eq!(imported[0].names, vec![image::BUSYBOX_IMAGE.to_string()]);
    assert_eq!(imported[0].config.cmd, vec!["sh"]);
    assert_eq!(imported[0].config.env, vec![image::PATH_ENV]);
    let repo_digest = imported[0].repo_digests[0].clone();
    assert!(repo_digest.starts_with("docker.io/library/busybox@sha256:"));

    // The same image from `docker save`: one image, not two.
    let imported = store
        .import_file(&image::busybox_docker_archive(dir.path()))
        .unwrap();
    assert_eq!(imported[0].id, want_id);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].size > 500_000);

    let hex = want_id.trim_start_matches("sha256:");
    for reference in [
        "busybox:1.35",
        "docker.io/library/busybox:1.35",
        "library/busybox:1.35",
        &want_id,
        hex,
        &hex[..12],
        &repo_digest,
    ] {
        let found = store.resolve(reference).unwrap();
        assert_eq!(found.map(|i| i.id), Some(want_id.clone()), "{reference}");
    }
    assert_eq!(store.resolve("busybox").unwrap(), None);
    assert_eq!(store.resolve("busybox:latest").unwrap(), None);

    // A rootfs with a working shell; writes go to the container's upper dir.
    let image = store.resolve("busybox:1.35").unwrap().unwrap();
    let container = dir.path().join("containers/c1");
    let rootfs = store.mount_rootfs(&image, &container).unwrap();
    assert_eq!(rootfs, container.join("rootfs"));
    assert_eq!(store.mount_rootfs(&image, &container).unwrap(), rootfs);
    assert!(rootfs
        .join("bin/sh")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    assert!(rootfs.join("bin/busybox").is_file());
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "echo hi > /tmp/x && id -u app && ls -ld /tmp",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("1000\ndrwxrwxrwt"), "{stdout}");
    assert!(container.join("upper/tmp/x").is_file());
    ImageStore::unmount_rootfs(&container).unwrap();
    ImageStore::unmount_rootfs(&container).unwrap();
    assert!(!rootfs.join("bin/sh").exists());

    store.remove("busybox:1.35").unwrap();
    assert_eq!(store.resolve("busybox:1.35").unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert!(store.remove("busybox:1.35").is_err());
}

/// Two layers (zstd), the upper deleting a file and making a dir opaque; archives dropped in
/// the store dir (compressed as a whole) are imported; an OCI layout dir imports too.
#[test]
fn whiteouts_and_dropped_archives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let store = ImageStore::open(&root).unwrap();

    let mut lower = image::LayerBuilder::new();
    lower
        .dir("etc", 0o755, 0, 0)
        .file("etc/hidden", 0o644, 0, 0, b"gone")
        .file("etc/kept", 0o600, 1000, 1000, b"kept")
        .hardlink("etc/kept-link", "etc/kept")
        .dir("data", 0o755, 0, 0)
        .file("data/a", 0o644, 0, 0, b"a");
    let mut upper = image::LayerBuilder::new();
    upper
        .whiteout("etc/hidden")
        .opaque("data")
        .file("data/c", 0o644, 0, 0, b"c");
    let mut test = image::TestImage::new(
        "localhost:5000/kedge/layers:v1",
        vec![image::busybox_layer(), lower.finish(), upper.finish()],
    );
    test.compression = image::Compression::Zstd;
    let tar = dir.path().join("layers.tar");
    test.write_oci(&tar);
    std::fs::write(
        root.join("layers.tar.zst"),
        zstd::encode_all(&std::fs::read(&tar).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut gz,
        &std::fs::read(image::busybox_docker_archive(dir.path())).unwrap(),
    )
    .unwrap();
    std::fs::write(root.join("busybox.tar.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(root.join("broken.tar"), b"not a tar").unwrap();

    let imported = store.import_dropped_archives().unwrap();
    assert_eq!(imported.len(), 2, "{imported:?}");
    let image = store
        .resolve("localhost:5000/kedge/layers:v1")
        .unwrap()
        .unwrap();
    assert_eq!(image.id, test.id());
    assert_eq!(image.layers.len(), 3);
    assert!(store.resolve("busybox:1.35").unwrap().is_some());

    let container = dir.path().join("c2");
    let rootfs = store.mount_rootfs(&image, &container).unwrap();
    assert!(rootfs.join("bin/sh").symlink_metadata().is_ok());
    assert!(!rootfs.join("etc/hidden").exists());
    assert!(rootfs.join("etc/passwd").is_file());
    assert_eq!(
        std::fs::read(rootfs.join("etc/kept-link")).unwrap(),
        b"kept"
    );
    let meta = std::fs::metadata(rootfs.join("etc/kept")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o7777),
        (1000, 0o600)
    );
    assert!(!rootfs.join("data/a").exists());
    assert_eq!(std::fs::read(rootfs.join("data/c")).unwrap(), b"c");
    ImageStore::unmount_rootfs(&container).unwrap();

    // An OCI layout dir.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    tar::Archive::new(std::fs::File::open(&tar).unwrap())
        .unpack(&layout)
        .unwrap();
    store.remove(&image.id).unwrap();
    let imported = store.import_file(&layout).unwrap();
    assert_eq!(imported[0].id, test.id());
}

#[test]
fn corrupted_blob_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let good = image::busybox_oci_archive(dir.path());
    // One byte more in the config blob: its content no longer matches its name.
    let mut archive = tar::Archive::new(std::fs::File::open(&good).unwrap());
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.starts_with("blobs") && data.windows(8).any(|w| w == b"diff_ids") {
            data.extend_from_slice(b" ");
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.append_data(&mut header, &path, &data[..]).unwrap();
    }
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, out.into_inner().unwrap()).unwrap();
    let err = store.import_file(&bad).unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
}

#[test]
fn normalizes_like_docker() {
    assert_eq!(
        normalize("busybox").unwrap(),
        "docker.io/library/busybox:latest"
    );
}

/// Runs `kedge images ARGS` on `data_dir`; returns (success, stdout, stderr).
fn kedge_images(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kedge"))
        .arg("images")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_import_ls_rm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = image::busybox_oci_archive(dir.path());
    let id = image::busybox_image().id();
    let hex = id.trim_start_matches("sha256:");

    let (ok, out, err) = kedge_images(&data, &["import", archive.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("imported {} ({id})\n", image::BUSYBOX_IMAGE));

    let (ok, out, err) = kedge_images(&data, &["ls"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"], "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[1][..3],
        ["docker.io/library/busybox", "1.35", &hex[..13]]
    );
    assert!(
        lines[1][3].ends_with("MB") || lines[1][3].ends_with("kB"),
        "{out}"
    );

    let (ok, out, _) = kedge_images(&data, &["ls", "-q"]);
    assert!(ok);
    assert_eq!(out, format!("{id}\n"));

    let (ok, out, err) = kedge_images(&data, &["rm", "busybox:1.35", "nothere:1"]);
    assert!(!ok);
    assert_eq!(out, "Deleted: busybox:1.35\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("nothere:1") && err.contains("not found"),
        "{err}"
    );
    let (_, out, _) = kedge_images(&data, &["ls", "-q"]);
    assert_eq!(out, "");
    // Nothing of the image is left on disk.
    let images = data.join("agent/images");
    for sub in ["blobs/sha256", "layers", "index"] {
        let left: Vec<_> = std::fs::read_dir(images.join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }

    let (ok, _, err) = kedge_images(&data, &["import", "/nonexistent.tar"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent.tar"), "{err}");
}

/// Debian's `docker-registry` serving on a free loopback port, storing in a temp dir.
struct Registry {
    child: std::process::Child,
    port: u16,
    storage: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        Registry::serve(dir.path().join("storage"), "", dir)
    }

    /// Another registry over HTTPS on the same storage (what was pushed to `self` is there),
    /// `http.tls` being `tls` (YAML lines indented under `tls:`).
    fn serve_tls(&self, tls: &str) -> Registry {
        Registry::serve(
            self.storage.clone(),
            &format!("  tls:\n{tls}"),
            tempfile::tempdir().unwrap(),
        )
    }

    fn serve(storage: std::path::PathBuf, http: &str, dir: tempfile::TempDir) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{http}",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (install Debian's docker-registry package)");
        let registry = Registry {
            child,
            port,
            storage,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        registry
    }

    /// Pushes `test` as `<repository>:<tag>` (gzip layers) and, under `<tag>-multi`, an
    /// index whose other entry is a platform this node is not; returns the manifest digest.
    fn push(&self, test: &image::TestImage, repository: &str, tag: &str) -> String {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let host = format!("127.0.0.1:{}", self.port);
        let layers: Vec<ImageLayer> = test
            .layers
            .iter()
            .map(|l| {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, l).unwrap();
                ImageLayer::oci_v1_gzip(gz.finish().unwrap(), None)
            })
            .collect();
        let config = Config::oci_v1(test.config_json(), None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let auth = oci_client::secrets::RegistryAuth::Anonymous;
            let reference =
                oci_client::Reference::with_tag(host.clone(), repository.into(), tag.into());
            let pushed = client
                .push(&reference, &layers, config, &auth, None)
                .await
                .unwrap();
            let manifest_url = pushed.manifest_url;
            let manifest_bytes = reqwest_get(&manifest_url);
            let digest = format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes))
            );
            let other = if image::oci_arch() == "s390x" { "amd64" } else { "s390x" };
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                      "size": manifest_bytes.len(), "platform": { "os": "linux", "architecture": other } },
                    { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                      "size": manifest_bytes.len(), "platform": { "os": "linux", "architecture": image::oci_arch() } },
                ]
            });
            let multi = oci_client::Reference::with_tag(
                host.clone(),
                repository.into(),
                format!("{tag}-multi"),
            );
            client
                .push_manifest_raw(
                    &multi,
                    serde_json::to_vec(&index).unwrap(),
                    http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
                )
                .await
                .unwrap();
            digest
        })
    }
}

/// A plain HTTP GET on loopback (the manifest as the registry stores it).
fn reqwest_get(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args([
            "-sSf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_from_a_registry_on_loopback() {
    let registry = Registry::start();
    let busybox = image::busybox_image();
    let digest = registry.push(&busybox, "library/busybox", "1.35");
    let host = format!("127.0.0.1:{}", registry.port);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The registry is plain HTTP; `localhost:1` (nothing listens there) mirrors to it, as
    // `docker.io` would in k3s.
    let registries = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "mirrors:\n  \"{host}\":\n    endpoint: [\"http://{host}\"]\n  \"localhost:1\":\n    endpoint:\n      - \"http://{host}\"\n"
        ),
    )
    .unwrap();
    let pull = |reference: &str| kedge_pull(&data, &registries, reference);

    let reference = format!("{host}/library/busybox:1.35");
    let (ok, out, err) = pull(&reference);
    assert!(ok, "{err}");
    assert_eq!(out, format!("pulled {reference} ({})\n", busybox.id()));

    let store = ImageStore::open(&data.join("agent/images")).unwrap();
    let image = store.resolve(&reference).unwrap().unwrap();
    assert_eq!(image.id, busybox.id());
    assert_eq!(
        image.repo_digests,
        vec![format!("{host}/library/busybox@{digest}")]
    );
    assert_eq!(image.config.cmd, vec!["sh"]);
    // The pulled image runs like an imported one.
    let container = dir.path().join("c");
    let rootfs = store.mount_rootfs(&image, &container).unwrap();
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo pulled"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pulled\n");
    ImageStore::unmount_rootfs(&container).unwrap();

    // Through the mirror, by the index's tag (this node's platform is chosen) and by digest.
    let (ok, _, err) = pull("localhost:1/library/busybox:1.35-multi");
    assert!(ok, "{err}");
    let (ok, _, err) = pull(&format!("{host}/library/busybox@{digest}"));
    assert!(ok, "{err}");
    let (ok, out, err) = kedge_images(&data, &["ls"]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let hex = &busybox.id()[7..20];
    for (name, tag) in [
        ("localhost:1/library/busybox", "1.35-multi"),
        (host.as_str(), "1.35"),
    ] {
        let name = if tag == "1.35" {
            format!("{name}/library/busybox")
        } else {
            name.to_string()
        };
        assert!(
            rows.iter().any(|r| r[..3] == [name.as_str(), tag, hex]),
            "{name}:{tag} in {out}"
        );
    }
    assert_eq!(store.list().unwrap().len(), 1);

    // A missing image: one line naming it.
    let missing = format!("{host}/library/nothere:1");
    let (ok, _, err) = pull(&missing);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&missing), "{err}");
    assert!(err.to_lowercase().contains("unknown"), "{err}");
}

/// `kedge images pull REFERENCE` with `registries` as registries.yaml: (ok, stdout, stderr).
fn kedge_pull(
    data: &std::path::Path,
    registries: &std::path::Path,
    reference: &str,
) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kedge"))
        .args(["images", "pull", reference, "--data-dir"])
        .arg(data)
        .arg("--registries")
        .arg(registries)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// registries.yaml `configs.<host>.tls`: the registry's CA (`ca_file`) and
/// `insecure_skip_verify`, for a mirror over HTTPS; client certificates are refused with a
/// clear error (oci-client has no client identity).
#[test]
fn pull_over_tls_with_the_registry_ca() {
    use kedge::pki::Ca;
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let ca = Ca::generate().unwrap();
    let server = ca
        .issue_serving("registry", &["127.0.0.1".to_string()], week)
        .unwrap();
    let ca_file = file("ca.crt", ca.cert_pem());
    let other_ca_file = file("other-ca.crt", Ca::generate().unwrap().cert_pem());
    let server_cert = file("server.crt", &server.cert_pem);
    let server_key = file("server.key", &server.key_pem);

    let plain = Registry::start();
    let busybox = image::busybox_image();
    plain.push(&busybox, "library/busybox", "1.35");
    let registry = plain.serve_tls(&format!(
        "    certificate: {}\n    key: {}\n",
        server_cert.display(),
        server_key.display(),
    ));
    let host = format!("127.0.0.1:{}", registry.port);

    let data = dir.path().join("data");
    // `localhost:1` (nothing listens there) is mirrored by the registry over HTTPS.
    let pull = |tls: &str| {
        let registries = file(
            "registries.yaml",
            &format!(
                "mirrors:\n  \"localhost:1\":\n    endpoint: [\"https://{host}\"]\nconfigs:\n  \"{host}\":\n    tls:\n{tls}"
            ),
        );
        kedge_pull(&data, &registries, "localhost:1/library/busybox:1.35")
    };
    let ca = format!("      ca_file: {}\n", ca_file.display());
    let other_ca = format!("      ca_file: {}\n", other_ca_file.display());

    // The wrong CA: the registry's certificate is not trusted, and nothing is pulled.
    let (ok, _, err) = pull(&other_ca);
    assert!(!ok, "pulled through an untrusted certificate");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&host), "{err}");
    // A client certificate cannot be presented: said before any request.
    let (ok, _, err) = pull(&format!(
        "{ca}      cert_file: /nonexistent.crt\n      key_file: /nonexistent.key\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("client certificates (cert_file, key_file) are not supported"),
        "{err}"
    );
    // insecure_skip_verify trusts it anyway.
    let (ok, _, err) = pull(&format!("{other_ca}      insecure_skip_verify: true\n"));
    assert!(ok, "{err}");
    let store = ImageStore::open(&data.join("agent/images")).unwrap();
    store.remove("localhost:1/library/busybox:1.35").unwrap();

    let (ok, out, err) = pull(&ca);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!(
            "pulled localhost:1/library/busybox:1.35 ({})\n",
            busybox.id()
        )
    );
    let image = store
        .resolve("localhost:1/library/busybox:1.35")
        .unwrap()
        .unwrap();
    assert_eq!(image.id, busybox.id());
}

/// Garbage collection with thresholds forced: unused images go, images in use stay, and
/// their blobs and layers with them.
#[test]
fn garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let busybox = store
        .import_file(&image::busybox_oci_archive(dir.path()))
        .unwrap()
        .remove(0);
    let mut layer = image::LayerBuilder::new();
    layer.file("hello", 0o644, 0, 0, b"hello");
    let other = image::TestImage::new("example.com/other:1", vec![layer.finish()]);
    let tar = dir.path().join("other.tar");
    other.write_oci(&tar);
    store.import_file(&tar).unwrap();
    store.mark_used(&busybox.id).unwrap();
    let count = |sub: &str| std::fs::read_dir(store.root().join(sub)).unwrap().count();
    assert_eq!(count("layers"), 2);

    // Below the high threshold: nothing happens.
    let in_use = [busybox.id.clone()];
    let report = store.garbage_collect(&in_use, 100, 99).unwrap();
    assert!(
        report.usage_percent < 100 && report.removed.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.to_free, 0);
    // Above it: the unused image goes, with its layer and blobs; the one in use stays,
    // whether named by id or by name.
    let removed = store.garbage_collect(&in_use, 0, 0).unwrap().removed;
    assert_eq!(
        removed.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&other.id()]
    );
    assert_eq!(store.list().unwrap(), vec![busybox.clone()]);
    assert_eq!(count("layers"), 1);
    assert_eq!(count("blobs/sha256"), busybox.blobs.len());
    let by_name = ["busybox:1.35".to_string()];
    assert!(store
        .garbage_collect(&by_name, 0, 0)
        .unwrap()
        .removed
        .is_empty());

    let report = store.garbage_collect(&[], 0, 0).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.freed, busybox.size);
    assert_eq!(
        (count("layers"), count("blobs/sha256"), count("used")),
        (0, 0, 0)
    );
}
