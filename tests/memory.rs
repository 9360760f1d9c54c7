//! Memory views: the write and keep kinds against the gates (over HTTP), one step
//! explained, the memory horizon, and the CLI's `explain`.

use axum::body::Body;
use axum::http::Request;
use cellscope::model::Kind;
use cellscope::server::{router, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::tiny_model;

const TEXT: &str = "if (x) { s = \"a(b)\"; } /* c */ y = 2;\n";

fn app_state() -> AppState {
    AppState::new(tiny_model(None, 5), Limits::default(), TEXT.repeat(30), "test reference".into())
}

async fn call(state: AppState, req: Request<Body>) -> (u16, Value) {
    let resp = router(state).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

async fn post(uri: &str, body: Value) -> (u16, Value) {
    let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string()));
    call(app_state(), req.unwrap()).await
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

#[tokio::test]
async fn write_and_keep_over_http_are_the_gates_products_and_sum_to_c() {
    let kinds = ["write", "keep", "i", "f", "g", "c"];
    let (s, v) = post("/api/trace", json!({"text": TEXT, "kinds": kinds, "top_k": 0})).await;
    assert_eq!(s, 200, "{v}");
    for layer in v["layers"].as_array().unwrap() {
        let m: Vec<Vec<Vec<f64>>> = kinds.iter().map(|k| matrix(&layer[*k])).collect();
        let [write, keep, i, f, g, c] = [&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]];
        for t in 0..c.len() {
            for j in 0..c[t].len() {
                let c_prev = if t == 0 { 0.0 } else { c[t - 1][j] };
                assert!((write[t][j] - i[t][j] * g[t][j]).abs() < 1e-6, "write ≠ i·g at {t},{j}");
                assert!((keep[t][j] - f[t][j] * c_prev).abs() < 1e-6, "keep ≠ f·c₋₁ at {t},{j}");
                assert!((keep[t][j] + write[t][j] - c[t][j]).abs() < 1e-5, "c ≠ keep + write at {t},{j}");
            }
        }
    }
    // The page's int8 view carries them too, and an unknown kind is refused by name.
    let req = Request::post("/api/view")
        .header("content-type", "application/json")
        .body(Body::from(json!({"text": TEXT, "layer": 0, "kinds": ["write", "keep"]}).to_string()))
        .unwrap();
    let resp = router(app_state()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (s, v) = post("/api/trace", json!({"text": TEXT, "kinds": ["erase"]})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("bad_kind")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("write, keep"), "{v}");
}

#[tokio::test]
async fn explain_writes_out_the_step_with_the_traces_numbers() {
    let model = tiny_model(None, 5);
    let trace = model.trace(TEXT);
    let (p, layer, cell) = (14, 1, 3);
    let (s, v) = post("/api/explain", json!({"text": TEXT, "position": p, "layer": layer, "cell": cell})).await;
    assert_eq!(s, 200, "{v}");
    let lt = &trace.layers[layer];
    let get = |k: &str| v[k].as_f64().unwrap() as f32;
    for (name, kind) in [
        ("i", Kind::Input),
        ("f", Kind::Forget),
        ("g", Kind::Candidate),
        ("o", Kind::Output),
        ("c", Kind::Cell),
        ("h", Kind::Hidden),
    ] {
        assert_eq!(get(name), lt.get(kind)[[p, cell]], "{name}");
    }
    assert_eq!(get("c_prev"), lt.get(Kind::Cell)[[p - 1, cell]]);
    assert!((get("keep") + get("write") - get("c")).abs() < 1e-6);
    assert!((get("erase") - (1.0 - get("f")) * get("c_prev").abs()).abs() < 1e-6);
    assert_eq!(v["char"], TEXT.chars().nth(p).unwrap().to_string());
    let lines: Vec<&str> = v["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[2].starts_with("c = f·c₋₁ + i·g = "), "{lines:?}");
    assert!(lines[2].ends_with(&format!("{:.3}", get("c")).replace('-', "−")), "{lines:?}");
    for (body, code) in [
        (json!({"text": TEXT, "position": 999, "layer": 0, "cell": 0}), "bad_position"),
        (json!({"text": TEXT, "position": 1, "layer": 7, "cell": 0}), "bad_layer"),
        (json!({"text": TEXT, "position": 1, "layer": 0, "cell": 99}), "bad_cell"),
        (json!({"text": TEXT, "position": 1, "layer": 0}), "invalid_request"),
    ] {
        let (s, v) = post("/api/explain", body.clone()).await;
        assert_eq!((s, v["error"]["code"].as_str()), (422, Some(code)), "{body}: {v}");
    }
}

#[tokio::test]
async fn the_memory_horizon_is_the_median_of_the_saliency_horizons() {
    let state = app_state();
    let (s, v) = call(state.clone(), Request::get("/api/horizon").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    let model = tiny_model(None, 5);
    let reference = TEXT.repeat(30);
    let trace = model.trace(&reference);
    let positions: Vec<usize> =
        v["positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as usize).collect();
    let horizons: Vec<usize> = v["horizons"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as usize).collect();
    assert_eq!(positions.len(), cellscope::server::memory::HORIZON_POSITIONS);
    let max_back = v["max_back"].as_u64().unwrap() as usize;
    for (&p, &h) in positions.iter().zip(&horizons) {
        let s = cellscope::model::saliency(&model, &trace, p, max_back).unwrap();
        assert_eq!(cellscope::model::horizon_1pct(&s), h, "position {p}");
    }
    let mut sorted = horizons.clone();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] as f64 } else { (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0 };
    assert_eq!(v["median"].as_f64().unwrap(), median);
    // Measured once: the model card then shows it without asking again.
    let resp = router(state).oneshot(Request::get("/model").body(Body::empty()).unwrap()).await.unwrap();
    let page = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(page.contains(&format!("<p id=\"horizon\">Median {median:.0} characters")), "model card lacks the horizon");
}

#[tokio::test]
async fn cell_profiles_give_the_memory_time_scale() {
    let state = app_state();
    let (s, v) = call(state, Request::get("/api/cell/0/c/2").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    let model = tiny_model(None, 5);
    let trace = model.trace(&TEXT.repeat(30));
    let f = trace.layers[0].get(Kind::Forget).column(2);
    let mean = f.iter().map(|&x| f64::from(x)).sum::<f64>() / f.len() as f64;
    assert!((v["mean_forget"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((v["time_scale"].as_f64().unwrap() - (-1.0 / mean.ln())).abs() < 1e-6);
}
