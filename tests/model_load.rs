//! Loading never panics and says exactly what is wrong.

use std::collections::BTreeMap;

use cellscope::model::safetensors::{parse, serialize};
use cellscope::model::Model;
use cellscope::rng::Rng;

use crate::common::tiny_model;

/// Rewrites a valid model file with one tensor or metadata entry changed.
fn edit(
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

fn load_err(bytes: &[u8]) -> String {
    match Model::from_bytes(bytes, "t".into()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn save_then_load_round_trips_exactly() {
    for embed in [None, Some(5)] {
        let m = tiny_model(embed, 1);
        let back = Model::from_bytes(&m.to_bytes(), "x".into()).unwrap();
        assert_eq!(back.weights, m.weights);
        assert_eq!(back.vocab, m.vocab);
        let dir = std::env::temp_dir().join(format!("cellscope-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        m.save(&path).unwrap();
        assert_eq!(Model::load(&path).unwrap().weights, m.weights);
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
        let msg = load_err(&bytes);
        assert!(msg.contains(expect), "{what}: message {msg:?} lacks {expect:?}");
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

#[test]
fn unsupported_dtype_is_named_and_half_precision_converts() {
    let good = tiny_model(None, 3).to_bytes();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + hlen]).unwrap();
    // Same byte size, other dtypes: I32 is refused by name.
    let i32_header = header.replacen("\"F32\"", "\"I32\"", 1);
    let mut bytes = (i32_header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(i32_header.as_bytes());
    bytes.extend_from_slice(&good[8 + hlen..]);
    let msg = load_err(&bytes);
    assert!(msg.contains("has dtype I32") && msg.contains("converts F16, BF16 and F64"), "{msg}");
}

#[test]
fn corrupted_bytes_never_panic() {
    let good = tiny_model(Some(4), 4).to_bytes();
    let mut rng = Rng::new(99);
    let mut accepted = 0;
    for round in 0..3000 {
        let mut bytes = good.clone();
        match round % 4 {
            0 => {
                let cut = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(cut);
            }
            1 => {
                // Flip bytes inside the header, where structure lives.
                let hlen = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
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
        if let Ok(m) = Model::from_bytes(&bytes, "fuzz".into()) {
            accepted += 1;
            // Whatever loads must also run.
            let t = m.trace("if (x) { }");
            assert!(t.probs.iter().all(|p| p.is_finite()));
        }
    }
    assert!(accepted < 3000, "corruption should be noticed sometimes");
}
