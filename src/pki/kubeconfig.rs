//! The admin kubeconfig `kedge server` writes for kubectl.

use std::path::Path;

use base64::Engine as _;

use super::ca::CertKeyPair;
use super::files::{ensure_dir, write_atomic};
use super::PkiError;

/// Parses a k3s-style `--write-kubeconfig-mode`: octal, with or without a leading 0.
pub fn parse_file_mode(s: &str) -> Result<u32, PkiError> {
    let mode = u32::from_str_radix(s.trim(), 8)
        .map_err(|_| PkiError::Mode(format!("{s:?} is not an octal file mode such as 0600")))?;
    if mode > 0o777 {
        return Err(PkiError::Mode(format!("{s:?} is larger than 0777")));
    }
    Ok(mode)
}

/// Writes a kubeconfig for `client` against `server_url` (cluster, user and context named
/// `default`, as k3s does), atomically, with `mode`.
pub fn write_kubeconfig(path: &Path, mode: u32, server_url: &str, ca_pem: &str, client: &CertKeyPair) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(parent, 0o755)?;
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: default
  context:
    cluster: default
    user: default
current-context: default
preferences: {{}}
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    );
    write_atomic(path, text.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn modes_parse_like_k3s() {
        assert_eq!(parse_file_mode("0600").unwrap(), 0o600);
        assert_eq!(parse_file_mode("644").unwrap(), 0o644);
        assert!(parse_file_mode("0999").is_err());
        assert!(parse_file_mode("01777").is_err());
        assert!(parse_file_mode("rw").is_err());
    }

    #[test]
    fn kubeconfig_has_the_mode_and_kubectl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let admin = ca.issue_client("system:admin", &["system:masters"], Duration::from_secs(60)).unwrap();
        let path = dir.path().join("etc/kedge/kedge.yaml");
        write_kubeconfig(&path, 0o600, "https://127.0.0.1:6443", ca.cert_pem(), &admin).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_kubeconfig(&path, 0o644, "https://127.0.0.1:6443", ca.cert_pem(), &admin).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);

        let Ok(output) = std::process::Command::new("kubectl")
            .args(["--kubeconfig", path.to_str().unwrap(), "config", "view", "--raw", "-o"])
            .arg("jsonpath={.clusters[0].cluster.server} {.users[0].user.client-key-data}")
            .output()
        else {
            eprintln!("kubectl not installed; skipping the kubectl check");
            return;
        };
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let printed = String::from_utf8(output.stdout).unwrap();
        let (server, key) = printed.split_once(' ').unwrap();
        assert_eq!(server, "https://127.0.0.1:6443");
        let key = base64::engine::general_purpose::STANDARD.decode(key).unwrap();
        assert_eq!(String::from_utf8(key).unwrap(), admin.key_pem);
    }
}
