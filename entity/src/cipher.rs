//! Encryption of secret columns (webhook secrets, OAuth tokens, subscription signing secrets).
//!
//! ChaCha20-Poly1305 with a random 96-bit nonce per value. The stored text is
//! `v1.<key id>.<base64(nonce ‖ ciphertext)>`: the key id (first 8 hex digits of SHA-256 of the
//! key) is kept with every value so that keys can be rotated, a value written under an old key
//! still being readable while that key is configured as a previous key.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// Why a stored secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    /// The text is not of the form `v1.<key id>.<base64>`.
    #[error("the stored secret is not in the expected format")]
    Malformed,
    /// No configured key has the value's key id.
    #[error("the stored secret was encrypted with key {0}, which is not configured")]
    UnknownKey(String),
    /// The value does not authenticate under the key (tampered, or a wrong key).
    #[error("the stored secret does not decrypt under its key")]
    Tampered,
}

/// Encrypts and decrypts secret columns. Cheap to clone.
#[derive(Clone)]
pub struct Cipher {
    current: (String, ChaCha20Poly1305),
    previous: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("key_id", &self.current.0)
            .finish_non_exhaustive()
    }
}

impl Cipher {
    /// A cipher writing with `key` and reading values written with `key` or any of `previous`.
    pub fn new(key: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        let entry = |key: &[u8; 32]| (key_id(key), ChaCha20Poly1305::new(Key::from_slice(key)));
        Self {
            current: entry(key),
            previous: previous.iter().map(entry).collect(),
        }
    }

    /// The id of the key new values are written with.
    pub fn key_id(&self) -> &str {
        &self.current.0
    }

    /// Encrypts `plaintext` under the current key.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let (key_id, aead) = &self.current;
        // Encryption with a valid key and nonce only fails for inputs beyond 2^38 bytes.
        let ciphertext = match aead.encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes()) {
            Ok(ciphertext) => ciphertext,
            Err(_) => unreachable!(
                "ChaCha20-Poly1305 refused a plaintext of {} bytes",
                plaintext.len()
            ),
        };
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!(
            "{VERSION}.{key_id}.{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sealed)
        )
    }

    /// Decrypts a value written by [`Cipher::encrypt`].
    pub fn decrypt(&self, stored: &str) -> Result<String, CipherError> {
        let mut parts = stored.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(sealed)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CipherError::Malformed);
        };
        let aead = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| id == key_id)
            .map(|(_, aead)| aead)
            .ok_or_else(|| CipherError::UnknownKey(key_id.to_owned()))?;
        let sealed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .map_err(|_| CipherError::Malformed)?;
        if sealed.len() < NONCE_LEN {
            return Err(CipherError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = aead
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| CipherError::Tampered)?;
        String::from_utf8(plaintext).map_err(|_| CipherError::Tampered)
    }
}

fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_is_not_stored_in_plaintext() {
        let cipher = Cipher::new(&[7; 32], &[]);
        let stored = cipher.encrypt("whsec_very-secret");
        assert!(!stored.contains("very-secret"));
        assert!(stored.starts_with(&format!("v1.{}.", cipher.key_id())));
        assert_eq!(
            cipher.decrypt(&stored).expect("decrypts"),
            "whsec_very-secret"
        );
        assert_ne!(stored, cipher.encrypt("whsec_very-secret"), "nonces differ");
    }

    #[test]
    fn values_written_under_a_previous_key_stay_readable() {
        let old = Cipher::new(&[1; 32], &[]);
        let stored = old.encrypt("token");
        let rotated = Cipher::new(&[2; 32], &[[1; 32]]);
        assert_eq!(rotated.decrypt(&stored).expect("old key"), "token");
        let without_old = Cipher::new(&[2; 32], &[]);
        assert!(matches!(
            without_old.decrypt(&stored),
            Err(CipherError::UnknownKey(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let cipher = Cipher::new(&[7; 32], &[]);
        let mut stored = cipher.encrypt("token").into_bytes();
        let last = stored.len() - 2;
        stored[last] = if stored[last] == b'A' { b'B' } else { b'A' };
        let stored = String::from_utf8(stored).expect("ascii");
        assert!(matches!(
            cipher.decrypt(&stored),
            Err(CipherError::Tampered | CipherError::Malformed)
        ));
        assert!(matches!(
            cipher.decrypt("plaintext"),
            Err(CipherError::Malformed)
        ));
    }
}
