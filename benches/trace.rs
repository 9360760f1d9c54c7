//! Throughput of `Model::trace` (the hot path of every page view and API call),
//! side by side with PyTorch on the same weights in the same run.
//!
//! ```text
//! scripts/bench.sh                          # = MATMUL_NUM_THREADS=1 cargo bench --bench trace
//! scripts/bench.sh --model m.safetensors    # a trained model instead of the random 2×256
//! scripts/bench.sh --no-torch --no-512 --kernel --min-time 1 --chars 20000
//! ```
//!
//! Rows: cellscope on a random 2×256 model over 97 characters (or `--model`); the
//! same weights through `scripts/bench_torch.py infer` (PyTorch's fused `nn.LSTM`,
//! which records nothing, and a loop that records the gates as we do) when
//! `python3 -c 'import torch, safetensors'` works; cellscope on a random 2×512 model,
//! the size we ship; with `--kernel`, one layer's recurrence alone. Everything runs
//! on one thread. Other work on the machine (a training job, say) slows every row,
//! so compare the ratios within one run, not numbers across runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cellscope::model::{Model, Vocab, Weights};
use cellscope::rng::Rng;

/// The issue's target: 1.5× the fastest one-thread baseline measured there
/// (onnxruntime's LSTM op, ≈ 28k chars/s on a 2×256 model).
const GOAL_CHARS_PER_S: f64 = 42_000.0;
/// PyTorch's fused `nn.LSTM` on the same shape in the issue's measurement.
const ISSUE_TORCH_FUSED: f64 = 23_000.0;

struct Args {
    model: Option<PathBuf>,
    chars: usize,
    min_time: f64,
    torch: bool,
    big: bool,
    kernel: bool,
}

const USAGE: &str = "options: --model PATH (a cellscope .safetensors instead of the random 2×256), \
--chars N (text length, default 20000), --min-time S (seconds per row, default 2), \
--no-torch, --no-512 (skip the random 2×512 row), --kernel (also time one layer's recurrence alone)";

fn parse_args() -> Args {
    let mut a = Args { model: None, chars: 20_000, min_time: 2.0, torch: true, big: true, kernel: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value; {USAGE}"));
        match arg.as_str() {
            "--model" => a.model = Some(PathBuf::from(value("--model"))),
            "--chars" => a.chars = value("--chars").parse().expect("--chars takes a number"),
            "--min-time" => a.min_time = value("--min-time").parse().expect("--min-time takes seconds"),
            "--no-torch" => a.torch = false,
            "--no-512" => a.big = false,
            "--kernel" => a.kernel = true,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other:?}; {USAGE}"),
        }
    }
    a
}

/// Printable ASCII plus tab and newline: 97 characters, as in a C corpus.
fn c_vocab() -> Vocab {
    let chars: Vec<char> = ['\t', '\n'].into_iter().chain((32u8..127).map(char::from)).collect();
    Vocab::new(chars).expect("distinct characters")
}

/// Weights as PyTorch initialises `nn.LSTM`: uniform(±1/√H). Trained models live in
/// the same non-chaotic regime; the speed does not depend on the values.
fn random_model(vocab: &Vocab, hidden: usize, layers: usize, seed: u64) -> Model {
    let scale = 1.0 / (hidden as f32).sqrt();
    let w = Weights::random_scaled(vocab.len(), None, hidden, layers, seed, scale);
    Model::new(format!("random-{layers}x{hidden}"), vocab.clone(), w, serde_json::json!({})).expect("consistent")
}

/// About `n` characters of C-looking text (indentation, keywords, operators,
/// comments), so the trace sees the distribution a page view does.
fn c_like_text(n: usize, seed: u64) -> String {
    const IDENTS: &[&str] = &["buf", "len", "i", "dev", "skb", "flags", "ret", "page", "node", "ctx", "err"];
    const TYPES: &[&str] = &["int", "unsigned long", "struct device *", "size_t", "u32", "char *"];
    const FUNCS: &[&str] = &["kmalloc", "memcpy", "spin_lock", "list_add", "printk", "copy_from_user"];
    let mut rng = Rng::new(seed);
    let mut pick = |xs: &[&'static str]| -> &'static str { xs[rng.below(xs.len() as u64) as usize] };
    let mut s = String::with_capacity(n + 200);
    while s.len() < n {
        let (t, a, b, f) = (pick(TYPES), pick(IDENTS), pick(IDENTS), pick(FUNCS));
        s += &format!("static {t} {f}_{a}({t} {b}, int {a})\n{{\n");
        s += &format!("\t/* check {a} before we touch {b} */\n");
        s += &format!("\tif ({a} == NULL || {b} < 0x{:x}) {{\n\t\t{b} = -EINVAL;\n\t\tgoto out;\n\t}}\n", a.len() * 16);
        s += &format!("\tfor ({a} = 0; {a} < {b}; {a}++)\n\t\tret += {f}(&{b}[{a}], \"%d\\n\", {a});\n");
        s += &format!("out:\n\treturn ret;\n}}\n\n#define {}_MAX {}\n", a.to_uppercase(), b.len() * 7);
    }
    s.truncate(n);
    s
}

/// Rates, in units of work (characters or steps) per second, of each timed run.
struct Timing {
    wall: Vec<f64>,
    /// Per second of this thread's CPU time: leaves out the time other processes
    /// held the core (but not what they did to the caches). Empty where unknown.
    cpu: Vec<f64>,
}

impl Timing {
    fn median(&self) -> f64 {
        median(&self.wall)
    }

    fn best(&self) -> f64 {
        self.wall.iter().copied().fold(0.0, f64::max)
    }

    /// Both sets of runs, e.g. before and after another row, so that a change in
    /// the machine's load between rows does not favour either side.
    fn merge(mut self, other: Timing) -> Timing {
        self.wall.extend(other.wall);
        self.cpu.extend(other.cpu);
        self
    }

    fn note(&self) -> String {
        let cpu = if self.cpu.len() == self.wall.len() {
            format!(", {:.0} per CPU-second", median(&self.cpu))
        } else {
            String::new()
        };
        format!("{} runs{cpu}", self.wall.len())
    }
}

/// Nanoseconds this thread has run on a CPU (Linux: first field of schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split(' ').next()?.parse().ok()
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Calls `run` (which does `work` units) once to warm up, then until at least
/// `min_time` seconds and 3 runs have passed. The median resists the bursts other
/// processes cause; the best is closer to what an idle machine would see.
fn measure(work: f64, min_time: f64, mut run: impl FnMut()) -> Timing {
    run();
    let (mut rates, mut cpu_rates) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while rates.len() < 3 || start.elapsed() < Duration::from_secs_f64(min_time) {
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        run();
        rates.push(work / t0.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
            cpu_rates.push(work / ((b - a).max(1) as f64 * 1e-9));
        }
    }
    Timing { wall: rates, cpu: cpu_rates }
}

/// chars/s of `Model::trace` over `text`, everything recorded and then dropped, as
/// a request handler would.
fn time_trace(model: &Model, text: &str, min_time: f64) -> Timing {
    let n = text.chars().count() as f64;
    measure(n, min_time, || {
        std::hint::black_box(model.trace(std::hint::black_box(text)));
    })
}

/// Steps/s of layer 0's recurrence alone (`kernel::lstm_layer` into reused
/// buffers): no input projection, decoder or page faults. Each step streams all of
/// W_hh (16·H² bytes) through the core; the GB/s this implies, against the cache
/// that holds W_hh (L2 up to H = 256 here, L3 beyond), is the ceiling of the whole
/// trace.
fn time_recurrence(model: &Model, steps: usize, min_time: f64) -> Timing {
    use cellscope::model::kernel::{lstm_layer, LayerOut, PackedHh};
    let n = model.hidden_size();
    let packed = PackedHh::new(model.weights.layers[0].weight_hh.as_slice().expect("standard layout"), n);
    let mut rng = Rng::new(9);
    let table: Vec<Vec<f32>> = (0..97).map(|_| (0..4 * n).map(|_| rng.range(-1.0, 1.0)).collect()).collect();
    let rows: Vec<&[f32]> = (0..steps).map(|t| &table[(t * 31) % 97][..]).collect();
    let (bias, h0, c0) = (vec![0.0; 4 * n], vec![0.0; n], vec![0.0; n]);
    let mut out = LayerOut::with_capacity(steps, n);
    measure(steps as f64, min_time, || {
        for v in [&mut out.h, &mut out.c, &mut out.i, &mut out.f, &mut out.g, &mut out.o] {
            v.clear();
        }
        lstm_layer(&packed, &rows, &bias, &h0, &c0, &mut out);
    })
}

/// Runs `scripts/bench_torch.py infer` on `weights` and returns (impl, median, best).
fn torch_rows(weights: &Path, chars: usize, min_time: f64) -> Result<Vec<(String, f64, f64)>, String> {
    let have_torch = Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_torch {
        return Err("python3 with torch and safetensors not found".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_torch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["infer", "--threads", "1", "--chars", &chars.to_string(), "--min-time", &min_time.to_string()])
        .arg("--model")
        .arg(weights)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("bench_torch.py failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad JSON line {line:?}: {e}"))?;
        let name = v["impl"].as_str().unwrap_or("?").to_string();
        let median = v["chars_per_s"].as_f64().unwrap_or(f64::NAN);
        let best = v["best_chars_per_s"].as_f64().unwrap_or(f64::NAN);
        rows.push((name, median, best));
    }
    Ok(rows)
}

fn main() {
    // matrixmultiply reads this once, on its first GEMM: set it before any trace.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
    let args = parse_args();
    let vocab = c_vocab();
    let model = match &args.model {
        Some(p) => Model::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        None => random_model(&vocab, 256, 2, 1),
    };
    let text = c_like_text(args.chars, 7);
    let shape = |m: &Model| format!("{}×{}", m.layers(), m.hidden_size());
    println!(
        "cellscope trace benchmark: {} chars of C-like text, one thread, kernel {:?}, load average {}",
        args.chars,
        cellscope::model::kernel::simd(),
        std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| s
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")),
    );
    println!("(other processes on this machine slow every row: compare the ratios within this run, not absolute numbers across runs)\n");

    let ours = time_trace(&model, &text, args.min_time);
    let mut torch: Vec<(String, f64, f64)> = Vec::new();

    if args.torch {
        let tmp = std::env::temp_dir().join(format!("cellscope-bench-{}.safetensors", std::process::id()));
        let result = match &args.model {
            Some(p) => torch_rows(p, args.chars, args.min_time),
            None => {
                model.save(&tmp).expect("write temporary model");
                let r = torch_rows(&tmp, args.chars, args.min_time);
                let _ = std::fs::remove_file(&tmp);
                r
            }
        };
        match result {
            Ok(r) => torch = r,
            Err(e) => println!("PyTorch rows skipped: {e}\n"),
        }
    }
    // Half of our runs before PyTorch's, half after.
    let ours = if torch.is_empty() { ours } else { ours.merge(time_trace(&model, &text, args.min_time)) };
    let ours_median = ours.median();
    // (name, median, best, ratio column, note)
    let mut rows: Vec<(String, f64, f64, Option<f64>, String)> = vec![(
        format!("cellscope {} ({})", shape(&model), model.name),
        ours_median,
        ours.best(),
        Some(1.0),
        format!("full trace + softmax; {}", ours.note()),
    )];
    for (name, median, best) in torch {
        let what = if name == "torch_fused" { "nn.LSTM, records nothing" } else { "records h, c, i, f, g, o" };
        rows.push((format!("{name} {}", shape(&model)), median, best, Some(ours_median / median), what.into()));
    }

    if args.big {
        let big = random_model(&vocab, 512, 2, 2);
        let t = time_trace(&big, &text, args.min_time);
        rows.push((
            format!("cellscope {} (random)", shape(&big)),
            t.median(),
            t.best(),
            None,
            format!("the shipped size; {}", t.note()),
        ));
    }

    if args.kernel {
        let mut models = vec![&model];
        let big;
        if args.big {
            big = random_model(&vocab, 512, 2, 2);
            models.push(&big);
        }
        for m in models {
            let n = m.hidden_size();
            let t = time_recurrence(m, args.chars, args.min_time);
            // Per CPU-second where known: the hardware's rate, not the scheduler's.
            let rate = if t.cpu.is_empty() { t.median() } else { median(&t.cpu) };
            let gb_s = rate * (16 * n * n) as f64 / 1e9;
            rows.push((
                format!("recurrence only (steps/s), H={n}"),
                t.median(),
                t.best(),
                None,
                format!("one layer, reused buffers; W_hh read at {gb_s:.0} GB/s; {}", t.note()),
            ));
        }
    }

    println!("{:<36} {:>10} {:>10} {:>14}  note", "impl", "chars/s", "best", "cellscope/this");
    for (name, median, best, ratio, note) in &rows {
        let ratio = ratio.map_or("".into(), |r| format!("{r:.2}×"));
        println!("{name:<36} {median:>10.0} {best:>10.0} {ratio:>14}  {note}");
    }
    println!("\nchars/s: median over runs, one thread each; cellscope/this: the first row's median over this row's.");

    let torch_fused = rows.iter().find(|r| r.0.starts_with("torch_fused")).map(|r| r.1);
    if args.model.is_none() {
        let met = |yes: bool| if yes { "met" } else { "not met" };
        println!(
            "goal ≥ {GOAL_CHARS_PER_S:.0} chars/s on 2×256 (1.5× the 28k of onnxruntime measured in the issue): {} in this run",
            met(ours_median >= GOAL_CHARS_PER_S)
        );
        // The issue measured torch_fused at 23k, so the goal is 42/23 ≈ 1.83× it:
        // the comparison to make when this machine is slower or busier.
        if let Some(f) = torch_fused {
            let want = GOAL_CHARS_PER_S / ISSUE_TORCH_FUSED;
            println!(
                "as a ratio: cellscope/torch_fused = {:.2}× against the goal's {want:.2}× (42k / the issue's 23k): {}",
                ours_median / f,
                met(ours_median / f >= want)
            );
        }
        let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/linux-2x512.safetensors");
        if ckpt.exists() {
            println!("a trained model is there too: scripts/bench.sh --model {}", ckpt.display());
        }
    }
}
