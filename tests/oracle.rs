//! Agreement with PyTorch: `tests/fixtures/torch_grads_f32.json` holds
//! small models computed with torch (float32) — loss, gradients, three SGD
//! steps and three Adam steps. Each model the language can express is
//! written in `.nn` with the same values, and must agree within
//! rtol 1e-4, atol 1e-6 (the fixture's README: torch's float32 gradients
//! agree with float64 ones to 8.5e-5 relative).
//!
//! Expressible today: the dense+sigmoid models (MSE and BCE), the MLP
//! with tanh and softmax cross-entropy, and the 2-D convolution with a
//! per-channel bias and relu. LSTM, GRU and attention wait for their
//! operations.

use cranelift_entity::SecondaryMap;
use nnc::backend::interp;
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
    let fx = fixture();
    let m = &fx["models"][model];
    let src = format!("{}{body}", decls(m));
    let c = pipeline::compile(model, &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let (g, train) = (c.graph.expect("graph"), c.train.expect("a train block"));

    // Loss and gradients.
    let (loss, grads, _) =
        nnc::driver::cli::grad_values(&g, Some(&train), None, 0).expect("gradients");
    let want_loss = m["loss"].as_f64().expect("loss") as f32;
    assert_close(
        &format!("{model} loss"),
        &Tensor::scalar(loss),
        &Tensor::scalar(want_loss),
    );
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
        for (k, want) in m[key]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .enumerate()
        {
            let outs = interp::step(&step.graph, &mut params, &inputs).expect("a step");
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
    // The same model with `x` made a parameter, so its gradient is
    // computed too; and the forward value `y`.
    let fx = fixture();
    let m = &fx["models"]["conv2d_1to2_3x3_relu_mse"];
    let y = "relu(conv2d(x, K) + reshape(bias, [2, 1, 1]))";
    let src = format!(
        "{}let h = {y}\noutput y = h\noutput loss = mse(h, target)\n",
        decls(m).replace("input x:", "param x:")
    );
    let c = pipeline::compile("conv2d", &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let params = interp::init_params(&g, 0);
    let inputs = SecondaryMap::new();
    let outs = interp::run(
        &g,
        &interp::Feed {
            params: &params,
            inputs: &inputs,
        },
    )
    .expect("runs");
    assert_close("conv2d y", &outs[0], &tensor(&m["outputs"]["y"]));
    let (_, grads, _) = nnc::driver::cli::grad_values(&g, None, None, 0).expect("gradients");
    let (_, gx) = grads
        .iter()
        .find(|(n, _)| n == "x")
        .expect("a gradient for x");
    assert_close("conv2d grad x", gx, &tensor(&m["input_grads"]["x"]));
}

#[test]
fn the_fixture_has_the_models_tested_here() {
    let fx = fixture();
    for m in [
        "dense_sigmoid_mse",
        "dense_sigmoid_bce",
        "mlp_4_8_3_tanh_softmax_ce",
        "conv2d_1to2_3x3_relu_mse",
    ] {
        assert!(
            fx["models"][m]["adam"]["steps"]
                .as_array()
                .is_some_and(|s| s.len() == 3),
            "{m}"
        );
    }
}
