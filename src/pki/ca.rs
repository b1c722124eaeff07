//! The cluster CA and the leaf certificates it signs.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::files::{ensure_dir, read_optional};
use super::leaf::{der_to_pem, parse_der, pem_to_der, CertKeyPair};
use super::subject::resign_with_subject;
use super::PkiError;

/// How long the CA is valid: ten years, like k3s, so it outlives any edge box's deployment
/// while leaves (one year) are renewed at start.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Slack for machines whose clocks run behind the one that issued a certificate.
const CLOCK_SKEW: time::Duration = time::Duration::hours(1);

/// The one cluster CA (ECDSA P-256, CN `kedge-ca@<unix-time>`) that signs every serving,
/// client and peer certificate; its hash is in the join token.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    // Never print the signing key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate(format!("{what}: {e}"))
}

fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + valid_for;
}

/// Strings that parse as an IP address become IP SANs, the rest DNS names.
fn san_entries(sans: &[String]) -> Result<Vec<SanType>, PkiError> {
    sans.iter()
        .map(|san| match san.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => {
                san.as_str().try_into().map(SanType::DnsName).map_err(|e| {
                    PkiError::Generate(format!("subject alternative name {san:?}: {e}"))
                })
            }
        })
        .collect()
}

impl Ca {
    /// A new CA, valid for [`CA_VALIDITY`].
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA parameters"))?;
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
        set_validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("signing the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads `ca.crt` and `ca.key` from `tls_dir`; `None` if neither exists. Only one of
    /// them, a key that does not belong to the certificate, or a certificate that is not a
    /// CA is an error: replacing the CA silently would orphan every certificate and token
    /// it stands behind.
    pub fn load(tls_dir: &Path) -> Result<Option<Ca>, PkiError> {
        let cert_path = tls_dir.join("ca.crt");
        let key_path = tls_dir.join("ca.key");
        let (cert_pem, key_pem) = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(incomplete(&cert_path, &key_path)),
            (None, Some(_)) => return Err(incomplete(&key_path, &cert_path)),
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Parse(format!("private key: {e}")).in_file(&key_path))?;
        let cert_der = pem_to_der(&cert_pem).map_err(|e| e.in_file(&cert_path))?;
        let pair = CertKeyPair { cert_pem, key_pem };
        if !pair.key_matches().map_err(|e| e.in_file(&cert_path))? {
            return Err(PkiError::Parse(format!(
                "{} is not the key of this certificate",
                key_path.display()
            ))
            .in_file(&cert_path));
        }
        if !parse_der(&cert_der)
            .map_err(|e| e.in_file(&cert_path))?
            .is_ca()
        {
            return Err(PkiError::Parse("not a CA certificate".into()).in_file(&cert_path));
        }
        Ok(Some(Ca {
            cert_pem: pair.cert_pem,
            cert_der,
            key,
        }))
    }

    /// Saves `ca.key` (0600) and `ca.crt` (0644) atomically, creating `tls_dir` (0700) if
    /// needed.
    pub fn save(&self, tls_dir: &Path) -> Result<(), PkiError> {
        ensure_dir(tls_dir, 0o700)?;
        CertKeyPair {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key.serialize_pem(),
        }
        .save(tls_dir, "ca")
    }

    /// The CA certificate in PEM: what clients trust and the join token hashes.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER, for trust stores.
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
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_error("certificate parameters"))?;
        params.subject_alt_names = san_entries(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for organization in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *organization);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, valid_for);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error(common_name))?;
        let cert_pem = if organizations.len() > 1 {
            // rcgen keeps one O only; see `subject`.
            let der = resign_with_subject(cert.der(), common_name, organizations, &self.key)?;
            der_to_pem(&der)
        } else {
            cert.pem()
        };
        Ok(CertKeyPair {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate (serverAuth only, so it cannot be used to log in) for `sans`:
    /// strings that parse as an IP become IP SANs, the rest DNS names.
    pub fn issue_serving(
        &self,
        common_name: &str,
        sans: &[String],
        valid_for: Duration,
    ) -> Result<CertKeyPair, PkiError> {
        let usages = [ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(common_name, &[], sans, &usages, valid_for)
    }

    /// A client certificate (clientAuth only): CN = user, one O per group, as Kubernetes'
    /// x509 authentication reads them.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        valid_for: Duration,
    ) -> Result<CertKeyPair, PkiError> {
        let usages = [ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(user, groups, &[], &usages, valid_for)
    }

    /// A kubelet's serving certificate, as upstream's kubelet gets one through a CSR: CN
    /// `system:node:<node>`, O `system:nodes`, serverAuth only, for the node's name and
    /// addresses (what the API server dials).
    pub fn issue_kubelet_serving(
        &self,
        node: &str,
        sans: &[String],
        valid_for: Duration,
    ) -> Result<CertKeyPair, PkiError> {
        let usages = [ExtendedKeyUsagePurpose::ServerAuth];
        let common_name = format!("{}{node}", super::NODE_USER_PREFIX);
        self.issue(
            &common_name,
            &[super::NODES_GROUP],
            sans,
            &usages,
            valid_for,
        )
    }

    /// A server-to-server identity with both usages: a server presents it when it serves
    /// its peers and when it calls them.
    pub fn issue_peer(
        &self,
        user: &str,
        groups: &[&str],
        sans: &[String],
        valid_for: Duration,
    ) -> Result<CertKeyPair, PkiError> {
        let usages = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(user, groups, sans, &usages, valid_for)
    }
}

fn incomplete(present: &Path, missing: &Path) -> PkiError {
    PkiError::Incomplete {
        present: present.display().to_string(),
        missing: missing.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::pki::leaf::inspect;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generate_save_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("server/tls");
        assert!(Ca::load(&tls).unwrap().is_none());
        let ca = Ca::generate().unwrap();
        ca.save(&tls).unwrap();
        let loaded = Ca::load(&tls).unwrap().expect("saved CA loads");
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(
            std::fs::read_to_string(tls.join("ca.crt")).unwrap(),
            ca.cert_pem()
        );
        assert_eq!(mode(&tls.join("ca.key")), 0o600);
        assert_eq!(mode(&tls.join("ca.crt")), 0o644);
        assert_eq!(mode(&tls), 0o700);
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

        let info = inspect(ca.cert_pem());
        assert!(info.is_ca);
        assert!(info.common_name.starts_with("kedge-ca@"), "{info:?}");
        let left = CertKeyPair {
            cert_pem: ca.cert_pem().into(),
            key_pem: String::new(),
        }
        .not_after()
        .unwrap()
            - OffsetDateTime::now_utc();
        assert!(left > CA_VALIDITY - Duration::from_secs(60) && left <= CA_VALIDITY);

        // The loaded CA signs leaves the original's certificate verifies.
        let leaf = loaded
            .issue_client("u", &[], Duration::from_secs(60))
            .unwrap();
        assert!(leaf.issued_by(ca.cert_der()).unwrap());
    }

    #[test]
    fn half_a_ca_or_a_foreign_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        ca.save(dir.path()).unwrap();
        let key = std::fs::read(dir.path().join("ca.key")).unwrap();

        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = Ca::load(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");

        Ca::generate().unwrap().save(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca.key"), key).unwrap();
        let err = Ca::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt") && err.contains("not the key"),
            "{err}"
        );

        std::fs::write(dir.path().join("ca.crt"), "garbage").unwrap();
        let err = Ca::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }

    #[test]
    fn leaves_carry_the_asked_usages_names_and_sans() {
        let ca = Ca::generate().unwrap();
        let hour = Duration::from_secs(3600);
        let sans = vec![
            "10.43.0.1".to_string(),
            "fd00::1".into(),
            "kubernetes".into(),
        ];

        let serving = inspect(&ca.issue_serving("api", &sans, hour).unwrap().cert_pem);
        assert!(serving.server_auth && !serving.client_auth, "{serving:?}");
        assert!(!serving.is_ca);
        assert_eq!(serving.sans, ["10.43.0.1", "fd00::1", "kubernetes"]);

        let client = inspect(
            &ca.issue_client("jane", &["dev", "ops"], hour)
                .unwrap()
                .cert_pem,
        );
        assert!(client.client_auth && !client.server_auth, "{client:?}");
        assert_eq!(client.common_name, "jane");
        assert_eq!(client.organizations, ["dev", "ops"]);
        assert!(client.sans.is_empty());

        let peer = inspect(
            &ca.issue_peer("kedge-server:a", &["kedge:servers"], &sans, hour)
                .unwrap()
                .cert_pem,
        );
        assert!(peer.client_auth && peer.server_auth, "{peer:?}");
        assert_eq!(peer.organizations, ["kedge:servers"]);
        assert_eq!(peer.sans.len(), 3);

        assert!(ca
            .issue_serving("api", &["bad\u{e9}name".into()], hour)
            .is_err());
    }
}
