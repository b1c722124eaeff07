//! Image garbage collection by a real node agent: its data dir on a small tmpfs, two images,
//! a pod using one, the disk filled past the high threshold; `kedge images ls` shows the
//! unused image gone and the one in use kept, and the node has upstream's events.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::agent::Node;
use common::{eventually, image, KEDGE};

/// A tmpfs mounted for the test; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs at {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    /// Writes a file so that the file system is `percent` full.
    fn fill_to(&self, percent: u64) -> PathBuf {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        let fragment = stat.fragment_size() as u64;
        let capacity = stat.blocks() as u64 * fragment;
        let available = stat.blocks_available() as u64 * fragment;
        let want_available = capacity * (100 - percent) / 100;
        let size = available.saturating_sub(want_available);
        let path = self.0.join("filler");
        std::fs::write(&path, vec![0u8; size as usize]).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `kedge images ls --data-dir DIR`: (name, tag) of each image.
fn images(data_dir: &Path) -> Vec<(String, String)> {
    let out = Command::new(KEDGE)
        .args(["images", "ls", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn unused_images_are_removed_when_the_disk_fills_and_images_in_use_stay() {
    let dir = tempfile::tempdir().unwrap();
    let agent_fs = Tmpfs::mount(&dir.path().join("agent"), "48m");
    // Two images: the busybox test image and another tag with one more layer; both are
    // imported when the agent starts.
    let images_dir = dir.path().join("agent/images");
    let mut extra = image::LayerBuilder::new();
    extra.file("etc/unused", 0o644, 0, 0, b"not used by any pod\n");
    let unused = image::TestImage::new(
        "docker.io/library/busybox:unused",
        vec![image::busybox_layer(), extra.finish()],
    );
    std::fs::create_dir_all(&images_dir).unwrap();
    unused.write_oci(&images_dir.join("unused.tar"));
    let node = Node::start(dir.path(), &["--image-gc-period", "1s"]).await;
    let busybox = ("docker.io/library/busybox".to_string(), "1.35".to_string());
    let other = (
        "docker.io/library/busybox".to_string(),
        "unused".to_string(),
    );
    let listed = images(dir.path());
    assert!(
        listed.contains(&busybox) && listed.contains(&other),
        "{listed:?}"
    );

    let kubectl = node.kubectl();
    kubectl.ok(&[
        "run",
        "keeper",
        "--image=busybox:1.35",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/keeper",
        "--timeout=90s",
    ]);
    // Below the high threshold nothing goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(images(dir.path()).len(), 2);

    let filler = agent_fs.fill_to(92);
    eventually(
        Duration::from_secs(30),
        "the unused image to be garbage-collected",
        || async { !images(dir.path()).contains(&other) },
    )
    .await;
    assert_eq!(images(dir.path()), vec![busybox]);
    // The pod still runs, never restarted.
    let status = kubectl.ok(&[
        "get",
        "pod",
        "keeper",
        "-o",
        "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(status, "Running 0");
    // The shared busybox layer stays, so far less than asked is freed: upstream's event.
    let node_name = node.name().to_string();
    eventually(
        Duration::from_secs(30),
        "a FreeDiskSpaceFailed event on the node",
        || async {
            let events = kubectl.ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.kind=Node,involvedObject.name={node_name}"),
                "-o",
                "jsonpath={range .items[*]}{.type} {.reason}: {.message}{\"\\n\"}{end}",
            ]);
            events.lines().any(|e| {
                e.starts_with("Warning FreeDiskSpaceFailed: Failed to garbage collect required amount of images. Attempted to free ")
                    && e.ends_with(" bytes eligible to free.")
            })
        },
    )
    .await;
    std::fs::remove_file(filler).unwrap();
    drop(node);
    drop(agent_fs);
}

/// Bad thresholds: one line saying what is wrong, and a non-zero exit.
#[test]
fn bad_thresholds_are_refused() {
    for (args, want) in [
        (
            ["--image-gc-low-threshold", "90"],
            "--image-gc-low-threshold 90 must be less than --image-gc-high-threshold 85",
        ),
        (
            ["--image-gc-high-threshold", "101"],
            "--image-gc-high-threshold 101 must be between 0 and 100, inclusive",
        ),
    ] {
        let out = Command::new(KEDGE)
            .args([
                "agent",
                "--server",
                "https://127.0.0.1:1",
                "--token",
                "K10x",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!("kedge: error: {want}"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
