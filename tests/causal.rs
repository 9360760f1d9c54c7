//! Interventions and stepping: the clamped trace against an independent
//! step-by-step LSTM in f64 written here from the equations, and the one-step
//! API against the whole-text trace.

use cellscope::model::{Clamp, Kind, Model, Sampling, Stepper};

use crate::common::tiny_model;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// ln p(next char) at every position, from a plain f64 LSTM (one-hot input) with
/// the clamps applied exactly as the issue states them.
fn reference_logp(model: &Model, text: &str, clamps: &[Clamp]) -> Vec<Option<f64>> {
    let w = &model.weights;
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
        assert_eq!(clamped.layers[1].h.row(t), base.layers[1].h.row(t), "before the clamp nothing changes (t = {t})");
    }
    for t in 8..15 {
        assert_eq!(clamped.layers[0].c[[t, 2]], 0.75);
        let o = clamped.layers[0].o[[t, 2]];
        assert!((clamped.layers[0].h[[t, 2]] - o * 0.75f32.tanh()).abs() < 1e-6);
    }
    assert_ne!(clamped.layers[0].c[[15, 2]], 0.75, "after the range the cell evolves again");
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
                let rec = stepper.recorded(k);
                for (kind, got) in [(Kind::Hidden, &rec.h), (Kind::Cell, &rec.c), (Kind::Forget, &rec.f)] {
                    for (j, g) in got.iter().enumerate() {
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
