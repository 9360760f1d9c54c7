//! Forward and backward pass of a batch of parallel character streams (truncated
//! backpropagation through time), time-major: row `t·B + b` is stream b at step t.
//!
//! Forward, per layer (A = gate pre-activations, B × 4H per step):
//! ```text
//! A_t = X_t W_ihᵀ + b_ih + b_hh + h_{t-1} W_hhᵀ
//! i, f, g, o = σ(A_i), σ(A_f), tanh(A_g), σ(A_o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)
//! ```
//! Backward, for t = S−1 … 0 (dh arrives from the layer above and from step t+1):
//! ```text
//! dc  = dc_{t+1} ⊙ f_{t+1} + dh ⊙ o ⊙ (1 − tanh²c_t)
//! dA  = [dc ⊙ g ⊙ i(1−i), dc ⊙ c_{t-1} ⊙ f(1−f), dc ⊙ i ⊙ (1−g²), dh ⊙ tanh c_t ⊙ o(1−o)]
//! dh_{t-1} = dA W_hh            dW_hh += dAᵀ h_{t-1}   (one GEMM over all t)
//! dX = dA W_ih                  dW_ih += dAᵀ X         (one GEMM over all t)
//! ```
//! GRU (gate blocks r, z, n; Gi = X W_ihᵀ + b_ih for all t at once, Gh = h_{t-1} W_hhᵀ + b_hh
//! per step) and tanh-RNN, with their backward steps:
//! ```text
//! gru:  r, z = σ(Gi_r + Gh_r), σ(Gi_z + Gh_z),  n = tanh(Gi_n + r ⊙ Gh_n),  h_t = (1−z) ⊙ n + z ⊙ h_{t-1}
//!       dA_n = dh ⊙ (1−z) ⊙ (1−n²),  dA_r = dA_n ⊙ Gh_n ⊙ r(1−r),  dA_z = dh ⊙ (h_{t-1} − n) ⊙ z(1−z)
//!       dGi = [dA_r, dA_z, dA_n],  dGh = [dA_r, dA_z, dA_n ⊙ r],  dh_{t-1} = dGh W_hh + dh ⊙ z
//!       dW_ih += dGiᵀ X,  db_ih = Σ dGi,  dW_hh += dGhᵀ h_{t-1},  db_hh = Σ dGh
//! rnn:  h_t = tanh(X_t W_ihᵀ + b_ih + b_hh + h_{t-1} W_hhᵀ),   dA = dh ⊙ (1 − h_t²),  dh_{t-1} = dA W_hh
//! ```
//! The loss is the mean cross-entropy (nats per character) of the next character.
//! Layer 0 takes one-hot input, so its `X W_ihᵀ` is a row lookup in W_ihᵀ and its
//! `dW_ih` a scatter-add.
//!
//! The two per-step products with W_hh are small (B rows) and run S times per layer
//! with the same W_hh, so W_hh is packed once per batch in both orientations
//! (`gemm.rs`) instead of being repacked by a general GEMM at every step.

use super::gemm::{gemm_packed, PackedB};
use crate::model::kernel::{gemm, sigmoid, simd, tanh, Simd, Trans};
use crate::model::{Arch, LayerWeights, Weights, GATES};
use crate::rng::Rng;

/// Hidden and cell state of B streams, carried from one batch to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    /// Per layer, B × H.
    pub h: Vec<Vec<f32>>,
    /// Per layer, B × H for an LSTM; empty for a GRU or RNN (no cell state).
    pub c: Vec<Vec<f32>>,
}

impl StreamState {
    pub fn zeros(arch: Arch, layers: usize, batch: usize, hidden: usize) -> Self {
        let cell = if arch.has_cell() { batch * hidden } else { 0 };
        Self { h: vec![vec![0.0; batch * hidden]; layers], c: vec![vec![0.0; cell]; layers] }
    }
}

/// Scratch memory for one shard, allocated once and reused every batch.
#[derive(Default)]
pub struct Workspace {
    layers: Vec<LayerBuffers>,
    logits: Vec<f32>,
    d_above: Vec<f32>,
    d_below: Vec<f32>,
    dh_next: Vec<f32>,
    dc_next: Vec<f32>,
    table: Vec<f32>,
    d_table: Vec<f32>,
}

#[derive(Default)]
struct LayerBuffers {
    /// Gate pre-activations in the forward pass, their gradients in the backward pass
    /// (GRU: the input side Gi and dGi).
    a: Vec<f32>,
    /// GRU only: the hidden side Gh = h_{t-1} W_hhᵀ + b_hh, then dGh (S × B × 3H).
    gh: Vec<f32>,
    /// LSTM: i, f, g, o, tanh c (S × B × H each). GRU: r, z, n in the first three.
    i: Vec<f32>,
    f: Vec<f32>,
    g: Vec<f32>,
    o: Vec<f32>,
    tanh_c: Vec<f32>,
    /// (S+1) × B × H: row 0 is the carried-in state.
    h: Vec<f32>,
    /// LSTM only, like `h`.
    c: Vec<f32>,
    /// The layer's output as the next layer sees it (after dropout), S × B × H.
    out: Vec<f32>,
    /// Dropout multipliers (0 or 1/(1−p)); empty when dropout is off.
    mask: Vec<f32>,
}

/// Sizes a buffer that is read before it is fully written (an accumulator, or a
/// carry that starts at zero): every element is zeroed.
fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

/// Sizes a buffer that is written in full before it is read: last batch's values
/// are left in place, since zeroing them would be a wasted pass over memory.
fn reuse(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// Gate activations and cell update of one step, for every stream (B × H outputs;
/// `a` is B × 4H), written so that each inner loop runs over contiguous slices.
#[inline(always)]
fn gates_forward_body(
    a: &[f32],
    c_prev: &[f32],
    c_next: &mut [f32],
    h_next: &mut [f32],
    is: &mut [f32],
    fs: &mut [f32],
    gs: &mut [f32],
    os: &mut [f32],
    tc: &mut [f32],
    n: usize,
) {
    for (b, ar) in a.chunks_exact(GATES * n).enumerate() {
        let (ai, rest) = ar.split_at(n);
        let (af, rest) = rest.split_at(n);
        let (ag, ao) = rest.split_at(n);
        let r = b * n..(b + 1) * n;
        let (cp, cn, hn) = (&c_prev[r.clone()], &mut c_next[r.clone()], &mut h_next[r.clone()]);
        let (is, fs, gs, os, tc) =
            (&mut is[r.clone()], &mut fs[r.clone()], &mut gs[r.clone()], &mut os[r.clone()], &mut tc[r]);
        for j in 0..n {
            let i = sigmoid(ai[j]);
            let f = sigmoid(af[j]);
            let gg = tanh(ag[j]);
            let o = sigmoid(ao[j]);
            let c = f * cp[j] + i * gg;
            let tcv = tanh(c);
            is[j] = i;
            fs[j] = f;
            gs[j] = gg;
            os[j] = o;
            cn[j] = c;
            tc[j] = tcv;
            hn[j] = o * tcv;
        }
    }
}

/// [`gates_forward_body`] compiled for AVX-512, where σ and tanh (all `exp_fast`
/// arithmetic) run 16 lanes at a time.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gates_forward_avx512(
    a: &[f32],
    c_prev: &[f32],
    c_next: &mut [f32],
    h_next: &mut [f32],
    is: &mut [f32],
    fs: &mut [f32],
    gs: &mut [f32],
    os: &mut [f32],
    tc: &mut [f32],
    n: usize,
) {
    gates_forward_body(a, c_prev, c_next, h_next, is, fs, gs, os, tc, n)
}

/// The forward gate step on the widest kernel this CPU allows (and `CELLSCOPE_SIMD`
/// does not rule out).
fn gates_forward(
    a: &[f32],
    c_prev: &[f32],
    c_next: &mut [f32],
    h_next: &mut [f32],
    is: &mut [f32],
    fs: &mut [f32],
    gs: &mut [f32],
    os: &mut [f32],
    tc: &mut [f32],
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd() == Simd::Avx512 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: `simd()` reports AVX-512 only when the CPU has AVX-512F, and AVX2
        // and FMA were just checked.
        return unsafe { gates_forward_avx512(a, c_prev, c_next, h_next, is, fs, gs, os, tc, n) };
    }
    gates_forward_body(a, c_prev, c_next, h_next, is, fs, gs, os, tc, n)
}

/// Gate gradients of one step (the module doc's `dc` and `dA`), overwriting the
/// pre-activations in `a` with dA and `dc_next` with dc ⊙ f for step t−1. Per-row
/// slices let the inner loop vectorise; it is left at the default target because
/// an AVX-512 build of it measured slower (it is bound by memory, not arithmetic).
fn gates_backward(
    a: &mut [f32],
    c_prev: &[f32],
    dh_above: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    is: &[f32],
    fs: &[f32],
    gs: &[f32],
    os: &[f32],
    tc: &[f32],
    n: usize,
) {
    for (b, ar) in a.chunks_exact_mut(GATES * n).enumerate() {
        let (ai, rest) = ar.split_at_mut(n);
        let (af, rest) = rest.split_at_mut(n);
        let (ag, ao) = rest.split_at_mut(n);
        let r = b * n..(b + 1) * n;
        let (cp, dha, dhn, dcn) =
            (&c_prev[r.clone()], &dh_above[r.clone()], &dh_next[r.clone()], &mut dc_next[r.clone()]);
        let (is, fs, gs, os, tc) = (&is[r.clone()], &fs[r.clone()], &gs[r.clone()], &os[r.clone()], &tc[r]);
        for j in 0..n {
            let dh = dha[j] + dhn[j];
            let (i, f, gg, o, tcv) = (is[j], fs[j], gs[j], os[j], tc[j]);
            let dc = dcn[j] + dh * o * (1.0 - tcv * tcv);
            ai[j] = dc * gg * i * (1.0 - i);
            af[j] = dc * cp[j] * f * (1.0 - f);
            ag[j] = dc * i * (1.0 - gg * gg);
            ao[j] = dh * tcv * o * (1.0 - o);
            dcn[j] = dc * f;
        }
    }
}

/// Forward and backward over one batch. Adds ∂loss/∂w into `grads` (which must
/// have the shapes of `w`), advances `state` to the end of the batch, and returns
/// the summed cross-entropy in nats. `scale` multiplies the gradient (pass
/// 1/total characters for a mean over several shards).
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grad(
    w: &Weights,
    inputs: &[u32],
    targets: &[u32],
    batch: usize,
    state: &mut StreamState,
    dropout: f32,
    rng: &mut Rng,
    scale: f32,
    grads: Option<&mut Weights>,
    ws: &mut Workspace,
) -> f64 {
    let rows = inputs.len();
    assert_eq!(rows % batch, 0, "inputs must be S × B");
    assert_eq!(targets.len(), rows);
    assert!(w.embedding.is_none(), "the trainer uses one-hot input");
    let dims = Dims { batch, steps: rows / batch, n: w.hidden_size(), g: w.arch.gates() * w.hidden_size() };
    ws.layers.resize_with(w.layers.len(), LayerBuffers::default);
    input_table(w, &mut ws.table);
    for k in 0..w.layers.len() {
        forward_layer(w, k, inputs, dims, state, dropout, rng, ws);
    }
    let loss = decoder_loss(w, targets, scale, ws);
    let Some(grads) = grads else {
        return loss;
    };
    backward_decoder(w, grads, ws);
    for k in (0..w.layers.len()).rev() {
        backward_layer(w, k, inputs, dims, grads, ws);
    }
    loss
}

/// The sizes of one batch: B streams × S steps, H units, G·H gate rows.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    n: usize,
    g: usize,
}

/// Layer 0's input projection is a lookup in W_ihᵀ (V × G·H): builds that table.
fn input_table(w: &Weights, table: &mut Vec<f32>) {
    let w0 = &w.layers[0].weight_ih;
    let (g, v) = w0.dim();
    reuse(table, v * g);
    for r in 0..g {
        for c in 0..v {
            table[c * g + r] = w0[[r, c]];
        }
    }
}

/// Layer `k` over the batch: its input projection plus biases (all steps at once),
/// the recurrence of its architecture, dropout on its output, and the carried state.
fn forward_layer(
    w: &Weights,
    k: usize,
    inputs: &[u32],
    d: Dims,
    state: &mut StreamState,
    dropout: f32,
    rng: &mut Rng,
    ws: &mut Workspace,
) {
    let Dims { batch, steps, n, g } = d;
    let rows = steps * batch;
    let bn = batch * n;
    let lw = &w.layers[k];
    let (below, rest) = ws.layers.split_at_mut(k);
    let lb = &mut rest[0];
    reuse(&mut lb.a, rows * g);
    for buf in [&mut lb.i, &mut lb.f, &mut lb.g, &mut lb.o, &mut lb.tanh_c, &mut lb.out] {
        reuse(buf, rows * n);
    }
    reuse(&mut lb.h, (steps + 1) * bn);
    lb.h[..bn].copy_from_slice(&state.h[k]);
    let x = match below.last() {
        Some(lower) => Input::Dense(&lower.out),
        None => Input::OneHot { ids: inputs, table: &ws.table },
    };
    input_side(w, k, x, d, &mut lb.a);
    // W_hhᵀ (H × G·H) from W_hh (G·H × H).
    let w_hh_t = PackedB::new(lw.weight_hh.as_slice().expect("standard layout"), n, g, true);
    match w.arch {
        Arch::Lstm => {
            reuse(&mut lb.c, (steps + 1) * bn);
            lb.c[..bn].copy_from_slice(&state.c[k]);
            lstm_forward(lb, &w_hh_t, d);
            state.c[k].copy_from_slice(&lb.c[steps * bn..]);
        }
        Arch::Gru => gru_forward(lb, &w_hh_t, lw.bias_hh.as_slice().expect("1-D"), d),
        Arch::Rnn => rnn_forward(lb, &w_hh_t, d),
    }
    lb.out.copy_from_slice(&lb.h[bn..]);
    apply_dropout(&mut lb.out, &mut lb.mask, dropout, rng);
    state.h[k].copy_from_slice(&lb.h[steps * bn..]);
}

/// What a layer reads: layer 0 the characters (one-hot, as ids and the [`input_table`]),
/// the others the output of the layer below (S·B × H).
enum Input<'a> {
    OneHot { ids: &'a [u32], table: &'a [f32] },
    Dense(&'a [f32]),
}

/// The input side of every step at once into `a` (S·B × G·H): X W_ihᵀ + b_ih, plus b_hh
/// but for the GRU, which keeps b_hh apart (r multiplies its n block).
fn input_side(w: &Weights, k: usize, x: Input, d: Dims, a: &mut [f32]) {
    let Dims { batch, steps, n, g } = d;
    let lw = &w.layers[k];
    let bias: Vec<f32> = if w.arch == Arch::Gru {
        lw.bias_ih.to_vec()
    } else {
        lw.bias_ih.iter().zip(lw.bias_hh.iter()).map(|(a, b)| a + b).collect()
    };
    for row in a.chunks_exact_mut(g) {
        row.copy_from_slice(&bias);
    }
    match x {
        Input::OneHot { ids, table } => {
            for (row, &id) in a.chunks_exact_mut(g).zip(ids) {
                let col = &table[id as usize * g..(id as usize + 1) * g];
                for (x, y) in row.iter_mut().zip(col) {
                    *x += y;
                }
            }
        }
        Input::Dense(x) => {
            gemm(steps * batch, n, g, 1.0, x, Trans::N, lw.weight_ih.as_slice().unwrap(), Trans::T, 1.0, a);
        }
    }
}

/// Inverted dropout on a layer's output: each value is zeroed with probability `p` or
/// scaled by 1/(1−p), the multipliers kept in `mask` for the backward pass (left empty
/// when `p` is 0).
fn apply_dropout(out: &mut [f32], mask: &mut Vec<f32>, p: f32, rng: &mut Rng) {
    if p <= 0.0 {
        mask.clear();
        return;
    }
    reuse(mask, out.len());
    let keep = 1.0 / (1.0 - p);
    for (m, x) in mask.iter_mut().zip(out.iter_mut()) {
        *m = if rng.uniform() < p { 0.0 } else { keep };
        *x *= *m;
    }
}

/// The loop over time every recurrence shares: for t = 0 … S−1, `hidden_side[t] +=
/// h_t W_hhᵀ` (B × G·H; it holds the biases, and for LSTM and RNN the input side too),
/// then `step(t, hidden_side[t], h_t, h_{t+1})` applies the architecture's equations.
fn forward_through_time(
    d: Dims,
    w_hh_t: &PackedB,
    hidden_side: &mut [f32],
    h: &mut [f32],
    mut step: impl FnMut(usize, &[f32], &[f32], &mut [f32]),
) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in 0..steps {
        let pre = &mut hidden_side[t * batch * g..(t + 1) * batch * g];
        let (h_prev, h_next) = h.split_at_mut((t + 1) * bn);
        let h_prev = &h_prev[t * bn..];
        gemm_packed(batch, n, g, h_prev, w_hh_t, 1.0, pre);
        step(t, pre, h_prev, &mut h_next[..bn]);
    }
}

/// The LSTM recurrence over the batch (the module doc's forward equations).
fn lstm_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, d: Dims) {
    let bn = d.batch * d.n;
    let LayerBuffers { a, i, f, g, o, tanh_c, h, c, .. } = lb;
    forward_through_time(d, w_hh_t, a, h, |t, a, _, h_next| {
        let (c_prev, c_next) = c.split_at_mut((t + 1) * bn);
        let r = t * bn..(t + 1) * bn;
        let (is, fs, gs, os, tc) =
            (&mut i[r.clone()], &mut f[r.clone()], &mut g[r.clone()], &mut o[r.clone()], &mut tanh_c[r]);
        gates_forward(a, &c_prev[t * bn..], &mut c_next[..bn], h_next, is, fs, gs, os, tc, d.n);
    });
}

/// The GRU recurrence over the batch: Gh = b_hh + h_{t-1} W_hhᵀ per step (into `gh`),
/// then r, z, n and h (kept in the `i`, `f`, `g` buffers and `h`).
fn gru_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, bias_hh: &[f32], d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    reuse(&mut lb.gh, steps * batch * g);
    for row in lb.gh.chunks_exact_mut(g) {
        row.copy_from_slice(bias_hh);
    }
    let LayerBuffers { a, gh, i: rs, f: zs, g: ns, h, .. } = lb;
    forward_through_time(d, w_hh_t, gh, h, |t, gh, h_prev, h_next| {
        let a = &a[t * batch * g..(t + 1) * batch * g];
        let r = t * bn..(t + 1) * bn;
        let (rs, zs, ns) = (&mut rs[r.clone()], &mut zs[r.clone()], &mut ns[r]);
        for b in 0..batch {
            let (ai, hi) = (&a[b * g..(b + 1) * g], &gh[b * g..(b + 1) * g]);
            for j in 0..n {
                let at = b * n + j;
                let rj = sigmoid(ai[j] + hi[j]);
                let zj = sigmoid(ai[n + j] + hi[n + j]);
                let nj = tanh(ai[2 * n + j] + rj * hi[2 * n + j]);
                (rs[at], zs[at], ns[at]) = (rj, zj, nj);
                h_next[at] = (1.0 - zj) * nj + zj * h_prev[at];
            }
        }
    });
}

/// The tanh-RNN recurrence over the batch.
fn rnn_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, d: Dims) {
    forward_through_time(d, w_hh_t, &mut lb.a, &mut lb.h, |_, a, _, h_next| {
        for (h, &x) in h_next.iter_mut().zip(a) {
            *h = tanh(x);
        }
    });
}

/// Decoder and softmax cross-entropy: returns the summed loss and leaves
/// ∂loss/∂logits · scale in `ws.logits`.
fn decoder_loss(w: &Weights, targets: &[u32], scale: f32, ws: &mut Workspace) -> f64 {
    let (v, n, rows) = (w.vocab_size(), w.hidden_size(), targets.len());
    let top = &ws.layers.last().expect("at least one layer").out;
    reuse(&mut ws.logits, rows * v);
    for row in ws.logits.chunks_exact_mut(v) {
        row.copy_from_slice(w.decoder_bias.as_slice().unwrap());
    }
    gemm(rows, n, v, 1.0, top, Trans::N, w.decoder_weight.as_slice().unwrap(), Trans::T, 1.0, &mut ws.logits);
    let mut loss = 0f64;
    for (row, &target) in ws.logits.chunks_exact_mut(v).zip(targets) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        loss -= ((row[target as usize] / sum) as f64).ln();
        // Row becomes dloss/dlogits = (softmax − onehot) · scale.
        for x in row.iter_mut() {
            *x *= scale / sum;
        }
        row[target as usize] -= scale;
    }
    loss
}

/// The decoder's gradients, and ∂loss/∂h of the top layer into `ws.d_above`.
fn backward_decoder(w: &Weights, grads: &mut Weights, ws: &mut Workspace) {
    let (v, n) = (w.vocab_size(), w.hidden_size());
    let rows = ws.logits.len() / v;
    let top = &ws.layers.last().expect("at least one layer").out;
    let dlogits = &ws.logits;
    gemm(v, rows, n, 1.0, dlogits, Trans::T, top, Trans::N, 1.0, grads.decoder_weight.as_slice_mut().unwrap());
    let db = grads.decoder_bias.as_slice_mut().unwrap();
    for row in dlogits.chunks_exact(v) {
        for (d, x) in db.iter_mut().zip(row) {
            *d += x;
        }
    }
    reuse(&mut ws.d_above, rows * n);
    gemm(rows, v, n, 1.0, dlogits, Trans::N, w.decoder_weight.as_slice().unwrap(), Trans::N, 0.0, &mut ws.d_above);
}

/// Layer `k` backward: its architecture's per-step gradients (dGi into `a`, and
/// for the GRU dGh into `gh`), then the weight gradients as GEMMs over all steps,
/// and ∂loss/∂(the layer below's output) into `ws.d_above` (or layer 0's W_ih
/// gradient by scatter-add).
fn backward_layer(w: &Weights, k: usize, inputs: &[u32], d: Dims, grads: &mut Weights, ws: &mut Workspace) {
    let Dims { batch, steps, n, g } = d;
    let rows = steps * batch;
    let v = w.vocab_size();
    let lw = &w.layers[k];
    let lg = &mut grads.layers[k];
    let (below, rest) = ws.layers.split_at_mut(k);
    let lb = &mut rest[0];
    // Gradient w.r.t. h_t (before dropout).
    if !lb.mask.is_empty() {
        for (d, m) in ws.d_above.iter_mut().zip(&lb.mask) {
            *d *= m;
        }
    }
    resize(&mut ws.dh_next, batch * n);
    let w_hh = PackedB::new(lw.weight_hh.as_slice().unwrap(), g, n, false);
    match w.arch {
        Arch::Lstm => {
            resize(&mut ws.dc_next, batch * n);
            lstm_backward(lb, &w_hh, &ws.d_above, &mut ws.dh_next, &mut ws.dc_next, d);
        }
        Arch::Gru => gru_backward(lb, &w_hh, &ws.d_above, &mut ws.dh_next, d),
        Arch::Rnn => rnn_backward(lb, &w_hh, &ws.d_above, &mut ws.dh_next, d),
    }
    // dGh = dA but for the GRU.
    let dgh = if w.arch == Arch::Gru { &lb.gh } else { &lb.a };
    hidden_side_grads(lg, dgh, &lb.a, &lb.h[..rows * n], d);
    match below.last() {
        Some(lower) => {
            input_side_grads(lg, lw, &lb.a, &lower.out, d, &mut ws.d_below);
            std::mem::swap(&mut ws.d_above, &mut ws.d_below);
        }
        None => one_hot_grads(lg, &lb.a, inputs, v, g, &mut ws.d_table),
    }
}

/// dW_hh += dGhᵀ h_{t-1} over all steps (`h_prev` is S·B × H), db_hh += Σ dGh, db_ih += Σ dA.
fn hidden_side_grads(lg: &mut LayerWeights, dgh: &[f32], da: &[f32], h_prev: &[f32], d: Dims) {
    let Dims { batch, steps, n, g } = d;
    gemm(g, steps * batch, n, 1.0, dgh, Trans::T, h_prev, Trans::N, 1.0, lg.weight_hh.as_slice_mut().unwrap());
    for (bias, grad) in [(lg.bias_ih.as_slice_mut().unwrap(), da), (lg.bias_hh.as_slice_mut().unwrap(), dgh)] {
        for row in grad.chunks_exact(g) {
            for (d, x) in bias.iter_mut().zip(row) {
                *d += x;
            }
        }
    }
}

/// A layer above the first: dW_ih += dAᵀ X, and ∂loss/∂X = dA W_ih into `dx` (the layer
/// below's output, S·B × H).
fn input_side_grads(lg: &mut LayerWeights, lw: &LayerWeights, da: &[f32], x: &[f32], d: Dims, dx: &mut Vec<f32>) {
    let Dims { batch, steps, n, g } = d;
    let rows = steps * batch;
    gemm(g, rows, n, 1.0, da, Trans::T, x, Trans::N, 1.0, lg.weight_ih.as_slice_mut().unwrap());
    reuse(dx, rows * n);
    gemm(rows, g, n, 1.0, da, Trans::N, lw.weight_ih.as_slice().unwrap(), Trans::N, 0.0, dx);
}

/// Layer 0 reads one-hot characters, so dW_ih is a scatter-add of dA's rows by character
/// (gathered in the V × G·H `d_table`, then transposed into W_ih's G·H × V).
fn one_hot_grads(lg: &mut LayerWeights, da: &[f32], ids: &[u32], v: usize, g: usize, d_table: &mut Vec<f32>) {
    resize(d_table, v * g);
    for (row, &id) in da.chunks_exact(g).zip(ids) {
        let dst = &mut d_table[id as usize * g..(id as usize + 1) * g];
        for (d, x) in dst.iter_mut().zip(row) {
            *d += x;
        }
    }
    for r in 0..g {
        for c in 0..v {
            lg.weight_ih[[r, c]] += d_table[c * g + r];
        }
    }
}

/// The loop over time every backward pass shares: for t = S−1 … 0, `step(t, d_hidden_side[t],
/// dh_next)` writes step t's gradient w.r.t. the hidden side's pre-activations (dA; the
/// GRU's dGh) from dh = (∂loss/∂h_t from above) + `dh_next`, leaving in `dh_next` what
/// reaches h_{t-1} other than through W_hh (the GRU's dh ⊙ z; nothing for LSTM and RNN,
/// `direct` false); then `dh_next (+)= d_hidden_side[t] W_hh`.
fn backward_through_time(
    d: Dims,
    w_hh: &PackedB,
    d_hidden_side: &mut [f32],
    dh_next: &mut [f32],
    direct: bool,
    mut step: impl FnMut(usize, &mut [f32], &mut [f32]),
) {
    let Dims { batch, steps, n, g } = d;
    for t in (0..steps).rev() {
        let da = &mut d_hidden_side[t * batch * g..(t + 1) * batch * g];
        step(t, da, dh_next);
        gemm_packed(batch, g, n, da, w_hh, if direct { 1.0 } else { 0.0 }, dh_next);
    }
}

/// The LSTM's backward steps (the module doc's `dc`, `dA`), dA into `lb.a`.
fn lstm_backward(
    lb: &mut LayerBuffers,
    w_hh: &PackedB,
    d_above: &[f32],
    dh_next: &mut [f32],
    dc_next: &mut [f32],
    d: Dims,
) {
    let bn = d.batch * d.n;
    let LayerBuffers { a, i, f, g, o, tanh_c, c, .. } = lb;
    backward_through_time(d, w_hh, a, dh_next, false, |t, a, dh_next| {
        let r = t * bn..(t + 1) * bn;
        let (is, fs, gs, os, tc) = (&i[r.clone()], &f[r.clone()], &g[r.clone()], &o[r.clone()], &tanh_c[r.clone()]);
        gates_backward(a, &c[r.clone()], &d_above[r], dh_next, dc_next, is, fs, gs, os, tc, d.n);
    });
}

/// The GRU's backward steps (module doc): dGi into `lb.a`, dGh into `lb.gh`.
fn gru_backward(lb: &mut LayerBuffers, w_hh: &PackedB, d_above: &[f32], dh_next: &mut [f32], d: Dims) {
    let Dims { batch, n, g, .. } = d;
    let bn = batch * n;
    let LayerBuffers { a, gh, i: rs, f: zs, g: ns, h, .. } = lb;
    backward_through_time(d, w_hh, gh, dh_next, true, |t, gh, dh_next| {
        let r = t * bn..(t + 1) * bn;
        let (rs, zs, ns) = (&rs[r.clone()], &zs[r.clone()], &ns[r.clone()]);
        let (h_prev, dh_above) = (&h[r.clone()], &d_above[r]);
        let a = &mut a[t * batch * g..(t + 1) * batch * g];
        for b in 0..batch {
            let (ai, hi) = (&mut a[b * g..(b + 1) * g], &mut gh[b * g..(b + 1) * g]);
            for j in 0..n {
                let at = b * n + j;
                let dh = dh_above[at] + dh_next[at];
                let (rj, zj, nj) = (rs[at], zs[at], ns[at]);
                let da_n = dh * (1.0 - zj) * (1.0 - nj * nj);
                let da_r = da_n * hi[2 * n + j] * rj * (1.0 - rj);
                let da_z = dh * (h_prev[at] - nj) * zj * (1.0 - zj);
                (ai[j], ai[n + j], ai[2 * n + j]) = (da_r, da_z, da_n);
                (hi[j], hi[n + j], hi[2 * n + j]) = (da_r, da_z, da_n * rj);
                dh_next[at] = dh * zj;
            }
        }
    });
}

/// The tanh-RNN's backward steps: dA = dh ⊙ (1 − h²) into `lb.a`.
fn rnn_backward(lb: &mut LayerBuffers, w_hh: &PackedB, d_above: &[f32], dh_next: &mut [f32], d: Dims) {
    let bn = d.batch * d.n;
    let LayerBuffers { a, h, .. } = lb;
    backward_through_time(d, w_hh, a, dh_next, false, |t, a, dh_next| {
        let h = &h[(t + 1) * bn..(t + 2) * bn];
        for (((da, &hv), &above), &next) in a.iter_mut().zip(h).zip(&d_above[t * bn..(t + 1) * bn]).zip(dh_next.iter())
        {
            *da = (above + next) * (1.0 - hv * hv);
        }
    });
}
