//! The server under attack and under load: each test is one entry of the bad-input
//! catalogue in the README's reliability section. Most run over a real socket
//! against `server::net::serve`, because timeouts, connection caps and
//! `Expect: 100-continue` live below the router.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cellscope::server::net::{serve, NetLimits};
use cellscope::server::{router, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::common::tiny_model;

fn state(limits: Limits) -> AppState {
    AppState::new(tiny_model(None, 21), limits, "if (a) { b = \"x\"; }\n".repeat(20), "test reference".into())
}

/// A server on an ephemeral port; send on the channel to shut it down.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(state: AppState, net: NetLimits) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        serve(listener, router(state), net, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { addr, stop, done }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.done).await.expect("server stops").unwrap();
    }
}

fn quick_net() -> NetLimits {
    NetLimits { max_connections: 64, header_timeout: Duration::from_secs(1), shutdown_grace: Duration::from_secs(2) }
}

/// Reads until the peer closes (or `limit` passes); returns what arrived and
/// whether the peer closed.
async fn read_until_close(sock: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

async fn raw(addr: SocketAddr, request: String) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let (resp, closed) = read_until_close(&mut sock, Duration::from_secs(20)).await;
    assert!(closed, "server did not answer and close: {resp}");
    resp
}

fn post(path: &str, host: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {resp:?}"))
}

fn json_of(resp: &str) -> Value {
    let start = resp.find("\r\n\r\n").expect("head ends") + 4;
    serde_json::from_str(&resp[start..]).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

fn assert_code(resp: &str, status: u16, code: &str) {
    assert_eq!(status_of(resp), status, "{resp}");
    let v = json_of(resp);
    assert_eq!(v["error"]["code"], code, "{resp}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.len() > 20), "message should explain: {resp}");
}

async fn oneshot(state: AppState, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = router(state).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn json_post(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn repeated_layers_and_cells_do_not_multiply_the_answer() {
    // Was: 100,000 repeats → a 480 GB allocation and an abort.
    let body = json!({"text": "int x;", "layers": vec![0; 100_000], "cells": vec![3; 100_000], "kinds": ["c"]});
    let (s, _, bytes) = oneshot(state(Limits::default()), json_post("/api/trace?format=npy", body)).await;
    assert_eq!(s, 200);
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'shape': (1, 1, 6, 1)"), "repeats are merged: {header}");
    let body = json!({"text": "ab", "layers": [1, 0, 1], "cells": [5, 2, 5], "kinds": ["h"], "top_k": 0});
    let (s, _, bytes) = oneshot(state(Limits::default()), json_post("/api/trace", body)).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["cells"], json!([5, 2]), "first-seen order is kept");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_answer_over_the_limit_is_refused_before_any_work() {
    let limits = Limits { max_response_bytes: 100_000, ..Limits::default() };
    let text = "x".repeat(2000);
    let (s, _, bytes) = oneshot(state(limits.clone()), json_post("/api/trace", json!({"text": text}))).await;
    assert_eq!(s, 413);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "answer_too_large");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("fewer layers, kinds or cells") && msg.contains("npy"), "says how to ask for less: {msg}");
    // Asking for less fits.
    let (s, _, _) = oneshot(
        state(limits.clone()),
        json_post("/api/trace", json!({"text": text, "kinds": ["c"], "cells": [1], "top_k": 0})),
    )
    .await;
    assert_eq!(s, 200);
    // The int8 view has its own (smaller) size and the same check.
    let (s, _, _) = oneshot(state(limits), json_post("/api/view", json!({"text": "x".repeat(20_000)}))).await;
    assert_eq!(s, 413);
}

#[tokio::test]
async fn the_api_takes_only_json_bodies() {
    let s = state(Limits::default());
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let req = Request::post("/api/trace").header("content-type", ct).body(Body::from(r#"{"text":"a"}"#)).unwrap();
        let (st, _, bytes) = oneshot(s.clone(), req).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((st.as_u16(), v["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{ct}");
    }
    let req = Request::post("/api/cells/rank").body(Body::from(r#"{"text":"a","feature":"string"}"#)).unwrap();
    assert_eq!(oneshot(s.clone(), req).await.0, 415, "no Content-Type at all");
    let req = Request::post("/api/view").header("content-type", "application/json; charset=utf-8");
    assert_eq!(oneshot(s, req.body(Body::from(r#"{"text":"a"}"#)).unwrap()).await.0, 200, "a charset is fine");
}

#[tokio::test]
async fn unknown_host_names_are_refused() {
    let mut st = state(Limits::default());
    st.allowed_hosts = std::sync::Arc::new(vec!["lab.example.org".into()]);
    for (host, want) in [
        ("evil.example.com:3000", 403),
        ("localhost.evil.example.com", 403),
        ("localhost:3000", 200),
        ("127.0.0.1:3000", 200),
        ("[::1]:3000", 200),
        ("lab.example.org", 200),
    ] {
        for uri in ["/api/model", "/"] {
            let req = Request::get(uri).header("host", host).body(Body::empty()).unwrap();
            let (s, _, bytes) = oneshot(st.clone(), req).await;
            assert_eq!(s.as_u16(), want, "{host} {uri}");
            if want == 403 {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                assert!(v["error"]["message"].as_str().unwrap().contains("--allow-host"));
            }
        }
    }
}

#[tokio::test]
async fn pages_and_answers_carry_security_headers_and_no_cors_by_default() {
    for uri in ["/", "/api/model", "/model", "/static/app.js"] {
        let req = Request::get(uri).header("origin", "https://evil.example.com").body(Body::empty()).unwrap();
        let (s, h, _) = oneshot(state(Limits::default()), req).await;
        assert_eq!(s, 200, "{uri}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(h.get("access-control-allow-origin").is_none(), "{uri} must not allow other origins");
    }
    // With --cors-origin, that origin (only) may call the API.
    let mut st = state(Limits::default());
    st.cors_origins = std::sync::Arc::new(vec!["http://localhost:8888".into()]);
    let preflight = |origin: &str| {
        Request::options("/api/trace")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, _) = oneshot(st.clone(), preflight("http://localhost:8888")).await;
    assert_eq!(h["access-control-allow-origin"], "http://localhost:8888");
    let (_, h, _) = oneshot(st, preflight("https://evil.example.com")).await;
    assert!(h.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn static_files_come_from_the_binary() {
    let (s, h, body) =
        oneshot(state(Limits::default()), Request::get("/static/app.js").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let on_disk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/static/app.js")).unwrap();
    assert_eq!(body, on_disk);
    let (s, h, _) =
        oneshot(state(Limits::default()), Request::get("/static/style.css").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/css"));
    let (s, _, _) =
        oneshot(state(Limits::default()), Request::get("/static/../Cargo.toml").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn requests_wait_in_line_instead_of_failing() {
    // One slot, a queue of 16: 12 simultaneous requests are all answered.
    let limits = Limits { max_concurrent: 1, max_queue: 16, ..Limits::default() };
    let st = state(limits);
    let text = "if (x) { y = \"s\"; }\n".repeat(50);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let st = st.clone();
            let text = text.clone();
            tokio::spawn(
                async move { oneshot(st, json_post("/api/trace", json!({"text": text, "kinds": ["c"]}))).await.0 },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(st.queue.waiting(), 0);
}

#[tokio::test]
async fn the_home_page_does_not_wait_behind_api_work() {
    let limits = Limits { max_concurrent: 1, max_queue: 0, ..Limits::default() };
    let st = state(limits);
    let (release, held) = std::sync::mpsc::channel::<()>();
    let q = st.queue.clone();
    let holder = tokio::spawn(async move { q.run(move || held.recv().unwrap()).await });
    while st.queue.free_slots() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for uri in ["/", "/?sample=prose&layer=1&kind=h&cell=3"] {
        let (s, _, body) = oneshot(st.clone(), Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200, "{uri}: {}", String::from_utf8_lossy(&body));
    }
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
}

#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_not_100() {
    let limits = Limits { max_body_bytes: 4096, ..Limits::default() };
    let srv = start(state(limits), quick_net()).await;
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /api/trace HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
        srv.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(!resp.contains("100 Continue"), "{resp}");
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("body_too_large"), "{resp}");
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_body_is_cut_off() {
    let limits = Limits { body_timeout_secs: 1, ..Limits::default() };
    let srv = start(state(limits), quick_net()).await;
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /api/trace HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"te",
        srv.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // Trickle a byte now and then, never finishing.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if sock.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let (resp, _) = read_until_close(&mut sock, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 408") && resp.contains("body_timeout"), "{resp}");
    srv.stop().await;
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed() {
    let srv = start(state(Limits::default()), quick_net()).await;
    // Idle: connect, send nothing.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    // Slow headers: one byte every 300 ms.
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    let slow_task = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    slow_task.await;
    let (_, idle_closed) = read_until_close(&mut idle, Duration::from_secs(10)).await;
    assert!(idle_closed, "an idle connection must be closed by the header timeout");
    let (resp, slow_closed) = read_until_close(&mut slow, Duration::from_secs(10)).await;
    assert!(slow_closed && !resp.contains("200 OK"), "a slow header must be cut off: {resp}");
    // A keep-alive connection left idle after a request is closed too.
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let (resp, closed) = read_until_close(&mut kept, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200") && closed, "{resp}");
    srv.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_the_server_stays_reachable() {
    let net = NetLimits { max_connections: 4, header_timeout: Duration::from_secs(30), ..quick_net() };
    let srv = start(state(Limits::default()), net).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(srv.addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (resp, closed) = read_until_close(&mut extra, Duration::from_secs(10)).await;
    assert!(closed && resp.is_empty(), "the fifth connection is closed unanswered: {resp:?}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = raw(srv.addr, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_a_half_sent_request() {
    let net =
        NetLimits { header_timeout: Duration::from_secs(60), shutdown_grace: Duration::from_secs(1), ..quick_net() };
    let limits = Limits { body_timeout_secs: 60, ..Limits::default() };
    let srv = start(state(limits), net).await;
    let mut half = TcpStream::connect(srv.addr).await.unwrap();
    half.write_all(b"POST /api/trace HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"te")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    srv.stop().await; // panics after 30 s
    assert!(started.elapsed() < Duration::from_secs(20), "stopped after {:?}", started.elapsed());
}

#[tokio::test]
async fn bad_requests_over_the_wire_are_json_errors() {
    let srv = start(state(Limits { max_text_chars: 100, ..Limits::default() }), quick_net()).await;
    let host = srv.addr.to_string();
    let cases = [
        (post("/api/trace", &host, "text/plain", r#"{"text":"a"}"#), 415, "unsupported_media_type"),
        (post("/api/trace", "rebind.evil.example.com", "application/json", r#"{"text":"a"}"#), 403, "bad_host"),
        (
            post("/api/trace", &host, "application/json", &json!({"text": "x".repeat(101)}).to_string()),
            413,
            "text_too_long",
        ),
        (post("/api/trace", &host, "application/json", r#"{"text":"a","layers":[]}"#), 422, "bad_layer"),
        (post("/api/view", &host, "application/json", r#"{"text":"a","kinds":["q"]}"#), 422, "bad_kind"),
        (
            post("/api/cells/rank", &host, "application/json", r#"{"text":"a(b)","regex":"a{99999}{99999}"}"#),
            422,
            "bad_regex",
        ),
    ];
    for (req, status, code) in cases {
        assert_code(&raw(srv.addr, req).await, status, code);
    }
    srv.stop().await;
}

#[test]
fn serve_refuses_bad_flags_up_front() {
    for (args, phrase) in [
        (&["--max-text-chars", "0"][..], "--max-text-chars 0 is out of range"),
        (&["--max-concurrent", "0"][..], "--max-concurrent 0 is out of range"),
        (&["--header-timeout", "0"][..], "--header-timeout 0 is out of range"),
        (&["--addr", "nonsense"][..], "is not HOST:PORT"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cellscope")).arg("serve").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(phrase), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn serve_binds_a_host_name() {
    // `--addr localhost:PORT` was refused ("not host:port"); it now resolves.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cellscope"))
        .args(["serve", "--addr", &format!("localhost:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = false;
    while Instant::now() < deadline && !answered {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mut s) = std::net::TcpStream::connect(("localhost", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            answered = resp.starts_with("HTTP/1.1 200");
        }
    }
    // SIGTERM: the server shuts down cleanly.
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(answered, "server on localhost:{port} never answered");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[cfg(unix)]
#[test]
fn text_files_that_never_end_are_refused_up_front() {
    // /dev/zero was read until memory ran out; a FIFO blocked forever.
    let dir = std::env::temp_dir().join(format!("cellscope-endless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("pipe");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [std::path::Path::new("/dev/zero"), fifo.as_path()] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cellscope"))
            .args(["eval", "--file"])
            .arg(path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("eval --file {} did not return", path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!status.success() && err.contains("not a regular file"), "{}: {err}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_same_text_is_traced_once_and_the_cache_stays_in_its_budget() {
    let st = state(Limits::default());
    let text = "if (x) { y = \"s\"; }\n".repeat(10);
    let (s1, _, a) =
        oneshot(st.clone(), json_post("/api/trace", json!({"text": text, "layers": [1], "kinds": ["c"]}))).await;
    assert_eq!(st.traces.len(), 1);
    // Another view of the same text, a ranking and an intervention reuse it.
    let (s2, _, _) =
        oneshot(st.clone(), json_post("/api/view", json!({"text": text, "layer": 0, "exact": true}))).await;
    let (s3, _, _) =
        oneshot(st.clone(), json_post("/api/cells/rank", json!({"text": text, "feature": "string"}))).await;
    let clamp = json!([{"layer": 0, "kind": "c", "cell": 1, "value": 0}]);
    let (s4, _, _) = oneshot(st.clone(), json_post("/api/intervene", json!({"text": text, "clamps": clamp}))).await;
    let (s5, _, b) =
        oneshot(st.clone(), json_post("/api/trace", json!({"text": text, "layers": [1], "kinds": ["c"]}))).await;
    assert_eq!([s1, s2, s3, s4, s5].map(|s| s.as_u16()), [200; 5]);
    assert_eq!(st.traces.len(), 1, "one text, one trace");
    assert_eq!(a, b, "a cached trace answers exactly as a fresh one");
    // The page's default view is traced in int8: kept apart, never answering for
    // the exact trace, and reused by the next view.
    let (s6, h6, int8) = oneshot(st.clone(), json_post("/api/view", json!({"text": text, "layer": 0}))).await;
    assert_eq!(st.traces.len(), 2, "the int8 trace has its own entry");
    assert_eq!(h6.get("x-cellscope-precision").and_then(|v| v.to_str().ok()), Some("int8"));
    let (s7, _, again) = oneshot(st.clone(), json_post("/api/view", json!({"text": text, "layer": 0}))).await;
    let (s8, _, c) =
        oneshot(st.clone(), json_post("/api/trace", json!({"text": text, "layers": [1], "kinds": ["c"]}))).await;
    assert_eq!([s6, s7, s8].map(|s| s.as_u16()), [200; 3]);
    assert_eq!((st.traces.len(), &int8, &c), (2, &again, &a), "each precision answers from its own entry");
    // With no budget nothing is kept.
    let off = state(Limits { trace_cache_bytes: 0, ..Limits::default() });
    let (s, _, c) =
        oneshot(off.clone(), json_post("/api/trace", json!({"text": text, "layers": [1], "kinds": ["c"]}))).await;
    assert_eq!((s.as_u16(), off.traces.len()), (200, 0));
    assert_eq!(a, c);
}
