//! What a node is known to hold at compile time: the facts about
//! constant nodes that several passes and code generators read
//! (autodiff's derivative of a constant power, the kernels' powers as
//! products).

use super::{Graph, Node, Op};

/// The value of every element of `c`, when it is a constant: a fill, a
/// one-element constant, or a broadcast of one.
pub fn constant_value(g: &Graph, c: Node) -> Option<f32> {
    match &g.nodes[c].op {
        Op::Fill { value, .. } => Some(*value),
        Op::Broadcast(a, _) => constant_value(g, *a),
        Op::Const(k) if g.consts[*k].len() == 1 => Some(g.consts[*k].data[0]),
        _ => None,
    }
}

/// `x ^ c` is compiled as multiplications when `c` is a constant
/// ([`constant_value`]) with a whole value of at most 4 in magnitude;
/// this gives that exponent.
pub fn pow_exponent(g: &Graph, c: Node) -> Option<i32> {
    let v = constant_value(g, c)?;
    (v.fract() == 0.0 && v.abs() <= 4.0).then_some(v as i32)
}
