//! The pages' SVG plots. Each is an askama template (`templates/plots/`) fed with
//! coordinates computed here, so the markup lives in one readable place and every
//! text in it is escaped.

use std::fmt::Write as _;

use askama::Template;

use super::pages::{thousands, ReferenceTrace};
use crate::display::css_color;

/// Renders a plot; a template error (a bug, never the user's input) shows as a note.
fn render(t: &impl Template, what: &str) -> String {
    t.render().unwrap_or_else(|e| {
        tracing::error!("rendering the {what} plot: {e}");
        format!("<p class=\"error\">the {what} plot failed to render</p>")
    })
}

/// A round step for about `parts` ticks over `span`: 1, 2 or 5 × 10^k.
fn nice_step(span: f64, parts: f64) -> f64 {
    let raw = (span / parts).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

struct Bar {
    x: f32,
    y: f32,
    width: f32,
    height: f32,
    fill: String,
    count: u32,
}

struct Tick {
    x: f32,
    label: &'static str,
    anchor: &'static str,
}

#[derive(Template)]
#[template(path = "plots/histogram.html")]
struct Histogram {
    left: f32,
    w: f32,
    h: f32,
    max: u32,
    bars: Vec<Bar>,
    ticks: Vec<Tick>,
    /// What the axis shows: `value`, or `tanh(c)` for a squashed kind.
    what: String,
    range: &'static str,
}

/// A cell's activation histogram over the range its kind is shown in
/// (`display::scale`: a gate over 0 … 1, everything else over −1 … +1), bars
/// coloured by the value they hold, with value ticks under it.
pub fn histogram_svg(counts: &[u32], kind: crate::model::Kind) -> String {
    use crate::display::{scale, shows, Scale};
    let (left, w, h) = (34.0, 480.0, 140.0);
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let bw = w / counts.len().max(1) as f32;
    let bars = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let height = h * count as f32 / max as f32;
            let u = -1.0 + 2.0 * (i as f32 + 0.5) / counts.len() as f32;
            Bar { x: left + i as f32 * bw, y: h - height, width: bw, height, fill: css_color(u), count }
        })
        .collect();
    let gate = scale(kind) == Scale::Gate;
    let labels: [&str; 5] =
        if gate { ["0", "0.25", "0.5", "0.75", "1"] } else { ["−1", "−0.5", "0", "+0.5", "+1"] };
    let ticks = labels
        .iter()
        .enumerate()
        .map(|(i, &label)| Tick {
            x: left + w * i as f32 / 4.0,
            label,
            anchor: match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            },
        })
        .collect();
    let what = if scale(kind) == Scale::Squashed { shows(kind).to_string() } else { "value".into() };
    let range = if gate { "0 … 1" } else { "−1 … +1" };
    render(&Histogram { left, w, h, max, bars, ticks, what, range }, "histogram")
}

#[derive(Template)]
#[template(path = "plots/curve.html")]
struct Curve {
    w: f64,
    h: f64,
    pad: f64,
    train_path: String,
    val_path: String,
    /// (x, label) along the steps.
    x_ticks: Vec<(f64, String)>,
    /// (y, label) along the loss.
    y_ticks: Vec<(f64, String)>,
}

/// The training curve (train and validation loss against step) from the model
/// file's metadata, or a note when it has none.
pub fn curve_svg(curve: &[crate::model::CurvePoint]) -> String {
    if curve.is_empty() {
        return "<p class=\"muted\">This model's metadata has no training curve.</p>".into();
    }
    type Point = (f64, Option<f64>, Option<f64>);
    let pts: Vec<Point> = curve.iter().map(|p| (p.0 as f64, Some(p.1), p.2)).collect();
    if pts.len() < 2 {
        return "<p class=\"muted\">Too few points to plot.</p>".into();
    }
    let (w, h, pad) = (560.0, 250.0, 40.0);
    let max_step = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let ys: Vec<f64> = pts.iter().flat_map(|p| [p.1, p.2]).flatten().collect();
    let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min).floor().max(0.0);
    let y_hi = ys.iter().copied().fold(0.0, f64::max).min(y_lo + 4.0).ceil();
    let x = |s: f64| pad + (w - 2.0 * pad) * s / max_step;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * ((v.min(y_hi) - y_lo) / (y_hi - y_lo).max(1e-9));
    let path = |sel: &dyn Fn(&Point) -> Option<f64>| {
        let mut d = String::new();
        for p in &pts {
            if let Some(v) = sel(p) {
                let _ = write!(d, "{}{:.1},{:.1}", if d.is_empty() { "M" } else { " L" }, x(p.0), y(v));
            }
        }
        d
    };
    let x_step = nice_step(max_step, 5.0);
    let x_ticks = (0..)
        .map(|i| i as f64 * x_step)
        .take_while(|&t| t <= max_step + 1e-9)
        .map(|t| (x(t), thousands(t as u64)))
        .collect();
    let y_step = nice_step(y_hi - y_lo, 4.0);
    let y_ticks = (0..=((y_hi - y_lo) / y_step + 1e-9).floor() as usize)
        .map(|i| {
            let v = ((y_lo + i as f64 * y_step) * 100.0).round() / 100.0;
            (y(v), v.to_string())
        })
        .collect();
    let train_path = path(&|p| p.1);
    let val_path = path(&|p| p.2);
    render(&Curve { w, h, pad, train_path, val_path, x_ticks, y_ticks }, "training curve")
}

/// One gate's scatter in the saturation plot.
struct GatePanel {
    name: &'static str,
    /// (cx, cy, colour) per cell of every layer.
    dots: Vec<(f32, f32, &'static str)>,
}

#[derive(Template)]
#[template(path = "plots/saturation.html")]
struct Saturation {
    size: f32,
    pad: f32,
    panels: Vec<GatePanel>,
    /// (x, y, label) of the ticks at 0, 0.5 and 1 on both axes.
    ticks: Vec<(f32, f32, &'static str)>,
    /// (colour, layer) for the key.
    layers: Vec<(&'static str, usize)>,
}

const LAYER_COLORS: [&str; 4] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];

/// The paper's gate-saturation scatter: per gate, x = fraction of characters
/// where it is right-saturated (> 0.9), y = left-saturated (< 0.1).
pub fn saturation_svg(rt: &ReferenceTrace) -> String {
    let (size, pad) = (200.0, 34.0);
    let Some(first) = rt.saturation.first().filter(|gates| !gates.is_empty()) else {
        return "<p>This architecture has no gates.</p>".into();
    };
    let panels = first
        .iter()
        .enumerate()
        .map(|(gi, (gate, _))| GatePanel {
            name: gate.describe(),
            dots: rt
                .saturation
                .iter()
                .enumerate()
                .flat_map(|(layer, gates)| {
                    gates[gi].1.iter().map(move |&(right, left)| {
                        (pad + size * right, pad + size * (1.0 - left), LAYER_COLORS[layer % LAYER_COLORS.len()])
                    })
                })
                .collect(),
        })
        .collect();
    let ticks =
        [(0.0, "0"), (0.5, "0.5"), (1.0, "1")].map(|(f, label)| (pad + size * f, pad + size * (1.0 - f), label));
    let layers = (0..rt.saturation.len()).map(|l| (LAYER_COLORS[l % LAYER_COLORS.len()], l)).collect();
    render(&Saturation { size, pad, panels, ticks: ticks.to_vec(), layers }, "gate saturation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_their_data() {
        let h = histogram_svg(&[1, 4, 2, 0], crate::model::Kind::Forget);
        assert_eq!(h.matches("<rect").count(), 4);
        assert!(h.contains("<title>4</title>") && h.contains(">0.75<") && h.contains("value (0 … 1)"), "{h}");
        let h = histogram_svg(&[1, 4], crate::model::Kind::Keep);
        assert!(h.contains("tanh(keep) (−1 … +1)") && h.contains(">−0.5<"), "{h}");
        let c =
            curve_svg(&[crate::model::CurvePoint(0, 3.0, Some(2.9)), crate::model::CurvePoint(1000, 1.5, Some(1.6))]);
        assert!(c.contains("d=\"M40.0,") && c.contains(">1,000<"), "{c}");
        assert!(curve_svg(&[]).contains("no training curve"));
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(3.0, 4.0), 1.0);
    }
}
