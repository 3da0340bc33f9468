//! Agreement with PyTorch: `tests/fixtures/torch_grads_f32.json` holds
//! small models computed with torch (float32) — loss, gradients, three SGD
//! steps and three Adam steps. Each model the language can express is
//! written in `.nn` with the same values, and must agree within
//! rtol 1e-4, atol 1e-6 (the fixture's README: torch's float32 gradients
//! agree with float64 ones to 8.5e-5 relative).
//!
//! Expressible today: the dense+sigmoid models (MSE and BCE), the MLP
//! with tanh and softmax cross-entropy, the 2-D convolution with a
//! per-channel bias and relu, the LSTM and GRU cells over 5 steps and
//! single-head self-attention (`stdlib/sequence.nn`). The language has no
//! loop yet, so the recurrences are unrolled: the tests write the steps
//! out (`let s1 = …; let s2 = …`). The fixture keeps one `[in, out]`
//! matrix per gate; the cells take them stacked on a leading gate axis, so
//! the models stack them (`stack4(Wx_i, Wx_f, Wx_g, Wx_o)`) and the
//! gradients still reach each fixture parameter.

mod common;

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/torch_grads_f32.json");
    serde_json::from_str(text).expect("the fixture is JSON")
}

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data: Vec<f32> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    Tensor::new(shape, data)
}

/// A tensor as an .nn literal, every f32 written so it reads back exactly.
fn literal(t: &Tensor) -> String {
    fn rec(t: &Tensor, axis: usize, off: usize, stride: &[usize]) -> String {
        if axis == t.shape.len() {
            return format!("{:?}", t.data[off]);
        }
        let parts: Vec<String> = (0..t.shape[axis])
            .map(|i| rec(t, axis + 1, off + i * stride[axis], stride))
            .collect();
        format!("[{}]", parts.join(", "))
    }
    rec(t, 0, 0, &nnc::tensor::strides(&t.shape))
}

fn shape(t: &Tensor) -> String {
    let d: Vec<String> = t.shape.iter().map(|x| x.to_string()).collect();
    format!("[{}]", d.join(", "))
}

/// The declarations of a model's inputs and parameters, with its values.
fn decls(m: &Value) -> String {
    let mut out = String::new();
    for (kind, key) in [("input", "inputs"), ("param", "params")] {
        for (name, v) in m[key].as_object().expect("a map") {
            let t = tensor(v);
            out.push_str(&format!("{kind} {name}: {} = {}\n", shape(&t), literal(&t)));
        }
    }
    out
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.data.len(), want.data.len(), "{what}: sizes differ");
    for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 + 1e-4 * w.abs(),
            "{what}[{i}]: nnc {g}, torch {w}"
        );
    }
}

fn check(model: &str, body: &str) {
    for backend in common::backends() {
        check_on(model, body, backend);
    }
}

fn check_on(model: &str, body: &str, backend: BackendKind) {
    let fx = fixture();
    let m = &fx["models"][model];
    let src = format!("{}{body}", decls(m));
    let c = pipeline::compile(model, &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let (g, train) = (c.graph.expect("graph"), c.train.expect("a train block"));

    // Loss and gradients.
    let (loss, grads, _) =
        nnc::driver::graphs::grad_values(&g, Some(&train), None, 0, backend).expect("gradients");
    let want_loss = m["loss"].as_f64().expect("loss") as f32;
    assert_close(
        &format!("{model} loss"),
        &Tensor::scalar(loss),
        &Tensor::scalar(want_loss),
    );
    // The same gradients on both sides, not only those nnc computed.
    let mut ours: Vec<&str> = grads.iter().map(|(n, _)| n.as_str()).collect();
    let mut theirs: Vec<&str> = m["grads"]
        .as_object()
        .expect("a map of gradients")
        .keys()
        .map(String::as_str)
        .filter(|n| m["params"].get(*n).is_some())
        .collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    assert_eq!(ours, theirs, "{model}: the parameters with a gradient");
    for (name, t) in &grads {
        assert_close(
            &format!("{model} grad {name}"),
            t,
            &tensor(&m["grads"][name]),
        );
    }

    // Three steps of each optimizer, from the same start.
    for (opt, key) in [
        ("sgd(lr = 0.1)", "sgd"),
        (
            "adam(lr = 0.001, beta1 = 0.9, beta2 = 0.999, eps = 1e-8)",
            "adam",
        ),
    ] {
        let mut spec = train.clone();
        let src2 = src.replace("optimizer = sgd(lr = 0.1)", &format!("optimizer = {opt}"));
        let c2 = pipeline::compile(model, &src2, Stage::Ir);
        spec.optimizer = c2.train.expect("a train block").optimizer;
        let step = pipeline::step_graph(&g, &spec).expect("a step graph");
        let mut params = interp::init_params(&step.graph, 0);
        let inputs = SecondaryMap::new();
        let mut engine = Engine::new(backend, &step.graph);
        for (k, want) in m[key]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .enumerate()
        {
            let outs = engine.step(&mut params, &inputs).expect("a step");
            let before = want["loss_before"].as_f64().expect("loss") as f32;
            assert_close(
                &format!("{model} {key} step {} loss", k + 1),
                &outs[0],
                &Tensor::scalar(before),
            );
            let mut compared = std::collections::HashSet::new();
            for (id, p) in step.graph.params.iter() {
                let (table, name) = match p.name.strip_prefix("opt.m.") {
                    Some(n) => ("m", n),
                    None => match p.name.strip_prefix("opt.v.") {
                        Some(n) => ("v", n),
                        None => ("params", p.name.as_str()),
                    },
                };
                if let Some(w) = want[table].get(name) {
                    assert_close(
                        &format!("{model} {key} step {} {table} {name}", k + 1),
                        &params[id],
                        &tensor(w),
                    );
                    compared.insert(table);
                }
            }
            let expected: &[&str] = if key == "adam" {
                &["params", "m", "v"]
            } else {
                &["params"]
            };
            for t in expected {
                assert!(compared.contains(t), "{model} {key}: no `{t}` was compared");
            }
        }
    }
}

#[test]
fn dense_sigmoid_mse() {
    check(
        "dense_sigmoid_mse",
        "train {\n  loss = mse(sigmoid(sum(w * x) + b), target)\n  optimizer = sgd(lr = 0.1)\n}\n",
    );
}

#[test]
fn dense_sigmoid_bce() {
    check(
        "dense_sigmoid_bce",
        "train {\n  loss = bce(sigmoid(sum(w * x) + b), target)\n  optimizer = sgd(lr = 0.1)\n}\n",
    );
}

#[test]
fn mlp_tanh_softmax_cross_entropy() {
    check(
        "mlp_4_8_3_tanh_softmax_ce",
        "train {\n  loss = softmax_cross_entropy(dense(dense(x, W1, b1, tanh), W2, b2, identity), target_onehot)\n  optimizer = sgd(lr = 0.1)\n}\n",
    );
}

/// `cross_entropy`, the name of the fixture's own reference
/// (`F.cross_entropy(lin(x), labels)`), agrees with it as
/// `softmax_cross_entropy` does: loss, gradients and optimizer steps.
#[test]
fn mlp_tanh_cross_entropy_as_pytorch_names_it() {
    check(
        "mlp_4_8_3_tanh_softmax_ce",
        "train {\n  loss = cross_entropy(dense(dense(x, W1, b1, tanh), W2, b2, identity), target_onehot)\n  optimizer = sgd(lr = 0.1)\n}\n",
    );
}

/// `cross_entropy` with soft targets (PyTorch's class-probability form)
/// against the hand computation: L = −1/B Σ_b Σ_c t_bc log softmax(z_b)_c
/// and, for rows of targets summing to 1, ∂L/∂z = (softmax(z) − t) / B.
#[test]
fn cross_entropy_with_soft_targets_by_hand() {
    let z = [[2.0f64, 1.0, 0.1], [0.5, 2.5, -1.0]];
    let t = [[0.7f64, 0.2, 0.1], [0.0, 0.5, 0.5]];
    let src = "param z: [2, 3] = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]\n\
               let t = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]\n\
               output loss = cross_entropy(z, t)\n";
    let c = pipeline::compile("soft.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let mut loss = 0.0;
    let mut grad = Vec::new();
    for (zb, tb) in z.iter().zip(&t) {
        let sum: f64 = zb.iter().map(|v| v.exp()).sum();
        for (zc, tc) in zb.iter().zip(tb) {
            let p = zc.exp() / sum;
            loss -= tc * p.ln() / 2.0;
            grad.push(((p - tc) / 2.0) as f32);
        }
    }
    for backend in common::backends() {
        let (got, grads, _) =
            nnc::driver::graphs::grad_values(&g, None, None, 0, backend).expect("gradients");
        assert_close(
            &format!("loss [{backend:?}]"),
            &Tensor::scalar(got),
            &Tensor::scalar(loss as f32),
        );
        let (_, gz) = grads
            .iter()
            .find(|(n, _)| n == "z")
            .expect("a gradient for z");
        assert_close(
            &format!("grad z [{backend:?}]"),
            gz,
            &Tensor::new(vec![2, 3], grad.clone()),
        );
    }
}

#[test]
fn conv2d_relu_mse() {
    // y = relu(conv(x, K) + bias), the bias [2] broadcast per output
    // channel over [1, 2, 3, 3] as [2, 1, 1].
    check(
        "conv2d_1to2_3x3_relu_mse",
        "train {\n  loss = mse(relu(conv2d(x, K) + reshape(bias, [2, 1, 1])), target)\n  optimizer = sgd(lr = 0.1)\n}\n",
    );
}

#[test]
fn conv2d_output_and_input_gradient() {
    check_forward(
        "conv2d_1to2_3x3_relu_mse",
        "let h = relu(conv2d(x, K) + reshape(bias, [2, 1, 1]))\n",
        &[("y", "h")],
        "mse(h, target)",
    );
}

/// The forward values `outputs` (fixture name, .nn expression) of a model
/// written as `lets`, and the gradient of `loss` for its input `x`: the
/// same model with `x` made a parameter, so its gradient is computed too.
fn check_forward(model: &str, lets: &str, outputs: &[(&str, &str)], loss: &str) {
    for backend in common::backends() {
        check_forward_on(model, lets, outputs, loss, backend);
    }
}

fn check_forward_on(
    model: &str,
    lets: &str,
    outputs: &[(&str, &str)],
    loss: &str,
    backend: BackendKind,
) {
    let fx = fixture();
    let m = &fx["models"][model];
    let mut src = decls(m).replace("input x:", "param x:") + lets;
    for (name, e) in outputs {
        src.push_str(&format!("output {name} = {e}\n"));
    }
    src.push_str(&format!("output loss = {loss}\n"));
    let c = pipeline::compile(model, &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let mut params = interp::init_params(&g, 0);
    let inputs = SecondaryMap::new();
    let outs = Engine::new(backend, &g)
        .run(&mut params, &inputs)
        .expect("runs");
    for (i, (name, _)) in outputs.iter().enumerate() {
        let want = tensor(&m["outputs"][*name]);
        assert_eq!(outs[i].shape, want.shape, "{model} {name}: shapes differ");
        assert_close(&format!("{model} {name}"), &outs[i], &want);
    }
    let (_, grads, _) =
        nnc::driver::graphs::grad_values(&g, None, None, 0, backend).expect("gradients");
    let (_, gx) = grads
        .iter()
        .find(|(n, _)| n == "x")
        .expect("a gradient for x");
    assert_close(
        &format!("{model} grad x"),
        gx,
        &tensor(&m["input_grads"]["x"]),
    );
}

/// A train block minimizing `loss` with the SGD that `check` swaps out.
fn train(loss: &str) -> String {
    format!("train {{\n  loss = {loss}\n  optimizer = sgd(lr = 0.1)\n}}\n")
}

/// Time step `t` (from 1) of the input sequence `x: [T, 3]`, as a `[3]`.
fn x_at(t: usize) -> String {
    format!(
        "reshape(slice(x, axis = 0, start = {}, end = {t}), [3])",
        t - 1
    )
}

/// The rows `f(1)`, …, `f(n)` (each `[4]`) stacked into `[n, 4]`.
fn rows(n: usize, f: impl Fn(usize) -> String) -> String {
    (2..=n).fold(format!("unsqueeze0({})", f(1)), |acc, t| {
        format!("concat({acc}, unsqueeze0({}), axis = 0)", f(t))
    })
}

/// The LSTM of the fixture unrolled over its 5 steps from h0 = c0 = 0: the
/// states `s1` … `s5` (`lstm_state(h_t, c_t)`), the gates' weights
/// stacked in the order (i, f, g, o).
fn lstm_lets() -> String {
    let mut s = String::from(
        "let wx = stack4(Wx_i, Wx_f, Wx_g, Wx_o)\n\
         let wh = stack4(Wh_i, Wh_f, Wh_g, Wh_o)\n\
         let b = stack4(b_i, b_f, b_g, b_o)\n\
         let s0 = lstm_state(zeros([4]), zeros([4]))\n",
    );
    for t in 1..=5 {
        s.push_str(&format!(
            "let s{t} = lstm_cell({}, s{}, wx, wh, b)\n",
            x_at(t),
            t - 1
        ));
    }
    s
}

#[test]
fn lstm_five_steps_mse() {
    check(
        "lstm_in3_h4_t5",
        &(lstm_lets() + &train("mse(lstm_h(s5), target)")),
    );
}

/// The same LSTM through the stdlib's `lstm`, a `scan` whose body is
/// compiled once: the loop's derivative must agree with PyTorch too.
#[test]
fn lstm_as_a_loop() {
    let lets = "let wx = stack4(Wx_i, Wx_f, Wx_g, Wx_o)\n\
                let wh = stack4(Wh_i, Wh_f, Wh_g, Wh_o)\n\
                let b = stack4(b_i, b_f, b_g, b_o)\n\
                let s = last(lstm(x, lstm_state(zeros([4]), zeros([4])), wx, wh, b))\n";
    check(
        "lstm_in3_h4_t5",
        &(lets.to_string() + &train("mse(lstm_h(s), target)")),
    );
}

/// The GRU through the stdlib's `gru` loop.
#[test]
fn gru_as_a_loop() {
    let lets = "let wx = stack3(Wx_r, Wx_z, Wx_n)\n\
                let wh = stack3(Wh_r, Wh_z, Wh_n)\n\
                let bx = stack3(b_r, b_z, b_n)\n\
                let bh = stack3(zeros([4]), zeros([4]), bh_n)\n\
                let h = last(gru(x, zeros([4]), wx, wh, bx, bh))\n";
    check(
        "gru_torch_in3_h4_t5",
        &(lets.to_string() + &train("mse(h, target)")),
    );
}

#[test]
fn lstm_states_and_input_gradient() {
    check_forward(
        "lstm_in3_h4_t5",
        &lstm_lets(),
        &[
            ("h_all", &rows(5, |t| format!("lstm_h(s{t})"))),
            ("c_all", &rows(5, |t| format!("lstm_c(s{t})"))),
            ("h_last", "lstm_h(s5)"),
        ],
        "mse(lstm_h(s5), target)",
    );
}

/// The GRU of the fixture unrolled over its 5 steps from h0 = 0: `h1` …
/// `h5`. The fixture's b_r, b_z and b_n are the input-side biases (those
/// of r and z hold both sides' sums); its only hidden-side bias is bh_n.
fn gru_lets() -> String {
    let mut s = String::from(
        "let wx = stack3(Wx_r, Wx_z, Wx_n)\n\
         let wh = stack3(Wh_r, Wh_z, Wh_n)\n\
         let bx = stack3(b_r, b_z, b_n)\n\
         let bh = stack3(zeros([4]), zeros([4]), bh_n)\n\
         let h0 = zeros([4])\n",
    );
    for t in 1..=5 {
        s.push_str(&format!(
            "let h{t} = gru_cell({}, h{}, wx, wh, bx, bh)\n",
            x_at(t),
            t - 1
        ));
    }
    s
}

#[test]
fn gru_five_steps_mse() {
    check(
        "gru_torch_in3_h4_t5",
        &(gru_lets() + &train("mse(h5, target)")),
    );
}

#[test]
fn gru_states_and_input_gradient() {
    check_forward(
        "gru_torch_in3_h4_t5",
        &gru_lets(),
        &[("h_all", &rows(5, |t| format!("h{t}"))), ("h_last", "h5")],
        "mse(h5, target)",
    );
}

/// Single-head self-attention with the scale 1/√8 and an output
/// projection.
const ATTENTION: &str = "let q = x @ Wq\nlet k = x @ Wk\nlet v = x @ Wv\n";

#[test]
fn self_attention_mse() {
    check(
        "self_attention_s4_d8",
        &(ATTENTION.to_string() + &train("mse(attention(q, k, v) @ Wo, target)")),
    );
}

#[test]
fn self_attention_values_and_input_gradient() {
    check_forward(
        "self_attention_s4_d8",
        ATTENTION,
        &[
            ("scores", "q @ transpose(k) / sqrt(8)"),
            ("attn", "softmax(q @ transpose(k) / sqrt(8))"),
            ("out", "attention(q, k, v) @ Wo"),
        ],
        "mse(attention(q, k, v) @ Wo, target)",
    );
}

#[test]
fn the_fixture_has_the_models_tested_here() {
    let fx = fixture();
    for m in [
        "dense_sigmoid_mse",
        "dense_sigmoid_bce",
        "mlp_4_8_3_tanh_softmax_ce",
        "conv2d_1to2_3x3_relu_mse",
        "lstm_in3_h4_t5",
        "gru_torch_in3_h4_t5",
        "self_attention_s4_d8",
    ] {
        assert!(
            fx["models"][m]["adam"]["steps"]
                .as_array()
                .is_some_and(|s| s.len() == 3),
            "{m}"
        );
    }
}
