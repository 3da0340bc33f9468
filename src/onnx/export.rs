//! `nnc export`: an inference graph as an ONNX model (opset 17).
//!
//! Takes a checked graph whose `training()` is fixed (the driver picks it
//! as `nnc compile` does: [`crate::aot::library_graph`]) and the values of
//! its parameters; returns a `ModelProto`, or a diagnostic for each op it
//! cannot write. What holds in the model:
//!
//! - one ONNX node (or a few) per live IR node, in arena order, so the
//!   node list is topologically sorted; a value is named `%N` after its
//!   IR node, a node `nN:OpType`, the helpers a mapping needs `%N.what`;
//! - the graph's inputs are the `.nn` inputs the outputs read, by name,
//!   the outputs the `.nn` outputs, by name; the parameters are
//!   initializers named after them;
//! - a symbolic dimension stays a named dimension (`dim_param`) unless a
//!   size is given for it; where an op needs its value (a reshape, a
//!   fill, a broadcast) it is read from a tensor that has it (`Shape`);
//! - a `select` on a condition that is a constant (`training()` once it is
//!   fixed) is resolved here, so the branch it rules out (dropout's random
//!   draw) is not written;
//! - nnc's comparisons yield 0/1 floats: ONNX's booleans are cast to
//!   float where a float is read, and a `select` reads the boolean.
//!
//! The mapping, op by op:
//!
//! | IR op | ONNX |
//! | --- | --- |
//! | `Input`, `Param`, `Const` | graph input, initializer, initializer (`Constant` in a loop body) |
//! | `Fill` | initializer (a scalar) or `ConstantOfShape` |
//! | `Unary` | `Neg` `Exp` `Log` `Sqrt` `Abs` `Tanh` `Sigmoid` |
//! | `Binary` | `Add` `Sub` `Mul` `Div` `Pow` `Max` `Min` |
//! | `Compare` | `Equal` `Less` `LessOrEqual` `Greater` `GreaterOrEqual`, `Not` for `ne`; `Cast` to float |
//! | `Select` | `Where` (the condition `Cast` to bool unless it is a comparison) |
//! | `Reduce` | `ReduceSum` (axes an input), `ReduceMean`, `ReduceMax` (axes an attribute below opset 18), `keepdims = 0` |
//! | `MatMul` | `MatMul` (equal batch dims: NumPy's semantics agree) |
//! | `Reshape` | `Reshape` (the shape an `int64` tensor) |
//! | `Transpose` | `Transpose` (`perm`) |
//! | `Broadcast` | `Expand` |
//! | `Conv2d` | `Conv` (NCHW, `pads`, `strides`) |
//! | `Pool2d` | `MaxPool`, `AveragePool` |
//! | `Slice` | `Slice` (`starts`, `ends`, `axes` inputs) |
//! | `Concat` | `Concat` |
//! | `Gather` | `Gather` on axis 0, the indices `Cast` to `int64` |
//! | `ScatterAdd` | `ScatterND` (`reduction = "add"`) into zeros |
//! | `Scan` | `Scan` with a body graph; the loop's arguments are read from the enclosing graph |
//! | `Random`, the backward window ops | none: an error (E0306) |

use super::builder::{self, float_tensor, value_info, Attr, Extent, GraphBuilder};
use super::builder::{BOOL, FLOAT, INT64};
use super::pb;
use crate::diag::{self, code, Diag, Span};
use crate::ir::{BinaryOp, CmpOp, Dim, Graph, InputId, Node, Op, ParamId, PoolOp, ReduceOp};
use crate::ir::{Sym, UnaryOp};
use crate::tensor::Tensor;
use cranelift_entity::{EntityRef, SecondaryMap};
use std::collections::HashMap;

/// The operator set the models are written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version (8: ONNX 1.10 and later read it).
pub const IR_VERSION: i64 = 8;

/// What to export besides the graph.
pub struct Options<'a> {
    /// The model's (and graph's) name.
    pub name: String,
    /// Sizes given for symbolic dimensions, by name (`--dim B=32`).
    pub dims: &'a [(String, usize)],
    /// Factors the values fed to an input are multiplied by first (a
    /// `train` block's `scale`), so the model reads raw features as
    /// `nnc predict` does.
    pub scales: Vec<(InputId, f32)>,
}

/// The ONNX model of `g`'s outputs, with `params` as the initializers.
pub fn export(
    g: &Graph,
    params: &SecondaryMap<ParamId, Tensor>,
    opts: &Options,
) -> Result<pb::ModelProto, Vec<Diag>> {
    let mut e = Emitter::new(g, "", true, opts.dims);
    e.params = Some(params);
    e.scales = opts.scales.clone();
    let roots: Vec<Node> = g.outputs.iter().map(|o| o.node).collect();
    e.mark_live(&roots);
    e.name_outputs();
    e.emit_all();
    let outputs = e.outputs();
    if !e.errors.is_empty() {
        return Err(e.errors);
    }
    let graph = pb::GraphProto {
        name: Some(opts.name.clone()),
        node: e.b.nodes,
        initializer: e.b.initializers,
        input: e.inputs,
        output: outputs,
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("nnc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    })
}

/// The export of one graph: the model's, or a loop body's.
struct Emitter<'g> {
    g: &'g Graph,
    b: GraphBuilder,
    /// Sizes given for this graph's symbols.
    fixed: SecondaryMap<Sym, Option<u64>>,
    dims: &'g [(String, usize)],
    /// The values of the parameters (the model's graph only).
    params: Option<&'g SecondaryMap<ParamId, Tensor>>,
    scales: Vec<(InputId, f32)>,
    /// The node each node stands for: itself, or the branch a `select`
    /// on a constant takes.
    alias: Vec<Node>,
    live: Vec<bool>,
    /// Whether a node's value is read as a float (a comparison read only
    /// by `select`s needs no cast).
    read_as_float: Vec<bool>,
    /// The output a node's value is named after, when it is one.
    out_name: Vec<Option<String>>,
    /// The ONNX value of each emitted node (f32), and of each comparison
    /// its boolean.
    values: Vec<Option<String>>,
    bools: Vec<Option<String>>,
    /// Loop bodies: the value each of the body's inputs reads (the body
    /// graph's own inputs, and the enclosing graph's values for the
    /// loop's arguments).
    bound: HashMap<InputId, String>,
    /// A 1-element `int64` tensor holding each symbol's size, once made.
    sym_sizes: HashMap<Sym, String>,
    /// `int64` literals already made, by value, and the shapes with
    /// symbols already concatenated.
    int_literals: HashMap<Vec<i64>, String>,
    shapes: HashMap<Vec<Dim>, String>,
    inputs: Vec<pb::ValueInfoProto>,
    errors: Vec<Diag>,
}

impl<'g> Emitter<'g> {
    fn new(g: &'g Graph, prefix: &str, top: bool, dims: &'g [(String, usize)]) -> Emitter<'g> {
        let mut fixed = SecondaryMap::new();
        for (name, size) in dims {
            if let Some((s, _)) = g.syms.iter().find(|(_, i)| &i.name == name) {
                fixed[s] = Some(*size as u64);
            }
        }
        let n = g.nodes.len();
        let mut alias: Vec<Node> = Vec::with_capacity(n);
        for (node, d) in g.nodes.iter() {
            let a = match d.op {
                Op::Select(c, x, y) => match constant(g, &alias, alias[c.index()]) {
                    Some(v) if v != 0.0 => alias[x.index()],
                    Some(_) => alias[y.index()],
                    None => node,
                },
                _ => node,
            };
            alias.push(a);
        }
        Emitter {
            g,
            b: GraphBuilder::new(prefix, top),
            fixed,
            dims,
            params: None,
            scales: Vec::new(),
            alias,
            live: vec![false; n],
            read_as_float: vec![false; n],
            out_name: vec![None; n],
            values: vec![None; n],
            bools: vec![None; n],
            bound: HashMap::new(),
            sym_sizes: HashMap::new(),
            int_literals: HashMap::new(),
            shapes: HashMap::new(),
            inputs: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn resolve(&self, n: Node) -> Node {
        self.alias[n.index()]
    }

    /// Marks what `roots` read, through resolved `select`s, and which
    /// values are read as floats.
    fn mark_live(&mut self, roots: &[Node]) {
        for &r in roots {
            let r = self.resolve(r);
            self.live[r.index()] = true;
            self.read_as_float[r.index()] = true;
        }
        let g = self.g;
        for (n, d) in g.nodes.iter().rev() {
            if !self.live[n.index()] {
                continue;
            }
            for (k, a) in d.op.args().into_iter().enumerate() {
                let a = self.resolve(a);
                self.live[a.index()] = true;
                if !(matches!(d.op, Op::Select(..)) && k == 0) {
                    self.read_as_float[a.index()] = true;
                }
            }
        }
    }

    /// Names the values of computed nodes after the outputs they are (the
    /// first output of each); the others get an `Identity`.
    fn name_outputs(&mut self) {
        let g = self.g;
        for o in &g.outputs {
            let n = self.resolve(o.node);
            let leaf = matches!(
                g.nodes[n].op,
                Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. }
            );
            if !leaf && self.out_name[n.index()].is_none() && self.b.claim(&o.name) {
                self.out_name[n.index()] = Some(o.name.clone());
            }
        }
    }

    fn emit_all(&mut self) {
        let g = self.g;
        for (n, d) in g.nodes.iter() {
            if self.live[n.index()] {
                self.emit(n, &d.op, d.span);
            }
        }
    }

    /// The graph's outputs, with an `Identity` for each that is not named
    /// after its value.
    fn outputs(&mut self) -> Vec<pb::ValueInfoProto> {
        let mut out = Vec::new();
        let g = self.g;
        for o in &g.outputs {
            let n = self.resolve(o.node);
            let value = self.value(n);
            if self.out_name[n.index()].as_deref() != Some(o.name.as_str()) || value != o.name {
                if !self.b.claim(&o.name) {
                    self.errors.push(
                        diag::error(
                            code::EXPORT,
                            format!("two values of the ONNX graph would be named `{}`", o.name),
                        )
                        .with_labels(vec![o.span.primary("this output")])
                        .with_notes(vec![
                            "help: give the output a name no input, parameter or other output has"
                                .into(),
                        ]),
                    );
                    continue;
                }
                let name = builder::node_name(&o.name, "Identity");
                self.b
                    .node("Identity", &name, &[&value], &[&o.name], vec![]);
            }
            out.push(value_info(&o.name, FLOAT, &self.dims_of(g.shape(n))));
        }
        out
    }

    /// The f32 value of node `n` (emitted before).
    fn value(&mut self, n: Node) -> String {
        let n = self.resolve(n);
        if let Some(v) = &self.values[n.index()] {
            return v.clone();
        }
        // A comparison read only as a condition until now.
        let b = self.bools[n.index()].clone().unwrap_or_default();
        let v = self.cast(&b, FLOAT, &format!("%{}", n.index()));
        self.values[n.index()] = Some(v.clone());
        v
    }

    /// The boolean of a condition: a comparison's own, or `c != 0`.
    fn condition(&mut self, c: Node) -> String {
        let c = self.resolve(c);
        if let Some(b) = &self.bools[c.index()] {
            return b.clone();
        }
        let v = self.value(c);
        let b = self.cast(&v, BOOL, &format!("%{}.bool", c.index()));
        self.bools[c.index()] = Some(b.clone());
        b
    }

    fn cast(&mut self, x: &str, to: i32, base: &str) -> String {
        self.b
            .op("Cast", base, &[x], vec![("to", Attr::Int(to as i64))])
    }

    /// Each dim as a size, or else the name of its symbol (left unknown
    /// in a loop body, where a runtime matches the body's types with the
    /// loop's operands and a name there would be a symbol of its own).
    fn dims_of(&self, shape: &[Dim]) -> Vec<Extent> {
        shape
            .iter()
            .map(|d| match self.dim(*d) {
                Ok(n) => Extent::Size(n),
                Err(_) if !self.b.top => Extent::Unknown,
                Err(s) => Extent::Named(self.g.syms[s].name.clone()),
            })
            .collect()
    }

    fn dim(&self, d: Dim) -> Result<u64, Sym> {
        match d {
            Dim::Known(n) => Ok(n),
            Dim::Sym(s) => self.fixed[s].ok_or(s),
        }
    }

    /// A 1-D `int64` literal, made once per value and named after it
    /// (`%[16,1]`).
    fn ints(&mut self, values: &[i64]) -> String {
        if let Some(v) = self.int_literals.get(values) {
            return v.clone();
        }
        let text: Vec<String> = values.iter().map(i64::to_string).collect();
        let v = self.b.ints(&format!("%[{}]", text.join(",")), values);
        self.int_literals.insert(values.to_vec(), v.clone());
        v
    }

    /// A 1-D `int64` tensor holding `shape`: a literal when every dim is
    /// known, else the pieces concatenated, each symbol's size read from
    /// a value that has it.
    fn shape_value(&mut self, shape: &[Dim], span: Span) -> String {
        let dims: Vec<Result<u64, Sym>> = shape.iter().map(|d| self.dim(*d)).collect();
        if let Ok(known) = dims.iter().cloned().collect::<Result<Vec<u64>, Sym>>() {
            let v: Vec<i64> = known.iter().map(|&d| d as i64).collect();
            return self.ints(&v);
        }
        if let Some(v) = self.shapes.get(shape) {
            return v.clone();
        }
        let pieces: Vec<String> = dims
            .iter()
            .map(|d| match d {
                Ok(n) => self.ints(&[*n as i64]),
                Err(s) => self.sym_size(*s, span),
            })
            .collect();
        let v = match pieces.as_slice() {
            [one] => one.clone(),
            _ => {
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                self.b
                    .op("Concat", "%shape", &refs, vec![("axis", Attr::Int(0))])
            }
        };
        self.shapes.insert(shape.to_vec(), v.clone());
        v
    }

    /// A 1-element `int64` tensor holding the size of `s`, read (`Shape`)
    /// from the first value emitted so far whose type has it.
    fn sym_size(&mut self, s: Sym, span: Span) -> String {
        if let Some(v) = self.sym_sizes.get(&s) {
            return v.clone();
        }
        let found = self.g.nodes.iter().find_map(|(n, d)| {
            let has = self.values[n.index()].is_some() || self.bools[n.index()].is_some();
            let axis = d.ty.shape.iter().position(|x| *x == Dim::Sym(s))?;
            has.then_some((n, axis))
        });
        let name = self.g.syms[s].name.clone();
        let Some((n, axis)) = found else {
            self.errors.push(
                diag::error(
                    code::EXPORT,
                    format!("the size of dimension `{name}` is needed here, and no input of the exported graph has it"),
                )
                .with_labels(vec![span.primary(format!("this op's shape has `{name}`"))])
                .with_notes(vec![format!("help: give it a size with `--dim {name}=SIZE`")]),
            );
            return self.ints(&[1]);
        };
        let of = match &self.values[n.index()] {
            Some(v) => v.clone(),
            None => self.bools[n.index()].clone().unwrap_or_default(),
        };
        let a = axis as i64;
        let v = self.b.op(
            "Shape",
            &format!("%size.{name}"),
            &[&of],
            vec![("start", Attr::Int(a)), ("end", Attr::Int(a + 1))],
        );
        self.sym_sizes.insert(s, v.clone());
        v
    }

    /// The name of node `n`'s value: its output's, or `%N`.
    fn result_name(&mut self, n: Node) -> String {
        match self.out_name[n.index()].clone() {
            Some(name) => name,
            None => self.b.fresh(&format!("%{}", n.index())),
        }
    }

    /// Adds `op_type(inputs) -> out` as the node of an IR node.
    fn put(&mut self, op_type: &str, out: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let name = builder::node_name(out, op_type);
        self.b.node(op_type, &name, inputs, &[out], attrs);
    }

    /// Emits node `n`, one op family each.
    fn emit(&mut self, n: Node, op: &Op, span: Span) {
        let i = n.index();
        let g = self.g;
        match op {
            Op::Input(id) => self.input(n, *id),
            Op::Param(p) => self.param(n, *p, span),
            Op::Const(c) => {
                let out = self.result_name(n);
                let t = &g.consts[*c];
                self.b.literal_named(&out, float_tensor(&t.shape, &t.data));
                self.values[i] = Some(out);
            }
            Op::Fill { value, shape } => self.fill(n, *value, shape, span),
            Op::Unary(u, a) => self.unary(n, *u, *a),
            Op::Binary(b, x, y) => self.binary(n, *b, *x, *y),
            Op::Compare(c, x, y) => self.compare(n, *c, *x, *y),
            Op::Select(c, x, y) => {
                let (c, x, y) = (self.condition(*c), self.value(*x), self.value(*y));
                let out = self.result_name(n);
                self.put("Where", &out, &[&c, &x, &y], vec![]);
                self.values[i] = Some(out);
            }
            Op::Reduce { op, arg, axes } => self.reduce(n, *op, *arg, axes),
            Op::MatMul(x, y) => {
                let (x, y) = (self.value(*x), self.value(*y));
                let out = self.result_name(n);
                self.put("MatMul", &out, &[&x, &y], vec![]);
                self.values[i] = Some(out);
            }
            Op::Reshape(..)
            | Op::Transpose(..)
            | Op::Broadcast(..)
            | Op::Slice { .. }
            | Op::Concat { .. } => self.shape_op(n, op, span),
            Op::Conv2d {
                x,
                w,
                stride,
                padding,
            } => self.conv(n, *x, *w, *stride, *padding),
            Op::Pool2d {
                op,
                arg,
                size,
                stride,
            } => self.pool(n, *op, *arg, *size, *stride),
            Op::Gather { table, indices } => self.gather(n, *table, *indices),
            Op::ScatterAdd {
                values, indices, ..
            } => self.scatter_add(n, *values, *indices, span),
            Op::Scan {
                body,
                init,
                xs,
                args,
                reverse,
            } => self.scan(n, *body, *init, xs, args, *reverse),
            Op::Random { .. } => self.unsupported(
                n,
                span,
                "a random draw",
                "ONNX's random ops would not draw nnc's numbers",
                "feed the noise as an input instead, or export a graph that does not draw (dropout is left out at inference)",
            ),
            Op::Conv2dBackwardInput { .. }
            | Op::Conv2dBackwardWeight { .. }
            | Op::Pool2dBackward { .. } => self.unsupported(
                n,
                span,
                "a derivative of a window op",
                "an inference graph has no derivatives",
                "export a file's outputs or `predict`, not a gradient",
            ),
            Op::AdamMoment { .. } | Op::AdamStep { .. } => self.unsupported(
                n,
                span,
                "an optimizer's update",
                "an inference graph has no training step",
                "export a file's outputs or `predict`, not a training step",
            ),
        }
    }

    /// Claims a name from the source (an input's, a parameter's) as a
    /// value name of the graph.
    fn claim(&mut self, name: &str, span: Span) {
        if !self.b.claim(name) {
            self.errors.push(
                diag::error(
                    code::EXPORT,
                    format!("two values of the ONNX graph would be named `{name}`"),
                )
                .with_labels(vec![span.primary("this one")])
                .with_notes(vec![
                    "help: give inputs, parameters and outputs names no other has".into(),
                ]),
            );
        }
    }

    fn unsupported(&mut self, n: Node, span: Span, what: &str, why: &str, help: &str) {
        self.errors.push(
            diag::error(
                code::EXPORT,
                format!("{what} cannot be exported to ONNX: {why}"),
            )
            .with_labels(vec![
                span.primary(format!("{what}, needed by the exported outputs"))
            ])
            .with_notes(vec![format!("help: {help}")]),
        );
        // A name, so the ops after it can still be checked.
        self.values[n.index()] = Some(self.b.fresh(&format!("%{}", n.index())));
    }

    /// A graph input (a `scale` multiplies it first), or, in a loop body,
    /// the carry, a step of a sequence or the enclosing graph's argument.
    fn input(&mut self, n: Node, id: InputId) {
        if let Some(v) = self.bound.get(&id) {
            self.values[n.index()] = Some(v.clone());
            return;
        }
        let g = self.g;
        let info = &g.inputs[id];
        let name = info.name.clone();
        self.claim(&name, info.span);
        let shape = self.dims_of(&info.ty.shape);
        self.inputs.push(value_info(&name, FLOAT, &shape));
        let scale = self.scales.iter().find(|(i, _)| *i == id).map(|s| s.1);
        let v = match scale {
            Some(s) if s != 1.0 => {
                let k = self.b.literal("%scale", float_tensor(&[], &[s]));
                let out = self.result_name(n);
                self.put("Mul", &out, &[&name, &k], vec![]);
                out
            }
            _ => name,
        };
        self.values[n.index()] = Some(v);
    }

    fn param(&mut self, n: Node, p: ParamId, span: Span) {
        let g = self.g;
        let info = &g.params[p];
        let Some(t) = self.params.map(|ps| &ps[p]) else {
            // Sema lowers loop bodies without parameters.
            self.errors.push(
                diag::error(
                    code::INTERNAL,
                    "internal compiler error: a parameter in a loop body",
                )
                .with_labels(vec![span.primary("here")]),
            );
            return;
        };
        self.claim(&info.name, info.span);
        self.b
            .literal_named(&info.name, float_tensor(&t.shape, &t.data));
        self.values[n.index()] = Some(info.name.clone());
    }

    fn fill(&mut self, n: Node, value: f32, shape: &[Dim], span: Span) {
        let out = self.result_name(n);
        if shape.is_empty() {
            self.b.literal_named(&out, float_tensor(&[], &[value]));
        } else {
            let s = self.shape_value(shape, span);
            let v = float_tensor(&[1], &[value]);
            self.put(
                "ConstantOfShape",
                &out,
                &[&s],
                vec![("value", Attr::Tensor(v))],
            );
        }
        self.values[n.index()] = Some(out);
    }

    fn unary(&mut self, n: Node, u: UnaryOp, a: Node) {
        let op = match u {
            UnaryOp::Neg => "Neg",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Abs => "Abs",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Sigmoid => "Sigmoid",
        };
        let a = self.value(a);
        let out = self.result_name(n);
        self.put(op, &out, &[&a], vec![]);
        self.values[n.index()] = Some(out);
    }

    fn binary(&mut self, n: Node, b: BinaryOp, x: Node, y: Node) {
        let op = match b {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
        };
        let (x, y) = (self.value(x), self.value(y));
        let out = self.result_name(n);
        self.put(op, &out, &[&x, &y], vec![]);
        self.values[n.index()] = Some(out);
    }

    /// The comparison as a boolean; cast to a 0/1 float when a float is
    /// read.
    fn compare(&mut self, n: Node, c: CmpOp, x: Node, y: Node) {
        let (x, y) = (self.value(x), self.value(y));
        let base = format!("%{}.bool", n.index());
        let b = match c {
            CmpOp::Eq => self.b.op("Equal", &base, &[&x, &y], vec![]),
            CmpOp::Ne => {
                let eq = self
                    .b
                    .op("Equal", &format!("%{}.eq", n.index()), &[&x, &y], vec![]);
                self.b.op("Not", &base, &[&eq], vec![])
            }
            CmpOp::Lt => self.b.op("Less", &base, &[&x, &y], vec![]),
            CmpOp::Le => self.b.op("LessOrEqual", &base, &[&x, &y], vec![]),
            CmpOp::Gt => self.b.op("Greater", &base, &[&x, &y], vec![]),
            CmpOp::Ge => self.b.op("GreaterOrEqual", &base, &[&x, &y], vec![]),
        };
        self.bools[n.index()] = Some(b.clone());
        if self.read_as_float[n.index()] {
            let out = self.result_name(n);
            self.put("Cast", &out, &[&b], vec![("to", Attr::Int(FLOAT as i64))]);
            self.values[n.index()] = Some(out);
        }
    }

    /// Reductions drop their axes (`keepdims = 0`). ReduceSum takes the
    /// axes as an input from opset 13, the others from opset 18 only: an
    /// attribute at opset 17. No axes is the identity (ONNX would reduce
    /// every axis).
    fn reduce(&mut self, n: Node, op: ReduceOp, arg: Node, axes: &[usize]) {
        let x = self.value(arg);
        let out = self.result_name(n);
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let keep = ("keepdims", Attr::Int(0));
        match op {
            _ if axes.is_empty() => self.put("Identity", &out, &[&x], vec![]),
            ReduceOp::Sum => {
                let a = self.ints(&axes);
                self.put("ReduceSum", &out, &[&x, &a], vec![keep]);
            }
            ReduceOp::Mean => self.put(
                "ReduceMean",
                &out,
                &[&x],
                vec![("axes", Attr::Ints(axes)), keep],
            ),
            ReduceOp::Max => self.put(
                "ReduceMax",
                &out,
                &[&x],
                vec![("axes", Attr::Ints(axes)), keep],
            ),
        }
        self.values[n.index()] = Some(out);
    }

    /// Reshape, Transpose, Expand, Slice, Concat.
    fn shape_op(&mut self, n: Node, op: &Op, span: Span) {
        let i = n.index();
        match op {
            Op::Reshape(a, shape) => {
                let x = self.value(*a);
                let s = self.shape_value(shape, span);
                let out = self.result_name(n);
                // A 0 in the shape means "the operand's dim" unless
                // `allowzero` (opset 14) says it is a 0.
                let zero = shape.contains(&Dim::Known(0));
                let attrs = match zero {
                    true => vec![("allowzero", Attr::Int(1))],
                    false => vec![],
                };
                self.put("Reshape", &out, &[&x, &s], attrs);
                self.values[i] = Some(out);
            }
            Op::Transpose(a, perm) => {
                let x = self.value(*a);
                let out = self.result_name(n);
                let perm = perm.iter().map(|&p| p as i64).collect();
                self.put("Transpose", &out, &[&x], vec![("perm", Attr::Ints(perm))]);
                self.values[i] = Some(out);
            }
            Op::Broadcast(a, shape) => {
                let x = self.value(*a);
                let s = self.shape_value(shape, span);
                let out = self.result_name(n);
                self.put("Expand", &out, &[&x, &s], vec![]);
                self.values[i] = Some(out);
            }
            Op::Slice {
                arg,
                axis,
                start,
                end,
            } => {
                let x = self.value(*arg);
                let starts = self.ints(&[*start as i64]);
                let ends = self.ints(&[*end as i64]);
                let axes = self.ints(&[*axis as i64]);
                let out = self.result_name(n);
                self.put("Slice", &out, &[&x, &starts, &ends, &axes], vec![]);
                self.values[i] = Some(out);
            }
            Op::Concat { a, b, axis } => {
                let (x, y) = (self.value(*a), self.value(*b));
                let out = self.result_name(n);
                self.put(
                    "Concat",
                    &out,
                    &[&x, &y],
                    vec![("axis", Attr::Int(*axis as i64))],
                );
                self.values[i] = Some(out);
            }
            _ => unreachable!("shape_op is called with the shape ops only"),
        }
    }

    /// Conv: both NCHW, the kernel `[O, C, KH, KW]` as ONNX's.
    fn conv(&mut self, n: Node, x: Node, w: Node, stride: u64, padding: u64) {
        let kernel: Vec<i64> = self.g.shape(w)[2..]
            .iter()
            .map(|d| crate::ir::shape::known(*d).unwrap_or(0) as i64)
            .collect();
        let (x, w) = (self.value(x), self.value(w));
        let out = self.result_name(n);
        let (s, p) = (stride as i64, padding as i64);
        self.put(
            "Conv",
            &out,
            &[&x, &w],
            vec![
                ("kernel_shape", Attr::Ints(kernel)),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        );
        self.values[n.index()] = Some(out);
    }

    /// MaxPool or AveragePool, without padding.
    fn pool(&mut self, n: Node, op: PoolOp, arg: Node, size: u64, stride: u64) {
        let x = self.value(arg);
        let out = self.result_name(n);
        let op = match op {
            PoolOp::Max => "MaxPool",
            PoolOp::Avg => "AveragePool",
        };
        let (k, s) = (size as i64, stride as i64);
        self.put(
            op,
            &out,
            &[&x],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        );
        self.values[n.index()] = Some(out);
    }

    /// Rows of `table [V, D]`: ONNX's Gather on axis 0 gives
    /// `indices.shape + [D]`, as nnc's does; the whole-number floats are
    /// cast to `int64`.
    fn gather(&mut self, n: Node, table: Node, indices: Node) {
        let t = self.value(table);
        let ix = self.value(indices);
        let ix = self.cast(&ix, INT64, &format!("%{}.indices", n.index()));
        let out = self.result_name(n);
        self.put("Gather", &out, &[&t, &ix], vec![("axis", Attr::Int(0))]);
        self.values[n.index()] = Some(out);
    }

    /// Sums rows into `[n, D]` zeros: ScatterND with `reduction = "add"`
    /// (opset 16) reads the indices `[..S]` as `[..S, 1]`, one row index
    /// per update row of `values [..S, D]`.
    fn scatter_add(&mut self, n: Node, values: Node, indices: Node, span: Span) {
        let i = n.index();
        let v = self.value(values);
        let ix = self.value(indices);
        let ix = self.cast(&ix, INT64, &format!("%{i}.indices"));
        let last = self.ints(&[-1]);
        let ix = self
            .b
            .op("Unsqueeze", &format!("%{i}.indices"), &[&ix, &last], vec![]);
        let shape = self.g.shape(n).clone();
        let s = self.shape_value(&shape, span);
        let zeros = self.b.op(
            "ConstantOfShape",
            &format!("%{i}.zeros"),
            &[&s],
            vec![("value", Attr::Tensor(float_tensor(&[1], &[0.0])))],
        );
        let out = self.result_name(n);
        self.put(
            "ScatterND",
            &out,
            &[&zeros, &ix, &v],
            vec![("reduction", Attr::Str("add"))],
        );
        self.values[i] = Some(out);
    }

    /// An ONNX `Scan`: the carry is its one state, the sequences its scan
    /// inputs (reversed with `reverse`), the carry after each step its one
    /// scan output (reversed too, so step t lands at index t as in nnc).
    /// The loop's arguments are read by the body from this graph (ONNX
    /// subgraphs see the enclosing scope).
    fn scan(
        &mut self,
        n: Node,
        body: crate::ir::BodyId,
        init: Node,
        xs: &[Node],
        args: &[Node],
        reverse: bool,
    ) {
        let init = self.value(init);
        let seqs: Vec<String> = xs.iter().map(|x| self.value(*x)).collect();
        let outer: Vec<String> = args.iter().map(|a| self.value(*a)).collect();
        let out = self.result_name(n);
        let g = self.g;
        let bg = &g.bodies[body];
        let Some(result) = bg.outputs.first() else {
            return;
        };
        let mut e = Emitter::new(bg, &format!("{out}/"), false, self.dims);
        // The body's inputs: the carry and one step of each sequence, in
        // the order the Scan passes them, used or not; then the arguments,
        // values of this graph.
        for (k, (id, info)) in bg.inputs.iter().enumerate() {
            let v = match k.checked_sub(1 + xs.len()) {
                None => {
                    let name = e.b.fresh(&info.name);
                    let shape = e.dims_of(&info.ty.shape);
                    e.inputs.push(value_info(&name, FLOAT, &shape));
                    name
                }
                Some(a) => outer[a].clone(),
            };
            e.bound.insert(id, v);
        }
        e.mark_live(&[result.node]);
        e.emit_all();
        let v = e.value(result.node);
        let shape = e.dims_of(bg.shape(result.node));
        let state = e.b.op("Identity", "carry.next", &[&v], vec![]);
        let each = e.b.op("Identity", "carry.each", &[&v], vec![]);
        let graph = pb::GraphProto {
            name: Some(format!("{out}/body")),
            node: e.b.nodes,
            input: e.inputs,
            output: vec![
                value_info(&state, FLOAT, &shape),
                value_info(&each, FLOAT, &shape),
            ],
            ..Default::default()
        };
        self.errors.extend(e.errors);
        let last = self.b.fresh(&format!("{out}.last"));
        let mut inputs: Vec<&str> = vec![&init];
        inputs.extend(seqs.iter().map(String::as_str));
        let dir = reverse as i64;
        let mut attrs = vec![
            ("body", Attr::Graph(graph)),
            ("num_scan_inputs", Attr::Int(xs.len() as i64)),
        ];
        if reverse {
            attrs.push(("scan_input_directions", Attr::Ints(vec![dir; xs.len()])));
            attrs.push(("scan_output_directions", Attr::Ints(vec![dir])));
        }
        let name = builder::node_name(&out, "Scan");
        self.b.node("Scan", &name, &inputs, &[&last, &out], attrs);
        self.values[n.index()] = Some(out);
    }
}

/// The value of a node that is a constant: a fill, or a broadcast or
/// reshape of one.
fn constant(g: &Graph, alias: &[Node], n: Node) -> Option<f32> {
    match &g.nodes[n].op {
        Op::Fill { value, .. } => Some(*value),
        Op::Broadcast(a, _) | Op::Reshape(a, _) => constant(g, alias, alias[a.index()]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{compile, Stage};

    /// The op types of `source`'s exported outputs, in order.
    fn ops(source: &str) -> Vec<String> {
        let c = compile("t.nn", source, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let mut g = c.graph.expect("a graph");
        crate::pipeline::set_training(&mut g, false);
        let params = crate::backend::interp::init_params(&g, 0);
        let opts = Options {
            name: "t".into(),
            dims: &[],
            scales: Vec::new(),
        };
        let m = export(&g, &params, &opts).unwrap_or_else(|_| panic!("exports"));
        let graph = m.graph.expect("a graph");
        graph
            .node
            .iter()
            .filter_map(|n| n.op_type.clone())
            .collect()
    }

    #[test]
    fn a_comparison_read_by_select_stays_boolean() {
        let got = ops("input x: [3]\noutput y = select(x != 0.5, x, -x)");
        assert_eq!(got, ["Expand", "Equal", "Not", "Neg", "Where"]);
    }

    #[test]
    fn a_comparison_read_as_a_number_is_cast_to_float() {
        let got = ops("input x: [3]\noutput y = x < 0.5");
        assert!(got.ends_with(&["Less".into(), "Cast".into()]), "{got:?}");
    }

    #[test]
    fn dropout_at_inference_draws_nothing() {
        let got = ops("input x: [B, 3]\noutput y = dropout(x, p = 0.5)");
        assert!(got.iter().all(|o| !o.starts_with("Random")), "{got:?}");
        assert_eq!(got, ["Identity"]);
    }

    #[test]
    fn a_symbolic_fill_reads_its_size_from_an_input() {
        let got = ops("input x: [B, 3]\noutput y = x + ones([B, 3])");
        assert_eq!(got, ["Shape", "Concat", "ConstantOfShape", "Add"]);
    }

    #[test]
    fn a_dimension_no_input_has_needs_a_size() {
        // `x` is no input of the exported graph: the output does not read it.
        let src = "input x: [B, 2]\noutput y = ones([B, 2])";
        let c = compile("t.nn", src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("a graph");
        let params = crate::backend::interp::init_params(&g, 0);
        let mut opts = Options {
            name: "t".into(),
            dims: &[],
            scales: Vec::new(),
        };
        let Err(errors) = export(&g, &params, &opts) else {
            panic!("an unsized dimension exports");
        };
        assert!(errors[0].message.contains("dimension `B`"), "{errors:?}");
        assert!(errors[0].notes[0].contains("--dim B=SIZE"), "{errors:?}");
        let dims = [("B".to_string(), 4)];
        opts.dims = &dims;
        assert!(export(&g, &params, &opts).is_ok());
    }

    #[test]
    fn a_random_draw_is_reported_at_its_span() {
        let src = "input x: [3]\noutput y = x + random_uniform([3])";
        let c = compile("t.nn", src, Stage::Ir);
        let g = c.graph.expect("a graph");
        let params = crate::backend::interp::init_params(&g, 0);
        let opts = Options {
            name: "t".into(),
            dims: &[],
            scales: Vec::new(),
        };
        let Err(errors) = export(&g, &params, &opts) else {
            panic!("a random draw exports");
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code.as_deref(), Some(code::EXPORT));
        let label = &errors[0].labels[0];
        assert_eq!(&src[label.range.clone()], "random_uniform([3])");
    }
}
