//! The differential programs again with every threading threshold at 0,
//! so each loop, GEMM and convolution that can be split over threads is
//! (the default thresholds are megabytes, which these small programs never
//! reach). A test binary of its own: the thresholds are process-wide.

#[path = "common/programs.rs"]
mod programs;

use nnc::backend::jit::threads::{self, Thresholds};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261130),
        .. ProptestConfig::default()
    })]

    #[test]
    fn split_over_threads_the_jit_agrees_with_the_interpreter(e in programs::expr(), rows in 1usize..7, cols in 1usize..10) {
        threads::set(Thresholds { loop_elements: 0, gemm_madds: 0, conv_madds: 0 });
        programs::check(&programs::program(&e, rows, cols))?;
    }
}
