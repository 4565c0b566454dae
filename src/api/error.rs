//! One error type for every refused request, mapped to its status code and JSON body in exactly
//! one place: `{"error", "message", "code", "detail"}` (`detail` keeps the reference's field name).

use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed or invalid request.
    BadRequest(String),
    /// Well-formed JSON of the wrong shape (missing field, wrong type).
    Unprocessable(String),
    Unauthorized,
    Forbidden,
    NotFound(String),
    MethodNotAllowed(&'static str),
    Conflict(String),
    /// The run's branch or state key is held by another run (409).
    Busy(String),
    /// A preview of a file that is not text (415).
    UnsupportedMediaType(String),
    PayloadTooLarge(usize),
    /// The request's head or body did not arrive within `REQUEST_READ_TIMEOUT_SECONDS`.
    RequestTimeout(std::time::Duration),
    /// No run slot now; retry after the given seconds.
    Overloaded {
        detail: String,
        retry_after: u32,
    },
    /// The gateway cannot serve (not ready, shutting down).
    Unavailable(String),
    /// The gateway's own storage failed (503, like `Unavailable`): the caller gets `what`, the
    /// operator's log the `cause` too.
    Failed {
        what: &'static str,
        cause: String,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } | ApiError::Unavailable(_) | ApiError::Failed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The machine-readable name, also the `cause` label of the rejection metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Busy(_) => "busy",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Unavailable(_) | ApiError::Failed { .. } => "unavailable",
        }
    }

    /// What went wrong inside the gateway, for its log (never in the answer).
    pub fn cause(&self) -> Option<&str> {
        match self {
            ApiError::Failed { cause, .. } => Some(cause),
            _ => None,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid request",
            ApiError::Unprocessable(_) => "request body has the wrong shape",
            ApiError::Unauthorized => "a valid bearer token is required",
            ApiError::Forbidden => "client address not allowed",
            ApiError::NotFound(_) => "not found",
            ApiError::MethodNotAllowed(_) => "method not allowed",
            ApiError::Conflict(_) => "session already running",
            ApiError::Busy(_) => "workspace busy",
            ApiError::UnsupportedMediaType(_) => "not a text file",
            ApiError::PayloadTooLarge(_) => "request body too large",
            ApiError::RequestTimeout(_) => "request not received in time",
            ApiError::Overloaded { .. } => "too many runs; retry later",
            ApiError::Unavailable(_) | ApiError::Failed { .. } => "service unavailable",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::BadRequest(d)
            | ApiError::Unprocessable(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d)
            | ApiError::Busy(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Unavailable(d)
            | ApiError::Overloaded { detail: d, .. } => d.clone(),
            ApiError::Failed { what, .. } => format!("{what} (the gateway's log has the cause)"),
            ApiError::Unauthorized => "send 'Authorization: Bearer <token>'".into(),
            ApiError::Forbidden => "this address is not in ALLOWED_CLIENTS".into(),
            ApiError::MethodNotAllowed(allow) => format!("allowed: {allow}"),
            ApiError::PayloadTooLarge(limit) => {
                format!("the limit is {limit} bytes (MAX_REQUEST_BYTES)")
            }
            ApiError::RequestTimeout(limit) => format!(
                "the request must arrive within {}s (REQUEST_READ_TIMEOUT_SECONDS)",
                limit.as_secs_f64()
            ),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let body = json!({
            "error": self.kind(),
            "message": self.message(),
            "code": status.as_u16(),
            "detail": self.detail(),
        });
        let mut response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json");
        match &self {
            ApiError::Overloaded { retry_after, .. } => {
                response = response.header(RETRY_AFTER, retry_after.to_string())
            }
            ApiError::MethodNotAllowed(allow) => response = response.header(ALLOW, *allow),
            ApiError::Unauthorized => response = response.header(WWW_AUTHENTICATE, "Bearer"),
            // The request's body was not read to its end, so the connection cannot carry another
            // request: say so, and hyper closes it once the response is written.
            ApiError::PayloadTooLarge(_) | ApiError::RequestTimeout(_) => {
                response = response.header(CONNECTION, "close")
            }
            _ => {}
        }
        response
            .body(Body::full(body.to_string()))
            .expect("static headers are valid")
    }
}

impl From<crate::runs::Refusal> for ApiError {
    fn from(r: crate::runs::Refusal) -> ApiError {
        use crate::runs::Refusal;
        match r {
            Refusal::Conflict(d) => ApiError::Conflict(d),
            Refusal::Overloaded(detail) => ApiError::Overloaded { detail, retry_after: 1 },
            Refusal::Unavailable(d) => ApiError::Unavailable(d),
            Refusal::Failed { what, cause } => ApiError::Failed { what, cause },
            Refusal::NotFound(d) => ApiError::NotFound(d),
            Refusal::Invalid(d) => ApiError::BadRequest(d),
            Refusal::KeyReused(d) => ApiError::Unprocessable(d),
            Refusal::Busy(d) => ApiError::Busy(d),
        }
    }
}
