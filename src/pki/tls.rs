//! rustls configurations from the cluster's certificates, for the API server, the Raft
//! transport and every HTTPS client. The ring provider is passed explicitly, so nothing
//! depends on (or races to install) a process-wide default.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ca::Ca;
use super::leaf::{pem_to_der, CertKeyPair};
use super::PkiError;

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> PkiError + '_ {
    move |e| PkiError::Tls(format!("{what}: {e}"))
}

pub(super) fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pem_to_der(ca_pem)?))
        .map_err(tls_error("adding the cluster CA"))?;
    Ok(roots)
}

pub(super) fn chain_and_key(
    pair: &CertKeyPair,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("key PEM: {e}")))?;
    Ok((chain, key))
}

/// HTTP/2 first (watches multiplex), HTTP/1.1 for clients that only speak that.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Presents `serving`; asks clients for a certificate signed by `ca` but lets them in
/// without one (bearer tokens are checked after the handshake; no credentials at all gets
/// a 401 from the API, not a TLS failure).
pub fn server_config(ca: &Ca, serving: &CertKeyPair) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca.cert_pem())?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
    let (chain, key) = chain_and_key(serving)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error("serving certificate"))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client that trusts only the cluster CA (never the system roots: a cluster's server is
/// proven by its CA, not by a public one) and presents `client` when given.
pub fn client_config(ca_pem: &str, client: Option<&CertKeyPair>) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("protocol versions"))?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match client {
        Some(pair) => {
            let (chain, key) = chain_and_key(pair)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(tls_error("client certificate"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    async fn handshake(
        server: ServerConfig,
        client: ClientConfig,
    ) -> Result<Option<Vec<u8>>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connector = TlsConnector::from(Arc::new(client));
        let exchange = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let client_result = exchange.await;
        let server_result = accept.await.unwrap();
        client_result?;
        server_result
    }

    #[tokio::test]
    async fn client_certificates_from_the_cluster_ca_are_accepted_and_others_refused() {
        let ca = Ca::generate().unwrap();
        let serving = ca
            .issue_serving(
                "kube-apiserver",
                &["localhost".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let admin = ca
            .issue_client(
                "system:admin",
                &["system:masters"],
                Duration::from_secs(3600),
            )
            .unwrap();
        let server = || server_config(&ca, &serving).unwrap();

        let peer = handshake(
            server(),
            client_config(ca.cert_pem(), Some(&admin)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(peer, Some(admin.der().unwrap()));

        // Several groups (several O attributes, see `subject`) still verify.
        let jane = ca
            .issue_client(
                "jane",
                &["dev", "ops", "system:authenticated"],
                Duration::from_secs(3600),
            )
            .unwrap();
        let seen = handshake(server(), client_config(ca.cert_pem(), Some(&jane)).unwrap())
            .await
            .unwrap();
        assert_eq!(seen, Some(jane.der().unwrap()));

        let anonymous = handshake(server(), client_config(ca.cert_pem(), None).unwrap())
            .await
            .unwrap();
        assert_eq!(
            anonymous, None,
            "no certificate is allowed at the TLS layer"
        );

        let other_ca = Ca::generate().unwrap();
        let stranger = other_ca
            .issue_client("mallory", &["system:masters"], Duration::from_secs(3600))
            .unwrap();
        assert!(handshake(
            server(),
            client_config(ca.cert_pem(), Some(&stranger)).unwrap()
        )
        .await
        .is_err());

        // A client that trusts another CA refuses this server.
        assert!(
            handshake(server(), client_config(other_ca.cert_pem(), None).unwrap())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn peer_certificates_serve_and_call() {
        let ca = Ca::generate().unwrap();
        let peer = ca
            .issue_peer(
                "kedge-server:a",
                &[crate::pki::SERVER_GROUP],
                &["localhost".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let server = server_config(&ca, &peer).unwrap();
        let client = client_config(ca.cert_pem(), Some(&peer)).unwrap();
        assert_eq!(
            server.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(client.alpn_protocols, server.alpn_protocols);
        let seen = handshake(server, client).await.unwrap();
        assert_eq!(seen, Some(peer.der().unwrap()));
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let ca = Ca::generate().unwrap();
        let junk = CertKeyPair {
            cert_pem: "junk".into(),
            key_pem: "junk".into(),
        };
        assert!(matches!(server_config(&ca, &junk), Err(PkiError::Parse(_))));
        assert!(client_config("junk", None).is_err());
        assert!(client_config(ca.cert_pem(), Some(&junk)).is_err());
    }
}

/// Accepts any server certificate; the handshake signature is still verified. Only where
/// upstream does the same: fetching the CA before it is checked against a join token's hash,
/// and HTTPS probes (which never verify).
#[derive(Debug)]
pub struct UnverifiedServer(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
