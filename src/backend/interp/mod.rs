//! The reference interpreter: evaluates an IR graph on `f32` tensors, node
//! by node in arena order, with the plainest loops that are obviously
//! right. It is the oracle for every other backend; speed is not its job.

mod init;
mod kernels;
mod kernels_nn;
mod scan;

pub use init::{init_params, param_seed};
pub use kernels::rng_key;

use crate::diag::{self, code, Diag, Span};
use crate::ir::{Dim, Graph, InputId, Node, Op, ParamId, Sym};
use crate::tensor::Tensor;
use cranelift_entity::{EntitySet, SecondaryMap};

/// Options for a run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The run's seed: parameters without a seed of their own derive theirs
    /// from it and their name.
    pub seed: u64,
}

/// Why a graph could not be evaluated. Each becomes a diagnostic pointing
/// at the declaration concerned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("input `{name}` has no value")]
    MissingInput { name: String, span: Span },
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    InputShape {
        name: String,
        expected: String,
        found: Vec<usize>,
        span: Span,
    },
    #[error("dimension `{sym}` is {first} in one input and {second} in input `{name}`")]
    SymConflict {
        sym: String,
        first: usize,
        second: usize,
        name: String,
        span: Span,
    },
    #[error("dimension `{sym}` is not bound by any input")]
    UnboundSym { sym: String, span: Span },
    /// A compiling backend failed on a graph the checker accepted: a
    /// compiler bug, reported as an internal error.
    #[error("the backend failed: {message}")]
    Backend { message: String },
    /// A bound shape whose element count exceeds
    /// [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS).
    #[error("a tensor of shape {shape} is too large")]
    TooLarge { shape: String, span: Span },
    /// The buffers of a run need more memory than its budget
    /// ([`super::memory`]).
    #[error("this run needs {} of memory; the limit is {} ({limit_from})", super::memory::human(*needed), super::memory::human(*limit))]
    OutOfMemory {
        needed: u64,
        limit: u64,
        limit_from: &'static str,
        largest: String,
        span: Span,
    },
    /// A parameter or input handed to a backend whose data does not
    /// match its declared size (a caller's mistake through the API).
    #[error("`{name}` holds {found} values; its shape needs {expected}")]
    BadLength {
        name: String,
        expected: usize,
        found: usize,
        span: Span,
    },
    #[error("invalid index {value} in `{op}`: indices must be whole numbers in 0..{len}")]
    Index {
        op: &'static str,
        value: f32,
        len: usize,
        span: Span,
    },
}

impl Error {
    pub fn to_diag(&self) -> Diag {
        let msg = self.to_string();
        match self {
            Error::MissingInput { span, .. } => diag::error(code::INPUT, msg)
                .with_labels(vec![span.primary("declared here without a value")])
                .with_notes(vec![
                    "help: give the input a value, e.g. `input x: [3] = [1, 2, 3]`".into(),
                ]),
            Error::InputShape { span, .. }
            | Error::SymConflict { span, .. }
            | Error::UnboundSym { span, .. } => {
                diag::error(code::INPUT, msg).with_labels(vec![span.primary("here")])
            }
            Error::TooLarge { span, .. } => diag::error(code::SIZE, msg)
                .with_labels(vec![span.primary("this tensor would hold more than 2^48 elements")])
                .with_notes(vec![
                    "help: check the sizes given to symbolic dimensions (the inputs' shapes, `--dim`, `batch`)".into(),
                ]),
            Error::OutOfMemory { largest, span, .. } => diag::error(code::MEMORY, msg)
                .with_labels(vec![span.primary(format!("the largest tensor, {largest}"))])
                .with_notes(vec![
                    "help: use a smaller batch or smaller dimensions, or raise the limit with `--max-memory SIZE` (e.g. `--max-memory 64G`)".into(),
                ]),
            Error::BadLength { span, .. } => diag::error(code::INPUT, msg)
                .with_labels(vec![span.primary("declared here")]),
            Error::Backend { .. } => diag::error(code::INTERNAL, msg).with_notes(vec![
                "note: this is a bug in nnc; `--backend interp` runs the program without compiling it"
                    .into(),
            ]),
            Error::Index { span, .. } => diag::error(code::INDEX, msg)
                .with_labels(vec![span.primary("while evaluating this")])
                .with_notes(vec![
                    "note: indices are f32 values, each a whole number that names a row".into(),
                ]),
        }
    }
}

/// Values for a graph's parameters and inputs.
pub struct Feed<'t> {
    pub params: &'t SecondaryMap<ParamId, Tensor>,
    /// Inputs given from outside; the rest take their declared value.
    pub inputs: &'t SecondaryMap<InputId, Option<Tensor>>,
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

pub(crate) fn live_nodes(g: &Graph, roots: &[Node]) -> EntitySet<Node> {
    let mut live = EntitySet::new();
    for &r in roots {
        live.insert(r);
    }
    for (n, d) in g.nodes.iter().rev() {
        if live.contains(n) {
            for a in d.op.args() {
                live.insert(a);
            }
        }
    }
    live
}

pub(crate) fn input_values(
    g: &Graph,
    feed: &Feed,
    live: &EntitySet<Node>,
) -> Result<SecondaryMap<InputId, Option<Tensor>>, Error> {
    let mut used: EntitySet<InputId> = EntitySet::new();
    for (n, d) in g.nodes.iter() {
        if let Op::Input(i) = d.op {
            if live.contains(n) {
                used.insert(i);
            }
        }
    }
    let mut out = SecondaryMap::new();
    for (i, info) in g.inputs.iter() {
        let v = feed.inputs[i]
            .clone()
            .or_else(|| info.default.map(|c| g.consts[c].clone()));
        if v.is_none() && used.contains(i) {
            return Err(Error::MissingInput {
                name: info.name.clone(),
                span: info.span,
            });
        }
        if let Some(t) = &v {
            let expected = crate::ir::shape::checked_elements(&t.shape);
            if expected != Some(t.data.len()) {
                return Err(Error::BadLength {
                    name: info.name.clone(),
                    expected: expected.unwrap_or(usize::MAX),
                    found: t.data.len(),
                    span: info.span,
                });
            }
        }
        out[i] = v;
    }
    Ok(out)
}

/// A type's shape with its symbols bound, its element count checked
/// against [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS): past this
/// point products of its dimensions cannot overflow.
pub(crate) fn concrete_shape(
    g: &Graph,
    syms: &SecondaryMap<Sym, Option<usize>>,
    shape: &[Dim],
    span: Span,
) -> Result<Vec<usize>, Error> {
    let dims = shape
        .iter()
        .map(|d| match d {
            Dim::Known(k) => usize::try_from(*k).map_err(|_| Error::TooLarge {
                shape: g.shape_str(shape),
                span,
            }),
            Dim::Sym(s) => syms[*s].ok_or_else(|| Error::UnboundSym {
                sym: g.syms[*s].name.clone(),
                span,
            }),
        })
        .collect::<Result<Vec<usize>, Error>>()?;
    match crate::ir::shape::checked_elements(&dims) {
        Some(_) => Ok(dims),
        None => Err(Error::TooLarge {
            shape: format!("{} = {dims:?}", g.shape_str(shape)),
            span,
        }),
    }
}

/// Binds every symbolic dimension from the inputs' actual shapes.
pub(crate) fn bind_syms(
    g: &Graph,
    inputs: &SecondaryMap<InputId, Option<Tensor>>,
) -> Result<SecondaryMap<Sym, Option<usize>>, Error> {
    bind_syms_by(g, |i| inputs[i].as_ref().map(|t| &t.shape[..]))
}

/// [`bind_syms`] from the inputs' shapes alone (`None`: not fed).
pub(crate) fn bind_syms_by<'s>(
    g: &Graph,
    shape_of: impl Fn(InputId) -> Option<&'s [usize]>,
) -> Result<SecondaryMap<Sym, Option<usize>>, Error> {
    let mut syms: SecondaryMap<Sym, Option<usize>> = SecondaryMap::new();
    for (i, info) in g.inputs.iter() {
        let Some(found) = shape_of(i) else { continue };
        let shape = &info.ty.shape;
        let mismatch = || Error::InputShape {
            name: info.name.clone(),
            expected: g.shape_str(shape),
            found: found.to_vec(),
            span: info.span,
        };
        if found.len() != shape.len() {
            return Err(mismatch());
        }
        for (&n, d) in found.iter().zip(shape) {
            match d {
                Dim::Known(k) if *k as usize != n => return Err(mismatch()),
                Dim::Known(_) => {}
                Dim::Sym(s) => match syms[*s] {
                    Some(first) if first != n => {
                        return Err(Error::SymConflict {
                            sym: g.syms[*s].name.clone(),
                            first,
                            second: n,
                            name: info.name.clone(),
                            span: info.span,
                        })
                    }
                    _ => syms[*s] = Some(n),
                },
            }
        }
    }
    Ok(syms)
}
