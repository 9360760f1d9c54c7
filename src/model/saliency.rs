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

use crate::parallel::{Both, Meet, Pair};

use super::kernel;
use super::lstm::{Arch, Kind, LayerTrace, Model, Trace};

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
    saliencies(model, trace, &[position], max_back, 1).pop().flatten()
}

/// [`saliency`] of every entry of `positions`, in order, on up to `threads`
/// threads: the same numbers, to the bit, as one call per position. They go back
/// together, step by step (distance d = 0, 1, … from each position), so that every
/// weight matrix is read once per step for all of them: a step back reads 12 MiB of
/// weights at 2 × 512, whether for one gradient or sixteen. Several positions are
/// shared out between the threads; a single one has each of its products cut by
/// columns between two (a [`Pair`], see `mat_t_vecs`).
pub fn saliencies(
    model: &Model,
    trace: &Trace,
    positions: &[usize],
    max_back: usize,
    threads: usize,
) -> Vec<Option<Saliency>> {
    let mut walks: Vec<Option<Walk>> = positions.iter().map(|&p| Walk::start(model, trace, p, max_back)).collect();
    let mut started: Vec<&mut Walk> = walks.iter_mut().flatten().collect();
    if started.len() == 1 && threads > 1 {
        // One gradient: the two threads share each product instead.
        Pair::with(|pair| backward(model, trace, &mut started, Some(pair)));
    } else {
        // The threads share out the walks: a walk's numbers do not depend on which
        // others it goes with, so any split gives the same bits.
        crate::parallel::in_parts(&mut started, threads, |part| backward(model, trace, part, None));
    }
    walks
        .into_iter()
        .map(|w| {
            w.map(|w| Saliency {
                position: w.position,
                target: Some(w.target),
                logp: w.logp,
                first: w.first,
                grad_norm: w.grad_norm,
            })
        })
        .collect()
}

/// One gradient on its way back: what it carries from step t + 1 to step t.
struct Walk {
    position: usize,
    target: char,
    logp: f32,
    first: usize,
    /// dh of the top layer at `position`: W_decᵀ (onehot(y) − softmax).
    d_top: Vec<f32>,
    /// Per layer: dh and (LSTM) dc from step t + 1.
    dh_rec: Vec<Vec<f32>>,
    dc_rec: Vec<Vec<f32>>,
    /// This layer-step's dh (from above plus from t + 1).
    dh: Vec<f32>,
    /// This layer-step's pre-activation gradients: `da` on the input side (the
    /// LSTM's dA, the GRU's dGi), `dgh` on the hidden side (GRU only; the LSTM and
    /// the RNN use `da` for both).
    da: Vec<f32>,
    dgh: Vec<f32>,
    /// W_ihᵀ da: the dh the layer below receives at t, and layer 0's input gradient.
    dx_below: Vec<f32>,
    dx0: Vec<f32>,
    /// ‖dx0‖ at `first..=position`.
    grad_norm: Vec<f32>,
}

impl Walk {
    fn start(model: &Model, trace: &Trace, position: usize, max_back: usize) -> Option<Walk> {
        let target = *trace.chars.get(position + 1)?;
        let y = trace.ids[position + 1]? as usize;
        let (n, layers, g) = (model.hidden_size(), model.layers(), model.arch().gates() * model.hidden_size());
        let w = model.weights();
        let first = position.saturating_sub(max_back);
        // ∂ℓ/∂logits = onehot(y) − p; dh for the top layer at `position`.
        let probs = trace.probs.row(position);
        let mut d_top = vec![0f32; n];
        for (v, &p) in probs.iter().enumerate() {
            let grad = if v == y { 1.0 - p } else { -p };
            if grad != 0.0 {
                axpy(grad, w.decoder_weight.row(v).as_slice().expect("standard layout"), &mut d_top);
            }
        }
        Some(Walk {
            position,
            target,
            logp: probs[y].ln(),
            first,
            d_top,
            dh_rec: vec![vec![0f32; n]; layers],
            dc_rec: vec![vec![0f32; n]; layers],
            dh: vec![0f32; n],
            da: vec![0f32; g],
            dgh: if model.arch() == Arch::Gru { vec![0f32; g] } else { Vec::new() },
            dx_below: vec![0f32; n],
            dx0: vec![0f32; w.layers[0].weight_ih.ncols()],
            grad_norm: vec![0f32; position - first + 1],
        })
    }

    /// Steps this walk goes back past `position`.
    fn span(&self) -> usize {
        self.position - self.first
    }

    /// dh of layer k at step t = from above (the layer above's W_ihᵀ da, or the
    /// decoder at `position`) + from step t + 1.
    fn gather_dh(&mut self, k: usize, layers: usize, t: usize) {
        for j in 0..self.dh.len() {
            let above = if k + 1 < layers {
                self.dx_below[j]
            } else if t == self.position {
                self.d_top[j]
            } else {
                0.0
            };
            self.dh[j] = above + self.dh_rec[k][j];
        }
    }
}

/// Takes `walks` back, together, from their positions to their first steps.
fn backward(model: &Model, trace: &Trace, walks: &mut [&mut Walk], pair: Option<&Pair>) {
    let layers = model.layers();
    let arch = model.arch();
    let w = model.weights();
    let n = model.hidden_size();
    let zeros = vec![0f32; n];
    let mut gh_n = vec![0f32; n];
    let longest = walks.iter().map(|w| w.span()).max().unwrap_or(0);
    for d in 0..=longest {
        let mut active: Vec<&mut Walk> = walks.iter_mut().filter(|w| w.span() >= d).map(|w| &mut **w).collect();
        for k in (0..layers).rev() {
            let lt = &trace.layers[k];
            let lw = &w.layers[k];
            for walk in active.iter_mut() {
                let t = walk.position - d;
                walk.gather_dh(k, layers, t);
                match arch {
                    Arch::Lstm => lstm_gates(lt, t, walk, k),
                    Arch::Gru => {
                        let h_prev =
                            if t == 0 { &zeros[..] } else { lt.h().row(t - 1).to_slice().expect("standard layout") };
                        let w_hn = &lw.weight_hh.as_slice().expect("standard layout")[2 * n * n..];
                        super::step::matvec(w_hn, h_prev, &mut gh_n);
                        gru_gates(lt, t, h_prev, &gh_n, lw.bias_hh.as_slice().expect("standard layout"), walk);
                    }
                    Arch::Rnn => {
                        let h = lt.h().row(t);
                        for j in 0..n {
                            walk.da[j] = walk.dh[j] * (1.0 - h[j] * h[j]);
                        }
                    }
                }
            }
            // dh_{t−1} = W_hhᵀ (hidden-side gradient), for every walk at once.
            let (v, mut y): (Vec<&[f32]>, Vec<&mut [f32]>) = active
                .iter_mut()
                .map(|walk| {
                    let Walk { da, dgh, dh_rec, .. } = &mut **walk;
                    let hidden_side = if arch == Arch::Gru { &dgh[..] } else { &da[..] };
                    (hidden_side, &mut dh_rec[k][..])
                })
                .unzip();
            mat_t_vecs(lw.weight_hh.as_slice().expect("standard layout"), &v, &mut y, pair);
            if arch == Arch::Gru {
                for walk in active.iter_mut() {
                    let z = lt.get(Kind::Update).row(walk.position - d);
                    for j in 0..n {
                        walk.dh_rec[k][j] += walk.dh[j] * z[j];
                    }
                }
            }
            // dx_t = W_ihᵀ (input-side gradient): the layer below's dh, or the input's.
            let (v, mut y): (Vec<&[f32]>, Vec<&mut [f32]>) = active
                .iter_mut()
                .map(|walk| {
                    let Walk { da, dx_below, dx0, .. } = &mut **walk;
                    (&da[..], if k > 0 { &mut dx_below[..] } else { &mut dx0[..] })
                })
                .unzip();
            mat_t_vecs(lw.weight_ih.as_slice().expect("standard layout"), &v, &mut y, pair);
            if k == 0 {
                for walk in active.iter_mut() {
                    let t = walk.position - d;
                    walk.grad_norm[t - walk.first] = walk.dx0.iter().map(|v| v * v).sum::<f32>().sqrt();
                }
            }
        }
    }
}

/// The LSTM's gate gradients at step t of layer k (the module doc's dc and dA),
/// and the dc it carries to step t − 1.
fn lstm_gates(lt: &LayerTrace, t: usize, walk: &mut Walk, k: usize) {
    let n = walk.dh.len();
    let row = |kind| lt.get(kind).row(t);
    let (i, f, g, o) = (row(Kind::Input), row(Kind::Forget), row(Kind::Candidate), row(Kind::Output));
    let cs = lt.get(Kind::Cell);
    let c = cs.row(t);
    let (dh, da, dc_rec) = (&walk.dh, &mut walk.da, &mut walk.dc_rec[k]);
    for j in 0..n {
        let tc = c[j].tanh();
        let dc = dc_rec[j] + dh[j] * o[j] * (1.0 - tc * tc);
        let c_prev = if t == 0 { 0.0 } else { cs[[t - 1, j]] };
        da[j] = dc * g[j] * i[j] * (1.0 - i[j]);
        da[n + j] = dc * c_prev * f[j] * (1.0 - f[j]);
        da[2 * n + j] = dc * i[j] * (1.0 - g[j] * g[j]);
        da[3 * n + j] = dh[j] * tc * o[j] * (1.0 - o[j]);
        dc_rec[j] = dc * f[j];
    }
}

/// The GRU's gate gradients at step t (the module doc's dGi and dGh), given
/// h_{t−1} and W_hn h_{t−1}.
fn gru_gates(lt: &LayerTrace, t: usize, h_prev: &[f32], gh_n: &[f32], bias_hh: &[f32], walk: &mut Walk) {
    let n = walk.dh.len();
    let (r, z, cand) = (lt.get(Kind::Reset).row(t), lt.get(Kind::Update).row(t), lt.get(Kind::New).row(t));
    let (dh, dgi, dgh) = (&walk.dh, &mut walk.da, &mut walk.dgh);
    for j in 0..n {
        let gh = gh_n[j] + bias_hh[2 * n + j];
        let da_n = dh[j] * (1.0 - z[j]) * (1.0 - cand[j] * cand[j]);
        let da_r = da_n * gh * r[j] * (1.0 - r[j]);
        let da_z = dh[j] * (h_prev[j] - cand[j]) * z[j] * (1.0 - z[j]);
        (dgi[j], dgi[n + j], dgi[2 * n + j]) = (da_r, da_z, da_n);
        (dgh[j], dgh[n + j], dgh[2 * n + j]) = (da_r, da_z, da_n * r[j]);
    }
}

/// y += a·x
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Columns `c0..c0 + y[b].len()` of a row-major W whose rows are `stride` long:
/// what each thread computes of a product it shares (see [`mat_t_vecs`]).
#[derive(Clone, Copy)]
struct Window<'a> {
    w: &'a [f32],
    stride: usize,
    c0: usize,
}

/// `y[b] = Wᵀ v[b]` for every b, W row-major with `v[b].len()` rows of
/// `y[b].len()` columns: each y the sum of W's rows scaled by its v. Every element
/// is one chain of multiply-adds (fused where the CPU has FMA) over the rows in
/// order, from 0, so a vector's result does not depend on which others come with
/// it, nor on which thread computes its column. With a `pair` (one vector), the
/// helper thread computes the right half of the columns: a gradient's products
/// are bound by how fast W streams, and each core then reads half of every row.
fn mat_t_vecs(w: &[f32], v: &[&[f32]], y: &mut [&mut [f32]], pair: Option<&Pair>) {
    let Some(cols) = y.first().map(|y| y.len()) else { return };
    assert!(v.len() == y.len() && v.iter().zip(y.iter()).all(|(v, y)| w.len() == v.len() * y.len()));
    let whole = Window { w, stride: cols, c0: 0 };
    match pair {
        Some(pair) if v.len() == 1 && cols >= MIN_SHARED_COLS => {
            let half = cols / 2;
            let (left, right) = y[0].split_at_mut(half);
            // SAFETY: each side writes only its own half.
            let halves = unsafe { Both::new([(0, left.as_mut_ptr(), half), (half, right.as_mut_ptr(), cols - half)]) };
            let halves = &halves;
            pair.both(&|meet: &Meet| {
                let (c0, start, len) = halves.get()[meet.side()];
                // SAFETY: one half of `y[0]`, borrowed for this call, written by this side only.
                let y = unsafe { std::slice::from_raw_parts_mut(start, len) };
                window_t_vecs(Window { c0, ..whole }, v, &mut [y]);
            });
        }
        _ => window_t_vecs(whole, v, y),
    }
}

/// [`mat_t_vecs`] over one window of W's columns, on this thread.
fn window_t_vecs(win: Window, v: &[&[f32]], y: &mut [&mut [f32]]) {
    let rows = v.first().map_or(0, |v| v.len());
    let width = y.first().map_or(0, |y| y.len());
    assert!(win.w.len() == rows * win.stride && win.c0 + width <= win.stride);
    assert!(v.iter().all(|v| v.len() == rows) && y.iter().all(|y| y.len() == width));
    #[cfg(target_arch = "x86_64")]
    if kernel::simd() != kernel::Simd::Portable {
        // SAFETY: `simd()` reports AVX2 or AVX-512 only where the CPU has AVX2 and
        // FMA; the shapes are checked above.
        return unsafe { x86::window_t_vecs(win, v, y) };
    }
    portable(win, v, y);
}

/// [`window_t_vecs`] without SIMD or FMA, for any CPU (a multiply, then an add).
fn portable(win: Window, v: &[&[f32]], y: &mut [&mut [f32]]) {
    for (vb, yb) in v.iter().zip(y.iter_mut()) {
        yb.fill(0.0);
        let width = yb.len();
        for (&a, wr) in vb.iter().zip(win.w.chunks_exact(win.stride)) {
            for (yc, &x) in yb.iter_mut().zip(&wr[win.c0..win.c0 + width]) {
                *yc += a * x;
            }
        }
    }
}

/// Narrower products are not worth a meeting of two threads.
const MIN_SHARED_COLS: usize = 128;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Window;
    use std::arch::x86_64::*;

    /// Rows per group.
    const ROWS: usize = 8;

    /// `window_t_vecs` with AVX2 and FMA. W's rows go [`ROWS`] at a time (16 KiB at
    /// H = 512: read from memory once, then from L1 for every other vector); for
    /// each vector, 8 columns at a time, y loaded, one fused multiply-add per row in
    /// order, y stored. The columns past the last 8 go one at a time with scalar
    /// FMAs. Each element is y = fma(v_r, W[r][c], y) for r in order from y = 0, so
    /// one vector and many, and any cut of the columns, give the same bits.
    ///
    /// (A GEMM-style kernel, strips of W copied into L1 and four vectors' 4 × 16
    /// accumulators held in registers, was no faster for 16 vectors at 2 × 512 on
    /// a Zen 3, and neither was `matrixmultiply::sgemm`: 3–4 ms for the three
    /// products of a step back. One vector is bound by reading W, 0.3–0.5 ms.)
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; every v holds W's rows, and every y fits
    /// in W's rows from column `c0`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn window_t_vecs(win: Window, v: &[&[f32]], y: &mut [&mut [f32]]) {
        let Some(width) = y.first().map(|y| y.len()) else { return };
        let rows = v[0].len();
        let (whole, wide) = (rows - rows % ROWS, width - width % 8);
        let stride = win.stride;
        for yb in y.iter_mut() {
            yb.fill(0.0);
        }
        // SAFETY: every pointer stays inside W (rows × stride), a v (rows) or a y (width).
        unsafe {
            for r0 in (0..whole).step_by(ROWS) {
                let block = win.w.as_ptr().add(r0 * stride + win.c0);
                for (vb, yb) in v.iter().zip(y.iter_mut()) {
                    let a: [__m256; ROWS] = std::array::from_fn(|q| _mm256_set1_ps(vb[r0 + q]));
                    let yp = yb.as_mut_ptr();
                    for c in (0..wide).step_by(8) {
                        let mut acc = _mm256_loadu_ps(yp.add(c));
                        for (q, &a) in a.iter().enumerate() {
                            acc = _mm256_fmadd_ps(a, _mm256_loadu_ps(block.add(q * stride + c)), acc);
                        }
                        _mm256_storeu_ps(yp.add(c), acc);
                    }
                    for c in wide..width {
                        let mut acc = *yp.add(c);
                        for q in 0..ROWS {
                            acc = vb[r0 + q].mul_add(*block.add(q * stride + c), acc);
                        }
                        *yp.add(c) = acc;
                    }
                }
            }
        }
        for r in whole..rows {
            let wr = &win.w[r * stride + win.c0..r * stride + win.c0 + width];
            for (vb, yb) in v.iter().zip(y.iter_mut()) {
                for (yc, &x) in yb.iter_mut().zip(wr) {
                    *yc = vb[r].mul_add(x, *yc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each element as one chain over the rows in order, fused or not.
    fn reference(w: &[f32], v: &[f32], cols: usize, fused: bool) -> Vec<f32> {
        let mut y = vec![0f32; cols];
        for (r, &a) in v.iter().enumerate() {
            for (c, yc) in y.iter_mut().enumerate() {
                let x = w[r * cols + c];
                *yc = if fused { a.mul_add(x, *yc) } else { a * x + *yc };
            }
        }
        y
    }

    #[test]
    fn every_kernel_sums_each_element_in_row_order_whatever_vectors_come_with_it() {
        let mut rng = crate::rng::Rng::new(11);
        type Kernel = unsafe fn(Window, &[&[f32]], &mut [&mut [f32]]);
        let mut kernels: Vec<(Kernel, bool)> = vec![(portable as Kernel, false)];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            kernels.push((x86::window_t_vecs as Kernel, true));
        }
        for (rows, cols) in [(1, 1), (7, 5), (8, 8), (13, 97), (40, 16), (64, 23)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.range(-1.0, 1.0)).collect();
            let vs: Vec<Vec<f32>> = (0..6).map(|_| (0..rows).map(|_| rng.range(-3.0, 3.0)).collect()).collect();
            for &(kernel, fused) in &kernels {
                for count in [1, 2, 5, 6] {
                    let v: Vec<&[f32]> = vs[..count].iter().map(|v| &v[..]).collect();
                    let mut out = vec![vec![f32::NAN; cols]; count];
                    let mut y: Vec<&mut [f32]> = out.iter_mut().map(|y| &mut y[..]).collect();
                    // SAFETY: the AVX2 kernel is only listed where the CPU has it; the shapes agree.
                    unsafe { kernel(Window { w: &w, stride: cols, c0: 0 }, &v, &mut y) };
                    for (b, got) in out.iter().enumerate() {
                        let want = reference(&w, &vs[b], cols, fused);
                        assert_eq!(got, &want, "{rows} × {cols}, vector {b} of {count}, fused {fused}");
                    }
                    // Any window of the columns gives those columns' bits.
                    for (c0, c1) in [(0, cols / 2), (cols / 2, cols), (cols / 3, cols - cols / 4)] {
                        let mut part = vec![vec![f32::NAN; c1 - c0]; count];
                        let mut y: Vec<&mut [f32]> = part.iter_mut().map(|y| &mut y[..]).collect();
                        // SAFETY: as above.
                        unsafe { kernel(Window { w: &w, stride: cols, c0 }, &v, &mut y) };
                        for (b, got) in part.iter().enumerate() {
                            assert_eq!(&got[..], &out[b][c0..c1], "{rows} × {cols}, columns {c0}..{c1}");
                        }
                    }
                }
            }
        }
    }
}
