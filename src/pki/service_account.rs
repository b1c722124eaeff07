//! The key that signs service account tokens: an ECDSA P-256 key in PKCS#8 PEM, created
//! once next to the CA and kept (tokens signed with it stay valid across restarts).

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
