//! Authentication: who is calling.
//!
//! Owns: turning a request's credentials into a [`UserInfo`] the way kube-apiserver does —
//! client certificates (CN is the user, each O a group; the TLS layer has already verified the
//! chain against the cluster CA and the clientAuth usage) and bearer tokens (through
//! [`TokenAuthenticator`]s, which later issues add: service account and bootstrap tokens).
//! Every authenticated user is in `system:authenticated`.
//!
//! Must not touch: what a user may do (authorization arrives with RBAC) or TLS itself.

pub mod service_account;

use std::sync::Arc;

use futures::future::BoxFuture;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The group every authenticated user belongs to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Reads the user of a client certificate the TLS handshake has verified: CN = user name,
/// O = groups. `None` for a certificate without a usable CN.
pub fn user_from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(AUTHENTICATED_GROUP.to_string());
    Some(UserInfo { name, groups })
}

/// Checks bearer tokens. `None` means "not mine or not valid".
pub trait TokenAuthenticator: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<UserInfo>>;
}

/// The authentication chain: a verified client certificate wins, then bearer tokens.
#[derive(Clone, Default)]
pub struct Authenticator {
    token_authenticators: Vec<Arc<dyn TokenAuthenticator>>,
}

impl Authenticator {
    pub fn new(token_authenticators: Vec<Arc<dyn TokenAuthenticator>>) -> Authenticator {
        Authenticator {
            token_authenticators,
        }
    }

    /// The caller of a request whose TLS peer presented `client_cert` (already verified) and
    /// whose `Authorization` header is `authorization`.
    pub async fn authenticate(
        &self,
        client_cert: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Option<UserInfo> {
        if let Some(user) = client_cert.and_then(user_from_certificate) {
            return Some(user);
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        for authenticator in &self.token_authenticators {
            if let Some(mut user) = authenticator.authenticate(token).await {
                if !user.in_group(AUTHENTICATED_GROUP) {
                    user.groups.push(AUTHENTICATED_GROUP.to_string());
                }
                return Some(user);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneToken;

    impl TokenAuthenticator for OneToken {
        fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<UserInfo>> {
            Box::pin(async move {
                (token == "good").then(|| UserInfo {
                    name: "robot".into(),
                    groups: vec![],
                })
            })
        }
    }

    fn client_cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *org);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[tokio::test]
    async fn certificates_and_tokens_authenticate() {
        let auth = Authenticator::new(vec![Arc::new(OneToken)]);
        let admin = auth
            .authenticate(
                Some(&client_cert("system:admin", &["system:masters"])),
                None,
            )
            .await
            .unwrap();
        assert_eq!(admin.name, "system:admin");
        assert_eq!(admin.groups, vec!["system:masters", AUTHENTICATED_GROUP]);

        let robot = auth.authenticate(None, Some("Bearer good")).await.unwrap();
        assert_eq!(robot.name, "robot");
        assert!(robot.in_group(AUTHENTICATED_GROUP));

        assert_eq!(auth.authenticate(None, Some("Bearer bad")).await, None);
        assert_eq!(
            auth.authenticate(None, Some("Basic Zm9vOmJhcg==")).await,
            None
        );
        assert_eq!(auth.authenticate(None, None).await, None);
        assert_eq!(
            auth.authenticate(Some(&client_cert("", &[])), None).await,
            None
        );
    }
}
