//! The server's symmetric and signing secrets beyond TLS: the key that signs service
//! account tokens (ECDSA P-256, PKCS#8 PEM, next to the CA) and the key Secrets are
//! encrypted at rest with. Both are created once and kept.

use std::path::Path;

use super::files::write_atomic;
use super::PkiError;

/// File name of the signing key in the TLS directory.
pub const SERVICE_ACCOUNT_KEY: &str = "service-account.key";

/// The service account signing key in `tls_dir`, created on first use.
pub fn ensure_service_account_key(tls_dir: &Path) -> Result<String, PkiError> {
    let path = tls_dir.join(SERVICE_ACCOUNT_KEY);
    match std::fs::read_to_string(&path) {
        Ok(pem) => return Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PkiError::io(&path, "reading", e)),
    }
    let key = rcgen::KeyPair::generate()
        .map_err(|e| PkiError::Generate(format!("generating the service account key: {e}")))?;
    let pem = key.serialize_pem();
    write_atomic(&path, pem.as_bytes(), 0o600)?;
    Ok(pem)
}

/// File name of the key Secrets are encrypted at rest with, in the server directory.
pub const ENCRYPTION_KEY: &str = "encryption.key";

/// The 32-byte key Secrets are encrypted with (stored base64), created on first use. Losing
/// it makes every stored Secret unreadable, so it is never rotated silently.
pub fn ensure_encryption_key(server_dir: &Path) -> Result<Vec<u8>, PkiError> {
    use base64::Engine as _;
    let path = server_dir.join(ENCRYPTION_KEY);
    let engine = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return engine
                .decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    PkiError::io(
                        &path,
                        "reading",
                        std::io::Error::other("not a base64 32-byte key"),
                    )
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PkiError::io(&path, "reading", e)),
    }
    let mut key = vec![0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key[..]);
    write_atomic(
        &path,
        format!("{}\n", engine.encode(&key)).as_bytes(),
        0o600,
    )?;
    Ok(key)
}
