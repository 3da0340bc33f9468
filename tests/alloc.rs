//! Memory planning: after the first call for a shape set, a JIT training
//! step allocates nothing. A counting global allocator sees every
//! allocation of this test binary (all threads), so the tests take turns.
//!
//! The tests run the kernels on one thread. With more, rayon's injector
//! queue allocates a block every 63 jobs it is handed from outside its
//! pool (about one allocation every 20 steps here), and `gemm`'s threaded
//! path allocates per-thread packing buffers on each call; nnc's own
//! buffers never allocate once planned.

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The tests take turns: the counter is global.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations during three steps after five warm-up steps.
fn allocations_of_three_steps(src: &str, rows: usize) -> usize {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // One thread (see the top of the file); the first test to get here
    // sets up the pool, the other finds it set.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let c = pipeline::compile("model.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let (g, train) = (c.graph.expect("graph"), c.train.expect("train"));
    let step = pipeline::step_graph(&g, &train).expect("step graph");
    let mut params = interp::init_params(&step.graph, 0);
    let mut inputs = SecondaryMap::new();
    for (i, info) in step.graph.inputs.iter() {
        // The declared shape, with `rows` for the symbolic (batch) dim.
        let shape: Vec<usize> = info
            .ty
            .shape
            .iter()
            .map(|d| match d {
                nnc::ir::Dim::Known(k) => *k as usize,
                nnc::ir::Dim::Sym(_) => rows,
            })
            .collect();
        let data = (0..shape.iter().product::<usize>())
            .map(|k| ((k * 37) % 101) as f32 / 101.0)
            .collect();
        inputs[i] = Some(Tensor::new(shape, data));
    }
    let mut e = Engine::new(BackendKind::Jit, &step.graph);
    e.step_in_place(&mut params, &inputs).expect("first step");
    for _ in 0..4 {
        e.step_in_place(&mut params, &inputs)
            .expect("a warm-up step");
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..3 {
        e.step_in_place(&mut params, &inputs).expect("a step");
    }
    let during = ALLOCS.load(Ordering::SeqCst) - before;
    // The steps did run: the parameters stayed finite.
    assert!(params
        .values()
        .all(|t| t.data.iter().all(|v| v.is_finite())));
    during
}

#[test]
fn a_compiled_training_step_without_matmuls_allocates_nothing_after_the_first() {
    // Logistic regression written with a reduction instead of `@`: loop
    // kernels only (elementwise chains, reductions, Adam's update).
    let src = "input x: [B, 64]\ninput y: [B, 1]\nparam w: [64] = uniform(-0.1, 0.1, seed = 1)\nparam b: [] = 0\n\
        train {\n  loss = mean((sigmoid(sum(x * w, axis = 1, keepdims = true) + b) - y) ^ 2)\n  optimizer = adam(lr = 1e-2)\n  batch = 4096\n}\n";
    let n = allocations_of_three_steps(src, 4096);
    assert_eq!(n, 0, "three steps allocated {n} times");
}

#[test]
fn in_the_mlp_step_only_the_gemm_calls_allocate() {
    // The `gemm` crate allocates its packing buffers on every call (a
    // few per call); nnc's own buffers are all planned. The MLP's step
    // makes 8 GEMM calls (3 forward, 5 backward: no input gradient for
    // the first layer).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bench/mlp_train.nn");
    let src = std::fs::read_to_string(path).expect("the benchmark file");
    let n = allocations_of_three_steps(&src, 128);
    assert!(n <= 3 * 8 * 4, "three steps allocated {n} times");
}

#[test]
fn pooling_slices_concatenation_and_loops_allocate_nothing_after_the_first_step() {
    // Max pooling and its gradient, a slice and a concatenation (and their
    // adjoints), a loop and its derivative loops (with the extra argument
    // hoisted and its steps summed as they run).
    let src = "input x: [B, 1, 4, 4]\ninput s: [6, B, 4]\nparam w: [4] = uniform(-0.5, 0.5, seed = 1)\n\
        fn cell(c: [N, 4], x: [N, 4], w: [4]) -> [N, 4] {\n  tanh(c * w + x)\n}\n\
        train {\n  loss = mean(max_pool2d(x * w, 2) ^ 2) + mean(concat(slice(scan(cell, zeros([B, 4]), s, w * 2), axis = 0, start = 2), s, axis = 0) ^ 2)\n  optimizer = sgd(lr = 1e-2)\n  batch = 8\n}\n";
    let n = allocations_of_three_steps(src, 8);
    assert_eq!(n, 0, "three steps allocated {n} times");
}
