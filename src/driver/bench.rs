//! `nnc bench`: compiles a file once, runs warm-up steps, then times `runs`
//! steps. A file with a `train` block is timed as a training step (every
//! phase, forward, backward and update); any other file as an evaluation
//! of its outputs. Inputs without a value get seeded random data of their
//! shape; symbolic dimensions take their size from `--dim` or, for a
//! training step, from `batch`.
//!
//! The inputs are loaded once, when the step is prepared, and stay in
//! place: the timed runs are the compiled step alone, as the peers' (which
//! keep their arrays on the device) are.
//!
//! `compile_ms` is from the source text to a compiled step ready to run:
//! parsing, checking, lowering, autodiff and optimizer, fusion and code
//! generation (the JIT compiles when the step is prepared, not on the first
//! timed run). Drawing the parameters' initial values is not compilation
//! (a model loaded from a checkpoint skips it): it is timed apart, as
//! `init_ms`.

use super::args::{BenchArgs, Format};
use super::graphs::{bind_dims, compiled_graphs};
use super::outcome::{load, Outcome};
use crate::backend::{interp, Engine};
use crate::ir::{Graph, InputId};
use crate::pipeline::Stage;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// The most runs `--min-time` adds up to (as the peers' harness).
const MAX_RUNS: usize = 100_000;

pub fn command(args: &BenchArgs) -> Result<Outcome, Outcome> {
    let started = Instant::now();
    let mut c = load(&args.file, Stage::Ir)?;
    let Some(g) = c.graph.take() else {
        return Err(Outcome::from(c, String::new()));
    };
    let train = c.train.take();
    let fail = |mut c: crate::pipeline::Compilation, d: crate::diag::Diag| {
        c.diags.push(d);
        Err(Outcome::from(c, String::new()))
    };
    let graphs = match compiled_graphs(&g, train.as_ref()) {
        Ok(gs) => gs,
        Err(d) => return fail(c, d),
    };
    // `compiled_graphs` gives the outputs' graph, or one step per phase of
    // a `train` block, which has at least one: never empty.
    let last = &graphs.last().expect("one graph at least").1;
    let drawn = Instant::now();
    let mut params = interp::init_params(last, 0);
    let init = drawn.elapsed();
    // Making up input data is not compilation either: the clock stops
    // meanwhile.
    let front = started.elapsed() - init;
    let mut feeds = Vec::new();
    for (_, graph) in &graphs {
        let syms = match bind_dims(graph, &args.dims, train.as_ref().map(|t| t.batch)) {
            Ok(s) => s,
            Err(d) => return fail(c, d),
        };
        match random_inputs(graph, &syms) {
            Ok(f) => feeds.push(f),
            Err(e) => return fail(c, e.to_diag()),
        }
    }
    let mut engines: Vec<Engine> = graphs
        .iter()
        .map(|(_, graph)| Engine::new(args.backend, graph))
        .collect();
    let restarted = Instant::now();
    for (e, inputs) in engines.iter_mut().zip(&feeds) {
        if let Err(err) = e.prepare(&params, inputs) {
            return fail(c, err.to_diag());
        }
    }
    let compile_ms = (front + restarted.elapsed()).as_secs_f64() * 1e3;
    let init_ms = init.as_secs_f64() * 1e3;
    let is_train = train.is_some();
    // A training step runs as `nnc train` runs it: subnormals flushed
    // unless the user said otherwise.
    let _training = is_train.then(crate::backend::jit::subnormal::training);
    let mut step = |params: &mut SecondaryMap<_, Tensor>| -> Result<(), interp::Error> {
        for (e, inputs) in engines.iter_mut().zip(&feeds) {
            e.again(params, inputs, is_train)?;
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        if let Err(e) = step(&mut params) {
            return fail(c, e.to_diag());
        }
    }
    let mut times = Vec::with_capacity(args.runs);
    let mut total_ms = 0.0;
    while times.len() < args.runs.max(1)
        || (total_ms < args.min_time * 1e3 && times.len() < MAX_RUNS)
    {
        let t = Instant::now();
        if let Err(e) = step(&mut params) {
            return fail(c, e.to_diag());
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        total_ms += ms;
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let (min, max) = (times[0], times[times.len() - 1]);
    let planned: Option<u64> = engines
        .iter()
        .map(Engine::planned_bytes)
        .try_fold(0, |acc, b| b.map(|b| acc + b));
    let peak_rss = peak_rss_bytes();
    let text = match args.format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({
                "compile_ms": round3(compile_ms),
                "init_ms": round3(init_ms),
                "median_ms": round3(median),
                "min_ms": round3(min),
                "max_ms": round3(max),
                "runs": times.len(),
                "planned_bytes": planned,
                "peak_rss_bytes": peak_rss,
            })
        ),
        Format::Text => format!(
            "{} ({}, {:?} backend): compile {compile_ms:.1} ms (and {init_ms:.1} ms drawing the parameters); {} runs: median {median:.3} ms, min {min:.3} ms, max {max:.3} ms; planned {}, peak resident {}\n",
            args.file.display(),
            if is_train { "training step" } else { "outputs" },
            args.backend,
            times.len(),
            planned.map_or_else(|| "no buffers (interpreter)".to_string(), mib),
            peak_rss.map_or_else(|| "unknown".to_string(), mib),
        ),
    };
    Ok(Outcome::from(c, text))
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The process's peak resident memory so far (`VmHWM` in
/// `/proc/self/status`; `None` where there is no such file).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Seeded uniform [0, 1) data for every input without a default value
/// (the hidden random key gets a fixed key).
/// Sizes are checked and the inputs' bytes held to the memory budget
/// before anything is allocated.
fn random_inputs(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
) -> Result<SecondaryMap<InputId, Option<Tensor>>, interp::Error> {
    let mut bound = syms.clone();
    for s in g.syms.keys() {
        bound[s] = Some(syms[s].unwrap_or(1));
    }
    let mut shapes = Vec::new();
    let mut budget = crate::exec::memory::Budget::default();
    for (i, info) in g.inputs.iter() {
        if info.default.is_some() || info.name == crate::ir::RNG_KEY_INPUT {
            continue;
        }
        let shape = crate::exec::bind::concrete_shape(g, &bound, &info.ty.shape, info.span)?;
        budget.add(shape.iter().product(), || info.name.clone(), info.span);
        shapes.push((i, shape));
    }
    budget.check()?;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let mut inputs = SecondaryMap::new();
    for (i, info) in g.inputs.iter() {
        if info.name == crate::ir::RNG_KEY_INPUT {
            inputs[i] = Some(interp::rng_key(0, 0));
        }
    }
    for (i, shape) in shapes {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| rng.gen::<f32>()).collect();
        inputs[i] = Some(Tensor::new(shape, data));
    }
    Ok(inputs)
}
