//! The graphs a command works on: a file's step graphs or outputs, the
//! sizes of their symbolic dimensions, and running them on a backend
//! (shared by `run`, `grad`, `compile --emit`, `bench` and the tests).

use super::args::Emit;
use crate::backend::interp;
use crate::backend::{BackendKind, Engine};
use crate::diag::{self, Diagnostics};
use crate::ir::Graph;
use crate::pipeline;
use cranelift_entity::SecondaryMap;
use std::path::Path;

/// The graphs a file compiles to: each training phase's step when it has
/// a `train` block, else the outputs.
pub fn compiled_graphs(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
) -> Result<Vec<(String, Graph)>, crate::diag::Diag> {
    match train {
        Some(t) => Ok(
            crate::log::timed("step graphs", || pipeline::train_steps(g, t))?
                .into_iter()
                .map(|p| (p.name, p.step.graph))
                .collect(),
        ),
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
    let mut syms = default_dims(g);
    for (name, size) in dims {
        match g.syms.iter().find(|(_, s)| &s.name == name) {
            Some((s, _)) => syms[s] = Some(*size),
            None => {
                return Err(unknown_dim(g, name));
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

/// The symbolic dimensions that inputs with a default value bind.
fn default_dims(g: &Graph) -> SecondaryMap<crate::ir::Sym, Option<usize>> {
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
    syms
}

/// The dimension a library's run takes at any size: the one symbolic
/// dimension of `g` that nothing sizes, when it indexes independent
/// examples ([`crate::ir::rows`]), with its axes. Without a `train`
/// block (whose batch would size it) a dimension that cannot is an
/// error saying which op mixes the rows.
fn row_dim(
    g: &Graph,
    dims: &[(String, Vec<usize>)],
    train: bool,
) -> Result<Option<(crate::ir::Sym, crate::ir::rows::RowAxes)>, crate::diag::Diag> {
    let defaults = default_dims(g);
    let free: Vec<crate::ir::Sym> = g
        .syms
        .iter()
        .filter(|(s, info)| defaults[*s].is_none() && !dims.iter().any(|(n, _)| *n == info.name))
        .map(|(s, _)| s)
        .collect();
    let [b] = free.as_slice() else {
        return Ok(None);
    };
    match crate::ir::rows::row_axes(g, *b) {
        Ok(axes) => Ok(Some((*b, axes))),
        Err(_) if train => Ok(None),
        Err(m) => {
            let name = &g.syms[*b].name;
            Err(crate::diag::error(
                crate::diag::code::UNBOUND_DIM,
                format!("dimension `{name}` has no size, and cannot take any size at run time"),
            )
            .with_labels(vec![m.span.primary(format!(
                "{}: rows of `{name}` are not computed alone",
                m.why
            ))])
            .with_notes(vec![format!(
                "help: give it the sizes to compile with `--dim {name}=SIZE[,SIZE…]`"
            )]))
        }
    }
}

/// `--emit fused`, `--emit clif` and `--emit opencl`.
pub fn backend_text(
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
                let text = match emit {
                    Emit::Opencl => crate::backend::opencl::source(&graph, &syms),
                    _ => crate::backend::jit::clif(&graph, &syms),
                }
                .map_err(|e| e.to_diag())?;
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
    run_with_params(g, seed, interp::init_params(g, seed), Vec::new(), backend)
}

/// [`run_graph`] with the parameters (and states) found in `params_file`
/// (by name) instead of their initial values.
pub fn run_graph_with(
    g: &Graph,
    seed: u64,
    params_file: Option<&Path>,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, crate::diag::Diag> {
    run_fed(g, seed, params_file, Vec::new(), backend)
}

/// The tensors `--input NAME=FILE` feeds, by input, read from their
/// files; with some, a file with no outputs but a `train` block's
/// `predict` becomes its library graph ([`run_graph_of`]), which runs it.
/// The block's features input gets its data's `scale` ([`feed`]).
pub fn fed_graph(
    g: &mut Graph,
    train: Option<&crate::sema::TrainSpec>,
    files: &[(String, std::path::PathBuf)],
) -> Result<Vec<(crate::ir::InputId, crate::tensor::Tensor)>, crate::diag::Diag> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(lib) = run_graph_of(g, train)? {
        *g = lib;
    }
    let mut given = Vec::new();
    for (name, path) in files {
        let t = match crate::data::load_tensor(path) {
            Some(r) => r.map_err(|e| e.to_diag())?,
            None => {
                return Err(crate::diag::error(
                    crate::diag::code::INPUT,
                    format!("`{}` is not a file `--input` reads", path.display()),
                )
                .with_notes(vec![
                    "help: give a .npy array or a .csv file with a header row".into(),
                ]))
            }
        };
        given.push(Given {
            name: name.clone(),
            tensor: t,
            from: Origin::File(path.clone()),
        });
    }
    feed(g, train, given)
}

/// What `run` evaluates on inputs it is given: for a file with no
/// outputs but a `train` block's `predict`, its library graph (inference
/// mode, [`crate::aot::library_graph`]); `None` for any other file, whose
/// outputs run. The graph returned has the file's parameter table.
pub fn run_graph_of(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
) -> Result<Option<Graph>, crate::diag::Diag> {
    match g.outputs.is_empty() && train.is_some_and(|t| t.predict.is_some()) {
        true => crate::aot::library_graph(g, train).map(Some),
        false => Ok(None),
    }
}

/// A value given for an input, by the input's name (or the part after
/// its model's `.`).
pub struct Given {
    pub name: String,
    pub tensor: crate::tensor::Tensor,
    pub from: Origin,
}

/// Where a [`Given`] value comes from, for the diagnostics about it.
pub enum Origin {
    /// `--input NAME=FILE`.
    File(std::path::PathBuf),
    /// An array passed by a host language as `NAME=` (Python's `m.run`).
    Keyword,
}

impl Given {
    /// How the value was named: "`--input x=…`" or "`x=`".
    fn naming(&self) -> String {
        match &self.from {
            Origin::File(_) => format!("`--input {}=…`", self.name),
            Origin::Keyword => format!("`{}=`", self.name),
        }
    }
}

/// The given values by input of `g`, each checked against its input's
/// shape (a symbolic dimension takes any size here; running binds it),
/// the `train` block's features input multiplied by its data's `scale`.
pub fn feed(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    given: Vec<Given>,
) -> Result<Vec<(crate::ir::InputId, crate::tensor::Tensor)>, crate::diag::Diag> {
    let mut fed = Vec::new();
    for v in given {
        let name = &v.name;
        let found: Vec<crate::ir::InputId> = g
            .inputs
            .iter()
            .filter(|(_, i)| i.name == *name || i.name.ends_with(&format!(".{name}")))
            .map(|(id, _)| id)
            .collect();
        let [id] = found.as_slice() else {
            let names: Vec<&str> = g
                .inputs
                .values()
                .map(|i| i.name.as_str())
                .filter(|n| !n.starts_with('@'))
                .collect();
            return Err(crate::diag::error(
                crate::diag::code::INPUT,
                format!(
                    "{} names {} input of this program",
                    v.naming(),
                    if found.is_empty() {
                        "no"
                    } else {
                        "more than one"
                    }
                ),
            )
            .with_notes(vec![format!("help: its inputs are: {}", names.join(", "))]));
        };
        let info = &g.inputs[*id];
        let fits = v.tensor.shape.len() == info.ty.shape.len()
            && info
                .ty
                .shape
                .iter()
                .zip(&v.tensor.shape)
                .all(|(d, &n)| match d {
                    crate::ir::Dim::Known(k) => *k as usize == n,
                    crate::ir::Dim::Sym(_) => true,
                });
        if !fits {
            let what = match &v.from {
                Origin::File(path) => format!("`{}` holds an array", path.display()),
                Origin::Keyword => format!("{} is an array", v.naming()),
            };
            return Err(crate::diag::error(
                crate::diag::code::INPUT,
                format!(
                    "{what} of shape {:?}, but input `{}` is {}",
                    v.tensor.shape,
                    info.name,
                    g.shape_str(&info.ty.shape)
                ),
            )
            .with_labels(vec![info.span.primary("this input")]));
        }
        let scale = train
            .and_then(|t| t.data.as_ref().map(|d| d.scale_of(*id, t.features)))
            .unwrap_or(1.0);
        let mut t = v.tensor;
        if scale != 1.0 {
            t.data.iter_mut().for_each(|x| *x *= scale);
        }
        fed.push((*id, t));
    }
    Ok(fed)
}

/// The outputs of `g` with these inputs fed (the others' defaults).
pub fn run_fed(
    g: &Graph,
    seed: u64,
    params_file: Option<&Path>,
    fed: Vec<(crate::ir::InputId, crate::tensor::Tensor)>,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, crate::diag::Diag> {
    let mut params = interp::init_params(g, seed);
    if let Some(p) = params_file {
        crate::train::restore(g, &mut params, p)?;
    }
    run_with_params(g, seed, params, fed, backend).map_err(|e| e.to_diag())
}

fn run_with_params(
    g: &Graph,
    seed: u64,
    mut params: SecondaryMap<crate::ir::ParamId, crate::tensor::Tensor>,
    fed: Vec<(crate::ir::InputId, crate::tensor::Tensor)>,
    backend: BackendKind,
) -> Result<Vec<(String, crate::tensor::Tensor)>, interp::Error> {
    run_on(&mut Engine::new(backend, g), g, seed, &mut params, fed)
}

/// The outputs of `g` by name, run on `engine` (made for `g`, and kept
/// by a caller that runs it again) with these parameters and these
/// inputs fed (the others take their declared values); random draws are
/// keyed by `seed`.
pub fn run_on(
    engine: &mut Engine,
    g: &Graph,
    seed: u64,
    params: &mut SecondaryMap<crate::ir::ParamId, crate::tensor::Tensor>,
    fed: Vec<(crate::ir::InputId, crate::tensor::Tensor)>,
) -> Result<Vec<(String, crate::tensor::Tensor)>, interp::Error> {
    let mut inputs = SecondaryMap::new();
    for (id, t) in fed {
        inputs[id] = Some(t);
    }
    if let Some((id, _)) = g
        .inputs
        .iter()
        .find(|(_, i)| i.name == crate::ir::RNG_KEY_INPUT)
    {
        inputs[id] = Some(interp::rng_key(seed, 0));
    }
    let values = engine.run(params, &inputs)?;
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
    grad_values_on(g, train, params_file, seed, backend, None)
}

/// [`grad_values`], with the loss fed `rows` rows of the `train` block's
/// data (paths relative to `base`): the first batch epoch 1 takes, with
/// the scalings learnt from the training rows.
pub fn grad_values_on(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    params_file: Option<&Path>,
    seed: u64,
    backend: BackendKind,
    rows: Option<(usize, &Path)>,
) -> Result<GradValues, crate::diag::Diag> {
    let loss = pipeline::find_loss(g, train)?;
    let gg = pipeline::grad_graph(g, loss)?;
    let mut params = interp::init_params(&gg.graph, seed);
    let mut inputs = SecondaryMap::new();
    if let Some((n, base)) = rows {
        let Some(spec) = train.filter(|t| t.data.is_some()) else {
            return Err(diag::error(
                diag::code::INPUT,
                "`--batch` feeds rows of the `train` block's data, and this file has none",
            )
            .with_notes(vec![
                "help: add `data = csv(\"file.csv\", label = \"label\")` to a `train` block, or leave out `--batch`".into(),
            ]));
        };
        let data = crate::train::prepare(g, spec, base, spec.seed)?;
        let order = data.first_batch(spec.seed, n);
        data.set_learnt(g, spec, &gg.graph, &mut params)?;
        inputs = data.batch(&gg.graph, &order);
    }
    if let Some(p) = params_file {
        crate::train::restore(&gg.graph, &mut params, p)?;
    }
    let (loss, grads) = grads_on(
        &mut Engine::new(backend, &gg.graph),
        &gg,
        &mut params,
        &inputs,
    )?;
    Ok((loss, grads, gg.warnings))
}

/// The loss of a [`pipeline::GradGraph`] and each parameter's gradient
/// by name, run on `engine` (made for `gg.graph`) with these parameters
/// and inputs.
pub fn grads_on(
    engine: &mut Engine,
    gg: &pipeline::GradGraph,
    params: &mut SecondaryMap<crate::ir::ParamId, crate::tensor::Tensor>,
    inputs: &SecondaryMap<crate::ir::InputId, Option<crate::tensor::Tensor>>,
) -> Result<(f32, Vec<(String, crate::tensor::Tensor)>), crate::diag::Diag> {
    let outs = engine.run(params, inputs).map_err(|e| e.to_diag())?;
    let grads = gg
        .grads
        .iter()
        .zip(&outs[1..])
        .map(|((p, _), t)| (gg.graph.params[*p].name.clone(), t.clone()))
        .collect();
    Ok((outs[0].data[0], grads))
}

pub fn warn_non_finite(
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

/// `nnc compile`'s settings for a library.
pub struct LibraryArgs<'a> {
    pub file: &'a Path,
    /// Each dimension's sizes: one fixes it, several make it an argument.
    pub dims: &'a [(String, Vec<usize>)],
    pub output: Option<&'a Path>,
    pub name: Option<&'a str>,
    pub params: Option<&'a Path>,
    pub target_cpu: Option<&'a str>,
    pub target: Option<&'a str>,
    pub keep_temps: bool,
}

/// Builds a library of `g`'s outputs ([`crate::aot`]); returns what to
/// print: the files written and the exported functions.
pub fn compile_library(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    a: &LibraryArgs,
) -> Result<String, crate::diag::Diag> {
    let file_graph = g;
    let lib_graph = crate::aot::library_graph(g, train)?;
    let g = &lib_graph;
    // Named after the output when one is given, else after the source.
    let stem = a
        .output
        .unwrap_or(a.file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = match a.name {
        Some(n) if crate::aot::name_from(n) == n => n.to_string(),
        Some(n) => {
            return Err(crate::diag::error(
                crate::diag::code::LIBRARY,
                format!("`--name {n}` is not a C identifier"),
            )
            .with_notes(vec![format!(
                "help: letters, digits and `_`, not starting with a digit: `{}`",
                crate::aot::name_from(n)
            )]))
        }
        None => crate::aot::name_from(&stem),
    };
    let out = match a.output {
        Some(p) if crate::aot::Kind::of(p).is_some() => p.to_path_buf(),
        Some(p) => {
            return Err(crate::diag::error(
                crate::diag::code::LIBRARY,
                format!(
                    "`-o {}`: the extension says what to write, and it is not .so, .a or .o",
                    p.display()
                ),
            )
            .with_notes(vec![
            "help: `NAME.so` (a shared library), `NAME.a` (a static one) or `NAME.o` (an object)"
                .into(),
        ]))
        }
        None if a
            .target
            .is_some_and(|t| t.split('-').next() != Some(std::env::consts::ARCH)) =>
        {
            std::path::PathBuf::from(format!("{stem}.o"))
        }
        None => std::path::PathBuf::from(format!("{stem}.so")),
    };
    // Another architecture than this machine's (a triple naming this
    // one is this machine's).
    let target = a
        .target
        .filter(|t| t.split('-').next() != Some(std::env::consts::ARCH))
        .map(str::to_string);
    if target.is_some() && crate::aot::Kind::of(&out) != Some(crate::aot::Kind::Object) {
        return Err(crate::diag::error(
            crate::diag::code::LIBRARY,
            format!(
                "for another architecture nnc writes an object, not `{}`",
                out.display()
            ),
        )
        .with_notes(vec![
            "help: name the output `NAME.o`; its C wrappers and header are written beside it"
                .into(),
        ]));
    }
    // One binding per combination of the sizes of the dimensions given
    // several (the run-time ones, in the order given).
    let varying: Vec<&(String, Vec<usize>)> = a.dims.iter().filter(|(_, v)| v.len() > 1).collect();
    let fixed: Vec<(String, usize)> = a
        .dims
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(n, v)| (n.clone(), v[0]))
        .collect();
    let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
    for (_, sizes) in &varying {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                sizes.iter().map(move |&s| {
                    let mut c = c.clone();
                    c.push(s);
                    c
                })
            })
            .collect();
    }
    const MAX_VARIANTS: usize = 16;
    if combos.len() > MAX_VARIANTS {
        return Err(crate::diag::error(
            crate::diag::code::LIBRARY,
            format!(
                "{} combinations of sizes: a library holds at most {MAX_VARIANTS} compiled programs",
                combos.len()
            ),
        )
        .with_notes(vec!["help: give fewer sizes with --dim".into()]));
    }
    // A dimension nothing sizes takes any size at run time when it can;
    // a variant per chunk size of it, the training step (at the batch)
    // in the one of the batch's size.
    let rows = row_dim(g, a.dims, train.is_some())?;
    let batch = train.map(|t| t.batch);
    let mut variants = Vec::new();
    for combo in &combos {
        let mut dims = fixed.clone();
        dims.extend(varying.iter().zip(combo).map(|((n, _), &s)| (n.clone(), s)));
        let Some((b, _)) = &rows else {
            variants.push(crate::aot::Binding {
                syms: bind_dims(g, &dims, batch)?,
                rows: 0,
                train: true,
            });
            continue;
        };
        for c in crate::aot::chunk_sizes(batch) {
            let mut dims = dims.clone();
            dims.push((g.syms[*b].name.clone(), c));
            variants.push(crate::aot::Binding {
                syms: bind_dims(g, &dims, None)?,
                rows: c,
                train: batch == Some(c),
            });
        }
    }
    let dims: Vec<crate::ir::Sym> = varying
        .iter()
        .filter_map(|(n, _)| g.syms.iter().find(|(_, s)| &s.name == n).map(|(s, _)| s))
        .collect();
    // A `train` block adds a training step; the last phase's graph holds
    // every parameter and the optimizer's state.
    let steps = match train {
        Some(t) => Some((
            pipeline::train_steps(file_graph, t)?
                .into_iter()
                .map(|p| p.step.graph)
                .collect::<Vec<_>>(),
            t.seed,
        )),
        None => None,
    };
    let table = steps.as_ref().and_then(|(s, _)| s.last()).unwrap_or(g);
    let mut params = interp::init_params(table, 0);
    if let Some(p) = a.params {
        crate::train::restore(table, &mut params, p)?;
    }
    let opts = crate::aot::Options {
        name,
        source: a.file.display().to_string(),
        out,
        target_cpu: match (a.target_cpu, &target) {
            (Some(c), _) => Some(c.to_string()),
            (None, None) if cfg!(target_arch = "x86_64") => Some("x86-64-v3".into()),
            (None, _) => None,
        },
        target,
        keep: a.keep_temps,
    };
    let graphs = crate::aot::Graphs {
        run: g,
        train: steps,
        optimizers: train
            .map(|t| t.steps().iter().map(|p| p.optimizer).collect())
            .unwrap_or_default(),
        dims,
        rows,
        variants,
    };
    let lib = crate::aot::compile(&graphs, &params, &opts)?;
    let mut text = format!(
        "wrote {} and {}\n",
        lib.library.display(),
        lib.header.display()
    );
    for f in lib.functions {
        text.push_str(&format!("  {f}\n"));
    }
    if let Some(l) = lib.link_with {
        text.push_str(&format!("{l}\n"));
    }
    Ok(text)
}

/// `--dim NAME=…` for a name that is no symbolic dimension of `g`.
pub fn unknown_dim(g: &Graph, name: &str) -> crate::diag::Diag {
    let known: Vec<&str> = g.syms.values().map(|s| s.name.as_str()).collect();
    crate::diag::error(
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
    )])
}
