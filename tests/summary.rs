//! `nnc summary`: a snapshot of every example's summary; parameter
//! totals against the checkpoints `nnc train` writes; a small MLP whose
//! counts are worked out by hand; the training step's total against the
//! buffers `nnc bench` reports; and the errors a user can make.

mod common;

use common::{nnc, text};
use nnc::driver::summary::{self, Memory, Part, Summary};
use nnc::pipeline::{self, Stage};
use serde_json::Value;
use std::path::Path;

/// The summary of a source text, named `name`.
fn summary_of(name: &str, src: &str, opts: &summary::Options) -> Summary {
    let c = pipeline::compile(name, src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    summary::summarize(&c, name, opts).expect("summarizes")
}

/// `nnc summary ARGS --format json`, parsed.
fn summary_json(args: &[&str]) -> Value {
    let mut all = vec!["summary"];
    all.extend(args);
    all.extend(["--format", "json"]);
    let o = nnc(&all);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("the output is JSON")
}

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the examples folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nn"))
        .collect();
    files.sort();
    files
}

/// The summary every example prints (as `nnc summary examples/X.nn`).
#[test]
fn every_example() {
    insta::glob!("../examples", "*.nn", |path| {
        let src = std::fs::read_to_string(path).expect("UTF-8");
        let name = format!(
            "examples/{}",
            path.file_name().expect("a file").to_string_lossy()
        );
        let s = summary_of(&name, &src, &summary::Options::default());
        let mut settings = insta::Settings::clone_current();
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!(summary::text(&s)));
    });
}

/// The parameters a summary counts are the tensors of the model a
/// checkpoint holds: `nnc train --epochs 0 --save` writes the initial
/// ones (and the optimizer's state, `opt.…`, left out here) for every
/// example with a `train` block; for the others the summary's total is
/// the sum over the parameters the file declares, read from the IR.
#[test]
fn parameter_counts_equal_the_checkpoints_element_counts() {
    let dir = common::temp_dir("summary-ckpt");
    let mut checked = 0;
    let mut with_state = false;
    for path in examples() {
        let rel = format!(
            "examples/{}",
            path.file_name().expect("a file").to_string_lossy()
        );
        let src = std::fs::read_to_string(&path).expect("UTF-8");
        let c = pipeline::compile(&rel, &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let json = summary_json(&[&rel]);
        let total = json["totals"]["params"].as_u64().expect("a count");
        let expected: u64 = if c.train.is_some() {
            let ckpt = dir.join(format!("{}.safetensors", checked));
            let o = nnc(&[
                "train",
                &rel,
                "--epochs",
                "0",
                "--save",
                ckpt.to_str().expect("UTF-8 path"),
            ]);
            assert_eq!(o.status.code(), Some(0), "{rel}: {}", text(&o.stderr));
            let (tensors, _) = nnc::train::checkpoint::load(&ckpt).expect("a checkpoint");
            with_state |= tensors.keys().any(|n| n.starts_with("opt."));
            let model: Vec<(&String, &nnc::tensor::Tensor)> = tensors
                .iter()
                .filter(|(n, _)| !n.starts_with("opt."))
                .collect();
            // The same parameters by name, too.
            let mut names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            let mut listed: Vec<&str> = json["params"]
                .as_array()
                .expect("params")
                .iter()
                .map(|p| p["name"].as_str().expect("a name"))
                .collect();
            listed.sort_unstable();
            assert_eq!(names, listed, "{rel}");
            model
                .iter()
                .map(|(_, t)| t.shape.iter().product::<usize>() as u64)
                .sum()
        } else {
            let g = c.graph.as_ref().expect("a graph");
            g.params
                .values()
                .map(|p| p.shape.iter().product::<u64>())
                .sum()
        };
        assert_eq!(total, expected, "{rel}");
        checked += 1;
    }
    assert!(checked >= 13, "every example is checked ({checked})");
    assert!(with_state, "some checkpoint holds an optimizer's state");
    let _ = std::fs::remove_dir_all(dir);
}

const MLP: &str = "
input x: [B, 4]

model Mlp {
  param w1: [4, 16] = xavier_uniform()
  param b1: [16] = zeros()
  param w2: [16, 3] = xavier_uniform()
  param b2: [3] = zeros()

  fn forward(x: [N, 4]) -> [N, 3] {
    let h = tanh(x @ w1 + b1)
    h @ w2 + b2
  }
}

output logits = Mlp.forward(x)
";

/// A 4 → 16 → 3 MLP, counted by hand.
#[test]
fn a_small_mlp_counted_by_hand() {
    let s = summary_of("mlp.nn", MLP, &summary::Options::default());
    // Parameters: 4·16 + 16 + 16·3 + 3.
    assert_eq!(s.param_elements(), 131);
    assert_eq!(s.trainable_elements(), 131);
    let rows: Vec<(&str, &str, u64, u64, u64)> = s
        .layers
        .iter()
        .map(|l| {
            (
                l.label.as_str(),
                l.shape.as_str(),
                l.param_elements,
                l.flops,
                l.activation_bytes,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            // [1, 4] @ [4, 16]: 16 sums of 4 multiply-adds = 128; the
            // bias add 16, tanh 16. Output 16 floats.
            (
                "h = tanh(x @ w1 + b1)",
                "[B, 16]",
                64 + 16,
                128 + 16 + 16,
                64
            ),
            // [1, 16] @ [16, 3]: 3 · 16 · 2 = 96; the bias add 3.
            ("-> h @ w2 + b2", "[B, 3]", 48 + 3, 96 + 3, 12),
        ]
    );
    assert_eq!(s.flops(), 259);
    assert_eq!(s.activation_bytes(), 76);
    assert_eq!(s.sizes, [("B".to_string(), 1, false)]);
    // Eight rows are eight times the work and the activations.
    let eight = summary_of(
        "mlp.nn",
        MLP,
        &summary::Options {
            dims: vec![("B".into(), 8)],
            batch: None,
        },
    );
    assert_eq!(eight.flops(), 8 * 259);
    assert_eq!(eight.activation_bytes(), 8 * 76);
    assert_eq!(eight.param_elements(), 131);
    assert!(eight.train.is_none());
}

/// `state` values (running statistics) are parameters that are not
/// trained: counted, and apart.
#[test]
fn state_is_counted_apart_from_trainable_parameters() {
    let src = "
input x: [B, 3]
param gamma: [3] = ones()
param beta: [3] = zeros()
state rm: [3] = zeros()
state rv: [3] = ones()
output y = batch_norm(x, gamma, beta, rm, rv)
";
    let s = summary_of("bn.nn", src, &summary::Options::default());
    assert_eq!(s.param_elements(), 12);
    assert_eq!(s.trainable_elements(), 6);
    let text = summary::text(&s);
    assert!(
        text.contains("Parameters:   12 (48 B), 6 trainable, 6 state (not trained)"),
        "{text}"
    );
}

/// The MLP with a `train` block: the step's parameters, gradients and
/// optimizer state are what each optimizer keeps (sgd nothing, momentum
/// one value per parameter, Adam two and a step count).
#[test]
fn the_training_step_holds_what_each_optimizer_keeps() {
    for (optimizer, per_param) in [
        ("sgd(lr = 0.1)", 0),
        ("momentum(lr = 0.1)", 1),
        ("adam()", 2),
    ] {
        let src = format!(
            "{MLP}
input y: [B, 3]
train {{
  data = csv(\"none.csv\", label = \"label\")
  loss = mse(Mlp.forward(x), y)
  optimizer = {optimizer}
  batch = 10
}}
"
        );
        let s = summary_of("mlp.nn", &src, &summary::Options::default());
        let t = s.train.as_ref().expect("a training step");
        assert_eq!(t.batch, 10);
        assert_eq!(t.sizes, [("B".to_string(), 10)]);
        let [ph] = &t.phases[..] else {
            panic!("one phase")
        };
        let Memory::Planned(parts) = &ph.memory else {
            panic!("fits the memory budget")
        };
        let bytes = |p: Part| parts.iter().find(|(q, _)| *q == p).map_or(0, |(_, b)| *b);
        assert_eq!(bytes(Part::Params), 131 * 4, "{optimizer}");
        assert_eq!(bytes(Part::Gradients), 131 * 4, "{optimizer}");
        let state = bytes(Part::OptimizerState);
        // Adam's step count is one more value.
        let count = if per_param == 2 { 4 } else { 0 };
        assert_eq!(state, per_param * 131 * 4 + count, "{optimizer}");
        // Every parameter and state gets its new value.
        assert_eq!(bytes(Part::NewValues), 131 * 4 + state, "{optimizer}");
        // The batch: x [10, 4] and y [10, 3].
        assert_eq!(bytes(Part::Inputs), (40 + 30) * 4, "{optimizer}");
        // The forward pass alone is 10 · 259 (the loss and the backward
        // pass come on top).
        assert!(ph.flops > 10 * 259, "{optimizer}: {}", ph.flops);
    }
    // `--batch` wins over the block's.
    let src = format!(
        "{MLP}
input y: [B, 3]
train {{
  data = csv(\"none.csv\", label = \"label\")
  loss = mse(Mlp.forward(x), y)
  optimizer = sgd(lr = 0.1)
  batch = 10
}}
"
    );
    let opts = summary::Options {
        dims: vec![],
        batch: Some(3),
    };
    let s = summary_of("mlp.nn", &src, &opts);
    assert_eq!(s.train.expect("a step").sizes, [("B".to_string(), 3)]);
}

/// The step's total is the bytes of the buffers the compiled step
/// plans, which `nnc bench` reports from the JIT's program.
#[test]
fn the_step_total_is_what_bench_plans() {
    for file in [
        "examples/xor.nn",
        "examples/digits_mlp.nn",
        "examples/gan_mixture.nn",
    ] {
        let s = summary_json(&[file]);
        let total: u64 = s["train"]["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|ph| ph["memory"]["total_bytes"].as_u64().expect("bytes"))
            .sum();
        let o = nnc(&[
            "bench", file, "--runs", "1", "--warmup", "0", "--format", "json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let b: Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(Some(total), b["planned_bytes"].as_u64(), "{file}");
    }
}

#[test]
fn the_command_line() {
    // Text, from the binary, as the library renders it.
    let o = nnc(&["summary", "examples/iris.nn"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/iris.nn"))
            .expect("UTF-8");
    let s = summary_of("examples/iris.nn", &src, &summary::Options::default());
    assert_eq!(text(&o.stdout), summary::text(&s));
    let help = text(&nnc(&["summary", "--help"]).stdout);
    assert!(
        help.contains("Examples:\n  nnc summary examples/iris.nn"),
        "{help}"
    );
    // `--dim` and `--batch` reach the figures.
    let j = summary_json(&["examples/iris.nn", "--dim", "B=4", "--batch", "8"]);
    assert_eq!(j["sizes"]["B"], 4);
    assert_eq!(j["per_example"], false);
    assert_eq!(j["train"]["batch"], 8);
    // The step's batch dimension is the batch, whatever `--dim` says.
    assert_eq!(j["train"]["sizes"]["B"], 8);
    assert_eq!(
        j["totals"]["flops"].as_u64(),
        Some(4 * s.flops()),
        "four rows are four times one"
    );
}

/// A step larger than the memory budget is described, not refused:
/// the summary says `nnc train` would stop.
#[test]
fn a_step_over_the_memory_budget() {
    let o = nnc(&["--max-memory", "1M", "summary", "examples/lenet_mnist.nn"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains(
            "more than 1.0 MiB (--max-memory): `nnc train` would stop before its first step"
        ),
        "{out}"
    );
    let j = summary_json(&["examples/lenet_mnist.nn"]);
    let fits = j["train"]["phases"][0]["memory"]["total_bytes"]
        .as_u64()
        .expect("bytes");
    assert!(fits > 1 << 20, "the step needs more than 1 MiB: {fits}");
}

#[test]
fn errors_are_diagnostics() {
    let o = nnc(&["--color", "never", "summary", "no/such/file.nn"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("cannot read `no/such/file.nn`"));

    let dir = common::temp_dir("summary-errors");
    let bad = dir.join("bad.nn");
    std::fs::write(&bad, "param w: [3 = zeros()\n").expect("write");
    let o = nnc(&["--color", "never", "summary", bad.to_str().expect("UTF-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("error"), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());

    let o = nnc(&[
        "--color",
        "never",
        "summary",
        "examples/iris.nn",
        "--dim",
        "Q=3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("`--dim Q=…` names no dimension"), "{err}");
    assert!(
        err.contains("help: its symbolic dimensions are: B"),
        "{err}"
    );

    let o = nnc(&["summary", "examples/iris.nn", "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");

    let o = nnc(&[
        "--color",
        "never",
        "summary",
        "examples/neuron.nn",
        "--batch",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("`--batch` is unused: this file has no `train` block"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
