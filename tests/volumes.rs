//! Pod volumes on the node (`kedge::kubelet::volumes`) against a real API server: the
//! configMap/secret atomic-writer layout with modes and fsGroup, updates after refresh,
//! upstream's FailedMount messages, the projected service account token and CA, downward
//! API files, emptyDir on tmpfs, hostPath type checks, subPath escapes, and cleanup.
//! Mounting needs root, as the kubelet does.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{started_server, LogDump};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kedge::kubelet::volumes::{self, VolumeContext, VolumeError};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn is_tmpfs(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields.get(4) == Some(&path.to_str().unwrap()) && l.contains(" - tmpfs ")
    })
}

async fn create_pod(client: &kube::Client, spec: serde_json::Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(spec).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

/// Unmounts whatever a failed test left mounted under its temp dir.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&self.0))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_backed_volumes_are_written_and_follow_updates() {
    if !root() {
        eprintln!("skipped: mounting volumes needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path().to_path_buf());
    let server = started_server(&dir.path().join("server")).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let client = server.kube_client();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "settings"},
                "data": {"a": "one", "b": "two"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "creds"},
                "stringData": {"user": "admin"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pod = create_pod(
        &client,
        json!({
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "securityContext": {"fsGroup": 2000},
                "containers": [{
                    "name": "app", "image": "busybox",
                    "resources": {"limits": {"memory": "64Mi"}},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/config"},
                        {"name": "creds", "mountPath": "/etc/creds"},
                        {"name": "scratch", "mountPath": "/scratch", "subPath": "logs"},
                    ]
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": "settings",
                        "items": [{"key": "a", "path": "conf/a.txt", "mode": 0o600}]}},
                    {"name": "all-config", "configMap": {"name": "settings"}},
                    {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "mem", "resourceFieldRef": {"containerName": "app",
                            "resource": "limits.memory", "divisor": "1Mi"}}
                    ]}},
                    {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                    ]}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "memory", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                ]
            }
        }),
    )
    .await;
    let pod_dir = dir
        .path()
        .join("agent/pods")
        .join(pod.metadata.uid.clone().unwrap());
    let ctx = VolumeContext::new(client.clone(), pod_dir.clone(), "node-1");
    let prepared = volumes::prepare(&ctx, &pod).await.unwrap();
    // Idempotent.
    let prepared_again = volumes::prepare(&ctx, &pod).await.unwrap();
    assert_eq!(
        prepared.volumes["config"].path,
        prepared_again.volumes["config"].path
    );

    // configMap: the atomic writer's layout, item modes, fsGroup.
    let config = pod_dir.join("volumes/kubernetes.io~configmap/config");
    assert_eq!(prepared.volumes["config"].path, config);
    let data = std::fs::read_link(config.join("..data")).unwrap();
    assert!(data.to_str().unwrap().starts_with("..20"), "{data:?}");
    assert_eq!(
        std::fs::read_link(config.join("conf")).unwrap(),
        Path::new("..data/conf")
    );
    let a = config.join("conf/a.txt");
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "one");
    // 0600 plus group read for the fsGroup, owned by it.
    assert_eq!(mode(&a), 0o640);
    assert_eq!(std::fs::metadata(&a).unwrap().gid(), 2000);
    let all = pod_dir.join("volumes/kubernetes.io~configmap/all-config");
    assert_eq!(std::fs::read_to_string(all.join("b")).unwrap(), "two");
    assert_eq!(mode(&all.join("b")), 0o644);

    // secret: on tmpfs, defaultMode.
    let creds = pod_dir.join("volumes/kubernetes.io~secret/creds");
    assert!(is_tmpfs(&creds), "secret volumes are tmpfs");
    assert_eq!(
        std::fs::read_to_string(creds.join("user")).unwrap(),
        "admin"
    );
    assert_eq!(mode(&creds.join("user")), 0o440);

    // downwardAPI.
    let info = pod_dir.join("volumes/kubernetes.io~downward-api/info");
    assert_eq!(
        std::fs::read_to_string(info.join("labels")).unwrap(),
        "app=\"web\"\ntier=\"front\""
    );
    assert_eq!(std::fs::read_to_string(info.join("name")).unwrap(), "web");
    assert_eq!(std::fs::read_to_string(info.join("mem")).unwrap(), "64");

    // projected: the standard kube-api-access volume.
    let access = pod_dir.join("volumes/kubernetes.io~projected/kube-api-access");
    let token = std::fs::read_to_string(access.join("token")).unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(std::fs::read_to_string(access.join("ca.crt"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read_to_string(access.join("namespace")).unwrap(),
        "default"
    );
    // The token is accepted by the API server as the pod's service account.
    let review = server.kubectl().ok_with(
        &["create", "-f", "-", "-o", "json"],
        Some(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                "spec": {"token": token}})
            .to_string(),
        ),
    );
    assert!(
        review.contains("system:serviceaccount:default:default"),
        "{review}"
    );

    // emptyDir: disk 0777 (setgid for the fsGroup), memory on a 16Mi tmpfs.
    let scratch = pod_dir.join("volumes/kubernetes.io~empty-dir/scratch");
    assert_eq!(mode(&scratch), 0o2777);
    let memory = pod_dir.join("volumes/kubernetes.io~empty-dir/memory");
    assert!(is_tmpfs(&memory));
    let fs = nix::sys::statvfs::statvfs(&memory).unwrap();
    assert_eq!(fs.blocks() as u64 * fs.fragment_size() as u64, 16 << 20);

    // Mounts: read-only where upstream forces it, subPath created and bind-mounted.
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let mounts = prepared.mounts_for(container).unwrap();
    assert_eq!(mounts.len(), 3);
    assert_eq!(
        (mounts[0].source.as_path(), mounts[0].readonly),
        (config.as_path(), true)
    );
    assert!(mounts[1].readonly);
    assert_eq!(mounts[2].destination, Path::new("/scratch"));
    assert!(!mounts[2].readonly);
    assert!(scratch.join("logs").is_dir());
    std::fs::write(scratch.join("logs/x"), "through").unwrap();
    assert_eq!(
        std::fs::read_to_string(mounts[2].source.join("x")).unwrap(),
        "through"
    );

    // Updates propagate on refresh, swapping ..data.
    config_maps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "uno"}})),
        )
        .await
        .unwrap();
    volumes::refresh(&ctx, &pod).await.unwrap();
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "uno");
    assert_ne!(std::fs::read_link(config.join("..data")).unwrap(), data);
    assert!(!config.join(&data).exists(), "the old version is removed");
    assert_eq!(
        std::fs::read_to_string(access.join("token")).unwrap(),
        token,
        "a fresh token is kept"
    );

    // A missing configMap is upstream's FailedMount message.
    config_maps
        .delete("settings", &Default::default())
        .await
        .unwrap();
    let error = volumes::refresh(&ctx, &pod).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "MountVolume.SetUp failed for volume \"config\" : configmap \"settings\" not found"
    );
    assert!(matches!(error, VolumeError::SetUp { .. }));

    // Cleanup unmounts and removes everything of the pod's volumes.
    volumes::cleanup(&pod_dir).await.unwrap();
    assert!(!is_tmpfs(&memory) && !is_tmpfs(&creds));
    assert!(!pod_dir.join("volumes").exists());
    assert!(!pod_dir.join("volume-subpaths").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_paths_are_checked_and_sub_paths_cannot_escape() {
    if !root() {
        eprintln!("skipped: mounting volumes needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path().to_path_buf());
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("data")).unwrap();
    std::fs::write(host.join("file"), "keep me").unwrap();
    let secret_place = dir.path().join("outside");
    std::fs::create_dir_all(&secret_place).unwrap();
    // No API object is read here: a client to nowhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let client = kedge::client::remote::over_https("https://127.0.0.1:1", tls).unwrap();
    let pod_dir = dir.path().join("pod");
    let ctx = VolumeContext::new(client, pod_dir.clone(), "node-1");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox",
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [
                    {"name": "host", "mountPath": "/host", "readOnly": true},
                    {"name": "host", "mountPath": "/per-pod", "subPathExpr": "data/$(POD)"},
                    {"name": "created", "mountPath": "/created"},
                ]}],
            "volumes": [
                {"name": "host", "hostPath": {"path": host.to_str().unwrap(), "type": "Directory"}},
                {"name": "created", "hostPath": {"path": host.join("new/dir").to_str().unwrap(),
                    "type": "DirectoryOrCreate"}},
                {"name": "scratch", "emptyDir": {}},
            ]
        }
    }))
    .unwrap();
    let prepared = volumes::prepare(&ctx, &pod).await.unwrap();
    assert!(host.join("new/dir").is_dir());
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let mounts = prepared.mounts_for(container).unwrap();
    assert_eq!(mounts[0].source, host);
    assert!(mounts[0].readonly);
    assert!(
        host.join("data/p").is_dir(),
        "subPathExpr expanded and created"
    );

    // A symlink inside the volume pointing out of it is refused, as is `..`.
    let scratch = prepared.volumes["scratch"].path.clone();
    std::os::unix::fs::symlink(&secret_place, scratch.join("escape")).unwrap();
    let mut escaping = container.clone();
    escaping.volume_mounts = Some(vec![serde_json::from_value(
        json!({"name": "scratch", "mountPath": "/x", "subPath": "escape"}),
    )
    .unwrap()]);
    let error = prepared.mounts_for(&escaping).unwrap_err().to_string();
    assert!(error.contains("not within volume path"), "{error}");
    escaping.volume_mounts = Some(vec![serde_json::from_value(
        json!({"name": "scratch", "mountPath": "/x", "subPath": "../../outside"}),
    )
    .unwrap()]);
    let error = prepared.mounts_for(&escaping).unwrap_err().to_string();
    assert!(error.contains("must not contain '..'"), "{error}");

    // hostPath type errors read as upstream's events.
    for (kind, path, message) in [
        ("Directory", host.join("file"), "is not a directory"),
        ("File", host.join("data"), "is not a file"),
        ("Socket", host.join("file"), "is not a socket file"),
        ("BlockDevice", host.join("file"), "is not a block device"),
    ] {
        let mut bad = pod.clone();
        bad.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(json!(
            {"name": "h", "hostPath": {"path": path.to_str().unwrap(), "type": kind}}
        ))
        .unwrap()]);
        let error = volumes::prepare(&ctx, &bad).await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} {message}",
                path.display()
            )
        );
    }

    // Cleanup removes the pod's dirs and never what hostPaths point at.
    volumes::cleanup(&pod_dir).await.unwrap();
    assert!(!pod_dir.join("volumes").exists());
    assert!(!pod_dir.join("volume-subpaths").exists());
    assert_eq!(
        std::fs::read_to_string(host.join("file")).unwrap(),
        "keep me"
    );
    assert!(host.join("data/p").is_dir() && secret_place.is_dir());
}
