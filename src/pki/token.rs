//! Join tokens, in k3s' format: `K10<sha256 of the CA certificate PEM>::server:<secret>`. The
//! hash lets a joining node verify the server it reaches before trusting it; the secret
//! proves the node may join.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::files::{read_optional, write_atomic};
use super::PkiError;

const PREFIX: &str = "K10";
const SEPARATOR: &str = "::server:";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    // Never print the secret, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}{SEPARATOR}{}", self.ca_hash, self.secret)
    }
}

fn valid_secret(secret: &str) -> bool {
    !secret.is_empty() && !secret.contains(':') && !secret.chars().any(char::is_whitespace)
}

impl JoinToken {
    /// Parses a full token.
    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let invalid = |why: &str| PkiError::Token(format!("not a valid kedge token ({why})"));
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(|| invalid("no K10 prefix"))?;
        let (hash, secret) = rest.split_once(SEPARATOR).ok_or_else(|| invalid("no ::server: part"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("the CA hash is not 64 hex digits"));
        }
        if !valid_secret(secret) {
            return Err(invalid("empty or malformed secret"));
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }

    pub fn ca_hash_of(ca_pem: &str) -> String {
        hex::encode(Sha256::digest(ca_pem.as_bytes()))
    }

    /// Checks that the token was made for this CA.
    pub fn verify_ca(&self, ca_pem: &str) -> Result<(), PkiError> {
        let actual = Self::ca_hash_of(ca_pem);
        // Not secret material, but compare in constant time anyway.
        let same = actual.len() == self.ca_hash.len()
            && actual.bytes().zip(self.ca_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(PkiError::Token(
                "the token's CA hash does not match this cluster's CA certificate".to_string(),
            ))
        }
    }
}

/// Reads `<server_dir>/token`, or creates it (mode 0600) on first start from `requested`
/// (the `--token` flag: a full token for this CA, or a bare secret) or a random secret.
pub fn ensure_token(server_dir: &Path, ca_pem: &str, requested: Option<&str>) -> Result<JoinToken, PkiError> {
    let path = server_dir.join("token");
    let requested_secret = match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(full) if full.starts_with(PREFIX) && full.contains(SEPARATOR) => {
            let token = JoinToken::parse(full)?;
            token.verify_ca(ca_pem)?;
            Some(token.secret)
        }
        Some(secret) if valid_secret(secret) => Some(secret.to_string()),
        Some(_) => {
            return Err(PkiError::Token(
                "--token must be a K10 token or a secret without ':' or spaces".to_string(),
            ))
        }
    };
    if let Some(existing) = read_optional(&path)? {
        let token = JoinToken::parse(&existing).map_err(|e| PkiError::Token(format!("{}: {e}", path.display())))?;
        token.verify_ca(ca_pem)?;
        if requested_secret.as_ref().is_some_and(|s| *s != token.secret) {
            return Err(PkiError::Token(format!(
                "{} already holds a different token; start without --token, or with the token it holds",
                path.display()
            )));
        }
        return Ok(token);
    }
    let secret = requested_secret.unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::random();
        hex::encode(bytes)
    });
    let token = JoinToken {
        ca_hash: JoinToken::ca_hash_of(ca_pem),
        secret,
    };
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "created the join token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn generated_token_has_the_k3s_shape_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path(), CA, None).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("K10"));
        let (hash, secret) = text[3..].split_once("::server:").unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token(dir.path(), CA, None).unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn requested_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path(), CA, Some("s3cret")).unwrap();
        assert_eq!(token.secret, "s3cret");
        assert!(ensure_token(dir.path(), CA, Some("other")).is_err());
        assert_eq!(ensure_token(dir.path(), CA, Some(&token.to_string())).unwrap(), token);

        let fresh = tempfile::tempdir().unwrap();
        let foreign = format!("K10{}::server:abc", "0".repeat(64));
        assert!(ensure_token(fresh.path(), CA, Some(&foreign)).is_err());
        assert!(ensure_token(fresh.path(), CA, Some("has space")).is_err());
        assert!(JoinToken::parse("K10abc::server:x").is_err());
    }
}
