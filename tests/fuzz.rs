//! Property tests that CI replays from fixed seeds: a structured mutator over model-file
//! headers (the loader must answer every case with a model or a `LoadError`, never a panic,
//! and reading a file must agree with parsing its bytes), and random text for the C lexer.
//!
//! A failure names its seed and shows the input; `case_bytes(seed, ..)` rebuilds it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cellscope::analysis::{c_features, concept_labels, CONCEPTS};
use cellscope::model::Model;
use cellscope::rng::Rng;
use serde_json::{json, Map, Value};

use crate::model_load::{micro_model, temp_path, Parts};

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// A number a header might hold: small, at the edges of the data, or far beyond.
fn number(rng: &mut Rng, data_len: usize) -> Value {
    let d = data_len as u64;
    let n =
        *pick(rng, &[0, 1, 2, 4, 8, 16, d.saturating_sub(4), d, d + 1, 1 << 31, 1 << 32, 1 << 62, 1 << 63, u64::MAX]);
    match rng.below(8) {
        0 => json!(-(rng.below(100) as i64) - 1),
        1 => json!(n as f64 + 0.5),
        2 => json!(rng.below(200)),
        _ => json!(n),
    }
}

/// A value nested `depth` levels deep in arrays and objects.
fn nested(rng: &mut Rng, depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| if rng.below(2) == 0 { json!([inner]) } else { json!({ "k": inner }) })
}

/// A layer tensor name with a random suffix: in range, just past it, with leading zeros,
/// or with dozens of digits.
fn layer_name(rng: &mut Rng) -> String {
    let param = pick(rng, &["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]);
    let suffix = match rng.below(4) {
        0 => rng.below(70).to_string(),
        1 => format!("0{}", rng.below(10)),
        2 => (0..1 + rng.below(40)).map(|_| char::from(b'0' + rng.below(10) as u8)).collect(),
        _ => pick(rng, &["99999999999", "18446744073709551616", "-1", "+3", "", "1e3"]).to_string(),
    };
    format!("rnn.{param}_l{suffix}")
}

/// Sets `key` of the object at `header[entry]`, if that is still an object.
fn set_field(header: &mut Map<String, Value>, entry: &str, key: &str, value: Value) {
    if let Some(fields) = header.get_mut(entry).and_then(Value::as_object_mut) {
        fields.insert(key.to_string(), value);
    }
}

/// One change to the header, as JSON.
fn mutate_header(parts: &mut Parts, rng: &mut Rng) {
    let names: Vec<String> = parts.header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let data_len = parts.data.len();
    let header = &mut parts.header;
    let Some(name) = (!names.is_empty()).then(|| pick(rng, &names).clone()) else {
        return;
    };
    match rng.below(10) {
        0 => {
            let entry = header.remove(&name).unwrap();
            header.insert(layer_name(rng), entry);
        }
        1 => {
            let dims: Vec<Value> = (0..rng.below(5)).map(|_| number(rng, data_len)).collect();
            set_field(header, &name, "shape", Value::Array(dims));
        }
        2 => {
            let offsets: Vec<Value> = (0..*pick(rng, &[2, 2, 2, 1, 3])).map(|_| number(rng, data_len)).collect();
            set_field(header, &name, "data_offsets", Value::Array(offsets));
        }
        3 => {
            // Another tensor's bytes: overlap, or a hole where this one was.
            let other = pick(rng, &names).clone();
            let offsets = header[&other].get("data_offsets").cloned().unwrap_or(Value::Null);
            set_field(header, &name, "data_offsets", offsets);
        }
        4 => {
            let dtypes =
                [json!("F32"), json!("F16"), json!("BF16"), json!("F64"), json!("I32"), json!("f32"), json!(4)];
            set_field(header, &name, "dtype", pick(rng, &dtypes).clone());
        }
        5 => {
            header.remove(&name);
        }
        6 => {
            let metas = [json!([1]), json!(7), json!("lstm"), json!({"cellscope.arch": 1}), Value::Null];
            header.insert("__metadata__".into(), pick(rng, &metas).clone());
        }
        7 => {
            let key = pick(rng, &["cellscope.arch", "cellscope.vocab", "cellscope.train"]);
            let value = pick(
                rng,
                &["", "lstm", "gru", "[]", "[\"a\"]", "[\"a\",\"b\",\"c\"]", "[\"ab\",\"c\"]", "{", "[1]", "{}"],
            );
            set_field(header, "__metadata__", key, json!(value));
        }
        8 => {
            let depth = rng.below(300) as usize;
            let value = nested(rng, depth);
            if rng.below(2) == 0 {
                header[&name] = value;
            } else {
                set_field(header, &name, "shape", value);
            }
        }
        _ => {
            header[&name] = pick(rng, &[json!([0, 8]), json!("F32"), json!(null), json!({})]).clone();
        }
    }
}

/// One change to the file's bytes: framing and raw text the JSON layer cannot express.
fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match rng.below(5) {
        0 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
        1 => {
            let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let new = *pick(
                rng,
                &[0, 1, len.saturating_sub(1), len + 1, len + 8, 100_000_000, 100_000_001, 1 << 40, u64::MAX],
            );
            bytes[..8].copy_from_slice(&new.to_le_bytes());
        }
        2 if header_end > 8 => {
            for _ in 0..1 + rng.below(3) {
                let at = 8 + rng.below(header_end as u64 - 8) as usize;
                bytes[at] = *pick(rng, &[b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'0', b'-', 0, 0xff]);
            }
        }
        3 => {
            let extra = rng.below(16) as usize;
            bytes.extend((0..extra).map(|_| rng.next_u64() as u8));
        }
        4 => {
            // Repeat the first entry's key and value, a duplicate serde_json's maps cannot hold.
            let header = String::from_utf8_lossy(&bytes[8..header_end]).into_owned();
            let Some(end) = header.find("},") else { return };
            let twice = format!("{},{}", &header[..end + 1], &header[1..]);
            let mut out = (twice.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(twice.as_bytes());
            out.extend_from_slice(&bytes[header_end..]);
            *bytes = out;
        }
        _ => {}
    }
}

/// The file of case `seed`: the micro model's file with one to three changes.
fn case_bytes(seed: u64, good: &Parts) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut parts = good.clone();
    let header_changes = rng.below(3);
    for _ in 0..header_changes {
        mutate_header(&mut parts, &mut rng);
    }
    let mut bytes = parts.bytes();
    if header_changes == 0 || rng.below(3) == 0 {
        mutate_bytes(&mut bytes, &mut rng);
    }
    bytes
}

/// Loads `bytes`; a model that loads must also run soundly. Returns the error message, or
/// `None` when the file loaded.
fn check_case(bytes: &[u8]) -> Option<String> {
    match Model::from_bytes(bytes, "fuzz".into()) {
        Ok(m) => {
            let t = m.trace("abba\n");
            assert!(t.probs.iter().all(|p| p.is_finite()), "a loaded model gave non-finite probabilities");
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

#[test]
fn mutated_model_files_load_or_are_refused_and_never_panic() {
    let good = Parts::of(&micro_model().to_bytes());
    let cases = 4000;
    let mut refused = 0;
    let file = temp_path("fuzz.safetensors");
    for seed in 0..cases {
        let bytes = case_bytes(seed, &good);
        let outcome = catch_unwind(AssertUnwindSafe(|| check_case(&bytes)));
        let Ok(outcome) = outcome else {
            let text = String::from_utf8_lossy(&bytes);
            panic!("seed {seed}: the loader panicked on {} bytes (as lossy UTF-8: {text:?})", bytes.len());
        };
        refused += outcome.is_some() as u64;
        // Reading from disk (stat, prefix, header, data) must agree with parsing bytes.
        if seed % 16 == 0 {
            std::fs::write(&file, &bytes).unwrap();
            let from_disk = Model::load(&file).err().map(|e| e.to_string());
            assert_eq!(from_disk, outcome, "seed {seed}: Model::load and Model::from_bytes disagree");
        }
    }
    std::fs::remove_file(&file).unwrap();
    assert!(refused * 10 >= cases * 8, "only {refused} of {cases} mutated files were refused: is the mutator working?");
}

/// Text with what makes C lexing hard, and some of what makes any text hard.
fn soup(rng: &mut Rng) -> Vec<char> {
    const HARD: &str = "\"\"''//**\\\\(){}\n\n\r# \tifa0;<>\0é中\u{feff}\u{10ffff}";
    let hard: Vec<char> = HARD.chars().collect();
    let len = rng.below(400) as usize;
    (0..len)
        .map(|_| match rng.below(20) {
            0 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
            _ => *pick(rng, &hard),
        })
        .collect()
}

#[test]
fn the_c_lexer_labels_every_character_of_any_text() {
    let mut rng = Rng::new(11);
    for case in 0..2000 {
        let text = soup(&mut rng);
        let n = text.len();
        let outcome = catch_unwind(|| {
            let f = c_features(&text);
            let lens = [
                f.string.len(),
                f.char_literal.len(),
                f.comment.len(),
                f.if_condition.len(),
                f.paren_depth.len(),
                f.brace_depth.len(),
                f.column.len(),
                f.preprocessor.len(),
            ];
            assert!(lens.iter().all(|&l| l == n), "feature lengths {lens:?} for {n} characters");
            for &c in CONCEPTS {
                assert_eq!(concept_labels(&text, c).len(), n, "{c} labels");
            }
        });
        if let Err(panic) = outcome {
            let why = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("case {case}: the lexer failed ({why}) on {:?}", text.iter().collect::<String>());
        }
    }
}
