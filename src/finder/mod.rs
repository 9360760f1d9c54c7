//! Finding the cells that track a concept in a model's traces: the glue between
//! [`Model::trace`] and [`crate::analysis`], which itself knows nothing of models.
//!
//! Two ways to rank, one answer ([`CellScore`], best first, ties by layer, kind, cell):
//!
//! - [`rank_trace`]: exact, on one [`Trace`] held in memory (a pasted text in the web app).
//!   Every requested layer × kind is ranked by `rank_columns` and the lists are merged.
//! - [`StreamingRanker`], [`rank_text`]: for whole files and corpora, traced in chunks of
//!   `CHUNK` characters (the state carried across) and never held whole: the Linux test
//!   split is 305k characters, and 2 layers × 6 kinds × 512 cells of it would be 7.5 GB. The
//!   ranker keeps per-cell summaries instead, `O(layers × kinds × H × BINS)` memory.
//!
//! # Streaming scores
//!
//! Graded labels: Pearson's r from running sums in `f64`, shifted by the first value seen so
//! that no large offset cancels: with `x' = x − x₀`, `y' = y − y₀`,
//!
//! `r = (Σx'y' − Σx'Σy'/n) / √((Σx'² − (Σx')²/n)·(Σy'² − (Σy')²/n))`
//!
//! which equals [`pearson`](crate::analysis::pearson) to rounding. Spearman's ρ needs the ranks
//! of the whole column, so it is not offered in streaming mode.
//!
//! Binary labels: AUC from two histograms per cell, of the values at all characters and at
//! the positive ones, over `BINS` bins. With `p_b`, `n_b` the positive and negative counts
//! in bin `b` and `N_<b` the negatives below it,
//!
//! `AUC_binned = Σ_b p_b·(N_<b + ½·n_b) / (P·N)`
//!
//! i.e. pairs in different bins are ordered exactly (the binning is monotone) and pairs
//! sharing a bin count ½, as a tie. Only same-bin pairs can be scored wrongly, each by at most
//! ½, so
//!
//! `|AUC_binned − AUC_exact| ≤ ½·Σ_b p_b·n_b / (P·N) ≤ ½·max_b n_b/N`
//!
//! and the same bound holds for the score `max(AUC, 1 − AUC)`. The first form is computed per
//! cell from its histograms ([`StreamingRanker::auc_error_bound`]). For values spread over the
//! range it is about `½/BINS`-to-`1/BINS` (≈ 2–5·10⁻⁴: the unit tests check < 2·10⁻³ against
//! the exact [`auc`](crate::analysis::auc) on random data); it grows only where many positive
//! *and* negative characters share one bin, which the choice of bins below makes rare.
//!
//! # Bins
//!
//! Trained gates saturate: a forget gate at 0.9999 inside strings and 0.999 outside tracks
//! strings perfectly, but equal-width bins on `[0, 1]` would put both in the last bin. And
//! cells differ in scale: an untrained model's h barely leaves ±0.02. So each value is mapped
//! back to the pre-activation it came from,
//!
//! - gates i, f, o: `x = logit(v) = ln(v / (1 − v))`
//! - g, h: `x = 2·atanh(v) = ln((1 + v) / (1 − v))` (for h this is `tanh(c)`'s argument
//!   only when `o = 1`, but it is monotone in h, which is all the binning needs)
//! - c: `x = c`
//!
//! centred and scaled per cell, `x' = 2·(x − m)/s`, with m the median and s the robust spread
//! (1.4826 × median absolute deviation) of x over the first chunk the cell sees, then squashed
//! into `(−4, 4)` by `z = x' / (1 + |x'|/4)` and binned uniformly in z. The squash is linear
//! near the centre and reaches any finite x, so nothing is clamped: values far from the first
//! chunk's only get coarser bins (`±s` spans 683 of the 2048 bins, `±10·s` 1707). Every step
//! is monotone, so ties stay ties and only same-bin pairs can err. For roughly normal values
//! the fullest bin holds about 0.08 % of them, a bound of about 4·10⁻⁴.

pub mod precision;
pub(crate) mod probe;

use std::fmt;
use std::str::FromStr;
use std::sync::mpsc;

use ndarray::{s, ArrayView2};
use regex::Regex;
use serde::Serialize;

use crate::analysis::{
    binary_column_score, binary_score_bounds, c_features, concept_names, rank_columns, regex_mask, top_windows,
    AnalysisError, CFeatures, Concept, GradedMetric, Labels,
};
use crate::model::{Kind, Model, Trace};

/// Characters traced at once by the streaming functions: bounds memory to about
/// `CHUNK × layers × 6 × H × 4` bytes per chunk in flight (200 MB for 2 × 512 cells).
pub(crate) const CHUNK: usize = 8192;

/// Histogram bins per cell for streaming AUC; see the module doc for the error bound.
pub(crate) const BINS: usize = 2048;

/// The pre-activations are squashed into `(−Z_MAX, Z_MAX)` before binning.
const Z_MAX: f32 = 4.0;

/// What can go wrong finding cells, beyond bad labels ([`AnalysisError`]).
#[derive(Debug, thiserror::Error)]
pub enum FinderError {
    /// Bad labels: no positives, constant, wrong length.
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    /// `--feature` / `feature` names nothing we know.
    #[error("unknown feature `{0}` (expected one of: {names}, or regex:RE)", names = concept_names(|_| true))]
    UnknownFeature(String),
    /// `regex:RE` with a pattern that does not compile.
    #[error("bad regex `{pattern}`: {message}")]
    BadRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's explanation, on one line.
        message: String,
    },
    /// A layer the model does not have.
    #[error("layer {layer} is out of range: the model has layers 0..={last}")]
    LayerOutOfRange {
        /// The requested layer.
        layer: usize,
        /// The model's last layer.
        last: usize,
    },
    /// A cell the layers do not have.
    #[error("cell {cell} is out of range: layers have cells 0..={last}")]
    CellOutOfRange {
        /// The requested cell.
        cell: usize,
        /// The last cell of a layer.
        last: usize,
    },
    /// A probe that cannot be fitted (too few characters, one class in a part, bad options).
    #[error(transparent)]
    Probe(#[from] crate::analysis::probe::ProbeError),
    /// A probe that cannot be scored on this model.
    #[error(transparent)]
    Spec(#[from] probe::SpecError),
    /// A kind the model's architecture does not record.
    #[error(transparent)]
    Kind(#[from] crate::model::MissingKind),
    /// Streamed data that does not fit the ranker it is fed to (a caller's mistake).
    #[error("streaming ranker fed mismatched data: {0}")]
    Mismatch(String),
}

/// How well one cell tracks a concept; see `crate::analysis::ColumnScore` for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CellScore {
    /// Layer, 0-based.
    pub layer: usize,
    /// Which recorded quantity (serialised as `"h"`, `"c"`, `"i"`, …).
    pub kind: Kind,
    /// Index of the cell within its layer.
    pub cell: usize,
    /// Strength regardless of direction: `max(AUC, 1 − AUC)` or `|r|`.
    pub score: f64,
    /// +1 if higher where the concept holds (or grows with it), −1 if lower, 0 if neither.
    pub sign: i8,
    /// The signed metric: AUC, or r (ρ).
    pub raw: f64,
}

/// Every (layer, kind) pair, layer by layer.
fn layer_kinds(layers: &[usize], kinds: &[Kind]) -> Vec<(usize, Kind)> {
    layers.iter().flat_map(|&layer| kinds.iter().map(move |&kind| (layer, kind))).collect()
}

/// The T × H matrix of `kind` in `layer` of `trace`.
///
/// # Panics
/// If the trace has no such layer (callers check layers against the model).
fn matrix_of(trace: &Trace, layer: usize, kind: Kind) -> ArrayView2<'_, f32> {
    let lt = trace
        .layers
        .get(layer)
        .unwrap_or_else(|| panic!("layer {layer} is not in a trace of {} layers", trace.layers.len()));
    lt.get(kind).view()
}

/// Best first; equal scores in layer, kind, cell order, so output is deterministic.
fn sort_best_first(cells: &mut [CellScore]) {
    cells.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then(a.layer.cmp(&b.layer)).then(a.kind.cmp(&b.kind)).then(a.cell.cmp(&b.cell))
    });
}

fn sorted_unique<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Ranks every cell of the requested layers and kinds of `trace` against `labels` (one per
/// character, unknown characters included: they have activations too), best first.
///
/// Exact (`rank_columns` per layer × kind). Repeated layers or kinds count once.
///
/// # Panics
/// If a layer is not in the trace or a kind not recorded by its architecture; callers
/// check against [`Model::layers`] and [`crate::model::Arch::kinds`].
pub fn rank_trace(
    trace: &Trace,
    labels: &Labels,
    layers: &[usize],
    kinds: &[Kind],
    metric: GradedMetric,
) -> Result<Vec<CellScore>, AnalysisError> {
    rank_trace_on(trace, labels, layers, kinds, metric, 1)
}

/// [`rank_trace`] with its layer × kind matrices shared out between up to
/// `threads` threads; the answer is the same on any number.
pub fn rank_trace_on(
    trace: &Trace,
    labels: &Labels,
    layers: &[usize],
    kinds: &[Kind],
    metric: GradedMetric,
    threads: usize,
) -> Result<Vec<CellScore>, AnalysisError> {
    let kinds = sorted_unique(kinds);
    let mut jobs = layer_kinds(&sorted_unique(layers), &kinds);
    let rank = |jobs: &mut [(usize, Kind)]| -> Result<Vec<CellScore>, AnalysisError> {
        let mut out = Vec::new();
        for &mut (layer, kind) in jobs {
            let ranked = rank_columns(matrix_of(trace, layer, kind), labels, metric)?;
            out.extend(ranked.into_iter().map(|c| CellScore {
                layer,
                kind,
                cell: c.column,
                score: c.score,
                sign: c.sign,
                raw: c.raw,
            }));
        }
        Ok(out)
    };
    let mut out = Vec::new();
    for part in crate::parallel::in_parts(&mut jobs, threads, rank) {
        out.extend(part?);
    }
    sort_best_first(&mut out);
    Ok(out)
}

/// The first `top` cells of [`rank_trace_on`]'s ranking, the same cells with the
/// same scores in the same order, found with less work: for a yes/no concept,
/// every cell first gets cheap bounds on its score (`binary_score_bounds`: one
/// pass, no sort), and only the cells whose high bound reaches the `top`-th best
/// low bound are scored exactly. A cell left out has a score below that of at
/// least `top` others, so it could not be among them. Graded concepts, and asks
/// for most of the cells, rank everything.
pub fn rank_trace_top(
    trace: &Trace,
    labels: &Labels,
    layers: &[usize],
    kinds: &[Kind],
    metric: GradedMetric,
    top: usize,
    threads: usize,
) -> Result<Vec<CellScore>, AnalysisError> {
    rank_trace_top_counted(trace, labels, layers, kinds, metric, top, threads).map(|(cells, _)| cells)
}

/// [`rank_trace_top`], and how many cells it scored exactly.
fn rank_trace_top_counted(
    trace: &Trace,
    labels: &Labels,
    layers: &[usize],
    kinds: &[Kind],
    metric: GradedMetric,
    top: usize,
    threads: usize,
) -> Result<(Vec<CellScore>, usize), AnalysisError> {
    let kinds = sorted_unique(kinds);
    let layers = sorted_unique(layers);
    let columns: usize =
        layers.iter().map(|&l| trace.layers.get(l).map_or(0, |lt| lt.h().ncols())).sum::<usize>() * kinds.len();
    let all = |top: usize| {
        rank_trace_on(trace, labels, &layers, &kinds, metric, threads).map(|mut all| {
            let scored = all.len();
            all.truncate(top);
            (all, scored)
        })
    };
    let Labels::Binary(yes) = labels else {
        return all(top);
    };
    let positives = yes.iter().filter(|&&l| l).count();
    if top == 0 || top * 4 > columns || positives == 0 || positives == yes.len() || yes.len() != trace.len() {
        // Nothing to save, or an error that the full ranking names.
        return all(top);
    }
    let mut jobs = layer_kinds(&layers, &kinds);
    let matrix = |layer: usize, kind: Kind| matrix_of(trace, layer, kind);
    // Bounds of every cell: (layer, kind, cell, low, high); None: score it exactly.
    type Bound = (usize, Kind, usize, Option<(f64, f64)>);
    let bounds: Vec<Bound> = crate::parallel::in_parts(&mut jobs, threads, |jobs| {
        let mut out = Vec::new();
        for &mut (layer, kind) in jobs {
            let b = binary_score_bounds(matrix(layer, kind), yes);
            out.extend(b.into_iter().enumerate().map(|(cell, b)| (layer, kind, cell, b)));
        }
        out
    })
    .concat();
    let mut lows: Vec<f64> = bounds.iter().map(|b| b.3.map_or(0.5, |(lo, _)| lo)).collect();
    lows.sort_by(|a, b| b.total_cmp(a));
    let threshold = lows[top - 1];
    let mut needed: Vec<(usize, Kind, usize)> =
        bounds.iter().filter(|b| b.3.is_none_or(|(_, hi)| hi >= threshold)).map(|b| (b.0, b.1, b.2)).collect();
    let scored: Vec<CellScore> = crate::parallel::in_parts(&mut needed, threads, |cells| {
        cells
            .iter()
            .map(|&(layer, kind, cell)| {
                let column: Vec<f32> = matrix(layer, kind).column(cell).to_vec();
                let c = binary_column_score(cell, &column, yes);
                CellScore { layer, kind, cell, score: c.score, sign: c.sign, raw: c.raw }
            })
            .collect::<Vec<_>>()
    })
    .concat();
    let mut scored = scored;
    let exactly = scored.len();
    sort_best_first(&mut scored);
    scored.truncate(top);
    Ok((scored, exactly))
}

/// What to find cells for: a built-in C concept, or the characters a regex matches.
#[derive(Debug, Clone)]
pub enum Feature {
    /// Labelled by the C lexer ([`c_features`]).
    Concept(Concept),
    /// Binary: inside a match of the regex (`regex_mask`).
    Regex(Regex),
}

impl Feature {
    /// Binary or graded, which decides the metric.
    pub(crate) fn label_kind(&self) -> LabelKind {
        match self {
            Feature::Concept(c) if c.is_graded() => LabelKind::Graded,
            _ => LabelKind::Binary,
        }
    }

    /// `"auc"` or `"pearson"`: the metric streaming ranking uses.
    pub(crate) fn metric(&self) -> &'static str {
        match self.label_kind() {
            LabelKind::Binary => "auc",
            LabelKind::Graded => "pearson",
        }
    }

    /// The labels of `chars`; `features` is the lexer's output for the same characters.
    pub(crate) fn labels(&self, chars: &[char], features: &CFeatures) -> Labels {
        match self {
            Feature::Concept(c) => features.labels(*c),
            Feature::Regex(re) => Labels::Binary(regex_mask(chars, re)),
        }
    }
}

/// The labels of `chars` for each feature, lexing the text once (lexing needs the whole
/// text: a chunk could start inside a comment).
pub(crate) fn labels_for(features: &[Feature], chars: &[char]) -> Vec<Labels> {
    let lexed = if features.iter().any(|f| matches!(f, Feature::Concept(_))) {
        c_features(chars)
    } else {
        CFeatures::default()
    };
    features.iter().map(|f| f.labels(chars, &lexed)).collect()
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Concept(c) => f.write_str(c.name()),
            Feature::Regex(re) => write!(f, "regex:{}", re.as_str()),
        }
    }
}

impl FromStr for Feature {
    type Err = FinderError;

    /// A concept name (`string`, `depth`, …) or `regex:RE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(pattern) = s.strip_prefix("regex:") {
            return Regex::new(pattern)
                .map(Feature::Regex)
                .map_err(|e| FinderError::BadRegex { pattern: pattern.to_owned(), message: one_line_regex_error(&e) });
        }
        s.parse::<Concept>().map(Feature::Concept).map_err(|_| FinderError::UnknownFeature(s.to_owned()))
    }
}

/// The regex crate explains a syntax error over several lines (pattern, caret, `error: …`);
/// keep the explanation.
fn one_line_regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    match text.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        Some(why) => why.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Whether a label track holds or not per character, or has a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// Scored by AUC.
    Binary,
    /// Scored by Pearson's r.
    Graded,
}

impl LabelKind {
    /// The kind of these labels.
    pub fn of(labels: &Labels) -> Self {
        match labels {
            Labels::Binary(_) => LabelKind::Binary,
            Labels::Graded(_) => LabelKind::Graded,
        }
    }
}

/// The pre-activation a value of `kind` came from: monotone in the value, ±∞ at an exact
/// saturation. Out-of-range input is clamped first, so it still maps monotonically.
#[inline]
fn pre_activation(kind: Kind, v: f32) -> f32 {
    match kind {
        Kind::Cell | Kind::Keep => v,
        Kind::Hidden | Kind::Candidate | Kind::Write | Kind::New => {
            let v = v.clamp(-1.0, 1.0);
            ((1.0 + v) / (1.0 - v)).ln()
        }
        Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update => {
            let v = v.clamp(0.0, 1.0);
            (v / (1.0 - v)).ln()
        }
    }
}

/// Where one cell's bins are centred and how wide they are: `x' = (x − centre)·gain`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scale {
    centre: f32,
    gain: f32,
}

impl Scale {
    /// A cell whose values spread less than this (in pre-activation units) over the first
    /// chunk is binned as if they spread this much, so a later change is not pushed far into
    /// the coarse tails.
    const MIN_SPREAD: f32 = 1e-3;

    /// From the median and spread (1.4826 × median absolute deviation, else the mean absolute
    /// deviation) of the finite pre-activations of a cell's first chunk.
    fn calibrate(kind: Kind, values: &[f32]) -> Self {
        let mut x: Vec<f32> = values.iter().map(|&v| pre_activation(kind, v)).filter(|x| x.is_finite()).collect();
        if x.is_empty() {
            return Scale { centre: 0.0, gain: 1.0 };
        }
        let mid = x.len() / 2;
        let centre = *x.select_nth_unstable_by(mid, f32::total_cmp).1;
        for v in &mut x {
            *v = (*v - centre).abs();
        }
        let mean_dev = x.iter().map(|&d| f64::from(d)).sum::<f64>() / x.len() as f64;
        let mad = 1.4826 * *x.select_nth_unstable_by(mid, f32::total_cmp).1;
        let spread = if mad > 0.0 { mad } else { mean_dev as f32 };
        Scale { centre, gain: 2.0 / spread.max(Self::MIN_SPREAD) }
    }
}

/// Bins values of `kind` for a cell with this scale: pre-activation, centred and scaled,
/// squashed into `(−Z_MAX, Z_MAX)`, binned uniformly. Monotone; NaN must be filtered out first.
fn bins_into(kind: Kind, scale: Scale, values: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(values) {
        // ±∞ (an exact saturation, an infinite c) would make z = ∞/∞.
        let x = ((pre_activation(kind, v) - scale.centre) * scale.gain).clamp(-1e30, 1e30);
        let z = x / (1.0 + x.abs() / Z_MAX);
        let b = ((z + Z_MAX) * (BINS as f32 / (2.0 * Z_MAX))) as i32;
        *o = b.clamp(0, BINS as i32 - 1) as u16;
    }
}

/// One layer × kind: per-cell histograms and sums.
#[derive(Debug, Clone)]
struct Block {
    layer: usize,
    kind: Kind,
    /// H × BINS counts of all characters (empty without binary targets).
    all: Vec<u32>,
    /// Per binary target, H × BINS counts of its positive characters.
    pos: Vec<Vec<u32>>,
    /// Per cell: a NaN was seen, so the cell gets the neutral score (as in `rank_columns`).
    nan: Vec<bool>,
    /// Per cell, its bins, set from the first chunk it sees.
    scales: Vec<Option<Scale>>,
    /// Per cell, the first value seen, subtracted from all before summing (`x₀`).
    shift: Vec<f64>,
    /// Per cell, Σx' and Σx'² (empty without graded targets).
    sx: Vec<f64>,
    sxx: Vec<f64>,
    /// Per graded target, per cell Σx'y'.
    sxy: Vec<Vec<f64>>,
}

/// Per graded target: the label sums, shifted by the first label (`y₀`).
#[derive(Debug, Clone, Default)]
struct GradedSums {
    shift: f64,
    sy: f64,
    syy: f64,
}

/// One chunk's labels, borrowed.
#[derive(Clone, Copy)]
enum LabelSlice<'a> {
    Binary(&'a [bool]),
    Graded(&'a [f32]),
}

impl<'a> LabelSlice<'a> {
    fn range(labels: &'a Labels, start: usize, end: usize) -> Self {
        match labels {
            Labels::Binary(v) => LabelSlice::Binary(&v[start..end]),
            Labels::Graded(v) => LabelSlice::Graded(&v[start..end]),
        }
    }
}

/// Ranks cells over text fed in chunks, holding only per-cell summaries: histograms for AUC,
/// running sums for Pearson (see the module doc for both and the AUC error bound).
///
/// Built for a fixed list of label tracks ("targets"), all ranked in one pass, so several
/// concepts cost one trace. Feed it [`Trace`]s with their labels ([`Self::feed`]), or whole
/// texts (`Self::feed_text`, which traces them in chunks); then [`Self::finish`] each target.
#[derive(Debug, Clone)]
pub struct StreamingRanker {
    hidden: usize,
    targets: Vec<LabelKind>,
    /// Each target's index among the binary (or the graded) targets.
    slot: Vec<usize>,
    blocks: Vec<Block>,
    /// Per binary target, positive characters so far.
    positives: Vec<u64>,
    graded: Vec<GradedSums>,
    /// Characters fed so far.
    rows: u64,
}

impl StreamingRanker {
    /// A ranker for cells `0..hidden` of `layers` × `kinds` (repeats count once) against one
    /// label track per entry of `targets`.
    ///
    /// Memory: `layers × kinds × hidden × BINS × 4 × (1 + binary targets)` bytes of histograms
    /// when any target is binary (50 MB per track for 2 × 6 × 512 cells), plus a few `f64`s
    /// per cell and graded target.
    pub fn new(hidden: usize, layers: &[usize], kinds: &[Kind], targets: &[LabelKind]) -> Self {
        let (mut n_binary, mut n_graded) = (0, 0);
        let slot = targets
            .iter()
            .map(|t| {
                let counter = match t {
                    LabelKind::Binary => &mut n_binary,
                    LabelKind::Graded => &mut n_graded,
                };
                *counter += 1;
                *counter - 1
            })
            .collect();
        let hist = |on: bool| {
            if on {
                vec![0u32; hidden * BINS]
            } else {
                Vec::new()
            }
        };
        let sums = |on: bool| if on { vec![0f64; hidden] } else { Vec::new() };
        let mut blocks = Vec::new();
        for layer in sorted_unique(layers) {
            for &kind in &sorted_unique(kinds) {
                blocks.push(Block {
                    layer,
                    kind,
                    all: hist(n_binary > 0),
                    pos: (0..n_binary).map(|_| hist(true)).collect(),
                    nan: vec![false; hidden],
                    scales: vec![None; hidden],
                    shift: vec![0.0; hidden],
                    sx: sums(n_graded > 0),
                    sxx: sums(n_graded > 0),
                    sxy: (0..n_graded).map(|_| sums(true)).collect(),
                });
            }
        }
        Self {
            hidden,
            targets: targets.to_vec(),
            slot,
            blocks,
            positives: vec![0; n_binary],
            graded: vec![GradedSums::default(); n_graded],
            rows: 0,
        }
    }

    /// Adds one traced chunk, with one label track per target covering exactly its characters.
    /// Chunks may come from different texts (a corpus). Each cell's bins are fitted to the
    /// first chunk it sees, so feed chunks of a few thousand characters (a one-character first
    /// chunk leaves coarse bins; order otherwise changes results only within the AUC bound).
    ///
    /// On error nothing is added.
    pub fn feed(&mut self, trace: &Trace, labels: &[Labels]) -> Result<(), FinderError> {
        for l in labels {
            if l.len() != trace.len() {
                return Err(AnalysisError::LabelLength { labels: l.len(), rows: trace.len() }.into());
            }
        }
        let slices: Vec<LabelSlice> = labels.iter().map(|l| LabelSlice::range(l, 0, trace.len())).collect();
        self.feed_slices(trace, &slices)
    }

    /// Traces `chars` from the zero state in chunks of `chunk` characters, carrying the state,
    /// and feeds each chunk with its part of `labels` (one track per target, each covering all
    /// of `chars`). The next chunk is traced on a second thread while this one is counted.
    /// `progress(done, total)` is called after each chunk.
    pub(crate) fn feed_text(
        &mut self,
        model: &Model,
        chars: &[char],
        labels: &[Labels],
        chunk: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), FinderError> {
        if let Some(l) = labels.iter().find(|l| l.len() != chars.len()) {
            return Err(AnalysisError::LabelLength { labels: l.len(), rows: chars.len() }.into());
        }
        self.check_model(model)?;
        let chunk = chunk.max(1);
        let total = chars.len();
        std::thread::scope(|scope| {
            // Capacity 1: at most one traced chunk waits while another is counted.
            let (tx, rx) = mpsc::sync_channel::<(usize, Trace)>(1);
            scope.spawn(move || {
                let mut state = model.zero_state();
                for start in (0..total).step_by(chunk) {
                    let piece: String = chars[start..(start + chunk).min(total)].iter().collect();
                    let trace = model.trace_from(&piece, &state);
                    state = trace.final_state.clone();
                    if tx.send((start, trace)).is_err() {
                        return; // the counting side stopped on an error
                    }
                }
            });
            for (start, trace) in rx {
                let end = start + trace.len();
                let slices: Vec<LabelSlice> = labels.iter().map(|l| LabelSlice::range(l, start, end)).collect();
                self.feed_slices(&trace, &slices)?;
                progress(end, total);
            }
            Ok(())
        })
    }

    fn check_model(&self, model: &Model) -> Result<(), FinderError> {
        if model.hidden_size() != self.hidden {
            return Err(FinderError::Mismatch(format!(
                "ranker built for {} cells per layer, model has {}",
                self.hidden,
                model.hidden_size()
            )));
        }
        if let Some(b) = self.blocks.iter().find(|b| b.layer >= model.layers()) {
            return Err(FinderError::LayerOutOfRange { layer: b.layer, last: model.layers() - 1 });
        }
        for b in &self.blocks {
            model.arch().check_kind(b.kind)?;
        }
        Ok(())
    }

    fn feed_slices(&mut self, trace: &Trace, labels: &[LabelSlice]) -> Result<(), FinderError> {
        let rows = trace.len();
        if labels.len() != self.targets.len() {
            return Err(FinderError::Mismatch(format!(
                "{} label tracks for {} targets",
                labels.len(),
                self.targets.len()
            )));
        }
        for (i, (l, t)) in labels.iter().zip(&self.targets).enumerate() {
            match (l, t) {
                (LabelSlice::Binary(_), LabelKind::Binary) => {}
                (LabelSlice::Graded(y), LabelKind::Graded) => {
                    if let Some(t) = y.iter().position(|v| !v.is_finite()) {
                        let index = usize::try_from(self.rows).unwrap_or(usize::MAX) + t;
                        return Err(AnalysisError::NonFiniteLabel { index }.into());
                    }
                }
                _ => {
                    return Err(FinderError::Mismatch(format!(
                        "target {i} is {t:?} but was fed the other kind of labels"
                    )))
                }
            }
        }
        for b in &self.blocks {
            match trace.layers.get(b.layer) {
                None => {
                    return Err(FinderError::LayerOutOfRange {
                        layer: b.layer,
                        last: trace.layers.len().saturating_sub(1),
                    })
                }
                Some(lt) if lt.get(b.kind).dim() != (rows, self.hidden) => {
                    return Err(FinderError::Mismatch(format!(
                        "layer {} {} is {:?}, expected ({rows}, {})",
                        b.layer,
                        b.kind.letter(),
                        lt.get(b.kind).dim(),
                        self.hidden
                    )))
                }
                Some(_) => {}
            }
        }
        self.add(rows, |layer, kind| trace.layers[layer].get(kind).view(), labels);
        Ok(())
    }

    /// Adds `rows` characters; `matrix(layer, kind)` is that block's `rows × hidden` slice.
    /// Shapes and labels are already checked.
    fn add<'m>(&mut self, rows: usize, matrix: impl Fn(usize, Kind) -> ArrayView2<'m, f32>, labels: &[LabelSlice]) {
        if rows == 0 {
            return;
        }
        // Per binary target, the rows where it holds: the positive histograms are then
        // updated by index, without a branch per row and target.
        let mut positive_rows: Vec<Vec<u32>> = Vec::new();
        // Per graded target, y − y₀.
        let mut graded_y: Vec<Vec<f64>> = Vec::new();
        let first_feed = self.rows == 0;
        for (l, &slot) in labels.iter().zip(&self.slot) {
            match *l {
                LabelSlice::Binary(b) => {
                    let idx: Vec<u32> = (0..rows as u32).filter(|&t| b[t as usize]).collect();
                    self.positives[slot] += idx.len() as u64;
                    positive_rows.push(idx);
                }
                LabelSlice::Graded(y) => {
                    let sums = &mut self.graded[slot];
                    if first_feed {
                        sums.shift = f64::from(y[0]);
                    }
                    let dev: Vec<f64> = y.iter().map(|&v| f64::from(v) - sums.shift).collect();
                    sums.sy += dev.iter().sum::<f64>();
                    sums.syy += dev.iter().map(|d| d * d).sum::<f64>();
                    graded_y.push(dev);
                }
            }
        }
        for block in &mut self.blocks {
            let m = matrix(block.layer, block.kind);
            if first_feed {
                for (s, &v) in block.shift.iter_mut().zip(m.row(0)) {
                    *s = f64::from(v);
                }
            }
            if !block.all.is_empty() {
                block.add_histograms(m, &positive_rows);
            }
            if !block.sx.is_empty() {
                block.add_sums(m, &graded_y);
            }
        }
        self.rows += rows as u64;
    }

    /// The cells ranked against target `target`, best first (ties by layer, kind, cell).
    ///
    /// Errors as `rank_columns` does: binary labels without positives or negatives, graded
    /// labels that never varied.
    ///
    /// # Panics
    /// If `target` is not an index into the targets given to [`Self::new`].
    pub fn finish(&self, target: usize) -> Result<Vec<CellScore>, AnalysisError> {
        let len = usize::try_from(self.rows).unwrap_or(usize::MAX);
        let slot = self.slot[target];
        let mut out = Vec::with_capacity(self.blocks.len() * self.hidden);
        match self.targets[target] {
            LabelKind::Binary => {
                let p = self.positives[slot];
                if p == 0 {
                    return Err(AnalysisError::NoPositives { len });
                }
                if p == self.rows {
                    return Err(AnalysisError::NoNegatives { len });
                }
                for b in &self.blocks {
                    for cell in 0..self.hidden {
                        let raw = if b.nan[cell] { 0.5 } else { b.binned_auc(slot, cell).0 };
                        out.push(CellScore {
                            layer: b.layer,
                            kind: b.kind,
                            cell,
                            score: raw.max(1.0 - raw),
                            sign: sign_around(raw, 0.5),
                            raw,
                        });
                    }
                }
            }
            LabelKind::Graded => {
                let n = self.rows as f64;
                let g = &self.graded[slot];
                let vy = g.syy - g.sy * g.sy / n;
                if !(vy > 0.0 && vy.is_finite()) || self.rows < 2 {
                    return Err(AnalysisError::ConstantLabels { len });
                }
                for b in &self.blocks {
                    for cell in 0..self.hidden {
                        let vx = b.sxx[cell] - b.sx[cell] * b.sx[cell] / n;
                        let cov = b.sxy[slot][cell] - b.sx[cell] * g.sy / n;
                        let r = cov / (vx * vy).sqrt();
                        // A constant (or NaN) cell correlates with nothing.
                        let raw = if vx > 0.0 && r.is_finite() && !b.nan[cell] { r.clamp(-1.0, 1.0) } else { 0.0 };
                        out.push(CellScore {
                            layer: b.layer,
                            kind: b.kind,
                            cell,
                            score: raw.abs(),
                            sign: sign_around(raw, 0.0),
                            raw,
                        });
                    }
                }
            }
        }
        sort_best_first(&mut out);
        Ok(out)
    }

    /// For a binary target, the bound on `|AUC_binned − AUC_exact|` of one cell:
    /// `½·Σ_b p_b·n_b / (P·N)` from its histograms. `None` for a graded target, a cell not
    /// ranked here, or labels without positives or negatives.
    pub fn auc_error_bound(&self, target: usize, layer: usize, kind: Kind, cell: usize) -> Option<f64> {
        let slot = *self.slot.get(target)?;
        if self.targets[target] != LabelKind::Binary || cell >= self.hidden {
            return None;
        }
        let p = self.positives[slot];
        if p == 0 || p == self.rows {
            return None;
        }
        let b = self.blocks.iter().find(|b| b.layer == layer && b.kind == kind)?;
        Some(if b.nan[cell] { 0.0 } else { b.binned_auc(slot, cell).1 })
    }
}

impl Block {
    /// Counts every value into `all` and the positive rows of each binary target into `pos`.
    fn add_histograms(&mut self, m: ArrayView2<f32>, positive_rows: &[Vec<u32>]) {
        // Column by column, so one cell's histograms (8 KB each) stay in cache; the columns
        // are copied out a block at a time, reading the row-major matrix in order.
        const WIDTH: usize = 32;
        let (rows, cols) = m.dim();
        let mut column = vec![0f32; rows * WIDTH.min(cols)];
        let mut bins = vec![0u16; rows];
        let mut j0 = 0;
        while j0 < cols {
            let width = WIDTH.min(cols - j0);
            for (t, row) in m.slice(s![.., j0..j0 + width]).rows().into_iter().enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    column[k * rows + t] = v;
                }
            }
            for k in 0..width {
                let cell = j0 + k;
                let values = &column[k * rows..(k + 1) * rows];
                if self.nan[cell] || values.iter().any(|v| v.is_nan()) {
                    self.nan[cell] = true;
                    continue;
                }
                let scale = *self.scales[cell].get_or_insert_with(|| Scale::calibrate(self.kind, values));
                bins_into(self.kind, scale, values, &mut bins);
                let all = &mut self.all[cell * BINS..(cell + 1) * BINS];
                for &b in &bins {
                    all[usize::from(b)] += 1;
                }
                for (pos, idx) in self.pos.iter_mut().zip(positive_rows) {
                    let pos = &mut pos[cell * BINS..(cell + 1) * BINS];
                    for &t in idx {
                        pos[usize::from(bins[t as usize])] += 1;
                    }
                }
            }
            j0 += width;
        }
    }

    /// Adds Σx', Σx'² and Σx'y' per cell, row by row (the matrix's own order).
    fn add_sums(&mut self, m: ArrayView2<f32>, graded_y: &[Vec<f64>]) {
        let mut dev = vec![0f64; m.ncols()];
        for (t, row) in m.rows().into_iter().enumerate() {
            for ((d, &v), &s) in dev.iter_mut().zip(row).zip(&self.shift) {
                *d = f64::from(v) - s;
            }
            for ((sx, sxx), &d) in self.sx.iter_mut().zip(self.sxx.iter_mut()).zip(&dev) {
                *sx += d;
                *sxx += d * d;
            }
            for (sxy, y) in self.sxy.iter_mut().zip(graded_y) {
                let y = y[t];
                for (s, &d) in sxy.iter_mut().zip(&dev) {
                    *s += d * y;
                }
            }
        }
        for (nan, &s) in self.nan.iter_mut().zip(&self.sx) {
            *nan |= s.is_nan();
        }
    }

    /// `(AUC, error bound)` of one cell against binary target `slot`, from its histograms.
    /// Sums are exact integers: `AUC = Σ p_b·(2·N_<b + n_b) / (2·P·N)`.
    fn binned_auc(&self, slot: usize, cell: usize) -> (f64, f64) {
        let all = &self.all[cell * BINS..(cell + 1) * BINS];
        let pos = &self.pos[slot][cell * BINS..(cell + 1) * BINS];
        let (mut below, mut p_total, mut n_total) = (0u64, 0u64, 0u64);
        let (mut twice_wins, mut ties) = (0u128, 0u128);
        for (&a, &p) in all.iter().zip(pos) {
            let (p, n) = (u64::from(p), u64::from(a - p));
            twice_wins += u128::from(p) * u128::from(2 * below + n);
            ties += u128::from(p) * u128::from(n);
            below += n;
            p_total += p;
            n_total += n;
        }
        let pairs = p_total as f64 * n_total as f64;
        if pairs == 0.0 {
            return (0.5, 0.0);
        }
        (twice_wins as f64 / (2.0 * pairs), ties as f64 / (2.0 * pairs))
    }
}

fn sign_around(value: f64, centre: f64) -> i8 {
    if value > centre {
        1
    } else if value < centre {
        -1
    } else {
        0
    }
}

/// Ranks the cells of `layers` × `kinds` against `feature` over `text`, streaming: the text is
/// traced from the zero state in chunks of `chunk` characters (state carried), the labels are
/// computed once for the whole text. AUC is binned (see the module doc for the bound); graded
/// features use Pearson's r.
pub fn rank_text(
    model: &Model,
    text: &str,
    feature: &Feature,
    layers: &[usize],
    kinds: &[Kind],
    chunk: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<CellScore>, FinderError> {
    let chars: Vec<char> = text.chars().collect();
    let labels = labels_for(std::slice::from_ref(feature), &chars);
    let mut ranker = StreamingRanker::new(model.hidden_size(), layers, kinds, &[feature.label_kind()]);
    ranker.feed_text(model, &chars, &labels, chunk, progress)?;
    Ok(ranker.finish(0)?)
}

/// The values of one cell at every character of `text`, traced in chunks so that only this
/// cell's column is kept.
pub(crate) fn cell_values(
    model: &Model,
    text: &str,
    layer: usize,
    kind: Kind,
    cell: usize,
) -> Result<Vec<f32>, FinderError> {
    if layer >= model.layers() {
        return Err(FinderError::LayerOutOfRange { layer, last: model.layers() - 1 });
    }
    if cell >= model.hidden_size() {
        return Err(FinderError::CellOutOfRange { cell, last: model.hidden_size() - 1 });
    }
    model.arch().check_kind(kind)?;
    let chars: Vec<char> = text.chars().collect();
    let mut values = Vec::with_capacity(chars.len());
    trace_chunks(model, &chars, CHUNK, |_, trace| values.extend(trace.layers[layer].get(kind).column(cell).iter()));
    Ok(values)
}

/// Traces `chars` from the zero state in pieces of `chunk` characters, the state carried
/// across, handing each piece's trace and its first character's position to `each`: memory
/// holds one piece's trace, not the whole text's.
pub(crate) fn trace_chunks(model: &Model, chars: &[char], chunk: usize, mut each: impl FnMut(usize, &Trace)) {
    let mut state = model.zero_state();
    for (k, piece) in chars.chunks(chunk.max(1)).enumerate() {
        let piece: String = piece.iter().collect();
        let trace = model.trace_from(&piece, &state);
        each(k * chunk.max(1), &trace);
        state = trace.final_state;
    }
}

/// A stretch of text around one extreme value of a cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Context {
    /// Character index of the extreme value.
    pub center: usize,
    /// First character of the window.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// The value at `center`.
    pub value: f32,
    /// The characters `start..end`.
    pub text: String,
    /// The cell's value at each of them.
    pub values: Vec<f32>,
}

/// A cell's `k` highest and `k` lowest non-overlapping windows, most extreme first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contexts {
    /// Where the cell is highest.
    pub highest: Vec<Context>,
    /// Where it is lowest.
    pub lowest: Vec<Context>,
}

/// The top and bottom `k` windows of ±`radius` characters of one cell over `text` (for cell
/// pages), as `top_windows` picks them, with the text and per-character values of each.
pub fn top_contexts(
    model: &Model,
    text: &str,
    layer: usize,
    kind: Kind,
    cell: usize,
    k: usize,
    radius: usize,
) -> Result<Contexts, FinderError> {
    let values = cell_values(model, text, layer, kind, cell)?;
    let chars: Vec<char> = text.chars().collect();
    Ok(contexts_of(&values, &chars, k, radius))
}

/// The `k` most extreme non-overlapping windows (±`radius` characters) of one
/// cell's `values` over `chars`, highest and lowest, most extreme first.
pub(crate) fn contexts_of(values: &[f32], chars: &[char], k: usize, radius: usize) -> Contexts {
    let windows = |highest| {
        top_windows(values, k, radius, highest)
            .into_iter()
            .map(|w| Context {
                center: w.center,
                start: w.start,
                end: w.end,
                value: w.value,
                text: chars[w.start..w.end].iter().collect(),
                values: values[w.start..w.end].to_vec(),
            })
            .collect()
    };
    Contexts { highest: windows(true), lowest: windows(false) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{auc, pearson};

    /// The best few cells found with bounds first are the full ranking's first
    /// few, scores and order included, and on the shipped model most cells are
    /// never scored exactly.
    #[test]
    fn the_best_few_cells_found_with_bounds_are_the_full_rankings_first() {
        let model = Model::load(&crate::model::default_model_path()).expect("the shipped model");
        let text: String = include_str!("../../tests/data/other_c/sample.c").chars().skip(6000).take(3000).collect();
        let trace = model.trace(&text);
        let columns = 2 * 8 * 512;
        for concept in [Concept::String, Concept::If, Concept::Comment] {
            let labels = crate::analysis::concept_labels(&trace.chars, concept);
            let all = rank_trace_on(&trace, &labels, &[0, 1], model.arch().kinds(), GradedMetric::Pearson, 2).unwrap();
            for top in [1, 5, 20, 300] {
                let (few, exactly) = rank_trace_top_counted(
                    &trace,
                    &labels,
                    &[0, 1],
                    model.arch().kinds(),
                    GradedMetric::Pearson,
                    top,
                    2,
                )
                .unwrap();
                assert_eq!(few, all[..top], "{concept:?}, top {top}");
                if top == 20 {
                    assert!(exactly * 4 < columns, "{concept:?}: {exactly} of {columns} cells scored exactly");
                }
            }
        }
        // Ties everywhere: a label that only a few distinct values can separate.
        let coarse: Vec<bool> = trace.chars.iter().map(|c| c.is_ascii_digit() || *c == ';').collect();
        let labels = Labels::Binary(coarse);
        let all = rank_trace_on(&trace, &labels, &[1], &[Kind::Input, Kind::Hidden], GradedMetric::Pearson, 1).unwrap();
        let few =
            rank_trace_top(&trace, &labels, &[1], &[Kind::Input, Kind::Hidden], GradedMetric::Pearson, 7, 1).unwrap();
        assert_eq!(few, all[..7]);
    }
    use ndarray::Array2;

    /// Reproducible uniform noise in [0, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.uniform()).collect()
    }

    /// Feeds a `T × n` matrix as layer 0 of `kind` in chunks of `chunk` rows.
    fn stream(m: &Array2<f32>, kind: Kind, labels: &[Labels], chunk: usize) -> StreamingRanker {
        let targets: Vec<LabelKind> = labels.iter().map(LabelKind::of).collect();
        let mut r = StreamingRanker::new(m.ncols(), &[0], &[kind], &targets);
        let mut start = 0;
        while start < m.nrows() {
            let end = (start + chunk).min(m.nrows());
            let slices: Vec<LabelSlice> = labels.iter().map(|l| LabelSlice::range(l, start, end)).collect();
            r.add(end - start, |_, _| m.slice(s![start..end, ..]), &slices);
            start = end;
        }
        r
    }

    /// Random values in each kind's natural range (times `width`), partly shifted by the label.
    fn random_columns(kind: Kind, width: f32, labels: &[bool], seed: u64) -> Array2<f32> {
        let t = labels.len();
        let cols: Vec<Vec<f32>> = (0..6).map(|j| noise(t, seed + j)).collect();
        Array2::from_shape_fn((t, 6), |(i, j)| {
            let u = cols[j][i] + 0.15 * j as f32 * f32::from(u8::from(labels[i]));
            let u = (u / (1.0 + 0.15 * j as f32) - 0.5) * width; // back into ±width/2
            match kind {
                Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update => 0.5 + u,
                Kind::Hidden | Kind::Candidate | Kind::Write | Kind::New => 2.0 * u,
                Kind::Cell | Kind::Keep => 10.0 * u,
            }
        })
    }

    #[test]
    fn binned_auc_is_within_its_bound_of_the_exact_auc() {
        let labels: Vec<bool> = noise(20_000, 99).iter().map(|&v| v < 0.3).collect();
        // Full-range values, and values as small as an untrained model's.
        for (kind, width) in Kind::ALL.iter().flat_map(|&k| [(k, 1.0), (k, 0.01)]) {
            let m = random_columns(kind, width, &labels, 7);
            let r = stream(&m, kind, &[Labels::Binary(labels.clone())], 4096);
            let ranked = r.finish(0).expect("both classes present");
            for s in &ranked {
                let exact = auc(&m.column(s.cell).to_vec(), &labels).expect("valid");
                let bound = r.auc_error_bound(0, 0, kind, s.cell).expect("binary");
                let diff = (s.raw - exact).abs();
                assert!(
                    diff <= bound + 1e-12 && diff < 2e-3 && bound < 2e-3,
                    "{kind:?} ×{width} cell {}: binned {} exact {exact} bound {bound}",
                    s.cell,
                    s.raw
                );
            }
            assert_eq!(ranked[0].cell, 5, "{kind:?}: the most shifted column wins");
        }
    }

    #[test]
    fn saturated_gates_are_still_resolved() {
        // A gate at 1 − 10⁻⁴·u inside the concept and 1 − 10⁻³·u outside: equal-width bins
        // would tie everything in the last bin (AUC ½); pre-activation bins separate them.
        let labels: Vec<bool> = noise(5000, 3).iter().map(|&v| v < 0.5).collect();
        let u = noise(5000, 4);
        let m = Array2::from_shape_fn((5000, 1), |(i, _)| 1.0 - if labels[i] { 1e-4 } else { 1e-3 } * (0.1 + u[i]));
        let r = stream(&m, Kind::Forget, &[Labels::Binary(labels.clone())], 1000);
        let s = r.finish(0).expect("valid")[0];
        let exact = auc(&m.column(0).to_vec(), &labels).expect("valid");
        assert!(exact > 0.99, "fixture: exact {exact}");
        assert!((s.raw - exact).abs() < 2e-3, "binned {} exact {exact}", s.raw);
    }

    #[test]
    fn bins_are_monotone_and_span_the_range() {
        for kind in Kind::ALL {
            let (lo, hi) = match kind {
                Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update => (-0.5f32, 1.5f32),
                Kind::Hidden | Kind::Candidate | Kind::Write | Kind::New => (-1.5, 1.5),
                Kind::Cell | Kind::Keep => (-1e6, 1e6),
            };
            let mut values: Vec<f32> = (0..=200_000).map(|i| lo + (hi - lo) * i as f32 / 200_000.0).collect();
            values.extend([0.0, 1.0, -1.0, 1.0 - 1e-7, f32::INFINITY, f32::NEG_INFINITY]);
            values.sort_by(f32::total_cmp);
            let mut bins = vec![0u16; values.len()];
            let unit = Scale { centre: 0.0, gain: 1.0 };
            let fitted = Scale::calibrate(kind, &values[1000..3000]);
            for scale in [unit, fitted] {
                bins_into(kind, scale, &values, &mut bins);
                assert!(bins.windows(2).all(|w| w[0] <= w[1]), "{kind:?} {scale:?} not monotone");
                assert!(
                    bins[0] < 16 && usize::from(bins[bins.len() - 1]) > BINS - 16,
                    "{kind:?} {scale:?} does not span the bins"
                );
            }
            // Near the middle of the range, bins are narrow.
            let mid = match kind {
                Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update => [0.5, 0.5015],
                Kind::Hidden | Kind::Candidate | Kind::Write | Kind::New => [0.0, 0.003],
                Kind::Cell | Kind::Keep => [0.0, 0.005],
            };
            let mut b = [0u16; 2];
            bins_into(kind, unit, &mid, &mut b);
            assert!(b[1] > b[0], "{kind:?}: {mid:?} share a bin");
        }
    }

    #[test]
    fn streaming_pearson_matches_exact_over_chunks() {
        let t = 3000;
        let depth: Vec<f32> = (0..t).map(|i| ((i / 7) % 9) as f32 + 1000.0).collect();
        let n = noise(t, 11);
        let m = Array2::from_shape_fn((t, 3), |(i, j)| match j {
            0 => n[i] + 50.0,
            1 => (depth[i] - 1004.0) * 0.1 + 0.05 * n[i],
            _ => 0.25,
        });
        let labels = [Labels::Graded(depth.clone())];
        let ranked = stream(&m, Kind::Cell, &labels, 257).finish(0).expect("varies");
        assert_eq!(ranked[0].cell, 1);
        for s in &ranked {
            let exact = pearson(&m.column(s.cell).to_vec(), &depth).unwrap_or(0.0);
            assert!((s.raw - exact).abs() < 1e-9, "cell {}: {} vs {exact}", s.cell, s.raw);
        }
        let constant = ranked.iter().find(|s| s.cell == 2).expect("ranked");
        assert_eq!((constant.raw, constant.sign), (0.0, 0));
    }

    #[test]
    fn several_targets_in_one_pass_and_neutral_cells() {
        let t = 400;
        let inside: Vec<bool> = (0..t).map(|i| i % 10 < 3).collect();
        let m = Array2::from_shape_fn((t, 3), |(i, j)| match j {
            0 => f32::from(u8::from(inside[i])) - 0.5,
            1 => 0.3,
            _ if i == 17 => f32::NAN,
            _ => (i % 10) as f32 / 10.0,
        });
        let labels = [Labels::Graded((0..t).map(|i| (i % 10) as f32).collect()), Labels::Binary(inside)];
        let r = stream(&m, Kind::Hidden, &labels, 64);
        let auc = r.finish(1).expect("binary");
        assert_eq!((auc[0].cell, auc[0].score, auc[0].sign), (0, 1.0, 1));
        for s in &auc[1..] {
            assert_eq!((s.score, s.sign), (0.5, 0), "constant or NaN cell {}", s.cell);
        }
        let graded = r.finish(0).expect("graded");
        let nan_cell = graded.iter().find(|s| s.cell == 2).expect("ranked");
        assert_eq!((nan_cell.score, nan_cell.sign), (0.0, 0));
        assert_eq!(r.auc_error_bound(0, 0, Kind::Hidden, 0), None, "graded target");
    }

    #[test]
    fn finish_reports_bad_labels() {
        let m = Array2::<f32>::zeros((5, 2));
        let r = stream(&m, Kind::Cell, &[Labels::Binary(vec![false; 5]), Labels::Graded(vec![1.0; 5])], 2);
        assert!(matches!(r.finish(0), Err(AnalysisError::NoPositives { len: 5 })));
        assert!(matches!(r.finish(1), Err(AnalysisError::ConstantLabels { len: 5 })));
    }

    #[test]
    fn features_parse_with_clear_errors() {
        assert_eq!("depth".parse::<Feature>().expect("concept").to_string(), "paren-depth");
        let re = "regex:\\bint\\b".parse::<Feature>().expect("regex");
        assert_eq!(re.to_string(), "regex:\\bint\\b");
        assert_eq!(re.metric(), "auc");
        let err = "strung".parse::<Feature>().expect_err("unknown");
        assert!(err.to_string().contains("`strung`") && err.to_string().contains("regex:RE"));
        let err = "regex:(".parse::<Feature>().expect_err("bad regex").to_string();
        assert_eq!(err, "bad regex `(`: unclosed group");
        let chars: Vec<char> = "int x; /* int */".chars().collect();
        let labels = labels_for(&[re, Feature::Concept(Concept::Comment)], &chars);
        assert_eq!(labels[0], Labels::Binary((0..chars.len()).map(|i| i < 3 || (10..13).contains(&i)).collect()));
        assert_eq!(labels[1], Labels::Binary((0..chars.len()).map(|i| i >= 7).collect()));
    }
}
