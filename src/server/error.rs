//! The API's error type and policy.
//!
//! Policy: every failure a client can cause is a 4xx with
//! `{"error": {"code": "...", "message": "..."}}`; the message says what was
//! wrong and how to fix it. Overload is 503 `busy` (retry later). Internal
//! failures are 500 `internal` and are logged here, in one place; their details
//! stay in the log. Rejections from axum's extractors never reach the client
//! as plain text: handlers take raw bytes and parse them through [`parse_json`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error that becomes an HTTP response.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
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

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(code = self.code, "{}", self.message);
        }
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error; see the server log".to_string()
        } else {
            self.message.clone()
        };
        let body = serde_json::json!({"error": {"code": self.code, "message": message}});
        (self.status, Json(body)).into_response()
    }
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

/// Maps a body-reading rejection (e.g. over the size limit) to our JSON error.
pub fn body_rejection(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes (server flag --max-body-bytes)"),
        )
    } else {
        AppError::new(StatusCode::BAD_REQUEST, "bad_body", format!("could not read the request body: {rejection}"))
    }
}
