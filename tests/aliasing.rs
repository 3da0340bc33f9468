//! Parameter updates whose value shares storage with something else: a
//! view of another parameter or of a constant, or one value assigned to
//! two states (CSE merges equal updates). After each step every state
//! must hold what its `assign` computed, on every backend, and nothing
//! else may change. Also: parameters of the wrong size handed to an
//! engine are an error, not a crash.

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::ir::{Graph, ParamId};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;

const BACKENDS: [BackendKind; 2] = [BackendKind::Jit, BackendKind::Interp];

fn compile(src: &str) -> Graph {
    let c = pipeline::compile("aliasing.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    c.graph.expect("compiled")
}

fn param(g: &Graph, name: &str) -> ParamId {
    g.params
        .iter()
        .find(|(_, p)| p.name == name)
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no parameter `{name}`"))
}

/// Runs `steps` steps of `g` on `kind`; returns each step's outputs and
/// the parameters after the last.
fn steps(
    g: &Graph,
    kind: BackendKind,
    steps: usize,
) -> (Vec<Vec<Tensor>>, SecondaryMap<ParamId, Tensor>) {
    let mut params = interp::init_params(g, 0);
    let mut e = Engine::new(kind, g);
    let outs = (0..steps)
        .map(|_| {
            e.step(&mut params, &SecondaryMap::new())
                .expect("a step runs")
        })
        .collect();
    (outs, params)
}

#[test]
fn a_state_assigned_a_view_of_a_parameter() {
    let g = compile(
        "param w: [2, 3] = [[1, 2, 3], [4, 5, 6]]\n\
         state s: [6] = zeros()\n\
         output y = sum(assign(s, reshape(w, [6])))\n",
    );
    for kind in BACKENDS {
        let (outs, p) = steps(&g, kind, 2);
        assert_eq!(
            p[param(&g, "s")].data,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "{kind:?}: s"
        );
        assert_eq!(
            p[param(&g, "w")].data,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "{kind:?}: w"
        );
        assert_eq!(outs[1][0].data, [21.0], "{kind:?}: y");
    }
}

#[test]
fn a_state_assigned_a_view_of_a_constant_leaves_the_constant() {
    // The constant is also read by the output: were the update to take
    // its buffer, the second step would see s's old value there.
    let g = compile(
        "state s: [4] = zeros()\n\
         let c = [[1.0, 2.0], [3.0, 4.0]]\n\
         output y = sum(c * 2)\n\
         output z = sum(assign(s, reshape(c, [4])))\n",
    );
    for kind in BACKENDS {
        let (outs, p) = steps(&g, kind, 3);
        assert_eq!(p[param(&g, "s")].data, [1.0, 2.0, 3.0, 4.0], "{kind:?}: s");
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o[0].data, [20.0], "{kind:?}: y at step {i}");
            assert_eq!(o[1].data, [10.0], "{kind:?}: z at step {i}");
        }
    }
}

#[test]
fn one_value_assigned_to_two_states() {
    let g = compile(
        "param w: [3] = [1, 2, 3]\n\
         state s1: [3] = zeros()\n\
         state s2: [3] = zeros()\n\
         let m = w * 2 + 1\n\
         output a = sum(assign(s1, m))\n\
         output b = sum(assign(s2, m))\n",
    );
    for kind in BACKENDS {
        let (_, p) = steps(&g, kind, 2);
        assert_eq!(p[param(&g, "s1")].data, [3.0, 5.0, 7.0], "{kind:?}: s1");
        assert_eq!(p[param(&g, "s2")].data, [3.0, 5.0, 7.0], "{kind:?}: s2");
    }
}

#[test]
fn a_state_that_accumulates_over_steps() {
    // The update reads the state it replaces: each step adds w once.
    let g = compile(
        "param w: [2] = [1, 10]\n\
         state s: [2] = zeros()\n\
         output y = sum(assign(s, s + w))\n",
    );
    for kind in BACKENDS {
        let (outs, p) = steps(&g, kind, 3);
        assert_eq!(p[param(&g, "s")].data, [3.0, 30.0], "{kind:?}");
        let ys: Vec<f32> = outs.iter().map(|o| o[0].data[0]).collect();
        assert_eq!(ys, [11.0, 22.0, 33.0], "{kind:?}");
    }
}

#[test]
fn a_parameter_of_the_wrong_size_is_an_error() {
    let g = compile("param w: [2, 3] = ones()\noutput y = sum(w @ ones([3, 4]))\n");
    let w = param(&g, "w");
    for kind in BACKENDS {
        let mut e = Engine::new(kind, &g);
        let mut short = interp::init_params(&g, 0);
        short[w] = Tensor {
            shape: vec![2, 3],
            data: vec![1.0; 2],
        };
        let r = e.run(&mut short, &SecondaryMap::new());
        let missing = e.run(&mut SecondaryMap::new(), &SecondaryMap::new());
        let msg = r.expect_err("a short parameter").to_string();
        assert!(msg.contains("`w` holds 2 values"), "{kind:?}: {msg}");
        let msg = missing.expect_err("a missing parameter").to_string();
        assert!(msg.contains("`w` holds 0 values"), "{kind:?}: {msg}");
        // Whatever the backend, the right parameters still run after.
        let mut good = interp::init_params(&g, 0);
        let y = e.run(&mut good, &SecondaryMap::new()).expect("runs");
        assert_eq!(y[0].data, [24.0], "{kind:?}");
    }
}
