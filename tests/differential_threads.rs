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
        split_everything();
        programs::check(&programs::program(&e, rows, cols))?;
    }
}

#[test]
fn products_split_by_rows_with_their_epilogues_agree_with_the_interpreter() {
    // Products with more rows than columns, split by rows over the pool's
    // threads (ragged blocks: 200 and 48 rows in blocks of 16), each
    // thread running the epilogue on its rows — a bias and tanh over
    // `[rows, n]`, a flat ReLU and scale — and the gradients' products
    // (200×40 @ 40×48, 48×200 @ 200×40) split the same way.
    use nnc::backend::BackendKind::{Interp, Jit};
    split_everything();
    let src = "\
param x: [200, 48] = uniform(-1, 1, seed = 1)
param w: [48, 40] = uniform(-0.5, 0.5, seed = 2)
param b: [40] = uniform(-1, 1, seed = 3)
param v: [48, 40] = uniform(-0.5, 0.5, seed = 4)
output loss = sum(tanh(x @ w + b) * 0.5) + sum(relu(x @ v) * 2) * 0.25
";
    let g = gradient_graph(src);
    let (j, i) = (gradients(&g, Jit), gradients(&g, Interp));
    assert_eq!(j.len(), 5, "loss and four gradients");
    assert_close(&j, &i, "");
}

/// The graph of `src`'s loss and its gradient.
fn gradient_graph(src: &str) -> nnc::ir::Graph {
    let c = nnc::pipeline::compile("t.nn", src, nnc::pipeline::Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("a graph");
    let loss = nnc::pipeline::find_loss(&g, None).expect("a loss");
    nnc::pipeline::grad_graph(&g, loss)
        .expect("gradients")
        .graph
}

/// `g`'s outputs on `kind`, from parameters drawn with seed 3.
fn gradients(g: &nnc::ir::Graph, kind: nnc::backend::BackendKind) -> Vec<nnc::tensor::Tensor> {
    let mut params = nnc::backend::interp::init_params(g, 3);
    nnc::backend::Engine::new(kind, g)
        .run(&mut params, &cranelift_entity::SecondaryMap::new())
        .expect("runs")
}

/// Every value of `j` within 1e-4 (relative, past 1) of `i`'s.
fn assert_close(j: &[nnc::tensor::Tensor], i: &[nnc::tensor::Tensor], what: &str) {
    assert_eq!(j.len(), i.len(), "{what}");
    for (a, b) in j.iter().zip(i) {
        assert_eq!(a.data.len(), b.data.len(), "{what}");
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}{x} vs {y}");
        }
    }
}

#[test]
fn loop_bodies_run_in_parts_by_rows_agree_with_the_interpreter() {
    // An LSTM's and a GRU's training gradients over 6 steps of a batch of
    // 8, in pools of 2 and 4 threads: each loop's body (the gates' product
    // of the carry's rows, the cell's kernel over the same rows, and
    // their derivatives) runs cut into as many parts by rows, each part
    // every step of the body on its own thread (`scan-rows`;
    // `NNC_LOG=plan` shows it applies to all four loops).
    use nnc::backend::BackendKind::{Interp, Jit};
    let src = "\
param xs: [6, 8, 5] = uniform(-1, 1, seed = 1)
param wx: [4, 5, 16] = uniform(-0.5, 0.5, seed = 2)
param wh: [4, 16, 16] = uniform(-0.5, 0.5, seed = 3)
param b: [4, 16] = uniform(-0.5, 0.5, seed = 4)
param gx: [3, 5, 16] = uniform(-0.5, 0.5, seed = 5)
param gh: [3, 16, 16] = uniform(-0.5, 0.5, seed = 6)
param gbx: [3, 16] = uniform(-0.5, 0.5, seed = 7)
param gbh: [3, 16] = uniform(-0.5, 0.5, seed = 8)
let hs = lstm(xs, zeros([8, 2, 16]), wx, wh, b)
let gs = gru(xs, zeros([8, 16]), gx, gh, gbx, gbh)
output loss = sum(lstm_h(last(hs)) * 0.5) + mean(gs * gs)
";
    let g = gradient_graph(src);
    let oracle = gradients(&g, Interp);
    for threads in [2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool");
        let j = pool.install(|| gradients(&g, Jit));
        assert_close(&j, &oracle, &format!("{threads} threads: "));
    }
}

#[test]
fn convolutions_over_groups_of_samples_agree_with_the_interpreter() {
    // 25 samples of 2×20×20 by 3×3 kernels: 18×324 unfolded floats a
    // sample, so the forward pass and the weight's gradient unfold 11
    // samples side by side per product; split over two threads (13 and
    // 12 samples), each thread has a full group and a partial one. Also
    // stride 2 with padding (the general unfolding).
    use nnc::backend::BackendKind::{Interp, Jit};
    split_everything();
    let src = "\
param x: [25, 2, 20, 20] = uniform(-1, 1, seed = 1)
param w: [3, 2, 3, 3] = uniform(-0.5, 0.5, seed = 2)
param v: [4, 3, 3, 3] = uniform(-0.5, 0.5, seed = 3)
let h = tanh(conv2d(x, w))
output loss = mean(h ^ 2) + mean(conv2d(h, v, stride = 2, padding = 1) ^ 2)
";
    let g = gradient_graph(src);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool");
    let j = pool.install(|| gradients(&g, Jit));
    let i = gradients(&g, Interp);
    assert_eq!(j.len(), 4, "the loss and three gradients");
    assert_close(&j, &i, "");
}

/// Every threading threshold at 0: each loop, GEMM and convolution that
/// can be split over threads is.
fn split_everything() {
    threads::set(Thresholds {
        loop_elements: 0,
        gemm_madds: 0,
        conv_madds: 0,
        gemv_madds: 0,
    });
}
