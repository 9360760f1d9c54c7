//! Finding the cells that track a concept, as in Karpathy, Johnson & Fei-Fei (2015),
//! "Visualizing and Understanding Recurrent Networks".
//!
//! Everything here works on plain data: a `T × n` activation matrix (one row per character of
//! the text, one column per cell) and per-character labels. It knows nothing of the model or of
//! HTTP, so it is tested on synthetic matrices.
//!
//! - `features`: a small C lexer giving per-character labels, plus masks from a regex or from
//!   character spans.
//! - `rank`: scores every column against the labels and sorts the cells best first.
//! - `stats`: a cell's most extreme windows of text, histograms, gate saturation.
//! - `probe`: a concept *direction*: a sparse L1 logistic probe over many cells, its
//!   strength chosen on held-out characters.
//!
//! # Scores
//!
//! Binary labels are scored by ROC AUC, computed from midranks with one sort per cell:
//!
//! `AUC = P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) = (R⁺ − n⁺(n⁺+1)/2) / (n⁺·n⁻)`
//!
//! with `R⁺` the sum of the positives' midranks. The reported score is `max(AUC, 1 − AUC)` with
//! the direction as a sign, since a cell that switches *off* inside strings tracks them too.
//! Graded labels are scored by `|r|`, Pearson's or Spearman's.
//!
//! # Concepts
//!
//! Positions are character indices. Brackets, quotes and comment markers inside strings,
//! character literals and comments count for nothing.
//!
//! | concept        | kind   | holds at / value                                                  |
//! |----------------|--------|-------------------------------------------------------------------|
//! | `string`       | binary | `"..."`, quotes included, escapes honoured; unterminated: to EOL  |
//! | `char`         | binary | `'...'`, quotes included; same rules                              |
//! | `comment`      | binary | `/* ... */` with markers; `// ...` to end of line (or past a `\`) |
//! | `if`           | binary | the parentheses of `if (...)`, both included; not `#if`           |
//! | `paren-depth`  | graded | open `(`; both brackets of a pair count as inside                 |
//! | `brace-depth`  | graded | open `{`; same convention                                         |
//! | `column`       | graded | index in the line; 0 after a newline                              |
//! | `preprocessor` | binary | from a line-initial `#` to end of line, continued by `\`          |
//!
//! # Errors
//!
//! Functions that take user input return [`AnalysisError`] rather than panicking; each message
//! says what was wrong and what to do. Degenerate but harmless input (an empty text, a constant
//! cell, NaN activations) gives a neutral answer instead of an error.

mod features;
pub(crate) mod probe;
mod rank;
mod stats;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use features::{c_features, CFeatures};
pub(crate) use features::{regex_mask, span_mask};
pub use rank::{auc, pearson, spearman, GradedMetric, Labels};
pub(crate) use rank::{binary_column_score, binary_score_bounds, metric_name, rank_columns};
pub(crate) use stats::top_windows;
pub use stats::{histogram, saturation};

/// What can go wrong in analysis: all of it is bad input from the caller.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Labels and activations describe different numbers of characters.
    #[error(
        "labels cover {labels} characters but the activations have {rows} rows; \
         label every character of the analysed text"
    )]
    LabelLength {
        /// Number of labels given.
        labels: usize,
        /// Number of activation rows (characters).
        rows: usize,
    },
    /// Binary labels where the concept never holds.
    #[error(
        "binary labels have no positive characters (the concept never holds in these {len} \
         characters); choose text where it occurs"
    )]
    NoPositives {
        /// Number of characters labelled.
        len: usize,
    },
    /// Binary labels where the concept holds everywhere.
    #[error(
        "binary labels have no negative characters (the concept holds at all {len} \
         characters); choose text where it also does not hold"
    )]
    NoNegatives {
        /// Number of characters labelled.
        len: usize,
    },
    /// Graded labels with nothing to correlate against.
    #[error(
        "graded labels are constant over these {len} characters, so no cell can correlate \
         with them; choose text where the quantity varies"
    )]
    ConstantLabels {
        /// Number of characters labelled.
        len: usize,
    },
    /// A graded label is NaN or infinite.
    #[error("graded label at character {index} is not a finite number")]
    NonFiniteLabel {
        /// Character index of the first bad label.
        index: usize,
    },
    /// A span that ends before it starts.
    #[error("span {index} starts at {start} but ends at {end}; spans are start..end with start <= end")]
    SpanReversed {
        /// Position of the span in the list.
        index: usize,
        /// Its start character.
        start: usize,
        /// Its end character (exclusive).
        end: usize,
    },
    /// A span that runs past the text.
    #[error("span {index} ends at character {end} but the text has only {len} characters")]
    SpanOutOfBounds {
        /// Position of the span in the list.
        index: usize,
        /// Its end character (exclusive).
        end: usize,
        /// Length of the text in characters.
        len: usize,
    },
    /// A concept name `Concept::from_str` does not know.
    #[error("unknown concept `{0}` (expected one of: {names})", names = concept_names(|_| true))]
    UnknownConcept(String),
    /// A graded metric name `GradedMetric::from_str` does not know.
    #[error("unknown metric `{0}` (expected pearson or spearman)")]
    UnknownMetric(String),
}

/// A concept the C lexer can label; see the table in the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concept {
    /// Inside a double-quoted string literal.
    String,
    /// Inside a character literal.
    Char,
    /// Inside a comment.
    Comment,
    /// Inside an `if (...)` condition.
    If,
    /// Parenthesis nesting depth.
    ParenDepth,
    /// Brace nesting depth.
    BraceDepth,
    /// Column within the line.
    Column,
    /// On a preprocessor line.
    Preprocessor,
}

/// Every concept, in the order a UI should list them.
pub const CONCEPTS: &[Concept] = &[
    Concept::String,
    Concept::Char,
    Concept::Comment,
    Concept::If,
    Concept::ParenDepth,
    Concept::BraceDepth,
    Concept::Column,
    Concept::Preprocessor,
];

/// Other names `FromStr` accepts.
const ALIASES: &[(&str, Concept)] = &[("depth", Concept::ParenDepth)];

/// The names of the concepts `keep` selects, in [`CONCEPTS`] order, with their aliases:
/// `string, char, …, paren-depth (or depth), …`, for help texts and error messages that list
/// the choices.
pub(crate) fn concept_names(keep: impl Fn(Concept) -> bool) -> String {
    let shown = |c: Concept| match ALIASES.iter().find(|(_, a)| *a == c) {
        Some((alias, _)) => format!("{c} (or {alias})"),
        None => c.name().to_owned(),
    };
    CONCEPTS.iter().copied().filter(|&c| keep(c)).map(shown).collect::<Vec<_>>().join(", ")
}

impl Concept {
    /// The canonical name, as accepted by `FromStr` and used when serialised.
    pub fn name(self) -> &'static str {
        match self {
            Concept::String => "string",
            Concept::Char => "char",
            Concept::Comment => "comment",
            Concept::If => "if",
            Concept::ParenDepth => "paren-depth",
            Concept::BraceDepth => "brace-depth",
            Concept::Column => "column",
            Concept::Preprocessor => "preprocessor",
        }
    }

    /// True for concepts with a value per character (scored by correlation), false for those
    /// that hold or not (scored by AUC).
    pub(crate) fn is_graded(self) -> bool {
        matches!(self, Concept::ParenDepth | Concept::BraceDepth | Concept::Column)
    }

    /// A one-line description for a UI.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Concept::String => "inside a \"string literal\"",
            Concept::Char => "inside a 'c' character literal",
            Concept::Comment => "inside a /* comment */ or // comment",
            Concept::If => "inside the parentheses of an if (...) condition",
            Concept::ParenDepth => "number of open ( parentheses",
            Concept::BraceDepth => "number of open { braces",
            Concept::Column => "position within the line",
            Concept::Preprocessor => "on a # preprocessor line",
        }
    }
}

impl fmt::Display for Concept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Concept {
    type Err = AnalysisError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let alias = ALIASES.iter().find(|(name, _)| *name == s).map(|&(_, c)| c);
        alias
            .or_else(|| CONCEPTS.iter().copied().find(|c| c.name() == s))
            .ok_or_else(|| AnalysisError::UnknownConcept(s.to_owned()))
    }
}

/// Labels for one concept over a text. To label several concepts, call [`c_features`] once
/// and `CFeatures::labels` for each.
pub fn concept_labels(text: &[char], concept: Concept) -> Labels {
    c_features(text).labels(concept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_names_round_trip() {
        for &c in CONCEPTS {
            assert_eq!(c.name().parse::<Concept>().ok(), Some(c), "{c}");
            let json = serde_json::to_string(&c).expect("serialisable");
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
        assert_eq!("depth".parse::<Concept>().ok(), Some(Concept::ParenDepth));
        let err = "strings".parse::<Concept>().expect_err("not a concept");
        for &c in CONCEPTS {
            assert!(err.to_string().contains(c.name()), "{err} lacks {c}");
        }
        assert!(err.to_string().contains("paren-depth (or depth)"), "{err}");
        assert_eq!(concept_names(|c| !c.is_graded()), "string, char, comment, if, preprocessor");
    }

    #[test]
    fn concept_kinds_match_labels() {
        let text: Vec<char> =
            "#include <x.h>\nint f(int a) { if (a) return 'c'; /* s */ return \"s\"; }\n".chars().collect();
        let feats = c_features(&text);
        for &c in CONCEPTS {
            let labels = concept_labels(&text, c);
            assert_eq!(labels.len(), text.len(), "{c}");
            assert_eq!(matches!(labels, Labels::Graded(_)), c.is_graded(), "{c}");
            assert_eq!(labels, feats.labels(c), "{c}");
            if let Labels::Binary(b) = &labels {
                assert!(b.iter().any(|&x| x), "{c} never holds in the fixture");
            }
        }
    }

    #[test]
    fn end_to_end_ranking_of_a_string_cell() {
        let text: Vec<char> = "a = \"hi\"; b = \"yo\"; c;".chars().collect();
        let Labels::Binary(inside) = concept_labels(&text, Concept::String) else {
            panic!("string is binary");
        };
        let m = ndarray::Array2::from_shape_fn((text.len(), 2), |(i, j)| if j == 1 && inside[i] { 0.9 } else { -0.1 });
        let ranked = rank_columns(m.view(), &Labels::Binary(inside), GradedMetric::Pearson).expect("valid labels");
        assert_eq!((ranked[0].column, ranked[0].score, ranked[0].sign), (1, 1.0, 1));
    }
}
