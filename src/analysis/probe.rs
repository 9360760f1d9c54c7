//! Concept directions: a sparse L1-regularised logistic probe over many cells at once.
//!
//! A single cell rarely carries a concept alone; a weighted sum of a few cells often tracks
//! it better. The probe's score at character t is
//!
//! `s_t = b + Σ_j w_j · (x_tj − μ_j) / σ_j`
//!
//! with `x_tj` the raw value of column (cell) j, `μ_j`, `σ_j` its mean and standard deviation
//! over the training characters. `(b, w)` minimise the penalised logistic loss
//!
//! `L(b, w) = (1/n) Σ_t [ln(1 + e^{s_t}) − y_t·s_t] + λ·‖w‖₁`
//!
//! on standardized columns, so one λ treats every cell alike, whatever its scale.
//!
//! # Fit
//!
//! Coordinate descent on the quadratic (IRLS) approximation, as in glmnet (Friedman, Hastie &
//! Tibshirani 2010): with `p_t = σ(s_t)`, `v_t = p_t(1 − p_t)` and the working residual
//! `r_t = y_t − p_t`, one coordinate step is
//!
//! `w_j ← S((1/n)·Σ_t z_tj·r_t + a_j·w_j, λ) / a_j`,  `a_j = (1/n)·Σ_t v_t·z_tj²`
//!
//! (`S(g, λ) = sign(g)·max(|g| − λ, 0)`, `z` the standardized column), after which
//! `r_t −= v_t·z_tj·Δw_j`. Sweeps run over a working set (the cells already in the fit plus
//! the sequential strong rule's candidates, `|∇_j| ≥ 2λ_k − λ_{k−1}`); a full gradient pass
//! then checks the KKT conditions `|(1/n)·Σ_t z_tj·(y_t − p_t)| ≤ λ` for every other cell and
//! adds any that violate them.
//!
//! # Choosing λ
//!
//! A path of [`PATH_STEPS`] strengths from `λ_max = max_j |(1/n)·Σ_t z_tj·(y_t − ȳ)|` (where
//! no cell enters) down to `λ_max · PATH_MIN_RATIO`, each fit warm-started from the one
//! before. Every fit is scored by its AUC on held-out characters; the answer is the
//! **sparsest fit within [`AUC_SLACK`] of the best held-out AUC** among fits with at most
//! `max_cells` cells. The path stops once a fit has more than `max_cells` cells, or after
//! [`PATIENCE`] steps without a better held-out AUC. With an explicit λ the path runs down to
//! it and the fit at λ is the answer.
//!
//! # Held-out split
//!
//! Neighbouring characters share most of their state, so a random split would leak. The text
//! is cut into [`BLOCKS`] equal contiguous blocks; the 3rd and the 8th are held out, and a
//! guard of up to [`GUARD`] characters on each side of them is used by neither part.
//!
//! Everything is single-threaded and in a fixed order, so the same input gives the same fit.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::auc;

/// The text is cut into this many contiguous blocks for the held-out split.
pub(crate) const BLOCKS: usize = 10;
/// The blocks held out (0-based): the 3rd and the 8th, so both have text on each side.
pub(crate) const HELDOUT_BLOCKS: [usize; 2] = [2, 7];
/// Characters between a held-out block and the training characters, used by neither.
pub(crate) const GUARD: usize = 50;
/// Fewest characters a probe is fitted on: each held-out block then has at least 20.
pub(crate) const MIN_CHARS: usize = 200;
/// Largest number of values (columns × characters) one fit may hold: 2 layers × 512 cells ×
/// h and c over 20,000 characters, 164 MB of `f32`.
pub(crate) const MAX_VALUES: usize = 2048 * 20_000;
/// Most cells a probe may keep.
pub(crate) const MAX_CELLS: usize = 512;
/// Cells a probe keeps at most unless asked otherwise.
pub(crate) const DEFAULT_MAX_CELLS: usize = 64;
/// Strengths on the path, `λ_max` down to `λ_max · PATH_MIN_RATIO`, evenly spaced in log.
pub(crate) const PATH_STEPS: usize = 40;
/// The weakest strength on the path, relative to `λ_max`.
pub(crate) const PATH_MIN_RATIO: f64 = 1e-3;
/// The chosen fit is the sparsest whose held-out AUC is within this of the best.
pub(crate) const AUC_SLACK: f64 = 0.005;
/// The path stops after this many steps without a better held-out AUC.
pub(crate) const PATIENCE: usize = 8;

/// Coordinate descent stops when no coefficient moved the score by more than this (in
/// logits, root-mean-square over the training characters).
const TOLERANCE: f64 = 1e-3;
/// IRLS rounds per strength, and sweeps per round: bounds the work whatever the data.
const MAX_ROUNDS: usize = 30;
const MAX_SWEEPS: usize = 50;
/// Halvings (in log λ) looking for the weakest strength within `max_cells`.
const BISECTIONS: usize = 10;
/// Floor of the IRLS weights `p(1 − p)`, so a confidently fitted character still counts.
const MIN_WEIGHT: f32 = 1e-5;

/// What can go wrong fitting a probe: all of it is bad input from the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// Labels and activations describe different numbers of characters.
    #[error("labels cover {labels} characters but the activations have {rows} rows")]
    LabelLength {
        /// Number of labels.
        labels: usize,
        /// Number of activation rows.
        rows: usize,
    },
    /// Column blocks of different heights.
    #[error("activation blocks have different numbers of rows ({0} and {1})")]
    RaggedBlocks(usize, usize),
    /// The concept never holds.
    #[error("the concept never holds in these {len} characters; choose text where it occurs")]
    NoPositives {
        /// Characters labelled.
        len: usize,
    },
    /// The concept holds everywhere.
    #[error("the concept holds at all {len} characters; choose text where it also does not hold")]
    NoNegatives {
        /// Characters labelled.
        len: usize,
    },
    /// Too few characters to hold some out.
    #[error(
        "the text has {len} characters; a probe needs at least {min} (a fifth of them is held \
         out to choose the fit); give a longer text"
    )]
    TooShort {
        /// Characters given.
        len: usize,
        /// The minimum, [`MIN_CHARS`].
        min: usize,
    },
    /// One side of the split lacks a class.
    #[error(
        "the {part} characters ({ranges}) contain no {missing} characters, so the probe could \
         not be {purpose}; give a longer text where the concept occurs (and does not) throughout"
    )]
    OneClass {
        /// `"held-out"` or `"training"`.
        part: &'static str,
        /// The part's character ranges, for the message.
        ranges: String,
        /// `"positive"` or `"negative"`.
        missing: &'static str,
        /// `"checked"` or `"fitted"`.
        purpose: &'static str,
    },
    /// The L1 strength is negative, NaN or infinite.
    #[error("l1 must be a finite number >= 0 (got {0})")]
    BadL1(f64),
    /// `max_cells` outside `1..=MAX_CELLS`.
    #[error("max_cells must be 1..={max} (got {got})")]
    BadMaxCells {
        /// The value given.
        got: usize,
        /// [`MAX_CELLS`].
        max: usize,
    },
    /// An explicit λ keeps more cells than allowed.
    #[error("l1 {l1} keeps at least {cells} cells, over max_cells {max}; raise l1 or max_cells, or leave l1 out")]
    TooManyCells {
        /// The strength asked for.
        l1: f64,
        /// Cells kept at that strength (or at a stronger one on the way, a lower bound).
        cells: usize,
        /// The cap.
        max: usize,
    },
    /// More values than one fit may hold.
    #[error(
        "{columns} cells × {rows} characters is {values} values, over the {max} one probe may \
         fit; ask for fewer layers or kinds, or give a shorter text"
    )]
    TooLarge {
        /// Columns asked for.
        columns: usize,
        /// Characters.
        rows: usize,
        /// Their product.
        values: usize,
        /// [`MAX_VALUES`].
        max: usize,
    },
}

/// How to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProbeOptions {
    /// The L1 strength λ; `None` chooses it on held-out characters.
    pub l1: Option<f64>,
    /// Most cells the answer may keep.
    pub max_cells: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self { l1: None, max_cells: DEFAULT_MAX_CELLS }
    }
}

impl ProbeOptions {
    /// Checks λ and the cap.
    pub fn check(&self) -> Result<(), ProbeError> {
        if let Some(l1) = self.l1 {
            if !l1.is_finite() || l1 < 0.0 {
                return Err(ProbeError::BadL1(l1));
            }
        }
        if !(1..=MAX_CELLS).contains(&self.max_cells) {
            return Err(ProbeError::BadMaxCells { got: self.max_cells, max: MAX_CELLS });
        }
        Ok(())
    }
}

/// One column the probe keeps: `weight · (x − mean) / std` enters the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct ColumnWeight {
    /// Index of the column (cell) across all blocks, left to right.
    pub column: usize,
    /// Weight on the standardized value; positive: higher inside the concept.
    pub weight: f64,
    /// Mean of the raw value over the training characters.
    pub mean: f64,
    /// Its standard deviation there (> 0).
    pub std: f64,
}

/// The best single column, chosen on the training characters, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct BestColumn {
    /// Index of the column across all blocks.
    pub column: usize,
    /// +1 if higher inside the concept on the training characters, −1 if lower.
    pub sign: i8,
    /// `max(AUC, 1 − AUC)` on the training characters.
    pub auc_train: f64,
    /// AUC on the held-out characters, taken in the training direction (below ½ if it flips).
    pub auc_heldout: f64,
}

/// One fit on the path of strengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PathPoint {
    /// λ.
    pub l1: f64,
    /// Columns with a nonzero weight.
    pub cells: usize,
    /// AUC on the held-out characters.
    pub auc_heldout: f64,
}

/// Which characters trained the probe and which checked it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// Characters split.
    pub chars: usize,
    /// Contiguous blocks the text was cut into.
    pub blocks: usize,
    /// Character ranges `[start, end)` held out.
    pub heldout: Vec<(usize, usize)>,
    /// Characters left out on each side of a held-out block.
    pub guard: usize,
    /// Characters the fit saw.
    pub train_chars: usize,
    /// Characters it was checked on.
    pub heldout_chars: usize,
}

impl Split {
    /// The split of a text of `len` characters (`len ≥ MIN_CHARS`).
    pub fn of(len: usize) -> Self {
        let bound = |k: usize| k * len / BLOCKS;
        let heldout: Vec<(usize, usize)> = HELDOUT_BLOCKS.iter().map(|&k| (bound(k), bound(k + 1))).collect();
        let guard = GUARD.min(len / 100);
        let heldout_chars = heldout.iter().map(|(a, b)| b - a).sum();
        let mut split = Self { chars: len, blocks: BLOCKS, heldout, guard, train_chars: 0, heldout_chars };
        split.train_chars = (0..len).filter(|&t| split.is_train(t)).count();
        split
    }

    fn is_heldout(&self, t: usize) -> bool {
        self.heldout.iter().any(|&(a, b)| (a..b).contains(&t))
    }

    fn is_train(&self, t: usize) -> bool {
        self.heldout.iter().all(|&(a, b)| t + self.guard < a || t >= b + self.guard)
    }

    /// Rows in fitting order: the training characters, then the held-out ones.
    fn order(&self, len: usize) -> Vec<usize> {
        let train = (0..len).filter(|&t| self.is_train(t));
        train.chain((0..len).filter(|&t| self.is_heldout(t))).collect()
    }

    fn describe_train(&self, len: usize) -> String {
        let mut edges = vec![0];
        for &(a, b) in &self.heldout {
            edges.push(a.saturating_sub(self.guard));
            edges.push((b + self.guard).min(len));
        }
        edges.push(len);
        edges.chunks(2).filter(|p| p[0] < p[1]).map(|p| format!("{}..{}", p[0], p[1])).collect::<Vec<_>>().join(", ")
    }

    fn describe_heldout(&self) -> String {
        self.heldout.iter().map(|(a, b)| format!("{a}..{b}")).collect::<Vec<_>>().join(", ")
    }
}

/// A fitted probe over plain columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProbeFit {
    /// The columns kept, largest |weight| first (ties by column).
    pub weights: Vec<ColumnWeight>,
    /// The intercept b.
    pub bias: f64,
    /// The chosen λ.
    pub l1: f64,
    /// The weakest λ at which no column enters.
    pub l1_max: f64,
    /// AUC of the score on the training characters.
    pub auc_train: f64,
    /// AUC of the score on the held-out characters.
    pub auc_heldout: f64,
    /// The best single column, for comparison.
    pub best_column: BestColumn,
    /// Every fit tried, strongest λ first.
    pub path: Vec<PathPoint>,
    /// Which characters trained and which checked.
    pub split: Split,
}

/// Fits a sparse logistic probe of `labels` on the columns of `blocks` (each `T × n_k`, one
/// row per character; their columns are numbered left to right across blocks).
pub(crate) fn fit(blocks: &[ArrayView2<f32>], labels: &[bool], options: ProbeOptions) -> Result<ProbeFit, ProbeError> {
    options.check()?;
    let len = labels.len();
    let rows = blocks.first().map_or(len, |b| b.nrows());
    if let Some(b) = blocks.iter().find(|b| b.nrows() != rows) {
        return Err(ProbeError::RaggedBlocks(rows, b.nrows()));
    }
    if rows != len {
        return Err(ProbeError::LabelLength { labels: len, rows });
    }
    let columns: usize = blocks.iter().map(|b| b.ncols()).sum();
    check_size(columns, len)?;
    let split = check_labels(labels)?;
    let order = split.order(len);
    let y: Vec<bool> = order.iter().map(|&t| labels[t]).collect();
    let n_train = split.train_chars;
    let data = Standardized::new(blocks, &order, n_train);
    let best_column = data.best_column(&y);
    let mut fit = Path::new(&data, &y).run(options)?;
    fit.weights.sort_by(|a, b| b.weight.abs().total_cmp(&a.weight.abs()).then(a.column.cmp(&b.column)));
    Ok(ProbeFit {
        weights: fit.weights,
        bias: fit.bias,
        l1: fit.l1,
        l1_max: fit.l1_max,
        auc_train: fit.auc_train,
        auc_heldout: fit.auc_heldout,
        best_column,
        path: fit.path,
        split,
    })
}

/// Checks that `labels` can train and check a probe (enough characters, both classes in the
/// training and in the held-out part) and answers the split, before any work.
pub(crate) fn check_labels(labels: &[bool]) -> Result<Split, ProbeError> {
    let len = labels.len();
    let positives = labels.iter().filter(|&&y| y).count();
    if positives == 0 {
        return Err(ProbeError::NoPositives { len });
    }
    if positives == len {
        return Err(ProbeError::NoNegatives { len });
    }
    if len < MIN_CHARS {
        return Err(ProbeError::TooShort { len, min: MIN_CHARS });
    }
    let split = Split::of(len);
    let part = |keep: &dyn Fn(usize) -> bool| {
        let ys = (0..len).filter(|&t| keep(t)).map(|t| labels[t]);
        ys.fold((0usize, 0usize), |(p, n), y| if y { (p + 1, n) } else { (p, n + 1) })
    };
    for (part, (pos, neg), ranges, purpose) in [
        ("training", part(&|t| split.is_train(t)), split.describe_train(len), "fitted"),
        ("held-out", part(&|t| split.is_heldout(t)), split.describe_heldout(), "checked"),
    ] {
        if pos == 0 || neg == 0 {
            let missing = if pos == 0 { "positive" } else { "negative" };
            return Err(ProbeError::OneClass { part, ranges, missing, purpose });
        }
    }
    Ok(split)
}

/// Refuses a fit over more than [`MAX_VALUES`] values, before any work.
pub(crate) fn check_size(columns: usize, rows: usize) -> Result<(), ProbeError> {
    let values = columns.saturating_mul(rows);
    if values > MAX_VALUES {
        return Err(ProbeError::TooLarge { columns, rows, values, max: MAX_VALUES });
    }
    Ok(())
}

/// The probe's score at every row: `bias + Σ w·(x − mean)/std` over the raw values, where
/// `value(column, row)` reads the raw value.
pub(crate) fn score_rows(
    rows: usize,
    weights: &[ColumnWeight],
    bias: f64,
    value: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut scores = vec![bias; rows];
    for w in weights {
        let scale = w.weight / w.std;
        for (t, s) in scores.iter_mut().enumerate() {
            *s += scale * (f64::from(value(w.column, t)) - w.mean);
        }
    }
    scores.into_iter().map(|s| s as f32).collect()
}

/// The columns standardized over the training rows, column-major, rows in fitting order
/// (training rows first).
struct Standardized {
    /// `columns × n` values.
    z: Vec<f32>,
    n: usize,
    n_train: usize,
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardized {
    fn new(blocks: &[ArrayView2<f32>], order: &[usize], n_train: usize) -> Self {
        let n = order.len();
        let columns: usize = blocks.iter().map(|b| b.ncols()).sum();
        let mut z = vec![0.0f32; columns * n];
        // Gather in tiles of rows: the tile's source rows stay in cache while each column's
        // part of the tile is written contiguously.
        const TILE: usize = 64;
        let mut first = 0;
        for b in blocks {
            for (tile_no, tile) in order.chunks(TILE).enumerate() {
                let pos = tile_no * TILE;
                for c in 0..b.ncols() {
                    let dst = &mut z[(first + c) * n + pos..][..tile.len()];
                    for (d, &t) in dst.iter_mut().zip(tile) {
                        *d = b[(t, c)];
                    }
                }
            }
            first += b.ncols();
        }
        let mut mean = vec![0.0; columns];
        let mut std = vec![1.0; columns];
        for j in 0..columns {
            let col = &mut z[j * n..(j + 1) * n];
            let train = &col[..n_train];
            if train.iter().any(|v| !v.is_finite()) {
                // No evidence either way: a column with NaN or ±∞ never enters.
                col.fill(0.0);
                continue;
            }
            let m = train.iter().map(|&v| f64::from(v)).sum::<f64>() / n_train as f64;
            let var = train.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n_train as f64;
            let s = var.sqrt();
            mean[j] = m;
            if s > 1e-12 && col.iter().all(|v| v.is_finite()) {
                std[j] = s;
                for v in col.iter_mut() {
                    *v = ((f64::from(*v) - m) / s) as f32;
                }
            } else {
                col.fill(0.0);
            }
        }
        Self { z, n, n_train, mean, std }
    }

    fn columns(&self) -> usize {
        self.mean.len()
    }

    fn col(&self, j: usize) -> &[f32] {
        &self.z[j * self.n..(j + 1) * self.n]
    }

    fn train(&self, j: usize) -> &[f32] {
        &self.col(j)[..self.n_train]
    }

    fn heldout(&self, j: usize) -> &[f32] {
        &self.col(j)[self.n_train..]
    }

    /// The column with the best training AUC (ties: lowest index), and its held-out AUC.
    fn best_column(&self, y: &[bool]) -> BestColumn {
        let (train_y, held_y) = y.split_at(self.n_train);
        let mut best: (usize, f64) = (0, 0.5);
        for j in 0..self.columns() {
            let a = auc(self.train(j), train_y).unwrap_or(0.5);
            if a.max(1.0 - a) > best.1.max(1.0 - best.1) {
                best = (j, a);
            }
        }
        let (column, raw) = best;
        let held = auc(self.heldout(column), held_y).unwrap_or(0.5);
        let sign: i8 = if raw < 0.5 { -1 } else { 1 };
        BestColumn {
            column,
            sign,
            auc_train: raw.max(1.0 - raw),
            auc_heldout: if sign < 0 { 1.0 - held } else { held },
        }
    }
}

/// `Σ a·b` in `f32` over 16 independent lanes (so the compiler vectorises it), summed in `f64`.
/// The lanes fix the order of the additions, so every instruction set gives the same bits.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f64 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f64::from(x * y)).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// `r −= d·v·x`: the residuals after a coordinate moved by `d`.
fn update_residuals(r: &mut [f32], v: &[f32], x: &[f32], d: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { update_avx2(r, v, x, d) };
    }
    update_lanes(r, v, x, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(r: &mut [f32], v: &[f32], x: &[f32], d: f32) {
    update_lanes(r, v, x, d)
}

#[inline(always)]
fn update_lanes(r: &mut [f32], v: &[f32], x: &[f32], d: f32) {
    for ((r, &v), &x) in r.iter_mut().zip(v).zip(x) {
        *r -= v * x * d;
    }
}

/// `Σ v·a²`, like [`dot`] (once per column and IRLS round, so not worth a second kernel).
fn weighted_square(v: &[f32], a: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let (cv, ca) = (v.chunks_exact(16), a.chunks_exact(16));
    let tail: f64 = cv.remainder().iter().zip(ca.remainder()).map(|(&w, &x)| f64::from(w * x * x)).sum();
    for (w, x) in cv.zip(ca) {
        for k in 0..16 {
            lanes[k] += w[k] * x[k] * x[k];
        }
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

fn soft_threshold(g: f64, l1: f64) -> f64 {
    if g > l1 {
        g - l1
    } else if g < -l1 {
        g + l1
    } else {
        0.0
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The fit chosen on the path, before sorting.
struct Chosen {
    weights: Vec<ColumnWeight>,
    bias: f64,
    l1: f64,
    l1_max: f64,
    auc_train: f64,
    auc_heldout: f64,
    path: Vec<PathPoint>,
}

/// Coordinate descent along the path, with its reusable buffers.
struct Path<'a> {
    data: &'a Standardized,
    y: &'a [bool],
    /// Weights on the standardized columns and the intercept.
    w: Vec<f64>,
    b: f64,
    /// Score at each training row.
    eta: Vec<f32>,
    /// IRLS weights and working residuals at each training row.
    v: Vec<f32>,
    r: Vec<f32>,
    /// `(1/n)·Σ z·(y − p)` at the last full check, per column.
    grad: Vec<f64>,
}

impl<'a> Path<'a> {
    fn new(data: &'a Standardized, y: &'a [bool]) -> Self {
        let n = data.n_train;
        let p = data.columns();
        let rate = y[..n].iter().filter(|&&v| v).count() as f64 / n as f64;
        let b = (rate / (1.0 - rate)).ln();
        Self {
            data,
            y,
            w: vec![0.0; p],
            b,
            eta: vec![b as f32; n],
            v: vec![0.0; n],
            r: vec![0.0; n],
            grad: vec![0.0; p],
        }
    }

    fn run(mut self, options: ProbeOptions) -> Result<Chosen, ProbeError> {
        self.residuals();
        self.full_gradient();
        let l1_max = self.grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let mut grid: Vec<f64> =
            (1..PATH_STEPS).map(|k| l1_max * PATH_MIN_RATIO.powf(k as f64 / (PATH_STEPS - 1) as f64)).collect();
        if let Some(l1) = options.l1 {
            grid.retain(|&g| g > l1);
            grid.push(l1);
        }
        let mut path = Vec::new();
        let mut fits = Vec::new();
        let mut previous = l1_max;
        let mut best = f64::NEG_INFINITY;
        let mut since_best = 0;
        for &l1 in &grid {
            self.solve(l1, previous);
            previous = l1;
            let cells = self.cells();
            if cells > options.max_cells {
                if let Some(l1) = options.l1 {
                    // Weaker strengths keep more cells, so the fit at l1 would too.
                    return Err(ProbeError::TooManyCells { l1, cells, max: options.max_cells });
                }
                // The step overshot the cap: look between it and the last fit within the cap
                // for the weakest strength that keeps at most max_cells.
                let (mut lo, mut hi) = (l1, path.last().map_or(l1_max, |p: &PathPoint| p.l1));
                let mut within = None;
                for _ in 0..BISECTIONS {
                    let mid = (lo * hi).sqrt();
                    self.solve(mid, previous);
                    previous = mid;
                    if self.cells() > options.max_cells {
                        lo = mid;
                    } else {
                        hi = mid;
                        within = Some(self.record(mid));
                    }
                }
                if let Some((point, fit)) = within.filter(|(p, _)| p.cells > 0) {
                    path.push(point);
                    fits.push(fit);
                }
                break;
            }
            let (point, fit) = self.record(l1);
            path.push(point);
            fits.push(fit);
            if point.auc_heldout > best + 1e-4 {
                best = point.auc_heldout;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= PATIENCE && options.l1.is_none() {
                    break;
                }
            }
        }
        if path.is_empty() {
            // Every step overshot and no strength between kept a cell: the intercept alone.
            self.solve(l1_max, l1_max);
            let (point, fit) = self.record(l1_max);
            path.push(point);
            fits.push(fit);
        }
        // With an explicit λ the last fit is the answer; otherwise the sparsest near the best.
        let chosen = match options.l1 {
            Some(_) => path.len() - 1,
            None => {
                let top = path.iter().filter(|p| p.cells > 0).map(|p| p.auc_heldout).fold(f64::NEG_INFINITY, f64::max);
                path.iter().position(|p| p.cells > 0 && p.auc_heldout >= top - AUC_SLACK).unwrap_or(path.len() - 1)
            }
        };
        let (weights, bias, auc_train) = fits.swap_remove(chosen);
        Ok(Chosen {
            weights,
            bias,
            l1: path[chosen].l1,
            l1_max,
            auc_train,
            auc_heldout: path[chosen].auc_heldout,
            path,
        })
    }

    fn cells(&self) -> usize {
        self.w.iter().filter(|&&w| w != 0.0).count()
    }

    /// The current fit as a point on the path, and what the answer needs of it.
    fn record(&self, l1: f64) -> (PathPoint, (Vec<ColumnWeight>, f64, f64)) {
        let point = PathPoint { l1, cells: self.cells(), auc_heldout: self.heldout_auc() };
        (point, (self.kept(), self.b, self.train_auc()))
    }

    /// The nonzero weights with their columns' scale.
    fn kept(&self) -> Vec<ColumnWeight> {
        (0..self.w.len())
            .filter(|&j| self.w[j] != 0.0)
            .map(|j| ColumnWeight { column: j, weight: self.w[j], mean: self.data.mean[j], std: self.data.std[j] })
            .collect()
    }

    /// `v = max(p(1 − p), floor)` and `r = y − p` from the current scores.
    fn residuals(&mut self) {
        for ((&e, (v, r)), &y) in self.eta.iter().zip(self.v.iter_mut().zip(self.r.iter_mut())).zip(self.y) {
            let p = sigmoid(e);
            *v = (p * (1.0 - p)).max(MIN_WEIGHT);
            *r = f32::from(u8::from(y)) - p;
        }
    }

    /// `(1/n)·Σ z·r` for every column (`r = y − p` must be current).
    fn full_gradient(&mut self) {
        let n = self.data.n_train as f64;
        for j in 0..self.grad.len() {
            self.grad[j] = dot(self.data.train(j), &self.r) / n;
        }
    }

    /// Fits at strength `l1`, warm-started; `previous` is the strength fitted before.
    fn solve(&mut self, l1: f64, previous: f64) {
        let p = self.w.len();
        let n = self.data.n_train as f64;
        let strong = 2.0 * l1 - previous;
        let mut working: Vec<usize> = (0..p).filter(|&j| self.w[j] != 0.0 || self.grad[j].abs() >= strong).collect();
        for _ in 0..MAX_ROUNDS {
            // One IRLS round: the quadratic model at the current scores, minimised by sweeps
            // over the working set.
            self.residuals();
            let scale: Vec<f64> = working.iter().map(|&j| weighted_square(&self.v, self.data.train(j)) / n).collect();
            let sum_v: f64 = self.v.iter().map(|&v| f64::from(v)).sum();
            let mut round_change = 0.0f64;
            for _ in 0..MAX_SWEEPS {
                let mut change = 0.0f64;
                let db = self.r.iter().map(|&r| f64::from(r)).sum::<f64>() / sum_v;
                if db != 0.0 {
                    self.b += db;
                    let d = db as f32;
                    for (r, &v) in self.r.iter_mut().zip(&self.v) {
                        *r -= v * d;
                    }
                    change = change.max(db.abs() * (sum_v / n).sqrt());
                }
                for (&j, &a) in working.iter().zip(&scale) {
                    if a <= 1e-12 {
                        continue;
                    }
                    let z = self.data.train(j);
                    let old = self.w[j];
                    let g = dot(z, &self.r) / n + a * old;
                    let new = soft_threshold(g, l1) / a;
                    if new != old {
                        update_residuals(&mut self.r, &self.v, z, (new - old) as f32);
                        self.w[j] = new;
                        change = change.max((new - old).abs() * a.sqrt());
                    }
                }
                round_change = round_change.max(change);
                if change < TOLERANCE {
                    break;
                }
            }
            self.update_scores();
            self.residuals();
            if round_change < TOLERANCE {
                // Converged on the working set: check every other column.
                self.full_gradient();
                let violators: Vec<usize> =
                    (0..p).filter(|&j| self.w[j] == 0.0 && self.grad[j].abs() > l1 * (1.0 + 1e-9)).collect();
                let fresh: Vec<usize> = violators.into_iter().filter(|j| !working.contains(j)).collect();
                if fresh.is_empty() {
                    return;
                }
                working.extend(fresh);
                working.sort_unstable();
            }
        }
        self.full_gradient();
    }

    /// Recomputes the training scores from the weights.
    fn update_scores(&mut self) {
        self.eta.fill(self.b as f32);
        for (j, &w) in self.w.iter().enumerate() {
            if w != 0.0 {
                let w = w as f32;
                for (e, &x) in self.eta.iter_mut().zip(self.data.train(j)) {
                    *e += w * x;
                }
            }
        }
    }

    fn train_auc(&self) -> f64 {
        auc(&self.eta, &self.y[..self.data.n_train]).unwrap_or(0.5)
    }

    fn heldout_auc(&self) -> f64 {
        let n_held = self.data.n - self.data.n_train;
        let mut s = vec![self.b as f32; n_held];
        for (j, &w) in self.w.iter().enumerate() {
            if w != 0.0 {
                let w = w as f32;
                for (e, &x) in s.iter_mut().zip(self.data.heldout(j)) {
                    *e += w * x;
                }
            }
        }
        auc(&s, &self.y[self.data.n_train..]).unwrap_or(0.5)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;
    use crate::rng::Rng;

    /// A concept that switches on and off in runs of 5–40 characters, and `cols` columns
    /// of noise of assorted scales, except columns 3, 17 and 40 which carry the concept
    /// (17 with the opposite sign), each too noisy to track it alone.
    fn three_cell_data(rows: usize, cols: usize, seed: u64) -> (Array2<f32>, Vec<bool>) {
        let mut rng = Rng::new(seed);
        let mut labels = Vec::with_capacity(rows);
        let mut on = false;
        while labels.len() < rows {
            let run = 5 + rng.below(36) as usize;
            labels.extend(std::iter::repeat_n(on, run.min(rows - labels.len())));
            on = !on;
        }
        let normal = |rng: &mut Rng| {
            let (u, v) = (f64::from(rng.uniform()).max(1e-12), f64::from(rng.uniform()));
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        };
        let m = Array2::from_shape_fn((rows, cols), |(t, j)| {
            let scale = 1.0 + (j % 7) as f32;
            let y = if labels[t] { 1.0 } else { -1.0 };
            let signal = match j {
                3 => 0.9 * y,
                17 => -0.9 * y,
                40 => 0.9 * y,
                _ => 0.0,
            };
            scale * (signal + normal(&mut rng)) + j as f32
        });
        (m, labels)
    }

    #[test]
    fn finds_exactly_the_three_carrier_columns() {
        let (m, labels) = three_cell_data(6000, 60, 7);
        let fit = fit(&[m.view()], &labels, ProbeOptions::default()).expect("a valid fit");
        let mut cols: Vec<(usize, bool)> = fit.weights.iter().map(|w| (w.column, w.weight > 0.0)).collect();
        cols.sort_unstable();
        assert_eq!(cols, vec![(3, true), (17, false), (40, true)], "fit: {:?}", fit.weights);
        assert!(fit.auc_heldout > 0.97, "held-out AUC {}", fit.auc_heldout);
        assert!(fit.auc_heldout > fit.best_column.auc_heldout + 0.03, "{fit:?}");
        assert!([3, 17, 40].contains(&fit.best_column.column), "{:?}", fit.best_column);
        // Means and stds are of the raw columns (scale 1 + j mod 7, offset j) on training rows.
        let w3 = fit.weights.iter().find(|w| w.column == 3).expect("column 3");
        assert!((w3.mean - 3.0).abs() < 0.2 && (w3.std - 4.0 * (1.0f64 + 0.81).sqrt()).abs() < 0.3, "{w3:?}");
    }

    #[test]
    fn same_input_same_fit() {
        let (m, labels) = three_cell_data(3000, 40, 11);
        let a = fit(&[m.view()], &labels, ProbeOptions::default()).expect("fit");
        let b = fit(&[m.view()], &labels, ProbeOptions::default()).expect("fit");
        assert_eq!(a, b);
    }

    #[test]
    fn blocks_number_columns_left_to_right() {
        let (m, labels) = three_cell_data(3000, 60, 5);
        let (left, right) = m.view().split_at(ndarray::Axis(1), 20);
        let whole = fit(&[m.view()], &labels, ProbeOptions::default()).expect("fit");
        let split = fit(&[left, right], &labels, ProbeOptions::default()).expect("fit");
        assert_eq!(whole, split);
    }

    #[test]
    fn scores_use_raw_values() {
        let (m, labels) = three_cell_data(3000, 60, 5);
        let fit = fit(&[m.view()], &labels, ProbeOptions::default()).expect("fit");
        let scores = score_rows(m.nrows(), &fit.weights, fit.bias, |j, t| m[(t, j)]);
        let heldout: Vec<usize> = fit.split.heldout.iter().flat_map(|&(a, b)| a..b).collect();
        let s: Vec<f32> = heldout.iter().map(|&t| scores[t]).collect();
        let y: Vec<bool> = heldout.iter().map(|&t| labels[t]).collect();
        let a = auc(&s, &y).expect("both classes");
        assert!((a - fit.auc_heldout).abs() < 1e-3, "{a} vs {}", fit.auc_heldout);
    }

    #[test]
    fn max_cells_caps_and_explicit_l1_is_kept() {
        let (m, labels) = three_cell_data(3000, 60, 5);
        let one = fit(&[m.view()], &labels, ProbeOptions { l1: None, max_cells: 1 }).expect("fit");
        assert_eq!(one.weights.len(), 1);
        assert!(one.path.iter().all(|p| p.cells <= 1));
        let strong =
            fit(&[m.view()], &labels, ProbeOptions { l1: Some(one.l1_max * 0.5), max_cells: 64 }).expect("fit");
        assert_eq!(strong.l1, one.l1_max * 0.5);
        let err = fit(&[m.view()], &labels, ProbeOptions { l1: Some(0.0), max_cells: 2 }).expect_err("too many");
        assert!(matches!(err, ProbeError::TooManyCells { max: 2, .. }), "{err}");
    }

    #[test]
    fn bad_input_is_refused() {
        let (m, labels) = three_cell_data(3000, 10, 5);
        let v = m.view();
        let opts = ProbeOptions::default();
        let none = vec![false; 3000];
        assert!(matches!(fit(&[v], &none, opts), Err(ProbeError::NoPositives { .. })));
        assert!(matches!(fit(&[v], &[true; 3000], opts), Err(ProbeError::NoNegatives { .. })));
        assert!(matches!(fit(&[v], &labels[..10], opts), Err(ProbeError::LabelLength { .. })));
        let short = m.slice(ndarray::s![..100, ..]);
        assert!(matches!(fit(&[short], &labels[..100], opts), Err(ProbeError::TooShort { .. })));
        // Positives only in the training part.
        let mut early = vec![false; 3000];
        early[..200].iter_mut().for_each(|y| *y = true);
        let err = fit(&[v], &early, opts).expect_err("held-out part lacks positives");
        assert!(err.to_string().contains("held-out"), "{err}");
        assert!(matches!(fit(&[v], &labels, ProbeOptions { l1: Some(f64::NAN), ..opts }), Err(ProbeError::BadL1(_))));
        assert!(matches!(fit(&[v], &labels, ProbeOptions { l1: Some(-1.0), ..opts }), Err(ProbeError::BadL1(_))));
        assert!(matches!(
            fit(&[v], &labels, ProbeOptions { max_cells: 0, ..opts }),
            Err(ProbeError::BadMaxCells { .. })
        ));
        assert!(matches!(check_size(4096, 20_000), Err(ProbeError::TooLarge { .. })));
    }

    #[test]
    fn split_holds_out_two_tenths_with_guards() {
        let s = Split::of(10_000);
        assert_eq!(s.heldout, vec![(2000, 3000), (7000, 8000)]);
        assert_eq!(s.guard, 50);
        assert_eq!(s.heldout_chars, 2000);
        assert_eq!(s.train_chars, 10_000 - 2000 - 4 * 50);
        assert!(!s.is_train(1950) && s.is_train(1949) && !s.is_train(3049) && s.is_train(3050));
    }
}
