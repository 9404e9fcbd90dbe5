//! Verification of the JWT Jira sends with deliveries of dynamic webhooks (registered by an
//! OAuth 2.0 app): `Authorization: Bearer <JWT>`, signed HS256 with the app's client secret.
//!
//! Only HS256 is accepted: `alg: none`, every other algorithm and a header without `alg` are
//! refused before the signature is looked at, so a token cannot choose how it is checked. The
//! signature is compared in constant time, and only then are the claims read: `exp` (and
//! `nbf`), when present, are checked with a small leeway for clock skew. Atlassian does not
//! document the claim set of these tokens, so no other claim is required.
//!
//! Tokens are never logged and never part of an error message.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The only algorithm accepted.
pub const ALGORITHM: &str = "HS256";

/// The leeway `exp` and `nbf` are checked with, by default (clock skew between Jira and us).
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest token looked at; Jira's are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a JWT was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too long.
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    /// The header names another algorithm than HS256 (or none).
    #[error("the JWT's algorithm {0:?} is not accepted (only HS256)")]
    UnsupportedAlgorithm(String),
    /// The signature does not match (another secret, or a changed token).
    #[error("the JWT's signature does not verify with the app's client secret")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the JWT has expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("the JWT is not valid yet")]
    NotYetValid,
}

/// Verifies `token` (without the `Bearer ` prefix) as an HS256 JWT signed with `secret`, at
/// `now`, with `leeway` for `exp` and `nbf`. Returns the claims.
pub fn verify(
    token: &str,
    secret: &[u8],
    now: DateTime<Utc>,
    leeway: std::time::Duration,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = decode_object(header)?;
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some(ALGORITHM) => {}
        Some(other) => {
            return Err(JwtError::UnsupportedAlgorithm(
                other.chars().take(32).collect(),
            ));
        }
        None => return Err(JwtError::UnsupportedAlgorithm(String::new())),
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    let expected = hs256(secret, &token.as_bytes()[..signed_len]);
    if signature.len() != expected.len() || !bool::from(signature.ct_eq(&expected)) {
        return Err(JwtError::BadSignature);
    }
    let claims = decode_object(claims)?;
    let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
    let now = now.timestamp();
    if let Some(exp) = claims.get("exp") {
        let exp = numeric_date(exp)?;
        if now > exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf)?;
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(claims)
}

/// Signs `claims` as an HS256 JWT with `secret` (what Jira does; fakes and tests use it).
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(hs256(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

fn hs256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

fn decode_object(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        _ => Err(JwtError::Malformed),
    }
}

/// A NumericDate (seconds since the epoch; fractions are allowed by RFC 7519).
fn numeric_date(value: &serde_json::Value) -> Result<i64, JwtError> {
    match value {
        serde_json::Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|seconds| seconds as i64))
            .ok_or(JwtError::Malformed),
        _ => Err(JwtError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"fixture-oauth-client-secret-Zk81";

    /// The fixture's token: `webhook_issue_updated_status.oauth_headers.json`.
    const FIXTURE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3NjIxNjg1MDMsImV4cCI6NDEwMjQ0NDgwMH0.kNNXPCgY7d6-Zqf17am13zaxV7qk9qY-Qw8KWF3K3qo";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("a valid instant")
    }

    #[test]
    fn the_fixture_token_verifies_with_the_fixture_secret() {
        let claims = verify(FIXTURE, SECRET, Utc::now(), DEFAULT_LEEWAY).expect("valid");
        assert_eq!(claims["exp"], 4_102_444_800_i64);
    }

    #[test]
    fn another_secret_or_a_changed_token_is_a_bad_signature() {
        assert_eq!(
            verify(FIXTURE, b"another", Utc::now(), DEFAULT_LEEWAY),
            Err(JwtError::BadSignature)
        );
        let forged = sign(b"another", &serde_json::json!({"exp": 4_102_444_800_i64}));
        assert_eq!(
            verify(&forged, SECRET, Utc::now(), DEFAULT_LEEWAY),
            Err(JwtError::BadSignature)
        );
        // The claims of one token with the signature of another.
        let other = sign(SECRET, &serde_json::json!({"exp": 1}));
        let (head, _) = other.rsplit_once('.').expect("three parts");
        let (_, fixture_signature) = FIXTURE.rsplit_once('.').expect("three parts");
        assert_eq!(
            verify(
                &format!("{head}.{fixture_signature}"),
                SECRET,
                Utc::now(),
                DEFAULT_LEEWAY
            ),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"exp":4102444800}"#);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            let header = URL_SAFE_NO_PAD.encode(header);
            for signature in ["", "AAAA"] {
                let token = format!("{header}.{claims}.{signature}");
                assert!(
                    matches!(
                        verify(&token, SECRET, Utc::now(), DEFAULT_LEEWAY),
                        Err(JwtError::UnsupportedAlgorithm(_))
                    ),
                    "{token}"
                );
            }
        }
    }

    #[test]
    fn exp_and_nbf_are_checked_with_the_leeway() {
        let token = sign(SECRET, &serde_json::json!({"exp": 1_000, "nbf": 500}));
        let leeway = std::time::Duration::from_secs(30);
        assert!(verify(&token, SECRET, at(1_029), leeway).is_ok());
        assert_eq!(
            verify(&token, SECRET, at(1_031), leeway),
            Err(JwtError::Expired)
        );
        assert!(verify(&token, SECRET, at(471), leeway).is_ok());
        assert_eq!(
            verify(&token, SECRET, at(469), leeway),
            Err(JwtError::NotYetValid)
        );
        let without_exp = sign(SECRET, &serde_json::json!({"iat": 1}));
        assert!(verify(&without_exp, SECRET, Utc::now(), leeway).is_ok());
        let text_exp = sign(SECRET, &serde_json::json!({"exp": "soon"}));
        assert_eq!(
            verify(&text_exp, SECRET, Utc::now(), leeway),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let long = "a".repeat(9000);
        for token in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", long.as_str()] {
            assert_eq!(
                verify(token, SECRET, Utc::now(), DEFAULT_LEEWAY),
                Err(JwtError::Malformed),
                "{token}"
            );
        }
    }
}
