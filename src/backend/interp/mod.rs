//! The reference interpreter: evaluates an IR graph on `f32` tensors, node
//! by node in arena order, with the plainest loops that are obviously
//! right. It is the oracle for every other backend; speed is not its job.

mod init;
mod kernels;
mod kernels_nn;
mod scan;

pub use init::{init_params, param_seed};
pub use kernels::rng_key;

pub use crate::exec::bind::Feed;
pub use crate::exec::Error;

use crate::diag::Span;
use crate::exec::bind::{bind_syms, concrete_shape, input_values, live_nodes};
use crate::ir::{Graph, InputId, Node, Op, ParamId};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// Options for a run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The run's seed: parameters without a seed of their own derive theirs
    /// from it and their name.
    pub seed: u64,
}

/// Evaluates the graph's outputs, in the order they are declared.
pub fn run(g: &Graph, feed: &Feed) -> Result<Vec<Tensor>, Error> {
    let roots: Vec<Node> = g.outputs.iter().map(|o| o.node).collect();
    let values = evaluate(g, feed, &roots)?;
    Ok(roots.iter().map(|n| values[*n].clone()).collect())
}

/// Runs one step of a graph with updates: evaluates the outputs and every
/// update from the current parameters, then writes the updates. Returns
/// the outputs.
pub fn step(
    g: &Graph,
    params: &mut SecondaryMap<ParamId, Tensor>,
    inputs: &SecondaryMap<InputId, Option<Tensor>>,
) -> Result<Vec<Tensor>, Error> {
    let mut roots: Vec<Node> = g.outputs.iter().map(|o| o.node).collect();
    roots.extend(g.updates.iter().map(|u| u.node));
    let mut values = evaluate(g, &Feed { params, inputs }, &roots)?;
    let outs = g.outputs.iter().map(|o| values[o.node].clone()).collect();
    // Several updates may take one value (CSE merges equal ones): each
    // but the last to read it gets a copy.
    for (i, u) in g.updates.iter().enumerate() {
        let read_later = g.updates[i + 1..].iter().any(|l| l.node == u.node);
        params[u.param] = match read_later {
            true => values[u.node].clone(),
            false => std::mem::take(&mut values[u.node]),
        };
    }
    Ok(outs)
}

/// Evaluates every node the `roots` depend on; the others stay empty.
pub fn evaluate(
    g: &Graph,
    feed: &Feed,
    roots: &[Node],
) -> Result<SecondaryMap<Node, Tensor>, Error> {
    let live = live_nodes(g, roots);
    let inputs = input_values(g, feed, &live)?;
    let syms = bind_syms(g, &inputs)?;
    // Every live value is kept until the end: the budget is their sum.
    let mut shapes: SecondaryMap<Node, Vec<usize>> = SecondaryMap::new();
    let mut budget = super::memory::Budget::default();
    for (n, data) in g.nodes.iter() {
        if live.contains(n) {
            let s = concrete_shape(g, &syms, &data.ty.shape, data.span)?;
            let count = s.iter().product();
            budget.add(count, || g.shape_str(&data.ty.shape), data.span);
            shapes[n] = s;
        }
    }
    budget.check()?;
    let mut vals: SecondaryMap<Node, Tensor> = SecondaryMap::new();
    for (n, data) in g.nodes.iter() {
        if !live.contains(n) {
            continue;
        }
        let out_shape = std::mem::take(&mut shapes[n]);
        let v = match &data.op {
            Op::Input(i) => inputs[*i]
                .clone()
                .unwrap_or_else(|| Tensor::full(out_shape.clone(), 0.0)),
            Op::Param(p) => {
                let t = &feed.params[*p];
                if t.shape != out_shape || t.data.len() != t.shape.iter().product::<usize>() {
                    let info = &g.params[*p];
                    return Err(Error::BadLength {
                        name: info.name.clone(),
                        expected: out_shape.iter().product(),
                        found: t.data.len(),
                        span: info.span,
                    });
                }
                t.clone()
            }
            op => eval_op(g, op, data.span, &|a| &vals[a], &out_shape)?,
        };
        debug_assert_eq!(
            v.shape, out_shape,
            "{n}: kernel shape differs from the node's type"
        );
        vals[n] = v;
    }
    Ok(vals)
}

/// Evaluates one operation from its arguments' values (`vals`) into a
/// fresh tensor of `out_shape`. Inputs and parameters are the caller's
/// business (they need the feed); every other operation is here, so other
/// backends can fall back to it for operations they do not compile.
pub fn eval_op<'v>(
    g: &Graph,
    op: &Op,
    span: Span,
    vals: &dyn Fn(Node) -> &'v Tensor,
    out_shape: &[usize],
) -> Result<Tensor, Error> {
    Ok(match op {
        Op::Input(_) | Op::Param(_) => unreachable!("inputs and parameters are fed by the caller"),
        Op::Const(c) => g.consts[*c].clone(),
        Op::Fill { value, .. } => Tensor::full(out_shape.to_vec(), *value),
        Op::Random {
            dist, salt, key, ..
        } => kernels::random(*dist, *salt, vals(*key), out_shape),
        Op::Unary(op, a) => kernels::unary(*op, vals(*a)),
        Op::Binary(op, a, b) => kernels::binary(*op, vals(*a), vals(*b)),
        Op::Compare(op, a, b) => kernels::compare(*op, vals(*a), vals(*b)),
        Op::Select(c, a, b) => kernels::select(vals(*c), vals(*a), vals(*b)),
        Op::AdamMoment {
            beta,
            square,
            old,
            new,
        } => kernels::adam_moment(*beta, *square, vals(*old), vals(*new)),
        Op::AdamStep {
            w,
            m,
            v,
            lr,
            correction,
            eps,
        } => kernels::adam_step(
            vals(*w),
            vals(*m),
            vals(*v),
            vals(*lr),
            correction.map(|(c1, c2)| (vals(c1), vals(c2))),
            *eps,
        ),
        Op::Reduce { op, arg, axes } => kernels::reduce(*op, vals(*arg), axes),
        Op::MatMul(a, b) => kernels::matmul(vals(*a), vals(*b)),
        Op::Reshape(a, _) => Tensor::new(out_shape.to_vec(), vals(*a).data.clone()),
        Op::Transpose(a, perm) => kernels::transpose(vals(*a), perm),
        Op::Broadcast(a, _) => kernels::broadcast(vals(*a), out_shape),
        Op::Conv2d {
            x,
            w,
            stride,
            padding,
        } => kernels_nn::conv2d(vals(*x), vals(*w), *stride, *padding, out_shape),
        Op::Conv2dBackwardInput {
            gy,
            w,
            stride,
            padding,
            ..
        } => kernels_nn::conv2d_backward_input(vals(*gy), vals(*w), *stride, *padding, out_shape),
        Op::Conv2dBackwardWeight {
            x,
            gy,
            stride,
            padding,
            ..
        } => kernels_nn::conv2d_backward_weight(vals(*x), vals(*gy), *stride, *padding, out_shape),
        Op::Pool2d {
            op,
            arg,
            size,
            stride,
        } => kernels_nn::pool2d(*op, vals(*arg), *size, *stride, out_shape),
        Op::Pool2dBackward {
            op,
            x,
            gy,
            size,
            stride,
        } => kernels_nn::pool2d_backward(*op, vals(*x), vals(*gy), *size, *stride),
        Op::Slice {
            arg,
            axis,
            start,
            end,
        } => kernels_nn::slice(vals(*arg), *axis, *start, *end),
        Op::Concat { a, b, axis } => kernels_nn::concat(vals(*a), vals(*b), *axis),
        Op::Gather { table, indices } => kernels_nn::gather(vals(*table), vals(*indices))
            .map_err(|e| index_error("gather", e, span))?,
        Op::ScatterAdd {
            values, indices, ..
        } => kernels_nn::scatter_add(vals(*values), vals(*indices), out_shape)
            .map_err(|e| index_error("scatter_add", e, span))?,
        Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } => {
            let xs: Vec<&Tensor> = xs.iter().map(|x| vals(*x)).collect();
            let args: Vec<&Tensor> = args.iter().map(|a| vals(*a)).collect();
            scan::run_scan(
                &g.bodies[*body],
                vals(*init),
                &xs,
                &args,
                *reverse,
                out_shape,
            )?
        }
    })
}

fn index_error(op: &'static str, e: kernels_nn::BadIndex, span: Span) -> Error {
    Error::Index {
        op,
        value: e.value,
        len: e.len,
        span,
    }
}
