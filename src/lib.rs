//! # nnc — a compiler for neural networks
//!
//! nnc reads a network written close to the math in a `.nn` file, checks
//! names and shapes with diagnostics that point into the source, lowers it
//! to a typed IR graph, differentiates it, fuses it into kernels and runs
//! it. The pipeline, stage by stage ([`pipeline`]):
//!
//! ```text
//! .nn ─parse─▶ AST ─sema─▶ typed IR ─autodiff, optimizer─▶ step graph
//!     syntax/        sema/            passes/   (pipeline::train_steps)
//!
//!   ─optimize, fuse─▶ Fused ─schedule─▶ Schedule ─▶ code generator
//!    (pipeline::fuse)        (pipeline::schedule,    backend/jit (Cranelift)
//!                             verified)              backend/interp runs the IR
//! ```
//!
//! - [`syntax`]: the grammar (`grammar/nn.pest`), the AST with spans, and
//!   its printer.
//! - [`sema`]: scopes, name resolution, shape checking with symbolic
//!   dimensions, and lowering with every function inlined. The compiler
//!   knows only primitives; activations, losses and layers live in the
//!   standard library ([`stdlib`], written in `.nn`). Every tensor's
//!   element count is checked where its shape is formed (at most 2^48).
//! - [`ir`]: an arena of nodes with typed handles, a closed set of
//!   primitive ops whose types are inferred when a node is added,
//!   explicit broadcasting, a printer and a verifier.
//! - [`passes`]: reverse-mode autodiff (one VJP rule per op), the
//!   optimizer's update, CSE, loop-invariant code motion, fusion.
//! - [`schedule`]: the backend-neutral program for concrete sizes — the
//!   ordered steps (loop kernels with their expression trees, GEMMs,
//!   convolutions, copies, loops with sub-schedules), the buffer plan and
//!   the parameter updates — and its verifier, which checks every range
//!   the backends' unchecked accesses rely on.
//! - [`exec`]: what running shares: the error type, feeding and binding
//!   symbolic dimensions, the memory budget (`--max-memory`).
//! - [`backend::interp`]: the reference interpreter, the oracle for every
//!   faster backend; [`backend::jit`]: the schedule compiled with
//!   Cranelift.
//! - [`onnx`]: the ONNX schema's messages and `nnc export`, an inference
//!   graph written as an ONNX model (opset 17), op by op.
//! - [`diag`]: spans, codes and rendering of diagnostics.
//! - [`driver`]: the `nnc` command line and the REPL; [`train`]: the
//!   training loop, data and checkpoints.
//!
//! Decisions worth knowing:
//! - Comparisons yield `f32` masks (1.0 / 0.0); `select(c, a, b)` picks
//!   where `c != 0`. Only `f32` exists, but `DType` leaves room for more.
//! - A symbolic dimension (`B`) matches only itself or 1 when
//!   broadcasting, because its value is unknown until the graph runs.
//! - Dense weights are `[in, out]` and a layer is `x @ w + b`.
//! - Randomness is an op ([`ir::Op::Random`]) keyed by an implicit input
//!   (the seed and a step counter the training loop feeds), not a
//!   hidden generator: a graph stays a pure function of its inputs, and
//!   a resumed run draws the same values. `training()` is another
//!   implicit input, fixed to 1 in step graphs and 0 in evaluation ones.
//! - A `train` block may hold phases (a GAN's discriminator and
//!   generator); each compiles to its own step graph over one shared
//!   table of parameter values ([`pipeline::train_steps`]).
//! - Floats follow IEEE on every backend: `exp` overflows to inf and
//!   underflows through the subnormals to 0, `log` takes subnormals,
//!   subnormals are not flushed; a general power is the host's `powf`.
//! - A step's parameter updates never share a buffer with anything else:
//!   the scheduler gives an update that would its own buffer and a copy.

// pest is built without its `std` feature (Cargo.toml): its generated
// parser then names the `alloc` crate.
extern crate alloc;

pub mod aot;
pub mod backend;
pub mod data;
pub mod diag;
pub mod driver;
pub mod exec;
#[doc(hidden)]
pub mod fuzz;
pub mod ir;
pub mod log;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod rng;
pub mod schedule;
pub mod sema;
pub mod stdlib;
pub mod syntax;
pub mod tensor;
pub mod train;
