//! The command line (DESIGN §4): argument definitions and one function per
//! command. `main.rs` only parses and calls [`run`].
//!
//! Error policy: every bad input (a missing or non-UTF-8 file, a flag out of range,
//! a text with nothing to score) is an `Err` whose message names the input and what
//! to do; `main` prints it and exits 2. A closed stdout (`cellscope sample | head`)
//! is not an error: output stops and the exit status is 0, as Unix tools do.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::display;
use crate::model::{Kind, Model};
use crate::train::{self, RunOptions, TrainConfig};

pub use crate::model::default_model_path;

#[derive(Parser, Debug)]
#[command(name = "cellscope", version, about = "See what the hidden cells of a character-level LSTM have learned")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the web app and JSON API.
    Serve(ServeArgs),
    /// Train a character-level LSTM on a text file.
    Train(TrainArgs),
    /// Show one cell's value at every character of a text (coloured on a terminal,
    /// a table otherwise), or the trace as JSON.
    ///
    /// With colour (--color always, or auto on a terminal): the text with each
    /// character's background coloured by the value (blue −1, white 0, red +1; gates
    /// from 0 to 1), then a legend. Without (a pipe, a file, --color never): one line
    /// per character, tab-separated: position, the character as a Rust char literal
    /// ('a', '\n'), and the value; lines starting with # are comments.
    Trace(TraceArgs),
    /// Rank cells by how well they track a concept over a file or a corpus.
    FindCells(crate::analysis_cli::FindCellsArgs),
    /// Generate text from the model.
    Sample(SampleArgs),
    /// How the model remembers at one character: the chosen cell's step written
    /// out with its numbers (f, i, g, c = f·c₋₁ + i·g, o, h), and how far back the
    /// prediction made there looks (the gradient against distance, and where it
    /// falls below 1% of its peak).
    Explain(ExplainArgs),
    /// Cross-entropy (nats per character) of the model on a text file.
    Eval(EvalArgs),
}

/// `cellscope serve` flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model file to serve (repeatable; the first is the default). Default: every
    /// model in the shipped models/ folder, the Linux LSTM first.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// HOST:PORT to listen on (a name such as localhost:3001 is resolved).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = crate::server::Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Longest text (in characters) a request may trace.
    #[arg(long, default_value_t = crate::server::Limits::default().max_text_chars)]
    pub max_text_chars: usize,
    /// Model runs (trace and answer) at once; each holds one text's trace in memory.
    #[arg(long, default_value_t = crate::server::Limits::default().max_concurrent)]
    pub max_concurrent: usize,
    /// Requests that may wait for a model slot; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = crate::server::Limits::default().max_queue)]
    pub max_queue: usize,
    /// Largest answer in bytes (estimated before any work; 413 beyond it).
    #[arg(long, default_value_t = crate::server::Limits::default().max_response_bytes)]
    pub max_response_bytes: usize,
    /// Megabytes of recent traces kept so the same text is not traced twice (0 = off).
    #[arg(long, default_value_t = crate::server::Limits::default().trace_cache_bytes >> 20)]
    pub trace_cache_mb: usize,
    /// Megabytes of free trace buffers kept for the next traces to record into, so
    /// that their memory is not zeroed again (0 = off). They stay resident.
    #[arg(long, default_value_t = crate::server::Limits::default().buffer_pool_bytes >> 20)]
    pub buffer_pool_mb: usize,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = crate::server::NetLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's head (also the idle keep-alive timeout).
    #[arg(long, default_value_t = crate::server::NetLimits::default().header_timeout.as_secs())]
    pub header_timeout: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, default_value_t = crate::server::Limits::default().body_timeout_secs)]
    pub body_timeout: u64,
    /// Seconds to let requests in flight finish after Ctrl-C / SIGTERM.
    #[arg(long, default_value_t = crate::server::NetLimits::default().shutdown_grace.as_secs())]
    pub shutdown_grace: u64,
    /// Also answer to this Host name (repeatable; `*` for any). IP literals and
    /// localhost are always accepted.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Let pages from this origin (e.g. http://localhost:8888 for Jupyter) call the
    /// API (repeatable). Default: no cross-origin access.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Text for cell pages' top contexts. Default: the reference text shipped
    /// beside the model (`<model>.reference.txt`), else the built-in C sample.
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

impl ServeArgs {
    /// The server's settings from the flags, every number checked and the models loaded.
    fn into_config(self) -> Result<crate::server::ServeConfig> {
        let limits = crate::server::Limits {
            max_body_bytes: self.max_body_bytes,
            max_text_chars: self.max_text_chars,
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            max_response_bytes: self.max_response_bytes,
            body_timeout_secs: self.body_timeout,
            trace_cache_bytes: self.trace_cache_mb.min(1 << 20) << 20,
            buffer_pool_bytes: self.buffer_pool_mb.min(1 << 20) << 20,
        };
        limits.validate()?;
        for (flag, v) in [("--header-timeout", self.header_timeout), ("--shutdown-grace", self.shutdown_grace)] {
            if !(1..=3600).contains(&v) {
                bail!("{flag} {v} is out of range: use 1..=3600 seconds");
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            bail!("--max-connections {} is out of range: use 1..=65536", self.max_connections);
        }
        let net = crate::server::NetLimits {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace),
        };
        let files = if self.model.is_empty() { crate::server::default_model_files()? } else { self.model };
        let models = crate::server::load_models(&files, self.reference.as_deref())?;
        Ok(crate::server::ServeConfig {
            models,
            limits,
            net,
            addr: self.addr,
            allow_hosts: self.allow_hosts,
            cors_origins: self.cors_origins,
        })
    }
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
    /// The recurrent architecture: lstm, gru (PyTorch's nn.GRU) or rnn (tanh).
    #[arg(long, default_value = "lstm")]
    pub arch: crate::model::Arch,
    /// Stacked recurrent layers (1 to 16).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Cells per layer (1 to 4096; the run's estimated memory must also fit 16 GiB).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Parallel streams per batch.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Characters per stream per batch (BPTT length).
    #[arg(long, default_value_t = 100)]
    pub seq: usize,
    /// Learning rate (> 0).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// adam or rmsprop.
    #[arg(long, default_value = "adam")]
    pub optimizer: train::optim::Optimizer,
    /// Gradient-norm clipping threshold (0 = off).
    #[arg(long, default_value_t = 5.0)]
    pub clip: f32,
    /// Dropout between layers and before the decoder, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Multiply the learning rate by this after each epoch past --decay-after, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    pub lr_decay: f32,
    /// Start decaying the learning rate after this many epochs.
    #[arg(long, default_value_t = 5.0)]
    pub decay_after: f32,
    #[arg(long, default_value_t = 10.0)]
    pub epochs: f32,
    /// Score the validation text every this many steps.
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

/// When `trace` colours its output.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    fn colour_stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::parse(s).ok_or_else(|| {
        format!("unknown kind {s:?} (use one of {}; which exist depends on the model)", crate::display::kind_names())
    })
}

/// Arguments of `cellscope trace` (the output forms are described on [`Command::Trace`]).
#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub input: TextArg,
    /// Layer (0-based). Default 0; with --json, every layer.
    #[arg(long)]
    pub layer: Option<usize>,
    /// h, c, i, f, g, o, write (i·g) or keep (f·c₋₁). Default c; with --json, h and c.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<Kind>,
    /// Cell (0-based). Default 0; with --json, every cell.
    #[arg(long)]
    pub cell: Option<usize>,
    /// Print the trace as JSON (the shape of POST /api/trace), keeping only the
    /// --layer, --kind and --cell given.
    #[arg(long)]
    pub json: bool,
    /// Colour the output: auto (when stdout is a terminal), always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// The text a command reads: given inline or as a file.
#[derive(Args, Debug)]
pub struct TextArg {
    /// The text.
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A file holding the text (UTF-8).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

impl TextArg {
    pub fn read(&self) -> Result<String> {
        match (&self.text, &self.file) {
            (Some(t), None) => Ok(t.clone()),
            (None, Some(f)) => Ok(train::read_text(f)?),
            _ => bail!("give the text with --text STR or --file PATH"),
        }
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub input: TextArg,
    /// The character (0-based index).
    #[arg(long)]
    pub position: usize,
    /// Layer of the cell to explain (0-based).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// The cell to explain (0-based).
    #[arg(long, default_value_t = 0)]
    pub cell: usize,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to start from.
    #[arg(long, default_value = "")]
    pub prime: String,
    /// Sharpness: 0 always takes the likeliest character, 1 samples the model as is,
    /// higher is wilder.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Characters to generate (at most 10,000,000); they are printed as they come.
    #[arg(long, default_value_t = 500)]
    pub length: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Draw among the K likeliest characters only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Hold a cell at a value while sampling: LAYER/KIND/CELL=VALUE[@FROM..TO], KIND
    /// h or c, steps counted from the prime's first character (repeatable). `1/c/5=0`
    /// ablates cell 5 of layer 1's cell state throughout.
    #[arg(long = "clamp", value_name = "SPEC")]
    pub clamps: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text file to score (UTF-8, at least 2 characters).
    #[arg(long)]
    pub file: PathBuf,
    /// Also store the result in the model file's `cellscope.train` metadata as
    /// `<NAME>_loss` and `<NAME>_sha256` (e.g. `--record test`).
    #[arg(long, value_name = "NAME")]
    pub record: Option<String>,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let result = match cli.command {
        Command::Serve(args) => return crate::server::serve_blocking(args.into_config()?),
        Command::Train(args) => cmd_train(args),
        Command::Trace(args) => cmd_trace(args),
        Command::FindCells(args) => crate::analysis_cli::cmd_find_cells(args),
        Command::Sample(args) => cmd_sample(args),
        Command::Explain(args) => cmd_explain(args),
        Command::Eval(args) => cmd_eval(args),
    };
    // The reader of stdout left (`| head`): it has all it wants, so stop quietly.
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        r => r,
    }
}

/// The one-line message `main` prints: `e` and its causes joined by ": ", leaving
/// out a cause whose text an outer message already holds (several error types
/// print their source themselves, and `{:#}` would repeat it).
pub fn error_message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Whether writing to a closed pipe caused `e` (directly or through serde_json).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| cause.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind));
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
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
        arch: a.arch,
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
        eval_every: a.eval_every,
        seed: a.seed,
        threads: a.threads,
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
    writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
    if report.interrupted {
        eprintln!("interrupted: checkpoint saved; continue with the same command plus --resume");
    } else if !report.finished {
        eprintln!("stopped at the time/step limit: continue with the same command plus --resume");
    }
    Ok(())
}

fn cmd_explain(a: ExplainArgs) -> Result<()> {
    let text = a.input.read()?;
    let model = a.model.load()?;
    let len = text.chars().count();
    if a.position >= len {
        bail!(
            "--position {} is past the text's end: it has {len} characters (0..={})",
            a.position,
            len.saturating_sub(1)
        );
    }
    if a.layer >= model.layers() {
        bail!("--layer {} is out of range: the model has layers 0..={}", a.layer, model.layers() - 1);
    }
    if a.cell >= model.hidden_size() {
        bail!("--cell {} is out of range: layers have cells 0..={}", a.cell, model.hidden_size() - 1);
    }
    // Nothing after the position matters.
    let text: String = text.chars().take(a.position + 2).collect();
    let trace = model.trace(&text);
    let step = crate::model::explain_step(&trace, a.layer, a.cell, a.position).context("indices were checked")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "layer {} cell {} reading {:?} at position {}:",
        a.layer, a.cell, trace.chars[a.position], a.position
    )?;
    for line in &step.lines {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "  write = i·g = {:+.3}   keep = f·c₋₁ = {:+.3}   erase = (1 − f)·|c₋₁| = {:.3}",
        step.write, step.keep, step.erase
    )?;
    match crate::model::saliency(&model, &trace, a.position, crate::server::memory::MAX_SALIENCY_STEPS) {
        None => {
            writeln!(out, "\nno prediction to trace back: the next character is missing or outside the vocabulary")?
        }
        Some(s) => {
            let peak = s.grad_norm.iter().copied().fold(0.0, f32::max).max(f32::MIN_POSITIVE);
            let target = s.target.map_or(String::new(), |c| format!("{c:?}"));
            writeln!(out, "\nhow far back the prediction of {target} (ln p = {:.3}) looks:", s.logp)?;
            writeln!(out, "  distance  ‖∂ ln p / ∂x‖ / peak")?;
            for d in [0usize, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] {
                if d > s.position - s.first {
                    break;
                }
                writeln!(out, "  {d:>8}  {:.2e}", s.grad_norm[s.position - d - s.first] / peak)?;
            }
            writeln!(out, "  stays above 1% of its peak up to {} characters back", crate::model::horizon_1pct(&s))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn cmd_trace(a: TraceArgs) -> Result<()> {
    let text = a.input.read()?;
    let model = a.model.load()?;
    if let Some(layer) = a.layer.filter(|&l| l >= model.layers()) {
        bail!("--layer {layer} is out of range: the model has layers 0..={}", model.layers() - 1);
    }
    if let Some(cell) = a.cell.filter(|&c| c >= model.hidden_size()) {
        bail!("--cell {cell} is out of range: layers have cells 0..={}", model.hidden_size() - 1);
    }
    let arch = model.arch();
    if let Some(kind) = a.kind {
        arch.check_kind(kind).map_err(|e| anyhow::anyhow!("--kind {}: {e}", kind.letter()))?;
    }
    let trace = model.trace(&text);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if a.json {
        let layers = a.layer.map(|l| vec![l]);
        let kinds = a.kind.map_or(arch.default_kinds().to_vec(), |k| vec![k]);
        let cells = a.cell.map(|c| vec![c]);
        let json = crate::server::trace_json(&model, &trace, layers.as_deref(), &kinds, cells.as_deref(), 5);
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let (layer, kind, cell) = (a.layer.unwrap_or(0), a.kind.unwrap_or(arch.default_kind()), a.cell.unwrap_or(0));
    let values = trace.layers[layer].get(kind).column(cell).to_vec();
    let title = format!("layer {layer} {} cell {cell} of {} ({} characters)", kind.describe(), model.name, trace.len());
    if a.color.colour_stdout() {
        write_coloured(&mut out, &title, &trace.chars, &values, kind)?;
    } else {
        writeln!(out, "# {title}")?;
        writeln!(out, "# position\tcharacter\tvalue")?;
        for (t, (c, v)) in trace.chars.iter().zip(&values).enumerate() {
            writeln!(out, "{t}\t{c:?}\t{v:+.4}")?;
        }
    }
    if !trace.unknown.is_empty() {
        writeln!(
            out,
            "# {} characters are not in the vocabulary (fed as zero input) at {:?}",
            trace.unknown.len(),
            &trace.unknown[..trace.unknown.len().min(20)]
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The text with each character's background coloured by its value (24-bit ANSI),
/// then a legend.
fn write_coloured(out: &mut impl Write, title: &str, chars: &[char], values: &[f32], kind: Kind) -> Result<()> {
    writeln!(out, "{title} (colour shows {})", display::shows(kind))?;
    for (&c, &value) in chars.iter().zip(values) {
        let (r, g, b) = display::diverging_rgb(display::unit_value(kind, value));
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
        let u = -1.0 + step as f32 * 0.25;
        let (r, g, b) = display::diverging_rgb(u);
        let label = display::legend_label(kind, u);
        write!(out, "\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m {label} \x1b[0m")?;
    }
    writeln!(out)?;
    Ok(())
}

/// The most characters `cellscope sample` generates in one call.
pub const MAX_SAMPLE_LENGTH: usize = 10_000_000;

fn cmd_sample(a: SampleArgs) -> Result<()> {
    if !a.temperature.is_finite() || a.temperature < 0.0 {
        bail!("--temperature must be a number ≥ 0 (0 = always the likeliest character), got {}", a.temperature);
    }
    if a.length > MAX_SAMPLE_LENGTH {
        bail!("--length {} is above the limit of {MAX_SAMPLE_LENGTH} characters; sample in several calls", a.length);
    }
    let model = a.model.load()?;
    let clamps = a
        .clamps
        .iter()
        .map(|s| crate::model::Clamp::parse_spec(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    model.check_clamps(&clamps, usize::MAX)?;
    let unknown = model.vocab.encode(&a.prime).unknown;
    if !unknown.is_empty() {
        eprintln!("note: {} characters of --prime are not in the vocabulary (fed as zero input)", unknown.len());
    }
    // Each character goes out as it is drawn, so a reader sees text at once and a
    // closed pipe stops the work at the next character.
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prime)?;
    out.flush()?;
    let mut failed = None;
    let mut buf = [0u8; 4];
    let how = crate::model::Sampling { temperature: a.temperature, top_k: a.top_k, seed: a.seed };
    // Two cores where there are two, unless CELLSCOPE_TRACE_THREADS says otherwise.
    let threads = crate::model::trace_threads_set().unwrap_or(crate::model::cores().min(2));
    crate::model::sample_on(&model, &a.prime, a.length, how, &clamps, threads, |c, _| {
        match out.write_all(c.encode_utf8(&mut buf).as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    writeln!(out)?;
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if let Some(name) = &a.record {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            bail!("--record takes a plain name like test or sqlite, got {name:?}");
        }
    }
    let text = train::read_text(&a.file)?;
    let model = a.model.load()?;
    let started = std::time::Instant::now();
    let (loss, count) = train::evaluate(&model, &text, |done, total| {
        eprint!("\rscoring {done}/{total} characters");
    });
    eprintln!();
    if count == 0 {
        bail!(
            "{} has nothing to score ({} characters): it needs at least 2 characters, and characters after the \
             first that the model's vocabulary knows",
            a.file.display(),
            text.chars().count()
        );
    }
    if !loss.is_finite() {
        bail!("the model scored {} as {loss} nats per character: its weights are not finite", a.file.display());
    }
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({
            "file": a.file.display().to_string(), "nats_per_char": loss, "bits_per_char": loss / std::f64::consts::LN_2,
            "chars_scored": count, "seconds": started.elapsed().as_secs_f64(),
        })
    )?;
    if let Some(name) = &a.record {
        let path = a.model.model.clone().unwrap_or_else(default_model_path);
        let mut model = model;
        model.train.record(name, loss, train::sha256_hex(text.as_bytes()), count as u64);
        model.save(&path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("recorded {name}_loss = {loss:.4} in {}", path.display());
    }
    Ok(())
}
