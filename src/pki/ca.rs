//! The cluster CA and the leaf certificates it signs.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::files::{read_optional, write_atomic};
use super::PkiError;

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKeyPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertKeyPair {
    /// Loads `<name>.crt` and `<name>.key` from `dir`; `None` if either is missing.
    pub fn load(dir: &Path, name: &str) -> Result<Option<CertKeyPair>, PkiError> {
        let cert = read_optional(&dir.join(format!("{name}.crt")))?;
        let key = read_optional(&dir.join(format!("{name}.key")))?;
        Ok(cert.zip(key).map(|(cert_pem, key_pem)| CertKeyPair { cert_pem, key_pem }))
    }

    /// Saves `<name>.crt` (0644) and `<name>.key` (0600) in `dir`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), PkiError> {
        write_atomic(&dir.join(format!("{name}.key")), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(format!("{name}.crt")), self.cert_pem.as_bytes(), 0o644)
    }

    /// The certificate in DER.
    pub fn der(&self) -> Result<Vec<u8>, PkiError> {
        pem_to_der(&self.cert_pem)
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> Result<OffsetDateTime, PkiError> {
        let der = self.der()?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(cert.validity().not_after.to_datetime())
    }

    /// The DNS names and IPs (as strings) the certificate is valid for.
    pub fn sans(&self) -> Result<Vec<String>, PkiError> {
        let der = self.der()?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")),
                            16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")),
                            _ => continue,
                        };
                        sans.push(ip.to_string());
                    }
                    _ => {}
                }
            }
        }
        Ok(sans)
    }
}

pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::Parse(format!("certificate PEM: {e}")))
}

/// The cluster CA (ECDSA P-256) that signs every serving and client certificate.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks of other machines that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

fn san_entries(sans: &[String]) -> Result<Vec<SanType>, PkiError> {
    sans.iter()
        .map(|san| match san.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => san
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| PkiError::Generate(format!("subject alternative name {san:?}: {e}"))),
        })
        .collect()
}

impl Ca {
    /// A new CA, valid for [`CA_VALIDITY`].
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA parameters"))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kedge-ca@{now}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(rcgen_error("signing the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads `ca.crt` and `ca.key` from `tls_dir`; `None` if absent.
    pub fn load(tls_dir: &Path) -> Result<Option<Ca>, PkiError> {
        let Some(pair) = CertKeyPair::load(tls_dir, "ca")? else {
            return Ok(None);
        };
        let key = KeyPair::from_pem(&pair.key_pem)
            .map_err(|e| PkiError::Parse(format!("{}: {e}", tls_dir.join("ca.key").display())))?;
        let cert_der = pem_to_der(&pair.cert_pem)?;
        Ok(Some(Ca {
            cert_pem: pair.cert_pem,
            cert_der,
            key,
        }))
    }

    /// Saves `ca.crt` (0644) and `ca.key` (0600), creating `tls_dir` (0700) if needed.
    pub fn save(&self, tls_dir: &Path) -> Result<(), PkiError> {
        super::files::ensure_dir(tls_dir, 0o700)?;
        CertKeyPair {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key.serialize_pem(),
        }
        .save(tls_dir, "ca")
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[String],
        usages: &[ExtendedKeyUsagePurpose],
        valid_for: Duration,
    ) -> Result<CertKeyPair, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating a key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("certificate parameters"))?;
        params.subject_alt_names = san_entries(sans)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for organization in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *organization);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, valid_for);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error(common_name))?;
        Ok(CertKeyPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate (serverAuth only) for `sans` (IPs and DNS names).
    pub fn issue_serving(&self, common_name: &str, sans: &[String], valid_for: Duration) -> Result<CertKeyPair, PkiError> {
        self.issue(common_name, &[], sans, &[ExtendedKeyUsagePurpose::ServerAuth], valid_for)
    }

    /// A client certificate (clientAuth only): CN = user, one O per group, as Kubernetes'
    /// x509 authentication reads them.
    pub fn issue_client(&self, user: &str, groups: &[&str], valid_for: Duration) -> Result<CertKeyPair, PkiError> {
        self.issue(user, groups, &[], &[ExtendedKeyUsagePurpose::ClientAuth], valid_for)
    }

    /// A server-to-server identity: client and server usages.
    pub fn issue_peer(&self, user: &str, groups: &[&str], sans: &[String], valid_for: Duration) -> Result<CertKeyPair, PkiError> {
        self.issue(
            user,
            groups,
            sans,
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            valid_for,
        )
    }
}
