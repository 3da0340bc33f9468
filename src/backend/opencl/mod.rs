//! The OpenCL backend: a [`Schedule`](crate::schedule::Schedule) lowered
//! to OpenCL C ([`codegen`]) and run on a device through the `ocl` crate
//! (`runtime.rs`, `device.rs`, `cache.rs`).
//!
//! The code generator is always built, so `nnc compile --emit opencl`
//! works everywhere and its output is snapshot-tested; the runtime needs
//! an OpenCL loader to link and sits behind the cargo feature `opencl`.
//! Without it, `--backend opencl` answers with how to get it.
//!
//! What runs where:
//!
//! - loop kernels (elementwise chains, reductions: a work-group's tree in
//!   local memory per output, or one item per output for column sums) and
//!   transposes: one generated kernel each;
//! - matrix products: a tiled GEMM kernel (64×64 tiles, 4×4 outputs per
//!   item, strided operands read in place, batches as the third axis);
//! - convolutions and their gradients, poolings and their gradients,
//!   slices and concatenations, gathers and scatter-adds (one item per
//!   column, rows added in index order: deterministic), random draws
//!   (Philox, [`crate::rng`]: the same numbers as the other backends), a
//!   loop's sum: library kernels;
//! - `scan`: the body's kernels enqueued once per step, carries and slices
//!   copied between device buffers;
//! - any other operation (a schedule's host step): the interpreter's
//!   routine on the host, on its arguments read back.
//!
//! A training run keeps the parameters and the optimizer state on the
//! device ([`crate::backend::Engine::step_kept`]): each step reads back
//! the loss and the step's guard output, and the parameters come back
//! once per epoch. Other calls upload the parameters and read the updates
//! back.

pub mod codegen;

#[cfg(feature = "opencl")]
mod cache;
#[cfg(feature = "opencl")]
pub mod device;
#[cfg(feature = "opencl")]
mod runtime;

use crate::exec::Error;
use crate::ir::Graph;
use crate::pipeline;

/// The OpenCL C program of `g` for the given sizes of its symbolic
/// dimensions (`nnc compile --emit opencl`).
pub fn source(
    g: &Graph,
    syms: &cranelift_entity::SecondaryMap<crate::ir::Sym, Option<usize>>,
) -> Result<String, Error> {
    let sched = pipeline::schedule(&pipeline::fuse(g), syms)?;
    Ok(format!(
        "{}\n{}",
        codegen::library(),
        codegen::program_source(&sched)
    ))
}

/// Whether this build has the OpenCL runtime.
pub const AVAILABLE: bool = cfg!(feature = "opencl");

/// The answer to `--backend opencl` in a build without the runtime.
pub fn unavailable() -> Error {
    Error::Device {
        message: "this nnc was built without the OpenCL backend".into(),
        help: "install an OpenCL loader and driver (Debian: `apt-get install ocl-icd-opencl-dev pocl-opencl-icd`), then build with `cargo build --release --features opencl`".into(),
    }
}

/// A graph compiled to OpenCL on demand, once per set of input shapes.
#[cfg(feature = "opencl")]
pub type OpenCl<'g> = crate::backend::compiled::Compiled<'g, runtime::Program>;

/// Without the runtime, every program "fails to compile" with
/// [`unavailable`].
#[cfg(not(feature = "opencl"))]
pub type OpenCl<'g> = crate::backend::compiled::Compiled<'g, Unavailable>;

/// The program type of a build without the OpenCL runtime: it never
/// exists.
#[cfg(not(feature = "opencl"))]
pub enum Unavailable {}

#[cfg(not(feature = "opencl"))]
impl crate::backend::compiled::Compile for Unavailable {
    type Early = ();

    fn compile(_: crate::schedule::Schedule) -> Result<Self, Error> {
        Err(unavailable())
    }

    fn load_inputs(
        &mut self,
        _: &cranelift_entity::SecondaryMap<crate::ir::InputId, Option<crate::tensor::Tensor>>,
    ) -> Result<(), Error> {
        match *self {}
    }

    fn run(
        &mut self,
        _: &mut cranelift_entity::SecondaryMap<crate::ir::ParamId, crate::tensor::Tensor>,
        _: bool,
        _: bool,
    ) -> Result<Vec<crate::tensor::Tensor>, Error> {
        match *self {}
    }
}

/// Whether a program could run: the runtime is built in and a device
/// answers.
pub fn probe() -> Result<(), Error> {
    #[cfg(feature = "opencl")]
    {
        device::gpu().map(|_| ())
    }
    #[cfg(not(feature = "opencl"))]
    {
        Err(unavailable())
    }
}

/// `nnc devices`: the OpenCL devices, one per line.
pub fn devices() -> Result<String, Error> {
    #[cfg(feature = "opencl")]
    {
        device::describe()
    }
    #[cfg(not(feature = "opencl"))]
    {
        Err(unavailable())
    }
}

/// Whether the programs built for models are kept in the disk cache
/// (they are unless `NNC_OPENCL_CACHE=off`): off for runs of many
/// programs that never repeat, such as the differential tests, where
/// asking PoCL for a binary to store costs as much again as the build.
/// The kernel library, the same for every model, is always cached.
pub fn cache_models_on_disk(on: bool) {
    #[cfg(feature = "opencl")]
    cache::set_models(on);
    #[cfg(not(feature = "opencl"))]
    let _ = on;
}

/// Chooses the OpenCL device by its number in `nnc devices` (`--device N`).
pub fn choose_device(index: usize) {
    #[cfg(feature = "opencl")]
    device::choose(index);
    #[cfg(not(feature = "opencl"))]
    let _ = index;
}

/// Makes this process the `local`-th data-parallel worker of its machine:
/// without `--device` (or `NNC_OPENCL_DEVICE`), it takes the machine's
/// GPUs in turn, worker k the (k mod G)-th of G, so the workers of one
/// host spread over its GPUs; with no GPU, the first device.
pub fn share_devices(local: usize) {
    #[cfg(feature = "opencl")]
    device::share(local);
    #[cfg(not(feature = "opencl"))]
    let _ = local;
}
