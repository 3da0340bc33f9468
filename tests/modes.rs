//! Training and evaluation modes: `training()` is 1 in a training step's
//! graph and 0 elsewhere, so dropout drops only while training and batch
//! normalisation switches between batch and running statistics, whose
//! `assign`s a step applies. Values are checked against references
//! computed here by hand.

use cranelift_entity::SecondaryMap;
use nnc::backend::interp::{self, Feed};
use nnc::ir::{Graph, InputId, ParamId, RNG_KEY_INPUT};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;

fn compile(src: &str) -> (Graph, Option<nnc::sema::TrainSpec>) {
    let c = pipeline::compile("modes.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    (c.graph.expect("compiled"), c.train)
}

/// The random key fed for `counter`, or no inputs at all.
fn key(g: &Graph, counter: u64) -> SecondaryMap<InputId, Option<Tensor>> {
    let mut inputs = SecondaryMap::new();
    if let Some((id, _)) = g.inputs.iter().find(|(_, i)| i.name == RNG_KEY_INPUT) {
        inputs[id] = Some(interp::rng_key(7, counter));
    }
    inputs
}

fn outputs(g: &Graph, params: &SecondaryMap<ParamId, Tensor>, counter: u64) -> Vec<Tensor> {
    let inputs = key(g, counter);
    interp::run(
        g,
        &Feed {
            params,
            inputs: &inputs,
        },
    )
    .expect("runs")
}

fn in_mode(g: &Graph, training: bool) -> Graph {
    let mut g = g.clone();
    pipeline::set_training(&mut g, training);
    g
}

#[test]
fn dropout_drops_about_p_while_training_and_is_the_identity_otherwise() {
    let (g, _) = compile("let x = ones([200, 100]) * 3\noutput y = dropout(x, p = 0.3)\n");
    let params = interp::init_params(&g, 0);
    let eval = outputs(&in_mode(&g, false), &params, 0);
    assert!(
        eval[0].data.iter().all(|&v| v == 3.0),
        "eval is the identity"
    );
    // Not fixing the mode is evaluation too (`nnc run`).
    assert_eq!(outputs(&g, &params, 0)[0].data, eval[0].data);

    let train = in_mode(&g, true);
    let a = outputs(&train, &params, 0);
    let kept = 3.0f32 / (1.0 - 0.3);
    assert!(
        a[0].data.iter().all(|&v| v == 0.0 || v == kept),
        "each element is dropped or scaled by 1/(1 - p)"
    );
    let dropped = a[0].data.iter().filter(|&&v| v == 0.0).count() as f64 / 20_000.0;
    // 20000 draws: the fraction's standard deviation is about 0.0032.
    assert!((dropped - 0.3).abs() < 0.02, "dropped fraction {dropped}");
    assert_eq!(
        outputs(&train, &params, 0)[0].data,
        a[0].data,
        "the same key draws the same mask"
    );
    assert_ne!(
        outputs(&train, &params, 1)[0].data,
        a[0].data,
        "the next step draws another"
    );
}

const BN: &str =
    "input x: [4, 3] = [[1.0, 2.0, -1.0], [0.5, -2.0, 3.0], [2.0, 0.0, 1.0], [-1.5, 1.0, 0.0]]
param gamma: [3] = [1.0, 2.0, 0.5]
param beta: [3] = [0.0, -1.0, 0.5]
state rm: [3] = [0.5, -0.5, 1.0]
state rv: [3] = [1.0, 4.0, 0.25]
output y = batch_norm(x, gamma, beta, rm, rv, momentum = 0.2)
";

const X: [[f64; 3]; 4] = [
    [1.0, 2.0, -1.0],
    [0.5, -2.0, 3.0],
    [2.0, 0.0, 1.0],
    [-1.5, 1.0, 0.0],
];
const GAMMA: [f64; 3] = [1.0, 2.0, 0.5];
const BETA: [f64; 3] = [0.0, -1.0, 0.5];
const RM: [f64; 3] = [0.5, -0.5, 1.0];
const RV: [f64; 3] = [1.0, 4.0, 0.25];

fn normalised(mean: [f64; 3], var: [f64; 3]) -> Vec<f64> {
    let mut out = Vec::new();
    for row in X {
        for c in 0..3 {
            out.push(GAMMA[c] * (row[c] - mean[c]) / (var[c] + 1e-5).sqrt() + BETA[c]);
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn batch_norm_uses_running_statistics_in_evaluation() {
    let (g, _) = compile(BN);
    let params = interp::init_params(&g, 0);
    let y = &outputs(&in_mode(&g, false), &params, 0)[0];
    assert_close(&y.data, &normalised(RM, RV), "eval");
}

#[test]
fn batch_norm_uses_batch_statistics_while_training_and_a_step_updates_the_running_ones() {
    let (g, _) = compile(BN);
    let mut mean = [0.0; 3];
    let mut var = [0.0; 3];
    for c in 0..3 {
        mean[c] = X.iter().map(|r| r[c]).sum::<f64>() / 4.0;
        var[c] = X.iter().map(|r| (r[c] - mean[c]).powi(2)).sum::<f64>() / 4.0;
    }
    let train = in_mode(&g, true);
    let mut params = interp::init_params(&train, 0);
    let inputs = key(&train, 0);
    let y = interp::step(&train, &mut params, &inputs).expect("steps");
    assert_close(&y[0].data, &normalised(mean, var), "train");
    let id = |name: &str| {
        train
            .params
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| id)
            .expect("a state")
    };
    let k = 0.2;
    let want_m: Vec<f64> = (0..3).map(|c| (1.0 - k) * RM[c] + k * mean[c]).collect();
    let want_v: Vec<f64> = (0..3)
        .map(|c| (1.0 - k) * RV[c] + k * var[c] * 4.0 / 3.0)
        .collect();
    assert_close(&params[id("rm")].data, &want_m, "running mean");
    assert_close(&params[id("rv")].data, &want_v, "running variance");
    assert_eq!(
        params[id("gamma")].data,
        [1.0, 2.0, 0.5],
        "a step without an optimizer leaves params alone"
    );
}

#[test]
fn a_training_step_keeps_the_assigns_of_the_layers_its_loss_runs() {
    let bn = BN.replace("output y", "let y");
    let src = format!(
        "{bn}param w: [3] = [1.0, 2.0, 3.0]\ntrain {{\n phase norm {{ loss = mean(y * y) }}\n phase other {{ loss = sum(w * w); params = w }}\n}}\n"
    );
    let (g, spec) = compile(&src);
    let steps = pipeline::train_steps(&g, &spec.expect("a train block")).expect("compiles");
    let updated = |k: usize| -> Vec<String> {
        let sg = &steps[k].step.graph;
        sg.updates
            .iter()
            .map(|u| sg.params[u.param].name.clone())
            .collect()
    };
    let norm = updated(0);
    assert!(
        norm.contains(&"rm".to_string()) && norm.contains(&"rv".to_string()),
        "{norm:?}"
    );
    let other = updated(1);
    assert!(!other.iter().any(|n| n == "rm" || n == "rv"), "{other:?}");
    assert!(
        other.contains(&"w".to_string()) && !other.contains(&"gamma".to_string()),
        "{other:?}"
    );
}
