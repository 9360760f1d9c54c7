//! Ranking cells by how well they track a concept.
//!
//! The activations are a `T × n` matrix: one row per character, one column per cell. A column
//! is scored against per-character labels:
//!
//! - binary labels (inside a string or not) by ROC AUC, the probability that a random positive
//!   character gets a higher activation than a random negative one, ties counting half:
//!
//!   `AUC = P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) = (R⁺ − n⁺(n⁺+1)/2) / (n⁺·n⁻)`
//!
//!   where `R⁺` is the sum of the midranks (ties share the mean of their ranks, 1-based) of the
//!   positive characters. A cell that is *low* inside the concept tracks it just as well, so the
//!   score is `max(AUC, 1 − AUC)` and the direction goes in `sign`.
//! - graded labels (nesting depth, column) by Pearson's
//!   `r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)²·Σ(y−ȳ)²)`, or Spearman's ρ (Pearson on midranks), scored
//!   as `|r|`.
//!
//! Each column costs one radix sort (`O(T)`) and a pass; sums are accumulated in `f64`.

use std::cmp::Ordering;
use std::str::FromStr;

use ndarray::{s, ArrayView2};
use serde::Serialize;

use super::AnalysisError;

/// Per-character labels for one concept.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "values", rename_all = "lowercase")]
pub enum Labels {
    /// The concept holds or not at each character; scored by AUC.
    Binary(Vec<bool>),
    /// A quantity at each character (depth, column); scored by correlation.
    Graded(Vec<f32>),
}

impl Labels {
    /// Number of characters labelled.
    pub fn len(&self) -> usize {
        match self {
            Labels::Binary(v) => v.len(),
            Labels::Graded(v) => v.len(),
        }
    }

    /// True when no character is labelled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which correlation scores graded labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GradedMetric {
    /// Linear correlation: rewards cells proportional to the quantity.
    #[default]
    Pearson,
    /// Rank correlation: rewards any monotone relation (a cell that saturates with depth).
    Spearman,
}

impl GradedMetric {
    /// `"pearson"` or `"spearman"`, as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            GradedMetric::Pearson => "pearson",
            GradedMetric::Spearman => "spearman",
        }
    }
}

impl FromStr for GradedMetric {
    type Err = AnalysisError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pearson" => Ok(GradedMetric::Pearson),
            "spearman" => Ok(GradedMetric::Spearman),
            _ => Err(AnalysisError::UnknownMetric(s.to_owned())),
        }
    }
}

/// The name of the metric `rank_columns` uses for these labels: `"auc"` for binary labels,
/// otherwise the graded metric's name.
pub(crate) fn metric_name(labels: &Labels, graded_metric: GradedMetric) -> &'static str {
    match labels {
        Labels::Binary(_) => "auc",
        Labels::Graded(_) => graded_metric.name(),
    }
}

/// How well one column (cell) separates or follows the labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct ColumnScore {
    /// Index of the column in the activation matrix.
    pub column: usize,
    /// Strength regardless of direction: `max(AUC, 1 − AUC)` in `[0.5, 1]` for binary labels,
    /// `|r|` in `[0, 1]` for graded ones.
    pub score: f64,
    /// +1 if the cell is higher where the concept holds (or grows with it), −1 if lower, 0 if
    /// neither (AUC exactly ½, r exactly 0, or a constant column).
    pub sign: i8,
    /// The signed metric: AUC for binary labels, r or ρ for graded ones.
    pub raw: f64,
}

/// ROC AUC of `scores` against `labels`: `P(score⁺ > score⁻) + ½·P(tie)`.
///
/// `None` if the lengths differ or either class is empty. NaN scores do not panic: they are
/// ordered by `f32::total_cmp` (a positive NaN above +∞), which makes the result meaningless
/// but defined.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // One integer per character, the 32-bit order key above the label bit, so that a radix
    // sort applies: this runs once per cell and dominates ranking time.
    let mut packed: Vec<u64> =
        scores.iter().zip(labels).map(|(&s, &l)| u64::from(sort_key(s)) << 1 | u64::from(l)).collect();
    radix_sort_by_key(&mut packed, 33, |&p| p);
    let mut rank_sum = 0.0f64;
    for_each_tie_group(
        &packed,
        |p| p >> 1,
        |group, midrank| {
            let pos = group.iter().filter(|&&p| p & 1 == 1).count();
            rank_sum += pos as f64 * midrank;
        },
    );
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Pearson correlation of `x` and `y`, accumulated in `f64`.
///
/// `None` if the lengths differ, there are fewer than two points, either side is constant, or
/// the result is not finite (NaN or infinite inputs).
pub fn pearson(x: &[f32], y: &[f32]) -> Option<f64> {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    Centered::new(&y)?.correlate(&x)
}

/// Spearman rank correlation: Pearson on midranks, so any strictly monotone relation gives ±1.
///
/// `None` in the same cases as [`pearson`]. NaN values are ranked by `total_cmp`.
pub fn spearman(x: &[f32], y: &[f32]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    Centered::new(&midranks(y))?.correlate(&midranks(x))
}

/// Scores every column of `m` (rows are characters, columns cells) against `labels` and
/// returns them best first; equal scores keep column order, so the output is deterministic.
///
/// A column containing NaN gets the neutral score (0.5 for binary labels, 0 for graded), as
/// does a constant column. Errors if the labels do not have one entry per row, if binary labels
/// lack positives or negatives, or if graded labels are constant or not finite, since no
/// ranking would then mean anything.
pub(crate) fn rank_columns(
    m: ArrayView2<f32>,
    labels: &Labels,
    graded_metric: GradedMetric,
) -> Result<Vec<ColumnScore>, AnalysisError> {
    let rows = m.nrows();
    if labels.len() != rows {
        return Err(AnalysisError::LabelLength { labels: labels.len(), rows });
    }
    let mut scores = match labels {
        Labels::Binary(l) => rank_binary(m, l)?,
        Labels::Graded(l) => rank_graded(m, l, graded_metric)?,
    };
    scores.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.column.cmp(&b.column)));
    Ok(scores)
}

/// A column's [`ColumnScore`] against binary labels with both classes present
/// (what [`rank_columns`] gives it).
pub(crate) fn binary_column_score(column: usize, cells: &[f32], labels: &[bool]) -> ColumnScore {
    // NaN activations are no evidence either way.
    let raw = if cells.iter().any(|v| v.is_nan()) { 0.5 } else { auc(cells, labels).unwrap_or(0.5) };
    ColumnScore { column, score: raw.max(1.0 - raw), sign: sign_around(raw, 0.5), raw }
}

/// Bins per column for [`binary_score_bounds`].
const BOUND_BINS: usize = 256;

/// For every column of `m`, bounds `(low, high)` on its [`binary_column_score`]
/// (`max(AUC, 1 − AUC)`), from a pass that sorts nothing: the column's values go
/// into 256 equal-width bins between its minimum and maximum (a map that never
/// puts a larger value in a lower bin), pairs in different bins are ordered as
/// the exact AUC orders them, and pairs in the same bin may fall either way. So
/// the AUC lies within `T / 2` of the binned one, where T is the share of
/// (positive, negative) pairs that share a bin. `None` for a column with a NaN,
/// which only the exact score handles. A ranking that wants its best few cells
/// scores exactly only those whose high bound reaches the few's low bounds.
pub(crate) fn binary_score_bounds(m: ArrayView2<f32>, labels: &[bool]) -> Vec<Option<(f64, f64)>> {
    let positives = labels.iter().filter(|&&l| l).count();
    let (p, n) = (positives as f64, (labels.len() - positives) as f64);
    map_columns(m, |_, cells| {
        let (lo, hi) = cells.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if cells.iter().any(|v| v.is_nan()) || positives == 0 || positives == labels.len() {
            return None;
        }
        let mut bins = [[0u32; 2]; BOUND_BINS];
        let scale = if hi > lo { BOUND_BINS as f32 / (hi - lo) } else { 0.0 };
        for (&v, &l) in cells.iter().zip(labels) {
            let b = (((v - lo) * scale) as usize).min(BOUND_BINS - 1);
            bins[b][usize::from(l)] += 1;
        }
        // Pairs with the positive in a higher bin, and pairs sharing a bin.
        let (mut above, mut shared, mut negatives_below) = (0f64, 0f64, 0f64);
        for [neg, pos] in bins {
            above += f64::from(pos) * negatives_below;
            shared += f64::from(pos) * f64::from(neg);
            negatives_below += f64::from(neg);
        }
        let binned = (above + shared / 2.0) / (p * n);
        // A hair of slack for the rounding of these sums.
        let half = shared / 2.0 / (p * n) + 1e-9;
        let (auc_lo, auc_hi) = (binned - half, binned + half);
        // The score is max(AUC, 1 − AUC), within [½, 1] whatever the AUC.
        Some((auc_lo.max(1.0 - auc_hi).max(0.5), auc_hi.max(1.0 - auc_lo).min(1.0)))
    })
}

fn rank_binary(m: ArrayView2<f32>, labels: &[bool]) -> Result<Vec<ColumnScore>, AnalysisError> {
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return Err(AnalysisError::NoPositives { len: labels.len() });
    }
    if positives == labels.len() {
        return Err(AnalysisError::NoNegatives { len: labels.len() });
    }
    // Both classes are non-empty and the lengths match, so `auc` always answers.
    Ok(map_columns(m, |column, cells| binary_column_score(column, cells, labels)))
}

fn rank_graded(m: ArrayView2<f32>, labels: &[f32], metric: GradedMetric) -> Result<Vec<ColumnScore>, AnalysisError> {
    if let Some(index) = labels.iter().position(|v| !v.is_finite()) {
        return Err(AnalysisError::NonFiniteLabel { index });
    }
    let y: Vec<f64> = match metric {
        GradedMetric::Pearson => labels.iter().map(|&v| f64::from(v)).collect(),
        GradedMetric::Spearman => midranks(labels),
    };
    let target = Centered::new(&y).ok_or(AnalysisError::ConstantLabels { len: labels.len() })?;
    Ok(map_columns(m, |column, cells| {
        let r = if cells.iter().any(|v| v.is_nan()) {
            None
        } else {
            match metric {
                GradedMetric::Pearson => {
                    let x: Vec<f64> = cells.iter().map(|&v| f64::from(v)).collect();
                    target.correlate(&x)
                }
                GradedMetric::Spearman => target.correlate(&midranks(cells)),
            }
        };
        let raw = r.unwrap_or(0.0);
        ColumnScore { column, score: raw.abs(), sign: sign_around(raw, 0.0), raw }
    }))
}

/// Calls `f(j, column_j)` for every column, in order, with the column as a contiguous slice.
///
/// Activations are stored row-major (one row per step), where walking down a column touches a
/// new cache line at every row; copying a block of columns row by row reads memory in order
/// instead, which made ranking a 100k × 512 matrix several times faster.
fn map_columns<R>(m: ArrayView2<f32>, mut f: impl FnMut(usize, &[f32]) -> R) -> Vec<R> {
    const BLOCK: usize = 32;
    let (rows, cols) = m.dim();
    let mut out = Vec::with_capacity(cols);
    let mut buf = vec![0f32; rows * BLOCK.min(cols)];
    let mut j0 = 0;
    while j0 < cols {
        let width = BLOCK.min(cols - j0);
        let block = m.slice(s![.., j0..j0 + width]);
        for (i, row) in block.rows().into_iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                buf[k * rows + i] = v;
            }
        }
        for k in 0..width {
            out.push(f(j0 + k, &buf[k * rows..(k + 1) * rows]));
        }
        j0 += width;
    }
    out
}

fn sign_around(value: f64, centre: f64) -> i8 {
    match value.partial_cmp(&centre) {
        Some(Ordering::Greater) => 1,
        Some(Ordering::Less) => -1,
        _ => 0,
    }
}

/// One side of a correlation, centred once so that many columns can be scored against it.
struct Centered {
    /// `y − ȳ`
    dev: Vec<f64>,
    /// `Σ(y − ȳ)²`
    ss: f64,
}

impl Centered {
    /// `None` for fewer than two points or a constant (or non-finite) series.
    fn new(y: &[f64]) -> Option<Self> {
        if y.len() < 2 {
            return None;
        }
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        let dev: Vec<f64> = y.iter().map(|v| v - mean).collect();
        let ss: f64 = dev.iter().map(|d| d * d).sum();
        (ss > 0.0 && ss.is_finite()).then_some(Centered { dev, ss })
    }

    /// Pearson r of `x` with this series; `None` on length mismatch, constant `x` or a
    /// non-finite result.
    fn correlate(&self, x: &[f64]) -> Option<f64> {
        if x.len() != self.dev.len() {
            return None;
        }
        // Two passes (mean first) rather than Σx², Σx: no cancellation for large offsets.
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (xv, dy) in x.iter().zip(&self.dev) {
            let dx = xv - mean;
            sxy += dx * dy;
            sxx += dx * dx;
        }
        if sxx <= 0.0 {
            return None;
        }
        let r = sxy / (sxx * self.ss).sqrt();
        // Rounding can push a perfect correlation a hair past ±1.
        r.is_finite().then(|| r.clamp(-1.0, 1.0))
    }
}

/// 1-based ranks with ties sharing the mean of the ranks they span.
fn midranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<(u32, usize)> = values.iter().map(|&v| sort_key(v)).zip(0..).collect();
    radix_sort_by_key(&mut order, 32, |p| u64::from(p.0));
    let mut ranks = vec![0.0; values.len()];
    for_each_tie_group(
        &order,
        |p| p.0,
        |group, midrank| {
            for &(_, i) in group {
                ranks[i] = midrank;
            }
        },
    );
    ranks
}

/// An integer whose order is `f32::total_cmp`'s (negative NaN < −∞ < … < +∞ < NaN), except
/// that −0.0 and 0.0 map to the same key: for ranking they are the same activation.
fn sort_key(v: f32) -> u32 {
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    // Negative floats order backwards by their bits, so flip them all; positive ones sit above
    // every negative one once the sign bit is set.
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// Stable LSD radix sort on the low `bits` bits of `key`, 11 bits per pass: `O(T)` per pass,
/// several times faster than a comparison sort for the 10⁵-character columns ranked here.
fn radix_sort_by_key<T: Copy>(items: &mut Vec<T>, bits: u32, key: impl Fn(&T) -> u64) {
    const DIGIT: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT;
    let mask = (BUCKETS - 1) as u64;
    if items.len() < 2 {
        return;
    }
    let mut scratch = items.clone();
    let mut shift = 0;
    while shift < bits {
        let digit = |item: &T| ((key(item) >> shift) & mask) as usize;
        let mut starts = [0usize; BUCKETS];
        for item in items.iter() {
            starts[digit(item)] += 1;
        }
        let mut total = 0;
        for slot in starts.iter_mut() {
            let count = *slot;
            *slot = total;
            total += count;
        }
        for item in items.iter() {
            let d = digit(item);
            scratch[starts[d]] = *item;
            starts[d] += 1;
        }
        std::mem::swap(items, &mut scratch);
        shift += DIGIT;
    }
}

/// Calls `f(group, midrank)` for each run of equal keys in `sorted`, where `midrank` is the
/// mean of the 1-based ranks the run occupies.
fn for_each_tie_group<T, K: PartialEq>(sorted: &[T], key: impl Fn(&T) -> K, mut f: impl FnMut(&[T], f64)) {
    let mut start = 0;
    while start < sorted.len() {
        let k = key(&sorted[start]);
        let end = sorted[start..].iter().position(|p| key(p) != k).map_or(sorted.len(), |len| start + len);
        // Ranks start+1 ..= end; their mean is the midpoint.
        let midrank = (start + 1 + end) as f64 / 2.0;
        f(&sorted[start..end], midrank);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Reproducible uniform noise in [0, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.uniform()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn auc_of_the_label_itself_is_one() {
        let labels = [false, true, true, false, true];
        let scores: Vec<f32> = labels.iter().map(|&l| f32::from(u8::from(l))).collect();
        assert_eq!(auc(&scores, &labels), Some(1.0));
        let negated: Vec<f32> = scores.iter().map(|s| -s).collect();
        assert_eq!(auc(&negated, &labels), Some(0.0));
    }

    #[test]
    fn auc_of_constant_scores_is_exactly_half() {
        let labels = [true, false, false, true, false];
        assert_eq!(auc(&[0.3; 5], &labels), Some(0.5));
    }

    #[test]
    fn auc_with_ties_matches_hand_count() {
        // Positives: 2, 1; negatives: 1, 0, 1.
        // Pairs (pos, neg): (2,1)>, (2,0)>, (2,1)>, (1,1)=, (1,0)>, (1,1)= → 4 wins, 2 ties.
        // AUC = (4 + 2·½) / 6 = 5/6.
        let scores = [2.0, 1.0, 1.0, 0.0, 1.0];
        let labels = [true, true, false, false, false];
        let got = auc(&scores, &labels).expect("both classes present");
        assert!(close(got, 5.0 / 6.0), "got {got}");
    }

    #[test]
    fn auc_treats_negative_zero_as_zero() {
        let got = auc(&[-0.0, 0.0], &[true, false]).expect("both classes present");
        assert_eq!(got, 0.5);
    }

    #[test]
    fn auc_declines_without_both_classes() {
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(auc(&[1.0, 2.0], &[false, false]), None);
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[1.0], &[true, false]), None);
    }

    #[test]
    fn auc_with_nan_does_not_panic() {
        let got = auc(&[f32::NAN, 1.0, -f32::NAN, 0.0], &[true, false, true, false]);
        assert!(got.is_some_and(|a| (0.0..=1.0).contains(&a)));
    }

    #[test]
    fn auc_of_noise_is_near_half() {
        let n = 4000;
        let labels: Vec<bool> = noise(n, 7).iter().map(|&v| v > 0.7).collect();
        let got = auc(&noise(n, 99), &labels).expect("both classes present");
        assert!((got - 0.5).abs() < 0.05, "noise AUC {got}");
    }

    #[test]
    fn pearson_of_linear_function_is_one() {
        let x = noise(100, 3);
        let y: Vec<f32> = x.iter().map(|v| 3.0 * v - 2.0).collect();
        let down: Vec<f32> = x.iter().map(|v| 5.0 - v).collect();
        assert!(close(pearson(&x, &y).expect("varies"), 1.0));
        assert!(close(pearson(&x, &down).expect("varies"), -1.0));
    }

    #[test]
    fn pearson_with_large_offset_keeps_precision() {
        let x = [1e6f32, 1e6 + 1.0, 1e6 + 2.0];
        assert!(close(pearson(&x, &[0.0, 1.0, 2.0]).expect("varies"), 1.0));
    }

    #[test]
    fn pearson_declines_degenerate_input() {
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), None);
        assert_eq!(pearson(&[1.0], &[2.0]), None);
        assert_eq!(pearson(&[1.0, 2.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0, f32::NAN, 3.0], &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn spearman_of_monotone_function_is_one() {
        let x = noise(200, 11);
        let y: Vec<f32> = x.iter().map(|v| (8.0 * v).exp()).collect();
        assert!(close(spearman(&x, &y).expect("varies"), 1.0));
        // Pearson sees the curvature; Spearman does not.
        assert!(pearson(&x, &y).expect("varies") < 0.95);
    }

    #[test]
    fn sort_key_orders_like_total_cmp() {
        let v = [
            -f32::NAN,
            f32::NEG_INFINITY,
            -1.5,
            -f32::MIN_POSITIVE,
            0.0,
            f32::MIN_POSITIVE,
            2.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for w in v.windows(2) {
            assert!(sort_key(w[0]) < sort_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(sort_key(-0.0), sort_key(0.0));
    }

    #[test]
    fn radix_sort_matches_comparison_sort() {
        let spread: Vec<u64> = noise(5000, 17)
            .iter()
            .zip(noise(5000, 18))
            .map(|(a, b)| u64::from(sort_key(a - b) ^ u32::from(a > &0.5)))
            .collect();
        // One sign and exponent: the top byte is the same for all, so its pass is skipped.
        let narrow: Vec<u64> = noise(3000, 19).iter().map(|v| u64::from(sort_key(0.5 + v / 4.0))).collect();
        let ties: Vec<u64> = spread.iter().map(|k| k % 7).collect();
        let wide: Vec<u64> = spread.iter().map(|k| (k << 8) | (k % 251)).collect();
        let cases = [
            (spread.clone(), 32),
            (narrow, 32),
            (ties, 32),
            (wide, 40),
            (spread[..3].to_vec(), 32),
            (spread[..1].to_vec(), 32),
            (vec![], 32),
        ];
        for (keys, bits) in cases {
            let mut pairs: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            let mut expected = pairs.clone();
            expected.sort_by_key(|p| p.0);
            radix_sort_by_key(&mut pairs, bits, |p| p.0);
            assert_eq!(pairs, expected, "{} keys of {bits} bits: sorted, equal keys in their first order", keys.len());
        }
    }

    #[test]
    fn midranks_share_ties() {
        assert_eq!(midranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    /// Columns: 0 noise, 1 the negated label, 2 constant, 3 the label plus a little noise,
    /// 4 noise.
    fn planted(labels: &[bool]) -> Array2<f32> {
        let t = labels.len();
        let (a, b, c) = (noise(t, 1), noise(t, 2), noise(t, 3));
        Array2::from_shape_fn((t, 5), |(i, j)| {
            let l = f32::from(u8::from(labels[i]));
            match j {
                0 => a[i],
                1 => -l,
                2 => 0.25,
                3 => l + 0.1 * b[i],
                _ => c[i],
            }
        })
    }

    #[test]
    fn binary_ranking_puts_planted_cells_first() {
        let labels: Vec<bool> = noise(500, 42).iter().map(|&v| v > 0.6).collect();
        let m = planted(&labels);
        let ranked = rank_columns(m.view(), &Labels::Binary(labels), GradedMetric::Pearson).expect("valid labels");
        let order: Vec<usize> = ranked.iter().map(|s| s.column).collect();
        assert_eq!(&order[..2], &[1, 3], "ranking {ranked:?}");
        assert_eq!(ranked[0].score, 1.0);
        assert_eq!(ranked[0].sign, -1);
        assert_eq!(ranked[0].raw, 0.0);
        assert_eq!(ranked[1].score, 1.0);
        assert_eq!(ranked[1].sign, 1);
        let constant = ranked.iter().find(|s| s.column == 2).expect("all columns scored");
        assert_eq!((constant.score, constant.sign, constant.raw), (0.5, 0, 0.5));
        assert_eq!(order.last(), Some(&2), "constant column should rank last");
        for s in ranked.iter().filter(|s| s.column == 0 || s.column == 4) {
            assert!(s.score < 0.6, "noise column {} scored {}", s.column, s.score);
        }
    }

    #[test]
    fn equal_scores_keep_column_order() {
        let labels = vec![true, false, true, false];
        let m = Array2::from_shape_fn((4, 3), |(i, _)| f32::from(u8::from(labels[i])));
        let ranked = rank_columns(m.view(), &Labels::Binary(labels), GradedMetric::Pearson).expect("valid labels");
        let order: Vec<usize> = ranked.iter().map(|s| s.column).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn graded_ranking_finds_depth_cell() {
        let depth: Vec<f32> = (0..300).map(|i| ((i / 10) % 5) as f32).collect();
        let n = noise(300, 5);
        let m = Array2::from_shape_fn((300, 3), |(i, j)| match j {
            0 => n[i],
            1 => (depth[i] * 0.7).tanh(),
            _ => 1.0,
        });
        let labels = Labels::Graded(depth);
        let pearson = rank_columns(m.view(), &labels, GradedMetric::Pearson).expect("valid");
        assert_eq!(pearson[0].column, 1);
        // tanh(0.7·d) saturates: Pearson ≈ 0.89, clearly below a linear cell's 1.
        assert!(pearson[0].score > 0.85 && pearson[0].score < 0.95, "r {}", pearson[0].score);
        let spearman = rank_columns(m.view(), &labels, GradedMetric::Spearman).expect("valid");
        assert_eq!(spearman[0].column, 1);
        assert!(close(spearman[0].score, 1.0), "rho {}", spearman[0].score);
        assert_eq!(spearman[0].sign, 1);
        let constant = spearman.iter().find(|s| s.column == 2).expect("all columns scored");
        assert_eq!((constant.score, constant.sign), (0.0, 0));
    }

    #[test]
    fn nan_column_gets_neutral_score() {
        let m = Array2::from_shape_vec((3, 1), vec![f32::NAN, 1.0, 0.0]).expect("shape");
        let b = rank_columns(m.view(), &Labels::Binary(vec![true, false, true]), GradedMetric::Pearson).expect("valid");
        assert_eq!((b[0].score, b[0].sign), (0.5, 0));
        let g = rank_columns(m.view(), &Labels::Graded(vec![1.0, 2.0, 3.0]), GradedMetric::Spearman).expect("valid");
        assert_eq!((g[0].score, g[0].sign), (0.0, 0));
    }

    #[test]
    fn rank_columns_reports_bad_labels() {
        let m = Array2::<f32>::zeros((3, 2));
        let err = |labels: Labels| rank_columns(m.view(), &labels, GradedMetric::Pearson).expect_err("should fail");
        assert!(matches!(err(Labels::Binary(vec![true, false])), AnalysisError::LabelLength { labels: 2, rows: 3 }));
        let no_pos = err(Labels::Binary(vec![false; 3]));
        assert!(no_pos.to_string().contains("no positive"), "{no_pos}");
        let no_neg = err(Labels::Binary(vec![true; 3]));
        assert!(no_neg.to_string().contains("no negative"), "{no_neg}");
        assert!(matches!(err(Labels::Graded(vec![2.0; 3])), AnalysisError::ConstantLabels { len: 3 }));
        assert!(matches!(
            err(Labels::Graded(vec![1.0, f32::INFINITY, 0.0])),
            AnalysisError::NonFiniteLabel { index: 1 }
        ));
    }

    #[test]
    fn zero_columns_rank_to_nothing() {
        let m = Array2::<f32>::zeros((2, 0));
        let ranked =
            rank_columns(m.view(), &Labels::Binary(vec![true, false]), GradedMetric::Pearson).expect("valid labels");
        assert!(ranked.is_empty());
    }

    #[test]
    fn metric_names() {
        assert_eq!(metric_name(&Labels::Binary(vec![]), GradedMetric::Spearman), "auc");
        assert_eq!(metric_name(&Labels::Graded(vec![]), GradedMetric::Spearman), "spearman");
        assert_eq!("pearson".parse::<GradedMetric>().ok(), Some(GradedMetric::Pearson));
        assert!("kendall".parse::<GradedMetric>().is_err());
    }
}
