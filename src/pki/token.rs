//! Join tokens, in k3s' format: `K10<sha256 of the CA certificate PEM>::server:<secret>`. The
//! hash lets a joining node verify the server it reaches before trusting it; the secret
//! proves the node may join. The secret is never logged.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::files::{ensure_dir, read_optional, write_atomic};
use super::PkiError;

const PREFIX: &str = "K10";
const SEPARATOR: &str = "::server:";

/// A full join token: `K10<ca_hash>::server:<secret>`. `Display` prints the whole token
/// (it is what users copy); `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate's PEM bytes.
    pub ca_hash: String,
    /// The shared secret; non-empty, no `:` and no whitespace.
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
    /// Parses a full token (surrounding whitespace ignored). Bare secrets are not tokens:
    /// [`ensure_token`] handles those.
    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        // The messages never quote the input: it may hold a secret.
        let invalid = |why: &str| PkiError::Token(format!("not a valid kedge token ({why})"));
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("no K10 prefix"))?;
        let (hash, secret) = rest
            .split_once(SEPARATOR)
            .ok_or_else(|| invalid("no ::server: part"))?;
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

    /// The hash a token carries for the CA certificate `ca_pem` (of its exact PEM bytes, as
    /// k3s computes it).
    pub fn ca_hash_of(ca_pem: &str) -> String {
        hex::encode(Sha256::digest(ca_pem.as_bytes()))
    }

    /// Checks that the token was made for the CA `ca_pem`.
    pub fn verify_ca(&self, ca_pem: &str) -> Result<(), PkiError> {
        let actual = Self::ca_hash_of(ca_pem);
        // Not secret material, but compare without an early exit anyway.
        let same = actual.len() == self.ca_hash.len()
            && actual
                .bytes()
                .zip(self.ca_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(PkiError::Token(
                "the token's CA hash does not match this cluster's CA certificate".to_string(),
            ))
        }
    }
}

/// Reads `<server_dir>/token`, or creates it (mode 0600, `server_dir` 0700 if missing) on
/// first start. `requested` is the `--token` flag: `None` → a random 32-hex-digit secret; a
/// full K10 token → its CA hash must match `ca_pem` and its secret is used; anything else is
/// the secret itself (non-empty, no `:`, no whitespace). If the file exists and `requested`
/// gives a different secret, that is an error: the data dir already belongs to another
/// token.
pub fn ensure_token(
    server_dir: &Path,
    ca_pem: &str,
    requested: Option<&str>,
) -> Result<JoinToken, PkiError> {
    let path = server_dir.join("token");
    let requested_secret = match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(full) if full.starts_with(PREFIX) && full.contains(SEPARATOR) => {
            let token = JoinToken::parse(full)?;
            token.verify_ca(ca_pem).map_err(|_| {
                PkiError::Token(
                    "the --token was made for another cluster: its CA hash does not match this \
                     server's CA"
                        .into(),
                )
            })?;
            Some(token.secret)
        }
        Some(secret) if valid_secret(secret) => Some(secret.to_string()),
        Some(_) => {
            return Err(PkiError::Token(
                "--token must be a K10 token or a secret without ':' or whitespace".to_string(),
            ))
        }
    };
    if let Some(existing) = read_optional(&path)? {
        let token = JoinToken::parse(&existing).map_err(|e| e.in_file(&path))?;
        token.verify_ca(ca_pem).map_err(|e| e.in_file(&path))?;
        if requested_secret
            .as_ref()
            .is_some_and(|s| *s != token.secret)
        {
            return Err(PkiError::Token(format!(
                "the data dir already has a different token ({}); start without --token, or \
                 with the token it holds",
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
    ensure_dir(server_dir, 0o700)?;
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "created the join token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn lower_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn generated_token_has_the_k3s_shape_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        let token = ensure_token(&server_dir, CA, None).unwrap();
        let text = token.to_string();
        // ^K10[0-9a-f]{64}::server:[0-9a-f]{32}$
        let rest = text.strip_prefix("K10").unwrap();
        let (hash, secret) = rest.split_once("::server:").unwrap();
        assert!(lower_hex(hash, 64), "{text}");
        assert!(lower_hex(secret, 32), "{text}");
        assert_eq!(hash, JoinToken::ca_hash_of(CA));
        assert_eq!(JoinToken::parse(&text).unwrap(), token);

        let file = server_dir.join("token");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), text);
        assert_eq!(ensure_token(&server_dir, CA, None).unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));

        let other = tempfile::tempdir().unwrap();
        let again = ensure_token(other.path(), CA, None).unwrap();
        assert_ne!(again.secret, token.secret, "secrets are random");
    }

    #[test]
    fn requested_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path(), CA, Some("s3cret")).unwrap();
        assert_eq!(token.secret, "s3cret");
        assert_eq!(ensure_token(dir.path(), CA, Some("s3cret")).unwrap(), token);
        let err = ensure_token(dir.path(), CA, Some("other"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already has a different token"), "{err}");
        assert!(
            !err.contains("s3cret"),
            "the secret is not in errors: {err}"
        );
        assert_eq!(
            ensure_token(dir.path(), CA, Some(&token.to_string())).unwrap(),
            token
        );

        let fresh = tempfile::tempdir().unwrap();
        let foreign = format!("K10{}::server:abc", "0".repeat(64));
        let err = ensure_token(fresh.path(), CA, Some(&foreign)).unwrap_err();
        assert!(err.to_string().contains("another cluster"), "{err}");
        assert!(ensure_token(fresh.path(), CA, Some("has space")).is_err());
        assert!(ensure_token(fresh.path(), CA, Some("a:b")).is_err());
        assert!(!fresh.path().join("token").exists());

        let full = format!("K10{}::server:abc", JoinToken::ca_hash_of(CA));
        assert_eq!(
            ensure_token(fresh.path(), CA, Some(&full)).unwrap().secret,
            "abc"
        );
    }

    #[test]
    fn parse_and_verify() {
        assert!(JoinToken::parse("K10abc::server:x").is_err());
        assert!(JoinToken::parse("s3cret").is_err());
        assert!(JoinToken::parse(&format!("K10{}::server:", "a".repeat(64))).is_err());
        assert!(JoinToken::parse(&format!("K10{}::node:x", "a".repeat(64))).is_err());
        let upper = format!("K10{}::server:x", JoinToken::ca_hash_of(CA).to_uppercase());
        let token = JoinToken::parse(&upper).unwrap();
        assert!(token.verify_ca(CA).is_ok());
        assert!(token.verify_ca("another CA").is_err());
    }

    #[test]
    fn a_stored_token_for_another_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        ensure_token(dir.path(), CA, None).unwrap();
        let err = ensure_token(dir.path(), "another CA", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("token") && err.contains("CA hash"), "{err}");
    }
}
