//! How a recorded value is shown, in one place for the terminal, the pages and
//! the API: which value a kind shows, how it maps onto [−1, 1], the colour of a
//! point on that scale, and the legend's labels.
//!
//! ```text
//! h, g, n:  u = v              (they live in [−1, 1])
//! write:    u = v              (i·g lives in [−1, 1])
//! c, keep:  u = tanh(v)        (as in the paper's figures; raw c reaches ±100)
//! i, f, o, r, z:  u = 2v − 1   (gates live in [0, 1])
//! colour:   u = −1 → blue (33, 102, 172), 0 → white, +1 → red (178, 24, 43)
//! ```

use crate::model::Kind;

/// How a kind's values map onto the colour scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Values in [−1, 1], shown as they are (h, g, write).
    Signed,
    /// Unbounded values, shown as tanh(v) (c, keep).
    Squashed,
    /// Gates in [0, 1], shown as 2v − 1 (i, f, o).
    Gate,
}

/// The scale of a kind (see the module doc).
pub fn scale(kind: Kind) -> Scale {
    match kind {
        Kind::Hidden | Kind::Candidate | Kind::Write | Kind::New => Scale::Signed,
        Kind::Cell | Kind::Keep => Scale::Squashed,
        Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update => Scale::Gate,
    }
}

/// Maps a recorded value onto [−1, 1] for colouring (see the module doc).
#[inline]
pub fn unit_value(kind: Kind, v: f32) -> f32 {
    match scale(kind) {
        Scale::Signed => v,
        Scale::Squashed => v.tanh(),
        Scale::Gate => 2.0 * v - 1.0,
    }
}

/// What the colour of a kind shows, for legends and the view header.
pub fn shows(kind: Kind) -> &'static str {
    match kind {
        Kind::Cell => "tanh(c)",
        Kind::Keep => "tanh(keep)",
        k => k.letter(),
    }
}

/// The given kinds (a model's) with their display rules, for the page's script (which applies the
/// same rules to the bytes of a view): `[{letter, label, shows, scale}]`, scale
/// one of `signed` (u = v), `squashed` (u = tanh v), `gate` (u = 2v − 1).
pub fn kind_table(kinds: &[Kind]) -> serde_json::Value {
    kinds
        .iter()
        .map(|&k| {
            let scale = match scale(k) {
                Scale::Signed => "signed",
                Scale::Squashed => "squashed",
                Scale::Gate => "gate",
            };
            serde_json::json!({"letter": k.letter(), "label": k.describe(), "shows": shows(k), "scale": scale})
        })
        .collect()
}

/// Every kind's name, for messages: `h, c, i, f, g, o, write, keep`.
pub fn kind_names() -> String {
    Kind::ALL.iter().map(|k| k.letter()).collect::<Vec<_>>().join(", ")
}

/// The legend label of the point `u` ∈ [−1, 1] for a kind: the shown value there.
pub fn legend_label(kind: Kind, u: f32) -> String {
    match scale(kind) {
        Scale::Gate => format!("{:.2}", (u + 1.0) / 2.0),
        _ => format!("{u:+.2}"),
    }
}

/// The diverging blue–white–red colour of `u` ∈ [−1, 1] (clamped; NaN → white).
pub fn diverging_rgb(u: f32) -> (u8, u8, u8) {
    let u = if u.is_finite() { u.clamp(-1.0, 1.0) } else { 0.0 };
    let mix = |a: f32, b: f32, t: f32| (a + (b - a) * t).round() as u8;
    if u < 0.0 {
        let t = -u;
        (mix(255.0, 33.0, t), mix(255.0, 102.0, t), mix(255.0, 172.0, t))
    } else {
        (mix(255.0, 178.0, u), mix(255.0, 24.0, u), mix(255.0, 43.0, u))
    }
}

/// A character as a person can read it in a list: ↵ for a newline, → for a
/// tab, ␣ for a space.
pub fn shown_char(c: &str) -> String {
    match c {
        "\n" => "↵".into(),
        "\t" => "→".into(),
        " " => "␣".into(),
        c => c.into(),
    }
}

/// WCAG relative luminance of an sRGB colour.
fn luminance((r, g, b): (u8, u8, u8)) -> f64 {
    let lin = |c: u8| {
        let c = c as f64 / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
}

/// The text colour on the background of `u`: white or black, whichever contrasts
/// more (the page's script applies the same rule), so every point of the scale
/// reads at WCAG AA (≥ 4.5:1).
pub fn text_on(u: f32) -> &'static str {
    let l = luminance(diverging_rgb(u));
    // Contrast against white (1.05 / (l + 0.05)) beats black ((l + 0.05) / 0.05)?
    if 1.05 / (l + 0.05) > (l + 0.05) / 0.05 {
        "#fff"
    } else {
        "#000"
    }
}

/// [`diverging_rgb`] as a CSS colour.
pub fn css_color(u: f32) -> String {
    let (r, g, b) = diverging_rgb(u);
    format!("#{r:02x}{g:02x}{b:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_onto_the_unit_interval() {
        assert_eq!(unit_value(Kind::Forget, 1.0), 1.0);
        assert_eq!(unit_value(Kind::Input, 0.0), -1.0);
        assert!((unit_value(Kind::Cell, 100.0) - 1.0).abs() < 1e-6);
        assert_eq!(unit_value(Kind::Hidden, -0.5), -0.5);
        assert_eq!(legend_label(Kind::Output, 0.0), "0.50");
        assert_eq!(legend_label(Kind::Cell, -1.0), "-1.00");
    }

    #[test]
    fn colours_run_blue_white_red() {
        assert_eq!(diverging_rgb(-1.0), (33, 102, 172));
        assert_eq!(diverging_rgb(0.0), (255, 255, 255));
        assert_eq!(diverging_rgb(1.0), (178, 24, 43));
        assert_eq!(diverging_rgb(f32::NAN), (255, 255, 255));
        assert_eq!(css_color(5.0), "#b2182b");
    }

    #[test]
    fn text_reads_on_every_colour() {
        for i in 0..=200 {
            let u = -1.0 + i as f32 / 100.0;
            let l = luminance(diverging_rgb(u));
            let ratio = if text_on(u) == "#fff" { 1.05 / (l + 0.05) } else { (l + 0.05) / 0.05 };
            assert!(ratio >= 4.5, "u = {u}: contrast {ratio:.2}");
        }
        assert_eq!((text_on(1.0), text_on(0.0), text_on(-1.0)), ("#fff", "#000", "#fff"));
    }
}
