//! Small models and helpers shared by the integration tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use cellscope::model::{Arch, Model, Vocab, Weights};
use cellscope::rng::Rng;

/// A random 2-layer model over a C-ish vocabulary; weights large enough that gates
/// are far from 0.5.
pub fn tiny_model(embed: Option<usize>, seed: u64) -> Model {
    tiny_model_of(Arch::Lstm, embed, seed)
}

/// [`tiny_model`] of any architecture.
pub fn tiny_model_of(arch: Arch, embed: Option<usize>, seed: u64) -> Model {
    let vocab = Vocab::from_text("abcdefghijklmnopqrstuvwxyz (){};\"'\n\t=+-*/<>!&|0123456789#_,.").unwrap();
    let w = Weights::random_arch(arch, vocab.len(), embed, 16, 2, seed, 0.5);
    Model::new("tiny".into(), vocab, w, Default::default()).unwrap()
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh, empty directory under the system temp dir, unique to this process and
/// call, so tests running in parallel never share files (and never write tracked ones).
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("cellscope-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Segments `(xyz…)` or `[xyz…]` with 20–30 filler characters: the closer can only
/// be predicted by remembering the opener across the filler.
pub fn bracket_text(n_segments: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s = String::new();
    for _ in 0..n_segments {
        let square = rng.below(2) == 1;
        s.push(if square { '[' } else { '(' });
        for _ in 0..20 + rng.below(11) {
            s.push(['a', 'b', 'c'][rng.below(3) as usize]);
        }
        s.push(if square { ']' } else { ')' });
        s.push('\n');
    }
    s
}
