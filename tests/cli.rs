//! The `cellscope` binary on bad input: every case ends in a clear message on
//! stderr and a non-zero exit (never a panic, an abort or a silently wrong file),
//! and a reader that closes the pipe early ends the command quietly with exit 0.
//! Training cases must fail before the first step: they leave no checkpoint or log.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cellscope::model::{safetensors, Model};

use crate::common::{bracket_text, temp_dir, tiny_model};

fn cellscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cellscope"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary and checks that it failed cleanly with `phrase` in its message.
fn fails(args: &[&str], phrase: &str) -> String {
    let out = cellscope().args(args).output().expect("run cellscope");
    let err = stderr(&out);
    assert!(!out.status.success(), "cellscope {args:?} succeeded; stderr:\n{err}");
    assert_clean(&err, args);
    assert!(err.contains(phrase), "cellscope {args:?}: stderr lacks {phrase:?}:\n{err}");
    err
}

fn assert_clean(err: &str, args: &[&str]) {
    for bad in ["panicked", "memory allocation", "RUST_BACKTRACE", "Broken pipe"] {
        assert!(!err.contains(bad), "cellscope {args:?} printed {bad:?}:\n{err}");
    }
}

/// A directory holding the tiny model (`tiny.safetensors`) and a short C-ish text.
struct ModelDir {
    dir: PathBuf,
}

impl ModelDir {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        tiny_model(None, 3).save(&dir.join("tiny.safetensors")).unwrap();
        std::fs::write(dir.join("code.c"), "int main() {\n\treturn (a + b);\n}\n").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn model(&self) -> String {
        self.path("tiny.safetensors")
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` to exit, killing it and failing the test after `limit`.
fn exits_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {limit:?}: it should print at once and stop when its reader leaves");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns the binary, reads a few bytes of its stdout, closes the pipe, and
/// checks that it stops at once, quietly, with exit 0. The deadline covers the
/// first bytes too: a command that computes everything before printing fails it.
fn stops_quietly_when_the_reader_leaves(args: &[&str]) {
    let mut child =
        cellscope().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn cellscope");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut first = [0u8; 8];
        stdout.read_exact(&mut first).is_ok()
        // `stdout` drops here: the pipe closes.
    });
    let status = exits_within(&mut child, Duration::from_secs(20), &format!("cellscope {args:?}"));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(reader.join().unwrap(), "cellscope {args:?} printed nothing:\n{err}");
    assert_clean(&err, args);
    assert!(status.success(), "cellscope {args:?} exited with {status} on a closed pipe:\n{err}");
}

// ---------------------------------------------------------------- train

/// A training setup: small texts and a tiny, fast configuration whose flags a
/// case can override (`--flag=value` so negative numbers parse as values).
struct TrainCase {
    dir: PathBuf,
    flags: Vec<(&'static str, String)>,
}

impl TrainCase {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        std::fs::write(dir.join("train.txt"), bracket_text(200, 1)).unwrap();
        std::fs::write(dir.join("val.txt"), bracket_text(20, 2)).unwrap();
        let p = |name: &str| dir.join(name).display().to_string();
        let flags = vec![
            ("--train", p("train.txt")),
            ("--val", p("val.txt")),
            ("--out", p("m.safetensors")),
            ("--layers", "1".into()),
            ("--hidden", "8".into()),
            ("--batch", "4".into()),
            ("--seq", "10".into()),
            ("--threads", "1".into()),
            ("--max-steps", "2".into()),
        ];
        Self { dir, flags }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.dir.join(name), bytes).unwrap();
        self.path(name)
    }

    /// The command line with `overrides` replacing (or adding to) the defaults.
    fn args(&self, overrides: &[(&'static str, &str)]) -> Vec<String> {
        let mut flags = self.flags.clone();
        for &(flag, value) in overrides {
            match flags.iter_mut().find(|(f, _)| *f == flag) {
                Some(slot) => slot.1 = value.to_string(),
                None => flags.push((flag, value.to_string())),
            }
        }
        let mut args = vec!["train".to_string()];
        args.extend(flags.into_iter().map(|(f, v)| if v.is_empty() { f.to_string() } else { format!("{f}={v}") }));
        args
    }

    /// Runs with `overrides`, expects a failure naming `phrase`, and checks that the
    /// run wrote nothing: the failure came before the first step.
    fn refused(&self, overrides: &[(&'static str, &str)], phrase: &str) -> String {
        let args = self.args(overrides);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&args, phrase);
        for written in ["m.safetensors", "m.ckpt.safetensors", "m.log.jsonl"] {
            assert!(!self.dir.join(written).exists(), "{args:?} wrote {written} before failing:\n{err}");
        }
        err
    }
}

impl Drop for TrainCase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn train_refuses_a_validation_text_too_short_to_score() {
    let case = TrainCase::new("cli-val");
    let empty = case.write("empty.txt", b"");
    let one = case.write("one.txt", b"(");
    for val in [&empty, &one] {
        let err = case.refused(&[("--val", val)], "validation text");
        assert!(err.contains("at least --seq + 1 = 11"), "the message names the minimum:\n{err}");
    }
}

#[test]
fn train_refuses_a_training_text_too_short_for_one_batch() {
    let case = TrainCase::new("cli-short");
    let short = case.write("short.txt", b"(abc)\n");
    case.refused(&[("--train", &short)], "at least --batch × --seq + 1 = 41");
}

#[test]
fn train_checks_every_numeric_flag_before_any_work() {
    let case = TrainCase::new("cli-flags");
    let cases: &[(&'static str, &str, &str)] = &[
        ("--lr", "nan", "--lr must be a number above 0"),
        ("--lr", "inf", "--lr must be a number above 0"),
        ("--lr", "-1", "--lr must be a number above 0"),
        ("--clip", "-1", "--clip must be a number ≥ 0"),
        ("--dropout", "1", "--dropout must be in [0, 1)"),
        ("--lr-decay", "0", "--lr-decay must be in (0, 1]"),
        ("--decay-after", "nan", "--decay-after must be"),
        ("--epochs", "0", "--epochs must be a number above 0"),
        ("--batch", "0", "--batch must be at least 1"),
        ("--seq", "0", "--seq must be at least 1"),
        ("--threads", "0", "--threads must be at least 1"),
        ("--eval-every", "0", "--eval-every must be at least 1"),
        ("--layers", "17", "--layers must be between 1 and 16"),
        ("--hidden", "0", "--hidden must be between 1 and 4096"),
        ("--max-minutes", "0", "--max-minutes must be a number above 0"),
        ("--max-steps", "0", "--max-steps must be at least 1"),
    ];
    for &(flag, value, phrase) in cases {
        case.refused(&[(flag, value)], phrase);
    }
}

#[test]
fn train_refuses_sizes_that_would_exhaust_memory() {
    let case = TrainCase::new("cli-memory");
    case.refused(&[("--hidden", "100000")], "--hidden must be between 1 and 4096, got 100000");
    let err = case.refused(&[("--hidden", "4096"), ("--batch", "5000"), ("--seq", "5000")], "of memory");
    assert!(
        err.contains("TiB") && err.contains("budget of 16.0 GiB"),
        "the message gives the estimate and the cap:\n{err}"
    );
}

#[test]
fn train_checks_every_path_before_the_first_step() {
    let case = TrainCase::new("cli-paths");
    let missing = case.path("missing.txt");
    let err = case.refused(&[("--test", &missing)], "cannot read");
    assert!(err.contains("missing.txt"), "{err}");
    case.refused(&[("--val", &missing)], "missing.txt");
    let dir = case.dir.display().to_string();
    case.refused(&[("--train", &dir)], "is a directory, not a text file");
    case.refused(&[("--out", &dir)], "is a directory; give the model's file path");
    let orphan = case.path("no-such-dir/m.safetensors");
    case.refused(&[("--out", &orphan)], "does not exist; create it first");
    case.refused(&[("--resume", "")], "--resume given but");
    let latin1 = case.write("latin1.txt", b"caf\xe9 (abc)\n");
    case.refused(&[("--val", &latin1)], "is not UTF-8 text (first bad byte at offset 3)");
    let empty = case.write("empty.txt", b"");
    case.refused(&[("--test", &empty)], "has nothing to score");
}

/// Every tensor of a safetensors file is finite.
fn all_finite(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    safetensors::parse(&bytes).unwrap().tensors.values().all(|t| t.data.iter().all(|x| x.is_finite()))
}

#[test]
fn a_diverging_run_stops_with_advice_and_keeps_the_last_good_files() {
    let case = TrainCase::new("cli-diverge");
    // At this learning rate the first few validations are finite, then the loss blows up.
    let args = case.args(&[("--lr", "12"), ("--eval-every", "1"), ("--max-steps", "200")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = fails(&args, "training diverged at step");
    assert!(err.contains("lower --lr") && err.contains("--clip"), "the message says what to try:\n{err}");
    let (model, ckpt) = (case.dir.join("m.safetensors"), case.dir.join("m.ckpt.safetensors"));
    assert!(model.exists() && ckpt.exists(), "the good model and checkpoint from before the divergence are kept");
    assert!(all_finite(&model), "the best model holds non-finite weights");
    assert!(all_finite(&ckpt), "the checkpoint holds non-finite values");
    let best = Model::load(&model).unwrap();
    assert!(best.train.best_val_loss.is_some_and(f64::is_finite), "{:?}", best.train);

    // Without validation in between, the training loss itself is caught, before the
    // optimiser writes it into the weights.
    let case = TrainCase::new("cli-diverge-train");
    let args = case.args(&[("--lr", "15"), ("--eval-every", "1000"), ("--max-steps", "200")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, "the training loss is");
    assert!(!case.dir.join("m.safetensors").exists(), "no model was good enough to save");
}

// ---------------------------------------------------------------- eval, trace, find-cells, sample

#[test]
fn every_command_names_a_missing_directory_or_non_utf8_file() {
    let d = ModelDir::new("cli-files");
    std::fs::write(d.dir.join("latin1.c"), b"/* caf\xe9 */\n").unwrap();
    let (missing, dir, latin1) = (d.path("missing.c"), d.dir.display().to_string(), d.path("latin1.c"));
    let model = d.model();
    for (file, phrase) in [
        (&missing, "cannot read"),
        (&dir, "is a directory, not a text file"),
        (&latin1, "is not UTF-8 text (first bad byte at offset 6)"),
    ] {
        for command in [
            vec!["eval", "--model", &model, "--file", file],
            vec!["trace", "--model", &model, "--file", file],
            vec!["find-cells", "--model", &model, "--feature", "string", "--file", file],
        ] {
            let err = fails(&command, phrase);
            assert!(err.contains(file.as_str()), "the message names the file:\n{err}");
        }
    }
}

#[test]
fn eval_of_a_text_with_nothing_to_score_fails_and_records_nothing() {
    let d = ModelDir::new("cli-eval");
    let before = std::fs::read(d.model()).unwrap();
    for (name, text) in [("empty.c", ""), ("one.c", "a"), ("unknown.c", "\u{1F600}\u{1F600}\u{1F600}")] {
        std::fs::write(d.dir.join(name), text).unwrap();
        fails(&["eval", "--model", &d.model(), "--file", &d.path(name), "--record", "test"], "has nothing to score");
    }
    assert_eq!(std::fs::read(d.model()).unwrap(), before, "the model file was rewritten");
    fails(&["eval", "--model", &d.model(), "--file", &d.path("code.c"), "--record", "a b"], "--record takes");
    assert_eq!(std::fs::read(d.model()).unwrap(), before, "the model file was rewritten");
}

#[test]
fn sample_refuses_bad_length_and_temperature() {
    let d = ModelDir::new("cli-sample");
    let model = d.model();
    fails(&["sample", "--model", &model, "--length", "100000000"], "above the limit of 10000000 characters");
    fails(&["sample", "--model", &model, "--temperature", "nan"], "--temperature must be a number ≥ 0");
    fails(&["sample", "--model", &model, "--temperature=-1"], "--temperature must be a number ≥ 0");
    fails(&["sample", "--model", &d.path("missing.safetensors")], "missing.safetensors");
}

#[test]
fn sample_streams_and_stops_when_the_reader_leaves() {
    let d = ModelDir::new("cli-sample-pipe");
    // Ten million characters would take minutes: it must stop at the first write after the close.
    stops_quietly_when_the_reader_leaves(&["sample", "--model", &d.model(), "--length", "10000000"]);
}

#[test]
fn sample_gives_the_same_text_for_the_same_seed() {
    let d = ModelDir::new("cli-sample-seed");
    let run = |seed: &str| {
        let out = cellscope()
            .args(["sample", "--model", &d.model(), "--length", "200", "--seed", seed, "--prime", "int "])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The binary prints the prime, then what the library function draws.
    let model = Model::load(Path::new(&d.model())).unwrap();
    let how = cellscope::model::Sampling { temperature: 0.8, top_k: 0, seed: 7 };
    let mut drawn = String::new();
    cellscope::model::sample(&model, "int ", 200, how, &[], |c, _| {
        drawn.push(c);
        true
    });
    assert_eq!(a, format!("int {drawn}\n"));
    let mut first = String::new();
    cellscope::model::sample(&model, "int ", 200, how, &[], |c, _| {
        first.push(c);
        first.chars().count() < 5
    });
    assert_eq!(first, drawn.chars().take(5).collect::<String>(), "stopping early keeps the same characters");
}

#[test]
fn trace_into_a_pipe_is_a_plain_table_and_colour_is_opt_in() {
    let d = ModelDir::new("cli-trace");
    let out = cellscope().args(["trace", "--model", &d.model(), "--text", "a(b)\n", "--cell", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\x1b'), "colour codes written into a pipe:\n{text}");
    let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rows.len(), 5, "one line per character:\n{text}");
    assert!(rows[4].starts_with("4\t'\\n'\t"), "{}", rows[4]);
    let value: f32 = rows[0].split('\t').nth(2).unwrap().parse().unwrap();
    assert!((-1.0..=1.0).contains(&value));

    let out = cellscope().args(["trace", "--model", &d.model(), "--text", "ab", "--color", "always"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("\x1b[48;2;"), "--color always colours");
    fails(&["trace", "--model", &d.model(), "--text", "ab", "--color", "sometimes"], "invalid value 'sometimes'");
    fails(&["trace", "--model", &d.model(), "--text", "ab", "--kind", "q"], "unknown kind");
    fails(&["trace", "--model", &d.model(), "--text", "ab", "--kind", "z"], "kind z does not exist in this lstm model");
    fails(&["trace", "--model", &d.model(), "--text", "ab", "--layer", "2"], "--layer 2 is out of range");
    fails(&["trace", "--model", &d.model(), "--text", "ab", "--cell", "16", "--json"], "--cell 16 is out of range");
    fails(&["trace", "--model", &d.model()], "give the text with --text STR or --file PATH");
}

#[test]
fn trace_stops_quietly_when_the_reader_leaves() {
    let d = ModelDir::new("cli-trace-pipe");
    let long = "int main() { return (a + b); }\n".repeat(4000);
    std::fs::write(d.dir.join("long.c"), long).unwrap();
    let file = d.path("long.c");
    stops_quietly_when_the_reader_leaves(&["trace", "--model", &d.model(), "--file", &file]);
    stops_quietly_when_the_reader_leaves(&["trace", "--model", &d.model(), "--file", &file, "--json"]);
}

#[test]
fn trace_json_keeps_only_the_layer_kind_and_cell_asked_for() {
    let d = ModelDir::new("cli-trace-json");
    let (model, file) = (d.model(), d.path("code.c"));
    let keys = |layer: &serde_json::Value| {
        let mut keys: Vec<String> = layer.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let json = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["trace", "--model", &model, "--file", &file, "--json"];
        args.extend_from_slice(extra);
        let out = cellscope().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = json(&[]);
    let layers = all["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "every layer by default");
    assert_eq!(keys(&layers[0]), ["c", "h", "layer"], "h and c by default, as the API");
    assert_eq!(layers[0]["h"][0].as_array().unwrap().len(), 16, "every cell by default");

    let one = json(&["--layer", "1", "--kind", "f", "--cell", "3"]);
    let layers = one["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["layer"], 1);
    assert_eq!(keys(&layers[0]), ["f", "layer"]);
    let rows = layers[0]["f"].as_array().unwrap();
    assert_eq!(rows.len(), one["length"].as_u64().unwrap() as usize);
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 1), "only cell 3");
    assert_eq!(one["cells"], serde_json::json!([3]));
}

#[test]
fn explain_prints_the_step_and_the_gradient_and_refuses_bad_positions() {
    let d = ModelDir::new("explain");
    let (m, f) = (d.model(), d.path("code.c"));
    let out = cellscope()
        .args(["explain", "--model", &m, "--file", &f, "--position", "20", "--layer", "1", "--cell", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("c = f·c₋₁ + i·g = "), "{text}");
    assert!(text.contains("stays above 1% of its peak up to"), "{text}");
    fails(&["explain", "--model", &m, "--file", &f, "--position", "9999"], "past the text's end");
    fails(&["explain", "--model", &m, "--file", &f, "--position", "1", "--cell", "999"], "--cell 999 is out of range");
    fails(&["explain", "--model", &m, "--position", "1"], "give the text");
    fails(&["trace", "--model", &m, "--file", &f, "--kind", "erase"], "use one of h, c, i, f, g, o, write, keep");
}
