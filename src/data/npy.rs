//! NumPy `.npy` loading: format versions 1.0, 2.0 and 3.0, C order, and
//! the little-endian numeric dtypes (`b1`, `u1`/`i1` to `u8`/`i8`, `f4`,
//! `f8`). Features `[N, ...]` are flattened to `[N, prod(rest)]`; labels
//! are `[N]` or `[N, 1]`. The header's Python dict literal is read by the
//! small parser in [`header`].

mod header;

use std::path::Path;

use super::{read_file, DataError, Dataset};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

pub(super) fn load(features: &Path, labels: &Path, scale: f32) -> Result<Dataset, DataError> {
    let feats = read_array(features)?;
    let labs = read_array(labels)?;
    let Some((&n, rest)) = feats.shape.split_first() else {
        return Err(DataError::NpyShape {
            path: features.to_path_buf(),
            what: "features",
            expected: "an array of one or more dimensions",
            shape: feats.shape,
        });
    };
    let width: usize = rest.iter().product();
    let n_labels = match labs.shape[..] {
        [n] | [n, 1] => n,
        _ => {
            return Err(DataError::NpyShape {
                path: labels.to_path_buf(),
                what: "labels",
                expected: "a 1-D array or of shape (N, 1)",
                shape: labs.shape,
            })
        }
    };
    if n != n_labels {
        return Err(DataError::CountMismatch {
            features: features.to_path_buf(),
            labels: labels.to_path_buf(),
            n_features: n,
            n_labels,
        });
    }
    if n == 0 {
        return Err(DataError::NoData {
            path: features.to_path_buf(),
        });
    }
    let data = feats.data.into_iter().map(|v| v * scale).collect();
    Ok(Dataset {
        features: Tensor::new(vec![n, width], data),
        labels: labs.data,
        per_row: 1,
    })
}

/// A whole array, in its own shape.
pub(super) fn load_array(path: &Path) -> Result<Tensor, DataError> {
    let a = read_array(path)?;
    Ok(Tensor::new(a.shape, a.data))
}

/// Rows to predict: features `[N, ...]` flattened to `[N, prod(rest)]`,
/// without labels.
pub(super) fn load_features(path: &Path, scale: f32) -> Result<Dataset, DataError> {
    let feats = read_array(path)?;
    let Some((&n, rest)) = feats.shape.split_first() else {
        return Err(DataError::NpyShape {
            path: path.to_path_buf(),
            what: "features",
            expected: "an array of one or more dimensions",
            shape: feats.shape,
        });
    };
    if n == 0 {
        return Err(DataError::NoData {
            path: path.to_path_buf(),
        });
    }
    let width: usize = rest.iter().product();
    Ok(Dataset {
        features: Tensor::new(
            vec![n, width],
            feats.data.into_iter().map(|v| v * scale).collect(),
        ),
        labels: Vec::new(),
        per_row: 0,
    })
}

/// An array read from a `.npy` file, converted to `f32`.
struct Array {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_array(path: &Path) -> Result<Array, DataError> {
    let bytes = read_file(path)?;
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err(DataError::NpyMagic {
            path: path.to_path_buf(),
        });
    };
    let bad_header = |header: &[u8], reason: &str| DataError::NpyHeader {
        path: path.to_path_buf(),
        header: header::show(header),
        reason: reason.to_string(),
    };
    let cut_short = || bad_header(&[], "the file ends inside the header");
    let (&major, &minor) = rest.first().zip(rest.get(1)).ok_or_else(cut_short)?;
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(DataError::NpyVersion {
                path: path.to_path_buf(),
                major,
                minor,
            })
        }
    };
    let header_len = rest
        .get(2..2 + len_bytes)
        .ok_or_else(cut_short)?
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let start = 2 + len_bytes;
    let end = start.checked_add(header_len).ok_or_else(cut_short)?;
    let header = rest.get(start..end).ok_or_else(cut_short)?;
    let data = rest.get(end..).unwrap_or_default();

    let info = header::parse(header).map_err(|reason| bad_header(header, &reason))?;
    let Some(dtype) = Dtype::parse(&info.descr) else {
        return Err(DataError::NpyDtype {
            path: path.to_path_buf(),
            dtype: info.descr,
        });
    };
    if info.fortran_order {
        return Err(DataError::NpyFortran {
            path: path.to_path_buf(),
        });
    }
    let expected = info
        .shape
        .iter()
        .fold(dtype.size() as u64, |acc, &d| acc.saturating_mul(d as u64));
    if expected != data.len() as u64 {
        return Err(DataError::NpySize {
            path: path.to_path_buf(),
            shape: info.shape,
            expected,
            found: data.len() as u64,
        });
    }
    let values = dtype.decode(data);
    let row_len: usize = info.shape.iter().skip(1).product();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(DataError::NpyNotFinite {
            path: path.to_path_buf(),
            record: i / row_len.max(1),
            value: values.get(i).copied().unwrap_or(f32::NAN),
        });
    }
    Ok(Array {
        shape: info.shape,
        data: values,
    })
}

/// The element types read, all converted to `f32`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Dtype {
    /// A dtype from its `descr` text, e.g. `<f4`; multi-byte types must be
    /// little-endian.
    fn parse(descr: &str) -> Option<Dtype> {
        let (order, code) = descr.split_at_checked(1)?;
        let dtype = match code {
            "b1" => Dtype::Bool,
            "u1" => Dtype::U8,
            "i1" => Dtype::I8,
            "u2" => Dtype::U16,
            "i2" => Dtype::I16,
            "u4" => Dtype::U32,
            "i4" => Dtype::I32,
            "u8" => Dtype::U64,
            "i8" => Dtype::I64,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return None,
        };
        let byte_order_ok = match order {
            "<" => true,
            "|" | ">" => dtype.size() == 1,
            _ => false,
        };
        byte_order_ok.then_some(dtype)
    }

    fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// The elements of `data`, whose length is a multiple of the size.
    fn decode(self, data: &[u8]) -> Vec<f32> {
        data.chunks_exact(self.size())
            .map(|c| match self {
                Dtype::Bool => f32::from(u8::from(c.iter().any(|&b| b != 0))),
                Dtype::U8 => f32::from(u8::from_le_bytes(le(c))),
                Dtype::I8 => f32::from(i8::from_le_bytes(le(c))),
                Dtype::U16 => f32::from(u16::from_le_bytes(le(c))),
                Dtype::I16 => f32::from(i16::from_le_bytes(le(c))),
                Dtype::U32 => u32::from_le_bytes(le(c)) as f32,
                Dtype::I32 => i32::from_le_bytes(le(c)) as f32,
                Dtype::U64 => u64::from_le_bytes(le(c)) as f32,
                Dtype::I64 => i64::from_le_bytes(le(c)) as f32,
                Dtype::F32 => f32::from_le_bytes(le(c)),
                Dtype::F64 => f64::from_le_bytes(le(c)) as f32,
            })
            .collect()
    }
}

/// The first `N` bytes of a chunk as an array (zero-padded if shorter).
fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    for (o, b) in out.iter_mut().zip(chunk) {
        *o = *b;
    }
    out
}

/// A tensor as the bytes of a NumPy `.npy` file (format 1.0,
/// little-endian `f4`, C order).
pub fn npy_bytes(t: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic, version, header length, then the header padded with spaces
    // and a newline so the data starts at a multiple of 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in &t.data {
        out.extend(v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
