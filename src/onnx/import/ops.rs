//! The translation of each ONNX operator (a `let` of the `.nn` file, or
//! a value known at import time), and the patterns written as the
//! standard library's layers (`dense`, `conv2d`).

use super::values::*;
use super::{node_error, pb, Translator};
use crate::diag::Diag;

impl Translator {
    pub(super) fn node(
        &mut self,
        g: &pb::GraphProto,
        i: usize,
        n: &pb::NodeProto,
        opset: i64,
    ) -> Result<(), Diag> {
        let op = n.op_type.clone().unwrap_or_default();
        let attrs = Attrs(&n.attribute);
        let out = n.output.first().cloned().unwrap_or_default();
        let mut args = Vec::new();
        for name in &n.input {
            if name.is_empty() {
                args.push(None);
            } else {
                args.push(Some(self.value(name).map_err(|e| node_error(n, e))?));
            }
        }
        let arg = |k: usize| -> Result<Value, Diag> {
            args.get(k)
                .cloned()
                .flatten()
                .ok_or_else(|| node_error(n, format!("input {k} is missing")))
        };
        let err = |msg: String| node_error(n, msg);
        match op.as_str() {
            "Identity" | "Dropout" => {
                let v = arg(0)?;
                self.values.insert(out, v);
            }
            "Cast" => {
                use pb::tensor_proto::DataType as T;
                let to = T::try_from(attrs.int("to", 1) as i32).unwrap_or(T::Undefined);
                let v = arg(0)?;
                let v = match (v, to) {
                    (Value::Ints { shape, data }, T::Float | T::Double) => {
                        match ints_as_floats(&data) {
                            Some(d) => Value::Floats { shape, data: d },
                            None => {
                                return Err(err("a cast of a symbolic dimension to float".into()))
                            }
                        }
                    }
                    (Value::Floats { shape, data }, T::Int64 | T::Int32) => Value::Ints {
                        shape,
                        data: data.iter().map(|&v| Dim::N(v as i64)).collect(),
                    },
                    // nnc computes in f32 and keeps indices and masks as floats.
                    (v, _) => v,
                };
                self.values.insert(out, v);
            }
            "Constant" => {
                let v = constant(&attrs).map_err(err)?;
                self.values.insert(out, v);
            }
            "ConstantOfShape" => {
                let shape =
                    known_dims(&arg(0)?).ok_or_else(|| err("its shape is not constant".into()))?;
                let v = match attrs.get("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor_values(t)
                        .map_err(err)?
                        .1
                        .first()
                        .copied()
                        .unwrap_or(0.0) as f32,
                    None => 0.0,
                };
                match static_shape(&shape) {
                    Some(s) => {
                        let n = numel(&s);
                        self.values.insert(
                            out,
                            Value::Floats {
                                shape: s,
                                data: vec![v; n],
                            },
                        );
                    }
                    None => {
                        let e = if v == 0.0 {
                            format!("zeros({})", shape_text(&shape))
                        } else {
                            format!("full({}, {})", shape_text(&shape), number(v))
                        };
                        self.bind(&out, e, shape);
                    }
                }
            }
            "Shape" => {
                let s = arg(0)?.shape();
                let r = s.len() as i64;
                let norm = |a: i64| (if a < 0 { a + r } else { a }).clamp(0, r) as usize;
                let start = norm(attrs.int("start", 0));
                let end = norm(attrs.int("end", r));
                let data: Vec<Dim> = s[start..end.max(start)].to_vec();
                self.values.insert(
                    out,
                    Value::Ints {
                        shape: vec![data.len()],
                        data,
                    },
                );
            }
            "Gather" => self.gather(n, &out, arg(0)?, arg(1)?, attrs.int("axis", 0))?,
            "Scan" => self.scan(n, &args, opset)?,
            "ScatterND" => self.scatter_nd(n, &out, arg(0)?, arg(1)?, arg(2)?)?,
            "Unsqueeze" | "Squeeze" => {
                let axes = match (opset >= 13, args.get(1).cloned().flatten()) {
                    (true, Some(v)) => Some(
                        known_ints(&v).ok_or_else(|| err("its axes are not constant".into()))?,
                    ),
                    (true, None) => None,
                    (false, _) => attrs.ints("axes"),
                };
                let v = arg(0)?;
                let s = v.shape();
                let new = if op == "Unsqueeze" {
                    let axes = axes.ok_or_else(|| err("no axes".into()))?;
                    let rank = s.len() + axes.len();
                    let mut ax: Vec<usize> = axes
                        .iter()
                        .map(|&a| {
                            axis(a, rank).ok_or_else(|| err(format!("axis {a} out of range")))
                        })
                        .collect::<Result<_, _>>()?;
                    ax.sort();
                    let mut it = s.iter();
                    (0..rank)
                        .map(|k| {
                            if ax.contains(&k) {
                                Dim::N(1)
                            } else {
                                it.next().cloned().unwrap_or(Dim::N(1))
                            }
                        })
                        .collect::<Shape>()
                } else {
                    let ax: Vec<usize> = match axes {
                        Some(a) => a
                            .iter()
                            .map(|&a| {
                                axis(a, s.len())
                                    .ok_or_else(|| err(format!("axis {a} out of range")))
                            })
                            .collect::<Result<_, _>>()?,
                        None => (0..s.len()).filter(|&k| s[k] == Dim::N(1)).collect(),
                    };
                    s.iter()
                        .enumerate()
                        .filter(|(k, _)| !ax.contains(k))
                        .map(|(_, d)| d.clone())
                        .collect()
                };
                self.reshaped(&out, v, new);
            }
            "Concat" => {
                let ax = attrs.int("axis", 0);
                let vals: Vec<Value> = (0..n.input.len()).map(arg).collect::<Result<_, _>>()?;
                self.concat(n, &out, vals, ax)?;
            }
            "Expand" => {
                let v = arg(0)?;
                let target =
                    known_dims(&arg(1)?).ok_or_else(|| err("its shape is not constant".into()))?;
                let shape = broadcast(&v.shape(), &target)
                    .ok_or_else(|| err("shapes do not broadcast".into()))?;
                match v {
                    Value::Floats { data, .. } if data.iter().all(|&x| x == data[0]) => {
                        match static_shape(&shape) {
                            Some(s) => {
                                let n = numel(&s);
                                self.values.insert(
                                    out,
                                    Value::Floats {
                                        shape: s,
                                        data: vec![data[0]; n],
                                    },
                                );
                            }
                            None => {
                                let e = if data[0] == 0.0 {
                                    format!("zeros({})", shape_text(&shape))
                                } else {
                                    format!("full({}, {})", shape_text(&shape), number(data[0]))
                                };
                                self.bind(&out, e, shape);
                            }
                        }
                    }
                    v => {
                        let x = self.operand(&v, &out);
                        self.bind(&out, format!("{x} * ones({})", shape_text(&shape)), shape);
                    }
                }
            }
            "Reshape" => {
                let v = arg(0)?;
                let spec =
                    known_dims(&arg(1)?).ok_or_else(|| err("its shape is not constant".into()))?;
                let new = reshape_target(&v.shape(), &spec, attrs.int("allowzero", 0) != 0)
                    .map_err(err)?;
                self.reshaped(&out, v, new);
            }
            "Flatten" => {
                let v = arg(0)?;
                let s = v.shape();
                let k = axis(attrs.int("axis", 1), s.len() + 1)
                    .ok_or_else(|| err("axis out of range".into()))?;
                let new = vec![
                    product(&s[..k]).map_err(err)?,
                    product(&s[k..]).map_err(err)?,
                ];
                self.reshaped(&out, v, new);
            }
            "Transpose" => {
                let v = arg(0)?;
                let s = v.shape();
                let perm: Vec<usize> = match attrs.ints("perm") {
                    Some(p) => p.iter().map(|&a| a as usize).collect(),
                    None => (0..s.len()).rev().collect(),
                };
                if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len()) {
                    return Err(err(format!("permutation {perm:?} for rank {}", s.len())));
                }
                let shape = perm.iter().map(|&p| s[p].clone()).collect();
                let x = self.operand(&v, &out);
                let p: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
                self.bind(&out, format!("transpose({x}, [{}])", p.join(", ")), shape);
            }
            "Gemm" => self.gemm(g, i, n, &attrs)?,
            "MatMul" => self.matmul(g, i, n)?,
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Equal" | "Less"
            | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
                let (a, b) = (arg(0)?, arg(1)?);
                if args.len() > 2 {
                    return Err(err(format!("{} inputs (nnc translates two)", args.len())));
                }
                if let (
                    Value::Floats {
                        shape: sa,
                        data: da,
                    },
                    Value::Floats {
                        shape: sb,
                        data: db,
                    },
                ) = (&a, &b)
                {
                    if let Some(v) = fold_binary(&op, sa, da, sb, db) {
                        self.values.insert(out, v);
                        return Ok(());
                    }
                }
                let shape = broadcast(&a.shape(), &b.shape())
                    .ok_or_else(|| err("shapes do not broadcast".into()))?;
                let (x, y) = (self.operand(&a, &n.input[0]), self.operand(&b, &n.input[1]));
                let e = match op.as_str() {
                    "Add" => format!("{x} + {y}"),
                    "Sub" => format!("{x} - {y}"),
                    "Mul" => format!("{x} * {y}"),
                    "Div" => format!("{x} / {y}"),
                    "Pow" => format!("{x} ^ {y}"),
                    "Max" => format!("maximum({x}, {y})"),
                    "Min" => format!("minimum({x}, {y})"),
                    "Equal" => format!("{x} == {y}"),
                    "Less" => format!("{x} < {y}"),
                    "LessOrEqual" => format!("{x} <= {y}"),
                    "Greater" => format!("{x} > {y}"),
                    _ => format!("{x} >= {y}"),
                };
                self.bind(&out, e, shape);
            }
            "Where" => {
                let (c, a, b) = (arg(0)?, arg(1)?, arg(2)?);
                let shape = broadcast(&c.shape(), &a.shape())
                    .and_then(|s| broadcast(&s, &b.shape()))
                    .ok_or_else(|| err("shapes do not broadcast".into()))?;
                let (c, a, b) = (
                    self.operand(&c, &n.input[0]),
                    self.operand(&a, &n.input[1]),
                    self.operand(&b, &n.input[2]),
                );
                self.bind(&out, format!("select({c}, {a}, {b})"), shape);
            }
            "Neg" | "Exp" | "Log" | "Sqrt" | "Abs" | "Tanh" | "Sigmoid" | "Relu" | "Reciprocal"
            | "LeakyRelu" => {
                let v = arg(0)?;
                let shape = v.shape();
                let x = self.operand(&v, &n.input[0]);
                let e = match op.as_str() {
                    "Neg" => format!("-{x}"),
                    "Reciprocal" => format!("1.0 / {x}"),
                    "LeakyRelu" => format!(
                        "leaky_relu({x}, slope = {})",
                        number(attrs.float("alpha", 0.01))
                    ),
                    f => format!("{}({x})", f.to_ascii_lowercase()),
                };
                self.bind(&out, e, shape);
            }
            "Softmax" | "LogSoftmax" => {
                let v = arg(0)?;
                let shape = v.shape();
                let default = if opset >= 13 { -1 } else { 1 };
                let a = axis(attrs.int("axis", default), shape.len());
                if a != Some(shape.len().saturating_sub(1)) {
                    return Err(err("a softmax over an axis other than the last (nnc's `softmax` takes the last)".into()));
                }
                let x = self.operand(&v, &n.input[0]);
                let f = if op == "Softmax" {
                    "softmax"
                } else {
                    "log_softmax"
                };
                self.bind(&out, format!("{f}({x})"), shape);
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" => {
                let v = arg(0)?;
                let s = v.shape();
                let from_input = op == "ReduceSum" && opset >= 13 || opset >= 18;
                let axes = if from_input {
                    match args.get(1).cloned().flatten() {
                        Some(a) => Some(
                            known_ints(&a)
                                .ok_or_else(|| err("its axes are not constant".into()))?,
                        ),
                        None => None,
                    }
                } else {
                    attrs.ints("axes")
                };
                let axes: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a
                        .iter()
                        .map(|&a| {
                            axis(a, s.len()).ok_or_else(|| err(format!("axis {a} out of range")))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => (0..s.len()).collect(),
                };
                let keep = attrs.int("keepdims", 1) != 0;
                let shape: Shape = s
                    .iter()
                    .enumerate()
                    .filter_map(|(k, d)| match (axes.contains(&k), keep) {
                        (false, _) => Some(d.clone()),
                        (true, true) => Some(Dim::N(1)),
                        (true, false) => None,
                    })
                    .collect();
                let x = self.operand(&v, &n.input[0]);
                let f = match op.as_str() {
                    "ReduceSum" => "sum",
                    "ReduceMean" => "mean",
                    _ => "max",
                };
                let ax: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
                let k = if keep { ", keepdims = true" } else { "" };
                self.bind(
                    &out,
                    format!("{f}({x}, axis = [{}]{k})", ax.join(", ")),
                    shape,
                );
            }
            "Conv" => self.conv(n, &attrs, &out, &args)?,
            "MaxPool" | "AveragePool" => {
                let v = arg(0)?;
                let s = v.shape();
                let k = attrs.ints("kernel_shape").unwrap_or_default();
                let st = attrs.ints("strides").unwrap_or_else(|| vec![1; k.len()]);
                let pads = attrs.ints("pads").unwrap_or_default();
                let square = k.len() == 2 && k[0] == k[1] && st.len() == 2 && st[0] == st[1];
                if !square
                    || pads.iter().any(|&p| p != 0)
                    || attrs.int("ceil_mode", 0) != 0
                    || s.len() != 4
                {
                    return Err(err("a pooling window that is not square, has padding or ceil_mode (nnc pools square windows, unpadded)".into()));
                }
                if attrs
                    .ints("dilations")
                    .is_some_and(|d| d.iter().any(|&x| x != 1))
                {
                    return Err(err("dilated pooling".into()));
                }
                let (size, stride) = (k[0], st[0]);
                let mut shape = s.clone();
                for d in &mut shape[2..] {
                    *d = match d {
                        Dim::N(x) => Dim::N((*x - size) / stride + 1),
                        Dim::S(_) => return Err(err("a symbolic image size".into())),
                    };
                }
                let x = self.operand(&v, &n.input[0]);
                let f = if op == "MaxPool" {
                    "max_pool2d"
                } else {
                    "avg_pool2d"
                };
                self.bind(&out, format!("{f}({x}, {size}, stride = {stride})"), shape);
            }
            "GlobalAveragePool" => {
                let v = arg(0)?;
                let mut shape = v.shape();
                for d in shape.iter_mut().skip(2) {
                    *d = Dim::N(1);
                }
                let x = self.operand(&v, &n.input[0]);
                self.bind(
                    &out,
                    format!("mean({x}, axis = [2, 3], keepdims = true)"),
                    shape,
                );
            }
            "LayerNormalization" => {
                let v = arg(0)?;
                let shape = v.shape();
                if axis(attrs.int("axis", -1), shape.len()) != Some(shape.len().saturating_sub(1)) {
                    return Err(err("a normalisation over more than the last axis (nnc's `layer_norm` takes the last)".into()));
                }
                if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
                    return Err(err("its mean and inverse deviation outputs are read".into()));
                }
                let x = self.operand(&v, &n.input[0]);
                let gamma = arg(1)?;
                let gamma = self.operand(&gamma, &n.input[1]);
                let beta = match args.get(2).cloned().flatten() {
                    Some(b) => self.operand(&b, &n.input[2]),
                    None => format!("zeros({})", shape_text(&shape[shape.len() - 1..])),
                };
                let eps = attrs.float("epsilon", 1e-5);
                self.bind(
                    &out,
                    format!("layer_norm({x}, {gamma}, {beta}, eps = {})", number(eps)),
                    shape,
                );
            }
            "Slice" => self.slice(n, &out, &args, &attrs, opset)?,
            "LSTM" | "GRU" => self.recurrent(n, &attrs, &args)?,
            other => return Err(err(format!("operator {other} is not translated"))),
        }
        Ok(())
    }

    /// A value with a new shape of the same elements.
    fn reshaped(&mut self, out: &str, v: Value, new: Shape) {
        match (v, static_shape(&new)) {
            (Value::Floats { data, .. }, Some(s)) => {
                self.values
                    .insert(out.to_string(), Value::Floats { shape: s, data });
            }
            (Value::Ints { data, .. }, Some(s)) => {
                self.values
                    .insert(out.to_string(), Value::Ints { shape: s, data });
            }
            (v, _) => {
                if v.shape() == new {
                    self.values.insert(out.to_string(), v);
                    return;
                }
                let x = self.operand(&v, out);
                self.bind(out, format!("reshape({x}, {})", shape_text(&new)), new);
            }
        }
    }

    fn gather(
        &mut self,
        n: &pb::NodeProto,
        out: &str,
        data: Value,
        idx: Value,
        ax: i64,
    ) -> Result<(), Diag> {
        let s = data.shape();
        let a =
            axis(ax, s.len()).ok_or_else(|| node_error(n, format!("axis {ax} out of range")))?;
        // Shape arithmetic: an element of a known vector.
        if let (Value::Ints { data: d, shape: ds }, Some(k)) = (&data, known_ints(&idx)) {
            if ds.len() == 1 {
                let len = d.len() as i64;
                let pick: Vec<Dim> = k
                    .iter()
                    .map(|&i| d[(if i < 0 { i + len } else { i }) as usize].clone())
                    .collect();
                let shape = if matches!(&idx, Value::Ints { shape, .. } if shape.is_empty()) {
                    vec![]
                } else {
                    vec![pick.len()]
                };
                self.values
                    .insert(out.to_string(), Value::Ints { shape, data: pick });
                return Ok(());
            }
        }
        match &idx {
            // One constant index: a slice along the axis, the axis dropped.
            Value::Ints { shape, data: k } if shape.is_empty() => {
                let Dim::N(i) = k[0] else {
                    return Err(node_error(n, "a symbolic index"));
                };
                let i = if i < 0 {
                    match &s[a] {
                        Dim::N(len) => i + len,
                        Dim::S(_) => {
                            return Err(node_error(n, "a negative index into a symbolic dimension"))
                        }
                    }
                } else {
                    i
                };
                let x = self.operand(&data, out);
                let mut shape = s.clone();
                shape.remove(a);
                let e = format!(
                    "reshape(slice({x}, axis = {a}, start = {i}, end = {}), {})",
                    i + 1,
                    shape_text(&shape)
                );
                self.bind(out, e, shape);
                Ok(())
            }
            // Rows by index: computed indices, or constant ones (a graph's
            // edge list) written as a literal or a state.
            _ if a == 0 && !idx.shape().is_empty() => {
                let x = self.operand(&data, out);
                let ids = self.operand(&idx, out);
                let mut shape = idx.shape();
                shape.extend(s[1..].iter().cloned());
                self.bind(out, format!("gather({x}, {ids})"), shape);
                Ok(())
            }
            _ => Err(node_error(n, "a gather along an axis other than the first")),
        }
    }

    fn concat(
        &mut self,
        n: &pb::NodeProto,
        out: &str,
        vals: Vec<Value>,
        ax: i64,
    ) -> Result<(), Diag> {
        if vals
            .iter()
            .all(|v| matches!(v, Value::Ints { shape, .. } if shape.len() <= 1))
        {
            let data: Vec<Dim> = vals
                .iter()
                .flat_map(|v| match v {
                    Value::Ints { data, .. } => data.clone(),
                    _ => Vec::new(),
                })
                .collect();
            self.values.insert(
                out.to_string(),
                Value::Ints {
                    shape: vec![data.len()],
                    data,
                },
            );
            return Ok(());
        }
        let rank = vals[0].shape().len();
        let a = axis(ax, rank).ok_or_else(|| node_error(n, format!("axis {ax} out of range")))?;
        let mut shape = vals[0].shape();
        let mut expr = self.operand(&vals[0], &n.input[0]);
        for (k, v) in vals.iter().enumerate().skip(1) {
            let s = v.shape();
            shape[a] = match (&shape[a], &s[a]) {
                (Dim::N(x), Dim::N(y)) => Dim::N(x + y),
                _ => return Err(node_error(n, "a concatenation along a symbolic dimension")),
            };
            let y = self.operand(v, &n.input[k]);
            expr = format!("concat({expr}, {y}, axis = {a})");
        }
        self.bind(out, expr, shape);
        Ok(())
    }

    fn slice(
        &mut self,
        n: &pb::NodeProto,
        out: &str,
        args: &[Option<Value>],
        attrs: &Attrs,
        opset: i64,
    ) -> Result<(), Diag> {
        let err = |m: &str| node_error(n, m);
        let v = args
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| err("no input"))?;
        let s = v.shape();
        let get = |k: usize, name: &str| -> Result<Option<Vec<i64>>, Diag> {
            if opset >= 10 {
                match args.get(k).cloned().flatten() {
                    Some(a) => Ok(Some(
                        known_ints(&a).ok_or_else(|| err("its bounds are not constant"))?,
                    )),
                    None => Ok(None),
                }
            } else {
                Ok(attrs.ints(name))
            }
        };
        let starts = get(1, "starts")?.ok_or_else(|| err("no starts"))?;
        let ends = get(2, "ends")?.ok_or_else(|| err("no ends"))?;
        let axes = get(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if let Some(steps) = get(4, "steps")? {
            if steps.iter().any(|&x| x != 1) {
                return Err(err("a slice with a step other than 1"));
            }
        }
        let mut expr = self.operand(&v, out);
        let mut shape = s.clone();
        for ((&st, &en), &ax) in starts.iter().zip(&ends).zip(&axes) {
            let a = axis(ax, s.len()).ok_or_else(|| err("axis out of range"))?;
            let Dim::N(len) = s[a] else {
                return Err(err("a slice of a symbolic dimension"));
            };
            let clamp = |x: i64| (if x < 0 { x + len } else { x }).clamp(0, len);
            let (b, e) = (clamp(st), clamp(en));
            let e = e.max(b);
            if b == 0 && e == len {
                continue;
            }
            shape[a] = Dim::N(e - b);
            expr = format!("slice({expr}, axis = {a}, start = {b}, end = {e})");
        }
        self.bind(out, expr, shape);
        Ok(())
    }

    /// `Gemm` with α = β = 1 and A not transposed: `dense` when B is an
    /// initializer and C a bias vector.
    fn gemm(
        &mut self,
        g: &pb::GraphProto,
        i: usize,
        n: &pb::NodeProto,
        attrs: &Attrs,
    ) -> Result<(), Diag> {
        if attrs.float("alpha", 1.0) != 1.0
            || attrs.float("beta", 1.0) != 1.0
            || attrs.int("transA", 0) != 0
        {
            return Err(node_error(
                n,
                "a Gemm with alpha or beta other than 1, or A transposed",
            ));
        }
        let a = self.value(&n.input[0]).map_err(|e| node_error(n, e))?;
        let trans_b = attrs.int("transB", 0) != 0;
        let w = match (trans_b, self.transposed_param(&n.input[1])) {
            (true, Some(w)) => w,
            (true, None) => {
                let b = self.value(&n.input[1]).map_err(|e| node_error(n, e))?;
                let x = self.operand(&b, &n.input[1]);
                let s = b.shape();
                let t = s.iter().rev().cloned().collect();
                let id = self.fresh(&format!("{}_t", n.input[1]));
                self.lets.push(format!("let {id} = transpose({x})"));
                Value::Named { name: id, shape: t }
            }
            (false, _) => self.value(&n.input[1]).map_err(|e| node_error(n, e))?,
        };
        let c = match n.input.get(2).filter(|c| !c.is_empty()) {
            Some(c) => Some(self.value(c).map_err(|e| node_error(n, e))?),
            None => None,
        };
        self.product(g, i, n, a, w, c)
    }

    /// `MatMul`, with the `Add` of a bias vector after it when that is
    /// its only reader: `dense`.
    fn matmul(&mut self, g: &pb::GraphProto, i: usize, n: &pb::NodeProto) -> Result<(), Diag> {
        let a = self.value(&n.input[0]).map_err(|e| node_error(n, e))?;
        let w = self.value(&n.input[1]).map_err(|e| node_error(n, e))?;
        let out = &n.output[0];
        let bias = self.sole_reader(g, i, out).and_then(|(k, add)| {
            if add.op_type.as_deref() != Some("Add") {
                return None;
            }
            let other = add.input.iter().find(|x| *x != out)?;
            let o = w.shape().last().cloned()?;
            let b = self.inits.get(other)?;
            (b.dims.len() == 1 && Dim::N(b.dims[0]) == o && w.shape().len() == 2)
                .then(|| (k, other.clone(), add.output[0].clone()))
        });
        match bias {
            Some((k, b, add_out)) => {
                self.absorbed.insert(k);
                let bv = self.value(&b).map_err(|e| node_error(n, e))?;
                let mut node = n.clone();
                node.output = vec![add_out];
                self.product(g, k, &node, a, w, Some(bv))
            }
            None => self.product(g, i, n, a, w, None),
        }
    }

    /// `a @ w (+ c)`, as `dense` with the activation of the node after
    /// it when c is a bias vector.
    fn product(
        &mut self,
        g: &pb::GraphProto,
        i: usize,
        n: &pb::NodeProto,
        a: Value,
        w: Value,
        c: Option<Value>,
    ) -> Result<(), Diag> {
        let out = n.output[0].clone();
        let shape = matmul_shape(&a.shape(), &w.shape())
            .ok_or_else(|| node_error(n, "shapes that do not multiply"))?;
        let x = self.operand(&a, &n.input[0]);
        let wx = self.operand(&w, &n.input[1]);
        let dense_bias = c.as_ref().filter(|c| {
            let cs = c.shape();
            matches!(c, Value::Named { .. } | Value::Init { .. })
                && cs.len() == 1
                && w.shape().len() == 2
                && Some(&cs[0]) == w.shape().last()
        });
        match dense_bias {
            Some(b) => {
                let b = self.operand(b, "bias");
                let (f, out) = match self.fused_activation(g, i, &out) {
                    Some((k, f, act_out)) => {
                        self.absorbed.insert(k);
                        (f, act_out.to_string())
                    }
                    None => ("identity", out),
                };
                self.bind(&out, format!("dense({x}, {wx}, {b}, {f})"), shape);
            }
            None => {
                let e = match &c {
                    Some(c) => {
                        let cx = self.operand(c, "bias");
                        format!("{x} @ {wx} + {cx}")
                    }
                    None => format!("{x} @ {wx}"),
                };
                let shape = match &c {
                    Some(c) => broadcast(&shape, &c.shape())
                        .ok_or_else(|| node_error(n, "a bias that does not broadcast"))?,
                    None => shape,
                };
                self.bind(&out, e, shape);
            }
        }
        Ok(())
    }

    fn conv(
        &mut self,
        n: &pb::NodeProto,
        attrs: &Attrs,
        out: &str,
        args: &[Option<Value>],
    ) -> Result<(), Diag> {
        let err = |m: &str| node_error(n, m);
        let x = args
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| err("no input"))?;
        let w = args
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| err("no weight"))?;
        let (xs, ws) = (x.shape(), w.shape());
        if xs.len() != 4 || ws.len() != 4 {
            return Err(err("a convolution that is not 2-D"));
        }
        if attrs.int("group", 1) != 1
            || attrs
                .ints("dilations")
                .is_some_and(|d| d.iter().any(|&v| v != 1))
        {
            return Err(err("a grouped or dilated convolution"));
        }
        if attrs.string("auto_pad").is_some_and(|p| p != "NOTSET") {
            return Err(err("auto_pad (give explicit pads)"));
        }
        let strides = attrs.ints("strides").unwrap_or_else(|| vec![1, 1]);
        let pads = attrs.ints("pads").unwrap_or_else(|| vec![0; 4]);
        if strides.iter().any(|&s| s != strides[0]) || pads.iter().any(|&p| p != pads[0]) {
            return Err(err(
                "unequal strides or pads (nnc's conv2d takes one stride and one padding)",
            ));
        }
        let (s, p) = (strides[0], pads[0]);
        let mut shape = vec![xs[0].clone(), ws[0].clone()];
        for k in 0..2 {
            match (&xs[2 + k], &ws[2 + k]) {
                (Dim::N(h), Dim::N(kk)) => shape.push(Dim::N((h + 2 * p - kk) / s + 1)),
                _ => return Err(err("a symbolic image size")),
            }
        }
        let xe = self.operand(&x, &n.input[0]);
        let we = self.operand(&w, &n.input[1]);
        let mut e = format!("conv2d({xe}, {we}, stride = {s}, padding = {p})");
        if let Some(b) = args.get(2).cloned().flatten() {
            let be = self.operand(&b, &n.input[2]);
            e = format!("{e} + reshape({be}, [{}, 1, 1])", ws[0]);
        }
        self.bind(out, e, shape);
        Ok(())
    }
}
