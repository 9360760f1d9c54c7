//! The API's error type and policy.
//!
//! Policy: every failure a client can cause is a 4xx with
//! `{"error": {"code": "...", "message": "..."}}`; the message says what was
//! wrong and how to fix it. Overload is 503 `busy` with a `Retry-After`
//! header, logged once at warn level (it is the queue working, not a fault). Internal
//! failures are 500 `internal` and are logged here, in one place; their details
//! stay in the log. Rejections from axum's extractors never reach the client
//! as plain text: handlers take their body as [`JsonBody`], which parses it
//! through [`parse_json`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error that becomes an HTTP response.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 only).
    pub retry_after: Option<u32>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 413 with a code naming what was too large.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 422 with a code naming the offending field.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(code = self.code, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(code = self.code, "{}", self.message);
        }
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error; see the server log".to_string()
        } else {
            self.message.clone()
        };
        let body = ErrorBody { error: ErrorDetail { code: self.code, message } };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// Every error answer's body: `{"error": {"code", "message"}}`.
#[derive(serde::Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a code for programs, a message for people.
#[derive(serde::Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

/// Parses a JSON body into `T`, mapping syntax errors to 400 `malformed_json` and
/// type or missing-field errors to 422 `invalid_request`, both with serde's
/// line/column message.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.is_empty() {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                AppError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("request body is not valid JSON: {e}"))
            }
            Category::Data => AppError::invalid("invalid_request", format!("request JSON has the wrong shape: {e}")),
        }
    })
}

/// A JSON request body parsed into `T` through [`parse_json`], so every handler
/// reads and parses its body the same way and every failure is our JSON error.
/// (The body has already been size-checked and read under a deadline by
/// `guard::guard`.)
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AppError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::too_large("body_too_large", "request body is over this server's limit (--max-body-bytes)")
            } else {
                AppError::new(StatusCode::BAD_REQUEST, "bad_body", format!("could not read the request body: {r}"))
            }
        })?;
        Ok(JsonBody(parse_json(&bytes)?))
    }
}
