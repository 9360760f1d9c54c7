//! `cellscope find-cells --probe` and `--score-with`: fit a concept direction over files and
//! print (or save) it, or score a saved one on other files. The work is in `finder::probe`;
//! this module reads files, reports progress and prints.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::analysis::{concept_names, Labels};
use crate::analysis_cli::{parse_kinds, parse_layers, FindCellsArgs, ProgressBar};
use crate::finder::labels_for;
use crate::finder::probe::{probe_texts, score_texts, Probe, ProbeSpec};
use crate::finder::Feature;

/// A saved direction: what it was fitted on, then the probe itself.
#[derive(Serialize)]
struct SavedProbe<'a> {
    model: &'a str,
    feature: String,
    files: Vec<String>,
    /// Characters fitted on (sampled in windows from longer files).
    chars: usize,
    #[serde(flatten)]
    probe: &'a Probe,
}

/// `find-cells --probe` or `find-cells --score-with`.
pub fn cmd_probe(a: FindCellsArgs) -> Result<()> {
    let feature: Option<Feature> = a.feature.as_deref().map(str::parse).transpose()?;
    let mut texts = Vec::with_capacity(a.files.len());
    for path in &a.files {
        texts.push(crate::train::read_text(path)?.chars().collect::<Vec<char>>());
    }
    let labels = match &feature {
        Some(f) => Some(binary_labels(f, &texts)?),
        None => None,
    };
    let model = a.model.load()?;
    let files: Vec<String> = a.files.iter().map(|p| p.display().to_string()).collect();
    let total: usize = texts.iter().map(Vec::len).sum();
    let mut bar = ProgressBar::new(total);
    let mut out = std::io::stdout().lock();
    if let Some(path) = &a.score_with {
        let spec = read_spec(path)?;
        let scored = score_texts(&model, &spec, &texts, labels.as_deref(), |done, _| bar.update(done))
            .with_context(|| format!("scoring {} on this model", path.display()))?;
        bar.finish();
        if a.json {
            serde_json::to_writer(&mut out, &scored)?;
            writeln!(out)?;
            return Ok(());
        }
        writeln!(
            out,
            "direction {} ({} cells) on {total} characters of {}",
            path.display(),
            spec.weights.len(),
            files.join(", ")
        )?;
        match (&feature, scored.auc) {
            (Some(f), Some(auc)) => writeln!(out, "AUC {auc:.4} for {f}")?,
            _ => writeln!(out, "no --feature given: scores only (--json prints them)")?,
        }
        if let (Some(b), Some(auc)) = (spec.best_cell, scored.best_cell_auc) {
            writeln!(out, "its best single cell {}/{}/{}: AUC {auc:.4}", b.layer, b.kind.letter(), b.cell)?;
        }
        return Ok(());
    }
    let (Some(feature), Some(labels)) = (feature, labels) else { bail!("--probe needs --feature NAME") };
    if a.max_chars == 0 {
        bail!("--max-chars must be at least 1");
    }
    let kinds = match &a.kinds {
        Some(k) => parse_kinds(k, model.arch())?,
        None => model.arch().default_kinds().to_vec(),
    };
    let layers = parse_layers(&a.layers, model.layers())?;
    let options = crate::analysis::probe::ProbeOptions { l1: a.l1, max_cells: a.max_cells };
    let started = std::time::Instant::now();
    let probe = probe_texts(&model, &texts, &labels, &layers, &kinds, a.max_chars, options, |done, _| bar.update(done))
        .with_context(|| format!("fitting a direction for {feature} on {}", files.join(", ")))?;
    bar.finish();
    let saved =
        SavedProbe { model: &model.name, feature: feature.to_string(), files, chars: probe.split.chars, probe: &probe };
    if let Some(path) = &a.save {
        let json = serde_json::to_string_pretty(&saved)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        serde_json::to_writer(&mut out, &saved)?;
        writeln!(out)?;
    } else {
        print_probe(&mut out, &feature, &probe)?;
    }
    eprintln!("fitted in {:.1} s (tracing included)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Binary labels of every text for `feature`; a graded concept is refused.
fn binary_labels(feature: &Feature, texts: &[Vec<char>]) -> Result<Vec<Vec<bool>>> {
    texts
        .iter()
        .map(|chars| match labels_for(std::slice::from_ref(feature), chars).pop() {
            Some(Labels::Binary(b)) => Ok(b),
            _ => bail!(
                "feature `{feature}` is graded (a number per character); a direction separates yes/no concepts: use \
                 {} or regex:RE",
                concept_names(|c| !c.is_graded())
            ),
        })
        .collect()
}

fn read_spec(path: &Path) -> Result<ProbeSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("{} is not a saved direction (expected JSON with weights and bias, as --save writes)", path.display())
    })
}

fn print_probe(out: &mut impl Write, feature: &Feature, p: &Probe) -> std::io::Result<()> {
    let s = &p.split;
    let b = &p.best_cell;
    writeln!(
        out,
        "direction for {feature}: {} cells, l1 {:.5} (no cell enters above {:.5})",
        p.weights.len(),
        p.l1,
        p.l1_max
    )?;
    writeln!(
        out,
        "held-out AUC {:.4} (train {:.4}) on {} held-out characters (blocks {} of the {} fitted, in {} blocks, {}-character guards); {} trained",
        p.auc_heldout,
        p.auc_train,
        s.heldout_chars,
        s.heldout.iter().map(|(a, b)| format!("{a}..{b}")).collect::<Vec<_>>().join(", "),
        s.chars,
        s.blocks,
        s.guard,
        s.train_chars,
    )?;
    writeln!(
        out,
        "best single cell {}/{}/{} ({}): held-out AUC {:.4} (train {:.4})",
        b.layer,
        b.kind.letter(),
        b.cell,
        if b.sign < 0 { "-" } else { "+" },
        b.auc_heldout,
        b.auc_train
    )?;
    writeln!(out, "rank  layer  kind  cell     weight         mean          std")?;
    for (i, w) in p.weights.iter().enumerate() {
        writeln!(
            out,
            "{:>4}  {:>5}  {:>4}  {:>4}  {:>+9.4}  {:>11.4}  {:>11.4}",
            i + 1,
            w.layer,
            w.kind.letter(),
            w.cell,
            w.weight,
            w.mean,
            w.std
        )?;
    }
    writeln!(out, "bias {:+.4}", p.bias)
}
