//! Loop-invariant code motion: work that every step of a loop repeats is
//! done once, before it.
//!
//! Takes a graph; returns a copy in which each scan body computes only
//! what changes from step to step. A body node that depends on the loop's
//! extra arguments alone (not on the carry, nor on the step's slices of
//! the sequences), whose shape is fully known and which is not a random
//! draw, is computed in the outer graph just before the loop; the body
//! reads it as a new input, appended after the arguments (the loop gets it
//! as a new argument). The LSTM's four gate weights sliced from one
//! stacked tensor are the case in point: sliced once per call, not once
//! per step in each of the forward and derivative loops. A graph without
//! a loop comes back as it is, not copied.
//!
//! Fills and constants are not moved on their own (they cost nothing in a
//! fused loop), nor is a reshape or broadcast of an argument (a view, or
//! an index map the loop kernels apply for free).
//! After the pass the graph verifies and computes the same outputs; the
//! moved nodes are left dead in the body.

use super::build;
use crate::ir::{Dim, Graph, InputId, InputInfo, Node, NodeData, Op};
use cranelift_entity::{EntityRef, PrimaryMap, SecondaryMap};
use std::borrow::Cow;
use std::collections::HashMap;

pub fn hoist(g: &Graph) -> Cow<'_, Graph> {
    if !g.nodes.values().any(|d| matches!(d.op, Op::Scan { .. })) {
        return Cow::Borrowed(g);
    }
    let mut out = g.clone();
    out.nodes = PrimaryMap::new();
    let mut new_of: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    // The arena is in topological order, so every argument has been copied
    // before its reader, and outputs and updates name copied nodes: the
    // `expect`s below are invariants of the graph, not of user input.
    for (n, d) in g.nodes.iter() {
        let mut op = d.op.map_args(&|a| new_of[a].expect("arguments come first"));
        if let Op::Scan { body, xs, args, .. } = &mut op {
            if let Some(h) = invariants(&g.bodies[*body], xs.len()) {
                let src = &g.bodies[*body];
                // Body node → outer node, starting from the arguments.
                let mut map: HashMap<Node, Node> = HashMap::new();
                for (k, &a) in h.arg_inputs.iter().enumerate() {
                    if let Some(input) = a {
                        map.insert(input, args[k]);
                    }
                }
                for &bn in &h.moved {
                    let bd = &src.nodes[bn];
                    let moved = match &bd.op {
                        Op::Const(c) => Op::Const(out.consts.push(src.consts[*c].clone())),
                        op => op.map_args(&|a| map[&a]),
                    };
                    let m = out.nodes.push(NodeData {
                        op: moved,
                        ty: bd.ty.clone(),
                        span: bd.span,
                    });
                    map.insert(bn, m);
                }
                args.extend(h.frontier.iter().map(|f| map[f]));
                // Every scan of this body makes the same choice (it
                // depends on the body alone), so the body is replaced in
                // place.
                out.bodies[*body] = h.body;
            }
        }
        let m = out.nodes.push(NodeData {
            op,
            ty: d.ty.clone(),
            span: d.span,
        });
        new_of[n] = Some(m);
    }
    build::renumber_roots(&mut out, &new_of);
    Cow::Owned(out)
}

/// What moves out of one body.
struct Hoisted {
    /// The input node of each extra argument, where the body reads it.
    arg_inputs: Vec<Option<Node>>,
    /// Body nodes to compute outside, in order (leaves included, inputs
    /// not).
    moved: Vec<Node>,
    /// The moved nodes the body still reads: its new inputs, in order.
    frontier: Vec<Node>,
    /// The body with each frontier node turned into an input.
    body: Graph,
}

/// The invariant part of `body` (whose inputs are the carry, `nx` step
/// slices, then the arguments), or `None` when nothing is worth moving.
fn invariants(body: &Graph, nx: usize) -> Option<Hoisted> {
    let ids: Vec<InputId> = body.inputs.keys().collect();
    let len = body.nodes.len();
    let known = |d: &NodeData| d.ty.shape.iter().all(|x| matches!(x, Dim::Known(_)));
    // movable: computable outside; dep: reads an argument.
    let mut movable = vec![false; len];
    let mut dep = vec![false; len];
    let mut arg_inputs = vec![None; ids.len().saturating_sub(1 + nx)];
    for (n, d) in body.nodes.iter() {
        let (mv, dp) = match &d.op {
            Op::Input(i) => {
                let k = ids.iter().position(|j| j == i);
                match k.and_then(|k| k.checked_sub(1 + nx)) {
                    Some(a) => {
                        arg_inputs[a] = Some(n);
                        (true, true)
                    }
                    None => (false, false),
                }
            }
            Op::Fill { .. } | Op::Const(_) => (known(d), false),
            Op::Random { .. } | Op::Param(_) | Op::Scan { .. } => (false, false),
            op => {
                let a = op.args();
                (
                    known(d) && a.iter().all(|x| movable[x.index()]),
                    a.iter().any(|x| dep[x.index()]),
                )
            }
        };
        movable[n.index()] = mv;
        dep[n.index()] = dp;
    }
    let is_input = |n: Node| matches!(body.nodes[n].op, Op::Input(_));
    let hoisted = |n: Node| movable[n.index()] && dep[n.index()] && !is_input(n);
    // A view or index map of an argument is not worth a buffer of its own.
    let trivial = |n: Node| match body.nodes[n].op {
        Op::Reshape(a, _) | Op::Broadcast(a, _) => is_input(a),
        _ => false,
    };
    let mut live = vec![false; len];
    let mut frontier_set = vec![false; len];
    for o in &body.outputs {
        live[o.node.index()] = true;
        frontier_set[o.node.index()] = hoisted(o.node);
    }
    for (n, d) in body.nodes.iter().rev() {
        if !live[n.index()] {
            continue;
        }
        for a in d.op.args() {
            live[a.index()] = true;
            if hoisted(a) && !hoisted(n) {
                frontier_set[a.index()] = true;
            }
        }
    }
    let frontier: Vec<Node> = body
        .nodes
        .keys()
        .filter(|&n| frontier_set[n.index()] && !trivial(n))
        .collect();
    if frontier.is_empty() {
        return None;
    }
    // Everything the frontier needs, inputs excepted.
    let mut need = vec![false; len];
    for &f in &frontier {
        need[f.index()] = true;
    }
    for (n, d) in body.nodes.iter().rev() {
        if need[n.index()] {
            for a in d.op.args() {
                need[a.index()] = true;
            }
        }
    }
    let moved = body
        .nodes
        .keys()
        .filter(|&n| need[n.index()] && !is_input(n))
        .collect();
    let mut nb = body.clone();
    for (k, &f) in frontier.iter().enumerate() {
        let d = &body.nodes[f];
        let id = nb.inputs.push(InputInfo {
            name: format!("hoisted{k}"),
            ty: d.ty.clone(),
            default: None,
            span: d.span,
        });
        nb.nodes[f].op = Op::Input(id);
    }
    Some(Hoisted {
        arg_inputs,
        moved,
        frontier,
        body: nb,
    })
}
