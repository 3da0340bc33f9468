//! `nnc predict`: a trained model applied to every row of a data file —
//! the `train` block's `predict` (or, without one, the file's outputs) in
//! inference mode, fed in batches with the features read as training
//! reads them (the same columns, the same `scale`), one row written per
//! input row.

use super::args::PredictArgs;
use super::outcome::{load, Outcome};
use crate::backend::interp;
use crate::backend::Engine;
use crate::diag::{self, code, Diag};
use crate::ir::{Dim, Graph, InputId};
use crate::pipeline::Stage;
use crate::sema::Feeds;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;

/// Rows per batch when neither `--batch` nor a `train` block says.
const DEFAULT_BATCH: usize = 256;

pub fn command(a: &PredictArgs) -> Result<Outcome, Outcome> {
    let mut c = load(&a.file, Stage::Ir)?;
    let Some(g) = c.graph.take() else {
        return Err(Outcome::from(c, String::new()));
    };
    let spec = c.train.take();
    match predict(a, &g, spec.as_ref()) {
        Ok(text) => Ok(Outcome::from(c, text)),
        Err(d) => {
            c.diags.push(d);
            Err(Outcome::from(c, String::new()))
        }
    }
}

fn error(msg: impl Into<String>, help: impl Into<String>) -> Diag {
    diag::error(code::INPUT, msg).with_notes(vec![format!("help: {}", help.into())])
}

/// What the rows' predictions are.
struct Predictions {
    /// Each output's name and values, `[N, …]`.
    outputs: Vec<(String, Tensor)>,
    /// For a classifier, the class of each row (the arg-max of its
    /// prediction).
    classes: Option<Vec<usize>>,
}

fn predict(
    a: &PredictArgs,
    g: &Graph,
    spec: Option<&crate::sema::TrainSpec>,
) -> Result<String, Diag> {
    let eval = crate::aot::library_graph(g, spec)?;
    let features = feature_input(&eval, spec)?;
    let info = &eval.inputs[features];
    let per_row: Option<usize> = info.ty.shape[1..]
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Some(*k as usize),
            Dim::Sym(_) => None,
        })
        .product();
    let Some(per_row) = per_row else {
        return Err(diag::error(
            code::INPUT,
            format!(
                "input `{}` is {}: a row's shape must be known to read it from a file",
                info.name,
                eval.shape_str(&info.ty.shape)
            ),
        )
        .with_labels(vec![info.span.primary("this input takes the rows")]));
    };
    // The features as training reads them: its label columns set apart,
    // its scale applied.
    // Fed by name (`inputs(x = csv(..., columns = [...]))`): the same
    // columns of a CSV.
    let data_spec = spec.and_then(|s| s.data.as_ref());
    let scale = data_spec.map_or(1.0, |d| d.scale_of(features, spec.and_then(|s| s.features)));
    let (labels, columns) = match data_spec.map(|d| &d.feeds) {
        Some(Feeds::Pair(crate::data::Source::Csv { label, .. })) => (label.clone(), None),
        Some(Feeds::Named(feeds)) => {
            let columns = feeds
                .iter()
                .find(|f| f.input == features)
                .and_then(|f| match &f.file {
                    crate::data::Columns::Csv { columns, .. } => columns.clone(),
                    crate::data::Columns::Npy { .. } => None,
                });
            (Vec::new(), columns)
        }
        _ => (Vec::new(), None),
    };
    let is_csv = a.data.extension().is_some_and(|e| e == "csv");
    let loaded = match columns {
        Some(columns) if is_csv => {
            let file = crate::data::Columns::Csv {
                path: a.data.clone(),
                columns: Some(columns),
            };
            Some(file.load(scale).map(|features| crate::data::Dataset {
                features,
                labels: Vec::new(),
                per_row: 0,
            }))
        }
        _ => crate::data::load_unlabelled(&a.data, &labels, scale),
    };
    let data =
        match loaded {
            Some(r) => r.map_err(|e| e.to_diag())?,
            None => return Err(error(
                format!("`{}` is not a file nnc predicts on", a.data.display()),
                "give a .csv file (a header row, one column per feature) or a .npy array [N, ...]",
            )),
        };
    let have = data.features.shape.get(1).copied().unwrap_or(0);
    if have != per_row {
        return Err(diag::error(
            code::INPUT,
            format!(
                "`{}` has {have} features per row, but input `{}` is {}",
                a.data.display(),
                info.name,
                eval.shape_str(&info.ty.shape)
            ),
        )
        .with_labels(vec![info.span.primary("this input takes the rows")])
        .with_notes(vec![match labels.is_empty() {
            true => "help: every column of the file is a feature".to_string(),
            false => format!(
                "help: every column is a feature, except {} when the header has {}",
                labels.join(", "),
                if labels.len() == 1 { "it" } else { "them all" }
            ),
        }]));
    }
    let mut params = interp::init_params(g, 0);
    if let Some(p) = &a.params {
        crate::train::restore(g, &mut params, p)?;
    }
    let batch = a
        .batch
        .or(spec.map(|s| s.batch))
        .unwrap_or(DEFAULT_BATCH)
        .max(1);
    let preds = run_rows(
        &eval,
        features,
        &data.features,
        &mut params,
        batch,
        a.backend,
    )?;
    let classes = classes(&eval, spec, &preds);
    let preds = Predictions {
        outputs: preds,
        classes,
    };
    let n = data.rows();
    let mut text = String::new();
    let table_text = match &a.output {
        None => Some(csv_text(&preds)),
        Some(path) => {
            write(path, &preds)?;
            text.push_str(&format!(
                "wrote {} rows of predictions to {}\n",
                n,
                path.display()
            ));
            None
        }
    };
    // Rows that come with labels: how many the model gets right, as
    // training counts them for its validation accuracy.
    if data.per_row == 1 {
        if let Some(right) = correct(&preds, &data.labels) {
            let line = format!(
                "accuracy {:.4} ({right} of {n} labelled rows)\n",
                right as f64 / n as f64
            );
            match table_text {
                Some(_) => eprint!("{line}"),
                None => text.push_str(&line),
            }
        }
    }
    Ok(table_text.unwrap_or(text))
}

/// The input the rows feed: the `train` block's features, else the one
/// input the outputs read.
fn feature_input(eval: &Graph, spec: Option<&crate::sema::TrainSpec>) -> Result<InputId, Diag> {
    if let Some(f) = spec.and_then(|s| s.features) {
        return Ok(f);
    }
    let fed: Vec<InputId> = eval
        .inputs
        .iter()
        .filter(|(_, i)| !i.name.starts_with('@') && i.default.is_none())
        .map(|(id, _)| id)
        .collect();
    let [one] = fed.as_slice() else {
        let names: Vec<&str> = fed.iter().map(|&i| eval.inputs[i].name.as_str()).collect();
        return Err(error(
            format!(
                "`nnc predict` feeds one input from the file, and this program has {}: {}",
                fed.len(),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ),
            "add a `train` block whose `predict` names what to compute, or use `nnc run`",
        ));
    };
    let shape = &eval.inputs[*one].ty.shape;
    if !matches!(shape.first(), Some(Dim::Sym(_))) {
        return Err(diag::error(
            code::INPUT,
            format!(
                "input `{}` is {}: it needs a batch dimension first to take rows",
                eval.inputs[*one].name,
                eval.shape_str(shape)
            ),
        )
        .with_labels(vec![eval.inputs[*one].span.primary("declare it `[B, …]`")]));
    }
    Ok(*one)
}

/// Runs `eval` over the rows of `x` (`[N, F]`) in batches; each output
/// gathered to `[N, …]`.
fn run_rows(
    eval: &Graph,
    features: InputId,
    x: &Tensor,
    params: &mut SecondaryMap<crate::ir::ParamId, Tensor>,
    batch: usize,
    backend: crate::backend::BackendKind,
) -> Result<Vec<(String, Tensor)>, Diag> {
    let (n, f) = (x.shape[0], x.shape[1]);
    let rest: Vec<usize> = eval.inputs[features].ty.shape[1..]
        .iter()
        .map(|d| match d {
            Dim::Known(k) => *k as usize,
            Dim::Sym(_) => 1,
        })
        .collect();
    let key = eval
        .inputs
        .iter()
        .find(|(_, i)| i.name == crate::ir::RNG_KEY_INPUT)
        .map(|(id, _)| id);
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() || n < 16 * batch {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} rows")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut engine = Engine::new(backend, eval);
    let mut outs: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); eval.outputs.len()];
    for start in (0..n).step_by(batch) {
        let rows = batch.min(n - start);
        let mut shape = vec![rows];
        shape.extend(&rest);
        let mut inputs = SecondaryMap::new();
        inputs[features] = Some(Tensor::new(
            shape,
            x.data[start * f..(start + rows) * f].to_vec(),
        ));
        if let Some(k) = key {
            inputs[k] = Some(interp::rng_key(0, 0));
        }
        let values = engine.run(params, &inputs).map_err(|e| e.to_diag())?;
        for ((o, t), out) in eval.outputs.iter().zip(values).zip(&mut outs) {
            if t.shape.first() != Some(&rows) {
                return Err(diag::error(
                    code::INPUT,
                    format!(
                        "output `{}` is not one row per example (its shape is {:?} for {rows} rows)",
                        o.name, t.shape
                    ),
                )
                .with_labels(vec![o.span.primary("computed here")]));
            }
            out.0 = t.shape[1..].to_vec();
            out.1.extend_from_slice(&t.data);
        }
        bar.inc(rows as u64);
    }
    bar.finish_and_clear();
    Ok(eval
        .outputs
        .iter()
        .zip(outs)
        .map(|(o, (rest, data))| {
            let mut shape = vec![n];
            shape.extend(rest);
            (o.name.clone(), Tensor::new(shape, data))
        })
        .collect())
}

/// A classifier's classes: when the `train` block feeds its targets
/// one-hot (`[B, C]`, C ≥ 2) and `predict` has C values a row, the
/// arg-max of each row.
fn classes(
    eval: &Graph,
    spec: Option<&crate::sema::TrainSpec>,
    preds: &[(String, Tensor)],
) -> Option<Vec<usize>> {
    let t = spec?.targets?;
    let c = match eval.inputs[t].ty.shape.as_slice() {
        [_, Dim::Known(c)] if *c >= 2 => *c as usize,
        _ => return None,
    };
    let (_, p) = preds.first()?;
    if p.shape.len() != 2 || p.shape[1] != c {
        return None;
    }
    Some(
        p.data
            .chunks(c)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (k, &v)| if v > b.1 { (k, v) } else { b },
                    )
                    .0
            })
            .collect(),
    )
}

/// How many rows the predictions get right against one label a row: the
/// class for a classifier, else the side of 0.5 of a single value (as
/// training's validation accuracy counts). `None` when neither applies.
fn correct(p: &Predictions, labels: &[f32]) -> Option<usize> {
    match &p.classes {
        Some(cs) => Some(
            cs.iter()
                .zip(labels)
                .filter(|(&c, &l)| c as f32 == l)
                .count(),
        ),
        None => {
            let (_, t) = p.outputs.first()?;
            (t.data.len() == labels.len()).then(|| {
                t.data
                    .iter()
                    .zip(labels)
                    .filter(|(&v, &l)| (v > 0.5) == (l > 0.5))
                    .count()
            })
        }
    }
}

/// Column names: `class` for a classifier, then each output's values
/// (`NAME` for one a row, else `NAME_0`, `NAME_1`, …).
fn columns(p: &Predictions) -> Vec<String> {
    let mut cols = Vec::new();
    if p.classes.is_some() {
        cols.push("class".to_string());
    }
    for (name, t) in &p.outputs {
        let w: usize = t.shape[1..].iter().product();
        match w {
            1 => cols.push(name.clone()),
            _ => cols.extend((0..w).map(|k| format!("{name}_{k}"))),
        }
    }
    cols
}

/// Row `r`'s values, in [`columns`] order (the class as a number).
fn row_values(p: &Predictions, r: usize) -> (Option<usize>, Vec<f32>) {
    let mut vs = Vec::new();
    for (_, t) in &p.outputs {
        let w: usize = t.shape[1..].iter().product();
        vs.extend_from_slice(&t.data[r * w..(r + 1) * w]);
    }
    (p.classes.as_ref().map(|c| c[r]), vs)
}

fn rows(p: &Predictions) -> usize {
    p.outputs.first().map_or(0, |(_, t)| t.shape[0])
}

fn csv_text(p: &Predictions) -> String {
    let mut s = columns(p).join(",");
    s.push('\n');
    for r in 0..rows(p) {
        let (class, vs) = row_values(p, r);
        let mut cells: Vec<String> = class.map(|c| c.to_string()).into_iter().collect();
        cells.extend(vs.iter().map(|&v| crate::tensor::format_f32(v)));
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

fn jsonl_text(p: &Predictions) -> String {
    let mut s = String::new();
    for r in 0..rows(p) {
        let mut obj = serde_json::Map::new();
        obj.insert("row".into(), r.into());
        if let Some(c) = &p.classes {
            obj.insert("class".into(), c[r].into());
        }
        for (name, t) in &p.outputs {
            let w: usize = t.shape[1..].iter().product();
            let vals: Vec<serde_json::Value> = t.data[r * w..(r + 1) * w]
                .iter()
                .map(|&v| crate::driver::output::json_number(v))
                .collect();
            obj.insert(name.clone(), serde_json::Value::Array(vals));
        }
        s.push_str(&serde_json::Value::Object(obj).to_string());
        s.push('\n');
    }
    s
}

/// Writes the predictions to `path`, the format by its extension,
/// through a temporary file (a failed write leaves nothing half-written).
fn write(path: &Path, p: &Predictions) -> Result<(), Diag> {
    let bytes = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => csv_text(p).into_bytes(),
        Some("jsonl") => jsonl_text(p).into_bytes(),
        Some("npy") => match p.outputs.as_slice() {
            [(_, t)] => crate::data::npy_bytes(t),
            _ => {
                return Err(error(
                    format!(
                        "`{}`: a .npy file holds one array, and there are {} outputs",
                        path.display(),
                        p.outputs.len()
                    ),
                    "write .csv or .jsonl",
                ))
            }
        },
        _ => {
            return Err(error(
                format!(
                    "`{}`: nnc writes predictions as .csv, .jsonl or .npy",
                    path.display()
                ),
                "name the output with one of those extensions",
            ))
        }
    };
    crate::train::checkpoint::write_atomic(path, &bytes).map_err(|e| {
        diag::error(
            code::FILE,
            format!("cannot write `{}`: {e}", path.display()),
        )
        .with_notes(vec![
            "help: check that the folder exists and is writable".into()
        ])
    })
}
