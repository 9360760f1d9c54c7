//! One character at a time: [`Stepper`] advances every layer by one step from a
//! carried state (state in, one character, state out) into buffers it reuses, so
//! sampling costs what tracing costs and allocates nothing per character.
//! [`sample`] generates text with it, optionally with clamps held throughout.
//!
//! Per step and layer k (the same equations as `lstm.rs` and `gru_rnn.rs`):
//! ```text
//! x_proj = W_ih^(k) x          (a table row for layer 0, a matrix-vector product above)
//! h (and c, the gates) = the architecture's step(x_proj, state)   then the clamps of layer k
//! p = softmax(W_dec h^(top) + b_dec)
//! ```

use super::gru_rnn;
use super::kernel::{self, LayerOut, LayerRows};
use super::lstm::{apply_clamps, Arch, Clamp, Kind, Model, State, SHARED_MIN_HIDDEN};
use crate::parallel::{Both, Meet, Pair};
use crate::rng::Rng;

/// Advances a model one character at a time.
pub struct Stepper<'m> {
    model: &'m Model,
    state: State,
    /// LSTM: per layer, the last step's h, c and gates (one row each; capacity reused).
    outs: Vec<LayerOut>,
    /// GRU and RNN: per layer, the last step's row of each kind, in `Arch::kinds` order.
    rows: Vec<Vec<Vec<f32>>>,
    /// Per layer, the cell state before the last step (for `keep = f ⊙ c_{t−1}`).
    c_prev: Vec<Vec<f32>>,
    /// G·H: the input projection of a layer.
    x_proj: Vec<f32>,
    /// G·H: scratch for the GRU and RNN step (W_hh h).
    gh: Vec<f32>,
    /// V: the distribution over the next character after the last step.
    probs: Vec<f32>,
    /// Steps taken (the time index clamps refer to).
    t: usize,
}

impl<'m> Stepper<'m> {
    /// Starts from `state` (e.g. [`Model::zero_state`] or a trace's final state).
    pub fn new(model: &'m Model, state: State) -> Self {
        let n = model.hidden_size();
        assert!(
            state.h.len() == model.layers() && state.h.iter().all(|h| h.len() == n),
            "state does not fit the model"
        );
        let arch = model.arch();
        let lstm = arch == Arch::Lstm;
        let g = arch.gates() * n;
        Self {
            model,
            c_prev: state.c.clone(),
            state,
            outs: (0..if lstm { model.layers() } else { 0 }).map(|_| LayerOut::with_capacity(1, n)).collect(),
            rows: (0..if lstm { 0 } else { model.layers() }).map(|_| vec![vec![0.0; n]; arch.kinds().len()]).collect(),
            x_proj: vec![0.0; g],
            gh: vec![0.0; g],
            probs: vec![0.0; model.vocab.len()],
            t: 0,
        }
    }

    /// Feeds one character (its vocabulary id; `None` for an unknown character,
    /// which enters as a zero input) and returns the next-character distribution.
    /// Clamps are applied with this step's index (the number of steps before it).
    pub fn step(&mut self, id: Option<u32>, clamps: &[Clamp]) -> &[f32] {
        self.step_on(id, clamps, None)
    }

    /// [`Stepper::step`], an LSTM's layers on this thread and `pair`'s helper
    /// when there is one (each computes half of every layer's units, see
    /// [`Stepper::lstm_shared`]): the same numbers to the bit.
    pub(crate) fn step_on(&mut self, id: Option<u32>, clamps: &[Clamp], pair: Option<&Pair>) -> &[f32] {
        let m = self.model;
        let n = m.hidden_size();
        let active: Vec<&Clamp> = clamps.iter().filter(|c| c.from <= self.t && self.t < c.to).collect();
        let lstm = m.arch() == Arch::Lstm;
        if let (Some(pair), true) = (pair, lstm) {
            self.lstm_shared(id, &active, pair);
        }
        for k in 0..m.layers() {
            if pair.is_some() && lstm {
                break;
            }
            if k == 0 {
                self.x_proj.copy_from_slice(m.input_row(id));
            } else if lstm {
                kernel::packed_matvec(&m.packed_ih[k - 1], &self.state.h[k - 1], &mut self.x_proj);
            } else {
                gru_rnn::project(m, k, &self.state.h[k - 1], &mut self.x_proj);
            }
            if !lstm {
                let rows = &mut self.rows[k];
                gru_rnn::step(m, k, &self.x_proj, &self.state.h[k], &mut self.gh, rows);
                let mine: Vec<&Clamp> = active.iter().copied().filter(|c| c.layer == k).collect();
                gru_rnn::clamp_h(rows, &mine, self.t);
                self.state.h[k].copy_from_slice(&rows[0]);
                continue;
            }
            let out = &mut self.outs[k];
            for v in [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o] {
                v.clear();
            }
            kernel::lstm_layer(&m.packed_hh[k], &[&self.x_proj], &m.bias[k], &self.state.h[k], &self.state.c[k], out);
            let mine: Vec<&Clamp> = active.iter().copied().filter(|c| c.layer == k).collect();
            if !mine.is_empty() {
                apply_clamps(out, n, self.t, &mine);
            }
            self.c_prev[k].copy_from_slice(&self.state.c[k]);
            self.state.h[k].copy_from_slice(&out.h);
            self.state.c[k].copy_from_slice(&out.c);
        }
        let dec = m.weights().decoder_weight.as_slice().expect("standard layout");
        matvec(dec, &self.state.h[m.layers() - 1], &mut self.probs);
        for (p, b) in self.probs.iter_mut().zip(m.weights().decoder_bias.iter()) {
            *p += b;
        }
        kernel::softmax_rows(&mut self.probs, m.vocab.len());
        self.t += 1;
        &self.probs
    }

    /// One LSTM step with every layer's units shared between this thread (side 0)
    /// and `pair`'s helper (side 1), by [`kernel::PackedHh::share`]. Per layer k,
    /// each side computes its units' input projection (from all of layer k − 1's
    /// new h) and then their cell update (from all of layer k's previous h, c),
    /// and the two meet: the layer's row is whole, and neither reads the previous
    /// state again. Side 0 then applies the clamps of layer k (the other waits at
    /// a second meeting), and each side copies its units into the carried state.
    /// Every unit runs the kernels' own sums, so the numbers are those of
    /// [`Stepper::step`] to the bit.
    fn lstm_shared(&mut self, id: Option<u32>, active: &[&Clamp], pair: &Pair) {
        let m = self.model;
        let n = m.hidden_size();
        for out in &mut self.outs {
            for v in [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o] {
                v.resize(n, 0.0);
            }
        }
        let buffers = StepBuffers {
            table_row: m.input_row(id).as_ptr(),
            x_proj: self.x_proj.as_mut_ptr(),
            outs: self.outs.as_mut_ptr(),
            h: self.state.h.iter_mut().map(|h| h.as_mut_ptr()).collect(),
            c: self.state.c.iter_mut().map(|c| c.as_mut_ptr()).collect(),
            c_prev: self.c_prev.iter_mut().map(|c| c.as_mut_ptr()).collect(),
        };
        // SAFETY: the two sides write disjoint elements, and read the other's
        // only after a meeting (see the doc above).
        let shared = unsafe { Both::new(buffers) };
        let shared = &shared;
        let t = self.t;
        let job = |meet: &Meet| {
            let shared = shared.get();
            let (blocks, units) = m.packed_hh[0].share(meet.side(), 2);
            for k in 0..m.layers() {
                let clamped: Vec<&Clamp> = active.iter().copied().filter(|c| c.layer == k).collect();
                // SAFETY: every pointer addresses buffers of the sizes the kernels
                // ask (x_proj and table rows 4H, the rest H per row), alive for
                // the job. Each side writes only its own units' elements; what a
                // side reads of the other's is written before a meeting the
                // reader has passed, and nothing is written that the other side
                // still reads (see the doc above).
                unsafe {
                    let out = &*shared.outs.add(k);
                    let x = if k == 0 {
                        shared.table_row
                    } else {
                        let below = (*shared.outs.add(k - 1)).h.as_ptr();
                        kernel::packed_matvec_part(&m.packed_ih[k - 1], below, shared.x_proj, blocks.clone());
                        shared.x_proj.cast_const()
                    };
                    let rows = LayerRows {
                        h0: shared.h[k],
                        c0: shared.c[k],
                        out: [&out.h, &out.c, &out.i, &out.f, &out.g, &out.o].map(|v| v.as_ptr().cast_mut()),
                    };
                    kernel::lstm_layer_part(&m.packed_hh[k], &[x], m.bias[k].as_ptr(), rows, blocks.clone());
                    meet.wait();
                    if !clamped.is_empty() {
                        if meet.side() == 0 {
                            apply_clamps(&mut *shared.outs.add(k), n, t, &clamped);
                        }
                        meet.wait();
                    }
                    let out = &*shared.outs.add(k);
                    for j in units.clone() {
                        *shared.c_prev[k].add(j) = *shared.c[k].add(j);
                        *shared.h[k].add(j) = out.h[j];
                        *shared.c[k].add(j) = out.c[j];
                    }
                }
            }
        };
        pair.both(&job);
    }

    /// The distribution after the last step.
    pub fn probs(&self) -> &[f32] {
        &self.probs
    }

    /// One recorded value of the last step: `kind` of cell `cell` in layer `layer`.
    ///
    /// # Panics
    /// If the model's architecture does not record `kind` (check with `Arch::has`).
    pub fn value(&self, layer: usize, kind: Kind, cell: usize) -> f32 {
        let arch = self.model.arch();
        if arch != Arch::Lstm {
            let j = arch.kinds().iter().position(|&k| k == kind);
            let j = j.unwrap_or_else(|| panic!("a {arch} model records {}, not {kind:?}", arch.kind_list()));
            return self.rows[layer][j][cell];
        }
        let out = &self.outs[layer];
        let row = match kind {
            Kind::Hidden => &out.h,
            Kind::Cell => &out.c,
            Kind::Input => &out.i,
            Kind::Forget => &out.f,
            Kind::Candidate => &out.g,
            Kind::Output => &out.o,
            Kind::Write => return out.i[cell] * out.g[cell],
            Kind::Keep => return out.f[cell] * self.c_prev[layer][cell],
            Kind::Reset | Kind::Update | Kind::New => panic!("an LSTM records no {kind:?}"),
        };
        row[cell]
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.t
    }
}

/// What both sides of [`Stepper::lstm_shared`] reach: the step's buffers.
struct StepBuffers {
    table_row: *const f32,
    x_proj: *mut f32,
    outs: *mut LayerOut,
    h: Vec<*mut f32>,
    c: Vec<*mut f32>,
    c_prev: Vec<*mut f32>,
}

/// y = W x for a row-major W (rows = y.len(), cols = x.len()), on the widest
/// SIMD the CPU has (as `kernel::softmax_rows` picks it): the decoder, V × H,
/// small enough to stay in L2, and the GRU's and RNN's per-step products. (The
/// LSTM's 4H × H input projections of layers ≥ 1 use [`kernel::packed_matvec`],
/// which streams like the recurrence.)
pub(super) fn matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(w.len(), x.len() * y.len());
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        fn wide(w: &[f32], x: &[f32], y: &mut [f32]) {
            matvec_lanes::<true>(w, x, y)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(w: &[f32], x: &[f32], y: &mut [f32]) {
            matvec_lanes::<true>(w, x, y)
        }
        match kernel::simd() {
            // SAFETY: `simd()` only reports features this CPU has (AVX-512F CPUs have FMA).
            kernel::Simd::Avx512 => return unsafe { wide(w, x, y) },
            kernel::Simd::Avx2 => return unsafe { avx2(w, x, y) },
            kernel::Simd::Portable => {}
        }
    }
    matvec_lanes::<false>(w, x, y)
}

/// Sixteen partial sums per row keep the multiply-adds independent so LLVM
/// vectorises them; with `FMA` each is one fused multiply-add (only where the CPU
/// has it: elsewhere `mul_add` would be a slow library call).
#[inline(always)]
fn matvec_lanes<const FMA: bool>(w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
        let mut acc = [0f32; 16];
        let mut wc = row.chunks_exact(16);
        let mut xc = x.chunks_exact(16);
        for (a, b) in (&mut wc).zip(&mut xc) {
            for l in 0..16 {
                acc[l] = if FMA { a[l].mul_add(b[l], acc[l]) } else { a[l] * b[l] + acc[l] };
            }
        }
        let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
        *yr = acc.iter().sum::<f32>() + tail;
    }
}

/// How to draw characters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = always the likeliest character (greedy); otherwise p^(1/T), renormalised.
    pub temperature: f32,
    /// Draw among the `top_k` likeliest characters only (0 = all).
    pub top_k: usize,
    pub seed: u64,
}

/// Generates up to `length` characters after `prime` (from the zero state; an
/// empty prime starts from a newline, or the vocabulary's first character),
/// calling `on_char(c, stepper)` after each generated character has been fed
/// back, so a caller can read the state it produced; return `false` to stop.
/// Clamps hold from the first character of the prime on (their `from`/`to`
/// count steps from there). The same inputs give the same text.
pub fn sample(
    model: &Model,
    prime: &str,
    length: usize,
    how: Sampling,
    clamps: &[Clamp],
    on_char: impl FnMut(char, &Stepper) -> bool,
) {
    sample_on(model, prime, length, how, clamps, 1, on_char)
}

/// [`sample`] on up to `threads` threads: with two or more, an LSTM of at least
/// [`SHARED_MIN_HIDDEN`] units per layer computes half of every layer's units of
/// each step on a helper thread ([`Stepper::step_on`]). The same text and values
/// on any number.
pub fn sample_on(
    model: &Model,
    prime: &str,
    length: usize,
    how: Sampling,
    clamps: &[Clamp],
    threads: usize,
    on_char: impl FnMut(char, &Stepper) -> bool,
) {
    if threads >= 2 && model.arch() == Arch::Lstm && model.hidden_size() >= SHARED_MIN_HIDDEN {
        Pair::with(|pair| sample_with(model, prime, length, how, clamps, Some(pair), on_char))
    } else {
        sample_with(model, prime, length, how, clamps, None, on_char)
    }
}

fn sample_with(
    model: &Model,
    prime: &str,
    length: usize,
    how: Sampling,
    clamps: &[Clamp],
    pair: Option<&Pair>,
    mut on_char: impl FnMut(char, &Stepper) -> bool,
) {
    let mut rng = Rng::new(how.seed);
    let mut stepper = Stepper::new(model, model.zero_state());
    let start: Vec<char> = if prime.is_empty() {
        vec![if model.vocab.id('\n').is_some() { '\n' } else { model.vocab.chars()[0] }]
    } else {
        prime.chars().collect()
    };
    for &c in &start {
        stepper.step_on(model.vocab.id(c), clamps, pair);
    }
    let v = model.vocab.len();
    let mut weights = vec![0f32; v];
    let mut order: Vec<usize> = (0..v).collect();
    for _ in 0..length {
        let probs = stepper.probs();
        let id = if how.temperature <= 0.0 {
            probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i)
        } else {
            let logs = probs.iter().map(|p| p.max(1e-30).ln() / how.temperature);
            for (w, l) in weights.iter_mut().zip(logs) {
                *w = l;
            }
            if how.top_k > 0 && how.top_k < v {
                order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
                for &i in &order[how.top_k..] {
                    weights[i] = f32::NEG_INFINITY;
                }
            }
            let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for w in weights.iter_mut() {
                *w = (*w - max).exp();
            }
            rng.categorical(&weights)
        };
        let c = model.vocab.chars()[id];
        stepper.step_on(Some(id as u32), clamps, pair);
        if !on_char(c, &stepper) {
            break;
        }
    }
}
