//! `nnc train`: the training loop of [`crate::train`] with a progress bar,
//! one line per epoch and a final summary.

use super::args::{MonitorArg, TrainArgs};
use super::outcome::{load, Outcome};
use crate::pipeline::Stage;
use crate::train::{self, Event, Monitor, Options};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub fn command(args: &TrainArgs) -> Result<Outcome, Outcome> {
    let timeout = std::time::Duration::from_secs_f64(args.worker_timeout);
    let workers = crate::train::dist::world(timeout).map_err(Outcome::failed)?;
    if let (Some(n @ 2..), None) = (args.workers, &workers) {
        return launch(n);
    }
    let Some(comm) = workers else {
        return train(args, None);
    };
    let out = train(args, Some(&*comm));
    // Worker 0 reports for all, before any worker exits: `mpirun` ends
    // the job as soon as one exits with an error, which could cut
    // worker 0's message. The others print nothing and exit with the
    // run's status.
    if comm.rank() == 0 {
        use std::io::{IsTerminal, Write};
        let (Ok(o) | Err(o)) = &out;
        let _ = std::io::stdout().write_all(o.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        eprint!("{}", o.render(std::io::stderr().is_terminal()));
    }
    comm.all_reduce_sum(&mut [0.0]);
    match out {
        Ok(_) => Ok(Outcome::empty()),
        Err(_) => Err(Outcome::empty()),
    }
}

/// `--workers N`: this command again on N processes under `mpirun`, each
/// with an equal share of the cores.
fn launch(n: usize) -> Result<Outcome, Outcome> {
    if !cfg!(feature = "mpi") {
        return Err(Outcome::failed(
            crate::diag::error(crate::diag::code::DEVICE, format!("`--workers {n}` trains on {n} processes with MPI, and this nnc was built without it"))
                .with_notes(vec!["help: build with `cargo build --release --features mpi` (Debian: libopenmpi-dev openmpi-bin libclang-dev)".into()]),
        ));
    }
    let mut argv: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.as_str() {
            "--workers" => skip = true,
            _ if a.starts_with("--workers=") => {}
            _ => argv.push(a),
        }
    }
    let exe = std::env::current_exe().map_err(|e| {
        Outcome::failed(crate::diag::error(
            crate::diag::code::FILE,
            format!("cannot find this program to start it {n} times: {e}"),
        ))
    })?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads =
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| (cores / n).max(1).to_string());
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["-n", &n.to_string(), "--oversubscribe"]);
    if nix_root() {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["-x", &format!("RAYON_NUM_THREADS={threads}")]);
    cmd.arg(exe).args(argv);
    match cmd.status() {
        Ok(s) if s.success() => Ok(Outcome::empty()),
        Ok(s) => Err(Outcome::failed(crate::diag::error(
            crate::diag::code::INPUT,
            format!("the {n} workers stopped (mpirun: {s})"),
        ))),
        Err(e) => Err(Outcome::failed(
            crate::diag::error(
                crate::diag::code::DEVICE,
                format!("cannot start `mpirun`: {e}"),
            )
            .with_notes(vec!["help: install Open MPI (Debian: openmpi-bin)".into()]),
        )),
    }
}

/// Whether this process runs as root (Open MPI then wants to be told).
fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

fn train(
    args: &TrainArgs,
    workers: Option<&dyn crate::train::dist::Comm>,
) -> Result<Outcome, Outcome> {
    let mut c = load(&args.file, Stage::Ir)?;
    let (Some(g), Some(mut spec)) = (c.graph.take(), c.train.take()) else {
        if !c.diags.has_errors() {
            c.diags.push(
                crate::diag::error(crate::diag::code::INPUT, "this file has no `train` block")
                    .with_notes(vec!["help: add `train Model { loss = ...; data = csv(\"...\"); optimizer = adam(lr = 1e-3) }`".into()]),
            );
        }
        return Err(Outcome::from(c, String::new()));
    };
    // Overrides of the file's settings, for every phase.
    if let Some(text) = &args.optimizer {
        let file = c.sources.add("--optimizer", text.clone());
        let parsed = crate::syntax::parse_expr(file, text, &mut c.diags);
        match parsed.map(|e| crate::sema::optimizer_of(&e)) {
            Some(Ok(o)) => {
                spec.optimizer = o;
                for ph in &mut spec.phases {
                    ph.optimizer = o;
                }
            }
            Some(Err(d)) => {
                c.diags.push(d);
                return Err(Outcome::from(c, String::new()));
            }
            None => return Err(Outcome::from(c, String::new())),
        }
    }
    if let Some(lr) = args.lr {
        spec.optimizer.lr = lr;
        for ph in &mut spec.phases {
            ph.optimizer.lr = lr;
        }
    }
    if let Some(b) = args.batch {
        spec.batch = b;
    }
    if let Some(d) = check_overrides(args) {
        c.diags.push(d);
        return Err(Outcome::from(c, String::new()));
    }
    let opts = Options {
        epochs: args.epochs,
        seed: args.seed,
        save: args.save.clone(),
        resume: args.resume.clone(),
        log: args.log.clone(),
        backend: args.backend,
        base_dir: args
            .file
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
        source: Some(args.file.clone()),
        monitor: match args.monitor {
            None => Monitor::Loss,
            Some(MonitorArg::ValLoss) => Monitor::ValLoss,
            Some(MonitorArg::ValAccuracy) => Monitor::ValAccuracy,
            Some(MonitorArg::TrainLoss) => Monitor::TrainLoss,
        },
        save_best: args.save_best.clone(),
        patience: args.patience,
        min_delta: args.min_delta,
        save_every: args.save_every,
        start: Vec::new(),
        stop: None,
        bucket_kib: Some(args.bucket_kib as usize),
    };
    // Ctrl-C: the first finishes the step in progress, saves (with
    // `--save`) and stops; a second exits at once.
    let _ = ctrlc::set_handler(|| {
        if train::interrupt() > 1 {
            std::process::exit(130);
        }
    });
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} loss {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let plot = args
        .plot
        .as_deref()
        .map(|p| super::plot::Live::new(p, args.log.as_deref()));
    let mut plot = match plot.transpose() {
        Ok(p) => p,
        Err(d) => {
            c.diags.push(d);
            return Err(Outcome::from(c, String::new()));
        }
    };
    let started = Instant::now();
    let mut epochs_total = 0;
    let mut resumed_at = 0;
    let mut running = 0.0f32;
    let mut steps = 0u64;
    let result = train::run_on(&g, &spec, &opts, workers, &mut |ev| match ev {
        Event::Start {
            steps_per_epoch,
            first_epoch,
            epochs,
            rows,
        } => {
            epochs_total = epochs;
            println!("{}", header(args, &spec, rows, steps_per_epoch, epochs));
            resumed_at = first_epoch;
            bar.set_length(steps_per_epoch as u64);
            bar.set_prefix(format!("{}/{epochs}", first_epoch + 1));
            if first_epoch > 0 {
                bar.println(format!("resuming after epoch {first_epoch}"));
            }
        }
        Event::Step { loss } => {
            steps += 1;
            running = if steps == 1 {
                loss
            } else {
                0.9 * running + 0.1 * loss
            };
            bar.set_message(format!("{running:.4}"));
            bar.inc(1);
        }
        Event::Epoch(s) => {
            if let Some(p) = &mut plot {
                p.epoch(s);
            }
            let mut line = format!(
                "epoch {}/{}  train_loss {:.4}",
                s.epoch, epochs_total, s.train_loss
            );
            for (name, v) in &s.phase_losses {
                line.push_str(&format!("  {name} {v:.4}"));
            }
            if let Some(v) = s.val_loss {
                line.push_str(&format!("  val_loss {v:.4}"));
            }
            if let Some(a) = s.val_accuracy {
                line.push_str(&format!("  val_accuracy {a:.4}"));
            }
            for (name, v) in &s.metrics {
                line.push_str(&format!("  {name} {v:.4}"));
            }
            bar.suspend(|| println!("{line}"));
            bar.reset();
            bar.set_prefix(format!(
                "{}/{epochs_total}",
                (s.epoch + 1).min(epochs_total)
            ));
        }
    });
    bar.finish_and_clear();
    if let Some(d) = plot.and_then(super::plot::Live::finish) {
        c.diags.push(d);
    }
    match result {
        Ok(summary) => {
            for w in summary.warnings {
                c.diags.push(w);
            }
            let mut text = String::new();
            if let Some(last) = summary.epochs.last() {
                text.push_str(&format!(
                    "trained {} epoch{} in {:.1}s: train_loss {:.4}",
                    summary.epochs.len(),
                    if summary.epochs.len() == 1 { "" } else { "s" },
                    started.elapsed().as_secs_f64(),
                    last.train_loss
                ));
                if let Some(v) = last.val_loss {
                    text.push_str(&format!(", val_loss {v:.4}"));
                }
                if let Some(a) = last.val_accuracy {
                    text.push_str(&format!(", val_accuracy {a:.4}"));
                }
                text.push('\n');
            } else if summary.interrupted.is_none() {
                text.push_str(&nothing_trained(args, resumed_at, epochs_total));
            }
            if let Some((epoch, step)) = summary.interrupted {
                let file = args.file.display();
                text.push_str(&format!(
                    "interrupted in epoch {epoch}, after step {step}\n"
                ));
                text.push_str(&match &args.save {
                    Some(p) => format!(
                        "saved {0}: continue with `nnc train {file} --resume {0} --save {0}`\n",
                        p.display()
                    ),
                    None => {
                        "nothing saved (`--save W.safetensors` keeps a checkpoint to resume from)\n"
                            .into()
                    }
                });
                return Ok(Outcome::from(c, text));
            }
            if let Some(m) = &summary.confusion {
                text.push_str(&confusion_text(m));
            }
            if let Some(at) = summary.stopped_at {
                if let Some((name, b)) = summary.best {
                    text.push_str(&format!(
                        "stopped early after epoch {at}: {name} has not improved for {} epochs\n",
                        b.stale
                    ));
                }
            }
            if let Some((name, b)) = summary.best {
                let v = if name == "val_accuracy" {
                    -b.value
                } else {
                    b.value
                };
                text.push_str(&format!("best epoch {}: {name} {v:.4}\n", b.epoch));
            }
            if let Some((n, steps, comm)) = summary.comm {
                text.push_str(&format!(
                    "{n} workers: the steps took {steps:.2}s on worker 0, {comm:.2}s of it in the all-reduce ({:.0}%)\n",
                    100.0 * comm / steps.max(1e-9)
                ));
            }
            if let (Some(p), false) = (&args.save, summary.epochs.is_empty()) {
                text.push_str(&format!("saved {}\n", p.display()));
            }
            // Only an epoch of this run was written (a resumed run's
            // best may be older).
            if let (Some(p), Some((_, b))) = (
                &args.save_best,
                summary.best.filter(|(_, b)| b.epoch > resumed_at),
            ) {
                text.push_str(&format!("saved epoch {} to {}\n", b.epoch, p.display()));
            }
            Ok(Outcome::from(c, text))
        }
        Err(d) => {
            c.diags.push(d);
            Err(Outcome::from(c, String::new()))
        }
    }
}

/// What a run that trained no epoch did: `--epochs` counts every epoch,
/// those of a resumed checkpoint too, so `--epochs 0`, or a checkpoint
/// already at `--epochs`, trains nothing and evaluates nothing; `--save`
/// still writes the weights it started from (the initial ones, or the
/// checkpoint's state unchanged).
fn nothing_trained(args: &TrainArgs, resumed_at: usize, epochs: usize) -> String {
    let limit = match args.epochs {
        Some(n) => format!("--epochs {n}"),
        None => format!("the file's `epochs = {epochs}`"),
    };
    let mut text = match &args.resume {
        Some(r) => format!(
            "nothing trained: `{}` is at epoch {resumed_at}, and {limit} counts every epoch, those before resuming too (--epochs {} trains one more)\n",
            r.display(),
            resumed_at + 1
        ),
        None => format!("nothing trained: {limit} asks for no epoch\n"),
    };
    match (&args.save, &args.resume) {
        (Some(p), Some(_)) => text.push_str(&format!(
            "saved {}: the checkpoint's state, unchanged\n",
            p.display()
        )),
        (Some(p), None) => text.push_str(&format!(
            "saved {}: the initial weights, at epoch 0\n",
            p.display()
        )),
        (None, _) => {}
    }
    text
}

/// Overrides that cannot work, as a usage diagnostic.
fn check_overrides(args: &TrainArgs) -> Option<crate::diag::Diag> {
    let bad = |msg: String, help: &str| {
        Some(
            crate::diag::error(crate::diag::code::INPUT, msg)
                .with_notes(vec![format!("help: {help}")]),
        )
    };
    if let Some(lr) = args.lr.filter(|l| !l.is_finite() || *l < 0.0) {
        return bad(
            format!("`--lr {lr}` is not a learning rate"),
            "give a finite number ≥ 0, e.g. --lr 0.001",
        );
    }
    if args.batch == Some(0) {
        return bad("`--batch 0`: a step needs a row".into(), "give 1 or more");
    }
    match (args.save_every, &args.save) {
        (Some(0), _) => {
            return bad(
                "`--save-every 0`".into(),
                "give a number of steps, 1 or more",
            )
        }
        (Some(_), None) => {
            return bad(
                "`--save-every` writes the `--save` checkpoint, and no `--save` is given".into(),
                "add `--save W.safetensors`",
            )
        }
        _ => {}
    }
    if !args.min_delta.is_finite() || args.min_delta < 0.0 {
        return bad(
            format!(
                "`--min-delta {}` must be a finite number ≥ 0",
                args.min_delta
            ),
            "e.g. --min-delta 0.001",
        );
    }
    None
}

/// The run's first line: what it trains and how, each setting given on
/// the command line marked as such.
fn header(
    args: &TrainArgs,
    spec: &crate::sema::TrainSpec,
    (train_rows, val_rows): (usize, usize),
    steps_per_epoch: usize,
    epochs: usize,
) -> String {
    let flag = |given: bool, name: &str| match given {
        true => format!(" ({name})"),
        false => String::new(),
    };
    let optimizers: Vec<String> = match spec.phases.is_empty() {
        true => vec![spec.optimizer.describe()],
        false => spec
            .phases
            .iter()
            .map(|p| format!("{} {}", p.name, p.optimizer.describe()))
            .collect(),
    };
    let from_flags = match (args.optimizer.is_some(), args.lr.is_some()) {
        (true, true) => " (--optimizer, --lr)",
        (true, false) => " (--optimizer)",
        (false, true) => " (--lr)",
        (false, false) => "",
    };
    let plural = |n: usize, what: &str| match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    };
    format!(
        "training {}: {}{from_flags}, batch {}{}, {}{}, {} ({val_rows} held out), {} an epoch, seed {}{}",
        args.file.display(),
        optimizers.join(", "),
        spec.batch,
        flag(args.batch.is_some(), "--batch"),
        plural(epochs, "epoch"),
        flag(args.epochs.is_some(), "--epochs"),
        plural(train_rows, "row"),
        plural(steps_per_epoch, "step"),
        args.seed.unwrap_or(spec.seed),
        flag(args.seed.is_some(), "--seed"),
    )
}

/// The confusion matrix as a table: a row per true class, a column per
/// predicted one.
fn confusion_text(m: &[Vec<usize>]) -> String {
    let width = m
        .iter()
        .flatten()
        .map(|n| n.to_string().len())
        .max()
        .unwrap_or(1)
        .max(m.len().saturating_sub(1).to_string().len());
    let mut s = String::from(
        "confusion matrix on the validation rows (row: true class, column: predicted)\n",
    );
    s.push_str(&format!("{:>w$}", "", w = width + 2));
    for c in 0..m.len() {
        s.push_str(&format!(" {c:>width$}"));
    }
    s.push('\n');
    for (t, row) in m.iter().enumerate() {
        s.push_str(&format!("{t:>w$}", w = width + 2));
        for n in row {
            s.push_str(&format!(" {n:>width$}"));
        }
        s.push('\n');
    }
    s
}
