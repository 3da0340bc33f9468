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

pub mod constant;
pub mod cost;
pub mod dot;
mod infer;
mod op;
mod print;
pub mod rows;
mod scan;
pub mod shape;
mod verify;

pub use infer::TypeError;
pub use op::{BinaryOp, CmpOp, Dist, Op, PoolOp, ReduceOp, UnaryOp};
pub use print::print_graph;
pub use shape::{DType, Dim, Shape, Type};
pub use verify::verify;

use crate::diag::Span;
use crate::tensor::Tensor;
use cranelift_entity::{entity_impl, EntityRef, PrimaryMap, SecondaryMap};

/// The implicit input that keys random draws ([`Op::Random`]): `[2]`,
/// the run's seed folded to 24 bits and a counter that training advances
/// every step (both whole numbers, exact in f32). Sema creates it at the
/// first draw, with the value `[0, 0]` when nothing is fed.
pub const RNG_KEY_INPUT: &str = "@rng";

/// The start of the name of the implicit input that feeds a learning
/// rate that varies (`@lr.opt`, one per optimizer; the training loop
/// feeds it every step).
pub const LR_INPUT_PREFIX: &str = "@lr.";

/// The implicit input behind `training()`: a scalar, 0 unless fed. The
/// pipeline replaces it with the constant 1 in a training step's graph
/// and 0 in an evaluation graph ([`crate::pipeline::set_training`]).
pub const TRAINING_INPUT: &str = "@training";

/// A value in the graph.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct Node(u32);
entity_impl!(Node, "%");

/// A symbolic dimension (`B`), bound to a number when the graph runs.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct Sym(u32);
entity_impl!(Sym, "sym");

/// A trainable parameter.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ParamId(u32);
entity_impl!(ParamId, "param");

/// A value fed from outside (data).
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct InputId(u32);
entity_impl!(InputId, "input");

/// A literal tensor.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ConstId(u32);
entity_impl!(ConstId, "const");

/// The body of a loop ([`Op::Scan`]): a graph of its own.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct BodyId(u32);
entity_impl!(BodyId, "body");

/// How a parameter gets its first value. Fan-in and fan-out follow the
/// `x @ w` convention: for a weight `[in, out]`, fan-in is `in`; for rank
/// > 2, `[out_c, in_c, k...]` as for convolutions.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
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
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Learned by training.
    Trainable,
    /// Kept across steps and updated in place, never differentiated:
    /// optimizer state (momentum, Adam's moments, the step counter) and
    /// the program's own `state` (running statistics, set by `assign`).
    State,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
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

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct InputInfo {
    pub name: String,
    pub ty: Type,
    /// The value used when none is fed (`nnc run`).
    pub default: Option<ConstId>,
    pub span: Span,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct SymInfo {
    pub name: String,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct NodeData {
    pub op: Op,
    pub ty: Type,
    pub span: Span,
}

/// `param ← node` after a step: every update reads the values from before
/// the step, then all are written (in place where a backend can).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Update {
    pub param: ParamId,
    pub node: Node,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Output {
    pub name: String,
    pub node: Node,
    pub span: Span,
}

/// An IR graph: the nodes and the tables they refer to.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
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

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// A copy of the graph with `nodes` in place of its own, which are not
    /// copied: what a pass that rebuilds every node returns.
    pub fn with_nodes(&self, nodes: PrimaryMap<Node, NodeData>) -> Graph {
        let Graph {
            nodes: _,
            syms,
            params,
            inputs,
            consts,
            outputs,
            updates,
            bodies,
        } = self;
        Graph {
            nodes,
            syms: syms.clone(),
            params: params.clone(),
            inputs: inputs.clone(),
            consts: consts.clone(),
            outputs: outputs.clone(),
            updates: updates.clone(),
            bodies: bodies.clone(),
        }
    }

    /// A table of a value per node, every node's the default to begin
    /// with. The passes and the schedule fill such tables index by index.
    /// A table grown as it is filled would be copied each time it
    /// doubled, onto memory not touched before (a deep model's first
    /// touches of memory are about a fifth of its compile time), and one
    /// only reserved would still grow element by element, through a call
    /// per new index.
    pub fn node_table<V: Clone + Default>(&self) -> SecondaryMap<Node, V> {
        let mut t = SecondaryMap::with_capacity(self.nodes.len());
        t.resize(self.nodes.len());
        t
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

    /// Which nodes the outputs and updates need, by node index.
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for n in self
            .outputs
            .iter()
            .map(|o| o.node)
            .chain(self.updates.iter().map(|u| u.node))
        {
            live[n.index()] = true;
        }
        for (n, d) in self.nodes.iter().rev() {
            if live[n.index()] {
                for a in d.op.args() {
                    live[a.index()] = true;
                }
            }
        }
        live
    }

    /// Rebuilds the arena so that every `Input(input)` node is followed
    /// by what `wrap` adds on it, and every use of the input reads
    /// `wrap`'s result instead (outputs and updates too). Returns the
    /// new node of each old one.
    pub fn wrap_input(
        &mut self,
        input: InputId,
        wrap: &mut dyn FnMut(&mut Graph, Node) -> Result<Node, TypeError>,
    ) -> Result<Vec<Node>, TypeError> {
        let old = std::mem::take(&mut self.nodes);
        let mut map: Vec<Node> = Vec::with_capacity(old.len());
        for (_, d) in old.into_iter() {
            let op = d.op.map_args(&|a| map[a.index()]);
            let is_input = op == Op::Input(input);
            let mut n = self.nodes.push(NodeData {
                op,
                ty: d.ty,
                span: d.span,
            });
            if is_input {
                n = wrap(self, n)?;
            }
            map.push(n);
        }
        for o in &mut self.outputs {
            o.node = map[o.node.index()];
        }
        for u in &mut self.updates {
            u.node = map[u.node.index()];
        }
        Ok(map)
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
