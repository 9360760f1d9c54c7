//! The HTTP API and pages, in-process (`tower::ServiceExt::oneshot`) and over a
//! real socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use cellscope::analysis::{concept_labels, Concept, GradedMetric, Labels};
use cellscope::finder::rank_trace;
use cellscope::model::{Arch, Kind};
use cellscope::server::{router, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::tiny_model;

fn state_with(limits: Limits) -> AppState {
    AppState::new(tiny_model(None, 21), limits, "if (a) { b = \"x\"; } /* c */\n".repeat(20), "test reference".into())
}

pub(crate) fn app() -> Router {
    router(state_with(Limits::default()))
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body, headers)
}

pub(crate) async fn post_json(app: Router, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let req = Request::post(uri).header("content-type", "application/json").body(body.into()).unwrap();
    let (status, bytes, headers) = send(app, req).await;
    let ct = headers.get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{uri} answered {status} with content-type {ct:?}: {}",
        String::from_utf8_lossy(&bytes)
    );
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn get(app: Router, uri: &str) -> (StatusCode, String) {
    let (status, bytes, _) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    (status, String::from_utf8(bytes).unwrap())
}

pub(crate) fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "body {body}");
    assert_eq!(body["error"]["code"], want_code, "body {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.len() > 10), "message should explain: {body}");
}

#[tokio::test]
async fn health_and_model_info() {
    let (s, body) = get(app(), "/healthz").await;
    assert_eq!(s, 200);
    assert!(body.contains("ok"));
    let (s, body) = get(app(), "/api/model").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["layers"], 2);
    assert_eq!(v["hidden_size"], 16);
    assert_eq!(v["arch"], "lstm");
    assert!(v["params"].as_u64().unwrap() > 1000);
    assert_eq!(v["vocab"].as_array().unwrap().len(), 60);
    let (s, body) = get(app(), "/api/openapi.json").await;
    assert_eq!(s, 200);
    let spec: Value = serde_json::from_str(&body).unwrap();
    assert!(spec["paths"]["/api/trace"]["post"].is_object());
}

#[tokio::test]
async fn trace_returns_time_major_matrices_and_predictions() {
    let (s, v) = post_json(app(), "/api/trace", json!({"text": "if (x) {}", "top_k": 3}).to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["length"], 9);
    assert_eq!(v["chars"][0], "i");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let h = layers[1]["h"].as_array().unwrap();
    assert_eq!(h.len(), 9);
    assert_eq!(h[0].as_array().unwrap().len(), 16);
    assert!(layers[0].get("f").is_none(), "default kinds are h and c");
    let p = &v["predictions"][0];
    assert_eq!(p["top"].as_array().unwrap().len(), 3);
    assert_eq!(p["next"], "f");
    assert!(p["p_next"].as_f64().unwrap() > 0.0);
    assert!(v["predictions"][8]["next"].is_null());

    let model = tiny_model(None, 21);
    let direct = model.trace("if (x) {}");
    let got = v["layers"][1]["c"][4][7].as_f64().unwrap() as f32;
    assert!((got - direct.layers[1].get(Kind::Cell)[[4, 7]]).abs() < 1e-6, "API value equals the library's");
}

#[tokio::test]
async fn trace_subsets_and_unknown_characters() {
    let body = json!({"text": "a\u{1F600}b", "layers": [1], "kinds": ["f", "o"], "cells": [3, 0], "top_k": 0});
    let (s, v) = post_json(app(), "/api/trace", body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["unknown"], json!([1]));
    assert_eq!(v["chars"][1], "\u{1F600}");
    assert_eq!(v["layers"][0]["layer"], 1);
    assert_eq!(v["layers"][0]["f"][0].as_array().unwrap().len(), 2);
    assert!(v["layers"][0].get("h").is_none());
    assert!(v.get("predictions").is_none());
    let (s, v) = post_json(app(), "/api/trace", json!({"text": ""}).to_string()).await;
    assert_eq!(s, 200);
    assert_eq!(v["length"], 0);
}

#[tokio::test]
async fn trace_as_npy() {
    let req = Request::post("/api/trace?format=npy")
        .header("content-type", "application/json")
        .body(Body::from(json!({"text": "abc", "kinds": ["h", "c", "g"], "layers": [0, 1]}).to_string()))
        .unwrap();
    let (s, bytes, headers) = send(app(), req).await;
    assert_eq!(s, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["x-cellscope-kinds"], "h,c,g");
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'shape': (2, 3, 3, 16)"), "{header}");
    assert_eq!(bytes.len(), 10 + hlen + 2 * 3 * 3 * 16 * 4);
    // Accept: application/octet-stream does the same.
    let req = Request::post("/api/trace")
        .header("content-type", "application/json")
        .header("accept", "application/octet-stream")
        .body(Body::from(json!({"text": "ab"}).to_string()))
        .unwrap();
    let (_, bytes, _) = send(app(), req).await;
    assert_eq!(&bytes[..6], b"\x93NUMPY");
}

/// The `.npy` answer holds the JSON answer's numbers, in (layer, kind, t, cell)
/// order, for whole layers and for chosen cells.
#[tokio::test]
async fn npy_values_are_the_json_values() {
    for cells in [None, Some(vec![7, 2, 15])] {
        let mut body = json!({"text": "if (x) { y(\"z\"); }", "kinds": ["h", "c", "g"], "layers": [1, 0], "top_k": 0});
        if let Some(cells) = &cells {
            body["cells"] = json!(cells);
        }
        let req = Request::post("/api/trace?format=npy")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (s, bytes, _) = send(app(), req).await;
        assert_eq!(s, 200);
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let values: Vec<f32> =
            bytes[10 + hlen..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let (s, v) = post_json(app(), "/api/trace", body.to_string()).await;
        assert_eq!(s, 200);
        let mut expected = Vec::new();
        for layer in v["layers"].as_array().unwrap() {
            for kind in ["h", "c", "g"] {
                for row in layer[kind].as_array().unwrap() {
                    expected.extend(row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32));
                }
            }
        }
        let width = cells.as_ref().map_or(16, Vec::len);
        assert_eq!(values.len(), 2 * 3 * 18 * width, "cells {cells:?}");
        assert_eq!(values, expected, "cells {cells:?}: .npy and JSON disagree");
    }
}

#[tokio::test]
async fn every_bad_request_gets_a_json_error() {
    let cases: Vec<(&str, Body, u16, &str)> = vec![
        ("/api/trace", Body::from("{not json"), 400, "malformed_json"),
        ("/api/trace", Body::from(""), 400, "malformed_json"),
        ("/api/trace", Body::from(r#"{"text": 5}"#), 422, "invalid_request"),
        ("/api/trace", Body::from(r#"{"txt": "a"}"#), 422, "invalid_request"),
        ("/api/trace", Body::from(r#"{"text": "a", "layers": [2]}"#), 422, "bad_layer"),
        ("/api/trace", Body::from(r#"{"text": "a", "kinds": ["z"]}"#), 422, "bad_kind"),
        ("/api/trace", Body::from(r#"{"text": "a", "cells": [16]}"#), 422, "bad_cell"),
        ("/api/trace", Body::from(r#"{"text": "a", "cells": [-1]}"#), 422, "invalid_request"),
        ("/api/trace", Body::from(r#"{"text": "a", "top_k": 1000}"#), 422, "bad_top_k"),
        ("/api/trace?format=csv", Body::from(r#"{"text": "a"}"#), 422, "bad_format"),
        ("/api/cells/rank", Body::from(r#"{"text": "a", "feature": "quux"}"#), 422, "bad_feature"),
        ("/api/cells/rank", Body::from(r#"{"text": "a"}"#), 422, "bad_feature"),
        ("/api/cells/rank", Body::from(r#"{"text": "abc", "regex": "("}"#), 422, "bad_regex"),
        ("/api/cells/rank", Body::from(r#"{"text": "abc", "spans": [[2, 9]]}"#), 422, "bad_spans"),
        ("/api/cells/rank", Body::from(r#"{"text": "no strings here", "feature": "string"}"#), 422, "bad_feature"),
        ("/api/view", Body::from(r#"{"text": "a", "layer": 7}"#), 422, "bad_layer"),
    ];
    for (uri, body, status, code) in cases {
        let (s, v) = post_json(app(), uri, body).await;
        assert_error(s, &v, status, code);
    }
}

#[tokio::test]
async fn limits_answer_413_and_503_without_doing_the_work() {
    let small =
        Limits { max_body_bytes: 2000, max_text_chars: 50, max_concurrent: 1, max_queue: 0, ..Limits::default() };
    let state = state_with(small);
    let (s, v) = post_json(router(state.clone()), "/api/trace", json!({"text": "x".repeat(51)}).to_string()).await;
    assert_error(s, &v, 413, "text_too_long");
    let (s, v) = post_json(router(state.clone()), "/api/trace", json!({"text": "x".repeat(5000)}).to_string()).await;
    assert_error(s, &v, 413, "body_too_large");
    // Take the only model slot (and leave no room to wait): the next request is
    // refused at once, with a Retry-After.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let queue = state.queue.clone();
    let holder = tokio::spawn(async move { queue.run(move || held.recv().unwrap()).await });
    while state.queue.free_slots() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let req = Request::post("/api/trace")
        .header("content-type", "application/json")
        .body(Body::from(json!({"text": "abc"}).to_string()))
        .unwrap();
    let (s, bytes, headers) = send(router(state.clone()), req).await;
    assert_error(s, &serde_json::from_slice(&bytes).unwrap(), 503, "busy");
    assert_eq!(headers["retry-after"], "2");
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let (s, _) = post_json(router(state), "/api/trace", json!({"text": "abc"}).to_string()).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_under_api() {
    let (s, body, _) = send(app(), Request::get("/api/nope").body(Body::empty()).unwrap()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 404, "not_found");
    let (s, body, _) = send(app(), Request::get("/api/trace").body(Body::empty()).unwrap()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 405, "method_not_allowed");
    let (s, page) = get(app(), "/no/such/page").await;
    assert_eq!(s, 404);
    assert!(page.contains("Not found"));
}

#[tokio::test]
async fn view_is_one_layer_of_int8_with_a_json_header() {
    let req = Request::post("/api/view")
        .header("content-type", "application/json")
        .body(Body::from(json!({"text": "ab(c)", "layer": 1}).to_string()))
        .unwrap();
    let (s, bytes, _) = send(app(), req).await;
    assert_eq!(s, 200);
    let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[4..4 + n]).unwrap();
    assert_eq!(header["length"], 5);
    assert_eq!(header["hidden"], 16);
    assert_eq!(header["kinds"].as_array().unwrap().len(), Arch::Lstm.kinds().len());
    assert_eq!(bytes.len(), 4 + n + Arch::Lstm.kinds().len() * 5 * 16);
    // The h block equals round(127 h).
    let model = tiny_model(None, 21);
    let t = model.trace("ab(c)");
    let q = bytes[4 + n + 2 * 16 + 5] as i8;
    assert_eq!(q, (t.layers[1].h()[[2, 5]] * 127.0).round() as i8);
}

/// A ranked cell as the API answers it: (layer, kind letter, cell, score).
fn ranked_cells(answer: &Value) -> Vec<(u64, String, u64, f64)> {
    let cells = answer["cells"].as_array().unwrap_or_else(|| panic!("no cells in {answer}"));
    cells
        .iter()
        .map(|c| {
            let kind = c["kind"].as_str().expect("kind letter").to_string();
            (c["layer"].as_u64().unwrap(), kind, c["cell"].as_u64().unwrap(), c["score"].as_f64().unwrap())
        })
        .collect()
}

/// Same cells in the same order, scores equal up to the last bit (serde_json parses floats
/// to within an ulp).
fn assert_same_ranking(got: &[(u64, String, u64, f64)], want: &[(u64, String, u64, f64)], what: &str) {
    let keys = |r: &[(u64, String, u64, f64)]| r.iter().map(|(l, k, c, _)| (*l, k.clone(), *c)).collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "{what}: other cells or another order");
    for (g, w) in got.iter().zip(want) {
        assert!((g.3 - w.3).abs() < 1e-12, "{what}: {g:?} scored, expected {w:?}");
    }
}

/// The first `top` cells the library ranks for `labels` over the app's model (`tiny_model(None, 21)`),
/// every layer and kind, as [`ranked_cells`] writes them.
fn expected_ranking(text: &str, labels: &Labels, top: usize) -> Vec<(u64, String, u64, f64)> {
    let trace = tiny_model(None, 21).trace(text);
    let ranked = rank_trace(&trace, labels, &[0, 1], Arch::Lstm.kinds(), GradedMetric::Pearson).expect("valid labels");
    ranked.iter().take(top).map(|c| (c.layer as u64, c.kind.letter().to_string(), c.cell as u64, c.score)).collect()
}

#[tokio::test]
async fn rank_finds_cells_for_concepts_regexes_and_spans() {
    let text = "x = \"ab\"; y = 1; s = \"cd ef\"; if (z) { w = 2; }\n".repeat(4);
    let chars: Vec<char> = text.chars().collect();
    let (s, v) =
        post_json(app(), "/api/cells/rank", json!({"text": text, "feature": "string", "top_k": 5}).to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metric"], "auc");
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 5);
    let scores: Vec<f64> = cells.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted best first: {scores:?}");
    assert!(scores[0] >= 0.5 && scores[0] <= 1.0);
    let string = concept_labels(&chars, Concept::String);
    assert_same_ranking(&ranked_cells(&v), &expected_ranking(&text, &string, 5), "the string concept");
    let (s, v) =
        post_json(app(), "/api/cells/rank", json!({"text": text, "feature": "column", "kinds": ["c"]}).to_string())
            .await;
    assert_eq!(s, 200);
    assert_eq!(v["metric"], "pearson");
    assert!(v["cells"].as_array().unwrap().iter().all(|c| c["kind"] == "c"));

    // A regex labels the characters inside its matches: here the `if`s (ASCII, so byte
    // offsets are character offsets).
    let (s, v) = post_json(app(), "/api/cells/rank", json!({"text": text, "regex": "if"}).to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["feature"].as_str(), v["metric"].as_str()), (Some("regex:if"), Some("auc")));
    let mut inside_if = vec![false; chars.len()];
    for m in text.match_indices("if") {
        inside_if[m.0..m.0 + 2].fill(true);
    }
    assert_same_ranking(&ranked_cells(&v), &expected_ranking(&text, &Labels::Binary(inside_if), 20), "the regex");

    // Spans planted on one cell: exactly where layer-1 cell `planted`'s c is positive. That
    // cell separates them perfectly, and so does its h = o·tanh(c) (o > 0); on this
    // repetitive text other cells may too, so the planted one is looked for among the
    // perfect scores. A span off by one character would cost it its 1.0.
    let c = tiny_model(None, 21).trace(&text).layers[1].get(Kind::Cell).to_owned();
    let planted = (0..c.ncols())
        .find(|&j| {
            let positive = c.column(j).iter().filter(|&&x| x > 0.0).count();
            positive > 20 && positive < c.nrows() - 20
        })
        .expect("some layer-1 cell changes sign over the text");
    let positive: Vec<bool> = c.column(planted).iter().map(|&x| x > 0.0).collect();
    let mut spans = Vec::new();
    for (i, &p) in positive.iter().enumerate() {
        match spans.last_mut() {
            Some((_, end)) if p && *end == i => *end = i + 1,
            _ if p => spans.push((i, i + 1)),
            _ => {}
        }
    }
    let all = 2 * Arch::Lstm.kinds().len() * 16;
    let request = json!({"text": text, "spans": spans, "top_k": all});
    let (s, v) = post_json(app(), "/api/cells/rank", request.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["feature"], "spans");
    let ranked = ranked_cells(&v);
    assert_same_ranking(&ranked, &expected_ranking(&text, &Labels::Binary(positive), all), "the spans");
    let perfect: Vec<_> = ranked.iter().take_while(|c| c.3 == 1.0).map(|(l, k, c, _)| (*l, k.as_str(), *c)).collect();
    for kind in ["h", "c"] {
        assert!(perfect.contains(&(1, kind, planted as u64)), "planted cell {planted} ({kind}) not among {perfect:?}");
    }
}

#[tokio::test]
async fn pages_render_and_escape_untrusted_text() {
    let (s, page) = get(app(), "/").await;
    assert_eq!(s, 200);
    assert!(page.contains("class=\"ch"), "the first colouring is server-rendered");
    assert!(page.contains("id=\"initial\""));
    let evil = "</script><script>alert(1)</script>\"'&\u{0}\u{1F600}";
    let form = format!("text={}&layer=1&kind=g&cell=3", urlencode(evil));
    let req =
        Request::post("/").header("content-type", "application/x-www-form-urlencoded").body(Body::from(form)).unwrap();
    let (s, bytes, _) = send(app(), req).await;
    assert_eq!(s, 200);
    let page = String::from_utf8(bytes).unwrap();
    assert!(!page.contains("<script>alert(1)"), "pasted text must be escaped");
    assert!(!page.contains("</script><script>"), "no raw closing tag from user text");
    let textarea = &page[page.find("<textarea").unwrap()..page.find("</textarea>").unwrap()];
    assert!(
        (textarea.contains("&lt;") || textarea.contains("&#60;")) && textarea.contains("alert(1)"),
        "the text is kept, escaped: {textarea}"
    );
    assert!(page.contains("\u{1F600}"));
    assert!(page.contains("layer 1 · candidate g · cell 3"));
    let (s, page) = get(app(), "/cell/1/c/3").await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("Most positive contexts") && page.contains("<svg"));
    let (s, _) = get(app(), "/cell/5/c/3").await;
    assert_eq!(s, 404);
    let (s, _) = get(app(), "/cell/0/q/3").await;
    assert_eq!(s, 404);
    let (s, page) = get(app(), "/model").await;
    assert_eq!(s, 200);
    assert!(page.contains("Gate saturation") && page.contains("rnn.weight_hh_l1"));
    let (s, page) = get(app(), "/?sample=prose&layer=0&kind=h&cell=2").await;
    assert_eq!(s, 200);
    assert!(page.contains("lamp"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let body = json!({"text": "int x;", "kinds": ["c"]}).to_string();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/trace HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json_start = resp.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&resp[json_start..]).unwrap();
    assert_eq!(v["length"], 6);
    // Malformed JSON over the wire is our JSON error too.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        format!("POST /api/trace HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{{{x")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("malformed_json"), "{resp}");
    tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn server_rendered_colours_keep_text_readable_without_scripts() {
    let (s, page) = get(app(), "/?sample=c&layer=1&kind=c&cell=3").await;
    assert_eq!(s, 200);
    // The legend's ends are dark: white text on them, black on white.
    assert!(page.contains("background:#2166ac;color:#fff"), "blue end lacks white text");
    assert!(page.contains("background:#b2182b;color:#fff"), "red end lacks white text");
    assert!(page.contains("background:#ffffff;color:#000"), "white middle lacks black text");
    // Every coloured character names its text colour.
    let spans = page.matches("data-t=").count();
    let stops = page.matches("class=\"stop\"").count();
    assert!(spans > 100 && stops == 9, "{spans} characters, {stops} legend stops");
    assert_eq!(page.matches(";color:#").count(), spans + stops);
}
