//! A dense, row-major `f32` tensor: the value type of constants, parameters
//! and the interpreter.

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and row-major data. The caller guarantees
    /// `data.len()` is the product of `shape` (checked in debug builds).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor::new(vec![], vec![v])
    }

    pub fn full(shape: Vec<usize>, v: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, vec![v; n])
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Formats a tensor the way NumPy does: nested brackets, and with more than
/// `limit` elements along an axis, the first and last three with `...`
/// between.
pub fn format_tensor(t: &Tensor, limit: usize) -> String {
    fn rec(out: &mut String, t: &Tensor, st: &[usize], axis: usize, off: usize, limit: usize) {
        if axis == t.shape.len() {
            out.push_str(&format_f32(t.data[off]));
            return;
        }
        let n = t.shape[axis];
        out.push('[');
        let elide = n > limit;
        let mut first = true;
        for i in 0..n {
            if elide && i >= 3 && i < n - 3 {
                if i == 3 {
                    out.push_str(", ...");
                }
                continue;
            }
            if !first {
                if axis + 1 < t.shape.len() {
                    out.push_str(",\n");
                    out.push_str(&" ".repeat(axis + 1));
                } else {
                    out.push_str(", ");
                }
            }
            first = false;
            rec(out, t, st, axis + 1, off + i * st[axis], limit);
        }
        out.push(']');
    }
    let mut out = String::new();
    rec(&mut out, t, &strides(&t.shape), 0, 0, limit);
    out
}

/// The shortest text that reads back as the same f32 (`0.5`, `1`,
/// `-7.450581e-9`).
pub fn format_f32(v: f32) -> String {
    let s = format!("{v:?}");
    match s.strip_suffix(".0") {
        Some(int) => int.to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }

    #[test]
    fn formatting_elides_long_axes() {
        let t = Tensor::new(vec![10], (0..10).map(|i| i as f32).collect());
        assert_eq!(format_tensor(&t, 6), "[0, 1, 2, ..., 7, 8, 9]");
        let m = Tensor::new(vec![2, 2], vec![1.0, 2.5, -3.0, 4.0]);
        assert_eq!(format_tensor(&m, 6), "[[1, 2.5],\n [-3, 4]]");
        assert_eq!(format_f32(-7.450_581e-9), "-7.450581e-9");
    }
}
