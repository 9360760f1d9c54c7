//! Training: truncated BPTT over parallel character streams (char-rnn style),
//! Adam or RMSProp, gradient-norm clipping, learning-rate decay, validation,
//! best-model saving, checkpoints that resume exactly, and a loss log.
//!
//! Data flow: the training text is cut into B contiguous streams; batch j feeds
//! characters `[j·S, (j+1)·S)` of every stream and carries each stream's hidden
//! state on to batch j+1 (reset at each epoch). The batch is split into `threads`
//! shards that run forward/backward in parallel ([`backprop::loss_and_grad`]);
//! their gradients are summed in shard order, so a run is deterministic for a
//! given seed and thread count.
//!
//! Files written next to `--out model.safetensors`:
//! - `model.safetensors`: the weights with the best validation loss so far;
//! - `model.ckpt.safetensors`: the latest checkpoint (weights, optimiser moments,
//!   carried state, step, data position, config) for `--resume`;
//! - `model.log.jsonl`: one JSON object per logged step (loss, val loss, chars/s).
//!
//! Nothing breaks late: [`train`] checks every setting ([`TrainConfig::validate`]),
//! every path, the text sizes and the memory the run would need before the first
//! step, and stops with [`TrainError::Diverged`] (saving nothing from the bad step)
//! when the loss or the gradient stops being finite.
//!
//! `sample` draws text from a model one character at a time.

pub mod backprop;
mod gemm;
pub mod optim;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::{safetensors, write_atomic, Arch, CurvePoint, Model, TrainMeta, Vocab, Weights};
use backprop::{loss_and_grad, StreamState, Workspace};
use optim::{clip_grad_norm, OptimState, Optimizer};

/// Everything that defines a training run. Stored in checkpoints and in the
/// model's `cellscope.train` metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Absent from checkpoints written before GRU and RNN existed: those are LSTMs.
    #[serde(default)]
    pub arch: Arch,
    pub layers: usize,
    pub hidden: usize,
    pub batch: usize,
    pub seq: usize,
    pub lr: f32,
    pub optimizer: Optimizer,
    pub clip: f32,
    pub dropout: f32,
    /// Multiply the learning rate by this after every epoch past `decay_after`.
    pub lr_decay: f32,
    pub decay_after: f32,
    pub epochs: f32,
    /// Validate (and maybe save the best model) every this many steps.
    pub eval_every: u64,
    pub seed: u64,
    pub threads: usize,
    /// Initial weights are uniform(−init, init).
    pub init: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Lstm,
            layers: 2,
            hidden: 256,
            batch: 50,
            seq: 100,
            lr: 2e-3,
            optimizer: Optimizer::Adam,
            clip: 5.0,
            dropout: 0.0,
            lr_decay: 0.95,
            decay_after: 5.0,
            epochs: 10.0,
            eval_every: 500,
            seed: 1,
            threads: 2,
            init: 0.08,
        }
    }
}

/// The largest `--hidden` the trainer accepts (the shipped model uses 512).
pub(crate) const MAX_HIDDEN: usize = 4096;
/// The most layers the trainer accepts: plain LSTM stacks this deep already train
/// poorly without residual connections, which this trainer lacks.
pub(crate) const MAX_LAYERS: usize = 16;
/// The memory a run may be estimated to need ([`TrainConfig::memory_estimate`])
/// before it is refused rather than left to abort on a failed allocation.
pub const MAX_TRAIN_BYTES: u64 = 16 << 30;

impl TrainConfig {
    /// Checks every setting, so that a bad one is refused before any work instead
    /// of training a NaN model or panicking mid-run. Messages name the CLI flags.
    pub fn validate(&self) -> Result<(), TrainError> {
        let fail = |msg: String| Err(TrainError::Config(msg));
        for (flag, value) in [("--batch", self.batch), ("--seq", self.seq), ("--threads", self.threads)] {
            if value == 0 {
                return fail(format!("{flag} must be at least 1"));
            }
        }
        if self.eval_every == 0 {
            return fail("--eval-every must be at least 1".into());
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return fail(format!("--layers must be between 1 and {MAX_LAYERS}, got {}", self.layers));
        }
        if !(1..=MAX_HIDDEN).contains(&self.hidden) {
            return fail(format!("--hidden must be between 1 and {MAX_HIDDEN}, got {}", self.hidden));
        }
        let reals = [
            ("--lr", self.lr, self.lr > 0.0, "a number above 0 (e.g. 2e-3)"),
            ("--clip", self.clip, self.clip >= 0.0, "a number ≥ 0 (0 turns clipping off)"),
            ("--dropout", self.dropout, (0.0..1.0).contains(&self.dropout), "in [0, 1)"),
            ("--lr-decay", self.lr_decay, self.lr_decay > 0.0 && self.lr_decay <= 1.0, "in (0, 1] (1 = no decay)"),
            ("--decay-after", self.decay_after, self.decay_after >= 0.0, "a number of epochs ≥ 0"),
            ("--epochs", self.epochs, self.epochs > 0.0, "a number above 0"),
            ("init", self.init, self.init >= 0.0, "a number ≥ 0"),
        ];
        for (flag, value, ok, want) in reals {
            if !value.is_finite() || !ok {
                return fail(format!("{flag} must be {want}, got {value}"));
            }
        }
        Ok(())
    }

    /// Estimated peak memory (bytes) of a run over a vocabulary of `vocab`
    /// characters: weights, optimiser moments, one gradient per shard and the
    /// model copies made at validation (P parameters each), plus the training and
    /// validation workspaces (`backprop::Workspace`: 13 values per cell per layer
    /// per character of the batch, the logits, and per shard the layer-0 tables;
    /// an LSTM's count, which bounds the GRU's and the RNN's).
    /// Computed in f64 so absurd sizes cannot overflow.
    pub fn memory_estimate(&self, vocab: usize) -> f64 {
        let (v, h, l) = (vocab as f64, self.hidden as f64, self.layers as f64);
        let (b, s) = (self.batch as f64, self.seq as f64);
        let shards = self.threads.min(self.batch).max(1) as f64;
        let g = self.arch.gates() as f64;
        let params = g * h * (v + h + 2.0) + (l - 1.0) * g * h * (2.0 * h + 2.0) + v * h + v;
        let workspace = b * s * (13.0 * l * h + v + 2.0 * h) + shards * 2.0 * g * v * h;
        let states = 2.0 * l * b * h;
        4.0 * ((5.0 + shards) * params + 2.0 * workspace + states)
    }

    /// Refuses a run whose [`memory_estimate`](Self::memory_estimate) exceeds
    /// [`MAX_TRAIN_BYTES`].
    pub fn check_memory(&self, vocab: usize) -> Result<(), TrainError> {
        let need = self.memory_estimate(vocab);
        if need > MAX_TRAIN_BYTES as f64 {
            return Err(TrainError::Config(format!(
                "this run would need about {} of memory (--hidden {}, --layers {}, --batch {}, --seq {}, {vocab} characters \
                 in the vocabulary), above the trainer's budget of {}; lower --batch, --seq, --hidden or --layers",
                fmt_bytes(need),
                self.hidden,
                self.layers,
                self.batch,
                self.seq,
                fmt_bytes(MAX_TRAIN_BYTES as f64)
            )));
        }
        Ok(())
    }
}

/// A number as a person would type it: `0.002`, `12`, `1e38`.
fn fmt_real(x: f32) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
        x.to_string()
    } else {
        format!("{x:e}")
    }
}

/// `1.5 GiB`, `300.0 MiB`.
fn fmt_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// Why training could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is a directory, not a text file")]
    NotAFile { path: String },
    #[error(
        "{path} is not UTF-8 text (first bad byte at offset {offset}); convert it first, e.g. with iconv -t UTF-8"
    )]
    NotUtf8 { path: String, offset: usize },
    /// The loss or the gradient stopped being finite; nothing from that step was saved.
    #[error("training diverged at step {step}: {detail}")]
    Diverged { step: u64, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("checkpoint {path} is unusable: {problem}")]
    Checkpoint { path: String, problem: String },
}

/// The largest text file any command reads (a corpus far beyond what a 2-core
/// machine trains on in a day).
pub(crate) const MAX_TEXT_BYTES: u64 = 4 << 30;

/// Reads a UTF-8 text file. The error names the file and says what is wrong: it
/// is missing or unreadable, a directory, or not UTF-8. Every command that reads a
/// text file reads it with this.
pub(crate) fn read_text(path: &Path) -> Result<String, TrainError> {
    let shown = || path.display().to_string();
    // Stat first: a FIFO would block and /dev/zero never ends.
    let meta = std::fs::metadata(path).map_err(|source| TrainError::Read { path: shown(), source })?;
    if meta.is_dir() {
        return Err(TrainError::NotAFile { path: shown() });
    }
    if !meta.is_file() {
        return Err(TrainError::Config(format!(
            "{} is not a regular file (a device or a pipe?); give a text file",
            shown()
        )));
    }
    if meta.len() > MAX_TEXT_BYTES {
        return Err(TrainError::Config(format!(
            "{} is {} bytes, over the {} GiB limit for text files",
            shown(),
            meta.len(),
            MAX_TEXT_BYTES >> 30
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| TrainError::Read { path: shown(), source })?;
    String::from_utf8(bytes).map_err(|e| TrainError::NotUtf8 { path: shown(), offset: e.utf8_error().valid_up_to() })
}

/// Lowercase hex SHA-256 of bytes.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mean cross-entropy (nats per character) of predicting each character of `text`
/// from the ones before it, as one continuous stream from the zero state, in chunks
/// so memory stays bounded. Characters outside the vocabulary are not scored.
/// Returns (nats per character, characters scored).
pub(crate) fn evaluate(model: &Model, text: &str, mut progress: impl FnMut(usize, usize)) -> (f64, usize) {
    const CHUNK: usize = 8192;
    let chars: Vec<char> = text.chars().collect();
    let mut state = model.zero_state();
    let mut total = 0f64;
    let mut count = 0usize;
    let mut start = 0;
    while start + 1 < chars.len() {
        let end = (start + CHUNK).min(chars.len() - 1);
        let piece: String = chars[start..end].iter().collect();
        let trace = model.trace_from(&piece, &state);
        for (t, row) in trace.probs.rows().into_iter().enumerate() {
            if let Some(next) = model.vocab.id(chars[start + t + 1]) {
                total -= (row[next as usize].max(1e-30) as f64).ln();
                count += 1;
            }
        }
        state = trace.final_state;
        start = end;
        progress(start, chars.len());
    }
    (if count == 0 { f64::NAN } else { total / count as f64 }, count)
}

/// Mean cross-entropy (nats per character) of `ids` split into `batch` parallel
/// streams, each run from the zero state in `seq`-sized pieces with the trainer's
/// own forward pass (GEMMs over the batch, one shard per thread). This is the
/// fast estimate used for validation during training. The `batch` cold starts cost
/// a little: on the shipped model's 305k-character validation split it gave 0.8846
/// against [`evaluate`]'s one-stream 0.8801 nats/char, which is what reported
/// losses use.
///
/// Needs at least 2 ids (one prediction); with fewer there is nothing to score
/// and the result is NaN. [`train`] asks for `seq + 1` validation characters.
pub(crate) fn evaluate_batched(weights: &Weights, ids: &[u32], batch: usize, seq: usize, threads: usize) -> f64 {
    if ids.len() < 2 {
        return f64::NAN;
    }
    let seq = seq.max(1);
    let batch = batch.clamp(1, ids.len() - 1);
    let stream_len = (ids.len() - 1) / batch;
    let shards = shard_sizes(batch, threads);
    let results: Vec<(f64, usize)> = std::thread::scope(|scope| {
        let mut first = 0;
        let handles: Vec<_> = shards
            .iter()
            .map(|&bs| {
                let start = first;
                first += bs;
                scope.spawn(move || {
                    let layers = weights.layers.len();
                    let mut state = StreamState::zeros(weights.arch, layers, bs, weights.hidden_size());
                    let mut ws = Workspace::default();
                    let mut rng = crate::rng::Rng::new(0);
                    let (mut total, mut count) = (0f64, 0usize);
                    let mut pos = 0;
                    while pos < stream_len {
                        let steps = seq.min(stream_len - pos);
                        let mut inputs = vec![0u32; steps * bs];
                        let mut targets = vec![0u32; steps * bs];
                        for t in 0..steps {
                            for b in 0..bs {
                                let at = (start + b) * stream_len + pos + t;
                                inputs[t * bs + b] = ids[at];
                                targets[t * bs + b] = ids[at + 1];
                            }
                        }
                        total += loss_and_grad(
                            weights, &inputs, &targets, bs, &mut state, 0.0, &mut rng, 1.0, None, &mut ws,
                        );
                        count += steps * bs;
                        pos += steps;
                    }
                    (total, count)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("evaluation thread panicked")).collect()
    });
    let (total, count) = results.iter().fold((0.0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
    total / count.max(1) as f64
}

/// Progress of a run, saved in checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Progress {
    pub step: u64,
    /// Batch index within the current epoch (the data position).
    pub batch_in_epoch: u64,
    pub epoch: u64,
    pub lr: f32,
    pub best_val: Option<f64>,
    pub best_step: Option<u64>,
    pub elapsed_s: f64,
    pub chars_seen: u64,
}

/// Options of one invocation that are not part of the run's identity.
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    /// Stop (saving a checkpoint) after this many seconds of this invocation.
    pub max_seconds: Option<f64>,
    /// Stop after this many steps in total.
    pub max_steps: Option<u64>,
    /// Print a progress line to stderr.
    pub verbose: bool,
    pub test: Option<PathBuf>,
}

impl RunOptions {
    /// A fresh, silent run writing beside `out`, with no time or step limit.
    pub fn quiet(out: PathBuf) -> Self {
        Self { out, resume: false, max_seconds: None, max_steps: None, verbose: false, test: None }
    }

    /// Checks the limits, and that the run will be able to write its files: `out`
    /// is not a directory, its directory exists and takes a new file, and the
    /// checkpoint exists exactly when resuming. Done before any work, so that a
    /// typo in `--out` costs nothing rather than a whole run.
    pub fn validate(&self) -> Result<(), TrainError> {
        let fail = |msg: String| Err(TrainError::Config(msg));
        if let Some(s) = self.max_seconds {
            if !s.is_finite() || s <= 0.0 {
                return fail(format!("--max-minutes must be a number above 0, got {}", s / 60.0));
            }
        }
        if self.max_steps == Some(0) {
            return fail("--max-steps must be at least 1".into());
        }
        let out = &self.out;
        if out.is_dir() {
            return fail(format!(
                "--out {} is a directory; give the model's file path, e.g. {}",
                out.display(),
                out.join("model.safetensors").display()
            ));
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return fail(format!("the directory of --out, {}, does not exist; create it first", dir.display()));
        }
        let probe = dir.join(format!(".cellscope-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|source| TrainError::Write { path: dir.display().to_string(), source })?;
        let _ = std::fs::remove_file(&probe);
        let ckpt = sidecar(out, ".ckpt.safetensors");
        if self.resume && !ckpt.is_file() {
            return fail(format!("--resume given but {} does not exist; start without --resume", ckpt.display()));
        }
        if !self.resume && ckpt.exists() {
            return fail(format!(
                "{} exists; pass --resume to continue it, or delete it to start over",
                ckpt.display()
            ));
        }
        Ok(())
    }
}

/// Paths of the files a run writes beside `out`.
pub fn sidecar(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.with_extension("");
    let mut s = stem.into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

struct Run {
    config: TrainConfig,
    vocab: Vocab,
    weights: Weights,
    opt: OptimState,
    states: Vec<StreamState>,
    progress: Progress,
    train_meta: TrainMeta,
}

fn shard_sizes(batch: usize, threads: usize) -> Vec<usize> {
    let threads = threads.clamp(1, batch);
    (0..threads).map(|s| batch / threads + usize::from(s < batch % threads)).collect()
}

fn save_checkpoint(run: &Run, path: &Path) -> Result<(), TrainError> {
    let mut tensors: BTreeMap<String, (Vec<usize>, &[f32])> = BTreeMap::new();
    for (prefix, w) in [("w.", &run.weights), ("m.", &run.opt.m), ("v.", &run.opt.v)] {
        for (name, shape, data) in w.named_tensors() {
            tensors.insert(format!("{prefix}{name}"), (shape, data));
        }
    }
    for (s, st) in run.states.iter().enumerate() {
        for (k, h) in st.h.iter().enumerate() {
            tensors.insert(format!("state.s{s}.h_l{k}"), (vec![h.len()], &h[..]));
        }
        // A GRU or RNN has no cell state (its `c` is empty).
        for (k, c) in st.c.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
            tensors.insert(format!("state.s{s}.c_l{k}"), (vec![c.len()], &c[..]));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("cellscope.vocab".into(), run.vocab.to_json());
    meta.insert("cellscope.config".into(), serde_json::to_string(&run.config).expect("json"));
    meta.insert("cellscope.progress".into(), serde_json::to_string(&run.progress).expect("json"));
    meta.insert("cellscope.optimizer_t".into(), run.opt.t.to_string());
    meta.insert("cellscope.train".into(), serde_json::to_string(&run.train_meta).expect("json"));
    let bytes = safetensors::serialize(&tensors, &meta);
    write_atomic(path, &bytes).map_err(|source| TrainError::Write { path: path.display().to_string(), source })
}

fn load_checkpoint(path: &Path, fresh: &Run) -> Result<Run, TrainError> {
    let bad = |problem: String| TrainError::Checkpoint { path: path.display().to_string(), problem };
    // The model loader's checked reader: regular files only, sizes before bytes.
    let file = crate::model::read_tensor_file(path).map_err(|e| bad(e.to_string()))?;
    let meta = |k: &str| file.metadata.get(k).cloned().ok_or_else(|| bad(format!("lacks {k}")));
    let config: TrainConfig = serde_json::from_str(&meta("cellscope.config")?).map_err(|e| bad(e.to_string()))?;
    if config != fresh.config {
        return Err(bad(format!(
            "it was made with different settings; resume with the same flags.\n  checkpoint: {}\n  now:        {}",
            serde_json::to_string(&config).unwrap_or_default(),
            serde_json::to_string(&fresh.config).unwrap_or_default()
        )));
    }
    let vocab = Vocab::from_json(&meta("cellscope.vocab")?).map_err(|e| bad(e.to_string()))?;
    if vocab != fresh.vocab {
        return Err(bad("its vocabulary differs from this corpus's".into()));
    }
    let progress: Progress = serde_json::from_str(&meta("cellscope.progress")?).map_err(|e| bad(e.to_string()))?;
    let t: u64 = meta("cellscope.optimizer_t")?.parse().map_err(|_| bad("bad optimizer_t".into()))?;
    let train_meta: TrainMeta = serde_json::from_str(&meta("cellscope.train")?).map_err(|e| bad(e.to_string()))?;
    let mut run = Run {
        config,
        vocab,
        weights: fresh.weights.clone(),
        opt: fresh.opt.clone(),
        states: fresh.states.clone(),
        progress,
        train_meta,
    };
    run.opt.t = t;
    let names: Vec<(String, usize)> = fresh.weights.named_tensors().into_iter().map(|(n, _, d)| (n, d.len())).collect();
    for (prefix, target) in [("w.", &mut run.weights), ("m.", &mut run.opt.m), ("v.", &mut run.opt.v)] {
        for ((name, len), slot) in names.iter().zip(target.tensors_mut()) {
            let key = format!("{prefix}{name}");
            let t = file.tensors.get(&key).ok_or_else(|| bad(format!("lacks {key}")))?;
            if t.data.len() != *len {
                return Err(bad(format!("{key} has {} values, expected {len}", t.data.len())));
            }
            slot.copy_from_slice(&t.data);
        }
    }
    for (s, st) in run.states.iter_mut().enumerate() {
        for k in 0..st.h.len() {
            let parts = [("h", &mut st.h[k]), ("c", &mut st.c[k])];
            for (kind, dst) in parts.into_iter().filter(|(_, dst)| !dst.is_empty()) {
                let key = format!("state.s{s}.{kind}_l{k}");
                let t = file.tensors.get(&key).ok_or_else(|| bad(format!("lacks {key}")))?;
                if t.data.len() != dst.len() {
                    return Err(bad(format!("{key} has the wrong size")));
                }
                dst.copy_from_slice(&t.data);
            }
        }
    }
    Ok(run)
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The loss curve for the model card, from the JSON-lines log: one point per
/// `every` steps, `[step, mean training loss since the last point, validation loss
/// or null]`, plus a point at every validation.
pub(crate) fn curve_from_log(path: &Path, every: u64) -> Vec<CurvePoint> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut sum, mut n) = (0f64, 0u32);
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(step), Some(loss)) = (r["step"].as_u64(), r["loss"].as_f64()) else {
            continue;
        };
        sum += loss;
        n += 1;
        let val = r.get("val_loss").and_then(|v| v.as_f64());
        if step % every == 0 || val.is_some() {
            out.push(CurvePoint(step, sum / n as f64, val));
            sum = 0.0;
            n = 0;
        }
    }
    out
}

/// The error for a run whose loss or gradient stopped being finite at `step`:
/// what was kept (`saved_step`: the checkpoint on disk) and what to try.
fn diverged(step: u64, what: &str, config: &TrainConfig, opts: &RunOptions, saved_step: Option<u64>) -> TrainError {
    if opts.verbose {
        eprintln!(); // end the progress line
    }
    let ckpt = sidecar(&opts.out, ".ckpt.safetensors");
    let kept = match saved_step {
        Some(s) => format!(
            "nothing from this step was saved: {} (step {s}) and the best model {} are as they were",
            ckpt.display(),
            opts.out.display()
        ),
        None => "nothing was saved".to_string(),
    };
    TrainError::Diverged {
        step,
        detail: format!(
            "{what}; {kept}. Start over (delete {}) with a lower --lr (this run: {}) or gradient clipping \
             --clip 1 to 5 (this run: {})",
            ckpt.display(),
            fmt_real(config.lr),
            config.clip
        ),
    }
}

/// What a finished (or interrupted) invocation reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: u64,
    pub epochs_done: f64,
    pub best_val: Option<f64>,
    pub test_loss: Option<f64>,
    pub chars_per_s: f64,
    pub interrupted: bool,
    pub finished: bool,
}

/// Trains (or resumes) a model. `stop` is polled every step (set it from a signal
/// handler); when set, a checkpoint is saved and the function returns.
///
/// The steps: `read_texts` (everything that can be wrong with the request is
/// checked before the first step), `start_or_resume`, `new_shards`, then per batch
/// `gather_batch`, `run_shards` (forward and backward on every shard),
/// `summed_and_clipped`, the optimiser step, `Run::advance`, and every `eval_every`
/// steps `validate_and_save`; with `--verbose`, `print_progress`; at the end
/// `score_test`.
pub fn train(
    config: TrainConfig,
    train_path: &Path,
    val_path: &Path,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> Result<TrainReport, TrainError> {
    config.validate()?;
    opts.validate()?;
    let texts = read_texts(&config, train_path, val_path, opts)?;
    let stream_len = texts.ids.len().saturating_sub(1) / config.batch;
    let batches_per_epoch = (stream_len / config.seq) as u64;
    let ckpt_path = sidecar(&opts.out, ".ckpt.safetensors");
    let log_path = sidecar(&opts.out, ".log.jsonl");
    let mut run = start_or_resume(&config, &texts, opts, &ckpt_path, &log_path)?;
    let write_error = |source| TrainError::Write { path: log_path.display().to_string(), source };
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(write_error)?;

    let total_steps = ((config.epochs as f64) * batches_per_epoch as f64).ceil() as u64;
    let total_steps = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let chars_per_step = (config.batch * config.seq) as u64;
    let mut shards = new_shards(&config, &run.weights);
    let started = Instant::now();
    let elapsed_before = run.progress.elapsed_s;
    let steps_before = run.progress.step;
    let mut recent_loss = f64::NAN;
    let mut interrupted = false;
    // The step of the checkpoint on disk, for the message if the run diverges.
    let mut saved_step = opts.resume.then_some(run.progress.step);
    while run.progress.step < total_steps {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if opts.max_seconds.is_some_and(|m| started.elapsed().as_secs_f64() >= m) {
            break;
        }
        gather_batch(&texts.ids, stream_len, run.progress.batch_in_epoch as usize, config.seq, &mut shards);
        let step = run.progress.step;
        let loss = run_shards(&mut run, step, 1.0 / chars_per_step as f32, &mut shards) / chars_per_step as f64;
        let (grads, grad_norm) = summed_and_clipped(&mut shards, config.clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            // Stop before the optimiser writes non-finite values into the weights.
            let what = format!("the training loss is {loss} (gradient norm {grad_norm})");
            return Err(diverged(step + 1, &what, &config, opts, saved_step));
        }
        run.opt.step(&mut run.weights, grads, run.progress.lr);
        run.advance(chars_per_step, batches_per_epoch);
        recent_loss = if recent_loss.is_nan() { loss } else { 0.98 * recent_loss + 0.02 * loss };
        let now = started.elapsed().as_secs_f64();
        run.progress.elapsed_s = elapsed_before + now;
        let cps = (run.progress.step - steps_before) as f64 * chars_per_step as f64 / now.max(1e-9);
        let step = run.progress.step;
        let epoch_f = step as f64 / batches_per_epoch as f64;
        let mut record = serde_json::json!({
            "step": step, "epoch": epoch_f, "loss": loss, "grad_norm": grad_norm,
            "lr": run.progress.lr, "chars_per_s": cps, "elapsed_s": run.progress.elapsed_s,
        });
        if step % config.eval_every == 0 || step == total_steps {
            let _ = log.flush();
            let val = validate_and_save(&mut run, &texts.val_ids, epoch_f, opts, &ckpt_path, &log_path)
                .map_err(|e| e.into_error(&config, opts, saved_step))?;
            record["val_loss"] = serde_json::json!(val);
            saved_step = Some(step);
        }
        writeln!(log, "{record}").map_err(write_error)?;
        let validated = record.get("val_loss").is_some();
        if opts.verbose && (step % 10 == 0 || validated) {
            let eta = (total_steps - step) as f64 * chars_per_step as f64 / cps.max(1.0);
            print_progress(&run.progress, total_steps, epoch_f, recent_loss, cps, eta, validated);
        }
    }
    save_checkpoint(&run, &ckpt_path)?;
    let finished = run.progress.step >= total_steps;
    let elapsed = started.elapsed().as_secs_f64();
    let cps = (run.progress.step - steps_before) as f64 * chars_per_step as f64 / elapsed.max(1e-9);
    // The last step always validates, so a finished run has a best model to score.
    let test_loss = match (&texts.test, finished) {
        (Some(text), true) => Some(score_test(&opts.out, text)?),
        _ => None,
    };
    if opts.verbose {
        eprintln!();
    }
    Ok(TrainReport {
        steps: run.progress.step,
        epochs_done: run.progress.step as f64 / batches_per_epoch as f64,
        best_val: run.progress.best_val,
        test_loss,
        chars_per_s: cps,
        interrupted,
        finished,
    })
}

/// A run's text split under its vocabulary (train + val), checked for size.
struct Texts {
    vocab: Vocab,
    ids: Vec<u32>,
    val_ids: Vec<u32>,
    test: Option<String>,
    /// The `cellscope.train` metadata: corpus name, hashes, size, config.
    meta: TrainMeta,
}

/// Reads the training, validation and (optional) test texts, builds the vocabulary
/// and refuses what cannot train: a run over the memory budget, a training text
/// shorter than one batch, a validation text shorter than one window, a test text
/// with nothing to score.
fn read_texts(
    config: &TrainConfig,
    train_path: &Path,
    val_path: &Path,
    opts: &RunOptions,
) -> Result<Texts, TrainError> {
    let train_text = read_text(train_path)?;
    let val_text = read_text(val_path)?;
    let test = opts.test.as_deref().map(read_text).transpose()?;
    let mut all = train_text.clone();
    all.push_str(&val_text);
    let vocab = Vocab::from_text(&all).map_err(|e| TrainError::Config(format!("training text: {e}")))?;
    config.check_memory(vocab.len())?;
    let ids: Vec<u32> = train_text.chars().map(|c| vocab.id(c).expect("vocab built from this text")).collect();
    // Validation characters outside the vocabulary cannot occur: it includes val.
    let val_ids: Vec<u32> = val_text.chars().map(|c| vocab.id(c).expect("vocab built from this text")).collect();
    let need = config.batch.saturating_mul(config.seq).saturating_add(1);
    if ids.len() < need {
        return Err(TrainError::Config(format!(
            "training text {} has {} characters, too few for {} streams of {} steps (at least --batch × --seq + 1 \
             = {need}); lower --batch or --seq, or give more text",
            train_path.display(),
            ids.len(),
            config.batch,
            config.seq
        )));
    }
    // The batched evaluator scores nothing below 2 characters; one full window of
    // `seq` predictions makes the score about the context the model trains on.
    if val_ids.len() < config.seq + 1 {
        return Err(TrainError::Config(format!(
            "validation text {} has {} characters; it must hold at least --seq + 1 = {} to be scored",
            val_path.display(),
            val_ids.len(),
            config.seq + 1
        )));
    }
    if let (Some(path), Some(text)) = (&opts.test, &test) {
        // evaluate() scores each character after the first that the vocabulary knows.
        if !text.chars().skip(1).any(|c| vocab.id(c).is_some()) {
            return Err(TrainError::Config(format!(
                "test text {} has nothing to score: it needs at least 2 characters, and characters after the first \
                 that occur in the training or validation text",
                path.display()
            )));
        }
    }
    let meta = TrainMeta {
        corpus: train_path.file_name().map(|s| s.to_string_lossy().into_owned()),
        train_sha256: Some(sha256_hex(train_text.as_bytes())),
        val_sha256: Some(sha256_hex(val_text.as_bytes())),
        train_chars: Some(ids.len() as u64),
        config: Some(config.clone()),
        ..TrainMeta::default()
    };
    Ok(Texts { vocab, ids, val_ids, test, meta })
}

/// A fresh run (fresh weights, and the old log removed), or the checkpoint's with
/// the log cut back to the checkpoint's step.
fn start_or_resume(
    config: &TrainConfig,
    texts: &Texts,
    opts: &RunOptions,
    ckpt_path: &Path,
    log_path: &Path,
) -> Result<Run, TrainError> {
    let c = config;
    let weights = Weights::random_arch(c.arch, texts.vocab.len(), None, c.hidden, c.layers, c.seed, c.init);
    let shards = shard_sizes(c.batch, c.threads);
    let fresh = Run {
        opt: OptimState::new(c.optimizer, &weights),
        states: shards.iter().map(|&b| StreamState::zeros(c.arch, c.layers, b, c.hidden)).collect(),
        progress: Progress {
            step: 0,
            batch_in_epoch: 0,
            epoch: 0,
            lr: c.lr,
            best_val: None,
            best_step: None,
            elapsed_s: 0.0,
            chars_seen: 0,
        },
        config: c.clone(),
        vocab: texts.vocab.clone(),
        weights,
        train_meta: texts.meta.clone(),
    };
    if !opts.resume {
        let _ = std::fs::remove_file(log_path);
        return Ok(fresh);
    }
    let run = load_checkpoint(ckpt_path, &fresh)?;
    if opts.verbose {
        let p = &run.progress;
        eprintln!(
            "resuming {} at step {} (epoch {}, batch {})",
            ckpt_path.display(),
            p.step,
            p.epoch,
            p.batch_in_epoch
        );
    }
    // Drop log lines written after the checkpoint (a run killed without saving),
    // so the log and the curve describe exactly the resumed run.
    if let Ok(text) = std::fs::read_to_string(log_path) {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|r| r["step"].as_u64())
                    .is_some_and(|s| s <= run.progress.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(log_path, kept.as_bytes())
            .map_err(|source| TrainError::Write { path: log_path.display().to_string(), source })?;
    }
    Ok(run)
}

/// One thread's share of a batch: its streams' inputs and targets (S × size,
/// time-major), its gradient and its scratch memory.
struct Shard {
    size: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    grads: Weights,
    ws: Workspace,
}

/// One shard per thread (`shard_sizes`), with buffers for `config.seq` steps and a
/// gradient shaped like `weights`.
fn new_shards(config: &TrainConfig, weights: &Weights) -> Vec<Shard> {
    shard_sizes(config.batch, config.threads)
        .into_iter()
        .map(|size| Shard {
            size,
            inputs: vec![0; size * config.seq],
            targets: vec![0; size * config.seq],
            grads: weights.zeros_like(),
            ws: Workspace::default(),
        })
        .collect()
}

/// Adds every shard's gradient into the first shard's and clips the sum to global norm
/// `clip`; returns the sum and its norm before clipping.
fn summed_and_clipped(shards: &mut [Shard], clip: f32) -> (&mut Weights, f32) {
    let (first, rest) = shards.split_at_mut(1);
    for s in rest {
        first[0].grads.add_assign(&mut s.grads);
    }
    let grads = &mut first[0].grads;
    let norm = clip_grad_norm(grads, clip);
    (grads, norm)
}

/// The `--verbose` progress line, rewritten in place; a validation step ends it, so that
/// each validation stays on screen.
fn print_progress(p: &Progress, total_steps: u64, epoch: f64, recent_loss: f64, cps: f64, eta: f64, validated: bool) {
    let val = p.best_val.map_or("-".into(), |v| format!("{v:.4}"));
    eprint!(
        "\rstep {}/{total_steps} | epoch {epoch:.2} | loss {recent_loss:.4} | best val {val} | {:.1}k chars/s | ETA {}   ",
        p.step,
        cps / 1000.0,
        fmt_duration(eta)
    );
    if validated {
        eprintln!();
    }
}

/// Batch `j` of the epoch: stream b (numbered across shards) reads characters
/// `[b·L + j·S, b·L + (j+1)·S)` of the training text (L = `stream_len`), and
/// predicts each one's successor.
fn gather_batch(ids: &[u32], stream_len: usize, j: usize, seq: usize, shards: &mut [Shard]) {
    let mut b0 = 0;
    for s in shards {
        for t in 0..seq {
            for b in 0..s.size {
                let pos = (b0 + b) * stream_len + j * seq + t;
                s.inputs[t * s.size + b] = ids[pos];
                s.targets[t * s.size + b] = ids[pos + 1];
            }
        }
        b0 += s.size;
    }
}

/// Forward and backward of every shard on its own thread, each into its own zeroed
/// gradient (scaled by `scale`) and advancing its streams' carried state. Returns the
/// summed loss in nats. Dropout masks are seeded by the run's seed, the step and the
/// shard, so a run is the same for the same seed and thread count.
fn run_shards(run: &mut Run, step: u64, scale: f32, shards: &mut [Shard]) -> f64 {
    let (w, cfg) = (&run.weights, &run.config);
    let losses: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter_mut()
            .zip(run.states.iter_mut())
            .enumerate()
            .map(|(s, (shard, st))| {
                scope.spawn(move || {
                    let Shard { size, inputs, targets, grads, ws } = shard;
                    grads.for_each_tensor_mut(|t| t.fill(0.0));
                    let mut rng = crate::rng::Rng::new(cfg.seed ^ (step.wrapping_mul(0x9E37_79B9) + s as u64 + 1));
                    loss_and_grad(w, inputs, targets, *size, st, cfg.dropout, &mut rng, scale, Some(grads), ws)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("training thread panicked")).collect()
    });
    losses.iter().sum()
}

impl Run {
    /// Counts one step: the data position moves on; at the end of an epoch the
    /// carried state is reset and, past `decay_after`, the learning rate decays.
    fn advance(&mut self, chars_per_step: u64, batches_per_epoch: u64) {
        let p = &mut self.progress;
        p.step += 1;
        p.chars_seen += chars_per_step;
        p.batch_in_epoch += 1;
        if p.batch_in_epoch == batches_per_epoch {
            p.batch_in_epoch = 0;
            p.epoch += 1;
            for st in &mut self.states {
                for v in st.h.iter_mut().chain(st.c.iter_mut()) {
                    v.fill(0.0);
                }
            }
            if p.epoch as f32 >= self.config.decay_after {
                p.lr *= self.config.lr_decay;
            }
        }
    }
}

/// Why [`validate_and_save`] stopped the run.
enum SaveError {
    /// The validation loss at this step is not finite.
    Diverged {
        step: u64,
        val: f64,
    },
    Train(TrainError),
}

impl SaveError {
    fn into_error(self, config: &TrainConfig, opts: &RunOptions, saved_step: Option<u64>) -> TrainError {
        match self {
            SaveError::Diverged { step, val } => {
                diverged(step, &format!("the validation loss is {val}"), config, opts, saved_step)
            }
            SaveError::Train(e) => e,
        }
    }
}

/// The validation loss of the current weights; a new best is saved as the model
/// (with its metadata and loss curve), and the checkpoint is written either way.
fn validate_and_save(
    run: &mut Run,
    val_ids: &[u32],
    epoch: f64,
    opts: &RunOptions,
    ckpt_path: &Path,
    log_path: &Path,
) -> Result<f64, SaveError> {
    let c = &run.config;
    let val = evaluate_batched(&run.weights, val_ids, c.batch, c.seq, c.threads);
    let step = run.progress.step;
    if !val.is_finite() {
        return Err(SaveError::Diverged { step, val });
    }
    if run.progress.best_val.is_none_or(|b| val < b) {
        run.progress.best_val = Some(val);
        run.progress.best_step = Some(step);
        let mut meta = run.train_meta.clone();
        meta.steps = Some(step);
        meta.epochs = Some(epoch);
        meta.best_val_loss = Some(val);
        meta.train_seconds = Some(run.progress.elapsed_s);
        meta.curve = curve_from_log(log_path, 100);
        let name = opts.out.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let best = Model::new(name, run.vocab.clone(), run.weights.clone(), meta)
            .map_err(|e| SaveError::Train(TrainError::Config(e.to_string())))?;
        best.save(&opts.out)
            .map_err(|source| SaveError::Train(TrainError::Write { path: opts.out.display().to_string(), source }))?;
    }
    save_checkpoint(run, ckpt_path).map_err(SaveError::Train)?;
    Ok(val)
}

/// Scores the best model at `out` on the test text and records the loss in its
/// metadata.
fn score_test(out: &Path, text: &str) -> Result<f64, TrainError> {
    let mut best = Model::load(out)
        .map_err(|e| TrainError::Config(format!("cannot reload the best model to score the test text: {e}")))?;
    let (loss, _) = evaluate(&best, text, |_, _| {});
    best.train.test_loss = Some(loss);
    best.train.test_sha256 = Some(sha256_hex(text.as_bytes()));
    best.save(out).map_err(|source| TrainError::Write { path: out.display().to_string(), source })?;
    Ok(loss)
}
