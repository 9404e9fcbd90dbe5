//! Jira webhook deliveries as they arrive: signature verification and the deduplication key.
//!
//! Jira admin webhooks configured with a secret sign the exact request body with HMAC-SHA256 and
//! send it as `X-Hub-Signature: sha256=<hex>`. Jira retries a delivery with the same
//! `X-Atlassian-Webhook-Identifier`, which is what makes deduplication possible.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header Jira signs webhook bodies in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature";

/// The header that identifies one delivery across Jira's retries of it.
pub const IDENTIFIER_HEADER: &str = "x-atlassian-webhook-identifier";

/// Longest `X-Atlassian-Webhook-Identifier` used as is; longer ones are hashed (Jira sends UUIDs).
const MAX_IDENTIFIER_LEN: usize = 128;

/// Why a webhook's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The connection has a secret but the request carries no `X-Hub-Signature`.
    #[error("the X-Hub-Signature header is missing")]
    Missing,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("the X-Hub-Signature header is not of the form sha256=<hex>")]
    Malformed,
    /// The signature does not match the body.
    #[error("the X-Hub-Signature does not match the body")]
    Mismatch,
}

/// Checks `X-Hub-Signature` against the HMAC-SHA256 of the exact raw `body` under `secret`.
///
/// The algorithm prefix is parsed, not assumed: only `sha256` is accepted (case-insensitive, as
/// is the hex). The comparison is constant-time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let (algorithm, hex_digest) = header.split_once('=').ok_or(SignatureError::Malformed)?;
    if !algorithm.trim().eq_ignore_ascii_case("sha256") {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_digest.trim()).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Computes the `X-Hub-Signature` value Jira would send for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// The key one delivery is deduplicated on within its connection.
///
/// Jira's `X-Atlassian-Webhook-Identifier` when present (the same across Jira's retries of one
/// delivery), else `sha256:<hex>` of the body, so a byte-identical re-post is still recognised.
pub fn delivery_key(identifier_header: Option<&str>, body: &[u8]) -> String {
    match identifier_header.map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= MAX_IDENTIFIER_LEN && id.is_ascii() => {
            format!("id:{id}")
        }
        Some(id) if !id.is_empty() => format!("idsha256:{}", hex::encode(Sha256::digest(id))),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"webhookEvent":"jira:issue_created"}"#;

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let header = sign(b"s3cret", BODY);
        assert_eq!(verify_signature(b"s3cret", BODY, Some(&header)), Ok(()));
    }

    #[test]
    fn upper_case_prefix_and_hex_are_accepted() {
        let header = sign(b"s3cret", BODY).to_uppercase();
        assert_eq!(verify_signature(b"s3cret", BODY, Some(&header)), Ok(()));
    }

    #[test]
    fn a_changed_body_or_secret_is_a_mismatch() {
        let header = sign(b"s3cret", BODY);
        let mut changed = BODY.to_vec();
        changed[3] ^= 1;
        assert_eq!(
            verify_signature(b"s3cret", &changed, Some(&header)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"other", BODY, Some(&header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        assert_eq!(
            verify_signature(b"k", BODY, None),
            Err(SignatureError::Missing)
        );
        for header in [
            "",
            "sha256",
            "sha1=abcd",
            "sha256=zz",
            "sha256=abcd",
            "md5=00",
        ] {
            assert_eq!(
                verify_signature(b"k", BODY, Some(header)),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn delivery_key_prefers_the_identifier_and_falls_back_to_the_body_hash() {
        assert_eq!(delivery_key(Some(" abc "), BODY), "id:abc");
        assert!(delivery_key(None, BODY).starts_with("sha256:"));
        assert_eq!(delivery_key(Some(""), BODY), delivery_key(None, BODY));
        assert_ne!(delivery_key(None, BODY), delivery_key(None, b"{}"));
        let long = "x".repeat(500);
        assert!(delivery_key(Some(&long), BODY).starts_with("idsha256:"));
    }
}
