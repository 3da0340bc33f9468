//! Common-subexpression elimination, with the peephole rules of
//! [`simplify`](super::simplify).
//!
//! Takes a graph; returns a copy in which no two nodes compute the same
//! operation on the same arguments (the later one is replaced by the
//! earlier everywhere: in arguments, outputs and updates). Inputs,
//! parameters and constants are leaves and stay distinct; random draws
//! are merged only when their salt and key agree, which is when they are
//! the same values. The training step needs it: autodiff rebuilds the
//! forward values the loss already computed. As each node is copied, the
//! simplification rules replace it by one of its operands or by cheaper
//! nodes computing the same bits (a slice of a concatenation by the part
//! it cuts), and the nodes they make are merged like any other.
//! After the pass the graph verifies and computes the same outputs, bit
//! for bit.

use super::build;
use crate::diag::Span;
use crate::ir::{Graph, Node, NodeData, Op, Type};
use cranelift_entity::{PrimaryMap, SecondaryMap};
use rustc_hash::{FxHashMap, FxHasher};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

pub fn cse(g: &Graph) -> Graph {
    let mut b = Builder {
        out: g.with_nodes(PrimaryMap::with_capacity(g.nodes.len())),
        seen: FxHashMap::with_capacity_and_hasher(g.nodes.len(), Default::default()),
        collided: FxHashMap::default(),
        fired: BTreeMap::new(),
    };
    let mut new_of: SecondaryMap<Node, Option<Node>> = g.node_table();
    for (n, d) in g.nodes.iter() {
        let op = d.op.map_args(&|a| new_of[a].expect("arguments come first"));
        new_of[n] = Some(b.node(op, &d.ty, d.span));
    }
    if !b.fired.is_empty() {
        let fired: Vec<String> = b
            .fired
            .iter()
            .map(|(rule, k)| format!("{rule}: {k} node(s)"))
            .collect();
        crate::log::lines("fusion", &[format!("simplify: {}", fired.join(", "))]);
    }
    let mut out = b.out;
    build::renumber_roots(&mut out, &new_of);
    out
}

/// The graph being built: its nodes, by the hash of their op (equal ops
/// hash alike; the first node of each hash is in `seen`, the few others
/// that collide with it in `collided`, told apart by `same`), and how
/// often each simplification rule fired.
pub(super) struct Builder {
    pub(super) out: Graph,
    seen: FxHashMap<u64, Node>,
    collided: FxHashMap<u64, Vec<Node>>,
    fired: BTreeMap<&'static str, usize>,
}

impl Builder {
    /// The node computing `op` (of type `ty`): what a simplification rule
    /// gives for it, else an equal node already built, else a new one.
    fn node(&mut self, op: Op, ty: &Type, span: Span) -> Node {
        if let Some((rule, m)) = super::simplify::rewrite(self, &op, span) {
            // A rule keeps the type; one that did not would be a bug in
            // it, and the op is then kept as it is.
            if self.out.ty(m) == ty {
                *self.fired.entry(rule).or_default() += 1;
                return m;
            }
        }
        self.intern(op, ty, span)
    }

    /// A node computing `op` made by a rule: its type inferred.
    pub(super) fn make(&mut self, op: Op, span: Span) -> Option<Node> {
        let ty = self.out.infer(&op).ok()?;
        Some(self.node(op, &ty, span))
    }

    fn intern(&mut self, op: Op, ty: &Type, span: Span) -> Node {
        let fp = fingerprint(&op);
        let nodes = &self.out.nodes;
        let equal = |m: &Node| same(&nodes[*m].op, &op) && nodes[*m].ty == *ty;
        let first = self.seen.get(&fp);
        if let Some(&m) = first.filter(|m| equal(m)) {
            return m;
        }
        if let Some(&m) = self
            .collided
            .get(&fp)
            .and_then(|ms| ms.iter().find(|m| equal(m)))
        {
            return m;
        }
        let taken = first.is_some();
        let m = self.out.nodes.push(NodeData {
            op,
            ty: ty.clone(),
            span,
        });
        match taken {
            false => {
                self.seen.insert(fp, m);
            }
            true => self.collided.entry(fp).or_default().push(m),
        }
        m
    }
}

/// Whether two ops (their arguments already renamed) compute the same
/// thing: equal in every field, a `Fill`'s value compared bit for bit (so
/// `0.0` and `-0.0` stay apart, and a NaN fill merges with its twin).
fn same(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Fill { value: x, shape: s }, Op::Fill { value: y, shape: t }) => {
            x.to_bits() == y.to_bits() && s == t
        }
        _ => a == b,
    }
}

/// A hash of an op consistent with `same`: its kind, its arguments and
/// the attributes that tell ops of one kind on the same arguments apart.
fn fingerprint(op: &Op) -> u64 {
    let mut h = FxHasher::default();
    std::mem::discriminant(op).hash(&mut h);
    for a in op.args() {
        a.hash(&mut h);
    }
    match op {
        Op::Input(i) => i.hash(&mut h),
        Op::Param(p) => p.hash(&mut h),
        Op::Const(c) => c.hash(&mut h),
        Op::Fill { value, shape } => (value.to_bits(), shape).hash(&mut h),
        Op::Random {
            dist, shape, salt, ..
        } => (dist, shape, salt).hash(&mut h),
        Op::Unary(u, _) => u.hash(&mut h),
        Op::Binary(b, ..) => b.hash(&mut h),
        Op::Compare(c, ..) => c.hash(&mut h),
        Op::Reduce { op, axes, .. } => (op, axes).hash(&mut h),
        Op::Reshape(_, s) | Op::Broadcast(_, s) => s.hash(&mut h),
        Op::Transpose(_, perm) => perm.hash(&mut h),
        Op::Slice {
            axis, start, end, ..
        } => (axis, start, end).hash(&mut h),
        Op::Scan { body, .. } => body.hash(&mut h),
        // The rest are told apart by their arguments, or by `same`.
        _ => {}
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use crate::ir::{BinaryOp, Dim, Output, UnaryOp};

    #[test]
    fn equal_ops_merge_and_signed_zeros_stay_apart() {
        let mut g = Graph::new();
        let sp = Span::default();
        let fill = |g: &mut Graph, value: f32, n: u64| {
            let shape = vec![Dim::Known(n)];
            g.add(Op::Fill { value, shape }, sp).unwrap()
        };
        let (z1, z2, nz) = (
            fill(&mut g, 0.0, 4),
            fill(&mut g, 0.0, 4),
            fill(&mut g, -0.0, 4),
        );
        let other_shape = fill(&mut g, 0.0, 3);
        let e1 = g.add(Op::Unary(UnaryOp::Exp, z1), sp).unwrap();
        let e2 = g.add(Op::Unary(UnaryOp::Exp, z2), sp).unwrap();
        let t = g.add(Op::Unary(UnaryOp::Tanh, z2), sp).unwrap();
        let en = g.add(Op::Unary(UnaryOp::Exp, nz), sp).unwrap();
        let a = g.add(Op::Binary(BinaryOp::Add, e1, e2), sp).unwrap();
        let b = g.add(Op::Binary(BinaryOp::Sub, e1, e2), sp).unwrap();
        for (i, n) in [a, b, t, en, other_shape].into_iter().enumerate() {
            g.outputs.push(Output {
                name: format!("o{i}"),
                node: n,
                span: sp,
            });
        }
        let out = cse(&g);
        // Kept: 0.0 [4], -0.0 [4], 0.0 [3], exp 0.0, tanh 0.0, exp -0.0,
        // the add and the sub (the two exps of 0.0 are one).
        assert_eq!(out.nodes.len(), 8, "{:#?}", out.nodes);
        let o = |i: usize| out.outputs[i].node;
        let args = |n| out.nodes[n].op.args();
        assert_eq!(args(o(0))[0], args(o(0))[1], "exp(z1) and exp(z2) merge");
        assert_ne!(args(o(3))[0], args(args(o(0))[0])[0], "-0.0 is not 0.0");
        assert_eq!(out.shape(o(4)), &vec![Dim::Known(3)]);
    }
}
