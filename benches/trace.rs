//! Throughput of `Model::trace` (the hot path of every page view and API call),
//! side by side with PyTorch on the same weights in the same run.
//!
//! ```text
//! scripts/bench.sh                          # = MATMUL_NUM_THREADS=1 cargo bench --bench trace
//! scripts/bench.sh --model m.safetensors    # a trained model instead of the random 2×256
//! scripts/bench.sh --no-torch --no-512 --kernel --min-time 1 --chars 20000
//! scripts/bench.sh --crossover --no-torch   # 1 against 2 threads by text length
//! ```
//!
//! For a random 2×256 model (or `--model`) and a random 2×512 one, the size we
//! ship (unless `--no-512`): cellscope on one thread and pipelined on two (layer 1
//! a block behind layer 0, see `src/model/lstm.rs`); the same weights through
//! `scripts/bench_torch.py infer` when `python3 -c 'import torch, safetensors'`
//! works: PyTorch's fused `nn.LSTM` (records nothing) on 1 and 2 threads, and a
//! loop on one thread that records the gates as we do. Every row is run several
//! times (at least 3, for at least `--min-time` seconds); cellscope's rows half
//! before PyTorch's and half after, so a change in the machine's load between rows
//! favours neither. Other work on the machine (a build, a training job) slows every
//! row: compare the ratios within one run, not numbers across runs. With
//! `--kernel`, one layer's recurrence alone, and the ceiling the cache bandwidth
//! puts on a trace (`bandwidth_ceiling`); with `--crossover`, 1 against 2
//! threads over a range of text lengths (where `PIPELINE_MIN_STEPS` comes from).

mod common;

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
    crossover: bool,
}

const USAGE: &str = "options: --model PATH (a cellscope .safetensors instead of the random 2×256), \
--chars N (text length, default 20000), --min-time S (seconds per row, default 2), \
--no-torch, --no-512 (skip the random 2×512 rows), --kernel (also time one layer's recurrence alone), \
--crossover (also time 1 against 2 threads over text lengths)";

fn parse_args() -> Args {
    let mut a =
        Args { model: None, chars: 20_000, min_time: 2.0, torch: true, big: true, kernel: false, crossover: false };
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
            "--crossover" => a.crossover = true,
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
    Model::new(format!("random-{layers}x{hidden}"), vocab.clone(), w, Default::default()).expect("consistent")
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
    /// Per second of CPU time, all of this process's threads together: leaves out
    /// the time other processes held the cores (but not what they did to the
    /// caches), and shows what a second thread costs. Empty where unknown.
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

/// Nanoseconds of CPU time this process's threads have used (Linux:
/// `CLOCK_PROCESS_CPUTIME_ID`, which counts threads that have already ended).
fn process_cpu_ns() -> Option<u64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on 64-bit Linux).
    let ok = cfg!(all(target_os = "linux", target_pointer_width = "64"))
        && unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| ts.sec as u64 * 1_000_000_000 + ts.nsec as u64)
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
        let cpu0 = process_cpu_ns();
        let t0 = Instant::now();
        run();
        rates.push(work / t0.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu0, process_cpu_ns()) {
            cpu_rates.push(work / ((b - a).max(1) as f64 * 1e-9));
        }
    }
    Timing { wall: rates, cpu: cpu_rates }
}

/// chars/s of a trace of `text` on `threads` threads, everything recorded and then
/// dropped, as a request handler would.
fn time_trace(model: &Model, text: &str, threads: usize, min_time: f64) -> Timing {
    let n = text.chars().count() as f64;
    measure(n, min_time, || {
        let enc = model.vocab.encode(std::hint::black_box(text));
        std::hint::black_box(model.trace_clamped_with_threads(enc, &model.zero_state(), &[], threads));
    })
}

/// chars/s of the exact trace on two threads with every layer's units split
/// between them (`Model::trace_units_shared`), against the pipeline's `time_trace`.
fn time_trace_units(model: &Model, text: &str, min_time: f64) -> Timing {
    let n = text.chars().count() as f64;
    measure(n, min_time, || {
        let enc = model.vocab.encode(std::hint::black_box(text));
        std::hint::black_box(model.trace_units_shared(enc, &model.zero_state(), &[]));
    })
}

/// chars/s of the page view's int8 trace (`Precision::Int8`) on `threads` threads.
fn time_trace_int8(model: &Model, text: &str, threads: usize, min_time: f64) -> Timing {
    let n = text.chars().count() as f64;
    measure(n, min_time, || {
        let enc = model.vocab.encode(std::hint::black_box(text));
        std::hint::black_box(model.trace_int8_with_threads(enc, &model.zero_state(), threads));
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
    let packed = PackedHh::new(model.weights().layers[0].weight_hh.as_slice().expect("standard layout"), n);
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

/// Runs `scripts/bench_torch.py infer --threads THREADS --impls IMPLS` on `weights`
/// and returns one row per method.
fn torch_rows(
    weights: &Path,
    shape: &str,
    threads: usize,
    impls: &str,
    chars: usize,
    min_time: f64,
) -> Result<Vec<Row>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_torch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["infer", "--threads", &threads.to_string(), "--impls", impls])
        .args(["--chars", &chars.to_string(), "--min-time", &min_time.to_string()])
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
        let name = v["impl"].as_str().unwrap_or("?");
        let what = if name == "torch_fused" { "nn.LSTM, records nothing" } else { "records h, c, i, f, g, o" };
        rows.push(Row {
            name: format!("{name} {shape}, {threads} thread{}", if threads == 1 { "" } else { "s" }),
            median: v["chars_per_s"].as_f64().unwrap_or(f64::NAN),
            best: v["best_chars_per_s"].as_f64().unwrap_or(f64::NAN),
            torch: true,
            note: format!("{what}; {} runs, torch {}", v["runs"], v["torch"].as_str().unwrap_or("?")),
        });
    }
    Ok(rows)
}

fn have_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// One line of the table.
struct Row {
    name: String,
    /// chars/s (steps/s for the recurrence rows): median and best run.
    median: f64,
    best: f64,
    torch: bool,
    note: String,
}

/// The rows of one model: cellscope on 1 and 2 threads, half their runs before
/// PyTorch's and half after; PyTorch fused on 1 and 2 threads, the recording loop
/// on 1.
fn shape_rows(model: &Model, path: Option<&Path>, text: &str, args: &Args, torch: &mut Result<(), String>) -> Vec<Row> {
    let chars = text.chars().count();
    let time = |threads| time_trace(model, text, threads, args.min_time / 2.0);
    let time8 = |threads| time_trace_int8(model, text, threads, args.min_time / 2.0);
    let time_units = || time_trace_units(model, text, args.min_time / 2.0);
    let shape = format!("{}×{}", model.layers(), model.hidden_size());
    let (mut one, mut two, mut units) = (time(1), time(2), time_units());
    let (mut one8, mut two8) = (time8(1), time8(2));
    let mut torch_rows_here = Vec::new();
    if torch.is_ok() {
        let tmp = std::env::temp_dir().join(format!("cellscope-bench-{}.safetensors", std::process::id()));
        let weights = match path {
            Some(p) => p,
            None => {
                model.save(&tmp).expect("write temporary model");
                &tmp
            }
        };
        for (threads, impls) in [(1, "fused,loop"), (2, "fused")] {
            match torch_rows(weights, &shape, threads, impls, chars, args.min_time) {
                Ok(rows) => torch_rows_here.extend(rows),
                Err(e) => *torch = Err(e),
            }
        }
        let _ = std::fs::remove_file(&tmp);
        one = one.merge(time(1));
        two = two.merge(time(2));
        units = units.merge(time_units());
        one8 = one8.merge(time8(1));
        two8 = two8.merge(time8(2));
    }
    let mut rows = vec![
        Row {
            name: format!("cellscope {shape}, 1 thread"),
            median: one.median(),
            best: one.best(),
            torch: false,
            note: format!("full trace + softmax; {}", one.note()),
        },
        Row {
            name: format!("cellscope {shape}, 2 threads"),
            median: two.median(),
            best: two.best(),
            torch: false,
            note: format!("pipelined, layer 1 a block behind layer 0; {}", two.note()),
        },
        Row {
            name: format!("cellscope {shape}, 2 threads, units split"),
            median: units.median(),
            best: units.best(),
            torch: false,
            note: format!("each layer's units split between the threads, a meeting per step; {}", units.note()),
        },
        Row {
            name: format!("cellscope int8 {shape}, 1 thread"),
            median: one8.median(),
            best: one8.best(),
            torch: false,
            note: format!("the page view's trace (int8 W_hh, W_ih above layer 0); {}", one8.note()),
        },
        Row {
            name: format!("cellscope int8 {shape}, 2 threads"),
            median: two8.median(),
            best: two8.best(),
            torch: false,
            note: format!("int8, pipelined in 16-step chunks; {}", two8.note()),
        },
    ];
    rows.extend(torch_rows_here);
    rows
}

/// 1 against 2 threads over text lengths around one pipeline block.
fn crossover(models: &[&Model], min_time: f64) {
    println!("crossover: chars/s on 1 and 2 threads by text length, median (best); ratio = 2 threads / 1 thread");
    for m in models {
        for len in [250, 500, 1000, 1500, 2000, 3000, 5000, 10_000] {
            let text = c_like_text(len, 7);
            let one = time_trace(m, &text, 1, min_time);
            let two = time_trace(m, &text, 2, min_time);
            let one = one.merge(time_trace(m, &text, 1, min_time));
            let two = two.merge(time_trace(m, &text, 2, min_time));
            println!(
                "  {}×{} {len:>6} chars: 1 thread {:>6.0} ({:>6.0}), 2 threads {:>6.0} ({:>6.0}): {:.2}× ({:.2}×)",
                m.layers(),
                m.hidden_size(),
                one.median(),
                one.best(),
                two.median(),
                two.best(),
                two.median() / one.median(),
                two.best() / one.best()
            );
        }
    }
    println!();
}

/// GB/s at which each of `threads` cores reads its own `bytes`-long buffer over
/// and over (all at once): the bandwidth of the cache that holds a W_hh of that
/// size, the ceiling of a recurrence that streams it every step.
fn stream_gb_s(bytes: usize, threads: usize, min_time: f64) -> f64 {
    // 32 independent lanes: the compiler keeps them in vector registers, as wide
    // as the CPU has (the kernels' loads are AVX2 or AVX-512 too).
    #[inline(always)]
    fn pass(buf: &[u32], acc: &mut [u32; 32]) {
        for chunk in buf.chunks_exact(32) {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a = a.wrapping_add(v);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn pass_avx2(buf: &[u32], acc: &mut [u32; 32]) {
        pass(buf, acc)
    }
    let read = || {
        let buf: Vec<u32> = (0..bytes / 4).map(|i| i as u32).collect();
        let (start, mut passes) = (Instant::now(), 0usize);
        let mut acc = [0u32; 32];
        while passes < 3 || start.elapsed().as_secs_f64() < min_time {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { pass_avx2(&buf, &mut acc) };
                passes += 1;
                continue;
            }
            pass(&buf, &mut acc);
            passes += 1;
        }
        std::hint::black_box(acc);
        (passes * bytes) as f64 / start.elapsed().as_secs_f64() / 1e9
    };
    // The best of three tries: a ceiling, so the try least slowed by anything
    // else on the machine.
    (0..3)
        .map(|_| {
            let rates: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(read)).collect();
                handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
            });
            rates.iter().sum::<f64>() / threads as f64
        })
        .fold(0.0, f64::max)
}

/// What the cache bandwidth allows at 2 × `n`: each layer's step streams 16·H²
/// bytes of f32 W_hh (4·H² of int8), one layer per core on two threads, so no
/// trace can pass bandwidth / bytes steps per second whatever else it does.
fn bandwidth_ceiling(n: usize, torch_best: f64, min_time: f64) {
    let f32_bytes = 16 * n * n;
    let one = stream_gb_s(f32_bytes, 1, min_time);
    let two = stream_gb_s(f32_bytes, 2, min_time);
    let two8 = stream_gb_s(f32_bytes / 4, 2, min_time);
    let ceiling = two * 1e9 / f32_bytes as f64;
    println!(
        "bandwidth ceiling at 2×{n}: a layer's step reads {} MiB of f32 W_hh ({} MiB as int8):",
        f32_bytes >> 20,
        (f32_bytes / 4) as f64 / 1048576.0
    );
    println!("  one core streams {} MiB at {one:.0} GB/s; each of two cores at once {two:.0} GB/s ({two8:.0} GB/s for {} MiB)", f32_bytes >> 20, (f32_bytes / 4) as f64 / 1048576.0);
    println!("  so the exact trace on two threads (a layer per core) cannot pass {ceiling:.0} chars/s, the weights alone, nothing else");
    if torch_best.is_finite() {
        println!(
            "  against PyTorch's best here ({torch_best:.0} chars/s): the ceiling is {:.2}×; 1.8× would need {:.0} chars/s",
            ceiling / torch_best,
            1.8 * torch_best
        );
    }
    println!();
}

/// The int8 trace against the exact one on the model's reference text
/// (`<model>.reference.txt`), if there is one.
fn int8_deviation(model: &Model, path: &Path) {
    let reference = path.with_extension("reference.txt");
    let Ok(text) = std::fs::read_to_string(&reference) else { return };
    let Some(layers) = cellscope::finder::precision::int8_deviation(model, &text) else { return };
    println!("int8 trace against the exact trace on {} ({} chars):", reference.display(), text.chars().count());
    for l in layers {
        println!(
            "  layer {}: |Δh| max {:.4} mean {:.5} ({:.1}% over 1/254); |Δtanh c| max {:.4} mean {:.5}; |Δc| max {:.3} mean {:.4}; top-20 contexts at the same place {:.1}%",
            l.layer,
            l.h_max,
            l.h_mean,
            100.0 * l.h_over_step,
            l.tanh_c_max,
            l.tanh_c_mean,
            l.c_max,
            l.c_mean,
            100.0 * l.contexts_same
        );
    }
    println!();
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
    let big = random_model(&vocab, 512, 2, 2);
    let text = c_like_text(args.chars, 7);
    println!("cellscope trace benchmark: {} chars of C-like text", args.chars);
    println!(
        "CPU: {}; kernel {:?}; MATMUL_NUM_THREADS={}; load average {}",
        common::cpu_description(),
        cellscope::model::kernel::simd(),
        std::env::var("MATMUL_NUM_THREADS").unwrap_or_default(),
        std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| s
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")),
    );
    println!("(other processes on this machine slow every row: compare the ratios within this run, not absolute numbers across runs)\n");

    let mut models = vec![&model];
    if args.big {
        models.push(&big);
    }
    if args.crossover {
        crossover(&models, args.min_time / 4.0);
    }

    let mut torch = if !args.torch {
        Err("--no-torch".to_string())
    } else if have_torch() {
        Ok(())
    } else {
        Err("python3 with torch and safetensors not found".to_string())
    };
    let mut shapes: Vec<Vec<Row>> = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let path = if i == 0 { args.model.as_deref() } else { None };
        shapes.push(shape_rows(m, path, &text, &args, &mut torch));
    }
    if let Err(e) = &torch {
        println!("PyTorch rows skipped: {e}\n");
    }

    if args.kernel {
        let mut rows = Vec::new();
        for m in &models {
            let n = m.hidden_size();
            let t = time_recurrence(m, args.chars, args.min_time);
            // Per CPU-second where known: the hardware's rate, not the scheduler's.
            let rate = if t.cpu.is_empty() { t.median() } else { median(&t.cpu) };
            let gb_s = rate * (16 * n * n) as f64 / 1e9;
            rows.push(Row {
                name: format!("recurrence only (steps/s), H={n}"),
                median: t.median(),
                best: t.best(),
                torch: false,
                note: format!("one layer, reused buffers; W_hh read at {gb_s:.0} GB/s; {}", t.note()),
            });
        }
        shapes.push(rows);
    }

    println!("{:<40} {:>9} {:>9} {:>11} {:>9}  note", "impl", "chars/s", "best", "/torch best", "best/best");
    for rows in &shapes {
        // PyTorch's fastest median and fastest run for this model, whichever rows.
        let torch = rows.iter().filter(|r| r.torch);
        let torch_median = torch.clone().map(|r| r.median).fold(f64::NAN, f64::max);
        let torch_best = torch.map(|r| r.best).fold(f64::NAN, f64::max);
        for r in rows {
            let (ratio, best_ratio) = if torch_best.is_nan() {
                (String::new(), String::new())
            } else {
                (format!("{:.2}×", r.median / torch_median), format!("{:.2}×", r.best / torch_best))
            };
            println!("{:<40} {:>9.0} {:>9.0} {ratio:>11} {best_ratio:>9}  {}", r.name, r.median, r.best, r.note);
        }
        println!();
    }
    println!(
        "chars/s: median over runs; best: the fastest run; /torch best: this row's median over PyTorch's best median \
for the same model; best/best: this row's best run over PyTorch's best run.\n"
    );
    if args.kernel {
        for (m, rows) in models.iter().zip(&shapes) {
            let torch_best = rows.iter().filter(|r| r.torch).map(|r| r.median).fold(f64::NAN, f64::max);
            bandwidth_ceiling(m.hidden_size(), torch_best, args.min_time / 6.0);
        }
    }

    if let Some(path) = &args.model {
        int8_deviation(&model, path);
    }

    let ours = &shapes[0][0];
    let torch_fused = shapes[0].iter().find(|r| r.name.starts_with("torch_fused") && r.name.ends_with("1 thread"));
    if args.model.is_none() {
        let met = |yes: bool| if yes { "met" } else { "not met" };
        println!(
            "goal ≥ {GOAL_CHARS_PER_S:.0} chars/s on 2×256, one thread (1.5× the 28k of onnxruntime measured in the issue): {} in this run",
            met(ours.median >= GOAL_CHARS_PER_S)
        );
        // The issue measured torch_fused at 23k, so the goal is 42/23 ≈ 1.83× it:
        // the comparison to make when this machine is slower or busier.
        if let Some(f) = torch_fused {
            let want = GOAL_CHARS_PER_S / ISSUE_TORCH_FUSED;
            println!(
                "as a ratio: cellscope/torch_fused on one thread = {:.2}× against the goal's {want:.2}× (42k / the issue's 23k): {}",
                ours.median / f.median,
                met(ours.median / f.median >= want)
            );
        }
        let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/linux-2x512.safetensors");
        if ckpt.exists() {
            println!("a trained model is there too: scripts/bench.sh --model {}", ckpt.display());
        }
    }
}
