//! `nnc import`: an ONNX model as a `.nn` file a person can read and edit,
//! with its weights as a safetensors file.
//!
//! Every ONNX node becomes one `let` (named after the node's output), the
//! graph's inputs `input`s and its initializers `param`s whose values go
//! to the weights file. Patterns the standard library names are written
//! with its functions: a `Gemm`, or a `MatMul` followed by the `Add` of a
//! bias, is `dense(x, w, b, identity)` (with the activation after it,
//! when the product feeds only that activation: `dense(x, w, b, relu)`),
//! `LayerNormalization` is `layer_norm`, `Softmax` `softmax`, `LSTM`
//! and `GRU` the stdlib's `lstm` and `gru` over the sequence, a `Scan`
//! of nnc's form a `scan` over a function its body becomes, and an
//! adding `ScatterND` `scatter_add`.
//!
//! Layouts follow nnc's: a layer is `x @ w + b` with `w: [in, out]`, so a
//! `Gemm` weight stored `[out, in]` (`transB = 1`) is transposed on the
//! way in; an LSTM's packed ONNX weights (`W [1, 4H, I]`, gates i, o, f,
//! c) become `wx [4, I, H]` in PyTorch's gate order (i, f, g, o) and its
//! two biases their sum. [`Origin`] records each parameter's source.
//!
//! What is computed from shapes alone (`Shape`, `Gather` of a shape,
//! `Unsqueeze`, `Concat` of shape vectors, `Constant`, `Expand` of a
//! constant) is evaluated here, as exporters use it to build the shapes
//! of `Reshape`s and initial states; the `.nn` file gets the results.
//!
//! An operator with no translation is an error listing each such
//! operator with its count and node names; nothing is written.

mod ops;
mod recurrent;
mod scan;
mod values;

use super::pb;
use crate::diag::{self, code, Diag};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use values::*;

/// An ONNX model translated.
pub struct Imported {
    /// The `.nn` source.
    pub text: String,
    /// The parameters' (and constant states') values by name, in nnc's
    /// layouts.
    pub params: Vec<(String, Tensor)>,
    /// Where each parameter comes from.
    pub origins: Vec<Origin>,
}

/// A parameter's source in the ONNX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub param: String,
    /// The initializer (or constant) it was made from.
    pub initializer: String,
    pub layout: Layout,
}

/// How a parameter's value was made from its initializer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The same values in the same shape.
    AsIs,
    /// The transpose of a 2-D initializer.
    Transposed,
    /// Rearranged from packed recurrent weights (slices per gate,
    /// transposed, reordered; biases summed).
    Derived,
}

/// Translates the ONNX model in `bytes` (read from the file `shown`);
/// the header names `weights`, the file its parameters are written to.
pub fn import(bytes: &[u8], shown: &str, weights: &str) -> Result<Imported, Diag> {
    let model = <pb::ModelProto as prost::Message>::decode(bytes).map_err(|e| {
        diag::error(
            code::FILE,
            format!("`{shown}` is not an ONNX model: {e}"),
        )
        .with_notes(vec![
            "help: `nnc import` reads the binary protobuf an ONNX exporter writes (`torch.onnx.export`, `onnx.save`)".into(),
        ])
    })?;
    let Some(graph) = &model.graph else {
        return Err(diag::error(code::FILE, format!("`{shown}` holds no graph")));
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version)
        .unwrap_or(0);
    unsupported(graph, shown)?;
    let mut t = Translator::default();
    t.header(&model, shown, opset, weights);
    t.graph(graph, opset)?;
    Ok(t.finish())
}

/// The operators [`Translator::node`] handles.
const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "Cast",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Equal",
    "Exp",
    "Expand",
    "Flatten",
    "GRU",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Pow",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Scan",
    "ScatterND",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Every node whose operator has no translation, as one error: each
/// operator with its count and (up to five) node names.
fn unsupported(graph: &pb::GraphProto, shown: &str) -> Result<(), Diag> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    // The nodes of the graph and of its loops' bodies.
    let mut nodes: Vec<&pb::NodeProto> = Vec::new();
    let mut graphs = vec![graph];
    while let Some(g) = graphs.pop() {
        for n in &g.node {
            nodes.push(n);
            graphs.extend(n.attribute.iter().filter_map(|a| a.g.as_ref()));
        }
    }
    for (i, n) in nodes.into_iter().enumerate() {
        let op = n.op_type.clone().unwrap_or_default();
        let domain = n.domain.as_deref().unwrap_or("");
        let known = (domain.is_empty() || domain == "ai.onnx") && SUPPORTED.contains(&op.as_str());
        if known {
            continue;
        }
        let shown_op = if domain.is_empty() {
            op
        } else {
            format!("{domain}.{op}")
        };
        let name = n.name.clone().unwrap_or_else(|| format!("node {i}"));
        match found.iter_mut().find(|(o, _)| *o == shown_op) {
            Some((_, names)) => names.push(name),
            None => found.push((shown_op, vec![name])),
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let notes = found
        .iter()
        .map(|(op, names)| {
            let more = if names.len() > 5 {
                format!(", and {} more", names.len() - 5)
            } else {
                String::new()
            };
            let listed: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
            format!("note: {op} × {}: {}{more}", names.len(), listed.join(", "))
        })
        .chain(std::iter::once(format!(
            "help: nnc translates {}",
            SUPPORTED.join(", ")
        )))
        .collect();
    Err(diag::error(
        code::INPUT,
        format!(
            "`{shown}` uses {} operator{} nnc cannot translate: {}",
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            found
                .iter()
                .map(|(o, _)| o.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_notes(notes))
}

#[derive(Default)]
struct Translator {
    head: String,
    decls: Vec<String>,
    lets: Vec<String>,
    outputs: Vec<String>,
    params: Vec<(String, Tensor)>,
    origins: Vec<Origin>,
    values: HashMap<String, Value>,
    /// Initializers not yet declared as parameters (declared on first
    /// use, in the layout that use wants).
    inits: HashMap<String, pb::TensorProto>,
    /// Initializer (and layout) → the parameter declared for it.
    declared: HashMap<(String, Layout), String>,
    used: HashSet<String>,
    /// The primitives' and the stdlib's function names.
    functions: HashSet<String>,
    /// How many nodes read each value (graph outputs count as readers).
    readers: HashMap<String, usize>,
    /// Nodes already written as part of an earlier node's pattern.
    absorbed: HashSet<usize>,
}

/// How many of `g`'s nodes read each value (its outputs count as
/// readers).
fn readers(g: &pb::GraphProto) -> HashMap<String, usize> {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &g.output {
        *readers
            .entry(o.name.clone().unwrap_or_default())
            .or_default() += 1;
    }
    readers
}

/// A translation failure inside a node.
fn node_error(node: &pb::NodeProto, msg: impl std::fmt::Display) -> Diag {
    diag::error(
        code::INPUT,
        format!(
            "ONNX node `{}` ({}): {msg}",
            node.name.as_deref().unwrap_or("?"),
            node.op_type.as_deref().unwrap_or("?")
        ),
    )
}

impl Translator {
    fn header(&mut self, model: &pb::ModelProto, shown: &str, opset: i64, weights: &str) {
        let producer = match (&model.producer_name, &model.producer_version) {
            (Some(n), Some(v)) if !n.is_empty() => format!("{n} {v}, "),
            (Some(n), _) if !n.is_empty() => format!("{n}, "),
            _ => String::new(),
        };
        let file = std::path::Path::new(shown)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.to_string());
        let _ = writeln!(
            self.head,
            "// Imported from {file} ({producer}opset {opset}) by `nnc import`."
        );
        let _ = writeln!(
            self.head,
            "// The parameters start at zero here; their values are in {weights}:\n\
             // run it with `--params {weights}`."
        );
    }

    /// A fresh identifier from `raw`.
    fn fresh(&mut self, raw: &str) -> String {
        if self.functions.is_empty() {
            self.functions = function_names().into_iter().collect();
        }
        // A node's output named after its operator (`/Relu_output_0`)
        // would shadow the function: it is the operator's output.
        let base = identifier(raw);
        let base = if RESERVED.contains(&base.as_str()) || self.functions.contains(&base) {
            format!("{base}_out")
        } else {
            base
        };
        let mut name = base.clone();
        let mut k = 1;
        while self.used.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.used.insert(name.clone());
        name
    }

    /// Makes `g`'s initializers readable (declared as parameters on
    /// first use).
    fn add_initializers(&mut self, g: &pb::GraphProto) {
        for init in &g.initializer {
            self.inits
                .insert(init.name.clone().unwrap_or_default(), init.clone());
        }
    }

    fn graph(&mut self, g: &pb::GraphProto, opset: i64) -> Result<(), Diag> {
        self.add_initializers(g);
        self.readers = readers(g);
        let mut syms = 0;
        for input in &g.input {
            let name = input.name.clone().unwrap_or_default();
            if self.inits.contains_key(&name) {
                continue;
            }
            let shape = input_shape(input, &mut syms)
                .map_err(|e| diag::error(code::INPUT, format!("graph input `{name}`: {e}")))?;
            let id = self.fresh(&name);
            self.decls
                .push(format!("input {id}: {}", shape_text(&shape)));
            self.values.insert(name, Value::Named { name: id, shape });
        }
        for (i, n) in g.node.iter().enumerate() {
            if self.absorbed.contains(&i) {
                continue;
            }
            self.node(g, i, n, opset)?;
        }
        for o in &g.output {
            let name = o.name.clone().unwrap_or_default();
            let v = self
                .value(&name)
                .map_err(|e| diag::error(code::INPUT, format!("graph output `{name}`: {e}")))?;
            let expr = self.operand(&v, &name);
            let id = identifier(&name);
            let id = if RESERVED.contains(&id.as_str()) {
                format!("{id}_")
            } else {
                id
            };
            self.outputs.push(format!("output {id} = {expr}"));
        }
        Ok(())
    }

    fn finish(self) -> Imported {
        let mut text = self.head;
        text.push('\n');
        for d in &self.decls {
            text.push_str(d);
            text.push('\n');
        }
        text.push('\n');
        for l in &self.lets {
            text.push_str(l);
            text.push('\n');
        }
        text.push('\n');
        for o in &self.outputs {
            text.push_str(o);
            text.push('\n');
        }
        Imported {
            text,
            params: self.params,
            origins: self.origins,
        }
    }

    /// The value named `name`: computed by a node before, a graph input,
    /// or an initializer (declared as a parameter on first use).
    fn value(&mut self, name: &str) -> Result<Value, String> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        let Some(init) = self.inits.get(name).cloned() else {
            return Err(format!("`{name}` is not computed before it is read"));
        };
        let (shape, vals) =
            tensor_values(&init).map_err(|e| format!("initializer `{name}`: {e}"))?;
        if is_int_type(&init) {
            return Ok(Value::Ints {
                shape,
                data: vals.iter().map(|&v| Dim::N(v as i64)).collect(),
            });
        }
        Ok(Value::Init {
            name: name.to_string(),
            shape: shape.iter().map(|&d| Dim::N(d as i64)).collect(),
        })
    }

    /// Declares a parameter for initializer `init` in `layout` (once).
    fn param(&mut self, init: &str, layout: Layout, shape: Vec<usize>, data: Vec<f32>) -> Value {
        let dims: Shape = shape.iter().map(|&d| Dim::N(d as i64)).collect();
        if let Some(p) = self.declared.get(&(init.to_string(), layout)) {
            return Value::Named {
                name: p.clone(),
                shape: dims,
            };
        }
        let id = self.fresh(init);
        let how = match layout {
            Layout::AsIs => String::new(),
            Layout::Transposed => ", transposed".into(),
            Layout::Derived => ", rearranged".into(),
        };
        let comment = if identifier(init) == id && how.is_empty() {
            String::new()
        } else {
            format!("  // {init}{how}")
        };
        self.decls.push(format!(
            "param {id}: {} = zeros(){comment}",
            shape_text(&dims)
        ));
        self.params.push((id.clone(), Tensor::new(shape, data)));
        self.origins.push(Origin {
            param: id.clone(),
            initializer: init.to_string(),
            layout,
        });
        self.declared.insert((init.to_string(), layout), id.clone());
        Value::Named {
            name: id,
            shape: dims,
        }
    }

    /// A 2-D initializer declared transposed (`[out, in]` stored, `[in,
    /// out]` wanted), or `None` when `name` is not a 2-D initializer.
    fn transposed_param(&mut self, name: &str) -> Option<Value> {
        if self.values.contains_key(name) {
            return None;
        }
        let init = self.inits.get(name)?.clone();
        let (shape, vals) = tensor_values(&init).ok()?;
        let [r, c] = shape[..] else { return None };
        let mut t = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = vals[i * c + j] as f32;
            }
        }
        Some(self.param(name, Layout::Transposed, vec![c, r], t))
    }

    /// How a value is written as an operand: its name, or a literal for a
    /// known value (a `state` beyond 256 elements).
    fn operand(&mut self, v: &Value, raw: &str) -> String {
        match v {
            Value::Named { name, .. } => name.clone(),
            Value::Init { name, .. } => {
                // `value` makes an `Init` only of an initializer whose
                // values it has decoded, so this decodes again.
                let init = self.inits[name].clone();
                let (shape, vals) = tensor_values(&init).unwrap_or_default();
                let data = vals.iter().map(|&v| v as f32).collect();
                match self.param(name, Layout::AsIs, shape, data) {
                    Value::Named { name, .. } => name,
                    // `param` returns the parameter's name, always.
                    _ => unreachable!("a parameter is named"),
                }
            }
            Value::Floats { shape, data } => self.literal(shape, data, raw),
            Value::Ints { shape, data } => match ints_as_floats(data) {
                Some(d) => self.literal(shape, &d, raw),
                // A size read as a number: counted, Σ of that many ones
                // (as the stdlib's `sqrt_dim`), element by element.
                None => {
                    let count = |d: &Dim| match d {
                        Dim::N(n) => number(*n as f32),
                        Dim::S(s) => format!("sum(ones([{s}]))"),
                    };
                    if shape.is_empty() {
                        return count(&data[0]);
                    }
                    let parts: Vec<String> = data
                        .iter()
                        .map(|d| format!("reshape({}, [1])", count(d)))
                        .collect();
                    parts[1..].iter().fold(parts[0].clone(), |acc, p| {
                        format!("concat({acc}, {p}, axis = 0)")
                    })
                }
            },
        }
    }

    fn literal(&mut self, shape: &[usize], data: &[f32], raw: &str) -> String {
        if shape.is_empty() {
            return number(data[0]);
        }
        let dims: Shape = shape.iter().map(|&d| Dim::N(d as i64)).collect();
        if data.iter().all(|&v| v == 0.0) {
            return format!("zeros({})", shape_text(&dims));
        }
        if data.iter().all(|&v| v == data[0]) {
            return format!("full({}, {})", shape_text(&dims), number(data[0]));
        }
        if data.len() > 256 {
            let id = self.fresh(raw);
            self.decls.push(format!(
                "state {id}: {} = zeros()  // constant {raw}",
                shape_text(&dims)
            ));
            self.params
                .push((id.clone(), Tensor::new(shape.to_vec(), data.to_vec())));
            self.origins.push(Origin {
                param: id.clone(),
                initializer: raw.to_string(),
                layout: Layout::AsIs,
            });
            return id;
        }
        fn nest(shape: &[usize], data: &[f32]) -> String {
            if shape.len() == 1 {
                let parts: Vec<String> = data.iter().map(|&v| format!("{v:?}")).collect();
                return format!("[{}]", parts.join(", "));
            }
            let step = numel(&shape[1..]);
            let parts: Vec<String> = data.chunks(step).map(|c| nest(&shape[1..], c)).collect();
            format!("[{}]", parts.join(", "))
        }
        nest(shape, data)
    }

    /// Binds a node's output to a `let` of `expr` with `shape`.
    fn bind(&mut self, out: &str, expr: String, shape: Shape) {
        let id = self.fresh(out);
        self.lets.push(format!("let {id} = {expr}"));
        self.values
            .insert(out.to_string(), Value::Named { name: id, shape });
    }

    /// The node reading `value` when exactly one does (and the graph
    /// does not output it): its index and proto.
    fn sole_reader<'g>(
        &self,
        g: &'g pb::GraphProto,
        after: usize,
        value: &str,
    ) -> Option<(usize, &'g pb::NodeProto)> {
        if self.readers.get(value).copied() != Some(1) {
            return None;
        }
        g.node
            .iter()
            .enumerate()
            .skip(after + 1)
            .find(|(_, n)| n.input.iter().any(|i| i == value))
    }

    /// The activation a `dense` can take from the node after it.
    fn fused_activation<'g>(
        &self,
        g: &'g pb::GraphProto,
        after: usize,
        value: &str,
    ) -> Option<(usize, &'static str, &'g str)> {
        let (k, n) = self.sole_reader(g, after, value)?;
        let f = match n.op_type.as_deref()? {
            "Relu" => "relu",
            "Tanh" => "tanh",
            "Sigmoid" => "sigmoid",
            _ => return None,
        };
        Some((k, f, n.output.first()?.as_str()))
    }
}
