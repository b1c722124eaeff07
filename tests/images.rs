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
