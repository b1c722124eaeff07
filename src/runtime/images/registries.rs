//! `registries.yaml` in the k3s format (<https://docs.k3s.io/installation/private-registry>):
//! mirrors (endpoints tried in order, then the registry's default endpoint; optional
//! repository rewrites) and per-host configs (credentials, TLS). An `http://` endpoint is
//! plain HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::{ImageError, RegistryAuth};

pub const DEFAULT_PATH: &str = "/etc/kedge/registries.yaml";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: HashMap<String, Mirror>,
    #[serde(default)]
    pub configs: HashMap<String, HostConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Regex on the repository → replacement (`$1` groups), as k3s.
    #[serde(default)]
    pub rewrite: HashMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct HostConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    /// base64 of `username:password`.
    pub auth: Option<String>,
    pub identity_token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to try: a host and whether it speaks plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`, e.g. `registry-1.docker.io`, `127.0.0.1:5000`.
    pub host: String,
    pub plain_http: bool,
    /// The repository on this endpoint (after rewrites).
    pub repository: String,
}

impl Endpoint {
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// Credentials in the form the registry client wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Basic(String, String),
    /// An identity token sent as a bearer token.
    Bearer(String),
}

impl Registries {
    /// Reads `path`; a missing file means no mirrors and no configs.
    pub fn load(path: &Path) -> Result<Registries, ImageError> {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(e) => return Err(ImageError::io(path)(e)),
        };
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(Registries::default());
        }
        let registries: Registries = serde_yaml_ng::from_slice(&data)
            .map_err(|e| ImageError::invalid(path.display().to_string(), e))?;
        for (registry, mirror) in &registries.mirrors {
            for pattern in mirror.rewrite.keys() {
                regex::Regex::new(pattern).map_err(|e| {
                    ImageError::invalid(
                        path.display().to_string(),
                        format!("mirrors.{registry}.rewrite: {e}"),
                    )
                })?;
            }
            for endpoint in &mirror.endpoint {
                parse_endpoint(endpoint).map_err(|reason| {
                    ImageError::invalid(
                        path.display().to_string(),
                        format!("mirrors.{registry}.endpoint: {reason}"),
                    )
                })?;
            }
        }
        Ok(registries)
    }

    /// Where to look for `repository` of `registry`, in order: the mirror's endpoints (or
    /// the `*` mirror's), then the registry itself (Docker Hub's is registry-1.docker.io).
    pub fn endpoints(&self, registry: &str, repository: &str) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        if let Some(mirror) = mirror {
            let rewritten = rewrite(&mirror.rewrite, repository);
            for endpoint in &mirror.endpoint {
                if let Ok((host, plain_http)) = parse_endpoint(endpoint) {
                    let endpoint = Endpoint {
                        host,
                        plain_http,
                        repository: rewritten.clone(),
                    };
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
            }
        }
        let default = Endpoint {
            host: if registry == super::reference::DEFAULT_REGISTRY {
                "registry-1.docker.io".to_string()
            } else {
                registry.to_string()
            },
            plain_http: false,
            repository: repository.to_string(),
        };
        // A mirror listing the registry itself over plain HTTP replaces the HTTPS default.
        if !endpoints.iter().any(|e| e.host == default.host) {
            endpoints.push(default);
        }
        endpoints
    }

    /// TLS settings for an endpoint host.
    pub fn tls(&self, host: &str) -> Option<&TlsConfig> {
        self.config(host).and_then(|c| c.tls.as_ref())
    }

    fn config(&self, host: &str) -> Option<&HostConfig> {
        self.configs.get(host).or_else(|| {
            // Docker Hub's config may be keyed by its name or its endpoint.
            (host == "registry-1.docker.io")
                .then(|| self.configs.get(super::reference::DEFAULT_REGISTRY))
                .flatten()
        })
    }

    /// Credentials for `endpoint` of an image from `registry`: imagePullSecrets matching the
    /// endpoint host (or, for the registry's own endpoint, the registry name) come first,
    /// then registries.yaml's `configs`.
    pub fn credentials(
        &self,
        registry: &str,
        endpoint: &Endpoint,
        secrets: &[RegistryAuth],
    ) -> Result<Option<Credentials>, ImageError> {
        let is_default = endpoint.host == registry
            || (registry == super::reference::DEFAULT_REGISTRY
                && endpoint.host == "registry-1.docker.io");
        for secret in secrets {
            let host = secret_host(&secret.registry);
            if host == endpoint.host || (is_default && host == registry) {
                return Ok(Some(Credentials::Basic(
                    secret.username.clone(),
                    secret.password.clone(),
                )));
            }
        }
        let Some(auth) = self.config(&endpoint.host).and_then(|c| c.auth.as_ref()) else {
            return Ok(None);
        };
        if let Some(token) = auth.identity_token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::Bearer(token.clone())));
        }
        if let (Some(user), Some(password)) = (&auth.username, &auth.password) {
            return Ok(Some(Credentials::Basic(user.clone(), password.clone())));
        }
        if let Some(encoded) = &auth.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| {
                    d.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                });
            return match decoded {
                Some((user, password)) => Ok(Some(Credentials::Basic(user, password))),
                None => Err(ImageError::invalid(
                    format!("registries.yaml configs.{}.auth.auth", endpoint.host),
                    "not base64 of username:password",
                )),
            };
        }
        Ok(None)
    }
}

/// `https://host:port[/path]` → (`host:port`, plain HTTP?). A bare host means HTTPS.
fn parse_endpoint(endpoint: &str) -> Result<(String, bool), String> {
    let (rest, plain_http) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (rest, true)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, false)
    } else if endpoint.contains("://") {
        return Err(format!(
            "{endpoint:?}: only http:// and https:// are supported"
        ));
    } else {
        (endpoint, false)
    };
    let host = rest.split('/').next().unwrap_or("");
    let path = rest[host.len()..].trim_matches('/');
    if host.is_empty() {
        return Err(format!("{endpoint:?}: no host"));
    }
    // oci-client puts `/v2` right after the host, so a path (containerd's override_path,
    // which k3s accepts) cannot be honoured: refused rather than silently ignored.
    if !path.is_empty() && path != "v2" {
        return Err(format!("{endpoint:?}: endpoint paths are not supported"));
    }
    Ok((host.to_string(), plain_http))
}

/// The host an imagePullSecret's registry key names (`https://index.docker.io/v1/` →
/// `docker.io`).
fn secret_host(registry: &str) -> String {
    let rest = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry);
    let host = rest.split('/').next().unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            super::reference::DEFAULT_REGISTRY.to_string()
        }
        host => host.to_string(),
    }
}

fn rewrite(rules: &HashMap<String, String>, repository: &str) -> String {
    // Sorted so that overlapping rules apply the same way each time.
    let mut patterns: Vec<&String> = rules.keys().collect();
    patterns.sort();
    for pattern in patterns {
        if let Ok(re) = regex::Regex::new(pattern) {
            if re.is_match(repository) {
                return re.replace(repository, rules[pattern].as_str()).into_owned();
            }
        }
    }
    repository.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example:5000"
    rewrite:
      "^library/(.*)": "mirrored/$1"
configs:
  "mirror.example:5000":
    auth:
      auth: dXNlcjpwYXNz
    tls:
      insecure_skip_verify: true
  "registry-1.docker.io":
    auth:
      username: hub
      password: secret
"#;

    #[test]
    fn k3s_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, YAML).unwrap();
        let registries = Registries::load(&path).unwrap();
        let endpoints = registries.endpoints("docker.io", "library/busybox");
        let hosts: Vec<(String, bool, String)> = endpoints
            .iter()
            .map(|e| (e.host.clone(), e.plain_http, e.repository.clone()))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("127.0.0.1:5000".into(), true, "mirrored/busybox".into()),
                (
                    "mirror.example:5000".into(),
                    false,
                    "mirrored/busybox".into()
                ),
                (
                    "registry-1.docker.io".into(),
                    false,
                    "library/busybox".into()
                ),
            ]
        );
        assert_eq!(
            registries
                .credentials("docker.io", &endpoints[1], &[])
                .unwrap(),
            Some(Credentials::Basic("user".into(), "pass".into()))
        );
        assert!(
            registries
                .tls("mirror.example:5000")
                .unwrap()
                .insecure_skip_verify
        );
        // A pull secret for Docker Hub wins over the file.
        let secret = RegistryAuth {
            registry: "https://index.docker.io/v1/".into(),
            username: "a".into(),
            password: "b".into(),
        };
        assert_eq!(
            registries
                .credentials("docker.io", &endpoints[2], &[secret])
                .unwrap(),
            Some(Credentials::Basic("a".into(), "b".into()))
        );
        assert_eq!(
            registries
                .credentials("docker.io", &endpoints[2], &[])
                .unwrap(),
            Some(Credentials::Basic("hub".into(), "secret".into()))
        );
        assert_eq!(
            registries.endpoints("quay.io", "a/b"),
            vec![Endpoint {
                host: "quay.io".into(),
                plain_http: false,
                repository: "a/b".into()
            }]
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, "mirrors: [").unwrap();
        let err = Registries::load(&path).unwrap_err().to_string();
        assert!(err.contains("registries.yaml"), "{err}");
        assert!(Registries::load(&dir.path().join("missing.yaml")).is_ok());
    }
}
