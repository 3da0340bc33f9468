//! What a node costs for concrete sizes of the symbolic dimensions: the
//! elements of its value and its floating-point operations (`nnc
//! summary`).
//!
//! The counting rule, the one torchinfo's and fvcore's "FLOPs" follow for
//! the products (a multiply and an add are two):
//!
//! - a matrix product `[..b, m, k] @ [..b, k, n]`: `2·b·m·k·n`;
//! - a convolution `[N, C, H, W] * [O, C, KH, KW] → [N, O, OH, OW]`, and
//!   each of its two gradients: `2·N·O·OH·OW·C·KH·KW`;
//! - a pooling over `k × k` windows, and its gradient: `k²` per output
//!   element of the pooling;
//! - an elementwise op (unary, binary, comparison, select): one per
//!   element of its result, whatever the function (`exp` and `tanh` count
//!   one, as an add does);
//! - a reduction: one per element it reads; `scatter_add`: one per
//!   element it adds;
//! - a `scan`: its body's count, once per step;
//! - leaves, fills, random draws and data movement (reshape, transpose,
//!   broadcast, slice, concat, gather): none.
//!
//! Counts saturate at `u64::MAX` rather than wrap.

use super::{Dim, Graph, Node, Op, Sym};
use cranelift_entity::SecondaryMap;

/// Sizes of the symbolic dimensions; a symbol without one counts as 1.
pub type Sizes = SecondaryMap<Sym, Option<usize>>;

/// A shape's dimensions with its symbols bound by `sizes`.
pub fn dims(shape: &[Dim], sizes: &Sizes) -> Vec<u64> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            Dim::Sym(s) => sizes.get(*s).copied().flatten().unwrap_or(1) as u64,
        })
        .collect()
}

/// The product of some numbers, saturating.
fn product(xs: impl IntoIterator<Item = u64>) -> u64 {
    xs.into_iter().fold(1u64, |a, x| a.saturating_mul(x))
}

/// The elements of node `n`'s value.
pub fn elements(g: &Graph, n: Node, sizes: &Sizes) -> u64 {
    product(dims(g.shape(n), sizes))
}

/// The floating-point operations node `n` performs, by the rule in the
/// module's doc.
pub fn flops(g: &Graph, n: Node, sizes: &Sizes) -> u64 {
    let out = || elements(g, n, sizes);
    let shape = |m: Node| dims(g.shape(m), sizes);
    match &g.nodes[n].op {
        Op::Input(_)
        | Op::Param(_)
        | Op::Const(_)
        | Op::Fill { .. }
        | Op::Random { .. }
        | Op::Reshape(..)
        | Op::Transpose(..)
        | Op::Broadcast(..)
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather { .. } => 0,
        Op::Unary(..) | Op::Binary(..) | Op::Compare(..) | Op::Select(..) => out(),
        // The separate ops they fuse: two products and a sum (and the
        // square); a sum, a square root, two quotients, a product and a
        // difference (and the two quotients of the bias corrections).
        Op::AdamMoment { square, .. } => out().saturating_mul(3 + u64::from(*square)),
        Op::AdamStep { correction, .. } => {
            out().saturating_mul(5 + 2 * u64::from(correction.is_some()))
        }
        Op::Reduce { arg, .. } => elements(g, *arg, sizes),
        Op::ScatterAdd { values, .. } => elements(g, *values, sizes),
        Op::MatMul(a, _) => {
            // The result is [..b, m, n]; k is the last dimension of `a`.
            let k = shape(*a).last().copied().unwrap_or(1);
            out().saturating_mul(k).saturating_mul(2)
        }
        // The result [N, O, OH, OW] times C·KH·KW, the kernel's elements
        // per output channel.
        Op::Conv2d { w, .. } => {
            let w = shape(*w);
            out()
                .saturating_mul(product(w.iter().skip(1).copied()))
                .saturating_mul(2)
        }
        // Both gradients do the forward's products: the forward's output
        // (`gy`) times C·KH·KW.
        Op::Conv2dBackwardInput { gy, w, .. } => {
            let w = shape(*w);
            elements(g, *gy, sizes)
                .saturating_mul(product(w.iter().skip(1).copied()))
                .saturating_mul(2)
        }
        Op::Conv2dBackwardWeight { gy, .. } => {
            // The result is the kernel [O, C, KH, KW]; gy is [N, O, OH, OW].
            let per_out_channel = product(shape(n).into_iter().skip(1));
            elements(g, *gy, sizes)
                .saturating_mul(per_out_channel)
                .saturating_mul(2)
        }
        Op::Pool2d { size, .. } => out().saturating_mul(size.saturating_mul(*size)),
        Op::Pool2dBackward { gy, size, .. } => {
            elements(g, *gy, sizes).saturating_mul(size.saturating_mul(*size))
        }
        Op::Scan { body, xs, .. } => {
            let steps = xs
                .first()
                .and_then(|x| shape(*x).first().copied())
                .unwrap_or(0);
            g.bodies
                .get(*body)
                .map_or(0, |b| total_flops(b, sizes))
                .saturating_mul(steps)
        }
    }
}

/// The operations of every node the graph's outputs and updates need
/// (a loop body's: its one output).
pub fn total_flops(g: &Graph, sizes: &Sizes) -> u64 {
    let live = g.live();
    g.nodes
        .keys()
        .filter(|&n| live[cranelift_entity::EntityRef::index(n)])
        .fold(0u64, |total, n| total.saturating_add(flops(g, n, sizes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use crate::ir::{BinaryOp, Init, ParamInfo, PoolOp, ReduceOp, Role, Type, UnaryOp};

    fn param(g: &mut Graph, shape: Vec<u64>) -> Node {
        let id = g.params.push(ParamInfo {
            name: format!("p{}", g.params.len()),
            role: Role::Trainable,
            shape,
            init: Init::Constant(0.0),
            seed: None,
            span: Span::default(),
        });
        g.add(Op::Param(id), Span::default()).expect("a parameter")
    }

    /// Each rule on shapes small enough to count by hand.
    #[test]
    fn each_rule_counts_as_documented() {
        let mut g = Graph::new();
        let b = g.sym("B");
        let sp = Span::default();
        let id = g.inputs.push(crate::ir::InputInfo {
            name: "x".into(),
            ty: Type::f32(vec![Dim::Sym(b), Dim::Known(4)]),
            default: None,
            span: sp,
        });
        let x = g.add(Op::Input(id), sp).unwrap();
        let w = param(&mut g, vec![4, 3]);
        let mm = g.add(Op::MatMul(x, w), sp).unwrap();
        let t = g.add(Op::Unary(UnaryOp::Tanh, mm), sp).unwrap();
        let s = g.add(Op::Binary(BinaryOp::Add, t, t), sp).unwrap();
        let r = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    arg: s,
                    axes: vec![1],
                },
                sp,
            )
            .unwrap();
        let img = param(&mut g, vec![1, 2, 6, 6]);
        let k = param(&mut g, vec![3, 2, 3, 3]);
        let conv = g
            .add(
                Op::Conv2d {
                    x: img,
                    w: k,
                    stride: 1,
                    padding: 0,
                },
                sp,
            )
            .unwrap();
        let pool = g
            .add(
                Op::Pool2d {
                    op: PoolOp::Max,
                    arg: conv,
                    size: 2,
                    stride: 2,
                },
                sp,
            )
            .unwrap();
        let mut sizes = Sizes::new();
        sizes[b] = Some(5);
        // [5, 4] @ [4, 3]: 15 outputs of 4 multiply-adds.
        assert_eq!(flops(&g, mm, &sizes), 2 * 5 * 4 * 3);
        assert_eq!(flops(&g, t, &sizes), 15);
        assert_eq!(flops(&g, s, &sizes), 15);
        assert_eq!(flops(&g, r, &sizes), 15);
        // [1, 2, 6, 6] by [3, 2, 3, 3]: [1, 3, 4, 4], each 2·3·3 products.
        assert_eq!(flops(&g, conv, &sizes), 2 * 48 * 18);
        // [1, 3, 2, 2] outputs of 2x2 windows.
        assert_eq!(flops(&g, pool, &sizes), 12 * 4);
        assert_eq!(flops(&g, x, &sizes), 0);
        assert_eq!(elements(&g, x, &sizes), 20);
        // A symbol without a size counts as 1.
        assert_eq!(elements(&g, x, &Sizes::new()), 4);
    }
}
