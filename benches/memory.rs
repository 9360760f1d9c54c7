//! The memory views' gradients on the shipped 2 × 512 model, side by side in one
//! run: one saliency (`POST /api/saliency`: a prediction's gradient 1,500 steps
//! back) on 1 and 2 threads, and the memory horizon (`GET /api/horizon`: 16 positions × 600 steps)
//! taken together (`model::saliencies`, on 1 and 2 threads) against one position
//! at a time, with the exact trace of the same text as the yardstick.
//!
//! ```text
//! cargo bench --profile release --bench memory
//! ```
//! Rows alternate so a change in the machine's load favours none; best and median
//! of 3 runs each.

mod common;

use std::time::Instant;

use cellscope::model::{default_model_path, memory_horizon_of, saliencies, saliency, Model};

fn main() {
    let model = Model::load(&default_model_path()).expect("the shipped model loads");
    let reference = std::fs::read_to_string(default_model_path().with_extension("reference.txt"))
        .expect("the shipped model's reference text");
    let short: String = reference.chars().take(2000).collect();
    println!("cpu: {}", common::cpu_description());
    println!("model: {} ({} × {})", model.name, model.layers(), model.hidden_size());
    let (short_trace, long_trace) = (model.trace(&short), model.trace(&reference));
    let (count, max_back) = (16, 600);
    let span = long_trace.len() - 2 - max_back;
    let positions: Vec<usize> = (0..count).map(|k| max_back + span * (2 * k + 1) / (2 * count)).collect();
    type Job<'a> = Box<dyn Fn() + 'a>;
    let mut rows: Vec<(&str, Job, Vec<f64>)> = vec![
        ("exact trace, 2,000 chars, 1 thread (yardstick)", Box::new(|| drop(model.trace(&short))), vec![]),
        ("saliency, 1,500 steps back, 1 thread", Box::new(|| drop(saliency(&model, &short_trace, 1500, 4000))), vec![]),
        (
            "saliency, 1,500 steps back, 2 threads",
            Box::new(|| drop(saliencies(&model, &short_trace, &[1500], 4000, 2))),
            vec![],
        ),
        (
            "horizon 16 × 600, one position at a time",
            Box::new(|| {
                for &p in &positions {
                    drop(saliency(&model, &long_trace, p, max_back));
                }
            }),
            vec![],
        ),
        (
            "horizon 16 × 600, together, 1 thread",
            Box::new(|| drop(memory_horizon_of(&model, &long_trace, count, max_back, 1))),
            vec![],
        ),
        (
            "horizon 16 × 600, together, 2 threads",
            Box::new(|| drop(memory_horizon_of(&model, &long_trace, count, max_back, 2))),
            vec![],
        ),
    ];
    // Together and alone agree to the bit (tests/causal.rs); check it here too.
    let together = saliencies(&model, &long_trace, &positions, max_back, 2);
    for (&p, s) in positions.iter().zip(&together) {
        assert_eq!(s, &saliency(&model, &long_trace, p, max_back), "position {p}");
    }
    let shared = saliencies(&model, &short_trace, &[1500], 4000, 2).pop().flatten();
    assert_eq!(shared, saliency(&model, &short_trace, 1500, 4000));
    for _ in 0..3 {
        for (_, job, times) in rows.iter_mut() {
            let t = Instant::now();
            job();
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let alone = rows[3].2.iter().copied().fold(f64::MAX, f64::min);
    println!("{:<48} {:>9} {:>9} {:>14}", "", "best s", "median s", "alone ÷ this");
    for (name, _, times) in &mut rows {
        times.sort_by(f64::total_cmp);
        let best = times[0];
        let ratio = if name.starts_with("horizon") { format!("{:.2}×", alone / best) } else { String::new() };
        println!("{name:<48} {best:>9.3} {:>9.3} {ratio:>14}", times[times.len() / 2]);
    }
    println!(
        "(load average {})",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?")
    );
}
