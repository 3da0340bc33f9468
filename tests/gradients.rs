//! Every VJP rule against central finite differences.
//!
//! Each case is a small `.nn` program whose `loss` depends on parameters
//! through the rule under test (weighted by fixed, uneven coefficients so
//! no gradient is trivially symmetric). The reverse-mode gradient, run on
//! the interpreter, must match (L(p + ε) − L(p − ε)) / 2ε for every
//! element. Both run in f32 with ε = 1e-3: the difference quotient then
//! carries a rounding error near 1e-7·|L|/ε ≈ 1e-4·|L| and a truncation
//! error of order ε², so the tolerance is 1e-2 relative plus 2e-3
//! absolute. The cases keep away from kinks (relu at 0, ties in max).

use cranelift_entity::SecondaryMap;
use nnc::backend::interp::{self, Feed};
use nnc::ir::{Graph, ParamId};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;

fn loss_of(g: &Graph, params: &SecondaryMap<ParamId, Tensor>) -> f32 {
    let inputs = SecondaryMap::new();
    let outs = interp::run(
        g,
        &Feed {
            params,
            inputs: &inputs,
        },
    )
    .expect("runs");
    let i = g
        .outputs
        .iter()
        .position(|o| o.name == "loss")
        .expect("a loss output");
    outs[i].data[0]
}

fn check(name: &str, src: &str) {
    let c = pipeline::compile(name, src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("compiled");
    let loss = pipeline::find_loss(&g, None).expect("loss");
    let gg = pipeline::grad_graph(&g, loss).unwrap_or_else(|d| panic!("{name}: {}", d.message));
    nnc::ir::verify(&gg.graph).expect("the gradient graph verifies");
    let params = interp::init_params(&g, 7);
    let inputs = SecondaryMap::new();
    let outs = interp::run(
        &gg.graph,
        &Feed {
            params: &params,
            inputs: &inputs,
        },
    )
    .expect("runs");
    assert!(!gg.grads.is_empty(), "{name}: no parameters");
    let eps = 1e-3f32;
    for (k, (p, _)) in gg.grads.iter().enumerate() {
        let analytic = &outs[k + 1];
        assert_eq!(analytic.shape, params[*p].shape, "{name}: gradient shape");
        for i in 0..params[*p].data.len() {
            let mut plus = params.clone();
            plus[*p].data[i] += eps;
            let mut minus = params.clone();
            minus[*p].data[i] -= eps;
            let fd = (loss_of(&g, &plus) - loss_of(&g, &minus)) / (2.0 * eps);
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
