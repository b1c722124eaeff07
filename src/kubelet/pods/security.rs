//! A container's effective securityContext (the container's fields over the pod's) turned
//! into what the runtime needs: the user and groups (image user resolved in the image's
//! `/etc/passwd` and `/etc/group` as containerd does), upstream's `runAsNonRoot` check,
//! capabilities (containerd's add/drop rules, `ALL` included), no_new_privileges, seccomp.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};

use super::format;
use crate::runtime::spec::ALL_CAPABILITIES;

/// The merged view of pod and container security settings.
#[derive(Debug, Clone, Default)]
pub struct Effective {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub privileged: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: bool,
    pub seccomp: Option<SeccompProfile>,
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub fs_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
}

/// `DetermineEffectiveSecurityContext`: the container's settings win over the pod's.
pub fn effective(pod: &Pod, container: &Container) -> Effective {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    let caps = csc.and_then(|c| c.capabilities.as_ref());
    Effective {
        run_as_user: csc
            .and_then(|c| c.run_as_user)
            .or(psc.and_then(|p| p.run_as_user)),
        run_as_group: csc
            .and_then(|c| c.run_as_group)
            .or(psc.and_then(|p| p.run_as_group)),
        run_as_non_root: csc
            .and_then(|c| c.run_as_non_root)
            .or(psc.and_then(|p| p.run_as_non_root)),
        privileged: csc.and_then(|c| c.privileged).unwrap_or(false),
        allow_privilege_escalation: csc.and_then(|c| c.allow_privilege_escalation),
        read_only_root_filesystem: csc
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false),
        seccomp: csc
            .and_then(|c| c.seccomp_profile.clone())
            .or(psc.and_then(|p| p.seccomp_profile.clone())),
        add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        fs_group: psc.and_then(|p| p.fs_group),
        supplemental_groups: psc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
    }
}

/// Why a container may not run with its security settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// The image's `USER` as upstream's `getImageUser` sees it: a uid when numeric, else a name.
pub fn image_user(user: Option<&str>) -> (Option<i64>, Option<String>) {
    let user = user.unwrap_or_default();
    let user_part = user.split(':').next().unwrap_or_default();
    if user_part.is_empty() {
        return (Some(0), None);
    }
    match user_part.parse::<i64>() {
        Ok(uid) => (Some(uid), None),
        Err(_) => (None, Some(user_part.to_string())),
    }
}

/// `verifyRunAsNonRoot`, with upstream's messages.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    sc: &Effective,
    image_user: Option<&str>,
) -> Result<(), SecurityError> {
    if sc.run_as_non_root != Some(true) {
        return Ok(());
    }
    let pod_name = format::pod(pod);
    if let Some(uid) = sc.run_as_user {
        if uid == 0 {
            return Err(SecurityError(format!(
                "container's runAsUser breaks non-root policy (pod: {pod_name:?}, container: {})",
                container.name
            )));
        }
        return Ok(());
    }
    match self::image_user(image_user) {
        (Some(0), _) => Err(SecurityError(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {})",
            container.name
        ))),
        (None, Some(name)) => Err(SecurityError(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: {pod_name:?}, container: {})",
            container.name
        ))),
        _ => Ok(()),
    }
}

/// The process identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Resolves the identity as containerd does: runAsUser/runAsGroup over the image's USER,
/// names looked up in the rootfs' `/etc/passwd` and `/etc/group`; the user's groups from
/// `/etc/group`, then fsGroup and supplementalGroups.
pub fn identity(
    sc: &Effective,
    image_user: Option<&str>,
    rootfs: &Path,
) -> Result<Identity, SecurityError> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let spec = image_user.unwrap_or_default();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut username = None;
    let (uid, passwd_gid) = match sc.run_as_user {
        Some(uid) => (uid as u32, passwd_gid_of(&passwd, uid as u32)),
        None if user_part.is_empty() => (0, Some(0)),
        None => match user_part.parse::<u32>() {
            Ok(uid) => (uid, passwd_gid_of(&passwd, uid)),
            Err(_) => {
                let entry = passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 3 && f[0] == user_part)
                    .ok_or_else(|| {
                        SecurityError(format!(
                            "no users found matching {user_part:?} in the image's /etc/passwd"
                        ))
                    })?;
                username = Some(user_part.to_string());
                (entry[2].parse().unwrap_or(0), entry[3].parse::<u32>().ok())
            }
        },
    };
    if username.is_none() {
        username = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid))
            .map(|f| f[0].to_string());
    }
    let gid = match (sc.run_as_group, group_part) {
        (Some(g), _) => g as u32,
        (None, Some(g)) if sc.run_as_user.is_none() => match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    SecurityError(format!(
                        "no groups found matching {g:?} in the image's /etc/group"
                    ))
                })?,
        },
        _ => passwd_gid.unwrap_or(0),
    };
    let mut additional = Vec::new();
    if let Some(name) = &username {
        for f in groups.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() > 3 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    additional.push(g);
                }
            }
        }
    }
    additional.extend(sc.fs_group.map(|g| g as u32));
    additional.extend(sc.supplemental_groups.iter().map(|g| *g as u32));
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| *g != gid && seen.insert(*g));
    Ok(Identity {
        uid,
        gid,
        additional_gids: additional,
    })
}

fn passwd_gid_of(passwd: &str, uid: u32) -> Option<u32> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid))
        .and_then(|f| f[3].parse().ok())
}

/// The effective capability set: the runtime's defaults (all for privileged), `ALL` in add
/// or drop first, then the named ones, as containerd applies them.
pub fn capabilities(sc: &Effective, defaults: &[&str]) -> Vec<String> {
    if sc.privileged {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let normal = |c: &str| {
        let c = c.to_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let mut caps: Vec<String> = defaults.iter().map(|c| c.to_string()).collect();
    if sc.add.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    if sc.drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        caps.clear();
    }
    for c in sc.add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        let c = normal(c);
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    for c in sc.drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        let c = normal(c);
        caps.retain(|x| *x != c);
    }
    caps
}

/// `AddNoNewPrivileges`: only an explicit `allowPrivilegeEscalation: false` sets it.
pub fn no_new_privileges(sc: &Effective) -> bool {
    sc.allow_privilege_escalation == Some(false) && !sc.privileged
}

/// Whether the runtime's default seccomp profile applies (`RuntimeDefault`; the kubelet's
/// default is `Unconfined`, and privileged containers are never filtered).
pub fn seccomp_runtime_default(sc: &Effective) -> bool {
    !sc.privileged
        && sc
            .seccomp
            .as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(psc: serde_json::Value, csc: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"securityContext": psc, "containers": [{"name": "c", "securityContext": csc}]},
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[test]
    fn run_as_non_root_messages() {
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!({}),
        );
        let sc = effective(&p, &c);
        assert_eq!(
            verify_run_as_non_root(&p, &c, &sc, None).unwrap_err().0,
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u)\", container: c)"
        );
        assert_eq!(
            verify_run_as_non_root(&p, &c, &sc, Some("nobody")).unwrap_err().0,
            "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: \"p_ns(u)\", container: c)"
        );
        assert!(verify_run_as_non_root(&p, &c, &sc, Some("1000")).is_ok());
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!({"runAsUser": 0}),
        );
        let sc = effective(&p, &c);
        assert!(verify_run_as_non_root(&p, &c, &sc, None)
            .unwrap_err()
            .0
            .starts_with("container's runAsUser breaks non-root policy"));
    }

    #[test]
    fn capabilities_add_and_drop() {
        let defaults = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"];
        let (p, c) = pod(
            serde_json::json!({}),
            serde_json::json!({"capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]}}),
        );
        assert_eq!(
            capabilities(&effective(&p, &c), &defaults),
            vec!["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"]
        );
        let (p, c) = pod(
            serde_json::json!({}),
            serde_json::json!({"capabilities": {"add": ["CHOWN"], "drop": ["ALL"]}}),
        );
        assert_eq!(
            capabilities(&effective(&p, &c), &defaults),
            vec!["CAP_CHOWN"]
        );
    }

    #[test]
    fn identity_from_image_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nweb:x:1000:\nwheel:x:10:web\n",
        )
        .unwrap();
        let (p, c) = pod(
            serde_json::json!({"fsGroup": 2000, "supplementalGroups": [3000]}),
            serde_json::json!({}),
        );
        let sc = effective(&p, &c);
        let id = identity(&sc, Some("web"), dir.path()).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 2000, 3000]
            }
        );
        let id = identity(&sc, None, dir.path()).unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
    }
}
