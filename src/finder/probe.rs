//! Concept directions on a model: [`crate::analysis::probe`]'s sparse logistic probe fitted
//! on the cells of a trace (or of whole files), and a saved probe scored on another text.
//!
//! The probe's score at character t is `bias + Σ weight · (value − mean) / std` over its
//! cells, `value` being the raw recorded value of that kind (c unsquashed, gates in [0, 1]).
//! A [`Probe`] serialises to the JSON that `POST /api/probe` answers and `find-cells --probe
//! --save` writes; [`ProbeSpec`] reads back the part that scoring needs from either.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::{trace_chunks, FinderError};
use crate::analysis::auc;
use crate::analysis::probe::{self, BestColumn, ColumnWeight, PathPoint, ProbeError, ProbeOptions, Split};
use crate::model::{Kind, Model, Trace};

/// Most cells a probe to score may name.
pub(crate) const MAX_SPEC_CELLS: usize = 4096;

/// Windows a long corpus is sampled in when it has more than `max_chars` characters.
pub(crate) const WINDOWS: usize = 20;

/// One cell of a probe and its place in the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellWeight {
    /// Layer, 0-based.
    pub layer: usize,
    /// Which recorded quantity (`"h"`, `"c"`, …).
    pub kind: Kind,
    /// Index of the cell within its layer.
    pub cell: usize,
    /// Weight on the standardized value; positive: higher inside the concept.
    pub weight: f64,
    /// Mean of the raw value over the training characters.
    pub mean: f64,
    /// Its standard deviation there.
    pub std: f64,
}

/// The best single cell on the same characters, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestCell {
    /// Layer, 0-based.
    pub layer: usize,
    /// Which recorded quantity.
    pub kind: Kind,
    /// Index of the cell within its layer.
    pub cell: usize,
    /// +1 if higher inside the concept on the training characters, −1 if lower.
    pub sign: i8,
    /// `max(AUC, 1 − AUC)` on the training characters.
    pub auc_train: f64,
    /// AUC on the held-out characters in the training direction.
    pub auc_heldout: f64,
}

/// A fitted probe, its quality and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// Its cells, largest |weight| first.
    pub weights: Vec<CellWeight>,
    /// The intercept.
    pub bias: f64,
    /// The L1 strength of the fit.
    pub l1: f64,
    /// The weakest strength at which no cell enters.
    pub l1_max: f64,
    /// AUC on the characters the fit saw.
    pub auc_train: f64,
    /// AUC on the held-out characters.
    pub auc_heldout: f64,
    /// The best single cell (chosen on the training characters).
    pub best_cell: BestCell,
    /// Every fit on the path of strengths, strongest first.
    pub path: Vec<PathPoint>,
    /// Which characters trained and which checked.
    pub split: Split,
}

/// What scoring needs of a probe: `/api/probe`'s answer, a saved probe file, or just
/// weights and bias. Other fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProbeSpec {
    /// Its cells.
    pub weights: Vec<CellWeight>,
    /// The intercept.
    pub bias: f64,
    /// The best single cell where the fit named one, scored beside the probe.
    #[serde(default)]
    pub best_cell: Option<BestCell>,
}

/// Why a probe cannot be scored on this model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// More cells than [`MAX_SPEC_CELLS`].
    #[error("the probe names {0} cells; at most {MAX_SPEC_CELLS} can be scored")]
    TooMany(usize),
    /// A cell this model does not have.
    #[error("probe cell {layer}/{kind}/{cell} does not exist: this model has layers 0..={last_layer} and cells 0..={last_cell}")]
    UnknownCell {
        /// Its layer.
        layer: usize,
        /// Its kind's letter.
        kind: &'static str,
        /// Its index.
        cell: usize,
        /// The model's last layer.
        last_layer: usize,
        /// The last cell of a layer.
        last_cell: usize,
    },
    /// A cell named twice.
    #[error("probe cell {layer}/{kind}/{cell} is listed twice")]
    Repeated {
        /// Its layer.
        layer: usize,
        /// Its kind's letter.
        kind: &'static str,
        /// Its index.
        cell: usize,
    },
    /// A weight, mean or bias that is not finite, or a std that is not positive.
    #[error("probe {0} is not a finite number (std must also be > 0)")]
    NotFinite(String),
}

impl ProbeSpec {
    /// Checks every cell against the model and every number for sense.
    pub fn check(&self, model: &Model) -> Result<(), SpecError> {
        if self.weights.len() > MAX_SPEC_CELLS {
            return Err(SpecError::TooMany(self.weights.len()));
        }
        if !self.bias.is_finite() {
            return Err(SpecError::NotFinite("bias".into()));
        }
        let (layers, hidden) = (model.layers(), model.hidden_size());
        let mut seen = std::collections::HashSet::new();
        let cells = self.weights.iter().map(|w| (w.layer, w.kind, w.cell));
        for (layer, kind, cell) in cells.chain(self.best_cell.iter().map(|b| (b.layer, b.kind, b.cell))) {
            if layer >= layers || cell >= hidden {
                return Err(SpecError::UnknownCell {
                    layer,
                    kind: kind.letter(),
                    cell,
                    last_layer: layers - 1,
                    last_cell: hidden - 1,
                });
            }
        }
        for w in &self.weights {
            let name = format!("{}/{}/{}", w.layer, w.kind.letter(), w.cell);
            if !seen.insert((w.layer, w.kind, w.cell)) {
                return Err(SpecError::Repeated { layer: w.layer, kind: w.kind.letter(), cell: w.cell });
            }
            if !(w.weight.is_finite() && w.mean.is_finite() && w.std.is_finite() && w.std > 0.0) {
                return Err(SpecError::NotFinite(format!("weight, mean or std of cell {name}")));
            }
        }
        Ok(())
    }

    /// The probe's score at every character of `trace`.
    pub(crate) fn scores(&self, trace: &Trace) -> Vec<f32> {
        let columns: Vec<ColumnWeight> = self
            .weights
            .iter()
            .enumerate()
            .map(|(j, w)| ColumnWeight { column: j, weight: w.weight, mean: w.mean, std: w.std })
            .collect();
        probe::score_rows(trace.len(), &columns, self.bias, |j, t| {
            let w = &self.weights[j];
            trace.layers[w.layer].get(w.kind)[(t, w.cell)]
        })
    }

    /// The best cell's value at every character of `trace`, in its direction (negated when
    /// it is lower inside the concept), so that higher always means "inside".
    pub(crate) fn best_cell_values(&self, trace: &Trace) -> Option<Vec<f32>> {
        let b = self.best_cell?;
        let s = if b.sign < 0 { -1.0 } else { 1.0 };
        Some(trace.layers[b.layer].get(b.kind).column(b.cell).iter().map(|&v| s * v).collect())
    }
}

impl From<&Probe> for ProbeSpec {
    fn from(p: &Probe) -> Self {
        Self { weights: p.weights.clone(), bias: p.bias, best_cell: Some(p.best_cell) }
    }
}

/// Which (layer, kind) each block of columns comes from, in the order the blocks are given
/// to the fit: layers ascending, kinds in `Kind::ALL` order, repeats merged.
fn blocks_of(layers: &[usize], kinds: &[Kind]) -> Vec<(usize, Kind)> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| kinds.contains(k)).collect();
    layers.into_iter().flat_map(|l| kinds.iter().map(move |&k| (l, k))).collect()
}

/// Fits on the given blocks of values and names the columns as cells.
fn fit_blocks(
    views: &[ArrayView2<f32>],
    blocks: &[(usize, Kind)],
    hidden: usize,
    labels: &[bool],
    options: ProbeOptions,
) -> Result<Probe, ProbeError> {
    let fit = probe::fit(views, labels, options)?;
    let cell_of = |column: usize| {
        let (layer, kind) = blocks[column / hidden];
        (layer, kind, column % hidden)
    };
    let weights = fit
        .weights
        .iter()
        .map(|w| {
            let (layer, kind, cell) = cell_of(w.column);
            CellWeight { layer, kind, cell, weight: w.weight, mean: w.mean, std: w.std }
        })
        .collect();
    let BestColumn { column, sign, auc_train, auc_heldout } = fit.best_column;
    let (layer, kind, cell) = cell_of(column);
    Ok(Probe {
        weights,
        bias: fit.bias,
        l1: fit.l1,
        l1_max: fit.l1_max,
        auc_train: fit.auc_train,
        auc_heldout: fit.auc_heldout,
        best_cell: BestCell { layer, kind, cell, sign, auc_train, auc_heldout },
        path: fit.path,
        split: fit.split,
    })
}

/// Fits a probe of `labels` (one per character of the trace) on every cell of `layers` ×
/// `kinds` of `trace`.
///
/// # Panics
/// If a layer is not in the trace; callers check against [`Model::layers`].
pub(crate) fn probe_trace(
    trace: &Trace,
    labels: &[bool],
    layers: &[usize],
    kinds: &[Kind],
    options: ProbeOptions,
) -> Result<Probe, ProbeError> {
    let blocks = blocks_of(layers, kinds);
    let views: Vec<ArrayView2<f32>> = blocks.iter().map(|&(l, k)| trace.layers[l].get(k).view()).collect();
    let hidden = views.first().map_or(0, |v| v.ncols());
    fit_blocks(&views, &blocks, hidden, labels, options)
}

/// Which characters of a corpus of `total` a fit over at most `max_chars` keeps: all of them,
/// or [`WINDOWS`] evenly spaced windows of `max_chars / WINDOWS` characters.
fn kept(total: usize, max_chars: usize) -> impl Fn(usize) -> bool {
    let window = max_chars / WINDOWS;
    move |t| {
        if total <= max_chars {
            return true;
        }
        // Window k starts at k·total/WINDOWS.
        let k = t * WINDOWS / total;
        t < k * total / WINDOWS + window
    }
}

/// Fits a probe over whole texts (each traced from the zero state in chunks), keeping at most
/// `max_chars` characters in evenly spaced windows when they are longer. `labels` has one
/// track per text. `progress(done, total)` follows the tracing.
pub(crate) fn probe_texts(
    model: &Model,
    texts: &[Vec<char>],
    labels: &[Vec<bool>],
    layers: &[usize],
    kinds: &[Kind],
    max_chars: usize,
    options: ProbeOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Probe, FinderError> {
    let blocks = blocks_of(layers, kinds);
    let hidden = model.hidden_size();
    let total: usize = texts.iter().map(Vec::len).sum();
    let keep = kept(total, max_chars);
    let rows = (0..total).filter(|&t| keep(t)).count();
    probe::check_size(blocks.len() * hidden, rows)?;
    options.check()?;
    if let Some((chars, l)) = texts.iter().zip(labels).find(|(c, l)| c.len() != l.len()) {
        return Err(crate::analysis::AnalysisError::LabelLength { labels: l.len(), rows: chars.len() }.into());
    }
    let mut values: Vec<Array2<f32>> = blocks.iter().map(|_| Array2::zeros((rows, hidden))).collect();
    let mut kept_labels = Vec::with_capacity(rows);
    let (mut before, mut row) = (0, 0);
    for (chars, text_labels) in texts.iter().zip(labels) {
        trace_chunks(model, chars, super::CHUNK, |start, trace| {
            for t in 0..trace.len() {
                if keep(before + start + t) {
                    for (m, &(l, k)) in values.iter_mut().zip(&blocks) {
                        m.row_mut(row).assign(&trace.layers[l].get(k).row(t));
                    }
                    kept_labels.push(text_labels[start + t]);
                    row += 1;
                }
            }
            progress(before + start + trace.len(), total);
        });
        before += chars.len();
    }
    let views: Vec<ArrayView2<f32>> = values.iter().map(|m| m.view()).collect();
    Ok(fit_blocks(&views, &blocks, hidden, &kept_labels, options)?)
}

/// A probe scored on texts: its score at every character, and its AUC (and the best cell's)
/// when labels are given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The score at every character, texts one after another.
    pub scores: Vec<f32>,
    /// AUC of the scores against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// AUC of the probe's best single cell (in its fitted direction) against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_cell_auc: Option<f64>,
}

impl Scored {
    /// Scores and, with labels, AUCs; `best` holds the best cell's signed values.
    pub fn new(scores: Vec<f32>, best: Option<Vec<f32>>, labels: Option<&[bool]>) -> Self {
        let auc_of = |s: &[f32]| labels.and_then(|l| auc(s, l));
        Self { auc: auc_of(&scores), best_cell_auc: best.as_deref().and_then(auc_of), scores }
    }
}

/// Scores a probe over whole texts, each traced from the zero state in chunks; `labels`, one
/// track per text, gives AUCs.
pub(crate) fn score_texts(
    model: &Model,
    spec: &ProbeSpec,
    texts: &[Vec<char>],
    labels: Option<&[Vec<bool>]>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Scored, SpecError> {
    spec.check(model)?;
    let total: usize = texts.iter().map(Vec::len).sum();
    let (mut scores, mut best) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for chars in texts {
        let before = scores.len();
        trace_chunks(model, chars, super::CHUNK, |start, trace| {
            scores.extend(spec.scores(trace));
            best.extend(spec.best_cell_values(trace).unwrap_or_default());
            progress(before + start + trace.len(), total);
        });
    }
    let labels: Option<Vec<bool>> = labels.map(|l| l.concat());
    let best = spec.best_cell.map(|_| best);
    Ok(Scored::new(scores, best, labels.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_max_chars_evenly() {
        let keep = kept(1000, 2000);
        assert!((0..1000).all(&keep));
        let keep = kept(100_000, 20_000);
        let kept: Vec<usize> = (0..100_000).filter(|&t| keep(t)).collect();
        assert_eq!(kept.len(), 20_000);
        assert_eq!((kept[0], kept[999], kept[1000]), (0, 999, 5000));
    }

    #[test]
    fn blocks_are_sorted_and_merged() {
        assert_eq!(
            blocks_of(&[1, 0, 1], &[Kind::Cell, Kind::Hidden]),
            vec![(0, Kind::Hidden), (0, Kind::Cell), (1, Kind::Hidden), (1, Kind::Cell)]
        );
    }
}
