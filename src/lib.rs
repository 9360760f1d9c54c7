//! cellscope: see what the hidden cells of a character-level LSTM (or GRU, or
//! tanh-RNN) have learned.
//!
//! # Layout
//! Data flows left to right: text → [`model::Vocab::encode`] → [`model::Model::trace`]
//! → [`model::Trace`] → analysis / server / CLI.
//!
//! - [`model`]: vocabulary, weights by their PyTorch names, the safetensors file
//!   format (DESIGN §3), the architectures and their kinds (`model/arch.rs`), and
//!   the forward pass that records every kind of every layer at every character:
//!   the LSTM's h, c, i, f, g, o (`model/lstm.rs`, with clamps, and its SIMD
//!   kernels in `model/kernel.rs`; the page view's int8 variant in `model/quant.rs`),
//!   the GRU's h, r, z, n and the tanh-RNN's h
//!   (`model/gru_rnn.rs`); one character at a time with sampling (`model/step.rs`).
//! - [`analysis`]: C-syntax concepts (strings, comments, `if` conditions, depth,
//!   column), cell ranking (AUC, correlation), top contexts, gate saturation. Works
//!   on plain matrices and labels; knows nothing of the model.
//! - [`finder`]: traces → analysis: ranks every cell of a trace, or streams whole
//!   files in chunks (binned AUC with a stated bound); a cell's top contexts with
//!   their text (`top_contexts`); concept directions (sparse probes over many
//!   cells, `finder/probe.rs`).
//! - [`train`]: the trainer for all three architectures: batches of parallel
//!   streams, backward pass (BPTT), Adam/RMSProp, clipping, checkpoints and resume
//!   (`train/backprop.rs` holds the gradient formulas).
//! - `parallel`: independent parts of a model run shared out between threads.
//! - [`rng`]: the seeded generator used by initialisation, training and sampling.
//! - `display`: how a kind is shown (tanh(c), gates as 2v − 1) and coloured —
//!   one place for the terminal, the pages and the API.
//! - [`server`]: the axum app: `server::router` lists every route; one or several
//!   models (`server/mod.rs`: `Served`, `AppState::select`); JSON API
//!   (`server/api.rs`), the causal lab (`server/causal.rs`: clamps, sampling),
//!   models side by side (`server/compare.rs`), the pages' plots (`server/plots.rs`),
//!   memory views (`server/memory.rs`: saliency, one step explained, horizon),
//!   askama pages (`server/pages.rs`), the error policy (`server/error.rs`), the
//!   request guard (`server/guard.rs`), the model queue (`server/queue.rs`) and
//!   the accept loop (`server/net.rs`). Pages are enhanced by `static/app.js`.
//! - [`cli`], [`analysis_cli`] and [`probe_cli`] (`find-cells --probe`): the `cellscope` commands; `main.rs` only parses
//!   and calls [`cli::run`].
//!
//! `pub` is what `main.rs`, the integration tests and the benches use, with the types
//! their signatures name; the rest is `pub(crate)` or private.

pub mod analysis;
pub mod analysis_cli;
pub mod cli;
pub(crate) mod display;
pub mod finder;
pub mod model;
pub(crate) mod parallel;
pub mod probe_cli;
pub mod rng;
pub mod server;
pub mod train;
