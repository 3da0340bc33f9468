//! The fused graph as Graphviz `dot` text (`--emit dot`): each kernel the
//! fusion pass forms is a cluster `cluster_kN`, numbered as `--emit fused`
//! numbers them, labelled with its kind.
//!
//! A kernel's cluster holds the node it stores and the nodes fused into
//! it. A fused node is computed inside every kernel that reads it (a
//! broadcast recomputed per reader, say), so it is drawn once per such
//! kernel, with the id `nN_kK`; stored nodes keep `nN`. Inputs,
//! parameters and constants (buffers filled from outside) stand outside
//! the clusters, as do outputs and updates. Loop bodies, fused on their
//! own, are dashed clusters holding their kernels.

use super::Fused;
use crate::ir::dot::{arg_role, body_edge, Dot};
use crate::ir::{Node, Op};
use crate::passes::fusion::Kind;
use cranelift_entity::EntityRef;

/// One digraph of the fused graphs of a program's phases (`name`,
/// graph); a phase with a name is a dashed cluster of its own.
pub fn fused(phases: &[(String, Fused)], title: &str) -> String {
    let mut dot = Dot::new(title);
    for (k, (name, f)) in phases.iter().enumerate() {
        if name.is_empty() {
            write_fused(&mut dot, f, "");
        } else {
            let id = format!("p{k}");
            dot.open_cluster(&id, &format!("phase {name}"), true);
            write_fused(&mut dot, f, &format!("{id}_"));
            dot.close();
        }
    }
    dot.finish()
}

/// Writes `f`'s leaves, kernels, outputs and updates, then its loop
/// bodies; ids start with `prefix`.
pub fn write_fused(dot: &mut Dot, f: &Fused, prefix: &str) {
    let g = &f.graph;
    let fusion = &f.fusion;
    let stored = |n: Node| format!("{prefix}n{}", n.index());
    let mut count = 0;
    for &(n, kind) in &fusion.kernels {
        if kind == Kind::Leaf {
            dot.node(&stored(n), g, n);
            continue;
        }
        count += 1;
        let by = match fusion.carrier[n] {
            Some(b) => format!(" (stored by the kernel of {b})"),
            None => String::new(),
        };
        dot.open_cluster(
            &format!("{prefix}k{count}"),
            &format!("kernel {count}{by}: {}", kind_name(kind)),
            false,
        );
        // The stored node, then what is fused into it, each node once per
        // kernel (a node read twice in one kernel is computed once).
        let members = members(f, n);
        let in_kernel = |a: Node| match members.contains(&a) {
            true => format!("{prefix}n{}_k{count}", a.index()),
            false => stored(a),
        };
        dot.node(&stored(n), g, n);
        for &m in &members {
            dot.node(&in_kernel(m), g, m);
        }
        dot.close();
        for (reader, id) in
            std::iter::once((n, stored(n))).chain(members.iter().map(|&m| (m, in_kernel(m))))
        {
            let op = &g.nodes[reader].op;
            for (k, a) in op.args().into_iter().enumerate() {
                dot.edge(&in_kernel(a), &id, arg_role(op, k).as_deref());
            }
        }
    }
    dot.sinks(g, prefix, &stored);
    let mut bodies: Vec<_> = f.bodies.iter().collect();
    bodies.sort_by_key(|(b, _)| **b);
    for (b, body) in bodies {
        let cluster = format!("{prefix}b{}", b.index());
        let inner = format!("{cluster}_");
        dot.open_cluster(&cluster, &format!("{b} (loop body)"), true);
        write_fused(dot, body, &inner);
        dot.close();
        for (n, _) in fusion.kernels.iter() {
            if matches!(g.nodes[*n].op, Op::Scan { body, .. } if body == *b) {
                body_edge(dot, &body.graph, &inner, &stored(*n), &b.to_string());
            }
        }
    }
}

/// The nodes fused into the kernel that stores `root`, in arena order
/// (which is a topological order).
fn members(f: &Fused, root: Node) -> Vec<Node> {
    let fusion = &f.fusion;
    let mut seen = Vec::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        for a in f.graph.nodes[n].op.args() {
            let inside = fusion.fused.contains(a) || fusion.strided.contains(a);
            if inside && !seen.contains(&a) {
                seen.push(a);
                stack.push(a);
            }
        }
    }
    seen.sort();
    seen
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Leaf => "leaf",
        Kind::Elementwise => "elementwise",
        Kind::Reduce => "reduce",
        Kind::MatMul => "matmul",
        Kind::Transpose => "transpose",
        Kind::View => "view",
        Kind::Host => "host",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use crate::ir::{BinaryOp, Dim, Graph, Output, UnaryOp};

    /// `neg(tanh(x) * tanh(x))` is one kernel: its cluster holds the
    /// stored `neg` and the fused `mul` and `tanh`; `tanh` is drawn once.
    #[test]
    fn a_fused_chain_is_one_cluster() {
        let mut g = Graph::new();
        let sp = Span::default();
        let x = g
            .add(
                Op::Fill {
                    value: 1.0,
                    shape: vec![Dim::Known(8)],
                },
                sp,
            )
            .unwrap();
        let a = g.add(Op::Unary(UnaryOp::Tanh, x), sp).unwrap();
        let b = g.add(Op::Binary(BinaryOp::Mul, a, a), sp).unwrap();
        let c = g.add(Op::Unary(UnaryOp::Neg, b), sp).unwrap();
        g.outputs.push(Output {
            name: "y".into(),
            node: c,
            span: sp,
        });
        let text = fused(&[(String::new(), crate::pipeline::fuse(&g))], "t");
        assert_eq!(text.matches("subgraph cluster_").count(), 1, "{text}");
        assert!(text.contains("label=\"kernel 1: elementwise\""), "{text}");
        assert_eq!(text.matches("tanh\\nf32[8]").count(), 1, "{text}");
        // tanh is read twice by the mul: two edges, one node.
        assert_eq!(text.matches("n1_k1 -> n2_k1\n").count(), 2, "{text}");
        assert!(text.contains("n3 -> out0 [style=bold]"), "{text}");
    }
}
