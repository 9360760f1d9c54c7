//! How far back the model looks: the gradient of one prediction with respect to
//! every earlier input, by exact backpropagation through time over a recorded
//! trace (the formulas of `train/backprop.rs`, for one stream and one target).
//!
//! For the target `y = text[p+1]` and `ℓ = ln p(y | text[..=p])`:
//! ```text
//! ∂ℓ/∂logits = onehot(y) − softmax,   dh_p^(top) = W_decᵀ ∂ℓ/∂logits
//! for t = p … 0, layers top → bottom:
//!   dh  = dh (from above at t) + W_hhᵀ dA_{t+1}
//!   dc  = dc_{t+1} ⊙ f_{t+1} + dh ⊙ o ⊙ (1 − tanh²c_t)
//!   dA  = [dc ⊙ g ⊙ i(1−i), dc ⊙ c_{t−1} ⊙ f(1−f), dc ⊙ i ⊙ (1−g²), dh ⊙ tanh c_t ⊙ o(1−o)]
//!   dx_t = W_ihᵀ dA        (the layer below's dh at t; for layer 0 the input gradient)
//! grad_norm[t] = ‖dx_t^(layer 0)‖₂   (over the one-hot row, or the embedding row)
//! ```
//! With an embedding, `∂ℓ/∂e = W_ihᵀ dA` is the gradient with respect to the
//! embedding row that was fed, which is what "the input vector" is there.
//!
//! A GRU or tanh-RNN runs the same loop with its own step (`dGi`, `dGh`: the
//! gradients of the input-side and hidden-side pre-activations, G·H each):
//! ```text
//! gru: gh_n = W_hn h_{t−1} + b_hn  (recomputed),   dn = dh ⊙ (1 − z),  dz = dh ⊙ (h_{t−1} − n)
//!      dA_n = dn ⊙ (1 − n²),  dA_r = dA_n ⊙ gh_n ⊙ r(1−r),  dA_z = dz ⊙ z(1−z)
//!      dGi = [dA_r, dA_z, dA_n],  dGh = [dA_r, dA_z, dA_n ⊙ r],  dh_{t−1} = W_hhᵀ dGh + dh ⊙ z
//! rnn: dGi = dGh = dh ⊙ (1 − h²),  dh_{t−1} = W_hhᵀ dGh
//! dx_t = W_ihᵀ dGi
//! ```

use super::lstm::{Arch, Kind, Model, Trace, GATES};

/// The gradient of `ln p(text[position+1] | text[..=position])` with respect to
/// the input at every step `s` in `first..=position`.
#[derive(Debug, Clone, PartialEq)]
pub struct Saliency {
    pub position: usize,
    /// The character being predicted (`None` if it is unknown or past the end).
    pub target: Option<char>,
    /// `ln p(target)`.
    pub logp: f32,
    /// The earliest step computed (`position − max_back`, clipped at 0).
    pub first: usize,
    /// `grad_norm[s − first]` = ‖∂ℓ/∂x_s‖₂.
    pub grad_norm: Vec<f32>,
}

/// Backpropagates from the prediction after `position` over at most `max_back`
/// steps of `trace` (a trace of this model from the zero state). Returns `None`
/// when the character after `position` is unknown or does not exist.
pub fn saliency(model: &Model, trace: &Trace, position: usize, max_back: usize) -> Option<Saliency> {
    let target = *trace.chars.get(position + 1)?;
    let y = trace.ids[position + 1]? as usize;
    let n = model.hidden_size();
    let w = &model.weights();
    let first = position.saturating_sub(max_back);
    // ∂ℓ/∂logits = onehot(y) − p; dh for the top layer at `position`.
    let probs = trace.probs.row(position);
    let mut d_top = vec![0f32; n];
    for (v, &p) in probs.iter().enumerate() {
        let g = if v == y { 1.0 - p } else { -p };
        if g != 0.0 {
            axpy(g, w.decoder_weight.row(v).as_slice().expect("standard layout"), &mut d_top);
        }
    }
    let grad_norm = match model.arch() {
        Arch::Lstm => backward_lstm(model, trace, position, first, &d_top),
        Arch::Gru | Arch::Rnn => backward_plain(model, trace, position, first, &d_top),
    };
    Some(Saliency { position, target: Some(target), logp: probs[y].ln(), first, grad_norm })
}

/// The LSTM's loop of the module doc: ‖dx_t‖ for t in `first..=position`.
fn backward_lstm(model: &Model, trace: &Trace, position: usize, first: usize, d_top: &[f32]) -> Vec<f32> {
    let n = model.hidden_size();
    let layers = model.layers();
    let w = &model.weights();
    let mut dh_rec = vec![vec![0f32; n]; layers];
    let mut dc_rec = vec![vec![0f32; n]; layers];
    let mut da = vec![0f32; GATES * n];
    let mut dh = vec![0f32; n];
    let mut dx_below = vec![0f32; n];
    let input = w.layers[0].weight_ih.ncols();
    let mut dx0 = vec![0f32; input];
    let mut grad_norm = vec![0f32; position - first + 1];
    for t in (first..=position).rev() {
        for k in (0..layers).rev() {
            let lt = &trace.layers[k];
            // dh = from above (or the decoder) + from step t+1.
            for j in 0..n {
                let above = if k + 1 == layers {
                    if t == position {
                        d_top[j]
                    } else {
                        0.0
                    }
                } else {
                    dx_below[j]
                };
                dh[j] = above + dh_rec[k][j];
            }
            let row = |kind| lt.get(kind).row(t);
            let (i, f, g, o) = (row(Kind::Input), row(Kind::Forget), row(Kind::Candidate), row(Kind::Output));
            let cs = lt.get(Kind::Cell);
            let c = cs.row(t);
            for j in 0..n {
                let tc = c[j].tanh();
                let dc = dc_rec[k][j] + dh[j] * o[j] * (1.0 - tc * tc);
                let c_prev = if t == 0 { 0.0 } else { cs[[t - 1, j]] };
                da[j] = dc * g[j] * i[j] * (1.0 - i[j]);
                da[n + j] = dc * c_prev * f[j] * (1.0 - f[j]);
                da[2 * n + j] = dc * i[j] * (1.0 - g[j] * g[j]);
                da[3 * n + j] = dh[j] * tc * o[j] * (1.0 - o[j]);
                dc_rec[k][j] = dc * f[j];
            }
            // dh_{t−1} = W_hhᵀ dA,  dx_t = W_ihᵀ dA.
            let lw = &w.layers[k];
            mat_t_vec(lw.weight_hh.as_slice().expect("standard layout"), &da, &mut dh_rec[k]);
            if k > 0 {
                mat_t_vec(lw.weight_ih.as_slice().expect("standard layout"), &da, &mut dx_below);
            } else {
                mat_t_vec(lw.weight_ih.as_slice().expect("standard layout"), &da, &mut dx0);
                grad_norm[t - first] = dx0.iter().map(|v| v * v).sum::<f32>().sqrt();
            }
        }
    }
    grad_norm
}

/// The GRU's and RNN's loop of the module doc: ‖dx_t‖ for t in `first..=position`.
fn backward_plain(model: &Model, trace: &Trace, position: usize, first: usize, d_top: &[f32]) -> Vec<f32> {
    let n = model.hidden_size();
    let layers = model.layers();
    let w = &model.weights();
    let gru = model.arch() == Arch::Gru;
    let g = model.arch().gates() * n;
    let mut dh_rec = vec![vec![0f32; n]; layers];
    let (mut dgi, mut dgh) = (vec![0f32; g], vec![0f32; g]);
    let mut dh = vec![0f32; n];
    let mut gh_n = vec![0f32; n];
    let zeros = vec![0f32; n];
    let mut dx_below = vec![0f32; n];
    let mut dx0 = vec![0f32; w.layers[0].weight_ih.ncols()];
    let mut grad_norm = vec![0f32; position - first + 1];
    for t in (first..=position).rev() {
        for k in (0..layers).rev() {
            let lt = &trace.layers[k];
            let lw = &w.layers[k];
            for j in 0..n {
                let above = if k + 1 < layers {
                    dx_below[j]
                } else if t == position {
                    d_top[j]
                } else {
                    0.0
                };
                dh[j] = above + dh_rec[k][j];
            }
            let h = lt.h().row(t);
            let h_prev = if t == 0 { &zeros[..] } else { lt.h().row(t - 1).to_slice().expect("standard layout") };
            if gru {
                let (r, z, cand) = (lt.get(Kind::Reset).row(t), lt.get(Kind::Update).row(t), lt.get(Kind::New).row(t));
                let w_hn = &lw.weight_hh.as_slice().expect("standard layout")[2 * n * n..];
                super::step::matvec(w_hn, h_prev, &mut gh_n);
                for j in 0..n {
                    let gh = gh_n[j] + lw.bias_hh[2 * n + j];
                    let da_n = dh[j] * (1.0 - z[j]) * (1.0 - cand[j] * cand[j]);
                    let da_r = da_n * gh * r[j] * (1.0 - r[j]);
                    let da_z = dh[j] * (h_prev[j] - cand[j]) * z[j] * (1.0 - z[j]);
                    (dgi[j], dgi[n + j], dgi[2 * n + j]) = (da_r, da_z, da_n);
                    (dgh[j], dgh[n + j], dgh[2 * n + j]) = (da_r, da_z, da_n * r[j]);
                }
            } else {
                for j in 0..n {
                    dgi[j] = dh[j] * (1.0 - h[j] * h[j]);
                }
                dgh.copy_from_slice(&dgi);
            }
            mat_t_vec(lw.weight_hh.as_slice().expect("standard layout"), &dgh, &mut dh_rec[k]);
            if gru {
                let z = lt.get(Kind::Update).row(t);
                for j in 0..n {
                    dh_rec[k][j] += dh[j] * z[j];
                }
            }
            if k > 0 {
                mat_t_vec(lw.weight_ih.as_slice().expect("standard layout"), &dgi, &mut dx_below);
            } else {
                mat_t_vec(lw.weight_ih.as_slice().expect("standard layout"), &dgi, &mut dx0);
                grad_norm[t - first] = dx0.iter().map(|v| v * v).sum::<f32>().sqrt();
            }
        }
    }
    grad_norm
}

/// y += a·x
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// y = Wᵀ v for a row-major W of `v.len()` rows: a sum of rows scaled by v.
fn mat_t_vec(w: &[f32], v: &[f32], y: &mut [f32]) {
    y.fill(0.0);
    let cols = y.len();
    for (row, &a) in w.chunks_exact(cols).zip(v) {
        if a != 0.0 {
            axpy(a, row, y);
        }
    }
}
