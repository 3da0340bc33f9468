//! Every optimizer against a reference written out in f64, on the loss
//! ½ Σ cᵢwᵢ², whose gradient cᵢwᵢ changes with every step. (PyTorch's
//! values for SGD and bias-corrected Adam are checked in tests/oracle.rs.)

use cranelift_entity::SecondaryMap;
use nnc::backend::interp;
use nnc::pipeline::{self, Stage};

const W0: [f64; 3] = [0.5, -1.5, 2.0];
const C: [f64; 3] = [1.0, 0.3, -0.7];

fn nnc_steps(optimizer: &str, steps: usize) -> Vec<f32> {
    let src = format!(
        "param w: [3] = [0.5, -1.5, 2.0]\ntrain {{\n  loss = 0.5 * sum([1.0, 0.3, -0.7] * w ^ 2)\n  optimizer = {optimizer}\n}}\n"
    );
    let c = pipeline::compile("opt.nn", &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let (g, spec) = (c.graph.expect("graph"), c.train.expect("train"));
    let step = pipeline::step_graph(&g, &spec).expect("step graph");
    let mut params = interp::init_params(&step.graph, 0);
    let inputs = SecondaryMap::new();
    for _ in 0..steps {
        interp::step(&step.graph, &mut params, &inputs).expect("a step");
    }
    let (id, _) = step
        .graph
        .params
        .iter()
        .find(|(_, p)| p.name == "w")
        .expect("w");
    params[id].data.clone()
}

#[derive(Clone, Copy)]
enum Ref {
    Sgd {
        wd: f64,
    },
    Momentum {
        mu: f64,
        nesterov: bool,
        wd: f64,
    },
    Adam {
        b1: f64,
        b2: f64,
        eps: f64,
        bias_correction: bool,
        wd: f64,
        decoupled: bool,
    },
}

fn reference(r: Ref, lr: f64, steps: usize) -> Vec<f64> {
    let mut w = W0.to_vec();
    let (mut buf, mut m, mut v) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
    for t in 1..=steps {
        for i in 0..3 {
            let mut g = C[i] * w[i];
            match r {
                Ref::Sgd { wd } => w[i] -= lr * (g + wd * w[i]),
                Ref::Momentum { mu, nesterov, wd } => {
                    g += wd * w[i];
                    buf[i] = mu * buf[i] + g;
                    w[i] -= lr * if nesterov { g + mu * buf[i] } else { buf[i] };
                }
                Ref::Adam {
                    b1,
                    b2,
                    eps,
                    bias_correction,
                    wd,
                    decoupled,
                } => {
                    if decoupled {
                        w[i] *= 1.0 - lr * wd;
                    } else {
                        g += wd * w[i];
                    }
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    let (mh, vh) = if bias_correction {
                        (
                            m[i] / (1.0 - b1.powi(t as i32)),
                            v[i] / (1.0 - b2.powi(t as i32)),
                        )
                    } else {
                        (m[i], v[i])
                    };
                    w[i] -= lr * mh / (vh.sqrt() + eps);
                }
            }
        }
    }
    w
}

fn check(optimizer: &str, r: Ref, lr: f64) {
    let got = nnc_steps(optimizer, 3);
    let want = reference(r, lr, 3);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-6 + 1e-5 * w.abs(),
            "{optimizer}: nnc {got:?}, reference {want:?}"
        );
    }
    assert_ne!(got, vec![0.5, -1.5, 2.0], "{optimizer} did not move");
}

#[test]
fn sgd_with_and_without_weight_decay() {
    check("sgd(lr = 0.1)", Ref::Sgd { wd: 0.0 }, 0.1);
    check(
        "sgd(lr = 0.1, weight_decay = 0.05)",
        Ref::Sgd { wd: 0.05 },
        0.1,
    );
}

#[test]
fn momentum_and_nesterov() {
    check(
        "momentum(lr = 0.1, momentum = 0.9)",
        Ref::Momentum {
            mu: 0.9,
            nesterov: false,
            wd: 0.0,
        },
        0.1,
    );
    check(
        "momentum(lr = 0.1, momentum = 0.8, nesterov = true, weight_decay = 0.01)",
        Ref::Momentum {
            mu: 0.8,
            nesterov: true,
            wd: 0.01,
        },
        0.1,
    );
}

#[test]
fn adam_bias_corrected_is_the_default() {
    let r = Ref::Adam {
        b1: 0.9,
        b2: 0.999,
        eps: 1e-8,
        bias_correction: true,
        wd: 0.0,
        decoupled: false,
    };
    check("adam(lr = 0.01)", r, 0.01);
}

#[test]
fn adam_as_the_seed_writes_it_without_bias_correction() {
    let r = Ref::Adam {
        b1: 0.9,
        b2: 0.999,
        eps: 1e-8,
        bias_correction: false,
        wd: 0.0,
        decoupled: false,
    };
    check("adam(lr = 0.01, bias_correction = false)", r, 0.01);
}

#[test]
fn adam_with_l2_and_adamw_with_decoupled_decay() {
    let r = Ref::Adam {
        b1: 0.9,
        b2: 0.99,
        eps: 1e-8,
        bias_correction: true,
        wd: 0.1,
        decoupled: false,
    };
    check("adam(lr = 0.01, beta2 = 0.99, weight_decay = 0.1)", r, 0.01);
    let r = Ref::Adam {
        b1: 0.9,
        b2: 0.999,
        eps: 1e-8,
        bias_correction: true,
        wd: 0.1,
        decoupled: true,
    };
    check("adamw(lr = 0.01, weight_decay = 0.1)", r, 0.01);
}
