//! The run time of a compiled library: the C functions the generated
//! wrappers (`<name>_new`, `<name>_run`, …) call. They rebuild the
//! program from the plan and kernel table the library embeds
//! ([`Program::from_table`]: the JIT's executor with the library's
//! kernels, no Cranelift at run time) and never unwind into C: every
//! failure is an error code with a message for `<name>_last_error`.

use super::Plan;
use crate::backend::jit::{KernelFn, Program};
use crate::ir::{InputId, ParamId};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

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

/// A loaded model and its execution context: the plan, the program built
/// from it (with its buffers) and the parameters.
pub struct Model {
    plan: Plan,
    program: Program,
    params: SecondaryMap<ParamId, Tensor>,
    inputs: SecondaryMap<InputId, Option<Tensor>>,
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
        let bad = |m: String| (ERR_RUN, format!("the library is damaged: {m}"));
        let plan: Plan = serde_json::from_slice(plan).map_err(|e| bad(e.to_string()))?;
        let program =
            Program::from_table(plan.schedule.clone(), fns).map_err(|e| bad(e.to_string()))?;
        let g = &plan.schedule.graph;
        let mut m = Model {
            params: crate::backend::interp::init_params(g, 0),
            inputs: SecondaryMap::new(),
            program,
            plan,
        };
        m.set_params(params, "the embedded parameters")?;
        if let Some(k) = m.plan.rng_key {
            m.inputs[k] = Some(crate::backend::interp::rng_key(0, 0));
        }
        Ok(m)
    }

    /// Replaces every parameter by the tensor of its name in the
    /// safetensors `bytes` (all or nothing).
    fn set_params(&mut self, bytes: &[u8], shown: &str) -> Result<(), (c_int, String)> {
        let (tensors, _) = crate::train::checkpoint::from_bytes(bytes, shown)
            .map_err(|e| (ERR_PARAMS, e.to_string()))?;
        let g = &self.plan.schedule.graph;
        let mut new = self.params.clone();
        for (id, p) in g.params.iter() {
            match tensors.get(&p.name) {
                Some(t) if t.shape == new[id].shape => new[id] = t.clone(),
                Some(t) => {
                    return Err((
                        ERR_PARAMS,
                        format!(
                            "`{}` in `{shown}` has shape {:?}, the model's is {:?}",
                            p.name, t.shape, new[id].shape
                        ),
                    ))
                }
                None => return Err((ERR_PARAMS, format!("`{shown}` has no tensor `{}`", p.name))),
            }
        }
        self.params = new;
        Ok(())
    }
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
        m.set_params(&data, &path)
    })
}

/// Runs the model: `inputs[k]` holds the k-th input of the header's
/// order (row-major, of its declared length), `outputs[k]` receives the
/// k-th output.
///
/// # Safety
/// `m` comes from `nnc_rt_new`; the arrays hold one valid pointer per
/// input and output, each to as many floats as the header says.
#[no_mangle]
pub unsafe extern "C" fn nnc_rt_run(
    m: *mut Model,
    inputs: *const *const f32,
    outputs: *const *mut f32,
) -> c_int {
    guard(|| {
        let Some(m) = m.as_mut() else {
            return Err((ERR_ARGUMENT, "run: a null model".into()));
        };
        let s = &m.plan.schedule;
        let n_in = m.plan.inputs.len();
        let n_out = s.outputs.len();
        if (n_in > 0 && inputs.is_null()) || (n_out > 0 && outputs.is_null()) {
            return Err((ERR_ARGUMENT, "run: a null input or output array".into()));
        }
        for (k, &(id, ref shape)) in m.plan.inputs.iter().enumerate() {
            let p = *inputs.add(k);
            if p.is_null() {
                let name = &s.graph.inputs[id].name;
                return Err((ERR_ARGUMENT, format!("run: input `{name}` is null")));
            }
            let len = shape.iter().product();
            let t = Tensor::new(shape.clone(), std::slice::from_raw_parts(p, len).to_vec());
            m.inputs[id] = Some(t);
        }
        for k in 0..n_out {
            if (*outputs.add(k)).is_null() {
                let name = &s.graph.outputs[k].name;
                return Err((ERR_ARGUMENT, format!("run: output `{name}` is null")));
            }
        }
        let run = |m: &mut Model| -> Result<Vec<Tensor>, crate::exec::Error> {
            m.program.load_inputs(&m.inputs)?;
            m.program.run(&mut m.params, true, false)
        };
        let outs = run(m).map_err(|e| (ERR_RUN, e.to_string()))?;
        for (k, t) in outs.iter().enumerate() {
            std::ptr::copy_nonoverlapping(t.data.as_ptr(), *outputs.add(k), t.data.len());
        }
        Ok(())
    })
}

/// The message of this thread's last error ("" if none).
#[no_mangle]
pub extern "C" fn nnc_rt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
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
