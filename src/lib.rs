//! # nnc — a compiler for neural networks
//!
//! nnc reads a network written close to the math in a `.nn` file, checks
//! names and shapes with diagnostics that point into the source, lowers it
//! to a typed IR graph and runs it. The pipeline ([`pipeline::compile`]):
//!
//! ```text
//! .nn ──pest──▶ AST ──sema──▶ typed IR ──▶ backend
//!     syntax/          sema/        ir/        backend/interp (reference)
//! ```
//!
//! - [`syntax`]: the grammar (`grammar/nn.pest`), the AST with spans, and
//!   its printer.
//! - [`sema`]: scopes, name resolution, shape checking with symbolic
//!   dimensions, and lowering with every function inlined. The compiler
//!   knows only primitives; activations, losses and layers live in the
//!   standard library ([`stdlib`], written in `.nn`).
//! - [`ir`]: an arena of nodes with typed handles, a closed set of
//!   primitive ops whose types are inferred when a node is added,
//!   explicit broadcasting, a printer and a verifier. The IR is built to
//!   take a reverse-mode autodiff pass (each op has a simple VJP), fusion,
//!   and code generators (every op is a loop nest over static or symbolic
//!   shapes).
//! - [`backend::interp`]: the reference interpreter, the oracle for every
//!   faster backend.
//! - [`diag`]: spans, codes and rendering of diagnostics.
//! - [`driver`]: the `nnc` command line.
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

pub mod backend;
pub mod data;
pub mod diag;
pub mod driver;
pub mod exec;
pub mod ir;
pub mod log;
pub mod passes;
pub mod pipeline;
pub mod schedule;
pub mod sema;
pub mod stdlib;
pub mod syntax;
pub mod tensor;
pub mod train;
