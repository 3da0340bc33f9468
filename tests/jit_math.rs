//! The JIT's polynomial `exp`, `log`, `tanh` (and `sigmoid`, built on
//! `exp` in the stdlib) against the host's libm over a sweep of inputs.
//! The bounds asserted are the ones stated in `src/backend/jit/math.rs`,
//! over the whole float range: overflow to inf, underflow through the
//! subnormals to 0, subnormal inputs to `log`, saturated `sigmoid` and
//! its derivative, and a general power bit for bit with the interpreter.

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

/// Error in units of the last place of `want` rounded to f32 (subnormals
/// included: their ulp is 2^-149).
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if got == w {
        return 0.0;
    }
    let ulp = if w.is_finite() && w != 0.0 {
        let next = f32::from_bits(w.abs().to_bits() + 1);
        (next - w.abs()) as f64
    } else {
        f32::from_bits(1) as f64
    };
    (got as f64 - want).abs() / ulp
}

#[test]
fn exp_over_the_whole_range() {
    // Through the overflow threshold (88.72), the subnormal results
    // (below -87.3) and the underflow to 0 (about -103.97).
    let mut xs = sweep(-110.0, 95.0, 400_001);
    xs.extend([
        88.722_83,
        88.722_84,
        -87.336_54,
        -103.972_08,
        -103.972_09,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MAX,
        f32::MIN,
    ]);
    let got = jit_map("exp(x)", &xs);
    let mut worst = (0.0, 0);
    for (i, (&g, &x)) in got.iter().zip(&xs).enumerate() {
        let want = (x as f64).exp();
        let w = want as f32;
        if w.is_infinite() || w == 0.0 {
            assert_eq!(g, w, "exp({x}) = {g}, libm {w}");
            continue;
        }
        let e = ulps(g, want);
        if e > worst.0 {
            worst = (e, i);
        }
    }
    eprintln!("max error {} ulp at {}", worst.0, xs[worst.1]);
    assert!(
        worst.0 <= 2.0,
        "exp: {} ulp at x = {}",
        worst.0,
        xs[worst.1]
    );
    assert!(jit_map("exp(x)", &[f32::NAN])[0].is_nan());
}

#[test]
fn log_of_subnormals() {
    // 2^-k for k in 1..=149: normal down to 2^-126, subnormal below.
    let two_to_minus = |k: u32| match k <= 126 {
        true => f32::from_bits((127 - k) << 23),
        false => f32::from_bits(1 << (149 - k)),
    };
    let mut xs: Vec<f32> = (1..=149).map(two_to_minus).collect();
    xs.extend([
        1e-40,
        3.3e-39,
        1.1e-38,
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
    ]);
    let got = jit_map("log(x)", &xs);
    for (&g, &x) in got.iter().zip(&xs) {
        let want = (x as f64).ln();
        let e = (g as f64 - want).abs() / want.abs();
        assert!(e <= 2e-7, "log({x:e}) = {g}, want {want} ({e:e} relative)");
    }
    let zeros = jit_map("log(x)", &[0.0, -0.0, -1e-40]);
    assert_eq!(&zeros[..2], &[f32::NEG_INFINITY, f32::NEG_INFINITY]);
    assert!(zeros[2].is_nan());
}

/// `output y = x ^ p` on the JIT and the interpreter.
fn pow_both(xs: &[f32], ps: &[f32]) -> [Vec<f32>; 2] {
    let src = "input x: [N]\ninput p: [N]\noutput y = x ^ p\n";
    let c = pipeline::compile("pow", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let ids: Vec<_> = g.inputs.keys().collect();
    let mut inputs = SecondaryMap::new();
    inputs[ids[0]] = Some(Tensor::new(vec![xs.len()], xs.to_vec()));
    inputs[ids[1]] = Some(Tensor::new(vec![ps.len()], ps.to_vec()));
    [BackendKind::Jit, BackendKind::Interp].map(|k| {
        let mut e = Engine::new(k, &g);
        e.run(&mut SecondaryMap::new(), &inputs)
            .expect("runs")
            .remove(0)
            .data
    })
}

#[test]
fn pow_agrees_with_the_interpreter_bit_for_bit() {
    let bases = [
        2.0,
        0.5,
        10.0,
        1e-40,
        3e38,
        -2.0,
        -0.5,
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NAN,
        0.999_999,
        7.3,
    ];
    let exps = [
        -87.0,
        -150.0,
        127.0,
        0.5,
        -0.5,
        3.0,
        -3.0,
        2.5,
        0.0,
        1e-3,
        40.0,
        f32::NAN,
    ];
    let (mut xs, mut ps) = (Vec::new(), Vec::new());
    for &x in &bases {
        for &p in &exps {
            xs.push(x);
            ps.push(p);
        }
    }
    let [jit, interp] = pow_both(&xs, &ps);
    for i in 0..xs.len() {
        assert!(
            jit[i].to_bits() == interp[i].to_bits() || (jit[i].is_nan() && interp[i].is_nan()),
            "{} ^ {}: jit {} interp {}",
            xs[i],
            ps[i],
            jit[i],
            interp[i]
        );
    }
    // 2^-87 exactly, which the f32 polynomial missed by 27 ulp.
    assert_eq!(pow_both(&[2.0], &[-87.0])[0][0], 2f32.powi(-87));
}

#[test]
fn saturated_sigmoid_and_its_derivative_are_finite() {
    let src = "param x: [6] = [-1000.0, -100.0, -88.8, 0.0, 88.8, 1000.0]\n\
               output loss = sum(sigmoid(x))\n";
    let c = pipeline::compile("sig", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let loss = pipeline::find_loss(&g, None).expect("a loss");
    let gg = pipeline::grad_graph(&g, loss).expect("differentiates");
    let mut params = nnc::backend::interp::init_params(&gg.graph, 0);
    for kind in [BackendKind::Jit, BackendKind::Interp] {
        let mut e = Engine::new(kind, &gg.graph);
        let outs = e.run(&mut params, &SecondaryMap::new()).expect("runs");
        let grad = &outs[1].data;
        for (&x, &d) in [-1000.0f64, -100.0, -88.8, 0.0, 88.8, 1000.0]
            .iter()
            .zip(grad)
        {
            // σ'(x) = σ(x)(1 − σ(x)) = e/(1 + e)² with e = e^(−|x|).
            let e = (-x.abs()).exp();
            let want = e / ((1.0 + e) * (1.0 + e));
            assert!(d.is_finite(), "{kind:?}: σ'({x}) = {d}");
            // σ(1 − σ) is known to the precision of 1 − σ, one ulp of 1
            // (2^-24) absolute, as in PyTorch: the saturated ends give 0
            // where the true value is below that.
            let err = (d as f64 - want).abs();
            assert!(
                err <= 4.0 * want * f32::EPSILON as f64 + 2f64.powi(-24),
                "{kind:?}: σ'({x}) = {d:e}, want {want:e}"
            );
        }
        assert_eq!(grad[3], 0.25, "{kind:?}: σ'(0)");
    }
}

/// The full-width kernels (`backend/jit/wide.rs`, AVX-512 or AVX2 where
/// the CPU has them) give the bits of the Cranelift kernels they replace,
/// over the whole float range and its special values.
#[test]
fn full_width_kernels_give_the_cranelift_kernels_bits() {
    use nnc::backend::jit::wide;
    let mut xs = sweep(-120.0, 120.0, 40_001);
    xs.extend(sweep(-1.0, 1.0, 10_001));
    xs.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        f32::MIN_POSITIVE / 3.0,
        -f32::MIN_POSITIVE / 7.0,
        f32::MAX,
        f32::MIN,
        88.72,
        -103.9,
        86.0,
        -86.0,
        0.625,
        -0.625,
    ]);
    // Enough points that the kernel is wide-eligible, with a ragged end.
    // A wide kernel works in blocks of 256 consecutive points: the sweeps'
    // middle blocks are tame (every |x| < 43, so `exp`, `tanh` and
    // `sigmoid` take their fast forms alone), their ends and the block of
    // special values are not (both forms, chosen per lane).
    xs.extend(sweep(3.0, 7.0, 77));
    if wide::level().is_none() {
        eprintln!("this CPU has neither AVX-512 nor AVX2 with FMA: nothing runs wide");
    }
    for expr in [
        "exp(x)",
        "log(x)",
        "tanh(x)",
        "sigmoid(x)",
        "tanh(x * 0.5 + 0.1) * sigmoid(x)",
        "maximum(exp(x), x) - minimum(log(abs(x)), -x)",
        "select(x > 0.5, sqrt(abs(x)), x ^ 3) / (1 + exp(-x))",
        "leaky_relu(tanh(x)) + swish(x) + step(x)",
    ] {
        wide::set_enabled(true);
        let wide_bits = jit_map(expr, &xs);
        wide::set_enabled(false);
        let narrow = jit_map(expr, &xs);
        wide::set_enabled(true);
        for (i, (a, b)) in wide_bits.iter().zip(&narrow).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{expr} at x = {:e}: wide {a:e}, Cranelift {b:e}",
                xs[i]
            );
        }
    }
}

/// A wide kernel over rows, with broadcast operands (a row read by every
/// row, a column of one value per row): its loads read the operands
/// where they lie and its last pass writes the output directly, and it
/// still gives the Cranelift kernel's bits, ragged row end included.
#[test]
fn full_width_kernels_over_rows_with_broadcasts_give_the_same_bits() {
    // Long rows, taken in blocks along each row.
    same_bits_over_rows(&[5, 777]);
    // Rows shorter than a block, grouped whole into blocks: a softmax's
    // rows of 32 and a classifier's of 10 (split over threads: more than
    // 8192 points), and rows under an outer dim the column broadcast
    // does not follow (three dims, the middle one walked per row).
    same_bits_over_rows(&[301, 32]);
    same_bits_over_rows(&[997, 10]);
    same_bits_over_rows(&[3, 41, 24]);
}

/// A kernel over `shape` (`[.., rows, cols]`) reading `x` of that shape,
/// a row `b` broadcast over the rows and a column `c` ([rows, 1])
/// broadcast along them, and storing `t` besides its value (fusion's
/// `store-alongside`): the same bits wide and from Cranelift.
fn same_bits_over_rows(shape: &[usize]) {
    use nnc::backend::jit::wide;
    let r = shape.len();
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let src = format!(
        "input x: [{}]\ninput b: [{cols}]\ninput c: [{rows}, 1]\n\
         let h = tanh(x * c + b)\n\
         output t = h\n\
         output y = h * sigmoid(b) - exp(c)\n",
        dims.join(", ")
    );
    let c = pipeline::compile("rows", &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let fused = pipeline::fuse(&g);
    assert!(
        fused.fusion.carrier.values().any(|c| c.is_some()),
        "t is stored by y's kernel"
    );
    let values = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
            .collect()
    };
    let mut inputs = SecondaryMap::new();
    for (id, input) in g.inputs.iter() {
        let shape = match input.name.as_str() {
            "x" => shape.to_vec(),
            "b" => vec![cols],
            _ => vec![rows, 1],
        };
        let n = shape.iter().product();
        inputs[id] = Some(Tensor::new(shape, values(n, 0.37)));
    }
    let run = |on: bool| {
        wide::set_enabled(on);
        let mut params = SecondaryMap::new();
        let mut e = Engine::new(BackendKind::Jit, &g);
        let outs = e.run(&mut params, &inputs).expect("runs");
        wide::set_enabled(true);
        outs.into_iter().flat_map(|t| t.data).collect::<Vec<f32>>()
    };
    let (wide_bits, narrow) = (run(true), run(false));
    assert_eq!(wide_bits.len(), 2 * shape.iter().product::<usize>());
    for (i, (a, b)) in wide_bits.iter().zip(&narrow).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{shape:?}, point {i}: wide {a:e}, Cranelift {b:e}"
        );
    }
}
