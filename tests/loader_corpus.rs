//! The committed corpus of broken model files in `tests/data/loader-corpus/`: each file is
//! small, named for what is wrong with it, and refused with a message that says so.
//!
//! [`corpus`] below generates the files; `regenerate_loader_corpus` writes them (with the
//! directory's README) and the replay test checks that the committed files are exactly
//! what it generates, then loads each from disk through `Model::load`.

use std::path::{Path, PathBuf};

use cellscope::model::Model;
use serde_json::{json, Value};

use crate::model_load::{assemble, edit, micro_model, Parts};

/// One corpus file: its name (without `.safetensors`), bytes, and a phrase its error
/// message must contain.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static str,
}

fn case(name: &'static str, bytes: Vec<u8>, expect: &'static str) -> Case {
    Case { name, bytes, expect }
}

/// Every broken file, built from the micro model (vocabulary "ab", one layer, H = 1; see
/// `model_load::micro_model` for where its tensors lie).
fn corpus() -> Vec<Case> {
    let good = micro_model().to_bytes();
    let parts = Parts::of(&good);
    let header_with = |key: &str, value: Value| {
        let mut p = parts.clone();
        p.header[key] = value;
        p.bytes()
    };
    let meta = |key: &str, value: &str| {
        let (key, value) = (key.to_string(), value.to_string());
        edit(&good, move |_, m| {
            m.insert(key, value);
        })
    };
    let tensor = |name: &str, shape: Vec<usize>, values: Vec<f32>| {
        let name = name.to_string();
        edit(&good, move |t, _| {
            t.insert(name, (shape, values));
        })
    };
    let mut duplicate = parts.header.clone();
    duplicate.remove("rnn.bias_ih_l0");
    let duplicate = {
        // serde_json's maps cannot hold a key twice, so write the repeat into the text.
        let text = Value::Object(duplicate).to_string();
        let entry = format!("\"rnn.bias_ih_l0\":{}", parts.header["rnn.bias_ih_l0"]);
        let header = format!("{{{entry},{entry},{}", &text[1..]);
        assemble(&header, &parts.data)
    };
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
    let mut trailing = parts.clone();
    trailing.data.extend_from_slice(&[0; 4]);
    let mut hole = parts.clone().set("rnn.weight_ih_l0", "data_offsets", json!([72, 104]));
    hole.data.extend_from_slice(&[0; 8]);
    // The last tensor (4 × 2 values) as F16 in 16 bytes, its first value +inf.
    let mut inf_f16 = parts.clone().set("rnn.weight_ih_l0", "dtype", json!("F16"));
    inf_f16.header["rnn.weight_ih_l0"]["data_offsets"] = json!([64, 80]);
    inf_f16.data.truncate(80);
    inf_f16.data[64..66].copy_from_slice(&0x7c00u16.to_le_bytes());
    let mut past_end = good.clone();
    past_end[..8].copy_from_slice(&10_000u64.to_le_bytes());
    let mut not_utf8 = good.clone();
    let quote = 8 + not_utf8[8..].iter().position(|&b| b == b'"').unwrap();
    not_utf8[quote + 1] = 0xff;

    vec![
        case("empty", vec![], "file is 0 bytes, too short"),
        case("seven-bytes", vec![1; 7], "file is 7 bytes, too short"),
        case("c-source", b"int main(void) { return 0; }\n".to_vec(), "is over the 100000000-byte limit"),
        case("header-length-past-the-end", past_end, "header length 10000 exceeds the file's remaining"),
        case("header-not-json", assemble("{\"decoder.bias\": {\"dtype\": ", &[]), "header is not valid JSON"),
        case("header-not-utf8", not_utf8, "header is not valid JSON"),
        case("header-empty", assemble("", &[]), "header is not valid JSON"),
        case("header-is-an-array", assemble("[1, 2, 3]", &[]), "header is JSON but not a safetensors header"),
        case("header-nested-too-deep", assemble(&deep, &[]), "recursion limit exceeded"),
        case("header-names-a-tensor-twice", duplicate, "header names rnn.bias_ih_l0 twice"),
        case("metadata-not-an-object", header_with("__metadata__", json!(["lstm"])), "__metadata__ is not an object"),
        case(
            "metadata-value-not-a-string",
            parts.clone().meta("cellscope.arch", json!(1)).bytes(),
            "metadata value of cellscope.arch is not a string",
        ),
        case(
            "tensor-not-an-object",
            header_with("decoder.bias", json!([0, 8])),
            "tensor decoder.bias: is not an object",
        ),
        case(
            "dtype-missing",
            parts.clone().set("decoder.bias", "dtype", Value::Null).bytes(),
            "tensor decoder.bias: lacks a dtype string",
        ),
        case(
            "dtype-i32",
            parts.clone().set("decoder.bias", "dtype", json!("I32")).bytes(),
            "tensor decoder.bias has dtype I32",
        ),
        case(
            "shape-negative",
            parts.clone().set("decoder.bias", "shape", json!([-2])).bytes(),
            "shape holds something other than non-negative integers",
        ),
        case(
            "shape-bytes-overflow",
            parts.clone().set("decoder.bias", "shape", json!([1u64 << 32, 1u64 << 32, 1u64 << 32])).bytes(),
            "has more bytes than memory can hold",
        ),
        case(
            "shape-disagrees-with-bytes",
            parts.clone().set("decoder.bias", "shape", json!([3])).bytes(),
            "tensor decoder.bias: holds 8 bytes but shape [3] of F32 needs 12",
        ),
        case(
            "offsets-missing",
            parts.clone().set("decoder.bias", "data_offsets", json!([0])).bytes(),
            "lacks data_offsets [begin, end]",
        ),
        case(
            "offsets-backwards",
            parts.clone().set("decoder.bias", "data_offsets", json!([8, 0])).bytes(),
            "data_offsets [8, 0] run backwards",
        ),
        case(
            "offsets-past-the-end",
            parts.clone().set("decoder.bias", "data_offsets", json!([0, u64::MAX])).bytes(),
            "fall outside the 96 data bytes",
        ),
        case(
            "offsets-overlap",
            parts.clone().set("rnn.bias_ih_l0", "data_offsets", json!([16, 32])).bytes(),
            "tensors rnn.bias_hh_l0 (data bytes [16, 32)) and rnn.bias_ih_l0 ([16, 32)) overlap",
        ),
        case(
            "offsets-leave-a-hole",
            hole.bytes(),
            "data bytes [64, 72) between rnn.weight_hh_l0 and rnn.weight_ih_l0 belong to no tensor",
        ),
        case(
            "bytes-after-the-last-tensor",
            trailing.bytes(),
            "data bytes [96, 100) after the last tensor rnn.weight_ih_l0",
        ),
        case("truncated", good[..good.len() - 3].to_vec(), "(truncated file?)"),
        case(
            "layer-index-huge",
            tensor("rnn.weight_ih_l99999999999", vec![1], vec![0.0]),
            "tensor rnn.weight_ih_l99999999999 names layer 99999999999; cellscope loads at most 64 layers",
        ),
        case("layer-index-64", tensor("rnn.bias_hh_l64", vec![1], vec![0.0]), "names layer 64;"),
        case(
            "layer-missing-between",
            tensor("rnn.weight_ih_l2", vec![1], vec![0.0]),
            "model file lacks rnn.weight_ih_l1",
        ),
        case(
            "hidden-size-overflows",
            tensor("rnn.weight_hh_l0", vec![0, 1 << 62], vec![]),
            "expected [4H, H] with H ≥ 1",
        ),
        case("arch-unknown", meta("cellscope.arch", "transformer"), "unknown architecture \"transformer\""),
        case(
            "arch-gru-with-lstm-tensors",
            meta("cellscope.arch", "gru"),
            "rnn.weight_hh_l0 has shape [4, 1], expected [3H, H] with H ≥ 1",
        ),
        case(
            "vocab-not-json",
            meta("cellscope.vocab", "ab"),
            "bad cellscope.vocab: vocabulary is not a JSON array of strings",
        ),
        case("vocab-repeats-a-char", meta("cellscope.vocab", "[\"a\", \"a\"]"), "vocabulary holds 'a' twice"),
        case(
            "vocab-longer-than-decoder",
            meta("cellscope.vocab", "[\"a\", \"b\", \"c\"]"),
            "vocabulary has 3 characters but decoder.weight has 2 rows",
        ),
        case("train-not-an-object", meta("cellscope.train", "[1]"), "bad cellscope.train"),
        case(
            "tensor-missing",
            edit(&good, |t, _| {
                t.remove("rnn.bias_hh_l0");
            }),
            "model file lacks rnn.bias_hh_l0",
        ),
        case(
            "tensor-wrong-shape",
            tensor("decoder.bias", vec![3], vec![0.0; 3]),
            "decoder.bias has shape [3], expected [2]",
        ),
        case(
            "weight-nan",
            edit(&good, |t, _| t.get_mut("decoder.weight").unwrap().1[1] = f32::NAN),
            "decoder.weight holds a non-finite value (NaN) at flat index 1",
        ),
        case("weight-infinite-f16", inf_f16.bytes(), "rnn.weight_ih_l0 holds a non-finite value (inf) at flat index 0"),
        case(
            "tensor-stray",
            tensor("rnn.weight_ih_l0_reverse", vec![1], vec![0.0]),
            "unexpected tensor rnn.weight_ih_l0_reverse",
        ),
    ]
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/loader-corpus")
}

/// The directory's README: how to regenerate, and the table of files and messages.
fn readme(cases: &[Case]) -> String {
    let mut s = String::from(
        "# Broken model files\n\n\
         Each file is a small safetensors file with one thing wrong, named for it; `tests/loader_corpus.rs` \
         loads each through `Model::load` and checks that it is refused with the phrase below.\n\
         Generated by `corpus()` in `tests/loader_corpus.rs` from a one-layer, H = 1 model; regenerate with\n\
         `cargo test --release --test integration regenerate_loader_corpus -- --ignored`.\n\n\
         | file | the error message contains |\n| --- | --- |\n",
    );
    for c in cases {
        s.push_str(&format!("| `{}.safetensors` | {} |\n", c.name, c.expect.replace('|', "\\|")));
    }
    s
}

/// Writes the corpus; run after changing `corpus()` (see the README).
#[test]
#[ignore = "writes tests/data/loader-corpus; run by hand to regenerate it"]
fn regenerate_loader_corpus() {
    let dir = corpus_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let cases = corpus();
    for c in &cases {
        std::fs::write(dir.join(format!("{}.safetensors", c.name)), &c.bytes).unwrap();
    }
    std::fs::write(dir.join("README.md"), readme(&cases)).unwrap();
}

#[test]
fn loader_corpus_files_are_refused_with_their_message() {
    let dir = corpus_dir();
    let cases = corpus();
    let stale = "tests/data/loader-corpus is stale: regenerate it (see its README)";
    let mut on_disk: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    on_disk.sort();
    let mut listed: Vec<String> = cases.iter().map(|c| format!("{}.safetensors", c.name)).collect();
    listed.push("README.md".into());
    listed.sort();
    assert_eq!(on_disk, listed, "{stale}");
    assert_eq!(std::fs::read_to_string(dir.join("README.md")).unwrap(), readme(&cases), "{stale}");
    for c in &cases {
        let path = dir.join(format!("{}.safetensors", c.name));
        assert!(std::fs::read(&path).unwrap() == c.bytes, "{}: {stale}", c.name);
        match Model::load(&path) {
            Ok(_) => panic!("{} loaded; it should be refused with {:?}", c.name, c.expect),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(c.expect), "{}: message {msg:?} lacks {:?}", c.name, c.expect);
            }
        }
    }
    assert!(cases.len() >= 30, "the corpus shrank to {} files", cases.len());
}
