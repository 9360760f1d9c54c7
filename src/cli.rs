//! The command line (DESIGN §4): argument definitions and one function per
//! command. `main.rs` only parses and calls [`run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::model::{Kind, Model};
use crate::rng::Rng;
use crate::train::{self, RunOptions, TrainConfig};

/// The shipped default model, relative to the crate root.
pub const DEFAULT_MODEL: &str = "models/linux-lstm.safetensors";

/// Finds the default model: `models/linux-lstm.safetensors` under the current
/// directory, else under the crate root this binary was built from.
pub fn default_model_path() -> PathBuf {
    let local = PathBuf::from(DEFAULT_MODEL);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL)
}

#[derive(Parser, Debug)]
#[command(name = "cellscope", version, about = "See what the hidden cells of a character-level LSTM have learned")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the web app and JSON API.
    Serve(crate::server::ServeArgs),
    /// Train a character-level LSTM on a text file.
    Train(TrainArgs),
    /// Print a text coloured by one cell (24-bit ANSI), or the whole trace as JSON.
    Trace(TraceArgs),
    /// Rank cells by how well they track a concept over a file or a corpus.
    FindCells(crate::analysis_cli::FindCellsArgs),
    /// Generate text from the model.
    Sample(SampleArgs),
    /// Cross-entropy (nats per character) of the model on a text file.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training text (UTF-8).
    #[arg(long)]
    pub train: PathBuf,
    /// Validation text, scored every --eval-every steps; the best model is kept.
    #[arg(long)]
    pub val: PathBuf,
    /// Test text, scored once at the end and recorded in the model's metadata.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Where the best model goes; the checkpoint and log are written beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT's checkpoint (same flags required).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Parallel streams per batch.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Characters per stream per batch (BPTT length).
    #[arg(long, default_value_t = 100)]
    pub seq: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// adam or rmsprop.
    #[arg(long, default_value = "adam")]
    pub optimizer: train::optim::Optimizer,
    /// Gradient-norm clipping threshold (0 = off).
    #[arg(long, default_value_t = 5.0)]
    pub clip: f32,
    /// Dropout between layers and before the decoder.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    #[arg(long, default_value_t = 0.95)]
    pub lr_decay: f32,
    /// Start decaying the learning rate after this many epochs.
    #[arg(long, default_value_t = 5.0)]
    pub decay_after: f32,
    #[arg(long, default_value_t = 10.0)]
    pub epochs: f32,
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads (the batch is split between them).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Stop after this many minutes (a checkpoint is saved; resume later).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub max_steps: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ModelArg {
    /// Model file (safetensors, DESIGN §3). Default: the shipped Linux model.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    pub fn load(&self) -> Result<Model> {
        let path = self.model.clone().unwrap_or_else(default_model_path);
        Model::load(&path).with_context(|| format!("loading {}", path.display()))
    }
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The text to trace.
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A file to trace.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Layer (0-based).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// h, c, i, f, g or o.
    #[arg(long, default_value = "c")]
    pub kind: String,
    #[arg(long, default_value_t = 0)]
    pub cell: usize,
    /// Print the whole trace as JSON instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to start from.
    #[arg(long, default_value = "")]
    pub prime: String,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 500)]
    pub length: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Also store the result in the model file's `cellscope.train` metadata as
    /// `<NAME>_loss` and `<NAME>_sha256` (e.g. `--record test`).
    #[arg(long, value_name = "NAME")]
    pub record: Option<String>,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => crate::server::serve_blocking(args),
        Command::Train(args) => cmd_train(args),
        Command::Trace(args) => cmd_trace(args),
        Command::FindCells(args) => crate::analysis_cli::cmd_find_cells(args),
        Command::Sample(args) => cmd_sample(args),
        Command::Eval(args) => cmd_eval(args),
    }
}

/// Sets a flag on Ctrl-C or SIGTERM, so long work can save and stop cleanly.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        });
        eprintln!("\nstopping: saving a checkpoint (press Ctrl-C again to abort)…");
        f.store(true, Ordering::SeqCst);
        // A second signal aborts at once.
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            std::process::exit(130);
        }
    });
    flag
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let config = TrainConfig {
        layers: a.layers,
        hidden: a.hidden,
        batch: a.batch,
        seq: a.seq,
        lr: a.lr,
        optimizer: a.optimizer,
        clip: a.clip,
        dropout: a.dropout,
        lr_decay: a.lr_decay,
        decay_after: a.decay_after,
        epochs: a.epochs,
        eval_every: a.eval_every.max(1),
        seed: a.seed,
        threads: a.threads.max(1),
        init: 0.08,
    };
    let opts = RunOptions {
        out: a.out.clone(),
        resume: a.resume,
        max_seconds: a.max_minutes.map(|m| m * 60.0),
        max_steps: a.max_steps,
        verbose: true,
        test: a.test.clone(),
    };
    let stop = stop_flag();
    let report = train::train(config, &a.train, &a.val, &opts, &stop)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.interrupted {
        eprintln!("interrupted: checkpoint saved; continue with the same command plus --resume");
    } else if !report.finished {
        eprintln!("stopped at the time/step limit: continue with the same command plus --resume");
    }
    Ok(())
}

/// A diverging blue–white–red colour for v in [−1, 1] (RGB).
pub fn diverging_rgb(v: f32) -> (u8, u8, u8) {
    let v = if v.is_finite() { v.clamp(-1.0, 1.0) } else { 0.0 };
    let mix = |a: f32, b: f32, t: f32| (a + (b - a) * t).round() as u8;
    // −1 → (33, 102, 172) blue, 0 → white, +1 → (178, 24, 43) red.
    if v < 0.0 {
        let t = -v;
        (mix(255.0, 33.0, t), mix(255.0, 102.0, t), mix(255.0, 172.0, t))
    } else {
        (mix(255.0, 178.0, v), mix(255.0, 24.0, v), mix(255.0, 43.0, v))
    }
}

fn cmd_trace(a: TraceArgs) -> Result<()> {
    let model = a.model.load()?;
    let text = match (&a.text, &a.file) {
        (Some(t), None) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        _ => bail!("give the text with --text STR or --file PATH"),
    };
    let kind = Kind::parse(&a.kind).with_context(|| format!("unknown --kind {:?} (use h, c, i, f, g or o)", a.kind))?;
    if a.layer >= model.layers() {
        bail!("--layer {} is out of range: the model has layers 0..{}", a.layer, model.layers() - 1);
    }
    if a.cell >= model.hidden_size() {
        bail!("--cell {} is out of range: layers have cells 0..{}", a.cell, model.hidden_size() - 1);
    }
    let trace = model.trace(&text);
    let mut out = std::io::stdout().lock();
    if a.json {
        let json = crate::server::trace_json(&model, &trace, None, &Kind::ALL, None, 5);
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
        return Ok(());
    }
    let values = trace.layers[a.layer].get(kind).column(a.cell).to_vec();
    let (lo, hi) = match kind {
        Kind::Input | Kind::Forget | Kind::Output => (0.0, 1.0),
        _ => (-1.0, 1.0),
    };
    writeln!(
        out,
        "layer {} {} cell {} of {} ({} characters)",
        a.layer,
        kind.describe(),
        a.cell,
        model.name,
        trace.len()
    )?;
    for (t, &c) in trace.chars.iter().enumerate() {
        // Gates live in [0, 1]: map them onto the same diverging scale.
        let v = if lo == 0.0 { 2.0 * values[t] - 1.0 } else { values[t] };
        let (r, g, b) = diverging_rgb(v);
        let shown = match c {
            '\n' => "\u{21b5}".to_string(),
            '\t' => "\u{2192}   ".to_string(),
            c if c.is_control() => "\u{fffd}".to_string(),
            c => c.to_string(),
        };
        write!(out, "\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{shown}\x1b[0m")?;
        if c == '\n' {
            writeln!(out)?;
        }
    }
    writeln!(out)?;
    write!(out, "legend: ")?;
    for step in 0..=8 {
        let v = -1.0 + step as f32 * 0.25;
        let (r, g, b) = diverging_rgb(v);
        let label = lo + (hi - lo) * (v + 1.0) / 2.0;
        write!(out, "\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m {label:+.2} \x1b[0m")?;
    }
    writeln!(out)?;
    if !trace.unknown.is_empty() {
        writeln!(
            out,
            "{} characters are not in the vocabulary (fed as zero input) at {:?}",
            trace.unknown.len(),
            &trace.unknown[..trace.unknown.len().min(20)]
        )?;
    }
    Ok(())
}

/// Samples `length` characters after `prime` at `temperature`.
pub fn sample(model: &Model, prime: &str, temperature: f32, length: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut state = model.zero_state();
    let mut out = String::new();
    let mut probs: Vec<f32>;
    if prime.is_empty() {
        // Start from a newline if the vocabulary has one, else from its first char.
        let start = if model.vocab.id('\n').is_some() { '\n' } else { model.vocab.chars()[0] };
        let t = model.trace_from(&start.to_string(), &state);
        probs = t.probs.row(0).to_vec();
        state = t.final_state;
    } else {
        let t = model.trace_from(prime, &state);
        probs = t.probs.row(t.len() - 1).to_vec();
        state = t.final_state;
    }
    for _ in 0..length {
        let weights: Vec<f32> = if temperature <= 0.0 {
            let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            (0..probs.len()).map(|i| if i == best { 1.0 } else { 0.0 }).collect()
        } else {
            let logs: Vec<f32> = probs.iter().map(|p| p.max(1e-30).ln() / temperature).collect();
            let m = logs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            logs.iter().map(|l| (l - m).exp()).collect()
        };
        let id = rng.categorical(&weights);
        let c = model.vocab.chars()[id];
        out.push(c);
        let t = model.trace_from(&c.to_string(), &state);
        probs = t.probs.row(0).to_vec();
        state = t.final_state;
    }
    out
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let model = a.model.load()?;
    if !a.temperature.is_finite() || a.temperature < 0.0 {
        bail!("--temperature must be a number ≥ 0 (0 = always the likeliest character)");
    }
    let unknown = model.vocab.encode(&a.prime).unknown;
    if !unknown.is_empty() {
        eprintln!("note: {} characters of --prime are not in the vocabulary (fed as zero input)", unknown.len());
    }
    print!("{}", a.prime);
    println!("{}", sample(&model, &a.prime, a.temperature, a.length, a.seed));
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let model = a.model.load()?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let started = std::time::Instant::now();
    let (loss, count) = train::evaluate(&model, &text, |done, total| {
        eprint!("\rscoring {done}/{total} characters");
    });
    eprintln!();
    println!(
        "{}",
        serde_json::json!({
            "file": a.file.display().to_string(), "nats_per_char": loss, "bits_per_char": loss / std::f64::consts::LN_2,
            "chars_scored": count, "seconds": started.elapsed().as_secs_f64(),
        })
    );
    if let Some(name) = &a.record {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            bail!("--record takes a plain name like test or sqlite, got {name:?}");
        }
        let path = a.model.model.clone().unwrap_or_else(default_model_path);
        let mut model = model;
        if !model.train.is_object() {
            model.train = serde_json::json!({});
        }
        model.train[format!("{name}_loss")] = serde_json::json!(loss);
        model.train[format!("{name}_sha256")] = serde_json::json!(train::sha256_hex(text.as_bytes()));
        model.train[format!("{name}_chars")] = serde_json::json!(count);
        model.save(&path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("recorded {name}_loss = {loss:.4} in {}", path.display());
    }
    Ok(())
}
