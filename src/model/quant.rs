//! The page view's reduced-precision LSTM trace: recurrent weights as int8 with a
//! scale per row, the state h as int8, products summed exactly in i32.
//!
//! At the shipped 2 × 512 a step streams 4 MiB of f32 W_hh per layer, more than
//! L2 holds, so the exact trace waits on L3. Here every layer reads a quarter of
//! those bytes per step:
//! ```text
//! W     = [W_ih | W_hh]            (layers ≥ 1)   or   W_hh       (layer 0)    (4H × K)
//! s_r   = max_c |W[r, c]| / 127,   Wq[r, c] = round(W[r, c] / s_r)            (int8)
//! xq_c  = round(127 · x_c)         (|h| < 1, so one fixed scale fits every step)
//! in_r  = Σ_{c < H} Wq_ih[r, c] · q(h^{k-1}_t)_c      (layers ≥ 1; i32, exact)
//! rec_r = Σ_{c < H} Wq_hh[r, c] · q(h^k_{t-1})_c      (i32, exact)
//! pre_r = (table row | 0) + b_ih + b_hh + (s_r / 127) · (in_r + rec_r)
//! ```
//! and then the gates and cell update of `kernel::lstm_layer`, unchanged. Layer 0's
//! input projection stays the exact f32 table row. Rounding is all there is to the
//! error: |Δ Wq·s| ≤ s_r / 2 per weight and |Δ x| ≤ 1/254 per component; the
//! deviation this leaves on the shipped model's reference text is measured by
//! `tests/quant.rs` and shown in the README. `/api/trace`, the CLI and everything
//! else stay on the exact path; `/api/view` uses this one unless asked for `exact`.
//!
//! `in_r` depends only on the layer below, so it is not part of the recurrence: it
//! is computed for [`CHUNK_STEPS`] steps at a time ([`input_sums`]), each block of
//! W_ih read once from L3 and used for all of them from L1, and written as i32 into
//! the layer's own gate rows, which the recurrence reads back and overwrites with
//! the gates. So a step streams only W_hh (1 MiB at 2 × 512), and the sums need no
//! memory of their own. Integer sums are exact in any order, so splitting Σ this
//! way gives the same bits as one sum over [W_ih | W_hh].
//!
//! On two threads the layers run as a pipeline: the thread that runs layer k also
//! computes layer k + 1's input sums for the chunk, then hands it over; at 2 × 512
//! one thread streams W_hh of layer 0 and the other W_hh of layer 1, each 1 MiB.
//!
//! Layout ([`Packed`]): blocks of 8 hidden units; within a block, for each
//! group of 4 input columns and each gate q, 32 bytes — unit l's 4 weights at
//! bytes 4l..4l + 4:
//! ```text
//! packed[((b·G + g)·4 + q)·32 + 4l + j] = Wq[q·H + 8b + l, 4g + j]   (0 past H)
//! ```
//! so one 32-bit broadcast of x's 4 bytes meets all 8 units' weights, and AVX2's
//! `vpmaddubsw` + `vpmaddwd` sum them into 8 i32 lanes. `vpmaddubsw` takes one
//! unsigned operand: it gets |x| and the weights get x's sign (`vpsignb`), so a
//! pair's sum stays within 2 · 127 · 127 < 2^15 and never saturates.
//! Kernels: AVX2 (used on AVX-512 machines too: it is the one tested on real
//! hardware here) and portable Rust, chosen once at run time; both do the same
//! integer sums, so they differ only in the last bits of σ and tanh.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::kernel::{self, sigmoid, tanh, LayerOut, Simd};
use super::lstm::{LayerTrace, Model, State, Trace, GATES};
use super::vocab::Encoded;

/// How a trace computes its recurrent products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout: PyTorch's numbers within 1e-4 (the default everywhere).
    Exact,
    /// int8 weights and state, i32 sums (this module); LSTM only.
    Int8,
}

impl Precision {
    /// The name answers carry: `f32` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// Hidden units per block, whatever the kernel: AVX2's 8 i32 lanes.
const UNITS: usize = 8;
/// Input columns per group: the 4 bytes one i32 lane sums.
const COLS: usize = 4;
/// Bytes of one gate's weights for one block and column group.
const CHUNK: usize = UNITS * COLS;

/// 32 bytes on a 32-byte boundary, so the AVX2 kernel's loads are aligned.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Chunk([i8; CHUNK]);

/// One 4H × H part of a layer's matrix (W_ih or W_hh) as int8, packed as the
/// module doc says; the row scales live in [`QuantLayer`].
#[derive(Clone)]
struct Packed {
    /// Column groups G = ⌈H / 4⌉.
    groups: usize,
    /// blocks · G · 4 chunks.
    data: Vec<Chunk>,
}

impl Packed {
    /// Packs `w` (4H × H, row-major) with row r divided by `s[r]`.
    fn new(w: &[f32], hidden: usize, s: &[f32]) -> Self {
        let n = hidden;
        assert_eq!(w.len(), GATES * n * n, "every part must be 4H × H");
        let groups = n.div_ceil(COLS);
        let mut data = vec![Chunk([0; CHUNK]); n.div_ceil(UNITS) * groups * GATES];
        for (r, row) in w.chunks_exact(n).enumerate() {
            let (q, unit) = (r / n, r % n);
            let (b, l) = (unit / UNITS, unit % UNITS);
            for (c, &v) in row.iter().enumerate() {
                let (g, j) = (c / COLS, c % COLS);
                data[(b * groups + g) * GATES + q].0[l * COLS + j] = (v / s[r]).round().clamp(-127.0, 127.0) as i8;
            }
        }
        Self { groups, data }
    }

    fn as_ptr(&self) -> *const i8 {
        self.data.as_ptr().cast()
    }

    /// Block b's chunks, G · 4 of them.
    fn block(&self, b: usize) -> &[Chunk] {
        let per = self.groups * GATES;
        &self.data[b * per..(b + 1) * per]
    }
}

/// One layer's int8 weights: W_hh, and W_ih above layer 0, with one scale per row
/// of [W_ih | W_hh].
#[derive(Clone)]
pub struct QuantLayer {
    hidden: usize,
    /// W_ih (layers ≥ 1; `None` for layer 0, whose input is the f32 table row).
    input: Option<Packed>,
    recurrent: Packed,
    /// Per block and gate, the 8 units' s_r / 127: `scale[(b·4 + q)·8 + l]` (0 past H).
    scale: Vec<f32>,
}

impl std::fmt::Debug for QuantLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantLayer {{ hidden: {}, input: {} }}", self.hidden, self.input.is_some())
    }
}

impl QuantLayer {
    /// Quantises W_hh (4H × H, row-major) and, above layer 0, W_ih, with row r's
    /// scale taken over both: max |[W_ih | W_hh][r, ·]| / 127.
    pub fn new(w_ih: Option<&[f32]>, w_hh: &[f32], hidden: usize) -> Self {
        let n = hidden;
        let s: Vec<f32> = (0..GATES * n)
            .map(|r| {
                let row = |w: &[f32]| w[r * n..(r + 1) * n].iter().fold(0f32, |m, &v| m.max(v.abs()));
                let max = w_ih.map_or(0.0, row).max(row(w_hh));
                if max > 0.0 && max.is_finite() {
                    max / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        let mut scale = vec![0.0; n.div_ceil(UNITS) * GATES * UNITS];
        for (r, &s) in s.iter().enumerate() {
            let (q, unit) = (r / n, r % n);
            scale[((unit / UNITS) * GATES + q) * UNITS + unit % UNITS] = s / 127.0;
        }
        Self { hidden, input: w_ih.map(|w| Packed::new(w, n, &s)), recurrent: Packed::new(w_hh, n, &s), scale }
    }
}

/// round(127 · v) as int8; h lies in (−1, 1), the clamp only guards the edges.
#[inline(always)]
fn quantize(v: f32) -> i8 {
    (v * 127.0).round().clamp(-127.0, 127.0) as i8
}

/// `q` = [`quantize`] of every `v`, the rest of `q` left as it is.
#[inline(always)]
fn quantize_into(v: &[f32], q: &mut [i8]) {
    for (q, &v) in q.iter_mut().zip(v) {
        *q = quantize(v);
    }
}

/// [`quantize_into`] on the kernel `simd` picked (the same bytes on every one).
#[inline(always)]
fn quantize_with(v: &[f32], q: &mut [i8], simd: Simd) {
    match simd {
        // SAFETY: `quant_simd` picks AVX2 only where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { x86::quantize_into_avx2(v, q) },
        _ => quantize_into(v, q),
    }
}

/// Which int8 kernel this machine runs: AVX2 where `kernel::simd` picked a SIMD
/// kernel (AVX-512 machines have AVX2 too; checked), else portable.
fn quant_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel::simd() != Simd::Portable && is_x86_feature_detected!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Portable
}

/// Raw view of one layer over a run of steps, as `kernel::Raw` with the input
/// part's i32 sums in place of input projections above layer 0.
#[derive(Clone, Copy)]
struct QRaw {
    hidden: usize,
    steps: usize,
    /// Layer 0: `steps` pointers to 4H-float table rows; null above.
    x_rows: *const *const f32,
    /// Layers ≥ 1: the gate rows i, f, g, o hold the input sums `in_r` of gate 0,
    /// 1, 2, 3 as i32 ([`input_sums`]) until the step overwrites them.
    sums: bool,
    /// 4H floats, b_ih + b_hh.
    bias: *const f32,
    /// h and c before this run's first step.
    h0: *const f32,
    c0: *const f32,
    /// Each `steps` × H, written from this run's first step.
    h: *mut f32,
    c: *mut f32,
    i: *mut f32,
    f: *mut f32,
    g: *mut f32,
    o: *mut f32,
}

// SAFETY: a QRaw is handed to the one thread that runs its layer; the pipeline
// (`run_layers`) keeps the rows each thread writes apart from those it reads.
unsafe impl Send for QRaw {}

impl QRaw {
    /// h_{t-1} and c_{t-1}.
    ///
    /// # Safety
    /// `t < steps`, and rows before `t` have been written.
    #[inline(always)]
    unsafe fn prev(&self, t: usize) -> (*const f32, *const f32) {
        if t == 0 {
            (self.h0, self.c0)
        } else {
            // SAFETY: row t − 1 lies inside the outputs.
            unsafe { (self.h.add((t - 1) * self.hidden), self.c.add((t - 1) * self.hidden)) }
        }
    }

    /// Fills `xq` (4G bytes, zero past H) with q(h_{t-1}).
    ///
    /// # Safety
    /// As [`QRaw::prev`]; `xq` holds H bytes; `simd` as [`quantize_with`].
    #[inline(always)]
    unsafe fn load_x(&self, t: usize, xq: &mut [i8], simd: Simd) {
        // SAFETY: the caller's contract.
        let row = unsafe { std::slice::from_raw_parts(self.prev(t).0, self.hidden) };
        quantize_with(row, xq, simd);
    }

    /// Gate q's output rows: i, f, g, o.
    #[inline(always)]
    fn gate(&self, q: usize) -> *mut f32 {
        [self.i, self.f, self.g, self.o][q]
    }

    /// The input sum `in_r` of unit j, gate q at step t (0 for layer 0).
    ///
    /// # Safety
    /// As [`QRaw::prev`]; j < H; step t's gate rows not yet overwritten.
    #[inline(always)]
    unsafe fn input_sum(&self, t: usize, q: usize, j: usize) -> i32 {
        // SAFETY: the caller's contract; the slot holds an i32 written by `input_sums`.
        if self.sums {
            unsafe { *self.gate(q).add(t * self.hidden + j).cast::<i32>() }
        } else {
            0
        }
    }

    /// x_proj + bias of unit j, gate q at step t.
    ///
    /// # Safety
    /// As [`QRaw::prev`]; j < H.
    #[inline(always)]
    unsafe fn start(&self, t: usize, q: usize, j: usize) -> f32 {
        let at = q * self.hidden + j;
        // SAFETY: the caller's contract.
        unsafe {
            let b = *self.bias.add(at);
            if self.x_rows.is_null() {
                b
            } else {
                *(*self.x_rows.add(t)).add(at) + b
            }
        }
    }
}

/// The i32 sums of one block: for each gate q and unit l, Σ_c Wq[q·H + 8b + l, c] · xq_c.
#[inline(always)]
fn block_sums_portable(w: &[Chunk], xq: &[i8]) -> [[i32; UNITS]; GATES] {
    let mut acc = [[0i32; UNITS]; GATES];
    for (chunks, x) in w.chunks_exact(GATES).zip(xq.chunks_exact(COLS)) {
        for (a, chunk) in acc.iter_mut().zip(chunks) {
            for (l, unit) in a.iter_mut().zip(chunk.0.chunks_exact(COLS)) {
                *l += unit.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum::<i32>();
            }
        }
    }
    acc
}

/// The portable kernel: the shape of `kernel::layer_portable` with int8 sums.
///
/// # Safety
/// As [`run_layer`]'s `raw`.
unsafe fn layer_portable(w: &QuantLayer, raw: QRaw, xq: &mut [i8]) {
    let n = raw.hidden;
    for t in 0..raw.steps {
        // SAFETY: the caller's contract; all indices stay below H per row.
        unsafe {
            raw.load_x(t, xq, Simd::Portable);
            let (_, c_prev) = raw.prev(t);
            for b in 0..n.div_ceil(UNITS) {
                let sums = block_sums_portable(w.recurrent.block(b), xq);
                for l in 0..UNITS.min(n - b * UNITS) {
                    let j = b * UNITS + l;
                    let pre = |q: usize| {
                        let sum = sums[q][l] + raw.input_sum(t, q, j);
                        raw.start(t, q, j) + w.scale[(b * GATES + q) * UNITS + l] * sum as f32
                    };
                    let (i, f, g, o) = (sigmoid(pre(0)), sigmoid(pre(1)), tanh(pre(2)), sigmoid(pre(3)));
                    let c = f * *c_prev.add(j) + i * g;
                    let r = t * n + j;
                    *raw.i.add(r) = i;
                    *raw.f.add(r) = f;
                    *raw.g.add(r) = g;
                    *raw.o.add(r) = o;
                    *raw.c.add(r) = c;
                    *raw.h.add(r) = o * tanh(c);
                }
            }
        }
    }
}

/// Runs `raw.steps` steps of one layer with this machine's kernel (or `simd`).
///
/// # Safety
/// Every pointer in `raw` addresses what its field promises; `w` has `raw.hidden`
/// units, and input sums (`raw.sums`) exactly when it has an input part; the
/// outputs overlap no input but the previous row.
unsafe fn run_layer(w: &QuantLayer, raw: QRaw, simd: Simd) {
    debug_assert_eq!(w.hidden, raw.hidden);
    debug_assert_eq!(w.input.is_some(), raw.sums);
    // Whole 4-byte groups, so the AVX2 kernel can read x as i32 words.
    let mut words = vec![0i32; w.recurrent.groups];
    let xq = words_as_bytes(&mut words);
    // SAFETY: the caller's contract; the AVX2 kernel only where the CPU has AVX2.
    unsafe {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 | Simd::Avx512 => x86::layer_avx2(w, raw, xq),
            _ => layer_portable(w, raw, xq),
        }
    }
}

/// `words` as bytes, 4 per word (the x vectors the kernels read a word at a time).
fn words_as_bytes(words: &mut [i32]) -> &mut [i8] {
    // SAFETY: 4·len initialised bytes, i8 has no invalid values, and the borrow
    // of `words` is handed on.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<i8>(), words.len() * COLS) }
}

/// Layer k's input sums `in_r` (module doc) of the units in `blocks` (of 8) for
/// `steps` steps: row t of `below` (the layer below's h, `steps` × H) times W_ih,
/// written as i32 into the gate rows, gate q of step t at `gates[q] + t·H`.
///
/// # Safety
/// `below` holds `steps` × H floats and every `gates[q]` room for `steps` × H
/// i32s whose `blocks` overlap nothing else in use; `input` has `hidden` units
/// and `blocks` ends by ⌈H / 8⌉.
unsafe fn input_sums(
    input: &Packed,
    hidden: usize,
    below: *const f32,
    steps: usize,
    gates: [*mut i32; GATES],
    blocks: Range<usize>,
    simd: Simd,
) {
    let n = hidden;
    let g = input.groups;
    let mut words = vec![0i32; steps * g];
    let xq = words_as_bytes(&mut words);
    for t in 0..steps {
        // SAFETY: the caller's contract: row t of `below` holds H floats.
        let row = unsafe { std::slice::from_raw_parts(below.add(t * n), n) };
        quantize_with(row, &mut xq[t * g * COLS..], simd);
    }
    // SAFETY: the caller's contract; the AVX2 kernel only where the CPU has it.
    unsafe {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 | Simd::Avx512 => x86::input_sums_avx2(input, n, &words, steps, gates, blocks),
            _ => input_sums_portable(input, n, xq, steps, gates, blocks),
        }
    }
}

/// The portable [`input_sums`]: [`block_sums_portable`] for each step.
///
/// # Safety
/// As [`input_sums`]; `xq` holds `steps` rows of 4G bytes.
unsafe fn input_sums_portable(
    input: &Packed,
    n: usize,
    xq: &[i8],
    steps: usize,
    gates: [*mut i32; GATES],
    blocks: Range<usize>,
) {
    let row = input.groups * COLS;
    for t in 0..steps {
        for b in blocks.clone() {
            let sums = block_sums_portable(input.block(b), &xq[t * row..(t + 1) * row]);
            for (q, s) in sums.iter().enumerate() {
                for (l, &v) in s.iter().enumerate().take(n - b * UNITS) {
                    // SAFETY: the caller's contract; unit 8b + l < H.
                    unsafe { *gates[q].add(t * n + b * UNITS + l) = v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 kernel: per block of 8 units, eight i32 accumulators (4 gates ×
    //! even/odd column group), one `vpsignb` + `vpmaddubsw` + `vpmaddwd` + `vpaddd`
    //! per 32 weights; then the scale, the bias and the cell update in registers.

    use super::{Packed, QRaw, QuantLayer, CHUNK, GATES, UNITS};
    use crate::model::kernel::x86::{pack_bytes, round_unit, sigmoid8, tanh8};
    use std::arch::x86_64::*;

    /// [`super::quantize_into`], 32 values at a time: the same bytes.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_into_avx2(v: &[f32], q: &mut [i8]) {
        let len = v.len().min(q.len());
        let whole = len / 32 * 32;
        for (v, q) in v[..whole].chunks_exact(32).zip(q[..whole].chunks_exact_mut(32)) {
            let lanes: [__m256i; 4] = std::array::from_fn(|j| {
                // SAFETY: `v` holds 32 floats.
                let x = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * j)) };
                // NaN in, 0 out, as `as i8` makes of a NaN.
                round_unit(_mm256_and_ps(_mm256_cmp_ps::<_CMP_ORD_Q>(x, x), x))
            });
            // SAFETY: `q` holds 32 bytes.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), pack_bytes(lanes)) };
        }
        super::quantize_into(&v[whole..len], &mut q[whole..len]);
    }

    /// # Safety
    /// As [`super::run_layer`], on a CPU with AVX2 and FMA; `xq` is 4-byte aligned.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_avx2(w: &QuantLayer, raw: QRaw, xq: &mut [i8]) {
        let n = raw.hidden;
        let groups = w.recurrent.groups;
        let ones = _mm256_set1_epi16(1);
        for t in 0..raw.steps {
            // SAFETY: the caller's contract; masked loads and stores touch only the
            // valid units of the last block; chunks are 32-byte aligned.
            unsafe {
                raw.load_x(t, xq, super::Simd::Avx2);
                let x = xq.as_ptr().cast::<i32>();
                let (_, c_prev) = raw.prev(t);
                let row = t * n;
                for b in 0..n.div_ceil(UNITS) {
                    let j0 = b * UNITS;
                    let width = (UNITS.min(n - j0)) as i32;
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                    let mut p = w.recurrent.as_ptr().add(b * groups * GATES * CHUNK);
                    let mut even = [_mm256_setzero_si256(); GATES];
                    let mut odd = [_mm256_setzero_si256(); GATES];
                    let dot = |acc: &mut [__m256i; GATES], p: *const i8, g: usize| {
                        let xv = _mm256_set1_epi32(*x.add(g));
                        let xa = _mm256_abs_epi8(xv);
                        for q in 0..GATES {
                            let wv = _mm256_load_si256(p.add(q * CHUNK).cast());
                            let pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv, xv));
                            acc[q] = _mm256_add_epi32(acc[q], _mm256_madd_epi16(pairs, ones));
                        }
                    };
                    let mut g = 0;
                    while g + 2 <= groups {
                        dot(&mut even, p, g);
                        dot(&mut odd, p.add(GATES * CHUNK), g + 1);
                        p = p.add(2 * GATES * CHUNK);
                        g += 2;
                    }
                    if g < groups {
                        dot(&mut even, p, g);
                    }
                    let scale = w.scale.as_ptr().add(b * GATES * UNITS);
                    let pre = |q: usize| {
                        let at = q * n + j0;
                        let mut start = _mm256_maskload_ps(raw.bias.add(at), m);
                        if !raw.x_rows.is_null() {
                            start = _mm256_add_ps(_mm256_maskload_ps((*raw.x_rows.add(t)).add(at), m), start);
                        }
                        let mut sum = _mm256_add_epi32(even[q], odd[q]);
                        if raw.sums {
                            let slot = raw.gate(q).add(row + j0).cast::<i32>().cast_const();
                            sum = _mm256_add_epi32(sum, _mm256_maskload_epi32(slot, m));
                        }
                        let sum = _mm256_cvtepi32_ps(sum);
                        _mm256_fmadd_ps(_mm256_loadu_ps(scale.add(q * UNITS)), sum, start)
                    };
                    let (i, f, g, o) = (sigmoid8(pre(0)), sigmoid8(pre(1)), tanh8(pre(2)), sigmoid8(pre(3)));
                    let cp = _mm256_maskload_ps(c_prev.add(j0), m);
                    let cell = _mm256_fmadd_ps(f, cp, _mm256_mul_ps(i, g));
                    let hidden = _mm256_mul_ps(o, tanh8(cell));
                    let at = row + j0;
                    _mm256_maskstore_ps(raw.i.add(at), m, i);
                    _mm256_maskstore_ps(raw.f.add(at), m, f);
                    _mm256_maskstore_ps(raw.g.add(at), m, g);
                    _mm256_maskstore_ps(raw.o.add(at), m, o);
                    _mm256_maskstore_ps(raw.c.add(at), m, cell);
                    _mm256_maskstore_ps(raw.h.add(at), m, hidden);
                }
            }
        }
    }

    /// [`super::input_sums`] on AVX2: per block of 8 units (its W_ih chunks, 16
    /// KiB at H = 512, stay in L1), two steps at a time, each chunk loaded once
    /// for both: 8 i32 accumulators (4 gates × 2 steps).
    ///
    /// # Safety
    /// As [`super::input_sums`], on a CPU with AVX2; `words` holds `steps` rows
    /// of G words.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn input_sums_avx2(
        input: &Packed,
        n: usize,
        words: &[i32],
        steps: usize,
        gates: [*mut i32; GATES],
        blocks: std::ops::Range<usize>,
    ) {
        let groups = input.groups;
        let ones = _mm256_set1_epi16(1);
        for b in blocks {
            let j0 = b * UNITS;
            let width = (UNITS.min(n - j0)) as i32;
            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            // SAFETY: the caller's contract; chunks are 32-byte aligned; masked
            // stores touch only the valid units of the last block.
            unsafe {
                let block = input.as_ptr().add(b * groups * GATES * CHUNK);
                for t in (0..steps).step_by(2) {
                    // An odd last step pairs with itself; only its first result is kept.
                    let (x0, x1) =
                        (words.as_ptr().add(t * groups), words.as_ptr().add((t + 1).min(steps - 1) * groups));
                    let mut acc = [[_mm256_setzero_si256(); GATES]; 2];
                    for g in 0..groups {
                        let p = block.add(g * GATES * CHUNK);
                        let (xv0, xv1) = (_mm256_set1_epi32(*x0.add(g)), _mm256_set1_epi32(*x1.add(g)));
                        let (xa0, xa1) = (_mm256_abs_epi8(xv0), _mm256_abs_epi8(xv1));
                        for q in 0..GATES {
                            let wv = _mm256_load_si256(p.add(q * CHUNK).cast());
                            let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(xa0, _mm256_sign_epi8(wv, xv0)), ones);
                            let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(xa1, _mm256_sign_epi8(wv, xv1)), ones);
                            acc[0][q] = _mm256_add_epi32(acc[0][q], s0);
                            acc[1][q] = _mm256_add_epi32(acc[1][q], s1);
                        }
                    }
                    for (s, sums) in acc.iter().enumerate().take(steps - t) {
                        for (q, &v) in sums.iter().enumerate() {
                            _mm256_maskstore_epi32(gates[q].add((t + s) * n + j0), m, v);
                        }
                    }
                }
            }
        }
    }
}

/// Steps a pipeline stage runs before telling the layer above.
const CHUNK_STEPS: usize = 16;

/// One layer's outputs as raw pointers, shared by the pipeline's threads.
#[derive(Clone, Copy)]
struct OutPtrs([*mut f32; 8]);
// SAFETY: see `run_layers`: each layer's rows are written by one thread and read
// by the layer above only after that thread published them.
unsafe impl Send for OutPtrs {}
unsafe impl Sync for OutPtrs {}

impl Model {
    /// The int8 weights of every layer, built on first use (a few milliseconds at
    /// 2 × 512) and kept until the weights change. `None` for a GRU or RNN.
    fn quant_layers(&self) -> Option<&[QuantLayer]> {
        if !self.arch().has_cell() {
            return None;
        }
        let layers = self.quant.get_or_init(|| {
            let n = self.hidden_size();
            fn slice(a: &ndarray::Array2<f32>) -> &[f32] {
                a.as_slice().expect("weights are kept in standard layout")
            }
            self.weights()
                .layers
                .iter()
                .enumerate()
                .map(|(k, l)| QuantLayer::new((k > 0).then(|| slice(&l.weight_ih)), slice(&l.weight_hh), n))
                .collect()
        });
        Some(layers)
    }

    /// Builds the int8 weights now rather than in the first int8 trace (see
    /// `quant_layers`): a server does it at start, so that its first page view
    /// does not wait for them. Nothing for a GRU or RNN.
    pub fn prepare_int8(&self) {
        self.quant_layers();
    }

    /// Whether [`Precision::Int8`] is available (an LSTM).
    pub fn has_int8(&self) -> bool {
        self.arch().has_cell()
    }

    /// Traces `text` from the zero state at `precision`. [`Precision::Int8`] on a
    /// model without it (GRU, RNN) traces exactly; check [`Model::has_int8`].
    pub fn trace_at(&self, text: &str, precision: Precision) -> Trace {
        match precision {
            Precision::Exact => self.trace(text),
            Precision::Int8 => self.trace_int8(self.vocab.encode(text), &self.zero_state()),
        }
    }

    /// [`Model::trace_at`] on `threads` threads whatever the text's length (the
    /// result is the same on any number): for a caller that knows a core is free.
    pub fn trace_at_with_threads(&self, text: &str, precision: Precision, threads: usize) -> Trace {
        let (enc, state) = (self.vocab.encode(text), self.zero_state());
        match precision {
            Precision::Exact => self.trace_clamped_with_threads(enc, &state, &[], threads),
            Precision::Int8 => self.trace_int8_with_threads(enc, &state, threads),
        }
    }

    /// The int8 trace of `enc` from `state` (module doc), on as many threads as
    /// an exact trace of the same length would use.
    pub fn trace_int8(&self, enc: Encoded, state: &State) -> Trace {
        let threads = if enc.ids.len() >= super::lstm::PIPELINE_MIN_STEPS { super::lstm::trace_threads() } else { 1 };
        self.trace_int8_with_threads(enc, state, threads)
    }

    /// [`Model::trace_int8`] on `threads` threads (layers pipelined in runs of
    /// [`CHUNK_STEPS`] steps, as the exact trace's); the result is the same on any
    /// number. A GRU or RNN is traced exactly.
    pub fn trace_int8_with_threads(&self, enc: Encoded, state: &State, threads: usize) -> Trace {
        let Some(quant) = self.quant_layers() else {
            return self.trace_clamped_with_threads(enc, state, &[], threads);
        };
        assert_eq!(state.h.len(), self.layers(), "state has the wrong number of layers");
        let (t_len, n) = (enc.ids.len(), self.hidden_size());
        let outs = self.run_layers(quant, &enc, state, threads, quant_simd());
        let layers =
            outs.into_iter().zip(&state.c).map(|(out, c0)| LayerTrace::from_kernel(out, t_len, n, c0)).collect();
        self.finish_trace(enc, layers, state)
    }

    /// Every layer over the text: stage s of `threads` runs a contiguous range of
    /// layers chunk by chunk. After its chunk of layer k a stage computes layer
    /// k + 1's input sums for the same steps (all of them when it runs layer k + 1
    /// too, else the first half of the blocks), then publishes (`done[k]`,
    /// release/acquire); the stage of layer k + 1 waits for that, computes the
    /// other half, and runs its chunk.
    fn run_layers(
        &self,
        quant: &[QuantLayer],
        enc: &Encoded,
        state: &State,
        threads: usize,
        simd: Simd,
    ) -> Vec<LayerOut> {
        let (t_len, n, layers) = (enc.ids.len(), self.hidden_size(), self.layers());
        let mut outs: Vec<LayerOut> = (0..layers).map(|_| LayerOut::with_capacity(t_len, n)).collect();
        let ptrs: Vec<OutPtrs> = outs
            .iter_mut()
            .map(|o| {
                OutPtrs(
                    [&mut o.h, &mut o.c, &mut o.i, &mut o.f, &mut o.g, &mut o.o, &mut o.write, &mut o.keep]
                        .map(|v| v.as_mut_ptr()),
                )
            })
            .collect();
        let done: Vec<AtomicUsize> = (0..layers).map(|_| AtomicUsize::new(0)).collect();
        let stages = threads.clamp(1, layers);
        let first_layer = |s: usize| s * layers / stages;
        // Where a layer's input sums are split between the stage below and its own.
        let (blocks, split) = (n.div_ceil(UNITS), n.div_ceil(UNITS) / 2);
        let stage = |s: usize| {
            let mut rows: Vec<*const f32> = Vec::with_capacity(CHUNK_STEPS);
            for start in (0..t_len).step_by(CHUNK_STEPS) {
                let end = (start + CHUNK_STEPS).min(t_len);
                // Layer 0's input projections: rows of the character table (the
                // zero row for an unknown character).
                rows.clear();
                rows.extend(enc.ids[start..end].iter().map(|&id| self.input_row(id).as_ptr()));
                let mine = first_layer(s)..first_layer(s + 1);
                let at = start * n;
                // Layer k's input sums of the blocks in `part`, as i32 in its gate
                // rows start..end.
                let sums_of = |k: usize, part: Range<usize>| {
                    if let Some(input) = quant.get(k).and_then(|q| q.input.as_ref()) {
                        let [_, _, i, f, g, o, ..] = ptrs[k].0;
                        // SAFETY: layer k − 1's rows start..end are written
                        // and published; layer k's gate rows there are read
                        // and written by no one else until `done[k − 1]`
                        // tells its stage, or are this stage's own.
                        unsafe {
                            let gates = [i, f, g, o].map(|p| p.add(at).cast::<i32>());
                            input_sums(input, n, ptrs[k - 1].0[0].add(at), end - start, gates, part, simd);
                        }
                    }
                };
                for k in mine.clone() {
                    if k > 0 {
                        while done[k - 1].load(Ordering::Acquire) < end {
                            std::thread::yield_now();
                        }
                        if k == mine.start {
                            // The stage below computed the first half of the blocks.
                            sums_of(k, split..blocks);
                        }
                    }
                    let [h, c, i, f, g, o, write, keep] = ptrs[k].0;
                    // SAFETY: every buffer has capacity T × H; this thread alone
                    // writes layer k's rows start..end, and reads the input sums
                    // written above or published by the stage below.
                    // Table rows are 4H long.
                    unsafe {
                        let (h0, c0) = if start == 0 {
                            (state.h[k].as_ptr(), state.c[k].as_ptr())
                        } else {
                            (h.add(at - n).cast_const(), c.add(at - n).cast_const())
                        };
                        let raw = QRaw {
                            hidden: n,
                            steps: end - start,
                            x_rows: if k == 0 { rows.as_ptr() } else { std::ptr::null() },
                            sums: k > 0,
                            bias: self.bias[k].as_ptr(),
                            h0,
                            c0,
                            h: h.add(at),
                            c: c.add(at),
                            i: i.add(at),
                            f: f.add(at),
                            g: g.add(at),
                            o: o.add(at),
                        };
                        run_layer(&quant[k], raw, simd);
                        // The memory terms of the chunk while its rows are in L1.
                        kernel::memory_terms(
                            n,
                            end - start,
                            [i, f, g, c].map(|p| p.add(at).cast_const()),
                            c0,
                            [write.add(at), keep.add(at)],
                        );
                    }
                    if k + 1 < mine.end {
                        sums_of(k + 1, 0..blocks);
                    } else if k + 1 < layers {
                        // Half for the stage above, so that neither waits on the other.
                        sums_of(k + 1, 0..split);
                    }
                    done[k].store(end, Ordering::Release);
                }
            }
        };
        if stages == 1 {
            stage(0);
        } else {
            std::thread::scope(|scope| {
                let stage = &stage;
                let workers: Vec<_> = (1..stages).map(|s| scope.spawn(move || stage(s))).collect();
                stage(0);
                for w in workers {
                    w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
            });
        }
        for out in &mut outs {
            for v in
                [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o, &mut out.write, &mut out.keep]
            {
                // SAFETY: every stage has written all T × H floats of its layers.
                unsafe { v.set_len(t_len * n) };
            }
        }
        outs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same int8 maths in the plainest form, on PyTorch's row-major matrices:
    /// the scales and rounding as the module doc writes them, sums in i64.
    fn reference(
        parts: &[&[f32]],
        n: usize,
        x_rows: Option<&[Vec<f32>]>,
        below: Option<&[f32]>,
        steps: usize,
        bias: &[f32],
        h0: &[f32],
        c0: &[f32],
    ) -> LayerOut {
        let widths: Vec<usize> = parts.iter().map(|p| p.len() / (4 * n)).collect();
        let row = |r: usize| -> Vec<f32> {
            parts.iter().zip(&widths).flat_map(|(p, &w)| p[r * w..(r + 1) * w].to_vec()).collect()
        };
        let (mut h, mut c) = (h0.to_vec(), c0.to_vec());
        let mut out = LayerOut::default();
        let q = |v: f32| (v * 127.0).round().clamp(-127.0, 127.0) as i64;
        for t in 0..steps {
            let mut x: Vec<f32> = below.map_or(vec![], |b| b[t * n..(t + 1) * n].to_vec());
            x.extend_from_slice(&h);
            let pre: Vec<f32> = (0..4 * n)
                .map(|r| {
                    let w = row(r);
                    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                    let sum: i64 =
                        w.iter().zip(&x).map(|(&w, &x)| (w / s).round().clamp(-127.0, 127.0) as i64 * q(x)).sum();
                    x_rows.map_or(0.0, |rows| rows[t][r]) + bias[r] + s / 127.0 * sum as f32
                })
                .collect();
            let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
            for j in 0..n {
                let (i, f, g, o) = (sig(pre[j]), sig(pre[n + j]), pre[2 * n + j].tanh(), sig(pre[3 * n + j]));
                c[j] = f * c[j] + i * g;
                h[j] = o * c[j].tanh();
                out.i.push(i);
                out.f.push(f);
                out.g.push(g);
                out.o.push(o);
            }
            out.c.extend_from_slice(&c);
            out.h.extend_from_slice(&h);
        }
        out
    }

    fn kernels() -> Vec<Simd> {
        let mut k = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            k.push(Simd::Avx2);
        }
        k
    }

    #[test]
    fn every_quantiser_gives_the_scalar_bytes_at_every_rounding_boundary() {
        let mut v = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.5, -2.0, 1.0, -1.0, 0.0, -0.0];
        for k in -128..=128 {
            // The floats nearest each half-way point k + ½ of 127·v.
            let half = (k as f32 + 0.5) / 127.0;
            for d in -3..=3 {
                v.push(f32::from_bits(half.to_bits().wrapping_add_signed(d)));
            }
        }
        let mut rng = crate::rng::Rng::new(5);
        v.extend((0..1000).map(|_| rng.range(-1.1, 1.1)));
        // Lengths that leave a tail past the last 32.
        for len in [v.len(), v.len() - 7, 31] {
            let mut expected = vec![0i8; len];
            quantize_into(&v[..len], &mut expected);
            for simd in kernels() {
                let mut got = vec![1i8; len];
                quantize_with(&v[..len], &mut got, simd);
                let wrong: Vec<_> =
                    (0..len).filter(|&j| got[j] != expected[j]).map(|j| (v[j], got[j], expected[j])).take(5).collect();
                assert!(wrong.is_empty(), "{simd:?} quantises differently (value, got, scalar): {wrong:?}");
            }
        }
    }

    /// Runs one layer over `steps` steps on `simd`, whatever this machine would pick.
    fn run(
        w: &QuantLayer,
        n: usize,
        x_rows: Option<&[Vec<f32>]>,
        below: Option<&[f32]>,
        steps: usize,
        bias: &[f32],
        h0: &[f32],
        c0: &[f32],
        simd: Simd,
    ) -> LayerOut {
        let mut out = LayerOut::with_capacity(steps, n);
        let rows: Vec<*const f32> = x_rows.map_or(vec![], |r| r.iter().map(|r| r.as_ptr()).collect());
        let [h, c, i, f, g, o] =
            [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o].map(|v| v.as_mut_ptr());
        let raw = QRaw {
            hidden: n,
            steps,
            x_rows: if x_rows.is_some() { rows.as_ptr() } else { std::ptr::null() },
            sums: below.is_some(),
            bias: bias.as_ptr(),
            h0: h0.as_ptr(),
            c0: c0.as_ptr(),
            h,
            c,
            i,
            f,
            g,
            o,
        };
        // SAFETY: buffers sized as `QRaw` requires; AVX2 only where the CPU has it.
        unsafe {
            if let (Some(input), Some(below)) = (&w.input, below) {
                // In two parts, as a pipeline's two stages compute them.
                let (gates, blocks) = ([i, f, g, o].map(|p| p.cast::<i32>()), n.div_ceil(UNITS));
                input_sums(input, n, below.as_ptr(), steps, gates, 0..blocks / 2, simd);
                input_sums(input, n, below.as_ptr(), steps, gates, blocks / 2..blocks, simd);
            }
            run_layer(w, raw, simd);
            for v in [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o] {
                v.set_len(steps * n);
            }
        }
        out
    }

    #[test]
    fn every_int8_kernel_equals_the_scalar_int8_maths() {
        let mut rng = crate::rng::Rng::new(11);
        // H below, at and between 8-unit blocks; K = H and 2H, odd column counts
        // that leave a partial 4-column group and an odd number of groups.
        for n in [1, 3, 8, 13, 16, 21, 40] {
            let scale = 2.0 / (n as f32).sqrt();
            let mut m = |len: usize, lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| rng.range(lo, hi)).collect() };
            let (w_hh, w_ih) = (m(4 * n * n, -scale, scale), m(4 * n * n, -scale, scale));
            let steps = 7;
            let x: Vec<Vec<f32>> = (0..steps).map(|_| m(4 * n, -2.0, 2.0)).collect();
            let below = m(steps * n, -1.0, 1.0);
            let (bias, h0, c0) = (m(4 * n, -1.0, 1.0), m(n, -1.0, 1.0), m(n, -3.0, 3.0));
            for above in [false, true] {
                let parts: Vec<&[f32]> = if above { vec![&w_ih, &w_hh] } else { vec![&w_hh] };
                let (xr, bl) = if above { (None, Some(&below[..])) } else { (Some(&x[..]), None) };
                let want = reference(&parts, n, xr, bl, steps, &bias, &h0, &c0);
                let w = QuantLayer::new(above.then_some(&w_ih[..]), &w_hh, n);
                for simd in kernels() {
                    let got = run(&w, n, xr, bl, steps, &bias, &h0, &c0, simd);
                    for (name, a, b) in [
                        ("h", &got.h, &want.h),
                        ("c", &got.c, &want.c),
                        ("i", &got.i, &want.i),
                        ("f", &got.f, &want.f),
                        ("g", &got.g, &want.g),
                        ("o", &got.o, &want.o),
                    ] {
                        let diff = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
                        assert!(
                            diff < 1e-5,
                            "{simd:?}, H = {n}, layer above 0: {above}: {name} differs from the int8 maths by {diff}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn int8_traces_are_the_same_on_one_and_two_threads_and_near_the_exact_trace() {
        let vocab = crate::model::Vocab::from_text("abcdefgh {}();\n").unwrap();
        let w = crate::model::Weights::random_scaled(vocab.len(), None, 21, 3, 4, 0.3);
        let m = Model::new("t".into(), vocab, w, Default::default()).unwrap();
        let text = "if (a) { b(); }\nhead(cafe);\n".repeat(5);
        let one = m.trace_int8_with_threads(m.vocab.encode(&text), &m.zero_state(), 1);
        let two = m.trace_int8_with_threads(m.vocab.encode(&text), &m.zero_state(), 2);
        let three = m.trace_int8_with_threads(m.vocab.encode(&text), &m.zero_state(), 3);
        let exact = m.trace(&text);
        for (k, l) in one.layers.iter().enumerate() {
            for (kind, a) in l.iter() {
                assert_eq!(a, two.layers[k].get(kind), "layer {k} {kind:?}: 1 vs 2 threads");
                assert_eq!(a, three.layers[k].get(kind), "layer {k} {kind:?}: 1 vs 3 threads");
                let diff = (a - exact.layers[k].get(kind)).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(diff < 0.05, "layer {k} {kind:?}: int8 is {diff} from exact");
            }
        }
        assert_eq!(one.final_state, two.final_state);
        // An empty text, and a GRU (no int8 path: traced exactly).
        assert!(m.trace_at("", Precision::Int8).is_empty());
    }
}
