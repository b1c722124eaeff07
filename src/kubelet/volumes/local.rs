//! Volumes that are host paths: hostPath (with upstream's type checks) and
//! persistentVolumeClaim bound to a hostPath or local PersistentVolume (the local-path
//! provisioner's).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;

use super::sources::api_message;
use super::VolumeContext;

/// Checks (and for the `...OrCreate` types, creates) hostPath `path` as upstream's
/// `checkType`, with its messages.
pub fn check_host_path(path: &str, kind: Option<&str>) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p).ok();
    let exists = std::fs::symlink_metadata(p).is_ok();
    let file_type = meta.as_ref().map(|m| m.file_type());
    let not = |what: &str| format!("hostPath type check failed: {path} is not {what}");
    match kind.unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" if !exists => {
            std::fs::create_dir_all(p).map_err(|e| format!("mkdir {path}: {e}"))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        }
        "DirectoryOrCreate" | "Directory" => {
            if !file_type.is_some_and(|t| t.is_dir()) {
                return Err(not("a directory"));
            }
        }
        "FileOrCreate" if !exists => {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("open {path}: {e}"))?;
        }
        "FileOrCreate" | "File" => {
            if !file_type.is_some_and(|t| t.is_file()) {
                return Err(not("a file"));
            }
        }
        "Socket" => {
            if !file_type.is_some_and(|t| t.is_socket()) {
                return Err(not("a socket file"));
            }
        }
        "CharDevice" => {
            if !file_type.is_some_and(|t| t.is_char_device()) {
                return Err(not("a character device"));
            }
        }
        "BlockDevice" => {
            if !file_type.is_some_and(|t| t.is_block_device()) {
                return Err(not("a block device"));
            }
        }
        other => return Err(format!("{other} is an invalid volume type")),
    }
    Ok(p.to_path_buf())
}

/// The host path of the PersistentVolume bound to claim `claim`.
pub async fn claim_path(
    ctx: &VolumeContext,
    namespace: &str,
    claim: &str,
) -> Result<PathBuf, String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace)
        .get_opt(claim)
        .await
        .map_err(|e| format!("failed to fetch PVC from API server: {}", api_message(&e)))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || volume_name.is_empty() {
        return Err(format!(
            "PVC {namespace}/{claim} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume_name:?})"
        ));
    }
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(&volume_name)
        .await
        .map_err(|e| format!("failed to fetch PV {volume_name}: {}", api_message(&e)))?
        .ok_or_else(|| format!("persistentvolume {volume_name:?} not found"))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(host_path) = spec.host_path {
        // The local-path provisioner's volumes are created here on nodes other than the
        // server's own (see crate::controllers::local_path).
        let kind = host_path.type_.as_deref().or(Some("DirectoryOrCreate"));
        return check_host_path(&host_path.path, kind);
    }
    if let Some(local) = spec.local {
        return check_host_path(&local.path, Some("Directory"));
    }
    Err(format!(
        "persistentvolume {volume_name:?} is neither hostPath nor local: kedge mounts no other volume sources"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_with_upstreams_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let f = file.to_str().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            check_host_path(f, Some("Directory")).unwrap_err(),
            format!("hostPath type check failed: {f} is not a directory")
        );
        assert_eq!(
            check_host_path(d, Some("File")).unwrap_err(),
            format!("hostPath type check failed: {d} is not a file")
        );
        assert!(check_host_path(f, Some("Socket"))
            .unwrap_err()
            .ends_with("is not a socket file"));
        assert!(check_host_path("/dev/null", Some("CharDevice")).is_ok());
        let created = dir.path().join("a/b");
        check_host_path(created.to_str().unwrap(), Some("DirectoryOrCreate")).unwrap();
        assert!(created.is_dir());
        let new_file = dir.path().join("new");
        check_host_path(new_file.to_str().unwrap(), Some("FileOrCreate")).unwrap();
        assert!(new_file.is_file());
        assert_eq!(
            check_host_path(d, Some("Nope")).unwrap_err(),
            "Nope is an invalid volume type"
        );
    }
}
