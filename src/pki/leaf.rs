//! A certificate with its private key, as stored in `<name>.crt` / `<name>.key`, and the
//! questions renewal asks about it (when does it expire, which names does it cover, does the
//! key belong to it, did our CA sign it).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{KeyPair, PublicKeyData};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::files::{read_optional, write_atomic};
use super::PkiError;

/// A certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertKeyPair {
    // A stray `{:?}` in a log line must not leak the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertKeyPair {
    /// Loads `<name>.crt` and `<name>.key` from `dir`; `None` if either is missing (a leaf
    /// can always be issued again).
    pub fn load(dir: &Path, name: &str) -> Result<Option<CertKeyPair>, PkiError> {
        let cert = read_optional(&dir.join(format!("{name}.crt")))?;
        let key = read_optional(&dir.join(format!("{name}.key")))?;
        Ok(cert
            .zip(key)
            .map(|(cert_pem, key_pem)| CertKeyPair { cert_pem, key_pem }))
    }

    /// Saves `<name>.key` (0600) and `<name>.crt` (0644) in `dir`, each atomically.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), PkiError> {
        let key_path = dir.join(format!("{name}.key"));
        write_atomic(&key_path, self.key_pem.as_bytes(), 0o600)?;
        let cert_path = dir.join(format!("{name}.crt"));
        write_atomic(&cert_path, self.cert_pem.as_bytes(), 0o644)
    }

    /// The (first) certificate in DER, as rustls and x509 parsers want it.
    pub fn der(&self) -> Result<Vec<u8>, PkiError> {
        pem_to_der(&self.cert_pem)
    }

    /// When the certificate expires; renewal compares it with [`super::RENEW_BEFORE`].
    pub fn not_after(&self) -> Result<OffsetDateTime, PkiError> {
        let der = self.der()?;
        let cert = parse_der(&der)?;
        Ok(cert.validity().not_after.to_datetime())
    }

    /// The DNS names and IP addresses (as strings, IPs in their canonical form) the
    /// certificate is valid for.
    pub fn sans(&self) -> Result<Vec<String>, PkiError> {
        let der = self.der()?;
        let cert = parse_der(&der)?;
        Ok(sans_of(&cert))
    }

    /// Whether `key_pem` is the private key of `cert_pem` (a crash or a hand edit could
    /// have paired them wrongly; rustls would then fail every handshake).
    pub(crate) fn key_matches(&self) -> Result<bool, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError::Parse(format!("private key: {e}")))?;
        let der = self.der()?;
        let cert = parse_der(&der)?;
        Ok(cert.public_key().raw == key.subject_public_key_info().as_slice())
    }

    /// Whether the CA whose certificate is `ca_der` signed this certificate.
    pub(crate) fn issued_by(&self, ca_der: &[u8]) -> Result<bool, PkiError> {
        let der = self.der()?;
        let cert = parse_der(&der)?;
        let ca = parse_der(ca_der)?;
        Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
    }
}

/// The first certificate of a PEM text, in DER.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::Parse(format!("certificate PEM: {e}")))
}

/// A DER certificate as PEM (base64 in 64-character lines, as RFC 7468 asks).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Parse(format!("certificate: {e}")))
}

fn sans_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        sans.push(IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        sans.push(IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    sans
}

/// What tests want to know about a certificate.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Inspected {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    pub sans: Vec<String>,
}

#[cfg(test)]
pub(crate) fn inspect(pem: &str) -> Inspected {
    let der = pem_to_der(pem).unwrap();
    let cert = parse_der(&der).unwrap();
    let strings =
        |attrs: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            attrs
                .map(|a| a.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
    let common_name = strings(&mut cert.subject().iter_common_name());
    let organizations = strings(&mut cert.subject().iter_organization());
    let eku = cert.extended_key_usage().unwrap();
    Inspected {
        common_name: common_name.join(","),
        organizations,
        server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
        is_ca: cert.is_ca(),
        sans: sans_of(&cert),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn save_and_load_round_trip_with_private_key_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let pair = ca
            .issue_serving("x", &["a.example".into()], Duration::from_secs(3600))
            .unwrap();
        assert_eq!(CertKeyPair::load(dir.path(), "x").unwrap(), None);
        pair.save(dir.path(), "x").unwrap();
        assert_eq!(
            CertKeyPair::load(dir.path(), "x").unwrap(),
            Some(pair.clone())
        );
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("x.key"), 0o600);
        assert_eq!(mode("x.crt"), 0o644);
        assert!(!format!("{pair:?}").contains(&pair.key_pem));
    }

    #[test]
    fn renewal_questions_are_answered() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let valid_for = Duration::from_secs(10 * 24 * 3600);
        let pair = ca
            .issue_serving(
                "x",
                &["10.0.0.1".into(), "::1".into(), "b".into()],
                valid_for,
            )
            .unwrap();
        assert_eq!(pair.sans().unwrap(), ["10.0.0.1", "::1", "b"]);
        let left = pair.not_after().unwrap() - OffsetDateTime::now_utc();
        assert!(
            left <= valid_for && left > valid_for - Duration::from_secs(60),
            "{left}"
        );
        assert!(pair.key_matches().unwrap());
        assert_eq!(
            der_to_pem(&pair.der().unwrap()),
            pair.cert_pem,
            "same PEM as rcgen"
        );
        assert!(pair.issued_by(ca.cert_der()).unwrap());
        assert!(!pair.issued_by(other.cert_der()).unwrap());
        let stranger = other.issue_serving("x", &[], valid_for).unwrap();
        let mixed = CertKeyPair {
            cert_pem: pair.cert_pem.clone(),
            key_pem: stranger.key_pem,
        };
        assert!(!mixed.key_matches().unwrap());
        assert!(CertKeyPair {
            cert_pem: "junk".into(),
            key_pem: String::new()
        }
        .der()
        .is_err());
    }
}
