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
//! (`step`), whose derivative is zero almost everywhere. Indices (of
//! `gather` and `scatter_add`) get no gradient either: they only pick rows.
//!
//! The gradient graph is made of primitives with rules of their own, so it
//! can be differentiated again (the gradient ops of convolution and
//! average pooling are linear, with closed-form rules) — except through
//! max pooling's gradient, `pool2d.max.backward`, where the pass returns
//! an error naming the op.

use super::build::Builder;
use crate::diag::{self, Diag, Span};
use crate::ir::{shape, BinaryOp, CmpOp, Dim, Graph, Node, Op, PoolOp, ReduceOp, UnaryOp};
use cranelift_entity::EntityRef;
use rustc_hash::FxHashMap;

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
    let mut adj: FxHashMap<Node, Node> = FxHashMap::default();
    let mut warnings = Vec::new();
    let mut b = Builder { g };
    let seed = b.fill(1.0, vec![], b.g.nodes[loss].span)?;
    adj.insert(loss, seed);
    let mut pieces: FxHashMap<Node, Vec<Piece>> = FxHashMap::default();
    for i in (0..=loss.index()).rev() {
        let n = Node::from_u32(i as u32);
        if !needs[i] {
            continue;
        }
        let span = b.g.nodes[n].span;
        let Some(gbar) = settle(&mut b, n, &mut adj, &mut pieces, span)? else {
            continue;
        };
        let op = b.g.nodes[n].op.clone();
        let contribs = vjp(
            &mut b,
            &op,
            n,
            gbar,
            span,
            &needs,
            &mut pieces,
            &mut warnings,
        )?;
        for (arg, contrib) in contribs {
            let total = match adj.get(&arg) {
                Some(&prev) => b.add2(prev, contrib, span)?,
                None => contrib,
            };
            adj.insert(arg, total);
        }
    }
    let mut grads = Vec::with_capacity(wrt.len());
    for &w in wrt {
        let sp = b.g.nodes[w].span;
        match settle(&mut b, w, &mut adj, &mut pieces, sp)? {
            Some(gw) => grads.push(gw),
            None => grads.push(b.fill_like(0.0, w, sp)?),
        }
    }
    Ok(Gradients { grads, warnings })
}

/// The adjoint of a slice `x[start..end]` along `axis`, waiting to be
/// placed into the adjoint of `x`. The pieces of one tensor are kept
/// apart until its adjoint is needed: slices that tile it (an LSTM's four
/// gates cut from one stacked weight) are then joined by one chain of
/// concatenations, instead of each being padded with zeros to the full
/// shape and the padded copies added.
#[derive(Clone, Copy)]
struct Piece {
    axis: usize,
    start: u64,
    end: u64,
    g: Node,
}

/// The total adjoint of `n`: its dense contributions plus its slice
/// pieces, placed. `None` when nothing reached it.
fn settle(
    b: &mut Builder,
    n: Node,
    adj: &mut FxHashMap<Node, Node>,
    pieces: &mut FxHashMap<Node, Vec<Piece>>,
    sp: Span,
) -> Result<Option<Node>, Diag> {
    let mut total = adj.get(&n).copied();
    let mut rest = pieces.remove(&n).unwrap_or_default();
    rest.sort_by_key(|p| (p.axis, p.start));
    while !rest.is_empty() {
        // A run of disjoint pieces along one axis becomes one tensor.
        let mut group = vec![rest.remove(0)];
        let mut i = 0;
        while i < rest.len() {
            let last = group[group.len() - 1];
            if rest[i].axis == last.axis && rest[i].start >= last.end {
                group.push(rest.remove(i));
            } else {
                i += 1;
            }
        }
        let dense = place(b, n, &group, sp)?;
        total = Some(match total {
            Some(t) => b.add2(t, dense, sp)?,
            None => dense,
        });
    }
    if let Some(t) = total {
        adj.insert(n, t);
    }
    Ok(total)
}

/// Disjoint pieces (sorted, along one axis) laid into a tensor shaped like
/// `x`, zeros between them.
fn place(b: &mut Builder, x: Node, group: &[Piece], sp: Span) -> Result<Node, Diag> {
    let axis = group[0].axis;
    let d = known_dim(b, x, axis, sp)?;
    let mut parts = Vec::new();
    let mut pos = 0;
    let zeros = |b: &mut Builder, from: u64, to: u64| {
        let mut shape = b.shape(x);
        shape[axis] = Dim::Known(to - from);
        b.fill(0.0, shape, sp)
    };
    for p in group {
        if p.start > pos {
            parts.push(zeros(b, pos, p.start)?);
        }
        parts.push(p.g);
        pos = p.end;
    }
    if pos < d {
        parts.push(zeros(b, pos, d)?);
    }
    let mut out = parts[0];
    for &p in &parts[1..] {
        out = b.add(Op::Concat { a: out, b: p, axis }, sp)?;
    }
    Ok(out)
}

fn flat_warning(span: Span) -> Diag {
    diag::warning("the gradient through this comparison is zero almost everywhere")
        .with_labels(vec![span.primary("nothing can be learned through this")])
        .with_notes(vec![
            "note: `step` and comparisons are piecewise constant, so training gets no signal from them".into(),
            "help: use a smooth function, such as `sigmoid`, where the model must learn".into(),
        ])
}

/// The known spatial dims `[H, W]` of a rank-4 node (the window ops'
/// typing rules guarantee them; a failure is a compiler bug).
fn spatial(b: &Builder, n: Node, sp: Span) -> Result<[u64; 2], Diag> {
    let s = b.shape(n);
    match (
        s.get(2).and_then(|d| shape::known(*d)),
        s.get(3).and_then(|d| shape::known(*d)),
    ) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(internal(format!("{n} has no known spatial dims"), sp)),
    }
}

/// The size of `n` along `axis`, which a typing rule guarantees is known.
fn known_dim(b: &Builder, n: Node, axis: usize, sp: Span) -> Result<u64, Diag> {
    match b.shape(n).get(axis) {
        Some(Dim::Known(d)) => Ok(*d),
        _ => Err(internal(format!("{n} has no known dim at axis {axis}"), sp)),
    }
}

fn internal(msg: String, sp: Span) -> Diag {
    diag::error(
        diag::code::INTERNAL,
        format!("internal compiler error: {msg}"),
    )
    .with_labels(vec![sp.primary("while differentiating this")])
}

/// The error for a primitive whose derivative the pass does not take.
fn unsupported(what: &str, sp: Span, help: &str) -> Diag {
    diag::error(
        diag::code::GRAD,
        format!("cannot differentiate {what}: second derivatives of it are not supported"),
    )
    .with_labels(vec![sp.primary("its gradient is differentiated again here")])
    .with_notes(vec![format!("help: {help}")])
}

/// The vector-Jacobian products: for node `out = op(args)` with adjoint
/// `gb` (ḡ), the contributions ∂loss/∂arg for the arguments that need one.
/// The dense contributions (operand, adjoint) of one node; a slice's
/// contribution goes to `pieces` instead (see [`Piece`]).
#[allow(clippy::too_many_arguments)]
fn vjp(
    b: &mut Builder,
    op: &Op,
    out: Node,
    gb: Node,
    sp: Span,
    needs: &[bool],
    pieces: &mut FxHashMap<Node, Vec<Piece>>,
    warnings: &mut Vec<Diag>,
) -> Result<Vec<(Node, Node)>, Diag> {
    let need = |n: &Node| needs.get(n.index()).copied().unwrap_or(false);
    let mut v = Vec::new();
    match op {
        // A loop's derivative is loops over the steps in reverse; see
        // `scan_grad` for the recurrences.
        Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } => {
            let parts = super::scan_grad::ScanParts {
                body: *body,
                init: *init,
                xs,
                args,
                reverse: *reverse,
            };
            v.extend(super::scan_grad::vjp(b, out, gb, sp, &parts, &|n| {
                need(&n)
            })?);
        }
        // Leaves: nothing flows further. A random draw is a leaf too: its
        // key only picks the stream, so ∂out/∂key = 0 (keys are never
        // learned, so nothing reaches here that needs one).
        Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. } | Op::Random { .. } => {}
        // The optimizer pass makes these after differentiation; a graph
        // that holds one is a training step, which is not differentiated.
        Op::AdamMoment { .. } | Op::AdamStep { .. } => {
            return Err(internal(
                "an optimizer's update is not differentiable".into(),
                sp,
            ))
        }
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
        // d σ(a) = ḡ·σ(a)(1 − σ(a)) = ḡ·out·(1 − out), as PyTorch: finite
        // everywhere; for a > 17, 1 − out rounds to 0 (the true value is
        // below 4e-8).
        Op::Unary(UnaryOp::Sigmoid, a) => {
            let one = b.fill_like(1.0, out, sp)?;
            let rest = b.sub(one, out, sp)?;
            let d = b.mul(out, rest, sp)?;
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
                // A constant exponent gives a constant b − 1 (so `x ^ 2`'s
                // derivative compiles to a product, not a `powf`).
                let ym1 = match crate::ir::constant::constant_value(b.g, *y) {
                    Some(c) => b.fill_like(c - 1.0, *y, sp)?,
                    None => {
                        let one = b.fill_like(1.0, *y, sp)?;
                        b.sub(*y, one, sp)?
                    }
                };
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
        // y[n,o,i,j] = Σ_{c,kh,kw} x[n,c,i·s+kh−p, j·s+kw−p]·w[o,c,kh,kw], so
        // x̄[n,c,h,v] = Σ ḡ[n,o,i,j]·w[o,c,kh,kw] over i·s+kh−p = h,
        //   j·s+kw−p = v (the transposed convolution: backward_input), and
        // w̄[o,c,kh,kw] = Σ_{n,i,j} ḡ[n,o,i,j]·x[n,c,i·s+kh−p, j·s+kw−p]
        //   (backward_weight).
        Op::Conv2d {
            x,
            w,
            stride,
            padding,
        } => {
            let (stride, padding) = (*stride, *padding);
            if need(x) {
                let size = spatial(b, *x, sp)?;
                let gx = Op::Conv2dBackwardInput {
                    gy: gb,
                    w: *w,
                    stride,
                    padding,
                    size,
                };
                v.push((*x, b.add(gx, sp)?));
            }
            if need(w) {
                let kernel = spatial(b, *w, sp)?;
                let gw = Op::Conv2dBackwardWeight {
                    x: *x,
                    gy: gb,
                    stride,
                    padding,
                    kernel,
                };
                v.push((*w, b.add(gw, sp)?));
            }
        }
        // out = backward_input(gy, w) is bilinear, and the adjoint of the
        // convolution: ⟨out, ḡ⟩ = ⟨gy, conv(ḡ, w)⟩ = ⟨w, backward_weight(ḡ, gy)⟩,
        // so ḡy = conv(ḡ, w) and w̄ = backward_weight(ḡ, gy).
        Op::Conv2dBackwardInput {
            gy,
            w,
            stride,
            padding,
            ..
        } => {
            let (stride, padding) = (*stride, *padding);
            if need(gy) {
                let c = Op::Conv2d {
                    x: gb,
                    w: *w,
                    stride,
                    padding,
                };
                v.push((*gy, b.add(c, sp)?));
            }
            if need(w) {
                let kernel = spatial(b, *w, sp)?;
                let gw = Op::Conv2dBackwardWeight {
                    x: gb,
                    gy: *gy,
                    stride,
                    padding,
                    kernel,
                };
                v.push((*w, b.add(gw, sp)?));
            }
        }
        // out = backward_weight(x, gy) is bilinear:
        // ⟨out, ḡ⟩ = ⟨x, backward_input(gy, ḡ)⟩ = ⟨gy, conv(x, ḡ)⟩, so
        // x̄ = backward_input(gy, ḡ) and ḡy = conv(x, ḡ).
        Op::Conv2dBackwardWeight {
            x,
            gy,
            stride,
            padding,
            ..
        } => {
            let (stride, padding) = (*stride, *padding);
            if need(x) {
                let size = spatial(b, *x, sp)?;
                let gx = Op::Conv2dBackwardInput {
                    gy: *gy,
                    w: gb,
                    stride,
                    padding,
                    size,
                };
                v.push((*x, b.add(gx, sp)?));
            }
            if need(gy) {
                let c = Op::Conv2d {
                    x: *x,
                    w: gb,
                    stride,
                    padding,
                };
                v.push((*gy, b.add(c, sp)?));
            }
        }
        // max pooling: x̄ = ḡ of each window at the window's first maximal
        // element (0 elsewhere); average pooling: ḡ/size² over each window.
        // Overlapping windows add up. Both are pool2d.backward.
        Op::Pool2d {
            op,
            arg,
            size,
            stride,
        } => {
            let back = Op::Pool2dBackward {
                op: *op,
                x: *arg,
                gy: gb,
                size: *size,
                stride: *stride,
            };
            v.push((*arg, b.add(back, sp)?));
        }
        // avg: out[h,v] = Σ over windows (i,j) ∋ (h,v) of gy[i,j]/size², linear
        // in gy with adjoint ḡy[i,j] = Σ_{(h,v) ∈ window (i,j)} ḡ[h,v]/size²
        // = avg_pool(ḡ). Its value does not depend on x's values (x̄ = 0).
        Op::Pool2dBackward {
            op: PoolOp::Avg,
            gy,
            size,
            stride,
            ..
        } => {
            if need(gy) {
                let pool = Op::Pool2d {
                    op: PoolOp::Avg,
                    arg: gb,
                    size: *size,
                    stride: *stride,
                };
                v.push((*gy, b.add(pool, sp)?));
            }
        }
        // max: ḡy would read ḡ at each window's arg-max, which no primitive
        // does; x̄ is 0 almost everywhere (the arg-max is piecewise constant).
        Op::Pool2dBackward {
            op: PoolOp::Max,
            gy,
            ..
        } => {
            if need(gy) {
                return Err(unsupported(
                    "the gradient of `max_pool2d`",
                    sp,
                    "use `avg_pool2d`, whose gradient can be differentiated again",
                ));
            }
        }
        // d a[start..end] = ḡ with zeros around it:
        // concat(0[.., start, ..], ḡ, 0[.., dim − end, ..]) along the axis,
        // placed by `settle` once every piece of `a` is known.
        &Op::Slice {
            arg,
            axis,
            start,
            end,
        } => {
            if need(&arg) {
                let piece = Piece {
                    axis,
                    start,
                    end,
                    g: gb,
                };
                pieces.entry(arg).or_default().push(piece);
            }
        }
        // d concat(a, b) = (ḡ[0..da], ḡ[da..da + db]) along the axis
        Op::Concat { a, b: second, axis } => {
            let axis = *axis;
            let da = known_dim(b, *a, axis, sp)?;
            if need(a) {
                let s = Op::Slice {
                    arg: gb,
                    axis,
                    start: 0,
                    end: da,
                };
                v.push((*a, b.add(s, sp)?));
            }
            if need(second) {
                let db = known_dim(b, *second, axis, sp)?;
                let s = Op::Slice {
                    arg: gb,
                    axis,
                    start: da,
                    end: da + db,
                };
                v.push((*second, b.add(s, sp)?));
            }
        }
        // out[s, :] = table[idx[s], :], so tablē[r, :] = Σ_{s: idx[s] = r} ḡ[s, :]
        // = scatter_add(ḡ, idx, n = V); the indices get none.
        Op::Gather { table, indices } => {
            if need(table) {
                let n = b.shape(*table)[0];
                let sc = Op::ScatterAdd {
                    values: gb,
                    indices: *indices,
                    n,
                };
                v.push((*table, b.add(sc, sp)?));
            }
        }
        // out[r, :] = Σ_{s: idx[s] = r} values[s, :], so
        // values̄[s, :] = ḡ[idx[s], :] = gather(ḡ, idx); the indices get none.
        Op::ScatterAdd {
            values, indices, ..
        } => {
            if need(values) {
                let g = Op::Gather {
                    table: gb,
                    indices: *indices,
                };
                v.push((*values, b.add(g, sp)?));
            }
        }
    }
    v.retain(|(a, _)| need(a));
    Ok(v)
}
