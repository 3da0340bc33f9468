//! The schedule: what a compiled program does, for concrete sizes, in a
//! form every code generator lowers — the ordered steps (loop kernels
//! with their expression trees and iteration spaces, GEMMs with their
//! operand layouts, convolutions, poolings, block copies, loops whose
//! bodies are schedules of their own, and host steps), the buffers they
//! read and write (planned by liveness), and where the leaves, outputs
//! and parameter updates live.
//!
//! It holds no backend artifact: a backend compiles it into its own
//! structure, indexed by step (the Cranelift JIT: a function pointer per
//! loop step, a compiled program per loop body, scratch per convolution).
//!
//! ```text
//! fused graph ──build──▶ Schedule ──verify──▶ code generator
//!             (sizes bound,         (ranges,      jit, (opencl), (aot)
//!              buffers planned)      aliasing)
//! ```
//!
//! [`build`] makes one from a [`Fused`] graph
//! and the sizes of its symbolic dimensions; [`Schedule::verify`] checks
//! the invariants the backends' unchecked memory accesses rely on, and
//! runs after every build in debug builds and tests.

mod buffers;
mod build;
pub mod dot;
mod geometry;
mod kernel;
pub mod parts;
mod verify;

pub use build::{build, build_observed};
pub use geometry::{index_row, Blocks, Conv, ConvPass, Pool};
pub use kernel::{copy_kernel, loop_kernel, Expr, KernelKey, LoopKernel, Store};
pub use verify::VerifyError;

use crate::ir::{ConstId, Graph, InputId, Node, ParamId};
use cranelift_entity::packed_option::PackedOption;
use cranelift_entity::{entity_impl, PrimaryMap, SecondaryMap};

/// Told of each loop kernel as [`build_observed`] builds it, once per
/// kernel built (a kernel found equal to one built before is not told
/// again), while the rest of the schedule is still to be built: a backend
/// starts compiling it on another thread (the JIT's `Precompile`), so a
/// deep model's kernels are compiled while its later layers are
/// scheduled.
pub trait KernelSink: Sync {
    fn built(&self, kernel: &std::sync::Arc<LoopKernel>);
}

/// A shared sink.
impl<S: KernelSink + Send> KernelSink for std::sync::Arc<S> {
    fn built(&self, kernel: &std::sync::Arc<LoopKernel>) {
        (**self).built(kernel)
    }
}

/// The sink of a backend that compiles nothing early.
impl KernelSink for () {
    fn built(&self, _: &std::sync::Arc<LoopKernel>) {}
}

/// What scheduling takes: a graph optimised ([`passes::optimize`]: CSE,
/// loop-invariant code motion) and fused into kernels ([`fusion::fuse`]),
/// and likewise each loop body it runs ([`crate::pipeline::fuse`] makes
/// one).
///
/// [`passes::optimize`]: crate::passes::optimize
/// [`fusion::fuse`]: crate::passes::fusion::fuse
pub struct Fused {
    /// Shared with the schedules built from it (one per set of sizes).
    pub graph: std::sync::Arc<crate::ir::Graph>,
    /// The outputs, then the updates: what the program computes.
    pub roots: Vec<crate::ir::Node>,
    pub fusion: crate::passes::fusion::Fusion,
    pub bodies: std::collections::HashMap<crate::ir::BodyId, Fused>,
}

/// A buffer of `f32`s.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct BufId(u32);
entity_impl!(BufId, "buf");

/// A program for concrete sizes.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Schedule {
    /// The optimised graph the steps compute (host steps evaluate its
    /// nodes; logs describe them), shared with the fused graph it was
    /// built from.
    pub graph: std::sync::Arc<Graph>,
    /// Every node's shape, where it could be bound.
    pub shapes: SecondaryMap<Node, Vec<usize>>,
    /// The buffer holding each stored node (a view shares its base's);
    /// none for a node computed inside its readers' kernels.
    pub buf_of: SecondaryMap<Node, PackedOption<BufId>>,
    /// Each buffer's length in floats.
    pub bufs: PrimaryMap<BufId, usize>,
    pub steps: Vec<Step>,
    /// Where the fed inputs, parameters and constants are placed before
    /// the steps run.
    pub inputs: Vec<(InputId, BufId)>,
    pub params: Vec<(ParamId, BufId)>,
    pub consts: Vec<(ConstId, BufId)>,
    /// The buffer of each of the graph's outputs, in order.
    pub outputs: Vec<BufId>,
    /// The buffer each update is taken from after the steps, in the
    /// graph's order: it belongs to that update alone.
    pub updates: Vec<(ParamId, BufId)>,
}

/// One step of a schedule.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub enum Step {
    /// A loop kernel writing `out`; `args[k]` is the buffer of access `k`,
    /// `also[j]` the buffer of the kernel's further store `j`
    /// ([`LoopKernel::also`]).
    Loop {
        kernel: std::sync::Arc<LoopKernel>,
        out: BufId,
        args: Vec<BufId>,
        also: Vec<BufId>,
        /// For reductions: the output's starting value, and for a mean
        /// the count it is divided by (a division, as the interpreter's,
        /// not a product with 1/count, which rounds differently).
        init: Option<f32>,
        divisor: Option<f32>,
    },
    /// Matrix products: for each pair of offsets, `out[i] = a[a_offs[i]..]
    /// @ b[b_offs[i]..]`, the outputs consecutive row-major m×n matrices.
    MatMul {
        a: BufId,
        b: BufId,
        out: BufId,
        a_offs: Vec<usize>,
        b_offs: Vec<usize>,
        dims: Gemm,
        /// The elementwise kernel that followed the product, applied as
        /// each block of it is stored ([`Epilogue`]).
        epilogue: Option<Box<Epilogue>>,
    },
    /// `dst` = `src` (of `shape`) with its axes permuted.
    Transpose {
        src: BufId,
        dst: BufId,
        shape: Vec<usize>,
        perm: Vec<usize>,
    },
    /// A convolution or one of its gradients, from operands `a` and `b`
    /// as [`ConvPass`] says.
    Conv {
        pass: ConvPass,
        geo: Conv,
        a: BufId,
        b: BufId,
        out: BufId,
    },
    /// A pooling (`gy: None`) or its gradient.
    Pool {
        geo: Pool,
        x: BufId,
        gy: Option<BufId>,
        out: BufId,
    },
    /// A slice (one part) or a concatenation (several): block copies.
    Copy {
        parts: Vec<(BufId, Blocks)>,
        out: BufId,
    },
    /// Rows of a table picked by indices (`gather`) or added into rows of
    /// a zero-filled output (`scatter_add`), as [`Rows`] says.
    Rows(Rows),
    /// `count` values of a random draw ([`crate::rng`]) from the key in
    /// buffer `key` (two floats).
    Random {
        dist: crate::ir::Dist,
        salt: u32,
        key: BufId,
        out: BufId,
        count: usize,
    },
    /// A loop running its body's schedule once per step.
    Scan(Box<ScanStep>),
    /// Any other operation, computed by the interpreter's routine from
    /// its arguments' buffers.
    Host { node: Node, out: BufId },
}

/// `gather` (`out[k, :] = src[idx[k], :]`) or `scatter_add`
/// (`out[idx[k], :] += src[k, :]` for k in order, into zeros): `count`
/// indices (whole numbers in `0..rows`, else an index error naming
/// `node`), rows of `width` floats; the table (gather) or the output
/// (scatter) has `rows` rows.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct Rows {
    pub scatter: bool,
    pub src: BufId,
    pub idx: BufId,
    pub out: BufId,
    pub count: usize,
    pub width: usize,
    pub rows: usize,
    pub node: Node,
}

impl Rows {
    /// The operation's name in an index error.
    pub fn op_name(&self) -> &'static str {
        if self.scatter {
            "scatter_add"
        } else {
            "gather"
        }
    }
}

/// An elementwise loop kernel fused into the store of the matrix product
/// before it (the scheduling rule `gemm-epilogue`: a bias and an
/// activation, say): its iteration space walks the products' outputs in
/// order (`[rows, n]` or flat), access `acc` reads the product at the
/// point being stored, and the kernel's value goes to `out` at the same
/// point. The product is stored into the step's own `out` as well.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Epilogue {
    pub kernel: std::sync::Arc<LoopKernel>,
    pub acc: usize,
    pub out: BufId,
    pub args: Vec<BufId>,
}

/// One matrix product `o = a @ b`: `a` is m×k and `b` k×n with the given
/// (row, column) strides, `o` row-major.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a_rc: (isize, isize),
    pub b_rc: (isize, isize),
}

/// A compiled `scan`: its body's schedule and how the loop feeds it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct ScanStep {
    pub body: Schedule,
    pub init: BufId,
    pub xs: Vec<BufId>,
    pub args: Vec<BufId>,
    pub out: BufId,
    pub steps: usize,
    /// Floats of the carry (and of each stacked result).
    pub carry_len: usize,
    /// Floats per step of each sequence.
    pub step_lens: Vec<usize>,
    pub reverse: bool,
    /// Add the steps' results into `out` instead of stacking them (the
    /// body does not read its carry; fusion's `scan-sum`).
    pub sum: bool,
    /// The body's buffer for each operand (the carry, the sequences' step
    /// slices, the extra arguments, in that order), where the body reads
    /// it.
    pub slots: Vec<Option<BufId>>,
}

impl ScanStep {
    /// The `i`-th step the loop runs: the index `t` of the slices it reads
    /// and of the result it writes, and the index of the previous result
    /// (its carry; meaningless at `i = 0`, where the carry is `init`).
    pub fn order(&self, i: usize) -> (usize, usize) {
        if self.reverse {
            let t = self.steps - 1 - i;
            (t, t + 1)
        } else {
            (i, i.wrapping_sub(1))
        }
    }
}

impl Schedule {
    /// The floats of every buffer the schedule plans, its loops' bodies
    /// included (`planned_bytes` in `nnc bench`).
    pub fn planned_floats(&self) -> usize {
        let bodies: usize = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Scan(sc) => sc.body.planned_floats(),
                _ => 0,
            })
            .sum();
        self.bufs.values().sum::<usize>() + bodies
    }

    /// The buffer of stored node `n`.
    pub fn buf(&self, n: Node) -> Option<BufId> {
        self.buf_of[n].expand()
    }

    /// The floats a run needs for its buffers (loop bodies included).
    pub fn floats(&self) -> usize {
        let own: usize = self.bufs.values().sum();
        let bodies: usize = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Scan(sc) => sc.body.floats(),
                _ => 0,
            })
            .sum();
        own + bodies
    }
}

impl Step {
    /// The buffers the step writes: its output, and a GEMM's epilogue's.
    pub fn writes(&self) -> Vec<BufId> {
        match self {
            Step::MatMul { out, epilogue, .. } => std::iter::once(*out)
                .chain(epilogue.as_ref().map(|e| e.out))
                .collect(),
            Step::Loop { out, also, .. } => std::iter::once(*out).chain(also.clone()).collect(),
            Step::Conv { out, .. }
            | Step::Pool { out, .. }
            | Step::Copy { out, .. }
            | Step::Random { out, .. }
            | Step::Host { out, .. } => vec![*out],
            Step::Transpose { dst, .. } => vec![*dst],
            Step::Rows(r) => vec![r.out],
            Step::Scan(sc) => vec![sc.out],
        }
    }

    /// One line for `NNC_LOG=plan` and `NNC_LOG=profile`.
    pub fn describe(&self, g: &Graph) -> String {
        match self {
            Step::Loop {
                kernel,
                out,
                args,
                also,
                ..
            } => {
                let also = match &also[..] {
                    [] => String::new(),
                    more => format!(" (and {more:?})"),
                };
                format!(
                    "loop over {} elements into {out}{also}, reading {args:?}",
                    kernel.dims.iter().product::<usize>()
                )
            }
            Step::MatMul {
                a_offs,
                dims,
                epilogue,
                ..
            } => {
                let Gemm { m, k, n, .. } = dims;
                let epi = match epilogue {
                    Some(e) => format!(" with an epilogue into {}", e.out),
                    None => String::new(),
                };
                format!("gemm {}x({m}x{k} @ {k}x{n}){epi}", a_offs.len())
            }
            Step::Transpose { shape, perm, .. } => format!("transpose {shape:?} by {perm:?}"),
            Step::Conv { pass, geo, .. } => format!("convolution {pass:?} {geo:?}"),
            Step::Pool { geo, gy, .. } => {
                let dir = if gy.is_some() { "gradient" } else { "forward" };
                format!("pooling {dir} {geo:?}")
            }
            Step::Copy { parts, .. } => format!("block copy {parts:?}"),
            Step::Random { dist, count, .. } => format!("random {dist:?} draw of {count}"),
            Step::Rows(r) => format!(
                "{} of {} rows of {} from {} rows",
                r.op_name(),
                r.count,
                r.width,
                r.rows
            ),
            Step::Scan(sc) => format!(
                "scan of {} steps, a body of {} steps",
                sc.steps,
                sc.body.steps.len()
            ),
            Step::Host { node, .. } => format!(
                "host {node}: {}",
                crate::passes::fusion::op_name(&g.nodes[*node].op)
            ),
        }
    }
}
