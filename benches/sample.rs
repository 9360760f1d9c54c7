//! Sampling costs what tracing costs: `model::sample` (one character at a time
//! through `Stepper`, no allocation per step) against `Model::trace` of a text of
//! the same length, on the shipped 2 × 512 model, side by side in one run; and
//! sampling on two threads (`model::sample_on`: each step's units shared between
//! two cores) against one.
//!
//! ```text
//! MATMUL_NUM_THREADS=1 cargo bench --bench sample            # 2,000 characters
//! MATMUL_NUM_THREADS=1 cargo bench --bench sample -- 20000
//! ```
//! Rows alternate (trace, sample, trace, sample, …) so a change in the machine's
//! load favours neither; each is run at least 5 times; best and median printed.

mod common;

use std::time::Instant;

use cellscope::model::{default_model_path, sample_on, Clamp, Kind, Model, Sampling};

fn main() {
    let n: usize = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let model = Model::load(&default_model_path()).expect("the shipped model loads");
    let text: String = include_str!("../tests/data/other_c/sample.c").chars().cycle().take(n).collect();
    println!("cpu: {}", common::cpu_description());
    println!("model: {} ({} × {}), {n} characters", model.name, model.layers(), model.hidden_size());
    let how = Sampling { temperature: 0.8, top_k: 0, seed: 1 };
    let clamp = [Clamp { layer: 1, kind: Kind::Cell, cell: 5, value: 0.0, from: 0, to: usize::MAX }];
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("trace", vec![]),
        ("sample", vec![]),
        ("sample, one clamp", vec![]),
        ("sample, 2 threads", vec![]),
        ("sample, clamp, 2 thr", vec![]),
    ];
    let runs = [(1, &[][..], 1), (2, &clamp[..], 1), (3, &[][..], 2), (4, &clamp[..], 2)];
    let draw = |clamps: &[Clamp], threads: usize| {
        let mut text = String::new();
        // A one-character prime: n steps in all, like the trace.
        sample_on(&model, "\n", n - 1, how, clamps, threads, |c, _| {
            text.push(c);
            true
        });
        text
    };
    assert_eq!(draw(&clamp, 1), draw(&clamp, 2), "the same text on one thread and two");
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(model.trace(&text));
        rows[0].1.push(t.elapsed().as_secs_f64());
        for (i, clamps, threads) in runs {
            let t = Instant::now();
            std::hint::black_box(draw(clamps, threads));
            rows[i].1.push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&rows[0].1);
    println!("{:<20} {:>12} {:>12} {:>16} {:>14}", "", "median s", "chars/s", "÷ trace time", "best s");
    for (name, times) in &rows {
        let m = median(times);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        println!("{name:<20} {m:>12.4} {:>12.0} {:>15.2}× {best:>14.4}", n as f64 / m, m / base);
    }
    let (one, two) = (median(&rows[1].1), median(&rows[3].1));
    println!("two threads against one, sampling: {:.2}× (medians)", one / two);
}
