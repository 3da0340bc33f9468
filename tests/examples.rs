//! The seed's numbers, through `nnc run --format json` as a user runs it.

use serde_json::Value;
use std::process::Command;

fn run_json(file: &str) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["run", file, "--format", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nnc binary runs");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("valid JSON")
}

fn scalar(v: &Value, name: &str) -> f64 {
    let out = &v["outputs"][name];
    assert_eq!(out["shape"], serde_json::json!([]), "`{name}` is a scalar");
    out["data"][0]
        .as_f64()
        .unwrap_or_else(|| panic!("`{name}` has a number"))
}

fn vector(v: &Value, name: &str) -> Vec<f64> {
    v["outputs"][name]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("`{name}` has data"))
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn neuron_matches_the_seed() {
    let v = run_json("examples/neuron.nn");
    let z = scalar(&v, "z");
    assert!(z.abs() < 1e-6, "z = {z}");
    // In f32 the sum rounds to -7.45e-9, as in PyTorch, so step(z) is 0.
    assert!(close(z, -7.450_580_6e-9, 1e-12), "z = {z}");
    assert_eq!(scalar(&v, "step_z"), 0.0);
    assert_eq!(scalar(&v, "step_0"), 1.0);
    assert_eq!(scalar(&v, "sigmoid_0"), 0.5);
    assert_eq!(scalar(&v, "relu_0"), 0.0);
    assert_eq!(scalar(&v, "leaky_relu_0"), 0.0);
    assert_eq!(scalar(&v, "tanh_0"), 0.0);
    assert_eq!(scalar(&v, "swish_0"), 0.0);
    assert!(close(scalar(&v, "y"), 0.5, 1e-7));
    let s = vector(&v, "sigmoid_points");
    let want = [-2.0f64, -0.5, 0.5, 2.0].map(|x| 1.0 / (1.0 + (-x).exp()));
    for (a, b) in s.iter().zip(want) {
        assert!(close(*a, b, 1e-6), "sigmoid: {a} vs {b}");
    }
    let leaky = vector(&v, "leaky_relu_points");
    for (a, b) in leaky.iter().zip([-0.02, -0.005, 0.5, 2.0]) {
        assert!(close(*a, b, 1e-7), "leaky_relu: {a} vs {b}");
    }
    let steep = vector(&v, "leaky_relu_steep");
    assert!(close(steep[0], -0.4, 1e-6) && close(steep[1], -0.1, 1e-6));
    let sw = vector(&v, "swish_points");
    for (a, x) in sw.iter().zip([-2.0f64, -0.5, 0.5, 2.0]) {
        assert!(close(*a, x / (1.0 + (-x).exp()), 1e-6), "swish({x}) = {a}");
    }
}

#[test]
fn losses_match_the_seed() {
    let v = run_json("examples/losses.nn");
    assert!(close(scalar(&v, "mse"), 0.025, 1e-6));
    let bce = -(0.9f64.ln() + 0.8f64.ln());
    assert!(
        close(scalar(&v, "bce"), bce, 1e-6),
        "bce = {}",
        scalar(&v, "bce")
    );
    assert!(close(scalar(&v, "bce"), 0.328504, 1e-6));
    assert!(close(scalar(&v, "bce_mean"), bce / 2.0, 1e-6));
    // Softmax cross-entropy by hand, in f64.
    let rows = [([2.0f64, 1.0, 0.1], 0usize), ([0.5, 2.5, -1.0], 1)];
    let mut ce = 0.0;
    for (z, label) in rows {
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        ce += lse - z[label];
    }
    assert!(close(scalar(&v, "cross_entropy"), ce / 2.0, 1e-6));
    let sm = vector(&v, "softmax");
    assert!(close(sm[0] + sm[1] + sm[2], 1.0, 1e-6));
}
