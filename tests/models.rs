//! Several models in one server: `/api/models`, `model` in requests and `?model=`
//! in URLs, a trace cache that keeps models apart, loading a models folder, and
//! the comparison (`POST /api/compare`, the `/compare` page).

use axum::body::Body;
use axum::http::Request;
use cellscope::model::{Arch, Kind, Model};
use cellscope::server::{load_models, router, AppState, Limits, Served};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{tiny_model, tiny_model_of};

const TEXT: &str = "if (x) { s = \"a(b)\"; } /* c */ y = 2;\n";

fn models() -> Vec<(String, Model)> {
    vec![
        ("lstm".into(), tiny_model(None, 5)),
        ("gru".into(), tiny_model_of(Arch::Gru, None, 6)),
        ("rnn".into(), tiny_model_of(Arch::Rnn, None, 7)),
    ]
}

fn app_state() -> AppState {
    let served =
        models().into_iter().map(|(id, m)| Served::new(id, m, TEXT.repeat(30), "test reference".into())).collect();
    AppState::with_models(served, Limits::default())
}

async fn send(state: &AppState, req: Request<Body>) -> (u16, Vec<u8>) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

async fn get_json(state: &AppState, uri: &str) -> (u16, Value) {
    let (s, body) = send(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body))))
}

async fn get_html(state: &AppState, uri: &str) -> (u16, String) {
    let (s, body) = send(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, String::from_utf8(body).unwrap())
}

async fn post(state: &AppState, uri: &str, body: Value) -> (u16, Value) {
    let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string()));
    let (s, body) = send(state, req.unwrap()).await;
    (s, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body))))
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[tokio::test]
async fn the_models_are_listed_default_first_and_each_answers_for_itself() {
    let state = app_state();
    let (s, v) = get_json(&state, "/api/models").await;
    assert_eq!(s, 200, "{v}");
    let listed: Vec<(&str, &str, bool)> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["arch"].as_str().unwrap(), m["default"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, [("lstm", "lstm", true), ("gru", "gru", false), ("rnn", "rnn", false)]);
    let (_, info) = get_json(&state, "/api/model?model=rnn").await;
    assert_eq!((info["id"].as_str(), info["arch"].as_str()), (Some("rnn"), Some("rnn")));
    let (_, info) = get_json(&state, "/api/model").await;
    assert_eq!(info["id"], "lstm", "no model named: the default");

    // The same text through each model, twice (the second from the trace cache):
    // each answer is that model's own trace, never another model's cached one.
    for _ in 0..2 {
        for (id, model) in models() {
            let (s, v) =
                post(&state, "/api/trace", json!({"text": TEXT, "model": id, "kinds": ["h"], "top_k": 0})).await;
            assert_eq!(s, 200, "{id}: {v}");
            let expected = model.trace(TEXT);
            for (l, layer) in v["layers"].as_array().unwrap().iter().enumerate() {
                let got = matrix(&layer["h"]);
                for (t, row) in got.iter().enumerate() {
                    for (j, &x) in row.iter().enumerate() {
                        let want = expected.layers[l].get(Kind::Hidden)[[t, j]];
                        assert!((x - want).abs() < 1e-6, "{id} layer {l} h[{t},{j}] = {x}, its own model gives {want}");
                    }
                }
            }
        }
    }
    assert_eq!(state.traces.len(), 3, "one cached trace per model");

    // A kind the named model lacks, and a model nobody serves, are clear errors.
    let (s, v) = post(&state, "/api/trace", json!({"text": TEXT, "model": "gru", "kinds": ["c"]})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("bad_kind")), "{v}");
    let (s, v) = post(&state, "/api/trace", json!({"text": TEXT, "model": "transformer"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("unknown_model")), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("transformer") && message.contains("lstm, gru, rnn"), "{message}");
    let (s, v) = get_json(&state, "/api/horizon?model=transformer").await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("unknown_model")), "{v}");
}

#[tokio::test]
async fn every_model_route_takes_the_model() {
    let state = app_state();
    let (s, v) =
        post(&state, "/api/cells/rank", json!({"text": TEXT.repeat(3), "feature": "string", "model": "gru"})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["cells"].as_array().unwrap().iter().all(|c| ["h", "r", "z", "n"].contains(&c["kind"].as_str().unwrap())));
    let (s, v) = post(&state, "/api/saliency", json!({"text": TEXT, "position": 20, "model": "rnn"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) =
        post(&state, "/api/explain", json!({"text": TEXT, "position": 3, "layer": 0, "cell": 0, "model": "rnn"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("bad_kind")), "explain is the LSTM's: {v}");
    let (s, v) = post(&state, "/api/sample", json!({"length": 5, "temperature": 0, "model": "gru"})).await;
    assert_eq!(s, 200, "{v}");
    let clamp = json!({"layer": 1, "kind": "h", "cell": 2, "value": 0.5});
    let (s, v) = post(&state, "/api/intervene", json!({"text": TEXT, "clamps": [clamp], "model": "rnn"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = get_json(&state, "/api/cell/1/z/3?model=gru").await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = get_json(&state, "/api/cell/1/c/3?model=gru").await;
    assert_eq!(s, 404, "a GRU has no c");
    let (s, v) = get_json(&state, "/api/horizon?model=rnn").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["profile"].as_array().unwrap().len(), v["max_back"].as_u64().unwrap() as usize + 1);
}

#[tokio::test]
async fn pages_keep_the_model_in_their_links_and_offer_a_picker() {
    let state = app_state();
    let (s, html) = get_html(&state, "/?model=gru").await;
    assert_eq!(s, 200);
    assert!(html.contains(r#"<option value="gru" selected>"#), "the picker shows the model");
    assert!(html.contains(r#"data-model="gru" data-mq="?model=gru""#));
    assert!(html.contains(r#"<input type="hidden" name="model" value="gru">"#), "the form keeps it");
    assert!(html.contains(r#"href="/model?model=gru""#) && html.contains(r#"href="/compare""#));
    assert!(!html.contains(r#"<option value="c""#), "the kind menu is the GRU's: {}", &html[..300]);
    let (s, html) = get_html(&state, "/cell/1/z/3?model=gru").await;
    assert_eq!(s, 200);
    assert!(html.contains(r#"href="/cell/1/z/4?model=gru""#) && html.contains("cell=3&amp;model=gru"));
    assert!(!html.contains(r#"href="/cell/1/c/3"#), "other kinds are the GRU's own");
    let (s, html) = get_html(&state, "/model?model=rnn").await;
    assert_eq!(s, 200);
    assert!(html.contains("Recurrent") || html.contains("RNN"), "the RNN's card");
    let (s, html) = get_html(&state, "/?model=nope").await;
    assert_eq!(s, 404);
    assert!(html.contains("no model &#34;nope&#34; is served here"), "{html}");
    // The default model's links carry no query.
    let (_, html) = get_html(&state, "/").await;
    assert!(html.contains(r#"data-model="lstm" data-mq="""#) && html.contains(r#"href="/model""#));
}

#[tokio::test]
async fn the_comparison_ranks_each_model_on_its_own_trace() {
    let state = app_state();
    let text = TEXT.repeat(8);
    let body = json!({"text": text, "feature": "string", "models": ["rnn", "lstm"], "positions": 4, "max_back": 40, "top_k": 2});
    let (s, v) = post(&state, "/api/compare", body).await;
    assert_eq!(s, 200, "{v}");
    let got = v["models"].as_array().unwrap();
    assert_eq!(
        got.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ["rnn", "lstm"],
        "in the order asked"
    );
    for m in got {
        let model = models().into_iter().find(|(id, _)| id == m["id"].as_str().unwrap()).unwrap().1;
        let trace = model.trace(&text);
        let labels = cellscope::analysis::concept_labels(&trace.chars, cellscope::analysis::Concept::String);
        let layers: Vec<usize> = (0..model.layers()).collect();
        let ranked =
            cellscope::finder::rank_trace(&trace, &labels, &layers, model.arch().kinds(), Default::default()).unwrap();
        let best = &m["best"][0];
        assert_eq!(best["layer"].as_u64().unwrap() as usize, ranked[0].layer);
        assert_eq!(best["kind"].as_str().unwrap(), ranked[0].kind.letter());
        assert_eq!(best["cell"].as_u64().unwrap() as usize, ranked[0].cell);
        assert!((best["score"].as_f64().unwrap() - ranked[0].score).abs() < 1e-9);
        assert_eq!(m["best"].as_array().unwrap().len(), 2);
        let expected = cellscope::model::memory_horizon_of(&model, &trace, 4, 40, 1).unwrap();
        let h = &m["horizon"];
        assert_eq!(h["median"].as_f64().unwrap(), expected.median);
        let profile: Vec<f32> = h["profile"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(profile, expected.profile);
        assert_eq!(profile.len(), 41);
        assert!(profile.iter().all(|&p| (0.0..=1.0).contains(&p)), "relative to each gradient's peak: {profile:?}");
    }
    let (s, v) = post(&state, "/api/compare", json!({"text": TEXT, "feature": "if", "max_back": 601})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("bad_request")), "{v}");
    let (s, v) = post(&state, "/api/compare", json!({"text": TEXT, "feature": "if", "models": []})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("unknown_model")), "{v}");

    // The page: a row, a curve and a coloured text per model.
    let (s, html) = get_html(&state, "/compare?feature=string").await;
    assert_eq!(s, 200, "{html}");
    for id in ["lstm", "gru", "rnn"] {
        assert!(html.contains(&format!(r#"<tr data-model="{id}">"#)), "a row for {id}");
        assert!(html.contains(&format!(r#"<section class="compare-text" data-model="{id}">"#)), "a text for {id}");
    }
    assert_eq!(html.matches(r#"class="gradient-curve""#).count(), 3);
    assert!(html.contains(r#"href="/cell/"#) && html.contains("?model=gru"), "best cells link to their pages");
}

#[test]
fn a_models_folder_loads_with_ids_from_file_names_and_shared_references() {
    let dir = std::env::temp_dir().join(format!("cellscope-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("other")).unwrap();
    let paths = [dir.join("a-lstm.safetensors"), dir.join("b-gru.safetensors"), dir.join("other/a-lstm.safetensors")];
    tiny_model(None, 1).save(&paths[0]).unwrap();
    tiny_model_of(Arch::Gru, None, 2).save(&paths[1]).unwrap();
    tiny_model(None, 3).save(&paths[2]).unwrap();
    std::fs::write(dir.join("a-lstm.reference.txt"), TEXT).unwrap();
    let served = load_models(&paths, None).unwrap();
    let ids: Vec<&str> = served.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a-lstm", "b-gru", "a-lstm-2"], "file stems, made unique");
    assert_eq!(served[0].reference.as_str(), TEXT);
    assert_eq!(
        served[1].reference.as_str(),
        TEXT,
        "no reference of its own: the first model's, which its vocabulary covers"
    );
    assert_eq!(served[1].reference_name.as_str(), "a-lstm.reference.txt");
    let err = load_models(&[dir.join("missing.safetensors")], None).err().unwrap();
    assert!(format!("{err:#}").contains("missing.safetensors"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_loads_every_shipped_model_the_default_first() {
    let files = cellscope::server::default_model_files().unwrap();
    assert_eq!(files[0], cellscope::model::default_model_path());
    assert!(files.iter().all(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        name.ends_with(".safetensors") && !name.ends_with(".ckpt.safetensors")
    }));
}
