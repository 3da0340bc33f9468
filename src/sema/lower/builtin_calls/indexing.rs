//! Calls of the builtins that pick and place elements: `slice` and
//! `concat` with static bounds, and `gather` and `scatter_add`, whose
//! indices are tensors checked when the graph runs.

use super::*;

const SLICE_NOTE: &str =
    "note: `start` and `end` count from 0, or from the end when negative; `end` is exclusive";
const SCATTER_NOTE: &str =
    "note: `scatter_add(values, indices, n)` takes the values as [..S, D] and the indices as [..S]";

impl<'a> Lowerer<'_, 'a, '_> {
    /// `slice(x, axis, start = 0, end = the axis's size)`.
    pub(super) fn slice(
        &mut self,
        env: &mut Env<'a>,
        x: &'a Expr,
        axis: &'a Expr,
        [start, end]: [Option<&'a Expr>; 2],
        span: Span,
    ) -> Option<Node> {
        let n = self.tensor_expr(env, x);
        let a = self.report(const_int(axis, "`axis`", "axis = 1"));
        let bound =
            |e: Option<&Expr>, what, example| e.map(|e| const_int(e, what, example)).transpose();
        let s = self.report(bound(start, "`start`", "start = 1"));
        let e = self.report(bound(end, "`end`", "end = -1"));
        let (n, a, s, e) = (n?, a?, s?, e?);
        let shape = self.g.shape(n).clone();
        let shown = self.g.shape_str(&shape);
        let Some(ax) = shape::normalize_axis(a, shape.len()) else {
            self.diags.push(axis_error(a, &shown, shape.len(), axis, x));
            return None;
        };
        let d = match shape[ax] {
            Dim::Known(d) => d as i64,
            Dim::Sym(_) => {
                self.diags
                    .push(self.unknown_axis("slice along", a, shape[ax], axis, x, &shown));
                return None;
            }
        };
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (st, en) = (norm(s.unwrap_or(0)), e.map_or(d, norm));
        let (start_ok, end_ok) = ((0..d).contains(&st), (1..=d).contains(&en));
        if start_ok && end_ok && st < en {
            return self.add(
                Op::Slice {
                    arg: n,
                    axis: ax,
                    start: st as u64,
                    end: en as u64,
                },
                span,
            );
        }
        let written = format!(
            "{}..{}",
            s.unwrap_or(0),
            e.map_or(d.to_string(), |v| v.to_string())
        );
        let (msg, at, label) = if !start_ok || !end_ok {
            let bad = if start_ok { end } else { start };
            (
                format!("slice {written} is out of range for axis {a} of size {d}"),
                bad,
                format!("{written} for a size of {d}"),
            )
        } else {
            (
                format!("slice {written} of axis {a} is empty"),
                end,
                format!("{written} holds no elements"),
            )
        };
        let at = at.or(start).or(end).unwrap_or(axis);
        self.diags.push(
            diag::error(code::SLICE, msg)
                .with_labels(vec![
                    at.span.primary(label),
                    x.span.secondary(format!("this has shape {shown}")),
                ])
                .with_notes(vec![SLICE_NOTE.into()]),
        );
        None
    }

    /// `concat(a, b, axis = 0)`.
    pub(super) fn concat(
        &mut self,
        env: &mut Env<'a>,
        a: &'a Expr,
        b: &'a Expr,
        axis: Option<&'a Expr>,
        span: Span,
    ) -> Option<Node> {
        let (an, bn) = (self.tensor_expr(env, a), self.tensor_expr(env, b));
        let ax = self.report(axis.map(|e| const_int(e, "`axis`", "axis = 0")).transpose());
        let (an, bn, ax) = (an?, bn?, ax?.unwrap_or(0));
        let (sa, sb) = (self.g.shape(an).clone(), self.g.shape(bn).clone());
        let (la, lb) = (self.g.shape_str(&sa), self.g.shape_str(&sb));
        if sa.len() != sb.len() {
            self.diags.push(
                diag::error(
                    code::RANK,
                    format!(
                        "rank mismatch: `concat` needs operands of equal rank, found {} and {}",
                        sa.len(),
                        sb.len()
                    ),
                )
                .with_labels(vec![
                    b.span.primary(format!("this has shape {lb}")),
                    a.span.secondary(format!("this has shape {la}")),
                ]),
            );
            return None;
        }
        let Some(k) = shape::normalize_axis(ax, sa.len()) else {
            self.diags
                .push(axis_error(ax, &la, sa.len(), axis.unwrap_or(a), a));
            return None;
        };
        if let Some(i) = (0..sa.len()).find(|&i| i != k && sa[i] != sb[i]) {
            self.diags.push(
                diag::error(
                    code::SLICE,
                    format!("shapes {la} and {lb} cannot be concatenated along axis {ax}"),
                )
                .with_labels(vec![
                    b.span.primary(format!("this has shape {lb}")),
                    a.span.secondary(format!("this has shape {la}")),
                ])
                .with_notes(vec![format!(
                    "note: at axis {i}, {} and {} differ; every axis but the one concatenated along must match",
                    self.g.dim_str(sa[i]),
                    self.g.dim_str(sb[i])
                )]),
            );
            return None;
        }
        for (d, e, shown) in [(sa[k], a, &la), (sb[k], b, &lb)] {
            if shape::known(d).is_none() {
                let at = axis.unwrap_or(e);
                self.diags
                    .push(self.unknown_axis("concatenate along", ax, d, at, e, shown));
                return None;
            }
        }
        self.add(
            Op::Concat {
                a: an,
                b: bn,
                axis: k,
            },
            span,
        )
    }

    /// `gather(table, indices)`.
    pub(super) fn gather(
        &mut self,
        env: &mut Env<'a>,
        table: &'a Expr,
        indices: &'a Expr,
        span: Span,
    ) -> Option<Node> {
        let (tn, idx) = (self.tensor_expr(env, table), self.tensor_expr(env, indices));
        let (tn, idx) = (tn?, idx?);
        let rank = self.g.shape(tn).len();
        if rank != 2 {
            self.diags.push(
                diag::error(
                    code::RANK,
                    format!("rank mismatch: the table of `gather` has rank {rank}, expected rank 2"),
                )
                .with_labels(vec![table
                    .span
                    .primary(format!("this has shape {}", self.shape_str(tn)))])
                .with_notes(vec![
                    "note: `gather(table, indices)` takes the table as [V, D] and picks row `i` for each index `i`".into(),
                ]),
            );
            return None;
        }
        self.add(
            Op::Gather {
                table: tn,
                indices: idx,
            },
            span,
        )
    }

    /// `scatter_add(values, indices, n)`.
    pub(super) fn scatter_add(
        &mut self,
        env: &mut Env<'a>,
        values: &'a Expr,
        indices: &'a Expr,
        n: &'a Expr,
        span: Span,
    ) -> Option<Node> {
        let (vn, idx) = (
            self.tensor_expr(env, values),
            self.tensor_expr(env, indices),
        );
        let n = self.report(dim_arg(env, n));
        let (vn, idx, n) = (vn?, idx?, n?);
        let (vs, is) = (self.g.shape(vn).clone(), self.g.shape(idx).clone());
        let Some((_, lead)) = vs.split_last() else {
            self.diags.push(
                diag::error(
                    code::RANK,
                    "rank mismatch: the values of `scatter_add` have rank 0, expected rank 1 or more",
                )
                .with_labels(vec![values.span.primary("this is a scalar")])
                .with_notes(vec![SCATTER_NOTE.into()]),
            );
            return None;
        };
        if lead != is.as_slice() {
            let (ls, iss, vss) = (
                self.g.shape_str(lead),
                self.g.shape_str(&is),
                self.g.shape_str(&vs),
            );
            self.diags.push(
                diag::error(
                    code::ARG_SHAPE,
                    format!("the indices of `scatter_add` have shape {iss}, expected {ls}"),
                )
                .with_labels(vec![
                    indices.span.primary(format!("this has shape {iss}")),
                    values
                        .span
                        .secondary(format!("the values have shape {vss}")),
                ])
                .with_notes(vec![SCATTER_NOTE.into()]),
            );
            return None;
        }
        self.add(
            Op::ScatterAdd {
                values: vn,
                indices: idx,
                n,
            },
            span,
        )
    }

    /// The error for an axis whose size is symbolic where it must be known.
    fn unknown_axis(&self, verb: &str, a: i64, d: Dim, at: &Expr, x: &Expr, shown: &str) -> Diag {
        diag::error(
            code::SLICE,
            format!(
                "cannot {verb} axis {a}: its size `{}` is not known at compile time",
                self.g.dim_str(d)
            ),
        )
        .with_labels(vec![
            at.span.primary(format!("axis {a}")),
            x.span.secondary(format!("this has shape {shown}")),
        ])
    }
}

/// A compile-time dimension: a whole number of at least 1, or a dimension
/// name bound in this function instance (or by an input).
fn dim_arg(env: &Env, e: &Expr) -> Result<Dim, Diag> {
    match &e.kind {
        ExprKind::Number(..) => const_count(Some(e), "`n`", "n = 10", 0, 1).map(Dim::Known),
        ExprKind::Name(i) => match env.dims.get(&i.name) {
            Some(Bound::One(d)) => Ok(*d),
            Some(Bound::Many(_)) => Err(diag::error(
                code::CONST_ARG,
                format!("`{}` stands for several dimensions, and `n` is one", i.name),
            )
            .with_labels(vec![i.span.primary("bound by a `..` in a type")])),
            None => Err(diag::error(
                code::UNBOUND_DIM,
                format!("unbound symbolic dimension `{}`", i.name),
            )
            .with_labels(vec![i
                .span
                .primary(format!("`{}` is not a dimension bound here", i.name))])
            .with_notes(vec![
                "help: a dimension name must first appear in a parameter's type (or, outside functions, in an `input`'s type)".into(),
            ])),
        },
        _ => Err(not_const(e, "`n`", "n = 10")),
    }
}
