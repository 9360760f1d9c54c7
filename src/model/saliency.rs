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

use super::lstm::{Model, Trace, GATES};

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
    let layers = model.layers();
    let w = &model.weights;
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
            let (i, f, g, o, c) = (lt.i.row(t), lt.f.row(t), lt.g.row(t), lt.o.row(t), lt.c.row(t));
            for j in 0..n {
                let tc = c[j].tanh();
                let dc = dc_rec[k][j] + dh[j] * o[j] * (1.0 - tc * tc);
                let c_prev = if t == 0 { 0.0 } else { lt.c[[t - 1, j]] };
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
    Some(Saliency { position, target: Some(target), logp: probs[y].ln(), first, grad_norm })
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
