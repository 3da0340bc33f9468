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
pub mod shape;
mod verify;

pub use print::print_graph;
pub use shape::{DType, Dim, Shape, Type};
pub use verify::verify;

use crate::diag::Span;
use crate::tensor::Tensor;
use cranelift_entity::{entity_impl, PrimaryMap};
use std::fmt;

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

/// The primitives. Each variant's doc states its typing rule; [`Graph::add`]
/// applies it.
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
}

impl Op {
    /// The nodes this op reads, in order.
    pub fn args(&self) -> Vec<Node> {
        match self {
            Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } => vec![],
            Op::Unary(_, a)
            | Op::Reduce { arg: a, .. }
            | Op::Reshape(a, _)
            | Op::Transpose(a, _)
            | Op::Broadcast(a, _) => vec![*a],
            Op::Binary(_, a, b) | Op::Compare(_, a, b) | Op::MatMul(a, b) => vec![*a, *b],
            Op::Select(c, a, b) => vec![*c, *a, *b],
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
    /// Optimizer state (momentum, Adam's moments, the step counter): kept
    /// and updated in place, never differentiated.
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
        })
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
