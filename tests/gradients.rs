//! Every VJP rule against central finite differences.
//!
//! Each case is a small `.nn` program whose `loss` depends on parameters
//! through the rule under test (weighted by fixed, uneven coefficients so
//! no gradient is trivially symmetric). The reverse-mode gradient, run on
//! the interpreter, must match (L(p + ε) − L(p − ε)) / 2ε for every
//! element. Both run in f32 with ε = 1e-3 (4e-3 for the transformer
//! block, whose two layer norms carry more rounding): the difference
//! quotient then carries a rounding error near 1e-7·|L|/ε ≈ 1e-4·|L| and
//! a truncation error of order ε², so the tolerance is 1e-2 relative plus
//! 2e-3 absolute. The cases keep away from kinks (relu at 0, ties in max).

mod common;

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::ir::{Graph, ParamId};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;

fn loss_of(e: &mut Engine, g: &Graph, params: &mut SecondaryMap<ParamId, Tensor>) -> f32 {
    let inputs = SecondaryMap::new();
    let outs = e.run(params, &inputs).expect("runs");
    let i = g
        .outputs
        .iter()
        .position(|o| o.name == "loss")
        .expect("a loss output");
    outs[i].data[0]
}

fn compile(name: &str, src: &str) -> Graph {
    let c = pipeline::compile(name, src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    c.graph.expect("compiled")
}

fn check(name: &str, src: &str) {
    check_graph(name, &compile(name, src));
}

/// Checks the gradient of the graph's `loss` output against finite
/// differences, on every backend (each computes both sides).
fn check_graph(name: &str, g: &Graph) {
    check_graph_eps(name, g, 1e-3);
}

/// The same with step `eps`: a deep composition (two layer norms around
/// attention) carries more f32 rounding into the difference quotient,
/// which shrinks as 1/ε.
fn check_graph_eps(name: &str, g: &Graph, eps: f32) {
    for backend in common::backends() {
        check_on(&format!("{name} [{backend:?}]"), g, eps, backend);
    }
}

fn check_on(name: &str, g: &Graph, eps: f32, backend: BackendKind) {
    let g = g.clone();
    let loss = pipeline::find_loss(&g, None).expect("loss");
    let gg = pipeline::grad_graph(&g, loss).unwrap_or_else(|d| panic!("{name}: {}", d.message));
    nnc::ir::verify(&gg.graph).expect("the gradient graph verifies");
    let mut params = interp::init_params(&g, 7);
    let inputs = SecondaryMap::new();
    let outs = Engine::new(backend, &gg.graph)
        .run(&mut params, &inputs)
        .expect("runs");
    let mut fwd = Engine::new(backend, &g);
    assert!(!gg.grads.is_empty(), "{name}: no parameters");
    for (k, (p, _)) in gg.grads.iter().enumerate() {
        let analytic = &outs[k + 1];
        assert_eq!(analytic.shape, params[*p].shape, "{name}: gradient shape");
        for i in 0..params[*p].data.len() {
            let mut plus = params.clone();
            plus[*p].data[i] += eps;
            let mut minus = params.clone();
            minus[*p].data[i] -= eps;
            let fd = (loss_of(&mut fwd, &g, &mut plus) - loss_of(&mut fwd, &g, &mut minus))
                / (2.0 * eps);
            let ad = analytic.data[i];
            assert!(
                (fd - ad).abs() <= 2e-3 + 1e-2 * fd.abs(),
                "{name}: ∂loss/∂{}[{i}]: autodiff {ad}, finite differences {fd}",
                g.params[*p].name
            );
        }
    }
}

const W3: &str = "[0.3, -1.2, 0.7]";
const W23: &str = "[[0.3, -1.2, 0.7], [1.1, 0.4, -0.6]]";

#[test]
fn unary_rules() {
    for f in ["-p", "exp(p)", "log(p)", "sqrt(p)", "abs(p - 1)", "tanh(p)"] {
        check(
            f,
            &format!("param p: [3] = [0.5, 1.7, 2.9]\noutput loss = sum({f} * {W3})\n"),
        );
    }
}

#[test]
fn binary_rules_with_broadcasting() {
    for op in ["+", "-", "*", "/", "^"] {
        let src = format!(
            "param a: [2, 3] = uniform(0.5, 2, seed = 1)\nparam b: [3] = uniform(0.5, 2, seed = 2)\noutput loss = sum((a {op} b) * {W23})\n"
        );
        check(op, &src);
        let src = format!(
            "param a: [2, 1] = uniform(0.5, 2, seed = 3)\nparam b: [] = 1.5\noutput loss = sum((b {op} a) * [[0.5], [-2.0]])\n"
        );
        check(op, &src);
    }
}

#[test]
fn maximum_minimum_and_select() {
    check("maximum", &format!("param a: [3] = [0.1, 2.0, -1.0]\nparam b: [3] = [1.0, 0.5, -2.0]\noutput loss = sum(maximum(a, b) * {W3})\n"));
    check("minimum", &format!("param a: [3] = [0.1, 2.0, -1.0]\nparam b: [3] = [1.0, 0.5, -2.0]\noutput loss = sum(minimum(a, b) * {W3})\n"));
    check(
        "relu",
        &format!("param a: [3] = [0.3, -0.8, 1.5]\noutput loss = sum(relu(a) * {W3})\n"),
    );
    check("leaky", &format!("param a: [3] = [0.3, -0.8, 1.5]\noutput loss = sum(leaky_relu(a, slope = 0.1) * {W3})\n"));
    check("select", &format!("param a: [3] = [0.3, -0.8, 1.5]\nparam b: [3] = [1.0, 2.0, 3.0]\noutput loss = sum(select(a > 0, a * b, b ^ 2) * {W3})\n"));
}

#[test]
fn reductions() {
    for (f, w) in [
        ("sum(p, axis = 0)", W3),
        ("sum(p, axis = 1)", "[0.5, -1.5]"),
        ("mean(p, axis = 0)", W3),
        ("mean(p, axis = -1, keepdims = true)", "[[2.0], [-1.0]]"),
        ("max(p, axis = 1)", "[0.5, -1.5]"),
        ("max(p, axis = 0)", W3),
        ("sum(p)", "1.3"),
        ("mean(p)", "-0.7"),
        ("max(p)", "2.0"),
    ] {
        check(
            f,
            &format!("param p: [2, 3] = normal(0, 1, seed = 5)\noutput loss = sum({f} * {w})\n"),
        );
    }
}

#[test]
fn matrix_products() {
    check("2d", "param a: [2, 3] = normal(0, 1, seed = 1)\nparam b: [3, 4] = normal(0, 1, seed = 2)\noutput loss = sum((a @ b) * [[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -1.0, 2.0]])\n");
    check("vector-matrix", "param a: [3] = [0.5, -1.0, 2.0]\nparam b: [3, 2] = normal(0, 1, seed = 2)\noutput loss = sum((a @ b) * [1.5, -0.5])\n");
    check("matrix-vector", "param a: [2, 3] = normal(0, 1, seed = 3)\nparam b: [3] = [0.5, -1.0, 2.0]\noutput loss = sum((a @ b) * [1.5, -0.5])\n");
    check("batched", "param a: [2, 2, 3] = normal(0, 1, seed = 4)\nparam b: [3, 2] = normal(0, 1, seed = 5)\noutput loss = sum((a @ b) * [[1.0, -1.0], [0.5, 2.0]])\n");
}

#[test]
fn shape_operations() {
    check("reshape", "param p: [2, 3] = normal(0, 1, seed = 1)\noutput loss = sum(reshape(p, [3, 2]) * [[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]])\n");
    check("transpose", "param p: [2, 3] = normal(0, 1, seed = 1)\noutput loss = sum(transpose(p) * [[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]])\n");
    check("permute", "param p: [2, 1, 3] = normal(0, 1, seed = 2)\noutput loss = sum(transpose(p, [2, 0, 1]) ^ 2 * 0.5)\n");
}

#[test]
fn losses_and_layers_end_to_end() {
    check("mse", "param w: [3] = [0.2, -0.5, 1.0]\nparam b: [] = 0.1\noutput loss = mse(sigmoid(sum(w * [0.5, 0.8, 0.2]) + b), 1.0)\n");
    check("bce", "param w: [3, 2] = normal(0, 0.5, seed = 3)\noutput loss = bce(sigmoid([[0.5, 0.8, 0.2]] @ w), [[1.0, 0.0]])\n");
    check(
        "mlp-softmax-ce",
        "input x: [B, 4] = [[0.1, 0.5, -0.3, 1.0], [1.2, -0.7, 0.4, 0.0]]
         param w1: [4, 5] = xavier_uniform(seed = 1)
         param b1: [5] = normal(0, 0.1, seed = 2)
         param w2: [5, 3] = xavier_uniform(seed = 3)
         param b2: [3] = zeros()
         input t: [B, 3] = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
         let h = dense(x, w1, b1, tanh)
         output loss = softmax_cross_entropy(dense(h, w2, b2, identity), t)\n",
    );
    check("swish-mean-over-batch", "input x: [B, 2] = [[1.0, -2.0], [0.5, 0.25], [3.0, -1.0]]\nparam w: [2] = [0.7, -0.3]\noutput loss = mean(swish(x * w))\n");
}

#[test]
fn a_comparison_on_the_only_path_warns() {
    let src =
        "param w: [3] = [0.2, -0.5, 1.0]\noutput loss = mse(step(sum(w * [0.5, 0.8, 0.2])), 1.0)\n";
    let c = pipeline::compile("step.nn", src, Stage::Ir);
    let g = c.graph.expect("compiled");
    let gg = pipeline::grad_graph(&g, pipeline::find_loss(&g, None).expect("loss"))
        .expect("differentiates");
    assert_eq!(gg.warnings.len(), 1);
    assert!(gg.warnings[0].message.contains("zero almost everywhere"));
    // relu's comparison only selects; it does not warn.
    let src = "param w: [3] = [0.2, -0.5, 1.0]\noutput loss = sum(relu(w))\n";
    let g = pipeline::compile("relu.nn", src, Stage::Ir)
        .graph
        .expect("compiled");
    let gg = pipeline::grad_graph(&g, pipeline::find_loss(&g, None).expect("loss"))
        .expect("differentiates");
    assert!(gg.warnings.is_empty());
}

#[test]
fn a_non_scalar_loss_is_an_error() {
    let g = pipeline::compile(
        "v.nn",
        "param w: [3] = ones()\noutput loss = w * 2\n",
        Stage::Ir,
    )
    .graph
    .expect("compiled");
    let e = pipeline::grad_graph(&g, pipeline::find_loss(&g, None).expect("loss"))
        .err()
        .expect("an error");
    assert!(e.message.contains("must be a scalar"), "{}", e.message);
}

/// Two channels of 4×4 with distinct values at least 0.05 apart, so no
/// pooling window has a tie, even after a finite-difference step.
const POOL_INPUT: &str = "[[[[0.1, 0.9, -0.3, 0.5], [0.4, -0.8, 1.2, 0.2], [-1.1, 0.6, 0.0, -0.4], [0.7, 0.3, -0.6, 1.5]], [[1.0, -0.2, 0.35, 0.8], [-0.5, 0.15, -0.9, 0.45], [0.25, 1.3, -0.7, 0.55], [-0.1, 0.65, 0.05, -1.2]]]]";

const CONV_PARAMS: &str = "param x: [2, 2, 4, 5] = normal(0, 1, seed = 1)\nparam w: [3, 2, 3, 2] = normal(0, 0.5, seed = 2)\n";

#[test]
fn convolutions() {
    check(
        "conv2d",
        &format!("{CONV_PARAMS}output loss = mean(conv2d(x, w) ^ 2)\n"),
    );
    check(
        "conv2d-stride2-pad1",
        &format!("{CONV_PARAMS}output loss = mean(conv2d(x, w, stride = 2, padding = 1) ^ 2)\n"),
    );
    check(
        "conv2d-bias-tanh",
        &format!("{CONV_PARAMS}param b: [3] = [0.1, -0.2, 0.3]\noutput loss = mean(tanh(conv2d(x, w, padding = 1) + reshape(b, [3, 1, 1])) * 2)\n"),
    );
    check(
        "conv2d-symbolic-batch",
        "input x: [B, 1, 3, 3] = [[[[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [0.2, 0.9, -1.2]]], [[[1.0, 0.0, -0.5], [0.4, -0.6, 0.8], [-1.1, 0.7, 0.1]]]]\nparam w: [2, 1, 2, 2] = normal(0, 1, seed = 4)\noutput loss = mean(conv2d(x, w, stride = 1, padding = 1) ^ 2)\n",
    );
}

#[test]
fn pooling() {
    let p = format!("param p: [1, 2, 4, 4] = {POOL_INPUT}\n");
    let w = "[[[[1.0, -2.0], [0.5, 3.0]], [[-1.5, 0.7], [2.0, -0.3]]]]";
    check(
        "max_pool2d",
        &format!("{p}output loss = sum(max_pool2d(p, 2) * {w})\n"),
    );
    check(
        "max_pool2d-overlapping",
        &format!("{p}output loss = mean(max_pool2d(p, 2, stride = 1) ^ 2)\n"),
    );
    check(
        "avg_pool2d",
        &format!("{p}output loss = sum(avg_pool2d(p, 2) * {w})\n"),
    );
    check(
        "avg_pool2d-overlapping",
        &format!("{p}output loss = mean(avg_pool2d(p, 3, stride = 1) ^ 2)\n"),
    );
}

#[test]
fn slices_and_concatenation() {
    check("slice", "param p: [2, 5] = normal(0, 1, seed = 3)\noutput loss = sum(slice(p, axis = 1, start = 1, end = 4) * [[1.0, -2.0, 0.5], [0.3, 1.5, -0.7]])\n");
    check("slice-negative", "param p: [3, 2] = normal(0, 1, seed = 4)\noutput loss = sum(slice(p, axis = -2, start = -2) ^ 2 * [[1.0, -2.0], [0.5, 3.0]])\n");
    check("concat", "param a: [2, 2] = normal(0, 1, seed = 5)\nparam b: [2, 3] = normal(0, 1, seed = 6)\noutput loss = sum(concat(a, b, axis = 1) ^ 2 * [[1.0, -2.0, 0.5, 3.0, 0.2], [0.1, -1.0, 2.0, -0.4, 0.6]])\n");
    check("concat-axis0-same-operand", "param a: [1, 3] = [[0.5, -1.0, 2.0]]\noutput loss = sum(concat(a, a * a, axis = 0) * [[1.0, -2.0, 0.5], [0.3, 1.5, -0.7]])\n");
}

#[test]
fn gather_and_scatter_add() {
    check("gather", "param t: [4, 3] = normal(0, 1, seed = 7)\noutput loss = sum(gather(t, [3, 0, 3]) ^ 2 * [[1.0, -2.0, 0.5], [0.3, 1.5, -0.7], [2.0, 0.1, -1.0]])\n");
    check("gather-2d-indices", "param t: [3, 2] = normal(0, 1, seed = 8)\noutput loss = sum(gather(t, [[2, 0], [2, 2]]) * [[[1.0, -2.0], [0.5, 3.0]], [[0.3, 1.5], [-0.7, 2.0]]])\n");
    check("scatter_add", "param v: [4, 2] = normal(0, 1, seed = 9)\noutput loss = sum(scatter_add(v, [2, 0, 2, 1], n = 3) ^ 2 * 0.5)\n");
    check(
        "message-passing",
        "fn propagate(h: [V, D], src: [E], dst: [E]) -> [V, D] {
           scatter_add(gather(h, src), dst, n = V)
         }
         param h: [3, 2] = normal(0, 1, seed = 10)
         output loss = mean(tanh(propagate(propagate(h, [0, 1, 2, 2], [1, 2, 0, 1]), [1, 1], [0, 2])))\n",
    );
}

/// The graph with `loss` replaced by ‖∇loss‖², the squared norm of its
/// gradient with respect to every parameter: its own gradient goes through
/// the VJPs of the gradient ops.
fn gradient_norm(name: &str, src: &str) -> Result<Graph, String> {
    use nnc::ir::{BinaryOp, Op, Output, ReduceOp};
    let g = compile(name, src);
    let loss = pipeline::find_loss(&g, None).expect("loss");
    let gg = pipeline::grad_graph(&g, loss).map_err(|d| d.message)?;
    let mut h = gg.graph;
    let sp = h.nodes[loss].span;
    let mut total = None;
    for &(_, gn) in &gg.grads {
        let sq = h.add(Op::Binary(BinaryOp::Mul, gn, gn), sp).expect("typed");
        let axes = (0..h.shape(sq).len()).collect();
        let s = h
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    arg: sq,
                    axes,
                },
                sp,
            )
            .expect("typed");
        total = Some(match total {
            None => s,
            Some(t) => h.add(Op::Binary(BinaryOp::Add, t, s), sp).expect("typed"),
        });
    }
    h.outputs = vec![Output {
        name: "loss".into(),
        node: total.expect("a parameter"),
        span: sp,
    }];
    Ok(h)
}

#[test]
fn second_derivatives_of_the_new_rules() {
    for (name, src) in [
        ("conv2d", format!("{CONV_PARAMS}output loss = mean(conv2d(x, w, stride = 2, padding = 1) ^ 2)\n")),
        ("avg_pool2d", format!("param p: [1, 2, 4, 4] = {POOL_INPUT}\noutput loss = mean(avg_pool2d(p, 2, stride = 1) ^ 2)\n")),
        ("slice-concat", "param p: [2, 3] = normal(0, 1, seed = 11)\noutput loss = mean(concat(slice(p, axis = 1, end = 2) ^ 2, p, axis = 1) ^ 2)\n".into()),
        ("gather-scatter", "param t: [3, 2] = normal(0, 1, seed = 12)\noutput loss = mean(scatter_add(gather(t, [2, 0, 2]) ^ 2, [1, 1, 0], n = 2) ^ 2)\n".into()),
    ] {
        let g = gradient_norm(name, &src).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_graph(&format!("{name} (second order)"), &g);
    }
}

#[test]
fn second_derivatives_through_max_pooling_are_an_error() {
    let src =
        format!("param p: [1, 2, 4, 4] = {POOL_INPUT}\noutput loss = mean(max_pool2d(p, 2) ^ 2)\n");
    let g = gradient_norm("max", &src).expect("first derivatives work");
    let loss = pipeline::find_loss(&g, None).expect("loss");
    let e = pipeline::grad_graph(&g, loss).err().expect("an error");
    assert!(e.message.contains("`max_pool2d`"), "{}", e.message);
    assert!(e.message.contains("second derivatives"), "{}", e.message);
    assert!(!e.labels.is_empty(), "the error points at the op");
}

#[test]
fn loops_over_sequences() {
    // A recurrent cell: `wx` comes in as an extra argument, `wh` is read
    // from outside the body (a capture), and the initial state and the
    // sequence are learned too, so every operand of the loop gets a
    // gradient.
    let rnn = "fn cell(h: [B, H], x: [B, I], wx: [I, H]) -> [B, H] {
  tanh(x @ wx + h @ wh)
}
param wh: [2, 2] = normal(0, 0.5, seed = 1)
param wx: [3, 2] = normal(0, 0.5, seed = 2)
param h0: [1, 2] = [[0.1, -0.2]]
param xs: [4, 1, 3] = normal(0, 1, seed = 3)
";
    check("rnn", &format!("{rnn}output loss = sum(scan(cell, h0, xs, wx) * [[[1.0, -1.0]], [[0.5, 2.0]], [[-1.5, 0.3]], [[0.7, 0.2]]])\n"));
    check(
        "rnn-reverse",
        &format!("{rnn}output loss = sum(scan(cell, h0, xs, wx, reverse = true) * [[[1.0, -1.0]], [[0.5, 2.0]], [[-1.5, 0.3]], [[0.7, 0.2]]])\n"),
    );
    check(
        "rnn-last",
        &format!(
            "{rnn}output loss = sum(slice(scan(cell, h0, xs, wx), axis = 0, start = -1) ^ 2)\n"
        ),
    );
    check(
        "single-step",
        "fn acc(s: [2], x: [2], k: [2]) -> [2] { s * k + x * x }
param k: [2] = [0.5, -1.5]
param s0: [2] = [1.0, 2.0]
param xs: [1, 2] = [[0.3, -0.7]]
output loss = sum(scan(acc, s0, xs, k) * [[1.0, -2.0]])\n",
    );
}

#[test]
fn a_loop_body_is_compiled_once_whatever_the_length() {
    let src = |t: usize| {
        format!(
            "fn cell(h: [1, 4], x: [1, 3], wx: [3, 4]) -> [1, 4] {{ tanh(x @ wx + h @ wh) }}
param wh: [4, 4] = normal(0, 0.5, seed = 1)
param wx: [3, 4] = normal(0, 0.5, seed = 2)
input xs: [{t}, 1, 3]
output loss = sum(scan(cell, zeros([1, 4]), xs, wx))\n"
        )
    };
    let size = |t: usize| {
        let c = pipeline::compile("len.nn", &src(t), Stage::Ir);
        let g = c.graph.expect("compiles");
        let gg = pipeline::grad_graph(&g, pipeline::find_loss(&g, None).expect("loss"))
            .expect("differentiates");
        let body_nodes: usize = gg.graph.bodies.values().map(|b| b.nodes.len()).sum();
        (gg.graph.nodes.len(), body_nodes)
    };
    assert_eq!(
        size(32),
        size(256),
        "the graph of a longer sequence has the same nodes"
    );
}

#[test]
fn multi_head_attention_and_the_encoder_block() {
    let decls = "param x: [2, 3, 4] = normal(0, 1, seed = 1)
param wq: [2, 4, 2] = normal(0, 0.5, seed = 2)
param wk: [2, 4, 2] = normal(0, 0.5, seed = 3)
param wv: [2, 4, 2] = normal(0, 0.5, seed = 4)
param wo: [2, 2, 4] = normal(0, 0.5, seed = 5)
";
    check("mha", &format!("{decls}output loss = sum(multi_head_attention(x, wq, wk, wv, wo) * normal_weights)\nparam normal_weights: [2, 3, 4] = normal(0, 1, seed = 6)\n"));
    check(
        "causal-mha",
        &format!("{decls}output loss = sum(causal_multi_head_attention(x, wq, wk, wv, wo) ^ 2)\n"),
    );
    let encoder = compile(
        "encoder",
        &format!(
            "{decls}param g1: [4] = [1.0, 0.5, 2.0, 1.5]\nparam n1: [4] = [0.1, 0.0, -0.1, 0.2]\nparam w1: [4, 6] = normal(0, 0.5, seed = 7)\nparam b1: [6] = normal(0, 0.1, seed = 8)\nparam w2: [6, 4] = normal(0, 0.5, seed = 9)\nparam b2: [4] = zeros()\nparam g2: [4] = ones()\nparam n2: [4] = zeros()\noutput loss = sum(transformer_encoder(x, wq, wk, wv, wo, g1, n1, w1, b1, w2, b2, g2, n2) * [1.0, -2.0, 0.5, 1.5])\n"
        ),
    );
    check_graph_eps("encoder", &encoder, 4e-3);
}

#[test]
fn layer_norm_gradient() {
    check(
        "layer_norm",
        "param x: [2, 4] = normal(0, 1, seed = 1)\nparam g: [4] = [1.0, 0.5, 2.0, 1.5]\nparam n: [4] = [0.1, 0.0, -0.1, 0.2]\noutput loss = sum(layer_norm(x, g, n) * [[1.0, -2.0, 0.5, 1.5], [0.3, 0.2, -1.0, 2.0]])\n",
    );
}

#[test]
fn softplus_dropout_and_batch_norm() {
    check(
        "softplus",
        &format!("param p: [3] = [-2.0, 0.3, 1.7]\noutput loss = sum(softplus(p) * {W3})\n"),
    );
    // In a training step's graph: the dropout mask is fixed by the key
    // (the default [0, 0] here), so the loss is smooth in the parameters,
    // and batch normalisation uses the batch's statistics.
    let mut g = compile(
        "dropout",
        "param a: [4, 3] = normal(0, 1, seed = 1)\noutput loss = sum(dropout(tanh(a), p = 0.4) * [[1.0, -2.0, 0.5], [0.3, 1.5, -0.7], [2.0, 0.1, -1.0], [0.6, -0.4, 1.2]])\n",
    );
    nnc::pipeline::set_training(&mut g, true);
    check_graph("dropout (training)", &g);
    let mut g = compile(
        "batch_norm",
        "param x: [4, 3] = normal(0, 1, seed = 2)\nparam gamma: [3] = [1.0, 2.0, 0.5]\nparam beta: [3] = [0.1, -0.3, 0.2]\nstate rm: [3] = zeros()\nstate rv: [3] = ones()\noutput loss = sum(batch_norm(x, gamma, beta, rm, rv) * [[1.0, -2.0, 0.5], [0.3, 1.5, -0.7], [2.0, 0.1, -1.0], [0.6, -0.4, 1.2]])\n",
    );
    nnc::pipeline::set_training(&mut g, true);
    check_graph("batch_norm (training)", &g);
}
