//! An ONNX model as readable text: its inputs, initializers and outputs
//! with their shapes, and each node as `outputs = OpType(inputs) attrs`,
//! loop bodies indented under their node. For `nnc export`'s summary and
//! the tests' snapshots.

use super::pb;

/// The whole model.
pub fn print_model(m: &pb::ModelProto) -> String {
    let mut out = String::new();
    for o in &m.opset_import {
        out.push_str(&format!(
            "opset {} {}\n",
            o.domain
                .as_deref()
                .filter(|d| !d.is_empty())
                .unwrap_or("ai.onnx"),
            o.version.unwrap_or(0)
        ));
    }
    if let Some(g) = &m.graph {
        print_graph(g, "", &mut out);
    }
    out
}

fn print_graph(g: &pb::GraphProto, indent: &str, out: &mut String) {
    for v in &g.input {
        out.push_str(&format!(
            "{indent}input {} {}\n",
            name(&v.name),
            shape_text(v)
        ));
    }
    for t in &g.initializer {
        out.push_str(&format!(
            "{indent}initializer {} {}\n",
            name(&t.name),
            tensor_text(t)
        ));
    }
    for n in &g.node {
        let attrs: Vec<String> = n.attribute.iter().filter_map(attr_text).collect();
        out.push_str(&format!(
            "{indent}{} = {}({}){}{}\n",
            n.output.join(", "),
            name(&n.op_type),
            n.input.join(", "),
            if attrs.is_empty() { "" } else { " " },
            attrs.join(" ")
        ));
        for a in &n.attribute {
            if let Some(body) = &a.g {
                print_graph(body, &format!("{indent}    "), out);
            }
        }
    }
    for v in &g.output {
        out.push_str(&format!(
            "{indent}output {} {}\n",
            name(&v.name),
            shape_text(v)
        ));
    }
}

fn name(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// An attribute as `name=value` (a body graph is printed apart).
fn attr_text(a: &pb::AttributeProto) -> Option<String> {
    let v = if a.g.is_some() {
        return None;
    } else if let Some(i) = a.i {
        i.to_string()
    } else if let Some(f) = a.f {
        f.to_string()
    } else if let Some(s) = &a.s {
        format!("{:?}", String::from_utf8_lossy(s))
    } else if let Some(t) = &a.t {
        tensor_text(t)
    } else {
        format!("{:?}", a.ints)
    };
    Some(format!("{}={v}", name(&a.name)))
}

/// A tensor's dims, and its values when it holds a few whole numbers
/// (shapes, axes): `[2, 4]`, `int64 [2] = [4, 1]`.
fn tensor_text(t: &pb::TensorProto) -> String {
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    if t.data_type != Some(super::builder::INT64) || raw.len() > 64 {
        return format!("{:?}", t.dims);
    }
    let values: Vec<i64> = raw
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect();
    format!("int64 {:?} = {values:?}", t.dims)
}

/// A value's shape: `[B, 4]`, or `[?]` where it is not given.
pub fn shape_text(v: &pb::ValueInfoProto) -> String {
    use pb::tensor_shape_proto::dimension::Value;
    let dims = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_ref().map(|s| &s.dim),
        _ => None,
    };
    let Some(dims) = dims else {
        return "[?]".into();
    };
    let dims: Vec<String> = dims
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(n)) => n.to_string(),
            Some(Value::DimParam(s)) => s.clone(),
            None => "?".into(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}
