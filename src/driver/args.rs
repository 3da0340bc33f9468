//! The command line's arguments (clap): the subcommands and their flags.

use crate::backend::BackendKind;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "nnc",
    version,
    about = "A compiler for neural networks written close to the math",
    after_help = "Examples:\n  nnc check model.nn\n  nnc run examples/neuron.nn --format json\n  nnc train examples/iris.nn --save iris.safetensors --log metrics.jsonl\n  nnc predict examples/iris.nn --params iris.safetensors --data new.csv -o predictions.csv\n  nnc compile model.nn --emit ir"
)]
pub struct Cli {
    /// When to colour diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    /// The most memory a run's tensors may take (e.g. `512M`, `8G`); by
    /// default the memory available on this machine.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, global = true)]
    pub max_memory: Option<u64>,
    /// The OpenCL device for `--backend opencl`, by its number in `nnc
    /// devices` (also `NNC_OPENCL_DEVICE`); by default the first GPU, else
    /// the first device.
    #[arg(long, value_name = "N", global = true)]
    pub device: Option<usize>,
    /// Run the JIT's programs with subnormal floats flushed to zero (the
    /// CPU's FTZ and DAZ modes; also `NNC_FLUSH_SUBNORMALS=1`): results
    /// below 2^-126 become 0 and such inputs count as 0, where on some
    /// CPUs each costs many times a normal operation (decaying gradients
    /// and a confident softmax reach them). The default when training
    /// (`train`, and `bench` of a training step); otherwise the JIT keeps
    /// them, as the interpreter does.
    #[arg(long, global = true, conflicts_with = "keep_subnormals")]
    pub flush_subnormals: bool,
    /// Keep subnormal floats when training too (also
    /// `NNC_FLUSH_SUBNORMALS=0`): the JIT then computes what the
    /// interpreter does, at the cost above.
    #[arg(long, global = true)]
    pub keep_subnormals: bool,
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
    // `display_order`: the help lists the commands in the order of a
    // workflow.
    #[command(
        display_order = 0,
        after_help = "Example:\n  nnc check examples/neuron.nn"
    )]
    Check {
        /// The .nn file.
        file: PathBuf,
    },
    /// Compile a file into a shared library and its C header, or print a
    /// stage of the pipeline (`--emit`).
    #[command(
        display_order = 7,
        after_help = "Examples:\n  nnc compile model.nn --dim B=1          writes model.so and model.h\n  nnc compile model.nn --params W.safetensors -o lib/digits.so --dim B=64\n  nnc compile examples/neuron.nn --emit ir\n  nnc compile examples/xor.nn --emit dot | dot -Tsvg > xor.svg"
    )]
    Compile {
        /// The .nn file.
        file: PathBuf,
        /// Print this stage instead of writing a library.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// The size of a symbolic dimension: one (`--dim B=128`) fixes it
        /// at compile time; several (`--dim B=1,8,32`) make it an argument
        /// of the library's functions, taking any of those sizes. A batch
        /// given none takes any size at run time (when each row is
        /// computed alone; a `train` step keeps its `batch`).
        /// `--emit clif` and `--emit opencl` take one size each (a file with
        /// a `train` block binds the batch dimension from `batch`).
        #[arg(long = "dim", value_name = "NAME=SIZE[,SIZE…]", value_parser = parse_dim_sizes)]
        dims: Vec<(String, Vec<usize>)>,
        /// The library to write, its kind by the extension: `.so` (shared),
        /// `.a` (static) or `.o` (an object); default: the file's name with
        /// `.so` in the current folder. The header goes beside it (`.h`).
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: Option<PathBuf>,
        /// The model's name, the prefix of every exported symbol (default:
        /// the file's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Weights to embed (a safetensors file, as `nnc train --save`
        /// writes) instead of the file's initialisers.
        #[arg(long, value_name = "W.safetensors")]
        params: Option<PathBuf>,
        /// The CPU the library's code is compiled for: a level (x86-64-v2,
        /// x86-64-v3, x86-64-v4), a CPU name (znver3, skylake, …), or
        /// `native` (this machine's).
        /// (Default: x86-64-v3 on x86-64, the baseline elsewhere.)
        #[arg(long, value_name = "CPU")]
        target_cpu: Option<String>,
        /// Compile for another architecture (`aarch64-unknown-linux-gnu`):
        /// writes the kernels' object (`-o NAME.o`), the wrappers' C source
        /// and the header, to build with that target's C compiler and nnc
        /// runtime.
        #[arg(long, value_name = "TRIPLE")]
        target: Option<String>,
        /// Keep the generated C file and object beside the library.
        #[arg(long)]
        keep_temps: bool,
    },
    /// Write a model's inference graph (its `train` block's `predict`, or
    /// its outputs) as an ONNX model, for ONNX Runtime, tract and other
    /// ONNX tools.
    #[command(
        display_order = 7,
        after_help = "Examples:\n  nnc train examples/iris.nn --save iris.safetensors\n  nnc export examples/iris.nn --params iris.safetensors -o iris.onnx\n  nnc export model.nn --params W.safetensors -o model.onnx --dim B=1\n\nThe model is opset 17. Its inputs and outputs are named as in the file\n(`Iris.x`, `predict`), its weights are initializers named after the\nparameters, and a symbolic dimension stays a named one unless --dim\nfixes it. A `train` block's `scale` is part of the model: it reads raw\nfeatures, as `nnc predict` does."
    )]
    Export(ExportArgs),
    /// Print the loss and its gradient with respect to every parameter.
    #[command(
        display_order = 2,
        after_help = "Examples:\n  nnc grad examples/neuron_train.nn --format json\n  nnc grad model.nn --params weights.safetensors"
    )]
    Grad {
        /// The .nn file: its `train` block's loss, or else an `output loss`.
        file: PathBuf,
        /// How to print the loss and the gradients: `text`, a line each,
        /// or `json`, one object `{"loss": L, "grads": {"NAME": {"shape":
        /// [...], "data": [...]}, ...}}`.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Parameters to use instead of the file's initialisers (weights or a
        /// checkpoint written by `nnc train --save`).
        #[arg(long, value_name = "W.safetensors")]
        params: Option<PathBuf>,
        /// Seed for parameters initialised at random.
        #[arg(long, value_name = "S", default_value_t = 0)]
        seed: u64,
        /// Feed the loss N rows of the `train` block's data (the first
        /// batch training would take) instead of the inputs' values.
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// The backend that runs the program.
        #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
        backend: BackendKind,
    },
    /// Start an interactive session.
    #[command(
        display_order = 9,
        after_help = "Example:\n  nnc repl\n  nnc> let x = [0.5, 0.8, 0.2]\n  nnc> sigmoid(sum(x * [0.2, -0.5, 1.0]) + 0.1)\n  0.5\n\nPiped input works too: printf 'sigmoid(0.0)\\n' | nnc repl"
    )]
    Repl,
    /// List the OpenCL devices `--backend opencl` can run on.
    #[command(
        display_order = 10,
        after_help = "Example:\n  nnc devices\n  nnc run model.nn --backend opencl --device 1"
    )]
    Devices,
    /// Train the model described by a file's `train` block.
    #[command(
        display_order = 3,
        after_help = "Examples:\n  nnc train examples/digits_mlp.nn --log metrics.jsonl --save digits.safetensors\n  nnc train examples/digits_mlp.nn --epochs 30 --resume digits.safetensors\n  nnc train examples/iris.nn --lr 0.005 --patience 5 --save-best best.safetensors"
    )]
    Train(TrainArgs),
    /// Apply a model to every row of a data file: its `train` block's
    /// `predict` (or its outputs), one row of predictions per input row.
    #[command(
        display_order = 5,
        after_help = "Examples:\n  nnc train examples/iris.nn --save iris.safetensors\n  nnc predict examples/iris.nn --params iris.safetensors --data new.csv -o predictions.csv\n  nnc predict examples/digits_mlp.nn --params digits.safetensors --data x.npy -o p.npy"
    )]
    Predict(PredictArgs),
    /// Draw a training log's curves: the loss and every metric per epoch,
    /// training beside validation, as an SVG or PNG picture.
    #[command(
        display_order = 4,
        after_help = "Examples:\n  nnc train examples/iris.nn --log metrics.jsonl\n  nnc plot metrics.jsonl -o curves.svg\n  nnc train examples/iris.nn --plot curves.png   (redrawn as it trains)"
    )]
    Plot(PlotArgs),
    /// Time a training step (or the outputs): compile once, warm up, then time runs.
    #[command(
        display_order = 8,
        after_help = "Examples:\n  nnc bench examples/bench/mlp_train.nn --format json\n  nnc bench examples/bench/matmul.nn --dim N=1024 --runs 20"
    )]
    Bench(BenchArgs),
    /// Show a model's layers (output shape, parameters, FLOPs and
    /// activation memory per example) with totals, and the memory of a
    /// `train` block's step at its batch size.
    #[command(
        display_order = 6,
        after_help = "Examples:\n  nnc summary examples/iris.nn\n  nnc summary examples/lenet_mnist.nn --batch 128\n  nnc summary model.nn --dim B=32 --format json"
    )]
    Summary(super::summary::SummaryArgs),
    /// Translate an ONNX model into a `.nn` file (one `let` per node,
    /// the stdlib's layers where it recognises them) and its weights into
    /// a safetensors file.
    #[command(
        display_order = 11,
        after_help = "Examples:\n  nnc import mlp.onnx -o mlp.nn\n  nnc import lenet.onnx -o lenet.nn --params-out lenet.safetensors\n  nnc run lenet.nn --params lenet.safetensors --input x=images.npy"
    )]
    Import(ImportArgs),
    /// Evaluate a file's `output`s and print them.
    #[command(
        display_order = 1,
        after_help = "Examples:\n  nnc run examples/neuron.nn\n  nnc run examples/losses.nn --format json\n  nnc run examples/gan_mixture.nn --params gan.safetensors\n  nnc run examples/iris.nn --params iris.safetensors --input x=rows.npy"
    )]
    Run {
        /// The .nn file.
        file: PathBuf,
        /// How to print the outputs: `text`, a line each, or `json`, one
        /// object `{"outputs": {"NAME": {"shape": [...], "data": [...]}, ...}}`.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Seed for parameters initialised at random (without a seed of their own)
        /// and for random draws.
        #[arg(long, value_name = "S", default_value_t = 0)]
        seed: u64,
        /// Parameters to use instead of the file's initialisers (weights or a
        /// checkpoint written by `nnc train --save`).
        #[arg(long, value_name = "W.safetensors")]
        params: Option<PathBuf>,
        /// Feed an input from a file: a .npy array (its shape) or a CSV
        /// (the rows after the header, [rows, columns]); the input by its
        /// name (`x`, or `Model.x`). The `train` block's features input
        /// gets the block's `scale`. A file with no outputs but a `train`
        /// block's `predict` runs that.
        #[arg(long = "input", value_name = "NAME=FILE", value_parser = parse_input)]
        inputs: Vec<(String, PathBuf)>,
        /// The backend that runs the program.
        #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
        backend: BackendKind,
    },
}

/// `NAME=FILE`, for `--input`.
fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, f)) if !n.trim().is_empty() && !f.is_empty() => {
            Ok((n.trim().to_string(), PathBuf::from(f)))
        }
        _ => Err(format!("expected NAME=FILE, e.g. x=rows.npy, found `{s}`")),
    }
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The ONNX model (`.onnx`, as `torch.onnx.export` writes it).
    pub model: PathBuf,
    /// The `.nn` file to write.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: PathBuf,
    /// The weights file to write (safetensors); by default the `.nn`
    /// file's path with the extension `.safetensors`.
    #[arg(long = "params-out", value_name = "W.safetensors")]
    pub params_out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// The log: one JSON object per epoch, as `nnc train --log` writes.
    pub log: PathBuf,
    /// The picture to write, its kind by the extension: `.svg` or `.png`.
    /// A panel per figure, `train_X` and `val_X` on one (`X`).
    #[arg(short = 'o', long = "output", value_name = "PATH", value_parser = super::plot::parse_picture)]
    pub output: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The .nn file: a `train` block is timed as a training step, else its outputs.
    pub file: PathBuf,
    /// Timed runs.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub warmup: usize,
    /// Keep timing runs, past `--runs`, until they add up to this many
    /// seconds (at most 100000 runs): the peers' benchmarks time their
    /// inference so (`../shared/bench/common.py`, `min_time=0.5`).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, value_parser = parse_seconds)]
    pub min_time: f64,
    /// The size of a symbolic dimension (e.g. `--dim B=128`).
    #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// How to print the timings: `text`, one line, or `json`, one object
    /// `{"compile_ms": C, "init_ms": I, "median_ms": M, "min_ms": A,
    /// "max_ms": B, "runs": N, "planned_bytes": P, "peak_rss_bytes": R}`
    /// (times in milliseconds, `init_ms` the parameters' initial values
    /// drawn, not counted in `compile_ms`; `planned_bytes` is null on the
    /// interpreter).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The backend to time.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    pub backend: BackendKind,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The .nn file: a `train` block's `predict`, else the outputs.
    pub file: PathBuf,
    /// The weights (as `nnc train --save` writes them); without, the
    /// parameters' initial values (untrained: a warning says so).
    #[arg(long, value_name = "W.safetensors")]
    pub params: Option<PathBuf>,
    /// The ONNX file to write (default: the file's name with `.onnx`, in
    /// the current folder).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Fix a symbolic dimension's size (`--dim B=1`); the others stay
    /// named dimensions of the model.
    #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// Seed for parameters initialised at random, without `--params`.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// The .nn file: a `train` block's `predict`, else the outputs.
    pub file: PathBuf,
    /// The weights (as `nnc train --save` writes them); without, the
    /// file's initialisers.
    #[arg(long, value_name = "W.safetensors")]
    pub params: Option<PathBuf>,
    /// The rows: a CSV with a header (the columns the model was trained
    /// on; the label column, when there, is set apart and the accuracy
    /// printed) or a .npy array [N, ...]. The `train` block's `scale`
    /// applies.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Where to write the predictions: .csv (a `class` column for a
    /// classifier, then the values), .jsonl or .npy; default: CSV on
    /// standard output.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Rows per run (default: the `train` block's batch, else 256).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// The backend that runs the model.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    pub backend: BackendKind,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The .nn file with a `train` block.
    pub file: PathBuf,
    /// Train to this many epochs in all, those of a resumed checkpoint
    /// included (overrides the file's `epochs`).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// The seed for initialisation, the split and shuffling (overrides the file's).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Write a checkpoint (weights, optimizer state, position) after every epoch.
    #[arg(long, value_name = "W.safetensors")]
    pub save: Option<PathBuf>,
    /// Continue from a checkpoint written by `--save`.
    #[arg(long, value_name = "W.safetensors")]
    pub resume: Option<PathBuf>,
    /// Write one JSON object per epoch to this file.
    #[arg(long, value_name = "metrics.jsonl")]
    pub log: Option<PathBuf>,
    /// Draw the curves (as `nnc plot` does) to this .svg or .png as
    /// epochs end (at most once a second, and after the last); a resumed
    /// run takes the epochs before from `--log`.
    #[arg(long, value_name = "curves.png", value_parser = super::plot::parse_picture)]
    pub plot: Option<PathBuf>,
    /// The learning rate of every optimizer (overrides the file's).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// Rows per step (overrides the file's `batch`).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// The optimizer, written as in a `train` block (overrides the
    /// file's, for every phase): `--optimizer "adam(lr = 1e-3)"`.
    #[arg(long, value_name = "OPTIMIZER")]
    pub optimizer: Option<String>,
    /// Also write the `--save` checkpoint every N steps (inside an epoch:
    /// `--resume` continues from that step).
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Train data-parallel on N processes of this machine (MPI; nnc
    /// built with `--features mpi`): each takes 1/N of every batch and
    /// the gradients are summed. The same as `mpirun -n N nnc train …`.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// With workers: how long one waits for the others in a collective
    /// (an all-reduce, a broadcast) before it names those missing and
    /// stops them all.
    #[arg(long, value_name = "SECS", default_value_t = 600.0, value_parser = positive_seconds)]
    pub worker_timeout: f64,
    /// With workers: the gradients' all-reduce goes in buckets of at
    /// least this many KiB, each started as soon as the backward pass has
    /// written its gradients (on the JIT, while it computes the rest).
    #[arg(long, value_name = "KIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub bucket_kib: u64,
    /// Write a checkpoint whenever the monitored figure improves: the
    /// best epoch's weights (a checkpoint `--resume` continues).
    #[arg(long, value_name = "W.safetensors")]
    pub save_best: Option<PathBuf>,
    /// Stop when the monitored figure has not improved for N epochs.
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// The least change that counts as an improvement.
    #[arg(long, value_name = "D", default_value_t = 0.0)]
    pub min_delta: f32,
    /// The figure `--patience` and `--save-best` follow (default: the
    /// validation loss, or the training loss without validation rows).
    #[arg(long, value_enum)]
    pub monitor: Option<MonitorArg>,
    /// The backend that runs the training steps.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    pub backend: BackendKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MonitorArg {
    ValLoss,
    ValAccuracy,
    TrainLoss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    Ast,
    Ir,
    /// The IR with the gradient of the loss appended.
    Grad,
    /// The kernels the fusion pass forms (of the training step when the
    /// file has a `train` block, else of the outputs), each loop body's
    /// after them.
    Fused,
    /// The Cranelift IR of each loop kernel, for concrete sizes.
    Clif,
    /// The OpenCL C program (every loop kernel, and the library kernels
    /// the other steps call), for concrete sizes.
    Opencl,
    /// The fused graph as Graphviz (`| dot -Tsvg`): each kernel a cluster.
    Dot,
    /// The IR as Graphviz.
    DotIr,
    /// The IR with the gradient of the loss, as Graphviz.
    DotGrad,
}

/// A byte count, for `--max-memory`.
fn parse_memory(s: &str) -> Result<u64, String> {
    crate::exec::memory::parse_size(s)
}

/// Seconds above zero (and at most a year), for `--worker-timeout`.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3.2e7 => Ok(v),
        Ok(_) => Err(format!(
            "`{s}` is not a number of seconds above 0 and at most a year"
        )),
        Err(_) => Err(format!("`{s}` is not a number of seconds")),
    }
}

/// `NAME=SIZE[,SIZE…]`: a dimension and one or more sizes, sorted,
/// each once.
pub fn parse_dim_sizes(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, sizes) = s.split_once('=').ok_or_else(|| {
        format!("expected NAME=SIZE or NAME=SIZE,SIZE,…, e.g. B=1,32, found `{s}`")
    })?;
    let mut out = Vec::new();
    for size in sizes.split(',') {
        out.push(parse_dim(&format!("{name}={size}"))?.1);
    }
    out.sort_unstable();
    out.dedup();
    Ok((name.trim().to_string(), out))
}

/// A duration in seconds: a finite number, zero or more.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!(
            "expected a number of seconds, zero or more (e.g. 0.5), found `{s}`"
        )),
    }
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
