//! Training: data preparation, the epoch loop over a compiled step, the
//! numerical guard, metrics and checkpoints. The command line
//! (`nnc train`) adds the progress bar and the printing around it.
//!
//! A step is one graph ([`pipeline::step_graph`]) that computes the loss,
//! the gradients and every parameter's update; the loop feeds it batches
//! and commits the updates. Validation runs the forward graph alone.
//!
//! Determinism: the split shuffles rows with the seed; epoch `e` shuffles
//! the training rows with a generator seeded from (seed, e). Resuming
//! from a checkpoint of epoch `e` therefore continues exactly as an
//! uninterrupted run would.

pub mod checkpoint;
mod data_prep;

use crate::backend::interp;
use crate::diag::{self, code, Diag, Span};
use crate::ir::{Graph, ParamId, Role};
use crate::pipeline;
use crate::sema::TrainSpec;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use data_prep::Prepared;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use data_prep::prepare;

/// Options of a training run (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Overrides the file's `epochs` (the total, counting resumed ones).
    pub epochs: Option<usize>,
    /// Overrides the file's `seed`.
    pub seed: Option<u64>,
    pub save: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub log: Option<PathBuf>,
    /// The folder data paths are relative to (the `.nn` file's).
    pub base_dir: PathBuf,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f32,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
}

/// What the loop reports as it goes.
pub enum Event<'e> {
    /// Before the first epoch: steps per epoch and the epochs to run.
    Start {
        steps_per_epoch: usize,
        first_epoch: usize,
        epochs: usize,
    },
    Step {
        loss: f32,
    },
    Epoch(&'e EpochStats),
}

pub struct Summary {
    pub epochs: Vec<EpochStats>,
    pub params: Vec<(String, Tensor)>,
    pub warnings: Vec<Diag>,
}

fn error(span: Span, msg: String, hint: &str) -> Diag {
    diag::error(code::INPUT, msg)
        .with_labels(vec![span.primary("training this")])
        .with_notes(vec![format!("help: {hint}")])
}

/// Runs training to the end, calling `observe` as it goes.
pub fn run(
    g: &Graph,
    spec: &TrainSpec,
    opts: &Options,
    observe: &mut dyn FnMut(Event),
) -> Result<Summary, Diag> {
    let seed = opts.seed.unwrap_or(spec.seed);
    let epochs = opts.epochs.unwrap_or(spec.epochs);
    let data = prepare(g, spec, &opts.base_dir, seed)?;
    let step = pipeline::step_graph(g, spec)?;
    let mut eval = g.clone();
    eval.outputs = step
        .graph
        .outputs
        .iter()
        .filter(|o| o.name == "loss" || o.name == "predict")
        .cloned()
        .collect();
    let n_grads = step.grads.len();

    let mut params = interp::init_params(&step.graph, seed);
    let mut first_epoch = 0;
    let mut global_step: u64 = 0;
    if let Some(path) = &opts.resume {
        let (meta_epoch, meta_step) = restore(&step.graph, &mut params, path, spec.span)?;
        first_epoch = meta_epoch;
        global_step = meta_step;
    }
    let steps_per_epoch = data.train.len().div_ceil(spec.batch);
    observe(Event::Start {
        steps_per_epoch,
        first_epoch,
        epochs,
    });
    let mut history = Vec::new();
    let mut log = String::new();
    if let (Some(path), true) = (&opts.log, first_epoch > 0) {
        log = std::fs::read_to_string(path).unwrap_or_default();
    }
    for epoch in first_epoch..epochs {
        let order = data_prep::epoch_order(&data.train, seed, epoch);
        let mut total = 0.0f64;
        let mut seen = 0usize;
        for (bi, rows) in order.chunks(spec.batch).enumerate() {
            let inputs = data.batch(&step.graph, rows);
            let outs = interp::step(&step.graph, &mut params, &inputs).map_err(|e| e.to_diag())?;
            global_step += 1;
            let loss = outs[0].data[0];
            // The numerical guard: the loss, then each gradient, then each
            // updated parameter must be finite.
            let bad = if !loss.is_finite() {
                Some(format!("the loss is {loss}"))
            } else if let Some(k) =
                (0..n_grads).find(|&k| outs[k + 1].data.iter().any(|v| !v.is_finite()))
            {
                Some(format!(
                    "the gradient of `{}` is not finite",
                    step.graph.params[step.grads[k].0].name
                ))
            } else {
                step.graph
                    .params
                    .iter()
                    .find(|(p, _)| params[*p].data.iter().any(|v| !v.is_finite()))
                    .map(|(_, info)| format!("`{}` is not finite after the update", info.name))
            };
            if let Some(what) = bad {
                return Err(error(
                    g.nodes[spec.loss].span,
                    format!("training diverged at epoch {}, step {} (batch {} of the epoch): {what}", epoch + 1, global_step, bi + 1),
                    "lower the learning rate, scale the inputs, or check for log of 0; the last checkpoint saved is intact",
                ));
            }
            total += f64::from(loss) * rows.len() as f64;
            seen += rows.len();
            observe(Event::Step { loss });
        }
        let train_loss = (total / seen.max(1) as f64) as f32;
        let (val_loss, val_accuracy) = validate(&eval, &params, &data, spec.batch)?;
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss,
            val_loss,
            val_accuracy,
        };
        observe(Event::Epoch(&stats));
        if let Some(path) = &opts.log {
            log.push_str(&log_line(&stats));
            checkpoint::write_atomic(path, log.as_bytes()).map_err(|e| file_error(path, &e))?;
        }
        if let Some(path) = &opts.save {
            save(&step.graph, &params, path, epoch + 1, global_step, seed)?;
        }
        history.push(stats);
    }
    let out_params = step
        .graph
        .params
        .iter()
        .filter(|(_, p)| p.role == Role::Trainable)
        .map(|(id, p)| (p.name.clone(), params[id].clone()))
        .collect();
    Ok(Summary {
        epochs: history,
        params: out_params,
        warnings: step.warnings,
    })
}

/// One JSON object per line: `{"epoch": N, "train_loss": …, "val_loss": …, "val_accuracy": …}`.
pub fn log_line(s: &EpochStats) -> String {
    let num = |v: Option<f32>| {
        v.filter(|x| x.is_finite())
            .map_or(serde_json::Value::Null, |x| serde_json::json!(x))
    };
    let obj = serde_json::json!({
        "epoch": s.epoch,
        "train_loss": num(Some(s.train_loss)),
        "val_loss": num(s.val_loss),
        "val_accuracy": num(s.val_accuracy),
    });
    format!("{obj}\n")
}

fn validate(
    eval: &Graph,
    params: &SecondaryMap<ParamId, Tensor>,
    data: &Prepared,
    batch: usize,
) -> Result<(Option<f32>, Option<f32>), Diag> {
    if data.val.is_empty() {
        return Ok((None, None));
    }
    let mut loss = 0.0f64;
    let (mut correct, mut labelled) = (0usize, 0usize);
    let has_predict = eval.outputs.len() > 1;
    for rows in data.val.chunks(batch) {
        let inputs = data.batch(eval, rows);
        let outs = interp::run(
            eval,
            &interp::Feed {
                params,
                inputs: &inputs,
            },
        )
        .map_err(|e| e.to_diag())?;
        loss += f64::from(outs[0].data[0]) * rows.len() as f64;
        if has_predict {
            let (c, t) = data.count_correct(&outs[1], rows);
            correct += c;
            labelled += t;
        }
    }
    let n = data.val.len() as f64;
    let accuracy = has_predict.then(|| (correct as f64 / labelled.max(1) as f64) as f32);
    Ok((Some((loss / n) as f32), accuracy))
}

fn save(
    g: &Graph,
    params: &SecondaryMap<ParamId, Tensor>,
    path: &Path,
    epoch: usize,
    step: u64,
    seed: u64,
) -> Result<(), Diag> {
    let tensors: Vec<(String, &Tensor)> = g
        .params
        .iter()
        .map(|(id, p)| (p.name.clone(), &params[id]))
        .collect();
    let meta = HashMap::from([
        ("format".to_string(), "nnc-checkpoint-1".to_string()),
        ("epoch".to_string(), epoch.to_string()),
        ("step".to_string(), step.to_string()),
        // Shuffling is re-seeded from (seed, epoch) every epoch, so these
        // two numbers are the whole state of the data order's generator.
        ("seed".to_string(), seed.to_string()),
    ]);
    checkpoint::save(path, &tensors, &meta).map_err(|e| diag::error(code::FILE, e.to_string()))
}

/// Loads parameters (and, from a checkpoint, optimizer state) by name;
/// returns the epoch and step it was taken at (0 for plain weights).
pub fn restore(
    g: &Graph,
    params: &mut SecondaryMap<ParamId, Tensor>,
    path: &Path,
    span: Span,
) -> Result<(usize, u64), Diag> {
    let (tensors, meta) =
        checkpoint::load(path).map_err(|e| diag::error(code::FILE, e.to_string()))?;
    for (id, p) in g.params.iter() {
        match tensors.get(&p.name) {
            Some(t) if t.shape == params[id].shape => params[id] = t.clone(),
            Some(t) => {
                return Err(error(
                    span,
                    format!(
                        "`{}` in `{}` has shape {:?}, but the model's is {:?}",
                        p.name,
                        path.display(),
                        t.shape,
                        params[id].shape
                    ),
                    "the checkpoint comes from a different model",
                ))
            }
            None if p.role == Role::State && !meta.contains_key("epoch") => {}
            None => {
                return Err(error(
                    span,
                    format!("`{}` has no tensor `{}`", path.display(), p.name),
                    "the checkpoint comes from a different model or optimizer",
                ))
            }
        }
    }
    let num = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((num("epoch") as usize, num("step")))
}

fn file_error(path: &Path, e: &std::io::Error) -> Diag {
    diag::error(
        code::FILE,
        format!("cannot write `{}`: {e}", path.display()),
    )
}
