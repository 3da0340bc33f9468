//! Training: data preparation, the epoch loop over a compiled step, the
//! numerical guard, metrics and checkpoints. The command line
//! (`nnc train`) adds the progress bar and the printing around it.
//!
//! A step is one graph ([`pipeline::step_graph`]) that computes the loss,
//! the gradients and every parameter's update; the loop feeds it batches
//! and commits the updates. Validation runs the forward graph alone.
//!
//! A `train` block with phases runs each phase's step graph in turn on
//! every batch ([`pipeline::train_steps`]); they share one table of
//! parameter values, so a phase sees the updates of the phases before it.
//!
//! Determinism: the split shuffles rows with the seed; epoch `e` shuffles
//! the training rows with a generator seeded from (seed, e); random draws
//! are keyed by (seed, step · phases + phase). Resuming from a checkpoint
//! of epoch `e` (which keeps the step) therefore continues exactly as an
//! uninterrupted run would.

pub mod checkpoint;
mod data_prep;
pub mod dist;
pub mod metrics;
mod restore;

use crate::backend::interp;
use crate::backend::Engine;
use crate::diag::{self, code, Diag, Span};
use crate::ir::{Graph, ParamId, Role, RNG_KEY_INPUT};
use crate::pipeline;
use crate::sema::TrainSpec;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use data_prep::Prepared;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use data_prep::prepare;
pub use restore::restore;

/// Ctrl-C's: a run stops after the step in progress when there is one.
static INTERRUPTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Asks the training run to stop after its current step (Ctrl-C);
/// returns how many times it has been asked.
pub fn interrupt() -> usize {
    INTERRUPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

/// Whether a run was asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTS.load(std::sync::atomic::Ordering::SeqCst) > 0
}

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
    /// The backend that runs the steps and the evaluation.
    pub backend: crate::backend::BackendKind,
    /// The folder data paths are relative to (the `.nn` file's).
    pub base_dir: PathBuf,
    /// The `.nn` file trained, which `save` must not overwrite.
    pub source: Option<PathBuf>,
    /// The figure that decides the best epoch (`--monitor`).
    pub monitor: Monitor,
    /// Write a checkpoint whenever the monitored figure improves.
    pub save_best: Option<PathBuf>,
    /// Stop after this many epochs without an improvement (`--patience`).
    pub patience: Option<usize>,
    /// How much the figure must improve to count (`--min-delta`).
    pub min_delta: f32,
    /// Also write `save` every this many steps (`--save-every`).
    pub save_every: Option<u64>,
    /// Values to start from instead of the initial ones, by parameter
    /// name (a program that embeds nnc continues from its current
    /// weights); a checkpoint resumed from replaces them.
    pub start: Vec<(String, Tensor)>,
    /// Set from another thread to stop after the step in progress, as
    /// Ctrl-C does (a program that embeds nnc: its callback failed, or
    /// its user interrupted it).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// With workers: the size of the gradients' all-reduce buckets
    /// (`--bucket-kib`; default [`dist::BUCKET_KIB`]).
    pub bucket_kib: Option<usize>,
}

/// Which epoch figure early stopping and `--save-best` follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Monitor {
    /// The validation loss, or the training loss without a validation
    /// split.
    #[default]
    Loss,
    ValLoss,
    ValAccuracy,
    TrainLoss,
}

impl Monitor {
    fn name(self, has_val: bool) -> &'static str {
        match self {
            Monitor::Loss if has_val => "val_loss",
            Monitor::Loss | Monitor::TrainLoss => "train_loss",
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
        }
    }

    /// The figure in `s`, oriented so that lower is better.
    fn value(self, s: &EpochStats) -> Option<f32> {
        match self {
            Monitor::Loss => s.val_loss.or(Some(s.train_loss)),
            Monitor::ValLoss => s.val_loss,
            Monitor::ValAccuracy => s.val_accuracy.map(|a| -a),
            Monitor::TrainLoss => Some(s.train_loss),
        }
    }
}

/// The best epoch so far and the epochs since, as a checkpoint keeps
/// them (so a resumed run stops where the uninterrupted one would).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Best {
    /// The monitored figure, oriented so that lower is better.
    pub value: f32,
    pub epoch: usize,
    /// Epochs since `epoch` that did not improve on it.
    pub stale: usize,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f32,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
    /// With phases, each phase's mean loss (their sum is `train_loss`).
    pub phase_losses: Vec<(String, f32)>,
    /// The learning rate of the epoch's last step (the first phase's),
    /// when it varies.
    pub lr: Option<f32>,
    /// The `metrics` the block asks for, by their log names.
    pub metrics: Vec<(String, f32)>,
}

/// What the loop reports as it goes.
pub enum Event<'e> {
    /// Before the first epoch: steps per epoch, the epochs to run and
    /// the rows trained on and held out.
    Start {
        steps_per_epoch: usize,
        first_epoch: usize,
        epochs: usize,
        rows: (usize, usize),
    },
    Step {
        loss: f32,
    },
    Epoch(&'e EpochStats),
}

pub struct Summary {
    pub epochs: Vec<EpochStats>,
    pub params: Vec<(String, Tensor)>,
    /// Every parameter and state of the file's graph (its own, not the
    /// optimizer's), by name, as training left them: what a program that
    /// embeds nnc keeps, and continues from ([`Options::start`]).
    pub values: Vec<(String, Tensor)>,
    pub warnings: Vec<Diag>,
    /// The best epoch by the monitored figure (named), when one was
    /// followed (`--save-best`, `--patience`).
    pub best: Option<(&'static str, Best)>,
    /// Training stopped early (`--patience`) after this epoch.
    pub stopped_at: Option<usize>,
    /// Interrupted (Ctrl-C) in this epoch (from 1) after this many steps
    /// in all.
    pub interrupted: Option<(usize, u64)>,
    /// The last epoch's confusion matrix on the validation rows
    /// (`m[true][predicted]`), when `metrics` asks for it.
    pub confusion: Option<Confusion>,
    /// With workers: their number, and the seconds worker 0 spent in the
    /// steps and, of those, in the all-reduce.
    pub comm: Option<(usize, f64, f64)>,
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
    run_on(g, spec, opts, None, observe)
}

/// [`run`] on the workers `comm` joins, data-parallel ([`dist`]); none:
/// this process alone.
pub fn run_on(
    g: &Graph,
    spec: &TrainSpec,
    opts: &Options,
    comm: Option<&dyn dist::Comm>,
    observe: &mut dyn FnMut(Event),
) -> Result<Summary, Diag> {
    // Subnormals flushed, unless the user said otherwise.
    let _training = crate::backend::jit::subnormal::training();
    // Worker 0 alone reports, evaluates and writes files.
    let lead = comm.is_none_or(|c| c.rank() == 0);
    let mut observe = |e: Event| {
        if lead {
            observe(e)
        }
    };
    // OpenCL workers run the plain step (the parameters go to the device
    // and the gradients come back every step, for the all-reduce), each
    // on its own GPU where the machine has several.
    if let Some(c) = comm.filter(|_| opts.backend == crate::backend::BackendKind::Opencl) {
        crate::backend::opencl::share_devices(dist::local_rank().unwrap_or(c.rank()));
    }
    let seed = opts.seed.unwrap_or(spec.seed);
    let epochs = opts.epochs.unwrap_or(spec.epochs);
    // The other workers write nothing.
    let quiet;
    let opts = match lead {
        true => opts,
        false => {
            quiet = Options {
                save: None,
                save_best: None,
                log: None,
                ..opts.clone()
            };
            &quiet
        }
    };
    // Random draws differ from worker to worker (worker 0 draws what one
    // process would).
    let draw_seed =
        seed ^ (comm.map_or(0, |c| c.rank()) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for save in opts.save.iter().chain(&opts.save_best) {
        check_save_target(save, &run_inputs(spec, opts))?;
    }
    let data = prepare(g, spec, &opts.base_dir, seed);
    let data = match comm {
        Some(c) => dist::agree(c, data)?,
        None => data?,
    };
    let mut steps = pipeline::train_steps(g, spec)?;
    // Data-parallel: each phase cut into its local part and its update.
    let split = match comm {
        Some(_) => pipeline::split_steps(g, spec)?,
        None => Vec::new(),
    };
    let mut split_engines: Vec<(Engine, Engine)> = split
        .iter()
        .map(|p| {
            (
                Engine::new(opts.backend, &p.local.graph),
                Engine::new(opts.backend, &p.update),
            )
        })
        .collect();
    // A backend that keeps the parameters on a device computes the
    // step's guard there ([`pipeline::append_finite`]); the others are
    // checked on the host.
    let kept = opts.backend.keeps_params();
    if kept {
        for ph in &mut steps {
            pipeline::append_finite(&mut ph.step, spec.span)?;
        }
    }
    // The last phase's graph knows every parameter and state.
    let all = &steps.last().expect("a train block has a phase").step.graph;
    let mut eval = g.clone();
    pipeline::set_training(&mut eval, false);
    eval.outputs = steps
        .iter()
        .map(|ph| crate::ir::Output {
            name: "loss".into(),
            node: ph.step.loss,
            span: spec.span,
        })
        .collect();
    if let Some(p) = spec.predict {
        eval.outputs.push(crate::ir::Output {
            name: "predict".into(),
            node: p,
            span: spec.span,
        });
    }
    let rng = g
        .inputs
        .iter()
        .find(|(_, i)| i.name == RNG_KEY_INPUT)
        .map(|(id, _)| id);

    let mut params = interp::init_params(all, seed);
    start_from(all, &mut params, &opts.start)?;
    // The scalings learnt from the training rows (a checkpoint resumed
    // below holds the same values: the split is the seed's).
    data.set_learnt(g, spec, all, &mut params)?;
    let mut first_epoch = 0;
    let mut global_step: u64 = 0;
    let mut warnings = Vec::new();
    let follow = opts.save_best.is_some() || opts.patience.is_some();
    let mut best: Option<Best> = None;
    // A checkpoint taken inside an epoch: the batches it had done and
    // their loss sums, to continue that epoch where it stopped.
    let mut partial: Option<Partial> = None;
    let mut resumed_plateaus: Vec<Plateau> = Vec::new();
    if let Some(path) = &opts.resume {
        match restore(all, &mut params, path)? {
            Some(at) => {
                at.check(path, seed)?;
                first_epoch = at.epoch;
                global_step = at.step;
                best = at.best;
                partial = at.partial;
                resumed_plateaus = at.plateaus;
            }
            None => warnings.push(
                diag::warning(format!(
                    "`{}` holds weights but no training position: training starts at epoch 1 from the values it holds",
                    path.display()
                ))
                .with_notes(vec!["note: checkpoints written by `nnc train --save` carry their epoch, step and seed".into()]),
            ),
        }
    }
    if let Some(c) = comm {
        dist::broadcast_params(c, &mut params);
    }
    let steps_per_epoch = data.train.len().div_ceil(spec.batch);
    if spec.batch > data.train.len() {
        warnings.push(
            diag::warning(format!(
                "`batch` is {}, more than the {} training rows: every step takes all of them",
                spec.batch,
                data.train.len()
            ))
            .with_labels(vec![Span {
                end: spec.span.start + "train".len() as u32,
                ..spec.span
            }
            .primary("in this block")])
            .with_notes(vec![format!(
                "help: a batch of at most {} rows makes several steps an epoch",
                data.train.len()
            )]),
        );
    }
    observe(Event::Start {
        steps_per_epoch,
        first_epoch,
        epochs,
        rows: (data.train.len(), data.val.len()),
    });
    let mut history = Vec::new();
    let mut log = String::new();
    if let (Some(path), true) = (&opts.log, first_epoch > 0) {
        log = std::fs::read_to_string(path).unwrap_or_default();
    }
    let n_phases = steps.len() as u64;
    let mut engines: Vec<Engine> = steps
        .iter()
        .map(|ph| Engine::new(opts.backend, &ph.step.graph))
        .collect();
    let mut eval_engine = Engine::new(opts.backend, &eval);
    let has_val = !data.val.is_empty();
    // Each phase's optimizer, and the input its varying rate is fed by.
    let optimizers: Vec<crate::sema::optimizer::Optimizer> = match spec.phases.is_empty() {
        true => vec![spec.optimizer],
        false => spec.phases.iter().map(|p| p.optimizer).collect(),
    };
    let lr_inputs: Vec<Option<crate::ir::InputId>> = steps
        .iter()
        .map(|ph| {
            ph.step
                .graph
                .inputs
                .iter()
                .find(|(_, i)| i.name.starts_with(crate::ir::LR_INPUT_PREFIX))
                .map(|(id, _)| id)
        })
        .collect();
    // A plateau schedule's factor, best loss and epochs since, per phase.
    let mut plateaus: Vec<Plateau> = (0..steps.len())
        .map(|k| resumed_plateaus.get(k).copied().unwrap_or_default())
        .collect();
    let mut last_lr = None;
    if follow {
        check_monitor(opts.monitor, has_val, spec)?;
    }
    // Metrics of the other kind of model are not computed: say so once.
    if let Some((_, classes)) = data.labels(&data.val) {
        for m in &spec.metrics {
            if m.for_classes() != classes.is_some() {
                warnings.push(diag::warning(format!(
                    "metric `{}` is for {}, and this model's targets are {}: it is not computed",
                    m.key().trim_start_matches("val_"),
                    if m.for_classes() {
                        "classifiers"
                    } else {
                        "regressors"
                    },
                    if classes.is_some() {
                        "classes"
                    } else {
                        "values"
                    }
                )));
            }
        }
    }
    let mut stopped_at = None;
    let mut interrupted_at = None;
    let mut dist_stop = false;
    let (mut comm_secs, mut step_secs) = (0.0f64, 0.0f64);
    // The epochs this run wrote to `--save` and `--save-best` last.
    let (mut saved, mut best_saved) = (None, None);
    let mut confusion = None;
    'epochs: for epoch in first_epoch..epochs {
        let order = data_prep::epoch_order(&data.train, seed, epoch);
        let mut totals = vec![0.0f64; steps.len()];
        let mut seen = 0usize;
        let mut skip = 0;
        if let Some(p) = partial.take().filter(|p| p.totals.len() == steps.len()) {
            (skip, totals, seen) = (p.batches, p.totals, p.seen);
        }
        for (bi, rows) in order.chunks(spec.batch).enumerate().skip(skip) {
            let step_started = std::time::Instant::now();
            let mut inputs = data.batch(all, rows);
            let mut step_loss = 0.0f32;
            for (k, ph) in steps.iter().enumerate() {
                if let (Some(id), Some(opt)) = (lr_inputs[k], optimizers.get(k)) {
                    let rate = opt.rate(epoch as u64, global_step, plateaus[k].factor);
                    if k == 0 {
                        last_lr = Some(rate);
                    }
                    inputs[id] = Some(Tensor::scalar(rate));
                }
                if let Some(id) = rng {
                    // A fresh key for every phase of every step, from the
                    // step counter a checkpoint keeps: resuming draws the
                    // same values.
                    inputs[id] = Some(interp::rng_key(
                        draw_seed,
                        global_step * n_phases + k as u64,
                    ));
                }
                let step = &ph.step;
                let (loss, blown) = if let Some(c) = comm {
                    // What every worker feeds its share alike.
                    let fed: Vec<(&str, Tensor)> = lr_inputs[k]
                        .iter()
                        .chain(rng.iter())
                        .filter_map(|&id| {
                            let t = inputs[id].clone()?;
                            Some((step.graph.inputs[id].name.as_str(), t))
                        })
                        .collect();
                    let (local, update) = &mut split_engines[k];
                    let done = dist::step(
                        c,
                        opts.bucket_kib.unwrap_or(dist::BUCKET_KIB) * 256,
                        &split[k],
                        local,
                        update,
                        &mut params,
                        &data,
                        all,
                        rows,
                        &fed,
                        interrupted()
                            || opts
                                .stop
                                .as_ref()
                                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)),
                    )?;
                    dist_stop |= done.interrupted;
                    comm_secs += done.comm.as_secs_f64();
                    (done.loss, non_finite(&split[k].local, &done.outs, &params))
                } else if kept {
                    // Only the loss and the step's guard come back from a
                    // device that keeps the parameters.
                    let finite = step.graph.outputs.len() - 1;
                    let outs = engines[k]
                        .step_kept(&mut params, &inputs, &[0, finite])
                        .map_err(|e| e.to_diag())?;
                    if n_phases > 1 {
                        // The phases share parameters: each reads them
                        // from the host.
                        engines[k].sync(&mut params).map_err(|e| e.to_diag())?;
                    }
                    let loss = outs[0].data[0];
                    let blown = if loss.is_finite() && outs[1].data[0].is_finite() {
                        None
                    } else {
                        engines[k].sync(&mut params).map_err(|e| e.to_diag())?;
                        let all = engines[k].outputs().map_err(|e| e.to_diag())?;
                        Some(
                            non_finite(step, &all, &params)
                                .unwrap_or_else(|| "a value is not finite".into()),
                        )
                    };
                    (loss, blown)
                } else {
                    let outs = engines[k]
                        .step(&mut params, &inputs)
                        .map_err(|e| e.to_diag())?;
                    (outs[0].data[0], non_finite(step, &outs, &params))
                };
                if let Some(what) = blown {
                    let phase = if ph.name.is_empty() {
                        String::new()
                    } else {
                        format!(", phase `{}`", ph.name)
                    };
                    return Err(error(
                        g.nodes[step.loss].span,
                        format!("training diverged at epoch {}, step {} (batch {} of the epoch{phase}): {what}", epoch + 1, global_step + 1, bi + 1),
                        "lower the learning rate, scale the inputs, or check for log of 0",
                    )
                    .with_notes(vec![saved_before_divergence(opts, saved, best_saved)]));
                }
                totals[k] += f64::from(loss) * rows.len() as f64;
                step_loss += loss;
            }
            global_step += 1;
            step_secs += step_started.elapsed().as_secs_f64();
            seen += rows.len();
            let every = opts
                .save_every
                .is_some_and(|k| global_step.is_multiple_of(k));
            let asked = interrupted()
                || opts
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            // With workers, every one stops after the step in which one
            // was asked to (agreed by the step's all-reduce).
            let stop = match comm {
                Some(_) => dist_stop,
                None => asked,
            };
            if stop || every {
                for e in &mut engines {
                    e.sync(&mut params).map_err(|e| e.to_diag())?;
                }
                if let Some(c) = comm {
                    dist::check_same(c, &params, &format!("at step {global_step}"))?;
                }
                if let Some(path) = &opts.save {
                    let at = Position {
                        epoch,
                        step: global_step,
                        seed,
                        best,
                        plateaus: plateaus.clone(),
                        partial: Some(Partial {
                            batches: bi + 1,
                            totals: totals.clone(),
                            seen,
                        }),
                    };
                    save(all, &params, path, &at)?;
                }
            }
            observe(Event::Step { loss: step_loss });
            if stop {
                interrupted_at = Some((epoch + 1, global_step));
                break 'epochs;
            }
        }
        let means: Vec<f32> = totals
            .iter()
            .map(|t| (t / seen.max(1) as f64) as f32)
            .collect();
        let train_loss = means.iter().sum();
        for e in &mut engines {
            e.sync(&mut params).map_err(|e| e.to_diag())?;
        }
        let validated = match lead {
            true => validate(
                &mut eval_engine,
                &eval,
                &mut params,
                &data,
                spec.batch,
                !spec.metrics.is_empty(),
            ),
            false => Ok((None, None, None)),
        };
        let (val_loss, val_accuracy, predicted) = match comm {
            // The others follow worker 0's figures (early stopping,
            // plateau schedules).
            Some(c) => {
                let (l, a, p) = dist::agree(c, validated)?;
                let mut figures = [
                    f32::from(u8::from(l.is_some())),
                    l.unwrap_or(0.0),
                    f32::from(u8::from(a.is_some())),
                    a.unwrap_or(0.0),
                ];
                c.broadcast(&mut figures);
                let l = (figures[0] > 0.0).then_some(figures[1]);
                let a = (figures[2] > 0.0).then_some(figures[3]);
                (l, a, p)
            }
            None => validated?,
        };
        if let Some(c) = comm {
            dist::check_same(c, &params, &format!("after epoch {}", epoch + 1))?;
        }
        let (figures, matrix) = epoch_metrics(spec, &data, predicted.as_deref());
        if matrix.is_some() {
            confusion = matrix;
        }
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss,
            val_loss,
            val_accuracy,
            phase_losses: if spec.phases.is_empty() {
                Vec::new()
            } else {
                steps.iter().map(|p| p.name.clone()).zip(means).collect()
            },
            lr: last_lr,
            metrics: figures,
        };
        // Plateau schedules follow the validation loss (else the
        // training loss), each with its own patience.
        for (p, opt) in plateaus.iter_mut().zip(&optimizers) {
            if let crate::sema::optimizer::LrSchedule::ReduceOnPlateau {
                factor,
                patience,
                min_delta,
            } = opt.schedule
            {
                p.observe(
                    stats.val_loss.unwrap_or(stats.train_loss),
                    factor,
                    patience,
                    min_delta,
                );
            }
        }
        observe(Event::Epoch(&stats));
        if let Some(path) = &opts.log {
            log.push_str(&log_line(&stats));
            checkpoint::write_atomic(path, log.as_bytes()).map_err(|e| file_error(path, &e))?;
        }
        // The best epoch so far, and whether this one improved on it by
        // more than `min_delta`.
        let mut improved = false;
        if let (true, Some(v)) = (follow, opts.monitor.value(&stats)) {
            improved = best.is_none_or(|b| v < b.value - opts.min_delta);
            best = Some(match best {
                Some(b) if !improved => Best {
                    stale: b.stale + 1,
                    ..b
                },
                _ => Best {
                    value: v,
                    epoch: epoch + 1,
                    stale: 0,
                },
            });
        }
        let at = Position {
            epoch: epoch + 1,
            step: global_step,
            seed,
            best,
            plateaus: plateaus.clone(),
            partial: None,
        };
        if let Some(path) = &opts.save {
            save(all, &params, path, &at)?;
            saved = Some(epoch + 1);
        }
        if let (Some(path), true) = (&opts.save_best, improved) {
            save(all, &params, path, &at)?;
            best_saved = Some(epoch + 1);
        }
        history.push(stats);
        if let (Some(p), Some(b)) = (opts.patience, best) {
            if b.stale >= p && epoch + 1 < epochs {
                stopped_at = Some(epoch + 1);
                break;
            }
        }
    }
    // Resumed at or past the last epoch: nothing ran, but `--save` still
    // gets the state it was asked for.
    if let (Some(path), true) = (&opts.save, history.is_empty()) {
        let at = Position {
            epoch: first_epoch,
            step: global_step,
            seed,
            best,
            plateaus: plateaus.clone(),
            partial: None,
        };
        save(all, &params, path, &at)?;
    }
    let out_params = all
        .params
        .iter()
        .filter(|(_, p)| p.role == Role::Trainable)
        .map(|(id, p)| (p.name.clone(), params[id].clone()))
        .collect();
    let values = g
        .params
        .iter()
        .map(|(id, p)| (p.name.clone(), params[id].clone()))
        .collect();
    warnings.extend(steps.into_iter().flat_map(|p| p.step.warnings));
    Ok(Summary {
        epochs: history,
        params: out_params,
        values,
        warnings,
        best: best
            .filter(|_| follow)
            .map(|b| (opts.monitor.name(has_val), b)),
        stopped_at,
        interrupted: interrupted_at,
        confusion,
        comm: comm.map(|c| (c.size(), step_secs, comm_secs)),
    })
}

/// Replaces initial values with those of [`Options::start`] of the same
/// name; one of another shape is an error (a name the table lacks is
/// left alone: the caller's table may be a smaller graph's).
fn start_from(
    g: &Graph,
    params: &mut SecondaryMap<ParamId, Tensor>,
    start: &[(String, Tensor)],
) -> Result<(), Diag> {
    for (name, t) in start {
        let Some((id, p)) = g.params.iter().find(|(_, p)| p.name == *name) else {
            continue;
        };
        if t.shape != params[id].shape {
            return Err(diag::error(
                code::INPUT,
                format!(
                    "the value given for `{name}` has shape {:?}, but the model declares {:?}",
                    t.shape, params[id].shape
                ),
            )
            .with_labels(vec![p.span.primary("declared here")]));
        }
        params[id] = t.clone();
    }
    Ok(())
}

/// What a diverged run leaves behind: the epoch `--save` (and
/// `--save-best`) last wrote in this run, or that nothing was written.
fn saved_before_divergence(
    opts: &Options,
    saved: Option<usize>,
    best_saved: Option<usize>,
) -> String {
    let mut note = match (&opts.save, saved) {
        (Some(p), Some(e)) => format!(
            "note: `{}` holds epoch {e}, the last before it diverged",
            p.display()
        ),
        (Some(p), None) => format!(
            "note: nothing was saved: it diverged before the end of this run's first epoch (`--save` writes `{}` after each epoch)",
            p.display()
        ),
        (None, _) => {
            "note: nothing was saved (`--save W.safetensors` keeps a checkpoint after each epoch)"
                .to_string()
        }
    };
    if let (Some(p), Some(e)) = (&opts.save_best, best_saved) {
        note.push_str(&format!("; `{}` holds epoch {e}, the best", p.display()));
    }
    if let (Some(r), None) = (&opts.resume, saved) {
        note.push_str(&format!("; `{}`, resumed from, is unchanged", r.display()));
    }
    note
}

/// A confusion matrix, `m[true][predicted]`.
pub type Confusion = Vec<Vec<usize>>;

/// The validation loss and accuracy, and the rows' predictions.
type Validation = (Option<f32>, Option<f32>, Option<Vec<f32>>);

/// The block's `metrics` on the validation rows' predictions (their
/// `predict` values, row by row), and the confusion matrix when asked.
fn epoch_metrics(
    spec: &TrainSpec,
    data: &Prepared,
    predicted: Option<&[f32]>,
) -> (Vec<(String, f32)>, Option<Confusion>) {
    let (Some(p), Some((labels, classes))) = (predicted, data.labels(&data.val)) else {
        return (Vec::new(), None);
    };
    let out = match classes {
        Some(c) if p.len() == labels.len() * c => metrics::Outcomes::Classes {
            scores: p,
            classes: c,
            labels: &labels,
        },
        None if p.len() == labels.len() => metrics::Outcomes::Values {
            predicted: p,
            targets: &labels,
        },
        _ => return (Vec::new(), None),
    };
    let mut figures = Vec::new();
    let mut matrix = None;
    // `accuracy` is the epoch's `val_accuracy` already.
    for &m in spec
        .metrics
        .iter()
        .filter(|&&m| m != metrics::Metric::Accuracy)
    {
        match (m, &out, metrics::value(m, &out)) {
            (
                metrics::Metric::Confusion,
                metrics::Outcomes::Classes {
                    scores,
                    classes,
                    labels,
                },
                _,
            ) => {
                matrix = Some(metrics::confusion(scores, *classes, labels));
            }
            (_, _, Some(v)) => figures.push((m.key(), v as f32)),
            _ => {}
        }
    }
    (figures, matrix)
}

/// The monitored figure must be one the run computes.
fn check_monitor(m: Monitor, has_val: bool, spec: &TrainSpec) -> Result<(), Diag> {
    let missing = match m {
        Monitor::ValLoss if !has_val => Some("val_loss needs validation rows"),
        Monitor::ValAccuracy if !has_val || spec.predict.is_none() => {
            Some("val_accuracy needs validation rows and a `predict`")
        }
        _ => None,
    };
    match missing {
        None => Ok(()),
        Some(why) => Err(flag_error(
            format!("`--monitor`: {why}, and this run has none"),
            "set `split` (and `predict`) in the `train` block, or monitor train_loss",
        )),
    }
}

/// The numerical guard: the loss, then each gradient, then each updated
/// parameter must be finite. Returns what is not.
fn non_finite(
    step: &pipeline::GradGraph,
    outs: &[Tensor],
    params: &SecondaryMap<ParamId, Tensor>,
) -> Option<String> {
    let loss = outs[0].data[0];
    if !loss.is_finite() {
        return Some(format!("the loss is {loss}"));
    }
    if let Some(k) =
        (0..step.grads.len()).find(|&k| outs[k + 1].data.iter().any(|v| !v.is_finite()))
    {
        return Some(format!(
            "the gradient of `{}` is not finite",
            step.graph.params[step.grads[k].0].name
        ));
    }
    step.graph
        .params
        .iter()
        .find(|(p, _)| params[*p].data.iter().any(|v| !v.is_finite()))
        .map(|(_, info)| format!("`{}` is not finite after the update", info.name))
}

/// One JSON object per line: `{"epoch": N, "train_loss": …, "val_loss": …, "val_accuracy": …}`.
pub fn log_line(s: &EpochStats) -> String {
    let num = |v: Option<f32>| {
        v.filter(|x| x.is_finite())
            .map_or(serde_json::Value::Null, |x| serde_json::json!(x))
    };
    let mut obj = serde_json::json!({
        "epoch": s.epoch,
        "train_loss": num(Some(s.train_loss)),
        "val_loss": num(s.val_loss),
        "val_accuracy": num(s.val_accuracy),
    });
    for (name, v) in &s.phase_losses {
        obj[format!("loss.{name}")] = num(Some(*v));
    }
    if let Some(lr) = s.lr {
        obj["lr"] = num(Some(lr));
    }
    for (name, v) in &s.metrics {
        obj[name.as_str()] = num(Some(*v));
    }
    format!("{obj}\n")
}

/// The validation loss and accuracy, and (when the block has `metrics`
/// and a `predict`) every validation row's prediction, in row order.
fn validate(
    engine: &mut Engine,
    eval: &Graph,
    params: &mut SecondaryMap<ParamId, Tensor>,
    data: &Prepared,
    batch: usize,
    keep: bool,
) -> Result<Validation, Diag> {
    if data.val.is_empty() {
        return Ok((None, None, None));
    }
    let mut loss = 0.0f64;
    let (mut correct, mut labelled) = (0usize, 0usize);
    // Outputs: each phase's loss, then the prediction if any.
    let has_predict = eval.outputs.last().is_some_and(|o| o.name == "predict");
    let n_losses = eval.outputs.len() - usize::from(has_predict);
    let mut kept = (keep && has_predict).then(Vec::new);
    for rows in data.val.chunks(batch) {
        let inputs = data.batch(eval, rows);
        let outs = engine.run(params, &inputs).map_err(|e| e.to_diag())?;
        let sum: f32 = outs[..n_losses].iter().map(|t| t.data[0]).sum();
        loss += f64::from(sum) * rows.len() as f64;
        if has_predict {
            let (c, t) = data.count_correct(&outs[n_losses], rows);
            correct += c;
            labelled += t;
            if let Some(k) = &mut kept {
                k.extend_from_slice(&outs[n_losses].data);
            }
        }
    }
    let n = data.val.len() as f64;
    let accuracy = (has_predict && data.has_targets())
        .then(|| (correct as f64 / labelled.max(1) as f64) as f32);
    Ok((Some((loss / n) as f32), accuracy, kept))
}

fn save(
    g: &Graph,
    params: &SecondaryMap<ParamId, Tensor>,
    path: &Path,
    at: &Position,
) -> Result<(), Diag> {
    let tensors: Vec<(String, &Tensor)> = g
        .params
        .iter()
        .map(|(id, p)| (p.name.clone(), &params[id]))
        .collect();
    let mut meta = HashMap::from([
        ("format".to_string(), "nnc-checkpoint-1".to_string()),
        ("epoch".to_string(), at.epoch.to_string()),
        ("step".to_string(), at.step.to_string()),
        // Shuffling is re-seeded from (seed, epoch) every epoch, so these
        // two numbers are the whole state of the data order's generator.
        ("seed".to_string(), at.seed.to_string()),
    ]);
    if let Some(p) = &at.partial {
        let totals: Vec<String> = p.totals.iter().map(|t| t.to_bits().to_string()).collect();
        meta.insert("batches".into(), p.batches.to_string());
        meta.insert("totals".into(), totals.join(","));
        meta.insert("seen".into(), p.seen.to_string());
    }
    for (k, p) in at.plateaus.iter().enumerate() {
        if *p != Plateau::default() {
            meta.insert(format!("plateau.{k}"), p.text());
        }
    }
    if let Some(b) = at.best {
        // The value's bits, so that a resumed run compares exactly.
        meta.insert("best".into(), b.value.to_bits().to_string());
        meta.insert("best_epoch".into(), b.epoch.to_string());
        meta.insert("stale".into(), b.stale.to_string());
    }
    checkpoint::save(path, &tensors, &meta).map_err(|e| diag::error(code::FILE, e.to_string()))
}

/// Where a checkpoint was taken, from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub epoch: usize,
    pub step: u64,
    pub seed: u64,
    /// The best epoch so far, when the run followed one.
    pub best: Option<Best>,
    /// Each phase's plateau schedule state.
    pub plateaus: Vec<Plateau>,
    /// Taken inside epoch `epoch` (from 0; Ctrl-C): how far it had got.
    pub partial: Option<Partial>,
}

/// How far into an epoch a checkpoint was taken: the batches done and,
/// per phase, the sum of their losses (times their rows), over `seen`
/// rows, so the resumed epoch reports the uninterrupted one's loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    pub batches: usize,
    pub totals: Vec<f64>,
    pub seen: usize,
}

/// Where a `reduce_on_plateau` schedule stands: the factor the rate has
/// reached, the best loss so far and the epochs since it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plateau {
    pub factor: f32,
    pub best: f32,
    pub stale: u64,
}

impl Default for Plateau {
    fn default() -> Plateau {
        Plateau {
            factor: 1.0,
            best: f32::INFINITY,
            stale: 0,
        }
    }
}

impl Plateau {
    /// An epoch's loss: an improvement by more than `min_delta` resets
    /// the count; `patience` epochs without one multiply the rate by
    /// `factor` and start counting again.
    fn observe(&mut self, loss: f32, factor: f32, patience: u64, min_delta: f32) {
        if loss < self.best - min_delta {
            self.best = loss;
            self.stale = 0;
        } else {
            self.stale += 1;
            if self.stale >= patience {
                self.factor *= factor;
                self.stale = 0;
            }
        }
    }

    fn text(&self) -> String {
        format!(
            "{},{},{}",
            self.factor.to_bits(),
            self.best.to_bits(),
            self.stale
        )
    }

    fn parse(s: &str) -> Option<Plateau> {
        let mut it = s.split(',');
        let factor = f32::from_bits(it.next()?.parse().ok()?);
        let best = f32::from_bits(it.next()?.parse().ok()?);
        let stale = it.next()?.parse().ok()?;
        Some(Plateau {
            factor,
            best,
            stale,
        })
    }
}

/// The plateau states in a checkpoint's metadata (`plateau.K`, per
/// phase; the default where a phase has none).
fn plateaus_of(meta: &HashMap<String, String>) -> Vec<Plateau> {
    let n = meta
        .keys()
        .filter_map(|k| k.strip_prefix("plateau.")?.parse::<usize>().ok())
        .map(|k| k + 1)
        .max()
        .unwrap_or(0);
    (0..n)
        .map(|k| {
            meta.get(&format!("plateau.{k}"))
                .and_then(|v| Plateau::parse(v))
                .unwrap_or_default()
        })
        .collect()
}

impl Position {
    /// Reads `format`, `epoch`, `step` and `seed` as `nnc train --save`
    /// writes them; `None` when the file has no training metadata at
    /// all (plain weights), an error when it has some that is wrong.
    fn read(meta: &HashMap<String, String>, path: &Path) -> Result<Option<Position>, Diag> {
        let keys = ["format", "epoch", "step", "seed"];
        if keys.iter().all(|k| !meta.contains_key(*k)) {
            return Ok(None);
        }
        let bad = |what: String| {
            flag_error(
                format!("`{}` is not a checkpoint nnc can resume: {what}", path.display()),
                "resume from a file written by `nnc train --save`, or start afresh without `--resume`",
            )
        };
        match meta.get("format").map(String::as_str) {
            Some("nnc-checkpoint-1") => {}
            Some(f) => {
                return Err(bad(format!(
                    "its format is `{f}`, expected `nnc-checkpoint-1`"
                )))
            }
            None => return Err(bad("its metadata has no `format`".into())),
        }
        let num = |k: &str| -> Result<u64, Diag> {
            let v = meta
                .get(k)
                .ok_or_else(|| bad(format!("its metadata has no `{k}`")))?;
            v.parse::<u64>()
                .ok()
                .filter(|&n| n <= 1 << 53)
                .ok_or_else(|| bad(format!("its `{k}` is `{v}`, not a count")))
        };
        let (epoch, step, seed) = (num("epoch")?, num("step")?, num("seed")?);
        let partial = match meta.get("batches") {
            None => None,
            Some(_) => {
                let totals = meta
                    .get("totals")
                    .map(|t| {
                        t.split(',')
                            .map(|x| x.parse::<u64>().map(f64::from_bits))
                            .collect::<Result<Vec<f64>, _>>()
                    })
                    .transpose()
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("its `totals` are missing or not numbers".into()))?;
                Some(Partial {
                    batches: num("batches")? as usize,
                    totals,
                    seen: num("seen")? as usize,
                })
            }
        };
        let inside = partial.as_ref().is_some_and(|p| p.batches > 0);
        if epoch > 999_999_999 || (epoch > 0 && step == 0) || (epoch == 0 && step > 0 && !inside) {
            return Err(bad(format!("epoch {epoch} at step {step} is impossible")));
        }
        let best = match meta.get("best") {
            None => None,
            Some(v) => Some(Best {
                value: v
                    .parse::<u32>()
                    .map(f32::from_bits)
                    .map_err(|_| bad(format!("its `best` is `{v}`")))?,
                epoch: num("best_epoch")? as usize,
                stale: num("stale")? as usize,
            }),
        };
        Ok(Some(Position {
            epoch: epoch as usize,
            step,
            seed,
            best,
            plateaus: plateaus_of(meta),
            partial,
        }))
    }

    /// A resumed run continues the same data order only with the seed
    /// the checkpoint was trained with.
    fn check(&self, path: &Path, seed: u64) -> Result<(), Diag> {
        if self.seed == seed {
            return Ok(());
        }
        Err(flag_error(
            format!(
                "`{}` was trained with seed {}, and this run's seed is {seed}",
                path.display(),
                self.seed
            ),
            &format!(
                "pass `--seed {}` to continue the same run (its data order and random draws)",
                self.seed
            ),
        ))
    }
}

/// The files a training run reads: its source and its data.
fn run_inputs(spec: &TrainSpec, opts: &Options) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = opts.source.iter().cloned().collect();
    match spec.data.as_ref().map(|d| &d.feeds) {
        Some(crate::sema::Feeds::Pair(src)) => match data_prep::rebase(src, &opts.base_dir) {
            crate::data::Source::Csv { path, .. } => out.push(path),
            crate::data::Source::Idx { images, labels, .. } => out.extend([images, labels]),
            crate::data::Source::Npy {
                features, labels, ..
            } => out.extend([features, labels]),
        },
        Some(crate::sema::Feeds::Named(feeds)) => {
            out.extend(feeds.iter().map(|f| opts.base_dir.join(f.file.path())))
        }
        None => {}
    }
    out
}

/// Before any epoch runs: `--save` names a file that is none of the
/// run's inputs (it would be overwritten) in a folder that can be
/// written (else the first epoch's work would be lost).
fn check_save_target(save: &Path, inputs: &[PathBuf]) -> Result<(), Diag> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(input) = inputs.iter().find(|i| same(save, i)) {
        return Err(flag_error(
            format!(
                "`--save {}` would overwrite `{}`, an input of this run",
                save.display(),
                input.display()
            ),
            "save the weights to a file of their own, e.g. `--save model.safetensors`",
        ));
    }
    checkpoint::check_writable(save).map_err(|e| {
        flag_error(
            format!(
                "cannot save to `{}`: {}",
                save.display(),
                crate::pipeline::io_reason(&e)
            ),
            "choose a folder that exists and that you can write to",
        )
    })
}

/// An error about a command-line flag (`--save`, `--resume`, `--seed`):
/// nothing in the source to point at.
fn flag_error(message: String, hint: &str) -> Diag {
    diag::error(code::FILE, message).with_notes(vec![format!("help: {hint}")])
}

fn file_error(path: &Path, e: &std::io::Error) -> Diag {
    diag::error(
        code::FILE,
        format!("cannot write `{}`: {e}", path.display()),
    )
}
