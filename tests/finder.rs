//! Finding cells in real traces: exact ranking, streaming equals exact within its bound,
//! chunking changes nothing, top contexts, and the `find-cells` command.

use std::path::PathBuf;
use std::process::Command;

use cellscope::analysis::{concept_labels, Concept, GradedMetric, Labels};
use cellscope::finder::{
    rank_text, rank_trace, rank_trace_on, top_contexts, CellScore, Feature, LabelKind, StreamingRanker,
};
use cellscope::model::{Arch, Kind, Model};

use crate::common::{fixture, tiny_model};

const C_TEXT: &str = "#include <stdio.h>\n/* count the args */\nint main(int argc, char **argv) {\n\
    \tint n = 0; // none yet\n\tif (argc > 1 && argv[1][0] == '-') {\n\t\tprintf(\"flag %s\\n\", argv[1]);\n\
    \t\tn++;\n\t}\n\tfor (int i = 0; i < argc; i++) { if ((i & 1) == 0) n += 2; }\n\
    \treturn n; /* done */\n}\n";

fn key(c: &CellScore) -> (usize, Kind, usize) {
    (c.layer, c.kind, c.cell)
}

/// A longer text: the snippet repeated with small changes, so every concept occurs often.
fn corpus(copies: usize) -> String {
    (0..copies).map(|i| C_TEXT.replace("argc > 1", &format!("argc > {i}"))).collect()
}

/// The first `n` characters of the SQLite sample: real C, varied enough that few characters
/// share a histogram bin.
fn sample_c(n: usize) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/other_c/sample.c");
    std::fs::read_to_string(path).expect("committed sample").chars().take(n).collect()
}

#[test]
fn planted_cell_ranks_first_with_auc_one() {
    let m = tiny_model(None, 21);
    // 'Z' and 'é' are outside the vocabulary: they still have activations and labels.
    let text = format!("{}Z é {}", C_TEXT, C_TEXT);
    let trace = m.trace(&text);
    assert!(!trace.unknown.is_empty(), "fixture should contain unknown characters");
    let c = &trace.layers[1].get(Kind::Cell);
    let cell = (0..c.ncols())
        .find(|&j| {
            let pos = c.column(j).iter().filter(|&&v| v > 0.0).count();
            pos > 20 && pos < c.nrows() - 20
        })
        .expect("some layer-1 cell changes sign over the text");
    let labels = Labels::Binary(c.column(cell).iter().map(|&v| v > 0.0).collect());
    let ranked =
        rank_trace(&trace, &labels, &[0, 1], Arch::Lstm.kinds(), GradedMetric::Pearson).expect("both classes present");
    assert_eq!(ranked.len(), 2 * Arch::Lstm.kinds().len() * 16);
    // h = o·tanh(c) with o > 0 has c's sign, so h ties with c; h sorts first (kind order).
    let top: Vec<_> = ranked[..2].iter().map(|s| (key(s), s.score, s.sign)).collect();
    assert_eq!(
        top,
        vec![((1, Kind::Hidden, cell), 1.0, 1), ((1, Kind::Cell, cell), 1.0, 1)],
        "top of {:?}",
        &ranked[..4]
    );
    assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));
    let c_only = rank_trace(&trace, &labels, &[1], &[Kind::Cell], GradedMetric::Pearson).expect("valid");
    assert_eq!((key(&c_only[0]), c_only[0].raw), ((1, Kind::Cell, cell), 1.0));
    let json = serde_json::to_value(c_only[0]).expect("serialisable");
    assert_eq!(json["kind"], "c");
}

#[test]
fn ranking_on_several_threads_is_the_ranking_on_one() {
    let m = tiny_model(None, 21);
    let trace = m.trace(&corpus(4));
    for concept in [Concept::String, Concept::BraceDepth] {
        let labels = concept_labels(&trace.chars, concept);
        let kinds = m.arch().kinds();
        let one = rank_trace(&trace, &labels, &[0, 1], kinds, GradedMetric::Pearson).expect("valid");
        assert_eq!(one.len(), 2 * kinds.len() * m.hidden_size());
        for threads in [2, 3, 16, 40] {
            let many =
                rank_trace_on(&trace, &labels, &[1, 0, 1], kinds, GradedMetric::Pearson, threads).expect("valid");
            assert_eq!(many, one, "{concept:?} on {threads} threads");
        }
    }
    // An error in any thread's share is the answer.
    let bad = Labels::Binary(vec![true; trace.len()]);
    assert!(rank_trace_on(&trace, &bad, &[0, 1], m.arch().kinds(), GradedMetric::Pearson, 2).is_err());
}

#[test]
fn rank_trace_reports_bad_labels() {
    let m = tiny_model(None, 21);
    let trace = m.trace("int x;");
    let err = rank_trace(&trace, &Labels::Binary(vec![false; 6]), &[0], &[Kind::Cell], GradedMetric::Pearson)
        .expect_err("no positives");
    assert!(err.to_string().contains("no positive"), "{err}");
}

/// Streams `text` (one trace, fed in one piece) and checks every cell against the exact
/// ranking: AUC within the per-cell bound, r to rounding.
fn assert_streaming_matches_exact(m: &Model, text: &str, concepts: &[Concept]) {
    let trace = m.trace(text);
    let labels: Vec<Labels> = concepts.iter().map(|&c| concept_labels(&trace.chars, c)).collect();
    let targets: Vec<LabelKind> = labels.iter().map(LabelKind::of).collect();
    let mut ranker = StreamingRanker::new(m.hidden_size(), &[0, 1], Arch::Lstm.kinds(), &targets);
    ranker.feed(&trace, &labels).expect("shapes match");
    for (i, (concept, l)) in concepts.iter().zip(&labels).enumerate() {
        let exact = rank_trace(&trace, l, &[0, 1], Arch::Lstm.kinds(), GradedMetric::Pearson).expect("valid labels");
        let streamed = ranker.finish(i).expect("valid labels");
        assert_eq!(streamed.len(), exact.len());
        let mut worst = 0f64;
        for e in &exact {
            let s = streamed.iter().find(|s| key(s) == key(e)).expect("every cell ranked");
            let bound = ranker.auc_error_bound(i, e.layer, e.kind, e.cell).unwrap_or(1e-9);
            let diff = (s.raw - e.raw).abs();
            worst = worst.max(diff);
            assert!(diff <= bound + 1e-9, "{concept} {:?}: streamed {} exact {} bound {bound}", key(e), s.raw, e.raw);
        }
        // The winners agree, up to cells the bound cannot separate.
        let best = streamed[0];
        let exact_of_best = exact.iter().find(|e| key(e) == key(&best)).expect("ranked");
        assert!(
            exact[0].score - exact_of_best.score <= 2e-3,
            "{concept}: streamed best {:?} is {} behind",
            key(&best),
            exact[0].score - exact_of_best.score
        );
        assert!(worst < 2e-3, "{concept}: worst difference {worst}");
    }
}

#[test]
fn streaming_ranker_equals_exact_ranking_within_bound() {
    let m = tiny_model(Some(8), 4);
    assert_streaming_matches_exact(
        &m,
        &sample_c(20_000),
        &[Concept::String, Concept::Comment, Concept::If, Concept::ParenDepth, Concept::Column],
    );
}

#[test]
fn chunked_rank_text_equals_one_shot() {
    let m = tiny_model(None, 8);
    let text = sample_c(6000);
    let feature: Feature = "if".parse().expect("concept");
    let mut calls = Vec::new();
    let chunked = rank_text(&m, &text, &feature, &[0, 1], &[Kind::Hidden, Kind::Cell], 97, |d, t| calls.push((d, t)))
        .expect("valid");
    let n = text.chars().count();
    assert_eq!(calls.len(), n.div_ceil(97));
    assert_eq!(calls.last(), Some(&(n, n)));
    let whole = rank_text(&m, &text, &feature, &[0, 1], &[Kind::Hidden, Kind::Cell], n, |_, _| {}).expect("valid");
    let exact = rank_trace(
        &m.trace(&text),
        &concept_labels(&text.chars().collect::<Vec<_>>(), Concept::If),
        &[0, 1],
        &[Kind::Hidden, Kind::Cell],
        GradedMetric::Pearson,
    )
    .expect("valid");
    for e in &exact {
        for (name, list) in [("chunked", &chunked), ("one-shot", &whole)] {
            let s = list.iter().find(|s| key(s) == key(e)).expect("ranked");
            assert!((s.raw - e.raw).abs() < 2e-3, "{name} {:?}: {} vs {}", key(e), s.raw, e.raw);
        }
    }
    // Graded: Pearson from running sums is exact up to rounding, chunked or not.
    let column: Feature = "column".parse().expect("concept");
    let a = rank_text(&m, &text, &column, &[1], &[Kind::Cell], 50, |_, _| {}).expect("valid");
    let b = rank_text(&m, &text, &column, &[1], &[Kind::Cell], n, |_, _| {}).expect("valid");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(key(x), key(y));
        assert!((x.raw - y.raw).abs() < 1e-5, "{:?}: {} vs {}", key(x), x.raw, y.raw);
    }
}

#[test]
fn top_contexts_show_extreme_windows() {
    let m = tiny_model(None, 3);
    let text = corpus(2);
    let (k, radius) = (3, 4);
    let ctx = top_contexts(&m, &text, 1, Kind::Cell, 5, k, radius).expect("valid cell");
    let values = m.trace(&text).layers[1].get(Kind::Cell).column(5).to_vec();
    let chars: Vec<char> = text.chars().collect();
    let max = values.iter().copied().fold(f32::MIN, f32::max);
    let min = values.iter().copied().fold(f32::MAX, f32::min);
    assert_eq!((ctx.highest.len(), ctx.lowest.len()), (k, k));
    assert!((ctx.highest[0].value - max).abs() < 1e-5, "highest {} but the cell reaches {max}", ctx.highest[0].value);
    assert!((ctx.lowest[0].value - min).abs() < 1e-5, "lowest {} but the cell reaches {min}", ctx.lowest[0].value);
    // Most extreme first, and k different places: no two windows overlap.
    assert!(ctx.highest.windows(2).all(|w| w[0].value >= w[1].value), "{:?}", ctx.highest);
    assert!(ctx.lowest.windows(2).all(|w| w[0].value <= w[1].value), "{:?}", ctx.lowest);
    for side in [&ctx.highest, &ctx.lowest] {
        for (i, a) in side.iter().enumerate() {
            for b in &side[i + 1..] {
                assert!(a.end <= b.start || b.end <= a.start, "windows {a:?} and {b:?} overlap");
            }
        }
    }
    // Each window is the text and the values around its centre.
    for c in ctx.highest.iter().chain(&ctx.lowest) {
        assert_eq!((c.start, c.end), (c.center.saturating_sub(radius), (c.center + radius + 1).min(chars.len())));
        assert_eq!(c.text, chars[c.start..c.end].iter().collect::<String>());
        assert_eq!(c.values, values[c.start..c.end]);
        assert_eq!(c.value, values[c.center]);
    }
    let err = top_contexts(&m, &text, 2, Kind::Cell, 0, 3, 4).expect_err("no layer 2");
    assert!(err.to_string().contains("layer 2"), "{err}");
}

/// A C file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cellscope-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp dir writable");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn find_cells(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cellscope"))
        .arg("find-cells")
        .arg("--model")
        .arg(fixture("lstm_onehot.safetensors"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn cli_ranks_cells_of_a_file_and_a_corpus() {
    let file = TempFile::new("one.c", &corpus(3));
    let path = file.0.to_str().expect("utf-8 temp path");
    let out = find_cells(&["--file", path, "--feature", "string", "--top", "5"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "header and 5 cells:\n{stdout}");
    assert!(lines[0].starts_with("rank") && lines[1].trim_start().starts_with('1'));
    assert!(lines[1..].iter().all(|l| l.ends_with("auc")), "{stdout}");

    let other = TempFile::new("two.c", C_TEXT);
    let other_path = other.0.to_str().expect("utf-8 temp path");
    let out = find_cells(&[
        "--file",
        path,
        "--file",
        other_path,
        "--feature",
        "depth",
        "--kinds",
        "c,f",
        "--layers",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(json["chars"], corpus(3).chars().count() + C_TEXT.chars().count());
    let f = &json["features"][0];
    assert_eq!((f["feature"].as_str(), f["metric"].as_str()), (Some("paren-depth"), Some("pearson")));
    let cells = f["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 10);
    assert!(cells.iter().all(|c| c["layer"] == 1 && (c["kind"] == "c" || c["kind"] == "f")));
}

#[test]
fn cli_all_concepts_prints_a_row_per_concept() {
    let file = TempFile::new("all.c", &corpus(2));
    let out = find_cells(&["--file", file.0.to_str().expect("utf-8"), "--all-concepts", "--kinds", "all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    for concept in cellscope::analysis::CONCEPTS {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(concept.name()))
            .unwrap_or_else(|| panic!("no row for {concept}:\n{stdout}"));
        assert_eq!(row.split_whitespace().count(), 5, "{row}");
    }
}

/// The help and the error for an unknown feature list every concept (they are made from
/// `analysis::CONCEPTS`, not written by hand).
#[test]
fn cli_help_and_unknown_feature_list_every_concept() {
    let help = Command::new(env!("CARGO_BIN_EXE_cellscope")).args(["find-cells", "--help"]).output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    let file = TempFile::new("concepts.c", "int x;\n");
    let out = find_cells(&["--file", file.0.to_str().expect("utf-8"), "--feature", "strung"]);
    let err = String::from_utf8_lossy(&out.stderr);
    for concept in cellscope::analysis::CONCEPTS {
        assert!(help.contains(concept.name()), "find-cells --help lacks {concept}:\n{help}");
        assert!(err.contains(concept.name()), "the unknown-feature error lacks {concept}: {err}");
    }
    assert!(help.contains("paren-depth (or depth)") && err.contains("paren-depth (or depth)"), "{help}\n{err}");
}

#[test]
fn cli_bad_input_fails_with_one_line() {
    let file = TempFile::new("bad.c", "int x;\n");
    let path = file.0.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 5] = [
        (&["--file", path, "--feature", "strung"], "unknown feature `strung`"),
        (&["--file", path, "--feature", "regex:(a"], "bad regex `(a`: unclosed group"),
        (&["--file", "/nonexistent/x.c", "--feature", "string"], "/nonexistent/x.c"),
        (&["--file", path, "--feature", "string"], "feature `string` never holds"),
        (&["--file", path, "--feature", "if", "--kinds", "h,q"], "unknown kind \"q\""),
    ];
    for (args, expected) in cases {
        let out = find_cells(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("tracing")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{stderr}");
        assert!(lines[0].contains(expected), "{args:?}: {stderr}");
    }
}
