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
//! and `GRU` the stdlib's `lstm` and `gru` over the sequence.
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

use super::pb;
use crate::diag::{self, code, Diag};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

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

/// A dimension: a number or a symbolic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dim {
    N(i64),
    S(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Dim::N(n) => write!(f, "{n}"),
            Dim::S(s) => f.write_str(s),
        }
    }
}

type Shape = Vec<Dim>;

fn shape_text(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A value of the ONNX graph as the translation sees it.
#[derive(Clone, Debug)]
enum Value {
    /// A tensor the `.nn` file computes, under this name.
    Named { name: String, shape: Shape },
    /// A float initializer, declared as a parameter where it is first
    /// read as itself (a `Gemm` reads its weight transposed instead).
    Init { name: String, shape: Shape },
    /// Floats known here (constants, folded shape arithmetic).
    Floats { shape: Vec<usize>, data: Vec<f32> },
    /// Integers known here, where an element may be a symbolic dimension
    /// (a `Shape` of an input with a symbolic batch).
    Ints { shape: Vec<usize>, data: Vec<Dim> },
}

impl Value {
    fn shape(&self) -> Shape {
        match self {
            Value::Named { shape, .. } | Value::Init { shape, .. } => shape.clone(),
            Value::Floats { shape, .. } | Value::Ints { shape, .. } => {
                shape.iter().map(|&d| Dim::N(d as i64)).collect()
            }
        }
    }
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
    for (i, n) in graph.node.iter().enumerate() {
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

/// A node's attributes by name.
struct Attrs<'a>(&'a [pb::AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.0.iter().find(|a| a.name.as_deref() == Some(name))
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).and_then(|a| a.f).unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
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

/// A name made an identifier of the language: letters, digits and `_`,
/// not starting with a digit, lower case.
fn identifier(raw: &str) -> String {
    let raw = raw.strip_prefix("onnx::").unwrap_or(raw);
    let raw = raw.strip_suffix("_output_0").unwrap_or(raw);
    let mut s: String = raw
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s.trim_matches('_').to_string();
    match s.chars().next() {
        None => "v".into(),
        Some(c) if c.is_ascii_digit() => format!("v{s}"),
        _ => s,
    }
}

/// Words of the language a name must not take.
const RESERVED: &[&str] = &[
    "fn",
    "let",
    "model",
    "param",
    "input",
    "output",
    "state",
    "train",
    "phase",
    "true",
    "false",
    "data",
    "loss",
    "predict",
    "optimizer",
];

/// The names of the primitives and the standard library's functions,
/// which a value must not shadow.
fn function_names() -> Vec<String> {
    let mut names: Vec<String> = crate::sema::builtins::ALL
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for (_, text) in crate::stdlib::FILES {
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names
}

/// A float as the language writes it (round-tripping).
fn number(v: f32) -> String {
    let s = format!("{v:?}");
    if v < 0.0 {
        format!("({s})")
    } else {
        s
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The floats of a tensor proto (float, double or any integer type).
fn tensor_values(t: &pb::TensorProto) -> Result<(Vec<usize>, Vec<f64>), String> {
    use pb::tensor_proto::DataType as T;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n = numel(&shape);
    if !t.external_data.is_empty() {
        return Err("its data is in an external file, which nnc does not read".into());
    }
    let ty = T::try_from(t.data_type.unwrap_or(0)).unwrap_or(T::Undefined);
    let raw = t.raw_data.as_deref();
    let vals: Vec<f64> = match (ty, raw) {
        (T::Float, Some(r)) => r
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        (T::Float, None) => t.float_data.iter().map(|&v| v as f64).collect(),
        (T::Double, Some(r)) => r
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        (T::Double, None) => t.double_data.clone(),
        (T::Int64, Some(r)) => r
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        (T::Int64, None) => t.int64_data.iter().map(|&v| v as f64).collect(),
        (T::Int32, Some(r)) => r
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect(),
        (T::Int32 | T::Int16 | T::Int8 | T::Uint8 | T::Uint16 | T::Bool, None) => {
            t.int32_data.iter().map(|&v| v as f64).collect()
        }
        (T::Bool | T::Uint8 | T::Int8, Some(r)) => r
            .iter()
            .map(|&b| {
                if ty == T::Int8 {
                    b as i8 as f64
                } else {
                    b as f64
                }
            })
            .collect(),
        _ => return Err(format!("its element type {ty:?} is not supported")),
    };
    if vals.len() != n {
        return Err(format!(
            "it holds {} values for shape {shape:?}",
            vals.len()
        ));
    }
    Ok((shape, vals))
}

fn is_int_type(t: &pb::TensorProto) -> bool {
    use pb::tensor_proto::DataType as T;
    matches!(
        T::try_from(t.data_type.unwrap_or(0)),
        Ok(T::Int64 | T::Int32 | T::Int16 | T::Int8 | T::Uint8 | T::Uint16)
    )
}

/// NumPy broadcasting of two shapes (a dimension 1 stretches).
fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Shape> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = (i + a.len()).checked_sub(n).map(|k| &a[k]);
        let y = (i + b.len()).checked_sub(n).map(|k| &b[k]);
        out.push(match (x, y) {
            (Some(x), None) => x.clone(),
            (None, Some(y)) => y.clone(),
            (Some(Dim::N(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::N(1))) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            _ => return None,
        });
    }
    Some(out)
}

/// An axis attribute (negative from the end) as an index into `rank`.
fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let k = if a < 0 { a + r } else { a };
    (0..r).contains(&k).then_some(k as usize)
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

    fn graph(&mut self, g: &pb::GraphProto, opset: i64) -> Result<(), Diag> {
        for init in &g.initializer {
            self.inits
                .insert(init.name.clone().unwrap_or_default(), init.clone());
        }
        for n in &g.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                *self.readers.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &g.output {
            *self
                .readers
                .entry(o.name.clone().unwrap_or_default())
                .or_default() += 1;
        }
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
                let init = self.inits[name].clone();
                let (shape, vals) = tensor_values(&init).unwrap_or_default();
                let data = vals.iter().map(|&v| v as f32).collect();
                match self.param(name, Layout::AsIs, shape, data) {
                    Value::Named { name, .. } => name,
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

    fn node(
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
            Value::Named { shape: is, .. } if a == 0 => {
                let x = self.operand(&data, out);
                let ids = self.operand(&idx, out);
                let mut shape = is.clone();
                shape.extend(s[1..].iter().cloned());
                self.bind(out, format!("gather({x}, {ids})"), shape);
                Ok(())
            }
            _ => Err(node_error(
                n,
                "a gather with constant indices of rank > 0, or along an axis other than the first",
            )),
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

    /// `LSTM` and `GRU` (forward, one layer, default activations) as the
    /// stdlib's `lstm` and `gru` over the sequence.
    fn recurrent(
        &mut self,
        n: &pb::NodeProto,
        attrs: &Attrs,
        args: &[Option<Value>],
    ) -> Result<(), Diag> {
        let op = n.op_type.clone().unwrap_or_default();
        let lstm = op == "LSTM";
        let err = |m: String| node_error(n, m);
        let dir = attrs
            .string("direction")
            .unwrap_or_else(|| "forward".into());
        if dir != "forward" {
            return Err(err(format!(
                "direction `{dir}` (nnc translates forward recurrences)"
            )));
        }
        if attrs.get("activations").is_some()
            || attrs.get("clip").is_some()
            || attrs.int("layout", 0) != 0
            || attrs.int("input_forget", 0) != 0
        {
            return Err(err(
                "activations, clip, layout or input_forget other than the defaults".into(),
            ));
        }
        if !lstm && attrs.int("linear_before_reset", 0) != 1 {
            return Err(err("a GRU with linear_before_reset = 0 (nnc's gru_cell is PyTorch's, linear_before_reset = 1)".into()));
        }
        if args.get(4).cloned().flatten().is_some() {
            return Err(err("sequence_lens (sequences of different lengths)".into()));
        }
        let x = args[0].clone().ok_or_else(|| err("no input".into()))?;
        let xs = x.shape();
        if xs.len() != 3 {
            return Err(err("an input that is not [T, B, I]".into()));
        }
        let gates = if lstm { 4 } else { 3 };
        let weight = |k: usize| -> Result<(String, Vec<usize>, Vec<f64>), Diag> {
            let name = n
                .input
                .get(k)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(format!("input {k} is missing")))?;
            let init = self
                .inits
                .get(name)
                .ok_or_else(|| err(format!("`{name}` is not an initializer")))?;
            let (s, v) = tensor_values(init).map_err(|e| err(format!("`{name}`: {e}")))?;
            Ok((name.clone(), s, v))
        };
        let (wn, ws, wv) = weight(1)?;
        let (rn, rs, rv) = weight(2)?;
        let h = rs
            .get(2)
            .copied()
            .ok_or_else(|| err("R is not [1, G·H, H]".into()))?;
        let i = ws
            .get(2)
            .copied()
            .ok_or_else(|| err("W is not [1, G·H, I]".into()))?;
        if ws[..2] != [1, gates * h] || rs[..2] != [1, gates * h] {
            return Err(err(format!(
                "W {ws:?} and R {rs:?} for {gates} gates of hidden size {h}"
            )));
        }
        // nnc's gate k is ONNX's gate order[k].
        let order: &[usize] = if lstm { &[0, 2, 3, 1] } else { &[1, 0, 2] };
        // [G·H, cols] rows of gate `src` transposed into [cols, H].
        let per_gate = |vals: &[f64], cols: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(gates * cols * h);
            for &src in order {
                for c in 0..cols {
                    for r in 0..h {
                        out.push(vals[(src * h + r) * cols + c] as f32);
                    }
                }
            }
            out
        };
        let wx = per_gate(&wv, i);
        let wh = per_gate(&rv, h);
        let (bx, bh) = match n.input.get(3).filter(|s| !s.is_empty()) {
            Some(_) => {
                let (_, bs, bv) = weight(3)?;
                let bv = &bv;
                if bs != [1, 2 * gates * h] {
                    return Err(err(format!("B is {bs:?}, not [1, {}]", 2 * gates * h)));
                }
                let pick = |off: usize| -> Vec<f32> {
                    order
                        .iter()
                        .flat_map(|&src| (0..h).map(move |r| bv[off + src * h + r] as f32))
                        .collect()
                };
                (pick(0), pick(gates * h))
            }
            None => (vec![0.0; gates * h], vec![0.0; gates * h]),
        };
        let node = identifier(
            n.name
                .as_deref()
                .unwrap_or(if lstm { "lstm" } else { "gru" }),
        );
        let wxp = self.param_derived(&format!("{node}.wx"), &wn, vec![gates, i, h], wx);
        let whp = self.param_derived(&format!("{node}.wh"), &rn, vec![gates, h, h], wh);
        let bname = n.input.get(3).cloned().unwrap_or_default();
        let (t, b) = (xs[0].clone(), xs[1].clone());
        let init_state = |k: usize, this: &mut Self| -> Result<String, Diag> {
            match args.get(k).cloned().flatten() {
                None => Ok(format!(
                    "zeros({})",
                    shape_text(&[b.clone(), Dim::N(h as i64)])
                )),
                Some(v) => {
                    if let Value::Floats { data, .. } = &v {
                        if data.iter().all(|&z| z == 0.0) {
                            return Ok(format!(
                                "zeros({})",
                                shape_text(&[b.clone(), Dim::N(h as i64)])
                            ));
                        }
                    }
                    let e = this.operand(&v, &n.input[k]);
                    Ok(format!(
                        "reshape({e}, {})",
                        shape_text(&[b.clone(), Dim::N(h as i64)])
                    ))
                }
            }
        };
        let xe = self.operand(&x, &n.input[0]);
        let h0 = init_state(5, self)?;
        let seq = if lstm {
            let bsum: Vec<f32> = bx.iter().zip(&bh).map(|(a, c)| a + c).collect();
            let bp = self.param_derived(&format!("{node}.b"), &bname, vec![gates, h], bsum);
            let c0 = init_state(6, self)?;
            format!("lstm({xe}, lstm_state({h0}, {c0}), {wxp}, {whp}, {bp})")
        } else {
            let bxp = self.param_derived(&format!("{node}.bx"), &bname, vec![gates, h], bx);
            let bhp = self.param_derived(&format!("{node}.bh"), &bname, vec![gates, h], bh);
            format!("gru({xe}, {h0}, {wxp}, {whp}, {bxp}, {bhp})")
        };
        let states = self.fresh(&format!("{node}_states"));
        self.lets.push(format!("let {states} = {seq}"));
        let hd = Dim::N(h as i64);
        let (h_all, h_last, c_last) = if lstm {
            (
                format!("lstm_h({states})"),
                format!("lstm_h(last({states}))"),
                Some(format!("lstm_c(last({states}))")),
            )
        } else {
            (states.clone(), format!("last({states})"), None)
        };
        let outs = [
            (0, h_all, vec![t, Dim::N(1), b.clone(), hd.clone()]),
            (1, h_last, vec![Dim::N(1), b.clone(), hd.clone()]),
        ];
        for (k, e, shape) in outs {
            if let Some(o) = n.output.get(k).filter(|o| !o.is_empty()) {
                self.bind(o, format!("reshape({e}, {})", shape_text(&shape)), shape);
            }
        }
        if let (Some(o), Some(e)) = (n.output.get(2).filter(|o| !o.is_empty()), c_last) {
            let shape = vec![Dim::N(1), b, hd];
            self.bind(o, format!("reshape({e}, {})", shape_text(&shape)), shape);
        }
        Ok(())
    }

    fn param_derived(
        &mut self,
        name: &str,
        init: &str,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> String {
        let id = self.fresh(name);
        let dims: Shape = shape.iter().map(|&d| Dim::N(d as i64)).collect();
        self.decls.push(format!(
            "param {id}: {} = zeros()  // from {init}, rearranged",
            shape_text(&dims)
        ));
        self.params.push((id.clone(), Tensor::new(shape, data)));
        self.origins.push(Origin {
            param: id.clone(),
            initializer: init.to_string(),
            layout: Layout::Derived,
        });
        id
    }
}

/// A graph input's shape: numbers, named dimensions, and a fresh name
/// for a dimension with neither.
fn input_shape(v: &pb::ValueInfoProto, syms: &mut usize) -> Result<Shape, String> {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value as T;
    let Some(T::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("not a tensor".into());
    };
    let Some(shape) = &t.shape else {
        return Err("its shape is not given".into());
    };
    Ok(shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(n)) => Dim::N(*n),
            Some(D::DimParam(p)) if !p.is_empty() => {
                let id = identifier(p);
                let mut c = id.chars();
                let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('D');
                Dim::S(format!("{first}{}", c.as_str()))
            }
            _ => {
                *syms += 1;
                Dim::S(format!("D{syms}"))
            }
        })
        .collect())
}

fn constant(attrs: &Attrs) -> Result<Value, String> {
    if let Some(t) = attrs.get("value").and_then(|a| a.t.as_ref()) {
        let (shape, vals) = tensor_values(t)?;
        return Ok(if is_int_type(t) {
            Value::Ints {
                shape,
                data: vals.iter().map(|&v| Dim::N(v as i64)).collect(),
            }
        } else {
            Value::Floats {
                shape,
                data: vals.iter().map(|&v| v as f32).collect(),
            }
        });
    }
    if let Some(a) = attrs.get("value_float").and_then(|a| a.f) {
        return Ok(Value::Floats {
            shape: vec![],
            data: vec![a],
        });
    }
    if let Some(a) = attrs.get("value_floats") {
        return Ok(Value::Floats {
            shape: vec![a.floats.len()],
            data: a.floats.clone(),
        });
    }
    if let Some(a) = attrs.get("value_int").and_then(|a| a.i) {
        return Ok(Value::Ints {
            shape: vec![],
            data: vec![Dim::N(a)],
        });
    }
    if let Some(a) = attrs.get("value_ints") {
        return Ok(Value::Ints {
            shape: vec![a.ints.len()],
            data: a.ints.iter().map(|&v| Dim::N(v)).collect(),
        });
    }
    Err("a Constant with no value nnc reads (value, value_float(s), value_int(s))".into())
}

fn ints_as_floats(d: &[Dim]) -> Option<Vec<f32>> {
    d.iter()
        .map(|d| match d {
            Dim::N(n) => Some(*n as f32),
            Dim::S(_) => None,
        })
        .collect()
}

/// Integers known here (all numbers).
fn known_ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Ints { data, .. } => data
            .iter()
            .map(|d| match d {
                Dim::N(n) => Some(*n),
                Dim::S(_) => None,
            })
            .collect(),
        Value::Floats { data, .. } => Some(data.iter().map(|&f| f as i64).collect()),
        Value::Named { .. } | Value::Init { .. } => None,
    }
}

/// A shape vector known here (numbers or symbolic dimensions).
fn known_dims(v: &Value) -> Option<Vec<Dim>> {
    match v {
        Value::Ints { data, .. } => Some(data.clone()),
        Value::Floats { data, .. } => Some(data.iter().map(|&f| Dim::N(f as i64)).collect()),
        Value::Named { .. } | Value::Init { .. } => None,
    }
}

fn static_shape(s: &[Dim]) -> Option<Vec<usize>> {
    s.iter()
        .map(|d| match d {
            Dim::N(n) => usize::try_from(*n).ok(),
            Dim::S(_) => None,
        })
        .collect()
}

/// The product of dimensions as one dimension: a number, or a single
/// symbolic dimension times ones.
fn product(s: &[Dim]) -> Result<Dim, String> {
    let syms: Vec<&Dim> = s.iter().filter(|d| matches!(d, Dim::S(_))).collect();
    let num: i64 = s
        .iter()
        .map(|d| match d {
            Dim::N(n) => *n,
            Dim::S(_) => 1,
        })
        .product();
    match syms.as_slice() {
        [] => Ok(Dim::N(num)),
        [one] if num == 1 => Ok((*one).clone()),
        _ => Err(format!(
            "a dimension that is a product with a symbolic one ({}), which nnc's shapes cannot name",
            shape_text(s)
        )),
    }
}

/// ONNX `Reshape`'s target: 0 copies the input's dimension (unless
/// `allowzero`), −1 takes what is left.
fn reshape_target(input: &[Dim], spec: &[Dim], allowzero: bool) -> Result<Shape, String> {
    let mut out: Vec<Option<Dim>> = spec
        .iter()
        .enumerate()
        .map(|(k, d)| match d {
            Dim::N(0) if !allowzero => input.get(k).cloned(),
            Dim::N(-1) => None,
            d => Some(d.clone()),
        })
        .collect();
    let holes = out.iter().filter(|d| d.is_none()).count();
    if holes > 1 {
        return Err("a reshape with more than one −1".into());
    }
    if holes == 1 {
        // What the input has that the named dimensions do not cover.
        let mut left: Vec<Dim> = input.to_vec();
        let mut divisor = 1i64;
        for d in out.iter().flatten() {
            match d {
                Dim::S(_) => match left.iter().position(|x| x == d) {
                    Some(p) => {
                        left.remove(p);
                    }
                    None => {
                        return Err(format!(
                            "a reshape of {} to {}",
                            shape_text(input),
                            shape_text(spec)
                        ))
                    }
                },
                Dim::N(n) => divisor *= n,
            }
        }
        let rest = product(&left)?;
        let fill = match rest {
            Dim::N(n) if divisor > 0 && n % divisor == 0 => Dim::N(n / divisor),
            Dim::S(s) if divisor == 1 => Dim::S(s),
            _ => {
                return Err(format!(
                    "a reshape of {} to {}",
                    shape_text(input),
                    shape_text(spec)
                ))
            }
        };
        for d in out.iter_mut() {
            if d.is_none() {
                *d = Some(fill.clone());
            }
        }
    }
    Ok(out.into_iter().map(|d| d.expect("filled")).collect())
}

/// NumPy's matmul shape (1-D operands promoted and dropped).
fn matmul_shape(a: &[Dim], b: &[Dim]) -> Option<Shape> {
    let (a1, b1) = (a.len() == 1, b.len() == 1);
    let a: Vec<Dim> = if a1 {
        vec![Dim::N(1), a[0].clone()]
    } else {
        a.to_vec()
    };
    let b: Vec<Dim> = if b1 {
        vec![b[0].clone(), Dim::N(1)]
    } else {
        b.to_vec()
    };
    if a.len() < 2 || b.len() < 2 || a[a.len() - 1] != b[b.len() - 2] {
        return None;
    }
    let mut out = broadcast(&a[..a.len() - 2], &b[..b.len() - 2])?;
    if !a1 {
        out.push(a[a.len() - 2].clone());
    }
    if !b1 {
        out.push(b[b.len() - 1].clone());
    }
    Some(out)
}

/// Arithmetic on two known float tensors, when one is a scalar.
fn fold_binary(op: &str, sa: &[usize], da: &[f32], sb: &[usize], db: &[f32]) -> Option<Value> {
    let f = |x: f32, y: f32| -> Option<f32> {
        Some(match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            "Div" => x / y,
            "Pow" => x.powf(y),
            "Max" => x.max(y),
            "Min" => x.min(y),
            _ => return None,
        })
    };
    let (shape, data) = match (
        sa.is_empty() || da.len() == 1,
        sb.is_empty() || db.len() == 1,
    ) {
        (_, true) if !da.is_empty() => (
            sa.to_vec(),
            da.iter()
                .map(|&x| f(x, db[0]))
                .collect::<Option<Vec<_>>>()?,
        ),
        (true, _) => (
            sb.to_vec(),
            db.iter()
                .map(|&y| f(da[0], y))
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    Some(Value::Floats { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_names_of_the_language() {
        assert_eq!(identifier("/fc1/Gemm_output_0"), "fc1_gemm");
        assert_eq!(identifier("onnx::MatMul_94"), "matmul_94");
        assert_eq!(identifier("0.weight"), "v0_weight");
        assert_eq!(identifier("fc1.bias"), "fc1_bias");
    }

    #[test]
    fn reshape_targets_fill_zero_and_minus_one() {
        let b = Dim::S("B".into());
        let input = vec![b.clone(), Dim::N(8), Dim::N(2), Dim::N(2)];
        assert_eq!(
            reshape_target(&input, &[Dim::N(0), Dim::N(-1)], false).unwrap(),
            vec![b.clone(), Dim::N(32)]
        );
        assert_eq!(
            reshape_target(&input, &[Dim::N(-1), Dim::N(4)], false).unwrap_err(),
            "a dimension that is a product with a symbolic one ([B, 8, 2, 2]), which nnc's shapes cannot name"
        );
        assert_eq!(
            reshape_target(
                &[Dim::N(2), Dim::N(6), Dim::N(16)],
                &[Dim::N(2), Dim::N(6), Dim::N(2), Dim::N(8)],
                false
            )
            .unwrap(),
            vec![Dim::N(2), Dim::N(6), Dim::N(2), Dim::N(8)]
        );
    }

    #[test]
    fn matmul_shapes_follow_numpy() {
        let n = |v: &[i64]| v.iter().map(|&x| Dim::N(x)).collect::<Vec<_>>();
        assert_eq!(
            matmul_shape(&n(&[2, 3, 4]), &n(&[4, 5])),
            Some(n(&[2, 3, 5]))
        );
        assert_eq!(matmul_shape(&n(&[4]), &n(&[4, 5])), Some(n(&[5])));
        assert_eq!(matmul_shape(&n(&[2, 3]), &n(&[4, 5])), None);
    }
}
