//! `nnc export`: the examples' inference graphs written as ONNX and run
//! by tract (an ONNX runtime written in Rust) agree with the reference
//! interpreter on the same inputs; what cannot be exported is an error
//! with its location, and nothing is written.
//!
//! Agreement: every output element within `|a − b| ≤ 1e-5 · max(1, |a|,
//! |b|)`, relative for values above 1 and absolute below (a softmax's
//! small probabilities are computed through `exp` by both, in different
//! orders). Each test prints its worst difference in those units.

mod common;

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::driver::export::{inference_graph, scales};
use nnc::ir::{Dim, Graph};
use nnc::onnx::export::{export, Options};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;
use tract_onnx::prelude::*;

/// The bound on `|a − b| / max(1, |a|, |b|)`.
const TOL: f32 = 1e-5;

/// One example to export and run.
struct Case<'a> {
    file: &'a str,
    /// The size of every symbolic dimension the inputs have.
    batch: usize,
    /// Inputs holding whole numbers below a bound (indices), by the end
    /// of their name; the others get values in [-1, 1).
    ints: &'a [(&'a str, usize)],
    /// A `predict` to add to the `train` block (after its `loss` line),
    /// for files that name none.
    predict: Option<&'a str>,
    /// Sizes fixed at export (`--dim`).
    dims: &'a [(&'a str, usize)],
}

impl Case<'_> {
    fn new(file: &str) -> Case<'_> {
        Case {
            file,
            batch: 3,
            ints: &[],
            predict: None,
            dims: &[],
        }
    }
}

/// The file's text, with `predict = EXPR` added after the `loss` line.
fn source(c: &Case) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(c.file);
    let text = std::fs::read_to_string(&path).expect("the example reads");
    let Some(p) = c.predict else {
        return text;
    };
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("loss =") {
            out.push_str(&format!("  predict = {p}\n"));
        }
    }
    out
}

/// A deterministic value in [-1, 1) for element `i` of input `k`.
fn value(k: usize, i: usize) -> f32 {
    let mut x = (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// What a case exports: the model's bytes, the inference graph, its
/// parameters' values and its inputs' scales.
struct Exported {
    bytes: Vec<u8>,
    eval: Graph,
    params: SecondaryMap<nnc::ir::ParamId, Tensor>,
    scales: Vec<(nnc::ir::InputId, f32)>,
}

fn exported(c: &Case) -> Exported {
    let comp = pipeline::compile(c.file, &source(c), Stage::Ir);
    assert!(!comp.diags.has_errors(), "{}", comp.render(false));
    let g = comp.graph.as_ref().expect("a graph");
    let eval = inference_graph(g, comp.train.as_ref()).expect("an inference graph");
    let params = interp::init_params(&eval, 0);
    let dims: Vec<(String, usize)> = c.dims.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let opts = Options {
        name: "test".into(),
        dims: &dims,
        scales: scales(&eval, comp.train.as_ref()),
    };
    let model = match export(&eval, &params, &opts) {
        Ok(m) => m,
        Err(ds) => {
            let mut diags = comp.diags;
            ds.into_iter().for_each(|d| diags.push(d));
            panic!("export failed:\n{}", diags.render(&comp.sources, false));
        }
    };
    Exported {
        bytes: prost::Message::encode_to_vec(&model),
        scales: opts.scales,
        eval,
        params,
    }
}

/// What input `k` (named `name` in the model) of a case is fed.
struct Feed {
    id: nnc::ir::InputId,
    shape: Vec<usize>,
    /// The values the ONNX model reads (raw features).
    data: Vec<f32>,
    /// The values the inference graph reads (times the input's scale).
    scaled: Tensor,
}

fn feed(c: &Case, eval: &Graph, scales: &[(nnc::ir::InputId, f32)], k: usize, name: &str) -> Feed {
    let (id, info) = eval
        .inputs
        .iter()
        .find(|(_, i)| i.name == name)
        .expect("every ONNX input is an input of the graph");
    let shape: Vec<usize> = info
        .ty
        .shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n as usize,
            Dim::Sym(_) => c.batch,
        })
        .collect();
    let n: usize = shape.iter().product();
    let whole = c.ints.iter().find(|(s, _)| name.ends_with(s)).map(|x| x.1);
    let data: Vec<f32> = (0..n)
        .map(|i| match whole {
            Some(bound) => ((value(k, i) + 1.0) * 0.5 * bound as f32).floor(),
            None => value(k, i),
        })
        .collect();
    let scale = scales.iter().find(|(i, _)| *i == id).map_or(1.0, |s| s.1);
    let scaled = Tensor::new(shape.clone(), data.iter().map(|v| v * scale).collect());
    Feed {
        id,
        shape,
        data,
        scaled,
    }
}

/// Exports the case, runs the model with tract and the inference graph
/// with the interpreter on the same inputs, and returns the worst
/// difference in units of `max(1, |a|, |b|)`.
fn worst_difference(c: &Case) -> f32 {
    let Exported {
        bytes,
        eval,
        mut params,
        scales,
    } = exported(c);
    let model = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .expect("tract reads the model");
    let proto = <nnc::onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
        .expect("the model decodes");
    let onnx_inputs: Vec<String> = proto
        .graph
        .as_ref()
        .expect("a graph")
        .input
        .iter()
        .map(|v| v.name.clone().unwrap_or_default())
        .collect();
    let mut model = model;
    let mut fed = SecondaryMap::new();
    let mut tract_inputs: TVec<TValue> = tvec![];
    for (k, name) in onnx_inputs.iter().enumerate() {
        let Feed {
            id,
            shape,
            data,
            scaled,
        } = feed(c, &eval, &scales, k, name);
        fed[id] = Some(scaled);
        model = model
            .with_input_fact(k, f32::fact(&shape).into())
            .expect("an input fact");
        let t = tract_onnx::prelude::Tensor::from_shape(&shape, &data).expect("a tensor");
        tract_inputs.push(t.into_tvalue());
    }
    let runnable = model
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("tract plans the model");
    let got = runnable.run(tract_inputs).expect("tract runs the model");
    let want = Engine::new(BackendKind::Interp, &eval)
        .run(&mut params, &fed)
        .expect("the interpreter runs the graph");
    assert_eq!(got.len(), want.len(), "one value per output");
    let mut worst = 0.0f32;
    for ((o, g), w) in eval.outputs.iter().zip(&got).zip(&want) {
        let g = g.to_plain_array_view::<f32>().expect("f32 output");
        assert_eq!(g.shape(), &w.shape[..], "output `{}`'s shape", o.name);
        for (a, b) in g.iter().zip(&w.data) {
            let d = (a - b).abs() / 1f32.max(a.abs()).max(b.abs());
            assert!(
                d <= TOL,
                "output `{}`: tract gives {a}, the interpreter {b}",
                o.name
            );
            worst = worst.max(d);
        }
    }
    eprintln!("{}: worst difference {worst:e}", c.file);
    worst
}

fn agrees(c: Case) {
    let worst = worst_difference(&c);
    assert!(worst <= TOL, "{}: {worst}", c.file);
}

#[test]
fn neuron_exports_and_agrees() {
    agrees(Case::new("examples/neuron.nn"));
}

#[test]
fn losses_export_and_agree() {
    agrees(Case::new("examples/losses.nn"));
}

#[test]
fn xor_exports_and_agrees() {
    agrees(Case::new("examples/xor.nn"));
}

#[test]
fn neuron_train_exports_and_agrees() {
    // Its inputs' default values bind `B` to 1.
    agrees(Case {
        batch: 1,
        ..Case::new("examples/neuron_train.nn")
    });
}

#[test]
fn digits_mlp_exports_and_agrees() {
    agrees(Case::new("examples/digits_mlp.nn"));
}

#[test]
fn digits_mlp_with_a_fixed_batch_exports_and_agrees() {
    agrees(Case {
        dims: &[("B", 2)],
        batch: 2,
        ..Case::new("examples/digits_mlp.nn")
    });
}

#[test]
fn iris_exports_and_agrees() {
    agrees(Case::new("examples/iris.nn"));
}

#[test]
fn mnist_mlp_exports_and_agrees() {
    agrees(Case::new("examples/mnist_mlp.nn"));
}

#[test]
fn lenet_mnist_exports_and_agrees() {
    agrees(Case::new("examples/lenet_mnist.nn"));
}

#[test]
fn lstm_sine_exports_and_agrees() {
    agrees(Case {
        predict: Some("predict(x)"),
        ..Case::new("examples/lstm_sine.nn")
    });
}

#[test]
fn gru_sine_exports_and_agrees() {
    agrees(Case {
        predict: Some("predict(x)"),
        ..Case::new("examples/gru_sine.nn")
    });
}

#[test]
fn transformer_reverse_exports_and_agrees() {
    agrees(Case {
        ints: &[(".x", 10)],
        ..Case::new("examples/transformer_reverse.nn")
    });
}

#[test]
fn gcn_karate_exports_and_agrees() {
    agrees(Case {
        ints: &[(".node", 34)],
        ..Case::new("examples/gcn_karate.nn")
    });
}

#[test]
fn bench_models_export_and_agree() {
    agrees(Case::new("examples/bench/mlp_infer.nn"));
    agrees(Case::new("examples/bench/matmul.nn"));
    agrees(Case::new("examples/bench/chain.nn"));
    agrees(Case {
        predict: Some("forward(x)"),
        ..Case::new("examples/bench/mlp_train.nn")
    });
    agrees(Case {
        predict: Some("forward(x)"),
        ..Case::new("examples/bench/lenet_train.nn")
    });
    agrees(Case {
        predict: Some("last_h(xs)"),
        ..Case::new("examples/bench/lstm_train.nn")
    });
    agrees(Case {
        predict: Some("blocks(x)"),
        ..Case::new("examples/bench/transformer_stack_1.nn")
    });
    agrees(Case {
        predict: Some("transformer_encoder(x, wq, wk, wv, wo, g1, n1, w1, b1, w2, b2, g2, n2)"),
        ..Case::new("examples/bench/transformer_train.nn")
    });
}

#[test]
fn the_ops_no_example_reaches_export_and_agree() {
    agrees(Case {
        ints: &[("ids", 3)],
        batch: 5,
        ..Case::new("tests/fixtures/onnx/every_op.nn")
    });
}

#[test]
fn dropout_and_batch_norm_export_in_inference_mode() {
    agrees(Case::new("tests/fixtures/onnx/dropout_batch_norm.nn"));
}

/// The exported graph of a small model, as text: the ops, their inputs
/// and outputs.
#[test]
fn xor_exported_graph() {
    let e = exported(&Case::new("examples/xor.nn"));
    let m = <nnc::onnx::pb::ModelProto as prost::Message>::decode(e.bytes.as_slice())
        .expect("the model decodes");
    insta::assert_snapshot!(nnc::onnx::print::print_model(&m));
}

#[test]
fn the_command_writes_a_model_with_the_trained_weights() {
    let dir = common::temp_dir("onnx-cli");
    let weights = dir.join("xor.safetensors");
    let out = dir.join("xor.onnx");
    let (w, o) = (
        weights.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    );
    let t = common::nnc(&["train", "examples/xor.nn", "--epochs", "2", "--save", w]);
    assert_eq!(t.status.code(), Some(0), "{}", common::text(&t.stderr));

    let x = common::nnc(&["export", "examples/xor.nn", "--params", w, "-o", o]);
    let err = common::text(&x.stderr);
    assert_eq!(x.status.code(), Some(0), "{err}");
    assert!(!err.contains("untrained"), "{err}");
    let said = common::text(&x.stdout);
    assert!(
        said.contains("Xor.x [B, 2]") && said.contains("predict [B]"),
        "{said}"
    );

    // The initializers are the trained weights.
    let bytes = std::fs::read(&out).expect("the model is written");
    let m = <nnc::onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
        .expect("the model decodes");
    let stored = std::fs::read(&weights).expect("the weights read");
    let st = safetensors::SafeTensors::deserialize(&stored).expect("safetensors");
    let w1 = st.tensor("Xor.w1").expect("Xor.w1 is saved");
    let init = m
        .graph
        .as_ref()
        .and_then(|g| {
            g.initializer
                .iter()
                .find(|t| t.name.as_deref() == Some("Xor.w1"))
        })
        .expect("Xor.w1 is an initializer");
    assert_eq!(init.raw_data.as_deref(), Some(w1.data()));
    assert_eq!(init.dims, vec![2, 4]);

    // tract runs the file with a batch of any size.
    let plan = tract_onnx::onnx()
        .model_for_path(&out)
        .and_then(|m| m.with_input_fact(0, f32::fact([5, 2]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the file");
    let x = tract_onnx::prelude::Tensor::from_shape(&[5, 2], &[0.0f32; 10]).expect("a tensor");
    let y = plan.run(tvec![x.into_tvalue()]).expect("tract runs it");
    assert_eq!(y[0].shape(), &[5]);
}

#[test]
fn without_params_the_command_warns_that_the_weights_are_untrained() {
    let dir = common::temp_dir("onnx-untrained");
    let out = dir.join("iris.onnx");
    let o = out.to_str().expect("utf-8");
    let x = common::nnc(&["--color", "never", "export", "examples/iris.nn", "-o", o]);
    let err = common::text(&x.stderr);
    assert_eq!(x.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: no `--params`") && err.contains("untrained"),
        "{err}"
    );
    assert!(out.exists());
}

#[test]
fn a_random_draw_is_an_error_at_its_location_and_nothing_is_written() {
    let dir = common::temp_dir("onnx-random");
    let out = dir.join("random.onnx");
    let o = out.to_str().expect("utf-8");
    let file = "tests/fixtures/onnx/random.nn";
    let x = common::nnc(&["--color", "never", "export", file, "-o", o]);
    let err = common::text(&x.stderr);
    assert_eq!(x.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error[E0306]: a random draw cannot be exported to ONNX"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:2:")),
        "the label points at the draw: {err}"
    );
    assert!(err.contains("help: feed the noise as an input"), "{err}");
    assert!(!out.exists(), "nothing is written");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("the folder").collect();
    assert!(left.is_empty(), "no temporary file is left: {left:?}");
}

#[test]
fn a_train_block_without_predict_or_outputs_has_nothing_to_export() {
    let dir = common::temp_dir("onnx-gan");
    let out = dir.join("gan.onnx");
    let o = out.to_str().expect("utf-8");
    let x = common::nnc(&[
        "--color",
        "never",
        "export",
        "examples/gan_mixture.nn",
        "-o",
        o,
    ]);
    let err = common::text(&x.stderr);
    assert_eq!(x.status.code(), Some(1), "{err}");
    assert!(err.contains("has no `predict`"), "{err}");
    assert!(!out.exists());
}

#[test]
fn an_unknown_dim_is_an_error() {
    let x = common::nnc(&[
        "export",
        "examples/iris.nn",
        "--dim",
        "Q=2",
        "-o",
        "/nonexistent/x.onnx",
    ]);
    let err = common::text(&x.stderr);
    assert_eq!(x.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`--dim Q=…` names no dimension") && err.contains("B"),
        "{err}"
    );
}

/// `.nn → .onnx → .nn`: the exported model imported again computes the
/// original's outputs (the interpreter on both, the same inputs; the
/// same bound as against tract). Returns the worst difference.
fn round_trip(c: &Case) -> f32 {
    let Exported {
        bytes,
        eval,
        mut params,
        scales,
    } = exported(c);
    let imported = nnc::onnx::import::import(&bytes, c.file, "w.safetensors")
        .unwrap_or_else(|d| panic!("{}: import: {}", c.file, d.message));
    let comp = pipeline::compile("imported.nn", &imported.text, Stage::Ir);
    assert!(
        !comp.diags.has_errors(),
        "{}:\n{}\n{}",
        c.file,
        imported.text,
        comp.render(false)
    );
    let back = comp.graph.expect("a graph");
    let mut back_params = SecondaryMap::new();
    for (id, p) in back.params.iter() {
        let (_, t) = imported
            .params
            .iter()
            .find(|(n, _)| *n == p.name)
            .expect("every parameter has its value");
        back_params[id] = t.clone();
    }
    // The imported file declares the ONNX inputs in their order, which
    // is the order `exported` feeds.
    let proto = <nnc::onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
        .expect("the model decodes");
    let names: Vec<String> = proto
        .graph
        .expect("a graph")
        .input
        .iter()
        .map(|v| v.name.clone().unwrap_or_default())
        .collect();
    let back_ids: Vec<nnc::ir::InputId> = back.inputs.keys().collect();
    assert_eq!(
        back_ids.len(),
        names.len(),
        "{}: one input per ONNX input",
        c.file
    );
    let (mut fed, mut fed_back) = (SecondaryMap::new(), SecondaryMap::new());
    for (k, name) in names.iter().enumerate() {
        let Feed {
            id,
            shape,
            data,
            scaled,
        } = feed(c, &eval, &scales, k, name);
        fed[id] = Some(scaled);
        fed_back[back_ids[k]] = Some(Tensor::new(shape, data));
    }
    let want = Engine::new(BackendKind::Interp, &eval)
        .run(&mut params, &fed)
        .expect("the original runs");
    let got = Engine::new(BackendKind::Interp, &back)
        .run(&mut back_params, &fed_back)
        .expect("the imported file runs");
    assert_eq!(got.len(), want.len(), "{}: one value per output", c.file);
    let mut worst = 0.0f32;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.shape, w.shape, "{}", c.file);
        for (a, b) in g.data.iter().zip(&w.data) {
            worst = worst.max((a - b).abs() / 1f32.max(a.abs()).max(b.abs()));
        }
    }
    eprintln!("{}: round trip, worst difference {worst:e}", c.file);
    worst
}

/// Every example with a forward pass (`gan_mixture`'s outputs draw
/// random numbers, which ONNX cannot: see above) exports and imports back
/// to the same outputs: the recurrent ones through ONNX `Scan`, the graph
/// network through `ScatterND`.
#[test]
fn examples_survive_a_round_trip_through_onnx() {
    for file in [
        "examples/neuron.nn",
        "examples/neuron_train.nn",
        "examples/losses.nn",
        "examples/xor.nn",
        "examples/iris.nn",
        "examples/digits_mlp.nn",
        "examples/mnist_mlp.nn",
        "examples/lenet_mnist.nn",
        "examples/transformer_reverse.nn",
        "examples/gcn_karate.nn",
        "examples/lstm_sine.nn",
        "examples/gru_sine.nn",
    ] {
        let mut c = Case::new(file);
        if file.contains("transformer") {
            c.ints = &[(".x", 10)];
        }
        if file.contains("gcn") {
            c.ints = &[(".node", 34)];
        }
        if file.contains("_sine") {
            c.predict = Some("predict(x)");
        }
        if file.contains("neuron_train") {
            // Its inputs' default values bind `B` to 1.
            c.batch = 1;
        }
        let worst = round_trip(&c);
        assert!(worst <= TOL, "{file}: {worst}");
    }
}
