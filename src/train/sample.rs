//! Sampling text from a model, one character at a time (char-rnn keeps `sample.lua`
//! beside `train.lua`; so do we). The caller receives each character as it is drawn,
//! so `cellscope sample | head` prints at once and stops when the reader leaves.

use crate::model::Model;
use crate::rng::Rng;

/// Draws up to `length` characters after `prime` and hands each to `on_char` as it
/// is drawn; `on_char` returns `false` to stop early. The same model, prime,
/// temperature and seed give the same characters.
///
/// Each character is drawn from p^(1/T) renormalised, where p is the model's
/// next-character distribution and T = `temperature`; T = 0 always takes the
/// likeliest character. An empty `prime` starts from a newline (or the first
/// character of the vocabulary if it has none).
pub fn sample_with(
    model: &Model,
    prime: &str,
    temperature: f32,
    length: usize,
    seed: u64,
    mut on_char: impl FnMut(char) -> bool,
) {
    let mut rng = Rng::new(seed);
    let start = if !prime.is_empty() {
        prime.to_string()
    } else if model.vocab.id('\n').is_some() {
        "\n".to_string()
    } else {
        model.vocab.chars()[0].to_string()
    };
    let t = model.trace_from(&start, &model.zero_state());
    let mut probs = t.probs.row(t.len() - 1).to_vec();
    let mut state = t.final_state;
    for _ in 0..length {
        let weights: Vec<f32> = if temperature <= 0.0 {
            let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            (0..probs.len()).map(|i| if i == best { 1.0 } else { 0.0 }).collect()
        } else {
            let logs: Vec<f32> = probs.iter().map(|p| p.max(1e-30).ln() / temperature).collect();
            let m = logs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            logs.iter().map(|l| (l - m).exp()).collect()
        };
        let c = model.vocab.chars()[rng.categorical(&weights)];
        if !on_char(c) {
            return;
        }
        let t = model.trace_from(&c.to_string(), &state);
        probs = t.probs.row(0).to_vec();
        state = t.final_state;
    }
}

/// [`sample_with`] collected into a string.
pub fn sample(model: &Model, prime: &str, temperature: f32, length: usize, seed: u64) -> String {
    let mut out = String::new();
    sample_with(model, prime, temperature, length, seed, |c| {
        out.push(c);
        true
    });
    out
}
