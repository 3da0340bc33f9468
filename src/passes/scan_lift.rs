//! Step-parallel products leave their loop: work a loop's steps could do
//! side by side is done for all of them at once, before it.
//!
//! Takes a graph (a graph without a loop comes back as it is, not
//! copied); returns a copy in which each scan body's values that do not
//! depend on the carry — they read step slices of the sequences,
//! and arguments — and that the rest of the body reads are computed for
//! every step before the loop, over a new leading step axis `[T, ..]`,
//! and the body reads each one's step slice as a new sequence. A step's
//! slice of `x` times a weight shared by all steps becomes one GEMM over
//! the T·B rows of all steps (the schedule's `matmul-broadcast-operand`)
//! instead of T small ones inside the loop, and the activations that read
//! it one elementwise loop over all steps. The forward LSTM's input
//! projection is the plain case; the derivative loops gain most, since
//! everything they recompute of the forward cell reads the stacked
//! forward states (a sequence), not their carry: only the work that reads
//! the adjoint carried from step to step stays in the loop.
//!
//! The stated cost rule (`scan-lift`, logged under `NNC_LOG=fusion`): a
//! loop is rewritten when at least one matrix product leaves it; each
//! value the body then reads from outside costs T times its size in
//! memory (the buffers `NNC_LOG=plan` lists; the run's memory limit,
//! `--max-memory`, still applies). Views of a step slice (reshapes,
//! broadcasts) stay in the body.
//!
//! A loop whose body does not read its carry at all (the derivative loops
//! of a scan's sequences and of its arguments) is no loop: `scan-vectorize`
//! replaces it by its body computed over all steps at once. Where such a
//! loop's stack is only summed over the steps (an argument's gradient,
//! Σₜ of per-step contributions), the sum is pushed through the joins,
//! reshapes and additions that assemble it down to the products, where
//! Σₜ xₜᵀ gₜ is one GEMM over all T·B rows (fusion's `matmul-batch-sum`).
//!
//! What is lifted: elementwise operations, reductions, products,
//! reshapes, transposes, broadcasts, slices, concatenations and gathers
//! from a table that is not per-step. Random draws, convolutions,
//! poolings, scatter-adds and nested loops stay in the body.
//! After the pass the graph verifies and computes the same values up to
//! the order of float additions in the products' sums; the lifted nodes
//! are left dead in the bodies.

use super::build;
use crate::ir::{Dim, Graph, InputInfo, Node, NodeData, Op, ReduceOp, TypeError};
use cranelift_entity::{EntityRef, EntitySet, PrimaryMap, SecondaryMap};
use std::borrow::Cow;
use std::collections::HashMap;

pub fn lift(g: &Graph) -> Cow<'_, Graph> {
    let scans = g
        .nodes
        .values()
        .filter(|d| matches!(d.op, Op::Scan { .. }))
        .count();
    if scans == 0 {
        return Cow::Borrowed(g);
    }
    let mut uses: SecondaryMap<crate::ir::BodyId, usize> = SecondaryMap::new();
    for d in g.nodes.values() {
        if let Op::Scan { body, .. } = d.op {
            uses[body] += 1;
        }
    }
    let mut out = g.clone();
    out.nodes = PrimaryMap::new();
    let mut new_of: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    // Outer nodes that stand for a whole vectorized loop: their sums over
    // the steps are pushed down.
    let mut whole: EntitySet<Node> = EntitySet::new();
    let mut log = Vec::new();
    for (n, d) in g.nodes.iter() {
        // The arena is in topological order: every argument was copied
        // before its reader (an invariant of the graph, not of its input).
        let op = d.op.map_args(&|a| new_of[a].expect("arguments come first"));
        let mut done = None;
        match &op {
            Op::Scan {
                body,
                init,
                xs,
                args,
                reverse,
            } if !xs.is_empty() => {
                let src = &g.bodies[*body];
                match plan(src, xs.len()) {
                    Plan::Nothing => {}
                    Plan::Whole(need) => {
                        let outputs = [src.outputs[0].node];
                        let lifted = lift_nodes(&mut out, src, &need, xs, args, &outputs);
                        if let Some(v) = lifted.ok().filter(|v| out.ty(v[0]) == &d.ty) {
                            log.push(format!(
                                "scan-vectorize: {n}'s steps are independent: its body runs once over all {} steps",
                                out.dim_str(out.shape(xs[0])[0])
                            ));
                            whole.insert(v[0]);
                            done = Some(v[0]);
                        }
                    }
                    Plan::Products {
                        need,
                        frontier,
                        body: new_body,
                        products,
                    } => {
                        if let Ok(v) = lift_nodes(&mut out, src, &need, xs, args, &frontier) {
                            log.push(format!(
                                "scan-lift: {products} product(s) of {n}'s body and what reads them up to the carry run for all {} steps before the loop; the body reads {} stacked value(s)",
                                out.dim_str(out.shape(xs[0])[0]),
                                frontier.len(),
                            ));
                            let id = if uses[*body] == 1 {
                                out.bodies[*body] = *new_body;
                                *body
                            } else {
                                out.bodies.push(*new_body)
                            };
                            let mut xs = xs.clone();
                            xs.extend(v);
                            let scan = Op::Scan {
                                body: id,
                                init: *init,
                                xs,
                                args: args.clone(),
                                reverse: *reverse,
                            };
                            done = out.add(scan, d.span).ok().filter(|&m| out.ty(m) == &d.ty);
                            if done.is_none() && id == *body {
                                // The loop stays as it was, and so must its
                                // body (the lifted nodes are left dead).
                                out.bodies[id] = src.clone();
                            }
                        }
                    }
                }
            }
            Op::Reduce {
                op: ReduceOp::Sum,
                arg,
                axes,
            } if whole.contains(*arg) && axes == &[0] => {
                done = sum_steps(&mut out, *arg, d.span)
                    .ok()
                    .filter(|&m| out.ty(m) == &d.ty);
                if done.is_some() {
                    log.push(format!(
                        "scan-vectorize: {n} sums a vectorized loop over its steps: the sum is pushed down to the products"
                    ));
                }
            }
            _ => {}
        }
        let m = match done {
            Some(m) => m,
            None => out.nodes.push(NodeData {
                op,
                ty: d.ty.clone(),
                span: d.span,
            }),
        };
        new_of[n] = Some(m);
    }
    crate::log::lines("fusion", &log);
    build::renumber_roots(&mut out, &new_of);
    Cow::Owned(out)
}

/// What leaves one body.
enum Plan {
    Nothing,
    /// The body's output does not read the carry: these nodes, lifted,
    /// are the loop's result.
    Whole(Vec<bool>),
    /// These nodes are lifted; the `frontier` products become sequences
    /// of the new `body`.
    Products {
        need: Vec<bool>,
        frontier: Vec<Node>,
        body: Box<Graph>,
        products: usize,
    },
}

/// Whether an op can be computed over a leading step axis.
fn liftable(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(..)
            | Op::Binary(..)
            | Op::Compare(..)
            | Op::Select(..)
            | Op::Reduce { .. }
            | Op::MatMul(..)
            | Op::Reshape(..)
            | Op::Transpose(..)
            | Op::Broadcast(..)
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather { .. }
            | Op::Fill { .. }
            | Op::Const(_)
    )
}

/// What of `body` (inputs: the carry, `nx` step slices, the arguments)
/// moves out of its loop.
fn plan(body: &Graph, nx: usize) -> Plan {
    let ids: Vec<_> = body.inputs.keys().collect();
    let len = body.nodes.len();
    // par: computable outside, for every step at once; step: reads a
    // step slice (so its lifted value has the step axis).
    let mut par = vec![false; len];
    let mut step = vec![false; len];
    for (n, d) in body.nodes.iter() {
        let i = n.index();
        match &d.op {
            Op::Input(id) => {
                let k = ids.iter().position(|j| j == id).unwrap_or(0);
                par[i] = k > 0;
                step[i] = (1..=nx).contains(&k);
            }
            op if liftable(op) => {
                let a = op.args();
                par[i] = a.iter().all(|x| par[x.index()]);
                step[i] = a.iter().any(|x| step[x.index()]);
                if let Op::Gather { table, .. } = op {
                    par[i] &= !step[table.index()];
                }
            }
            _ => {}
        }
    }
    let cone = |roots: &[Node]| {
        let mut need = vec![false; len];
        for r in roots {
            need[r.index()] = true;
        }
        for (n, d) in body.nodes.iter().rev() {
            if need[n.index()] && !matches!(d.op, Op::Input(_)) {
                for a in d.op.args() {
                    need[a.index()] = true;
                }
            }
        }
        need
    };
    let output = body.outputs[0].node;
    if par[output.index()] && step[output.index()] {
        return Plan::Whole(cone(&[output]));
    }
    // The carry-independent values the rest of the body reads: each is
    // computed for all steps before the loop and read as a sequence.
    // Views of a step slice (reshapes, broadcasts) are not worth a stack.
    let live = cone(&[output]);
    let is_input = |n: Node| matches!(body.nodes[n].op, Op::Input(_));
    let view_of_step = |n: Node| match body.nodes[n].op {
        Op::Reshape(a, _) | Op::Broadcast(a, _) => is_input(a),
        _ => false,
    };
    let lifted = |n: Node| par[n.index()] && step[n.index()] && !is_input(n) && !view_of_step(n);
    let mut read_inside = vec![false; len];
    for (n, d) in body.nodes.iter() {
        if live[n.index()] && !par[n.index()] {
            for a in d.op.args() {
                read_inside[a.index()] = true;
            }
        }
    }
    let frontier: Vec<Node> = body
        .nodes
        .keys()
        .filter(|&n| read_inside[n.index()] && lifted(n))
        .collect();
    // Worth a loop's rewrite only when a product leaves it.
    let need = cone(&frontier);
    let products = body
        .nodes
        .iter()
        .filter(|(n, d)| need[n.index()] && step[n.index()] && matches!(d.op, Op::MatMul(..)))
        .count();
    if products == 0 {
        return Plan::Nothing;
    }
    Plan::Products {
        need,
        body: Box::new(with_step_inputs(body, nx, &frontier)),
        frontier,
        products,
    }
}

/// `body` with each `frontier` node read as a new step slice: its inputs
/// are the carry, the `nx` old step slices, the new ones, then the
/// arguments.
pub(super) fn with_step_inputs(body: &Graph, nx: usize, frontier: &[Node]) -> Graph {
    let old: Vec<_> = body.inputs.keys().collect();
    let mut nb = body.clone();
    nb.inputs = PrimaryMap::new();
    let mut renamed = HashMap::new();
    let mut keep = |nb: &mut Graph, k: usize| {
        let id = nb.inputs.push(body.inputs[old[k]].clone());
        renamed.insert(old[k], id);
    };
    for k in 0..=nx.min(old.len().saturating_sub(1)) {
        keep(&mut nb, k);
    }
    let mut fresh = Vec::new();
    for (j, &f) in frontier.iter().enumerate() {
        let d = &body.nodes[f];
        fresh.push(nb.inputs.push(InputInfo {
            name: format!("lifted{j}"),
            ty: d.ty.clone(),
            default: None,
            span: d.span,
        }));
    }
    for k in nx + 1..old.len() {
        keep(&mut nb, k);
    }
    for d in nb.nodes.values_mut() {
        if let Op::Input(i) = &mut d.op {
            *i = renamed[i];
        }
    }
    for (&f, id) in frontier.iter().zip(fresh) {
        nb.nodes[f].op = Op::Input(id);
    }
    nb
}

/// Adds to `out` the nodes of `body` that `need` marks, computed for all
/// steps at once, and returns the outer nodes of `results`. The body's
/// step slices are the sequences `xs` (`[T, ..]`), its arguments `args`;
/// a lifted value has the step axis in front exactly when it depends on
/// a step slice.
fn lift_nodes(
    out: &mut Graph,
    body: &Graph,
    need: &[bool],
    xs: &[Node],
    args: &[Node],
    results: &[Node],
) -> Result<Vec<Node>, TypeError> {
    let t = out.shape(xs[0])[0];
    let ids: Vec<_> = body.inputs.keys().collect();
    // Body node → (outer node, whether it has the step axis).
    let mut map: HashMap<Node, (Node, bool)> = HashMap::new();
    for (n, d) in body.nodes.iter() {
        if !need[n.index()] {
            continue;
        }
        let sp = d.span;
        let v = if let Op::Input(id) = &d.op {
            let k = ids.iter().position(|j| j == id).unwrap_or(0);
            if (1..=xs.len()).contains(&k) {
                (xs[k - 1], true)
            } else {
                (args[k - 1 - xs.len()], false)
            }
        } else {
            let a: Vec<(Node, bool)> = d.op.args().iter().map(|x| map[x]).collect();
            if !a.iter().any(|&(_, s)| s) {
                // Per-step values are not involved: the op as it is.
                let op = match &d.op {
                    Op::Const(c) => Op::Const(out.consts.push(body.consts[*c].clone())),
                    op => fold_fill(out, op.map_args(&|x| map[&x].0)),
                };
                (out.add(op, sp)?, false)
            } else {
                (lift_op(out, &d.op, &a, t, sp)?, true)
            }
        };
        map.insert(n, v);
    }
    results
        .iter()
        .map(|r| {
            let (o, s) = map[r];
            debug_assert!(s, "a lifted result has the step axis");
            Ok(o)
        })
        .collect()
}

/// `op` over the leading step axis, given its operands' outer nodes and
/// whether each has that axis (at least one does).
fn lift_op(
    out: &mut Graph,
    op: &Op,
    a: &[(Node, bool)],
    t: Dim,
    sp: crate::diag::Span,
) -> Result<Node, TypeError> {
    // An operand with the step axis, broadcast to it where it lacks it.
    let stepped = |out: &mut Graph, (n, s): (Node, bool)| -> Result<Node, TypeError> {
        if s {
            return Ok(n);
        }
        let mut shape = vec![t];
        shape.extend(out.shape(n).iter().copied());
        let op = fold_fill(out, Op::Broadcast(n, shape));
        out.add(op, sp)
    };
    let with_t = |s: &[Dim]| {
        let mut v = vec![t];
        v.extend_from_slice(s);
        v
    };
    let lifted = match op {
        Op::Unary(u, _) => Op::Unary(*u, a[0].0),
        Op::Binary(b, ..) => Op::Binary(*b, stepped(out, a[0])?, stepped(out, a[1])?),
        Op::Compare(c, ..) => Op::Compare(*c, stepped(out, a[0])?, stepped(out, a[1])?),
        Op::Select(..) => Op::Select(
            stepped(out, a[0])?,
            stepped(out, a[1])?,
            stepped(out, a[2])?,
        ),
        Op::Reduce { op, axes, .. } => Op::Reduce {
            op: *op,
            arg: a[0].0,
            axes: axes.iter().map(|x| x + 1).collect(),
        },
        // [T, ..b, m, k] @ [..b, k, n]: the shared matrix is broadcast over
        // the steps, which the schedule reads in place (and, with a
        // contiguous left operand, runs as one GEMM over all rows).
        Op::MatMul(..) => Op::MatMul(stepped(out, a[0])?, stepped(out, a[1])?),
        Op::Reshape(_, s) => Op::Reshape(a[0].0, with_t(s)),
        Op::Transpose(_, p) => Op::Transpose(
            a[0].0,
            std::iter::once(0).chain(p.iter().map(|x| x + 1)).collect(),
        ),
        Op::Broadcast(_, s) => {
            // The operand's dims sit right-aligned under the target's; the
            // step axis must stay in front of them.
            let from = out.shape(a[0].0)[1..].to_vec();
            let x = if from.len() < s.len() {
                let mut padded = vec![t];
                padded.extend(std::iter::repeat_n(Dim::Known(1), s.len() - from.len()));
                padded.extend(from);
                out.add(Op::Reshape(a[0].0, padded), sp)?
            } else {
                a[0].0
            };
            Op::Broadcast(x, with_t(s))
        }
        Op::Slice {
            axis, start, end, ..
        } => Op::Slice {
            arg: a[0].0,
            axis: axis + 1,
            start: *start,
            end: *end,
        },
        Op::Concat { axis, .. } => Op::Concat {
            a: stepped(out, a[0])?,
            b: stepped(out, a[1])?,
            axis: axis + 1,
        },
        // The table is not per-step (`plan` checks), so the step axis
        // leads the indices and the result.
        Op::Gather { .. } => Op::Gather {
            table: a[0].0,
            indices: a[1].0,
        },
        other => unreachable!("`plan` lifts only liftable ops, not {other:?}"),
    };
    out.add(lifted, sp)
}

/// A reshape or broadcast of a fill is a fill of the new shape: a
/// constant a kernel computes in place, rather than a view of a stored
/// scalar.
fn fold_fill(out: &Graph, op: Op) -> Op {
    if let Op::Reshape(x, shape) | Op::Broadcast(x, shape) = &op {
        if let Op::Fill { value, .. } = out.nodes[*x].op {
            return Op::Fill {
                value,
                shape: shape.clone(),
            };
        }
    }
    op
}

/// Σₜ over the leading step axis of `n`, pushed through the ops that
/// assemble it (joins, reshapes, transposes, additions) down to the
/// products and other values, whose sums over the steps are reductions
/// (a product's: one GEMM over all the steps' rows).
fn sum_steps(out: &mut Graph, n: Node, sp: crate::diag::Span) -> Result<Node, TypeError> {
    let shape = out.shape(n).clone();
    let t = shape[0];
    let op = out.nodes[n].op.clone();
    let pushed = match op {
        Op::Concat { a, b, axis } if axis > 0 => Some(Op::Concat {
            a: sum_steps(out, a, sp)?,
            b: sum_steps(out, b, sp)?,
            axis: axis - 1,
        }),
        Op::Reshape(x, s) if out.shape(x).first() == Some(&t) && s.first() == Some(&t) => {
            Some(Op::Reshape(sum_steps(out, x, sp)?, s[1..].to_vec()))
        }
        Op::Transpose(x, p) if p.first() == Some(&0) => Some(Op::Transpose(
            sum_steps(out, x, sp)?,
            p[1..].iter().map(|i| i - 1).collect(),
        )),
        Op::Binary(b @ (crate::ir::BinaryOp::Add | crate::ir::BinaryOp::Sub), x, y) => Some(
            Op::Binary(b, sum_steps(out, x, sp)?, sum_steps(out, y, sp)?),
        ),
        Op::Fill { value, .. } if value == 0.0 => Some(Op::Fill {
            value,
            shape: shape[1..].to_vec(),
        }),
        // A zero broadcast over the steps (the zero parts of a joined
        // gradient) sums to zero.
        Op::Broadcast(x, _) if matches!(out.nodes[x].op, Op::Fill { value, .. } if value == 0.0) => {
            Some(Op::Broadcast(x, shape[1..].to_vec()))
        }
        _ => None,
    };
    let op = pushed.unwrap_or(Op::Reduce {
        op: ReduceOp::Sum,
        arg: n,
        axes: vec![0],
    });
    out.add(op, sp)
}
