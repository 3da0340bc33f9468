//! `nnc export`: a file's inference graph written as an ONNX model
//! ([`crate::onnx::export`]). The graph is the one `nnc compile` and `nnc
//! predict` run ([`crate::aot::library_graph`]): a `train` block's
//! `predict`, else the outputs, with `training()` fixed to 0.

use super::args::ExportArgs;
use super::outcome::{load, Outcome};
use crate::backend::interp;
use crate::diag::{self, code, Diag};
use crate::ir::{Graph, InputId};
use crate::pipeline::{self, Stage};
use crate::sema::TrainSpec;
use std::path::{Path, PathBuf};

pub fn command(a: &ExportArgs) -> Result<Outcome, Outcome> {
    let mut c = load(&a.file, Stage::Ir)?;
    let Some(g) = c.graph.take() else {
        return Err(Outcome::from(c, String::new()));
    };
    let train = c.train.take();
    match export(a, &g, train.as_ref()) {
        Ok((text, warnings)) => {
            warnings.into_iter().for_each(|w| c.diags.push(w));
            Ok(Outcome::from(c, text))
        }
        Err(diags) => {
            diags.into_iter().for_each(|d| c.diags.push(d));
            Err(Outcome::from(c, String::new()))
        }
    }
}

/// The graph `nnc export` writes: the library graph of `nnc compile`, in
/// inference mode also without a `train` block (where `training()` is 0
/// unless fed).
pub fn inference_graph(g: &Graph, train: Option<&TrainSpec>) -> Result<Graph, Diag> {
    if let Some(t) = train.filter(|t| t.predict.is_none()) {
        return Err(diag::error(
            code::EXPORT,
            "this file's `train` block has no `predict`, so there is no model to export",
        )
        .with_labels(vec![t.span.primary("this block names no `predict`")])
        .with_notes(vec![
            "help: add `predict = forward(x)` (the model's output) to the `train` block".into(),
        ]));
    }
    let mut eval = crate::aot::library_graph(g, train)?;
    pipeline::set_training(&mut eval, false);
    Ok(eval)
}

/// The factor each input's values are multiplied by when fed from a
/// file (a `train` block's `scale`), where it is not 1.
pub fn scales(g: &Graph, train: Option<&TrainSpec>) -> Vec<(InputId, f32)> {
    let Some((t, data)) = train.and_then(|t| t.data.as_ref().map(|d| (t, d))) else {
        return Vec::new();
    };
    g.inputs
        .keys()
        .map(|id| (id, data.scale_of(id, t.features)))
        .filter(|(_, s)| *s != 1.0)
        .collect()
}

/// Writes the model; returns what to print and the warnings.
fn export(
    a: &ExportArgs,
    g: &Graph,
    train: Option<&TrainSpec>,
) -> Result<(String, Vec<Diag>), Vec<Diag>> {
    let eval = inference_graph(g, train).map_err(|d| vec![d])?;
    for (name, _) in &a.dims {
        if !eval.syms.values().any(|s| &s.name == name) {
            return Err(vec![super::graphs::unknown_dim(&eval, name)]);
        }
    }
    let mut warnings = Vec::new();
    let mut params = interp::init_params(&eval, a.seed);
    match &a.params {
        Some(p) => {
            crate::train::restore(&eval, &mut params, p).map_err(|d| vec![d])?;
        }
        None => warnings.push(
            diag::warning("no `--params`: the model's weights are the parameters' initial values, untrained")
                .with_notes(vec![format!(
                    "help: train with `nnc train {0} --save W.safetensors`, then export with `--params W.safetensors`",
                    a.file.display()
                )]),
        ),
    }
    let stem = a
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let opts = crate::onnx::export::Options {
        name: stem.clone(),
        dims: &a.dims,
        scales: scales(&eval, train),
    };
    let model = crate::onnx::export::export(&eval, &params, &opts)?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.onnx")));
    let bytes = prost::Message::encode_to_vec(&model);
    crate::train::checkpoint::write_atomic(&out, &bytes)
        .map_err(|e| vec![write_error(&out, &e)])?;
    Ok((summary(&model, &out), warnings))
}

fn write_error(path: &Path, e: &std::io::Error) -> Diag {
    diag::error(
        code::FILE,
        format!(
            "cannot write `{}`: {}",
            path.display(),
            pipeline::io_reason(e)
        ),
    )
    .with_notes(vec![
        "help: check that the folder exists and is writable".into()
    ])
}

/// `wrote iris.onnx (opset 17): …`, the inputs and outputs with their
/// shapes.
fn summary(m: &crate::onnx::pb::ModelProto, out: &Path) -> String {
    let g = m.graph.as_ref();
    let list = |vs: &[crate::onnx::pb::ValueInfoProto]| {
        vs.iter()
            .map(|v| {
                format!(
                    "{} {}",
                    v.name.as_deref().unwrap_or(""),
                    crate::onnx::print::shape_text(v)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "wrote {} (ONNX opset {}, {} nodes, {} initializers)\n  inputs:  {}\n  outputs: {}\n",
        out.display(),
        crate::onnx::export::OPSET,
        g.map_or(0, |g| g.node.len()),
        g.map_or(0, |g| g.initializer.len()),
        g.map_or(String::new(), |g| list(&g.input)),
        g.map_or(String::new(), |g| list(&g.output)),
    )
}
