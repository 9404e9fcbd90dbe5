//! `UnreadJson`: a JSON request body, taken from the request but not read yet.
//!
//! Ingest must look the connection up before it reads a byte of the body (a body to an unknown
//! connection is refused unread), so the body is handed to the operation as it is, and read
//! there by [`crate::webhook_body::read`]. Its content type is still checked first: it must be
//! JSON (hookline never accepts XML).

use poem::{Body, Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};

/// A JSON body, not read yet.
pub struct UnreadJson(pub Body);

impl std::fmt::Debug for UnreadJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnreadJson")
    }
}

impl Payload for UnreadJson {
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

impl ParsePayload for UnreadJson {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        Ok(Self(body.take()?))
    }
}

impl_apirequest_for_payload!(UnreadJson);
