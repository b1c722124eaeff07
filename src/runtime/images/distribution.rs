//! The read side of the OCI distribution API for pulls: manifests and blobs fetched under an
//! endpoint's API root, the registry's auth challenge answered (Basic, or a Bearer token from
//! the realm it names, as containerd does), with the endpoint's TLS settings from
//! registries.yaml (extra CA, client certificate, `insecure_skip_verify`).
//!
//! kedge's own rather than oci-client's: oci-client can present no client certificate and
//! always puts `/v2` after the host, so neither k3s' `tls.cert_file`/`key_file` nor a mirror
//! endpoint with a path (containerd's `override_path`) could be honoured.

use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::error::chain;
use super::registries::{Credentials, Endpoint, TlsConfig};

/// A client for one repository on one endpoint.
pub(super) struct RegistryClient {
    http: reqwest::Client,
    /// `<scheme>://<host><api root>/<repository>`.
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` that answered the last challenge, reused for later requests.
    authorization: std::sync::Mutex<Option<HeaderValue>>,
}

impl RegistryClient {
    pub fn new(
        endpoint: &Endpoint,
        tls: Option<&TlsConfig>,
        credentials: Option<Credentials>,
    ) -> Result<RegistryClient, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kedge/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            builder = builder.danger_accept_invalid_certs(tls.insecure_skip_verify);
            if let Some(ca) = &tls.ca_file {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("ca_file {}: {}", ca.display(), chain(&e)))?;
                builder = builder.tls_certs_merge(certs);
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    let mut pem = std::fs::read(cert)
                        .map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
                    pem.push(b'\n');
                    pem.extend(
                        std::fs::read(key)
                            .map_err(|e| format!("key_file {}: {e}", key.display()))?,
                    );
                    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                        format!(
                            "cert_file {} / key_file {}: {}",
                            cert.display(),
                            key.display(),
                            chain(&e)
                        )
                    })?;
                    builder = builder.identity(identity);
                }
                (None, None) => {}
                _ => return Err("tls: cert_file and key_file go together".into()),
            }
        }
        let http = builder.build().map_err(|e| chain(&e))?;
        Ok(RegistryClient {
            http,
            base: format!("{}/{}", endpoint.url(), endpoint.repository),
            repository: endpoint.repository.clone(),
            credentials,
            authorization: std::sync::Mutex::new(None),
        })
    }

    /// The manifest `reference` (tag or digest) names, in one of `accept`'s media types.
    pub async fn manifest(&self, reference: &str, accept: &[&str]) -> Result<Vec<u8>, String> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(&url, Some(&accept.join(", "))).await?;
        let bytes = response.bytes().await.map_err(|e| chain(&e))?;
        Ok(bytes.to_vec())
    }

    /// The blob `digest`, as a response to read in chunks.
    pub async fn blob(&self, digest: &str) -> Result<reqwest::Response, String> {
        let url = format!("{}/blobs/{digest}", self.base);
        self.get(&url, None).await
    }

    /// GET `url`, answering one auth challenge; a non-success status is an error carrying
    /// the registry's own error codes and messages.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response, String> {
        let send = |authorization: Option<HeaderValue>| {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            request.send()
        };
        let cached = self.authorization.lock().unwrap().clone();
        let mut response = send(cached.clone()).await.map_err(|e| chain(&e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(Challenge::parse);
            if let Some(authorization) = self.answer(challenge).await? {
                if Some(&authorization) != cached.as_ref() {
                    *self.authorization.lock().unwrap() = Some(authorization.clone());
                    response = send(Some(authorization)).await.map_err(|e| chain(&e))?;
                }
            }
        }
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(registry_error(status, &body))
    }

    /// The `Authorization` a challenge asks for, if the client has what it needs.
    async fn answer(&self, challenge: Option<Challenge>) -> Result<Option<HeaderValue>, String> {
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        let header = |value: String| HeaderValue::from_str(&value).map_err(|e| e.to_string());
        match challenge.scheme.as_str() {
            "basic" => match &self.credentials {
                Some(Credentials::Basic(user, password)) => {
                    Ok(Some(header(basic(user, password))?))
                }
                _ => Ok(None),
            },
            "bearer" => {
                let token = self.token(&challenge).await?;
                Ok(Some(header(format!("Bearer {token}"))?))
            }
            _ => Ok(None),
        }
    }

    /// A pull token from the challenge's realm: a GET (with Basic credentials if any), or,
    /// for an identity token, the OAuth2 refresh-token POST, as containerd does.
    async fn token(&self, challenge: &Challenge) -> Result<String, String> {
        let realm = challenge
            .param("realm")
            .ok_or("the registry's Bearer challenge names no realm")?;
        let service = challenge.param("service").unwrap_or_default();
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let request = match &self.credentials {
            Some(Credentials::Bearer(identity_token)) => self.http.post(realm).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", identity_token.as_str()),
                ("service", service),
                ("scope", scope.as_str()),
                ("client_id", "kedge"),
            ]),
            credentials => {
                let mut url = reqwest::Url::parse(realm)
                    .map_err(|e| format!("token realm {realm:?}: {e}"))?;
                {
                    let mut query = url.query_pairs_mut();
                    if !service.is_empty() {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", &scope);
                }
                let mut request = self.http.get(url);
                if let Some(Credentials::Basic(user, password)) = credentials {
                    request = request.header(AUTHORIZATION, basic(user, password));
                }
                request
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("token from {realm}: {}", chain(&e)))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "token from {realm}: {}",
                registry_error(status, &body)
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token =
            serde_json::from_slice(&body).map_err(|e| format!("token from {realm}: {e}"))?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("token from {realm}: no token in the answer"))
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `<status>: <code>: <message>` for each error in the registry's JSON body (the spec's
/// `{"errors": [...]}`), else the status and the body's start.
fn registry_error(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(serde::Deserialize)]
    struct RegistryError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let details: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            format!("{status}: {}", details.join(", "))
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {}", text.chars().take(200).collect::<String>())
            }
        }
    }
}

/// A `WWW-Authenticate` challenge: the scheme (lower case) and its `key="value"` params.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key.trim().to_ascii_lowercase();
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                // A quoted value may hold commas (`scope="repository:a:pull,push"`) and
                // backslash escapes.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.push((key, value));
            rest = after;
        }
        Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(
            c.param("scope"),
            Some("repository:library/busybox:pull,push")
        );
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        let c = Challenge::parse(r#"Bearer realm=https://r/t, error="invalid_token""#);
        assert_eq!(c.param("realm"), Some("https://r/t"));
        assert_eq!(c.param("error"), Some("invalid_token"));
    }

    #[test]
    fn registry_errors() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_error(StatusCode::NOT_FOUND, body),
            "404 Not Found: MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(
            registry_error(StatusCode::BAD_GATEWAY, b""),
            "502 Bad Gateway"
        );
    }
}
