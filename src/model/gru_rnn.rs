//! The GRU and tanh-RNN forward passes, in PyTorch's layouts (`nn.GRU`, gate rows
//! r, z, n; `nn.RNN(nonlinearity="tanh")`), per layer k and character t:
//! ```text
//! gru:  x_proj = W_ih x_t                  (3H; a table row for layer 0, a GEMM above)
//!       gh     = W_hh h_{t-1} + b_hh       (3H)
//!       r = σ(x_r + b_ir + gh_r),  z = σ(x_z + b_iz + gh_z)
//!       n = tanh(x_n + b_in + r ⊙ gh_n)
//!       h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
//! rnn:  h_t = tanh(W_ih x_t + b_ih + b_hh + W_hh h_{t-1})
//! ```
//! Plain code: the input projections of a block of steps are one GEMM (as for the
//! LSTM), the recurrence a matrix-vector product per step. [`step`] is shared by
//! [`trace`] and the one-step API ([`super::Stepper`]). Clamps hold h only (these
//! architectures have no cell state); the gates recorded at a clamped step are
//! those computed before the overwrite.

use super::kernel::{gemm, sigmoid, tanh, Trans};
use super::lstm::{Arch, Clamp, Kind, LayerTrace, Model, State, Trace};
use super::step::matvec;
use super::vocab::Encoded;

/// Floats of input projections computed per GEMM (4 MiB), as for the LSTM.
const PROJ_BLOCK_FLOATS: usize = 1 << 20;

/// One step of layer `k` of a GRU or RNN `model`. `x_proj` is W_ih x (G·H, no
/// bias), `h_prev` the layer's previous h, `gh` scratch of G·H floats; `out`
/// receives one H-long row per kind, in [`Arch::kinds`] order (GRU: h, r, z, n;
/// RNN: h).
pub(super) fn step(model: &Model, k: usize, x_proj: &[f32], h_prev: &[f32], gh: &mut [f32], out: &mut [Vec<f32>]) {
    let w = &model.weights().layers[k];
    let n = h_prev.len();
    matvec(w.weight_hh.as_slice().expect("standard layout"), h_prev, gh);
    match model.arch() {
        Arch::Gru => {
            let (b_ih, b_hh) = (w.bias_ih.as_slice().expect("1-D"), w.bias_hh.as_slice().expect("1-D"));
            let [h, r, z, cand] = out else { unreachable!("a GRU step records h, r, z, n") };
            for j in 0..n {
                let rj = sigmoid(x_proj[j] + b_ih[j] + gh[j] + b_hh[j]);
                let zj = sigmoid(x_proj[n + j] + b_ih[n + j] + gh[n + j] + b_hh[n + j]);
                let nj = tanh(x_proj[2 * n + j] + b_ih[2 * n + j] + rj * (gh[2 * n + j] + b_hh[2 * n + j]));
                (r[j], z[j], cand[j]) = (rj, zj, nj);
                h[j] = (1.0 - zj) * nj + zj * h_prev[j];
            }
        }
        Arch::Rnn => {
            let bias = &model.bias[k];
            let [h] = out else { unreachable!("an RNN step records h") };
            for j in 0..n {
                h[j] = tanh(x_proj[j] + bias[j] + gh[j]);
            }
        }
        Arch::Lstm => unreachable!("the LSTM steps in kernel::lstm_layer"),
    }
}

/// Overwrites h (the first row of `out`) where the clamps of this layer cover step `t`.
pub(super) fn clamp_h(out: &mut [Vec<f32>], clamps: &[&Clamp], t: usize) {
    for c in clamps.iter().filter(|c| c.kind == Kind::Hidden && c.from <= t && t < c.to) {
        out[0][c.cell] = c.value;
    }
}

/// Runs `enc` through a GRU or RNN `model` from `state`, with `clamps` (checked
/// by [`Model::check_clamps`]), recording every kind of every layer.
pub(super) fn trace(model: &Model, enc: Encoded, state: &State, clamps: &[Clamp]) -> Trace {
    let arch = model.arch();
    let (n, t_len) = (model.hidden_size(), enc.ids.len());
    let g = arch.gates() * n;
    assert_eq!(state.h.len(), model.layers(), "state has the wrong number of layers");
    let block = (PROJ_BLOCK_FLOATS / g).clamp(16, t_len.max(16));
    let kinds = arch.kinds().len();
    let mut layers: Vec<LayerTrace> = Vec::with_capacity(model.layers());
    let mut proj = vec![0f32; block * g];
    let mut gh = vec![0f32; g];
    let mut cur = vec![vec![0f32; n]; kinds];
    for k in 0..model.layers() {
        let mine: Vec<&Clamp> = clamps.iter().filter(|c| c.layer == k).collect();
        let mut rec = vec![Vec::with_capacity(t_len * n); kinds];
        let mut h_prev = state.h[k].clone();
        for start in (0..t_len).step_by(block) {
            let steps = start..(start + block).min(t_len);
            let rows = steps.len();
            if k == 0 {
                for (row, &id) in proj.chunks_exact_mut(g).zip(&enc.ids[steps.clone()]) {
                    row.copy_from_slice(model.input_row(id));
                }
            } else {
                let below = layers[k - 1].h().as_slice().expect("standard layout");
                let w_ih = model.weights().layers[k].weight_ih.as_slice().expect("standard layout");
                let x = &below[steps.start * n..steps.end * n];
                gemm(rows, n, g, 1.0, x, Trans::N, w_ih, Trans::T, 0.0, &mut proj[..rows * g]);
            }
            for (i, t) in steps.enumerate() {
                step(model, k, &proj[i * g..(i + 1) * g], &h_prev, &mut gh, &mut cur);
                clamp_h(&mut cur, &mine, t);
                for (r, c) in rec.iter_mut().zip(&cur) {
                    r.extend_from_slice(c);
                }
                h_prev.copy_from_slice(&cur[0]);
            }
        }
        layers.push(LayerTrace::new(arch, rec, t_len, n));
    }
    model.finish_trace(enc, layers, state)
}

/// The input projection W_ih x of layer `k ≥ 1` for one step (the layer below's h).
pub(super) fn project(model: &Model, k: usize, h_below: &[f32], x_proj: &mut [f32]) {
    matvec(model.weights().layers[k].weight_ih.as_slice().expect("standard layout"), h_below, x_proj);
}
