//! Authentication: company API keys for `/api/v1`, the admin token for company creation.
//!
//! API keys are random, shown once, and stored as their SHA-256 (a key has 256 bits of entropy,
//! so a fast hash is enough and makes the lookup one indexed query).

use base64::Engine as _;
use entity::{api_key, company};
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Rejection};
use crate::state::AppState;

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "hk_";

/// The company an API key belongs to; every `/api/v1` call other than company creation takes it.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "company_from_api_key")]
pub struct CompanyAuth(pub company::Model);

/// The admin, holding `HOOKLINE_ADMIN_TOKEN`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "AdminAuth", checker = "admin_from_token")]
pub struct AdminAuth(pub ());

async fn company_from_api_key(req: &Request, bearer: Bearer) -> poem::Result<company::Model> {
    let state = app_state(req)?;
    match company_for_api_key(state, &bearer.token).await {
        Ok(Some(company)) => Ok(company),
        Ok(None) => Err(Rejection(ApiError::unauthorized("the API key is not valid")).into()),
        Err(error) => Err(Rejection(error).into()),
    }
}

async fn admin_from_token(req: &Request, bearer: Bearer) -> poem::Result<()> {
    let state = app_state(req)?;
    match admin_token_matches(state, &bearer.token) {
        Some(true) => Ok(()),
        Some(false) => {
            Err(Rejection(ApiError::unauthorized("the admin token is not valid")).into())
        }
        None => Err(Rejection(ApiError::unauthorized(
            "admin calls are disabled: HOOKLINE_ADMIN_TOKEN is not set",
        ))
        .into()),
    }
}

/// The company `key` belongs to, if it is a valid API key. The API's bearer check and the
/// console's sign-in both use this.
pub async fn company_for_api_key(
    state: &AppState,
    key: &str,
) -> Result<Option<company::Model>, ApiError> {
    let found = api_key::Entity::find()
        .filter(api_key::Column::KeyHash.eq(hash_api_key(key)))
        .find_also_related(company::Entity)
        .one(&state.db)
        .await?;
    Ok(found.and_then(|(_, company)| company))
}

/// Whether `token` is the admin token (compared in constant time); `None` when admin calls are
/// disabled (no `HOOKLINE_ADMIN_TOKEN`).
pub fn admin_token_matches(state: &AppState, token: &str) -> Option<bool> {
    let expected = state.admin_token.as_ref()?;
    Some(
        expected
            .expose_secret()
            .as_bytes()
            .ct_eq(token.as_bytes())
            .into(),
    )
}

fn app_state(req: &Request) -> poem::Result<&AppState> {
    req.data::<AppState>().ok_or_else(|| {
        Rejection(ApiError::internal(anyhow::anyhow!(
            "AppState missing from the request"
        )))
        .into()
    })
}

/// A new random API key.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored for an API key: hex SHA-256.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_random_and_prefixed() {
        let (a, b) = (generate_api_key(), generate_api_key());
        assert!(a.starts_with(API_KEY_PREFIX));
        assert_ne!(a, b);
        assert_eq!(hash_api_key(&a), hash_api_key(&a));
        assert_ne!(hash_api_key(&a), hash_api_key(&b));
        assert!(!hash_api_key(&a).contains(&a));
    }
}
