//! The admin kubeconfig `kedge server` writes for kubectl (`/etc/kedge/kedge.yaml`).

use std::path::Path;

use base64::Engine as _;

use super::files::{ensure_dir, write_atomic};
use super::leaf::CertKeyPair;
use super::PkiError;

/// Parses a k3s-style `--write-kubeconfig-mode` ("0600", "600", "0644"): octal digits only,
/// with or without a leading 0, at most 0777 (no setuid/sticky bits on a credentials file).
pub fn parse_file_mode(s: &str) -> Result<u32, PkiError> {
    let digits = s.trim();
    let invalid = || PkiError::Mode(format!("{s:?} is not an octal file mode such as 0600"));
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(invalid());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| invalid())?;
    if mode > 0o777 {
        return Err(PkiError::Mode(format!("{s:?} is larger than 0777")));
    }
    Ok(mode)
}

/// Writes a kubeconfig for `client` against `server_url` (cluster, user and context all
/// named `default`, as k3s does; CA, certificate and key inline as base64) atomically with
/// `mode`: a reader never sees half a file, and the key inside is never more readable than
/// `mode`. The parent directory is created 0755 if missing.
pub fn write_kubeconfig(
    path: &Path,
    mode: u32,
    server_url: &str,
    ca_pem: &str,
    client: &CertKeyPair,
) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(parent, 0o755)?;
    }
    write_atomic(path, render(server_url, ca_pem, client).as_bytes(), mode)
}

/// The kubeconfig text. Base64 needs no quoting in YAML; the URL is written as a
/// double-quoted scalar (JSON string escaping is valid YAML) so no character in it can
/// change the document's structure.
fn render(server_url: &str, ca_pem: &str, client: &CertKeyPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let server = serde_json::Value::from(server_url).to_string();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: {server}
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
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::pki::{Ca, ADMIN_GROUP, ADMIN_USER};

    #[test]
    fn modes_parse_like_k3s() {
        assert_eq!(parse_file_mode("0600").unwrap(), 0o600);
        assert_eq!(parse_file_mode("600").unwrap(), 0o600);
        assert_eq!(parse_file_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_file_mode("644").unwrap(), 0o644);
        assert_eq!(parse_file_mode("0777").unwrap(), 0o777);
        assert_eq!(parse_file_mode("0").unwrap(), 0);
        for bad in [
            "", "0999", "01777", "1000", "rw", "-600", "+600", "0x1a4", "6 00",
        ] {
            assert!(parse_file_mode(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn kubectl(path: &Path, jsonpath: &str) -> Option<String> {
        let output = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(path)
            .args(["config", "view", "--raw", "-o"])
            .arg(format!("jsonpath={jsonpath}"))
            .output()
            .ok()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(String::from_utf8(output.stdout).unwrap())
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn kubeconfig_has_the_mode_and_kubectl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let admin = ca
            .issue_client(ADMIN_USER, &[ADMIN_GROUP], Duration::from_secs(60))
            .unwrap();
        let path = dir.path().join("etc/kedge/kedge.yaml");
        let url = "https://127.0.0.1:6443";
        write_kubeconfig(&path, 0o600, url, ca.cert_pem(), &admin).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o755);
        write_kubeconfig(&path, 0o644, url, ca.cert_pem(), &admin).unwrap();
        assert_eq!(mode_of(&path), 0o644);
        write_kubeconfig(&path, 0o600, url, ca.cert_pem(), &admin).unwrap();
        assert_eq!(
            mode_of(&path),
            0o600,
            "a narrower mode is applied to an existing file"
        );
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1);

        let Some(server) = kubectl(&path, "{.clusters[0].cluster.server}") else {
            eprintln!("kubectl not installed; skipping the kubectl check");
            return;
        };
        assert_eq!(server, url);
        let printed = kubectl(
            &path,
            "{.current-context} {.contexts[0].context.user} {.users[0].user.client-key-data} \
             {.users[0].user.client-certificate-data} {.clusters[0].cluster.certificate-authority-data}",
        )
        .unwrap_or_default();
        let fields: Vec<&str> = printed.split(' ').collect();
        assert_eq!(fields[..2], ["default", "default"]);
        let decode = |s: &str| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
        };
        assert_eq!(decode(fields[2]), admin.key_pem);
        assert_eq!(decode(fields[3]), admin.cert_pem);
        assert_eq!(decode(fields[4]), ca.cert_pem());

        // An IPv6 URL (YAML flow characters) survives too.
        let v6 = "https://[::1]:6443";
        write_kubeconfig(&path, 0o600, v6, ca.cert_pem(), &admin).unwrap();
        assert_eq!(
            kubectl(&path, "{.clusters[0].cluster.server}").unwrap_or_default(),
            v6
        );
    }
}
