//! Small models and helpers shared by the integration tests.

use cellscope::model::{Model, Vocab, Weights};

/// A random 2-layer model over a C-ish vocabulary; weights large enough that gates
/// are far from 0.5.
pub fn tiny_model(embed: Option<usize>, seed: u64) -> Model {
    let vocab = Vocab::from_text("abcdefghijklmnopqrstuvwxyz (){};\"'\n\t=+-*/<>!&|0123456789#_,.").unwrap();
    let w = Weights::random_scaled(vocab.len(), embed, 16, 2, seed, 0.5);
    Model::new("tiny".into(), vocab, w, serde_json::json!({})).unwrap()
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
