//! The `nnc` command line.

use crate::backend::interp;
use crate::backend::{BackendKind, Engine};
use crate::diag::{self, Diagnostics, SourceMap};
use crate::driver::output;
use crate::ir::Graph;
use crate::pipeline::{self, Compilation, Stage};
use clap::{Parser, Subcommand, ValueEnum};
use cranelift_entity::SecondaryMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "nnc",
    version,
    about = "A compiler for neural networks written close to the math",
    after_help = "Examples:\n  nnc check model.nn\n  nnc compile model.nn --emit ir\n  nnc run examples/neuron.nn --format json"
)]
pub struct Cli {
    /// When to colour diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    /// The most memory a run's tensors may take (e.g. `512M`, `8G`); by
    /// default the memory available on this machine.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, global = true)]
    pub max_memory: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a file: exit 0 if it is valid, else print diagnostics and exit 1.
    #[command(after_help = "Example:\n  nnc check examples/neuron.nn")]
    Check {
        /// The .nn file.
        file: PathBuf,
    },
    /// Compile a file and print a stage of the pipeline.
    #[command(
        after_help = "Examples:\n  nnc compile examples/neuron.nn --emit ast\n  nnc compile examples/neuron.nn --emit ir"
    )]
    Compile {
        /// The .nn file.
        file: PathBuf,
        /// The stage to print.
        #[arg(long, value_enum, default_value_t = Emit::Ir)]
        emit: Emit,
        /// The size of a symbolic dimension, for `--emit clif` (e.g. `--dim B=128`);
        /// a file with a `train` block binds the batch dimension from `batch`.
        #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
    },
    /// Print the loss and its gradient with respect to every parameter.
    #[command(
        after_help = "Examples:\n  nnc grad examples/neuron_train.nn --format json\n  nnc grad model.nn --params weights.safetensors"
    )]
    Grad {
        /// The .nn file: its `train` block's loss, or else an `output loss`.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Parameters to use instead of the file's initialisers.
        #[arg(long)]
        params: Option<PathBuf>,
        /// Seed for parameters initialised at random.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The backend that runs the program.
        #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
        backend: BackendKind,
    },
    /// Start an interactive session.
    #[command(
        after_help = "Example:\n  nnc repl\n  nnc> let x = [0.5, 0.8, 0.2]\n  nnc> sigmoid(sum(x * [0.2, -0.5, 1.0]) + 0.1)\n  0.5\n\nPiped input works too: printf 'sigmoid(0.0)\\n' | nnc repl"
    )]
    Repl,
    /// Train the model described by a file's `train` block.
    #[command(
        after_help = "Examples:\n  nnc train examples/digits_mlp.nn --log metrics.jsonl --save digits.safetensors\n  nnc train examples/digits_mlp.nn --epochs 30 --resume digits.safetensors"
    )]
    Train(TrainArgs),
    /// Time a training step (or the outputs): compile once, warm up, then time runs.
    #[command(
        after_help = "Examples:\n  nnc bench examples/bench/mlp_train.nn --format json\n  nnc bench examples/bench/matmul.nn --dim N=1024 --runs 20"
    )]
    Bench(BenchArgs),
    /// Evaluate a file's `output`s and print them.
    #[command(
        after_help = "Examples:\n  nnc run examples/neuron.nn\n  nnc run examples/losses.nn --format json\n  nnc run examples/gan_mixture.nn --params gan.safetensors"
    )]
    Run {
        /// The .nn file.
        file: PathBuf,
        /// How to print the outputs.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Seed for parameters initialised at random (without a seed of their own)
        /// and for random draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Parameters to use instead of the file's initialisers (weights or a
        /// checkpoint written by `nnc train --save`).
        #[arg(long, value_name = "W.safetensors")]
        params: Option<PathBuf>,
        /// The backend that runs the program.
        #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
        backend: BackendKind,
    },
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The .nn file: a `train` block is timed as a training step, else its outputs.
    pub file: PathBuf,
    /// Timed runs.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// The size of a symbolic dimension (e.g. `--dim B=128`).
    #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The backend to time.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    pub backend: BackendKind,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The .nn file with a `train` block.
    pub file: PathBuf,
    /// Train to this many epochs in all (overrides the file's `epochs`).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// The seed for initialisation, the split and shuffling (overrides the file's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint (weights, optimizer state, position) after every epoch.
    #[arg(long, value_name = "W.safetensors")]
    pub save: Option<PathBuf>,
    /// Continue from a checkpoint written by `--save`.
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// Write one JSON object per epoch to this file.
    #[arg(long, value_name = "metrics.jsonl")]
    pub log: Option<PathBuf>,
    /// The backend that runs the training steps.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    pub backend: BackendKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    Ast,
    Ir,
    /// The IR with the gradient of the loss appended.
    Grad,
    /// The kernels the fusion pass forms (of the training step when the
    /// file has a `train` block, else of the outputs).
    Fused,
    /// The Cranelift IR of each loop kernel, for concrete sizes.
    Clif,
}

/// A byte count, for `--max-memory`.
fn parse_memory(s: &str) -> Result<u64, String> {
    crate::backend::memory::parse_size(s)
}

/// `NAME=SIZE`, for `--dim`.
pub fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (name, size) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=SIZE, e.g. B=128, found `{s}`"))?;
    let size = size
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("`{size}` is not a whole number"))?;
    if size as u64 > crate::ir::shape::MAX_ELEMENTS {
        return Err(format!(
            "{size} is larger than any tensor nnc can hold (2^48 elements)"
        ));
    }
    Ok((name.trim().to_string(), size))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Runs the command line; returns the process exit code (0 success, 1
/// diagnostics). Usage errors exit with 2 inside clap.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal(),
    };
    crate::backend::memory::set_limit(cli.max_memory);
    if let Command::Repl = cli.command {
        return super::repl::run(color);
    }
    match execute(&cli.command) {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.render(color));
            0
        }
        Err(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.render(color));
            1
        }
    }
}

/// What a command printed: stdout text and diagnostics.
pub struct Outcome {
    pub stdout: String,
    pub sources: SourceMap,
    pub diags: Diagnostics,
}

impl Outcome {
    fn render(&self, color: bool) -> String {
        self.diags.render(&self.sources, color)
    }

    pub(super) fn from(c: Compilation, stdout: String) -> Outcome {
        Outcome {
            stdout,
            sources: c.sources,
            diags: c.diags,
        }
    }
}

/// Executes a command; `Err` means the exit code is 1.
pub fn execute(cmd: &Command) -> Result<Outcome, Outcome> {
    match cmd {
        Command::Check { file } => {
            let c = load(file, Stage::Ir)?;
            finish(c, String::new())
        }
        Command::Compile { file, emit, dims } => {
            let stage = match emit {
                Emit::Ast => Stage::Ast,
                Emit::Ir | Emit::Grad | Emit::Fused | Emit::Clif => Stage::Ir,
            };
            let mut c = load(file, stage)?;
            let text = match (emit, &c.ast, &c.graph) {
                (Emit::Ast, Some(a), _) => crate::syntax::print_ast(a),
                (Emit::Ir, _, Some(g)) => crate::ir::print_graph(g),
                (Emit::Grad, _, Some(g)) => {
                    let gg = pipeline::find_loss(g, c.train.as_ref())
                        .and_then(|l| pipeline::grad_graph(g, l));
                    match gg {
                        Ok(gg) => {
                            for w in gg.warnings {
                                c.diags.push(w);
                            }
                            crate::ir::print_graph(&gg.graph)
                        }
                        Err(d) => {
                            c.diags.push(d);
                            String::new()
                        }
                    }
                }
                (Emit::Fused | Emit::Clif, _, Some(g)) => {
                    match backend_text(g, c.train.as_ref(), *emit, dims) {
                        Ok(t) => t,
                        Err(d) => {
                            c.diags.push(d);
                            String::new()
                        }
                    }
                }
                _ => String::new(),
            };
            finish(c, text)
        }
        Command::Grad {
            file,
            format,
            params,
            seed,
            backend,
        } => {
            let mut c = load(file, Stage::Ir)?;
            let Some(g) = c.graph.take() else {
                return Err(Outcome::from(c, String::new()));
            };
            match grad_values(&g, c.train.as_ref(), params.as_deref(), *seed, *backend) {
                Ok((loss, grads, warnings)) => {
                    for w in warnings {
                        c.diags.push(w);
                    }
                    let text = match format {
                        Format::Json => output::grad_json(loss, &grads) + "\n",
                        Format::Text => {
                            let mut all =
                                vec![("loss".to_string(), crate::tensor::Tensor::scalar(loss))];
                            all.extend(grads.into_iter().map(|(n, t)| (format!("grad {n}"), t)));
                            output::text(&all)
                        }
                    };
                    Ok(Outcome::from(c, text))
                }
                Err(d) => {
                    c.diags.push(d);
                    Err(Outcome::from(c, String::new()))
                }
            }
        }
        Command::Train(args) => super::train::command(args),
        Command::Bench(args) => super::bench::command(args),
        Command::Repl => Ok(Outcome {
            stdout: String::new(),
            sources: SourceMap::new(),
            diags: Diagnostics::new(),
        }),
        Command::Run {
            file,
            format,
            seed,
            params,
            backend,
        } => {
            let mut c = load(file, Stage::Ir)?;
            let Some(g) = c.graph.take() else {
                return Err(Outcome::from(c, String::new()));
            };
            let ran = match params {
                None => run_graph(&g, *seed, *backend).map_err(|e| e.to_diag()),
                Some(p) => run_graph_with(&g, *seed, Some(p), *backend),
            };
            match ran {
                Ok(outputs) => {
                    if outputs.is_empty() {
                        c.diags.push(
                            diag::warning("this file declares no outputs, so nothing was printed")
                                .with_notes(vec![
                                    "help: name a result with `output z = ...`".into()
                                ]),
                        );
                    }
                    warn_non_finite(&g, &outputs, &mut c.diags);
                    let text = match format {
                        Format::Text => output::text(&outputs),
                        Format::Json => output::json(&outputs) + "\n",
                    };
                    Ok(Outcome::from(c, text))
                }
                Err(d) => {
                    c.diags.push(d);
                    Err(Outcome::from(c, String::new()))
                }
            }
        }
    }
}

/// The graphs a file compiles to: each training phase's step when it has
/// a `train` block, else the outputs.
pub fn compiled_graphs(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
) -> Result<Vec<(String, Graph)>, crate::diag::Diag> {
    match train {
        Some(t) => Ok(pipeline::train_steps(g, t)?
            .into_iter()
            .map(|p| (p.name, p.step.graph))
            .collect()),
        None => Ok(vec![(String::new(), g.clone())]),
    }
}

/// Binds every symbolic dimension: from `--dim`, from inputs with a
/// default value, and (for a training step) from the batch size.
pub fn bind_dims(
    g: &Graph,
    dims: &[(String, usize)],
    batch: Option<usize>,
) -> Result<SecondaryMap<crate::ir::Sym, Option<usize>>, crate::diag::Diag> {
    let mut syms: SecondaryMap<crate::ir::Sym, Option<usize>> = SecondaryMap::new();
    for info in g.inputs.values() {
        let (Some(c), shape) = (info.default, &info.ty.shape) else {
            continue;
        };
        for (d, &n) in shape.iter().zip(&g.consts[c].shape) {
            if let crate::ir::Dim::Sym(s) = d {
                syms[*s] = Some(n);
            }
        }
    }
    for (name, size) in dims {
        match g.syms.iter().find(|(_, s)| &s.name == name) {
            Some((s, _)) => syms[s] = Some(*size),
            None => {
                let known: Vec<&str> = g.syms.values().map(|s| s.name.as_str()).collect();
                return Err(crate::diag::error(
                    crate::diag::code::UNBOUND_DIM,
                    format!("`--dim {name}=…` names no dimension of this program"),
                )
                .with_notes(vec![format!(
                    "help: its symbolic dimensions are: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )]));
            }
        }
    }
    for (s, info) in g.syms.iter() {
        if syms[s].is_none() {
            match batch {
                Some(b) => syms[s] = Some(b),
                None => {
                    return Err(crate::diag::error(
                        crate::diag::code::UNBOUND_DIM,
                        format!("dimension `{}` has no size", info.name),
                    )
                    .with_notes(vec![format!(
                        "help: give it one with `--dim {}=SIZE`",
                        info.name
                    )]))
                }
            }
        }
    }
    Ok(syms)
}

/// `--emit fused` and `--emit clif`.
fn backend_text(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    emit: Emit,
    dims: &[(String, usize)],
) -> Result<String, crate::diag::Diag> {
    let mut out = String::new();
    for (name, graph) in compiled_graphs(g, train)? {
        if !name.is_empty() {
            out.push_str(&format!("; phase {name}\n"));
        }
        match emit {
            Emit::Fused => out.push_str(&pipeline::print_fused(&pipeline::fuse(&graph))),
            _ => {
                let syms = bind_dims(&graph, dims, train.map(|t| t.batch))?;
                let text = crate::backend::jit::clif(&graph, &syms).map_err(|e| e.to_diag())?;
                out.push_str(&text);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Evaluates a graph's outputs on `backend`; random draws are keyed by
/// `seed`.
pub fn run_graph(
    g: &Graph,
    seed: u64,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, interp::Error> {
    run_with_params(g, seed, interp::init_params(g, seed), backend)
}

/// [`run_graph`] with the parameters (and states) found in `params_file`
/// (by name) instead of their initial values.
pub fn run_graph_with(
    g: &Graph,
    seed: u64,
    params_file: Option<&Path>,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, crate::diag::Diag> {
    let mut params = interp::init_params(g, seed);
    if let Some(p) = params_file {
        let span = g.outputs.first().map(|o| o.span).unwrap_or_default();
        crate::train::restore(g, &mut params, p, span)?;
    }
    run_with_params(g, seed, params, backend).map_err(|e| e.to_diag())
}

fn run_with_params(
    g: &Graph,
    seed: u64,
    mut params: SecondaryMap<crate::ir::ParamId, crate::tensor::Tensor>,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, interp::Error> {
    let mut inputs = SecondaryMap::new();
    if let Some((id, _)) = g
        .inputs
        .iter()
        .find(|(_, i)| i.name == crate::ir::RNG_KEY_INPUT)
    {
        inputs[id] = Some(interp::rng_key(seed, 0));
    }
    let values = Engine::new(backend, g).run(&mut params, &inputs)?;
    Ok(g.outputs
        .iter()
        .map(|o| o.name.clone())
        .zip(values)
        .collect())
}

/// The loss, each parameter's gradient by name, and warnings.
pub type GradValues = (
    f32,
    Vec<(String, crate::tensor::Tensor)>,
    Vec<crate::diag::Diag>,
);

/// The loss and its gradients for the parameters as initialised (or
/// loaded from `params`), with the file's input values.
pub fn grad_values(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    params_file: Option<&Path>,
    seed: u64,
    backend: BackendKind,
) -> Result<GradValues, crate::diag::Diag> {
    let loss = pipeline::find_loss(g, train)?;
    let gg = pipeline::grad_graph(g, loss)?;
    let mut params = interp::init_params(&gg.graph, seed);
    if let Some(p) = params_file {
        let span = g.nodes[loss].span;
        crate::train::restore(&gg.graph, &mut params, p, span)?;
    }
    let inputs = SecondaryMap::new();
    let outs = Engine::new(backend, &gg.graph)
        .run(&mut params, &inputs)
        .map_err(|e| e.to_diag())?;
    let grads = gg
        .grads
        .iter()
        .zip(&outs[1..])
        .map(|((p, _), t)| (gg.graph.params[*p].name.clone(), t.clone()))
        .collect();
    Ok((outs[0].data[0], grads, gg.warnings))
}

fn warn_non_finite(
    g: &Graph,
    outputs: &[(String, crate::tensor::Tensor)],
    diags: &mut Diagnostics,
) {
    for ((name, t), o) in outputs.iter().zip(&g.outputs) {
        if let Some(v) = t.data.iter().find(|v| !v.is_finite()) {
            diags.push(
                diag::warning(format!("output `{name}` contains a non-finite value ({v})"))
                    .with_labels(vec![o.span.primary("computed here")])
                    .with_notes(vec!["note: look for log of 0 or a negative number, division by 0, or overflowing exp".into()]),
            );
        }
    }
}

fn finish(c: Compilation, stdout: String) -> Result<Outcome, Outcome> {
    if c.diags.has_errors() {
        Err(Outcome::from(c, String::new()))
    } else {
        Ok(Outcome::from(c, stdout))
    }
}

/// Reads and compiles a file; a file that cannot be read is an error
/// without a source location.
pub(super) fn load(path: &Path, stage: Stage) -> Result<Compilation, Outcome> {
    match pipeline::read_source(path) {
        Ok(text) => Ok(pipeline::compile(&path.display().to_string(), &text, stage)),
        Err(d) => {
            let mut diags = Diagnostics::new();
            diags.push(d);
            Err(Outcome {
                stdout: String::new(),
                sources: SourceMap::new(),
                diags,
            })
        }
    }
}
