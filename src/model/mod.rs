//! The model: vocabulary, weights in PyTorch's layout, the safetensors file format,
//! and the forward pass that records every cell ([`Model::trace`]).

mod arch;
mod buffers;
mod gru_rnn;
pub mod kernel;
mod lstm;
mod meta;
mod quant;
pub mod safetensors;
pub(crate) use lstm::read_tensor_file;
mod memory;
mod saliency;
mod step;
mod vocab;

pub use arch::{Arch, Kind, MissingKind};
pub use buffers::{set_pool_limit, DEFAULT_POOL_BYTES};
pub use lstm::{
    cores, trace_threads_set, Clamp, ClampError, LayerTrace, LayerWeights, LoadError, Model, State, Trace, Weights,
    MAX_MODEL_BYTES,
};
pub(crate) use lstm::{write_atomic, GATES};
pub(crate) use memory::{explain_step, memory_horizon, time_scale};
pub use memory::{horizon_1pct, memory_horizon_of, Horizon, StepExplained};
pub use meta::{CurvePoint, Recorded, TrainMeta};
pub use quant::Precision;
pub use saliency::{saliencies, saliency, Saliency};
pub use step::{sample, sample_on, Sampling, Stepper};
pub use vocab::{Encoded, Vocab, VocabError};

use crate::rng::Rng;

/// The shipped default model, relative to the crate root.
pub(crate) const DEFAULT_MODEL: &str = "models/linux-lstm.safetensors";

/// Finds the default model: `models/linux-lstm.safetensors` under the current
/// directory, else under the crate root this binary was built from.
pub fn default_model_path() -> std::path::PathBuf {
    let local = std::path::PathBuf::from(DEFAULT_MODEL);
    if local.exists() {
        return local;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL)
}
use ndarray::{Array1, Array2};

impl Weights {
    /// Fresh weights as char-rnn initialises them: uniform(−0.08, 0.08), except the
    /// forget-gate biases, which start at 1 (split as 1 in `bias_ih`, 0 in `bias_hh`)
    /// so that early on cells remember rather than forget. The trainer starts from
    /// [`Weights::random_arch`] with its `--init` scale; unit tests use this.
    #[cfg(test)]
    pub(crate) fn random(vocab: usize, embed: Option<usize>, hidden: usize, layers: usize, seed: u64) -> Self {
        Self::random_scaled(vocab, embed, hidden, layers, seed, 0.08)
    }

    /// As `Weights::random` with uniform(−scale, scale).
    pub fn random_scaled(
        vocab: usize,
        embed: Option<usize>,
        hidden: usize,
        layers: usize,
        seed: u64,
        scale: f32,
    ) -> Self {
        Self::random_arch(Arch::Lstm, vocab, embed, hidden, layers, seed, scale)
    }

    /// Fresh weights of any architecture, uniform(−scale, scale); an LSTM's forget
    /// biases start at 1 (see `Weights::random`).
    pub fn random_arch(
        arch: Arch,
        vocab: usize,
        embed: Option<usize>,
        hidden: usize,
        layers: usize,
        seed: u64,
        scale: f32,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut mat = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.range(-scale, scale));
        let g = arch.gates() * hidden;
        let embedding = embed.map(|e| mat(vocab, e));
        let input = embed.unwrap_or(vocab);
        let mut ls = Vec::new();
        for k in 0..layers {
            let inp = if k == 0 { input } else { hidden };
            let weight_ih = mat(g, inp);
            let weight_hh = mat(g, hidden);
            let mut bias_ih = Array1::from_iter(mat(1, g));
            let mut bias_hh = Array1::from_iter(mat(1, g));
            if arch == Arch::Lstm {
                bias_ih.slice_mut(ndarray::s![hidden..2 * hidden]).fill(1.0);
                bias_hh.slice_mut(ndarray::s![hidden..2 * hidden]).fill(0.0);
            }
            ls.push(LayerWeights { weight_ih, weight_hh, bias_ih, bias_hh });
        }
        let decoder_weight = mat(vocab, hidden);
        let decoder_bias = Array1::from_iter(mat(1, vocab));
        Self { arch, embedding, layers: ls, decoder_weight, decoder_bias }
    }
}
