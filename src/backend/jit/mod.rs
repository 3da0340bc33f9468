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
//! - Gathers, scatter-adds and random draws ([`crate::rng`]) are loops in
//!   Rust over the buffers; any other operation a schedule leaves to the
//!   host runs the interpreter's routine ([`interp::eval_op`]) on the
//!   buffers: correct, but it allocates its result.
//!
//! Parameters are swapped in and out of their buffers (no copy), updates
//! are swapped into the parameters after a step. After the first call on
//! a shape set, a step made only of loop kernels, matmuls and transposes
//! allocates nothing but the returned output tensors (`tests/alloc.rs`
//! counts).
//!
//! A [`Jit`] fuses its graph once ([`pipeline::fuse`]) and keeps one
//! compiled program per set of input shapes
//! ([`crate::backend::compiled`]); the machine code is freed when the
//! program is dropped.
//!
//! [`Schedule`]: crate::schedule::Schedule
//! [`pipeline::fuse`]: crate::pipeline::fuse

mod codegen;
mod helper;
mod math;
mod native;
mod precompile;
mod program;
pub mod subnormal;
pub mod threads;
pub mod wide;

pub use math::powf;
pub use program::{KernelFn, ObjectKernels, Program};

use crate::exec::Error;
use crate::ir::Graph;
use crate::pipeline;
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
        // Cranelift's IR verifier checks every function it compiles: on in
        // debug builds and tests, off in release, where it was a fifth of
        // a large model's compile time.
        set(
            &mut flags,
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        )?;
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

/// A graph compiled to native code on demand, once per set of input
/// shapes.
pub type Jit<'g> = crate::backend::compiled::Compiled<'g, program::Program>;

/// The Cranelift IR of every loop kernel of `g`'s program for the given
/// symbolic-dimension sizes (`nnc compile --emit clif`).
pub fn clif(
    g: &Graph,
    syms: &SecondaryMap<crate::ir::Sym, Option<usize>>,
) -> Result<String, Error> {
    let sched = pipeline::schedule(&pipeline::fuse(g), syms)?;
    let p = program::Program::compile_with(sched, true)?;
    Ok(p.clif.join("\n"))
}
