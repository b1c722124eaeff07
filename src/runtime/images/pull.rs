//! Pulling from registries with oci-client: endpoints from registries.yaml in order, then the
//! registry's own; the token dance is oci-client's; every manifest and blob is checked
//! against its digest here, then stored and unpacked by the same code as an import.

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth as OciAuth;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::archive::{self, Manifest};
use super::registries::{Credentials, Endpoint, Registries};
use super::{Image, ImageError, ImageStore, Reference, RegistryAuth};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

pub(super) async fn pull(
    store: &ImageStore,
    registries: &Registries,
    reference: &str,
    secrets: &[RegistryAuth],
) -> Result<Image, ImageError> {
    // oci-client's reqwest is built without a crypto provider; the process's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parsed = Reference::parse(reference)?;
    let canonical = parsed.canonical();
    let mut errors = Vec::new();
    for endpoint in registries.endpoints(&parsed.registry, &parsed.repository) {
        match pull_from(store, registries, &parsed, &endpoint, secrets).await {
            Ok(image) => return Ok(image),
            Err(reason) => {
                tracing::debug!(image = %canonical, endpoint = %endpoint.url(), %reason, "pull failed");
                errors.push(format!("{}: {reason}", endpoint.url()));
            }
        }
    }
    Err(ImageError::Pull {
        reference: canonical,
        reason: errors.join("; "),
    })
}

/// Pulls from one endpoint; the error is a reason (the caller names the image).
async fn pull_from(
    store: &ImageStore,
    registries: &Registries,
    reference: &Reference,
    endpoint: &Endpoint,
    secrets: &[RegistryAuth],
) -> Result<Image, String> {
    let client = client(registries, endpoint)?;
    let auth = match registries
        .credentials(&reference.registry, endpoint, secrets)
        .map_err(|e| e.to_string())?
    {
        Some(Credentials::Basic(user, password)) => OciAuth::Basic(user, password),
        Some(Credentials::Bearer(token)) => OciAuth::Bearer(token),
        None => OciAuth::Anonymous,
    };
    let oci_ref = match (&reference.digest, &reference.tag) {
        (Some(digest), _) => oci_client::Reference::with_digest(
            endpoint.host.clone(),
            endpoint.repository.clone(),
            digest.clone(),
        ),
        (None, tag) => oci_client::Reference::with_tag(
            endpoint.host.clone(),
            endpoint.repository.clone(),
            tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    };
    let _ingest = store.lock_ingest_shared().map_err(|e| e.to_string())?;

    // What the tag (or digest) names: an image manifest or an index.
    let (top, top_digest) = manifest(&client, &oci_ref, &auth, reference.digest.as_deref()).await?;
    let parsed: Manifest =
        serde_json::from_slice(&top).map_err(|e| format!("manifest {top_digest}: {e}"))?;
    let (manifest_bytes, manifest_digest, manifest) = if parsed.is_index("") {
        let chosen = archive::select_platform(&parsed.manifests).ok_or_else(|| {
            format!(
                "no image for linux/{} in index {top_digest}",
                archive::node_arch()
            )
        })?;
        let child = oci_ref.clone_with_digest(chosen.digest.clone());
        let (bytes, digest) = manifest(&client, &child, &auth, Some(&chosen.digest)).await?;
        let parsed: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| format!("manifest {digest}: {e}"))?;
        if parsed.is_index(&chosen.media_type) {
            return Err(format!("{digest}: an index inside an index"));
        }
        (bytes, digest, parsed)
    } else {
        (top, top_digest.clone(), parsed)
    };
    let config = manifest
        .config
        .as_ref()
        .ok_or_else(|| format!("manifest {manifest_digest} has no config"))?;
    store_bytes(store, &manifest_bytes, &manifest_digest)?;

    let mut size = manifest_bytes.len() as u64;
    let mut blobs = vec![manifest_digest.clone()];
    for descriptor in std::iter::once(config).chain(&manifest.layers) {
        size += fetch_blob(store, &client, &oci_ref, &descriptor.digest).await?;
        blobs.push(descriptor.digest.clone());
    }
    let config_path = store.blob_path(&config.digest);
    let config_bytes =
        std::fs::read(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;

    let names = match &reference.tag {
        Some(_) => vec![reference.canonical()],
        None => Vec::new(),
    };
    // The digest the user's reference resolves to (an index's, for a multi-arch image).
    let repo_digests = vec![format!("{}@{top_digest}", reference.name())];
    let layer_blobs: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let image = archive::image_from_config(
        &format!("{} config {}", reference.canonical(), config.digest),
        &config_bytes,
        config.digest.clone(),
        names,
        repo_digests,
        size,
        blobs,
        layer_blobs.len(),
    )
    .map_err(|e| e.to_string())?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _lock = store.lock()?;
        store.commit(image, &layer_blobs)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

fn client(registries: &Registries, endpoint: &Endpoint) -> Result<oci_client::Client, String> {
    let mut config = ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // Platforms are chosen here (with arm variants), not by oci-client.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("kedge/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    if let Some(tls) = registries.tls(&endpoint.host) {
        config.accept_invalid_certificates = tls.insecure_skip_verify;
        if let Some(ca) = &tls.ca_file {
            let data = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        if tls.cert_file.is_some() || tls.key_file.is_some() {
            // oci-client's configuration has no client identity; pulling without the
            // certificate the registry asks for would only fail later and less clearly.
            return Err(format!(
                "registries.yaml configs.{}.tls: client certificates (cert_file, key_file) are not supported",
                endpoint.host
            ));
        }
    }
    oci_client::Client::try_from(config).map_err(|e| e.to_string())
}

/// Fetches a manifest and checks it hashes to `expected` (when the reference pins one).
async fn manifest(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    auth: &OciAuth,
    expected: Option<&str>,
) -> Result<(Vec<u8>, String), String> {
    let (bytes, _) = client
        .pull_manifest_raw(reference, auth, MANIFEST_TYPES)
        .await
        .map_err(|e| e.to_string())?;
    let digest = sha256(&bytes);
    if let Some(expected) = expected {
        if expected != digest {
            return Err(format!(
                "manifest digest mismatch: expected {expected}, got {digest}"
            ));
        }
    }
    Ok((bytes.to_vec(), digest))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn store_bytes(store: &ImageStore, data: &[u8], digest: &str) -> Result<(), String> {
    archive::store_blob(store, &mut &data[..], Some(digest), digest)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Downloads blob `digest` into the store unless it is there; returns its size.
async fn fetch_blob(
    store: &ImageStore,
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    digest: &str,
) -> Result<u64, String> {
    super::reference::validate_digest(digest)?;
    let dest = store.blob_path(digest);
    if let Ok(meta) = std::fs::metadata(&dest) {
        return Ok(meta.len());
    }
    let tmp = store
        .tmp_dir()
        .join(format!("pull-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let mut stream = client
            .pull_blob_stream(reference, digest)
            .await
            .map_err(|e| format!("blob {digest}: {e}"))?;
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        use futures::StreamExt;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| format!("blob {digest}: {e}"))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        archive::place_blob(
            store,
            &tmp,
            &actual,
            Some(digest),
            &format!("blob {digest}"),
        )
        .map_err(|e| e.to_string())?;
        Ok(size)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}
