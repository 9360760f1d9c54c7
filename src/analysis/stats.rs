//! Summaries of one cell or gate for cell pages and the model card: where a cell fires hardest,
//! the distribution of its values, and how often gates saturate.
//!
//! Saturation follows Karpathy et al. (2015), Fig. 3: a gate is left-saturated at a step when its
//! activation is `< 0.1` and right-saturated when `> 0.9`; each gate unit is plotted by the
//! fraction of steps it spends in either state.

use std::collections::BTreeSet;

use ndarray::ArrayView2;
use serde::Serialize;

/// A stretch of text around one extreme activation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Window {
    /// Character index of the extreme value.
    pub center: usize,
    /// First character of the window (`center − radius`, clipped to 0).
    pub start: usize,
    /// One past the last character (`center + radius + 1`, clipped to the text length).
    pub end: usize,
    /// The activation at `center`.
    pub value: f32,
}

/// The `k` highest (or, with `highest == false`, lowest) positions of `values`, each with a
/// window of ±`radius` characters, best first.
///
/// Greedy: take the best remaining position, then skip any later candidate whose window would
/// overlap one already taken (a centre within `2·radius` of a taken centre), so the windows show
/// `k` different places rather than `k` neighbours of one peak. Equal values prefer the earlier
/// position; NaN values are never chosen. Fewer than `k` windows come back when the text runs
/// out. `O(T log T)`.
pub(crate) fn top_windows(values: &[f32], k: usize, radius: usize, highest: bool) -> Vec<Window> {
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| !values[i].is_nan()).collect();
    order.sort_by(|&a, &b| {
        let by_value = values[a].total_cmp(&values[b]);
        let by_value = if highest { by_value.reverse() } else { by_value };
        by_value.then(a.cmp(&b))
    });
    let gap = radius.saturating_mul(2);
    let mut taken = BTreeSet::new();
    let mut windows = Vec::with_capacity(k.min(order.len()));
    for center in order {
        let clash = taken.range(center.saturating_sub(gap)..=center.saturating_add(gap)).next().is_some();
        if clash {
            continue;
        }
        taken.insert(center);
        windows.push(Window {
            center,
            start: center.saturating_sub(radius),
            end: center.saturating_add(radius).saturating_add(1).min(values.len()),
            value: values[center],
        });
        if windows.len() == k {
            break;
        }
    }
    windows
}

/// Counts `values` in `bins` equal bins spanning `[lo, hi]`.
///
/// Bin `b` holds `lo + b·w ≤ v < lo + (b+1)·w` with `w = (hi − lo) / bins`; values below `lo`
/// go to the first bin and values at or above `hi` to the last. NaN is skipped. `bins == 0`
/// gives an empty vector; a degenerate range (`hi ≤ lo`, or a NaN or infinite bound) puts every
/// value in the first bin rather than dividing by zero.
pub fn histogram(values: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<u32> {
    let mut counts = vec![0u32; bins];
    if bins == 0 {
        return counts;
    }
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let usable = lo.is_finite() && hi.is_finite() && hi > lo;
    for &v in values.iter().filter(|v| !v.is_nan()) {
        let b = if usable {
            let t = (f64::from(v) - lo) / (hi - lo) * bins as f64;
            // `as` saturates, and the clamp keeps `hi` itself and beyond in the last bin.
            (t.floor().max(0.0) as usize).min(bins - 1)
        } else {
            0
        };
        counts[b] = counts[b].saturating_add(1);
    }
    counts
}

/// For each column of `gate` (rows are steps, columns gate units): the fraction of rows above
/// `right` and the fraction below `left`, as `(right_fraction, left_fraction)`.
///
/// The paper's saturation plot uses `left = 0.1`, `right = 0.9`. Fractions are of all rows, so a
/// NaN counts as neither; a matrix with no rows gives `(0, 0)` for every column.
pub fn saturation(gate: ArrayView2<f32>, left: f32, right: f32) -> Vec<(f32, f32)> {
    let mut above = vec![0usize; gate.ncols()];
    let mut below = vec![0usize; gate.ncols()];
    // Row by row, since activation matrices are stored with each step's cells contiguous.
    for row in gate.rows() {
        for (j, &v) in row.iter().enumerate() {
            above[j] += usize::from(v > right);
            below[j] += usize::from(v < left);
        }
    }
    let rows = gate.nrows().max(1) as f64;
    above.into_iter().zip(below).map(|(a, b)| ((a as f64 / rows) as f32, (b as f64 / rows) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn centers(w: &[Window]) -> Vec<usize> {
        w.iter().map(|w| w.center).collect()
    }

    #[test]
    fn top_windows_suppresses_neighbours_of_a_peak() {
        let v = [0.0, 0.1, 0.9, 1.0, 0.95, 0.2, 0.0, 0.8, 0.0, 0.0];
        let w = top_windows(&v, 3, 1, true);
        // 0.95 and 0.9 sit next to the peak at 3; 0.8 at 7 is far enough for its window
        // [6, 8] to miss [2, 4]; 0.2 and 0.1 are within 2 of the peak, so 0 comes third.
        assert_eq!(centers(&w), vec![3, 7, 0]);
        assert_eq!((w[0].start, w[0].end, w[0].value), (2, 5, 1.0));
        assert!(w.windows(2).all(|p| p[0].end <= p[1].start || p[1].end <= p[0].start));
    }

    #[test]
    fn top_windows_lowest_and_clipping() {
        let v = [-3.0, 1.0, 2.0, 0.5, -1.0];
        let w = top_windows(&v, 2, 1, false);
        assert_eq!(centers(&w), vec![0, 4]);
        assert_eq!((w[0].start, w[0].end), (0, 2));
        assert_eq!((w[1].start, w[1].end), (3, 5));
        // With radius 2 the windows around 0 and 4 would share character 2.
        assert_eq!(centers(&top_windows(&v, 2, 2, false)), vec![0]);
    }

    #[test]
    fn top_windows_windows_never_overlap() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37) % 101) as f32).collect();
        let w = top_windows(&v, 50, 3, true);
        let mut spans: Vec<(usize, usize)> = w.iter().map(|w| (w.start, w.end)).collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|p| p[0].1 <= p[1].0), "{spans:?}");
        assert!(w.windows(2).all(|p| p[0].value >= p[1].value));
    }

    #[test]
    fn top_windows_edge_cases() {
        assert!(top_windows(&[], 3, 2, true).is_empty());
        assert!(top_windows(&[1.0, 2.0], 0, 2, true).is_empty());
        assert!(top_windows(&[f32::NAN, f32::NAN], 2, 0, true).is_empty());
        let w = top_windows(&[f32::NAN, 1.0, 1.0], 5, 0, true);
        assert_eq!(centers(&w), vec![1, 2], "ties prefer earlier positions");
        let w = top_windows(&[1.0, 2.0], 1, usize::MAX, true);
        assert_eq!((w[0].center, w[0].start, w[0].end), (1, 0, 2));
    }

    #[test]
    fn histogram_bins_and_clamps() {
        let h = histogram(&[0.0, 0.1, 0.5, 0.99, 1.0, -5.0, 7.0, f32::NAN], 4, 0.0, 1.0);
        assert_eq!(h, vec![3, 0, 1, 3]);
        assert_eq!(h.iter().sum::<u32>(), 7, "NaN skipped");
    }

    #[test]
    fn histogram_degenerate_inputs() {
        assert!(histogram(&[1.0], 0, 0.0, 1.0).is_empty());
        assert_eq!(histogram(&[1.0, 2.0], 3, 1.0, 1.0), vec![2, 0, 0]);
        assert_eq!(histogram(&[1.0], 2, f32::NAN, 1.0), vec![1, 0]);
        assert_eq!(histogram(&[f32::INFINITY, f32::NEG_INFINITY], 2, -1.0, 1.0), vec![1, 1]);
    }

    #[test]
    fn saturation_counts_fractions_per_column() {
        let gate = array![[0.95f32, 0.5], [0.05, 0.5], [0.92, 0.02], [0.5, f32::NAN]];
        let s = saturation(gate.view(), 0.1, 0.9);
        assert_eq!(s, vec![(0.5, 0.25), (0.0, 0.25)]);
    }

    #[test]
    fn saturation_of_empty_gate() {
        let gate = ndarray::Array2::<f32>::zeros((0, 2));
        assert_eq!(saturation(gate.view(), 0.1, 0.9), vec![(0.0, 0.0); 2]);
    }
}
