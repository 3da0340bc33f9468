//! The values an ONNX graph holds as the translation sees them: shapes
//! with symbolic dimensions, tensors known at import time (constants and
//! folded shape arithmetic), and the arithmetic on shapes that ONNX's
//! operators define (broadcasting, `Reshape`'s 0 and −1, `MatMul`).

use super::pb;

/// A dimension: a number or a symbolic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Dim {
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

pub(super) type Shape = Vec<Dim>;

pub(super) fn shape_text(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A value of the ONNX graph as the translation sees it.
#[derive(Clone, Debug)]
pub(super) enum Value {
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
    pub(super) fn shape(&self) -> Shape {
        match self {
            Value::Named { shape, .. } | Value::Init { shape, .. } => shape.clone(),
            Value::Floats { shape, .. } | Value::Ints { shape, .. } => {
                shape.iter().map(|&d| Dim::N(d as i64)).collect()
            }
        }
    }
}

/// A node's attributes by name.
pub(super) struct Attrs<'a>(pub(super) &'a [pb::AttributeProto]);

impl Attrs<'_> {
    pub(super) fn get(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.0.iter().find(|a| a.name.as_deref() == Some(name))
    }
    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).and_then(|a| a.i).unwrap_or(default)
    }
    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).and_then(|a| a.f).unwrap_or(default)
    }
    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
}

/// A name made an identifier of the language: letters, digits and `_`,
/// not starting with a digit, lower case.
pub(super) fn identifier(raw: &str) -> String {
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
pub(super) const RESERVED: &[&str] = &[
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
pub(super) fn function_names() -> Vec<String> {
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
pub(super) fn number(v: f32) -> String {
    let s = format!("{v:?}");
    if v < 0.0 {
        format!("({s})")
    } else {
        s
    }
}

pub(super) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The floats of a tensor proto (float, double or any integer type).
pub(super) fn tensor_values(t: &pb::TensorProto) -> Result<(Vec<usize>, Vec<f64>), String> {
    use pb::tensor_proto::DataType as T;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n = numel(&shape);
    if !t.external_data.is_empty() {
        return Err("its data is in an external file, which nnc does not read".into());
    }
    let ty = T::try_from(t.data_type.unwrap_or(0)).unwrap_or(T::Undefined);
    let raw = t.raw_data.as_deref();
    // `chunks_exact(n)` gives slices of exactly n bytes, so the
    // conversions to arrays below cannot fail.
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

pub(super) fn is_int_type(t: &pb::TensorProto) -> bool {
    use pb::tensor_proto::DataType as T;
    matches!(
        T::try_from(t.data_type.unwrap_or(0)),
        Ok(T::Int64 | T::Int32 | T::Int16 | T::Int8 | T::Uint8 | T::Uint16)
    )
}

/// NumPy broadcasting of two shapes (a dimension 1 stretches).
pub(super) fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Shape> {
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
pub(super) fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let k = if a < 0 { a + r } else { a };
    (0..r).contains(&k).then_some(k as usize)
}

/// A graph input's shape: numbers, named dimensions, and a fresh name
/// for a dimension with neither.
pub(super) fn input_shape(v: &pb::ValueInfoProto, syms: &mut usize) -> Result<Shape, String> {
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

pub(super) fn constant(attrs: &Attrs) -> Result<Value, String> {
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

pub(super) fn ints_as_floats(d: &[Dim]) -> Option<Vec<f32>> {
    d.iter()
        .map(|d| match d {
            Dim::N(n) => Some(*n as f32),
            Dim::S(_) => None,
        })
        .collect()
}

/// Integers known here (all numbers).
pub(super) fn known_ints(v: &Value) -> Option<Vec<i64>> {
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
pub(super) fn known_dims(v: &Value) -> Option<Vec<Dim>> {
    match v {
        Value::Ints { data, .. } => Some(data.clone()),
        Value::Floats { data, .. } => Some(data.iter().map(|&f| Dim::N(f as i64)).collect()),
        Value::Named { .. } | Value::Init { .. } => None,
    }
}

pub(super) fn static_shape(s: &[Dim]) -> Option<Vec<usize>> {
    s.iter()
        .map(|d| match d {
            Dim::N(n) => usize::try_from(*n).ok(),
            Dim::S(_) => None,
        })
        .collect()
}

/// The product of dimensions as one dimension: a number, or a single
/// symbolic dimension times ones.
pub(super) fn product(s: &[Dim]) -> Result<Dim, String> {
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
pub(super) fn reshape_target(
    input: &[Dim],
    spec: &[Dim],
    allowzero: bool,
) -> Result<Shape, String> {
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
    // The one hole was filled above (more than one is an error).
    Ok(out.into_iter().map(|d| d.expect("filled")).collect())
}

/// NumPy's matmul shape (1-D operands promoted and dropped).
pub(super) fn matmul_shape(a: &[Dim], b: &[Dim]) -> Option<Shape> {
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
pub(super) fn fold_binary(
    op: &str,
    sa: &[usize],
    da: &[f32],
    sb: &[usize],
    db: &[f32],
) -> Option<Value> {
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
