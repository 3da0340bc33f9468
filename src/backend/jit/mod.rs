//! The Cranelift backend: a [`Schedule`] (see [`crate::schedule`])
//! compiled to native code for this CPU and run.
//!
//! - Loop kernels (elementwise chains, reductions with their fused
//!   prologue) become one Cranelift function each ([`codegen`]), `f32x4`
//!   in the innermost loop, split over the rayon pool when large
//!   ([`threads`]).
//! - Matmuls call the `gemm` crate (tuned AVX2 / AVX-512 kernels); a
//!   transposed operand is read with swapped strides, never copied.
//! - Transposes are strided copies in Rust.
//! - Convolution and its two gradients are im2col + GEMM, pooling and its
//!   gradient, slices and concatenations are loops over the buffers
//!   ([`native`]), all without allocating.
//! - A `scan`'s body schedule is compiled once, as a [`program::Program`]
//!   of its own, and run once per step; the carry and the step slices are
//!   copied into its input buffers and its result out of its output
//!   buffer.
//! - Gather, scatter and random draws run the interpreter's routine
//!   ([`interp::eval_op`]) on the buffers: correct, but it allocates its
//!   result.
//!
//! Parameters are swapped in and out of their buffers (no copy), updates
//! are swapped into the parameters after a step. After the first call on
//! a shape set, a step made only of loop kernels, matmuls and transposes
//! allocates nothing but the returned output tensors (`tests/alloc.rs`
//! counts).
//!
//! A [`Jit`] fuses its graph once ([`pipeline::fuse`]) and keeps one
//! compiled program per set of input shapes; the machine code is freed
//! when the program is dropped.
//!
//! [`Schedule`]: crate::schedule::Schedule
//! [`pipeline::fuse`]: crate::pipeline::fuse

mod codegen;
mod math;
mod native;
mod program;
pub mod threads;

use crate::exec::bind::{self, Feed};
use crate::exec::Error;
use crate::ir::{Graph, InputId, ParamId};
use crate::pipeline;
use crate::schedule::Fused;
use crate::tensor::Tensor;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_entity::SecondaryMap;
use cranelift_jit::{JITBuilder, JITModule};

/// The host CPU's ISA (its flags: SSE4.2, AVX, FMA where present),
/// optimising for speed: built once per process and shared by every
/// module, JIT or (for ahead-of-time output) object.
pub fn host_isa() -> Result<cranelift_codegen::isa::OwnedTargetIsa, String> {
    static ISA: std::sync::OnceLock<Result<cranelift_codegen::isa::OwnedTargetIsa, String>> =
        std::sync::OnceLock::new();
    ISA.get_or_init(|| {
        let mut flags = settings::builder();
        let set =
            |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| e.to_string());
        set(&mut flags, "opt_level", "speed")?;
        set(&mut flags, "use_colocated_libcalls", "false")?;
        set(&mut flags, "is_pic", "false")?;
        cranelift_native::builder()
            .map_err(|e| format!("this CPU is not supported by Cranelift: {e}"))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// A fresh JIT module on the host ISA, with the symbols compiled kernels
/// call.
pub fn new_module() -> Result<JITModule, String> {
    let mut builder = JITBuilder::with_isa(host_isa()?, cranelift_module::default_libcall_names());
    builder.symbol(math::POWF_SYMBOL, math::powf as *const u8);
    Ok(JITModule::new(builder))
}

/// A graph compiled on demand, once per set of input shapes.
pub struct Jit<'g> {
    g: &'g Graph,
    /// The graph optimised and fused, on first use (it does not depend on
    /// the shapes).
    fused: Option<Fused>,
    /// Compiled programs with the input shapes each was compiled for
    /// (`None`: the input was not fed). A handful at most, so a linear
    /// search that compares the shapes themselves, without allocating.
    cache: Vec<(Vec<Option<Vec<usize>>>, program::Program)>,
    /// The index of the last program run.
    last: Option<usize>,
}

impl<'g> Jit<'g> {
    /// Prepares `g` for its outputs and updates; nothing is compiled until
    /// the first call.
    pub fn new(g: &'g Graph) -> Jit<'g> {
        Jit {
            g,
            fused: None,
            cache: Vec::new(),
            last: None,
        }
    }

    /// The program for these inputs (compiled on first use), with the
    /// inputs loaded into its buffers. On a cache hit this allocates
    /// nothing.
    fn program(
        &mut self,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        params: &SecondaryMap<ParamId, Tensor>,
    ) -> Result<&mut program::Program, Error> {
        let fed = |i: InputId| inputs[i].as_ref().map(|t| &t.shape[..]);
        let hit = self.cache.iter().position(|(key, _)| {
            key.iter()
                .zip(self.g.inputs.keys())
                .all(|(k, i)| k.as_deref() == fed(i))
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let fused = self.fused.get_or_insert_with(|| pipeline::fuse(self.g));
                let live = bind::live_nodes(&fused.graph, &fused.roots);
                let feed = Feed { params, inputs };
                let values = bind::input_values(&fused.graph, &feed, &live)?;
                let syms = bind::bind_syms(&fused.graph, &values)?;
                let sched = pipeline::schedule(fused, &syms)?;
                let p = program::Program::compile(sched, false)?;
                let key = self.g.inputs.keys().map(|i| fed(i).map(<[usize]>::to_vec));
                self.cache.push((key.collect(), p));
                self.cache.len() - 1
            }
        };
        self.last = Some(at);
        let p = &mut self.cache[at].1;
        p.load_inputs(inputs)?;
        Ok(p)
    }

    /// Compiles the program for these inputs' shapes, if not yet cached.
    pub fn prepare(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        self.program(inputs, params).map(|_| ())
    }

    /// Evaluates the graph's outputs, with the parameters lent by
    /// swapping rather than copied (they are back in `params` when this
    /// returns).
    pub fn eval(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        self.program(inputs, params)?.run(params, true, false)
    }

    /// One step without returning anything. After the first call for a
    /// shape set this allocates nothing when every operation is compiled.
    pub fn step_in_place(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        self.program(inputs, params)?.run(params, false, true)?;
        Ok(())
    }

    /// Runs the program of the last call again on the inputs it loaded
    /// (a step when `step`, else an evaluation), returning nothing: the
    /// loop `nnc bench` times, with the data already in place as the peers'
    /// benchmarks have it. Errors if nothing ran yet.
    pub fn again(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        step: bool,
    ) -> Result<(), Error> {
        let p = self
            .last
            .and_then(|k| self.cache.get_mut(k))
            .map(|(_, p)| p)
            .ok_or_else(|| Error::Backend {
                message: "`again` before a first call".into(),
            })?;
        p.run(params, false, step).map(|_| ())
    }

    /// One step: outputs from the current parameters, then the updates
    /// written into `params`.
    pub fn step(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        self.program(inputs, params)?.run(params, true, true)
    }
}

/// The Cranelift IR of every loop kernel of `g`'s program for the given
/// symbolic-dimension sizes (`nnc compile --emit clif`).
pub fn clif(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
) -> Result<String, Error> {
    let sched = pipeline::schedule(&pipeline::fuse(g), syms)?;
    let p = program::Program::compile(sched, true)?;
    Ok(p.clif.join("\n"))
}
