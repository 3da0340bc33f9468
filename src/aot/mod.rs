//! Ahead-of-time compilation: `nnc compile model.nn` writes a library
//! that runs the model's outputs (or a `train` block's `predict`) and, for
//! a `train` block, its training step, with no nnc, no JIT and no Python
//! at run time, and a C header that is its API.
//!
//! ```text
//! Schedules ──ObjectKernels──▶ NAME.kernels.o   loop kernels (Cranelift,
//!  (run, each training phase)                    the JIT's code generator)
//!    ├──serde_json───────────▶ plan (data)       what the runtime runs
//! params ──safetensors───────▶ params (data)     weights, optimizer state
//! header::Api ───────────────▶ NAME.h, NAME.c    the named API (`NAME_run`)
//!         cc -shared NAME.c NAME.kernels.o libnnc.a ──▶ NAME.so
//!         (or NAME.a / NAME.o without the runtime, linked by the user)
//! ```
//!
//! The runtime ([`runtime`]) is this crate's static library (`libnnc.a`,
//! built next to the `nnc` binary by cargo): its `nnc_rt_*` functions
//! rebuild the programs from the plan with the library's kernel table
//! instead of JIT-compiled kernels, and run them with the JIT's executor
//! (the same GEMM, convolution and loop routines; wide kernels where the
//! CPU has AVX-512 or AVX2). In a shared library the linker keeps only
//! what that reaches and hides the runtime's symbols: it exports `NAME_*`
//! alone, so two models link into one program. Another architecture's
//! output (`--target aarch64-unknown-linux-gnu`) is the kernels' object
//! and the wrappers' C source, built and linked with that target's
//! toolchain and runtime; nothing here runs it.
//!
//! A symbolic dimension given several sizes (`--dim B=1,8,32`) is an
//! argument of the library's functions: the plan holds one [`Variant`]
//! per set of sizes, each compiled ahead, and the runtime builds a
//! variant's programs on its first use. A symbolic dimension given no
//! size that indexes independent examples ([`crate::ir::rows`]) takes
//! any size at run time: `NAME_run` splits the rows into chunks of the
//! sizes compiled ([`RowDim`]: 64, 32, …, 1) and runs each chunk's
//! variant. A training step keeps the `train` block's batch.
//!
//! A training phase whose learning rate varies has its optimizer in the
//! plan: the runtime feeds the rate from the epoch `NAME_set_epoch` sets
//! and the steps taken, as `nnc train` does.
//!
//! A handle holds the weights and a run's buffers; a context
//! (`NAME_context_new`) is another handle with buffers of its own and a
//! copy of the weights, for another thread.
//!
//! Not done yet (issue 15): contexts that share the weights instead of
//! copying them.

pub mod runtime;

use crate::backend::jit::ObjectKernels;
use crate::diag::{self, code, Diag};
use crate::ir::{Graph, InputId, ParamId};
use crate::schedule::Schedule;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use cranelift_module::{DataDescription, Linkage, Module};
use std::path::{Path, PathBuf};

/// What a library embeds for its runtime: the names of the dimensions
/// its functions take as arguments, and one variant per set of their
/// sizes that was compiled (a single one when there are none).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub name: String,
    pub dims: Vec<String>,
    /// The dimension `NAME_run` takes at any size, after `dims`.
    pub rows: Option<RowDim>,
    pub variants: Vec<Variant>,
}

/// A dimension that indexes independent examples, taken at any size by
/// `NAME_run`: its name, the sizes compiled (largest first; a run of `n`
/// rows is cut into chunks of these, greedily) and its axis in each of
/// the run's inputs and outputs (`None`: the same for every row; such an
/// input is fed whole to every chunk).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RowDim {
    pub name: String,
    pub chunks: Vec<usize>,
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<Option<usize>>,
}

/// The largest chunk of rows a library compiles; `NAME_run` on more rows
/// runs several. The sizes are its halvings down to 1, so that any count
/// is a sum of them.
pub const MAX_CHUNK: usize = 64;

/// The chunk sizes compiled for a row dimension: [`MAX_CHUNK`] and its
/// halvings, and `extra` (a `train` block's batch, whose run comes with
/// the training step), largest first.
pub fn chunk_sizes(extra: Option<usize>) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(MAX_CHUNK), |&c| (c > 1).then_some(c / 2)).collect();
    v.extend(extra);
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v
}

/// The entry points for one size of each run-time dimension: the
/// schedule of `NAME_run` and, for a file with a `train` block, of
/// `NAME_train_step`; their kernels are the next `kernels` entries of the
/// library's table.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    pub sizes: Vec<usize>,
    /// The size of the row dimension ([`RowDim`]) this variant's run was
    /// compiled for (0 without one).
    pub rows: usize,
    pub run: Part,
    pub train: Option<Train>,
    pub kernels: usize,
}

/// One compiled entry point: its schedule and its inputs in the order of
/// the C function's arguments, with their shapes.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub schedule: Schedule,
    pub inputs: Vec<(InputId, Vec<usize>)>,
    /// The random draws' key input, fed by the runtime.
    pub rng_key: Option<InputId>,
    /// A training phase's learning-rate input and the optimizer whose
    /// schedule sets it, fed by the runtime from the epoch
    /// (`NAME_set_epoch`) and the step counter.
    #[serde(default)]
    pub lr: Option<(InputId, crate::sema::optimizer::Optimizer)>,
}

/// A training step: one part per phase of the `train` block (run in
/// order, as `nnc train` does; the last phase's graph holds every
/// parameter and state, and the others' tables are prefixes of it), the
/// step's inputs by name and shape in the order of `NAME_train_step`'s
/// arguments (every phase's, each once) and the seed of its random draws.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Train {
    pub phases: Vec<Part>,
    pub inputs: Vec<(String, Vec<usize>)>,
    pub seed: u64,
}

/// What `nnc compile` was asked for.
pub struct Options {
    /// The model's name: the prefix of every exported symbol.
    pub name: String,
    /// The `.nn` file, named in the header.
    pub source: String,
    /// The library to write (`.so`, `.a` or `.o`: [`Kind`]); the header
    /// goes beside it (`.h`).
    pub out: PathBuf,
    /// The CPU the kernels are compiled for: a Cranelift preset
    /// (`x86-64-v3`, …) or `native`.
    pub target_cpu: Option<String>,
    /// The target triple when it is not this machine's architecture: the
    /// output is then the kernels' object, the wrappers' C source and the
    /// header, to build with that target's toolchain.
    pub target: Option<String>,
    /// Keep the generated C file and object next to the library.
    pub keep: bool,
}

/// What was written.
pub struct Library {
    pub library: PathBuf,
    pub header: PathBuf,
    pub functions: Vec<String>,
    /// For a static archive or an object: how to link a program with it
    /// (it, the runtime archive, the system libraries).
    pub link_with: Option<String>,
}

/// A model name from a file name: letters, digits and `_`, not starting
/// with a digit.
pub fn name_from(stem: &str) -> String {
    let mut s: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn error(msg: impl Into<String>, help: impl Into<String>) -> Diag {
    diag::error(code::LIBRARY, msg).with_notes(vec![format!("help: {}", help.into())])
}

/// The graph a library runs: a file's outputs, or for a file with a
/// `train` block its `predict` (in inference mode: no dropout).
pub fn library_graph(g: &Graph, train: Option<&crate::sema::TrainSpec>) -> Result<Graph, Diag> {
    let Some(t) = train else {
        return Ok(g.clone());
    };
    let Some(p) = t.predict else {
        return Err(error(
            "this file's `train` block has no `predict`, so a library would compute nothing",
            "add `predict = forward(x)` (the model's output) to the `train` block",
        ));
    };
    let mut eval = g.clone();
    crate::pipeline::set_training(&mut eval, false);
    eval.outputs = vec![crate::ir::Output {
        name: "predict".into(),
        node: p,
        span: t.span,
    }];
    Ok(eval)
}

/// The graphs a library is built from: the outputs it runs and, for a
/// `train` block, each phase's step graph (their parameter tables agree,
/// the last one's being the largest) with its seed; the dimensions that
/// stay arguments of the library's functions, in argument order; the
/// row dimension `NAME_run` takes at any size, with its axes; and the
/// variants to compile.
pub struct Graphs<'g> {
    pub run: &'g Graph,
    pub train: Option<(Vec<Graph>, u64)>,
    /// Each training phase's optimizer.
    pub optimizers: Vec<crate::sema::optimizer::Optimizer>,
    pub dims: Vec<crate::ir::Sym>,
    pub rows: Option<(crate::ir::Sym, crate::ir::rows::RowAxes)>,
    pub variants: Vec<Binding>,
}

/// One variant to compile: a size for every symbolic dimension, the row
/// dimension's among them (0 without one), and whether it carries the
/// training step (one variant per set of `dims` sizes does).
pub struct Binding {
    pub syms: SecondaryMap<crate::ir::Sym, Option<usize>>,
    pub rows: usize,
    pub train: bool,
}

/// A shape in the header: each dim a size (as `syms` binds it), or the
/// name of a run-time dimension (one of `args`).
fn api_shape(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
    args: &[crate::ir::Sym],
    shape: &[crate::ir::Dim],
    span: crate::diag::Span,
) -> Result<Vec<header::Extent>, Diag> {
    let sizes = concrete(g, syms, shape, span)?;
    Ok(shape
        .iter()
        .zip(sizes)
        .map(|(d, n)| match d {
            crate::ir::Dim::Sym(s) if args.contains(s) => {
                header::Extent::Arg(g.syms[*s].name.clone())
            }
            _ => header::Extent::Fixed(n),
        })
        .collect())
}

fn concrete(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
    shape: &[crate::ir::Dim],
    span: crate::diag::Span,
) -> Result<Vec<usize>, Diag> {
    crate::exec::bind::concrete_shape(g, syms, shape, span).map_err(|e| e.to_diag())
}

/// Schedules `g` as one entry point; a training phase's `optimizer`
/// feeds its learning-rate input when the rate varies.
fn part(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
    optimizer: Option<crate::sema::optimizer::Optimizer>,
) -> Result<Part, Diag> {
    let schedule =
        crate::pipeline::schedule(&crate::pipeline::fuse(g), syms).map_err(|e| e.to_diag())?;
    let rng_key = schedule
        .inputs
        .iter()
        .map(|&(i, _)| i)
        .find(|&i| g.inputs[i].name == crate::ir::RNG_KEY_INPUT);
    let lr = schedule
        .inputs
        .iter()
        .map(|&(i, _)| i)
        .find(|&i| g.inputs[i].name.starts_with(crate::ir::LR_INPUT_PREFIX))
        .zip(optimizer);
    let inputs = schedule
        .inputs
        .iter()
        .filter(|&&(i, _)| Some(i) != rng_key && Some(i) != lr.map(|(l, _)| l))
        .map(|&(i, _)| {
            Ok((
                i,
                concrete(g, syms, &g.inputs[i].ty.shape, g.inputs[i].span)?,
            ))
        })
        .collect::<Result<_, Diag>>()?;
    Ok(Part {
        schedule,
        inputs,
        rng_key,
        lr,
    })
}

/// Compiles the graphs into a library as `opts` says, embedding
/// `params` (a value for every parameter of the largest graph).
pub fn compile(
    graphs: &Graphs,
    params: &SecondaryMap<ParamId, Tensor>,
    opts: &Options,
) -> Result<Library, Diag> {
    let g = graphs.run;
    if g.outputs.is_empty() {
        return Err(error(
            "this file declares no outputs, so a library would compute nothing",
            "name a result with `output y = ...`",
        ));
    }
    if graphs.optimizers.iter().any(|o| {
        matches!(
            o.schedule,
            crate::sema::optimizer::LrSchedule::ReduceOnPlateau { .. }
        )
    }) {
        return Err(error(
            "`reduce_on_plateau` follows the validation loss, which a library's training step does not see",
            "compile with a schedule of epochs (`step`, `exponential`, `cosine`), set with NAME_set_epoch, or a constant rate",
        ));
    }
    let mut variants = Vec::new();
    for bind in &graphs.variants {
        let syms = &bind.syms;
        let run = part(g, syms, None)?;
        let train = match (&graphs.train, bind.train) {
            (Some((phases, seed)), true) => {
                let parts: Vec<Part> = phases
                    .iter()
                    .zip(&graphs.optimizers)
                    .map(|(pg, o)| part(pg, syms, Some(*o)))
                    .collect::<Result<_, _>>()?;
                let mut inputs: Vec<(String, Vec<usize>)> = Vec::new();
                for (pg, p) in phases.iter().zip(&parts) {
                    for (i, shape) in &p.inputs {
                        let name = &pg.inputs[*i].name;
                        if !inputs.iter().any(|(n, _)| n == name) {
                            inputs.push((name.clone(), shape.clone()));
                        }
                    }
                }
                Some(Train {
                    phases: parts,
                    inputs,
                    seed: *seed,
                })
            }
            _ => None,
        };
        let sizes = graphs.dims.iter().map(|&d| syms[d].unwrap_or(0)).collect();
        variants.push(Variant {
            sizes,
            rows: bind.rows,
            run,
            train,
            kernels: 0,
        });
    }
    let (Some(first), Some(first_bind)) = (variants.first(), graphs.variants.first()) else {
        return Err(error(
            "no sizes to compile for",
            "give each symbolic dimension a size with --dim",
        ));
    };
    let table = match &graphs.train {
        Some((phases, _)) => phases.last().unwrap_or(g),
        None => g,
    };
    // The header's shapes, from the first variant (the others differ only
    // in the run-time dimensions); the training step's from the first
    // with one (the row dimension is the batch there, not an argument).
    let mut run_args = graphs.dims.clone();
    run_args.extend(graphs.rows.as_ref().map(|(s, _)| *s));
    let named =
        |graph: &Graph, bind: &Binding, args: &[crate::ir::Sym], list: &[(InputId, Vec<usize>)]| {
            list.iter()
                .map(|(i, _)| {
                    let info = &graph.inputs[*i];
                    Ok((
                        info.name.clone(),
                        api_shape(graph, &bind.syms, args, &info.ty.shape, info.span)?,
                    ))
                })
                .collect::<Result<Vec<_>, Diag>>()
        };
    let with_train = variants
        .iter()
        .zip(&graphs.variants)
        .find_map(|(v, b)| Some((v.train.as_ref()?, v.rows, b)));
    let rows = graphs.rows.as_ref().map(|(s, axes)| {
        let mut chunks: Vec<usize> = variants
            .iter()
            .filter(|v| v.sizes == first.sizes)
            .map(|v| v.rows)
            .collect();
        chunks.sort_unstable_by(|a, b| b.cmp(a));
        RowDim {
            name: g.syms[*s].name.clone(),
            chunks,
            inputs: first
                .run
                .inputs
                .iter()
                .map(|(i, _)| axes.inputs[*i])
                .collect(),
            outputs: axes.outputs.clone(),
        }
    });
    let api = header::Api {
        name: opts.name.clone(),
        source: opts.source.clone(),
        dims: graphs
            .dims
            .iter()
            .map(|&d| g.syms[d].name.clone())
            .collect(),
        sizes: variants
            .iter()
            .filter(|v| v.rows == first.rows)
            .map(|v| v.sizes.clone())
            .collect(),
        rows: rows.as_ref().map(|r| header::RowArg {
            name: r.name.clone(),
            chunks: r.chunks.clone(),
            train_batch: with_train.map(|(_, r, _)| r),
        }),
        inputs: named(g, first_bind, &run_args, &first.run.inputs)?,
        outputs: g
            .outputs
            .iter()
            .map(|o| {
                Ok((
                    o.name.clone(),
                    api_shape(
                        g,
                        &first_bind.syms,
                        &run_args,
                        &g.nodes[o.node].ty.shape,
                        o.span,
                    )?,
                ))
            })
            .collect::<Result<_, Diag>>()?,
        train: match (with_train, &graphs.train) {
            (Some((t, _, bind)), Some((phases, _))) => {
                let mut all = Vec::new();
                for (pg, p) in phases.iter().zip(&t.phases) {
                    for x in named(pg, bind, &graphs.dims, &p.inputs)? {
                        if !all.iter().any(|(n, _): &(String, _)| *n == x.0) {
                            all.push(x);
                        }
                    }
                }
                Some(all)
            }
            _ => None,
        },
        lr_varies: graphs.train.is_some() && graphs.optimizers.iter().any(|o| o.varies()),
    };
    let isa = object_isa(opts.target.as_deref(), opts.target_cpu.as_deref())?;
    let tensors: Vec<(String, &Tensor)> = table
        .params
        .iter()
        .map(|(id, p)| (p.name.clone(), &params[id]))
        .collect();
    let bug = |what: &str, e: String| {
        error(
            format!("{what} could not be serialised: {e}"),
            "report this as a bug",
        )
    };
    let params_bytes = crate::train::checkpoint::to_bytes(&tensors, &Default::default())
        .map_err(|e| bug("the parameters", e))?;
    let mut plan = Plan {
        name: opts.name.clone(),
        dims: api.dims.clone(),
        rows,
        variants,
    };
    let (object, n_kernels, plan_len) = object(&mut plan, &opts.name, isa, &params_bytes)?;
    let sizes = header::Sizes {
        plan: plan_len,
        params: params_bytes.len(),
        kernels: n_kernels,
    };
    let header = opts.out.with_extension("h");
    let header_name = header.file_name().unwrap_or_default().to_string_lossy();
    let (h, c) = (api.header(), api.wrappers(&sizes, &header_name));
    let link_with = match &opts.target {
        None => link(opts, &h, &c, &object)?,
        Some(t) => Some(cross(opts, t, &h, &c, &object)?),
    };
    Ok(Library {
        library: opts.out.clone(),
        header,
        functions: api.functions(),
        link_with,
    })
}

mod header;

/// The ISA the kernels are compiled for: position-independent code for
/// `target` (a triple; none: this machine's architecture) at the CPU level
/// `cpu` names (a Cranelift preset such as `x86-64-v3` or a CPU name;
/// `native`: this machine's own features; none: the architecture's
/// baseline).
fn object_isa(
    target: Option<&str>,
    cpu: Option<&str>,
) -> Result<cranelift_codegen::isa::OwnedTargetIsa, Diag> {
    use cranelift_codegen::settings::{self, Configurable};
    let mut flags = settings::builder();
    let fail = |e: String| {
        error(
            format!("the code generator could not be set up: {e}"),
            "report this as a bug",
        )
    };
    for (k, v) in [
        ("opt_level", "speed"),
        ("is_pic", "true"),
        ("use_colocated_libcalls", "false"),
    ] {
        flags.set(k, v).map_err(|e| fail(e.to_string()))?;
    }
    let host = cranelift_native::builder().map_err(|e| fail(e.to_string()))?;
    let mut b = match (target, cpu) {
        (None, Some("native")) => host,
        (Some(_), Some("native")) => {
            return Err(error(
                "`--target-cpu native` describes this machine, not another target",
                "name the target's CPU level, or leave --target-cpu out",
            ))
        }
        // A fresh builder for the triple has no features; `cpu` adds them.
        (None, _) => cranelift_codegen::isa::lookup(host.triple().clone())
            .map_err(|e| fail(e.to_string()))?,
        (Some(t), _) => cranelift_codegen::isa::lookup_by_name(t).map_err(|e| {
            error(
                format!("`--target {t}`: {e}"),
                "the code generator writes x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu",
            )
        })?,
    };
    if let Some(cpu) = cpu.filter(|&c| c != "native") {
        b.enable(cpu).map_err(|_| {
            error(
                format!("`--target-cpu {cpu}` is not a CPU level the code generator knows"),
                "use x86-64-v2, x86-64-v3, x86-64-v4, a CPU name such as znver3, or native",
            )
        })?;
        // Cranelift's x86-64-v3 and -v4 presets set AVX2 and FMA but not
        // AVX, without which it uses neither (no VEX encoding; FMAs become
        // calls to `fmaf`); every CPU with AVX2 has AVX.
        if matches!(cpu, "x86-64-v3" | "x86-64-v4") {
            b.enable("has_avx").map_err(|e| fail(e.to_string()))?;
        }
    }
    b.finish(settings::Flags::new(flags))
        .map_err(|e| fail(e.to_string()))
}

/// The x86-64 level (`GNU_PROPERTY_X86_ISA_1_*`) of the features `isa`
/// compiles for, which the object declares in its `.note.gnu.property`
/// ("x86 ISA needed", kept by the linker in the library): the dynamic
/// loader then refuses the library on a CPU below that level with a
/// message, instead of the program dying on an illegal instruction.
/// None for another architecture.
fn x86_isa_level(isa: &dyn cranelift_codegen::isa::TargetIsa) -> Option<u32> {
    use cranelift_object::object::elf::*;
    // Cranelift names its x86-64 backend "x64".
    if isa.name() != "x64" {
        return None;
    }
    let flags = isa.isa_flags();
    let on = |names: &[&str]| {
        names.iter().all(|n| {
            flags
                .iter()
                .any(|v| v.name == *n && v.as_bool() == Some(true))
        })
    };
    Some(if on(&["has_avx512f", "has_avx512vl", "has_avx512dq"]) {
        GNU_PROPERTY_X86_ISA_1_V4
    } else if on(&["has_avx2", "has_fma", "has_bmi1", "has_bmi2", "has_lzcnt"]) {
        GNU_PROPERTY_X86_ISA_1_V3
    } else if on(&["has_sse42", "has_popcnt", "has_ssse3"]) {
        GNU_PROPERTY_X86_ISA_1_V2
    } else {
        GNU_PROPERTY_X86_ISA_1_BASELINE
    })
}

/// The object file: the kernels of every variant's schedules, their
/// table in the order the runtime asks for them (variant after variant,
/// each its run then its training phases; `plan` gets each variant's
/// count), the plan and the parameters. Returns its bytes, the number of
/// kernels and the plan's length.
fn object(
    plan: &mut Plan,
    name: &str,
    isa: cranelift_codegen::isa::OwnedTargetIsa,
    params: &[u8],
) -> Result<(Vec<u8>, usize, usize), Diag> {
    let bug = |e: String| {
        error(
            format!("the object file could not be written: {e}"),
            "report this as a bug",
        )
    };
    let level = x86_isa_level(&*isa);
    let builder =
        cranelift_object::ObjectBuilder::new(isa, name, cranelift_module::default_libcall_names())
            .map_err(|e| bug(e.to_string()))?;
    let mut module = cranelift_object::ObjectModule::new(builder);
    let module_triple = module.isa().triple().to_string();
    let mut kx = ObjectKernels::new(&mut module, &format!("{name}__nnc_"));
    for v in &mut plan.variants {
        let before = kx.order.len();
        let mut schedules = vec![&v.run.schedule];
        if let Some(t) = &v.train {
            schedules.extend(t.phases.iter().map(|p| &p.schedule));
        }
        for sched in schedules {
            // Cranelift stops at a construct a backend cannot lower with a
            // panic, not an error: turn it into one.
            let added =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kx.add(sched.clone())));
            match added {
                Ok(r) => r.map_err(|e| e.to_diag())?,
                Err(_) => {
                    return Err(diag::error(
                        code::INTERNAL,
                        format!("the code generator for `{module_triple}` failed on a kernel"),
                    )
                    .with_notes(vec![
                        "help: this is a bug in nnc; the message above the error says where".into(),
                    ]))
                }
            }
        }
        v.kernels = kx.order.len() - before;
    }
    let plan_bytes = serde_json::to_vec(&*plan).map_err(|e| bug(e.to_string()))?;
    let order = std::mem::take(&mut kx.order);
    let define = |module: &mut cranelift_object::ObjectModule,
                  sym: &str,
                  d: &DataDescription,
                  writable: bool| {
        let id = module
            .declare_data(sym, Linkage::Hidden, writable, false)
            .map_err(|e| bug(e.to_string()))?;
        module.define_data(id, d).map_err(|e| bug(e.to_string()))
    };
    let mut table = DataDescription::new();
    table.define(vec![0; 8 * order.len().max(1)].into_boxed_slice());
    table.set_align(8);
    for (i, &f) in order.iter().enumerate() {
        let r = module.declare_func_in_data(f, &mut table);
        table.write_function_addr((8 * i) as u32, r);
    }
    // Writable, and defined (not zero-filled: `.bss` takes no relocations):
    // the table's addresses are relocated when the library loads.
    define(&mut module, &format!("{name}__nnc_kernels"), &table, true)?;
    for (sym, data) in [("plan", &plan_bytes[..]), ("params", params)] {
        let mut d = DataDescription::new();
        d.define(data.to_vec().into_boxed_slice());
        d.set_align(8);
        define(&mut module, &format!("{name}__nnc_{sym}"), &d, false)?;
    }
    let mut product = module.finish();
    if let Some(level) = level {
        use cranelift_object::object::elf::GNU_PROPERTY_X86_ISA_1_NEEDED;
        product
            .object
            .add_elf_gnu_property_u32(GNU_PROPERTY_X86_ISA_1_NEEDED, level);
    }
    let bytes = product.emit().map_err(|e| bug(e.to_string()))?;
    Ok((bytes, order.len(), plan_bytes.len()))
}

/// Where the runtime archive is: `NNC_RUNTIME`, else the newest of
/// `libnnc.a` beside the running `nnc` (where `cargo build` and an
/// installation put it) and `deps/libnnc-*.a` there (where `cargo test`
/// puts it: in a build tree, `cargo test` leaves the one beside stale).
fn runtime_archive() -> Result<PathBuf, Diag> {
    if let Some(p) = std::env::var_os("NNC_RUNTIME") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| {
        error(
            format!("cannot locate nnc: {e}"),
            "set NNC_RUNTIME to the path of libnnc.a",
        )
    })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let in_deps = std::fs::read_dir(dir.join("deps"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("libnnc-") && n.ends_with(".a")
        });
    let newest = std::iter::once(dir.join("libnnc.a"))
        .chain(in_deps)
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    newest.map(|(_, p)| p).ok_or_else(|| {
        error(
            format!(
                "the runtime library libnnc.a is not beside nnc (in {})",
                dir.display()
            ),
            "cargo builds it with nnc (`cargo build --release`); or set NNC_RUNTIME to its path",
        )
    })
}

/// For another architecture: writes the kernels' object (`-o`, a `.o`),
/// the wrappers' C source beside it and the header, each through a
/// temporary name; returns how to build a program from them.
fn cross(
    opts: &Options,
    target: &str,
    header: &str,
    wrappers: &str,
    object: &[u8],
) -> Result<String, Diag> {
    let io = |what: &Path, e: std::io::Error| {
        error(
            format!("cannot write `{}`: {e}", what.display()),
            "check the output folder exists and is writable",
        )
    };
    let out = &opts.out;
    let c = out.with_extension("c");
    let h = out.with_extension("h");
    for (path, bytes) in [
        (&c, wrappers.as_bytes()),
        (&h, header.as_bytes()),
        (out, object),
    ] {
        crate::train::checkpoint::write_atomic(path, bytes).map_err(|e| io(path, e))?;
    }
    Ok(format!(
        "build a program with {target}'s C compiler and nnc's runtime built for it (`cargo build --release --target {target}`):\n  \
         CC PROGRAM.c {} {} libnnc.a -Wl,--gc-sections {}",
        c.display(),
        out.display(),
        SYSTEM_LIBS.join(" ")
    ))
}

/// The kinds of output, by the extension of `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `.so`: everything linked in, the runtime hidden.
    Shared,
    /// `.a`: the wrappers and kernels, to link with the runtime archive.
    Static,
    /// `.o`: the same as one relocatable object.
    Object,
}

impl Kind {
    pub fn of(path: &Path) -> Option<Kind> {
        match path.extension()?.to_str()? {
            "so" => Some(Kind::Shared),
            "a" => Some(Kind::Static),
            "o" => Some(Kind::Object),
            _ => None,
        }
    }
}

/// The system libraries the runtime (a Rust static library) needs.
const SYSTEM_LIBS: [&str; 7] = [
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Runs a tool of the C toolchain, its failure a diagnostic.
fn tool(cmd: &mut std::process::Command, what: &str) -> Result<(), Diag> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => error(
            format!("the C compiler `{name}` was not found; it {what}"),
            "install one (Debian: `apt-get install gcc`), or name it with CC=...",
        ),
        _ => error(
            format!("`{name}` could not be started: {e}"),
            "check the C toolchain",
        ),
    })?;
    match out.status.success() {
        true => Ok(()),
        false => Err(error(
            format!(
                "`{name}` failed as it {what}:\n{}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            "the message above is the toolchain's",
        )),
    }
}

/// Builds the output in a temporary folder beside it, then renames the
/// header and the output into place: a failure leaves neither. Returns,
/// for a static archive or an object, how to link it.
fn link(
    opts: &Options,
    header: &str,
    wrappers: &str,
    object: &[u8],
) -> Result<Option<String>, Diag> {
    let io = |what: &Path, e: std::io::Error| {
        error(
            format!("cannot write `{}`: {e}", what.display()),
            "check the output folder exists and is writable",
        )
    };
    let kind = Kind::of(&opts.out).unwrap_or(Kind::Shared);
    let runtime = runtime_archive()?;
    let out = &opts.out;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = dir.join(format!(".{}.nnc-build-{}", opts.name, std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| io(&work, e))?;
    let result = (|| {
        let h_final = out.with_extension("h");
        let h = work.join(h_final.file_name().unwrap_or_default());
        let c = work.join(format!("{}.c", opts.name));
        let o = work.join(format!("{}.kernels.o", opts.name));
        let tmp = work.join("out");
        std::fs::write(&h, header).map_err(|e| io(&h, e))?;
        std::fs::write(&c, wrappers).map_err(|e| io(&c, e))?;
        std::fs::write(&o, object).map_err(|e| io(&o, e))?;
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut compile = std::process::Command::new(&cc);
        compile
            .args(["-fPIC", "-O2", "-std=c99", "-Wall", "-Werror", "-I"])
            .arg(&work);
        let link_with = match kind {
            Kind::Shared => {
                compile
                    .args(["-shared", "-o"])
                    .arg(&tmp)
                    .arg(&c)
                    .arg(&o)
                    .arg(&runtime)
                    .args(["-s", "-Wl,--gc-sections", "-Wl,--exclude-libs,ALL"])
                    .args(SYSTEM_LIBS);
                tool(&mut compile, "links the library")?;
                None
            }
            Kind::Static | Kind::Object => {
                let api = work.join(format!("{}.api.o", opts.name));
                tool(
                    compile.arg("-c").arg("-o").arg(&api).arg(&c),
                    "compiles the wrappers",
                )?;
                if kind == Kind::Object {
                    let mut ld = std::process::Command::new(&cc);
                    ld.args(["-r", "-nostdlib", "-o"])
                        .arg(&tmp)
                        .arg(&api)
                        .arg(&o);
                    tool(&mut ld, "joins the objects")?;
                } else {
                    let ar = std::env::var("AR").unwrap_or_else(|_| "ar".into());
                    let mut pack = std::process::Command::new(ar);
                    pack.arg("rcs").arg(&tmp).arg(&api).arg(&o);
                    tool(&mut pack, "archives the objects")?;
                }
                Some(format!(
                    "link a program with: cc PROGRAM.c {} {} -Wl,--gc-sections {}",
                    out.display(),
                    runtime.display(),
                    SYSTEM_LIBS.join(" ")
                ))
            }
        };
        if opts.keep {
            for f in [&c, &o] {
                let dst = dir.join(f.file_name().unwrap_or_default());
                std::fs::rename(f, &dst).map_err(|e| io(&dst, e))?;
            }
        }
        std::fs::rename(&h, &h_final).map_err(|e| io(&h_final, e))?;
        std::fs::rename(&tmp, out).map_err(|e| io(out, e))?;
        Ok(link_with)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}
