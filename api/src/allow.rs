//! `405 Method Not Allowed` with the `Allow` header (RFC 9110 §15.5.6).
//!
//! The router knows that a path exists but not with this method; it does not say which methods
//! it has. Those are read once from the OpenAPI document (every operation is in it), so `Allow`
//! can never disagree with what is documented. Paths outside the document (`/docs`,
//! `/openapi.json`) are read-only.

use std::collections::BTreeSet;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::http::header::{ALLOW, HeaderValue};
use poem::{Endpoint, IntoResponse, Request, Response};

/// The methods of every documented path template.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods {
    routes: Vec<(Vec<String>, String)>,
}

/// What paths outside the OpenAPI document allow.
const READ_ONLY: &str = "GET, HEAD";

impl AllowedMethods {
    /// Reads the paths and methods of an OpenAPI document (JSON).
    pub fn from_spec(spec: &str) -> anyhow::Result<Self> {
        let spec: serde_json::Value = serde_json::from_str(spec)?;
        let paths = spec["paths"]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("the OpenAPI document has no paths"))?;
        let mut routes = Vec::new();
        for (template, operations) in paths {
            let mut methods: BTreeSet<String> = operations
                .as_object()
                .map(|operations| operations.keys().map(|m| m.to_ascii_uppercase()).collect())
                .unwrap_or_default();
            // The router answers HEAD for every GET.
            if methods.contains("GET") {
                methods.insert("HEAD".to_owned());
            }
            let segments = template.split('/').map(str::to_owned).collect();
            routes.push((segments, methods.into_iter().collect::<Vec<_>>().join(", ")));
        }
        Ok(Self { routes })
    }

    /// The `Allow` value of `path`.
    pub fn for_path(&self, path: &str) -> &str {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .find(|(template, _)| {
                template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(expected, actual)| {
                        (expected.starts_with('{') && expected.ends_with('}')) || expected == actual
                    })
            })
            .map_or(READ_ONLY, |(_, methods)| methods.as_str())
    }
}

/// Adds `Allow` to every 405 answer of `endpoint`.
pub async fn add_allow_header<E: Endpoint>(
    endpoint: Arc<E>,
    request: Request,
    allowed: Arc<AllowedMethods>,
) -> poem::Result<Response> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut response = match endpoint.call(request).await {
        Ok(output) => output.into_response(),
        Err(error) => error.into_response(),
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = allowed.for_path(&path);
        if let Ok(value) = HeaderValue::from_str(allow) {
            response.headers_mut().insert(ALLOW, value);
        }
        tracing::debug!(%method, allow, "method not allowed");
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_read_from_the_document() {
        let allowed = AllowedMethods::from_spec(
            r#"{"paths": {
                "/api/v1/subscriptions": {"get": {}, "post": {}},
                "/api/v1/subscriptions/{id}": {"get": {}, "patch": {}, "delete": {}},
                "/webhook/jira/{connection_id}": {"post": {}}
            }}"#,
        )
        .expect("a document");
        assert_eq!(allowed.for_path("/api/v1/subscriptions"), "GET, HEAD, POST");
        assert_eq!(
            allowed.for_path("/api/v1/subscriptions/0193"),
            "DELETE, GET, HEAD, PATCH"
        );
        assert_eq!(allowed.for_path("/webhook/jira/x"), "POST");
        assert_eq!(allowed.for_path("/openapi.json"), "GET, HEAD");
    }
}
