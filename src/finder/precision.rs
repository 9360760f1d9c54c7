//! How far the page view's int8 trace ([`Precision::Int8`]) lies from the exact one
//! on a text: per layer, max and mean |Δ| of h and c, and how many of each cell's
//! top contexts (the windows its cell page lists) it finds at the same place.
//! `tests/quant.rs` holds the shipped model to it; `scripts/bench.sh --model`
//! prints it.

use crate::analysis::top_windows;
use crate::model::{Kind, Model, Precision};

/// Windows per cell and direction, and their radius: the cell page's.
const CONTEXTS: usize = 20;
const RADIUS: usize = 40;

/// One layer's deviation of the int8 trace from the exact trace.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDeviation {
    pub layer: usize,
    /// max and mean |h_int8 − h_exact| over every character and cell.
    pub h_max: f32,
    pub h_mean: f32,
    /// The same for c, which is unbounded (a counting cell of layer 1 reaches
    /// |c| ≈ 50, where an error of several units changes nothing the page shows)…
    pub c_max: f32,
    pub c_mean: f32,
    /// …and for tanh(c), the value the page colours.
    pub tanh_c_max: f32,
    pub tanh_c_mean: f32,
    /// Of every cell's top and bottom [`CONTEXTS`] windows of h (±[`RADIUS`]
    /// characters, as on the cell page), the fraction the int8 trace centres on
    /// the same character.
    pub contexts_same: f64,
    /// The fraction of |Δh| that exceed 1/254: what moves a value by one step of the
    /// page's int8 colour scale or more.
    pub h_over_step: f64,
}

/// Traces `text` both ways and compares them (an LSTM; `None` for a GRU or RNN).
pub fn int8_deviation(model: &Model, text: &str) -> Option<Vec<LayerDeviation>> {
    if !model.has_int8() {
        return None;
    }
    let exact = model.trace_at(text, Precision::Exact);
    let fast = model.trace_at(text, Precision::Int8);
    let n = model.hidden_size();
    let step = 1.0 / 254.0;
    let layers = (0..model.layers())
        .map(|k| {
            let stats_of = |kind: Kind, f: fn(f32) -> f32| {
                let (a, b) = (exact.layers[k].get(kind), fast.layers[k].get(kind));
                let d: Vec<f32> = a.iter().zip(b.iter()).map(|(&x, &y)| (f(x) - f(y)).abs()).collect();
                let max = d.iter().copied().fold(0.0, f32::max);
                let mean = (d.iter().map(|&v| v as f64).sum::<f64>() / d.len().max(1) as f64) as f32;
                let over = d.iter().filter(|&&v| v > step).count() as f64 / d.len().max(1) as f64;
                (max, mean, over)
            };
            let same = |v: f32| v;
            let (h_max, h_mean, h_over_step) = stats_of(Kind::Hidden, same);
            let (c_max, c_mean, _) = stats_of(Kind::Cell, same);
            let (tanh_c_max, tanh_c_mean, _) = stats_of(Kind::Cell, f32::tanh);
            let (a, b) = (exact.layers[k].get(Kind::Hidden), fast.layers[k].get(Kind::Hidden));
            let (mut same, mut all) = (0usize, 0usize);
            for cell in 0..n {
                let (x, y) = (a.column(cell).to_vec(), b.column(cell).to_vec());
                for highest in [true, false] {
                    let want = top_windows(&x, CONTEXTS, RADIUS, highest);
                    let got: Vec<usize> = top_windows(&y, CONTEXTS, RADIUS, highest).iter().map(|w| w.center).collect();
                    same += want.iter().filter(|w| got.contains(&w.center)).count();
                    all += want.len();
                }
            }
            let contexts_same = same as f64 / all.max(1) as f64;
            LayerDeviation {
                layer: k,
                h_max,
                h_mean,
                c_max,
                c_mean,
                tanh_c_max,
                tanh_c_mean,
                contexts_same,
                h_over_step,
            }
        })
        .collect();
    Some(layers)
}
