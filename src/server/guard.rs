//! What every request passes before a handler sees it (one middleware, in the
//! order the checks run):
//!
//! 1. **Host allow-list** (403 `bad_host`): DNS rebinding lets a web page reach a
//!    server on localhost under the attacker's host name; IP literals,
//!    `localhost`, `*.localhost`, the name the server was bound with and the
//!    names given by `--allow-host` pass. A request without a Host header passes
//!    (HTTP/1.0 clients; a browser always sends one).
//! 2. **JSON only** on `POST /api/*` (415 `unsupported_media_type`): a cross-site
//!    "simple" POST (text/plain, forms) needs no CORS preflight, so requiring
//!    `application/json` keeps other sites from making this server work.
//! 3. **Body size before the body** (413 `body_too_large`): a Content-Length
//!    over `--max-body-bytes` is refused before reading, so `Expect:
//!    100-continue` gets 413, not "100 Continue".
//! 4. **Body deadline** (408 `body_timeout`): the whole body must arrive within
//!    `--body-timeout` seconds; a client sending a byte a second is cut off.
//! 5. **Security headers** on every answer: a Content-Security-Policy that allows
//!    only this server's own script and style, `X-Content-Type-Options: nosniff`,
//!    `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` (page URLs can hold
//!    the user's text).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;

/// The page's Content-Security-Policy. Inline `style` attributes colour the
/// characters of server-rendered text; no inline script runs anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Which requests the server takes and how long it waits for their bodies.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names (lower case, no port) accepted besides IP literals and
    /// `localhost`; `*` accepts any host.
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

impl Guard {
    /// Whether a Host header value (`name[:port]`, `[v6]:port`) may be served.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = if let Some(rest) = host.strip_prefix('[') {
            // [v6]:port
            rest.split(']').next().unwrap_or("")
        } else {
            host.rsplit_once(':')
                .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
                .map_or(&host[..], |(n, _)| n)
        };
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.iter().any(|a| a == "*" || a == name)
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
}

/// The checks in the module doc, then the handler, then the security headers.
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut resp = match check(&g, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

async fn check(g: &Guard, req: Request) -> Result<Request, AppError> {
    if let Some(host) = req.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !g.host_allowed(host) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "bad_host",
                format!(
                    "this server does not answer to the host name {host:?} (a guard against DNS rebinding); \
                     start it with --allow-host NAME to accept it"
                ),
            ));
        }
    }
    if req.method() == Method::POST
        && req.uri().path().starts_with("/api/")
        && !is_json(req.headers().get(header::CONTENT_TYPE))
    {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request body as JSON with the header Content-Type: application/json",
        ));
    }
    let too_large = || {
        AppError::too_large(
            "body_too_large",
            format!("request body exceeds {} bytes (server flag --max-body-bytes)", g.max_body_bytes),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > g.max_body_bytes as u64) {
        return Err(too_large());
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(req);
    }
    // Read the (bounded) body now, under one deadline for all of it.
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(g.body_timeout, axum::body::to_bytes(body, g.max_body_bytes)).await {
        Err(_) => {
            return Err(AppError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {} s", g.body_timeout.as_secs()),
            ))
        }
        Ok(Err(e)) => {
            // to_bytes fails on the size limit or a broken connection.
            let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if over {
                too_large()
            } else {
                AppError::new(StatusCode::BAD_REQUEST, "bad_body", format!("could not read the request body: {e}"))
            });
        }
        Ok(Ok(b)) => b,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let g = Guard {
            allowed_hosts: vec!["lab.example.org".into()],
            max_body_bytes: 10,
            body_timeout: Duration::from_secs(1),
        };
        for ok in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "10.1.2.3",
            "LocalHost",
            "app.localhost:80",
            "lab.example.org:3000",
        ] {
            assert!(g.host_allowed(ok), "{ok} should pass");
        }
        for bad in ["evil.example.com", "evil.example.com:3000", "localhost.evil.com", "", "lab.example.org.evil"] {
            assert!(!g.host_allowed(bad), "{bad} should be refused");
        }
        let any = Guard { allowed_hosts: vec!["*".into()], ..g };
        assert!(any.host_allowed("anything.example"));
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_json(None));
    }
}
