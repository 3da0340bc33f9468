//! The graph optimisations before code generation: what they change in
//! the graph, and that the graph computes the same values after them.

use cranelift_entity::SecondaryMap;
use nnc::backend::interp::{self, Feed};
use nnc::ir::{Dim, Graph, Op};
use nnc::pipeline::{self, Stage};

mod common;

/// An LSTM over 5 steps with the stacked gate weights of the stdlib.
const LSTM: &str = "\
param wx: [4, 3, 6] = xavier_uniform(seed = 1)
param wh: [4, 6, 6] = xavier_uniform(seed = 2)
param b: [4, 6] = uniform(-0.5, 0.5, seed = 3)
param xs: [5, 2, 3] = uniform(-1.0, 1.0, seed = 4)
output loss = sum(lstm_h(last(lstm(xs, zeros([2, 2, 6]), wx, wh, b))) ^ 2)
";

fn grad_graph(src: &str) -> Graph {
    let c = pipeline::compile("t.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("compiled");
    let loss = pipeline::find_loss(&g, None).expect("a loss");
    pipeline::grad_graph(&g, loss)
        .expect("differentiates")
        .graph
}

fn run(g: &Graph) -> Vec<Vec<f32>> {
    let params = interp::init_params(g, 0);
    let inputs = SecondaryMap::new();
    let feed = Feed {
        params: &params,
        inputs: &inputs,
    };
    interp::run(g, &feed)
        .expect("runs")
        .into_iter()
        .map(|t| t.data)
        .collect()
}

/// The shapes cut by the live slices of the loop bodies that read one of
/// the body's inputs directly.
fn sliced_inputs_in_bodies(g: &Graph) -> Vec<Vec<Dim>> {
    let mut out = Vec::new();
    for b in g.bodies.values() {
        let mut live = vec![false; b.nodes.len()];
        for o in &b.outputs {
            live[o.node.as_u32() as usize] = true;
        }
        for (n, d) in b.nodes.iter().rev() {
            if !live[n.as_u32() as usize] {
                continue;
            }
            for a in d.op.args() {
                live[a.as_u32() as usize] = true;
            }
            if let Op::Slice { arg, .. } = d.op {
                if matches!(b.nodes[arg].op, Op::Input(_)) {
                    out.push(b.nodes[arg].ty.shape.clone());
                }
            }
        }
    }
    out
}

#[test]
fn loop_invariant_slices_leave_every_loop_body_and_the_values_stay() {
    let g = grad_graph(LSTM);
    // The forward loop and its derivative loops each cut the 12 gate
    // weights from the stacked ones, every step (some slices also cut the
    // state, which varies).
    let before = sliced_inputs_in_bodies(&g);
    // The optimised graph of the pipeline's fusion stage.
    let opt = nnc::pipeline::fuse(&g).graph;
    let after = sliced_inputs_in_bodies(&opt);
    let gates = |v: &[Vec<Dim>]| v.iter().filter(|s| s[0] == Dim::Known(4)).count();
    assert!(
        gates(&before) >= 12 * 4,
        "{} gate slices before",
        gates(&before)
    );
    assert_eq!(gates(&after), 0, "a gate weight is still sliced in a body");
    // What stays cuts the state: `lstm_h` and `lstm_c` of the carry, and
    // the state out of the forward loop's widened carry (`scan-residual`:
    // the 12 columns of the state, then 5 stored values of 6 per row).
    assert!(
        after
            .iter()
            .all(|s| s[..] == [2, 2, 6].map(Dim::Known) || s[..] == [2, 42].map(Dim::Known)),
        "{after:?}"
    );
    // Moving work does not change arithmetic: the same bits.
    assert_eq!(run(&g), run(&nnc::passes::licm::hoist(&g)));
    // The pipeline also joins the derivative's summed products into one
    // (`matmul-sum`), which adds in another order.
    assert_close(&run(&g), &run(&opt));
}

/// Equal values up to the order of float additions.
fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * x.abs(), "{x} vs {y}");
        }
    }
}

#[test]
fn slices_that_tile_a_tensor_get_one_gradient_without_zero_padding() {
    // Four gates cut from one stacked weight: their adjoints are joined
    // into the weight's gradient, not each padded to [4, 6, 6] and added.
    let src = "\
param wh: [4, 6, 6] = xavier_uniform(seed = 2)
param h: [2, 6] = uniform(-1.0, 1.0, seed = 4)
fn gate(h: [B, 6], w: [1, 6, 6]) -> [B, 6] {
  tanh(h @ reshape(w, [6, 6]))
}
output loss = sum(gate(h, slice(wh, 0, 0, 1)) * gate(h, slice(wh, 0, 1, 2)) + gate(h, slice(wh, 0, 2, 3)) - gate(h, slice(wh, 0, 3, 4)))
";
    let g = grad_graph(src);
    let pads = g
        .nodes
        .values()
        .filter(|d| matches!(d.op, Op::Fill { value, .. } if value == 0.0))
        .filter(|d| d.ty.shape.len() == 3)
        .count();
    assert_eq!(pads, 0, "no zero blocks: the pieces tile the weight");
    let concats = g
        .nodes
        .values()
        .filter(|d| matches!(d.op, Op::Concat { .. }))
        .count();
    assert_eq!(concats, 3, "four pieces, three joins");
}

/// The live nodes of `g`'s outputs and updates, as ops.
fn live_ops(g: &Graph) -> Vec<&Op> {
    let mut live = vec![false; g.nodes.len()];
    for n in g
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(g.updates.iter().map(|u| u.node))
    {
        live[n.as_u32() as usize] = true;
    }
    let mut ops = Vec::new();
    for (n, d) in g.nodes.iter().rev() {
        if live[n.as_u32() as usize] {
            ops.push(&d.op);
            for a in d.op.args() {
                live[a.as_u32() as usize] = true;
            }
        }
    }
    ops
}

#[test]
fn step_parallel_products_leave_their_loops_and_the_values_stay() {
    let g = grad_graph(LSTM);
    let opt = nnc::pipeline::fuse(&g).graph;
    let scans = |g: &Graph| -> Vec<usize> {
        // The live products of each live loop's body.
        live_ops(g)
            .into_iter()
            .filter_map(|op| match op {
                Op::Scan { body, .. } => Some(
                    live_ops(&g.bodies[*body])
                        .iter()
                        .filter(|op| matches!(op, Op::MatMul(..)))
                        .count(),
                ),
                _ => None,
            })
            .collect()
    };
    // Before: the forward loop (8 products a step), and loops for the
    // adjoints of the carry (the 8 recomputed, and 4 more), the sequence
    // (`xs` is a parameter here: 8 and 4) and the weights (8 and 8).
    let mut before = scans(&g);
    before.sort();
    assert_eq!(before, vec![8, 12, 12, 16]);
    // After: only what reads a carry stays in a loop — the forward's
    // h @ wh (4, one batched product: `matmul-horizontal`) and the carry
    // adjoint's Σₖ λₖ @ wh[k]ᵀ (4, one product over the four side by side:
    // `matmul-sum`). The rest runs over all steps at once (`scan-lift`,
    // `scan-vectorize`).
    let mut after = scans(&opt);
    after.sort();
    assert_eq!(after, vec![1, 1]);
    // The same values, up to the order of the weights' gradient sums.
    for (a, b) in run(&g).iter().zip(run(&opt)) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * x.abs(), "{x} vs {y}");
        }
    }
}

/// Loss and gradients of `src` on one backend.
fn loss_and_grads(src: &str, backend: nnc::backend::BackendKind) -> Vec<Vec<f32>> {
    let g = grad_graph(src);
    let mut params = interp::init_params(&g, 3);
    let inputs = SecondaryMap::new();
    nnc::backend::Engine::new(backend, &g)
        .run(&mut params, &inputs)
        .expect("runs")
        .into_iter()
        .map(|t| t.data)
        .collect()
}

#[test]
fn native_window_kernels_agree_with_the_interpreter_on_both_threads() {
    // Large enough that the JIT splits the convolutions over the pool's
    // threads (the weight gradient then adds per-thread partial sums);
    // stride 2 with padding, and overlapping pooling windows of both kinds.
    use nnc::backend::BackendKind::{Interp, Jit};
    let src = "\
param x: [16, 4, 17, 17] = uniform(-1.0, 1.0, seed = 1)
param w: [8, 4, 3, 3] = normal(0, 0.5, seed = 2)
param v: [6, 8, 3, 3] = normal(0, 0.5, seed = 3)
output loss = mean(max_pool2d(tanh(conv2d(x, w, stride = 2, padding = 1)), 3, stride = 2) ^ 2) + mean(avg_pool2d(conv2d(conv2d(x, w, padding = 1), v), 3, stride = 1) ^ 2)
";
    let (j, i) = (loss_and_grads(src, Jit), loss_and_grads(src, Interp));
    assert_eq!(j.len(), 4, "loss and three gradients");
    for (k, (a, b)) in j.iter().zip(&i).enumerate() {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (n, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale + 1e-7,
                "output {k}[{n}]: jit {x}, interp {y} (largest {scale})"
            );
        }
    }
}

/// The live matrix products of `g`: in its outer graph and in the bodies
/// of its live loops.
fn live_products(g: &Graph) -> usize {
    live_ops(g)
        .into_iter()
        .map(|op| match op {
            Op::MatMul(..) => 1,
            Op::Scan { body, .. } => live_ops(&g.bodies[*body])
                .iter()
                .filter(|op| matches!(op, Op::MatMul(..)))
                .count(),
            _ => 0,
        })
        .sum()
}

#[test]
fn forward_loops_store_what_their_derivatives_would_recompute() {
    let g = grad_graph(LSTM);
    // `scan-residual` alone: the forward loop carries its gate values
    // along, its derivative loops read them. The same bits: a stored value
    // is the value the derivative computed.
    let kept = nnc::passes::scan_residual::keep(&g);
    nnc::ir::verify(&kept).expect("verifies");
    assert_eq!(run(&g), run(&kept));
    let widened = kept
        .bodies
        .values()
        .filter(|b| {
            b.inputs.values().next().map(|i| i.ty.shape.clone())
                == Some(vec![Dim::Known(2), Dim::Known(42)])
        })
        .count();
    assert_eq!(widened, 1, "one forward body carries [B, 12 + 5·6]");
    // In the whole pipeline, the four products h @ wh[k] of the consumed
    // carries are computed once (in the forward loop), not again for the
    // derivative: 4 fewer; 3 more fewer where the forward loop's four are
    // one batched product (`matmul-horizontal`), and 3 where the carry
    // adjoint's four summed ones are one (`matmul-sum`).
    let without = nnc::passes::cse::cse(&nnc::passes::scan_lift::lift(&nnc::passes::licm::hoist(
        &nnc::passes::cse::cse(&g),
    )));
    let with = nnc::pipeline::fuse(&g).graph;
    assert_eq!(live_products(&without) - live_products(&with), 4 + 3 + 3);
    for (a, b) in run(&without).iter().zip(run(&with)) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * x.abs(), "{x} vs {y}");
        }
    }
}

#[test]
fn max_pooling_sends_each_gradient_to_the_first_maximal_tap_on_both_backends() {
    // Every window a tie: the gradient goes to its first tap in row-major
    // order. 2×2 with stride 2 (the JIT's own path for the common window,
    // on sides that it tiles and on odd ones, whose last row and column
    // no window reads) and 3×3 with stride 2 (overlapping windows, the
    // general path).
    let src = "\
param p: [2, 3, 6, 6] = ones()
param q: [2, 3, 7, 7] = ones()
param w: [2, 3, 3, 3] = uniform(-1, 1, seed = 5)
param v: [2, 3, 3, 3] = uniform(-1, 1, seed = 6)
param r: [2, 3, 7, 7] = uniform(-1, 1, seed = 7)
output loss = sum(max_pool2d(p, 2) * w) + sum(max_pool2d(q, 3, stride = 2) * v) + sum(max_pool2d(w * v, 2, stride = 1)) + sum(max_pool2d(r, 2) * w)
";
    let jit = loss_and_grads(src, nnc::backend::BackendKind::Jit);
    let oracle = loss_and_grads(src, nnc::backend::BackendKind::Interp);
    // The loss sums in another order; the gradients are the same bits.
    let (l, m) = (jit[0][0], oracle[0][0]);
    assert!((l - m).abs() <= 1e-6 * m.abs(), "{l} vs {m}");
    for (a, b) in jit.iter().zip(&oracle).skip(1) {
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|x| x.to_bits()).collect(),
            b.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(a, b);
    }
    // The 2×2 gradient: w at each window's top-left tap, zero elsewhere.
    let gp = &jit[1];
    let nonzero = gp.iter().filter(|x| **x != 0.0).count();
    assert_eq!(nonzero, 2 * 3 * 3 * 3);
    assert!(gp[0] != 0.0 && gp[1] == 0.0 && gp[6] == 0.0 && gp[7] == 0.0);
    // The odd sides: one tap of each window, and nothing in the last row
    // and column of each plane.
    let gr = &jit[5];
    assert_eq!(gr.iter().filter(|x| **x != 0.0).count(), 2 * 3 * 3 * 3);
    for plane in gr.chunks_exact(49) {
        assert!(plane[42..]
            .iter()
            .chain(plane.iter().skip(6).step_by(7))
            .all(|x| *x == 0.0));
    }
}

#[test]
fn batch_one_products_agree_with_the_interpreter() {
    // Rows of one: the JIT's full-width GEMV (ragged k and n, three
    // batches of one row each; 300 columns: blocks summed in registers
    // and a ragged rest), and its gemm path where the right operand is
    // read transposed.
    let src = "\
param x: [1, 37] = uniform(-1, 1, seed = 1)
param w: [37, 29] = uniform(-1, 1, seed = 2)
param xs: [3, 1, 37] = uniform(-1, 1, seed = 3)
param v: [29, 37] = uniform(-1, 1, seed = 4)
param u: [37, 300] = uniform(-1, 1, seed = 5)
output loss = sum(tanh(x @ w)) + sum(xs @ w) * 0.5 + sum(x @ transpose(v, [1, 0])) + sum(tanh(x @ u))
";
    let jit = loss_and_grads(src, nnc::backend::BackendKind::Jit);
    let oracle = loss_and_grads(src, nnc::backend::BackendKind::Interp);
    for (a, b) in jit.iter().zip(&oracle) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn batches_of_small_products_shared_among_threads_agree_with_the_interpreter() {
    // 32 products of 48×32 @ 32×48: each below the size from which the
    // JIT splits a product (2^20 multiply-adds by default; this test
    // binary keeps the defaults), together above it, so with several
    // threads each takes a share of the batch and runs the epilogue (a
    // bias and tanh) on its own products; the gradients' batched products
    // likewise.
    use nnc::backend::BackendKind::{Interp, Jit};
    let src = "\
param x: [32, 48, 32] = uniform(-1, 1, seed = 1)
param w: [32, 32, 48] = uniform(-0.5, 0.5, seed = 2)
param b: [48] = uniform(-1, 1, seed = 3)
output loss = sum(tanh(x @ w + b) * 0.5)
";
    let (j, i) = (loss_and_grads(src, Jit), loss_and_grads(src, Interp));
    assert_eq!(j.len(), 4, "loss and three gradients");
    for (a, b) in j.iter().zip(&i) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn loop_bodies_that_return_an_operand_agree_with_the_interpreter() {
    // A body whose result is one of its operands' buffers (an argument,
    // a sequence's step) beside one that carries, forwards and in
    // reverse: the JIT's buffers for the carry, the steps and the
    // arguments must each keep their own values.
    use nnc::backend::BackendKind::{Interp, Jit};
    let src = "\
fn keep_w(c: [2], x: [2], w: [2]) -> [2] {
  w
}
fn mix(c: [2], x: [2], w: [2]) -> [2] {
  c * w + x
}
fn take_x(c: [2], x: [2], w: [2]) -> [2] {
  x
}
param w: [2] = uniform(-1.0, 1.0, seed = 1)
param xs: [4, 2] = uniform(-1.0, 1.0, seed = 2)
output a = scan(keep_w, ones([2]), xs, w)
output b = scan(mix, ones([2]), xs, w)
output c = scan(take_x, ones([2]), xs, w)
output d = scan(mix, ones([2]), xs, w, reverse = true)
";
    let c = pipeline::compile("t.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("compiled");
    let outs = |kind| {
        let mut params = interp::init_params(&g, 0);
        nnc::backend::Engine::new(kind, &g)
            .run(&mut params, &SecondaryMap::new())
            .expect("runs")
            .into_iter()
            .map(|t| t.data)
            .collect::<Vec<_>>()
    };
    let (jit, oracle) = (outs(Jit), outs(Interp));
    assert_eq!(jit, oracle);
    // `keep_w` stacks w at every step; `mix` really carries.
    assert_eq!(jit[0][0..2], jit[0][6..8]);
    assert_ne!(jit[1][0..2], jit[1][6..8]);
}

#[test]
fn products_sharing_an_operand_become_one_batched_product_and_the_values_stay() {
    use nnc::passes::{cse::cse, horizontal};
    // In a loop body: the LSTM's four h @ wh[k] read the carry and become
    // one (`matmul-horizontal`); its x @ wx[k] do not (scan-lift takes them
    // out of the loop as one GEMM over all steps each). In the carry's
    // derivative loop, Σₖ λₖ @ wh[k]ᵀ becomes one product (`matmul-sum`);
    // the other derivative loops' products do not read their carry.
    let g = cse(&grad_graph(LSTM));
    let fused = horizontal::fuse(&g);
    nnc::ir::verify(&fused).expect("verifies");
    assert_eq!(live_products(&g) - live_products(&fused), 3 + 3);
    assert_close(&run(&g), &run(&fused));
    // Outside a loop every group is fused: an LSTM cell and a GRU cell
    // written out for two steps.
    let cells = "\
param wx: [4, 3, 6] = xavier_uniform(seed = 1)
param wh: [4, 6, 6] = xavier_uniform(seed = 2)
param b: [4, 6] = uniform(-0.5, 0.5, seed = 3)
param gx: [3, 3, 6] = xavier_uniform(seed = 5)
param gh: [3, 6, 6] = xavier_uniform(seed = 6)
param gb: [3, 6] = uniform(-0.5, 0.5, seed = 7)
param x1: [2, 3] = uniform(-1.0, 1.0, seed = 4)
param x2: [2, 3] = uniform(-1.0, 1.0, seed = 8)
let s1 = lstm_cell(x1, zeros([2, 2, 6]), wx, wh, b)
let s2 = lstm_cell(x2, s1, wx, wh, b)
let h2 = gru_cell(x2, gru_cell(x1, zeros([2, 6]), gx, gh, gb, gb), gx, gh, gb, gb)
output loss = sum(lstm_h(s2) ^ 2) + sum(h2 ^ 2)
";
    let g = cse(&grad_graph(cells));
    let fused = horizontal::fuse(&g);
    nnc::ir::verify(&fused).expect("verifies");
    // Per step, the LSTM's 4 + 4 products (of x by wx, of h by wh) become
    // 2, the GRU's 3 + 3 become 2: 28 forward products become 8. The
    // derivative's products each read another operand and stay.
    assert_eq!(live_products(&g) - live_products(&fused), 20);
    assert_eq!(run(&g), run(&fused), "each batch is its member's product");
}

/// The outputs' bits.
fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|o| o.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn peephole_rules_give_the_same_bits_with_fewer_nodes() {
    // `a` holds both zeros, infinity and NaN among ordinary values.
    let src = "\
param p: [2, 3] = uniform(-1.0, 1.0, seed = 1)
param b: [4, 3] = uniform(-1.0, 1.0, seed = 2)
param c: [4, 3] = uniform(-1.0, 1.0, seed = 3)
param t: [2, 3, 4] = uniform(-1.0, 1.0, seed = 4)
let z = p - p
let a = concat(concat(concat(z, -z, axis = 0), concat(1.0 / z, z / z, axis = 0), axis = 1), concat(p, -p, axis = 0), axis = 1)
output whole = slice(concat(p, b, axis = 0), axis = 0, start = 2, end = 6)
output inside = slice(concat(p, b, axis = 0), axis = 0, start = 3, end = 5)
output across = slice(concat(p, b, axis = 0), axis = 0, start = 1, end = 3)
output twice = reshape(reshape(a, [36]), [6, 6])
output same = reshape(a, [4, 9])
output ones = a * 1.0 + (1.0 * a) / 1.0 + a ^ 1.0
output negative_one = a * -1.0
output split = concat(zeros([2, 3]), b, axis = 0) + concat(p, zeros([4, 3]), axis = 0)
output unpadded = concat(p, b, axis = 0) * concat(p, c, axis = 0)
output back = transpose(transpose(t)) + 1.0
output turned = transpose(transpose(t, perm = [1, 0, 2]), perm = [0, 2, 1])
output merged = reshape(concat(reshape(p, [2, 1, 3]), reshape(-p, [2, 1, 3]), axis = 1), [2, 6])
output split_back = reshape(reshape(concat(p, b, axis = 0), [18]), [6, 3])
output uneven = reshape(concat(p, b, axis = 0), [2, 9])
";
    let c = pipeline::compile("t.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("compiled");
    let out = nnc::passes::cse::cse(&g);
    nnc::ir::verify(&out).expect("verifies");
    // The same bits for every output, signed zeros and NaN included.
    let (before, after) = (run(&g), run(&out));
    let a = &before[4];
    assert!(a.iter().any(|x| x.is_nan()) && a.iter().any(|x| x.is_infinite()));
    assert!(a.iter().any(|x| *x == 0.0 && x.is_sign_negative()));
    assert_eq!(bits(&before), bits(&after));
    let op = |i: usize| &out.nodes[out.outputs[i].node].op;
    let arg_op = |i: usize, k: usize| &out.nodes[op(i).args()[k]].op;
    // `slice-of-concat`: the part itself, a slice of the part, and (across
    // the cut) the slice as it was.
    assert!(matches!(op(0), Op::Param(_)), "{:?}", op(0));
    assert!(
        matches!(
            op(1),
            Op::Slice {
                start: 1,
                end: 3,
                ..
            }
        ),
        "{:?}",
        op(1)
    );
    assert!(matches!(arg_op(1, 0), Op::Param(_)));
    assert!(matches!(arg_op(2, 0), Op::Concat { .. }));
    // `reshape-of-reshape`: one reshape of `a`; a reshape to a's own shape
    // is `a`.
    assert!(matches!(op(3), Op::Reshape(..)), "{:?}", op(3));
    assert!(!matches!(arg_op(3, 0), Op::Reshape(..)));
    assert!(matches!(op(4), Op::Concat { .. }), "{:?}", op(4));
    // `times-one`: `a + a + a` is left; a product by -1 stays.
    let Op::Binary(_, x, y) = *op(5) else {
        panic!("{:?}", op(5))
    };
    assert!(matches!(out.nodes[x].op, Op::Binary(_, l, r) if l == r));
    assert_eq!(out.nodes[x].op.args()[0], y);
    assert!(matches!(op(6), Op::Binary(..)));
    assert!(matches!(arg_op(6, 1), Op::Broadcast(..) | Op::Fill { .. }));
    // `concat-split`: an add per part, joined; without a fill in each
    // concatenation the product stays one kernel over both.
    assert!(matches!(op(7), Op::Concat { .. }), "{:?}", op(7));
    assert!(matches!(arg_op(7, 0), Op::Binary(..)));
    assert!(matches!(op(8), Op::Binary(..)), "{:?}", op(8));
    // `transpose-of-transpose`: a transpose back is the operand itself;
    // two others are one transpose, the permutations composed.
    assert!(matches!(arg_op(9, 0), Op::Param(_)), "{:?}", arg_op(9, 0));
    match op(10) {
        Op::Transpose(x, perm) => {
            assert_eq!(perm, &[1, 2, 0]);
            assert!(matches!(out.nodes[*x].op, Op::Param(_)));
        }
        other => panic!("{other:?}"),
    }
    // `reshape-of-concat`: `[p, -p]` stacked on a new axis and flattened
    // is `p` and `-p` side by side; a flattened concatenation split back
    // is the concatenation itself; a reshape whose rows straddle the cut
    // stays.
    assert!(matches!(op(11), Op::Concat { .. }), "{:?}", op(11));
    assert!(matches!(arg_op(11, 0), Op::Param(_)), "{:?}", arg_op(11, 0));
    assert!(
        matches!(arg_op(11, 1), Op::Unary(..)),
        "{:?}",
        arg_op(11, 1)
    );
    assert!(matches!(op(12), Op::Concat { .. }), "{:?}", op(12));
    assert!(matches!(arg_op(12, 0), Op::Param(_)), "{:?}", arg_op(12, 0));
    assert!(matches!(arg_op(12, 1), Op::Param(_)), "{:?}", arg_op(12, 1));
    assert!(matches!(op(13), Op::Reshape(..)), "{:?}", op(13));
}

/// The sequences of each live loop that are slices of another value.
fn sliced_sequences(g: &Graph) -> usize {
    g.nodes
        .values()
        .map(|d| match &d.op {
            Op::Scan { xs, .. } => xs
                .iter()
                .filter(|&&x| matches!(g.nodes[x].op, Op::Slice { .. }))
                .count(),
            _ => 0,
        })
        .sum()
}

#[test]
fn sequences_sliced_from_one_stack_are_read_through_it_with_the_same_bits() {
    // After `scan-residual` and `scan-lift`, the LSTM's derivative loop
    // reads the five values its forward loop kept as five slices of the
    // forward loop's stacked carry (and a sixth stack of its own).
    // `scan-sequence-slices` reads the stack instead, once per step, and
    // the body slices each step: the same bits, no sequence is a slice.
    let g = grad_graph(LSTM);
    let before = nnc::passes::cse::cse(&nnc::passes::scan_lift::lift(&nnc::passes::licm::hoist(
        &nnc::passes::horizontal::fuse(&nnc::passes::cse::cse(&nnc::passes::scan_residual::keep(
            &g,
        ))),
    )));
    assert_eq!(sliced_sequences(&before), 5);
    let after = nnc::passes::scan_views::share(&before).into_owned();
    nnc::ir::verify(&after).expect("verifies");
    assert_eq!(sliced_sequences(&after), 0);
    assert_eq!(bits(&run(&before)), bits(&run(&after)));
    // Each body reads as many inputs as its loop passes it.
    for d in after.nodes.values() {
        if let Op::Scan { body, xs, args, .. } = &d.op {
            assert_eq!(after.bodies[*body].inputs.len(), 1 + xs.len() + args.len());
        }
    }
    // And the compiled step agrees with the interpreter on every backend.
    let oracle = loss_and_grads(LSTM, nnc::backend::BackendKind::Interp);
    for kind in common::compiled_backends() {
        let got = loss_and_grads(LSTM, kind);
        for (a, b) in oracle.iter().zip(&got) {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 + 1e-4 * x.abs(),
                    "{kind:?}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn a_training_step_without_loops_is_left_by_a_second_cse_as_the_first_gave_it() {
    // `passes::optimize` merges once where no pass after the first CSE
    // rewrote the graph (no loop, no products side by side): it relies
    // on CSE leaving its own output as it is, which this checks on the
    // training steps of the benchmarks without loops, and on the passes
    // in between handing those graphs back unchanged.
    use nnc::passes::{cse::cse, horizontal, licm, scan_lift, scan_views};
    use std::borrow::Cow;
    for name in [
        "mlp_train",
        "lenet_train",
        "transformer_train",
        "transformer_stack_8",
    ] {
        let path = format!("{}/examples/bench/{name}.nn", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).expect("the benchmark is there");
        let c = pipeline::compile(&path, &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let (g, train) = (c.graph.expect("graph"), c.train.expect("a train block"));
        let step = pipeline::step_graph(&g, &train)
            .expect("differentiates")
            .graph;
        let once = cse(&step);
        assert!(
            matches!(horizontal::fuse(&once), Cow::Borrowed(_)),
            "{name}"
        );
        assert!(matches!(licm::hoist(&once), Cow::Borrowed(_)), "{name}");
        assert!(matches!(scan_lift::lift(&once), Cow::Borrowed(_)), "{name}");
        assert!(
            matches!(scan_views::share(&once), Cow::Borrowed(_)),
            "{name}"
        );
        let printed = nnc::ir::print_graph(&once);
        assert_eq!(nnc::ir::print_graph(&cse(&once)), printed, "{name}");
        assert_eq!(
            nnc::ir::print_graph(&nnc::passes::optimize(&step)),
            printed,
            "{name}"
        );
    }
}

#[test]
fn a_sum_read_only_through_its_slices_is_computed_where_they_are_read() {
    // `s` is read only through its two halves, each by a kernel of its own
    // (the exp of one is stored for two readers): fusion's
    // `slice-recompute` computes it in both instead of storing it. The
    // JIT gives the interpreter's values, and the gradients too.
    let src = "\
param a: [3, 2, 5] = uniform(-1.0, 1.0, seed = 1)
param b: [3, 2, 5] = uniform(-1.0, 1.0, seed = 2)
let s = a + b
let lo = exp(reshape(slice(s, axis = 1, start = 0, end = 1), [3, 5]))
let hi = reshape(slice(s, axis = 1, start = 1, end = 2), [3, 5])
output loss = sum(lo * tanh(hi)) + sum(lo ^ 2)
";
    let g = grad_graph(src);
    let fused = pipeline::fuse(&g);
    let s = fused
        .graph
        .nodes
        .iter()
        .find(|(_, d)| {
            matches!(d.op, Op::Binary(nnc::ir::BinaryOp::Add, x, y)
                if matches!(fused.graph.nodes[x].op, Op::Param(_))
                    && matches!(fused.graph.nodes[y].op, Op::Param(_)))
        })
        .map(|(n, _)| n)
        .expect("a + b");
    assert!(fused.fusion.fused.contains(s), "a + b is not stored");
    let jit = loss_and_grads(src, nnc::backend::BackendKind::Jit);
    let reference = loss_and_grads(src, nnc::backend::BackendKind::Interp);
    assert_close(&jit, &reference);
}
