//! The typed IR: a graph of tensor operations held in an arena.
//!
//! - Nodes live in a `PrimaryMap` and are named by typed `u32` handles
//!   ([`Node`]); side tables hold symbols, parameters, inputs and constants.
//! - [`Op`] is a closed set of primitives. Everything the language offers
//!   beyond them (activations, losses, layers) is written in `.nn` and
//!   inlined by sema.
//! - Types are inferred when a node is added ([`Graph::add`]), so a graph is
//!   always typed; each node keeps the source span it came from.
//! - A node only refers to nodes added before it, so arena order is a
//!   topological order (the verifier checks it).
//! - Broadcasting is explicit: elementwise ops take operands of one shape,
//!   and sema inserts [`Op::Broadcast`] where NumPy would stretch. This keeps
//!   each autodiff rule and each kernel simple.

mod print;
mod scan;
pub mod shape;
mod verify;

pub use print::print_graph;
pub use shape::{DType, Dim, Shape, Type};
pub use verify::verify;

use crate::diag::Span;
use crate::tensor::Tensor;
use cranelift_entity::{entity_impl, PrimaryMap};
use std::fmt;

/// The implicit input that keys random draws ([`Op::Random`]): `[2]`,
/// the run's seed folded to 24 bits and a counter that training advances
/// every step (both whole numbers, exact in f32). Sema creates it at the
/// first draw, with the value `[0, 0]` when nothing is fed.
pub const RNG_KEY_INPUT: &str = "@rng";

/// The implicit input behind `training()`: a scalar, 0 unless fed. The
/// pipeline replaces it with the constant 1 in a training step's graph
/// and 0 in an evaluation graph ([`crate::pipeline::set_training`]).
pub const TRAINING_INPUT: &str = "@training";

/// A value in the graph.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(u32);
entity_impl!(Node, "%");

/// A symbolic dimension (`B`), bound to a number when the graph runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);
entity_impl!(Sym, "sym");

/// A trainable parameter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u32);
entity_impl!(ParamId, "param");

/// A value fed from outside (data).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputId(u32);
entity_impl!(InputId, "input");

/// A literal tensor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConstId(u32);
entity_impl!(ConstId, "const");

/// The body of a loop ([`Op::Scan`]): a graph of its own.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BodyId(u32);
entity_impl!(BodyId, "body");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `a ^ b`, with `powf` semantics.
    Pow,
    Max,
    Min,
}

/// Comparisons yield 1.0 where true and 0.0 where false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// The distribution of [`Op::Random`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dist {
    /// The standard normal, N(0, 1).
    Normal,
    /// Uniform on [0, 1).
    Uniform,
}

/// The reduction of a pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolOp {
    Max,
    Avg,
}

/// The primitives. Each variant's doc states its typing rule; [`Graph::add`]
/// applies it.
///
/// The window ops (convolution, pooling) work on `[N, C, H, W]` tensors
/// (NCHW): `N` and the channels may be symbolic, the spatial dims `H`, `W`
/// and the kernel's must be known. Along each spatial axis a window of `k`
/// moved by stride `s` over the input padded by `p` zeros on both sides
/// gives `(H + 2p − k) / s + 1` positions ([`shape::window_out`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A value fed at run time. Type: the input's declared type.
    Input(InputId),
    /// A trainable parameter. Type: the parameter's (static) shape.
    Param(ParamId),
    /// A literal tensor. Type: the literal's (static) shape.
    Const(ConstId),
    /// A tensor of `shape` with every element `value`. Type: `shape`.
    Fill { value: f32, shape: Shape },
    /// Pseudo-random values of `shape` from `dist`, drawn from the stream
    /// that `salt` (one per draw in the program) and `key` pick: `key` is
    /// `[2]`, two whole numbers (the run's seed and a counter that training
    /// advances every step), so one key and salt always give the same
    /// values. Type: `shape`; `key` has shape `[2]`.
    Random {
        dist: Dist,
        shape: Shape,
        salt: u32,
        key: Node,
    },
    /// Elementwise unary op. Type: the operand's.
    Unary(UnaryOp, Node),
    /// Elementwise binary op. Operands of one type; the result has it too.
    Binary(BinaryOp, Node, Node),
    /// Elementwise comparison. Operands of one type; the result has it too
    /// (a 0/1 mask).
    Compare(CmpOp, Node, Node),
    /// `select(c, a, b)`: `a` where `c != 0`, else `b`. All three of one
    /// type; the result has it too.
    Select(Node, Node, Node),
    /// Reduction over `axes` (sorted, distinct, in range), which are removed
    /// from the shape: `[2, 3, 4]` over `[1]` gives `[2, 4]`.
    Reduce {
        op: ReduceOp,
        arg: Node,
        axes: Vec<usize>,
    },
    /// Batched matrix product: `[..b, m, k] @ [..b, k, n] -> [..b, m, n]`.
    /// Both of rank ≥ 2 with equal batch dims `..b` (sema broadcasts them).
    MatMul(Node, Node),
    /// Same elements, new shape: the element counts must be equal.
    Reshape(Node, Shape),
    /// Axis `i` of the result is axis `perm[i]` of the operand; `perm` is a
    /// permutation of `0..rank`.
    Transpose(Node, Vec<usize>),
    /// NumPy broadcast of the operand to `shape`: the operand's dims, aligned
    /// from the right, are each equal to the target's or 1.
    Broadcast(Node, Shape),
    /// 2-D cross-correlation (no kernel flip, as PyTorch's `conv2d`):
    /// `x [N, C, H, W]`, `w [O, C, KH, KW]` → `[N, O, OH, OW]` with
    /// `OH = (H + 2p − KH)/s + 1`, likewise `OW`. The channels `C` are equal;
    /// `stride ≥ 1`; the kernel fits in the padded input.
    Conv2d {
        x: Node,
        w: Node,
        stride: u64,
        padding: u64,
    },
    /// The gradient of [`Op::Conv2d`] with respect to its input (a
    /// transposed convolution): `gy [N, O, OH, OW]`, `w [O, C, KH, KW]` →
    /// `[N, C, H, W]` with `[H, W] = size`. `gy`'s `O` is `w`'s, and a
    /// convolution of `[H, W]` by `w` gives `[OH, OW]` (several sizes can,
    /// hence `size`).
    Conv2dBackwardInput {
        gy: Node,
        w: Node,
        stride: u64,
        padding: u64,
        size: [u64; 2],
    },
    /// The gradient of [`Op::Conv2d`] with respect to its kernel:
    /// `x [N, C, H, W]`, `gy [N, O, OH, OW]` → `[O, C, KH, KW]` with
    /// `[KH, KW] = kernel`. The `N` are equal, and a convolution of `x` by a
    /// `[KH, KW]` kernel gives `[OH, OW]`.
    Conv2dBackwardWeight {
        x: Node,
        gy: Node,
        stride: u64,
        padding: u64,
        kernel: [u64; 2],
    },
    /// Max or average pooling over `size × size` windows moved by `stride`,
    /// without padding: `[N, C, H, W]` → `[N, C, OH, OW]`, `size ≥ 1`,
    /// `stride ≥ 1`, the window no larger than `[H, W]`.
    Pool2d {
        op: PoolOp,
        arg: Node,
        size: u64,
        stride: u64,
    },
    /// The gradient of [`Op::Pool2d`] with respect to its operand `x`,
    /// given the output's gradient `gy`: `gy` has the type the pooling of `x`
    /// has; the result has `x`'s. Max sends each window's gradient to its
    /// first maximal element; average spreads it evenly.
    Pool2dBackward {
        op: PoolOp,
        x: Node,
        gy: Node,
        size: u64,
        stride: u64,
    },
    /// Elements `start..end` (end exclusive) along `axis`: that axis's dim
    /// is known and `start < end ≤ dim`; the result has `end − start` there.
    Slice {
        arg: Node,
        axis: usize,
        start: u64,
        end: u64,
    },
    /// `a` then `b` along `axis`: equal ranks, equal dims except at `axis`,
    /// where both are known; the result has their sum there.
    Concat { a: Node, b: Node, axis: usize },
    /// Rows of a table: `table [V, D]`, `indices [..S]` (whole numbers in
    /// `0..V`, checked at run time) → `[..S, D]`.
    Gather { table: Node, indices: Node },
    /// Sums rows into `n` slots: `values [..S, D]`, `indices [..S]` (whole
    /// numbers in `0..n`, checked at run time) → `[n, D]`; row `i` of the
    /// result is the sum of the rows of `values` whose index is `i`.
    ScatterAdd { values: Node, indices: Node, n: Dim },
    /// A loop over the leading axis of the sequences `xs` (all `[T, ..]`):
    /// `c_t = body(c_{t−1}, xs_1[t], …, xs_k[t], args…)` from `c_0 = init`,
    /// in reverse order of t when `reverse`. The body is a graph of its
    /// own whose inputs are, in order, the carry (`init`'s type), one
    /// step of each sequence (its type without the leading axis) and the
    /// `args` (their types), and whose one output has the carry's type.
    /// Type: `[T, ..C]`, the carry after every step (step t at index t).
    /// The body is compiled once, whatever T is.
    Scan {
        body: BodyId,
        init: Node,
        xs: Vec<Node>,
        args: Vec<Node>,
        reverse: bool,
    },
}

impl Op {
    /// The nodes this op reads, in order.
    pub fn args(&self) -> Vec<Node> {
        match self {
            Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } => vec![],
            Op::Unary(_, a)
            | Op::Random { key: a, .. }
            | Op::Reduce { arg: a, .. }
            | Op::Reshape(a, _)
            | Op::Transpose(a, _)
            | Op::Broadcast(a, _)
            | Op::Pool2d { arg: a, .. }
            | Op::Slice { arg: a, .. } => vec![*a],
            Op::Binary(_, a, b) | Op::Compare(_, a, b) | Op::MatMul(a, b) => vec![*a, *b],
            Op::Select(c, a, b) => vec![*c, *a, *b],
            Op::Conv2d { x, w, .. } => vec![*x, *w],
            Op::Conv2dBackwardInput { gy, w, .. } => vec![*gy, *w],
            Op::Conv2dBackwardWeight { x, gy, .. } | Op::Pool2dBackward { x, gy, .. } => {
                vec![*x, *gy]
            }
            Op::Concat { a, b, .. } => vec![*a, *b],
            Op::Gather { table, indices } => vec![*table, *indices],
            Op::ScatterAdd {
                values, indices, ..
            } => vec![*values, *indices],
            Op::Scan { init, xs, args, .. } => {
                let mut v = vec![*init];
                v.extend(xs);
                v.extend(args);
                v
            }
        }
    }

    /// The same op reading `f(a)` for each argument `a`.
    pub fn map_args(&self, f: &dyn Fn(Node) -> Node) -> Op {
        match self {
            Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } => self.clone(),
            Op::Random {
                dist,
                shape,
                salt,
                key,
            } => Op::Random {
                dist: *dist,
                shape: shape.clone(),
                salt: *salt,
                key: f(*key),
            },
            Op::Unary(u, a) => Op::Unary(*u, f(*a)),
            Op::Binary(b, x, y) => Op::Binary(*b, f(*x), f(*y)),
            Op::Compare(c, x, y) => Op::Compare(*c, f(*x), f(*y)),
            Op::Select(c, x, y) => Op::Select(f(*c), f(*x), f(*y)),
            Op::Reduce { op, arg, axes } => Op::Reduce {
                op: *op,
                arg: f(*arg),
                axes: axes.clone(),
            },
            Op::MatMul(x, y) => Op::MatMul(f(*x), f(*y)),
            Op::Reshape(a, s) => Op::Reshape(f(*a), s.clone()),
            Op::Transpose(a, p) => Op::Transpose(f(*a), p.clone()),
            Op::Broadcast(a, s) => Op::Broadcast(f(*a), s.clone()),
            Op::Conv2d {
                x,
                w,
                stride,
                padding,
            } => Op::Conv2d {
                x: f(*x),
                w: f(*w),
                stride: *stride,
                padding: *padding,
            },
            Op::Conv2dBackwardInput {
                gy,
                w,
                stride,
                padding,
                size,
            } => Op::Conv2dBackwardInput {
                gy: f(*gy),
                w: f(*w),
                stride: *stride,
                padding: *padding,
                size: *size,
            },
            Op::Conv2dBackwardWeight {
                x,
                gy,
                stride,
                padding,
                kernel,
            } => Op::Conv2dBackwardWeight {
                x: f(*x),
                gy: f(*gy),
                stride: *stride,
                padding: *padding,
                kernel: *kernel,
            },
            Op::Pool2d {
                op,
                arg,
                size,
                stride,
            } => Op::Pool2d {
                op: *op,
                arg: f(*arg),
                size: *size,
                stride: *stride,
            },
            Op::Pool2dBackward {
                op,
                x,
                gy,
                size,
                stride,
            } => Op::Pool2dBackward {
                op: *op,
                x: f(*x),
                gy: f(*gy),
                size: *size,
                stride: *stride,
            },
            Op::Slice {
                arg,
                axis,
                start,
                end,
            } => Op::Slice {
                arg: f(*arg),
                axis: *axis,
                start: *start,
                end: *end,
            },
            Op::Concat { a, b, axis } => Op::Concat {
                a: f(*a),
                b: f(*b),
                axis: *axis,
            },
            Op::Gather { table, indices } => Op::Gather {
                table: f(*table),
                indices: f(*indices),
            },
            Op::ScatterAdd { values, indices, n } => Op::ScatterAdd {
                values: f(*values),
                indices: f(*indices),
                n: *n,
            },
            Op::Scan {
                body,
                init,
                xs,
                args,
                reverse,
            } => Op::Scan {
                body: *body,
                init: f(*init),
                xs: xs.iter().map(|x| f(*x)).collect(),
                args: args.iter().map(|a| f(*a)).collect(),
                reverse: *reverse,
            },
        }
    }
}

/// How a parameter gets its first value. Fan-in and fan-out follow the
/// `x @ w` convention: for a weight `[in, out]`, fan-in is `in`; for rank
/// > 2, `[out_c, in_c, k...]` as for convolutions.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Constant(f32),
    Uniform { low: f32, high: f32 },
    Normal { mean: f32, std: f32 },
    XavierUniform,
    XavierNormal,
    HeUniform,
    HeNormal,
    Tensor(ConstId),
}

/// What a parameter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Learned by training.
    Trainable,
    /// Kept across steps and updated in place, never differentiated:
    /// optimizer state (momentum, Adam's moments, the step counter) and
    /// the program's own `state` (running statistics, set by `assign`).
    State,
}

#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub role: Role,
    pub shape: Vec<u64>,
    pub init: Init,
    /// An explicit seed; otherwise one is derived from the run's seed and
    /// the parameter's name.
    pub seed: Option<u64>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct InputInfo {
    pub name: String,
    pub ty: Type,
    /// The value used when none is fed (`nnc run`).
    pub default: Option<ConstId>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct SymInfo {
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct NodeData {
    pub op: Op,
    pub ty: Type,
    pub span: Span,
}

/// `param ← node` after a step: every update reads the values from before
/// the step, then all are written (in place where a backend can).
#[derive(Clone, Debug)]
pub struct Update {
    pub param: ParamId,
    pub node: Node,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub name: String,
    pub node: Node,
    pub span: Span,
}

/// An IR graph: the nodes and the tables they refer to.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: PrimaryMap<Node, NodeData>,
    pub syms: PrimaryMap<Sym, SymInfo>,
    pub params: PrimaryMap<ParamId, ParamInfo>,
    pub inputs: PrimaryMap<InputId, InputInfo>,
    pub consts: PrimaryMap<ConstId, Tensor>,
    pub outputs: Vec<Output>,
    pub updates: Vec<Update>,
    /// Loop bodies, each a graph with inputs and one output.
    pub bodies: PrimaryMap<BodyId, Graph>,
}

/// A typing rule was broken. Sema checks every user-facing rule before it
/// adds a node, so this is a compiler bug, reported as an internal error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("ill-typed {op}: {reason}")]
pub struct TypeError {
    pub op: &'static str,
    pub reason: String,
}

fn bad(op: &'static str, reason: impl Into<String>) -> TypeError {
    TypeError {
        op,
        reason: reason.into(),
    }
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn ty(&self, n: Node) -> &Type {
        &self.nodes[n].ty
    }

    pub fn shape(&self, n: Node) -> &Shape {
        &self.nodes[n].ty.shape
    }

    /// The symbol named `name`, created on first use.
    pub fn sym(&mut self, name: &str) -> Sym {
        match self.syms.iter().find(|(_, s)| s.name == name) {
            Some((id, _)) => id,
            None => self.syms.push(SymInfo {
                name: name.to_string(),
            }),
        }
    }

    /// Adds a node after inferring its type.
    pub fn add(&mut self, op: Op, span: Span) -> Result<Node, TypeError> {
        let ty = self.infer(&op)?;
        Ok(self.nodes.push(NodeData { op, ty, span }))
    }

    /// The typing rules, one arm per [`Op`] variant.
    pub fn infer(&self, op: &Op) -> Result<Type, TypeError> {
        for a in op.args() {
            if !self.nodes.is_valid(a) {
                return Err(bad("op", format!("argument {a} does not exist")));
            }
        }
        let same = |name: &'static str, a: Node, b: Node| {
            if self.ty(a) == self.ty(b) {
                Ok(self.ty(a).clone())
            } else {
                Err(bad(name, "operands differ in type"))
            }
        };
        Ok(match op {
            Op::Input(i) => match self.inputs.get(*i) {
                Some(info) => info.ty.clone(),
                None => return Err(bad("input", "no such input")),
            },
            Op::Param(p) => match self.params.get(*p) {
                Some(info) => Type::f32(info.shape.iter().map(|&d| Dim::Known(d)).collect()),
                None => return Err(bad("param", "no such parameter")),
            },
            Op::Const(c) => match self.consts.get(*c) {
                Some(t) => Type::f32(t.shape.iter().map(|&d| Dim::Known(d as u64)).collect()),
                None => return Err(bad("const", "no such constant")),
            },
            Op::Fill { shape, .. } => Type::f32(shape.clone()),
            Op::Random { shape, key, .. } => {
                if self.shape(*key) != &[Dim::Known(2)] {
                    return Err(bad("random", "the key must have shape [2]"));
                }
                Type::f32(shape.clone())
            }
            Op::Unary(_, a) => self.ty(*a).clone(),
            Op::Binary(_, a, b) => same("binary", *a, *b)?,
            Op::Compare(_, a, b) => same("compare", *a, *b)?,
            Op::Select(c, a, b) => {
                same("select", *c, *a)?;
                same("select", *a, *b)?
            }
            Op::Reduce { arg, axes, .. } => {
                let shape = self.shape(*arg);
                let sorted = axes.windows(2).all(|w| w[0] < w[1]);
                if !sorted || axes.iter().any(|&a| a >= shape.len()) {
                    return Err(bad(
                        "reduce",
                        format!("axes {axes:?} invalid for rank {}", shape.len()),
                    ));
                }
                let kept = shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| *d)
                    .collect();
                Type::f32(kept)
            }
            Op::MatMul(a, b) => {
                let (sa, sb) = (self.shape(*a), self.shape(*b));
                let (ra, rb) = (sa.len(), sb.len());
                if ra < 2 || ra != rb {
                    return Err(bad("matmul", "operands must have equal rank >= 2"));
                }
                if sa[..ra - 2] != sb[..rb - 2] || sa[ra - 1] != sb[rb - 2] {
                    return Err(bad("matmul", "dimensions do not line up"));
                }
                let mut out = sa[..ra - 1].to_vec();
                out.push(sb[rb - 1]);
                Type::f32(out)
            }
            Op::Reshape(a, shape) => {
                if shape::element_count(self.shape(*a)) != shape::element_count(shape) {
                    return Err(bad("reshape", "element counts differ"));
                }
                Type::f32(shape.clone())
            }
            Op::Transpose(a, perm) => {
                let s = self.shape(*a);
                let mut seen = vec![false; s.len()];
                for &p in perm {
                    if p >= s.len() || std::mem::replace(&mut seen[p], true) {
                        return Err(bad("transpose", "not a permutation"));
                    }
                }
                if perm.len() != s.len() {
                    return Err(bad("transpose", "not a permutation"));
                }
                Type::f32(perm.iter().map(|&p| s[p]).collect())
            }
            Op::Broadcast(a, shape) => {
                if !shape::broadcasts_to(self.shape(*a), shape) {
                    return Err(bad("broadcast", "operand does not broadcast to the target"));
                }
                Type::f32(shape.clone())
            }
            Op::Conv2d {
                x,
                w,
                stride,
                padding,
            } => {
                let (sx, sw) = (self.nchw("conv2d", *x)?, self.nchw("conv2d", *w)?);
                if sx[1] != sw[1] {
                    return Err(bad("conv2d", "input and kernel channels differ"));
                }
                let kernel = known_hw("conv2d", sw)?;
                let out = conv_hw("conv2d", known_hw("conv2d", sx)?, kernel, *stride, *padding)?;
                Type::f32(vec![sx[0], sw[0], Dim::Known(out[0]), Dim::Known(out[1])])
            }
            Op::Conv2dBackwardInput {
                gy,
                w,
                stride,
                padding,
                size,
            } => {
                const OP: &str = "conv2d.backward_input";
                let (sg, sw) = (self.nchw(OP, *gy)?, self.nchw(OP, *w)?);
                if sg[1] != sw[0] {
                    return Err(bad(OP, "gradient and kernel output channels differ"));
                }
                let out = conv_hw(OP, *size, known_hw(OP, sw)?, *stride, *padding)?;
                if known_hw(OP, sg)? != out {
                    return Err(bad(OP, "gradient does not have the convolution's size"));
                }
                Type::f32(vec![sg[0], sw[1], Dim::Known(size[0]), Dim::Known(size[1])])
            }
            Op::Conv2dBackwardWeight {
                x,
                gy,
                stride,
                padding,
                kernel,
            } => {
                const OP: &str = "conv2d.backward_weight";
                let (sx, sg) = (self.nchw(OP, *x)?, self.nchw(OP, *gy)?);
                if sx[0] != sg[0] {
                    return Err(bad(OP, "input and gradient batch sizes differ"));
                }
                let out = conv_hw(OP, known_hw(OP, sx)?, *kernel, *stride, *padding)?;
                if known_hw(OP, sg)? != out {
                    return Err(bad(OP, "gradient does not have the convolution's size"));
                }
                Type::f32(vec![
                    sg[1],
                    sx[1],
                    Dim::Known(kernel[0]),
                    Dim::Known(kernel[1]),
                ])
            }
            Op::Pool2d {
                arg, size, stride, ..
            } => {
                let s = self.nchw("pool2d", *arg)?;
                let out = conv_hw("pool2d", known_hw("pool2d", s)?, [*size; 2], *stride, 0)?;
                Type::f32(vec![s[0], s[1], Dim::Known(out[0]), Dim::Known(out[1])])
            }
            Op::Pool2dBackward {
                op,
                x,
                gy,
                size,
                stride,
            } => {
                let pooled = self.infer(&Op::Pool2d {
                    op: *op,
                    arg: *x,
                    size: *size,
                    stride: *stride,
                })?;
                if self.ty(*gy) != &pooled {
                    return Err(bad(
                        "pool2d.backward",
                        "gradient does not have the pooling's type",
                    ));
                }
                self.ty(*x).clone()
            }
            Op::Slice {
                arg,
                axis,
                start,
                end,
            } => {
                let mut s = self.shape(*arg).clone();
                let Some(&Dim::Known(d)) = s.get(*axis) else {
                    return Err(bad("slice", "axis out of range or not of known size"));
                };
                if start >= end || *end > d {
                    return Err(bad("slice", format!("{start}..{end} out of range for {d}")));
                }
                s[*axis] = Dim::Known(end - start);
                Type::f32(s)
            }
            Op::Concat { a, b, axis } => {
                let (sa, sb) = (self.shape(*a), self.shape(*b));
                let others_equal = sa.len() == sb.len()
                    && sa
                        .iter()
                        .zip(sb)
                        .enumerate()
                        .all(|(i, (x, y))| i == *axis || x == y);
                let (Some(&Dim::Known(da)), Some(&Dim::Known(db)), true) =
                    (sa.get(*axis), sb.get(*axis), others_equal)
                else {
                    return Err(bad("concat", "operands do not line up along the axis"));
                };
                let mut s = sa.clone();
                s[*axis] = Dim::Known(da + db);
                Type::f32(s)
            }
            Op::Gather { table, indices } => {
                let t = self.shape(*table);
                if t.len() != 2 {
                    return Err(bad("gather", "the table must have rank 2"));
                }
                let mut s = self.shape(*indices).clone();
                s.push(t[1]);
                Type::f32(s)
            }
            Op::Scan {
                body,
                init,
                xs,
                args,
                ..
            } => self.infer_scan(*body, *init, xs, args)?,
            Op::ScatterAdd { values, indices, n } => {
                let v = self.shape(*values);
                match v.split_last() {
                    Some((d, lead)) if lead == self.shape(*indices).as_slice() => {
                        Type::f32(vec![*n, *d])
                    }
                    _ => {
                        return Err(bad(
                            "scatter_add",
                            "indices must have the values' leading dims",
                        ))
                    }
                }
            }
        })
    }

    /// The shape of a rank-4 (`[N, C, H, W]`) operand of a window op.
    fn nchw(&self, op: &'static str, n: Node) -> Result<&Shape, TypeError> {
        let s = self.shape(n);
        if s.len() == 4 {
            Ok(s)
        } else {
            Err(bad(op, format!("operand {n} must have rank 4")))
        }
    }

    /// A dimension as text: a number or a symbol's name.
    pub fn dim_str(&self, d: Dim) -> String {
        match d {
            Dim::Known(n) => n.to_string(),
            Dim::Sym(s) => self
                .syms
                .get(s)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| s.to_string()),
        }
    }

    /// A shape as text: `[B, 784]`.
    pub fn shape_str(&self, shape: &[Dim]) -> String {
        let dims: Vec<String> = shape.iter().map(|d| self.dim_str(*d)).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The last two dims of a rank-4 shape, which must be known.
fn known_hw(op: &'static str, s: &[Dim]) -> Result<[u64; 2], TypeError> {
    match (shape::known(s[2]), shape::known(s[3])) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(bad(op, "spatial dims must be known")),
    }
}

/// The output size of a window op over `input`, or a type error.
fn conv_hw(
    op: &'static str,
    input: [u64; 2],
    window: [u64; 2],
    stride: u64,
    padding: u64,
) -> Result<[u64; 2], TypeError> {
    match (
        shape::window_out(input[0], window[0], stride, padding),
        shape::window_out(input[1], window[1], stride, padding),
    ) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(bad(op, "the window does not fit the input, or stride is 0")),
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Dist::Normal => "normal",
            Dist::Uniform => "uniform",
        })
    }
}

impl fmt::Display for PoolOp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PoolOp::Max => "max",
            PoolOp::Avg => "avg",
        })
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Tanh => "tanh",
        })
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
        })
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        })
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
        })
    }
}
