//! The one conversion from failures to HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::scim::error::ScimError;
use crate::store;

/// `Content-Type` of every SCIM response (RFC 7644 §3.1).
pub const SCIM_JSON: &str = "application/scim+json";

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// What a handler can fail with.
#[derive(Debug)]
pub enum Error {
    /// A protocol error the client can act on: SCIM body with its status.
    Scim(ScimError),
    /// The database or queue is unreachable, or the change is not applied
    /// yet: 503 with Retry-After.
    Unavailable(String),
    /// A bug or an unexpected failure: logged with its cause chain, and
    /// answered with an opaque 500.
    Internal(anyhow::Error),
}

impl From<ScimError> for Error {
    fn from(e: ScimError) -> Self {
        Error::Scim(e)
    }
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        if e.is_transient() {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(e.into())
        }
    }
}

/// A SCIM JSON response with the given status.
pub fn scim_response(status: StatusCode, body: &serde_json::Value) -> Response {
    scim_text_response(status, body.to_string())
}

/// A SCIM JSON response whose body is already written.
pub fn scim_text_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    response
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Scim(e) => {
                let status =
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                scim_response(status, &e.to_json())
            }
            Error::Unavailable(reason) => {
                tracing::warn!(%reason, "answering 503");
                let body = ScimError::new(
                    503,
                    None,
                    format!(
                        "the service cannot complete this request right now; retry after {RETRY_AFTER_SECS} seconds"
                    ),
                );
                let mut response = scim_response(StatusCode::SERVICE_UNAVAILABLE, &body.to_json());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                response
            }
            Error::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                let body = ScimError::new(
                    500,
                    None,
                    "internal error; the server log has the details (search for this request's x-request-id)",
                );
                scim_response(StatusCode::INTERNAL_SERVER_ERROR, &body.to_json())
            }
        }
    }
}
