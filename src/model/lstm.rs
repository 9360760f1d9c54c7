//! The character-level LSTM: weights by their PyTorch names, loading and saving in
//! the DESIGN §3 format, and the forward pass that records every cell.
//!
//! Per layer k, for characters t = 0..T (gate order i, f, g, o, as in `nn.LSTM`):
//! ```text
//! i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
//! f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
//! g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
//! o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
//! c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
//! h_t = o_t ⊙ tanh(c_t)
//! p_t = softmax(W_dec h_t^{last layer} + b_dec)      (next-character distribution)
//! ```
//! `W_i* x_t` is computed for the whole text before the recurrence: a row lookup in
//! a precomputed V × 4H table for layer 0 (one-hot or embedded input), GEMMs over
//! blocks of steps for the layers above. Only `W_h* h_{t-1}` and the biases are left
//! inside the sequential loop (`kernel::lstm_layer`).
//!
//! The recurrence is sequential in time, but layer k + 1 only needs layer k's h
//! up to the same step. So a long text runs its layers as a pipeline (`Job::run`):
//! one thread runs layer 0 over block b + 1 while another runs layer 1's input
//! GEMM and recurrence over block b, each streaming its own W_hh on its own core.
//! More layers than threads: each thread takes a contiguous range of layers. Every
//! layer makes the same kernel calls on the same inputs (clamped rows included) as
//! on one thread, so the trace is identical to the bit. A one-layer model (or any,
//! with `CELLSCOPE_TRACE_SHARE=units`) instead splits each layer's units between
//! the two threads, meeting after every step (`Job::run_shared`), to the same bits.
//! - `CELLSCOPE_TRACE_THREADS=N`: at most N threads per trace (at most the cores
//!   there are). Unset, library callers ([`Model::trace`]) get one thread, and the
//!   server takes two for a text of 256 characters or more when the request is its
//!   only model run (`server::api::trace_threads_now`). Measured on an idle 2-core
//!   AMD EPYC (AVX2), 2,000 characters at 2 × 512: the exact trace gained 1.45×
//!   (4.4k → 6.4k chars/s), the int8 view trace 1.8× (9.1k → 16.2k;
//!   `scripts/bench.sh`). On a machine busy with other work a second thread costs
//!   about 10% more CPU per character and can run slower than one, so set
//!   `CELLSCOPE_TRACE_THREADS=1` there.
//! - library texts under `PIPELINE_MIN_STEPS` (4096) characters run on one thread
//!   unless the caller names a thread count ([`Model::trace_clamped_with_threads`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::OnceLock;

use ndarray::{Array1, Array2, ArrayView2, Axis};

pub use super::arch::{Arch, Kind};
use super::kernel::{self, gemm, LayerOut, LayerRows, PackedHh, Trans};
use super::safetensors::{self, FormatError, Tensor, TensorFile};
use super::vocab::{Encoded, Vocab, VocabError};
use crate::parallel::{Both, Meet, Pair};

/// Number of gates of an LSTM cell (i, f, g, o).
pub(crate) const GATES: usize = 4;

/// Largest model file [`Model::load`] reads (4 GiB). The file is held in memory while
/// it converts, so a larger one is refused before anything is read.
pub const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Most layers a model file may have; `rnn.*_l{k}` names run from `_l0` to `_l63`.
/// Far beyond any model worth tracing, and it bounds what a layer name can ask for.
pub(crate) const MAX_LAYERS: usize = 64;

/// The four tensors of every layer, by their `nn.LSTM` names: `rnn.{param}_l{k}`.
const LAYER_PARAMS: [&str; 4] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];

/// The name of parameter `param` (one of [`LAYER_PARAMS`]) of layer `k`.
fn layer_tensor(param: &str, k: usize) -> String {
    format!("rnn.{param}_l{k}")
}

/// The layer index written in a layer tensor's name (`rnn.weight_ih_l12` → `"12"`): digits
/// without sign or leading zero, not yet bounded. `None` for any other name.
fn layer_suffix(name: &str) -> Option<&str> {
    let (param, k) = name.strip_prefix("rnn.")?.rsplit_once("_l")?;
    let digits = !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && (k == "0" || !k.starts_with('0'));
    (LAYER_PARAMS.contains(&param) && digits).then_some(k)
}

/// Floats in the input-projection block of layers ≥ 1 (4 MiB: 1024 steps at
/// H = 256). The GEMM repacks W_ih for every block, so blocks must be long; a
/// bounded block keeps a long text from allocating (and faulting in) T × 4H.
const PROJ_BLOCK_FLOATS: usize = 1 << 20;

/// The weights of one recurrent layer, named and shaped as in PyTorch's `nn.LSTM`,
/// `nn.GRU` and `nn.RNN` (G = `Arch::gates`: 4, 3 or 1).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// (G·H, in): input-to-gates, rows in gate order (i, f, g, o or r, z, n).
    pub weight_ih: Array2<f32>,
    /// (G·H, H): hidden-to-gates.
    pub weight_hh: Array2<f32>,
    /// (G·H,)
    pub bias_ih: Array1<f32>,
    /// (G·H,)
    pub bias_hh: Array1<f32>,
}

/// All parameters of a model. The trainer updates these in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Which equations the layers' tensors feed (their row count is G·H).
    pub arch: Arch,
    /// (V, E), or `None` for one-hot input (E = V).
    pub embedding: Option<Array2<f32>>,
    pub layers: Vec<LayerWeights>,
    /// (V, H)
    pub decoder_weight: Array2<f32>,
    /// (V,)
    pub decoder_bias: Array1<f32>,
}

impl Weights {
    pub fn hidden_size(&self) -> usize {
        self.layers[0].weight_hh.ncols()
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.decoder_bias.len()
    }

    /// Number of scalar parameters.
    pub(crate) fn param_count(&self) -> usize {
        let layers: usize =
            self.layers.iter().map(|l| l.weight_ih.len() + l.weight_hh.len() + l.bias_ih.len() + l.bias_hh.len()).sum();
        layers + self.embedding.as_ref().map_or(0, |e| e.len()) + self.decoder_weight.len() + self.decoder_bias.len()
    }

    /// Every tensor by its PyTorch `state_dict` name.
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        fn slice<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> &[f32] {
            a.as_slice().expect("weights are kept in standard layout")
        }
        let mut out = Vec::new();
        if let Some(e) = &self.embedding {
            out.push(("embedding.weight".to_string(), e.shape().to_vec(), slice(e)));
        }
        for (k, l) in self.layers.iter().enumerate() {
            let [ih, hh, bih, bhh] = LAYER_PARAMS.map(|p| layer_tensor(p, k));
            out.push((ih, l.weight_ih.shape().to_vec(), slice(&l.weight_ih)));
            out.push((hh, l.weight_hh.shape().to_vec(), slice(&l.weight_hh)));
            out.push((bih, l.bias_ih.shape().to_vec(), slice(&l.bias_ih)));
            out.push((bhh, l.bias_hh.shape().to_vec(), slice(&l.bias_hh)));
        }
        out.push(("decoder.weight".into(), self.decoder_weight.shape().to_vec(), slice(&self.decoder_weight)));
        out.push(("decoder.bias".into(), self.decoder_bias.shape().to_vec(), slice(&self.decoder_bias)));
        out
    }
}

/// Why a model file could not be loaded. Each message names the tensor or key
/// and what was expected, so a user can fix the export.
///
/// Every message is whole in itself and no variant has a `source()`: callers print
/// errors with their chain (`{:#}`), where a cause that is both in the message and the
/// source would be printed twice.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read model file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is {kind}, not a regular file; give the path of a .safetensors model file")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path} is {size} bytes, over the {limit} GiB limit for model files", limit = MAX_MODEL_BYTES >> 30)]
    TooLarge { path: String, size: u64 },
    #[error("not a valid safetensors file: {0}")]
    Format(FormatError),
    #[error("model file lacks metadata {0} (see DESIGN §3: cellscope.arch, cellscope.vocab)")]
    MissingMetadata(&'static str),
    #[error("unknown architecture {0:?} in cellscope.arch; use \"lstm\", \"gru\" or \"rnn\" (DESIGN §3)")]
    UnknownArch(String),
    #[error("bad cellscope.vocab: {0}")]
    Vocab(VocabError),
    #[error("bad cellscope.train: {0}")]
    TrainMeta(String),
    #[error("model file lacks {name} (expected {expected})")]
    MissingTensor { name: String, expected: String },
    #[error("{name} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{name} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite { name: String, index: usize, value: f32 },
    #[error("vocabulary has {vocab} characters but decoder.weight has {decoder} rows")]
    VocabMismatch { vocab: usize, decoder: usize },
    #[error("unexpected tensor {0} (bidirectional or projected LSTMs are not supported; DESIGN §3 lists the names)")]
    Unexpected(String),
    #[error("model has a hidden size of 0 or no layers")]
    Empty,
    #[error(
        "rnn.weight_hh_l0 has shape {found:?}, expected [{g}H, H] with H ≥ 1 (it sets the hidden size; G = {g} \
         for cellscope.arch = \"{arch}\": is that the right architecture?)",
        g = arch.gates()
    )]
    HiddenShape { found: Vec<usize>, arch: Arch },
    #[error(
        "tensor {name} names layer {index}; cellscope loads at most {MAX_LAYERS} layers (_l0 to _l{last})",
        last = MAX_LAYERS - 1
    )]
    LayerOutOfRange { name: String, index: String },
}

impl From<FormatError> for LoadError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

impl From<VocabError> for LoadError {
    fn from(e: VocabError) -> Self {
        Self::Vocab(e)
    }
}

/// A loaded model, ready to trace text.
#[derive(Debug, Clone)]
pub struct Model {
    /// Shown in the UI and API (the file stem by default).
    pub name: String,
    pub vocab: Vocab,
    weights: Weights,
    /// The parsed `cellscope.train` metadata (empty when absent).
    pub train: super::TrainMeta,
    /// Layer 0's input projection for each character id: (V + 1, G·H), row v =
    /// W_ih x(v), and a last row of zeros for characters outside the vocabulary.
    /// Derived from `weights`; see [`Model::refresh`].
    pub(super) input_table: Array2<f32>,
    /// Per layer, b_ih + b_hh (G·H; the GRU's step adds its two n biases apart).
    pub(super) bias: Vec<Vec<f32>>,
    /// LSTM only: per layer, W_hh in the order the step kernel streams it.
    pub(super) packed_hh: Vec<PackedHh>,
    /// LSTM only: per layer ≥ 1 (index k − 1), W_ih packed the same way, for one
    /// step at a time ([`super::Stepper`]); a whole text's projections are one GEMM.
    pub(super) packed_ih: Vec<PackedHh>,
    /// LSTM only: the int8 weights of the page view's trace (`super::quant`), built
    /// on first use; emptied by [`Model::refresh`].
    pub(super) quant: OnceLock<Vec<super::quant::QuantLayer>>,
}

/// Hidden and cell state of every layer, carried between calls to trace a text in pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Per layer, H values.
    pub h: Vec<Vec<f32>>,
    /// Per layer, H values for an LSTM; empty for the architectures without a
    /// cell state (GRU, RNN).
    pub c: Vec<Vec<f32>>,
}

impl State {
    pub(crate) fn zeros(arch: Arch, layers: usize, hidden: usize) -> Self {
        let cell = if arch.has_cell() { hidden } else { 0 };
        Self { h: vec![vec![0.0; hidden]; layers], c: vec![vec![0.0; cell]; layers] }
    }
}

/// Everything one layer did over a text: one T × H matrix (row = character) for
/// each kind its architecture records ([`Arch::kinds`], in that order; h first).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTrace {
    kinds: &'static [Kind],
    values: Vec<Array2<f32>>,
}

impl LayerTrace {
    /// A layer's record from `values[j]`, the T × H values of `arch.kinds()[j]`
    /// (row-major).
    pub(super) fn new(arch: Arch, values: Vec<Vec<f32>>, t: usize, n: usize) -> Self {
        let kinds = arch.kinds();
        assert_eq!(values.len(), kinds.len(), "a {arch} layer records {}", arch.kind_list());
        let values = values
            .into_iter()
            .map(|v| Array2::from_shape_vec((t, n), v).expect("every kind holds T × H values"))
            .collect();
        Self { kinds, values }
    }

    /// The LSTM layer's matrices from the kernel's output, with the memory terms
    /// derived from them; `c0` is the layer's cell state before the first step.
    /// (The stages derive the memory terms block by block while the rows are in
    /// cache; whatever they left is derived here.)
    pub(super) fn from_kernel(mut out: LayerOut, t: usize, n: usize, c0: &[f32]) -> Self {
        out.extend_memory_terms(c0);
        let LayerOut { h, c, i, f, g, o, write, keep } = out;
        Self::new(Arch::Lstm, vec![h, c, i, f, g, o, write, keep], t, n)
    }

    /// The kinds this layer holds.
    pub fn kinds(&self) -> &'static [Kind] {
        self.kinds
    }

    /// Every kind this layer holds with its values.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, &Array2<f32>)> {
        self.kinds.iter().copied().zip(&self.values)
    }

    /// The hidden state h, which every architecture has.
    pub fn h(&self) -> &Array2<f32> {
        &self.values[0]
    }

    /// The values of `kind`, or `None` if this layer's architecture lacks it.
    pub fn try_get(&self, kind: Kind) -> Option<&Array2<f32>> {
        self.kinds.iter().position(|&k| k == kind).map(|j| &self.values[j])
    }

    /// The values of `kind`.
    ///
    /// # Panics
    /// If the architecture does not record `kind`: check requests against
    /// [`Arch::kinds`] (or use [`LayerTrace::try_get`]) first.
    pub fn get(&self, kind: Kind) -> &Array2<f32> {
        self.try_get(kind).unwrap_or_else(|| {
            panic!("this layer records {:?}, not {kind:?}; check the kind against Arch::kinds first", self.kinds)
        })
    }
}

/// A dropped trace's matrices go back to the buffer pool for the next trace to
/// record into (see `model::buffers`).
impl Drop for LayerTrace {
    fn drop(&mut self) {
        for values in std::mem::take(&mut self.values) {
            let (v, offset) = values.into_raw_vec_and_offset();
            if offset == Some(0) {
                super::buffers::give(v);
            }
        }
    }
}

/// The record of one text run through the model.
#[derive(Debug, Clone)]
pub struct Trace {
    pub chars: Vec<char>,
    pub ids: Vec<Option<u32>>,
    /// Positions of characters outside the vocabulary. They enter the model as a
    /// zero input vector (no one-hot bit, no embedding row): time advances and the
    /// state evolves, but the character itself contributes nothing.
    pub unknown: Vec<usize>,
    pub layers: Vec<LayerTrace>,
    /// (T, V): the model's distribution over the character after position t.
    pub probs: Array2<f32>,
    /// The state after the last character; pass it to [`Model::trace_from`] to continue.
    pub final_state: State,
}

impl Trace {
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }
}

fn tensor_shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}

fn take(tensors: &mut BTreeMap<String, Tensor>, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
    let t = tensors
        .remove(name)
        .ok_or_else(|| LoadError::MissingTensor { name: name.to_string(), expected: tensor_shape_str(expected) })?;
    if t.shape != expected {
        return Err(LoadError::WrongShape { name: name.to_string(), found: t.shape, expected: expected.to_vec() });
    }
    if let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(LoadError::NonFinite { name: name.to_string(), index, value });
    }
    Ok(t.data)
}

fn matrix(data: Vec<f32>, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), data).expect("shape checked by take()")
}

/// Reads a safetensors file from disk in the order that lets each check come before the
/// work it guards: what the path is and how big (a FIFO would block, `/dev/zero` never
/// ends, a huge file would be read whole), then the header length against the file's
/// size, then the header, and only when the header holds together, the data.
pub(crate) fn read_tensor_file(path: &Path) -> Result<TensorFile, LoadError> {
    let shown = || path.display().to_string();
    let io = |error| LoadError::Io { path: shown(), error };
    // Stat before opening: opening a FIFO waits for a writer.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path: shown(), kind: file_kind(&meta.file_type()) });
    }
    let size = meta.len();
    if size > MAX_MODEL_BYTES {
        return Err(LoadError::TooLarge { path: shown(), size });
    }
    // `take` holds every read to the size checked above, even if the file grows.
    let mut file = std::fs::File::open(path).map_err(io)?.take(size);
    let mut read = |len: usize| -> Result<Vec<u8>, LoadError> {
        let mut buf = vec![0; len];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    };
    let prefix = read(size.min(safetensors::PREFIX_BYTES as u64) as usize)?;
    let header_len = safetensors::header_len(&prefix, size)?;
    let data_len = usize::try_from(size - (safetensors::PREFIX_BYTES + header_len) as u64)
        .map_err(|_| LoadError::TooLarge { path: shown(), size })?;
    let header = safetensors::Header::parse(&read(header_len)?, data_len)?;
    let data = read(header.data_len())?;
    Ok(header.read_tensors(&data)?)
}

/// What a path that is not a regular file is, for [`LoadError::NotAFile`].
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

impl Model {
    /// Builds a model from weights and a vocabulary, checking that they agree.
    pub fn new(name: String, vocab: Vocab, weights: Weights, train: super::TrainMeta) -> Result<Self, LoadError> {
        if weights.layers.is_empty() || weights.hidden_size() == 0 {
            return Err(LoadError::Empty);
        }
        if vocab.len() != weights.vocab_size() {
            return Err(LoadError::VocabMismatch { vocab: vocab.len(), decoder: weights.vocab_size() });
        }
        let mut model = Self {
            name,
            vocab,
            weights,
            train,
            input_table: Array2::zeros((0, 0)),
            bias: Vec::new(),
            packed_hh: Vec::new(),
            packed_ih: Vec::new(),
            quant: OnceLock::new(),
        };
        model.refresh();
        Ok(model)
    }

    /// The weights, by their PyTorch names (read only: the derived tables below
    /// are built from them once, in [`Model::new`]).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Recomputes the derived tables from `weights`.
    fn refresh(&mut self) {
        self.quant = OnceLock::new();
        let w = &self.weights;
        self.bias = w.layers.iter().map(|l| (&l.bias_ih + &l.bias_hh).to_vec()).collect();
        let l0 = &w.layers[0];
        // Layer 0 sees x = e_v (one-hot) or x = embedding[v]; either way W_ih x is a
        // per-character constant, so precompute all V of them.
        let table = match &w.embedding {
            None => l0.weight_ih.t().to_owned(),
            Some(e) => e.dot(&l0.weight_ih.t()),
        };
        let unknown = Array2::zeros((1, table.ncols()));
        self.input_table = ndarray::concatenate(Axis(0), &[table.view(), unknown.view()]).expect("same width");
        let n = w.hidden_size();
        if w.arch != Arch::Lstm {
            // The GRU and RNN steps read W_hh and W_ih as PyTorch lays them out.
            (self.packed_hh, self.packed_ih) = (Vec::new(), Vec::new());
            return;
        }
        self.packed_hh = w
            .layers
            .iter()
            .map(|l| PackedHh::new(l.weight_hh.as_slice().expect("weights are kept in standard layout"), n))
            .collect();
        self.packed_ih = w.layers[1..]
            .iter()
            .map(|l| PackedHh::new(l.weight_ih.as_slice().expect("weights are kept in standard layout"), n))
            .collect();
    }

    /// The architecture (LSTM, GRU or tanh-RNN).
    pub fn arch(&self) -> Arch {
        self.weights.arch
    }

    /// Loads a model file (DESIGN §3). Refuses anything but a regular file of at most
    /// [`MAX_MODEL_BYTES`], and checks the header before it reads the tensors.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let file = read_tensor_file(path)?;
        let name = path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        Self::from_tensors(file, name)
    }

    /// Parses a model from the bytes of a safetensors file.
    pub fn from_bytes(bytes: &[u8], name: String) -> Result<Self, LoadError> {
        Self::from_tensors(safetensors::parse(bytes)?, name)
    }

    fn from_tensors(file: TensorFile, name: String) -> Result<Self, LoadError> {
        let meta = &file.metadata;
        // Without the key the file is read as an LSTM (a plain `nn.LSTM` export).
        let arch = match meta.get("cellscope.arch") {
            None => Arch::Lstm,
            Some(a) => Arch::parse(a).ok_or_else(|| LoadError::UnknownArch(a.clone()))?,
        };
        let gates = arch.gates();
        let vocab =
            Vocab::from_json(meta.get("cellscope.vocab").ok_or(LoadError::MissingMetadata("cellscope.vocab"))?)?;
        let train = match meta.get("cellscope.train") {
            None => super::TrainMeta::default(),
            Some(s) => serde_json::from_str(s).map_err(|e| LoadError::TrainMeta(e.to_string()))?,
        };
        let mut tensors = file.tensors;
        let v = vocab.len();
        // Checked first: a vocabulary of the wrong size would otherwise surface as a
        // puzzling shape error on the input weights.
        let decoder_rows = tensors.get("decoder.weight").and_then(|t| t.shape.first().copied());
        if let Some(rows) = decoder_rows {
            if rows != v {
                return Err(LoadError::VocabMismatch { vocab: v, decoder: rows });
            }
        }
        // H ≥ 1 makes W_hh hold G·H² values that the file really contains, which bounds H
        // (an empty tensor may claim any dimensions).
        let hidden = match tensors.get("rnn.weight_hh_l0").map(|t| &t.shape[..]) {
            None => {
                let expected = format!("[{gates}H, H] for cellscope.arch = \"{arch}\"");
                return Err(LoadError::MissingTensor { name: "rnn.weight_hh_l0".into(), expected });
            }
            Some(&[rows, h]) if h > 0 && h.checked_mul(gates) == Some(rows) => h,
            Some(shape) => return Err(LoadError::HiddenShape { found: shape.to_vec(), arch }),
        };
        // The layer count is the highest `_l{k}` suffix among the layer tensors, so a
        // missing tensor of some layer is reported as missing, not as stray.
        let mut n_layers = 1;
        for name in tensors.keys() {
            if let Some(k) = layer_suffix(name) {
                match k.parse::<usize>() {
                    Ok(k) if k < MAX_LAYERS => n_layers = n_layers.max(k + 1),
                    _ => return Err(LoadError::LayerOutOfRange { name: name.clone(), index: k.to_string() }),
                }
            }
        }
        let (embedding, input) = if tensors.contains_key("embedding.weight") {
            let e = tensors["embedding.weight"].shape.get(1).copied().unwrap_or(0);
            let data = take(&mut tensors, "embedding.weight", &[v, e])?;
            (Some(matrix(data, v, e)), e)
        } else {
            (None, v)
        };
        let g = gates * hidden;
        let mut layers = Vec::with_capacity(n_layers);
        for k in 0..n_layers {
            let inp = if k == 0 { input } else { hidden };
            let [ih, hh, bih, bhh] = LAYER_PARAMS.map(|p| layer_tensor(p, k));
            layers.push(LayerWeights {
                weight_ih: matrix(take(&mut tensors, &ih, &[g, inp])?, g, inp),
                weight_hh: matrix(take(&mut tensors, &hh, &[g, hidden])?, g, hidden),
                bias_ih: Array1::from(take(&mut tensors, &bih, &[g])?),
                bias_hh: Array1::from(take(&mut tensors, &bhh, &[g])?),
            });
        }
        let decoder_weight = matrix(take(&mut tensors, "decoder.weight", &[v, hidden])?, v, hidden);
        let decoder_bias = Array1::from(take(&mut tensors, "decoder.bias", &[v])?);
        if let Some(name) = tensors.keys().next() {
            return Err(LoadError::Unexpected(name.clone()));
        }
        let weights = Weights { arch, embedding, layers, decoder_weight, decoder_bias };
        Self::new(name, vocab, weights, train)
    }

    /// Serialises the model in the DESIGN §3 format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let named = self.weights.named_tensors();
        let tensors: BTreeMap<String, (Vec<usize>, &[f32])> = named.into_iter().map(|(n, s, d)| (n, (s, d))).collect();
        let mut meta = BTreeMap::new();
        meta.insert("cellscope.arch".to_string(), self.arch().name().to_string());
        meta.insert("cellscope.vocab".to_string(), self.vocab.to_json());
        meta.insert("cellscope.train".to_string(), serde_json::to_string(&self.train).expect("metadata serialises"));
        safetensors::serialize(&tensors, &meta)
    }

    /// Writes the model atomically (temporary file, then rename), so a crash never
    /// leaves a half-written model behind.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    pub fn layers(&self) -> usize {
        self.weights.layers.len()
    }

    pub fn hidden_size(&self) -> usize {
        self.weights.hidden_size()
    }

    /// Layer 0's input projection of a character (W_ih x + 0, 4H floats): its
    /// row of the precomputed table, the zero row for an unknown one (`None`).
    pub(super) fn input_row(&self, id: Option<u32>) -> &[f32] {
        let v = id.map_or(self.vocab.len(), |v| v as usize);
        self.input_table.row(v).to_slice().expect("standard layout")
    }

    pub fn zero_state(&self) -> State {
        State::zeros(self.arch(), self.layers(), self.hidden_size())
    }

    /// Runs `text` from the zero state and records everything.
    pub fn trace(&self, text: &str) -> Trace {
        self.trace_from(text, &self.zero_state())
    }

    /// Runs `text` from `state` (e.g. a previous trace's `final_state`).
    ///
    /// # Panics
    /// If `state` does not have this model's layer count and hidden size.
    pub fn trace_from(&self, text: &str, state: &State) -> Trace {
        let enc = self.vocab.encode(text);
        self.trace_encoded(enc, state)
    }

    /// Runs already-encoded text.
    pub(crate) fn trace_encoded(&self, enc: Encoded, state: &State) -> Trace {
        self.trace_clamped(enc, state, &[])
    }

    /// Runs already-encoded text with some state components overwritten (see
    /// [`Clamp`]; check them first with [`Model::check_clamps`]). Steps a clamp
    /// covers run one at a time so the overwritten value is what the next step
    /// and the layer above see; the rest runs at full speed.
    ///
    /// A text of at least `PIPELINE_MIN_STEPS` characters runs its layers as a
    /// pipeline on up to `CELLSCOPE_TRACE_THREADS` threads, 1 by default (see the
    /// module doc); the result is the same to the bit.
    pub fn trace_clamped(&self, enc: Encoded, state: &State, clamps: &[Clamp]) -> Trace {
        let threads = if enc.ids.len() >= PIPELINE_MIN_STEPS { trace_threads() } else { 1 };
        self.trace_clamped_with_threads(enc, state, clamps, threads)
    }

    /// [`Model::trace_clamped`] on `threads` threads (at most one per layer; 1 =
    /// the calling thread alone) whatever the text's length: for a caller that
    /// shares out its own cores, and to compare.
    pub fn trace_clamped_with_threads(&self, enc: Encoded, state: &State, clamps: &[Clamp], threads: usize) -> Trace {
        if self.arch() != Arch::Lstm {
            return super::gru_rnn::trace(self, enc, state, clamps);
        }
        if threads > 1 && self.shares_units() {
            let block = self.block_steps(enc.ids.len(), 1);
            return self.trace_shared(enc, state, clamps, block);
        }
        let block = self.block_steps(enc.ids.len(), threads);
        self.trace_staged(enc, state, clamps, threads, block)
    }

    /// Whether a trace on two threads splits each layer's units between them
    /// ([`Job::run_shared`]) rather than running its layers as a pipeline: for a
    /// one-layer LSTM (nothing to pipeline) of at least [`SHARED_MIN_HIDDEN`]
    /// units, or wherever `CELLSCOPE_TRACE_SHARE=units` asks for it
    /// (`layers`, the default, keeps the pipeline for two layers or more).
    fn shares_units(&self) -> bool {
        static UNITS: OnceLock<bool> = OnceLock::new();
        let asked = *UNITS.get_or_init(|| std::env::var("CELLSCOPE_TRACE_SHARE").is_ok_and(|v| v.trim() == "units"));
        self.hidden_size() >= SHARED_MIN_HIDDEN && (self.layers() == 1 || asked)
    }

    /// The trace on two threads with every layer's units split between them,
    /// whatever the model (a one-layer LSTM traces so on two threads anyway):
    /// to weigh it against the pipeline on a CPU (`scripts/bench.sh --kernel`).
    /// The same trace, to the bit. A GRU or RNN is traced on one thread.
    pub fn trace_units_shared(&self, enc: Encoded, state: &State, clamps: &[Clamp]) -> Trace {
        if self.arch() != Arch::Lstm {
            return super::gru_rnn::trace(self, enc, state, clamps);
        }
        let block = self.block_steps(enc.ids.len(), 1);
        self.trace_shared(enc, state, clamps, block)
    }

    /// [`Model::trace_clamped_with_threads`] of `base`'s text from the zero state,
    /// where `base` is this model's unclamped trace of it from the zero state: the
    /// layers below the lowest clamped one are `base`'s, copied, since a clamp
    /// changes nothing below its layer; only the layers from it up run again.
    /// The same trace to the bit as running every layer. With two threads and one
    /// layer left to run (a top-layer clamp), that layer's units are split
    /// between the threads ([`Job::run_shared`]).
    pub fn trace_clamped_over(&self, base: &Trace, clamps: &[Clamp], threads: usize) -> Trace {
        let enc = Encoded { chars: base.chars.clone(), ids: base.ids.clone(), unknown: base.unknown.clone() };
        let state = self.zero_state();
        let first = clamps.iter().map(|c| c.layer).min().unwrap_or(0);
        if self.arch() != Arch::Lstm || first == 0 || first >= self.layers() || base.layers.len() != self.layers() {
            return self.trace_clamped_with_threads(enc, &state, clamps, threads);
        }
        let (t_len, n) = (enc.ids.len(), self.hidden_size());
        let below = base.layers[first - 1].h().as_slice().expect("traces are kept in standard layout");
        let shared = threads > 1 && n >= SHARED_MIN_HIDDEN && self.layers() - first == 1;
        let block = self.block_steps(t_len, if shared { 1 } else { threads });
        let job = Job { model: self, ids: &enc.ids, state: &state, clamps, block, from: (first, Some(below)) };
        let outs = if shared { Pair::with(|pair| job.run_shared(pair)) } else { job.run(threads) };
        let mut layers: Vec<LayerTrace> = base.layers[..first].to_vec();
        layers.extend(
            outs.into_iter().zip(&state.c[first..]).map(|(out, c0)| LayerTrace::from_kernel(out, t_len, n, c0)),
        );
        self.finish_trace(enc, layers, &state)
    }

    /// The trace on this thread and a helper, every layer's units split between
    /// them ([`Job::run_shared`]), `block` steps per input GEMM.
    fn trace_shared(&self, enc: Encoded, state: &State, clamps: &[Clamp], block: usize) -> Trace {
        let t_len = enc.ids.len();
        let n = self.hidden_size();
        assert_eq!(state.h.len(), self.layers(), "state has the wrong number of layers");
        let job = Job { model: self, ids: &enc.ids, state, clamps, block, from: (0, None) };
        let outs = Pair::with(|pair| job.run_shared(pair));
        let layers: Vec<LayerTrace> =
            outs.into_iter().zip(&state.c).map(|(out, c0)| LayerTrace::from_kernel(out, t_len, n, c0)).collect();
        self.finish_trace(enc, layers, state)
    }

    /// Steps per block: the unit of the layers ≥ 1 input-projection GEMM and, on
    /// more than one thread, of the hand-over between pipeline stages. At most
    /// [`PROJ_BLOCK_FLOATS`] of projections; a pipeline cuts the text into about
    /// [`PIPELINE_BLOCKS`] blocks, so that the layer above starts early and the
    /// layer below does not finish long before it. (Shorter blocks only mean more
    /// GEMM calls; every step's result is the same.)
    fn block_steps(&self, t_len: usize, threads: usize) -> usize {
        let longest = (PROJ_BLOCK_FLOATS / (GATES * self.hidden_size())).max(16);
        if threads > 1 {
            t_len.div_ceil(PIPELINE_BLOCKS).clamp(MIN_PIPELINE_BLOCK, longest.max(MIN_PIPELINE_BLOCK))
        } else {
            longest
        }
    }

    /// [`Model::trace_clamped`] with the layers split into `stages` pipeline
    /// stages (at most one per layer; 1 runs everything on this thread) that hand
    /// over `block` steps at a time.
    fn trace_staged(&self, enc: Encoded, state: &State, clamps: &[Clamp], stages: usize, block: usize) -> Trace {
        let Encoded { chars, ids, unknown } = enc;
        let t_len = ids.len();
        let n = self.hidden_size();
        assert_eq!(state.h.len(), self.layers(), "state has the wrong number of layers");
        let job = Job { model: self, ids: &ids, state, clamps, block, from: (0, None) };
        let layers: Vec<LayerTrace> = job
            .run(stages)
            .into_iter()
            .zip(&state.c)
            .map(|(out, c0)| LayerTrace::from_kernel(out, t_len, n, c0))
            .collect();
        self.finish_trace(Encoded { chars, ids, unknown }, layers, state)
    }

    /// The trace of `enc` from the recorded layers: the final state (the last row of
    /// h, and of c where there is one) and the next-character distribution.
    pub(super) fn finish_trace(&self, enc: Encoded, layers: Vec<LayerTrace>, state: &State) -> Trace {
        let Encoded { chars, ids, unknown } = enc;
        let t_len = ids.len();
        let last_rows = |kind: Kind| layers.iter().map(|l| l.get(kind).row(t_len - 1).to_vec()).collect();
        let final_state = if t_len == 0 {
            state.clone()
        } else {
            let c = if self.arch().has_cell() { last_rows(Kind::Cell) } else { state.c.clone() };
            State { h: last_rows(Kind::Hidden), c }
        };
        let probs = self.next_char_probs(layers.last().expect("at least one layer").h().view());
        Trace { chars, ids, unknown, layers, probs, final_state }
    }

    /// Layer `k` over `rows` (input projections of steps `t0..t0 + rows.len()`),
    /// appended to `out`, with the clamps of this layer applied after each step
    /// they cover.
    fn run_layer(
        &self,
        k: usize,
        rows: &[&[f32]],
        t0: usize,
        (h0, c0): (&[f32], &[f32]),
        out: &mut LayerOut,
        clamps: &[Clamp],
    ) {
        let mine: Vec<&Clamp> =
            clamps.iter().filter(|c| c.layer == k && c.to > t0 && c.from < t0 + rows.len()).collect();
        let run = |rows: &[&[f32]], out: &mut LayerOut| {
            kernel::lstm_layer(&self.packed_hh[k], rows, &self.bias[k], h0, c0, out);
        };
        if mine.is_empty() {
            return run(rows, out);
        }
        let mut i = 0;
        while i < rows.len() {
            let t = t0 + i;
            if mine.iter().any(|c| c.covers(t)) {
                run(&rows[i..i + 1], out);
                apply_clamps(out, self.hidden_size(), t, &mine);
                i += 1;
            } else {
                // Up to the next clamp's start at full speed.
                let next = mine.iter().filter(|c| c.from > t).map(|c| c.from - t0).min().unwrap_or(rows.len());
                let end = next.min(rows.len());
                run(&rows[i..end], out);
                i = end;
            }
        }
    }

    /// Checks clamps against this model: layer, kind (h, or c for an LSTM), cell,
    /// a finite value, and `from ≤ to ≤ len` for a text of `len` characters.
    pub fn check_clamps(&self, clamps: &[Clamp], len: usize) -> Result<(), ClampError> {
        for c in clamps {
            if c.layer >= self.layers() {
                return Err(ClampError::Layer { layer: c.layer, layers: self.layers() });
            }
            if !matches!(c.kind, Kind::Hidden | Kind::Cell) {
                return Err(ClampError::Kind(c.kind.letter()));
            }
            if c.kind == Kind::Cell && !self.arch().has_cell() {
                return Err(ClampError::NoCell(self.arch()));
            }
            if c.cell >= self.hidden_size() {
                return Err(ClampError::Cell { cell: c.cell, hidden: self.hidden_size() });
            }
            if !c.value.is_finite() {
                return Err(ClampError::Value(c.value));
            }
            if c.from > c.to || c.to > len {
                return Err(ClampError::Range { from: c.from, to: c.to, len });
            }
        }
        Ok(())
    }

    /// softmax(H W_decᵀ + b) for a (T, H) matrix of top-layer hidden states.
    pub(crate) fn next_char_probs(&self, h: ArrayView2<f32>) -> Array2<f32> {
        let (t_len, n) = h.dim();
        let v = self.vocab.len();
        let mut logits: Vec<f32> = Vec::with_capacity(t_len * v);
        let bias = self.weights.decoder_bias.as_slice().expect("standard layout");
        for _ in 0..t_len {
            logits.extend_from_slice(bias);
        }
        let h = h.as_standard_layout();
        gemm(
            t_len,
            n,
            v,
            1.0,
            h.as_slice().expect("standard layout"),
            Trans::N,
            self.weights.decoder_weight.as_slice().expect("standard layout"),
            Trans::T,
            1.0,
            &mut logits,
        );
        kernel::softmax_rows(&mut logits, v);
        Array2::from_shape_vec((t_len, v), logits).expect("T × V logits")
    }
}

/// Texts shorter than this many characters are traced on one thread. Starting a
/// thread costs microseconds; what costs is a second core that is not free: on a
/// busy 2-core machine two threads ran 10–30% slower than one at every length
/// (`scripts/bench.sh --crossover`), and with a core free they gained 1.2–1.35×
/// from about a thousand characters on. This bound keeps the short texts, which
/// lose most under contention, on one thread.
pub(super) const PIPELINE_MIN_STEPS: usize = 4096;

/// A pipelined trace hands over about this many blocks (see [`Model::block_steps`]):
/// the layer above idles for the first and the one below for the last.
const PIPELINE_BLOCKS: usize = 16;

/// Fewest hidden units for which a trace or a sample splits a layer's units
/// between two threads: below it a step is too short for a meeting per step to pay.
pub(super) const SHARED_MIN_HIDDEN: usize = 128;

/// Fewest steps in a pipeline block: shorter ones would spend more on the GEMM's
/// repacking of W_ih and on hand-overs than they save.
const MIN_PIPELINE_BLOCK: usize = 64;

/// Threads one trace may use: `CELLSCOPE_TRACE_THREADS` if set (1 keeps every
/// trace on the calling thread), else 1 (see the module doc), at most the cores
/// available.
pub(super) fn trace_threads() -> usize {
    trace_threads_set().unwrap_or(1)
}

/// `CELLSCOPE_TRACE_THREADS`, at most the cores available, if it is set. Read once.
pub fn trace_threads_set() -> Option<usize> {
    static THREADS: OnceLock<Option<usize>> = OnceLock::new();
    *THREADS.get_or_init(|| {
        let n = std::env::var("CELLSCOPE_TRACE_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok())?;
        Some(n.clamp(1, cores()))
    })
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One trace's inputs, shared by the pipeline stages.
struct Job<'a> {
    model: &'a Model,
    ids: &'a [Option<u32>],
    state: &'a State,
    clamps: &'a [Clamp],
    /// Steps per block (see [`Model::block_steps`]).
    block: usize,
    /// The first layer to run: 0, or with the h of the layer below it over the
    /// whole text, T × H (from a trace that already ran it, `Model::trace_clamped_over`).
    from: (usize, Option<&'a [f32]>),
}

/// What a pipeline stage hands the next for one block, taken after the clamps: the
/// next layer's input projection of the block's first half, which the sender
/// computes because the receiver has a GEMM on top of a recurrence as long as the
/// sender's, and the h rows of the second half, which the receiver projects.
struct Handover {
    /// (steps in the first half) × 4H.
    proj: Vec<f32>,
    /// (steps in the second half) × H.
    h: Vec<f32>,
}

/// The input of one layer over one block.
enum Input<'a> {
    /// Layer 0: rows of the precomputed character table.
    Table,
    /// The layers above: `proj`, projections already computed for the block's
    /// first steps, then `h`, the h rows of the layer below for the rest.
    Below { proj: &'a [f32], h: &'a [f32] },
}

impl Job<'_> {
    /// Every layer over the whole text, on `stages` threads (this one included):
    /// stage s runs a contiguous range of layers block by block and hands each
    /// finished block to stage s + 1 ([`Handover`]), so that layer k + 1 works on
    /// block b while layer k works on block b + 1. Each layer runs the same kernel
    /// calls on the same inputs as on one thread, and the GEMM gives a row the same
    /// result whichever rows it is computed with, so the trace is identical.
    fn run(&self, stages: usize) -> Vec<LayerOut> {
        let (first, layers) = (self.from.0, self.model.layers() - self.from.0);
        let stages = stages.clamp(1, layers);
        let range = |s: usize| first + s * layers / stages..first + (s + 1) * layers / stages;
        if stages == 1 {
            return self.stage(range(0), None, None);
        }
        std::thread::scope(|scope| {
            let mut below = None;
            let mut workers = Vec::with_capacity(stages - 1);
            for s in 0..stages - 1 {
                let (send, receive) = mpsc::channel();
                let input = below.replace(receive);
                workers.push(scope.spawn(move || self.stage(range(s), input, Some(send))));
            }
            let top = self.stage(range(stages - 1), below, None);
            let mut outs: Vec<LayerOut> = Vec::with_capacity(layers);
            for w in workers {
                outs.extend(w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            outs.extend(top);
            outs
        })
    }

    /// Every layer over the whole text on this thread and `pair`'s helper, each
    /// computing half of every layer's units ([`PackedHh::share`]): block by
    /// block, layer by layer (layer-major), so a core keeps to half of one
    /// layer's W_hh for a block of steps. Per block and layer ≥ 1, the input
    /// GEMM is cut by steps between the two; then each step, each side runs its
    /// units' cell update and the two meet, since the next step reads all of h.
    /// Side 0 applies a step's clamps between two meetings. Every unit and every
    /// projection row is computed as on one thread, so the trace is the same to
    /// the bit. This is the way for a one-layer model, which a pipeline cannot
    /// spread (`scripts/split-or-pipeline.c` weighs the two for more layers).
    fn run_shared(&self, pair: &Pair) -> Vec<LayerOut> {
        let model = self.model;
        let (t_len, n, g) = (self.ids.len(), model.hidden_size(), GATES * model.hidden_size());
        let first = self.from.0;
        let mut outs: Vec<LayerOut> = (first..model.layers()).map(|_| LayerOut::with_capacity(t_len, n)).collect();
        let mut proj: Vec<f32> = Vec::new();
        for start in (0..t_len).step_by(self.block) {
            let steps = start..(start + self.block).min(t_len);
            for k in first..model.layers() {
                let (done, rest) = outs.split_at_mut(k - first);
                let rows: Vec<*const f32> = if k == 0 {
                    self.ids[steps.clone()].iter().map(|&id| model.input_row(id).as_ptr()).collect()
                } else {
                    let below = match done.last() {
                        Some(out) => &out.h[steps.start * n..steps.end * n],
                        None => &self.from.1.expect("the layer below's h")[steps.start * n..steps.end * n],
                    };
                    proj.resize(steps.len() * g, 0.0);
                    let cut = steps.len() / 2;
                    let (head, tail) = proj.split_at_mut(cut * g);
                    // SAFETY: each side writes only its own rows of `proj`.
                    let parts =
                        unsafe { Both::new([(0..cut, head.as_mut_ptr()), (cut..steps.len(), tail.as_mut_ptr())]) };
                    let parts = &parts;
                    pair.both(&|meet: &Meet| {
                        let (part, out) = parts.get()[meet.side()].clone();
                        // SAFETY: this side's rows of `proj`, written by it alone.
                        let out = unsafe { std::slice::from_raw_parts_mut(out, part.len() * g) };
                        self.project(k, &below[part.start * n..part.end * n], out);
                    });
                    proj.chunks_exact(g).map(|r| r.as_ptr()).collect()
                };
                let out = &mut rest[0];
                debug_assert_eq!(out.h.len(), steps.start * n);
                // SAFETY: each side writes its own units of a row; the other's are
                // read only after the meeting that follows the row (below).
                let ptrs = unsafe { Both::new((out.rows_mut_ptrs(), rows)) };
                let ptrs = &ptrs;
                let clamps: Vec<&Clamp> =
                    self.clamps.iter().filter(|c| c.layer == k && c.to > steps.start && c.from < steps.end).collect();
                let (h0, c0) = (&self.state.h[k], &self.state.c[k]);
                pair.both(&|meet: &Meet| {
                    let (blocks, _) = model.packed_hh[k].share(meet.side(), 2);
                    for (j, t) in steps.clone().enumerate() {
                        // SAFETY: every output has capacity T × H (`with_capacity`);
                        // row t − 1 is whole, both sides having met after it; each
                        // side writes only its units of row t, and side 0 writes the
                        // clamped cells while the other waits at a meeting.
                        unsafe {
                            let (outs, rows) = ptrs.get();
                            let [h, c, _, _, _, o] = *outs;
                            let (hp, cp) = if t == 0 {
                                (h0.as_ptr(), c0.as_ptr())
                            } else {
                                (h.add((t - 1) * n).cast_const(), c.add((t - 1) * n).cast_const())
                            };
                            let rows_out = LayerRows { h0: hp, c0: cp, out: outs.map(|p| p.add(t * n)) };
                            kernel::lstm_layer_part(
                                &model.packed_hh[k],
                                &rows[j..j + 1],
                                model.bias[k].as_ptr(),
                                rows_out,
                                blocks.clone(),
                            );
                            meet.wait();
                            if clamps.iter().any(|c| c.covers(t)) {
                                if meet.side() == 0 {
                                    let row = |p: *mut f32| std::slice::from_raw_parts_mut(p.add(t * n), n);
                                    clamp_row(row(h), row(c), row(o), t, &clamps);
                                }
                                meet.wait();
                            }
                        }
                    }
                });
                // SAFETY: both sides wrote every unit of these rows (`both` returned).
                unsafe { out.set_rows(steps.end * n) };
                out.extend_memory_terms(&self.state.c[k]);
            }
        }
        outs
    }

    /// Layers `ks` over the whole text, a block at a time. Layer `ks.start` reads
    /// the character table (layer 0) or what `input` delivers; each finished block
    /// of the last layer goes to `output`.
    fn stage(
        &self,
        ks: Range<usize>,
        input: Option<Receiver<Handover>>,
        output: Option<Sender<Handover>>,
    ) -> Vec<LayerOut> {
        let t_len = self.ids.len();
        let n = self.model.hidden_size();
        let mut outs: Vec<LayerOut> = ks.clone().map(|_| LayerOut::with_capacity(t_len, n)).collect();
        let mut proj = Vec::new();
        for start in (0..t_len).step_by(self.block) {
            let steps = start..(start + self.block).min(t_len);
            let received = input.as_ref().map(|r| r.recv().expect("the stage below hands over every block"));
            for (j, k) in ks.clone().enumerate() {
                let (done, rest) = outs.split_at_mut(j);
                let input = match (done.last(), &received) {
                    (Some(out), _) => Input::Below { proj: &[], h: &out.h[steps.start * n..steps.end * n] },
                    (None, Some(r)) => Input::Below { proj: &r.proj, h: &r.h },
                    (None, None) => match self.from {
                        (0, _) => Input::Table,
                        (_, below) => Input::Below {
                            proj: &[],
                            h: &below.expect("the layer below's h")[steps.start * n..steps.end * n],
                        },
                    },
                };
                self.layer_block(k, steps.clone(), input, &mut proj, &mut rest[0]);
                rest[0].extend_memory_terms(&self.state.c[k]);
            }
            if let Some(output) = &output {
                let h = &outs.last().expect("a stage has layers").h[steps.start * n..steps.end * n];
                let (head, tail) = h.split_at(steps.len() / 2 * n);
                let mut proj = vec![0.0; head.len() * GATES];
                self.project(ks.end, head, &mut proj);
                // The stage above may have failed; its panic is what the caller sees.
                let _ = output.send(Handover { proj, h: tail.to_vec() });
            }
        }
        outs
    }

    /// `proj` = `h` W_ihᵀ of layer `k`: the input projections (without bias) of
    /// `h.len() / H` steps.
    fn project(&self, k: usize, h: &[f32], proj: &mut [f32]) {
        let n = self.model.hidden_size();
        let w_ih = self.model.weights.layers[k].weight_ih.as_slice().expect("standard layout");
        gemm(h.len() / n, n, GATES * n, 1.0, h, Trans::N, w_ih, Trans::T, 0.0, proj);
    }

    /// Layer `k` over `steps`, appended to `out`. The input projection of a step is
    /// a row of the precomputed table for layer 0 (the zero row for an unknown
    /// character: pointed at, copied nothing); for the layers above, a row of
    /// `input`'s `proj` or, for the steps after those, the GEMM of its `h` into
    /// `scratch`, reused between blocks. The kernel adds the bias.
    fn layer_block(&self, k: usize, steps: Range<usize>, input: Input, scratch: &mut Vec<f32>, out: &mut LayerOut) {
        let model = self.model;
        let g = GATES * model.hidden_size();
        let (h0, c0) = (&self.state.h[k][..], &self.state.c[k][..]);
        let rows: Vec<&[f32]> = match input {
            Input::Table => self.ids[steps.clone()].iter().map(|&id| model.input_row(id)).collect(),
            Input::Below { proj, h } => {
                scratch.resize(h.len() * GATES, 0.0);
                self.project(k, h, scratch);
                proj.chunks_exact(g).chain(scratch.chunks_exact(g)).collect()
            }
        };
        debug_assert_eq!(rows.len(), steps.len());
        model.run_layer(k, &rows, steps.start, (h0, c0), out, self.clamps);
    }
}

/// One overwritten component of the recurrent state: right after layer `layer`
/// computes step `s`, for every `s` in `from..to`,
/// - `kind: Cell`: `c_s[cell] = value`, then `h_s[cell] = o_s[cell] · tanh(value)`;
/// - `kind: Hidden`: `h_s[cell] = value` (c untouched).
///
/// The overwritten state is what step `s + 1` and the layer above see. `value: 0`
/// ablates the component. The gates recorded at `s` are those computed before the
/// overwrite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub layer: usize,
    pub kind: Kind,
    pub cell: usize,
    pub value: f32,
    pub from: usize,
    pub to: usize,
}

impl Clamp {
    fn covers(&self, t: usize) -> bool {
        self.from <= t && t < self.to
    }

    /// Parses the command line's `LAYER/KIND/CELL=VALUE[@FROM..TO]` (e.g. `1/c/5=0`,
    /// `0/h/12=-0.8@10..40`); without a range the clamp holds for `0..usize::MAX`
    /// (the whole text).
    pub fn parse_spec(spec: &str) -> Result<Clamp, String> {
        let bad = || format!("clamp {spec:?} is not LAYER/KIND/CELL=VALUE[@FROM..TO], e.g. 1/c/5=0");
        let (target, rest) = spec.split_once('=').ok_or_else(bad)?;
        let (value, range) = match rest.split_once('@') {
            Some((v, r)) => (v, Some(r)),
            None => (rest, None),
        };
        let parts: Vec<&str> = target.split('/').collect();
        let [layer, kind, cell] = parts[..] else { return Err(bad()) };
        let layer = layer.trim().parse().map_err(|_| bad())?;
        let kind = Kind::parse(kind.trim()).ok_or_else(bad)?;
        let cell = cell.trim().parse().map_err(|_| bad())?;
        let value: f32 = value.trim().parse().map_err(|_| bad())?;
        let (from, to) = match range {
            None => (0, usize::MAX),
            Some(r) => {
                let (a, b) = r.split_once("..").ok_or_else(bad)?;
                (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?)
            }
        };
        Ok(Clamp { layer, kind, cell, value, from, to })
    }
}

/// Why a clamp does not fit a model or a text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClampError {
    #[error("clamp layer {layer} does not exist; the model has layers 0..={}", layers - 1)]
    Layer { layer: usize, layers: usize },
    #[error("clamps overwrite h or c, not {0:?}")]
    Kind(&'static str),
    #[error("this {0} model has no cell state c to clamp; clamp h instead")]
    NoCell(Arch),
    #[error("clamp cell {cell} does not exist; layers have cells 0..={}", hidden - 1)]
    Cell { cell: usize, hidden: usize },
    #[error("clamp value {0} is not a finite number")]
    Value(f32),
    #[error("clamp range from {from} to {to} does not fit a text of {len} characters (need from ≤ to ≤ {len})")]
    Range { from: usize, to: usize, len: usize },
}

/// Overwrites, in the last recorded row of `out` (step `t`), the components the
/// clamps covering `t` name: c clamps first (they also set h), then h clamps.
pub(crate) fn apply_clamps(out: &mut LayerOut, hidden: usize, t: usize, clamps: &[&Clamp]) {
    let row = (out.h.len() / hidden - 1) * hidden..out.h.len();
    clamp_row(&mut out.h[row.clone()], &mut out.c[row.clone()], &out.o[row], t, clamps);
}

/// [`apply_clamps`] on one step's rows of h, c and o.
fn clamp_row(h: &mut [f32], c: &mut [f32], o: &[f32], t: usize, clamps: &[&Clamp]) {
    for kind in [Kind::Cell, Kind::Hidden] {
        for clamp in clamps.iter().filter(|c| c.kind == kind && c.covers(t)) {
            let j = clamp.cell;
            if kind == Kind::Cell {
                c[j] = clamp.value;
                h[j] = o[j] * kernel::tanh(clamp.value);
            } else {
                h[j] = clamp.value;
            }
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_same_trace(a: &Trace, b: &Trace, what: &str) {
        for (k, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
            for &kind in la.kinds() {
                assert!(la.get(kind) == lb.get(kind), "{what}: layer {k} {kind:?} differs");
            }
        }
        assert!(a.probs == b.probs, "{what}: probabilities differ");
        assert_eq!(a.final_state, b.final_state, "{what}: final state differs");
    }

    /// The pipeline hands layer k + 1 the rows of layer k block by block; with any
    /// number of stages and any block length, and with clamps that start, end and
    /// sit inside blocks, the trace equals the one-thread trace to the bit.
    #[test]
    fn pipelined_traces_equal_the_one_thread_trace() {
        let vocab = Vocab::from_text("abc{}();\n ").unwrap();
        let n = 8;
        let weights = Weights::random_scaled(vocab.len(), None, n, 3, 12, 0.5);
        let model = Model::new("t".into(), vocab, weights, Default::default()).unwrap();
        let text: String = "ab{c(a);}\n b()".chars().cycle().take(700).collect();
        let state = State { h: vec![vec![0.3; n]; 3], c: vec![vec![-0.2; n]; 3] };
        let clamps = [
            Clamp { layer: 0, kind: Kind::Cell, cell: 3, value: 0.9, from: 30, to: 80 },
            Clamp { layer: 0, kind: Kind::Hidden, cell: 5, value: -0.7, from: 110, to: 111 },
            Clamp { layer: 1, kind: Kind::Hidden, cell: 0, value: 0.5, from: 60, to: 400 },
            Clamp { layer: 2, kind: Kind::Cell, cell: 7, value: 0.0, from: 0, to: 700 },
        ];
        for clamps in [&[][..], &clamps[..]] {
            let one = model.trace_staged(model.vocab.encode(&text), &state, clamps, 1, 10_000);
            for (stages, block) in [(1, 37), (2, 16), (2, 37), (2, 700), (3, 50), (4, 64)] {
                let piped = model.trace_staged(model.vocab.encode(&text), &state, clamps, stages, block);
                let what = format!("{stages} stages, blocks of {block}, {} clamps", clamps.len());
                assert_same_trace(&piped, &one, &what);
            }
        }
        // A clamp in layer 0 reaches the layers above through the pipeline.
        let free = model.trace_staged(model.vocab.encode(&text), &state, &[], 2, 16);
        let held = model.trace_staged(model.vocab.encode(&text), &state, &clamps[..1], 2, 16);
        assert_ne!(free.layers[2].h().row(40), held.layers[2].h().row(40));
    }

    /// Each layer's units split between two threads, step by step: the same
    /// bits as one thread, for one to three layers, an H that leaves a partial
    /// block, blocks of any length, and clamps on both sides of the split.
    #[test]
    fn traces_with_units_shared_between_two_threads_equal_the_one_thread_trace() {
        let vocab = Vocab::from_text("abc{}();\n ").unwrap();
        let n = 140;
        let text: String = "ab{c(a);}\n b()".chars().cycle().take(300).collect();
        for layers in [1, 2, 3] {
            let weights = Weights::random_scaled(vocab.len(), None, n, layers, 17, 0.5);
            let model = Model::new("t".into(), vocab.clone(), weights, Default::default()).unwrap();
            let state = State { h: vec![vec![0.3; n]; layers], c: vec![vec![-0.2; n]; layers] };
            let top = layers - 1;
            let clamps = [
                Clamp { layer: 0, kind: Kind::Cell, cell: 3, value: 0.9, from: 30, to: 80 },
                Clamp { layer: top, kind: Kind::Hidden, cell: 139, value: -0.7, from: 110, to: 111 },
                Clamp { layer: top, kind: Kind::Cell, cell: 71, value: 0.0, from: 0, to: 300 },
            ];
            for clamps in [&[][..], &clamps[..]] {
                let one = model.trace_staged(model.vocab.encode(&text), &state, clamps, 1, 10_000);
                for block in [1, 37, 300] {
                    let shared = model.trace_shared(model.vocab.encode(&text), &state, clamps, block);
                    let what = format!("{layers} layers, blocks of {block}, {} clamps", clamps.len());
                    assert_same_trace(&shared, &one, &what);
                }
            }
            let empty = model.trace_shared(model.vocab.encode(""), &state, &[], 16);
            assert_eq!((empty.len(), empty.final_state.clone()), (0, state.clone()));
        }
        // The dispatcher: a one-layer model of 128 units or more shares its units.
        let one_layer = Model::new(
            "t".into(),
            vocab.clone(),
            Weights::random_scaled(vocab.len(), None, n, 1, 3, 0.5),
            Default::default(),
        )
        .unwrap();
        assert!(one_layer.shares_units());
        let small = Model::new(
            "t".into(),
            vocab.clone(),
            Weights::random_scaled(vocab.len(), None, 64, 1, 3, 0.5),
            Default::default(),
        )
        .unwrap();
        assert!(!small.shares_units());
    }

    /// A clamped trace that reuses the unclamped one below the lowest clamped
    /// layer is the clamped trace run from scratch, to the bit: pipelined or
    /// split, on one to three threads, clamps in one layer or several.
    #[test]
    fn a_clamped_trace_over_its_base_equals_one_from_scratch() {
        let vocab = Vocab::from_text("abc{}();\n ").unwrap();
        let text: String = "ab{c(a);}\n b()".chars().cycle().take(260).collect();
        for (n, layers) in [(8, 2), (8, 3), (140, 2), (140, 3)] {
            let weights = Weights::random_scaled(vocab.len(), None, n, layers, 23, 0.5);
            let model = Model::new("t".into(), vocab.clone(), weights, Default::default()).unwrap();
            let base = model.trace(&text);
            let top = layers - 1;
            let at = |layer: usize, kind: Kind, cell: usize, value: f32, from: usize, to: usize| Clamp {
                layer,
                kind,
                cell,
                value,
                from,
                to,
            };
            for clamps in [
                vec![at(top, Kind::Cell, n - 1, 0.9, 30, 200)],
                vec![at(1, Kind::Hidden, 0, -0.5, 0, 260), at(top, Kind::Cell, 3, 0.0, 100, 101)],
                vec![at(0, Kind::Cell, 2, 0.7, 10, 20), at(top, Kind::Hidden, 1, 0.2, 0, 260)],
            ] {
                for threads in [1, 2, 3] {
                    let scratch = model.trace_clamped_with_threads(
                        model.vocab.encode(&text),
                        &model.zero_state(),
                        &clamps,
                        threads,
                    );
                    let over = model.trace_clamped_over(&base, &clamps, threads);
                    let what = format!("H = {n}, {layers} layers, {threads} threads, clamps {clamps:?}");
                    assert_same_trace(&over, &scratch, &what);
                }
            }
        }
    }

    #[test]
    fn an_empty_text_passes_through_the_pipeline() {
        let vocab = Vocab::from_text("ab").unwrap();
        let weights = Weights::random_scaled(vocab.len(), None, 4, 2, 1, 0.5);
        let model = Model::new("t".into(), vocab, weights, Default::default()).unwrap();
        let t = model.trace_clamped_with_threads(model.vocab.encode(""), &model.zero_state(), &[], 2);
        assert_eq!((t.len(), t.layers[1].h().dim()), (0, (0, 4)));
        assert_eq!(t.final_state, model.zero_state());
    }

    /// Layers ≥ 1 get their input projection in blocks of PROJ_BLOCK_FLOATS / 4H
    /// steps; a text longer than a block, cut anywhere, must trace exactly as whole.
    #[test]
    fn pieces_across_projection_blocks_equal_the_whole() {
        let vocab = Vocab::from_text("abc{}();\n ").unwrap();
        let n = 8;
        let weights = Weights::random_scaled(vocab.len(), None, n, 2, 11, 0.5);
        let model = Model::new("t".into(), vocab, weights, Default::default()).unwrap();
        let block = PROJ_BLOCK_FLOATS / (GATES * n);
        let text: String = "ab{c(a);}\n b()".chars().cycle().take(block + 300).collect();
        let whole = model.trace(&text);
        let cut = block - 100;
        let (a, b) = text.split_at(cut);
        let first = model.trace(a);
        let second = model.trace_from(b, &first.final_state);
        assert_eq!(second.final_state, whole.final_state);
        for (k, l) in whole.layers.iter().enumerate() {
            for &kind in l.kinds() {
                let parts = [first.layers[k].get(kind).view(), second.layers[k].get(kind).view()];
                let joined = ndarray::concatenate(ndarray::Axis(0), &parts).unwrap();
                assert!(joined == l.get(kind), "layer {k} {kind:?} differs after a cut at {cut}");
            }
        }
    }
}
