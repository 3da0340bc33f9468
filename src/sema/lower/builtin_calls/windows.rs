//! Calls of the window builtins, `conv2d`, `max_pool2d` and `avg_pool2d`.
//! Their operands are `[N, C, H, W]` tensors (NCHW) whose spatial dims are
//! known at compile time; each window must fit its (padded) input.

use super::*;

impl<'a> Lowerer<'_, 'a, '_> {
    /// `conv2d(x, w, stride = 1, padding = 0)`.
    pub(super) fn conv2d(
        &mut self,
        env: &mut Env<'a>,
        [x, w]: [&'a Expr; 2],
        stride: Option<&'a Expr>,
        padding: Option<&'a Expr>,
        span: Span,
    ) -> Option<Node> {
        let (xn, wn) = (self.tensor_expr(env, x), self.tensor_expr(env, w));
        let stride = self.report(const_count(stride, "`stride`", "stride = 2", 1, 1));
        let padding = self.report(const_count(padding, "`padding`", "padding = 1", 0, 0));
        let xs = xn.and_then(|n| self.rank4(n, x, "conv2d", "the input", "[N, C, H, W]"));
        let ws = wn.and_then(|n| self.rank4(n, w, "conv2d", "the kernel", "[O, C, KH, KW]"));
        let (xn, wn, xs, ws, stride, padding) = (xn?, wn?, xs?, ws?, stride?, padding?);
        if xs[1] != ws[1] {
            let (xstr, wstr) = (self.g.shape_str(&xs), self.g.shape_str(&ws));
            let (c, k) = (self.g.dim_str(xs[1]), self.g.dim_str(ws[1]));
            self.diags.push(
                diag::error(
                    code::ARG_SHAPE,
                    format!(
                        "channel mismatch in `conv2d`: the input has {c} channels but the kernel expects {k}"
                    ),
                )
                .with_labels(vec![
                    w.span.primary(format!("this has shape {wstr} ({k} input channels)")),
                    x.span.secondary(format!("this has shape {xstr} ({c} channels)")),
                ])
                .with_notes(vec![
                    "note: `conv2d(x, w)` takes `x` as [N, C, H, W] and `w` as [O, C, KH, KW], with the same `C`".into(),
                ]),
            );
            return None;
        }
        let (hw, k) = (
            self.spatial(&xs, x, "conv2d"),
            self.spatial(&ws, w, "conv2d"),
        );
        let (hw, k) = (hw?, k?);
        if (0..2).any(|i| shape::window_out(hw[i], k[i], stride, padding).is_none()) {
            let padded = [hw[0] + 2 * padding, hw[1] + 2 * padding];
            let xstr = self.g.shape_str(&xs);
            let with_pad = if padding > 0 {
                format!(" ({}×{} once padded by {padding})", padded[0], padded[1])
            } else {
                String::new()
            };
            self.diags.push(
                diag::error(
                    code::WINDOW,
                    format!(
                        "the kernel of `conv2d` is larger than its padded input: [{}, {}] against [{}, {}]",
                        k[0], k[1], padded[0], padded[1]
                    ),
                )
                .with_labels(vec![
                    w.span.primary(format!("a {}×{} kernel", k[0], k[1])),
                    x.span.secondary(format!("this has shape {xstr}{with_pad}")),
                ])
                .with_notes(vec![
                    "note: along each spatial axis the output has (size + 2·padding − kernel) / stride + 1 elements, which must be at least 1".into(),
                ]),
            );
            return None;
        }
        self.add(
            Op::Conv2d {
                x: xn,
                w: wn,
                stride,
                padding,
            },
            span,
        )
    }

    /// `max_pool2d(x, size, stride = size)` and `avg_pool2d(…)`.
    pub(super) fn pool2d(
        &mut self,
        env: &mut Env<'a>,
        op: PoolOp,
        x: &'a Expr,
        size: &'a Expr,
        stride: Option<&'a Expr>,
        span: Span,
    ) -> Option<Node> {
        let name = match op {
            PoolOp::Max => "max_pool2d",
            PoolOp::Avg => "avg_pool2d",
        };
        let xn = self.tensor_expr(env, x);
        let k = self.report(const_count(Some(size), "`size`", "size = 2", 1, 1));
        let stride = self.report(const_count(
            stride,
            "`stride`",
            "stride = 2",
            k.unwrap_or(1),
            1,
        ));
        let xs = self.rank4(xn?, x, name, "the input", "[N, C, H, W]")?;
        let hw = self.spatial(&xs, x, name)?;
        let (k, stride) = (k?, stride?);
        if hw[0] < k || hw[1] < k {
            let xstr = self.g.shape_str(&xs);
            self.diags.push(
                diag::error(
                    code::WINDOW,
                    format!(
                        "the window of `{name}` is larger than its input: [{k}, {k}] against [{}, {}]",
                        hw[0], hw[1]
                    ),
                )
                .with_labels(vec![
                    size.span.primary(format!("a {k}×{k} window")),
                    x.span.secondary(format!("this has shape {xstr}")),
                ])
                .with_notes(vec!["note: pooling does not pad its input".into()]),
            );
            return None;
        }
        let n = xn?;
        self.add(
            Op::Pool2d {
                op,
                arg: n,
                size: k,
                stride,
            },
            span,
        )
    }

    /// The shape of a rank-4 operand, or an error.
    fn rank4(&mut self, n: Node, e: &Expr, op: &str, what: &str, layout: &str) -> Option<Shape> {
        let s = self.g.shape(n).clone();
        if s.len() == 4 {
            return Some(s);
        }
        self.diags.push(
            diag::error(
                code::RANK,
                format!(
                    "rank mismatch: {what} of `{op}` has rank {}, expected rank 4",
                    s.len()
                ),
            )
            .with_labels(vec![e
                .span
                .primary(format!("this has shape {}", self.g.shape_str(&s)))])
            .with_notes(vec![format!("note: `{op}` takes {what} as {layout}")]),
        );
        None
    }

    /// The spatial dims `[H, W]` of a rank-4 shape, which must be known.
    fn spatial(&mut self, s: &Shape, e: &Expr, op: &str) -> Option<[u64; 2]> {
        if let (Some(h), Some(w)) = (shape::known(s[2]), shape::known(s[3])) {
            return Some([h, w]);
        }
        self.diags.push(
            diag::error(
                code::WINDOW,
                format!(
                    "the spatial dimensions of `{op}`'s operands must be known at compile time"
                ),
            )
            .with_labels(vec![e
                .span
                .primary(format!("this has shape {}", self.g.shape_str(s)))])
            .with_notes(vec![
                "help: only the batch and channel dimensions may be symbolic".into(),
            ]),
        );
        None
    }
}
