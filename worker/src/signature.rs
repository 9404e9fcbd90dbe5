//! Standard Webhooks signing of deliveries (<https://www.standardwebhooks.com/>).
//!
//! A subscription's secret is `whsec_` followed by base64 of the key bytes. A delivery is signed
//! as `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`.

use anyhow::Context as _;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of every subscription signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of key material in a generated secret (Standard Webhooks allows 24 to 64).
const SECRET_BYTES: usize = 32;

/// A new random signing secret, `whsec_<base64>`.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::fill(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The `webhook-signature` header value for one message.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .context("the signing secret is not `whsec_` followed by base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).context("HMAC accepts any key length")?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .expect("signs");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_are_random_and_usable() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with(SECRET_PREFIX));
        assert_ne!(a, b);
        assert!(sign(&a, "msg", 1, b"{}").is_ok());
        assert!(sign("whsec_not base64!", "msg", 1, b"{}").is_err());
    }
}
