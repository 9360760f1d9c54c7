//! The trainer: gradients match finite differences, training solves a task that
//! needs memory, and a resumed run equals an uninterrupted one.

use std::sync::atomic::AtomicBool;

use cellscope::model::{Arch, Model, Weights};
use cellscope::rng::Rng;
use cellscope::train::backprop::{loss_and_grad, StreamState, Workspace};
use cellscope::train::{train, RunOptions, TrainConfig, MAX_TRAIN_BYTES};

use crate::common::{bracket_text, temp_dir};

/// Central differences against backprop for every entry of every tensor.
/// Bound: |numeric − analytic| ≤ 2e-3 + 2e-2·|analytic| (f32 arithmetic, ε = 1e-2,
/// loss summed over 18 characters so it is O(10) and its rounding error O(1e-6)).
fn gradcheck(arch: Arch, dropout: f32) {
    let (v, h, layers, batch, seq) = (5, 4, 2, 3, 6);
    let w = Weights::random_arch(arch, v, None, h, layers, 11, 0.6);
    let mut rng = Rng::new(5);
    let inputs: Vec<u32> = (0..batch * seq).map(|_| rng.below(v as u64) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|_| rng.below(v as u64) as u32).collect();
    // A non-zero carried-in state exercises the h_{-1}, c_{-1} path.
    let mut init = StreamState::zeros(arch, layers, batch, h);
    for x in init.h.iter_mut().chain(init.c.iter_mut()).flatten() {
        *x = rng.range(-0.5, 0.5);
    }
    let loss_of = |w: &Weights, grads: Option<&mut Weights>| {
        let mut st = init.clone();
        let mut ws = Workspace::default();
        let mut mask_rng = Rng::new(77); // same dropout mask every call
        loss_and_grad(w, &inputs, &targets, batch, &mut st, dropout, &mut mask_rng, 1.0, grads, &mut ws)
    };
    let mut grads = w.zeros_like();
    loss_of(&w, Some(&mut grads));
    let names: Vec<String> = w.named_tensors().into_iter().map(|(n, _, _)| n).collect();
    let mut g = grads.clone();
    let analytic: Vec<Vec<f32>> = g.tensors_mut().into_iter().map(|t| t.to_vec()).collect();
    let eps = 1e-2f32;
    let (mut worst, mut worst_abs) = (0f32, 0f32);
    for (ti, name) in names.iter().enumerate() {
        let len = analytic[ti].len();
        for j in 0..len {
            let mut plus = w.clone();
            plus.tensors_mut()[ti][j] += eps;
            let mut minus = w.clone();
            minus.tensors_mut()[ti][j] -= eps;
            let numeric = ((loss_of(&plus, None) - loss_of(&minus, None)) / (2.0 * eps as f64)) as f32;
            let a = analytic[ti][j];
            let err = (numeric - a).abs();
            worst = worst.max(err / (2e-3 + 2e-2 * a.abs()));
            worst_abs = worst_abs.max(err);
            assert!(
                err <= 2e-3 + 2e-2 * a.abs(),
                "{arch} {name}[{j}]: backprop {a}, finite differences {numeric} (dropout {dropout})"
            );
        }
    }
    eprintln!("gradcheck {arch}, dropout {dropout}: worst |error| {worst_abs:.2e}, {worst:.3} of the bound");
    assert!(worst > 0.0);
}

#[test]
fn gradients_match_finite_differences() {
    for arch in Arch::ALL {
        gradcheck(arch, 0.0);
    }
}

#[test]
fn gradients_match_finite_differences_with_dropout() {
    for arch in Arch::ALL {
        gradcheck(arch, 0.3);
    }
}

#[test]
fn training_learns_to_close_the_right_bracket_20_plus_characters_later() {
    let dir = temp_dir("memory");
    std::fs::write(dir.join("train.txt"), bracket_text(1500, 1)).unwrap();
    std::fs::write(dir.join("val.txt"), bracket_text(100, 2)).unwrap();
    let config = TrainConfig {
        layers: 1,
        hidden: 24,
        batch: 16,
        seq: 50,
        lr: 1e-2,
        epochs: 60.0,
        eval_every: 100,
        threads: 2,
        lr_decay: 1.0,
        ..TrainConfig::default()
    };
    let opts = RunOptions::quiet(dir.join("m.safetensors"));
    let report = train(config, &dir.join("train.txt"), &dir.join("val.txt"), &opts, &AtomicBool::new(false)).unwrap();
    assert!(report.finished);
    let model = Model::load(&opts.out).unwrap();
    // On fresh text: where a closer comes next, how much of the closer mass is on the right one?
    let text = bracket_text(60, 3);
    let trace = model.trace(&text);
    let chars: Vec<char> = text.chars().collect();
    let (paren, square) = (model.vocab.id(')').unwrap() as usize, model.vocab.id(']').unwrap() as usize);
    let mut right = 0.0;
    let mut count = 0.0;
    for t in 0..chars.len() - 1 {
        let next = chars[t + 1];
        if next == ')' || next == ']' {
            let p = trace.probs.row(t);
            let (good, bad) = if next == ')' { (p[paren], p[square]) } else { (p[square], p[paren]) };
            right += good / (good + bad);
            count += 1.0;
        }
    }
    let share = right / count;
    eprintln!("closer share {share:.3}, best val {:?}, steps {}", report.best_val, report.steps);
    assert!(share > 0.9, "the model puts only {share:.3} of the closer mass on the matching closer (chance 0.5)");
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    for arch in Arch::ALL {
        resumed_equals_uninterrupted(arch);
    }
}

fn resumed_equals_uninterrupted(arch: Arch) {
    let dir = temp_dir("resume");
    std::fs::write(dir.join("train.txt"), bracket_text(300, 4)).unwrap();
    std::fs::write(dir.join("val.txt"), bracket_text(20, 5)).unwrap();
    let config = TrainConfig {
        arch,
        layers: 2,
        hidden: 8,
        batch: 6,
        seq: 20,
        dropout: 0.2,
        epochs: 100.0,
        eval_every: 4,
        threads: 2,
        ..TrainConfig::default()
    };
    let run = |name: &str, steps: u64, resume: bool| {
        let opts = RunOptions { resume, max_steps: Some(steps), ..RunOptions::quiet(dir.join(name)) };
        train(config.clone(), &dir.join("train.txt"), &dir.join("val.txt"), &opts, &AtomicBool::new(false)).unwrap()
    };
    run("whole.safetensors", 10, false);
    run("split.safetensors", 6, false);
    run("split.safetensors", 10, true);
    let a = std::fs::read(dir.join("whole.ckpt.safetensors")).unwrap();
    let b = std::fs::read(dir.join("split.ckpt.safetensors")).unwrap();
    let pa = cellscope::model::safetensors::parse(&a).unwrap();
    let pb = cellscope::model::safetensors::parse(&b).unwrap();
    assert_eq!(pa.tensors, pb.tensors, "{arch}: weights, moments and carried state must match exactly");
    let best = Model::load(&dir.join("whole.safetensors")).unwrap();
    assert_eq!(best.arch(), arch, "the model file records its architecture");
    let config = best.train.config.as_ref().expect("the model records its training config");
    assert!(config.arch == arch, "{:?}", config.arch);
    // Starting again without --resume must refuse to overwrite the checkpoint.
    let opts = RunOptions { max_steps: Some(1), ..RunOptions::quiet(dir.join("whole.safetensors")) };
    let err = train(config.clone(), &dir.join("train.txt"), &dir.join("val.txt"), &opts, &AtomicBool::new(false))
        .unwrap_err();
    assert!(err.to_string().contains("pass --resume"), "{err}");
}

#[test]
fn the_default_settings_pass_validation_and_absurd_ones_do_not() {
    let config = TrainConfig::default();
    config.validate().unwrap();
    // The shipped model's run (2 × 512, ~100 characters) fits the memory budget easily.
    let shipped = TrainConfig { hidden: 512, ..TrainConfig::default() };
    assert!(shipped.memory_estimate(100) < MAX_TRAIN_BYTES as f64 / 8.0, "{}", shipped.memory_estimate(100));
    shipped.check_memory(100).unwrap();
    let huge = TrainConfig { hidden: 4096, batch: 100_000, seq: 100_000, ..TrainConfig::default() };
    huge.validate().unwrap();
    let err = huge.check_memory(100).unwrap_err().to_string();
    assert!(err.contains("of memory") && err.contains("16.0 GiB"), "{err}");
    for bad in [
        TrainConfig { lr: f32::NAN, ..TrainConfig::default() },
        TrainConfig { lr: 0.0, ..TrainConfig::default() },
        TrainConfig { clip: f32::INFINITY, ..TrainConfig::default() },
        TrainConfig { init: -1.0, ..TrainConfig::default() },
        TrainConfig { seq: 0, ..TrainConfig::default() },
    ] {
        assert!(bad.validate().is_err(), "{bad:?} passed validation");
    }
}
