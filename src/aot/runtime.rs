//! The run time of a compiled library: the C functions the generated
//! wrappers (`<name>_new`, `<name>_run`, …) call. They rebuild the
//! program from the plan and kernel table the library embeds
//! ([`Program::from_table`]: the JIT's executor with the library's
//! kernels, no Cranelift at run time) and never unwind into C: every
//! failure is an error code with a message for `<name>_last_error`.

use super::Plan;
use crate::backend::jit::{KernelFn, Program};
use crate::ir::ParamId;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::Arc;

/// The error codes of the C API (the header defines them per model).
pub const OK: c_int = 0;
/// A null or otherwise unusable argument.
pub const ERR_ARGUMENT: c_int = 1;
/// A parameter file that is missing, unreadable or of another model.
pub const ERR_PARAMS: c_int = 2;
/// The program failed while running (or the library is inconsistent).
pub const ERR_RUN: c_int = 3;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<String>) {
    let msg = msg.into().replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(msg).unwrap_or_default());
}

/// A loaded model and its execution context: the plan, the programs
/// built from it (each variant's on its first use, with their buffers)
/// and the parameters; or an execution context of a model
/// (`nnc_rt_context_new`): programs and buffers of its own on the model's
/// plan and parameters.
pub struct Model {
    plan: Arc<Plan>,
    /// The library's kernels, and where each variant's start.
    fns: Vec<KernelFn>,
    starts: Vec<usize>,
    built: Vec<Option<Built>>,
    params: Params,
    /// Training steps taken (the random draws' key counter).
    steps: u64,
    /// The epoch a varying learning rate is read at (`nnc_rt_set_epoch`).
    epoch: u64,
}

/// Every parameter and state, by the largest graph's table: a model's
/// own, or a context's model's.
enum Params {
    Own(SecondaryMap<ParamId, Tensor>),
    /// A context's: the model's, which outlives the context and does not
    /// change while it runs (the header's contract); read only.
    Of(*const Model),
}

impl Params {
    fn get(&self) -> &SecondaryMap<ParamId, Tensor> {
        match self {
            Params::Own(p) => p,
            // SAFETY: the model outlives its contexts, and a model's
            // `params` is `Own` (`nnc_rt_context_new` takes the model of
            // a context).
            Params::Of(m) => unsafe { (**m).params.get() },
        }
    }

    /// The parameters to change (`what`: the change, for the error on a
    /// context).
    fn get_mut(&mut self, what: &str) -> Result<&mut SecondaryMap<ParamId, Tensor>, Failure> {
        match self {
            Params::Own(p) => Ok(p),
            Params::Of(_) => Err((
                ERR_ARGUMENT,
                format!(
                    "{what}: a context shares its model's weights, read only; \
                     {what} on the model"
                ),
            )),
        }
    }
}

/// One variant's programs: its run and each phase of its training step.
struct Built {
    run: Program,
    train: Vec<Program>,
}

/// Runs `f`, turning an error or a panic into an error code and message.
fn guard(f: impl FnOnce() -> Result<(), (c_int, String)>) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => OK,
        Ok(Err((code, msg))) => {
            set_error(msg);
            code
        }
        Err(_) => {
            set_error("internal error: the runtime panicked");
            ERR_RUN
        }
    }
}

/// # Safety
/// `p` points to `len` readable bytes (or `len` is 0).
unsafe fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    match len {
        0 => &[],
        _ => std::slice::from_raw_parts(p, len),
    }
}

impl Model {
    fn new(plan: &[u8], fns: &[KernelFn], params: &[u8]) -> Result<Model, (c_int, String)> {
        let plan: Plan = serde_json::from_slice(plan).map_err(|e| damaged(e.to_string()))?;
        let mut starts = Vec::with_capacity(plan.variants.len());
        let mut at = 0;
        for v in &plan.variants {
            starts.push(at);
            at += v.kernels;
        }
        if at != fns.len() || plan.variants.is_empty() {
            return Err(damaged(format!("{} kernels, {at} in the plan", fns.len())));
        }
        // Placeholders of the right shapes, replaced by the embedded values.
        let mut m = Model {
            params: Params::Own(zeros(table_of(&plan))),
            fns: fns.to_vec(),
            starts,
            built: plan.variants.iter().map(|_| None).collect(),
            plan: Arc::new(plan),
            steps: 0,
            epoch: 0,
        };
        m.set_params(params, "the embedded parameters", true)?;
        Ok(m)
    }

    /// The sizes of the run-time dimensions in `dims`: the plan's, then
    /// (for a run, `with_rows`) the row dimension's.
    ///
    /// # Safety
    /// `dims` holds as many values as that.
    unsafe fn sizes<'d>(
        &self,
        dims: *const usize,
        with_rows: bool,
    ) -> Result<(&'d [usize], Option<usize>), Failure> {
        let n = self.plan.dims.len();
        let rows = usize::from(with_rows && self.plan.rows.is_some());
        if n + rows > 0 && dims.is_null() {
            return Err((ERR_ARGUMENT, "null dimensions".into()));
        }
        let all: &[usize] = match n + rows {
            0 => &[],
            k => std::slice::from_raw_parts(dims, k),
        };
        Ok((&all[..n], (rows == 1).then(|| all[n])))
    }

    /// The variant compiled for the run-time dimensions' `sizes` and
    /// `rows` rows (0: any; none for a model without a row dimension),
    /// with a training step when `train`; its programs built on first use.
    fn variant(
        &mut self,
        sizes: &[usize],
        rows: usize,
        train: bool,
    ) -> Result<usize, (c_int, String)> {
        let found = self.plan.variants.iter().position(|v| {
            v.sizes == sizes
                && (train || rows == 0 || v.rows == rows)
                && (!train || v.train.is_some())
        });
        let Some(k) = found else {
            let show = |xs: &[usize]| {
                let xs: Vec<String> = self
                    .plan
                    .dims
                    .iter()
                    .zip(xs)
                    .map(|(d, s)| format!("{d} = {s}"))
                    .collect();
                xs.join(", ")
            };
            let mut have: Vec<String> = self.plan.variants.iter().map(|v| show(&v.sizes)).collect();
            have.dedup();
            return Err((
                ERR_ARGUMENT,
                format!(
                    "{} was not compiled into this library; it has {} (nnc compile --dim NAME=SIZE,SIZE,…)",
                    show(sizes),
                    have.join("; ")
                ),
            ));
        };
        if self.built[k].is_none() {
            let v = &self.plan.variants[k];
            let mut used = self.starts[k];
            let fns = &self.fns[..self.starts[k] + v.kernels];
            let mut program = |sched: &crate::schedule::Schedule| {
                // The kernels' memory accesses trust the schedule: check it.
                sched.verify().map_err(|e| damaged(e.to_string()))?;
                let (p, n) = Program::from_table(sched.clone(), &fns[used.min(fns.len())..])
                    .map_err(|e| damaged(e.to_string()))?;
                used += n;
                Ok::<_, (c_int, String)>(p)
            };
            let run = program(&v.run.schedule)?;
            let train = match &v.train {
                Some(t) => t
                    .phases
                    .iter()
                    .map(|p| program(&p.schedule))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            if used != fns.len() {
                return Err(damaged(format!("variant {k} uses {used} kernels")));
            }
            self.built[k] = Some(Built { run, train });
        }
        Ok(k)
    }

    /// Runs variant `k` on rows `start..start + its rows` of `total` (a
    /// run without a row dimension: `None`, the whole arrays), reading the
    /// inputs from `inputs` and writing that window of the outputs.
    ///
    /// # Safety
    /// As [`nnc_rt_run`], the arrays holding `total` rows.
    unsafe fn run_window(
        &mut self,
        k: usize,
        window: Option<(usize, usize)>,
        inputs: *const *const f32,
        outputs: *const *mut f32,
    ) -> Result<(), (c_int, String)> {
        let v = &self.plan.variants[k];
        let axes = self.plan.rows.as_ref();
        let Some(built) = &mut self.built[k] else {
            return Err(damaged("a variant was not built".into()));
        };
        let key = v.run.rng_key.map(|_| crate::backend::interp::rng_key(0, 0));
        let in_axis = |i: usize| axes.and_then(|r| r.inputs.get(i).copied().flatten());
        let mut in_place = Vec::new();
        Model::write_inputs(
            &mut built.run,
            &v.run,
            |k, _| Some(k),
            inputs,
            key,
            None,
            |i| window.zip(in_axis(i)),
            Some(&mut in_place),
        )?;
        let outs = built
            .run
            .run_on_inputs(self.params.get(), &in_place, true)
            .map_err(|e| (ERR_RUN, e.to_string()))?;
        for (i, t) in outs.iter().enumerate() {
            let dst = *outputs.add(i);
            match window.zip(axes.and_then(|r| r.outputs.get(i).copied().flatten())) {
                Some(((start, total), a)) => {
                    let (outer, rows, inner) = split(&t.shape, a);
                    for o in 0..outer {
                        std::ptr::copy_nonoverlapping(
                            t.data.as_ptr().add(o * rows * inner),
                            dst.add((o * total + start) * inner),
                            rows * inner,
                        );
                    }
                }
                None => std::ptr::copy_nonoverlapping(t.data.as_ptr(), dst, t.data.len()),
            }
        }
        Ok(())
    }

    /// The graph whose parameter table the model keeps.
    fn table(&self) -> &crate::ir::Graph {
        table_of(&self.plan)
    }

    /// Replaces parameters by the tensors of their names in the
    /// safetensors `bytes` (all or nothing). With `all`, every parameter
    /// and state must be there; else a missing state (optimizer
    /// moments, running statistics) keeps its value, as in `nnc run
    /// --params` with weights saved by `nnc train --save`.
    fn set_params(&mut self, bytes: &[u8], shown: &str, all: bool) -> Result<(), (c_int, String)> {
        let (mut tensors, _) = crate::train::checkpoint::from_bytes(bytes, shown)
            .map_err(|e| (ERR_PARAMS, e.to_string()))?;
        let table = table_of(&self.plan);
        let params = self.params.get_mut("load_params")?;
        let mut new = Vec::new();
        for (id, p) in table.params.iter() {
            match tensors.remove(&p.name) {
                Some(t) if t.shape == params[id].shape => new.push((id, t)),
                Some(t) => {
                    return Err((
                        ERR_PARAMS,
                        format!(
                            "`{}` in `{shown}` has shape {:?}, the model's is {:?}",
                            p.name, t.shape, params[id].shape
                        ),
                    ))
                }
                None if !all && p.role == crate::ir::Role::State => {}
                None => return Err((ERR_PARAMS, format!("`{shown}` has no tensor `{}`", p.name))),
            }
        }
        for (id, t) in new {
            params[id] = t;
        }
        Ok(())
    }

    /// Copies each input of `part` from its argument (`arg(k, name)`: the
    /// index in `ptrs` of the part's k-th input) straight into `program`'s
    /// buffer, and the random draws' key (`key`) into its own. Where
    /// `window(k)` gives `((start, total), axis)`, the argument holds
    /// `total` rows along `axis` and the buffer takes rows `start..`.
    /// With `in_place`, an input read whole, or a window of rows that lie
    /// together in its argument, is not copied but listed there (that part
    /// of the argument), for the run to read it in place
    /// ([`Program::run_on_inputs`]).
    ///
    /// # Safety
    /// `ptrs` holds a pointer per argument, each to as many floats as its
    /// input's shape has (with `total` rows; or null: an error).
    #[allow(clippy::too_many_arguments)]
    unsafe fn write_inputs<'a>(
        program: &mut Program,
        part: &super::Part,
        arg: impl Fn(usize, &str) -> Option<usize>,
        ptrs: *const *const f32,
        key: Option<Tensor>,
        rate: Option<f32>,
        window: impl Fn(usize) -> Option<((usize, usize), usize)>,
        mut in_place: Option<&mut Vec<InPlace<'a>>>,
    ) -> Result<(), (c_int, String)> {
        let g = &part.schedule.graph;
        for (k, (id, _)) in part.inputs.iter().enumerate() {
            let name = &g.inputs[*id].name;
            let at = arg(k, name).ok_or_else(|| damaged(format!("no argument for `{name}`")))?;
            let p = *ptrs.add(at);
            if p.is_null() {
                return Err((ERR_ARGUMENT, format!("input `{name}` is null")));
            }
            let buf = program
                .input_mut(*id)
                .ok_or_else(|| damaged(format!("no buffer for `{name}`")))?;
            if let Some(list) = in_place.as_deref_mut() {
                // Whole, or a window of rows that lie together in the
                // argument (nothing outside the row axis): in place.
                let at = match window(k) {
                    None => Some(0),
                    Some(((start, _), a)) => match split(&part.inputs[k].1, a) {
                        (1, _, inner) => Some(start * inner),
                        _ => None,
                    },
                };
                if let Some(at) = at {
                    // The argument holds the buffer's length from `at` (the
                    // caller's promise); the run only reads it.
                    list.push((*id, std::slice::from_raw_parts(p.add(at), buf.len())));
                    continue;
                }
            }
            match window(k) {
                Some(((start, total), a)) => {
                    let (outer, rows, inner) = split(&part.inputs[k].1, a);
                    for o in 0..outer {
                        std::ptr::copy_nonoverlapping(
                            p.add((o * total + start) * inner),
                            buf.as_mut_ptr().add(o * rows * inner),
                            rows * inner,
                        );
                    }
                }
                // The buffer has the input's planned length, the argument's.
                None => std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()),
            }
        }
        if let (Some(id), Some(key)) = (part.rng_key, key) {
            let buf = program
                .input_mut(id)
                .ok_or_else(|| damaged("no buffer for the random key".into()))?;
            buf.copy_from_slice(&key.data);
        }
        if let (Some((id, _)), Some(rate)) = (part.lr, rate) {
            let buf = program
                .input_mut(id)
                .ok_or_else(|| damaged("no buffer for the learning rate".into()))?;
            buf.copy_from_slice(&[rate]);
        }
        Ok(())
    }
}

/// The graph whose parameter table every part indexes: the last training
/// phase's (its table extends the others'), else the run's (parameters
/// have the same shapes in every variant).
fn table_of(plan: &Plan) -> &crate::ir::Graph {
    let v = &plan.variants[0];
    match plan.variants.iter().find_map(|v| v.train.as_ref()) {
        Some(t) => &t.phases.last().unwrap_or(&v.run).schedule.graph,
        None => &v.run.schedule.graph,
    }
}

/// `shape` around axis `a`: the product of the dims before it, its dim,
/// the product of those after.
fn split(shape: &[usize], a: usize) -> (usize, usize, usize) {
    let a = a.min(shape.len().saturating_sub(1));
    let outer = shape[..a].iter().product();
    let inner = shape.get(a + 1..).map_or(1, |s| s.iter().product());
    (outer, shape.get(a).copied().unwrap_or(1), inner)
}

/// An input read in place: its id and its part of the caller's array.
type InPlace<'a> = (crate::ir::InputId, &'a [f32]);

/// An error code and its message.
type Failure = (c_int, String);

fn damaged(m: String) -> Failure {
    (ERR_RUN, format!("the library is damaged: {m}"))
}

/// A zero tensor of every parameter's shape.
fn zeros(g: &crate::ir::Graph) -> SecondaryMap<ParamId, Tensor> {
    let mut out = SecondaryMap::new();
    for (id, p) in g.params.iter() {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let n = shape.iter().product();
        out[id] = Tensor::new(shape, vec![0.0; n]);
    }
    out
}

/// Builds a model from a library's embedded plan (`plan_len` bytes of
/// JSON), its `n_kernels` compiled kernels and its parameters (a
/// safetensors file's bytes). Null on failure (see `nnc_rt_last_error`).
///
/// # Safety
/// The pointers are the library's own data, of the lengths given.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_new(
    plan: *const u8,
    plan_len: usize,
    kernels: *const KernelFn,
    n_kernels: usize,
    params: *const u8,
    params_len: usize,
) -> *mut Model {
    let mut out = std::ptr::null_mut();
    guard(|| {
        if plan.is_null() || (kernels.is_null() && n_kernels > 0) || params.is_null() {
            return Err((ERR_ARGUMENT, "a null pointer to the library's data".into()));
        }
        let fns = match n_kernels {
            0 => &[][..],
            n => std::slice::from_raw_parts(kernels, n),
        };
        let m = Model::new(bytes(plan, plan_len), fns, bytes(params, params_len))?;
        out = Box::into_raw(Box::new(m));
        Ok(())
    });
    out
}

/// Replaces the model's parameters by those of the safetensors file at
/// `path` (every parameter, by name and shape; on error none changes).
///
/// # Safety
/// `m` comes from `nnc_rt_new`; `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_load_params(m: *mut Model, path: *const c_char) -> c_int {
    guard(|| {
        let (Some(m), false) = (m.as_mut(), path.is_null()) else {
            return Err((ERR_ARGUMENT, "load_params: a null model or path".into()));
        };
        let path = CStr::from_ptr(path).to_string_lossy().into_owned();
        let data = std::fs::read(&path).map_err(|e| (ERR_PARAMS, format!("`{path}`: {e}")))?;
        m.set_params(&data, &path, false)
    })
}

/// Runs the model: `dims` holds the run-time dimensions' sizes (in the
/// plan's order; null when there are none), `inputs[k]` the k-th input of
/// the header's order (row-major, of its declared length), `outputs[k]`
/// receives the k-th output.
///
/// # Safety
/// `m` comes from `nnc_rt_new`; the arrays hold one valid value per
/// dimension, input and output, each array as long as the header says.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_run(
    m: *mut Model,
    dims: *const usize,
    inputs: *const *const f32,
    outputs: *const *mut f32,
) -> c_int {
    guard(|| {
        let Some(m) = m.as_mut() else {
            return Err((ERR_ARGUMENT, "run: a null model".into()));
        };
        run(m, dims, inputs, outputs).map_err(|(c, e)| (c, format!("run: {e}")))
    })
}

/// [`nnc_rt_run`] on a model.
///
/// # Safety
/// As [`nnc_rt_run`].
unsafe fn run(
    m: &mut Model,
    dims: *const usize,
    inputs: *const *const f32,
    outputs: *const *mut f32,
) -> Result<(), (c_int, String)> {
    let (sizes, rows) = m.sizes(dims, true)?;
    let first = &m.plan.variants[0].run;
    if (!first.inputs.is_empty() && inputs.is_null()) || outputs.is_null() {
        return Err((ERR_ARGUMENT, "a null input or output array".into()));
    }
    for (k, o) in first.schedule.graph.outputs.iter().enumerate() {
        if (*outputs.add(k)).is_null() {
            return Err((ERR_ARGUMENT, format!("output `{}` is null", o.name)));
        }
    }
    let (n, chunks) = match (rows, &m.plan.rows) {
        (None, _) => {
            let k = m.variant(sizes, 0, false)?;
            return m.run_window(k, None, inputs, outputs);
        }
        (Some(n), Some(r)) => (n, r.chunks.clone()),
        (Some(_), None) => return Err(damaged("rows without a row dimension".into())),
    };
    let name = m
        .plan
        .rows
        .as_ref()
        .map_or("", |r| r.name.as_str())
        .to_string();
    if n == 0 {
        return Err((ERR_ARGUMENT, format!("{name} = 0: a run needs a row")));
    }
    if chunks.contains(&n) {
        let k = m.variant(sizes, n, false)?;
        return m.run_window(k, None, inputs, outputs);
    }
    // Greedily, largest chunk first: the sizes halve down to 1.
    let mut start = 0;
    while start < n {
        let Some(&c) = chunks.iter().find(|&&c| c <= n - start) else {
            return Err(damaged(format!("no chunk of at most {} rows", n - start)));
        };
        let k = m.variant(sizes, c, false)?;
        m.run_window(k, Some((start, n)), inputs, outputs)?;
        start += c;
    }
    Ok(())
}

/// One training step on one batch: `dims` as for [`nnc_rt_run`],
/// `inputs[k]` the k-th input of the header's `train_step` order; each
/// phase of the `train` block runs in order, updating the parameters and
/// the optimizer's state in place; `*loss` receives the step's loss (the
/// phases' sum). A loss that is not finite is an error (the update has
/// then been made: reload weights).
///
/// # Safety
/// As [`nnc_rt_run`]; `loss` points to one float.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_train_step(
    m: *mut Model,
    dims: *const usize,
    inputs: *const *const f32,
    loss: *mut f32,
) -> c_int {
    guard(|| {
        let Some(m) = m.as_mut() else {
            return Err((ERR_ARGUMENT, "train_step: a null model".into()));
        };
        if m.plan.variants.iter().all(|v| v.train.is_none()) {
            return Err((
                ERR_ARGUMENT,
                "train_step: this model has no training step".into(),
            ));
        }
        let prefix = |(c, e): (c_int, String)| (c, format!("train_step: {e}"));
        let (sizes, _) = m.sizes(dims, false).map_err(prefix)?;
        let k = m.variant(sizes, 0, true).map_err(prefix)?;
        let Some(t) = &m.plan.variants[k].train else {
            return Err(damaged("a variant without its training step".into()));
        };
        if (!t.inputs.is_empty() && inputs.is_null()) || loss.is_null() {
            return Err((
                ERR_ARGUMENT,
                "train_step: a null input array or loss".into(),
            ));
        }
        let Some(built) = &mut m.built[k] else {
            return Err(damaged("a variant was not built".into()));
        };
        let params = m.params.get_mut("train_step")?;
        let n_phases = t.phases.len() as u64;
        let mut total = 0.0f32;
        for (k, (part, program)) in t.phases.iter().zip(&mut built.train).enumerate() {
            // The arguments are the phases' inputs by name, each once.
            let arg = |_: usize, name: &str| t.inputs.iter().position(|(n, _)| n == name);
            let counter = m.steps * n_phases + k as u64;
            let key = part
                .rng_key
                .map(|_| crate::backend::interp::rng_key(t.seed, counter));
            let rate = part.lr.map(|(_, o)| o.rate(m.epoch, m.steps, 1.0));
            Model::write_inputs(program, part, arg, inputs, key, rate, |_| None, None)
                .map_err(prefix)?;
            let outs = program
                .run(params, true, true)
                .map_err(|e| (ERR_RUN, e.to_string()))?;
            total += outs.first().map_or(f32::NAN, |l| l.data[0]);
        }
        m.steps += 1;
        *loss = total;
        match total.is_finite() {
            true => Ok(()),
            false => Err((
                ERR_RUN,
                format!(
                    "train_step: the loss is {total}; lower the learning rate or scale the inputs"
                ),
            )),
        }
    })
}

/// Writes every parameter and state to a safetensors file at `path`
/// (through a temporary name: an existing file is replaced whole or not
/// at all).
///
/// # Safety
/// `m` comes from `nnc_rt_new`; `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_save_params(m: *mut Model, path: *const c_char) -> c_int {
    guard(|| {
        let (Some(m), false) = (m.as_ref(), path.is_null()) else {
            return Err((ERR_ARGUMENT, "save_params: a null model or path".into()));
        };
        let path = CStr::from_ptr(path).to_string_lossy().into_owned();
        let tensors: Vec<(String, &Tensor)> = m
            .table()
            .params
            .iter()
            .map(|(id, p)| (p.name.clone(), &m.params.get()[id]))
            .collect();
        crate::train::checkpoint::save(std::path::Path::new(&path), &tensors, &Default::default())
            .map_err(|e| (ERR_PARAMS, e.to_string()))
    })
}

/// Sets the epoch (from 0) a varying learning rate is read at by the
/// training steps that follow.
///
/// # Safety
/// `m` comes from `nnc_rt_new` (or is null: an error).
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_set_epoch(m: *mut Model, epoch: u64) -> c_int {
    guard(|| {
        let Some(m) = m.as_mut() else {
            return Err((ERR_ARGUMENT, "set_epoch: a null model".into()));
        };
        m.epoch = epoch;
        Ok(())
    })
}

/// The message of this thread's last error ("" if none).
#[no_mangle]
pub extern "C" fn nnc_rt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A context of `m`: programs and buffers of its own on `m`'s plan,
/// kernels and weights (shared, not copied), to run on another thread
/// while `m` and its other contexts run on theirs. A context of a context
/// is one of its model. Null on failure.
///
/// # Safety
/// `m` comes from `nnc_rt_new` or this function; its model outlives the
/// context, and nothing changes the model's weights
/// (`nnc_rt_load_params`, a training step) while the context is used.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_context_new(m: *const Model) -> *mut Model {
    let mut out = std::ptr::null_mut();
    guard(|| {
        let Some(m) = m.as_ref() else {
            return Err((ERR_ARGUMENT, "context_new: a null model".into()));
        };
        let model = match m.params {
            Params::Own(_) => m as *const Model,
            Params::Of(model) => model,
        };
        let c = Model {
            plan: Arc::clone(&m.plan),
            fns: m.fns.clone(),
            starts: m.starts.clone(),
            built: m.plan.variants.iter().map(|_| None).collect(),
            params: Params::Of(model),
            steps: m.steps,
            epoch: m.epoch,
        };
        out = Box::into_raw(Box::new(c));
        Ok(())
    });
    out
}

/// Frees a model (null is ignored).
///
/// # Safety
/// `m` comes from `nnc_rt_new` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_free(m: *mut Model) {
    if !m.is_null() {
        drop(Box::from_raw(m));
    }
}

/// `x ^ y` for the compiled kernels (the JIT links the same routine).
#[no_mangle]
pub extern "C" fn nnc_powf(x: f32, y: f32) -> f32 {
    crate::backend::jit::powf(x, y)
}
