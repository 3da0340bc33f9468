//! The closed set of primitives: elementwise, comparison and select,
//! reductions, matmul, shape operations, windows (convolution, pooling),
//! gather and scatter-add, random draws and the loop (`scan`), each with
//! its typing rule in its doc ([`Graph::infer`](super::Graph::infer)
//! applies them), and the walk over an op's arguments.

use super::{BodyId, ConstId, Dim, InputId, Node, ParamId, Shape};
use smallvec::{smallvec, SmallVec};
use std::fmt;

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Tanh,
    /// σ(x) = 1 / (1 + e^(−x)): a primitive so that its value and its
    /// derivative σ(x)(1 − σ(x)) stay finite at both ends.
    Sigmoid,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// Whether `a op b` holds (IEEE: every comparison with NaN but `Ne`
    /// is false).
    #[inline(always)]
    pub fn holds(self, a: f32, b: f32) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// The distribution of [`Op::Random`].
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dist {
    /// The standard normal, N(0, 1).
    Normal,
    /// Uniform on [0, 1).
    Uniform,
}

/// The reduction of a pooling window.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
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
    /// One moment of Adam, fused (made by the optimizer pass alone, never
    /// differentiated): `β·old + (1 − β)·new`, with `new` squared first
    /// when `square` (the second moment, `β₂·v + (1 − β₂)·g²`). The
    /// arithmetic is that of the separate ops, in their order and
    /// rounding: `1 − β` rounded to `f32` once, then two products and a
    /// sum (and `new·new` first). All operands of one type; the result
    /// has it too.
    AdamMoment {
        beta: f32,
        square: bool,
        old: Node,
        new: Node,
    },
    /// Adam's step of a parameter, fused likewise: `w − lr·(m̂ / (√v̂ + ε))`
    /// with `m̂ = m / c₁` and `v̂ = v / c₂` where `correction` is
    /// `Some((c₁, c₂))` (the bias corrections), else `m` and `v`, each
    /// operation rounded as the separate ops round it. All operands of one
    /// type; the result has it too.
    AdamStep {
        w: Node,
        m: Node,
        v: Node,
        lr: Node,
        correction: Option<(Node, Node)>,
        eps: f32,
    },
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
    /// The nodes this op reads, in order (inline, not allocated, for up to
    /// six: every op but a loop reading more than five sequences and
    /// arguments together).
    pub fn args(&self) -> SmallVec<[Node; 6]> {
        match self {
            Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } => SmallVec::new(),
            Op::Unary(_, a)
            | Op::Random { key: a, .. }
            | Op::Reduce { arg: a, .. }
            | Op::Reshape(a, _)
            | Op::Transpose(a, _)
            | Op::Broadcast(a, _)
            | Op::Pool2d { arg: a, .. }
            | Op::Slice { arg: a, .. } => smallvec![*a],
            Op::Binary(_, a, b) | Op::Compare(_, a, b) | Op::MatMul(a, b) => smallvec![*a, *b],
            Op::Select(c, a, b) => smallvec![*c, *a, *b],
            Op::AdamMoment { old, new, .. } => smallvec![*old, *new],
            Op::AdamStep {
                w,
                m,
                v,
                lr,
                correction,
                ..
            } => {
                let mut a = smallvec![*w, *m, *v, *lr];
                if let Some((c1, c2)) = correction {
                    a.extend([*c1, *c2]);
                }
                a
            }
            Op::Conv2d { x, w, .. } => smallvec![*x, *w],
            Op::Conv2dBackwardInput { gy, w, .. } => smallvec![*gy, *w],
            Op::Conv2dBackwardWeight { x, gy, .. } | Op::Pool2dBackward { x, gy, .. } => {
                smallvec![*x, *gy]
            }
            Op::Concat { a, b, .. } => smallvec![*a, *b],
            Op::Gather { table, indices } => smallvec![*table, *indices],
            Op::ScatterAdd {
                values, indices, ..
            } => smallvec![*values, *indices],
            Op::Scan { init, xs, args, .. } => {
                let mut v = smallvec![*init];
                v.extend_from_slice(xs);
                v.extend_from_slice(args);
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
            Op::AdamMoment {
                beta,
                square,
                old,
                new,
            } => Op::AdamMoment {
                beta: *beta,
                square: *square,
                old: f(*old),
                new: f(*new),
            },
            Op::AdamStep {
                w,
                m,
                v,
                lr,
                correction,
                eps,
            } => Op::AdamStep {
                w: f(*w),
                m: f(*m),
                v: f(*v),
                lr: f(*lr),
                correction: correction.map(|(c1, c2)| (f(c1), f(c2))),
                eps: *eps,
            },
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
            UnaryOp::Sigmoid => "sigmoid",
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
