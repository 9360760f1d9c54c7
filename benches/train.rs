//! Training throughput of [`cellscope::train::train`] (what `cellscope train` runs),
//! side by side with PyTorch on the same problem in the same run.
//!
//! ```text
//! scripts/bench-train.sh                     # = MATMUL_NUM_THREADS=1 cargo bench --bench train
//! scripts/bench-train.sh --steps 20 --runs 3 --hidden 256 --threads 1 --no-torch
//! ```
//!
//! Each row is a 2-layer LSTM over 97 characters, batch 50 × seq 100, Adam, clip 5,
//! no dropout, on random text: cellscope through `train()` into a temporary
//! directory, PyTorch through `scripts/bench_torch.py train` (`nn.LSTM` with one-hot
//! input, `clip_grad_norm_`, `torch.optim.Adam`) at the same thread count. Both
//! skip 3 warm-up steps and time the next `--steps`. Ours reads the step times
//! from the run's own log, so the validation and checkpoint after the last step
//! are not counted. The two are run interleaved (ours, torch, ours, torch, …) and
//! each cell is the median over `--runs`, so a burst of other work on the machine
//! hits both sides alike: read the ratios, not the absolute numbers.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use cellscope::rng::Rng;
use cellscope::train::optim::Optimizer;
use cellscope::train::{train, RunOptions, TrainConfig};

const LAYERS: usize = 2;
const VOCAB: usize = 97;
const BATCH: usize = 50;
const SEQ: usize = 100;
/// Both sides run this many untimed steps first (bench_torch.py's default).
const WARMUP: usize = 3;

struct Args {
    hidden: Vec<usize>,
    threads: Vec<usize>,
    steps: usize,
    runs: usize,
    torch: bool,
}

fn parse_args() -> Args {
    let mut a = Args { hidden: vec![128, 256], threads: vec![1, 2], steps: 30, runs: 2, torch: true };
    let list = |s: String, name: &str| -> Vec<usize> {
        s.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| panic!("{name} takes numbers like 128,256"))).collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--hidden" => a.hidden = list(value("--hidden"), "--hidden"),
            "--threads" => a.threads = list(value("--threads"), "--threads"),
            "--steps" => a.steps = value("--steps").parse().expect("--steps takes a number"),
            "--runs" => a.runs = value("--runs").parse().expect("--runs takes a number"),
            "--no-torch" => a.torch = false,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?} (known: --hidden 128,256, --threads 1,2, --steps N, --runs N, --no-torch)"
            ),
        }
    }
    assert!(a.steps >= 1 && a.runs >= 1, "--steps and --runs must be at least 1");
    a
}

/// Printable ASCII plus tab and newline: 97 characters, as in a C corpus.
fn alphabet() -> Vec<char> {
    ['\t', '\n'].into_iter().chain((32u8..127).map(char::from)).collect()
}

/// `n` characters drawn uniformly from `chars` (PyTorch's side trains on
/// `torch.randint` too), led by the whole alphabet so the vocabulary is all 97.
fn random_text(chars: &[char], n: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s: String = chars.iter().collect();
    s.extend((chars.len()..n).map(|_| chars[rng.below(chars.len() as u64) as usize]));
    s
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[m - 1] + xs[m]) / 2.0
    } else {
        xs[m]
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split(' ').next()?.parse().ok()
}

/// Trains `hidden` cells for WARMUP + `steps` steps on `threads` shards and returns
/// chars/s over the steps after the warm-up, from the log's `elapsed_s`.
fn ours(dir: &Path, hidden: usize, threads: usize, steps: usize) -> f64 {
    let out = dir.join("bench.safetensors");
    for suffix in [".ckpt.safetensors", ".log.jsonl", ".safetensors"] {
        let _ = std::fs::remove_file(cellscope::train::sidecar(&out, suffix));
    }
    let config = TrainConfig {
        layers: LAYERS,
        hidden,
        batch: BATCH,
        seq: SEQ,
        lr: 2e-3,
        optimizer: Optimizer::Adam,
        clip: 5.0,
        dropout: 0.0,
        epochs: 1.0,
        eval_every: u64::MAX,
        threads,
        ..TrainConfig::default()
    };
    let opts = RunOptions { max_steps: Some((WARMUP + steps) as u64), ..RunOptions::quiet(out.clone()) };
    let report = train(config, &dir.join("train.txt"), &dir.join("val.txt"), &opts, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("training failed: {e}"));
    assert_eq!(report.steps, (WARMUP + steps) as u64, "the run stopped early");
    let log = std::fs::read_to_string(cellscope::train::sidecar(&out, ".log.jsonl")).expect("read the run's log");
    let elapsed: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON log line")["elapsed_s"]
                .as_f64()
                .expect("elapsed_s")
        })
        .collect();
    assert_eq!(elapsed.len(), WARMUP + steps, "one log line per step");
    let seconds = elapsed[WARMUP + steps - 1] - elapsed[WARMUP - 1];
    (steps * BATCH * SEQ) as f64 / seconds
}

fn have_torch() -> bool {
    Command::new("python3").args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success())
}

/// `scripts/bench_torch.py train` at the same sizes; its `chars_per_s`.
fn torch(hidden: usize, threads: usize, steps: usize) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_torch.py");
    let n = |x: usize| x.to_string();
    let out = Command::new("python3")
        .arg(&script)
        .arg("train")
        .args(["--hidden", &n(hidden), "--layers", &n(LAYERS), "--vocab", &n(VOCAB)])
        .args(["--batch", &n(BATCH), "--seq", &n(SEQ), "--steps", &n(steps), "--warmup", &n(WARMUP)])
        .args(["--threads", &n(threads)])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("bench_torch.py failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().ok_or("bench_torch.py printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad JSON line {line:?}: {e}"))?;
    v["chars_per_s"].as_f64().ok_or_else(|| format!("no chars_per_s in {line}"))
}

struct Row {
    hidden: usize,
    threads: usize,
    ours: Vec<f64>,
    torch: Vec<f64>,
}

fn main() {
    // matrixmultiply reads this once, on its first GEMM: set it before training.
    // Like the binary, each shard's GEMMs run on one thread.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
    let args = parse_args();
    let load_before = load_average();
    let torch_ok = args.torch && have_torch();

    // One epoch must hold every step, so the carried state is never reset mid-run.
    let dir = std::env::temp_dir().join(format!("cellscope-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let chars = alphabet();
    let train_chars = BATCH * SEQ * (WARMUP + args.steps + 1) + 1;
    std::fs::write(dir.join("train.txt"), random_text(&chars, train_chars, 1)).expect("write train.txt");
    // Validation runs once, after the last (untimed) step: keep it small.
    std::fs::write(dir.join("val.txt"), random_text(&chars, 20 * SEQ, 2)).expect("write val.txt");

    println!(
        "cellscope training benchmark: {LAYERS} layers, vocab {VOCAB}, batch {BATCH} × seq {SEQ}, Adam, clip 5, \
         {WARMUP} warm-up + {} timed steps, median of {} runs, load average {}",
        args.steps,
        args.runs,
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
    );
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    for &hidden in &args.hidden {
        for &threads in &args.threads {
            let mut row = Row { hidden, threads, ours: Vec::new(), torch: Vec::new() };
            for run in 1..=args.runs {
                let o = ours(&dir, hidden, threads, args.steps);
                eprintln!("  {LAYERS}×{hidden} threads {threads} run {run}: cellscope {o:.0} chars/s");
                row.ours.push(o);
                if torch_ok {
                    match torch(hidden, threads, args.steps) {
                        Ok(t) => {
                            eprintln!("  {LAYERS}×{hidden} threads {threads} run {run}: PyTorch   {t:.0} chars/s");
                            row.torch.push(t);
                        }
                        Err(e) => eprintln!("  PyTorch run failed: {e}"),
                    }
                }
            }
            rows.push(row);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let load_after = load_average();

    println!();
    println!("| config | threads | cellscope chars/s | PyTorch chars/s | cellscope / PyTorch |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let ours = median(r.ours.clone());
        let (torch, ratio) = if r.torch.is_empty() {
            ("–".to_string(), "–".to_string())
        } else {
            let t = median(r.torch.clone());
            (format!("{t:.0}"), format!("{:.2}×", ours / t))
        };
        println!("| {LAYERS}×{} | {} | {ours:.0} | {torch} | {ratio} |", r.hidden, r.threads);
    }
    println!();
    let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    for r in &rows {
        print!("{LAYERS}×{} threads {}: cellscope runs [{}]", r.hidden, r.threads, list(&r.ours));
        if !r.torch.is_empty() {
            print!(", PyTorch runs [{}]", list(&r.torch));
        }
        println!();
    }
    if !args.torch {
        println!("PyTorch not run (--no-torch).");
    } else if !torch_ok {
        println!("PyTorch not found (`python3 -c 'import torch'` failed): cellscope numbers only.");
    }
    let busy = [load_before, load_after].into_iter().flatten().fold(0.0, f64::max);
    if busy > 1.0 {
        println!(
            "note: other work shared the CPU (load average {} at start, {} at end; a training job, say): \
             absolute numbers are low and noisy, compare the ratios.",
            load_before.map_or("?".into(), |l| format!("{l:.2}")),
            load_after.map_or("?".into(), |l| format!("{l:.2}")),
        );
    }
    let compared: Vec<&Row> = rows.iter().filter(|r| !r.torch.is_empty()).collect();
    if !compared.is_empty() {
        let short: Vec<String> = compared
            .iter()
            .filter(|r| median(r.ours.clone()) < median(r.torch.clone()))
            .map(|r| format!("{LAYERS}×{} on {} thread(s)", r.hidden, r.threads))
            .collect();
        if short.is_empty() {
            println!("goal ≥ 1× PyTorch's chars/s at the same thread count: met in every row");
        } else {
            println!("goal ≥ 1× PyTorch's chars/s at the same thread count: NOT met for {}", short.join(", "));
        }
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
}
