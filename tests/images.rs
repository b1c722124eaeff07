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
