//! The typing rules: the type of every [`Op`] from its arguments' types,
//! run when a node is added ([`Graph::add`]), so a built graph is always
//! typed.

use super::{shape, Dim, Graph, Node, Op, Shape, Type};

/// A typing rule was broken. Sema checks every user-facing rule before it
/// adds a node, so this is a compiler bug, reported as an internal error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("ill-typed {op}: {reason}")]
pub struct TypeError {
    pub op: &'static str,
    pub reason: String,
}

pub(super) fn bad(op: &'static str, reason: impl Into<String>) -> TypeError {
    TypeError {
        op,
        reason: reason.into(),
    }
}

impl Graph {
    /// The typing rules, one arm per [`Op`] variant.
    pub fn infer(&self, op: &Op) -> Result<Type, TypeError> {
        for a in op.args() {
            if !self.nodes.is_valid(a) {
                return Err(bad("op", format!("argument {a} does not exist")));
            }
        }
        let same = |name: &'static str, a: Node, b: Node| {
            if self.ty(a) == self.ty(b) {
                Ok(self.ty(a).clone())
            } else {
                Err(bad(name, "operands differ in type"))
            }
        };
        Ok(match op {
            Op::Input(i) => match self.inputs.get(*i) {
                Some(info) => info.ty.clone(),
                None => return Err(bad("input", "no such input")),
            },
            Op::Param(p) => match self.params.get(*p) {
                Some(info) => Type::f32(info.shape.iter().map(|&d| Dim::Known(d)).collect()),
                None => return Err(bad("param", "no such parameter")),
            },
            Op::Const(c) => match self.consts.get(*c) {
                Some(t) => Type::f32(t.shape.iter().map(|&d| Dim::Known(d as u64)).collect()),
                None => return Err(bad("const", "no such constant")),
            },
            Op::Fill { shape, .. } => Type::f32(shape.clone()),
            Op::Random { shape, key, .. } => {
                if self.shape(*key) != &[Dim::Known(2)] {
                    return Err(bad("random", "the key must have shape [2]"));
                }
                Type::f32(shape.clone())
            }
            Op::Unary(_, a) => self.ty(*a).clone(),
            Op::Binary(_, a, b) => same("binary", *a, *b)?,
            Op::Compare(_, a, b) => same("compare", *a, *b)?,
            Op::Select(c, a, b) => {
                same("select", *c, *a)?;
                same("select", *a, *b)?
            }
            Op::AdamMoment { old, new, .. } => same("adam moment", *old, *new)?,
            op @ Op::AdamStep { w, .. } => {
                for a in op.args() {
                    same("adam step", *w, a)?;
                }
                self.ty(*w).clone()
            }
            Op::Reduce { arg, axes, .. } => {
                let shape = self.shape(*arg);
                let sorted = axes.windows(2).all(|w| w[0] < w[1]);
                if !sorted || axes.iter().any(|&a| a >= shape.len()) {
                    return Err(bad(
                        "reduce",
                        format!("axes {axes:?} invalid for rank {}", shape.len()),
                    ));
                }
                let kept = shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| *d)
                    .collect();
                Type::f32(kept)
            }
            Op::MatMul(a, b) => {
                let (sa, sb) = (self.shape(*a), self.shape(*b));
                let (ra, rb) = (sa.len(), sb.len());
                if ra < 2 || ra != rb {
                    return Err(bad("matmul", "operands must have equal rank >= 2"));
                }
                if sa[..ra - 2] != sb[..rb - 2] || sa[ra - 1] != sb[rb - 2] {
                    return Err(bad("matmul", "dimensions do not line up"));
                }
                let mut out = sa[..ra - 1].to_vec();
                out.push(sb[rb - 1]);
                Type::f32(out)
            }
            Op::Reshape(a, shape) => {
                if shape::element_count(self.shape(*a)) != shape::element_count(shape) {
                    return Err(bad("reshape", "element counts differ"));
                }
                Type::f32(shape.clone())
            }
            Op::Transpose(a, perm) => {
                let s = self.shape(*a);
                let mut seen = vec![false; s.len()];
                for &p in perm {
                    if p >= s.len() || std::mem::replace(&mut seen[p], true) {
                        return Err(bad("transpose", "not a permutation"));
                    }
                }
                if perm.len() != s.len() {
                    return Err(bad("transpose", "not a permutation"));
                }
                Type::f32(perm.iter().map(|&p| s[p]).collect())
            }
            Op::Broadcast(a, shape) => {
                if !shape::broadcasts_to(self.shape(*a), shape) {
                    return Err(bad("broadcast", "operand does not broadcast to the target"));
                }
                Type::f32(shape.clone())
            }
            Op::Conv2d {
                x,
                w,
                stride,
                padding,
            } => {
                let (sx, sw) = (self.nchw("conv2d", *x)?, self.nchw("conv2d", *w)?);
                if sx[1] != sw[1] {
                    return Err(bad("conv2d", "input and kernel channels differ"));
                }
                let kernel = known_hw("conv2d", sw)?;
                let out = conv_hw("conv2d", known_hw("conv2d", sx)?, kernel, *stride, *padding)?;
                Type::f32(vec![sx[0], sw[0], Dim::Known(out[0]), Dim::Known(out[1])])
            }
            Op::Conv2dBackwardInput {
                gy,
                w,
                stride,
                padding,
                size,
            } => {
                const OP: &str = "conv2d.backward_input";
                let (sg, sw) = (self.nchw(OP, *gy)?, self.nchw(OP, *w)?);
                if sg[1] != sw[0] {
                    return Err(bad(OP, "gradient and kernel output channels differ"));
                }
                let out = conv_hw(OP, *size, known_hw(OP, sw)?, *stride, *padding)?;
                if known_hw(OP, sg)? != out {
                    return Err(bad(OP, "gradient does not have the convolution's size"));
                }
                Type::f32(vec![sg[0], sw[1], Dim::Known(size[0]), Dim::Known(size[1])])
            }
            Op::Conv2dBackwardWeight {
                x,
                gy,
                stride,
                padding,
                kernel,
            } => {
                const OP: &str = "conv2d.backward_weight";
                let (sx, sg) = (self.nchw(OP, *x)?, self.nchw(OP, *gy)?);
                if sx[0] != sg[0] {
                    return Err(bad(OP, "input and gradient batch sizes differ"));
                }
                let out = conv_hw(OP, known_hw(OP, sx)?, *kernel, *stride, *padding)?;
                if known_hw(OP, sg)? != out {
                    return Err(bad(OP, "gradient does not have the convolution's size"));
                }
                Type::f32(vec![
                    sg[1],
                    sx[1],
                    Dim::Known(kernel[0]),
                    Dim::Known(kernel[1]),
                ])
            }
            Op::Pool2d {
                arg, size, stride, ..
            } => {
                let s = self.nchw("pool2d", *arg)?;
                let out = conv_hw("pool2d", known_hw("pool2d", s)?, [*size; 2], *stride, 0)?;
                Type::f32(vec![s[0], s[1], Dim::Known(out[0]), Dim::Known(out[1])])
            }
            Op::Pool2dBackward {
                op,
                x,
                gy,
                size,
                stride,
            } => {
                let pooled = self.infer(&Op::Pool2d {
                    op: *op,
                    arg: *x,
                    size: *size,
                    stride: *stride,
                })?;
                if self.ty(*gy) != &pooled {
                    return Err(bad(
                        "pool2d.backward",
                        "gradient does not have the pooling's type",
                    ));
                }
                self.ty(*x).clone()
            }
            Op::Slice {
                arg,
                axis,
                start,
                end,
            } => {
                let mut s = self.shape(*arg).clone();
                let Some(&Dim::Known(d)) = s.get(*axis) else {
                    return Err(bad("slice", "axis out of range or not of known size"));
                };
                if start >= end || *end > d {
                    return Err(bad("slice", format!("{start}..{end} out of range for {d}")));
                }
                s[*axis] = Dim::Known(end - start);
                Type::f32(s)
            }
            Op::Concat { a, b, axis } => {
                let (sa, sb) = (self.shape(*a), self.shape(*b));
                let others_equal = sa.len() == sb.len()
                    && sa
                        .iter()
                        .zip(sb)
                        .enumerate()
                        .all(|(i, (x, y))| i == *axis || x == y);
                let (Some(&Dim::Known(da)), Some(&Dim::Known(db)), true) =
                    (sa.get(*axis), sb.get(*axis), others_equal)
                else {
                    return Err(bad("concat", "operands do not line up along the axis"));
                };
                let mut s = sa.clone();
                s[*axis] = Dim::Known(da + db);
                Type::f32(s)
            }
            Op::Gather { table, indices } => {
                let t = self.shape(*table);
                if t.len() != 2 {
                    return Err(bad("gather", "the table must have rank 2"));
                }
                let mut s = self.shape(*indices).clone();
                s.push(t[1]);
                Type::f32(s)
            }
            Op::Scan {
                body,
                init,
                xs,
                args,
                ..
            } => self.infer_scan(*body, *init, xs, args)?,
            Op::ScatterAdd { values, indices, n } => {
                let v = self.shape(*values);
                match v.split_last() {
                    Some((d, lead)) if lead == self.shape(*indices).as_slice() => {
                        Type::f32(vec![*n, *d])
                    }
                    _ => {
                        return Err(bad(
                            "scatter_add",
                            "indices must have the values' leading dims",
                        ))
                    }
                }
            }
        })
    }

    /// The shape of a rank-4 (`[N, C, H, W]`) operand of a window op.
    fn nchw(&self, op: &'static str, n: Node) -> Result<&Shape, TypeError> {
        let s = self.shape(n);
        if s.len() == 4 {
            Ok(s)
        } else {
            Err(bad(op, format!("operand {n} must have rank 4")))
        }
    }
}

/// The last two dims of a rank-4 shape, which must be known.
fn known_hw(op: &'static str, s: &[Dim]) -> Result<[u64; 2], TypeError> {
    match (shape::known(s[2]), shape::known(s[3])) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(bad(op, "spatial dims must be known")),
    }
}

/// The output size of a window op over `input`, or a type error.
fn conv_hw(
    op: &'static str,
    input: [u64; 2],
    window: [u64; 2],
    stride: u64,
    padding: u64,
) -> Result<[u64; 2], TypeError> {
    match (
        shape::window_out(input[0], window[0], stride, padding),
        shape::window_out(input[1], window[1], stride, padding),
    ) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(bad(op, "the window does not fit the input, or stride is 0")),
    }
}
