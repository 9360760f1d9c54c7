//! Concept directions end to end: `POST /api/probe` and `/api/probe/score` in-process (the
//! answer, its score formula against `/api/trace`, determinism, transfer, every refusal), and
//! `find-cells --probe --save` / `--score-with` on the command line. The maths (the three-cell
//! synthetic case, the split, the path) is tested beside it in `src/analysis/probe.rs`.

use std::process::Command;

use serde_json::{json, Value};

use crate::api::{app, assert_error, post_json};
use crate::common::{fixture, temp_dir};

/// C-ish text with a string in every line, so every block of the split has some.
fn code(lines: usize) -> String {
    (0..lines).map(|i| format!("if (a{i}) {{ b = \"x{i}\"; }} /* c */\n")).collect()
}

async fn probe(body: Value) -> (u16, Value) {
    let (s, v) = post_json(app(), "/api/probe", body.to_string()).await;
    (s.as_u16(), v)
}

#[tokio::test]
async fn probe_answers_cells_weights_aucs_and_scores() {
    let text = code(30);
    let (s, v) = probe(json!({"text": text, "feature": "string"})).await;
    assert_eq!(s, 200, "{v}");
    let chars = text.chars().count();
    assert_eq!(v["chars"], chars);
    assert_eq!(v["feature"], "string");
    let weights = v["weights"].as_array().expect("weights");
    assert!(!weights.is_empty() && weights.len() <= 64, "{v}");
    for w in weights {
        assert!(["h", "c"].contains(&w["kind"].as_str().unwrap()), "default kinds are h and c: {w}");
        assert!(w["std"].as_f64().unwrap() > 0.0 && w["weight"].as_f64().unwrap() != 0.0, "{w}");
    }
    let held = v["auc_heldout"].as_f64().unwrap();
    assert!(held > 0.8, "a random model still separates quotes this regular: {held}");
    assert!(v["best_cell"]["auc_heldout"].as_f64().is_some());
    assert!(v["split"]["heldout_chars"].as_u64().unwrap() as usize >= 2 * (chars / 10));
    assert_eq!(v["scores"].as_array().unwrap().len(), chars);
    assert!(v["path"].as_array().unwrap().iter().any(|p| p["l1"] == v["l1"]), "the chosen fit is on the path");

    // The score is bias + Σ weight·(value − mean)/std over the raw values /api/trace gives.
    let (s, trace) = post_json(app(), "/api/trace", json!({"text": text, "top_k": 0}).to_string()).await;
    assert_eq!(s, 200);
    for t in [0, 17, chars - 1] {
        let mut want = v["bias"].as_f64().unwrap();
        for w in weights {
            let raw = trace["layers"][w["layer"].as_u64().unwrap() as usize][w["kind"].as_str().unwrap()][t]
                [w["cell"].as_u64().unwrap() as usize]
                .as_f64()
                .unwrap();
            want += w["weight"].as_f64().unwrap() * (raw - w["mean"].as_f64().unwrap()) / w["std"].as_f64().unwrap();
        }
        let got = v["scores"][t].as_f64().unwrap();
        assert!((got - want).abs() < 1e-3 * (1.0 + want.abs()), "score at {t}: {got} vs {want}");
    }

    // Deterministic: the same request gives the same answer.
    let (_, again) = probe(json!({"text": text, "feature": "string"})).await;
    assert_eq!(v, again);
}

#[tokio::test]
async fn probe_takes_regex_spans_layers_kinds_l1_and_max_cells() {
    let text = code(30);
    let (s, v) =
        probe(json!({"text": text, "regex": "\"[^\"]*\"", "layers": [1], "kinds": ["c"], "max_cells": 2})).await;
    assert_eq!(s, 200, "{v}");
    let weights = v["weights"].as_array().unwrap();
    assert!(weights.len() <= 2 && weights.iter().all(|w| w["layer"] == 1 && w["kind"] == "c"), "{v}");
    assert_eq!(v["feature"], "regex:\"[^\"]*\"");
    let l1 = v["l1_max"].as_f64().unwrap() / 2.0;
    let (s, v) = probe(json!({"text": text, "spans": [[0, 40], [300, 400], [700, 800]], "l1": l1})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["l1"].as_f64().unwrap(), l1);
}

#[tokio::test]
async fn a_probe_scores_another_text() {
    let (s, fitted) = probe(json!({"text": code(30), "feature": "string"})).await;
    assert_eq!(s, 200, "{fitted}");
    let other = "int f(void) { return g(\"hello\", 'c'); } // done\n".repeat(8);
    // The whole answer is accepted as the probe; with a feature the AUCs come back.
    let body = json!({"probe": fitted, "text": other, "feature": "string"});
    let (s, v) = post_json(app(), "/api/probe/score", body.to_string()).await;
    assert_eq!(s.as_u16(), 200, "{v}");
    assert_eq!(v["chars"], other.chars().count());
    assert_eq!(v["scores"].as_array().unwrap().len(), other.chars().count());
    assert!(v["auc"].as_f64().is_some() && v["best_cell_auc"].as_f64().is_some(), "{v}");
    assert_eq!(v["feature"], "string");
    // Weights and bias alone suffice; without labels there is no AUC.
    let body = json!({"probe": {"weights": fitted["weights"], "bias": fitted["bias"]}, "text": code(30)});
    let (s, v) = post_json(app(), "/api/probe/score", body.to_string()).await;
    assert_eq!(s.as_u16(), 200, "{v}");
    assert!(v.get("auc").is_none() && v.get("feature").is_none() && v.get("best_cell_auc").is_none(), "{v}");
    // On the text it was fitted on, it gives the fit's scores.
    for (a, b) in v["scores"].as_array().unwrap().iter().zip(fitted["scores"].as_array().unwrap()) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
    }
}

#[tokio::test]
async fn probe_refuses_bad_input_with_a_code() {
    let text = code(30);
    for (body, status, code) in [
        (json!({"text": "int a;\n".repeat(50), "feature": "string"}), 422, "bad_feature"),
        (json!({"text": "\"aaaa\"".repeat(50), "regex": "."}), 422, "bad_feature"),
        (json!({"text": text, "feature": "paren-depth"}), 422, "bad_feature"),
        (json!({"text": text, "feature": "string", "regex": "x"}), 422, "bad_feature"),
        (json!({"text": text}), 422, "bad_feature"),
        (json!({"text": code(3), "feature": "string"}), 422, "too_short"),
        (json!({"text": text, "spans": [[0, 100]]}), 422, "too_short"),
        (json!({"text": text, "feature": "string", "l1": -1.0}), 422, "bad_l1"),
        (json!({"text": text, "feature": "string", "max_cells": 0}), 422, "bad_max_cells"),
        (json!({"text": text, "feature": "string", "max_cells": 100000}), 422, "bad_max_cells"),
        (json!({"text": text, "feature": "string", "l1": 0.0, "max_cells": 1}), 422, "too_many_cells"),
        (json!({"text": text, "feature": "string", "kinds": ["x"]}), 422, "bad_kind"),
        (json!({"text": text, "feature": "string", "layers": [7]}), 422, "bad_layer"),
        (json!({"text": text, "feature": "string", "top_k": 3}), 422, "invalid_request"),
        (json!({"text": text, "feature": "string", "l1": "big"}), 422, "invalid_request"),
    ] {
        let (s, v) = probe(body.clone()).await;
        assert_error(axum::http::StatusCode::from_u16(s).unwrap(), &v, status, code);
    }
    let (s, v) = post_json(app(), "/api/probe", "{\"text\": 1e999}").await;
    assert_error(s, &v, 400, "malformed_json");
}

#[tokio::test]
async fn score_refuses_unknown_cells_and_bad_numbers() {
    let cell = |layer: usize, kind: &str, cell: usize, std: f64| json!({"probe": {"weights": [{"layer": layer, "kind": kind, "cell": cell, "weight": 1.0, "mean": 0.0, "std": std}], "bias": 0.0}, "text": code(3)});
    let twice = json!({"probe": {"weights": [
        {"layer": 0, "kind": "h", "cell": 1, "weight": 1.0, "mean": 0.0, "std": 1.0},
        {"layer": 0, "kind": "h", "cell": 1, "weight": 2.0, "mean": 0.0, "std": 1.0}], "bias": 0.0}, "text": "ab"});
    for (body, status, code) in [
        (cell(2, "h", 0, 1.0), 422, "bad_probe"),
        (cell(0, "c", 16, 1.0), 422, "bad_probe"),
        (cell(0, "c", 1, 0.0), 422, "bad_probe"),
        (twice, 422, "bad_probe"),
        (cell(0, "x", 1, 1.0), 422, "invalid_request"),
        (json!({"probe": {"bias": 0.0}, "text": "ab"}), 422, "invalid_request"),
        (json!({"probe": {"weights": [], "bias": 0.0}, "text": "ab", "feature": "string"}), 422, "bad_feature"),
        (json!({"probe": {"weights": [], "bias": 0.0}, "text": "ab", "feature": "column"}), 422, "bad_feature"),
    ] {
        let (s, v) = post_json(app(), "/api/probe/score", body.to_string()).await;
        assert_error(s, &v, status, code);
    }
}

fn find_cells(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cellscope"))
        .arg("find-cells")
        .arg("--model")
        .arg(fixture("lstm_onehot.safetensors"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn cli_fits_saves_and_scores_a_direction() {
    let dir = temp_dir("probe-cli");
    let (a, b) = (dir.join("a.c"), dir.join("b.c"));
    std::fs::write(&a, code(20)).unwrap();
    std::fs::write(&b, code(25)).unwrap();
    let saved = dir.join("probe.json");
    let (a, b, saved) = (a.to_str().unwrap(), b.to_str().unwrap(), saved.to_str().unwrap());
    let out = find_cells(&["--file", a, "--file", b, "--feature", "string", "--probe", "--save", saved]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("direction for string: "), "{stdout}");
    assert!(stdout.contains("held-out AUC") && stdout.contains("best single cell"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("1 ")), "a table of cells:\n{stdout}");
    let probe: Value = serde_json::from_str(&std::fs::read_to_string(saved).unwrap()).expect("saved JSON");
    assert_eq!(probe["chars"], code(20).chars().count() + code(25).chars().count());
    assert!(!probe["weights"].as_array().unwrap().is_empty());

    let out = find_cells(&["--file", a, "--feature", "string", "--score-with", saved]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("AUC") && stdout.contains("its best single cell"), "{stdout}");
    let out = find_cells(&["--file", a, "--score-with", saved, "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["scores"].as_array().unwrap().len(), code(20).chars().count());

    // Refusals: a graded concept, a file that is not a probe, a text too short to hold out.
    for (args, phrase) in [
        (
            vec!["--file", a, "--feature", "depth", "--probe"],
            "is graded (a number per character); a direction separates yes/no concepts: use string, char, comment, if, \
             preprocessor or regex:RE",
        ),
        (vec!["--file", a, "--feature", "string", "--score-with", a], "is not a saved direction"),
        (vec!["--file", a, "--feature", "string", "--probe", "--max-cells", "0"], "max_cells must be"),
        (vec!["--file", a, "--probe"], "--feature"),
    ] {
        let out = find_cells(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(phrase), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let short = dir.join("short.c");
    std::fs::write(&short, code(2)).unwrap();
    let out = find_cells(&["--file", short.to_str().unwrap(), "--feature", "string", "--probe"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 200"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_direction_is_clamped_as_its_cells_moved_along_the_weights() {
    let text = code(12);
    let probe = json!({"weights": [
        {"layer": 1, "kind": "c", "cell": 3, "weight": 2.0, "mean": 0.5, "std": 0.25},
        {"layer": 0, "kind": "h", "cell": 7, "weight": -1.0, "mean": -0.1, "std": 0.5}
    ], "bias": -1.0});
    // α = (score − bias) / Σw² = (4 − (−1)) / 5 = 1: v = mean + std · w.
    let direct = json!({"text": text, "direction": {"probe": probe, "score": 4.0, "from": 5}});
    let cells = json!({"text": text, "clamps": [
        {"layer": 1, "kind": "c", "cell": 3, "value": 1.0, "from": 5},
        {"layer": 0, "kind": "h", "cell": 7, "value": -0.6, "from": 5}
    ]});
    let (s, a) = post_json(app(), "/api/intervene", direct.to_string()).await;
    assert_eq!(s.as_u16(), 200, "{a}");
    let (s, b) = post_json(app(), "/api/intervene", cells.to_string()).await;
    assert_eq!(s.as_u16(), 200, "{b}");
    assert_eq!(a, b, "the direction clamp differs from its cells clamped by hand");
    assert!(a["delta"].as_array().unwrap().iter().any(|d| d.as_f64().is_some_and(|d| d != 0.0)));
    let zero = json!({"text": text, "direction": {"probe": {"weights": [
        {"layer": 0, "kind": "h", "cell": 1, "weight": 0.0, "mean": 0.0, "std": 1.0}], "bias": 0.0}, "score": 1.0}});
    let (s, v) = post_json(app(), "/api/intervene", zero.to_string()).await;
    assert_error(s, &v, 422, "bad_probe");
    let unknown = json!({"text": text, "direction": {"probe": {"weights": [
        {"layer": 5, "kind": "h", "cell": 1, "weight": 1.0, "mean": 0.0, "std": 1.0}], "bias": 0.0}, "score": 1.0}});
    let (s, v) = post_json(app(), "/api/intervene", unknown.to_string()).await;
    assert_error(s, &v, 422, "bad_probe");
}
