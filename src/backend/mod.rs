//! Backends: what runs a graph. Every backend has the same face: an
//! `Options` struct, an error type that becomes a diagnostic, and one entry
//! function. `interp` is the reference that every later backend (Cranelift
//! JIT, OpenCL) is tested against.

pub mod compiled;
pub mod interp;
pub mod jit;
pub mod opencl;

pub use crate::exec::{bind, memory, Error};
use crate::ir::{Graph, InputId, ParamId};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// Which backend runs a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Compiled to native code with Cranelift (the default).
    #[default]
    Jit,
    /// The reference interpreter.
    Interp,
    /// Generated OpenCL C kernels on an OpenCL device (a build with the
    /// `opencl` feature; `--device N` chooses the device).
    Opencl,
}

/// A graph ready to run on one backend: the interpreter, or the JIT with
/// its cache of compiled programs.
pub enum Engine<'g> {
    /// The graph, and the outputs of the last [`Engine::step_kept`].
    Interp(&'g Graph, Vec<Tensor>),
    Jit(Box<jit::Jit<'g>>),
    OpenCl(Box<opencl::OpenCl<'g>>),
}

impl BackendKind {
    /// Whether training on this backend keeps the parameters in the
    /// device's memory between steps ([`Engine::step_kept`]).
    pub fn keeps_params(self) -> bool {
        matches!(self, BackendKind::Opencl)
    }
}

impl<'g> Engine<'g> {
    pub fn new(kind: BackendKind, g: &'g Graph) -> Engine<'g> {
        match kind {
            BackendKind::Interp => Engine::Interp(g, Vec::new()),
            BackendKind::Jit => Engine::Jit(Box::new(jit::Jit::new(g))),
            BackendKind::Opencl => Engine::OpenCl(Box::new(opencl::OpenCl::new(g))),
        }
    }

    /// The graph's outputs; `params` are lent, not changed.
    pub fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        match self {
            Engine::Interp(g, _) => interp::run(g, &bind::Feed { params, inputs }),
            Engine::Jit(j) => j.eval(params, inputs),
            Engine::OpenCl(c) => c.eval(params, inputs),
        }
    }

    /// Compiles for these inputs' shapes without running (the compiling
    /// backends; the interpreter has nothing to prepare).
    pub fn prepare(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        match self {
            Engine::Interp(..) => Ok(()),
            Engine::Jit(j) => j.prepare(params, inputs),
            Engine::OpenCl(c) => c.prepare(params, inputs),
        }
    }

    /// A step whose outputs are not needed (the JIT then allocates
    /// nothing once compiled).
    pub fn step_in_place(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        match self {
            Engine::Interp(g, _) => interp::step(g, params, inputs).map(|_| ()),
            Engine::Jit(j) => j.step_in_place(params, inputs),
            Engine::OpenCl(c) => c.step_in_place(params, inputs),
        }
    }

    /// Runs the last call again on the inputs it loaded, keeping nothing
    /// (for timing). The interpreter has no loaded state: it runs `inputs`.
    pub fn again(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        step: bool,
    ) -> Result<(), Error> {
        match self {
            Engine::Interp(g, _) if step => interp::step(g, params, inputs).map(|_| ()),
            Engine::Interp(g, _) => interp::run(g, &bind::Feed { params, inputs }).map(|_| ()),
            Engine::Jit(j) => j.again(params, step),
            Engine::OpenCl(c) => c.again(params, step),
        }
    }

    /// The bytes of the buffers planned for the last call's program; the
    /// interpreter plans none (it allocates as it goes).
    pub fn planned_bytes(&self) -> Option<u64> {
        match self {
            Engine::Interp(..) => None,
            Engine::Jit(j) => j.planned_bytes(),
            Engine::OpenCl(c) => c.planned_bytes(),
        }
    }

    /// One step: the outputs, and the updates written into `params`.
    pub fn step(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        match self {
            Engine::Interp(g, _) => interp::step(g, params, inputs),
            Engine::Jit(j) => j.step(params, inputs),
            Engine::OpenCl(c) => c.step(params, inputs),
        }
    }

    /// [`Engine::step`], handing each output to `ready` (its index and
    /// data) as soon as it is final: on the JIT while the steps after its
    /// last writer run; on the interpreter and OpenCL after the step.
    pub fn step_observed(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        ready: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<Tensor>, Error> {
        match self {
            Engine::Jit(j) => j.step_observed(params, inputs, ready),
            Engine::OpenCl(c) => c.step_observed(params, inputs, ready),
            Engine::Interp(g, _) => {
                interp::step(g, params, inputs).map(|outs| compiled::hand_over(outs, ready))
            }
        }
    }

    /// A training step that may leave the parameters on the device that
    /// computes it (OpenCL) until [`Engine::sync`]: returns only the
    /// outputs `wanted`, by index. On the CPU backends `params` holds the
    /// updated parameters afterwards, as with [`Engine::step`].
    pub fn step_kept(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        wanted: &[usize],
    ) -> Result<Vec<Tensor>, Error> {
        match self {
            Engine::Interp(g, last) => {
                *last = interp::step(g, params, inputs)?;
                Ok(wanted.iter().map(|&i| last[i].clone()).collect())
            }
            Engine::Jit(j) => j.step_kept(params, inputs, wanted),
            Engine::OpenCl(c) => c.step_kept(params, inputs, wanted),
        }
    }

    /// Brings the parameters [`Engine::step_kept`] left on a device back
    /// into `params` (nothing to do on the CPU backends).
    pub fn sync(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        match self {
            Engine::Interp(..) => Ok(()),
            Engine::Jit(j) => j.sync(params),
            Engine::OpenCl(c) => c.sync(params),
        }
    }

    /// Every output of the last [`Engine::step_kept`] (to say what blew
    /// up when its guard output is not finite).
    pub fn outputs(&mut self) -> Result<Vec<Tensor>, Error> {
        match self {
            Engine::Interp(_, last) => Ok(last.clone()),
            Engine::Jit(j) => j.outputs(),
            Engine::OpenCl(c) => c.outputs(),
        }
    }
}
