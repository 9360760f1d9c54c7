//! Interventions and stepping: the clamped trace against an independent
//! step-by-step LSTM in f64 written here from the equations, and the one-step
//! API against the whole-text trace.

use cellscope::model::{Arch, Clamp, Kind, Model, Sampling, Stepper};

use crate::common::tiny_model;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// ln p(next char) at every position, from a plain f64 LSTM (one-hot input) with
/// the clamps applied exactly as the issue states them.
fn reference_logp(model: &Model, text: &str, clamps: &[Clamp]) -> Vec<Option<f64>> {
    let w = &model.weights();
    let n = model.hidden_size();
    let v = model.vocab.len();
    let chars: Vec<char> = text.chars().collect();
    let mut h = vec![vec![0f64; n]; model.layers()];
    let mut c = vec![vec![0f64; n]; model.layers()];
    let mut out = Vec::new();
    for (t, &ch) in chars.iter().enumerate() {
        let mut x: Vec<f64> = vec![0.0; v];
        if let Some(id) = model.vocab.id(ch) {
            x[id as usize] = 1.0;
        }
        for (k, lw) in w.layers.iter().enumerate() {
            let mut gates = vec![0f64; 4 * n];
            for r in 0..4 * n {
                let mut s = (lw.bias_ih[r] + lw.bias_hh[r]) as f64;
                for (j, xj) in x.iter().enumerate() {
                    s += lw.weight_ih[[r, j]] as f64 * xj;
                }
                for j in 0..n {
                    s += lw.weight_hh[[r, j]] as f64 * h[k][j];
                }
                gates[r] = s;
            }
            for j in 0..n {
                let (i, f, g, o) =
                    (sigmoid(gates[j]), sigmoid(gates[n + j]), gates[2 * n + j].tanh(), sigmoid(gates[3 * n + j]));
                c[k][j] = f * c[k][j] + i * g;
                h[k][j] = o * c[k][j].tanh();
                for cl in clamps.iter().filter(|cl| cl.layer == k && cl.cell == j && cl.from <= t && t < cl.to) {
                    if cl.kind == Kind::Cell {
                        c[k][j] = cl.value as f64;
                        h[k][j] = o * c[k][j].tanh();
                    }
                }
                for cl in clamps.iter().filter(|cl| cl.layer == k && cl.cell == j && cl.from <= t && t < cl.to) {
                    if cl.kind == Kind::Hidden {
                        h[k][j] = cl.value as f64;
                    }
                }
            }
            x = h[k].clone();
        }
        let top = &h[model.layers() - 1];
        let logits: Vec<f64> = (0..v)
            .map(|r| w.decoder_bias[r] as f64 + (0..n).map(|j| w.decoder_weight[[r, j]] as f64 * top[j]).sum::<f64>())
            .collect();
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
        if t + 1 < chars.len() {
            out.push(model.vocab.id(chars[t + 1]).map(|id| logits[id as usize] - lse));
        }
    }
    out
}

fn traced_logp(model: &Model, text: &str, clamps: &[Clamp]) -> Vec<Option<f64>> {
    let trace = model.trace_clamped(model.vocab.encode(text), &model.zero_state(), clamps);
    (0..trace.len().saturating_sub(1))
        .map(|t| model.vocab.id(trace.chars[t + 1]).map(|id| (trace.probs[[t, id as usize]] as f64).ln()))
        .collect()
}

fn clamp(layer: usize, kind: Kind, cell: usize, value: f32, from: usize, to: usize) -> Clamp {
    Clamp { layer, kind, cell, value, from, to }
}

const TEXT: &str = "if (a) { b = \"x\"; } /* c */\nint d = f(e);\n";

#[test]
fn clamped_traces_match_an_independent_f64_lstm() {
    let model = tiny_model(None, 5);
    let n = TEXT.chars().count();
    let cases: Vec<Vec<Clamp>> = vec![
        vec![],
        vec![clamp(0, Kind::Cell, 3, 0.0, 0, n)],
        vec![clamp(1, Kind::Hidden, 7, 0.9, 5, 20)],
        vec![clamp(0, Kind::Cell, 1, -2.5, 10, 11), clamp(1, Kind::Cell, 1, 3.0, 0, n)],
        // h and c of the same cell at once: c first (it sets h), then h.
        vec![clamp(0, Kind::Hidden, 4, 0.3, 2, 30), clamp(0, Kind::Cell, 4, 1.5, 0, 40)],
    ];
    for clamps in cases {
        let want = reference_logp(&model, TEXT, &clamps);
        let got = traced_logp(&model, TEXT, &clamps);
        assert_eq!(got.len(), want.len());
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 2e-4, "{clamps:?}: logp[{t}] {g} vs reference {w}"),
                (None, None) => {}
                _ => panic!("{clamps:?}: unknown-ness differs at {t}"),
            }
        }
    }
}

#[test]
fn a_clamp_holds_its_value_only_inside_its_range() {
    let model = tiny_model(None, 6);
    let enc = || model.vocab.encode(TEXT);
    let base = model.trace(TEXT);
    let c = clamp(0, Kind::Cell, 2, 0.75, 8, 15);
    let clamped = model.trace_clamped(enc(), &model.zero_state(), &[c]);
    for t in 0..8 {
        assert_eq!(
            clamped.layers[1].h().row(t),
            base.layers[1].h().row(t),
            "before the clamp nothing changes (t = {t})"
        );
    }
    for t in 8..15 {
        assert_eq!(clamped.layers[0].get(Kind::Cell)[[t, 2]], 0.75);
        let o = clamped.layers[0].get(Kind::Output)[[t, 2]];
        assert!((clamped.layers[0].h()[[t, 2]] - o * 0.75f32.tanh()).abs() < 1e-6);
    }
    assert_ne!(clamped.layers[0].get(Kind::Cell)[[15, 2]], 0.75, "after the range the cell evolves again");
    assert_ne!(clamped.probs.row(20), base.probs.row(20), "the clamp changed what the model predicts later");
}

#[test]
fn stepping_equals_tracing() {
    for embed in [None, Some(6)] {
        let model = tiny_model(embed, 9);
        let clamps = [clamp(1, Kind::Cell, 3, -1.0, 4, 12), clamp(0, Kind::Hidden, 0, 0.0, 0, 100)];
        let trace = model.trace_clamped(model.vocab.encode(TEXT), &model.zero_state(), &clamps);
        let mut stepper = Stepper::new(&model, model.zero_state());
        for (t, &ch) in trace.chars.iter().enumerate() {
            let probs = stepper.step(model.vocab.id(ch), &clamps).to_vec();
            for (p, q) in probs.iter().zip(trace.probs.row(t)) {
                assert!((p - q).abs() < 1e-5, "probs differ at {t}");
            }
            for k in 0..model.layers() {
                for kind in [Kind::Hidden, Kind::Cell, Kind::Forget, Kind::Write, Kind::Keep] {
                    for j in 0..model.hidden_size() {
                        let g = stepper.value(k, kind, j);
                        let w = trace.layers[k].get(kind)[[t, j]];
                        assert!((g - w).abs() < 1e-5, "layer {k} {kind:?} cell {j} at {t}: {g} vs {w}");
                    }
                }
            }
        }
        assert_eq!(stepper.steps(), trace.len());
    }
}

#[test]
fn sampling_is_repeatable_and_clamps_steer_it() {
    let model = tiny_model(None, 3);
    let draw = |how: Sampling, clamps: &[Clamp]| {
        let mut s = String::new();
        cellscope::model::sample(&model, "if (", 300, how, clamps, |c, _| {
            s.push(c);
            true
        });
        s
    };
    let how = Sampling { temperature: 1.0, top_k: 0, seed: 11 };
    let a = draw(how, &[]);
    assert_eq!(a.chars().count(), 300);
    assert_eq!(a, draw(how, &[]), "same seed, same text");
    assert_ne!(a, draw(Sampling { seed: 12, ..how }, &[]));
    let steered = draw(how, &[clamp(1, Kind::Hidden, 5, 1.0, 0, usize::MAX)]);
    assert_ne!(a, steered, "holding a top-layer h cell at 1 changes the text");
    // Greedy: always the argmax of the distribution after the text so far.
    let greedy = draw(Sampling { temperature: 0.0, top_k: 0, seed: 1 }, &[]);
    let prefix: String = format!("if ({}", greedy.chars().take(20).collect::<String>());
    let trace = model.trace(&prefix);
    for t in 3..prefix.chars().count() - 1 {
        let row = trace.probs.row(t);
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a))).unwrap();
        assert_eq!(model.vocab.chars()[best], prefix.chars().nth(t + 1).unwrap(), "greedy pick at {t}");
    }
    // top_k = 1 is greedy too, whatever the temperature.
    assert_eq!(draw(Sampling { temperature: 2.0, top_k: 1, seed: 5 }, &[]), greedy);
}

#[test]
fn sampling_on_two_threads_is_sampling_on_one() {
    // H = 140: past the sharing threshold, and not a multiple of 8 or 16, so one
    // side's last block is partial. Three layers: two input projections shared.
    let vocab = tiny_model(None, 3).vocab.clone();
    for layers in [2, 3] {
        let w = cellscope::model::Weights::random_arch(Arch::Lstm, vocab.len(), None, 140, layers, 31, 0.6);
        let model = Model::new("wide".into(), vocab.clone(), w, Default::default()).unwrap();
        let kinds = Arch::Lstm.kinds();
        let draw = |threads: usize, clamps: &[Clamp]| {
            let (mut text, mut values) = (String::new(), Vec::new());
            let how = Sampling { temperature: 1.0, top_k: 0, seed: 7 };
            cellscope::model::sample_on(&model, "if (x", 120, how, clamps, threads, |c, stepper| {
                text.push(c);
                for (j, &kind) in kinds.iter().enumerate() {
                    for layer in 0..layers {
                        // Cells on both sides of the split, the last one too.
                        for cell in [3, 69, 70, 71, 139] {
                            values.push((layer, j, cell, stepper.value(layer, kind, cell).to_bits()));
                        }
                    }
                }
                values.push((9, 9, 9, stepper.probs().iter().fold(0u32, |a, p| a.rotate_left(5) ^ p.to_bits())));
                true
            });
            (text, values)
        };
        for clamps in [
            vec![],
            // On both sides of the split, c and h, for part of the run only.
            vec![clamp(0, Kind::Cell, 2, 0.9, 3, 60), clamp(layers - 1, Kind::Hidden, 100, -0.7, 10, 90)],
            vec![clamp(1, Kind::Hidden, 139, 0.5, 0, usize::MAX), clamp(1, Kind::Cell, 139, -2.0, 20, 40)],
        ] {
            let one = draw(1, &clamps);
            assert_eq!(one.0.chars().count(), 120);
            assert!(one == draw(2, &clamps), "{layers} layers, clamps {clamps:?}: two threads differ from one");
        }
    }
}

/// ln p(text[p+1] | text[..=p]) of a model.
fn target_logp(model: &Model, text: &str, p: usize) -> f64 {
    let trace = model.trace(text);
    let y = model.vocab.id(trace.chars[p + 1]).unwrap() as usize;
    (trace.probs[[p, y]] as f64).ln()
}

#[test]
fn saliency_matches_finite_differences() {
    let s = saliency_check(tiny_model(Some(6), 13));
    // The lesson: the gradient is largest near the prediction and smaller far back.
    assert!(s.grad_norm[24] > s.grad_norm[3], "{:?}", s.grad_norm);
}

#[test]
fn gradients_taken_together_are_each_the_gradient_taken_alone() {
    for arch in [Arch::Lstm, Arch::Gru, Arch::Rnn] {
        let model = crate::common::tiny_model_of(arch, None, 21);
        // '~' is outside the vocabulary: the prediction of it has no gradient.
        let text = "int main() { if (x) { y = \"a\"; } return 0; } ~ while (1) {}";
        let trace = model.trace(text);
        let last = text.chars().count() - 2;
        // Near the start (shorter walks), repeated, out of order, one before '~'.
        let tilde = text.chars().position(|c| c == '~').unwrap();
        let positions = [last, 3, 0, 30, 30, tilde - 1, 17, last - 1];
        for threads in [1, 2, 3] {
            let together = cellscope::model::saliencies(&model, &trace, &positions, 25, threads);
            assert_eq!(together.len(), positions.len());
            for (&p, got) in positions.iter().zip(&together) {
                let alone = cellscope::model::saliency(&model, &trace, p, 25);
                assert_eq!(got, &alone, "{arch}: position {p} on {threads} threads");
            }
        }
        assert!(cellscope::model::saliency(&model, &trace, tilde - 1, 25).is_none());
        // Wide enough (H ≥ 128) that one gradient's products are cut between two threads.
        let vocab = model.vocab.clone();
        let w = cellscope::model::Weights::random_arch(arch, vocab.len(), None, 160, 2, 22, 0.5);
        let wide = Model::new("wide".into(), vocab, w, Default::default()).unwrap();
        let trace = wide.trace(text);
        for p in [last, 9] {
            let alone = cellscope::model::saliency(&wide, &trace, p, 40);
            let shared = cellscope::model::saliencies(&wide, &trace, &[p], 40, 2).pop().flatten();
            assert!(alone.is_some());
            assert_eq!(shared, alone, "{arch}: H = 160, position {p}, one gradient on two threads");
        }
    }
}

/// Saliency of a model with a 6-wide embedding against finite differences.
pub fn saliency_check(model: Model) -> cellscope::model::Saliency {
    // Every character occurs once, so the embedding row of text[s] is the input at
    // step s and nowhere else: nudging that row nudges exactly x_s.
    let text = "abcdefghijklmnopqrstuvwxyz";
    let p = 24;
    let s = cellscope::model::saliency(&model, &model.trace(text), p, 1000).unwrap();
    assert_eq!((s.first, s.grad_norm.len(), s.target), (0, 25, Some('z')));
    assert!((s.logp as f64 - target_logp(&model, text, p)).abs() < 1e-5);
    let eps = 1e-2f32;
    for step in [24, 23, 20, 12, 3] {
        let id = model.vocab.id(text.chars().nth(step).unwrap()).unwrap() as usize;
        let mut fd = 0f64;
        for e in 0..6 {
            let nudged = |d: f32| {
                let mut w = model.weights().clone();
                w.embedding.as_mut().unwrap()[[id, e]] += d;
                let m = Model::new("fd".into(), model.vocab.clone(), w, Default::default()).unwrap();
                target_logp(&m, text, p)
            };
            let g = (nudged(eps) - nudged(-eps)) / (2.0 * eps as f64);
            fd += g * g;
        }
        let (fd, an) = (fd.sqrt(), s.grad_norm[step] as f64);
        let arch = model.arch();
        assert!((fd - an).abs() <= 2e-4 + 3e-2 * an, "{arch} step {step}: finite differences {fd} vs backprop {an}");
    }
    s
}

#[test]
fn bad_clamps_are_named() {
    let model = tiny_model(None, 3);
    let check = |c: Clamp| model.check_clamps(&[c], 10).unwrap_err().to_string();
    assert!(check(clamp(2, Kind::Cell, 0, 0.0, 0, 1)).contains("layer 2 does not exist"));
    assert!(check(clamp(0, Kind::Forget, 0, 0.0, 0, 1)).contains("h or c"));
    assert!(check(clamp(0, Kind::Cell, 16, 0.0, 0, 1)).contains("cell 16 does not exist"));
    assert!(check(clamp(0, Kind::Cell, 0, f32::NAN, 0, 1)).contains("not a finite number"));
    assert!(check(clamp(0, Kind::Cell, 0, 0.0, 5, 2)).contains("from 5 to 2"));
    assert!(check(clamp(0, Kind::Cell, 0, 0.0, 0, 11)).contains("10 characters"));
    assert_eq!(Clamp::parse_spec("1/c/5=0").unwrap(), clamp(1, Kind::Cell, 5, 0.0, 0, usize::MAX));
    assert_eq!(Clamp::parse_spec("0/h/12=-0.8@10..40").unwrap(), clamp(0, Kind::Hidden, 12, -0.8, 10, 40));
    for bad in ["1/c/5", "1/c=0", "x/c/5=0", "1/c/5=zero", "1/c/5=0@3", "1/q/5=0"] {
        assert!(Clamp::parse_spec(bad).is_err(), "{bad}");
    }
}

mod http {
    use axum::body::Body;
    use axum::http::Request;
    use cellscope::server::{router, AppState, Limits};
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::*;

    fn app_state() -> AppState {
        AppState::new(tiny_model(None, 5), Limits::default(), TEXT.repeat(4), "test reference".into())
    }

    async fn call(req: Request<Body>) -> (u16, Vec<u8>, String) {
        let resp = router(app_state()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec(), ct)
    }

    async fn post(uri: &str, body: Value) -> (u16, Value) {
        let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string()));
        let (s, bytes, _) = call(req.unwrap()).await;
        (
            s,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&bytes))),
        )
    }

    fn floats(v: &Value) -> Vec<Option<f64>> {
        v.as_array().unwrap().iter().map(|x| x.as_f64()).collect()
    }

    #[tokio::test]
    async fn intervene_matches_the_reference_step_by_step() {
        let model = tiny_model(None, 5);
        let n = TEXT.chars().count();
        let (s, v) = post(
            "/api/intervene",
            json!({"text": TEXT, "clamps": [{"layer": 0, "kind": "c", "cell": 3, "value": 0}, {"layer": 1, "kind": "h", "cell": 9, "value": 0.8, "from": 4, "to": 30}], "top_k": 2}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let clamps = [clamp(0, Kind::Cell, 3, 0.0, 0, n), clamp(1, Kind::Hidden, 9, 0.8, 4, 30)];
        let want_base = reference_logp(&model, TEXT, &[]);
        let want_clamped = reference_logp(&model, TEXT, &clamps);
        let (base, clamped, delta) = (floats(&v["base"]["logp"]), floats(&v["clamped"]["logp"]), floats(&v["delta"]));
        assert_eq!(base.len(), n - 1);
        for t in 0..n - 1 {
            let (b, c, d) = (base[t].unwrap(), clamped[t].unwrap(), delta[t].unwrap());
            assert!((b - want_base[t].unwrap()).abs() < 2e-4, "base logp[{t}]");
            assert!((c - want_clamped[t].unwrap()).abs() < 2e-4, "clamped logp[{t}]");
            assert!((d - (c - b)).abs() < 1e-5, "delta[{t}]");
        }
        let loss = -base.iter().flatten().sum::<f64>() / (n - 1) as f64;
        assert!((v["loss_base"].as_f64().unwrap() - loss).abs() < 1e-4);
        assert_eq!(v["clamps"][0]["to"], n, "to defaults to the whole text");
        let affected = v["most_affected"].as_array().unwrap();
        assert_eq!(affected.len(), 10);
        let mags: Vec<f64> = affected.iter().map(|a| a["delta"].as_f64().unwrap().abs()).collect();
        assert!(mags.windows(2).all(|w| w[0] >= w[1]), "largest first: {mags:?}");
        let max = delta.iter().flatten().map(|d| d.abs()).fold(0.0, f64::max);
        assert!((mags[0] - max).abs() < 1e-6);
        let concepts = v["concepts"].as_array().unwrap();
        assert!(concepts.iter().any(|c| c["concept"] == "string" && c["chars"].as_u64().unwrap() > 0), "{concepts:?}");
        assert_eq!(v["base"]["top"][0].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bad_clamps_and_samples_are_json_errors() {
        let c = |extra: Value| {
            let mut base = json!({"layer": 0, "kind": "c", "cell": 1, "value": 0.5});
            base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            base
        };
        let many: Vec<Value> = (0..65).map(|_| c(json!({}))).collect();
        let cases = [
            ("/api/intervene", json!({"text": "ab", "clamps": [c(json!({"layer": 5}))]}), 422, "bad_layer"),
            ("/api/intervene", json!({"text": "ab", "clamps": [c(json!({"kind": "f"}))]}), 422, "bad_kind"),
            ("/api/intervene", json!({"text": "ab", "clamps": [c(json!({"cell": 16}))]}), 422, "bad_cell"),
            ("/api/intervene", json!({"text": "ab", "clamps": [c(json!({"value": 1e39}))]}), 422, "bad_value"),
            ("/api/intervene", json!({"text": "abc", "clamps": [c(json!({"from": 2, "to": 1}))]}), 422, "bad_range"),
            ("/api/intervene", json!({"text": "abc", "clamps": [c(json!({"to": 4}))]}), 422, "bad_range"),
            ("/api/intervene", json!({"text": "abc", "clamps": many}), 422, "too_many_clamps"),
            ("/api/intervene", json!({"text": "abc", "clamps": []}), 422, "bad_clamps"),
            ("/api/intervene", json!({"text": "abc"}), 422, "bad_clamps"),
            ("/api/intervene", json!({"text": "x".repeat(20_001), "clamps": [c(json!({}))]}), 413, "text_too_long"),
            ("/api/sample", json!({"length": 0, "temperature": 1}), 422, "bad_length"),
            ("/api/sample", json!({"length": 20_001, "temperature": 1}), 422, "bad_length"),
            ("/api/sample", json!({"length": 5, "temperature": -1}), 422, "bad_temperature"),
            ("/api/sample", json!({"length": 5, "temperature": 1, "top_k": 999}), 422, "bad_top_k"),
            (
                "/api/sample",
                json!({"length": 5, "temperature": 1, "clamps": [c(json!({"cell": 99}))]}),
                422,
                "bad_cell",
            ),
            (
                "/api/sample",
                json!({"length": 5, "temperature": 1, "watch": {"layer": 3, "kind": "h", "cell": 0}}),
                422,
                "bad_layer",
            ),
            ("/api/sample?stream=sse", json!({"length": 5, "temperature": 1}), 422, "bad_format"),
        ];
        for (uri, body, status, code) in cases {
            let (s, v) = post(uri, body.clone()).await;
            assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{uri} {body}: {v}");
        }
    }

    #[tokio::test]
    async fn sampling_over_http_is_repeatable_steerable_and_streams() {
        let body = json!({"prime": "if (", "length": 80, "temperature": 0.9, "seed": 4, "watch": {"layer": 1, "kind": "c", "cell": 2}});
        let (s, a) = post("/api/sample", body.clone()).await;
        assert_eq!(s, 200, "{a}");
        let text = a["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), 80);
        assert_eq!(a["values"].as_array().unwrap().len(), 80);
        assert_eq!(post("/api/sample", body.clone()).await.1["text"], text, "same seed, same text");
        // The library draws the same characters.
        let model = tiny_model(None, 5);
        let mut lib = String::new();
        cellscope::model::sample(&model, "if (", 80, Sampling { temperature: 0.9, top_k: 0, seed: 4 }, &[], |c, _| {
            lib.push(c);
            true
        });
        assert_eq!(lib, text);
        let mut steered = body.clone();
        steered["clamps"] = json!([{"layer": 1, "kind": "h", "cell": 5, "value": 1.0}]);
        let (_, b) = post("/api/sample", steered).await;
        assert_ne!(b["text"], text, "a clamp steers the sample");
        assert_eq!(b["clamps"][0]["from"], 0);
        // Streamed: one line per character, then the whole answer.
        let req = Request::post("/api/sample?stream=ndjson")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (s, bytes, ct) = call(req).await;
        assert_eq!((s, ct.as_str()), (200, "application/x-ndjson"));
        let lines: Vec<Value> =
            String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 81);
        let streamed: String = lines[..80].iter().map(|l| l["char"].as_str().unwrap()).collect();
        assert_eq!(streamed, text);
        assert_eq!(lines[0]["value"], a["values"][0]);
        assert_eq!(lines[80]["done"], true);
        assert_eq!(lines[80]["answer"]["text"], text);
    }

    #[tokio::test]
    async fn a_top_layer_h_cell_shows_what_it_writes_to_the_output() {
        let model = tiny_model(None, 5);
        let (s, bytes, _) = call(Request::get("/api/cell/1/h/3").body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let promotes = v["logit_effect"]["promotes"].as_array().unwrap();
        let suppresses = v["logit_effect"]["suppresses"].as_array().unwrap();
        assert_eq!(promotes.len(), 10);
        let col = model.weights().decoder_weight.column(3);
        let max = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = col.iter().copied().fold(f32::INFINITY, f32::min);
        assert!((promotes[0]["p"].as_f64().unwrap() as f32 - max).abs() < 1e-6);
        assert!((suppresses[0]["p"].as_f64().unwrap() as f32 - min).abs() < 1e-6);
        let ws: Vec<f64> = promotes.iter().map(|g| g["p"].as_f64().unwrap()).collect();
        assert!(ws.windows(2).all(|w| w[0] >= w[1]));
        assert!(v["concepts"].as_array().unwrap().len() >= 4);
        let (top, bottom) =
            (v["top_contexts"][0]["value"].as_f64().unwrap(), v["bottom_contexts"][0]["value"].as_f64().unwrap());
        assert!(top >= bottom, "top context {top} is at least the bottom one {bottom}");
        let (s, bytes, _) = call(Request::get("/api/cell/0/h/3").body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v.get("logit_effect").is_none(), "only the top layer's h writes to the decoder");
        let (s, bytes, _) = call(Request::get("/api/cell/9/h/0").body(Body::empty()).unwrap()).await;
        assert_eq!(s, 404);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "bad_cell");
        // The page shows the same lists.
        let (s, bytes, _) = call(Request::get("/cell/1/h/3").body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200);
        assert!(String::from_utf8(bytes).unwrap().contains("What it writes to the output"));
    }

    #[tokio::test]
    async fn saliency_over_http() {
        let (s, v) = post("/api/saliency", json!({"text": TEXT, "position": 20})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["target"], TEXT.chars().nth(21).unwrap().to_string());
        let g = v["grad_norm"].as_array().unwrap();
        assert_eq!((v["first"].as_u64(), g.len()), (Some(0), 21));
        let model = tiny_model(None, 5);
        let direct = cellscope::model::saliency(&model, &model.trace(TEXT), 20, 4000).unwrap();
        assert!((g[20].as_f64().unwrap() as f32 - direct.grad_norm[20]).abs() < 1e-6);
        assert!(v["horizon_1pct"].as_u64().unwrap() <= 20);
        for (body, code) in [
            (json!({"text": "abc", "position": 2}), "bad_position"),
            (json!({"text": "abc", "position": 9}), "bad_position"),
            (json!({"text": "a\u{1F600}", "position": 0}), "bad_position"),
            (json!({"text": "abc"}), "invalid_request"),
        ] {
            let (s, v) = post("/api/saliency", body.clone()).await;
            assert_eq!((s, v["error"]["code"].as_str()), (422, Some(code)), "{body}: {v}");
        }
    }
}
