//! Service account tokens: JWTs signed with the cluster's service account key (ES256),
//! issued through `serviceaccounts/<name>/token` and accepted as bearer tokens while the
//! service account (and the pod they are bound to, if any) still exists with the same uid.

use std::sync::Arc;

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{TokenAuthenticator, UserInfo};

/// Group of every service account.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// Shortest lifetime a client may ask for, as upstream.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// What a token request gets when it names no lifetime.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the service account key is not a usable ECDSA P-256 PKCS#8 key: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("reading the public half of the service account key: {0}")]
    PublicKey(String),
    #[error("signing the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// What a token is about: the account, and optionally the object it is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// (kind, name, uid) of a Pod or Secret the token dies with.
    pub bound: Option<(String, String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reference {
    name: String,
    uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<Reference>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

/// Checks that a token's subject still exists: the account (and bound object) by uid.
pub trait SubjectLookup: Send + Sync {
    fn exists<'a>(&'a self, subject: &'a Subject) -> BoxFuture<'a, bool>;
}

/// Issues and verifies service account tokens.
pub struct ServiceAccountTokens {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    lookup: Arc<dyn SubjectLookup>,
}

impl ServiceAccountTokens {
    /// Tokens signed with `key_pem`, issued by `https://kubernetes.default.svc.<domain>`.
    pub fn new(
        key_pem: &str,
        cluster_domain: &str,
        lookup: Arc<dyn SubjectLookup>,
    ) -> Result<ServiceAccountTokens, TokenError> {
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(TokenError::Key)?;
        // ring verifies ECDSA with the raw (uncompressed point) public key.
        let public = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| TokenError::PublicKey(e.to_string()))?
            .public_key_raw()
            .to_vec();
        Ok(ServiceAccountTokens {
            issuer: format!("https://kubernetes.default.svc.{cluster_domain}"),
            encoding,
            decoding: DecodingKey::from_ec_der(&public),
            lookup,
        })
    }

    /// The issuer, also the audience tokens get when none is asked for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `subject`, valid for `audiences` from now for `seconds`; with its expiry
    /// (Unix seconds).
    pub fn issue(
        &self,
        subject: &Subject,
        audiences: Vec<String>,
        seconds: i64,
    ) -> Result<(String, i64), TokenError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let reference = |name: &str, uid: &str| Reference {
            name: name.to_string(),
            uid: uid.to_string(),
        };
        let bound = subject.bound.as_ref();
        let bound_as = |kind: &str| {
            bound
                .filter(|(k, _, _)| k == kind)
                .map(|(_, name, uid)| reference(name, uid))
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                subject.namespace, subject.name
            ),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaims {
                namespace: subject.namespace.clone(),
                serviceaccount: reference(&subject.name, &subject.uid),
                pod: bound_as("Pod"),
                secret: bound_as("Secret"),
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(TokenError::Sign)?;
        Ok((token, claims.exp))
    }

    /// The subject of a valid token for one of `audiences` (the issuer when empty).
    fn verify(&self, token: &str) -> Option<Subject> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        let k = claims.kubernetes;
        let bound = k
            .pod
            .map(|p| ("Pod".to_string(), p.name, p.uid))
            .or_else(|| k.secret.map(|s| ("Secret".to_string(), s.name, s.uid)));
        Some(Subject {
            namespace: k.namespace,
            name: k.serviceaccount.name,
            uid: k.serviceaccount.uid,
            bound,
        })
    }
}

impl TokenAuthenticator for ServiceAccountTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<UserInfo>> {
        Box::pin(async move {
            let subject = self.verify(token)?;
            if !self.lookup.exists(&subject).await {
                return None;
            }
            Some(UserInfo {
                name: format!(
                    "system:serviceaccount:{}:{}",
                    subject.namespace, subject.name
                ),
                groups: vec![
                    SERVICE_ACCOUNTS_GROUP.to_string(),
                    format!("{SERVICE_ACCOUNTS_GROUP}:{}", subject.namespace),
                ],
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Exists(bool);

    impl SubjectLookup for Exists {
        fn exists<'a>(&'a self, _: &'a Subject) -> BoxFuture<'a, bool> {
            Box::pin(async move { self.0 })
        }
    }

    fn tokens(exists: bool) -> ServiceAccountTokens {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        ServiceAccountTokens::new(&key, "cluster.local", Arc::new(Exists(exists))).unwrap()
    }

    #[tokio::test]
    async fn tokens_authenticate_while_their_account_exists() {
        let subject = Subject {
            namespace: "apps".into(),
            name: "builder".into(),
            uid: "u1".into(),
            bound: None,
        };
        let issuer = tokens(true);
        let (token, _) = issuer
            .issue(&subject, vec![issuer.issuer().to_string()], 3600)
            .unwrap();
        let user = issuer.authenticate(&token).await.unwrap();
        assert_eq!(user.name, "system:serviceaccount:apps:builder");
        assert!(user.in_group("system:serviceaccounts:apps"));
        // Another audience, another key, a deleted account, an expired token: refused.
        let (other_audience, _) = issuer.issue(&subject, vec!["vault".into()], 3600).unwrap();
        assert!(issuer.authenticate(&other_audience).await.is_none());
        assert!(tokens(true).authenticate(&token).await.is_none());
        let deleted = tokens(false);
        let (token, _) = deleted
            .issue(&subject, vec![deleted.issuer().into()], 3600)
            .unwrap();
        assert!(deleted.authenticate(&token).await.is_none());
        let (expired, _) = issuer
            .issue(&subject, vec![issuer.issuer().into()], -120)
            .unwrap();
        assert!(issuer.authenticate(&expired).await.is_none());
    }
}
