//! `cellscope find-cells` (DESIGN §4): rank the cells of a model by how well they track a
//! feature over one file or a corpus of files, or (`--all-concepts`) find the best cell for
//! every built-in C concept in one pass.
//!
//! Files are read and lexed whole, traced from the zero state in chunks, and all fed to one
//! [`StreamingRanker`], so memory stays bounded on a corpus of any size.
//!
//! `--probe` fits a concept direction instead (a sparse logistic probe over many cells,
//! `finder::probe`), `--save` writes it as JSON and `--score-with` scores a saved one on other
//! files.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::analysis::{concept_names, AnalysisError, CONCEPTS};
use crate::finder::{labels_for, CellScore, Feature, StreamingRanker, BINS, CHUNK};
use crate::model::{Arch, Kind};

#[derive(clap::Args, Debug)]
pub struct FindCellsArgs {
    #[command(flatten)]
    pub model: crate::cli::ModelArg,
    /// A text to analyse; repeat for a corpus (each file is traced from the zero state).
    #[arg(long = "file", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// What to rank cells for: a concept or regex:RE. The help lists the concepts from
    /// `analysis::CONCEPTS`.
    #[arg(
        long,
        help = format!("{}, or regex:RE (characters inside a match)", concept_names(|_| true)),
        required_unless_present_any = ["all_concepts", "score_with"],
        conflicts_with = "all_concepts"
    )]
    pub feature: Option<String>,
    /// Rank every built-in concept in one pass and print the best cell of each.
    #[arg(long)]
    pub all_concepts: bool,
    /// Kinds to rank, comma-separated (an LSTM's h, c, i, f, g, o, write, keep; a GRU's
    /// h, r, z, n; an RNN's h), or `all`. Default: h and c (h alone without a c).
    #[arg(long)]
    pub kinds: Option<String>,
    /// Layers to rank, comma-separated (0-based), or `all`.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// How many cells to print (per concept with --json --all-concepts).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Fit a concept direction (a sparse L1 logistic probe over the cells) instead of ranking
    /// single cells; prints its cells, weights and held-out AUC beside the best single cell's.
    #[arg(long, requires = "feature", conflicts_with_all = ["all_concepts", "score_with"])]
    pub probe: bool,
    /// With --probe: the L1 strength (default: chosen on held-out characters).
    #[arg(long, requires = "probe")]
    pub l1: Option<f64>,
    /// With --probe: most cells the direction may keep.
    #[arg(long, requires = "probe", default_value_t = crate::analysis::probe::DEFAULT_MAX_CELLS)]
    pub max_cells: usize,
    /// With --probe: most characters fitted on; longer input is sampled in 20 evenly spaced
    /// windows (the whole of it is still traced).
    #[arg(long, requires = "probe", default_value_t = 20_000)]
    pub max_chars: usize,
    /// With --probe: also write the direction as JSON to PATH (for --score-with or
    /// POST /api/probe/score).
    #[arg(long, requires = "probe", value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// Score a saved direction (from --save or POST /api/probe) on the files: its AUC against
    /// --feature and its best single cell's, or with --json the score at every character.
    #[arg(long, value_name = "PATH", conflicts_with = "all_concepts")]
    pub score_with: Option<PathBuf>,
    /// Characters traced at once; memory grows with it.
    #[arg(long, default_value_t = CHUNK, hide = true)]
    pub chunk: usize,
}

/// One ranked cell as printed, with its AUC error bound when binned.
#[derive(Serialize)]
struct Ranked {
    #[serde(flatten)]
    cell: CellScore,
    #[serde(skip_serializing_if = "Option::is_none")]
    auc_error_bound: Option<f64>,
}

/// The ranking for one feature: cells best first, or why there is none.
#[derive(Serialize)]
struct FeatureResult {
    feature: String,
    metric: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    cells: Vec<Ranked>,
}

pub fn cmd_find_cells(a: FindCellsArgs) -> Result<()> {
    if a.probe || a.score_with.is_some() {
        return crate::probe_cli::cmd_probe(a);
    }
    let features: Vec<Feature> = match &a.feature {
        _ if a.all_concepts => CONCEPTS.iter().map(|&c| Feature::Concept(c)).collect(),
        Some(f) => vec![f.parse::<Feature>()?],
        None => bail!("give --feature NAME or --all-concepts"),
    };
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let mut texts = Vec::with_capacity(a.files.len());
    for path in &a.files {
        let text = crate::train::read_text(path)?;
        texts.push(text.chars().collect::<Vec<char>>());
    }
    let model = a.model.load()?;
    let kinds = match &a.kinds {
        Some(k) => parse_kinds(k, model.arch())?,
        None => model.arch().default_kinds().to_vec(),
    };
    let layers = parse_layers(&a.layers, model.layers())?;
    let total: usize = texts.iter().map(Vec::len).sum();
    let targets: Vec<_> = features.iter().map(Feature::label_kind).collect();
    let mut ranker = StreamingRanker::new(model.hidden_size(), &layers, &kinds, &targets);

    let started = Instant::now();
    let mut bar = ProgressBar::new(total);
    let mut done_before = 0;
    for chars in &texts {
        let labels = labels_for(&features, chars);
        ranker.feed_text(&model, chars, &labels, a.chunk, |done, _| bar.update(done_before + done))?;
        done_before += chars.len();
    }
    bar.finish();

    let files = if a.files.len() == 1 { "the file".to_string() } else { format!("the {} files", a.files.len()) };
    let results: Vec<FeatureResult> = features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (cells, error) = match ranker.finish(i) {
                Ok(cells) => (cells, None),
                Err(e) => (Vec::new(), Some(explain(&e, f, &files))),
            };
            let cells = cells
                .into_iter()
                .take(a.top)
                .map(|cell| Ranked {
                    auc_error_bound: ranker.auc_error_bound(i, cell.layer, cell.kind, cell.cell),
                    cell,
                })
                .collect();
            FeatureResult { feature: f.to_string(), metric: f.metric(), error, cells }
        })
        .collect();
    if !a.all_concepts {
        if let Some(e) = &results[0].error {
            bail!("{e}");
        }
    }

    let mut out = std::io::stdout().lock();
    if a.json {
        let json = serde_json::json!({
            "model": model.name,
            "files": a.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "chars": total,
            "kinds": kinds.iter().map(|k| k.letter()).collect::<Vec<_>>(),
            "layers": layers,
            "bins": BINS,
            "seconds": started.elapsed().as_secs_f64(),
            "features": results,
        });
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else if a.all_concepts {
        print_concept_table(&mut out, &results)?;
    } else {
        print_ranking(&mut out, &results[0])?;
    }
    eprintln!(
        "{} cells (layers {} × kinds {} × {}) over {} characters of {} in {:.1} s",
        layers.len() * kinds.len() * model.hidden_size(),
        join(layers.iter().map(|l| l.to_string())),
        join(kinds.iter().map(|k| k.letter().to_string())),
        model.hidden_size(),
        total,
        files,
        started.elapsed().as_secs_f64(),
    );
    let worst = results
        .iter()
        .flat_map(|r| r.cells.iter().take(if a.all_concepts { 1 } else { a.top }))
        .filter_map(|c| c.auc_error_bound)
        .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
    if let Some(worst) = worst {
        eprintln!("AUCs from {BINS}-bin histograms: each shown within ±{worst:.4} of exact");
    }
    Ok(())
}

/// Says which feature has no usable labels in which text.
pub(crate) fn explain(e: &AnalysisError, feature: &Feature, files: &str) -> String {
    match e {
        AnalysisError::NoPositives { len } => format!(
            "feature `{feature}` never holds in {files} ({len} characters); choose text where it \
             occurs"
        ),
        AnalysisError::NoNegatives { len } => format!(
            "feature `{feature}` holds at every one of the {len} characters of {files}; choose \
             text where it also does not hold"
        ),
        AnalysisError::ConstantLabels { len } => format!(
            "feature `{feature}` has the same value at all {len} characters of {files}, so no \
             cell can correlate with it"
        ),
        other => format!("feature `{feature}`: {other}"),
    }
}

/// `--kinds`: comma-separated kinds the model's architecture records, or `all` of them.
pub(crate) fn parse_kinds(s: &str, arch: Arch) -> Result<Vec<Kind>> {
    if s == "all" {
        return Ok(arch.kinds().to_vec());
    }
    s.split(',')
        .map(|k| {
            let kind = Kind::parse(k.trim()).with_context(|| {
                format!(
                    "unknown kind {k:?} in --kinds (this {arch} model records {}; comma-separated, or all)",
                    arch.kind_list()
                )
            })?;
            arch.check_kind(kind).with_context(|| format!("--kinds {s}"))
        })
        .collect()
}

pub(crate) fn parse_layers(s: &str, layers: usize) -> Result<Vec<usize>> {
    if s == "all" {
        return Ok((0..layers).collect());
    }
    s.split(',')
        .map(|l| {
            let layer: usize = l.trim().parse().with_context(|| format!("--layers: {l:?} is not a layer number"))?;
            if layer >= layers {
                bail!("--layers {layer} is out of range: the model has layers 0..={}", layers - 1);
            }
            Ok(layer)
        })
        .collect()
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

fn sign_symbol(sign: i8) -> &'static str {
    match sign {
        1 => "+",
        -1 => "-",
        _ => "0",
    }
}

fn print_ranking(out: &mut impl Write, r: &FeatureResult) -> std::io::Result<()> {
    writeln!(out, "rank  layer  kind  cell   score  sign  metric")?;
    for (i, c) in r.cells.iter().enumerate() {
        let s = &c.cell;
        writeln!(
            out,
            "{:>4}  {:>5}  {:>4}  {:>4}  {:.4}  {:>4}  {}",
            i + 1,
            s.layer,
            s.kind.letter(),
            s.cell,
            s.score,
            sign_symbol(s.sign),
            r.metric
        )?;
    }
    Ok(())
}

/// One row per concept, five whitespace-separated fields each (`-` where there is no
/// answer), so scripts can read it with `awk`.
fn print_concept_table(out: &mut impl Write, results: &[FeatureResult]) -> std::io::Result<()> {
    writeln!(out, "{:<13} {:<7} {:<10} {:>6}  sign", "concept", "metric", "best", "score")?;
    for r in results {
        match r.cells.first() {
            Some(c) => writeln!(
                out,
                "{:<13} {:<7} {:<10} {:.4}  {}",
                r.feature,
                r.metric,
                format!("{}/{}/{}", c.cell.layer, c.cell.kind.letter(), c.cell.cell),
                c.cell.score,
                sign_symbol(c.cell.sign)
            )?,
            None => writeln!(out, "{:<13} {:<7} {:<10} {:>6}  -", r.feature, r.metric, "-", "-")?,
        }
    }
    for r in results {
        if let Some(e) = &r.error {
            writeln!(out, "# {e}")?;
        }
    }
    Ok(())
}

/// A one-line progress report on stderr, redrawn with `\r` (or a line every 10 s when
/// stderr is not a terminal).
pub(crate) struct ProgressBar {
    total: usize,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl ProgressBar {
    pub(crate) fn new(total: usize) -> Self {
        Self { total, started: Instant::now(), last: None, tty: std::io::stderr().is_terminal() }
    }

    pub(crate) fn update(&mut self, done: usize) {
        let now = Instant::now();
        let every = Duration::from_millis(if self.tty { 200 } else { 10_000 });
        if self.last.is_some_and(|t| now - t < every) && done < self.total {
            return;
        }
        self.last = Some(now);
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 { format!("{:.0} s", (self.total - done) as f64 / rate) } else { "?".into() };
        let pct = 100.0 * done as f64 / self.total.max(1) as f64;
        let line = format!("tracing {done}/{} characters ({pct:.0}%), {rate:.0} chars/s, ETA {eta}", self.total);
        if self.tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }

    pub(crate) fn finish(&self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
    }
}
