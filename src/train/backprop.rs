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
use crate::model::{Arch, Weights, GATES};
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
    // The GRU keeps b_hh apart: r multiplies its n block.
    let bias: Vec<f32> = if w.arch == Arch::Gru {
        lw.bias_ih.to_vec()
    } else {
        lw.bias_ih.iter().zip(lw.bias_hh.iter()).map(|(a, b)| a + b).collect()
    };
    for row in lb.a.chunks_exact_mut(g) {
        row.copy_from_slice(&bias);
    }
    if k == 0 {
        for (row, &id) in lb.a.chunks_exact_mut(g).zip(inputs) {
            let col = &ws.table[id as usize * g..(id as usize + 1) * g];
            for (x, y) in row.iter_mut().zip(col) {
                *x += y;
            }
        }
    } else {
        let x = &below[k - 1].out;
        gemm(rows, n, g, 1.0, x, Trans::N, lw.weight_ih.as_slice().unwrap(), Trans::T, 1.0, &mut lb.a);
    }
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
    if dropout > 0.0 {
        reuse(&mut lb.mask, rows * n);
        let keep = 1.0 / (1.0 - dropout);
        for (m, x) in lb.mask.iter_mut().zip(lb.out.iter_mut()) {
            *m = if rng.uniform() < dropout { 0.0 } else { keep };
            *x *= *m;
        }
    } else {
        lb.mask.clear();
    }
    state.h[k].copy_from_slice(&lb.h[steps * bn..]);
}

/// The LSTM recurrence over the batch (the module doc's forward equations).
fn lstm_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in 0..steps {
        let a = &mut lb.a[t * batch * g..(t + 1) * batch * g];
        gemm_packed(batch, n, g, &lb.h[t * bn..(t + 1) * bn], w_hh_t, 1.0, a);
        let (c_prev, c_next) = lb.c.split_at_mut((t + 1) * bn);
        let c_prev = &c_prev[t * bn..];
        let c_next = &mut c_next[..bn];
        let h_next = &mut lb.h[(t + 1) * bn..(t + 2) * bn];
        let r = t * bn..(t + 1) * bn;
        let (is, fs, gs, os, tc) =
            (&mut lb.i[r.clone()], &mut lb.f[r.clone()], &mut lb.g[r.clone()], &mut lb.o[r.clone()], &mut lb.tanh_c[r]);
        gates_forward(a, c_prev, c_next, h_next, is, fs, gs, os, tc, n);
    }
}

/// The GRU recurrence over the batch: Gh per step, then r, z, n and h (kept in the
/// `i`, `f`, `g` buffers and `h`).
fn gru_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, bias_hh: &[f32], d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    reuse(&mut lb.gh, steps * batch * g);
    for t in 0..steps {
        let gh = &mut lb.gh[t * batch * g..(t + 1) * batch * g];
        for row in gh.chunks_exact_mut(g) {
            row.copy_from_slice(bias_hh);
        }
        gemm_packed(batch, n, g, &lb.h[t * bn..(t + 1) * bn], w_hh_t, 1.0, gh);
        let a = &lb.a[t * batch * g..(t + 1) * batch * g];
        let (h_prev, h_next) = lb.h.split_at_mut((t + 1) * bn);
        let (h_prev, h_next) = (&h_prev[t * bn..], &mut h_next[..bn]);
        let r = t * bn..(t + 1) * bn;
        let (rs, zs, ns) = (&mut lb.i[r.clone()], &mut lb.f[r.clone()], &mut lb.g[r]);
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
    }
}

/// The tanh-RNN recurrence over the batch.
fn rnn_forward(lb: &mut LayerBuffers, w_hh_t: &PackedB, d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in 0..steps {
        let a = &mut lb.a[t * batch * g..(t + 1) * batch * g];
        gemm_packed(batch, n, g, &lb.h[t * bn..(t + 1) * bn], w_hh_t, 1.0, a);
        for (h, &x) in lb.h[(t + 1) * bn..(t + 2) * bn].iter_mut().zip(a.iter()) {
            *h = tanh(x);
        }
    }
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
    // dW_hh += dGhᵀ h_{t-1}, db_hh = Σ dGh (dGh = dA but for the GRU).
    let da = &lb.a;
    let dgh = if w.arch == Arch::Gru { &lb.gh } else { &lb.a };
    gemm(g, rows, n, 1.0, dgh, Trans::T, &lb.h[..rows * n], Trans::N, 1.0, lg.weight_hh.as_slice_mut().unwrap());
    for (bias, grad) in [(lg.bias_ih.as_slice_mut().unwrap(), da), (lg.bias_hh.as_slice_mut().unwrap(), dgh)] {
        for row in grad.chunks_exact(g) {
            for (d, x) in bias.iter_mut().zip(row) {
                *d += x;
            }
        }
    }
    if k > 0 {
        let x = &below[k - 1].out;
        gemm(g, rows, n, 1.0, da, Trans::T, x, Trans::N, 1.0, lg.weight_ih.as_slice_mut().unwrap());
        reuse(&mut ws.d_below, rows * n);
        gemm(rows, g, n, 1.0, da, Trans::N, lw.weight_ih.as_slice().unwrap(), Trans::N, 0.0, &mut ws.d_below);
        std::mem::swap(&mut ws.d_above, &mut ws.d_below);
    } else {
        resize(&mut ws.d_table, v * g);
        for (row, &id) in da.chunks_exact(g).zip(inputs) {
            let dst = &mut ws.d_table[id as usize * g..(id as usize + 1) * g];
            for (d, x) in dst.iter_mut().zip(row) {
                *d += x;
            }
        }
        for r in 0..g {
            for c in 0..v {
                lg.weight_ih[[r, c]] += ws.d_table[c * g + r];
            }
        }
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
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in (0..steps).rev() {
        let r = t * bn..(t + 1) * bn;
        let (is, fs, gs, os, tc) =
            (&lb.i[r.clone()], &lb.f[r.clone()], &lb.g[r.clone()], &lb.o[r.clone()], &lb.tanh_c[r.clone()]);
        let c_prev = &lb.c[t * bn..(t + 1) * bn];
        let a = &mut lb.a[t * batch * g..(t + 1) * batch * g];
        gates_backward(a, c_prev, &d_above[r], dh_next, dc_next, is, fs, gs, os, tc, n);
        gemm_packed(batch, g, n, a, w_hh, 0.0, dh_next);
    }
}

/// The GRU's backward steps (module doc): dGi into `lb.a`, dGh into `lb.gh`.
fn gru_backward(lb: &mut LayerBuffers, w_hh: &PackedB, d_above: &[f32], dh_next: &mut [f32], d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in (0..steps).rev() {
        let r = t * bn..(t + 1) * bn;
        let (rs, zs, ns) = (&lb.i[r.clone()], &lb.f[r.clone()], &lb.g[r.clone()]);
        let h_prev = &lb.h[t * bn..(t + 1) * bn];
        let dh_above = &d_above[r];
        let a = &mut lb.a[t * batch * g..(t + 1) * batch * g];
        let gh = &mut lb.gh[t * batch * g..(t + 1) * batch * g];
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
        gemm_packed(batch, g, n, gh, w_hh, 1.0, dh_next);
    }
}

/// The tanh-RNN's backward steps: dA = dh ⊙ (1 − h²) into `lb.a`.
fn rnn_backward(lb: &mut LayerBuffers, w_hh: &PackedB, d_above: &[f32], dh_next: &mut [f32], d: Dims) {
    let Dims { batch, steps, n, g } = d;
    let bn = batch * n;
    for t in (0..steps).rev() {
        let r = t * bn..(t + 1) * bn;
        let h = &lb.h[(t + 1) * bn..(t + 2) * bn];
        let a = &mut lb.a[t * batch * g..(t + 1) * batch * g];
        for (((da, &hv), &above), &next) in a.iter_mut().zip(h).zip(&d_above[r]).zip(dh_next.iter()) {
            *da = (above + next) * (1.0 - hv * hv);
        }
        gemm_packed(batch, g, n, a, w_hh, 0.0, dh_next);
    }
}
