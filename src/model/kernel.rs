//! The hot loops: the LSTM recurrence over a whole text, fast `exp`, softmax, and a
//! GEMM wrapper over `matrixmultiply`.
//!
//! The recurrence cannot be batched over time: per character and layer it does
//! `gates = x_proj + W_hh h_{t-1}` (a 4H × H matrix-vector product) and 5H
//! non-linearities. At batch 1 the product reads every weight once and uses it for
//! one multiply-add, so it is bound by how fast W_hh streams from cache, not by
//! arithmetic: 1 MiB per layer at H = 256, which fits a 2 MiB L2 (≈ 130 GB/s on the
//! Xeon this was tuned on), 4 MiB at H = 512, which mostly comes from L3 (≈ 40
//! GB/s). What makes it fast:
//! * [`PackedHh`] stores W_hhᵀ in blocks of `L` hidden units (`L` = one SIMD
//!   register: 16 floats for AVX-512, 8 for AVX2 and the portable path), laid out
//!   in exactly the order the kernel reads it, so W streams contiguously while
//!   each component c of h_{t-1} is broadcast:
//!   ```text
//!   packed[((b·H + c)·4 + q)·L + l] = W_hh[q·H + b·L + l, c]    (0 past unit H)
//!   ```
//!   One block's loop over c leaves the i, f, g, o pre-activations of its L units
//!   in eight registers (two partial sums per gate, so the FMAs of consecutive
//!   columns do not wait on each other), and the cell update for those units runs
//!   straight from registers: no horizontal sums, no scratch vector.
//! * the kernels are written with `std::arch` intrinsics for AVX-512 and AVX2 + FMA
//!   (picked once at run time by [`simd`]), with a portable fallback. Plain Rust
//!   would not fuse `a * b + c` into an FMA, and LLVM spilled the accumulators of
//!   the auto-vectorised version to the stack.
//! * `exp` is a branch-free polynomial (relative error < 2e-7) evaluated in the
//!   same registers, so σ and tanh never call libm.
//! * steps alternate the direction in which they visit the blocks, so that a W_hh
//!   too big for L2 (H = 512) still finds part of itself there (`block_order`).
//! * the six recorded T × H outputs are written once, straight into their final
//!   vectors, never zero-filled first; those vectors are recycled from earlier
//!   traces where possible (`model::buffers`), so their pages are already mapped.
//!
//! One call runs one layer on one thread. A trace of a long text runs its layers
//! as a pipeline on two threads, layer 1 a block behind layer 0, by calling this
//! kernel block by block (see `model::lstm` and `CELLSCOPE_TRACE_THREADS`): the
//! two W_hh then stream from L3 into two cores at once.

use std::ops::Range;

/// `exp(x)` for f32 without branches: 2^k · p(r) with x = k·ln2 + r, |r| ≤ ln2/2,
/// p the degree-6 Taylor polynomial (relative error ≈ 1.2e-7 on the reduced range).
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (C3 + r * (C4 + r * (C5 + r * C6)))));
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    p * scale
}

/// ln 2 split in two (Cody–Waite) so that x − k·ln2 is exact for |k| ≤ 128.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor coefficients 1/3! … 1/6! of the `exp` polynomial.
const C3: f32 = 1.0 / 6.0;
const C4: f32 = 1.0 / 24.0;
const C5: f32 = 1.0 / 120.0;
const C6: f32 = 1.0 / 720.0;

/// σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// tanh(x) = 2σ(2x) − 1 (absolute error < 3e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 / (1.0 + exp_fast(-2.0 * x)) - 1.0
}

/// The widest instruction set this CPU offers, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

/// Which kernels this machine uses: the widest it supports, or a narrower one named
/// in `CELLSCOPE_SIMD` (`avx2` or `portable`; `CELLSCOPE_PORTABLE=1` also works), to
/// compare kernels or rule out a SIMD bug.
pub fn simd() -> Simd {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let wanted = match std::env::var("CELLSCOPE_SIMD").as_deref() {
            _ if std::env::var_os("CELLSCOPE_PORTABLE").is_some() => Simd::Portable,
            Ok("portable") => Simd::Portable,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if wanted == Simd::Avx512 && is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if wanted != Simd::Portable && avx2 {
                return Simd::Avx2;
            }
        }
        let _ = wanted;
        Simd::Portable
    })
}

/// One 64-byte cache line of floats; makes [`PackedHh`] start on a line boundary so
/// that no 16-float load straddles two lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// W_hh (4H × H, PyTorch's row-major layout) repacked for [`lstm_layer`]; see the
/// module doc for the layout. Build it once per model ([`Model::refresh`] does).
///
/// [`Model::refresh`]: crate::model::Model::refresh
#[derive(Clone)]
pub struct PackedHh {
    hidden: usize,
    /// Hidden units per block: the SIMD width of the kernel it was packed for.
    lanes: usize,
    data: Vec<Line>,
}

impl std::fmt::Debug for PackedHh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedHh {{ hidden: {}, lanes: {} }}", self.hidden, self.lanes)
    }
}

impl PackedHh {
    /// Packs `weight_hh` (4H × H, row-major) for this machine's kernel.
    pub fn new(weight_hh: &[f32], hidden: usize) -> Self {
        let lanes = if simd() == Simd::Avx512 { 16 } else { 8 };
        Self::with_lanes(weight_hh, hidden, lanes)
    }

    fn with_lanes(weight_hh: &[f32], hidden: usize, lanes: usize) -> Self {
        let n = hidden;
        assert_eq!(weight_hh.len(), 4 * n * n, "weight_hh must be 4H × H");
        let blocks = n.div_ceil(lanes);
        let len = blocks * n * 4 * lanes;
        let mut data = vec![Line([0.0; 16]); len.div_ceil(16)];
        // SAFETY: `Line` is 16 plain f32s with no padding, so `data` is
        // 16·data.len() ≥ len contiguous, initialised floats.
        let flat = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<f32>(), len) };
        for b in 0..blocks {
            for c in 0..n {
                for q in 0..4 {
                    for l in 0..lanes {
                        let unit = b * lanes + l;
                        if unit < n {
                            flat[((b * n + c) * 4 + q) * lanes + l] = weight_hh[(q * n + unit) * n + c];
                        }
                    }
                }
            }
        }
        Self { hidden, lanes, data }
    }

    fn as_ptr(&self) -> *const f32 {
        self.data.as_ptr().cast()
    }

    /// Unit blocks: ⌈H / lanes⌉.
    pub(crate) fn blocks(&self) -> usize {
        self.hidden.div_ceil(self.lanes)
    }

    /// Side `side` of `sides`' share of the unit blocks, and the units it covers:
    /// contiguous, in order, together all of them.
    pub(crate) fn share(&self, side: usize, sides: usize) -> (Range<usize>, Range<usize>) {
        let blocks = self.blocks();
        let (first, end) = (side * blocks / sides, (side + 1) * blocks / sides);
        ((first..end), (first * self.lanes).min(self.hidden)..(end * self.lanes).min(self.hidden))
    }
}

/// What one layer recorded over a text: six T × H matrices, row-major, row = step,
/// which [`lstm_layer`] writes, and the memory terms, which
/// [`LayerOut::extend_memory_terms`] derives from them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerOut {
    pub h: Vec<f32>,
    pub c: Vec<f32>,
    pub i: Vec<f32>,
    pub f: Vec<f32>,
    pub g: Vec<f32>,
    pub o: Vec<f32>,
    /// i ⊙ g: what the step writes into the cell.
    pub write: Vec<f32>,
    /// f ⊙ c_{t−1}: what the cell keeps.
    pub keep: Vec<f32>,
}

impl LayerOut {
    /// Empty, with room for `steps` steps of `hidden` units, so that [`lstm_layer`]
    /// appends without reallocating; recycled memory where there is some
    /// (`model::buffers`).
    pub fn with_capacity(steps: usize, hidden: usize) -> Self {
        let v = || super::buffers::take(steps * hidden);
        Self { h: v(), c: v(), i: v(), f: v(), g: v(), o: v(), write: v(), keep: v() }
    }

    /// Appends the memory terms of the steps recorded since the last call: `write`
    /// = i ⊙ g and `keep` = f ⊙ c_{t−1}, with `c0` the cell state before the first
    /// step. Called after each block of steps, while its rows are still in cache.
    pub fn extend_memory_terms(&mut self, c0: &[f32]) {
        let n = c0.len();
        let (from, to) = (self.write.len(), self.h.len());
        assert!(self.keep.len() == from && from <= to, "memory terms are appended in step order");
        assert!(from.is_multiple_of(n) && to.is_multiple_of(n), "whole rows of H = {n}");
        self.write.reserve(to - from);
        self.keep.reserve(to - from);
        let c_prev = if from == 0 { c0.as_ptr() } else { self.c[from - n..].as_ptr() };
        // SAFETY: i, f, g and c hold `to` floats; c_prev points at H of them (or at
        // c0); write and keep have room for `to − from` more floats, all of which
        // `memory_terms` writes before the lengths are set.
        unsafe {
            let rows = |v: &Vec<f32>| v.as_ptr().add(from);
            memory_terms(
                n,
                (to - from) / n,
                [rows(&self.i), rows(&self.f), rows(&self.g), rows(&self.c)],
                c_prev,
                [self.write.as_mut_ptr().add(from), self.keep.as_mut_ptr().add(from)],
            );
            self.write.set_len(to);
            self.keep.set_len(to);
        }
    }

    /// Where h, c, i, f, g and o start, to write rows past their lengths (within
    /// their capacity) and then [`LayerOut::set_rows`].
    pub(crate) fn rows_mut_ptrs(&mut self) -> [*mut f32; 6] {
        self.all_mut().map(|v| v.as_mut_ptr())
    }

    /// Sets the lengths of h, c, i, f, g and o to `len` floats.
    ///
    /// # Safety
    /// `len` is within their capacity, and every float up to it has been written.
    pub(crate) unsafe fn set_rows(&mut self, len: usize) {
        for v in self.all_mut() {
            assert!(len <= v.capacity(), "past the room made for the trace");
            // SAFETY: the caller's contract.
            unsafe { v.set_len(len) };
        }
    }

    fn all_mut(&mut self) -> [&mut Vec<f32>; 6] {
        [&mut self.h, &mut self.c, &mut self.i, &mut self.f, &mut self.g, &mut self.o]
    }
}

/// The memory terms of `steps` rows: `write = i ⊙ g`, `keep = f ⊙ c_{t−1}`, where
/// c_{t−1} is `c_prev` (H floats) for the first row and the row of `c` above for
/// the others.
///
/// # Safety
/// `i, f, g, c` each point at `steps` × H readable floats, `c_prev` at H, and
/// `write`, `keep` at room for `steps` × H floats, which this writes.
pub(crate) unsafe fn memory_terms(
    n: usize,
    steps: usize,
    [i, f, g, c]: [*const f32; 4],
    c_prev: *const f32,
    [write, keep]: [*mut f32; 2],
) {
    use std::mem::MaybeUninit;
    for t in 0..steps {
        // SAFETY: row t lies inside every buffer (the caller's contract); the rows
        // written are not read here, so the slices do not alias.
        let (i, f, g, above, write, keep) = unsafe {
            let row = |p: *const f32| std::slice::from_raw_parts(p.add(t * n), n);
            let out = |p: *mut f32| std::slice::from_raw_parts_mut(p.add(t * n).cast::<MaybeUninit<f32>>(), n);
            let above = std::slice::from_raw_parts(if t == 0 { c_prev } else { c.add((t - 1) * n) }, n);
            (row(i), row(f), row(g), above, out(write), out(keep))
        };
        for (w, (i, g)) in write.iter_mut().zip(i.iter().zip(g)) {
            w.write(i * g);
        }
        for (k, (f, c)) in keep.iter_mut().zip(f.iter().zip(above)) {
            k.write(f * c);
        }
    }
}

/// Raw view of one layer's inputs and outputs, shared by the kernels. The safe
/// [`lstm_layer`] checks every length before building one.
#[derive(Clone, Copy)]
struct Raw {
    hidden: usize,
    steps: usize,
    /// The unit blocks (of the kernel's L units) this call computes: all of them,
    /// or one thread's share when a layer's units are split between two.
    blocks: (usize, usize),
    /// `steps` pointers, each to 4H floats.
    x_rows: *const *const f32,
    /// 4H floats.
    bias: *const f32,
    h0: *const f32,
    c0: *const f32,
    /// Each `steps` × H, written row by row; row t−1 of `h` and `c` is read at step t.
    h: *mut f32,
    c: *mut f32,
    i: *mut f32,
    f: *mut f32,
    g: *mut f32,
    o: *mut f32,
}

impl Raw {
    /// h_{t-1} and c_{t-1}: the initial state at t = 0, else the previous rows.
    ///
    /// # Safety
    /// `t < steps`, and rows before `t` have been written.
    #[inline(always)]
    unsafe fn prev(&self, t: usize) -> (*const f32, *const f32) {
        if t == 0 {
            (self.h0, self.c0)
        } else {
            // SAFETY: row t−1 lies inside the `steps × H` outputs.
            unsafe { (self.h.add((t - 1) * self.hidden), self.c.add((t - 1) * self.hidden)) }
        }
    }
}

/// Runs `x_rows.len()` steps of one LSTM layer and appends what it recorded to
/// `out` (gate order i, f, g, o as in PyTorch):
/// ```text
/// [i f g o]_t = [σ σ tanh σ](x_rows[t] + bias + W_hh h_{t-1})
/// c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
/// h_t = o_t ⊙ tanh(c_t)
/// ```
/// `x_rows[t]` is the input projection W_ih x_t and `bias` is b_ih + b_hh (4H floats
/// each; adding the bias here spares a pass over the projections). The first
/// step continues from the last row of `out`, or from `h0`, `c0` when `out` is
/// empty, so a text can be fed in pieces (e.g. as its input projection is computed).
pub fn lstm_layer(weight_hh: &PackedHh, x_rows: &[&[f32]], bias: &[f32], h0: &[f32], c0: &[f32], out: &mut LayerOut) {
    let n = weight_hh.hidden;
    let steps = x_rows.len();
    assert!(h0.len() == n && c0.len() == n, "state must hold H = {n} values per layer");
    assert!(x_rows.iter().all(|r| r.len() == 4 * n), "every input projection must be 4H = {} long", 4 * n);
    assert_eq!(bias.len(), 4 * n, "bias must be 4H long");
    let done = out.h.len();
    assert!(
        done.is_multiple_of(n) && out.all_mut().iter().all(|v| v.len() == done),
        "LayerOut vectors must all hold the same whole number of H = {n} rows"
    );
    // One step (sampling, clamped steps) needs no heap allocation.
    let one: [*const f32; 1];
    let many: Vec<*const f32>;
    let rows: &[*const f32] = if steps == 1 {
        one = [x_rows[0].as_ptr()];
        &one
    } else {
        many = x_rows.iter().map(|r| r.as_ptr()).collect();
        &many
    };
    for v in out.all_mut() {
        v.reserve(steps * n);
    }
    let [h, c, i, f, g, o] = out.all_mut().map(|v| v.as_mut_ptr());
    // SAFETY (of the `add`s): `done` ≤ len and, when `done > 0`, done − n ≥ 0.
    // Then: every pointer addresses the length `lstm_layer_part` asks (checked or
    // reserved above), all blocks are this call's, and the new rows are written
    // before their lengths are set.
    unsafe {
        let (h0, c0) = if done == 0 {
            (h0.as_ptr(), c0.as_ptr())
        } else {
            (h.add(done - n).cast_const(), c.add(done - n).cast_const())
        };
        let out_rows = [h, c, i, f, g, o].map(|p| p.add(done));
        lstm_layer_part(weight_hh, rows, bias.as_ptr(), LayerRows { h0, c0, out: out_rows }, 0..weight_hh.blocks());
        for v in out.all_mut() {
            v.set_len(done + steps * n);
        }
    }
}

/// Where [`lstm_layer_part`] reads the state before its first step and writes
/// its steps: h0 and c0 (H floats each, possibly the row above the first one
/// written), and h, c, i, f, g, o, each at the first row to write.
#[derive(Clone, Copy)]
pub(crate) struct LayerRows {
    pub h0: *const f32,
    pub c0: *const f32,
    pub out: [*mut f32; 6],
}

/// [`lstm_layer`] on raw rows, for the units of `blocks` only (see
/// [`PackedHh::share`]), so that two threads can each run their share of a
/// layer's step; with more than one step, `blocks` must be all of them (step t
/// reads all of row t − 1).
///
/// # Safety
/// Each `x_rows` pointer and `bias` address 4H floats; `rows.h0`, `rows.c0` H
/// floats, all written; every `rows.out` room for `x_rows.len()` × H floats.
/// No one else writes these rows' elements of these units, or reads them before
/// this returns; outputs overlap no input but the row above the first.
pub(crate) unsafe fn lstm_layer_part(
    weight_hh: &PackedHh,
    x_rows: &[*const f32],
    bias: *const f32,
    rows: LayerRows,
    blocks: Range<usize>,
) {
    let steps = x_rows.len();
    assert!(blocks.end <= weight_hh.blocks(), "blocks {blocks:?} past the {}", weight_hh.blocks());
    assert!(steps <= 1 || blocks == (0..weight_hh.blocks()), "a share of the units runs one step per call");
    let [h, c, i, f, g, o] = rows.out;
    let raw = Raw {
        hidden: weight_hh.hidden,
        steps,
        blocks: (blocks.start, blocks.end),
        x_rows: x_rows.as_ptr(),
        bias,
        h0: rows.h0,
        c0: rows.c0,
        h,
        c,
        i,
        f,
        g,
        o,
    };
    // SAFETY: the caller's contract; the kernels write each new float of the
    // blocks' units once before anything reads it, and `weight_hh` is packed
    // for the kernel it is given (lanes checked in the match).
    unsafe {
        match (simd(), weight_hh.lanes) {
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx512, 16) => x86::layer_avx512(weight_hh.as_ptr(), raw),
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx512 | Simd::Avx2, 8) => x86::layer_avx2(weight_hh.as_ptr(), raw),
            (_, 16) => layer_portable::<16>(weight_hh.as_ptr(), raw),
            (_, 8) => layer_portable::<8>(weight_hh.as_ptr(), raw),
            (_, lanes) => unreachable!("PackedHh with {lanes} lanes"),
        }
    }
}

/// `y = W x` for the 4H × H matrix `w` holds (packed as [`PackedHh`]), on the
/// same loop as the recurrence minus the cell update: one step's input projection
/// of a layer ≥ 1 (sampling, clamped steps), where a whole text's would be a GEMM.
/// Reads W once, contiguously, with eight independent accumulators per block.
pub(crate) fn packed_matvec(w: &PackedHh, x: &[f32], y: &mut [f32]) {
    let n = w.hidden;
    assert!(x.len() == n && y.len() == 4 * n, "packed_matvec: x must be H = {n} long and y 4H");
    // SAFETY: lengths checked above; `y` is this call's alone.
    unsafe { packed_matvec_part(w, x.as_ptr(), y.as_mut_ptr(), 0..w.blocks()) }
}

/// [`packed_matvec`] for the units of `blocks` only (see [`PackedHh::share`]):
/// writes y's 4 gate rows of those units and nothing else, so two threads can
/// each compute their share of one product.
///
/// # Safety
/// `x` points at H floats and `y` at 4H; no one else reads or writes y's
/// elements of these units meanwhile.
pub(crate) unsafe fn packed_matvec_part(w: &PackedHh, x: *const f32, y: *mut f32, blocks: Range<usize>) {
    let n = w.hidden;
    assert!(blocks.end <= w.blocks(), "blocks {blocks:?} past the {} of H = {n}", w.blocks());
    // SAFETY: `w` holds blocks·H·4·lanes floats packed for `lanes`; the caller's
    // contract covers x and y; each kernel writes y's elements of `blocks` once.
    unsafe {
        match (simd(), w.lanes) {
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx512, 16) => x86::matvec_avx512(w.as_ptr(), n, x, y, blocks),
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx512 | Simd::Avx2, 8) => x86::matvec_avx2(w.as_ptr(), n, x, y, blocks),
            (_, 16) => matvec_portable::<16>(w.as_ptr(), n, x, y, blocks),
            (_, 8) => matvec_portable::<8>(w.as_ptr(), n, x, y, blocks),
            (_, lanes) => unreachable!("PackedHh with {lanes} lanes"),
        }
    }
}

/// [`packed_matvec`] in plain Rust.
///
/// # Safety
/// `w` is a [`PackedHh`] with `L` lanes and `n` units; x is H and y 4H long.
unsafe fn matvec_portable<const L: usize>(w: *const f32, n: usize, x: *const f32, y: *mut f32, blocks: Range<usize>) {
    // SAFETY: the caller's contract: x holds H floats.
    let x = unsafe { std::slice::from_raw_parts(x, n) };
    for b in blocks {
        let j0 = b * L;
        let mut acc = [[0f32; L]; 4];
        let flat = acc.as_flattened_mut();
        // SAFETY: block b's weights are the n·4·L floats from b·n·4·L.
        let wb = unsafe { std::slice::from_raw_parts(w.add(b * n * 4 * L), n * 4 * L) };
        for (wc, &xc) in wb.chunks_exact(4 * L).zip(x) {
            for (a, wv) in flat.iter_mut().zip(wc) {
                *a += wv * xc;
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let width = L.min(n - j0);
            // SAFETY: y holds 4H floats; these are the block's units of gate q.
            unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), y.add(q * n + j0), width) };
        }
    }
}

/// The order in which step `t` visits the `blocks` unit blocks: forward on even
/// steps, backward on odd ones. When W_hh is larger than the L2 cache (H = 512:
/// 4 MiB against 2 MiB), a fixed order evicts every block just before it is needed
/// again; alternating makes the blocks a step reads last the ones the next step
/// reads first, while they are still in L2. Blocks are independent, so the order
/// changes no result. (The int8 kernels keep to one order: their 1 MiB W_hh at
/// H = 512 ran 5–10% slower alternating, on Zen 3, measured side by side.)
#[inline(always)]
fn block_order(t: usize, (first, end): (usize, usize)) -> impl Iterator<Item = usize> {
    let backward = t % 2 == 1;
    (first..end).map(move |k| if backward { end - 1 - (k - first) } else { k })
}

/// The kernels' shared shape, in plain Rust over `[f32; L]` so LLVM can use
/// whatever vector unit the target has.
///
/// # Safety
/// As in [`lstm_layer`]; `w` is a [`PackedHh`] with `L` lanes and `raw.hidden` units.
unsafe fn layer_portable<const L: usize>(w: *const f32, raw: Raw) {
    let n = raw.hidden;
    for t in 0..raw.steps {
        // SAFETY: the caller's contract; all indices stay below H per row, 4H per
        // input row and `blocks·H·4·L` in `w`.
        unsafe {
            let (h_prev, c_prev) = raw.prev(t);
            let x = *raw.x_rows.add(t);
            for b in block_order(t, raw.blocks) {
                let j0 = b * L;
                let width = L.min(n - j0);
                let mut acc = [[0f32; L]; 4];
                for (q, a) in acc.iter_mut().enumerate() {
                    for l in 0..width {
                        a[l] = *x.add(q * n + j0 + l) + *raw.bias.add(q * n + j0 + l);
                    }
                }
                // acc += h_{t-1}[c] · (block's 4L weights of column c), as one flat
                // axpy so that LLVM's vectoriser sees a plain loop.
                let flat = acc.as_flattened_mut();
                let wb = std::slice::from_raw_parts(w.add(b * n * 4 * L), n * 4 * L);
                for (c, wc) in wb.chunks_exact(4 * L).enumerate() {
                    let hc = *h_prev.add(c);
                    for (a, wv) in flat.iter_mut().zip(wc) {
                        *a += wv * hc;
                    }
                }
                for l in 0..width {
                    let j = j0 + l;
                    let r = t * n + j;
                    let i = sigmoid(acc[0][l]);
                    let f = sigmoid(acc[1][l]);
                    let g = tanh(acc[2][l]);
                    let o = sigmoid(acc[3][l]);
                    let c = f * *c_prev.add(j) + i * g;
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! AVX-512 and AVX2 + FMA versions of [`super::layer_portable`]. Both follow the
    //! same plan: per block of L units, eight accumulators (i, f, g, o × even/odd
    //! column) start from x_proj, take one FMA per weight vector, and the cell
    //! update runs on the sums without leaving registers. The last block of an H
    //! that is not a multiple of L is masked.

    use super::{block_order, Raw, C3, C4, C5, C6, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// e^x on 16 lanes: k = round(x·log2 e), r = x − k·ln2, 2^k · p(r) (`vscalefps`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(C6);
        for coef in [C5, C4, C3, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
        }
        _mm512_scalef_ps(p, k)
    }

    /// σ(x) = 1 / (1 + e^(−x)).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sigmoid16(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))))
    }

    /// tanh(x) = 2 / (1 + e^(−2x)) − 1.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tanh16(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(-2.0)));
        _mm512_sub_ps(_mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(one, e)), one)
    }

    /// # Safety
    /// As [`super::layer_portable`] with L = 16, on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn layer_avx512(w: *const f32, raw: Raw) {
        const L: usize = 16;
        let n = raw.hidden;
        for t in 0..raw.steps {
            // SAFETY: the caller's contract; masked loads and stores touch only the
            // `width` valid units of the last block; `w` holds whole padded blocks.
            unsafe {
                let (h_prev, c_prev) = raw.prev(t);
                let x = *raw.x_rows.add(t);
                let row = t * n;
                for b in block_order(t, raw.blocks) {
                    let j0 = b * L;
                    let width = L.min(n - j0);
                    let m: __mmask16 = if width == L { !0 } else { (1u16 << width) - 1 };
                    let start = |q: usize| {
                        let at = q * n + j0;
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m, x.add(at)), _mm512_maskz_loadu_ps(m, raw.bias.add(at)))
                    };
                    let [i, f, g, o] =
                        block_dot16(w.add(b * n * 4 * L), h_prev, n, [start(0), start(1), start(2), start(3)]);
                    let (i, f, g, o) = (sigmoid16(i), sigmoid16(f), tanh16(g), sigmoid16(o));
                    let cp = _mm512_maskz_loadu_ps(m, c_prev.add(j0));
                    let cell = _mm512_fmadd_ps(f, cp, _mm512_mul_ps(i, g));
                    let hidden = _mm512_mul_ps(o, tanh16(cell));
                    let at = row + j0;
                    _mm512_mask_storeu_ps(raw.i.add(at), m, i);
                    _mm512_mask_storeu_ps(raw.f.add(at), m, f);
                    _mm512_mask_storeu_ps(raw.g.add(at), m, g);
                    _mm512_mask_storeu_ps(raw.o.add(at), m, o);
                    _mm512_mask_storeu_ps(raw.c.add(at), m, cell);
                    _mm512_mask_storeu_ps(raw.h.add(at), m, hidden);
                }
            }
        }
    }

    /// round(127 · u) of 8 values, none NaN, as i32 lanes: clamped to [−1, 1],
    /// times 127, rounded half away from zero (as `f32::round`): the truncation,
    /// plus ±1 where the dropped part is at least ½ (exact, since x − trunc(x) is).
    /// The one rounding of the int8 trace's h and of the view's bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn round_unit(u: __m256) -> __m256i {
        let sign = _mm256_set1_ps(-0.0);
        let u = _mm256_min_ps(_mm256_max_ps(u, _mm256_set1_ps(-1.0)), _mm256_set1_ps(1.0));
        let x = _mm256_mul_ps(u, _mm256_set1_ps(127.0));
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let dropped = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(dropped, _mm256_set1_ps(0.5));
        let step = _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(x, sign)));
        _mm256_cvttps_epi32(_mm256_add_ps(t, step))
    }

    /// The 32 values of four [`round_unit`] results (each within ±127) as 32
    /// bytes in order. Saturating packs work within 128-bit lanes; the
    /// permutation puts the four 8-value runs back in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn pack_bytes(lanes: [__m256i; 4]) -> __m256i {
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(lanes[0], lanes[1]), _mm256_packs_epi32(lanes[2], lanes[3]));
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// e^x on 8 lanes: as [`exp16`], with 2^k built in the exponent bits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(C6);
        for coef in [C5, C4, C3, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coef));
        }
        // |x| ≤ 88 keeps k + 127 in 1..=254, a normal exponent.
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn sigmoid8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn tanh8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_mul_ps(x, _mm256_set1_ps(-2.0)));
        _mm256_sub_ps(_mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(one, e)), one)
    }

    /// `start + W_block x` for one block of 16 units: the four gates' sums over the
    /// `n` columns of a packed block at `p`, with two partial sums per gate (even
    /// and odd columns) so consecutive FMAs do not wait on each other.
    ///
    /// # Safety
    /// `p` is a 64-byte aligned packed block of `n·4·16` floats; `x` holds `n`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_dot16(mut p: *const f32, x: *const f32, n: usize, start: [__m512; 4]) -> [__m512; 4] {
        const L: usize = 16;
        let mut even = start;
        let mut odd = [_mm512_setzero_ps(); 4];
        let mut c = 0;
        // SAFETY: the caller's contract; c < n and p stays inside the block.
        unsafe {
            while c + 2 <= n {
                let x0 = _mm512_set1_ps(*x.add(c));
                let x1 = _mm512_set1_ps(*x.add(c + 1));
                for q in 0..4 {
                    even[q] = _mm512_fmadd_ps(_mm512_load_ps(p.add(q * L)), x0, even[q]);
                }
                for q in 0..4 {
                    odd[q] = _mm512_fmadd_ps(_mm512_load_ps(p.add((4 + q) * L)), x1, odd[q]);
                }
                p = p.add(8 * L);
                c += 2;
            }
            if c < n {
                let x0 = _mm512_set1_ps(*x.add(c));
                for q in 0..4 {
                    even[q] = _mm512_fmadd_ps(_mm512_load_ps(p.add(q * L)), x0, even[q]);
                }
            }
        }
        [0, 1, 2, 3].map(|q| _mm512_add_ps(even[q], odd[q]))
    }

    /// [`block_dot16`] for blocks of 8 units.
    ///
    /// # Safety
    /// `p` is a 32-byte aligned packed block of `n·4·8` floats (blocks start on
    /// 64-byte lines and advance by 32 bytes); `x` holds `n`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_dot8(mut p: *const f32, x: *const f32, n: usize, start: [__m256; 4]) -> [__m256; 4] {
        const L: usize = 8;
        let mut even = start;
        let mut odd = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        // SAFETY: as in `block_dot16`.
        unsafe {
            while c + 2 <= n {
                let x0 = _mm256_broadcast_ss(&*x.add(c));
                let x1 = _mm256_broadcast_ss(&*x.add(c + 1));
                for q in 0..4 {
                    even[q] = _mm256_fmadd_ps(_mm256_load_ps(p.add(q * L)), x0, even[q]);
                }
                for q in 0..4 {
                    odd[q] = _mm256_fmadd_ps(_mm256_load_ps(p.add((4 + q) * L)), x1, odd[q]);
                }
                p = p.add(8 * L);
                c += 2;
            }
            if c < n {
                let x0 = _mm256_broadcast_ss(&*x.add(c));
                for q in 0..4 {
                    even[q] = _mm256_fmadd_ps(_mm256_load_ps(p.add(q * L)), x0, even[q]);
                }
            }
        }
        [0, 1, 2, 3].map(|q| _mm256_add_ps(even[q], odd[q]))
    }

    /// [`super::packed_matvec`] with L = 16.
    ///
    /// # Safety
    /// As [`super::matvec_portable`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matvec_avx512(w: *const f32, n: usize, x: *const f32, y: *mut f32, blocks: Range<usize>) {
        const L: usize = 16;
        // SAFETY: the caller's contract; the masked stores write only the valid
        // units of the last block.
        unsafe {
            for b in blocks {
                let j0 = b * L;
                let width = L.min(n - j0);
                let m: __mmask16 = if width == L { !0 } else { (1u16 << width) - 1 };
                let sums = block_dot16(w.add(b * n * 4 * L), x, n, [_mm512_setzero_ps(); 4]);
                for (q, sum) in sums.into_iter().enumerate() {
                    _mm512_mask_storeu_ps(y.add(q * n + j0), m, sum);
                }
            }
        }
    }

    /// [`super::packed_matvec`] with L = 8.
    ///
    /// # Safety
    /// As [`super::matvec_portable`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn matvec_avx2(w: *const f32, n: usize, x: *const f32, y: *mut f32, blocks: Range<usize>) {
        const L: usize = 8;
        // SAFETY: as in `matvec_avx512`.
        unsafe {
            for b in blocks {
                let j0 = b * L;
                let width = (L.min(n - j0)) as i32;
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                let sums = block_dot8(w.add(b * n * 4 * L), x, n, [_mm256_setzero_ps(); 4]);
                for (q, sum) in sums.into_iter().enumerate() {
                    _mm256_maskstore_ps(y.add(q * n + j0), m, sum);
                }
            }
        }
    }

    /// # Safety
    /// As [`super::layer_portable`] with L = 8, on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_avx2(w: *const f32, raw: Raw) {
        const L: usize = 8;
        let n = raw.hidden;
        for t in 0..raw.steps {
            // SAFETY: as in `layer_avx512`; `maskload`/`maskstore` skip lanes whose
            // mask word has its top bit clear.
            unsafe {
                let (h_prev, c_prev) = raw.prev(t);
                let x = *raw.x_rows.add(t);
                let row = t * n;
                for b in block_order(t, raw.blocks) {
                    let j0 = b * L;
                    let width = (L.min(n - j0)) as i32;
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                    let start = |q: usize| {
                        let at = q * n + j0;
                        _mm256_add_ps(_mm256_maskload_ps(x.add(at), m), _mm256_maskload_ps(raw.bias.add(at), m))
                    };
                    let [i, f, g, o] =
                        block_dot8(w.add(b * n * 4 * L), h_prev, n, [start(0), start(1), start(2), start(3)]);
                    let (i, f, g, o) = (sigmoid8(i), sigmoid8(f), tanh8(g), sigmoid8(o));
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
}

/// Softmax of each `width`-long row of `rows`, in place: p_j = e^(z_j − max z) / Σ_k e^(z_k − max z).
/// Uses [`exp_fast`], which LLVM vectorises once the features are enabled.
pub(crate) fn softmax_rows(rows: &mut [f32], width: usize) {
    #[inline(always)]
    fn generic(rows: &mut [f32], width: usize) {
        // Max and sum keep 16 independent lanes: a single running value would be
        // one long dependency chain that LLVM may not reorder.
        #[inline(always)]
        fn lanes(row: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
            let mut acc = [init; 16];
            let mut chunks = row.chunks_exact(16);
            for chunk in &mut chunks {
                for l in 0..16 {
                    acc[l] = op(acc[l], chunk[l]);
                }
            }
            chunks.remainder().iter().fold(acc.into_iter().fold(init, &op), |a, &b| op(a, b))
        }
        for row in rows.chunks_exact_mut(width) {
            let max = lanes(row, f32::NEG_INFINITY, f32::max);
            for x in row.iter_mut() {
                *x = exp_fast(*x - max);
            }
            let scale = 1.0 / lanes(row, 0.0, |a, b| a + b);
            for x in row.iter_mut() {
                *x *= scale;
            }
        }
    }
    if width == 0 {
        return;
    }
    assert_eq!(rows.len() % width, 0, "softmax_rows: length is not a multiple of the row width");
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn wide(rows: &mut [f32], width: usize) {
            generic(rows, width)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(rows: &mut [f32], width: usize) {
            generic(rows, width)
        }
        match simd() {
            // SAFETY: `simd()` only reports features this CPU has.
            Simd::Avx512 => return unsafe { wide(rows, width) },
            Simd::Avx2 => return unsafe { avx2(rows, width) },
            Simd::Portable => {}
        }
    }
    generic(rows, width)
}

/// Which operand of a GEMM is read transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trans {
    N,
    T,
}

/// C = α·op(A)·op(B) + β·C for row-major slices. `op(A)` is m × k, `op(B)` k × n,
/// C m × n. A stored as given: if `ta == T`, `a` holds the k × m matrix.
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    // SAFETY: the strides address exactly the m·k, k·n and m·n elements checked above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_accurate_over_the_useful_range() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_fast(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        // The clamp at e^88 leaves σ(−1000) at 6e-39 rather than 0: close enough.
        assert!((0.0..1e-37).contains(&sigmoid(-1000.0)));
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((tanh(0.3) - 0.3f32.tanh()).abs() < 3e-7);
        assert!(tanh(50.0) == 1.0 && tanh(-50.0) == -1.0);
    }

    /// The LSTM equations step by step with libm, on PyTorch's row-major W_hh.
    fn reference(w: &[f32], x: &[Vec<f32>], bias: &[f32], h0: &[f32], c0: &[f32]) -> LayerOut {
        let n = h0.len();
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let (mut h, mut c) = (h0.to_vec(), c0.to_vec());
        let mut out = LayerOut::default();
        for xt in x {
            let pre: Vec<f32> =
                (0..4 * n).map(|r| xt[r] + bias[r] + (0..n).map(|k| w[r * n + k] * h[k]).sum::<f32>()).collect();
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

    /// Runs one kernel directly, whatever `simd()` says.
    fn run(kernel: &str, w: &[f32], x: &[Vec<f32>], bias: &[f32], h0: &[f32], c0: &[f32]) -> LayerOut {
        run_shared(kernel, w, x, bias, h0, c0, 1, None)
    }

    /// [`run`] with the units shared out in `sides` parts ([`PackedHh::share`]),
    /// each part a call of its own, one step at a time when `sides` > 1 (as two
    /// threads run them); `only`: just that part's calls. Outputs start as NaN.
    #[allow(clippy::too_many_arguments)]
    fn run_shared(
        kernel: &str,
        w: &[f32],
        x: &[Vec<f32>],
        bias: &[f32],
        h0: &[f32],
        c0: &[f32],
        sides: usize,
        only: Option<usize>,
    ) -> LayerOut {
        let n = h0.len();
        let lanes = if kernel.ends_with("16") || kernel == "avx512" { 16 } else { 8 };
        let packed = PackedHh::with_lanes(w, n, lanes);
        let rows: Vec<&[f32]> = x.iter().map(|r| &r[..]).collect();
        let steps = x.len();
        let mut out = LayerOut {
            h: vec![f32::NAN; steps * n],
            c: vec![f32::NAN; steps * n],
            i: vec![f32::NAN; steps * n],
            f: vec![f32::NAN; steps * n],
            g: vec![f32::NAN; steps * n],
            o: vec![f32::NAN; steps * n],
            ..LayerOut::default()
        };
        let ptrs: Vec<*const f32> = rows.iter().map(|r| r.as_ptr()).collect();
        let calls: Vec<(Range<usize>, Range<usize>)> = if sides == 1 {
            vec![(0..steps, 0..packed.blocks())]
        } else {
            (0..steps)
                .flat_map(|t| (0..sides).map(move |side| (t..t + 1, side)))
                .filter(|&(_, side)| only.is_none_or(|o| o == side))
                .map(|(t, side)| (t, packed.share(side, sides).0))
                .collect()
        };
        for (ts, blocks) in calls {
            let t0 = ts.start;
            let at = |v: &mut Vec<f32>| v.as_mut_ptr().wrapping_add(t0 * n);
            let (h0, c0) = if t0 == 0 {
                (h0.as_ptr(), c0.as_ptr())
            } else {
                (out.h[(t0 - 1) * n..].as_ptr(), out.c[(t0 - 1) * n..].as_ptr())
            };
            let raw = Raw {
                hidden: n,
                steps: ts.len(),
                blocks: (blocks.start, blocks.end),
                x_rows: ptrs[t0..].as_ptr(),
                bias: bias.as_ptr(),
                h0,
                c0,
                h: at(&mut out.h),
                c: at(&mut out.c),
                i: at(&mut out.i),
                f: at(&mut out.f),
                g: at(&mut out.g),
                o: at(&mut out.o),
            };
            // SAFETY: buffers sized as `Raw` requires; SIMD kernels only on CPUs that have them.
            unsafe {
                match kernel {
                    "portable8" => layer_portable::<8>(packed.as_ptr(), raw),
                    "portable16" => layer_portable::<16>(packed.as_ptr(), raw),
                    #[cfg(target_arch = "x86_64")]
                    "avx512" => x86::layer_avx512(packed.as_ptr(), raw),
                    #[cfg(target_arch = "x86_64")]
                    "avx2" => x86::layer_avx2(packed.as_ptr(), raw),
                    _ => unreachable!(),
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_gives_the_same_bits_with_its_units_shared_out() {
        // H = 13 and 40: a partial last block, and shares of unequal sizes.
        for n in [13usize, 40] {
            let w: Vec<f32> = (0..4 * n * n).map(|k| ((k * 37 % 101) as f32 - 50.0) / 197.0).collect();
            let x: Vec<Vec<f32>> =
                (0..5).map(|t| (0..4 * n).map(|k| ((k * 7 + t * 3) % 23) as f32 / 23.0 - 0.5).collect()).collect();
            let bias: Vec<f32> = (0..4 * n).map(|k| (k % 5) as f32 / 10.0 - 0.2).collect();
            let h0: Vec<f32> = (0..n).map(|k| (k % 3) as f32 / 4.0 - 0.25).collect();
            let c0: Vec<f32> = (0..n).map(|k| (k % 4) as f32 / 3.0 - 0.5).collect();
            for kernel in kernels() {
                let whole = run(kernel, &w, &x, &bias, &h0, &c0);
                for sides in [2, 3] {
                    let shared = run_shared(kernel, &w, &x, &bias, &h0, &c0, sides, None);
                    assert!(shared == whole, "{kernel}, H = {n}, {sides} shares: not the same bits");
                }
                // One share alone writes its units and no others.
                let lanes = if kernel.ends_with("16") || kernel == "avx512" { 16 } else { 8 };
                let mine = PackedHh::with_lanes(&w, n, lanes).share(1, 2).1;
                let one = run_shared(kernel, &w, &x[..1], &bias, &h0, &c0, 2, Some(1));
                for (j, v) in one.h.iter().enumerate() {
                    assert_eq!(v.is_nan(), !mine.contains(&j), "{kernel}, H = {n}: unit {j}, share {mine:?}");
                }
            }
        }
    }

    #[test]
    fn packed_matvec_matches_the_row_major_product_on_every_kernel() {
        // H = 13: a partial last block for both 8 and 16 lanes, and an odd column count.
        for n in [13usize, 32] {
            let w: Vec<f32> = (0..4 * n * n).map(|k| ((k * 37 % 101) as f32 - 50.0) / 97.0).collect();
            let x: Vec<f32> = (0..n).map(|k| ((k * 11 % 17) as f32 - 8.0) / 9.0).collect();
            let want: Vec<f32> = (0..4 * n).map(|r| (0..n).map(|c| w[r * n + c] * x[c]).sum()).collect();
            for kernel in kernels() {
                let lanes = if kernel.ends_with("16") || kernel == "avx512" { 16 } else { 8 };
                let packed = PackedHh::with_lanes(&w, n, lanes);
                let all = 0..packed.blocks();
                let mut y = vec![f32::NAN; 4 * n];
                // SAFETY: sizes as `packed_matvec` checks; SIMD kernels only where the CPU has them.
                unsafe {
                    match kernel {
                        "portable8" => matvec_portable::<8>(packed.as_ptr(), n, x.as_ptr(), y.as_mut_ptr(), all),
                        "portable16" => matvec_portable::<16>(packed.as_ptr(), n, x.as_ptr(), y.as_mut_ptr(), all),
                        #[cfg(target_arch = "x86_64")]
                        "avx512" => x86::matvec_avx512(packed.as_ptr(), n, x.as_ptr(), y.as_mut_ptr(), all),
                        #[cfg(target_arch = "x86_64")]
                        "avx2" => x86::matvec_avx2(packed.as_ptr(), n, x.as_ptr(), y.as_mut_ptr(), all),
                        _ => unreachable!(),
                    }
                }
                let worst = y.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{kernel}, H = {n}: worst difference {worst}");
            }
            let mut y = vec![0.0; 4 * n];
            let packed = PackedHh::new(&w, n);
            packed_matvec(&packed, &x, &mut y);
            assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5), "dispatched kernel, H = {n}");
            for sides in [2, 3] {
                let mut parts = vec![f32::NAN; 4 * n];
                for side in 0..sides {
                    // SAFETY: x is H and parts 4H long; one share at a time.
                    unsafe { packed_matvec_part(&packed, x.as_ptr(), parts.as_mut_ptr(), packed.share(side, sides).0) };
                }
                assert!(parts.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{sides} shares, H = {n}");
            }
        }
    }

    fn kernels() -> Vec<&'static str> {
        let mut k = vec!["portable8", "portable16"];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                k.push("avx512");
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                k.push("avx2");
            }
        }
        k
    }

    #[test]
    fn every_kernel_matches_the_equations_for_ragged_sizes() {
        let mut rng = crate::rng::Rng::new(3);
        // H below, at and between the SIMD widths, so full and masked blocks and an
        // odd column count all run.
        for n in [1, 3, 8, 13, 16, 21, 40, 64] {
            let scale = 2.0 / (n as f32).sqrt();
            let w: Vec<f32> = (0..4 * n * n).map(|_| rng.range(-scale, scale)).collect();
            let x: Vec<Vec<f32>> = (0..6).map(|_| (0..4 * n).map(|_| rng.range(-2.0, 2.0)).collect()).collect();
            let h0: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0)).collect();
            let c0: Vec<f32> = (0..n).map(|_| rng.range(-3.0, 3.0)).collect();
            let bias: Vec<f32> = (0..4 * n).map(|_| rng.range(-1.0, 1.0)).collect();
            let want = reference(&w, &x, &bias, &h0, &c0);
            for kernel in kernels() {
                let got = run(kernel, &w, &x, &bias, &h0, &c0);
                for (name, a, b) in [
                    ("h", &got.h, &want.h),
                    ("c", &got.c, &want.c),
                    ("i", &got.i, &want.i),
                    ("f", &got.f, &want.f),
                    ("g", &got.g, &want.g),
                    ("o", &got.o, &want.o),
                ] {
                    let diff = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
                    assert!(diff < 2e-6, "{kernel}, H = {n}: {name} differs from the equations by {diff}");
                }
            }
        }
    }

    #[test]
    fn lstm_layer_handles_an_empty_text() {
        let w = vec![0.5; 4 * 3 * 3];
        let mut out = LayerOut::default();
        lstm_layer(&PackedHh::new(&w, 3), &[], &[0.0; 12], &[0.0; 3], &[0.0; 3], &mut out);
        assert!(out.h.is_empty() && out.o.is_empty());
    }

    #[test]
    fn lstm_layer_fed_in_pieces_equals_one_call() {
        let mut rng = crate::rng::Rng::new(5);
        let n = 21;
        let w: Vec<f32> = (0..4 * n * n).map(|_| rng.range(-0.4, 0.4)).collect();
        let x: Vec<Vec<f32>> = (0..9).map(|_| (0..4 * n).map(|_| rng.range(-2.0, 2.0)).collect()).collect();
        let rows: Vec<&[f32]> = x.iter().map(|r| &r[..]).collect();
        let (h0, c0, bias) = (vec![0.1; n], vec![-0.2; n], vec![0.3; 4 * n]);
        let packed = PackedHh::new(&w, n);
        let mut whole = LayerOut::default();
        lstm_layer(&packed, &rows, &bias, &h0, &c0, &mut whole);
        let mut pieces = LayerOut::with_capacity(2, n);
        for piece in [&rows[..2], &rows[2..3], &rows[3..3], &rows[3..]] {
            lstm_layer(&packed, piece, &bias, &h0, &c0, &mut pieces);
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn gemm_handles_transposes() {
        // A = [[1,2],[3,4]], B = [[5,6],[7,8]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [0.0; 4];
        gemm(2, 2, 2, 1.0, &a, Trans::N, &b, Trans::N, 0.0, &mut c);
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        gemm(2, 2, 2, 1.0, &a, Trans::T, &b, Trans::N, 0.0, &mut c);
        assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
        gemm(2, 2, 2, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &mut c);
        assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
    }
}
