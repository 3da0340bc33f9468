//! Sequences that are column slices of one stacked value become one
//! sequence: the loop body slices each step itself.
//!
//! Takes a graph (a graph without a loop, or whose loops read no such
//! slices, comes back as it is, not copied); returns a copy in which a
//! scan's sequences `slice(S, axis = k ≥ 1, ..)` of one stacked value `S`
//! are replaced by `S` itself, read once per step, and the body reads each
//! former sequence as the same slice of the step of `S` (axis `k - 1`).
//!
//! Why (the rule `scan-sequence-slices`, logged under `NNC_LOG=fusion`):
//! a derivative loop reads the values its forward loop kept for it
//! (`scan-residual`) as slices of the forward loop's stacked carry. A
//! loop's sequences are stored contiguously step by step, so each slice
//! was copied out of the stack whole before the loop (an LSTM's five
//! residuals: five copies of `T·B·H` floats). A step of `S` is contiguous;
//! in the body the slices of it are read in place by the kernels that
//! read them (fusion's `slice-in-place`), so nothing is copied.
//!
//! Rewritten when the slices of one `S` cover at least half of its axis
//! (a backend that copies each step's operands, as OpenCL does, then
//! copies at most twice what it did), the axis has a known size, and the
//! body is used by this loop alone. After the pass the graph verifies and
//! computes the same values, bit for bit.

use super::build;
use crate::ir::{Dim, Graph, InputId, Node, NodeData, Op, Type};
use cranelift_entity::{EntityRef, PrimaryMap, SecondaryMap};
use std::borrow::Cow;

/// A sequence of a loop that is a slice of a stacked value.
struct Member {
    /// Its index among the loop's sequences.
    x: usize,
    /// The group it belongs to (one per stacked value).
    group: usize,
    /// The slice's axis in a step (one less than in the stack).
    axis: usize,
    start: u64,
    end: u64,
}

pub fn share(g: &Graph) -> Cow<'_, Graph> {
    let mut uses: SecondaryMap<crate::ir::BodyId, usize> = SecondaryMap::new();
    for d in g.nodes.values() {
        if let Op::Scan { body, .. } = d.op {
            uses[body] += 1;
        }
    }
    let mut out: Option<Graph> = None;
    let mut log = Vec::new();
    for (n, d) in g.nodes.iter() {
        let Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } = &d.op
        else {
            continue;
        };
        // (A body reads the carry, then the sequences, then the extra
        // arguments: `regroup` renumbers them so.)
        if uses[*body] != 1 || g.bodies[*body].inputs.len() != 1 + xs.len() + args.len() {
            continue;
        }
        let Some((members, stacks)) = plan(g, xs) else {
            continue;
        };
        let new_body = regroup(&g.bodies[*body], xs.len(), &members, &stacks, g);
        let mut new_xs = Vec::new();
        for (j, &x) in xs.iter().enumerate() {
            match members.iter().find(|m| m.x == j) {
                None => new_xs.push(x),
                Some(m) if first_of(&members, m.group) == j => new_xs.push(stacks[m.group]),
                Some(_) => {}
            }
        }
        log.push(format!(
            "scan-sequence-slices: {n} reads {} slice(s) of {} stacked value(s) as {} sequence(s), sliced in its body",
            members.len(),
            stacks.len(),
            stacks.len()
        ));
        let o = out.get_or_insert_with(|| g.clone());
        o.bodies[*body] = new_body;
        o.nodes[n].op = Op::Scan {
            body: *body,
            init: *init,
            xs: new_xs,
            args: args.clone(),
            reverse: *reverse,
        };
    }
    crate::log::lines("fusion", &log);
    match out {
        Some(o) => Cow::Owned(o),
        None => Cow::Borrowed(g),
    }
}

/// The index of the first sequence of group `group`.
fn first_of(members: &[Member], group: usize) -> usize {
    members
        .iter()
        .filter(|m| m.group == group)
        .map(|m| m.x)
        .min()
        .unwrap_or(usize::MAX)
}

/// The sequences of a loop to read through their stacked values, and
/// those values, or None when no stacked value qualifies.
fn plan(g: &Graph, xs: &[Node]) -> Option<(Vec<Member>, Vec<Node>)> {
    let mut members = Vec::new();
    let mut stacks: Vec<Node> = Vec::new();
    for (j, &x) in xs.iter().enumerate() {
        let Op::Slice {
            arg,
            axis,
            start,
            end,
        } = g.nodes[x].op
        else {
            continue;
        };
        if axis == 0 || !matches!(g.shape(arg)[axis], Dim::Known(_)) {
            continue;
        }
        let group = match stacks.iter().position(|&s| s == arg) {
            Some(k) => k,
            None => {
                stacks.push(arg);
                stacks.len() - 1
            }
        };
        members.push(Member {
            x: j,
            group,
            axis: axis - 1,
            start,
            end,
        });
    }
    // Keep the groups whose slices, all along one axis, cover at least
    // half of it.
    let keep: Vec<bool> = (0..stacks.len())
        .map(|k| {
            let mine: Vec<&Member> = members.iter().filter(|m| m.group == k).collect();
            let axis = mine[0].axis;
            let Dim::Known(full) = g.shape(stacks[k])[axis + 1] else {
                return false;
            };
            let covered: u64 = mine.iter().map(|m| m.end - m.start).sum();
            mine.iter().all(|m| m.axis == axis) && 2 * covered >= full
        })
        .collect();
    let renumber: Vec<Option<usize>> = keep
        .iter()
        .scan(0, |next, &k| {
            Some(k.then(|| {
                *next += 1;
                *next - 1
            }))
        })
        .collect();
    members.retain(|m| keep[m.group]);
    for m in &mut members {
        m.group = renumber[m.group]?;
    }
    let stacks: Vec<Node> = stacks
        .into_iter()
        .zip(&keep)
        .filter_map(|(s, &k)| k.then_some(s))
        .collect();
    (!stacks.is_empty()).then_some((members, stacks))
}

/// `body` reading each group's stacked value as one sequence (the first
/// member's input, retyped to a step of the stack) and each member as a
/// slice of it; the other members' inputs are gone. The body's inputs
/// are the carry, then the `nx` sequences, then the extra arguments.
fn regroup(body: &Graph, nx: usize, members: &[Member], stacks: &[Node], outer: &Graph) -> Graph {
    let member_of = |i: InputId| {
        let x = i.index().checked_sub(1).filter(|&x| x < nx)?;
        members.iter().find(|m| m.x == x)
    };
    // The body's inputs, without the members but the first of each group,
    // which takes a step of its stacked value's type.
    let mut inputs = PrimaryMap::new();
    let mut new_id: SecondaryMap<InputId, Option<InputId>> = SecondaryMap::new();
    for (i, info) in body.inputs.iter() {
        let mut info = info.clone();
        if let Some(m) = member_of(i) {
            if first_of(members, m.group) != m.x {
                continue;
            }
            let mut shape = info.ty.shape.clone();
            shape[m.axis] = outer.shape(stacks[m.group])[m.axis + 1];
            info.ty = Type::f32(shape);
        }
        new_id[i] = Some(inputs.push(info));
    }
    // Each group's input node, once made.
    let mut group_node: Vec<Option<Node>> = vec![None; stacks.len()];
    let mut nodes: PrimaryMap<Node, NodeData> = PrimaryMap::new();
    let mut new_of: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    for (n, d) in body.nodes.iter() {
        let m = match d.op {
            Op::Input(i) => member_of(i),
            _ => None,
        };
        let Some(m) = m else {
            // The arena is in topological order: arguments come first (an
            // invariant of the graph). Every input but the members after
            // their group's first was given a new id above, and this node
            // is not a member's: both lookups hold by construction.
            let op = match d.op {
                Op::Input(i) => Op::Input(new_id[i].expect("only members lose their input")),
                ref op => op.map_args(&|a| new_of[a].expect("arguments come first")),
            };
            new_of[n] = Some(nodes.push(NodeData {
                op,
                ty: d.ty.clone(),
                span: d.span,
            }));
            continue;
        };
        let stack = match group_node[m.group] {
            Some(s) => s,
            None => {
                let first = first_of(members, m.group);
                // The group's first member keeps its input (`first + 1`:
                // the carry is input 0), renumbered above: an invariant of
                // this function, not of its input.
                let id = new_id[InputId::new(first + 1)].expect("the first member keeps its input");
                let s = nodes.push(NodeData {
                    op: Op::Input(id),
                    ty: inputs[id].ty.clone(),
                    span: d.span,
                });
                group_node[m.group] = Some(s);
                s
            }
        };
        new_of[n] = Some(nodes.push(NodeData {
            op: Op::Slice {
                arg: stack,
                axis: m.axis,
                start: m.start,
                end: m.end,
            },
            ty: d.ty.clone(),
            span: d.span,
        }));
    }
    let mut g = body.with_nodes(nodes);
    g.inputs = inputs;
    build::renumber_roots(&mut g, &new_of);
    g
}
