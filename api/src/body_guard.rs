//! `Connection: close` on answers given before the request body was read to its end.
//!
//! An early answer (415 for the content type, 413 past the body limit, 401, 404 for an unknown
//! route) leaves the rest of the body on the connection. A client that keeps the connection
//! open would have those bytes read as its next request; closing the connection after such an
//! answer means a client can never desynchronise the request stream. Requests without a body,
//! and requests whose body was read to the end, keep their connection alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures::Stream as _;
use poem::http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use poem::{Body, Endpoint, IntoResponse, Request, Response};

/// Calls `endpoint`, and asks for the connection to be closed if the request declared a body
/// that was not read to its end.
pub async fn close_unread_bodies<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
) -> poem::Result<Response> {
    if !declares_body(&request) {
        return endpoint
            .call(request)
            .await
            .map(IntoResponse::into_response);
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let mut inner = Box::pin(request.take_body().into_bytes_stream());
    let flag = Arc::clone(&read_to_end);
    request.set_body(Body::from_bytes_stream(futures::stream::poll_fn(
        move |cx| {
            let polled = inner.as_mut().poll_next(cx);
            if let Poll::Ready(None) = polled {
                flag.store(true, Ordering::Release);
            }
            polled
        },
    )));
    let mut response = match endpoint.call(request).await {
        Ok(output) => output.into_response(),
        Err(error) => error.into_response(),
    };
    if !read_to_end.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Whether the request says a body follows (a length above zero, or chunked).
fn declares_body(request: &Request) -> bool {
    if request.headers().contains_key(TRANSFER_ENCODING) {
        return true;
    }
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .is_some_and(|length| length > 0)
}
