//! `RawJson`: a JSON request body kept byte for byte, with the configured size limit.
//!
//! Ingest must store exactly what Jira sent, so the body is not parsed here; its content type
//! must still be JSON (hookline never accepts XML).

use bytes::Bytes;
use poem::{Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};

use crate::error::{ApiError, Rejection};
use crate::state::AppState;

/// A JSON body, as raw bytes.
#[derive(Debug, Clone)]
pub struct RawJson(pub Bytes);

impl Payload for RawJson {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some("The webhook payload exactly as Jira sends it."),
            ..MetaSchema::new("object")
        }))
    }
}

impl ParsePayload for RawJson {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<AppState>()
            .map(|state| state.body_limit_bytes)
            .ok_or_else(|| {
                Rejection(ApiError::internal(anyhow::anyhow!(
                    "AppState missing from the request"
                )))
            })?;
        match body.take()?.into_bytes_limit(limit).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(poem::error::ReadBodyError::PayloadTooLarge) => {
                Err(Rejection(ApiError::payload_too_large(limit)).into())
            }
            Err(error) => Err(Rejection(ApiError::bad_request(format!(
                "could not read the body: {error}"
            )))
            .into()),
        }
    }
}

impl_apirequest_for_payload!(RawJson);
