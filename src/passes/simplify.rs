//! Peephole simplification: rules that replace a node by one of its
//! operands or by cheaper nodes computing the same bits. [`cse`] applies
//! them to each node as it copies it (so a rule sees its operands already
//! simplified and merged), and merges the nodes a rule makes like any
//! other. The rules, by name (`NNC_LOG=fusion` counts where each fired):
//!
//! - `slice-of-concat`: a slice along a concatenation's axis that lies
//!   within one of its parts is that part, or the same slice of it. A
//!   loop's derivative packs the gradients of its arguments into one
//!   vector, which the optimizer's updates cut apart again: each update
//!   then reads its gradient where it was computed, and the packed vector
//!   is never built.
//! - `reshape-of-reshape`: a reshape of a reshape is one reshape of the
//!   first operand, and a reshape to the operand's own shape is the
//!   operand.
//! - `reshape-of-concat`: a reshape that keeps the dims before a
//!   concatenation's axis, where each part fills whole rows of the new
//!   dims after it, is the concatenation of the parts each so reshaped
//!   (merging every dim from the axis on always qualifies, and so does
//!   splitting such a merged dim back). An LSTM's step stacks its new
//!   state `[h, c]` on a new axis and flattens it: the state is then `h`
//!   and `c` side by side in the loop's result, `h` written straight
//!   into its place there (fusion's `concat-in-place`), instead of
//!   stacked and the stack copied. (Where the stacked form has another
//!   reader, it is still built, and the side-by-side one besides.)
//! - `concat-split`: an elementwise binary op of two concatenations cut at
//!   the same place along the same axis, each with a constant (a fill)
//!   as one of its parts, is the concatenation of the op on the parts, each part then
//!   written straight into its place (fusion's `concat-in-place`). The adjoint of a loop's stacked results (zeros
//!   but at the steps the loss reads) added to the adjoints the loop's
//!   steps pass back (shifted by one step, a zero at the end) becomes two
//!   kernels writing one buffer, instead of both concatenations stored
//!   and then added.
//! - `transpose-of-transpose`: a transpose of a transpose is one
//!   transpose of the first operand (the permutations composed), and a
//!   transpose by the identity is its operand. Attention's derivative
//!   transposes `Kᵀ` back: `Kᵀ` is then read by its product alone, which
//!   reads it with swapped strides (fusion's `matmul-transposed-operand`)
//!   instead of a copy.
//! - `times-one`: `x * 1`, `1 * x`, `x / 1` and `x ^ 1` are `x` (exact
//!   in IEEE arithmetic, signed zeros, infinities and NaN included);
//!   differentiation seeds a loss's adjoint with 1 and the chain rule's
//!   `x ^ 2` leaves `x ^ 1`.
//!
//! [`cse`]: super::cse

use super::cse::Builder;
use crate::diag::Span;
use crate::ir::constant::constant_value;
use crate::ir::{BinaryOp, Dim, Graph, Node, Op};

/// The rule that applies to `op` (its operands already in the builder's
/// graph), with the node computing the same bits, or `None`.
pub(super) fn rewrite(b: &mut Builder, op: &Op, span: Span) -> Option<(&'static str, Node)> {
    match *op {
        Op::Slice {
            arg,
            axis,
            start,
            end,
        } => slice_of_concat(b, arg, axis, (start, end), span).map(|m| ("slice-of-concat", m)),
        Op::Reshape(x, ref shape) => {
            if b.out.shape(x) == shape {
                return Some(("reshape-of-reshape", x));
            }
            if let Some(m) = reshape_of_concat(b, x, shape, span) {
                return Some(("reshape-of-concat", m));
            }
            let Op::Reshape(inner, _) = b.out.nodes[x].op else {
                return None;
            };
            let m = b.make(Op::Reshape(inner, shape.clone()), span)?;
            Some(("reshape-of-reshape", m))
        }
        Op::Transpose(x, ref perm) => {
            let id = |p: &[usize]| p.iter().enumerate().all(|(i, &a)| i == a);
            if id(perm) {
                return Some(("transpose-of-transpose", x));
            }
            let Op::Transpose(inner, ref first) = b.out.nodes[x].op else {
                return None;
            };
            // Axis i of the result is axis perm[i] of x, which is axis
            // first[perm[i]] of inner.
            let both: Vec<usize> = perm.iter().map(|&a| first[a]).collect();
            if id(&both) {
                return Some(("transpose-of-transpose", inner));
            }
            let m = b.make(Op::Transpose(inner, both), span)?;
            Some(("transpose-of-transpose", m))
        }
        Op::Binary(bop, x, y) => {
            let one = |n: Node| uniform(&b.out, n) == Some(1.0);
            match bop {
                BinaryOp::Mul if one(y) => return Some(("times-one", x)),
                BinaryOp::Mul if one(x) => return Some(("times-one", y)),
                BinaryOp::Div | BinaryOp::Pow if one(y) => return Some(("times-one", x)),
                _ => {}
            }
            concat_split(b, bop, x, y, span).map(|m| ("concat-split", m))
        }
        _ => None,
    }
}

/// `slice(concat(a, c), axis, start..end)` as `a`, `c` or a slice of one.
fn slice_of_concat(
    b: &mut Builder,
    arg: Node,
    axis: usize,
    (start, end): (u64, u64),
    span: Span,
) -> Option<Node> {
    let Op::Concat {
        a,
        b: second,
        axis: cat,
    } = b.out.nodes[arg].op
    else {
        return None;
    };
    if cat != axis {
        return None;
    }
    let Dim::Known(first_len) = b.out.shape(a)[axis] else {
        return None;
    };
    let (part, at) = if end <= first_len {
        (a, 0)
    } else if start >= first_len {
        (second, first_len)
    } else {
        return None;
    };
    let (start, end) = (start - at, end - at);
    if start == 0 && b.out.shape(part)[axis] == Dim::Known(end) {
        return Some(part);
    }
    b.make(
        Op::Slice {
            arg: part,
            axis,
            start,
            end,
        },
        span,
    )
}

/// `reshape(concat(a, c), shape)`, where `shape` keeps the dims before
/// the axis and reshapes only the others, as the concatenation along the
/// axis of `a` and `c` each so reshaped: for each index of the kept dims,
/// the flat elements of `a` then those of `c` either way. It holds where
/// each part's flat elements there fill whole rows of the new dims after
/// the axis (always, when `shape` merges them all into one).
fn reshape_of_concat(b: &mut Builder, x: Node, shape: &[Dim], span: Span) -> Option<Node> {
    let Op::Concat { a, b: c, axis } = b.out.nodes[x].op else {
        return None;
    };
    if shape.len() <= axis || shape[..axis] != b.out.shape(x)[..axis] {
        return None;
    }
    let known = |dims: &[Dim]| {
        dims.iter().try_fold(1u64, |n, d| match d {
            Dim::Known(k) => n.checked_mul(*k),
            Dim::Sym(_) => None,
        })
    };
    let row = known(&shape[axis + 1..])?;
    let mut reshaped = |p: Node| {
        let dims = b.out.shape(p);
        let flat = known(&dims[axis..])?;
        if row == 0 || flat % row != 0 {
            return None;
        }
        let mut to = dims[..axis].to_vec();
        to.push(Dim::Known(flat / row));
        to.extend_from_slice(&shape[axis + 1..]);
        b.make(Op::Reshape(p, to), span)
    };
    let (a, c) = (reshaped(a)?, reshaped(c)?);
    b.make(Op::Concat { a, b: c, axis }, span)
}

/// `op(concat(x1, x2), concat(y1, y2))`, both cut at the same place, as
/// `concat(op(x1, y1), op(x2, y2))`.
fn concat_split(b: &mut Builder, op: BinaryOp, x: Node, y: Node, span: Span) -> Option<Node> {
    let (
        &Op::Concat { a: x1, b: x2, axis },
        &Op::Concat {
            a: y1,
            b: y2,
            axis: y_axis,
        },
    ) = (&b.out.nodes[x].op, &b.out.nodes[y].op)
    else {
        return None;
    };
    // Where a part of each is a constant, which the parts' kernels recompute
    // for free: otherwise the concatenations may be stored anyway for
    // other readers, and the op, fused into its reader, would become
    // kernels and a buffer of its own.
    let padded = |p: Node, q: Node| uniform(&b.out, p).is_some() || uniform(&b.out, q).is_some();
    if axis != y_axis || b.out.ty(x1) != b.out.ty(y1) || !padded(x1, x2) || !padded(y1, y2) {
        return None;
    }
    let first = b.make(Op::Binary(op, x1, y1), span)?;
    let second = b.make(Op::Binary(op, x2, y2), span)?;
    b.make(
        Op::Concat {
            a: first,
            b: second,
            axis,
        },
        span,
    )
}

/// The value of every element of `n` when it is a constant
/// ([`constant_value`]), seen through broadcasts and reshapes in any
/// order (differentiation seeds a loop body's adjoint with a broadcast
/// of a reshaped 1).
fn uniform(g: &Graph, n: Node) -> Option<f32> {
    match g.nodes[n].op {
        Op::Broadcast(x, _) | Op::Reshape(x, _) => uniform(g, x),
        _ => constant_value(g, n),
    }
}
