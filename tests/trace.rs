//! The forward pass: shapes, pieces equal the whole, unknown characters, parity
//! with PyTorch.

use cellscope::model::{Arch, Kind, Model};
use ndarray::{s, Array2};

use crate::common::{fixture, tiny_model};

fn max_abs_diff(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn shapes_and_probabilities() {
    let m = tiny_model(None, 5);
    let text = "int main() {\n\treturn 0;\n}";
    let t = m.trace(text);
    assert_eq!(t.len(), text.chars().count());
    assert_eq!(t.layers.len(), 2);
    for l in &t.layers {
        for &k in Arch::Lstm.kinds() {
            assert_eq!(l.get(k).dim(), (t.len(), 16), "{k:?}");
        }
        assert!(l
            .get(Kind::Input)
            .iter()
            .chain(l.get(Kind::Forget).iter())
            .chain(l.get(Kind::Output).iter())
            .all(|&v| (0.0..=1.0).contains(&v)));
        assert!(l.get(Kind::Candidate).iter().chain(l.h().iter()).all(|&v| (-1.0..=1.0).contains(&v)));
    }
    assert_eq!(t.probs.dim(), (t.len(), m.vocab.len()));
    for row in t.probs.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn empty_text_gives_zero_length_trace() {
    let m = tiny_model(None, 5);
    let t = m.trace("");
    assert_eq!(t.len(), 0);
    assert_eq!(t.layers[0].h().dim(), (0, 16));
    assert_eq!(t.probs.dim(), (0, m.vocab.len()));
    assert_eq!(t.final_state, m.zero_state());
}

#[test]
fn text_traced_in_pieces_equals_text_traced_whole() {
    for embed in [None, Some(6)] {
        let m = tiny_model(embed, 6);
        let text = "if (a == \"x\") {\n\tb = 'q'; /* c */\n}\n";
        let whole = m.trace(text);
        let chars: Vec<char> = text.chars().collect();
        for cut in [0, 1, 7, 20, chars.len()] {
            let (a, b): (String, String) = (chars[..cut].iter().collect(), chars[cut..].iter().collect());
            let first = m.trace(&a);
            let second = m.trace_from(&b, &first.final_state);
            for (k, l) in whole.layers.iter().enumerate() {
                for &kind in Arch::Lstm.kinds() {
                    let joined = ndarray::concatenate(
                        ndarray::Axis(0),
                        &[first.layers[k].get(kind).view(), second.layers[k].get(kind).view()],
                    )
                    .unwrap();
                    assert_eq!(joined, l.get(kind), "cut {cut}, layer {k}, {kind:?}");
                }
            }
            assert_eq!(second.final_state, whole.final_state);
        }
    }
}

#[test]
fn unknown_characters_are_reported_and_fed_as_zero_input() {
    let m = tiny_model(None, 7);
    let t = m.trace("ab\u{1F600}c\u{0}d");
    assert_eq!(t.len(), 6, "no character is dropped");
    assert_eq!(t.unknown, vec![2, 4]);
    assert_eq!(t.ids[2], None);
    // Zero input: the first step's gates depend on the biases only.
    let u = m.trace("\u{1F600}");
    let w = &m.weights().layers[0];
    let bias = &w.bias_ih + &w.bias_hh;
    let n = m.hidden_size();
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    for j in 0..n {
        assert!((u.layers[0].get(Kind::Input)[[0, j]] - sig(bias[j])).abs() < 1e-5);
        assert!((u.layers[0].get(Kind::Candidate)[[0, j]] - bias[2 * n + j].tanh()).abs() < 1e-5);
    }
}

/// Checks a model exported by `scripts/make_fixtures.py` against the values real
/// PyTorch computed for it.
fn check_fixture(name: &str) {
    let model = Model::load(&fixture(&format!("{name}.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with scripts/make_fixtures.py)"));
    let bytes = std::fs::read(fixture(&format!("{name}.expected.safetensors"))).unwrap();
    let expected = cellscope::model::safetensors::parse(&bytes).unwrap();
    let text = &expected.metadata["text"];
    let trace = model.trace(text);
    assert!(trace.unknown.is_empty());
    let get = |key: &str| {
        let t = &expected.tensors[key];
        Array2::from_shape_vec((t.shape[0], t.shape[1]), t.data.clone()).unwrap()
    };
    let mut worst = 0f32;
    for (k, layer) in trace.layers.iter().enumerate() {
        for &kind in model.arch().kinds() {
            // PyTorch records the six; the memory terms follow from its values.
            let want = match kind {
                Kind::Write => get(&format!("i_l{k}")) * get(&format!("g_l{k}")),
                Kind::Keep => {
                    let c = get(&format!("c_l{k}"));
                    let mut c_prev = Array2::zeros(c.raw_dim());
                    c_prev.slice_mut(ndarray::s![1.., ..]).assign(&c.slice(ndarray::s![..-1, ..]));
                    get(&format!("f_l{k}")) * c_prev
                }
                _ => get(&format!("{}_l{k}", kind.letter())),
            };
            let diff = max_abs_diff(layer.get(kind).view(), want.view());
            worst = worst.max(diff);
            assert!(diff < 1e-5, "{name}: layer {k} {kind:?} differs from PyTorch by {diff}");
        }
    }
    let logp = trace.probs.mapv(f32::ln);
    let want = get("log_probs");
    let diff = max_abs_diff(logp.slice(s![.., ..]), want.view());
    assert!(diff < 1e-5, "{name}: log-probabilities differ from PyTorch by {diff}");
    eprintln!("{name}: worst |Δ| {worst:.2e} over every kind, {diff:.2e} over log-probabilities");
}

#[test]
fn parity_with_pytorch_one_hot() {
    check_fixture("lstm_onehot");
}

#[test]
fn parity_with_pytorch_embedding() {
    check_fixture("lstm_embed");
}

/// `nn.GRU`: h, r, z, n of both layers and the log-probabilities.
#[test]
fn parity_with_pytorch_gru() {
    check_fixture("gru_onehot");
    let m = Model::load(&fixture("gru_onehot.safetensors")).unwrap();
    assert_eq!((m.arch(), m.arch().kinds()), (Arch::Gru, &[Kind::Hidden, Kind::Reset, Kind::Update, Kind::New][..]));
}

/// `nn.RNN(nonlinearity="tanh")`: h of both layers and the log-probabilities.
#[test]
fn parity_with_pytorch_tanh_rnn() {
    check_fixture("rnn_onehot");
    assert_eq!(Model::load(&fixture("rnn_onehot.safetensors")).unwrap().arch(), Arch::Rnn);
}

/// A text of many pipeline blocks, with a clamp in layer 0, traces the same on two
/// threads (layer 1 a block behind layer 0) as on one, to the bit.
#[test]
fn two_threads_trace_exactly_as_one() {
    let vocab = cellscope::model::Vocab::from_text("abcdefghij (){};\n\t=+-*/<>!&|0123456789#_,.").unwrap();
    let w = cellscope::model::Weights::random_scaled(vocab.len(), None, 64, 2, 3, 0.2);
    let m = Model::new("pipe".into(), vocab, w, Default::default()).unwrap();
    let text: String = "if (a == b) {\n\tc = d + 1;\n}\n".chars().cycle().take(5000).collect();
    let clamps = [cellscope::model::Clamp { layer: 0, kind: Kind::Cell, cell: 9, value: 0.8, from: 1000, to: 1700 }];
    for clamps in [&[][..], &clamps[..]] {
        let trace = |threads| m.trace_clamped_with_threads(m.vocab.encode(&text), &m.zero_state(), clamps, threads);
        let (one, two) = (trace(1), trace(2));
        for (k, (a, b)) in one.layers.iter().zip(&two.layers).enumerate() {
            for &kind in Arch::Lstm.kinds() {
                assert!(a.get(kind) == b.get(kind), "layer {k} {kind:?} differs between 1 and 2 threads");
            }
        }
        assert!(one.probs == two.probs, "probabilities differ between 1 and 2 threads");
        assert_eq!(one.final_state, two.final_state);
    }
    // What `trace` picks for this length (two threads unless CELLSCOPE_TRACE_THREADS
    // says otherwise) gives the same trace too.
    assert!(m.trace(&text).probs == m.trace_clamped_with_threads(m.vocab.encode(&text), &m.zero_state(), &[], 1).probs);
}
