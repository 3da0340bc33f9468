//! The Cranelift backend: the fused graph (see [`crate::passes::fusion`])
//! compiled to native code for one set of concrete shapes.
//!
//! - Loop kernels (elementwise chains, reductions with their fused
//!   prologue) become one Cranelift function each ([`codegen`]), `f32x4`
//!   in the innermost loop, split over the rayon pool when large.
//! - Matmuls call the `gemm` crate (tuned AVX2 / AVX-512 kernels); a
//!   transposed operand is read with swapped strides, never copied.
//! - Transposes are strided copies in Rust.
//! - Convolution and its two gradients are im2col + GEMM, pooling and its
//!   gradient, slices and concatenations are loops over the buffers
//!   ([`native`]), all without allocating.
//! - A `scan`'s body is compiled once, as a [`plan::Program`] of its own,
//!   and run once per step; the carry and the step slices are copied into
//!   its input buffers and its result out of its output buffer.
//! - Gather, scatter and random draws run the interpreter's routine
//!   ([`interp::eval_op`]) on the buffers: correct, but it allocates its
//!   result.
//!
//! Buffers are planned once per shape set ([`plan`]): stored values share
//! buffers when their lifetimes do not overlap. Parameters are swapped in
//! and out of their buffers (no copy), updates are swapped into the
//! parameters after a step. After the first call on a shape set, a step
//! made only of loop kernels, matmuls and transposes allocates nothing but
//! the returned output tensors (`tests/jit.rs` counts).
//!
//! A [`Jit`] caches one compiled [`Program`] per set of input shapes; the
//! machine code is freed when the program is dropped.

mod codegen;
mod math;
mod native;
mod plan;

pub use codegen::{Expr, LoopKernel};

use crate::backend::interp::{self, Error, Feed};
use crate::ir::{Graph, InputId, Node, ParamId};
use crate::tensor::Tensor;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_entity::SecondaryMap;
use cranelift_jit::{JITBuilder, JITModule};
use std::collections::HashMap;

/// A fresh JIT module for the host CPU (its ISA flags: SSE4.2, AVX, FMA
/// where present), optimising for speed.
pub fn new_module() -> Result<JITModule, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| e.to_string());
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa = cranelift_native::builder()
        .map_err(|e| format!("this CPU is not supported by Cranelift: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        cranelift_module::default_libcall_names(),
    )))
}

/// A graph compiled on demand, once per set of input shapes.
pub struct Jit<'g> {
    g: &'g Graph,
    roots: Vec<Node>,
    cache: HashMap<u64, plan::Program>,
    /// The key of the last program run.
    last: Option<u64>,
}

impl<'g> Jit<'g> {
    /// Prepares `g` for its outputs and updates; nothing is compiled until
    /// the first call.
    pub fn new(g: &'g Graph) -> Jit<'g> {
        let mut roots: Vec<Node> = g.outputs.iter().map(|o| o.node).collect();
        roots.extend(g.updates.iter().map(|u| u.node));
        Jit {
            g,
            roots,
            cache: HashMap::new(),
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
    ) -> Result<&mut plan::Program, Error> {
        let key = shape_key(self.g, inputs);
        if !self.cache.contains_key(&key) {
            let live = interp::live_nodes(self.g, &self.roots);
            let feed = Feed { params, inputs };
            let values = interp::input_values(self.g, &feed, &live)?;
            let syms = interp::bind_syms(self.g, &values)?;
            let p = plan::Program::compile(self.g, &self.roots, &syms, false)?;
            self.cache.insert(key, p);
        }
        self.last = Some(key);
        let p = self.cache.get_mut(&key).expect("just inserted");
        p.load_inputs(self.g, inputs);
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
            .and_then(|k| self.cache.get_mut(&k))
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

/// A hash of the shapes of the fed inputs (a missing input hashes apart
/// from every shape), computed without allocating.
fn shape_key(g: &Graph, inputs: &SecondaryMap<InputId, Option<Tensor>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (i, info) in g.inputs.iter() {
        match &inputs[i] {
            Some(t) => t.shape.hash(&mut h),
            None => (info.default.is_some(), usize::MAX).hash(&mut h),
        }
    }
    h.finish()
}

/// The Cranelift IR of every loop kernel of `g`'s program for the given
/// symbolic-dimension sizes (`nnc compile --emit clif`).
pub fn clif(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
) -> Result<String, Error> {
    let mut roots: Vec<Node> = g.outputs.iter().map(|o| o.node).collect();
    roots.extend(g.updates.iter().map(|u| u.node));
    let p = plan::Program::compile(g, &roots, syms, true)?;
    Ok(p.clif.join("\n"))
}
