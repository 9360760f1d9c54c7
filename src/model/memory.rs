//! How the LSTM remembers, in numbers a student can check: one step of one cell
//! written out with its values ([`explain_step`]), each cell's memory time scale
//! ([`time_scale`]), and the model's memory horizon from the gradients of many
//! predictions ([`memory_horizon`]).
//!
//! ```text
//! f = σ(a_f)   i = σ(a_i)   g = tanh(a_g)   o = σ(a_o)
//! c = f·c₋₁ + i·g = keep + write        erase = (1 − f)·|c₋₁|
//! h = o·tanh(c)
//! time scale = −1 / ln(mean f)   (characters for the memory to fall to 1/e)
//! ```

use serde::Serialize;

use super::arch::Kind;
use super::lstm::{Model, Trace};
use super::saliency::{saliencies, Saliency};

/// One step of one LSTM cell with every value it is made of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepExplained {
    pub layer: usize,
    pub cell: usize,
    pub position: usize,
    /// The character read at this step.
    pub char: String,
    pub i: f32,
    pub f: f32,
    pub g: f32,
    pub o: f32,
    /// The cell state before the step (0 before the first character).
    pub c_prev: f32,
    pub c: f32,
    pub h: f32,
    /// `i·g`: what the step writes.
    pub write: f32,
    /// `f·c₋₁`: what the step keeps.
    pub keep: f32,
    /// `(1 − f)·|c₋₁|`: how much of the old memory the step lets go.
    pub erase: f32,
    /// The equations with these numbers, one per line, for people.
    pub lines: Vec<String>,
}

/// The gate's pre-activation from its value (`σ⁻¹` or `tanh⁻¹`), when it is not
/// saturated past what f32 can invert.
fn pre_activation(v: f32, squash: Squash) -> Option<f32> {
    let a = match squash {
        Squash::Sigmoid => (v / (1.0 - v)).ln(),
        Squash::Tanh => 0.5 * ((1.0 + v) / (1.0 - v)).ln(),
    };
    (a.is_finite() && a.abs() < 15.0).then_some(a)
}

#[derive(Clone, Copy)]
enum Squash {
    Sigmoid,
    Tanh,
}

/// `+0.123` / `−0.123`, with a real minus sign, and parentheses when negative
/// inside a product.
fn num(v: f32) -> String {
    let s = format!("{v:.3}");
    s.replace('-', "−")
}

fn factor(v: f32) -> String {
    if v < 0.0 {
        format!("({})", num(v))
    } else {
        num(v)
    }
}

/// Explains step `position` of cell `cell` in layer `layer` of `trace` (an LSTM's
/// trace). `None` when an index is out of range or the trace has no LSTM gates.
pub(crate) fn explain_step(trace: &Trace, layer: usize, cell: usize, position: usize) -> Option<StepExplained> {
    let lt = trace.layers.get(layer)?;
    let cs = lt.try_get(Kind::Cell)?;
    if position >= trace.len() || cell >= cs.ncols() {
        return None;
    }
    let at = [position, cell];
    let v = |k: Kind| lt.try_get(k).map(|m| m[at]);
    let (i, f, g, o, c, h) =
        (v(Kind::Input)?, v(Kind::Forget)?, v(Kind::Candidate)?, v(Kind::Output)?, cs[at], lt.h()[at]);
    let (write, keep) = (v(Kind::Write)?, v(Kind::Keep)?);
    // keep = f·c₋₁ exactly as the trace computed it; recover c₋₁ from the row above.
    let c_prev = if position == 0 {
        if f != 0.0 {
            keep / f
        } else {
            0.0
        }
    } else {
        cs[[position - 1, cell]]
    };
    let erase = (1.0 - f) * c_prev.abs();
    let gate = |name: &str, v: f32, squash: Squash| {
        let fun = match squash {
            Squash::Sigmoid => "σ",
            Squash::Tanh => "tanh",
        };
        match pre_activation(v, squash) {
            Some(a) => format!("{name} = {fun}({}) = {}", num(a), num(v)),
            None => format!("{name} = {fun}(…) = {} (saturated)", num(v)),
        }
    };
    let held =
        if f >= 0.5 { format!("keeps {:.0}% of its memory", 100.0 * f) } else { "forgets most of its memory".into() };
    let lines = vec![
        format!("{}   ({held})", gate("f", f, Squash::Sigmoid)),
        format!("{}   {}", gate("i", i, Squash::Sigmoid), gate("g", g, Squash::Tanh)),
        format!(
            "c = f·c₋₁ + i·g = {}·{} + {}·{} = {} + {} = {}",
            num(f),
            factor(c_prev),
            num(i),
            factor(g),
            num(keep),
            factor(write),
            num(c)
        ),
        gate("o", o, Squash::Sigmoid),
        format!("h = o·tanh(c) = {}·tanh({}) = {}", num(o), num(c), num(h)),
    ];
    Some(StepExplained {
        layer,
        cell,
        position,
        char: trace.chars[position].to_string(),
        i,
        f,
        g,
        o,
        c_prev,
        c,
        h,
        write,
        keep,
        erase,
        lines,
    })
}

/// A cell's memory time scale in characters, `−1 / ln(mean f)`: how many steps
/// of its average forget gate shrink its memory by 1/e. Infinite when mean f = 1.
pub fn time_scale(mean_forget: f64) -> f64 {
    if mean_forget >= 1.0 {
        f64::INFINITY
    } else if mean_forget <= 0.0 {
        0.0
    } else {
        -1.0 / mean_forget.ln()
    }
}

/// The largest distance `position − s` at which the gradient is still at least
/// 1% of its largest value.
pub fn horizon_1pct(s: &Saliency) -> usize {
    let peak = s.grad_norm.iter().copied().fold(0.0, f32::max);
    s.grad_norm
        .iter()
        .enumerate()
        .filter(|&(_, &g)| g >= 0.01 * peak)
        .map(|(i, _)| s.position - (s.first + i))
        .max()
        .unwrap_or(0)
}

/// The model's memory horizon over a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Horizon {
    /// Median over the positions of [`horizon_1pct`], in characters.
    pub median: f64,
    /// First and third quartiles.
    pub quartiles: [f64; 2],
    /// The positions used (evenly spread, each with a known next character).
    pub positions: Vec<usize>,
    /// Each position's 1% horizon.
    pub horizons: Vec<usize>,
    /// Steps back each gradient was followed at most.
    pub max_back: usize,
    /// The median over the positions of the gradient at distance `d` divided by
    /// its own peak, for d = 0..=max_back (shorter when the text is): how fast a
    /// prediction's dependence on the past falls off. The plain RNN's falls fastest.
    pub profile: Vec<f32>,
}

/// The memory horizon of `model` over `text`: the median, over `count` positions
/// spread evenly from `max_back` on (so each can look back that far), of the
/// distance at which the gradient falls below 1% of its peak. `None` when the
/// text has no such position.
pub(crate) fn memory_horizon(
    model: &Model,
    text: &str,
    count: usize,
    max_back: usize,
    threads: usize,
) -> Option<Horizon> {
    let trace = model.trace_clamped_with_threads(model.vocab.encode(text), &model.zero_state(), &[], threads);
    memory_horizon_of(model, &trace, count, max_back, threads)
}

/// [`memory_horizon`] over a trace of `model` already made.
///
/// The gradients go back together on up to `threads` threads ([`saliencies`]):
/// the answer is the same on any number.
pub fn memory_horizon_of(
    model: &Model,
    trace: &Trace,
    count: usize,
    max_back: usize,
    threads: usize,
) -> Option<Horizon> {
    let t_len = trace.len();
    if t_len < 2 || count == 0 {
        return None;
    }
    let lo = max_back.min(t_len - 2);
    let span = t_len - 2 - lo;
    let mut positions = Vec::new();
    let mut horizons = Vec::new();
    // by_distance[d]: each position's gradient at distance d over its peak.
    let mut by_distance: Vec<Vec<f32>> = Vec::new();
    let mut wanted: Vec<usize> = (0..count).map(|k| lo + span * (2 * k + 1) / (2 * count)).collect();
    wanted.dedup();
    for s in saliencies(model, trace, &wanted, max_back, threads).into_iter().flatten() {
        positions.push(s.position);
        horizons.push(horizon_1pct(&s));
        let peak = s.grad_norm.iter().copied().fold(0.0, f32::max);
        for (d, &g) in s.grad_norm.iter().rev().enumerate() {
            if by_distance.len() <= d {
                by_distance.push(Vec::new());
            }
            by_distance[d].push(if peak > 0.0 { g / peak } else { 0.0 });
        }
    }
    let profile = by_distance
        .into_iter()
        .map(|mut v| {
            v.sort_by(f32::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            }
        })
        .collect();
    if horizons.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = horizons.iter().map(|&h| h as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let x = p * (sorted.len() - 1) as f64;
        let (a, b) = (x.floor() as usize, x.ceil() as usize);
        sorted[a] + (sorted[b] - sorted[a]) * (x - a as f64)
    };
    Some(Horizon { median: q(0.5), quartiles: [q(0.25), q(0.75)], positions, horizons, max_back, profile })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_is_minus_one_over_log_mean_f() {
        assert!((time_scale(0.99) - 99.5).abs() < 0.01);
        assert!((time_scale((-0.1f64).exp()) - 10.0).abs() < 1e-9);
        assert_eq!(time_scale(1.0), f64::INFINITY);
        assert_eq!(time_scale(0.0), 0.0);
    }

    #[test]
    fn numbers_read_with_real_minus_signs() {
        assert_eq!(num(-0.3), "−0.300");
        assert_eq!(factor(-0.3), "(−0.300)");
        assert_eq!(factor(0.82), "0.820");
        assert_eq!(pre_activation(0.5, Squash::Sigmoid), Some(0.0));
        assert_eq!(pre_activation(1.0, Squash::Sigmoid), None);
        assert!((pre_activation(0.0f32.tanh(), Squash::Tanh).unwrap()).abs() < 1e-7);
    }
}
