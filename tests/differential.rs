//! Randomised differential testing: small programs (`common/programs.rs`)
//! run on the interpreter and on each compiling backend (the JIT on every
//! case, OpenCL where it runs on every tenth), outputs and gradients
//! compared.
//! proptest shrinks a failure to a minimal program, which the failure
//! message prints as `.nn` source.

mod common;
#[path = "common/programs.rs"]
mod programs;

use nnc::backend::BackendKind;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The backends case `n` runs on: the JIT on every case; OpenCL (where it
/// runs) on every `NNC_OPENCL_EVERY`-th: by default every case in CI and
/// every tenth elsewhere, since each program's kernels are compiled by
/// the device's driver (PoCL, on a CPU: about half a second a program).
/// The programs never repeat, so they are not put in the disk cache.
fn backends_for(counter: &AtomicUsize) -> Vec<BackendKind> {
    nnc::backend::opencl::cache_models_on_disk(false);
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let every = std::env::var("NNC_OPENCL_EVERY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&e| e > 0)
        .unwrap_or(if common::in_ci() { 1 } else { 10 });
    common::compiled_backends()
        .into_iter()
        .filter(|&k| k != BackendKind::Opencl || n.is_multiple_of(every))
        .collect()
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
        for kind in backends_for(&SMALL) {
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
        for kind in backends_for(&GENERATED) {
            nnc::fuzz::differential_on(&bytes, kind);
        }
    }
}
