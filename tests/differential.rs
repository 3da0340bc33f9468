//! Randomised differential testing: small programs (`common/programs.rs`)
//! run on the JIT and on the interpreter, outputs and gradients compared.
//! proptest shrinks a failure to a minimal program, which the failure
//! message prints as `.nn` source.

#[path = "common/programs.rs"]
mod programs;

use proptest::prelude::*;

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
    fn jit_agrees_with_the_interpreter(e in programs::expr(), rows in 1usize..7, cols in 1usize..10) {
        programs::check(&programs::program(&e, rows, cols))?;
    }
}
