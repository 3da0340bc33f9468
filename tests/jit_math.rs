//! The JIT's polynomial `exp`, `log`, `tanh` (and `sigmoid`, built from
//! `exp` in the stdlib) against the host's libm over a sweep of inputs.
//! The bounds asserted are the ones stated in `src/backend/jit/math.rs`.

use cranelift_entity::SecondaryMap;
use nnc::backend::{BackendKind, Engine};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;

/// Runs `output y = EXPR(x)` over `xs` on the JIT.
fn jit_map(expr: &str, xs: &[f32]) -> Vec<f32> {
    let src = format!("input x: [N]\noutput y = {expr}\n");
    let c = pipeline::compile("math", &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let mut inputs = SecondaryMap::new();
    let id = g.inputs.keys().next().expect("an input");
    inputs[id] = Some(Tensor::new(vec![xs.len()], xs.to_vec()));
    let mut params = SecondaryMap::new();
    let mut e = Engine::new(BackendKind::Jit, &g);
    e.run(&mut params, &inputs).expect("runs").remove(0).data
}

/// Evenly spaced points over [lo, hi], plus the odd lengths that exercise
/// the scalar tail after the f32x4 loop.
fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect()
}

/// The largest error relative to max(|want|, floor).
fn max_rel_err(got: &[f32], want: &[f64], floor: f64) -> (f64, usize) {
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs() / w.abs().max(floor);
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

#[test]
fn exp_within_2e7_relative() {
    let xs = sweep(-87.0, 87.9, 200_003);
    let got = jit_map("exp(x)", &xs);
    let want: Vec<f64> = xs.iter().map(|&x| (x as f64).exp()).collect();
    let (e, i) = max_rel_err(&got, &want, 0.0);
    eprintln!("max relative error {e:e}");
    assert!(e <= 2e-7, "exp: relative error {e:e} at x = {}", xs[i]);
}

#[test]
fn log_within_2e7_relative_and_its_special_values() {
    let mut xs: Vec<f32> = sweep(-30.0, 30.0, 100_001)
        .iter()
        .map(|&t| t.exp())
        .collect();
    xs.extend([f32::MIN_POSITIVE, 1.0, f32::MAX, 0.999_999_9, 1.000_000_1]);
    let got = jit_map("log(x)", &xs);
    let want: Vec<f64> = xs.iter().map(|&x| (x as f64).ln()).collect();
    // Near x = 1 the result is near 0: measure against max(|ln x|, 1e-7·…)
    // i.e. absolute error there.
    let (e, i) = max_rel_err(&got, &want, 1e-6);
    eprintln!("max relative error {e:e}");
    assert!(e <= 2e-7, "log: relative error {e:e} at x = {}", xs[i]);
    let special = jit_map("log(x)", &[0.0, -1.0, f32::INFINITY, f32::NAN, 1.0]);
    assert_eq!(special[0], f32::NEG_INFINITY);
    assert!(special[1].is_nan());
    assert_eq!(special[2], f32::INFINITY);
    assert!(special[3].is_nan());
    assert_eq!(special[4], 0.0);
}

#[test]
fn tanh_within_3e7_relative() {
    let mut xs = sweep(-12.0, 12.0, 200_001);
    xs.extend(sweep(-1e-3, 1e-3, 1001));
    let got = jit_map("tanh(x)", &xs);
    let want: Vec<f64> = xs.iter().map(|&x| (x as f64).tanh()).collect();
    let (e, i) = max_rel_err(&got, &want, 1e-30);
    eprintln!("max relative error {e:e}");
    assert!(e <= 3e-7, "tanh: relative error {e:e} at x = {}", xs[i]);
    let ends = jit_map("tanh(x)", &[50.0, -50.0, f32::NAN]);
    assert_eq!(&ends[..2], &[1.0, -1.0]);
    assert!(ends[2].is_nan());
}

#[test]
fn sigmoid_within_5e7_relative() {
    let xs = sweep(-80.0, 80.0, 100_001);
    let got = jit_map("sigmoid(x)", &xs);
    let want: Vec<f64> = xs
        .iter()
        .map(|&x| 1.0 / (1.0 + (-(x as f64)).exp()))
        .collect();
    let (e, i) = max_rel_err(&got, &want, 1e-30);
    eprintln!("max relative error {e:e}");
    assert!(e <= 5e-7, "sigmoid: relative error {e:e} at x = {}", xs[i]);
}
