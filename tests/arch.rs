//! GRU and tanh-RNN models through every view: traces (against an independent f64
//! reference written here from the equations), stepping and sampling, clamps, the
//! model file, the HTTP API and pages, and the command line. A kind the
//! architecture lacks is a clear error everywhere. (PyTorch parity: `trace.rs`;
//! gradients: `train.rs`.)

use axum::body::Body;
use axum::http::Request;
use cellscope::model::{Arch, Clamp, Kind, Model, Sampling, Stepper};
use cellscope::server::{router, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{temp_dir, tiny_model_of};

const TEXT: &str = "if (x) { y = \"a;\"; } /* ok */\n\tint z = 3;\n";
const PLAIN: [Arch; 2] = [Arch::Gru, Arch::Rnn];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The next-character log-probabilities of `text` by the equations of `gru_rnn.rs`,
/// in f64 and straight from the weights (no tables, no kernels), with h clamps.
fn reference_logp(model: &Model, text: &str, clamps: &[Clamp]) -> Vec<f64> {
    let w = &model.weights();
    let n = model.hidden_size();
    let mut h = vec![vec![0f64; n]; model.layers()];
    let mut out = Vec::new();
    for (t, ch) in text.chars().enumerate() {
        let mut x: Vec<f64> = match model.vocab.id(ch) {
            Some(v) => match &w.embedding {
                Some(e) => e.row(v as usize).iter().map(|&a| a as f64).collect(),
                None => (0..model.vocab.len()).map(|i| f64::from(u8::from(i == v as usize))).collect(),
            },
            None => vec![0.0; w.layers[0].weight_ih.ncols()],
        };
        for (k, lw) in w.layers.iter().enumerate() {
            let lin = |m: &ndarray::Array2<f32>, b: &ndarray::Array1<f32>, v: &[f64], row: usize| -> f64 {
                b[row] as f64 + m.row(row).iter().zip(v).map(|(&a, b)| a as f64 * b).sum::<f64>()
            };
            let prev = h[k].clone();
            let mut next = vec![0f64; n];
            for j in 0..n {
                next[j] = match model.arch() {
                    Arch::Gru => {
                        let r =
                            sigmoid(lin(&lw.weight_ih, &lw.bias_ih, &x, j) + lin(&lw.weight_hh, &lw.bias_hh, &prev, j));
                        let z = sigmoid(
                            lin(&lw.weight_ih, &lw.bias_ih, &x, n + j) + lin(&lw.weight_hh, &lw.bias_hh, &prev, n + j),
                        );
                        let c = (lin(&lw.weight_ih, &lw.bias_ih, &x, 2 * n + j)
                            + r * lin(&lw.weight_hh, &lw.bias_hh, &prev, 2 * n + j))
                        .tanh();
                        (1.0 - z) * c + z * prev[j]
                    }
                    Arch::Rnn => {
                        (lin(&lw.weight_ih, &lw.bias_ih, &x, j) + lin(&lw.weight_hh, &lw.bias_hh, &prev, j)).tanh()
                    }
                    Arch::Lstm => unreachable!(),
                };
            }
            for c in clamps.iter().filter(|c| c.layer == k && c.from <= t && t < c.to) {
                next[c.cell] = c.value as f64;
            }
            h[k] = next.clone();
            x = next;
        }
        let logits: Vec<f64> = (0..model.vocab.len())
            .map(|v| {
                w.decoder_bias[v] as f64
                    + w.decoder_weight.row(v).iter().zip(&x).map(|(&a, b)| a as f64 * b).sum::<f64>()
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        if let Some(next) = text.chars().nth(t + 1).and_then(|c| model.vocab.id(c)) {
            out.push(logits[next as usize] - lse);
        }
    }
    out
}

fn traced_logp(model: &Model, text: &str, clamps: &[Clamp]) -> Vec<f64> {
    let trace = model.trace_clamped(model.vocab.encode(text), &model.zero_state(), clamps);
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len() - 1)
        .filter_map(|t| model.vocab.id(chars[t + 1]).map(|v| (trace.probs[[t, v as usize]] as f64).ln()))
        .collect()
}

fn hold(layer: usize, cell: usize, value: f32, from: usize, to: usize) -> Clamp {
    Clamp { layer, kind: Kind::Hidden, cell, value, from, to }
}

#[test]
fn gru_and_rnn_traces_match_an_independent_f64_reference_with_and_without_clamps() {
    for arch in PLAIN {
        for embed in [None, Some(6)] {
            let model = tiny_model_of(arch, embed, 31);
            let n = TEXT.chars().count();
            for clamps in [vec![], vec![hold(0, 3, 0.0, 0, n)], vec![hold(0, 1, -0.9, 5, 9), hold(1, 7, 0.6, 0, 20)]] {
                let (got, want) = (traced_logp(&model, TEXT, &clamps), reference_logp(&model, TEXT, &clamps));
                assert_eq!(got.len(), want.len());
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-4, "{arch}, embedding {embed:?}, {} clamps: worst |Δ log p| {worst}", clamps.len());
            }
        }
    }
}

#[test]
fn gru_and_rnn_traces_hold_their_kinds_in_range_and_continue_across_cuts() {
    for arch in PLAIN {
        let model = tiny_model_of(arch, None, 7);
        let t = model.trace(TEXT);
        for l in &t.layers {
            assert_eq!(l.kinds(), arch.kinds());
            for &k in arch.kinds() {
                assert_eq!(l.get(k).dim(), (t.len(), 16), "{arch} {k:?}");
                let (lo, hi) = if k.is_gate() { (0.0, 1.0) } else { (-1.0, 1.0) };
                assert!(l.get(k).iter().all(|v| (lo..=hi).contains(v)), "{arch} {k:?} out of range");
            }
            assert!(l.try_get(Kind::Cell).is_none() && l.try_get(Kind::Input).is_none());
        }
        assert!(t.final_state.c.iter().all(|c| c.is_empty()), "{arch} has no cell state");
        assert!(t.probs.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-5));
        let (a, b) = TEXT.split_at(17);
        let first = model.trace(a);
        let second = model.trace_from(b, &first.final_state);
        assert_eq!(second.final_state, t.final_state, "{arch}");
        for (k, l) in t.layers.iter().enumerate() {
            for &kind in arch.kinds() {
                let joined = ndarray::concatenate(
                    ndarray::Axis(0),
                    &[first.layers[k].get(kind).view(), second.layers[k].get(kind).view()],
                )
                .unwrap();
                assert_eq!(joined, l.get(kind), "{arch} layer {k} {kind:?}");
            }
        }
    }
}

#[test]
fn stepping_equals_tracing_and_sampling_runs_for_gru_and_rnn() {
    for arch in PLAIN {
        let model = tiny_model_of(arch, None, 3);
        let clamps = [hold(1, 2, -0.5, 4, 12), hold(0, 0, 0.0, 0, 100)];
        let trace = model.trace_clamped(model.vocab.encode(TEXT), &model.zero_state(), &clamps);
        let mut stepper = Stepper::new(&model, model.zero_state());
        for (t, &ch) in trace.chars.iter().enumerate() {
            let probs = stepper.step(model.vocab.id(ch), &clamps).to_vec();
            for (p, q) in probs.iter().zip(trace.probs.row(t)) {
                assert!((p - q).abs() < 1e-5, "{arch}: probs differ at {t}");
            }
            for k in 0..model.layers() {
                for &kind in arch.kinds() {
                    for j in 0..model.hidden_size() {
                        let (g, w) = (stepper.value(k, kind, j), trace.layers[k].get(kind)[[t, j]]);
                        assert!((g - w).abs() < 1e-5, "{arch} layer {k} {kind:?} cell {j} at {t}: {g} vs {w}");
                    }
                }
            }
        }
        let draw = |clamps: &[Clamp]| {
            let mut s = String::new();
            let how = Sampling { temperature: 0.8, top_k: 0, seed: 9 };
            cellscope::model::sample(&model, "if (", 40, how, clamps, |c, _| {
                s.push(c);
                true
            });
            s
        };
        assert_eq!(draw(&[]), draw(&[]), "{arch}: the same seed gives the same text");
        assert_eq!(draw(&[]).chars().count(), 40);
    }
}

#[test]
fn a_cell_state_clamp_is_refused_without_a_cell_state() {
    for arch in PLAIN {
        let model = tiny_model_of(arch, None, 3);
        let c = Clamp { layer: 0, kind: Kind::Cell, cell: 0, value: 0.0, from: 0, to: 1 };
        let err = model.check_clamps(&[c], 5).unwrap_err().to_string();
        assert_eq!(err, format!("this {arch} model has no cell state c to clamp; clamp h instead"));
        model.check_clamps(&[hold(1, 15, 0.3, 0, 5)], 5).unwrap();
    }
}

#[test]
fn gru_and_rnn_model_files_round_trip_and_say_their_architecture() {
    for arch in PLAIN {
        let model = tiny_model_of(arch, None, 3);
        let bytes = model.to_bytes();
        let back = Model::from_bytes(&bytes, "back".into()).unwrap();
        assert_eq!((back.arch(), &back.weights()), (arch, &model.weights()));
        // Read as another architecture, the shapes do not fit, and the message says so.
        let parsed = cellscope::model::safetensors::parse(&bytes).unwrap();
        let other = if arch == Arch::Gru { "rnn" } else { "gru" };
        let mut meta = parsed.metadata.clone();
        meta.insert("cellscope.arch".into(), other.into());
        let tensors = parsed.tensors.iter().map(|(k, t)| (k.clone(), (t.shape.clone(), &t.data[..]))).collect();
        let err = Model::from_bytes(&cellscope::model::safetensors::serialize(&tensors, &meta), "x".into())
            .unwrap_err()
            .to_string();
        let g = if other == "gru" { 3 } else { 1 };
        let said =
            format!("expected [{g}H, H] with H ≥ 1 (it sets the hidden size; G = {g} for cellscope.arch = \"{other}\"");
        assert!(err.contains(&said), "{arch} read as {other}: {err}");
    }
}

#[test]
fn saliency_of_gru_and_rnn_matches_finite_differences() {
    for arch in PLAIN {
        crate::causal::saliency_check(tiny_model_of(arch, Some(6), 13));
    }
}

fn app(arch: Arch) -> axum::Router {
    let model = tiny_model_of(arch, None, 21);
    router(AppState::new(model, Limits::default(), TEXT.repeat(30), "test reference".into()))
}

async fn call(arch: Arch, req: Request<Body>) -> (u16, Vec<u8>) {
    let resp = app(arch).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

async fn post(arch: Arch, uri: &str, body: Value) -> (u16, Value) {
    let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string()));
    let (s, bytes) = call(arch, req.unwrap()).await;
    (s, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&bytes))))
}

async fn get(arch: Arch, uri: &str) -> (u16, String) {
    let (s, bytes) = call(arch, Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, String::from_utf8(bytes).unwrap())
}

fn bad_kind(arch: Arch, status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{arch}: {body}");
    assert_eq!(body["error"]["code"], "bad_kind", "{arch}: {body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&arch.kind_list()), "{arch}: the message should list the kinds there are: {msg}");
}

#[tokio::test]
async fn every_api_route_serves_gru_and_rnn_models_and_refuses_kinds_they_lack() {
    for arch in PLAIN {
        let (s, v) = get(arch, "/api/model").await;
        assert_eq!(s, 200);
        assert_eq!(serde_json::from_str::<Value>(&v).unwrap()["arch"], arch.name());

        let (s, v) = post(arch, "/api/trace", json!({"text": TEXT, "cells": [1]})).await;
        assert_eq!(s, 200, "{v}");
        let layer = &v["layers"][0];
        assert!(layer["h"].is_array() && layer.get("c").is_none(), "{arch}: default kinds are h only: {layer}");
        let all: Vec<&str> = arch.kinds().iter().map(|k| k.letter()).collect();
        let (s, v) = post(arch, "/api/trace", json!({"text": TEXT, "kinds": all})).await;
        assert_eq!(s, 200, "{v}");
        for k in &all {
            assert!(v["layers"][1][k].is_array(), "{arch}: kind {k} missing");
        }
        for lacking in ["c", "i", "write"] {
            let (s, v) = post(arch, "/api/trace", json!({"text": TEXT, "kinds": ["h", lacking]})).await;
            bad_kind(arch, s, &v, 422);
        }
        let (s, v) = post(arch, "/api/view", json!({"text": TEXT, "layer": 0, "kinds": ["c"]})).await;
        bad_kind(arch, s, &v, 422);
        let req = Request::post("/api/view")
            .header("content-type", "application/json")
            .body(Body::from(json!({"text": TEXT, "layer": 1}).to_string()))
            .unwrap();
        let (s, bytes) = call(arch, req).await;
        assert_eq!(s, 200);
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[4..4 + len]).unwrap();
        assert_eq!(header["kinds"], json!(all), "{arch}: the view holds every kind the model has");

        let (s, v) = post(arch, "/api/cells/rank", json!({"text": TEXT.repeat(3), "feature": "string"})).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["cells"].as_array().unwrap().iter().all(|c| all.contains(&c["kind"].as_str().unwrap())));
        let (s, v) = post(arch, "/api/cells/rank", json!({"text": TEXT, "feature": "string", "kinds": ["c"]})).await;
        bad_kind(arch, s, &v, 422);

        let clamp_c = json!({"text": TEXT, "clamps": [{"layer": 0, "kind": "c", "cell": 1, "value": 0.0}]});
        let (s, v) = post(arch, "/api/intervene", clamp_c).await;
        assert_eq!((s, v["error"]["code"].as_str()), (422, Some("bad_kind")), "{v}");
        let clamp_h = json!({"text": TEXT, "clamps": [{"layer": 1, "kind": "h", "cell": 1, "value": 0.5}]});
        let (s, v) = post(arch, "/api/intervene", clamp_h).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["loss_clamped"].as_f64().is_some());

        let sample =
            json!({"prime": "if (", "length": 20, "temperature": 0.5, "watch": {"layer": 0, "kind": "h", "cell": 2}});
        let (s, v) = post(arch, "/api/sample", sample).await;
        assert_eq!(s, 200, "{v}");
        let watch_c =
            json!({"prime": "x", "length": 5, "temperature": 0.5, "watch": {"layer": 0, "kind": "c", "cell": 2}});
        let (s, v) = post(arch, "/api/sample", watch_c).await;
        bad_kind(arch, s, &v, 422);

        let (s, v) = post(arch, "/api/saliency", json!({"text": TEXT, "position": 20})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["grad_norm"].as_array().unwrap().len(), 21);

        let last = *arch.kinds().last().unwrap();
        let (s, v) = get(arch, &format!("/api/cell/1/{}/3", last.letter())).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = get(arch, "/api/cell/0/c/3").await;
        let v: Value = serde_json::from_str(&v).unwrap();
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("bad_kind")), "{v}");
    }
}

#[tokio::test]
async fn pages_offer_the_kinds_of_the_model() {
    for arch in PLAIN {
        let (s, page) = get(arch, "/?layer=1&kind=c&cell=2").await;
        assert_eq!(s, 200);
        for &k in arch.kinds() {
            assert!(page.contains(k.describe()), "{arch}: the kind menu lacks {k:?}");
        }
        assert!(!page.contains("cell state c") && !page.contains("c only"), "{arch}: the page offers c");
        let (s, page) = get(arch, &format!("/cell/1/{}/3", arch.kinds().last().unwrap().letter())).await;
        assert_eq!(s, 200, "{page}");
        let (s, page) = get(arch, "/cell/0/c/3").await;
        assert_eq!(s, 404);
        assert!(page.contains(&arch.kind_list()), "{page}");
        let (s, page) = get(arch, "/model").await;
        assert_eq!(s, 200, "{page}");
        assert!(page.contains(&format!("2 × 16 {}", arch.title())), "{arch}: the model card names its architecture");
        let gates = arch.gate_kinds();
        assert!(gates.iter().all(|g| page.contains(g.describe())), "{arch}: the saturation plot shows each gate");
        assert_eq!(gates.is_empty(), page.contains("no gates"), "{arch}");
    }
}

#[test]
fn the_command_line_names_kinds_a_model_lacks() {
    let dir = temp_dir("arch-cli");
    let model = dir.join("gru.safetensors");
    tiny_model_of(Arch::Gru, None, 3).save(&model).unwrap();
    let model = model.to_str().unwrap();
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_cellscope")).args(args).output().unwrap();
    let out = run(&["trace", "--model", model, "--text", "if (x)", "--kind", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("kind c does not exist in this gru model; it records h, r, z, n"),
        "{err}"
    );
    let out = run(&["trace", "--model", model, "--text", "if (x)", "--kind", "z", "--cell", "3", "--layer", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["sample", "--model", model, "--prime", "if", "--length", "5", "--clamp", "0/c/1=0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no cell state c"), "{err}");
    let text = dir.join("t.c");
    std::fs::write(&text, TEXT.repeat(5)).unwrap();
    let text = text.to_str().unwrap();
    let out = run(&["find-cells", "--model", model, "--file", text, "--feature", "string", "--kinds", "h,c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("h, r, z, n"), "{err}");
    let out = run(&["find-cells", "--model", model, "--file", text, "--feature", "string"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_without_cellscope_arch_is_read_as_an_lstm() {
    let model = crate::common::tiny_model(None, 3);
    let parsed = cellscope::model::safetensors::parse(&model.to_bytes()).unwrap();
    let mut meta = parsed.metadata.clone();
    meta.remove("cellscope.arch");
    let tensors = parsed.tensors.iter().map(|(k, t)| (k.clone(), (t.shape.clone(), &t.data[..]))).collect();
    let back = Model::from_bytes(&cellscope::model::safetensors::serialize(&tensors, &meta), "plain".into()).unwrap();
    assert_eq!((back.arch(), &back.weights()), (Arch::Lstm, &model.weights()));
}
