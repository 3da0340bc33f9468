//! A small builder the passes share: adds typed nodes to a graph and turns
//! a typing failure (a compiler bug) into an internal-error diagnostic.

use crate::diag::{self, code, Diag, Span};
use crate::ir::{BinaryOp, CmpOp, Dim, Graph, Node, Op, ReduceOp, Shape, UnaryOp};

pub struct Builder<'g> {
    pub g: &'g mut Graph,
}

impl Builder<'_> {
    pub fn add(&mut self, op: Op, span: Span) -> Result<Node, Diag> {
        self.g.add(op, span).map_err(|e| {
            diag::error(code::INTERNAL, format!("internal compiler error: {e}"))
                .with_labels(vec![span.primary("while differentiating this")])
        })
    }

    pub fn shape(&self, n: Node) -> Shape {
        self.g.shape(n).clone()
    }

    pub fn unary(&mut self, op: UnaryOp, a: Node, sp: Span) -> Result<Node, Diag> {
        self.add(Op::Unary(op, a), sp)
    }

    pub fn binary(&mut self, op: BinaryOp, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.add(Op::Binary(op, a, b), sp)
    }

    pub fn add2(&mut self, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.binary(BinaryOp::Add, a, b, sp)
    }

    pub fn sub(&mut self, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.binary(BinaryOp::Sub, a, b, sp)
    }

    pub fn mul(&mut self, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.binary(BinaryOp::Mul, a, b, sp)
    }

    pub fn div(&mut self, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.binary(BinaryOp::Div, a, b, sp)
    }

    pub fn cmp(&mut self, op: CmpOp, a: Node, b: Node, sp: Span) -> Result<Node, Diag> {
        self.add(Op::Compare(op, a, b), sp)
    }

    /// A constant of `shape`, every element `v`.
    pub fn fill(&mut self, v: f32, shape: Shape, sp: Span) -> Result<Node, Diag> {
        self.add(Op::Fill { value: v, shape }, sp)
    }

    /// A constant shaped like `like`.
    pub fn fill_like(&mut self, v: f32, like: Node, sp: Span) -> Result<Node, Diag> {
        let s = self.shape(like);
        self.fill(v, s, sp)
    }

    pub fn broadcast(&mut self, a: Node, shape: Shape, sp: Span) -> Result<Node, Diag> {
        if self.g.shape(a) == &shape {
            return Ok(a);
        }
        self.add(Op::Broadcast(a, shape), sp)
    }

    pub fn reshape(&mut self, a: Node, shape: Shape, sp: Span) -> Result<Node, Diag> {
        if self.g.shape(a) == &shape {
            return Ok(a);
        }
        self.add(Op::Reshape(a, shape), sp)
    }

    pub fn reduce(
        &mut self,
        op: ReduceOp,
        a: Node,
        axes: Vec<usize>,
        sp: Span,
    ) -> Result<Node, Diag> {
        if axes.is_empty() {
            return Ok(a);
        }
        self.add(Op::Reduce { op, arg: a, axes }, sp)
    }

    /// Sums `x` down to `target`, undoing a NumPy broadcast of `target`
    /// to `x`'s shape: leading axes, and axes where `target` has a 1.
    pub fn sum_to(&mut self, x: Node, target: &Shape, sp: Span) -> Result<Node, Diag> {
        let xs = self.shape(x);
        let lead = xs.len() - target.len();
        let axes: Vec<usize> = (0..xs.len())
            .filter(|&i| i < lead || (target[i - lead] == Dim::Known(1) && xs[i] != Dim::Known(1)))
            .collect();
        let r = self.reduce(ReduceOp::Sum, x, axes, sp)?;
        self.reshape(r, target.clone(), sp)
    }

    /// `x` broadcast back over `axes` that a reduction removed, to `shape`.
    pub fn unreduce(
        &mut self,
        x: Node,
        axes: &[usize],
        shape: &Shape,
        sp: Span,
    ) -> Result<Node, Diag> {
        let kept: Shape = shape
            .iter()
            .enumerate()
            .map(|(i, d)| if axes.contains(&i) { Dim::Known(1) } else { *d })
            .collect();
        let r = self.reshape(x, kept, sp)?;
        self.broadcast(r, shape.clone(), sp)
    }

    /// Swaps the last two axes.
    pub fn transpose_last(&mut self, a: Node, sp: Span) -> Result<Node, Diag> {
        let r = self.g.shape(a).len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.add(Op::Transpose(a, perm), sp)
    }
}

/// Points `g`'s outputs and updates at their nodes' copies, after a pass
/// that rebuilt the arena in order and recorded each node's copy in
/// `new_of` (every output and update is a node of the old arena, so each
/// has one: an invariant of the pass, not of user input).
/// Which nodes of `g` depend on one of its inputs whose index (in
/// declaration order) `which` accepts: in a loop body input 0 is the
/// carry, then come the sequences' step slices, then the arguments.
pub(super) fn reads_inputs(g: &Graph, which: impl Fn(usize) -> bool) -> Vec<bool> {
    use cranelift_entity::EntityRef;
    let mut dep = vec![false; g.nodes.len()];
    for (n, d) in g.nodes.iter() {
        dep[n.index()] = match d.op {
            Op::Input(i) => which(i.index()),
            ref op => op.args().iter().any(|a| dep[a.index()]),
        };
    }
    dep
}

/// A copy of `g` in which `replace` may give each node, in order, a node
/// already added to the copy instead of the node's own copy (adding what
/// it needs; `new_of` maps every earlier node). The replaced nodes' own
/// arguments stay, dead where nothing else reads them.
pub(super) fn rebuild(
    g: &Graph,
    mut replace: impl FnMut(
        Node,
        &mut Graph,
        &cranelift_entity::SecondaryMap<Node, Option<Node>>,
    ) -> Option<Node>,
) -> Graph {
    let mut out = g.with_nodes(cranelift_entity::PrimaryMap::new());
    let mut new_of: cranelift_entity::SecondaryMap<Node, Option<Node>> =
        cranelift_entity::SecondaryMap::new();
    for (n, d) in g.nodes.iter() {
        let m = match replace(n, &mut out, &new_of) {
            Some(m) => m,
            // The arena is in topological order: every argument was
            // copied (or replaced) before its reader.
            None => out.nodes.push(crate::ir::NodeData {
                op: d.op.map_args(&|x| new_of[x].expect("arguments come first")),
                ty: d.ty.clone(),
                span: d.span,
            }),
        };
        new_of[n] = Some(m);
    }
    renumber_roots(&mut out, &new_of);
    out
}

pub fn renumber_roots(g: &mut Graph, new_of: &cranelift_entity::SecondaryMap<Node, Option<Node>>) {
    for o in &mut g.outputs {
        o.node = new_of[o.node].expect("outputs are nodes");
    }
    for u in &mut g.updates {
        u.node = new_of[u.node].expect("updates are nodes");
    }
}
