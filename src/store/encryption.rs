//! Encryption at rest of chosen keys (Secrets): values are sealed with AES-256-GCM before
//! they are proposed — so the Raft log, snapshots and the database only ever hold
//! ciphertext — and opened when read or watched. The stored form is upstream's
//! `k8s:enc:aesgcm:v1:<key name>:<nonce><ciphertext+tag>`, with the store key as
//! associated data so a value cannot be moved to another key. Values written before
//! encryption was on (no prefix) are read as they are.

use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

/// Length of an encryption key.
pub const KEY_LEN: usize = 32;
const PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// Seals and opens the values of keys under some prefixes.
pub struct Encryption {
    key_name: String,
    key: LessSafeKey,
    prefixes: Vec<String>,
    random: SystemRandom,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Encryption")
            .field("key_name", &self.key_name)
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

impl Encryption {
    /// Encrypts the values of keys under `prefixes` with `key` (32 bytes) named `key_name`.
    pub fn new(
        key_name: &str,
        key: &[u8],
        prefixes: Vec<String>,
    ) -> Result<Encryption, StoreError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| {
            StoreError::Internal(format!("the encryption key must be {KEY_LEN} bytes"))
        })?;
        Ok(Encryption {
            key_name: key_name.to_string(),
            key: LessSafeKey::new(key),
            prefixes,
            random: SystemRandom::new(),
        })
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// What to store for `value` at `key`.
    pub fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        if !self.covers(key) {
            return Ok(value);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::Internal("no randomness for an encryption nonce".into()))?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Internal(format!("encrypting {key} failed")))?;
        let header = format!("{PREFIX}{}:", self.key_name);
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Bytes::from(out))
    }

    /// The plain value of what is stored at `key`.
    pub fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(stored);
        };
        let failed =
            |why: &str| StoreError::Internal(format!("cannot decrypt the value of {key}: {why}"));
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| failed("no key name"))?;
        let (name, rest) = (&rest[..colon], &rest[colon + 1..]);
        if name != self.key_name.as_bytes() {
            return Err(failed(&format!(
                "it was encrypted with key {:?}, which this server does not have",
                String::from_utf8_lossy(name)
            )));
        }
        if rest.len() < NONCE_LEN {
            return Err(failed("truncated"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&rest[..NONCE_LEN])
            .map_err(|_| failed("bad nonce"))?;
        let mut sealed = rest[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut sealed)
            .map_err(|_| failed("authentication failed (wrong key or tampered data)"))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encryption(key: u8) -> Encryption {
        Encryption::new(
            "key1",
            &[key; KEY_LEN],
            vec!["/registry/core/secrets/".into()],
        )
        .unwrap()
    }

    #[test]
    fn secrets_are_sealed_and_other_keys_are_not() {
        let e = encryption(7);
        let key = "/registry/core/secrets/default/db";
        let plain = Bytes::from_static(br#"{"data":{"password":"czNjcmV0"}}"#);
        let sealed = e.seal(key, plain.clone()).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(8).any(|w| w == b"czNjcmV0"));
        assert_eq!(e.open(key, sealed.clone()).unwrap(), plain);
        // Another key, another place, tampering: refused, never garbage.
        assert!(encryption(8).open(key, sealed.clone()).is_err());
        assert!(e
            .open("/registry/core/secrets/default/other", sealed.clone())
            .is_err());
        let mut tampered = sealed.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(e.open(key, Bytes::from(tampered)).is_err());
        // Not covered, or written before encryption: as is.
        let cm = "/registry/core/configmaps/default/x";
        assert_eq!(e.seal(cm, plain.clone()).unwrap(), plain);
        assert_eq!(e.open(key, plain.clone()).unwrap(), plain);
    }
}
