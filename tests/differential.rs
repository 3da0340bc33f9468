//! Randomised differential testing: small programs (`common/programs.rs`)
//! run on the interpreter and on each compiling backend (the JIT on every
//! case; OpenCL, where it runs, on every eighth case in CI and every
//! tenth elsewhere), outputs and gradients compared.
//! proptest shrinks a failure to a minimal program, which the failure
//! message prints as `.nn` source.

mod common;
#[path = "common/programs.rs"]
mod programs;

use nnc::backend::BackendKind;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The backends case `n` runs on: the JIT on every case; OpenCL (where it
/// runs) on every `NNC_OPENCL_EVERY`-th (10 by default), since each
/// program's kernels are compiled by the device's driver (PoCL, on a CPU:
/// about 2 s a program). The programs never repeat, so they are not put
/// in the disk cache.
///
/// A child process of [`opencl_runs_every_eighth_program_in_children`]
/// (which sets `NNC_DIFF_CHUNK=k/m`) runs OpenCL alone, on the cases `n`
/// with `n % m == k`. In CI the `chunked` proptest leaves OpenCL to those
/// children.
fn backends_for(counter: &AtomicUsize, chunked: bool) -> Vec<BackendKind> {
    nnc::backend::opencl::cache_models_on_disk(false);
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if let Some((k, m)) = chunk() {
        return common::compiled_backends()
            .into_iter()
            .filter(|&b| b == BackendKind::Opencl && n % m == k)
            .collect();
    }
    let every = std::env::var("NNC_OPENCL_EVERY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&e| e > 0)
        .or(if chunked && common::in_ci() {
            None
        } else {
            Some(10)
        });
    common::compiled_backends()
        .into_iter()
        .filter(|&k| k != BackendKind::Opencl || every.is_some_and(|e| n.is_multiple_of(e)))
        .collect()
}

/// This process's share of the cases, `NNC_DIFF_CHUNK=k/m`.
fn chunk() -> Option<(usize, usize)> {
    let v = std::env::var("NNC_DIFF_CHUNK").ok()?;
    let (k, m) = v.split_once('/')?;
    Some((k.parse().ok()?, m.parse().ok()?))
}

/// In CI, every eighth of the 1000 programs of the first proptest runs
/// on OpenCL too, in two child processes of 63 and 62 programs (at once:
/// the driver's compiler keeps a core busy each). Not all 1000: PoCL
/// compiles a program's kernels in about 2 s of CPU here (25 programs:
/// 53 s), so all of them took a quarter of an hour of CI, and every
/// fourth 3.6 minutes of CI's OpenCL pass (with the 30 generated
/// programs). Not in this
/// process: PoCL keeps every kernel library it loads mapped for the life
/// of the process (about five memory maps a kernel), and a thousand
/// programs' kernels exceed the kernel's limit of 65,530 maps. Outside CI
/// (or with no device) this is skipped, and the proptest runs OpenCL on
/// every tenth case in-process.
#[test]
fn opencl_runs_every_eighth_program_in_children() {
    if chunk().is_some() || !common::in_ci() || !common::opencl() {
        return;
    }
    let me = std::env::current_exe().expect("the test binary's path");
    // Child j takes the cases n with n % 16 == 8j: together, n % 8 == 0.
    let (every, children) = (8, 2);
    let parts = every * children;
    let shares: Vec<usize> = (0..children).map(|j| j * every).collect();
    for pair in shares.chunks(2) {
        let running: Vec<_> = pair
            .iter()
            .map(|k| {
                std::process::Command::new(&me)
                    .args([
                        "compiled_backends_agree_with_the_interpreter",
                        "--exact",
                        "--test-threads",
                        "1",
                    ])
                    .env("NNC_DIFF_CHUNK", format!("{k}/{parts}"))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("the test binary starts")
            })
            .collect();
        for (k, child) in pair.iter().zip(running) {
            let o = child.wait_with_output().expect("the chunk finishes");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                o.status.success(),
                "OpenCL chunk {k}/{parts} failed:\n{text}"
            );
            assert!(
                text.contains("1 passed"),
                "chunk {k}/{parts} ran no test:\n{text}"
            );
        }
    }
}

static SMALL: AtomicUsize = AtomicUsize::new(0);
static GENERATED: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        // The same 1000 programs in every run, so CI is deterministic;
        // change the seed to explore others.
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261128),
        .. ProptestConfig::default()
    })]

    #[test]
    fn compiled_backends_agree_with_the_interpreter(e in programs::expr(), rows in 1usize..7, cols in 1usize..10) {
        let source = programs::program(&e, rows, cols);
        for kind in backends_for(&SMALL, true) {
            programs::check_on(&source, kind)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261130),
        .. ProptestConfig::default()
    })]

    /// The fuzzing campaign's generator (`nnc::fuzz`): programs of rank 0
    /// to 4 over the language's operations (reductions over several axes,
    /// gathers and scatter-adds, convolutions and poolings,
    /// batched and broadcast matmuls, reshapes, transposes, slices,
    /// concatenations and the rest its documentation lists), on input
    /// values that include the float limits; it asserts the backends
    /// agree (outputs, and gradients where there is a loss) and panics
    /// otherwise.
    #[test]
    fn generated_programs_of_every_rank_agree(bytes in prop::collection::vec(any::<u8>(), 16..400)) {
        for kind in backends_for(&GENERATED, false) {
            nnc::fuzz::differential_on(&bytes, kind);
        }
    }
}

/// Rows of every length from 1 to 40: the JIT runs a row four vectors at
/// a time, then single vectors, then scalars; a reduction along the row
/// keeps four running values, and a value broadcast along the row is
/// loaded once per row. Reductions along the row, a broadcast along it,
/// and their gradients against the interpreter (the JIT alone: the change
/// of length is the JIT's concern, and OpenCL's drivers take seconds a
/// program).
#[test]
fn rows_of_every_length_agree() {
    let jit: Vec<BackendKind> = common::compiled_backends()
        .into_iter()
        .filter(|&b| b == BackendKind::Jit)
        .collect();
    for n in 1..=40 {
        let source = format!(
            "param p: [3, {n}] = uniform(-1, 1, seed = 1)\n\
             param c: [3, 1] = uniform(-1, 1, seed = 2)\n\
             let m = max(p, axis = -1, keepdims = true)\n\
             let y = (p - m) * c + mean(p * p, axis = -1, keepdims = true)\n\
             let s = sum(exp(p), axis = -1)\n\
             output y = y\n\
             output s = s\n\
             output loss = sum(y * y) + sum(s)\n"
        );
        for &kind in &jit {
            if let Err(e) = programs::check_on(&source, kind) {
                panic!("rows of {n}: {e}");
            }
        }
    }
}

/// Batch-1 layers wide enough (from 2^16 multiply-adds) that the JIT
/// shares each GEMV's columns with its helper thread, run from this
/// thread (outside rayon's pool, where the helper is used) call after
/// call, so that some calls find the helper awake and some do not: the
/// outputs and gradients agree with the interpreter every time.
#[test]
fn batch_one_layers_shared_with_the_helper_agree() {
    let source = "param x: [1, 784] = uniform(-1, 1, seed = 1)\n\
                  param w: [784, 256] = uniform(-0.1, 0.1, seed = 2)\n\
                  param b: [256] = uniform(-1, 1, seed = 3)\n\
                  param v: [256, 300] = uniform(-0.1, 0.1, seed = 4)\n\
                  let h = relu(x @ w + b)\n\
                  output y = h @ v\n\
                  output loss = sum(tanh(h @ v))\n";
    let jit: Vec<BackendKind> = common::compiled_backends()
        .into_iter()
        .filter(|&b| b == BackendKind::Jit)
        .collect();
    for call in 0..20 {
        for &kind in &jit {
            if let Err(e) = programs::check_on(source, kind) {
                panic!("call {call}: {e}");
            }
        }
    }
}

/// Products that read slices of a stored matrix in place (fusion's
/// `slice-in-place`, a GEMM's operand at the slice's offset with its
/// operand's strides): a block of columns as a left operand, and a block
/// of columns, reshaped, sliced again and reshaped, as the matrix a batch
/// of products shares (an LSTM's `h`, read out of its carry). Outputs
/// and gradients agree with the interpreter.
#[test]
fn products_of_slices_read_in_place_agree() {
    let source = "param x: [6, 20] = uniform(-1, 1, seed = 1)\n\
                  param w: [4, 5] = uniform(-1, 1, seed = 2)\n\
                  param s: [3, 5, 7] = uniform(-1, 1, seed = 3)\n\
                  let h = reshape(slice(x, axis = 1, start = 10, end = 20), [6, 2, 5])\n\
                  output y = slice(x, axis = 1, start = 3, end = 7) @ w\n\
                  output z = reshape(slice(h, axis = 1, start = 1, end = 2), [6, 5]) @ s\n\
                  output loss = sum(tanh(slice(x, axis = 1, start = 3, end = 7) @ w))\n";
    for kind in common::compiled_backends() {
        if let Err(e) = programs::check_on(source, kind) {
            panic!("{kind:?}: {e}");
        }
    }
}
