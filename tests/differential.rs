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

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261130),
        .. ProptestConfig::default()
    })]

    /// The fuzzing campaign's generator (`nnc::fuzz`): programs of rank 0
    /// to 4 over the language's operations (reductions over several axes,
    /// batched and broadcast matmuls, reshapes, transposes, slices,
    /// concatenations and the rest its documentation lists), on input
    /// values that include the float limits; it asserts the backends
    /// agree (outputs, and gradients where there is a loss) and panics
    /// otherwise.
    #[test]
    fn generated_programs_of_every_rank_agree(bytes in prop::collection::vec(any::<u8>(), 16..400)) {
        nnc::fuzz::differential(&bytes);
    }
}
