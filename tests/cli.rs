//! The `nnc` binary as a user runs it: exit codes, streams and help.

mod common;

use common::nnc;
use std::path::PathBuf;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file named `name` holding `bytes`, in a folder that lives as long
/// as the first value.
fn temp_file(name: &str, bytes: &[u8]) -> (common::TempDir, PathBuf) {
    let dir = common::temp_dir(name);
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("temp file");
    (dir, p)
}

#[test]
fn check_accepts_a_valid_file() {
    let o = nnc(&["check", "examples/neuron.nn"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn check_reports_the_matmul_shapes_at_the_operator() {
    let o = nnc(&["--color", "never", "check", "tests/ui/fail/matmul.nn"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("[B, 784]") && err.contains("[10, 128]"),
        "{err}"
    );
    assert!(
        err.contains("matmul.nn:4:21"),
        "the primary label points at `@`: {err}"
    );
}

#[test]
fn check_reports_three_independent_errors() {
    let o = nnc(&["--color", "never", "check", "tests/ui/fail/three_errors.nn"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.matches("error[").count(), 3, "{err}");
    assert!(err.contains("aborting due to 3 previous errors"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let o = nnc(&["check", "no/such/file.nn"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read `no/such/file.nn`: no such file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_non_utf8_file_is_an_error() {
    let (_dir, p) = temp_file("latin1.nn", b"let x = 1\n// caf\xe9\n");
    let o = nnc(&["check", p.to_str().expect("utf-8 temp path")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("is not valid UTF-8") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn a_directory_is_an_error() {
    let o = nnc(&["check", "examples"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read `examples`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_with_2() {
    assert_eq!(nnc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(nnc(&["run"]).status.code(), Some(2));
    assert_eq!(
        nnc(&["run", "examples/neuron.nn", "--format", "xml"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["--help"],
        vec!["check", "--help"],
        vec!["compile", "--help"],
        vec!["run", "--help"],
        vec!["export", "--help"],
    ] {
        let o = nnc(&cmd);
        assert_eq!(o.status.code(), Some(0));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("Example"),
            "`nnc {}` shows no example:\n{out}",
            cmd.join(" ")
        );
    }
}

#[test]
fn compile_emits_each_stage() {
    let ast = nnc(&["compile", "examples/neuron.nn", "--emit", "ast"]);
    assert_eq!(ast.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ast.stdout).contains("let z = (sum((w * x)) + b)"));
    let ir = nnc(&["compile", "examples/neuron.nn", "--emit", "ir"]);
    assert_eq!(ir.status.code(), Some(0));
    let text = String::from_utf8_lossy(&ir.stdout);
    assert!(
        text.contains("param w: f32[3]") && text.contains("output z = %"),
        "{text}"
    );
}

#[test]
fn compile_errors_print_nothing_on_stdout() {
    let o = nnc(&["compile", "tests/ui/fail/broadcast.nn", "--emit", "ir"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
}

#[test]
fn run_prints_text_by_default() {
    let o = nnc(&["run", "examples/losses.nn"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("mse = 0.025")), "{out}");
}

#[test]
fn run_warns_about_non_finite_outputs() {
    let (_dir, p) = temp_file("nan.nn", b"output y = log([0.0, -1.0])\n");
    let o = nnc(&[
        "--color",
        "never",
        "run",
        p.to_str().expect("utf-8 temp path"),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(
        json["outputs"]["y"]["data"],
        serde_json::json!([null, null])
    );
}

#[test]
fn flush_subnormals_zeroes_the_jits_subnormal_results_only() {
    // 1e-30 · 1e-10 is subnormal (1e-40): kept by default, 0 with the
    // flag on the JIT; the interpreter keeps it either way.
    let (_dir, p) = temp_file(
        "sub.nn",
        b"param x: [2] = [1e-30, 2.0]\noutput y = x * 1e-10\n",
    );
    let path = p.to_str().expect("utf-8 temp path");
    let y = |extra: &[&str]| {
        let mut args = vec!["run", path, "--format", "json"];
        args.extend(extra);
        let o = nnc(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
        json["outputs"]["y"]["data"].clone()
    };
    assert_eq!(y(&["--backend", "jit"]), serde_json::json!([1e-40, 2e-10]));
    assert_eq!(
        y(&["--backend", "jit", "--flush-subnormals"]),
        serde_json::json!([0, 2e-10])
    );
    assert_eq!(
        y(&["--backend", "interp", "--flush-subnormals"]),
        serde_json::json!([1e-40, 2e-10])
    );
}

#[test]
fn training_flushes_subnormals_unless_told_to_keep_them() {
    // The loss, 1e-30 · 1e-10, is subnormal (1e-40): training on the JIT
    // flushes it to 0 by default and keeps it with `--keep-subnormals`
    // (or NNC_FLUSH_SUBNORMALS=0); the interpreter keeps it either way.
    let xor = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/xor.csv");
    let text = format!(
        "input x: [B, 2]\ninput t: [B]\nparam w: [1] = [1e-30]\n\
         train {{\n  data = csv({:?}, label = \"label\")\n\
         loss = sum(w) * 1e-10 + mean(x) * 0 + mean(t) * 0\n\
         optimizer = sgd(lr = 0.1)\n  batch = 4\n  epochs = 1\n  split = 0\n}}\n",
        xor.to_str().expect("UTF-8 path")
    );
    let (dir, p) = temp_file("sub_train.nn", text.as_bytes());
    let log = dir.join("log.jsonl");
    let loss = |extra: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"));
        cmd.args([
            "train",
            p.to_str().expect("UTF-8 path"),
            "--log",
            log.to_str().expect("UTF-8 path"),
        ])
        .args(extra);
        cmd.env_remove("NNC_FLUSH_SUBNORMALS");
        if let Some(v) = env {
            cmd.env("NNC_FLUSH_SUBNORMALS", v);
        }
        let o = cmd.output().expect("nnc runs");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let line = std::fs::read_to_string(&log).expect("the log");
        let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        json["train_loss"].as_f64().expect("a loss")
    };
    // The f32 nearest 1e-40, a subnormal.
    let kept = f64::from(1e-40f32);
    assert_eq!(loss(&[], None), 0.0);
    assert_eq!(loss(&["--keep-subnormals"], None), kept);
    assert_eq!(loss(&[], Some("0")), kept);
    assert_eq!(loss(&["--backend", "interp"], None), kept);
    assert_eq!(
        loss(&["--keep-subnormals", "--backend", "interp"], None),
        kept
    );
}

#[test]
fn run_of_a_file_with_an_input_missing_its_value_fails() {
    let o = nnc(&["--color", "never", "run", "tests/ui/fail/missing_input.nn"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("input `x` has no value"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_dimension_too_large_for_any_tensor_is_a_usage_error() {
    let o = nnc(&[
        "bench",
        "examples/bench/matmul.nn",
        "--dim",
        "N=18446744073709551615",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("2^48 elements"), "{}", stderr(&o));
}

/// `nnc bench examples/bench/matmul.nn --format json` with `args`: its
/// one JSON object (the run must succeed).
fn bench_matmul(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "examples/bench/matmul.nn", "--format", "json"];
    all.extend_from_slice(args);
    let o = nnc(&all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn bench_reports_the_planned_buffers_and_the_peak_resident_memory() {
    let v = bench_matmul(&["--dim", "N=64", "--runs", "2"]);
    // a, b and c: three 64×64 float buffers, and nothing else.
    assert_eq!(v["planned_bytes"], 3 * 64 * 64 * 4, "{v}");
    // Compilation and drawing the parameters are timed apart.
    for key in ["compile_ms", "init_ms"] {
        assert!(v[key].as_f64().is_some_and(|t| t >= 0.0), "{key}: {v}");
    }
    let rss = v["peak_rss_bytes"].as_u64().expect("a peak on Linux");
    assert!(rss > 3 * 64 * 64 * 4, "{v}");
    // The interpreter plans no buffers.
    let v = bench_matmul(&["--dim", "N=8", "--runs", "1", "--backend", "interp"]);
    assert!(v["planned_bytes"].is_null(), "{v}");
}

#[test]
fn bench_times_runs_until_the_minimum_time_and_refuses_a_bad_one() {
    // Past the one run asked for, until 50 ms of runs (or 100000 runs).
    let v = bench_matmul(&["--dim", "N=8", "--runs", "1", "--min-time", "0.05"]);
    let runs = v["runs"].as_u64().expect("runs");
    assert!(runs > 1 && runs <= 100_000, "{v}");
    let v = bench_matmul(&["--dim", "N=8", "--runs", "1", "--min-time", "0"]);
    assert_eq!(v["runs"], 1, "{v}");
    for bad in ["-1", "inf", "nan", "soon"] {
        let o = nnc(&[
            "bench",
            "examples/bench/matmul.nn",
            &format!("--min-time={bad}"),
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("seconds"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn identical_layers_share_their_compiled_kernels() {
    // Eight encoder blocks of one shape, each with its own weights: the
    // JIT compiles each distinct kernel once, so the stack has the one
    // block's kernels (the blocks differ only in their buffers).
    let functions = |file: &str| {
        let o = nnc(&["compile", file, "--emit", "clif", "--dim", "B=16"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("function"))
            .count()
    };
    let one = functions("examples/bench/transformer_stack_1.nn");
    let eight = functions("examples/bench/transformer_stack_8.nn");
    assert!(one > 20, "{one} kernels in one block");
    assert!(
        eight <= one + 2,
        "{eight} kernels for 8 blocks, {one} for 1"
    );
}

#[test]
fn emit_clif_gives_each_compiled_kernel_once_under_its_name_loop_bodies_included() {
    // The kernels' IR is built on the pool as they compile, a loop body's
    // in a program of its own: each text must still come out under its
    // kernel's name, one per kernel the programs compiled (as the plan log
    // counts them, bodies included).
    let o = common::nnc_logging(
        &["compile", "examples/lstm_sine.nn", "--emit", "clif"],
        Some("plan"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let compiled: usize = stderr(&o)
        .lines()
        .filter(|l| l.contains("loop kernels compiled"))
        .filter_map(|l| {
            l.split("; ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let functions = lines.iter().filter(|l| l.starts_with("function")).count();
    let named: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("; k"))
        .collect();
    assert!(functions > 3, "{functions} functions:\n{text}");
    assert_eq!(functions, compiled, "{}", stderr(&o));
    assert_eq!(named.len(), functions, "{text}");
    for i in named {
        assert!(
            lines[i + 1].starts_with("function"),
            "{}: {}",
            lines[i],
            lines[i + 1]
        );
    }
}

#[test]
fn nnc_log_compile_times_every_stage_of_a_training_steps_compilation() {
    let bench = |log: Option<&str>| {
        let args = [
            "bench",
            "examples/digits_mlp.nn",
            "--runs",
            "1",
            "--warmup",
            "0",
        ];
        common::nnc_logging(&args, log)
    };
    let o = bench(Some("compile"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let stages = [
        "parse",
        "check and lower",
        "step graphs",
        "scan-residual",
        "cse",
        "licm",
        "scan-lift",
        "fusion",
        "schedule",
        "code generation",
    ];
    for stage in stages {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("[compile] {stage}: ")))
            .unwrap_or_else(|| panic!("no time for {stage}: {err}"));
        // `T ms`, then on Linux `, N page faults`.
        let (ms, faults) = match line.rsplit(": ").next().map(|t| t.split_once(", ")) {
            Some(Some((ms, faults))) => (Some(ms), Some(faults)),
            Some(None) => (line.rsplit(": ").next(), None),
            None => (None, None),
        };
        let ms = ms.and_then(|t| t.strip_suffix(" ms"));
        assert!(
            ms.is_some_and(|t| t.parse::<f64>().is_ok_and(|v| v >= 0.0)),
            "{line}"
        );
        let faults = faults.and_then(|t| {
            t.strip_suffix(" page faults")
                .or_else(|| t.strip_suffix(" page fault"))
        });
        assert_eq!(
            faults.is_some_and(|n| n.parse::<u64>().is_ok()),
            cfg!(target_os = "linux"),
            "{line}"
        );
    }
    // Without the topic, nothing of it.
    let quiet = bench(None);
    assert!(!stderr(&quiet).contains("[compile]"), "{}", stderr(&quiet));
}

#[test]
fn nnc_log_profile_sums_the_time_of_each_kind_of_step() {
    let o = common::nnc_logging(
        &["bench", "examples/digits_mlp.nn", "--runs", "2"],
        Some("profile"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    // The training step's program: its step count, and the kinds that
    // account for every one of them (gemm and loop at least: the MLP's
    // products and its elementwise work).
    let head = err
        .lines()
        .find(|l| l.starts_with("[profile] ") && l.contains(" steps; the slowest:"))
        .unwrap_or_else(|| panic!("no profile: {err}"));
    let steps: usize = head
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{head}"));
    let kinds = err
        .lines()
        .find(|l| l.starts_with("[profile] by kind: "))
        .unwrap_or_else(|| panic!("no time by kind: {err}"));
    let mut counted = 0;
    let mut names = Vec::new();
    for part in kinds["[profile] by kind: ".len()..].split(", ") {
        // "gemm 0.123 ms in 5"
        let words: Vec<&str> = part.split(' ').collect();
        assert_eq!(words.len(), 5, "{part}");
        assert!(words[1].parse::<f64>().is_ok_and(|t| t >= 0.0), "{part}");
        counted += words[4]
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("{part}"));
        names.push(words[0]);
    }
    assert_eq!(counted, steps, "{kinds} against {head}");
    assert!(
        names.contains(&"gemm") && names.contains(&"loop"),
        "{kinds}"
    );
}

#[test]
fn a_run_beyond_the_memory_budget_is_a_diagnostic_not_an_abort() {
    // 10^10 floats: 37 GiB, over a 1 GiB budget on either backend.
    let (_dir, p) = temp_file("huge.nn", b"output y = ones([100000, 100000]) * 2\n");
    let file = p.to_str().expect("a UTF-8 path");
    for backend in ["interp", "jit"] {
        let o = nnc(&[
            "--color",
            "never",
            "--max-memory",
            "1G",
            "run",
            file,
            "--backend",
            backend,
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {err}");
        // The interpreter keeps every value (3 × 37.3 GiB); the JIT at
        // least the product's.
        assert!(
            err.contains("error[E0303]: this run needs "),
            "{backend}: {err}"
        );
        assert!(
            err.contains(" GiB of memory; the limit is 1.0 GiB (--max-memory)"),
            "{backend}: {err}"
        );
        assert!(
            err.contains("the largest tensor, [100000, 100000]"),
            "{backend}: {err}"
        );
    }
    // The bench's made-up inputs are held to the budget too.
    let o = nnc(&[
        "--max-memory",
        "1G",
        "bench",
        "examples/bench/matmul.nn",
        "--dim",
        "N=1000000",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("E0303"), "{}", stderr(&o));
}

#[test]
fn an_error_on_a_megabyte_line_prints_a_few_lines_not_the_line() {
    let line = format!("output y = {} @\n", "1.0 + ".repeat(200_000));
    let (_dir, p) = temp_file("long.nn", line.as_bytes());
    let o = nnc(&["--color", "never", "check", p.to_str().expect("UTF-8 path")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{}", &err[..err.len().min(2000)]);
    assert!(err.len() < 1000, "{} bytes of diagnostics", err.len());
    assert!(err.contains("long.nn:1:1200013: unexpected `@`"), "{err}");
    assert!(err.contains("is not shown"), "{err}");
}

/// The reproductions of the adversarial trial, run as a user runs them:
/// each ends with exit 1 and a message that says what is wrong, on both
/// backends, never with a signal, an abort or a wrong answer.
#[test]
fn the_adversarial_reproductions_end_with_a_diagnostic() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "wrap",
            "input x: [3, 6148914691236517206]\noutput y = sum(x)\n",
            "is too large",
        ),
        (
            "fill",
            "output y = sum(ones([4294967296, 4294967296]))\n",
            "is too large",
        ),
        (
            "float_dim",
            "output y = sum(ones([1e30]))\n",
            "a dimension must be a whole number",
        ),
        ("nan", "output y = nan\n", "nnc has no `nan` constant"),
        (
            "keyword",
            "let input = 3.0\noutput y = input\n",
            "`input` is a keyword, not a name",
        ),
        (
            "init",
            "param w: [3]\noutput y = sum(w)\n",
            "found end of line",
        ),
        (
            "huge",
            "output y = ones([100000, 100000]) * 2\n",
            "of memory; the limit is 1.0 GiB",
        ),
    ];
    let d = common::temp_dir("repro");
    for (name, src, expected) in cases {
        let p = d.join(format!("{name}.nn"));
        std::fs::write(&p, src).expect("write");
        for backend in ["jit", "interp"] {
            let args = ["--color", "never", "--max-memory", "1G", "run"];
            let o = nnc(&[
                &args[..],
                &[p.to_str().expect("UTF-8"), "--backend", backend],
            ]
            .concat());
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{name} on {backend}: {err}");
            assert!(err.contains(expected), "{name} on {backend}: {err}");
            assert!(
                o.stdout.is_empty(),
                "{name} on {backend}: no answer is printed"
            );
        }
    }
}

/// Weights of another model: the error points at the parameter the file
/// lacks (or holds with another shape) and names the file, not at an
/// unrelated output.
#[test]
fn run_with_another_models_weights_points_at_the_parameter() {
    let d = common::temp_dir("other_weights");
    let xor = d.join("xor.st");
    let o = nnc(&[
        "train",
        "examples/xor.nn",
        "--epochs",
        "1",
        "--save",
        xor.to_str().expect("UTF-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = nnc(&[
        "--color",
        "never",
        "run",
        "examples/neuron.nn",
        "--params",
        xor.to_str().expect("UTF-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "error[E0212]: `{}` has no tensor `w`",
            xor.display()
        )),
        "{err}"
    );
    // `param w` is declared on line 5, `param b` on line 6.
    assert!(err.contains("examples/neuron.nn:5:7"), "{err}");
    assert!(
        err.contains(&format!("^ not in `{}`", xor.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("- not in `{}`", xor.display())),
        "{err}"
    );
    assert!(
        err.contains("holds none of this model's parameters, but `Xor.b1`"),
        "{err}"
    );
    assert!(
        !err.contains("training this") && !err.contains("output z"),
        "{err}"
    );

    // The right names with another shape.
    let w = nnc::tensor::Tensor::new(vec![4], vec![0.0; 4]);
    let b = nnc::tensor::Tensor::scalar(0.0);
    let shaped = d.join("shaped.st");
    nnc::train::checkpoint::save(
        &shaped,
        &[("w".to_string(), &w), ("b".to_string(), &b)],
        &Default::default(),
    )
    .expect("saved");
    let o = nnc(&[
        "--color",
        "never",
        "run",
        "examples/neuron.nn",
        "--params",
        shaped.to_str().expect("UTF-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "`w` has shape [4] in `{}`, but the model declares [3]",
            shaped.display()
        )),
        "{err}"
    );
    assert!(err.contains("examples/neuron.nn:5:7"), "{err}");
    assert!(
        err.contains(&format!("[3] here, [4] in `{}`", shaped.display())),
        "{err}"
    );
}

/// `nnc --help` lists the commands in the order of a workflow, and its
/// examples show training and prediction.
#[test]
fn help_lists_the_commands_in_workflow_order_with_examples() {
    let o = nnc(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let commands: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Commands added later may sit anywhere; these keep this order.
    let workflow = [
        "check", "run", "grad", "train", "predict", "compile", "bench", "repl", "devices",
    ];
    let listed: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| workflow.contains(c))
        .collect();
    assert_eq!(listed, workflow, "{out}");
    assert!(
        out.contains("\n  nnc train examples/iris.nn --save iris.safetensors"),
        "{out}"
    );
    assert!(
        out.contains("\n  nnc predict examples/iris.nn --params iris.safetensors"),
        "{out}"
    );
}

/// Every flag is documented, and a flag has one value name across the
/// commands that take it (`--params W.safetensors`, `--seed S`, …).
#[test]
fn flags_are_documented_and_named_alike_in_every_command() {
    use clap::CommandFactory;
    let cli = nnc::driver::args::Cli::command();
    let mut names: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
    for cmd in cli.get_subcommands() {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_global_set() || long == "help" {
                continue;
            }
            assert!(
                arg.get_help().is_some(),
                "`nnc {} --{long}` has no help text",
                cmd.get_name()
            );
            let value = arg
                .get_value_names()
                .map(|v| {
                    v.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            names
                .entry(long.to_string())
                .or_default()
                .push((cmd.get_name().to_string(), value));
        }
    }
    for (long, uses) in &names {
        // `compile --dim` takes several sizes (`B=1,8,32`), `bench --dim` one.
        if long == "dim" {
            continue;
        }
        assert!(
            uses.windows(2).all(|w| w[0].1 == w[1].1),
            "--{long} has different value names: {uses:?}"
        );
    }
    assert_eq!(names["params"][0].1, "W.safetensors");
    assert_eq!(names["seed"][0].1, "S");
    // `--format` says what each format prints, under grad and bench too.
    for cmd in ["run", "grad", "bench"] {
        let o = nnc(&[cmd, "--help"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let format = out
            .split("--format <FORMAT>")
            .nth(1)
            .unwrap_or_else(|| panic!("`nnc {cmd} --help` has no --format:\n{out}"));
        assert!(
            format.trim_start().starts_with("How to print"),
            "`nnc {cmd} --help`:\n{out}"
        );
        assert!(format.contains("json"), "`nnc {cmd} --help`:\n{out}");
    }
}

#[test]
fn scan_rows_runs_an_lstms_loop_bodies_in_parts_on_two_threads() {
    // The plan log of lstm_sine's training step on two threads: both
    // loops (the forward one, the derivative one) run their bodies in two
    // parts by rows; on one thread there is nothing to cut for.
    let plan = |threads: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"))
            .args([
                "bench",
                "examples/lstm_sine.nn",
                "--runs",
                "1",
                "--warmup",
                "0",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NNC_LOG", "plan")
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("the nnc binary runs");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
            .lines()
            .filter(|l| l.contains("scan"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    insta::assert_snapshot!("scan_rows_lstm_sine_plan", plan("2"));
    let one = plan("1");
    assert!(
        one.contains("scan-rows does not apply: one thread"),
        "{one}"
    );
    assert!(!one.contains("parts"), "{one}");
}
