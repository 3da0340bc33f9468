//! Which symbolic dimension indexes independent examples: `B` is a *row
//! dimension* of a graph when every output's row `i` along `B` depends
//! only on row `i` of each input (and on the parameters), so running the
//! graph on a batch gives the rows that running it on each example alone
//! gives. An ahead-of-time library runs such a graph on any number of
//! rows by splitting them into chunks of the sizes it compiled.
//!
//! The analysis walks the graph once (loop bodies too), giving each
//! value the axis where it holds `B` or none (a value the same for every
//! row: parameters, constants, what is computed from them). An op that
//! combines different rows — a reduction or a contraction over `B`, a
//! reshape that moves it, a random draw of `B` rows, an index into a
//! table of rows — makes its result *mixed*, reported with the op's
//! source location when an output depends on it.

use super::*;
use cranelift_entity::SecondaryMap;

/// Where a value holds the row dimension.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rows {
    /// Nowhere: the same for every row.
    Free,
    /// At this axis (once), row `i` computed from the inputs' rows `i`.
    At(usize),
}

/// Why a graph is not row-wise: the op that mixes rows, and how.
#[derive(Clone, Debug)]
pub struct Mixing {
    pub span: Span,
    pub why: String,
}

/// The axis of the row dimension in each input and output (`None`: the
/// value has no such axis and is the same for every row).
#[derive(Clone, Debug)]
pub struct RowAxes {
    pub inputs: SecondaryMap<InputId, Option<usize>>,
    pub outputs: Vec<Option<usize>>,
}

type State = Result<Rows, Mixing>;

/// The row axes of `g`'s inputs and outputs when `b` is a row dimension
/// of it; otherwise the first op (in graph order) on which an output
/// depends that mixes rows.
pub fn row_axes(g: &Graph, b: Sym) -> Result<RowAxes, Mixing> {
    let inputs: SecondaryMap<InputId, State> = {
        let mut m = SecondaryMap::with_default(Ok(Rows::Free));
        for (id, info) in g.inputs.iter() {
            m[id] = of_shape(&info.ty.shape, b, info.span, "an input");
        }
        m
    };
    let states = walk(g, b, &|i| inputs[i].clone());
    let mut out = RowAxes {
        inputs: SecondaryMap::new(),
        outputs: Vec::new(),
    };
    for (id, s) in inputs.iter() {
        out.inputs[id] = axis(s.clone())?;
    }
    for o in &g.outputs {
        out.outputs.push(axis(states[o.node].clone())?);
    }
    Ok(out)
}

fn axis(s: State) -> Result<Option<usize>, Mixing> {
    Ok(match s? {
        Rows::Free => None,
        Rows::At(a) => Some(a),
    })
}

/// Where `shape` holds `b`: nowhere, once, or (mixed) more than once.
fn of_shape(shape: &[Dim], b: Sym, span: Span, what: &str) -> State {
    let at: Vec<usize> = (0..shape.len())
        .filter(|&i| shape[i] == Dim::Sym(b))
        .collect();
    match at.as_slice() {
        [] => Ok(Rows::Free),
        [a] => Ok(Rows::At(*a)),
        _ => mixed(
            span,
            format!("{what} has the row dimension on more than one axis"),
        ),
    }
}

fn mixed(span: Span, why: impl Into<String>) -> State {
    Err(Mixing {
        span,
        why: why.into(),
    })
}

/// The states of every node of `g`, given its inputs'.
fn walk(g: &Graph, b: Sym, input: &dyn Fn(InputId) -> State) -> SecondaryMap<Node, State> {
    let mut st: SecondaryMap<Node, State> = SecondaryMap::with_default(Ok(Rows::Free));
    for (n, data) in g.nodes.iter() {
        let s = node(g, b, n, &data.op, data.span, input, &st);
        // Every value with the row dimension in its type is traced to an
        // axis (or mixed): anything else is an op this analysis does not
        // follow, so treat it as mixing.
        st[n] = s.and_then(
            |r| match (r, of_shape(g.shape(n), b, data.span, "a value")?) {
                (a, c) if a == c => Ok(a),
                _ => mixed(data.span, "the rows of this value cannot be followed"),
            },
        );
    }
    st
}

/// Rows of an elementwise op's operands: all the same, or none.
fn same(span: Span, states: &[State]) -> State {
    let mut out = Rows::Free;
    for s in states {
        match (out, s.clone()?) {
            (_, Rows::Free) => {}
            (Rows::Free, r) => out = r,
            (a, r) if a == r => {}
            _ => return mixed(span, "its operands hold the rows on different axes"),
        }
    }
    Ok(out)
}

fn node(
    g: &Graph,
    b: Sym,
    n: Node,
    op: &Op,
    span: Span,
    input: &dyn Fn(InputId) -> State,
    st: &SecondaryMap<Node, State>,
) -> State {
    let of = |m: Node| st[m].clone();
    let free_only = |args: &[Node], what: &str| -> State {
        match same(span, &args.iter().map(|&a| of(a)).collect::<Vec<_>>())? {
            Rows::Free => Ok(Rows::Free),
            Rows::At(_) => mixed(span, format!("{what} combines rows")),
        }
    };
    match op {
        Op::Input(i) => input(*i),
        Op::Param(_) | Op::Const(_) => Ok(Rows::Free),
        Op::Fill { shape, .. } => of_shape(shape, b, span, "a filled tensor"),
        Op::Random { shape, .. } => match of_shape(shape, b, span, "a random draw")? {
            Rows::Free => Ok(Rows::Free),
            Rows::At(_) => mixed(
                span,
                "random draws over the rows differ with the number of rows",
            ),
        },
        Op::Unary(_, a) => of(*a),
        Op::Binary(_, x, y) | Op::Compare(_, x, y) => same(span, &[of(*x), of(*y)]),
        Op::Select(c, x, y) => same(span, &[of(*c), of(*x), of(*y)]),
        Op::AdamMoment { .. } | Op::AdamStep { .. } => {
            same(span, &op.args().iter().map(|&a| of(a)).collect::<Vec<_>>())
        }
        Op::Concat { a, b: c, .. } => same(span, &[of(*a), of(*c)]),
        Op::Reduce { arg, axes, .. } => match of(*arg)? {
            Rows::Free => Ok(Rows::Free),
            Rows::At(a) if axes.contains(&a) => mixed(span, "a reduction over the rows"),
            Rows::At(a) => Ok(Rows::At(a - axes.iter().filter(|&&x| x < a).count())),
        },
        Op::MatMul(x, y) => {
            let r = g.shape(n).len();
            let left = match of(*x)? {
                Rows::At(a) if a == r - 1 => {
                    return mixed(span, "a matrix product that sums over the rows")
                }
                s => s,
            };
            let right = match of(*y)? {
                Rows::At(a) if a == r - 2 => {
                    return mixed(span, "a matrix product that sums over the rows")
                }
                s => s,
            };
            same(span, &[Ok(left), Ok(right)])
        }
        Op::Reshape(x, shape) => match of(*x)? {
            Rows::Free => Ok(Rows::Free),
            Rows::At(a) => {
                let to = of_shape(shape, b, span, "a reshape")?;
                let prefix = |s: &[Dim]| {
                    let mut known = 1u64;
                    let mut syms = Vec::new();
                    for d in s {
                        match d {
                            Dim::Known(k) => known = known.saturating_mul(*k),
                            Dim::Sym(s) => syms.push(*s),
                        }
                    }
                    syms.sort();
                    (known, syms)
                };
                match to {
                    Rows::At(t) if prefix(&g.shape(*x)[..a]) == prefix(&shape[..t]) => {
                        Ok(Rows::At(t))
                    }
                    _ => mixed(span, "a reshape that moves the rows"),
                }
            }
        },
        Op::Transpose(x, perm) => match of(*x)? {
            Rows::Free => Ok(Rows::Free),
            Rows::At(a) => Ok(Rows::At(perm.iter().position(|&p| p == a).unwrap_or(a))),
        },
        Op::Broadcast(x, shape) => match of(*x)? {
            Rows::Free => of_shape(shape, b, span, "a broadcast"),
            Rows::At(a) => Ok(Rows::At(a + shape.len() - g.shape(*x).len())),
        },
        Op::Conv2d { x, w, .. } => match (of(*x)?, of(*w)?) {
            (s @ (Rows::Free | Rows::At(0)), Rows::Free) => Ok(s),
            _ => mixed(span, "a convolution across the rows"),
        },
        Op::Pool2d { arg, .. } => match of(*arg)? {
            s @ (Rows::Free | Rows::At(0)) => Ok(s),
            _ => mixed(span, "a pooling across the rows"),
        },
        Op::Slice { arg, axis, .. } => match of(*arg)? {
            Rows::At(a) if a == *axis => mixed(span, "a slice of the rows"),
            s => Ok(s),
        },
        Op::Gather { table, indices } => match (of(*table)?, of(*indices)?) {
            (Rows::Free, s) => Ok(s),
            _ => mixed(span, "an index into a table of rows"),
        },
        Op::Conv2dBackwardInput { .. }
        | Op::Conv2dBackwardWeight { .. }
        | Op::Pool2dBackward { .. }
        | Op::ScatterAdd { .. } => free_only(&op.args(), "this gradient or scatter"),
        Op::Scan {
            body,
            init,
            xs,
            args,
            ..
        } => {
            let mut feed = vec![of(*init)?];
            for &x in xs {
                feed.push(match of(x)? {
                    Rows::At(0) => return mixed(span, "a loop over the rows"),
                    Rows::At(a) => Rows::At(a - 1),
                    Rows::Free => Rows::Free,
                });
            }
            for &a in args {
                feed.push(of(a)?);
            }
            let bg = &g.bodies[*body];
            let ids: Vec<InputId> = bg.inputs.keys().collect();
            let states = walk(bg, b, &|i| {
                ids.iter()
                    .position(|&k| k == i)
                    .and_then(|k| feed.get(k).copied())
                    .map_or_else(|| mixed(span, "a loop input without a value"), Ok)
            });
            let Some(o) = bg.outputs.first() else {
                return mixed(span, "a loop without a result");
            };
            match (states[o.node].clone()?, feed[0]) {
                (Rows::Free, Rows::Free) => Ok(Rows::Free),
                (Rows::At(a), Rows::At(c)) if a == c => Ok(Rows::At(a + 1)),
                _ => mixed(span, "a loop whose carry moves the rows"),
            }
        }
    }
}
