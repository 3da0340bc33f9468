//! Reverse-mode automatic differentiation, graph to graph.
//!
//! Takes a graph, a scalar node `loss` and the nodes to differentiate
//! with respect to (`wrt`). Appends to the same graph the nodes that
//! compute ∂loss/∂w for each `w`, and returns them (in `wrt`'s order).
//!
//! The walk visits the nodes between `wrt` and `loss` in reverse arena
//! order (a reverse topological order), and for each applies the
//! vector-Jacobian product of its primitive: given ḡ = ∂loss/∂out it adds
//! ∂loss/∂arg to each argument that depends on `wrt`. The rules are one
//! table, [`vjp`], with the math on each arm.
//!
//! After the pass: the graph still verifies; every returned node has the
//! shape of its `w`; a `w` the loss does not reach gets a zero gradient,
//! and a warning says why when the only path runs through a comparison
//! (`step`), whose derivative is zero almost everywhere.

use super::build::Builder;
use crate::diag::{self, Diag, Span};
use crate::ir::{BinaryOp, CmpOp, Graph, Node, Op, ReduceOp, UnaryOp};
use cranelift_entity::EntityRef;
use std::collections::HashMap;

/// The gradients, and warnings about flat paths.
pub struct Gradients {
    pub grads: Vec<Node>,
    pub warnings: Vec<Diag>,
}

/// Differentiates `loss` (a scalar) with respect to each node of `wrt`.
pub fn grad(g: &mut Graph, loss: Node, wrt: &[Node]) -> Result<Gradients, Diag> {
    if !g.shape(loss).is_empty() {
        let shown = g.shape_str(g.shape(loss));
        return Err(diag::error(
            crate::diag::code::RESULT_TYPE,
            format!("the loss must be a scalar, found shape {shown}"),
        )
        .with_labels(vec![g.nodes[loss]
            .span
            .primary(format!("this has shape {shown}"))])
        .with_notes(vec![
            "help: reduce it, e.g. with `mean(...)` or `sum(...)`".into()
        ]));
    }
    // needs[n]: n depends on some w, so its adjoint is worth computing.
    let end = g.nodes.len();
    let mut needs = vec![false; end];
    for w in wrt {
        needs[w.index()] = true;
    }
    for (n, d) in g.nodes.iter() {
        if d.op.args().iter().any(|a| needs[a.index()]) {
            needs[n.index()] = true;
        }
    }
    let mut adj: HashMap<Node, Node> = HashMap::new();
    let mut warnings = Vec::new();
    let mut b = Builder { g };
    let seed = b.fill(1.0, vec![], b.g.nodes[loss].span)?;
    adj.insert(loss, seed);
    for i in (0..=loss.index()).rev() {
        let n = Node::from_u32(i as u32);
        let Some(&gbar) = adj.get(&n) else { continue };
        if !needs[i] {
            continue;
        }
        let op = b.g.nodes[n].op.clone();
        let span = b.g.nodes[n].span;
        for (arg, contrib) in vjp(&mut b, &op, n, gbar, span, &needs, &mut warnings)? {
            let total = match adj.get(&arg) {
                Some(&prev) => b.add2(prev, contrib, span)?,
                None => contrib,
            };
            adj.insert(arg, total);
        }
    }
    let mut grads = Vec::with_capacity(wrt.len());
    for &w in wrt {
        match adj.get(&w) {
            Some(&gw) => grads.push(gw),
            None => grads.push(b.fill_like(0.0, w, b.g.nodes[w].span)?),
        }
    }
    Ok(Gradients { grads, warnings })
}

fn flat_warning(span: Span) -> Diag {
    diag::warning("the gradient through this comparison is zero almost everywhere")
        .with_labels(vec![span.primary("nothing can be learned through this")])
        .with_notes(vec![
            "note: `step` and comparisons are piecewise constant, so training gets no signal from them".into(),
            "help: use a smooth function, such as `sigmoid`, where the model must learn".into(),
        ])
}

/// The vector-Jacobian products: for node `out = op(args)` with adjoint
/// `gb` (ḡ), the contributions ∂loss/∂arg for the arguments that need one.
fn vjp(
    b: &mut Builder,
    op: &Op,
    out: Node,
    gb: Node,
    sp: Span,
    needs: &[bool],
    warnings: &mut Vec<Diag>,
) -> Result<Vec<(Node, Node)>, Diag> {
    let need = |n: &Node| needs.get(n.index()).copied().unwrap_or(false);
    let mut v = Vec::new();
    match op {
        // Leaves: nothing flows further.
        Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } => {}
        // d(−a) = −ḡ
        Op::Unary(UnaryOp::Neg, a) => v.push((*a, b.unary(UnaryOp::Neg, gb, sp)?)),
        // d(eᵃ) = ḡ·eᵃ = ḡ·out
        Op::Unary(UnaryOp::Exp, a) => v.push((*a, b.mul(gb, out, sp)?)),
        // d(ln a) = ḡ / a
        Op::Unary(UnaryOp::Log, a) => v.push((*a, b.div(gb, *a, sp)?)),
        // d(√a) = ḡ / (2√a) = ḡ·0.5 / out
        Op::Unary(UnaryOp::Sqrt, a) => {
            let half = b.fill_like(0.5, out, sp)?;
            let t = b.div(half, out, sp)?;
            v.push((*a, b.mul(gb, t, sp)?));
        }
        // d|a| = ḡ·sign(a), with sign(0) = 0 (as PyTorch)
        Op::Unary(UnaryOp::Abs, a) => {
            let zero = b.fill_like(0.0, *a, sp)?;
            let pos = b.cmp(CmpOp::Gt, *a, zero, sp)?;
            let neg = b.cmp(CmpOp::Lt, *a, zero, sp)?;
            let sign = b.sub(pos, neg, sp)?;
            v.push((*a, b.mul(gb, sign, sp)?));
        }
        // d tanh a = ḡ·(1 − tanh² a) = ḡ·(1 − out²)
        Op::Unary(UnaryOp::Tanh, a) => {
            let one = b.fill_like(1.0, out, sp)?;
            let sq = b.mul(out, out, sp)?;
            let d = b.sub(one, sq, sp)?;
            v.push((*a, b.mul(gb, d, sp)?));
        }
        // d(a + b) = (ḡ, ḡ)
        Op::Binary(BinaryOp::Add, x, y) => {
            v.push((*x, gb));
            v.push((*y, gb));
        }
        // d(a − b) = (ḡ, −ḡ)
        Op::Binary(BinaryOp::Sub, x, y) => {
            v.push((*x, gb));
            if need(y) {
                v.push((*y, b.unary(UnaryOp::Neg, gb, sp)?));
            }
        }
        // d(a·b) = (ḡ·b, ḡ·a)
        Op::Binary(BinaryOp::Mul, x, y) => {
            if need(x) {
                v.push((*x, b.mul(gb, *y, sp)?));
            }
            if need(y) {
                v.push((*y, b.mul(gb, *x, sp)?));
            }
        }
        // d(a/b) = (ḡ/b, −ḡ·a/b² = −ḡ·out/b)
        Op::Binary(BinaryOp::Div, x, y) => {
            if need(x) {
                v.push((*x, b.div(gb, *y, sp)?));
            }
            if need(y) {
                let t = b.mul(gb, out, sp)?;
                let t = b.div(t, *y, sp)?;
                v.push((*y, b.unary(UnaryOp::Neg, t, sp)?));
            }
        }
        // d(aᵇ) = (ḡ·b·aᵇ⁻¹, ḡ·aᵇ·ln a); the second only when b is learned
        Op::Binary(BinaryOp::Pow, x, y) => {
            if need(x) {
                let one = b.fill_like(1.0, *y, sp)?;
                let ym1 = b.sub(*y, one, sp)?;
                let p = b.binary(BinaryOp::Pow, *x, ym1, sp)?;
                let t = b.mul(*y, p, sp)?;
                v.push((*x, b.mul(gb, t, sp)?));
            }
            if need(y) {
                let l = b.unary(UnaryOp::Log, *x, sp)?;
                let t = b.mul(out, l, sp)?;
                v.push((*y, b.mul(gb, t, sp)?));
            }
        }
        // d max(a, b) = ḡ to the larger; split in half on a tie (as PyTorch)
        Op::Binary(op @ (BinaryOp::Max | BinaryOp::Min), x, y) => {
            let wins = if *op == BinaryOp::Max {
                CmpOp::Gt
            } else {
                CmpOp::Lt
            };
            let half = b.fill_like(0.5, out, sp)?;
            let tie = b.cmp(CmpOp::Eq, *x, *y, sp)?;
            let tie_half = b.mul(tie, half, sp)?;
            if need(x) {
                let w = b.cmp(wins, *x, *y, sp)?;
                let m = b.add2(w, tie_half, sp)?;
                v.push((*x, b.mul(gb, m, sp)?));
            }
            if need(y) {
                let w = b.cmp(wins, *y, *x, sp)?;
                let m = b.add2(w, tie_half, sp)?;
                v.push((*y, b.mul(gb, m, sp)?));
            }
        }
        // A comparison is piecewise constant: its derivative is 0 (almost
        // everywhere). Reaching here means its 0/1 result feeds the loss.
        Op::Compare(_, x, y) => {
            if need(x) || need(y) {
                warnings.push(flat_warning(sp));
            }
        }
        // d select(c, a, b) = (—, select(c, ḡ, 0), select(c, 0, ḡ))
        Op::Select(c, x, y) => {
            if need(c) && !need(x) && !need(y) {
                warnings.push(flat_warning(sp));
            }
            let zero = b.fill_like(0.0, out, sp)?;
            if need(x) {
                v.push((*x, b.add(Op::Select(*c, gb, zero), sp)?));
            }
            if need(y) {
                v.push((*y, b.add(Op::Select(*c, zero, gb), sp)?));
            }
        }
        // d Σ_axes a = ḡ broadcast back over the axes
        Op::Reduce {
            op: ReduceOp::Sum,
            arg,
            axes,
        } => {
            let s = b.shape(*arg);
            v.push((*arg, b.unreduce(gb, axes, &s, sp)?));
        }
        // d mean_axes a = ḡ / n broadcast back, n = Π of the reduced dims
        // (counted at run time: the dims may be symbolic)
        Op::Reduce {
            op: ReduceOp::Mean,
            arg,
            axes,
        } => {
            let s = b.shape(*arg);
            let ones = b.fill(1.0, s.clone(), sp)?;
            let n = b.reduce(ReduceOp::Sum, ones, axes.clone(), sp)?;
            let t = b.div(gb, n, sp)?;
            v.push((*arg, b.unreduce(t, axes, &s, sp)?));
        }
        // d max_axes a = ḡ shared among the elements equal to the maximum
        Op::Reduce {
            op: ReduceOp::Max,
            arg,
            axes,
        } => {
            let s = b.shape(*arg);
            let m = b.unreduce(out, axes, &s, sp)?;
            let hit = b.cmp(CmpOp::Eq, *arg, m, sp)?;
            let count = b.reduce(ReduceOp::Sum, hit, axes.clone(), sp)?;
            let share = b.div(gb, count, sp)?;
            let share = b.unreduce(share, axes, &s, sp)?;
            v.push((*arg, b.mul(share, hit, sp)?));
        }
        // d(A @ B) = (ḡ @ Bᵀ, Aᵀ @ ḡ), transposing the last two axes
        Op::MatMul(x, y) => {
            if need(x) {
                let yt = b.transpose_last(*y, sp)?;
                v.push((*x, b.add(Op::MatMul(gb, yt), sp)?));
            }
            if need(y) {
                let xt = b.transpose_last(*x, sp)?;
                v.push((*y, b.add(Op::MatMul(xt, gb), sp)?));
            }
        }
        // d reshape(a) = reshape(ḡ) back to a's shape
        Op::Reshape(a, _) => {
            let s = b.shape(*a);
            v.push((*a, b.reshape(gb, s, sp)?));
        }
        // d transpose(a, p) = transpose(ḡ, p⁻¹)
        Op::Transpose(a, perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            v.push((*a, b.add(Op::Transpose(gb, inv), sp)?));
        }
        // d broadcast(a) = ḡ summed over the broadcast axes
        Op::Broadcast(a, _) => {
            let s = b.shape(*a);
            v.push((*a, b.sum_to(gb, &s, sp)?));
        }
    }
    v.retain(|(a, _)| need(a));
    Ok(v)
}
