//! Calls of builtins: each checks its arguments (compile-time ones such as
//! axes and shapes included) and adds its primitive.

use super::*;
use crate::ir::PoolOp;

mod indexing;
mod state;
mod windows;

/// An error for a compile-time argument that is not written as one.
pub(super) fn not_const(e: &Expr, what: &str, example: &str) -> Diag {
    diag::error(
        code::CONST_ARG,
        format!("{what} must be written as a constant"),
    )
    .with_labels(vec![e.span.primary("not a constant")])
    .with_notes(vec![format!("help: for example `{example}`")])
}

fn const_int(e: &Expr, what: &str, example: &str) -> Result<i64, Diag> {
    match e.kind {
        ExprKind::Number(v, _) if v.fract() == 0.0 && v.abs() < 1e9 => Ok(v as i64),
        _ => Err(not_const(e, what, example)),
    }
}

/// An optional compile-time integer of at least `min` (a stride, a
/// padding, a window size), `default` when absent.
fn const_count(
    e: Option<&Expr>,
    what: &str,
    example: &str,
    default: u64,
    min: i64,
) -> Result<u64, Diag> {
    let Some(e) = e else {
        return Ok(default);
    };
    let v = const_int(e, what, example)?;
    if v < min {
        return Err(diag::error(
            code::CONST_ARG,
            format!("{what} must be at least {min}, found {v}"),
        )
        .with_labels(vec![e.span.primary(format!("{v} is too small"))]));
    }
    Ok(v as u64)
}

/// An axis out of range for a tensor `x` of `shape`.
fn axis_error(a: i64, shape: &str, rank: usize, at: &Expr, x: &Expr) -> Diag {
    let valid = if rank == 0 {
        "a scalar has no axes".to_string()
    } else if rank == 1 {
        "the only axis is 0 (or -1)".to_string()
    } else {
        format!(
            "valid axes are 0 to {} (or -{} to -1 counting from the end)",
            rank - 1,
            rank
        )
    };
    diag::error(
        code::AXIS,
        format!("axis {a} is out of range for a tensor of rank {rank}"),
    )
    .with_labels(vec![
        at.span.primary(format!("axis {a}")),
        x.span.secondary(format!("this has shape {shape}")),
    ])
    .with_notes(vec![format!("note: {valid}")])
}

/// An integer or a list of integers.
fn const_ints(e: &Expr, what: &str, example: &str) -> Result<Vec<i64>, Diag> {
    match &e.kind {
        ExprKind::Tensor(items) => items.iter().map(|i| const_int(i, what, example)).collect(),
        _ => Ok(vec![const_int(e, what, example)?]),
    }
}

fn const_bool(e: &Expr, what: &str) -> Result<bool, Diag> {
    match e.kind {
        ExprKind::Bool(b) => Ok(b),
        _ => Err(not_const(e, what, "keepdims = true")),
    }
}

/// A number written as a constant expression: `0.5`, `1/16`, `2^-8`.
pub(super) fn const_number(e: &Expr, what: &str) -> Result<f32, Diag> {
    fn eval(e: &Expr) -> Option<f32> {
        match &e.kind {
            ExprKind::Number(v, _) => Some(*v),
            ExprKind::Neg(x) => eval(x).map(|v| -v),
            ExprKind::Binary(op, _, a, b) => {
                let (a, b) = (eval(a)?, eval(b)?);
                match op {
                    BinOp::Add => Some(a + b),
                    BinOp::Sub => Some(a - b),
                    BinOp::Mul => Some(a * b),
                    BinOp::Div => Some(a / b),
                    BinOp::Pow => Some(a.powf(b)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
    match eval(e) {
        Some(v) if v.is_finite() => Ok(v),
        Some(v) => Err(
            diag::error(code::CONST_ARG, format!("{what} must be a finite number"))
                .with_labels(vec![e.span.primary(format!("this is {v}"))])
                .with_notes(vec!["help: for example `0.5`".into()]),
        ),
        None => Err(not_const(e, what, "0.5")),
    }
}

impl<'a> Lowerer<'_, 'a, '_> {
    pub(super) fn builtin(
        &mut self,
        env: &mut Env<'a>,
        b: Builtin,
        callee: &Expr,
        args: &'a [ast::Arg],
        span: Span,
    ) -> Value<'a> {
        if b == Builtin::Scan {
            return self.scan(env, args, span);
        }
        let formals = b.formals();
        let bound = match bind_args(b.name(), &formals, args, span, None, &|| b.signature()) {
            Ok(x) => x,
            Err(d) => {
                self.diags.push(d);
                return Value::Poison;
            }
        };
        let _ = callee;
        let arg = |i: usize| -> Option<&'a Expr> {
            bound.get(i).copied().flatten().map(|ai| &args[ai].value)
        };
        // bind_args guarantees every required argument is present.
        let req = |i: usize| arg(i).expect("bind_args checked required arguments");
        let nspan = self.span_in(env, span);
        let result = match b {
            Builtin::Exp
            | Builtin::Log
            | Builtin::Sqrt
            | Builtin::Abs
            | Builtin::Tanh
            | Builtin::Sigmoid => {
                let u = match b {
                    Builtin::Exp => UnaryOp::Exp,
                    Builtin::Log => UnaryOp::Log,
                    Builtin::Sqrt => UnaryOp::Sqrt,
                    Builtin::Abs => UnaryOp::Abs,
                    Builtin::Sigmoid => UnaryOp::Sigmoid,
                    _ => UnaryOp::Tanh,
                };
                self.tensor_expr(env, req(0))
                    .and_then(|x| self.add(Op::Unary(u, x), nspan))
            }
            Builtin::Maximum | Builtin::Minimum => {
                let op = if b == Builtin::Maximum {
                    BinaryOp::Max
                } else {
                    BinaryOp::Min
                };
                self.elementwise(env, &[req(0), req(1)], b.name(), nspan)
                    .and_then(|v| self.add(Op::Binary(op, v[0], v[1]), nspan))
            }
            Builtin::Select => self
                .elementwise(env, &[req(0), req(1), req(2)], "`select`", nspan)
                .and_then(|v| self.add(Op::Select(v[0], v[1], v[2]), nspan)),
            Builtin::Sum | Builtin::Mean | Builtin::Max => {
                let op = match b {
                    Builtin::Sum => ReduceOp::Sum,
                    Builtin::Mean => ReduceOp::Mean,
                    _ => ReduceOp::Max,
                };
                self.reduce(env, op, req(0), arg(1), arg(2), nspan)
            }
            Builtin::Reshape => self.reshape(env, req(0), req(1), nspan),
            Builtin::Transpose => self.transpose(env, req(0), arg(1), nspan),
            Builtin::Zeros | Builtin::Ones | Builtin::Full => {
                let value = match b {
                    Builtin::Zeros => Ok(0.0),
                    Builtin::Ones => Ok(1.0),
                    _ => const_number(req(1), "the fill value"),
                };
                match (self.shape_arg(env, req(0)), value) {
                    (Ok(shape), Ok(value)) => self.add(Op::Fill { value, shape }, nspan),
                    (Err(d), _) | (_, Err(d)) => {
                        self.diags.push(d);
                        None
                    }
                }
            }
            Builtin::Conv2d => self.conv2d(env, [req(0), req(1)], arg(2), arg(3), nspan),
            Builtin::MaxPool2d | Builtin::AvgPool2d => {
                let op = if b == Builtin::MaxPool2d {
                    PoolOp::Max
                } else {
                    PoolOp::Avg
                };
                self.pool2d(env, op, req(0), req(1), arg(2), nspan)
            }
            Builtin::Slice => self.slice(env, req(0), req(1), [arg(2), arg(3)], nspan),
            Builtin::Concat => self.concat(env, req(0), req(1), arg(2), nspan),
            Builtin::Gather => self.gather(env, req(0), req(1), nspan),
            Builtin::ScatterAdd => self.scatter_add(env, req(0), req(1), req(2), nspan),
            Builtin::Scan => unreachable!("scan is lowered before its arguments are matched"),
            Builtin::RandomNormal | Builtin::RandomUniform => {
                let dist = if b == Builtin::RandomNormal {
                    crate::ir::Dist::Normal
                } else {
                    crate::ir::Dist::Uniform
                };
                self.random(env, dist, req(0), nspan)
            }
            Builtin::Training => self.training_flag(nspan),
            Builtin::Assign => self.assign(env, req(0), req(1), nspan),
        };
        result.map_or(Value::Poison, Value::T)
    }

    /// The value, or `None` after reporting the error.
    fn report<T>(&mut self, r: Result<T, Diag>) -> Option<T> {
        r.map_err(|d| self.diags.push(d)).ok()
    }

    /// Evaluates tensor operands and broadcasts them to one shape.
    fn elementwise(
        &mut self,
        env: &mut Env<'a>,
        exprs: &[&'a Expr],
        what: &str,
        span: Span,
    ) -> Option<Vec<Node>> {
        let mut ops = Vec::new();
        for e in exprs {
            ops.push(self.tensor_expr(env, e).map(|n| (n, e.span)));
        }
        let ops: Option<Vec<(Node, Span)>> = ops.into_iter().collect();
        self.broadcast_all(&ops?, what, None, span)
    }

    fn reduce(
        &mut self,
        env: &mut Env<'a>,
        op: ReduceOp,
        x: &'a Expr,
        axis: Option<&'a Expr>,
        keep: Option<&'a Expr>,
        span: Span,
    ) -> Option<Node> {
        let n = self.tensor_expr(env, x)?;
        let shape = self.g.shape(n).clone();
        let rank = shape.len();
        let mut axes: Vec<usize> = match axis {
            None => (0..rank).collect(),
            Some(e) => {
                let raw = match const_ints(e, "`axis`", "axis = 1") {
                    Ok(r) => r,
                    Err(d) => {
                        self.diags.push(d);
                        return None;
                    }
                };
                let mut out = Vec::new();
                for a in raw {
                    match shape::normalize_axis(a, rank) {
                        Some(ax) if !out.contains(&ax) => out.push(ax),
                        Some(_) => {
                            self.diags.push(
                                diag::error(code::AXIS, format!("axis {a} is listed twice"))
                                    .with_labels(vec![e.span.primary("repeated axis")]),
                            );
                            return None;
                        }
                        None => {
                            let shown = self.g.shape_str(&shape);
                            self.diags.push(axis_error(a, &shown, rank, e, x));
                            return None;
                        }
                    }
                }
                out
            }
        };
        axes.sort_unstable();
        let keepdims = match keep.map(|k| const_bool(k, "`keepdims`")) {
            None => false,
            Some(Ok(b)) => b,
            Some(Err(d)) => {
                self.diags.push(d);
                return None;
            }
        };
        let r = self.add(
            Op::Reduce {
                op,
                arg: n,
                axes: axes.clone(),
            },
            span,
        )?;
        if !keepdims {
            return Some(r);
        }
        let kept: Shape = shape
            .iter()
            .enumerate()
            .map(|(i, d)| if axes.contains(&i) { Dim::Known(1) } else { *d })
            .collect();
        self.add(Op::Reshape(r, kept), span)
    }

    fn reshape(&mut self, env: &mut Env<'a>, x: &'a Expr, s: &'a Expr, span: Span) -> Option<Node> {
        let n = self.tensor_expr(env, x)?;
        let target = match self.shape_arg(env, s) {
            Ok(t) => t,
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        let from = self.g.shape(n).clone();
        if shape::element_count(&from) != shape::element_count(&target) {
            let (fs, ts) = (self.g.shape_str(&from), self.g.shape_str(&target));
            self.diags.push(
                diag::error(code::RESHAPE, format!("cannot reshape {fs} into {ts}"))
                    .with_labels(vec![
                        s.span.primary(format!("target {ts}")),
                        x.span.secondary(format!("this has shape {fs}")),
                    ])
                    .with_notes(vec!["note: a reshape keeps the number of elements".into()]),
            );
            return None;
        }
        self.add(Op::Reshape(n, target), span)
    }

    fn transpose(
        &mut self,
        env: &mut Env<'a>,
        x: &'a Expr,
        perm: Option<&'a Expr>,
        span: Span,
    ) -> Option<Node> {
        let n = self.tensor_expr(env, x)?;
        let rank = self.g.shape(n).len();
        let perm: Vec<usize> = match perm {
            None if rank < 2 => {
                self.diags.push(
                    diag::error(
                        code::RANK,
                        format!(
                            "rank mismatch: `transpose` needs rank 2 or more, found rank {rank}"
                        ),
                    )
                    .with_labels(vec![x
                        .span
                        .primary(format!("this has shape {}", self.shape_str(n)))]),
                );
                return None;
            }
            None => {
                let mut p: Vec<usize> = (0..rank).collect();
                p.swap(rank - 2, rank - 1);
                p
            }
            Some(e) => {
                let raw = match const_ints(e, "`perm`", "perm = [1, 0]") {
                    Ok(r) => r,
                    Err(d) => {
                        self.diags.push(d);
                        return None;
                    }
                };
                let mut sorted = raw.clone();
                sorted.sort_unstable();
                if sorted != (0..rank as i64).collect::<Vec<_>>() {
                    self.diags.push(
                        diag::error(
                            code::CONST_ARG,
                            format!("`perm` must be a permutation of 0..{rank}"),
                        )
                        .with_labels(vec![
                            e.span.primary("not a permutation"),
                            x.span
                                .secondary(format!("this has shape {}", self.shape_str(n))),
                        ]),
                    );
                    return None;
                }
                raw.into_iter().map(|p| p as usize).collect()
            }
        };
        self.add(Op::Transpose(n, perm), span)
    }

    /// A compile-time shape: `[B, 8]`, where names are dimensions bound in
    /// this function instance (or by inputs, outside functions).
    fn shape_arg(&self, env: &Env<'a>, e: &Expr) -> Result<Shape, Diag> {
        let ExprKind::Tensor(items) = &e.kind else {
            return Err(not_const(e, "a shape", "[B, 8]"));
        };
        let mut out = Vec::new();
        for it in items {
            match &it.kind {
                ExprKind::Number(_, Some(n)) => out.push(Dim::Known(*n)),
                ExprKind::Number(..) => {
                    return Err(diag::error(code::CONST_ARG, "a dimension must be a whole number")
                        .with_labels(vec![it.span.primary("not a whole number written in digits")])
                        .with_notes(vec!["help: write a dimension as digits, e.g. `[64, 10]`; a dimension holds at most 2^64 - 1".into()]))
                }
                ExprKind::Name(i) => match env.dims.get(&i.name) {
                    Some(Bound::One(d)) => out.push(*d),
                    Some(Bound::Many(ds)) => out.extend(ds),
                    None => {
                        return Err(diag::error(code::UNBOUND_DIM, format!("unbound symbolic dimension `{}`", i.name))
                            .with_labels(vec![i.span.primary(format!("`{}` is not a dimension bound here", i.name))])
                            .with_notes(vec!["help: a dimension name must first appear in a parameter's type (or, outside functions, in an `input`'s type)".into()]))
                    }
                },
                _ => return Err(not_const(it, "a dimension", "[B, 8]")),
            }
        }
        Ok(out)
    }
}
