//! The OpenCL backend beyond agreeing with the interpreter (which the ui,
//! gradient, oracle and differential tests check on every backend): the
//! same random draws as the other backends, bit-identical training runs,
//! the disk cache of built programs, and the errors a machine without
//! OpenCL gets. Cases that need a device skip (or, in CI, fail) as
//! `common::opencl` says.

mod common;

use common::{nnc, temp_dir, text};
use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::ir::{Graph, InputId, RNG_KEY_INPUT};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;
use std::process::Command;

/// A build without the runtime says how to get it.
#[cfg(not(feature = "opencl"))]
#[test]
fn a_build_without_the_feature_says_how_to_enable_it() {
    let o = nnc(&["run", "examples/neuron.nn", "--backend", "opencl"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("built without the OpenCL backend"), "{err}");
    assert!(err.contains("--features opencl"), "{err}");
    assert!(err.contains("pocl-opencl-icd"), "{err}");
}

/// No platform registered: a clean error at once, with how to get one
/// (the loader is told to look in a folder that does not exist). The
/// bound on the time is a guard against the loader's multi-second wait
/// (a hang to the user), not a performance figure.
#[cfg(feature = "opencl")]
#[test]
fn no_platform_is_a_clean_error_at_once() {
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["run", "examples/neuron.nn", "--backend", "opencl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("OCL_ICD_VENDORS", "/nonexistent")
        .output()
        .expect("nnc runs");
    let took = started.elapsed();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no OpenCL platform"), "{err}");
    assert!(err.contains("pocl-opencl-icd"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
}

/// A program whose buffers do not fit the device stops before anything
/// is allocated, naming the buffer and what the device has.
#[test]
fn a_program_too_large_for_the_device_is_a_clean_error() {
    if !common::opencl() {
        return;
    }
    let d = temp_dir("opencl_big");
    let file = d.join("big.nn");
    // 149 GiB for each product operand and for the product: beyond any
    // device's largest allocation today.
    std::fs::write(
        &file,
        "let a = ones([200000, 200000]) @ ones([200000, 200000])\noutput s = sum(a)\n",
    )
    .expect("written");
    let o = nnc(&[
        "run",
        file.to_str().expect("utf-8 path"),
        "--backend",
        "opencl",
        "--max-memory",
        "1T",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error[E0304]"), "{err}");
    assert!(err.contains("[200000, 200000]"), "{err}");
    assert!(err.contains("149.0 GiB"), "{err}");
}

fn compile(src: &str) -> Graph {
    let c = pipeline::compile("case.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    c.graph.expect("compiled")
}

/// Dropout in a training step, with the same seed and step: the masks
/// are bit-identical on every backend.
#[test]
fn dropout_draws_the_same_masks_on_every_backend() {
    let mut g = compile("param w: [64, 50] = uniform(-1, 1)\noutput y = dropout(w, p = 0.4)\n");
    pipeline::set_training(&mut g, true);
    let key = |counter| {
        let mut inputs: SecondaryMap<InputId, Option<Tensor>> = SecondaryMap::new();
        let (id, _) = g
            .inputs
            .iter()
            .find(|(_, i)| i.name == RNG_KEY_INPUT)
            .expect("dropout reads the random key");
        inputs[id] = Some(interp::rng_key(11, counter));
        inputs
    };
    let run = |kind, counter| {
        let mut params = interp::init_params(&g, 0);
        Engine::new(kind, &g)
            .run(&mut params, &key(counter))
            .expect("runs")
            .remove(0)
    };
    let mut kinds = vec![BackendKind::Interp];
    kinds.extend(common::compiled_backends());
    for counter in [0, 1] {
        let want = run(BackendKind::Interp, counter);
        let dropped = want.data.iter().filter(|&&v| v == 0.0).count();
        assert!((800..1600).contains(&dropped), "dropped {dropped} of 3200");
        for &kind in &kinds[1..] {
            let got = run(kind, counter);
            let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&want), bits(&got), "{kind:?}, step {counter}");
        }
    }
    assert_ne!(
        run(BackendKind::Interp, 0).data,
        run(BackendKind::Interp, 1).data
    );
}

/// Normal and uniform draws: uniform ones bit-identical on every backend,
/// normal ones equal up to the last bits of `log` and `cos`.
#[test]
fn random_draws_agree_on_every_backend() {
    let g = compile("output u = random_uniform([3000])\noutput z = random_normal([3000])\n");
    let mut inputs: SecondaryMap<InputId, Option<Tensor>> = SecondaryMap::new();
    let (id, _) = g
        .inputs
        .iter()
        .find(|(_, i)| i.name == RNG_KEY_INPUT)
        .expect("a random draw reads the key");
    inputs[id] = Some(interp::rng_key(5, 17));
    let run = |kind| {
        let mut params = interp::init_params(&g, 0);
        Engine::new(kind, &g)
            .run(&mut params, &inputs)
            .expect("runs")
    };
    let want = run(BackendKind::Interp);
    let mean = want[1].data.iter().sum::<f32>() / 3000.0;
    assert!(mean.abs() < 0.1, "normal mean {mean}");
    for kind in common::compiled_backends() {
        let got = run(kind);
        assert_eq!(want[0].data, got[0].data, "uniform on {kind:?}");
        for (i, (w, g)) in want[1].data.iter().zip(&got[1].data).enumerate() {
            assert!(
                (w - g).abs() <= 1e-6 + 1e-5 * w.abs(),
                "normal [{i}] on {kind:?}: {w} vs {g}"
            );
        }
    }
}

/// Training the same file ten times on OpenCL gives bit-identical
/// parameters: every sum adds its terms in a fixed order.
#[test]
fn training_on_opencl_is_bit_identical_between_runs() {
    if !common::opencl() {
        return;
    }
    let d = temp_dir("opencl_repeat");
    // Every tensor of the checkpoint, by name, as bits (the file's
    // metadata is a map whose order may vary between runs).
    let tensors = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).expect("a checkpoint");
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    let mut first: Option<Vec<(String, Vec<u8>)>> = None;
    for run in 0..10 {
        let out = d.join(format!("w{run}.safetensors"));
        let o = nnc(&[
            "train",
            "examples/xor.nn",
            "--backend",
            "opencl",
            "--epochs",
            "20",
            "--save",
            out.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let got = tensors(&std::fs::read(&out).expect("saved"));
        assert!(got.len() >= 4, "the checkpoint holds the parameters");
        match &first {
            None => first = Some(got),
            Some(f) => assert!(*f == got, "run {run} differs from run 0"),
        }
    }
}

/// A second process finds the built program in the disk cache; a
/// corrupted entry is rebuilt from source and the results do not change.
#[test]
fn a_second_process_finds_its_program_in_the_disk_cache() {
    if !common::opencl() {
        return;
    }
    let cache = temp_dir("opencl_cache");
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_nnc"))
            .args(["run", "examples/neuron.nn", "--backend", "opencl"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("XDG_CACHE_HOME", &cache)
            .env("NNC_LOG", "opencl")
            .output()
            .expect("nnc runs");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        (text(&o.stdout), text(&o.stderr))
    };
    let (out1, log1) = run();
    assert!(log1.contains("built from source"), "{log1}");
    let (out2, log2) = run();
    assert!(log2.contains("from the cache"), "{log2}");
    assert_eq!(out1, out2);
    // Corrupt every entry's binary (it ends 8 bytes before the file: its
    // checksum follows).
    let dir = cache.join("nnc").join("opencl");
    let mut corrupted = 0;
    for e in std::fs::read_dir(&dir).expect("the cache folder exists") {
        let path = e.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("readable");
        let end = bytes.len() - 8;
        bytes[end - 64..end].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(&path, bytes).expect("writable");
        corrupted += 1;
    }
    assert!(corrupted > 0);
    let (out3, log3) = run();
    assert!(log3.contains("built from source"), "{log3}");
    assert_eq!(out1, out3);
    // The rebuilt entry serves the next process again.
    let (out4, log4) = run();
    assert!(log4.contains("from the cache"), "{log4}");
    assert_eq!(out1, out4);
}

/// A training run keeps the parameters and the optimizer state on the
/// device: per step only the loss and the step's guard come back (and
/// the parameters once per epoch, and when a short last batch switches
/// programs), far less than reading them back after every step would.
#[test]
fn training_keeps_the_parameters_on_the_device() {
    if !common::opencl() {
        return;
    }
    let d = temp_dir("opencl_kept");
    let out = d.join("w.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["train", "examples/digits_mlp.nn", "--backend", "opencl"])
        .args(["--epochs", "2", "--save", out.to_str().expect("utf-8 path")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NNC_LOG", "opencl")
        .output()
        .expect("nnc runs");
    let log = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{log}");
    let bytes = std::fs::read(&out).expect("saved");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a checkpoint");
    let state: usize = st.tensors().iter().map(|(_, t)| t.data().len() / 4).sum();
    // "[opencl] program of S steps: R runs, W floats written to the
    // device, X read back", for the step programs (the evaluation's runs
    // once per epoch).
    let (mut runs, mut read) = (0u64, 0u64);
    for line in log.lines().filter(|l| l.contains(" runs, ")) {
        let num = |after: &str, before: &str| -> u64 {
            let s = line.split(after).nth(1).expect("field");
            s.split(before)
                .next()
                .expect("field")
                .trim()
                .parse()
                .expect("a number")
        };
        let r = num("steps: ", " runs");
        if r > 2 {
            runs += r;
            read += num("device, ", " read back");
        }
    }
    assert!(runs >= 80, "two epochs of 45 steps: {log}");
    let per_step_reads = runs * state as u64;
    assert!(
        read * 8 < per_step_reads,
        "{read} floats read back over {runs} steps; reading the {state} floats of parameters and state after each step would be {per_step_reads}\n{log}"
    );
}
