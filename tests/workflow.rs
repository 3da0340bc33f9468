//! The everyday workflow around a trained model: `nnc predict` on data
//! files, and the command line behaving as Unix tools do.

mod common;

use common::{nnc, temp_dir, text};
use nnc::pipeline::{self, Stage};
use std::path::Path;

/// A NumPy `.npy` file (format 1.0) of little-endian f32 values.
fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// The final `val_accuracy` a training printed (its `trained …` line).
fn printed_val_accuracy(stdout: &str) -> f64 {
    stdout
        .lines()
        .find(|l| l.starts_with("trained "))
        .and_then(|l| l.split("val_accuracy ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no val_accuracy in {stdout}"))
}

/// The validation rows `nnc train` holds out for `file` (its seeded
/// split), as the lines of its CSV.
fn validation_lines(file: &str, csv: &Path) -> Vec<String> {
    let src = std::fs::read_to_string(file).expect("source");
    let c = pipeline::compile(file, &src, Stage::Ir);
    let (g, spec) = (c.graph.expect("graph"), c.train.expect("train block"));
    let base = Path::new(file).parent().expect("folder");
    let prepared = nnc::train::prepare(&g, &spec, base, spec.seed).expect("data");
    let text = std::fs::read_to_string(csv).expect("csv");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    prepared.val.iter().map(|&r| rows[r].to_string()).collect()
}

/// Train the Iris classifier, hold its validation rows out as a CSV of
/// their own, predict on them: the written classes get the validation
/// accuracy that training printed right, and `nnc predict` says so.
/// Without the label column the same predictions are written.
#[test]
fn predictions_on_the_held_out_rows_have_the_printed_validation_accuracy() {
    let dir = temp_dir("predict-iris");
    let w = dir.join("iris.safetensors").display().to_string();
    let o = nnc(&["train", "examples/iris.nn", "--save", &w]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let printed = printed_val_accuracy(&text(&o.stdout));
    let lines = validation_lines("examples/iris.nn", Path::new("examples/data/iris.csv"));
    assert_eq!(lines.len(), 30, "20% of 150 rows");
    let header = "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,label";
    let held = dir.join("held.csv");
    std::fs::write(&held, format!("{header}\n{}\n", lines.join("\n"))).expect("held.csv");
    let out = dir.join("pred.csv");
    let o = nnc(&[
        "predict",
        "examples/iris.nn",
        "--params",
        &w,
        "--data",
        &held.display().to_string(),
        "-o",
        &out.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let written = std::fs::read_to_string(&out).expect("predictions");
    let mut rows = written.lines();
    assert_eq!(
        rows.next(),
        Some("class,predict_0,predict_1,predict_2"),
        "{written}"
    );
    let labels: Vec<usize> = lines
        .iter()
        .map(|l| {
            l.rsplit(',')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("label")
        })
        .collect();
    let mut right = 0;
    let mut n = 0;
    for (row, label) in rows.zip(&labels) {
        let cells: Vec<f32> = row
            .split(',')
            .map(|c| c.parse().expect("a number"))
            .collect();
        assert_eq!(cells.len(), 4, "{row}");
        // The class is the most probable one, the probabilities sum to 1.
        let best = (1..4).fold(1, |b, k| if cells[k] > cells[b] { k } else { b });
        assert_eq!(cells[0] as usize, best - 1, "{row}");
        assert!((cells[1..].iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row}");
        right += usize::from(cells[0] as usize == *label);
        n += 1;
    }
    assert_eq!(n, 30);
    let accuracy = right as f64 / n as f64;
    assert!(
        (accuracy - printed).abs() < 5e-5,
        "{accuracy} vs printed {printed}"
    );
    assert!(
        text(&o.stdout).contains(&format!(
            "accuracy {accuracy:.4} ({right} of 30 labelled rows)"
        )),
        "{}",
        text(&o.stdout)
    );
    // The same rows without their labels: the same predictions, on
    // standard output.
    let bare = dir.join("bare.csv");
    let no_label: Vec<String> = lines
        .iter()
        .map(|l| l.rsplit_once(',').expect("cells").0.to_string())
        .collect();
    std::fs::write(
        &bare,
        format!(
            "{}\n{}\n",
            header.rsplit_once(',').expect("header").0,
            no_label.join("\n")
        ),
    )
    .expect("bare.csv");
    let o = nnc(&[
        "predict",
        "examples/iris.nn",
        "--params",
        &w,
        "--data",
        &bare.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), written);
    assert!(
        !text(&o.stderr).contains("accuracy"),
        "no labels, no accuracy"
    );
    // And through `nnc run --input` (a .npy of the rows): the same
    // probabilities, so the same accuracy.
    let npy = dir.join("held.npy");
    let floats: Vec<f32> = no_label
        .iter()
        .flat_map(|l| l.split(',').map(|c| c.parse::<f32>().expect("a number")))
        .collect();
    std::fs::write(&npy, npy_f32(&[30, 4], &floats)).expect("held.npy");
    let o = nnc(&[
        "run",
        "examples/iris.nn",
        "--params",
        &w,
        "--input",
        &format!("x={}", npy.display()),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).expect("JSON");
    let p = &v["outputs"]["predict"];
    assert_eq!(p["shape"], serde_json::json!([30, 3]));
    let probs: Vec<f32> = p["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    let from_predict: Vec<f32> = written
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|c| c.parse::<f32>().expect("number"))
        })
        .collect();
    assert_eq!(probs, from_predict);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Predictions as JSON lines and as a NumPy array hold the CSV's values;
/// a file of the wrong width, an unknown format and a missing file are
/// diagnostics (exit 1) and write nothing.
#[test]
fn predictions_in_every_format_and_bad_data_as_diagnostics() {
    let dir = temp_dir("predict-formats");
    let data = "examples/data/iris.csv";
    let run = |extra: &[&str]| {
        let mut args = vec!["predict", "examples/iris.nn", "--data"];
        args.extend_from_slice(extra);
        nnc(&args)
    };
    let csv = run(&[data]);
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    let values: Vec<Vec<f32>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .skip(1)
                .map(|c| c.parse().expect("number"))
                .collect()
        })
        .collect();
    assert_eq!(values.len(), 150);
    let jsonl = dir.join("p.jsonl");
    let o = run(&[data, "-o", &jsonl.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 150);
    for (r, (line, want)) in lines.iter().zip(&values).enumerate() {
        assert_eq!(line["row"], r);
        let got: Vec<f32> = line["predict"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        assert_eq!(&got, want, "row {r}");
    }
    let npy = dir.join("p.npy");
    let o = run(&[data, "-o", &npy.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bytes = std::fs::read(&npy).expect("npy");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("header");
    assert!(
        header.contains("'shape': (150, 3)") && header.contains("'<f4'"),
        "{header}"
    );
    assert_eq!((10 + hlen) % 64, 0, "aligned data");
    let floats: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, values.concat());
    let cases: [(&[&str], &str); 3] = [
        (
            &["examples/data/digits.csv", "-o", "never.csv"],
            "has 64 features per row, but input `Iris.x` is [B, 4]",
        ),
        (&[data, "-o", "never.txt"], "as .csv, .jsonl or .npy"),
        (&["no/such.csv", "-o", "never.csv"], "no such file"),
    ];
    for (args, msg) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            text(&o.stderr).contains(msg),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    for f in ["never.csv", "never.txt"] {
        assert!(
            !Path::new(env!("CARGO_MANIFEST_DIR")).join(f).exists(),
            "{f} written"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nnc … | head`: the reader closing the pipe early ends the command
/// quietly with exit 0, no panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args([
            "predict",
            "examples/iris.nn",
            "--data",
            "examples/data/iris.csv",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nnc runs");
    // Close our end of stdout at once, as `head -0` would.
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("nnc ends");
    let err = text(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(0), "{err}");
}

fn meta(path: &Path) -> std::collections::HashMap<String, String> {
    let (_, meta) = nnc::train::checkpoint::load(path).expect("a checkpoint");
    meta
}

/// Early stopping on a crafted plateau: with a learning rate of 0 the
/// validation loss never moves, so with `--patience 3` the run stops
/// after epoch 4 (the best is epoch 1, three epochs without improvement
/// follow). Resumed from a checkpoint of epoch 2, it stops at the same
/// epoch: the checkpoint keeps the best epoch and the count.
#[test]
fn early_stopping_stops_on_a_plateau_and_resumes_its_count() {
    let dir = temp_dir("early-stop");
    let log = dir.join("log.jsonl").display().to_string();
    let flags = ["--lr", "0", "--patience", "3"];
    let mut args = vec!["train", "examples/iris.nn", "--log", &log];
    args.extend(flags);
    let o = nnc(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("stopped early after epoch 4: val_loss has not improved for 3 epochs"),
        "{out}"
    );
    assert!(out.contains("best epoch 1: val_loss"), "{out}");
    assert_eq!(logged(Path::new(&log), "val_loss").len(), 4);
    // Two epochs, then resumed.
    let ck = dir.join("ck.safetensors").display().to_string();
    let mut args = vec!["train", "examples/iris.nn", "--epochs", "2", "--save", &ck];
    args.extend(flags);
    let o = nnc(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = meta(Path::new(&ck));
    assert_eq!((m["best_epoch"].as_str(), m["stale"].as_str()), ("1", "1"));
    let mut args = vec!["train", "examples/iris.nn", "--resume", &ck, "--save", &ck];
    args.extend(flags);
    let o = nnc(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("stopped early after epoch 4"),
        "{}",
        text(&o.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--save-best` keeps the epoch with the lowest validation loss (the
/// first of equals): its checkpoint says that epoch, and its weights
/// give that epoch's validation loss again.
#[test]
fn save_best_keeps_the_epoch_with_the_lowest_validation_loss() {
    let dir = temp_dir("save-best");
    let log = dir.join("log.jsonl");
    let best = dir.join("best.safetensors");
    let o = nnc(&[
        "train",
        "examples/iris.nn",
        "--log",
        &log.display().to_string(),
        "--save-best",
        &best.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let losses = logged(&log, "val_loss");
    let (k, lowest) =
        losses.iter().enumerate().fold(
            (0, f64::INFINITY),
            |b, (k, &v)| if v < b.1 { (k, v) } else { b },
        );
    assert!(
        k + 1 < losses.len(),
        "the best epoch is not the last: {losses:?}"
    );
    let m = meta(&best);
    assert_eq!(m["epoch"], (k + 1).to_string());
    assert_eq!(m["best_epoch"], (k + 1).to_string());
    assert!(
        text(&o.stdout).contains(&format!("saved epoch {} to", k + 1)),
        "{}",
        text(&o.stdout)
    );
    // Training zero more epochs from it evaluates nothing; its weights
    // on the validation rows (as `predict` counts them) are that epoch's.
    let o = nnc(&[
        "train",
        "examples/iris.nn",
        "--resume",
        &best.display().to_string(),
        "--epochs",
        &(k + 2).to_string(),
        "--log",
        &dir.join("again.jsonl").display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again = logged(&dir.join("again.jsonl"), "val_loss");
    // The next epoch from the best one is the uninterrupted run's.
    assert_eq!(
        again.last().copied(),
        losses.get(k + 1).copied(),
        "{again:?}"
    );
    assert!(lowest.is_finite());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Overrides that cannot work are diagnostics.
#[test]
fn bad_training_overrides_are_diagnostics() {
    for (args, msg) in [
        (&["--lr=-1"][..], "is not a learning rate"),
        (&["--batch", "0"][..], "a step needs a row"),
        (&["--min-delta=-0.5"][..], "must be a finite number"),
    ] {
        let mut argv = vec!["train", "examples/iris.nn"];
        argv.extend_from_slice(args);
        let o = nnc(&argv);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            text(&o.stderr).contains(msg),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

/// The source of `examples/NAME.nn` reading its data file (`data/FILE`)
/// by its absolute path, to be written elsewhere.
fn example_source(name: &str, data_file: &str) -> String {
    let src = std::fs::read_to_string(format!("examples/{name}.nn")).expect("example");
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(data_file);
    src.replace(&format!("data/{data_file}"), &data.display().to_string())
}

/// `examples/iris.nn` with another optimizer line, written to `dir`.
fn iris_with(dir: &Path, name: &str, optimizer: &str) -> String {
    let src = example_source("iris", "iris.csv").replace(
        "optimizer = adam(lr = 1e-2)",
        &format!("optimizer = {optimizer}"),
    );
    assert!(src.contains(optimizer));
    let path = dir.join(name);
    std::fs::write(&path, src).expect("model");
    path.display().to_string()
}

/// A figure of every line of a `--log` file.
fn logged(path: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {l}"))
        })
        .collect()
}

/// Each schedule's rate, as the log records it for the last step of
/// every epoch (8 steps an epoch: 120 training rows, batch 16), against
/// its formula; `reduce_on_plateau` with a `min_delta` no epoch beats
/// halves the rate after every epoch but the first.
#[test]
fn learning_rate_schedules_follow_their_formulas() {
    let dir = temp_dir("schedules");
    // The settings as the file gives them: f32 numbers.
    let lr = f64::from(0.01f32);
    let (gamma, min) = (f64::from(0.9f32), f64::from(0.001f32));
    let pi = std::f64::consts::PI;
    // The rate at (epoch, global step), both from 0.
    type Rate = Box<dyn Fn(u64, u64) -> f64>;
    let cases: Vec<(&str, Rate)> = vec![
        (
            "step(every = 2, gamma = 0.5)",
            Box::new(move |e, _| lr * 0.5f64.powi((e / 2) as i32)),
        ),
        (
            "exponential(gamma = 0.9)",
            Box::new(move |e, _| lr * gamma.powf(e as f64)),
        ),
        (
            "cosine(epochs = 4, min_lr = 0.001)",
            Box::new(move |e, _| {
                min + (lr - min) * (1.0 + (pi * (e.min(4) as f64) / 4.0).cos()) / 2.0
            }),
        ),
        (
            "constant, warmup = 20",
            Box::new(move |_, s| lr * ((s + 1) as f64 / 20.0).min(1.0)),
        ),
        (
            "reduce_on_plateau(factor = 0.5, patience = 1, min_delta = 10)",
            Box::new(move |e, _| lr * 0.5f64.powi(e.saturating_sub(1) as i32)),
        ),
    ];
    for (k, (schedule, formula)) in cases.iter().enumerate() {
        let opt = format!("sgd(lr = 0.01, schedule = {schedule})");
        let model = iris_with(&dir, &format!("s{k}.nn"), &opt);
        let log = dir.join(format!("s{k}.jsonl"));
        let o = nnc(&[
            "train",
            &model,
            "--epochs",
            "6",
            "--log",
            &log.display().to_string(),
        ]);
        assert!(o.status.success(), "{schedule}: {}", text(&o.stderr));
        let rates = logged(&log, "lr");
        assert_eq!(rates.len(), 6);
        for (e, &got) in rates.iter().enumerate() {
            let e = e as u64;
            let want = formula(e, 8 * e + 7) as f32;
            assert_eq!(got as f32, want, "{schedule}: epoch {}", e + 1);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fed rate is the one the step uses: with `step(every = 1, gamma =
/// 0)` the rate is 0 from the second epoch on, so the weights, and with
/// them the validation loss, stay where the first epoch left them.
#[test]
fn a_scheduled_rate_of_zero_stops_the_weights() {
    let dir = temp_dir("schedule-zero");
    let model = iris_with(
        &dir,
        "z.nn",
        "adam(lr = 0.01, schedule = step(every = 1, gamma = 0))",
    );
    let log = dir.join("z.jsonl");
    let o = nnc(&[
        "train",
        &model,
        "--epochs",
        "4",
        "--log",
        &log.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let losses = logged(&log, "val_loss");
    assert_eq!(losses.len(), 4);
    assert!(losses[1..].iter().all(|&l| l == losses[0]), "{losses:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `clip_norm = C`: one SGD step (all 120 training rows in one batch,
/// rate 1) moves the weights by C in L2 norm over all of them, however
/// large the gradient (as `torch.nn.utils.clip_grad_norm_` scales it).
#[test]
fn clipping_bounds_the_global_norm_of_a_step() {
    let dir = temp_dir("clip");
    let model = iris_with(&dir, "c.nn", "sgd(lr = 1, clip_norm = 0.001)");
    let before = dir.join("before.safetensors").display().to_string();
    let after = dir.join("after.safetensors").display().to_string();
    for (epochs, save) in [("0", &before), ("1", &after)] {
        let o = nnc(&[
            "train", &model, "--epochs", epochs, "--batch", "120", "--save", save,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let (w0, _) = nnc::train::checkpoint::load(Path::new(&before)).expect("before");
    let (w1, _) = nnc::train::checkpoint::load(Path::new(&after)).expect("after");
    let mut sq = 0.0f64;
    for name in ["Iris.w1", "Iris.b1", "Iris.w2", "Iris.b2"] {
        for (a, b) in w0[name].data.iter().zip(&w1[name].data) {
            sq += f64::from(b - a).powi(2);
        }
    }
    let moved = sq.sqrt();
    assert!((moved - 0.001).abs() < 1e-6, "moved {moved}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plateau schedule's state travels in the checkpoint: three epochs,
/// then three more resumed, log the rates and losses of six in a row.
#[test]
fn a_resumed_plateau_schedule_continues_exactly() {
    let dir = temp_dir("plateau-resume");
    let model = iris_with(
        &dir,
        "p.nn",
        "adam(lr = 0.01, schedule = reduce_on_plateau(factor = 0.5, patience = 1, min_delta = 0.2))",
    );
    let straight = dir.join("straight.jsonl").display().to_string();
    let o = nnc(&["train", &model, "--epochs", "6", "--log", &straight]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let split = dir.join("split.jsonl").display().to_string();
    let ck = dir.join("ck.safetensors").display().to_string();
    for (epochs, resume) in [("3", false), ("6", true)] {
        let mut args = vec![
            "train", &model, "--epochs", epochs, "--log", &split, "--save", &ck,
        ];
        if resume {
            args.extend(["--resume", &ck]);
        }
        let o = nnc(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    for key in ["lr", "val_loss", "train_loss"] {
        let (a, b) = (
            logged(Path::new(&straight), key),
            logged(Path::new(&split), key),
        );
        assert_eq!(a, b, "{key}");
    }
    // The rate did fall: the schedule was exercised.
    let rates = logged(Path::new(&straight), "lr");
    assert!(rates.last() < rates.first(), "{rates:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C during training: the step in progress finishes, a checkpoint
/// is written (inside the epoch), the run says where it stopped and how
/// to resume, and exits 130; resumed, it ends with the weights, the
/// optimizer's state and the log of a run never interrupted, bit for
/// bit.
#[test]
fn an_interrupted_run_resumes_bit_identically() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = temp_dir("sigint");
    let path = |n: &str| dir.join(n).display().to_string();
    let model = "examples/digits_mlp.nn";
    let epochs = "40";
    let o = nnc(&[
        "train",
        model,
        "--epochs",
        epochs,
        "--save",
        &path("full.safetensors"),
        "--log",
        &path("full.jsonl"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args([
            "train",
            model,
            "--epochs",
            epochs,
            "--save",
            &path("ck.safetensors"),
            "--log",
            &path("split.jsonl"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nnc runs");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let third = line.starts_with("epoch 3/");
        seen.push(line);
        if third {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    seen.extend(lines.map(|l| l.expect("a line")));
    let o = child.wait_with_output().expect("nnc ends");
    let out = seen.join("\n");
    assert_eq!(o.status.code(), Some(130), "{out}{}", text(&o.stderr));
    assert!(out.contains("interrupted in epoch"), "{out}");
    assert!(out.contains("--resume"), "{out}");
    // Taken after a step inside an epoch, with that epoch's progress.
    let m = meta(&dir.join("ck.safetensors"));
    assert!(
        m.contains_key("batches") && m.contains_key("totals"),
        "{m:?}"
    );
    let o = nnc(&[
        "train",
        model,
        "--epochs",
        epochs,
        "--resume",
        &path("ck.safetensors"),
        "--save",
        &path("ck.safetensors"),
        "--log",
        &path("split.jsonl"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (full, _) = nnc::train::checkpoint::load(&dir.join("full.safetensors")).expect("full");
    let (resumed, _) = nnc::train::checkpoint::load(&dir.join("ck.safetensors")).expect("ck");
    assert_eq!(full.len(), resumed.len());
    for (name, t) in &full {
        assert_eq!(t.data, resumed[name].data, "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("full.jsonl")).expect("log"),
        std::fs::read_to_string(dir.join("split.jsonl")).expect("log")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `metrics = [...]`: each figure in the log and the epoch lines, equal
/// to the figure computed here from the predictions `nnc predict` makes
/// with the last epoch's weights on the held-out rows; the confusion
/// matrix printed at the end is theirs.
#[test]
fn classification_metrics_match_the_predictions() {
    let dir = temp_dir("metrics");
    let src = example_source("iris", "iris.csv").replace(
            "  seed = 7\n",
            "  seed = 7\n  metrics = [accuracy, top_k(k = 2), precision, recall, f1, confusion_matrix]\n",
        );
    let model = dir.join("m.nn");
    std::fs::write(&model, &src).expect("model");
    let model = model.display().to_string();
    let (log, w) = (dir.join("log.jsonl"), dir.join("w.safetensors"));
    let o = nnc(&[
        "train",
        &model,
        "--epochs",
        "8",
        "--log",
        &log.display().to_string(),
        "--save",
        &w.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("val_f1 "), "{out}");
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .last()
            .expect("a line"),
    )
    .expect("JSON");
    // The held-out rows' predictions with the final weights.
    let lines = validation_lines("examples/iris.nn", Path::new("examples/data/iris.csv"));
    let header = "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,label";
    let held = dir.join("held.csv");
    std::fs::write(&held, format!("{header}\n{}\n", lines.join("\n"))).expect("held");
    let o = nnc(&[
        "predict",
        &model,
        "--params",
        &w.display().to_string(),
        "--data",
        &held.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let labels: Vec<usize> = lines
        .iter()
        .map(|l| {
            l.rsplit(',')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("label")
        })
        .collect();
    let mut m = [[0usize; 3]; 3];
    let mut top2 = 0;
    for (row, &t) in text(&o.stdout).lines().skip(1).zip(&labels) {
        let cells: Vec<f32> = row.split(',').map(|c| c.parse().expect("number")).collect();
        m[t][cells[0] as usize] += 1;
        let own = cells[1 + t];
        top2 += usize::from(cells[1..].iter().filter(|&&v| v > own).count() < 2);
    }
    let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
    for (c, true_c) in m.iter().enumerate() {
        let tp = true_c[c] as f64;
        let pc = match m.iter().map(|row| row[c]).sum::<usize>() {
            0 => 0.0,
            n => tp / n as f64,
        };
        let rc = match true_c.iter().sum::<usize>() {
            0 => 0.0,
            n => tp / n as f64,
        };
        p += pc / 3.0;
        r += rc / 3.0;
        f += if pc + rc == 0.0 {
            0.0
        } else {
            2.0 * pc * rc / (pc + rc) / 3.0
        };
    }
    for (key, want) in [
        ("val_precision", p),
        ("val_recall", r),
        ("val_f1", f),
        ("val_top2", top2 as f64 / 30.0),
    ] {
        let got = last[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key}: {last}"));
        assert!(
            (got - want).abs() < 1e-6,
            "{key}: logged {got}, computed {want}"
        );
    }
    let printed: Vec<Vec<usize>> = out
        .lines()
        .skip_while(|l| !l.starts_with("confusion matrix"))
        .skip(2)
        .take(3)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|n| n.parse().expect("count"))
                .collect()
        })
        .collect();
    assert_eq!(
        printed,
        m.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A regressor's metrics (the LSTM on the sine data): MAE, RMSE and R²
/// in the log, consistent with each other and with the validation loss
/// (the block's loss is the mean squared error, so RMSE² = val_loss); a
/// classifier's metric on it is a warning, and metrics without a
/// `predict` an error.
#[test]
fn regression_metrics_and_misplaced_metrics() {
    let dir = temp_dir("regression-metrics");
    let src = example_source("lstm_sine", "sine.csv");
    let with = |extra: &str| {
        let s = src.replacen("train Lstm {", &format!("train Lstm {{\n  {extra}"), 1);
        assert_ne!(s, src);
        s
    };
    let model = dir.join("r.nn");
    std::fs::write(
        &model,
        with("metrics = [mae, rmse, r2, f1]\n  predict = predict(x)"),
    )
    .expect("model");
    let log = dir.join("log.jsonl");
    let o = nnc(&[
        "train",
        &model.display().to_string(),
        "--epochs",
        "2",
        "--log",
        &log.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("metric `f1` is for classifiers"),
        "{}",
        text(&o.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .last()
            .expect("a line"),
    )
    .expect("JSON");
    let f = |k: &str| last[k].as_f64().unwrap_or_else(|| panic!("no {k}: {last}"));
    let (mae, rmse, r2, loss) = (f("val_mae"), f("val_rmse"), f("val_r2"), f("val_loss"));
    assert!(0.0 < mae && mae <= rmse, "{last}");
    assert!((rmse * rmse - loss).abs() < 1e-4 * loss.max(1e-3), "{last}");
    assert!(r2 < 1.0 && r2 > 0.5, "{last}");
    assert!(last.get("val_f1").is_none(), "{last}");
    std::fs::write(&model, with("metrics = [mae]")).expect("model");
    let o = nnc(&["check", &model.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("`metrics` are computed from the model's `predict`"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three inputs from three files, `t = x₁ + x₂ + 2z` row by row: the
/// loss is exactly 0 on every batch of every (shuffled) epoch only when
/// row i of each file meets row i of the others. The same files with
/// `z`'s rows rotated by one give a loss above 0, so the check can fail.
#[test]
fn inputs_from_three_files_stay_aligned_through_the_shuffle() {
    let dir = temp_dir("three-files");
    let n = 40;
    let mut a = String::from("id,p,q\n");
    let mut t = String::from("t\n");
    let mut z = Vec::new();
    for i in 0..n {
        let (p, q, zi) = (i % 7, (3 * i) % 11, (5 * i) % 13);
        a.push_str(&format!("{i},{p},{q}\n"));
        t.push_str(&format!("{}\n", p + q + 2 * zi));
        z.push(zi as f32);
    }
    std::fs::write(dir.join("a.csv"), a).expect("a.csv");
    std::fs::write(dir.join("t.csv"), t).expect("t.csv");
    std::fs::write(dir.join("z.npy"), npy_f32(&[n, 1], &z)).expect("z.npy");
    let mut rotated = z.clone();
    rotated.rotate_left(1);
    std::fs::write(dir.join("z_off.npy"), npy_f32(&[n, 1], &rotated)).expect("z_off.npy");
    let model = |z_file: &str| {
        format!(
            r#"model Three {{
  input x: [B, 2]
  input z: [B, 1]
  input t: [B, 1]
  param w: [1] = zeros()
}}

train Three {{
  data = inputs(x = csv("a.csv", columns = ["p", "q"]), z = npy("{z_file}"), t = csv("t.csv", columns = "t"))
  loss = mean((x @ [[1.0], [1.0]] + 2.0 * z - t + w) ^ 2)
  batch = 4
  epochs = 3
  split = 0.25
  seed = 3
}}
"#
        )
    };
    for (z_file, aligned) in [("z.npy", true), ("z_off.npy", false)] {
        let file = dir.join(format!("three_{aligned}.nn"));
        std::fs::write(&file, model(z_file)).expect("model");
        let log = dir.join(format!("three_{aligned}.jsonl"));
        let o = nnc(&[
            "train",
            &file.display().to_string(),
            "--log",
            &log.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let losses = [logged(&log, "train_loss"), logged(&log, "val_loss")].concat();
        assert_eq!(losses.len(), 6);
        if aligned {
            assert!(losses.iter().all(|&l| l == 0.0), "{losses:?}");
        } else {
            assert!(losses.iter().all(|&l| l > 1.0), "{losses:?}");
        }
    }
}

/// Iris fed by name (the four measurement columns to `x`, the label
/// column one-hot to `y`) trains exactly as the one-source form does:
/// the same rows, split, order and figures.
#[test]
fn named_inputs_train_as_the_one_source_form_does() {
    let dir = temp_dir("named-iris");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv");
    let pair = example_source("iris", "iris.csv");
    let named = pair.replace(
        &format!("csv(\"{}\", label = \"label\", scale = 1/8)", data.display()),
        &format!(
            "inputs(x = csv(\"{0}\", columns = [\"sepal_length_cm\", \"sepal_width_cm\", \"petal_length_cm\", \"petal_width_cm\"], scale = 1/8), y = csv(\"{0}\", columns = \"label\"))",
            data.display()
        ),
    );
    assert_ne!(pair, named);
    let (mut logs, mut predictions) = (Vec::new(), Vec::new());
    for (name, src) in [("pair", &pair), ("named", &named)] {
        let file = dir.join(format!("{name}.nn"));
        std::fs::write(&file, src).expect("model");
        let log = dir.join(format!("{name}.jsonl"));
        let w = dir
            .join(format!("{name}.safetensors"))
            .display()
            .to_string();
        let o = nnc(&[
            "train",
            &file.display().to_string(),
            "--epochs",
            "5",
            "--log",
            &log.display().to_string(),
            "--save",
            &w,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        logs.push(std::fs::read_to_string(&log).expect("log"));
        // `nnc predict` reads the named columns of a CSV.
        let o = nnc(&[
            "predict",
            &file.display().to_string(),
            "--params",
            &w,
            "--data",
            &data.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        predictions.push(text(&o.stdout));
    }
    assert!(logs[0].contains("val_accuracy"), "{}", logs[0]);
    assert_eq!(logs[0], logs[1]);
    assert_eq!(predictions[0].lines().count(), 151);
    assert_eq!(predictions[0], predictions[1]);
}

/// `scale = standardize` and `minmax` learn each column's constants from
/// the training rows alone (not the held-out ones), keep them in the
/// checkpoint, and `nnc predict` and `nnc run --input` apply them: a row
/// of raw measurements gives what the scaled row gives a model that
/// reads it unscaled.
#[test]
fn learnt_scalings_come_from_the_training_rows_and_travel_with_the_weights() {
    let dir = temp_dir("learnt-scaling");
    let lines = validation_lines("examples/iris.nn", Path::new("examples/data/iris.csv"));
    let text_csv = std::fs::read_to_string("examples/data/iris.csv").expect("iris");
    let all: Vec<Vec<f64>> = text_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|c| c.parse().expect("number")).collect())
        .collect();
    let held: std::collections::HashSet<&str> = lines.iter().map(String::as_str).collect();
    let train_rows: Vec<&Vec<f64>> = text_csv
        .lines()
        .skip(1)
        .zip(&all)
        .filter(|(l, _)| !held.contains(l))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(train_rows.len(), 120);
    for how in ["standardize", "minmax"] {
        let src =
            example_source("iris", "iris.csv").replace("scale = 1/8", &format!("scale = {how}"));
        let file = dir.join(format!("{how}.nn"));
        std::fs::write(&file, &src).expect("model");
        let w = dir.join(format!("{how}.safetensors"));
        let o = nnc(&[
            "train",
            &file.display().to_string(),
            "--epochs",
            "3",
            "--save",
            &w.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let (tensors, _) = nnc::train::checkpoint::load(&w).expect("checkpoint");
        let names = match how {
            "standardize" => ["standardize.Iris.x.mean", "standardize.Iris.x.std"],
            _ => ["minmax.Iris.x.min", "minmax.Iris.x.range"],
        };
        let (center, spread) = (&tensors[names[0]].data, &tensors[names[1]].data);
        for c in 0..4 {
            let col: Vec<f64> = train_rows.iter().map(|r| r[c]).collect();
            let (want_c, want_s) = if how == "standardize" {
                let mean = col.iter().sum::<f64>() / col.len() as f64;
                let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
                (mean, var.sqrt())
            } else {
                let lo = col.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lo, hi - lo)
            };
            assert!((f64::from(center[c]) - want_c).abs() < 1e-5, "{how} {c}");
            assert!((f64::from(spread[c]) - want_s).abs() < 1e-5, "{how} {c}");
        }
        // One raw row through `run --input` and `predict`: the same
        // probabilities.
        let row = &all[0][..4];
        let raw = dir.join("row.npy");
        let row32: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        std::fs::write(&raw, npy_f32(&[1, 4], &row32)).expect("row");
        let o = nnc(&[
            "run",
            &file.display().to_string(),
            "--params",
            &w.display().to_string(),
            "--input",
            &format!("x={}", raw.display()),
            "--format",
            "json",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).expect("json");
        let ran: Vec<f64> = v["outputs"]["predict"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        let o = nnc(&[
            "predict",
            &file.display().to_string(),
            "--params",
            &w.display().to_string(),
            "--data",
            &raw.display().to_string(),
            "-o",
            &dir.join("p.jsonl").display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let p = std::fs::read_to_string(dir.join("p.jsonl")).expect("predictions");
        let v: serde_json::Value =
            serde_json::from_str(p.lines().next().expect("row")).expect("json");
        let predicted: Vec<f64> = v["predict"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_eq!(ran.len(), 3);
        for (a, b) in ran.iter().zip(&predicted) {
            assert!((a - b).abs() < 1e-6, "{ran:?} vs {predicted:?}");
        }
        // By hand: the scaled row through the model's weights.
        let scaled: Vec<f64> = (0..4)
            .map(|c| (row[c] - f64::from(center[c])) / f64::from(spread[c]))
            .collect();
        let dense = |x: &[f64], w: &nnc::tensor::Tensor, b: &nnc::tensor::Tensor| -> Vec<f64> {
            let out = b.data.len();
            (0..out)
                .map(|j| {
                    f64::from(b.data[j])
                        + x.iter()
                            .enumerate()
                            .map(|(i, v)| v * f64::from(w.data[i * out + j]))
                            .sum::<f64>()
                })
                .collect()
        };
        let h: Vec<f64> = dense(&scaled, &tensors["Iris.w1"], &tensors["Iris.b1"])
            .into_iter()
            .map(f64::tanh)
            .collect();
        let z = dense(&h, &tensors["Iris.w2"], &tensors["Iris.b2"]);
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        for (k, a) in ran.iter().enumerate() {
            assert!((a - e[k] / s).abs() < 1e-5, "{how}: {ran:?} vs by hand");
        }
    }
}

/// Mistakes in `inputs(...)` and `scale` are diagnostics at the place.
#[test]
fn bad_named_inputs_are_diagnostics() {
    let dir = temp_dir("bad-named");
    std::fs::write(dir.join("a.csv"), "p,q\n1,2\n3,4\n5,6\n").expect("a.csv");
    std::fs::write(dir.join("t.csv"), "t\n1\n2\n").expect("t.csv");
    let cases = [
        (
            r#"inputs(x = csv("a.csv"), w = csv("t.csv"))"#,
            "`w` is not an input of the model",
        ),
        (
            r#"inputs(x = csv("a.csv"), x = csv("t.csv"))"#,
            "input `x` is fed twice",
        ),
        (
            r#"inputs(x = csv("a.csv"), t = csv("t.csv"))"#,
            "has 2 rows, but",
        ),
        (
            r#"inputs(x = csv("a.csv"), t = csv("a.csv"))"#,
            "gives 2 values a row, but input `M.t` is [B, 1]",
        ),
        (
            r#"inputs(x = csv("a.csv", scale = normalize))"#,
            "unknown scaling `normalize`",
        ),
        (r#"inputs(csv("a.csv"))"#, "names the input it feeds"),
        (r#"inputs(x = csv("a.csv", columns = ["p", "r"]))"#, "`r`"),
    ];
    for (k, (data, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("m{k}.nn"));
        std::fs::write(
            &file,
            format!(
                "model M {{\n  input x: [B, 2]\n  input t: [B, 1]\n  param w: [1] = zeros()\n}}\n\ntrain M {{\n  data = {data}\n  loss = mean((x @ [[1.0], [1.0]] - t + w) ^ 2)\n  split = 0.0\n}}\n"
            ),
        )
        .expect("model");
        let o = nnc(&["train", &file.display().to_string(), "--epochs", "1"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{data}: {err}");
        assert!(err.contains(message), "{data}: {err}");
        assert!(err.contains(&format!("m{k}.nn:")), "a location: {err}");
    }
}

/// `--optimizer`, `--batch` and `--epochs` win over the file and the
/// header line says so; `nnc grad --batch N` feeds the loss the first
/// batch training takes: with every training row in one batch, its loss
/// is the epoch's training loss and one `sgd(lr = 0.5)` step moves each
/// weight by -0.5 times its gradient. A batch above the training rows
/// is warned about.
#[test]
fn overrides_win_and_grad_takes_the_first_batch() {
    let dir = temp_dir("overrides");
    let file = dir.join("iris.nn");
    std::fs::write(&file, example_source("iris", "iris.csv")).expect("model");
    let f = file.display().to_string();
    let w = dir.join("w.safetensors").display().to_string();
    let log = dir.join("log.jsonl");
    let o = nnc(&[
        "train",
        &f,
        "--epochs",
        "1",
        "--batch",
        "200",
        "--optimizer",
        "sgd(lr = 0.5)",
        "--save",
        &w,
        "--log",
        &log.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = text(&o.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    for part in [
        "sgd(lr = 0.5) (--optimizer)",
        "batch 200 (--batch)",
        "1 epoch (--epochs)",
        "120 rows (30 held out)",
        "1 step an epoch",
        "seed 7",
    ] {
        assert!(first.contains(part), "{part}: {first}");
    }
    assert!(
        text(&o.stderr).contains("`batch` is 200, more than the 120 training rows"),
        "{}",
        text(&o.stderr)
    );
    let o = nnc(&[
        "grad", &f, "--batch", "200", "--format", "json", "--seed", "7",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).expect("json");
    let loss = v["loss"].as_f64().expect("loss");
    let train_loss = logged(&log, "train_loss")[0];
    assert!(
        (loss - train_loss).abs() <= 1e-6 * loss.abs(),
        "{loss} vs {train_loss}"
    );
    let c = pipeline::compile(&f, &std::fs::read_to_string(&file).expect("src"), Stage::Ir);
    let g = c.graph.expect("graph");
    let init = nnc::backend::interp::init_params(&g, 7);
    let (trained, _) = nnc::train::checkpoint::load(Path::new(&w)).expect("weights");
    for (id, p) in g.params.iter() {
        let grad: Vec<f64> = v["grads"][&p.name]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("no gradient of {}", p.name))
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        for (k, gk) in grad.iter().enumerate() {
            let want = f64::from(init[id].data[k]) - 0.5 * gk;
            let got = f64::from(trained[&p.name].data[k]);
            assert!(
                (want - got).abs() < 1e-5,
                "{} [{k}]: {got} vs {want}",
                p.name
            );
        }
    }
    // Without data, `--batch` is an error that says why.
    let bare = dir.join("bare.nn");
    std::fs::write(&bare, "param w: [] = 1.0\noutput loss = w * w\n").expect("bare");
    let o = nnc(&["grad", &bare.display().to_string(), "--batch", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("has none"), "{}", text(&o.stderr));
    // A bad `--optimizer` points into the flag's text.
    let o = nnc(&["train", &f, "--optimizer", "adamm(lr = 0.1)"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("unknown optimizer `adamm`") && err.contains("--optimizer:1:1"),
        "{err}"
    );
    let o = nnc(&["train", &f, "--save-every", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no `--save`"),
        "{}",
        text(&o.stderr)
    );
}

/// `--save-every 5` writes the checkpoint after step 5 (inside epoch 1,
/// with its progress); resumed from it, training ends with the weights
/// and optimizer state of the uninterrupted run, bit for bit.
#[test]
fn save_every_writes_checkpoints_that_resume_bit_identically() {
    let dir = temp_dir("save-every");
    let file = dir.join("iris.nn");
    let src = example_source("iris", "iris.csv");
    std::fs::write(&file, &src).expect("model");
    let c = pipeline::compile(&file.display().to_string(), &src, Stage::Ir);
    let (g, spec) = (c.graph.expect("graph"), c.train.expect("train"));
    let opts = |save: &str, resume: Option<&str>| nnc::train::Options {
        epochs: Some(2),
        save: Some(dir.join(save)),
        resume: resume.map(|r| dir.join(r)),
        base_dir: dir.to_path_buf(),
        source: Some(file.clone()),
        save_every: Some(5),
        ..Default::default()
    };
    let mut steps = 0;
    nnc::train::run(&g, &spec, &opts("full.safetensors", None), &mut |ev| {
        if let nnc::train::Event::Step { .. } = ev {
            steps += 1;
            if steps == 5 {
                std::fs::copy(dir.join("full.safetensors"), dir.join("step5.safetensors"))
                    .expect("the checkpoint of step 5");
            }
        }
    })
    .expect("training");
    assert_eq!(steps, 16, "8 steps an epoch");
    let m = meta(&dir.join("step5.safetensors"));
    assert_eq!(m.get("step").map(String::as_str), Some("5"), "{m:?}");
    assert_eq!(m.get("batches").map(String::as_str), Some("5"), "{m:?}");
    assert_eq!(m.get("epoch").map(String::as_str), Some("0"), "{m:?}");
    nnc::train::run(
        &g,
        &spec,
        &opts("resumed.safetensors", Some("step5.safetensors")),
        &mut |_| {},
    )
    .expect("resumed training");
    let (full, _) = nnc::train::checkpoint::load(&dir.join("full.safetensors")).expect("full");
    let (resumed, _) =
        nnc::train::checkpoint::load(&dir.join("resumed.safetensors")).expect("resumed");
    assert_eq!(full.len(), resumed.len());
    for (name, t) in &full {
        assert_eq!(t.data, resumed[name].data, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
