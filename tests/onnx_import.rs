//! `nnc import`: ONNX files written by PyTorch's exporter
//! (tests/fixtures/onnx/make_fixtures.py: an MLP, LeNet, an LSTM, a GRU
//! and a transformer encoder block) become `.nn` files whose outputs and
//! gradients are PyTorch's (expected.json), on every backend.

mod common;

use cranelift_entity::SecondaryMap;
use nnc::backend::{BackendKind, Engine};
use nnc::onnx::import::{import, Imported, Layout};
use nnc::tensor::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn expected(model: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    let all: Value = serde_json::from_str(&text).expect("json");
    all[model].clone()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn tensor(v: &Value) -> Tensor {
    let shape = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    Tensor::new(shape, floats(&v["data"]))
}

fn imported(model: &str) -> Imported {
    let path = fixtures().join(format!("{model}.onnx"));
    let bytes = std::fs::read(&path).expect("fixture");
    import(&bytes, &path.display().to_string(), "w.safetensors")
        .unwrap_or_else(|d| panic!("{model}: {}", d.message))
}

/// The worst of |a − e| / (1e-3 + |e|) (relative, with an absolute floor
/// for values near zero).
fn worst(a: &[f32], e: &[f32]) -> f32 {
    assert_eq!(a.len(), e.len());
    a.iter()
        .zip(e)
        .map(|(a, e)| (a - e).abs() / (1e-3 + e.abs()))
        .fold(0.0, f32::max)
}

/// The worst |a − e| relative to the largest |e|: for gradients, whose
/// small elements are sums that cancel (a LayerNorm's), where f32
/// rounding in another summation order shows relative to the tensor's
/// scale, not to the element. A gradient that is 0 in exact arithmetic
/// (the attention's key bias: it adds one constant to every score of a
/// row) is rounding noise in both; there every element must be below
/// 1e-6 in absolute value.
fn worst_scaled(a: &[f32], e: &[f32]) -> f32 {
    assert_eq!(a.len(), e.len());
    let largest = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = largest(e);
    if scale < 1e-6 {
        return if largest(a) < 1e-6 {
            0.0
        } else {
            f32::INFINITY
        };
    }
    a.iter()
        .zip(e)
        .map(|(a, e)| (a - e).abs() / scale)
        .fold(0.0, f32::max)
}

fn transpose(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut d = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            d[j * r + i] = t.data[i * c + j];
        }
    }
    Tensor::new(vec![c, r], d)
}

/// What the imported file computes for the fixture's input on
/// `backend`: its output `y`, the gradient of sum(y²)/2 with respect to
/// `x` and to each parameter (by name).
fn outputs(model: &str, backend: BackendKind) -> (Vec<f32>, Vec<f32>, Vec<(String, Tensor)>) {
    let imp = imported(model);
    let text = format!("{}output loss = sum(y * y) / 2\n", imp.text);
    let c = nnc::pipeline::compile("imported.nn", &text, nnc::pipeline::Stage::Ir);
    assert!(
        !c.diags.has_errors(),
        "{model}:\n{}\n{}",
        text,
        c.render(false)
    );
    let mut g = c.graph.expect("a graph");
    let loss = g
        .outputs
        .iter()
        .find(|o| o.name == "loss")
        .expect("loss")
        .node;
    let (x_id, _) = g
        .inputs
        .iter()
        .find(|(_, i)| i.name == "x")
        .expect("input x");
    let x_node = g
        .nodes
        .iter()
        .find(|(_, d)| d.op == nnc::ir::Op::Input(x_id))
        .map(|(n, _)| n)
        .expect("x is read");
    let params: Vec<(nnc::ir::ParamId, nnc::ir::Node)> = g
        .nodes
        .iter()
        .filter_map(|(n, d)| match d.op {
            nnc::ir::Op::Param(p) => Some((p, n)),
            _ => None,
        })
        .collect();
    let mut wrt = vec![x_node];
    wrt.extend(params.iter().map(|(_, n)| *n));
    let grads = nnc::passes::autodiff::grad(&mut g, loss, &wrt).expect("differentiates");
    let span = g.nodes[loss].span;
    for (k, &gn) in grads.grads.iter().enumerate() {
        g.outputs.push(nnc::ir::Output {
            name: format!("grad{k}"),
            node: gn,
            span,
        });
    }
    let mut values = SecondaryMap::new();
    for (id, p) in g.params.iter() {
        let (_, t) = imp
            .params
            .iter()
            .find(|(n, _)| *n == p.name)
            .unwrap_or_else(|| panic!("{model}: no value for {}", p.name));
        values[id] = t.clone();
    }
    let exp = expected(model);
    let mut inputs = SecondaryMap::new();
    inputs[x_id] = Some(tensor(&exp["x"]));
    let outs = Engine::new(backend, &g)
        .run(&mut values, &inputs)
        .unwrap_or_else(|e| panic!("{model} on {backend:?}: {}", e.to_diag().message));
    let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).expect("an output");
    let y = outs[at("y")].data.clone();
    let gx = outs[at("grad0")].data.clone();
    let gp = params
        .iter()
        .enumerate()
        .map(|(k, (p, _))| {
            (
                g.params[*p].name.clone(),
                outs[at(&format!("grad{}", k + 1))].clone(),
            )
        })
        .collect();
    (y, gx, gp)
}

/// Checks `model` against PyTorch on every backend: outputs within 1e-5
/// relative ([`worst`]), gradients within 1e-5 of each tensor's scale
/// ([`worst_scaled`]), printing the worst differences seen.
fn agrees_with_pytorch(model: &str) {
    let exp = expected(model);
    let imp = imported(model);
    for backend in common::backends() {
        let (y, gx, gp) = outputs(model, backend);
        let dy = worst(&y, &floats(&exp["y"]["data"]));
        let dx = worst_scaled(&gx, &floats(&exp["grad_x"]));
        let mut dp = 0.0f32;
        let mut compared = 0;
        for o in &imp.origins {
            let Some(e) = exp["grads_onnx"].get(&o.initializer) else {
                continue;
            };
            let e = tensor(e);
            let e = match o.layout {
                Layout::AsIs => e,
                Layout::Transposed => transpose(&e),
                Layout::Derived => continue,
            };
            let (_, got) = gp.iter().find(|(n, _)| *n == o.param).expect("a gradient");
            assert_eq!(got.shape, e.shape, "{model}: {}", o.param);
            let d = worst_scaled(&got.data, &e.data);
            if d >= 1e-5 {
                eprintln!(
                    "{model} on {backend:?}: {} differs by {d:.2e}: {:?} against {:?}",
                    o.param,
                    &got.data[..4.min(got.data.len())],
                    &e.data[..4.min(e.data.len())]
                );
            }
            dp = dp.max(d);
            compared += 1;
        }
        eprintln!(
            "{model} on {backend:?}: outputs {dy:.2e}, d/dx {dx:.2e}, {compared} parameter gradients {dp:.2e}"
        );
        assert!(dy < 1e-5, "{model} on {backend:?}: outputs differ by {dy}");
        assert!(dx < 1e-5, "{model} on {backend:?}: d/dx differs by {dx}");
        assert!(
            dp < 1e-5,
            "{model} on {backend:?}: parameter gradients differ by {dp}"
        );
        assert!(compared > 0, "{model}: no parameter compared");
    }
}

#[test]
fn an_mlp_from_pytorch_gives_its_outputs_and_gradients() {
    agrees_with_pytorch("mlp");
    let text = imported("mlp").text;
    assert!(
        text.contains("dense(x, fc1_weight, fc1_bias, relu)"),
        "{text}"
    );
    assert!(text.contains("softmax("), "{text}");
}

#[test]
fn lenet_from_pytorch_gives_its_outputs_and_gradients() {
    agrees_with_pytorch("lenet");
    let text = imported("lenet").text;
    assert!(
        text.contains("conv2d(x, conv1_weight, stride = 1, padding = 2)"),
        "{text}"
    );
    assert!(text.contains("max_pool2d("), "{text}");
}

#[test]
fn an_encoder_block_from_pytorch_gives_its_outputs_and_gradients() {
    agrees_with_pytorch("encoder");
    let text = imported("encoder").text;
    assert!(text.contains("layer_norm("), "{text}");
    assert!(text.contains("softmax("), "{text}");
}

/// The LSTM's weights are repacked (gates reordered, transposed, the two
/// biases summed), so its gradients are compared through PyTorch's own
/// parameters: wx[k] is weight_ih_l0's gate k transposed (PyTorch's gate
/// order is nnc's), wh[k] weight_hh_l0's, and b = b_ih + b_hh has b_ih's
/// gradient.
#[test]
fn an_lstm_from_pytorch_gives_its_outputs_and_gradients() {
    agrees_with_pytorch("lstm");
    let exp = expected("lstm");
    let (_, _, gp) = outputs("lstm", BackendKind::Interp);
    let grad = |suffix: &str| {
        gp.iter()
            .find(|(n, _)| n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no parameter *{suffix}"))
            .1
            .clone()
    };
    let h = 8;
    let per_gate = |t: &Tensor| -> Vec<f32> {
        // [4H, C] → [4, C, H]
        let c = t.shape[1];
        let mut out = Vec::new();
        for k in 0..4 {
            for j in 0..c {
                for r in 0..h {
                    out.push(t.data[(k * h + r) * c + j]);
                }
            }
        }
        out
    };
    let ih = tensor(&exp["grads"]["lstm.weight_ih_l0"]);
    let hh = tensor(&exp["grads"]["lstm.weight_hh_l0"]);
    let bih = tensor(&exp["grads"]["lstm.bias_ih_l0"]);
    let dwx = worst_scaled(&grad("_wx").data, &per_gate(&ih));
    let dwh = worst_scaled(&grad("_wh").data, &per_gate(&hh));
    let db = worst_scaled(&grad("_b").data, &bih.data);
    eprintln!("lstm weights: wx {dwx:.2e}, wh {dwh:.2e}, b {db:.2e}");
    assert!(dwx < 1e-5 && dwh < 1e-5 && db < 1e-5);
    assert!(imported("lstm").text.contains("lstm(x, lstm_state("));
}

/// The GRU's weights are repacked too (ONNX's gates z, r, h to PyTorch's
/// r, z, n); its outputs, input gradient and head are compared.
#[test]
fn a_gru_from_pytorch_gives_its_outputs_and_gradients() {
    agrees_with_pytorch("gru");
    assert!(imported("gru").text.contains("gru(x, zeros([3, 8]), "));
}

#[test]
fn import_writes_a_file_that_runs_and_refuses_what_it_cannot_translate() {
    let dir = common::temp_dir("onnx-import");
    let nn = dir.join("mlp.nn");
    let out = common::nnc(&[
        "import",
        fixtures().join("mlp.onnx").to_str().unwrap(),
        "-o",
        nn.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let weights = dir.join("mlp.safetensors");
    assert!(weights.exists());
    // The CLI runs it with the weights and PyTorch's input.
    let exp = expected("mlp");
    let x = tensor(&exp["x"]);
    let npy = dir.join("x.npy");
    std::fs::write(&npy, nnc::data::npy_bytes(&x)).unwrap();
    let out = common::nnc(&[
        "run",
        nn.to_str().unwrap(),
        "--params",
        weights.to_str().unwrap(),
        "--input",
        &format!("x={}", npy.display()),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let v: Value = serde_json::from_str(&common::text(&out.stdout)).unwrap();
    let d = worst(
        &floats(&v["outputs"]["y"]["data"]),
        &floats(&exp["y"]["data"]),
    );
    assert!(d < 1e-5, "{d}");

    // An operator with no translation: every one listed, nothing written.
    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, unsupported_model()).unwrap();
    let target = dir.join("bad.nn");
    let out = common::nnc(&[
        "import",
        bad.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::text(&out.stderr);
    assert!(
        err.contains("uses 2 operators nnc cannot translate: Erf, TopK"),
        "{err}"
    );
    assert!(err.contains("Erf × 2: `erf_a`, `erf_b`"), "{err}");
    assert!(err.contains("TopK × 1: `top`"), "{err}");
    assert!(!target.exists() && !dir.join("bad.safetensors").exists());

    // Not an ONNX file at all.
    let out = common::nnc(&[
        "import",
        nn.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stderr).contains("is not an ONNX model"));
}

/// An imported model trains like any other: the MLP, from PyTorch's
/// weights, with a `train` block added, learns which of its first four
/// features is largest.
#[test]
fn an_imported_model_trains() {
    let dir = common::temp_dir("onnx-train");
    let nn = dir.join("mlp.nn");
    let out = common::nnc(&[
        "import",
        fixtures().join("mlp.onnx").to_str().unwrap(),
        "-o",
        nn.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let mut csv = String::from("f0,f1,f2,f3,f4,f5,f6,f7,label\n");
    let mut rng = 12345u64;
    for _ in 0..96 {
        let row: Vec<f32> = (0..8)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let label = (0..4).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv.push_str(&format!("{},{label}\n", cells.join(",")));
    }
    std::fs::write(dir.join("points.csv"), csv).unwrap();
    let mut text = std::fs::read_to_string(&nn).unwrap();
    text.push_str(
        "\ninput t: [B, 4]\ntrain {\n  data = csv(\"points.csv\", label = \"label\")\n  loss = mean((y - t) ^ 2)\n  optimizer = adam(lr = 0.01)\n  batch = 16; epochs = 30; split = 0\n}\n",
    );
    std::fs::write(&nn, text).unwrap();
    let log = dir.join("log.jsonl");
    let out = common::nnc(&[
        "train",
        nn.to_str().unwrap(),
        "--resume",
        dir.join("mlp.safetensors").to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let losses: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["train_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 30);
    assert!(
        losses[29] < 0.5 * losses[0],
        "the loss went from {} to {}",
        losses[0],
        losses[29]
    );
}

/// A model with two Erf nodes and a TopK, which nnc does not translate.
fn unsupported_model() -> Vec<u8> {
    use nnc::onnx::pb;
    let node = |op: &str, name: &str, input: &str, output: &str| pb::NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    };
    encoded(pb::GraphProto {
        node: vec![
            node("Erf", "erf_a", "x", "a"),
            node("Erf", "erf_b", "a", "b"),
            node("TopK", "top", "b", "y"),
        ],
        ..Default::default()
    })
}

/// `graph` as an ONNX model of opset 17, encoded.
fn encoded(graph: nnc::onnx::pb::GraphProto) -> Vec<u8> {
    use nnc::onnx::pb;
    let model = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model)
}

/// A model of one node (with its attributes) over inputs `x` and `y`
/// of shape [4, 3] and `i` of shape [4, 1].
fn one_node_model(node: nnc::onnx::pb::NodeProto) -> Vec<u8> {
    use nnc::onnx::pb;
    let input = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = node.output.first().cloned().unwrap_or_default();
    encoded(pb::GraphProto {
        node: vec![node],
        input: vec![
            input("x", &[4, 3]),
            input("y", &[4, 3]),
            input("i", &[4, 1]),
        ],
        output: vec![pb::ValueInfoProto {
            name: Some(out),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// `Scan` and `ScatterND` translate in the forms nnc's `scan` and
/// `scatter_add` have; another form is an error naming the node and what
/// differs, and an operator inside a Scan's body is checked like the
/// graph's own.
#[test]
fn a_scan_or_scatter_of_another_form_is_refused_with_its_reason() {
    use nnc::onnx::pb;
    let node = |op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<pb::AttributeProto>| {
        pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("the_{}", op.to_lowercase())),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        }
    };
    let int = |name: &str, i: i64| pb::AttributeProto {
        name: Some(name.into()),
        i: Some(i),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        ..Default::default()
    };
    let text = |name: &str, s: &str| pb::AttributeProto {
        name: Some(name.into()),
        s: Some(s.as_bytes().to_vec()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        ..Default::default()
    };
    let named = |n: &str| pb::ValueInfoProto {
        name: Some(n.into()),
        ..Default::default()
    };
    let body = |nodes: Vec<pb::NodeProto>, outputs: &[&str]| pb::AttributeProto {
        name: Some("body".into()),
        g: Some(pb::GraphProto {
            node: nodes,
            input: vec![named("h"), named("xt")],
            output: outputs.iter().map(|o| named(o)).collect(),
            ..Default::default()
        }),
        r#type: Some(pb::attribute_proto::AttributeType::Graph as i32),
        ..Default::default()
    };
    let refused =
        |bytes: Vec<u8>| match nnc::onnx::import::import(&bytes, "m.onnx", "w.safetensors") {
            Ok(i) => panic!("imported:\n{}", i.text),
            Err(d) => format!("{}\n{}", d.message, d.notes.join("\n")),
        };
    let step = || node("Add", &["h", "xt"], &["n"], vec![]);
    let copies = || {
        vec![
            step(),
            node("Identity", &["n"], &["s"], vec![]),
            node("Identity", &["n"], &["e"], vec![]),
        ]
    };
    // nnc's form imports: y's rows as steps from x's first row.
    let ok = one_node_model(node(
        "Scan",
        &["x", "y"],
        &["last", "all"],
        vec![int("num_scan_inputs", 1), body(copies(), &["s", "e"])],
    ));
    let imported = nnc::onnx::import::import(&ok, "m.onnx", "w.safetensors")
        .unwrap_or_else(|d| panic!("{}", d.message));
    assert!(
        imported.text.contains("scan(all_step, x, y)"),
        "{}",
        imported.text
    );

    // Two states.
    let err = refused(one_node_model(node(
        "Scan",
        &["x", "y", "i"],
        &["last", "all"],
        vec![int("num_scan_inputs", 1), body(copies(), &["s", "e"])],
    )));
    assert!(
        err.contains("`the_scan` (Scan)") && err.contains("2 state variables"),
        "{err}"
    );
    // A scan output that is not the state.
    let mut other = copies();
    other[2] = node("Identity", &["xt"], &["e"], vec![]);
    let err = refused(one_node_model(node(
        "Scan",
        &["x", "y"],
        &["last", "all"],
        vec![int("num_scan_inputs", 1), body(other, &["s", "e"])],
    )));
    assert!(err.contains("its scan output is not its state"), "{err}");
    // Along axis 1.
    let err = refused(one_node_model(node(
        "Scan",
        &["x", "y"],
        &["last", "all"],
        vec![
            int("num_scan_inputs", 1),
            pb::AttributeProto {
                name: Some("scan_input_axes".into()),
                ints: vec![1],
                r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
                ..Default::default()
            },
            body(copies(), &["s", "e"]),
        ],
    )));
    assert!(err.contains("an axis other than 0"), "{err}");
    // An operator nnc lacks, inside the body: listed with the graph's.
    let mut erf = copies();
    erf[0] = node("Erf", &["h"], &["n"], vec![]);
    let err = refused(one_node_model(node(
        "Scan",
        &["x", "y"],
        &["last", "all"],
        vec![int("num_scan_inputs", 1), body(erf, &["s", "e"])],
    )));
    assert!(
        err.contains("cannot translate: Erf") && err.contains("`the_erf`"),
        "{err}"
    );

    // ScatterND that replaces rows instead of adding them.
    let err = refused(one_node_model(node(
        "ScatterND",
        &["x", "i", "y"],
        &["z"],
        vec![text("reduction", "none")],
    )));
    assert!(
        err.contains("`the_scatternd` (ScatterND)") && err.contains("reduction `none`"),
        "{err}"
    );
    // Adding: the rows of y summed into x at i.
    let ok = one_node_model(node(
        "ScatterND",
        &["x", "i", "y"],
        &["z"],
        vec![text("reduction", "add")],
    ));
    let imported = nnc::onnx::import::import(&ok, "m.onnx", "w.safetensors")
        .unwrap_or_else(|d| panic!("{}", d.message));
    assert!(
        imported
            .text
            .contains("x + scatter_add(y, reshape(i, [4]), n = 4)"),
        "{}",
        imported.text
    );
}
