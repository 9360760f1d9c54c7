//! The OpenAPI check: the served document (`GET /api/openapi.json`) held to the
//! router's real answers, in-process.
//!
//! - The document lists exactly the JSON routes `server::router` has (read from
//!   `src/server/mod.rs`, so a new route fails here until it is documented).
//! - Every (path, method, status, content type) the document lists is answered by
//!   at least one real request below, and every answer the requests get is listed.
//! - Every JSON answer validates against the schema declared for its path, method
//!   and status, with objects closed: a field the document does not declare
//!   fails, and so does a declared field that no answer ever carries. Streamed
//!   NDJSON is checked line by line; `/api/view`'s binary answer by its JSON
//!   header (`x-json-header`); `.npy` by content type only.
//! - Every error answer uses the one `Error` component.
//!
//! The validator below is a small recursive checker for the part of JSON Schema
//! the document uses: `$ref`, `type` (integer vs number; a list of types),
//! `nullable`, `enum`, `properties`, `required`, `additionalProperties`, `items`,
//! `oneOf`/`anyOf`/`allOf`, `minimum`/`maximum`, `minItems`/`maxItems`.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::Router;
use cellscope::server::{router, AppState, Limits, Served};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{tiny_model, tiny_model_of};

/// Schemas that may hold fields the document does not name, and why.
const FREE_FORM: &[(&str, &str)] = &[
    ("/components/schemas/OpenApiDocument/properties/paths", "the document's own paths"),
    ("/components/schemas/OpenApiDocument/properties/components", "the document's own schemas"),
];

/// Declared fields no answer below carries, and why that is fine.
const RARELY_ANSWERED: &[(&str, &str, &str)] = &[];

// ---------------------------------------------------------------- the validator

/// Walks the document's schemas. `seen` records, per object schema (a JSON
/// pointer into the document), which declared fields some answer carried.
struct Checker<'d> {
    doc: &'d Value,
    seen: BTreeMap<String, BTreeSet<String>>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'d> Checker<'d> {
    fn schema(&self, ptr: &str) -> Result<&'d Value, String> {
        self.doc.pointer(ptr).ok_or_else(|| format!("the document has no schema at #{ptr}"))
    }

    /// Checks `value` (found at JSON pointer `at` in the answer) against the schema
    /// at `ptr` in the document, appending one line per problem to `errs`.
    fn check(&mut self, ptr: &str, value: &Value, at: &str, errs: &mut Vec<String>) {
        let s = match self.schema(ptr) {
            Ok(s) => s,
            Err(e) => return errs.push(e),
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix('#') {
                Some(target) => return self.check(target, value, at, errs),
                None => return errs.push(format!("#{ptr}: $ref {r:?} is not local")),
            }
        }
        if value.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        for (i, _) in s.get("allOf").and_then(Value::as_array).into_iter().flatten().enumerate() {
            self.check(&format!("{ptr}/allOf/{i}"), value, at, errs);
        }
        for key in ["oneOf", "anyOf"] {
            let Some(branches) = s.get(key).and_then(Value::as_array) else { continue };
            let mut passing = Vec::new();
            let mut why = Vec::new();
            for i in 0..branches.len() {
                let mut sub = Checker { doc: self.doc, seen: BTreeMap::new() };
                let mut e = Vec::new();
                sub.check(&format!("{ptr}/{key}/{i}"), value, at, &mut e);
                if e.is_empty() {
                    passing.push(sub.seen);
                } else {
                    why.push(format!("[{i}] {}", e.join("; ")));
                }
            }
            let ok = if key == "oneOf" { passing.len() == 1 } else { !passing.is_empty() };
            if !ok {
                errs.push(format!(
                    "at {at}: matches {} of the {} branches of {key} at #{ptr} ({})",
                    passing.len(),
                    branches.len(),
                    if why.is_empty() { "all match".to_string() } else { why.join(" | ") }
                ));
            }
            for seen in passing {
                for (k, v) in seen {
                    self.seen.entry(k).or_default().extend(v);
                }
            }
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if types.is_empty() {
            // Only combinators (checked above) may leave the type open.
            if ["oneOf", "anyOf", "allOf"].iter().all(|k| s.get(k).is_none()) {
                errs.push(format!("at {at}: the schema at #{ptr} declares no type"));
            }
            return;
        }
        if !types.iter().any(|t| type_matches(t, value)) {
            return errs.push(format!("at {at}: {} is not {} (#{ptr})", type_name(value), types.join(" or ")));
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errs.push(format!("at {at}: {value} is not one of {} (#{ptr})", Value::Array(allowed.clone())));
            }
        }
        if let Some(x) = value.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m) {
                errs.push(format!("at {at}: {x} is below the minimum {} (#{ptr})", s["minimum"]));
            }
            if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m) {
                errs.push(format!("at {at}: {x} is above the maximum {} (#{ptr})", s["maximum"]));
            }
        }
        if let Some(items) = value.as_array() {
            let n = items.len() as u64;
            if s.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m) {
                errs.push(format!("at {at}: {n} items, fewer than minItems {} (#{ptr})", s["minItems"]));
            }
            if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m) {
                errs.push(format!("at {at}: {n} items, more than maxItems {} (#{ptr})", s["maxItems"]));
            }
            if s.get("items").is_none() {
                return errs.push(format!("at {at}: the array schema at #{ptr} declares no items"));
            }
            for (i, item) in items.iter().enumerate() {
                self.check(&format!("{ptr}/items"), item, &format!("{at}/{i}"), errs);
            }
        }
        if let Some(obj) = value.as_object() {
            self.check_object(ptr, s, obj, at, errs);
        }
    }

    fn check_object(
        &mut self,
        ptr: &str,
        s: &Value,
        obj: &serde_json::Map<String, Value>,
        at: &str,
        errs: &mut Vec<String>,
    ) {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !obj.contains_key(req) {
                errs.push(format!("at {at}: required field {req:?} is missing (#{ptr})"));
            }
        }
        self.seen.entry(ptr.to_string()).or_default();
        for (key, v) in obj {
            let child = format!("{at}/{}", escape(key));
            if props.is_some_and(|p| p.contains_key(key)) {
                self.seen.entry(ptr.to_string()).or_default().insert(key.clone());
                self.check(&format!("{ptr}/properties/{}", escape(key)), v, &child, errs);
                continue;
            }
            match s.get("additionalProperties") {
                Some(Value::Object(_)) => self.check(&format!("{ptr}/additionalProperties"), v, &child, errs),
                Some(Value::Bool(true)) if FREE_FORM.iter().any(|(p, _)| *p == ptr) => {}
                Some(Value::Bool(true)) => errs.push(format!(
                    "at {child}: #{ptr} allows any field (additionalProperties: true); declare its fields"
                )),
                _ => errs.push(format!("at {child}: field {key:?} is not declared by #{ptr}")),
            }
        }
    }

    /// Declared fields of every object schema an answer reached that no answer carried.
    fn never_answered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (ptr, seen) in &self.seen {
            let s = self.doc.pointer(ptr).unwrap();
            for key in s.get("properties").and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
                if !seen.contains(key) && !RARELY_ANSWERED.iter().any(|(p, k, _)| p == ptr && k == key) {
                    out.push(format!("#{ptr} declares {key:?}, which no answer carried"));
                }
            }
        }
        out
    }
}

// ------------------------------------------------------------ the document

/// Follows a `$ref` to `#/components/responses/...` (or returns the object).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(p) => doc.pointer(p).unwrap_or(&Value::Null),
        None => v,
    }
}

/// Every (path, method, status, content type) the document lists.
fn documented(doc: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if method == "parameters" || method == "summary" || method == "description" {
                continue;
            }
            for (status, resp) in op["responses"].as_object().expect("responses") {
                for ct in deref(doc, resp)["content"].as_object().into_iter().flatten().map(|(k, _)| k) {
                    out.insert((path.clone(), method.clone(), status.clone(), ct.clone()));
                }
            }
        }
    }
    out
}

/// The routes `server::router` registers, read from its source: (path, method).
fn router_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/server/mod.rs");
    let method = regex::Regex::new(r"(?:^|[^A-Za-z_])(get|post|put|delete|patch)\(").unwrap();
    let mut out = BTreeSet::new();
    for (start, _) in src.match_indices(".route(") {
        // The call's text up to its closing parenthesis.
        let rest = &src[start + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closed .route( call");
        let call = &rest[..end];
        let path = call.split('"').nth(1).expect("a route path literal").to_string();
        let after_path = &call[call.find(',').expect("route(path, handler)")..];
        for m in method.captures_iter(after_path) {
            out.insert((path.clone(), m[1].to_string()));
        }
    }
    assert!(out.len() >= 10, "read only {out:?} from router(); has its layout changed?");
    out
}

/// Whether a concrete URI path fits a documented template (`{x}` takes a segment).
fn fits(template: &str, uri: &str) -> bool {
    let path = uri.split('?').next().unwrap();
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

// ------------------------------------------------------------ requests

/// A request body that never arrives (for 408 body_timeout).
struct Never;

impl http_body::Body for Never {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

/// One request and the documented route and status it should get.
struct Case {
    app: Router,
    method: &'static str,
    path: &'static str,
    req: Request<Body>,
    want: u16,
}

struct Apps {
    main: Router,
    busy: Router,
    slow: Router,
}

/// Texts the requests use.
const C: &str = "if (a) { b = \"x\"; } /* c */\n";
const LONG: usize = 200;

fn request(method: &str, uri: &str, content_type: Option<&str>, body: Body) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body).unwrap()
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    request("POST", uri, Some("application/json"), Body::from(body.to_string()))
}

/// The requests: for each route, successes that between them carry every field,
/// and each documented error.
fn cases(apps: &Apps) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |app: &Router, method: &'static str, path: &'static str, req: Request<Body>, want: u16| {
        out.push(Case { app: app.clone(), method, path, req, want });
    };
    let main = &apps.main;
    // GET routes.
    add(main, "get", "/healthz", request("GET", "/healthz", None, Body::empty()), 200);
    add(main, "get", "/api/model", request("GET", "/api/model", None, Body::empty()), 200);
    add(main, "get", "/api/model", request("GET", "/api/model?model=gru", None, Body::empty()), 200);
    add(main, "get", "/api/model", request("GET", "/api/model?model=nope", None, Body::empty()), 422);
    add(main, "get", "/api/models", request("GET", "/api/models", None, Body::empty()), 200);
    add(main, "get", "/api/horizon", request("GET", "/api/horizon?model=nope", None, Body::empty()), 422);
    add(main, "get", "/api/horizon", request("GET", "/api/horizon?model=gru", None, Body::empty()), 200);
    add(main, "get", "/api/openapi.json", request("GET", "/api/openapi.json", None, Body::empty()), 200);
    add(main, "get", "/api/horizon", request("GET", "/api/horizon", None, Body::empty()), 200);
    add(&apps.busy, "get", "/api/horizon", request("GET", "/api/horizon", None, Body::empty()), 503);
    let cell = "/api/cell/{layer}/{kind}/{n}";
    for uri in ["/api/cell/1/h/3", "/api/cell/0/c/0", "/api/cell/1/f/15"] {
        add(main, "get", cell, request("GET", uri, None, Body::empty()), 200);
    }
    for uri in
        ["/api/cell/2/h/0", "/api/cell/0/z/0", "/api/cell/0/h/16", "/api/cell/x/h/1", "/api/cell/0/c/0?model=gru"]
    {
        add(main, "get", cell, request("GET", uri, None, Body::empty()), 404);
    }
    add(main, "get", cell, request("GET", "/api/cell/1/z/3?model=gru", None, Body::empty()), 200);
    add(main, "get", cell, request("GET", "/api/cell/0/h/0?model=nope", None, Body::empty()), 422);
    for (path, uri) in [
        ("/healthz", "/healthz"),
        ("/api/model", "/api/model"),
        ("/api/models", "/api/models"),
        ("/api/openapi.json", "/api/openapi.json"),
        ("/api/horizon", "/api/horizon"),
        (cell, "/api/cell/0/h/0"),
    ] {
        let mut r = request("GET", uri, None, Body::empty());
        r.headers_mut().insert("host", "evil.example".parse().unwrap());
        add(main, "get", path, r, 403);
        add(main, "get", path, request("POST", uri, Some("application/json"), Body::from("{}")), 405);
    }

    // POST routes: the successes.
    let trace = "/api/trace";
    add(main, "post", trace, post(trace, &json!({"text": C})), 200);
    add(
        main,
        "post",
        trace,
        post(trace, &json!({"text": "a\u{1F600}b", "kinds": ["i", "f", "g", "o", "write", "keep"], "top_k": 0})),
        200,
    );
    add(main, "post", trace, post(trace, &json!({"text": "ab", "layers": [1], "cells": [3, 0], "top_k": 2})), 200);
    add(main, "post", trace, post("/api/trace?format=npy", &json!({"text": C})), 200);
    add(main, "post", trace, post(trace, &json!({"text": C, "model": "gru", "kinds": ["r", "z", "n"]})), 200);
    add(main, "post", trace, post(trace, &json!({"text": C, "model": "nope"})), 422);
    let compare = "/api/compare";
    add(main, "post", compare, post(compare, &json!({"text": C.repeat(3), "feature": "string"})), 200);
    add(
        main,
        "post",
        compare,
        post(
            compare,
            &json!({"text": C, "regex": "[a-z]", "models": ["gru", "tiny"], "positions": 2, "max_back": 5, "top_k": 1}),
        ),
        200,
    );
    add(main, "post", compare, post(compare, &json!({"text": C, "feature": "if", "models": ["nope"]})), 422);
    add(main, "post", compare, post(compare, &json!({"text": C, "feature": "if", "positions": 0})), 422);
    let view = "/api/view";
    add(main, "post", view, post(view, &json!({"text": "a\u{1F600}b"})), 200);
    add(main, "post", view, post(view, &json!({"text": C, "layer": 1, "kinds": ["h", "c", "f"], "top_k": 0})), 200);
    add(main, "post", view, post(view, &json!({"text": C, "exact": true})), 200);
    let rank = "/api/cells/rank";
    add(main, "post", rank, post(rank, &json!({"text": C.repeat(3), "feature": "string"})), 200);
    add(main, "post", rank, post(rank, &json!({"text": C.repeat(3), "feature": "column", "metric": "spearman"})), 200);
    add(main, "post", rank, post(rank, &json!({"text": C, "regex": "[a-z]", "kinds": ["h"], "top_k": 3})), 200);
    add(main, "post", rank, post(rank, &json!({"text": C, "spans": [[2, 9]], "layers": [0]})), 200);
    let intervene = "/api/intervene";
    let clamp = json!({"layer": 1, "kind": "c", "cell": 3, "value": 0.5});
    add(main, "post", intervene, post(intervene, &json!({"text": C, "clamps": [clamp]})), 200);
    let clamps = json!([{"layer": 0, "kind": "h", "cell": 1, "value": 0, "from": 2, "to": 4}]);
    add(main, "post", intervene, post(intervene, &json!({"text": "a\u{1F600}bc", "clamps": clamps, "top_k": 2})), 200);
    let sample = "/api/sample";
    add(main, "post", sample, post(sample, &json!({"length": 5, "temperature": 1.0})), 200);
    let watched = json!({"prime": "if (", "length": 8, "temperature": 0.5, "seed": 7, "top_k": 5, "clamps": [clamp],
        "watch": {"layer": 1, "kind": "f", "cell": 2}});
    add(main, "post", sample, post(sample, &watched), 200);
    add(main, "post", sample, post("/api/sample?stream=ndjson", &watched), 200);
    add(main, "post", sample, post("/api/sample?stream=ndjson", &json!({"length": 3, "temperature": 0})), 200);
    let saliency = "/api/saliency";
    add(main, "post", saliency, post(saliency, &json!({"text": C, "position": 10})), 200);
    // A probe needs 200 characters with strings in both parts of its split.
    let long_c: String = C.repeat(8).chars().take(LONG).collect();
    let probe = "/api/probe";
    add(main, "post", probe, post(probe, &json!({"text": long_c, "feature": "string"})), 200);
    add(
        main,
        "post",
        probe,
        post(
            probe,
            &json!({"text": long_c, "regex": "\"[a-z]", "layers": [1], "kinds": ["c"], "l1": 0.01, "max_cells": 16}),
        ),
        200,
    );
    let probe_score = "/api/probe/score";
    let fitted = json!({"weights": [{"layer": 1, "kind": "c", "cell": 3, "weight": 1.5, "mean": 0.1, "std": 0.5}], "bias": -0.2,
        "best_cell": {"layer": 1, "kind": "h", "cell": 2, "sign": 1, "auc_train": 0.7, "auc_heldout": 0.6}});
    add(main, "post", probe_score, post(probe_score, &json!({"probe": fitted, "text": C, "feature": "string"})), 200);
    add(main, "post", probe_score, post(probe_score, &json!({"probe": fitted, "text": C})), 200);
    let explain = "/api/explain";
    add(main, "post", explain, post(explain, &json!({"text": C, "position": 10, "layer": 1, "cell": 3})), 200);

    // POST routes: the errors every one of them can give. Per route: a request
    // that succeeds, one whose text is over the limit, one that is invalid.
    let x = "x".repeat(LONG + 1);
    let posts = [
        (trace, json!({"text": "ab"}), json!({"text": x}), json!({"text": "a", "layers": [2]})),
        (view, json!({"text": "ab"}), json!({"text": x}), json!({"text": "a", "layer": 7})),
        (
            rank,
            json!({"text": "\"a\"", "feature": "string"}),
            json!({"text": x, "feature": "string"}),
            json!({"text": "a", "feature": "quux"}),
        ),
        (
            intervene,
            json!({"text": "ab", "clamps": [clamp]}),
            json!({"text": x, "clamps": [clamp]}),
            json!({"text": "a", "clamps": []}),
        ),
        (
            sample,
            json!({"length": 1, "temperature": 1}),
            json!({"prime": x, "length": 1, "temperature": 1}),
            json!({"length": 0, "temperature": 1}),
        ),
        (
            saliency,
            json!({"text": "abc", "position": 0}),
            json!({"text": x, "position": 0}),
            json!({"text": "abc", "position": 2}),
        ),
        (
            probe,
            json!({"text": long_c, "feature": "string"}),
            json!({"text": x, "feature": "string"}),
            json!({"text": "abc", "feature": "string"}),
        ),
        (
            probe_score,
            json!({"probe": fitted, "text": "abc"}),
            json!({"probe": fitted, "text": x}),
            json!({"probe": {"weights": [], "bias": "x"}, "text": "abc"}),
        ),
        (
            compare,
            json!({"text": "\"a\"", "feature": "string"}),
            json!({"text": x, "feature": "string"}),
            json!({"text": "a", "feature": "quux"}),
        ),
        (
            explain,
            json!({"text": "abc", "position": 0, "layer": 0, "cell": 0}),
            json!({"text": x, "position": 0, "layer": 0, "cell": 0}),
            json!({"text": "abc", "position": 3, "layer": 0, "cell": 0}),
        ),
    ];
    for (path, ok, long_text, invalid) in posts {
        add(main, "post", path, request("POST", path, Some("application/json"), Body::from("{not json")), 400);
        let mut r = post(path, &ok);
        r.headers_mut().insert("host", "evil.example".parse().unwrap());
        add(main, "post", path, r, 403);
        add(main, "post", path, request("GET", path, None, Body::empty()), 405);
        add(&apps.slow, "post", path, request("POST", path, Some("application/json"), Body::new(Never)), 408);
        add(main, "post", path, post(path, &long_text), 413);
        let mut r = post(path, &ok);
        r.headers_mut().insert("content-length", "999999999".parse().unwrap());
        add(main, "post", path, r, 413);
        add(main, "post", path, request("POST", path, Some("text/plain"), Body::from(ok.to_string())), 415);
        add(main, "post", path, post(path, &invalid), 422);
        add(main, "post", path, request("POST", path, Some("application/json"), Body::from(r#"{"nope": 1}"#)), 422);
        add(&apps.busy, "post", path, post(path, &ok), 503);
    }
    out
}

/// What one request got.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn send(app: Router, req: Request<Body>) -> Answer {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer { status, content_type, body }
}

fn state(limits: Limits) -> AppState {
    let mut model = tiny_model(None, 21);
    // The shipped model's training metadata, so the document is held to a real one.
    let shipped = cellscope::model::Model::load(&cellscope::model::default_model_path()).expect("the shipped model");
    model.train = shipped.train;
    // A second model, of another architecture, for `model` and the comparison.
    let gru = tiny_model_of(cellscope::model::Arch::Gru, None, 4);
    AppState::with_models(
        vec![
            Served::new("tiny".into(), model, C.repeat(20), "test reference".into()),
            Served::new("gru".into(), gru, C.repeat(20), "test reference".into()),
        ],
        limits,
    )
}

/// Checks one answer against the document; returns the problems.
fn check_answer(checker: &mut Checker, case: (&str, &str, &str), a: &Answer) -> Vec<String> {
    let (method, path, uri) = case;
    let doc = checker.doc;
    let status = a.status.to_string();
    let where_ = format!("{} {uri} (documented as {path}) → {status} {}", method.to_uppercase(), a.content_type);
    let Some(resp) = doc["paths"][path][method]["responses"].get(&status) else {
        return vec![format!("{where_}: the document lists no {status} answer for {} {path}", method.to_uppercase())];
    };
    let resp_ptr = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => r.trim_start_matches('#').to_string(),
        None => format!("/paths/{}/{method}/responses/{status}", escape(path)),
    };
    let Some(media) = deref(doc, resp)["content"].get(&a.content_type) else {
        return vec![format!("{where_}: the document lists no {:?} content for this status", a.content_type)];
    };
    let schema = format!("{resp_ptr}/content/{}/schema", escape(&a.content_type));
    let mut errs = Vec::new();
    match a.content_type.as_str() {
        "application/json" => match serde_json::from_slice::<Value>(&a.body) {
            Ok(v) => checker.check(&schema, &v, "", &mut errs),
            Err(e) => errs.push(format!("the body is not JSON: {e}")),
        },
        "application/x-ndjson" => {
            let text = String::from_utf8_lossy(&a.body);
            if !text.ends_with('\n') {
                errs.push("the stream does not end with a newline".into());
            }
            for (i, line) in text.lines().enumerate() {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => checker.check(&schema, &v, &format!("(line {})", i + 1), &mut errs),
                    Err(e) => errs.push(format!("line {} is not JSON: {e}", i + 1)),
                }
            }
        }
        _ => {
            if media["schema"]["format"] != "binary" {
                errs.push(format!("{:?} is not declared as a binary string", a.content_type));
            }
            if media.get("x-json-header").is_some() {
                // u32 little-endian length, then that many bytes of JSON.
                let n = a.body.get(..4).map_or(usize::MAX, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
                match a.body.get(4..4usize.saturating_add(n)).map(serde_json::from_slice::<Value>) {
                    Some(Ok(v)) => checker.check(
                        &format!("{resp_ptr}/content/{}/x-json-header", escape(&a.content_type)),
                        &v,
                        "(header)",
                        &mut errs,
                    ),
                    _ => errs.push("the binary answer does not start with a JSON header".into()),
                }
            }
        }
    }
    errs.into_iter().map(|e| format!("{where_}: {e}")).collect()
}

#[tokio::test]
async fn every_answer_matches_the_served_openapi_document() {
    let limits = Limits { max_text_chars: LONG, max_body_bytes: 1 << 16, ..Limits::default() };
    let main_state = state(limits.clone());
    let busy_state = state(Limits { max_concurrent: 1, max_queue: 0, ..limits.clone() });
    let apps = Apps {
        main: router(main_state),
        busy: router(busy_state.clone()),
        slow: router(state(Limits { body_timeout_secs: 1, ..limits })),
    };
    // Hold the busy server's only model slot, with no room to wait.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let queue = busy_state.queue.clone();
    let holder = tokio::spawn(async move { queue.run(move || held.recv().unwrap()).await });
    while busy_state.queue.free_slots() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let doc_answer = send(apps.main.clone(), request("GET", "/api/openapi.json", None, Body::empty())).await;
    let doc: Value = serde_json::from_slice(&doc_answer.body).expect("the served document is JSON");
    let mut failures = Vec::new();

    // The document lists exactly the router's JSON routes.
    let routes: BTreeSet<(String, String)> =
        router_routes().into_iter().filter(|(p, _)| p.starts_with("/api/") || p == "/healthz").collect();
    let listed: BTreeSet<(String, String)> = documented(&doc).into_iter().map(|(p, m, _, _)| (p, m)).collect();
    for (p, m) in routes.difference(&listed) {
        failures.push(format!("{} {p} is a route of server::router but not in the document", m.to_uppercase()));
    }
    for (p, m) in listed.difference(&routes) {
        failures.push(format!("{} {p} is in the document but not a route of server::router", m.to_uppercase()));
    }

    // Every error answer is the one Error component.
    for (path, method, status, ct) in documented(&doc) {
        let resp = deref(&doc, &doc["paths"][&path][&method]["responses"][&status]);
        if status.starts_with(['4', '5'])
            && resp["content"][&ct]["schema"] != json!({"$ref": "#/components/schemas/Error"})
        {
            failures
                .push(format!("{method} {path} {status} {ct}: an error answer's schema is not the Error component"));
        }
    }

    // Send everything at once (the 408s each wait a second).
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in cases(&apps).into_iter().enumerate() {
        assert!(fits(c.path, &c.req.uri().to_string()), "case {i}: {} does not fit {}", c.req.uri(), c.path);
        let uri = c.req.uri().to_string();
        tasks.spawn(async move { (i, c.method, c.path, uri, c.want, send(c.app, c.req).await) });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        answers.push(r.unwrap());
    }
    answers.sort_by_key(|a| a.0);
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();

    let mut checker = Checker { doc: &doc, seen: BTreeMap::new() };
    let mut answered = BTreeSet::new();
    for (_, method, path, uri, want, a) in &answers {
        if a.status != *want {
            failures.push(format!(
                "{} {uri}: expected {want}, got {} {}: {}",
                method.to_uppercase(),
                a.status,
                a.content_type,
                String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
            ));
        }
        answered.insert((path.to_string(), method.to_string(), a.status.to_string(), a.content_type.clone()));
        failures.extend(check_answer(&mut checker, (method, path, uri), a));
    }
    // An unknown API path answers the Error component too.
    let a = send(apps.main.clone(), request("GET", "/api/nope", None, Body::empty())).await;
    let mut errs = Vec::new();
    match serde_json::from_slice::<Value>(&a.body) {
        Ok(v) if a.status == 404 => checker.check("/components/schemas/Error", &v, "", &mut errs),
        _ => errs.push(format!("answered {} {}", a.status, String::from_utf8_lossy(&a.body))),
    }
    failures.extend(errs.into_iter().map(|e| format!("GET /api/nope (unknown route) → 404: {e}")));

    for (path, method, status, ct) in documented(&doc).difference(&answered) {
        failures.push(format!(
            "{} {path} → {status} {ct} is documented but no request here got it; add one",
            method.to_uppercase()
        ));
    }
    failures.extend(checker.never_answered());
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

/// The validator itself catches what it is there to catch.
#[test]
fn the_validator_catches_drift() {
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["n"], "properties": {
            "n": {"type": "integer", "minimum": 0},
            "x": {"type": "number", "nullable": true},
            "k": {"type": "string", "enum": ["h", "c"]},
            "line": {"oneOf": [{"$ref": "#/components/schemas/B"}, {"type": "string"}]},
            "m": {"type": "object", "additionalProperties": {"type": "integer"}}
        }},
        "B": {"type": "object", "properties": {"b": {"type": "boolean"}}}
    }}});
    let problems = |v: Value| {
        let mut c = Checker { doc: &doc, seen: BTreeMap::new() };
        let mut errs = Vec::new();
        c.check("/components/schemas/A", &v, "", &mut errs);
        errs
    };
    assert_eq!(
        problems(json!({"n": 1, "x": null, "k": "c", "line": {"b": true}, "m": {"any": 2}})),
        Vec::<String>::new()
    );
    for (bad, says) in [
        (json!({"n": 1, "extra": 0}), "at /extra: field \"extra\" is not declared by #/components/schemas/A"),
        (json!({"n": 1.5}), "at /n: number is not integer"),
        (json!({"n": -1}), "below the minimum"),
        (json!({}), "required field \"n\" is missing"),
        (json!({"n": 1, "k": "z"}), "is not one of"),
        (json!({"n": 1, "line": {"b": 1}}), "matches 0 of the 2 branches of oneOf"),
        (json!({"n": 1, "line": {"c": true}}), "matches 0 of the 2 branches"),
        (json!({"n": 1, "m": {"a": "s"}}), "at /m/a: string is not integer"),
    ] {
        let errs = problems(bad.clone());
        assert!(errs.iter().any(|e| e.contains(says)), "{bad}: expected {says:?}, got {errs:?}");
    }
    // A declared field no answer carries is reported.
    let mut c = Checker { doc: &doc, seen: BTreeMap::new() };
    c.check("/components/schemas/A", &json!({"n": 1}), "", &mut Vec::new());
    assert!(c.never_answered().iter().any(|e| e.contains("declares \"x\"")));
}
