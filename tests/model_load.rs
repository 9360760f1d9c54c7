//! Loading never panics, never reads more than the file's header says it needs, and says
//! exactly what is wrong. The crafted-file helpers here also serve `loader_corpus` and `fuzz`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellscope::model::safetensors::{parse, serialize};
use cellscope::model::{LoadError, Model, Vocab, Weights, MAX_MODEL_BYTES};
use cellscope::rng::Rng;
use serde_json::{json, Map, Value};

use crate::common::tiny_model;

/// Rewrites a valid model file with one tensor or metadata entry changed.
pub fn edit(
    bytes: &[u8],
    change: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, &mut BTreeMap<String, String>),
) -> Vec<u8> {
    let file = parse(bytes).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> =
        file.tensors.into_iter().map(|(k, t)| (k, (t.shape, t.data))).collect();
    let mut meta = file.metadata;
    change(&mut tensors, &mut meta);
    let borrowed = tensors.iter().map(|(k, (s, d))| (k.clone(), (s.clone(), &d[..]))).collect();
    serialize(&borrowed, &meta)
}

/// The smallest valid model: vocabulary "ab", one layer, H = 1; its file is under 1 KB.
/// Tensors lie in name order: decoder.bias [0, 8), decoder.weight [8, 16),
/// rnn.bias_hh_l0 [16, 32), rnn.bias_ih_l0 [32, 48), rnn.weight_hh_l0 [48, 64),
/// rnn.weight_ih_l0 [64, 96).
pub fn micro_model() -> Model {
    let vocab = Vocab::from_text("ab").unwrap();
    let weights = Weights::random_scaled(vocab.len(), None, 1, 1, 1, 0.5);
    Model::new("micro".into(), vocab, weights, Default::default()).unwrap()
}

/// A safetensors file from its header (JSON text, taken as is) and data section.
pub fn assemble(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// A well-formed file taken apart, to be changed and put back together.
#[derive(Clone)]
pub struct Parts {
    pub header: Map<String, Value>,
    pub data: Vec<u8>,
}

impl Parts {
    pub fn of(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Self { header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(), data: bytes[8 + n..].to_vec() }
    }

    pub fn bytes(&self) -> Vec<u8> {
        assemble(&Value::Object(self.header.clone()).to_string(), &self.data)
    }

    /// Sets one field of a tensor's entry (`dtype`, `shape` or `data_offsets`).
    pub fn set(mut self, tensor: &str, field: &str, value: Value) -> Self {
        self.header[tensor][field] = value;
        self
    }

    /// Sets one `__metadata__` value.
    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.header["__metadata__"][key] = value;
        self
    }
}

/// A unique path in the temporary directory; the caller removes what it creates there.
pub fn temp_path(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("cellscope-{}-{n}-{what}", std::process::id()))
}

fn load_err(bytes: &[u8]) -> String {
    match Model::from_bytes(bytes, "t".into()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn load_path_err(path: &Path) -> String {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(what: &str, msg: &str, expect: &str) {
    assert!(msg.contains(expect), "{what}: message {msg:?} lacks {expect:?}");
}

#[test]
fn save_then_load_round_trips_exactly() {
    for embed in [None, Some(5)] {
        let m = tiny_model(embed, 1);
        let back = Model::from_bytes(&m.to_bytes(), "x".into()).unwrap();
        assert_eq!(back.weights(), m.weights());
        assert_eq!(back.vocab, m.vocab);
        let path = temp_path("m.safetensors");
        m.save(&path).unwrap();
        let loaded = Model::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().weights(), m.weights());
    }
}

/// The reader got stricter (tensors must tile the data section, headers are capped); the
/// files we ship, written by our writer and by Python's, must still load.
#[test]
fn shipped_model_checkpoint_and_fixtures_still_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for model in ["models/linux-lstm.safetensors", "tests/fixtures/lstm_embed.safetensors"] {
        Model::load(&root.join(model)).unwrap_or_else(|e| panic!("{model}: {e}"));
    }
    for file in ["checkpoints/linux-2x512.ckpt.safetensors", "tests/fixtures/lstm_onehot.expected.safetensors"] {
        parse(&std::fs::read(root.join(file)).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn each_broken_file_gets_a_precise_message() {
    let good = tiny_model(None, 2).to_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not safetensors", b"hello world, this is text".to_vec(), "not a valid safetensors file"),
        ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
        ("empty", vec![], "too short"),
        (
            "missing tensor",
            edit(&good, |t, _| {
                t.remove("rnn.weight_hh_l1");
            }),
            "model file lacks rnn.weight_hh_l1 (expected [64, 16])",
        ),
        (
            "wrong shape",
            edit(&good, |t, _| {
                t.insert("decoder.bias".into(), (vec![3], vec![0.0; 3]));
            }),
            "decoder.bias has shape [3], expected [",
        ),
        (
            "nan weight",
            edit(&good, |t, _| {
                t.get_mut("rnn.weight_ih_l1").unwrap().1[5] = f32::NAN;
            }),
            "rnn.weight_ih_l1 holds a non-finite value (NaN) at flat index 5",
        ),
        (
            "unknown arch",
            edit(&good, |_, m| {
                m.insert("cellscope.arch".into(), "transformer".into());
            }),
            "unknown architecture \"transformer\"",
        ),
        (
            "duplicate vocab",
            edit(&good, |_, m| {
                let mut v: Vec<String> = serde_json::from_str(&m["cellscope.vocab"]).unwrap();
                v[1] = v[0].clone();
                m.insert("cellscope.vocab".into(), serde_json::to_string(&v).unwrap());
            }),
            "twice",
        ),
        (
            "vocab size differs from decoder",
            edit(&good, |_, m| {
                let mut v: Vec<String> = serde_json::from_str(&m["cellscope.vocab"]).unwrap();
                v.push("\u{263a}".into());
                m.insert("cellscope.vocab".into(), serde_json::to_string(&v).unwrap());
            }),
            "but decoder.weight has",
        ),
        (
            "missing vocab",
            edit(&good, |_, m| {
                m.remove("cellscope.vocab");
            }),
            "lacks metadata cellscope.vocab",
        ),
        (
            "extra tensor",
            edit(&good, |t, _| {
                t.insert("rnn.weight_ih_l0_reverse".into(), (vec![1], vec![0.0]));
            }),
            "unexpected tensor rnn.weight_ih_l0_reverse",
        ),
    ];
    for (what, bytes, expect) in cases {
        assert_contains(what, &load_err(&bytes), expect);
    }
}

#[test]
fn a_missing_tensor_is_named_with_its_expected_shape() {
    let good = tiny_model(None, 2).to_bytes();
    let bytes = edit(&good, |t, _| {
        t.remove("rnn.bias_hh_l1");
    });
    assert_eq!(load_err(&bytes), "model file lacks rnn.bias_hh_l1 (expected [64])");
    let bytes = edit(&good, |t, _| {
        t.remove("decoder.weight");
    });
    assert!(
        load_err(&bytes).starts_with("model file lacks decoder.weight (expected [60, 16])"),
        "{}",
        load_err(&bytes)
    );
}

/// Issue 11: `rnn.weight_ih_l99999999999` made the loader reserve room for 10^11 layers
/// and abort. Layer indices are bounded before anything is allocated for them.
#[test]
fn a_huge_layer_index_is_refused_by_name() {
    let good = tiny_model(None, 2).to_bytes();
    let with = |name: &str| {
        load_err(&edit(&good, |t, _| {
            t.insert(name.into(), (vec![1], vec![0.0]));
        }))
    };
    assert_eq!(
        with("rnn.weight_ih_l99999999999"),
        "tensor rnn.weight_ih_l99999999999 names layer 99999999999; cellscope loads at most 64 layers (_l0 to _l63)"
    );
    // Past u64, and just past the limit.
    assert_contains("30 digits", &with("rnn.bias_hh_l123456789012345678901234567890"), "names layer 1234567890");
    assert_contains("_l64", &with("rnn.bias_ih_l64"), "names layer 64;");
    // Within the limit, the first layer that is not there is named.
    assert_eq!(with("rnn.weight_hh_l63"), "model file lacks rnn.weight_ih_l2 (expected [64, 16])");
    // Not a layer index at all: a stray name, not a layer count.
    assert_contains("sign", &with("rnn.weight_ih_l+5"), "unexpected tensor rnn.weight_ih_l+5");
    assert_contains("leading zero", &with("rnn.weight_ih_l01"), "unexpected tensor rnn.weight_ih_l01");
}

/// Issue 11: byte sizes are computed with checked arithmetic, and an empty tensor cannot
/// claim a hidden size it does not hold.
#[test]
fn shapes_whose_byte_size_overflows_are_refused() {
    let huge = 1u64 << 32;
    let parts = Parts::of(&micro_model().to_bytes());
    let bytes = parts.clone().set("decoder.bias", "shape", json!([huge, huge, huge])).bytes();
    assert_eq!(
        load_err(&bytes),
        "not a valid safetensors file: tensor decoder.bias: shape [4294967296, 4294967296, 4294967296] of F32 has \
         more bytes than memory can hold"
    );
    let bytes = parts.set("decoder.bias", "shape", json!([u64::MAX])).bytes();
    assert_contains("u64::MAX", &load_err(&bytes), "has more bytes than memory can hold");
    // 4 × 2^62 wraps to 0 = rows in unchecked arithmetic, which made H = 2^62.
    let bytes = edit(&micro_model().to_bytes(), |t, _| {
        t.insert("rnn.weight_hh_l0".into(), (vec![0, 1 << 62], vec![]));
    });
    assert_eq!(
        load_err(&bytes),
        "rnn.weight_hh_l0 has shape [0, 4611686018427387904], expected [4H, H] with H ≥ 1 (it sets the hidden size; \
         G = 4 for cellscope.arch = \"lstm\": is that the right architecture?)"
    );
}

/// Issue 11: two tensors over the same bytes were accepted. The spec requires the
/// tensors to tile the data section: no overlap, no hole, nothing after the last.
#[test]
fn tensors_must_cover_the_data_section_exactly() {
    let parts = Parts::of(&micro_model().to_bytes());
    // Both biases have 4 values; point the second at the first's bytes.
    let overlap = parts.clone().set("rnn.bias_ih_l0", "data_offsets", json!([16, 32])).bytes();
    assert_eq!(
        load_err(&overlap),
        "not a valid safetensors file: tensors rnn.bias_hh_l0 (data bytes [16, 32)) and rnn.bias_ih_l0 ([16, 32)) \
         overlap; each data byte belongs to one tensor"
    );
    let mut hole = parts.clone().set("rnn.weight_ih_l0", "data_offsets", json!([72, 104]));
    hole.data.extend_from_slice(&[0; 8]);
    assert_contains(
        "hole",
        &load_err(&hole.bytes()),
        "data bytes [64, 72) between rnn.weight_hh_l0 and rnn.weight_ih_l0 belong to no tensor",
    );
    let mut trailing = parts;
    trailing.data.extend_from_slice(&[0; 4]);
    assert_contains(
        "trailing",
        &load_err(&trailing.bytes()),
        "data bytes [96, 100) after the last tensor rnn.weight_ih_l0 belong to no tensor",
    );
}

/// Issue 11: `/dev/zero` was read until memory ran out and a FIFO hung the loader.
/// What the path is gets checked before it is opened.
#[test]
fn paths_that_are_not_regular_files_are_refused_unopened() {
    #[cfg(unix)]
    assert_eq!(
        load_path_err(Path::new("/dev/zero")),
        "/dev/zero is a character device, not a regular file; give the path of a .safetensors model file"
    );
    let dir = std::env::temp_dir();
    assert_contains("directory", &load_path_err(&dir), "is a directory, not a regular file");
    let missing = temp_path("missing.safetensors");
    assert_contains("missing", &load_path_err(&missing), "cannot read model file");
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let fifo = temp_path("fifo.safetensors");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    // A loader that opens the FIFO blocks forever; fail instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || tx.send(Model::load(&path).map(|_| ()).map_err(|e| e.to_string())));
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
    std::fs::remove_file(&fifo).unwrap();
    let msg = outcome.expect("Model::load blocked on a FIFO").expect_err("a FIFO is not a model");
    assert_contains("fifo", &msg, "is a FIFO (named pipe), not a regular file");
}

/// Bytes this thread has read from files so far (Linux's per-thread I/O accounting).
#[cfg(target_os = "linux")]
fn bytes_read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line["rchar:".len()..].trim().parse().unwrap()
}

/// Sparse files: their size costs no disk and no time to create.
fn sparse_file(what: &str, start: &[u8], len: u64) -> PathBuf {
    let path = temp_path(what);
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, start).unwrap();
    file.set_len(len).unwrap();
    path
}

/// Issue 11: a 3 GB file was read whole before its header was looked at. The size cap,
/// the header-length cap and the header itself are checked first, each from a few bytes.
#[test]
fn big_files_are_refused_from_their_first_bytes() {
    let gib = 1u64 << 30;
    let header = b"{}";
    let mut start = (header.len() as u64).to_le_bytes().to_vec();
    start.extend_from_slice(header);
    let cases = [
        (
            "over-cap",
            sparse_file("over-cap", &start, MAX_MODEL_BYTES + 1),
            "bytes, over the 4 GiB limit for model files",
        ),
        (
            "3-gib-no-tensors",
            sparse_file("3gib", &start, 3 * gib),
            "data bytes [0, 3221225462) in a file without tensors belong to no tensor",
        ),
        (
            "header-length-over-cap",
            sparse_file("hdr", &(150_000_000u64).to_le_bytes(), 200_000_000),
            "header length 150000000 is over the 100000000-byte limit",
        ),
    ];
    for (what, path, expect) in cases {
        #[cfg(target_os = "linux")]
        let before = bytes_read_by_this_thread();
        let msg = Model::load(&path).map(|_| ()).map_err(|e| e.to_string());
        #[cfg(target_os = "linux")]
        let read = bytes_read_by_this_thread() - before;
        std::fs::remove_file(&path).unwrap();
        assert_contains(what, &msg.expect_err("no model in there"), expect);
        #[cfg(target_os = "linux")]
        assert!(read < 64 * 1024, "{what}: the loader read {read} bytes to refuse it");
    }
}

/// Issue 11: every cause was printed twice (`{:#}` shows the message, then the source the
/// message already included). Each error is whole in itself and printed once.
#[test]
fn each_error_is_printed_once_in_a_chain() {
    let good = tiny_model(None, 2).to_bytes();
    let missing = temp_path("missing.safetensors");
    let errors: Vec<LoadError> = vec![
        Model::load(&missing).unwrap_err(),
        Model::load(&std::env::temp_dir()).unwrap_err(),
        Model::from_bytes(b"hello world, this is text", "t".into()).unwrap_err(),
        Model::from_bytes(&good[..good.len() - 4], "t".into()).unwrap_err(),
        Model::from_bytes(
            &edit(&good, |_, m| {
                m.insert("cellscope.vocab".into(), "[\"a\", \"a\"]".into());
            }),
            "t".into(),
        )
        .unwrap_err(),
    ];
    for e in errors {
        let message = e.to_string();
        let chain = format!("{:#}", anyhow::Error::from(e).context("loading x"));
        assert_eq!(chain, format!("loading x: {message}"), "the chain repeats part of the message");
    }
    let io = load_path_err(&missing);
    assert_eq!(io.matches("No such file or directory").count(), 1, "{io}");
}

#[test]
fn unsupported_dtype_is_named() {
    let parts = Parts::of(&micro_model().to_bytes());
    // Same byte size, other dtype: I32 is refused by name.
    let msg = load_err(&parts.set("rnn.bias_ih_l0", "dtype", json!("I32")).bytes());
    assert!(msg.contains("rnn.bias_ih_l0 has dtype I32") && msg.contains("converts F16, BF16 and F64"), "{msg}");
}

/// f32 → f16 bits, for values that f16 holds exactly (normal numbers and zero).
fn f16_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let b = v.to_bits();
    let sign = (b >> 16) & 0x8000;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp) && b & 0x1fff == 0, "{v} is not exact in f16");
    (sign | (exp as u32) << 10 | (b >> 13) & 0x3ff) as u16
}

/// A model file whose tensors are stored as F16, BF16 and F64 (taking turns) must load as
/// the f32 model of the same values: values that all three hold exactly, so equality is
/// exact.
#[test]
fn half_and_double_precision_files_load_as_their_f32_values() {
    let tiny = tiny_model(Some(5), 7);
    // Multiples of 1/8 in [-2, 2]: 6 significant bits at most, exact in f16 and bf16.
    let round = |x: &mut f32| *x = (*x * 8.0).round().clamp(-16.0, 16.0) / 8.0;
    let mut rounded = tiny.weights().clone();
    let w = &mut rounded;
    w.embedding.as_mut().unwrap().iter_mut().for_each(round);
    for l in &mut w.layers {
        l.weight_ih.iter_mut().chain(l.weight_hh.iter_mut()).for_each(round);
        l.bias_ih.iter_mut().chain(l.bias_hh.iter_mut()).for_each(round);
    }
    w.decoder_weight.iter_mut().chain(w.decoder_bias.iter_mut()).for_each(round);
    let model = Model::new(tiny.name.clone(), tiny.vocab.clone(), rounded, Default::default()).unwrap();

    let named = model.weights().named_tensors();
    let mut header = Map::new();
    let mut data = Vec::new();
    let mut stored = BTreeMap::new();
    for (i, (name, shape, values)) in named.iter().enumerate() {
        let (dtype, bytes): (&str, Vec<u8>) = match i % 3 {
            0 => ("F16", values.iter().flat_map(|&v| f16_bits(v).to_le_bytes()).collect()),
            1 => ("BF16", values.iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()),
            _ => ("F64", values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()),
        };
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(&bytes);
        stored.insert(name.clone(), dtype);
    }
    header.insert("__metadata__".into(), Parts::of(&model.to_bytes()).header["__metadata__"].clone());
    let bytes = assemble(&Value::Object(header).to_string(), &data);

    let file = parse(&bytes).unwrap();
    for (name, dtype) in &stored {
        assert_eq!(file.tensors[name].stored_dtype, *dtype, "{name}");
    }
    for dtype in ["F16", "BF16", "F64"] {
        assert!(stored.values().any(|d| *d == dtype), "no tensor is stored as {dtype}");
    }
    let loaded = Model::from_bytes(&bytes, "half".into()).unwrap();
    assert_eq!(loaded.weights(), model.weights(), "converted weights differ from the f32 originals");
    let text = "if (x) { y = \"s\"; }";
    assert_eq!(loaded.trace(text).probs, model.trace(text).probs);
}

/// What a user relies on when a file is damaged: it either loads as a model that runs, or
/// is refused with an error; it never panics. A truncated file (an interrupted download or
/// copy) and random bytes are always refused, and most damage is noticed. Random damage
/// rarely builds a specific malformed header; `loader_corpus` crafts those one by one.
#[test]
fn corrupted_bytes_load_as_a_working_model_or_are_refused() {
    let good = tiny_model(Some(4), 4).to_bytes();
    let hlen = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(99);
    let rounds = 3000;
    let mut refused = 0;
    for round in 0..rounds {
        let mut bytes = good.clone();
        let kind = round % 4;
        match kind {
            0 => {
                let cut = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(cut);
            }
            1 => {
                // Overwrite bytes inside the header, where structure lives.
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(hlen as u64) as usize;
                    bytes[at] = rng.next_u64() as u8;
                }
            }
            2 => {
                for _ in 0..1 + rng.below(16) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            _ => {
                let len = rng.below(64) as usize;
                bytes = (0..len).map(|_| rng.next_u64() as u8).collect();
            }
        }
        let outcome = std::panic::catch_unwind(|| match Model::from_bytes(&bytes, "fuzz".into()) {
            Ok(m) => {
                let t = m.trace("if (x) { }");
                assert!(t.probs.iter().all(|p| p.is_finite()), "a loaded model gave non-finite probabilities");
                false
            }
            Err(_) => true,
        });
        let Ok(was_refused) = outcome else {
            panic!("round {round} (mutation {kind}) panicked on {} bytes: {:?}", bytes.len(), bytes);
        };
        assert!(was_refused || kind != 0, "round {round}: a file truncated to {} bytes loaded", bytes.len());
        assert!(was_refused || kind != 3, "round {round}: {} random bytes loaded as a model", bytes.len());
        refused += was_refused as usize;
    }
    // Truncations and random bytes (half the rounds) are always refused, so this asks that
    // a fifth of the header damage and bit flips is noticed too. Bit flips in the weights
    // may well load.
    assert!(refused * 10 >= rounds * 6, "only {refused} of {rounds} corrupted files were refused");
}
