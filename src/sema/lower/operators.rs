//! The operators: `+ − * / ^` and comparisons with NumPy broadcasting
//! made explicit, and `@` with its batch and vector rules — each shape
//! rule checked with a diagnostic at the operator.

use super::*;

impl<'a> Lowerer<'_, 'a, '_> {
    pub(super) fn broadcast_to(&mut self, n: Node, shape: &Shape, span: Span) -> Option<Node> {
        if self.g.shape(n) == shape {
            return Some(n);
        }
        self.add(Op::Broadcast(n, shape.clone()), span)
    }

    /// Broadcasts operands to their common shape (NumPy rules), reporting
    /// the first clashing pair with both shapes labelled.
    pub(super) fn broadcast_all(
        &mut self,
        operands: &[(Node, Span)],
        what: &str,
        op: Option<Span>,
        span: Span,
    ) -> Option<Vec<Node>> {
        let mut common: Shape = Vec::new();
        let mut from: Option<(Node, Span)> = None;
        for &(n, sp) in operands {
            match shape::broadcast(&common, self.g.shape(n)) {
                Ok(s) => common = s,
                Err(e) => {
                    let (other, osp) = from.unwrap_or((n, sp));
                    let (l, r) = (self.shape_str(other), self.shape_str(n));
                    let axis = e.axis as i64 - common.len().max(self.g.shape(n).len()) as i64;
                    let mut labels = vec![
                        osp.secondary(format!("this has shape {l}")),
                        sp.secondary(format!("this has shape {r}")),
                    ];
                    match op {
                        Some(op) => labels.insert(0, op.primary("shapes do not broadcast")),
                        None => {
                            labels[0].style = codespan_reporting::diagnostic::LabelStyle::Primary
                        }
                    }
                    self.diags.push(
                        diag::error(code::BROADCAST, format!("shapes {l} and {r} cannot be broadcast together in {what}"))
                            .with_labels(labels)
                            .with_notes(vec![
                                format!(
                                    "note: at axis {axis}, {} and {} differ and neither is 1",
                                    self.g.dim_str(e.left),
                                    self.g.dim_str(e.right)
                                ),
                                "help: broadcasting aligns shapes from the right; each pair of dimensions must be equal or one of them 1".into(),
                            ]),
                    );
                    return None;
                }
            }
            if from.is_none() || self.g.shape(n).len() >= common.len() {
                from = Some((n, sp));
            }
        }
        operands
            .iter()
            .map(|&(n, _)| self.broadcast_to(n, &common, span))
            .collect()
    }

    pub(super) fn binary(
        &mut self,
        env: &mut Env<'a>,
        op: BinOp,
        op_span: Span,
        a: &'a Expr,
        b: &'a Expr,
        span: Span,
    ) -> Value<'a> {
        let (x, y) = (self.tensor_expr(env, a), self.tensor_expr(env, b));
        let (Some(x), Some(y)) = (x, y) else {
            return Value::Poison;
        };
        if op == BinOp::MatMul {
            return self.matmul(x, y, a.span, b.span, op_span, span);
        }
        let what = format!("`{}`", op.symbol());
        let Some(v) = self.broadcast_all(&[(x, a.span), (y, b.span)], &what, Some(op_span), span)
        else {
            return Value::Poison;
        };
        let (x, y) = (v[0], v[1]);
        let op = match op {
            BinOp::Add => Op::Binary(BinaryOp::Add, x, y),
            BinOp::Sub => Op::Binary(BinaryOp::Sub, x, y),
            BinOp::Mul => Op::Binary(BinaryOp::Mul, x, y),
            BinOp::Div => Op::Binary(BinaryOp::Div, x, y),
            BinOp::Pow => Op::Binary(BinaryOp::Pow, x, y),
            BinOp::Eq => Op::Compare(CmpOp::Eq, x, y),
            BinOp::Ne => Op::Compare(CmpOp::Ne, x, y),
            BinOp::Lt => Op::Compare(CmpOp::Lt, x, y),
            BinOp::Le => Op::Compare(CmpOp::Le, x, y),
            BinOp::Gt => Op::Compare(CmpOp::Gt, x, y),
            BinOp::Ge => Op::Compare(CmpOp::Ge, x, y),
            BinOp::MatMul => unreachable!("handled above"),
        };
        self.add(op, span).map_or(Value::Poison, Value::T)
    }

    /// `a @ b` with NumPy's rules: a 1-D operand gains a unit dimension
    /// (removed again from the result), batch dimensions broadcast.
    pub(super) fn matmul(
        &mut self,
        a: Node,
        b: Node,
        sa: Span,
        sb: Span,
        at: Span,
        span: Span,
    ) -> Value<'a> {
        // The operands' shapes as a diagnostic shows them, made only for
        // one.
        let shown = |l: &Self| (l.shape_str(a), l.shape_str(b));
        let (mut ash, mut bsh) = (self.g.shape(a).clone(), self.g.shape(b).clone());
        if ash.is_empty() || bsh.is_empty() {
            let (la, lb) = shown(self);
            let (bad, bsp) = if ash.is_empty() { (&la, sa) } else { (&lb, sb) };
            self.diags.push(
                diag::error(
                    code::RANK,
                    "rank mismatch: `@` needs operands of rank 1 or more",
                )
                .with_labels(vec![
                    bsp.primary(format!("this is a scalar ({bad})")),
                    at.secondary("in this matrix product"),
                ])
                .with_notes(vec!["help: use `*` to multiply by a scalar".into()]),
            );
            return Value::Poison;
        }
        let (va, vb) = (ash.len() == 1, bsh.len() == 1);
        if va {
            ash.insert(0, Dim::Known(1));
        }
        if vb {
            bsh.push(Dim::Known(1));
        }
        let (k1, k2) = (ash[ash.len() - 1], bsh[bsh.len() - 2]);
        if k1 != k2 {
            let (la, lb) = shown(self);
            self.diags.push(
                diag::error(code::MATMUL, format!("matrix product dimensions do not match: {la} @ {lb}"))
                    .with_labels(vec![
                        at.primary(format!(
                            "inner dimensions differ: {} vs {}",
                            self.g.dim_str(k1),
                            self.g.dim_str(k2)
                        )),
                        sa.secondary(format!("this has shape {la}")),
                        sb.secondary(format!("this has shape {lb}")),
                    ])
                    .with_notes(vec![
                        "help: `a @ b` needs the last dimension of `a` to equal the second-to-last of `b`".into(),
                    ]),
            );
            return Value::Poison;
        }
        let (ba, bb) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
        let batch = match shape::broadcast(ba, bb) {
            Ok(s) => s,
            Err(_) => {
                let (la, lb) = shown(self);
                self.diags.push(
                    diag::error(
                        code::BROADCAST,
                        format!("batch dimensions of {la} @ {lb} cannot be broadcast together"),
                    )
                    .with_labels(vec![
                        at.primary("in this matrix product"),
                        sa.secondary(format!("this has shape {la}")),
                        sb.secondary(format!("this has shape {lb}")),
                    ]),
                );
                return Value::Poison;
            }
        };
        let full = |m: &Shape| {
            let mut s = batch.clone();
            s.extend_from_slice(&m[m.len() - 2..]);
            s
        };
        let (fa, fb) = (full(&ash), full(&bsh));
        let Some(a) = self.reshape_then_broadcast(a, &ash, &fa, span) else {
            return Value::Poison;
        };
        let Some(b) = self.reshape_then_broadcast(b, &bsh, &fb, span) else {
            return Value::Poison;
        };
        let Some(mut out) = self.add(Op::MatMul(a, b), span) else {
            return Value::Poison;
        };
        if va || vb {
            let mut s = self.g.shape(out).clone();
            if vb {
                s.pop();
            }
            if va {
                s.remove(s.len() - 1 - usize::from(!vb));
            }
            match self.add(Op::Reshape(out, s), span) {
                Some(n) => out = n,
                None => return Value::Poison,
            }
        }
        Value::T(out)
    }

    pub(super) fn reshape_then_broadcast(
        &mut self,
        n: Node,
        shape: &Shape,
        target: &Shape,
        span: Span,
    ) -> Option<Node> {
        let mut n = n;
        if self.g.shape(n) != shape {
            n = self.add(Op::Reshape(n, shape.clone()), span)?;
        }
        self.broadcast_to(n, target, span)
    }
}
