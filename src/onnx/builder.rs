//! A small builder of ONNX graphs: it adds nodes with their attributes,
//! names the values it makes up (`%7.axes`, each name once), and holds
//! the literal tensors a graph needs, as initializers in the model's graph
//! and as `Constant` nodes in a loop body (where a runtime may not look
//! for initializers).

use super::pb;
use std::collections::HashSet;

/// ONNX element types (`TensorProto.DataType`).
pub const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
pub const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;
pub const BOOL: i32 = pb::tensor_proto::DataType::Bool as i32;

/// A node's attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Str(&'static str),
    Tensor(pb::TensorProto),
    Graph(pb::GraphProto),
}

/// One graph under construction.
pub struct GraphBuilder {
    /// Prepended to every name this graph makes up, so that the names of
    /// a loop body never shadow the enclosing graph's.
    prefix: String,
    /// Whether this is the model's graph (literals as initializers) or a
    /// loop body (literals as `Constant` nodes).
    pub top: bool,
    taken: HashSet<String>,
    pub nodes: Vec<pb::NodeProto>,
    pub initializers: Vec<pb::TensorProto>,
}

impl GraphBuilder {
    pub fn new(prefix: &str, top: bool) -> GraphBuilder {
        GraphBuilder {
            prefix: prefix.to_string(),
            top,
            taken: HashSet::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// Claims `name` as is (an input, a parameter, an output named in the
    /// source); false when it is already taken.
    pub fn claim(&mut self, name: &str) -> bool {
        self.taken.insert(name.to_string())
    }

    /// A fresh value name: `prefix + base`, or with `.2`, `.3`, … added
    /// when that is taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let stem = format!("{}{base}", self.prefix);
        let mut name = stem.clone();
        let mut k = 2;
        while !self.taken.insert(name.clone()) {
            name = format!("{stem}.{k}");
            k += 1;
        }
        name
    }

    /// Adds a node `op_type(inputs) -> outputs`, named `name`.
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.to_string()),
            op_type: Some(op_type.to_string()),
            domain: Some(String::new()),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// Adds a node with one output, a fresh value named after `base`;
    /// returns that name.
    pub fn op(
        &mut self,
        op_type: &str,
        base: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.fresh(base);
        self.node(op_type, &node_name(&out, op_type), inputs, &[&out], attrs);
        out
    }

    /// A literal tensor under a fresh name after `base`.
    pub fn literal(&mut self, base: &str, t: pb::TensorProto) -> String {
        let name = self.fresh(base);
        self.literal_named(&name, t);
        name
    }

    /// A literal tensor under `name`, which the caller has claimed.
    pub fn literal_named(&mut self, name: &str, mut t: pb::TensorProto) {
        if self.top {
            t.name = Some(name.to_string());
            self.initializers.push(t);
        } else {
            self.node(
                "Constant",
                &node_name(name, "Constant"),
                &[],
                &[name],
                vec![("value", Attr::Tensor(t))],
            );
        }
    }

    /// A 1-D `int64` literal (axes, shapes, slice bounds).
    pub fn ints(&mut self, base: &str, values: &[i64]) -> String {
        self.literal(base, int64_tensor(values))
    }
}

/// A node's name: the value it makes, without the `%`, and its op.
pub fn node_name(value: &str, op_type: &str) -> String {
    format!("{}:{op_type}", value.replace('%', "n"))
}

/// An `f32` tensor of `shape` holding `data` (row-major).
pub fn float_tensor(shape: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(FLOAT),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A 1-D `int64` tensor.
pub fn int64_tensor(values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(INT64),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// One dim of a value's type.
pub enum Extent {
    Size(u64),
    /// A symbolic dimension (`dim_param`).
    Named(String),
    /// Not given (a loop body's, which the runtime sizes from the loop's
    /// operands).
    Unknown,
}

/// A tensor value's type: its element type and dims.
pub fn value_info(name: &str, elem: i32, dims: &[Extent]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match d {
                Extent::Size(n) => Some(dimension::Value::DimValue(*n as i64)),
                Extent::Named(s) => Some(dimension::Value::DimParam(s.clone())),
                Extent::Unknown => None,
            },
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, a: Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let ty = match a {
        Attr::Int(i) => {
            p.i = Some(i);
            T::Int
        }
        Attr::Ints(v) => {
            p.ints = v;
            T::Ints
        }
        Attr::Str(s) => {
            p.s = Some(s.as_bytes().to_vec());
            T::String
        }
        Attr::Tensor(t) => {
            p.t = Some(t);
            T::Tensor
        }
        Attr::Graph(g) => {
            p.g = Some(g);
            T::Graph
        }
    };
    p.r#type = Some(ty as i32);
    p
}
