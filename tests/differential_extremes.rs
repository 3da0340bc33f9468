//! The JIT against the interpreter at the float limits: single
//! activations and losses of the stdlib and the primitives, on inputs
//! drawn from the values where implementations part ways — exact zeros
//! of both signs, subnormals, the edges of `exp`'s range (±88…±89,
//! ±103…±104), ±1e38, ±f32::MAX, ±inf (masks) — and their gradients.
//! Infinities and NaN must match exactly; finite values within 1e-5
//! relative (the single operations are 1-2 ulp apart), with an absolute
//! floor of 16 subnormal ulps (2^-149 each) for results in the subnormal
//! range, which holds fewer significant bits.

use cranelift_entity::SecondaryMap;
use nnc::backend::{BackendKind, Engine};
use nnc::pipeline::{self, Stage};
use proptest::prelude::*;

const EXTREMES: [f32; 26] = [
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    1.4e-45,
    -1.4e-45,
    88.5,
    -88.5,
    88.72,
    -88.72,
    88.8,
    -88.8,
    89.0,
    -89.0,
    103.9,
    -103.9,
    104.0,
    -104.0,
    1e38,
    -1e38,
    f32::MAX,
    f32::MIN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1.0,
    -2.5,
];

/// `f(x)` as `.nn` source, for an `x` of shape [8].
const FUNCTIONS: [&str; 22] = [
    "exp(x)",
    "log(x)",
    "log(abs(x))",
    "tanh(x)",
    "sqrt(abs(x))",
    "sigmoid(x)",
    "softplus(x)",
    "relu(x)",
    "leaky_relu(x)",
    "swish(x)",
    "x ^ 2",
    "abs(x) ^ 0.5",
    "abs(x) ^ -1.5",
    "2 ^ x",
    "softmax(x)",
    "log_softmax(x)",
    "exp(x - max(x, axis = -1, keepdims = true))",
    "select(x > 0, x, 0 * x)",
    "x * 0.5 + 1",
    "1 / x",
    "bce(sigmoid(x), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])",
    "-log(1 - sigmoid(x))",
];

fn close_within(a: f32, b: f32, floor: f32) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= floor + 1e-5 * a.abs().max(b.abs())
}

fn compare(what: &str, a: &[f32], b: &[f32], source: &str) -> Result<(), TestCaseError> {
    // The gradient of a function with a reduction over x (a softmax, a
    // shift by the maximum) sums terms of magnitude ≤ 1 (the weights
    // below are): where they cancel, rounding leaves about 1e-7
    // absolute, whatever the relative error.
    let reduces = source.contains("softmax") || source.contains("max(x");
    let floor = match reduces && what.starts_with("grad") {
        true => 1e-6,
        false => 16.0 * f32::from_bits(1),
    };
    prop_assert_eq!(a.len(), b.len(), "{}: lengths\n{}", what, source);
    for (i, (&w, &g)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            close_within(w, g, floor),
            "{}[{}]: interp {:e}, jit {:e}\n{}",
            what,
            i,
            w,
            g,
            source
        );
    }
    Ok(())
}

fn literal(xs: &[f32]) -> String {
    let items: Vec<String> = xs
        .iter()
        .map(|x| match *x {
            x if x == f32::INFINITY => "1e39 * 10".to_string(),
            x if x == f32::NEG_INFINITY => "-1e39 * 10".to_string(),
            x => format!("{x:e}"),
        })
        .collect();
    items.join(", ")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 600,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261130),
        .. ProptestConfig::default()
    })]

    #[test]
    fn at_the_float_limits_the_jit_agrees_with_the_interpreter(
        f in prop::sample::select(FUNCTIONS.to_vec()),
        xs in prop::collection::vec(prop::sample::select(EXTREMES.to_vec()), 8),
    ) {
        // Values go in through an input (the JIT cannot fold them away);
        // the gradient through a parameter holding the same values.
        let source = format!(
            "input x: [8]\noutput y = {f}\n"
        );
        let c = pipeline::compile("extreme.nn", &source, Stage::Ir);
        prop_assert!(!c.diags.has_errors(), "{}\n{}", source, c.render(false));
        let g = c.graph.expect("graph");
        let mut inputs = SecondaryMap::new();
        let id = g.inputs.keys().next().expect("x");
        inputs[id] = Some(nnc::tensor::Tensor::new(vec![8], xs.clone()));
        let mut params = SecondaryMap::new();
        let want = Engine::new(BackendKind::Interp, &g).run(&mut params, &inputs).expect("interp");
        let got = Engine::new(BackendKind::Jit, &g).run(&mut params, &inputs).expect("jit");
        let shown = format!("{source}x = [{}]", literal(&xs));
        compare("y", &want[0].data, &got[0].data, &shown)?;

        let finite: Vec<f32> = xs.iter().map(|x| x.clamp(f32::MIN, f32::MAX)).collect();
        let gsource = format!(
            "param x: [8] = [{}]\n\
             output loss = sum(({f}) * [1, -2, 3, -4, 5, -6, 7, -8] * 0.125)\n",
            literal(&finite)
        );
        let c = pipeline::compile("extreme_grad.nn", &gsource, Stage::Ir);
        prop_assert!(!c.diags.has_errors(), "{}\n{}", gsource, c.render(false));
        let g = c.graph.expect("graph");
        let gv = |b| nnc::driver::graphs::grad_values(&g, None, None, 0, b).expect("gradients");
        // The loss, a sum over values up to ±f32::MAX, depends on the
        // order of summation (which the backends do not share): only the
        // gradients are compared.
        let (_, gw, _) = gv(BackendKind::Interp);
        let (_, gj, _) = gv(BackendKind::Jit);
        prop_assert_eq!(gw.len(), 1);
        prop_assert_eq!(gj.len(), 1);
        compare("grad.x", &gw[0].1.data, &gj[0].1.data, &gsource)?;
    }
}
