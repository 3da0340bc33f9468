//! Dimensions, shapes and the shape rules shared by sema and the IR:
//! NumPy broadcasting and element counts with symbolic dimensions.

use super::Sym;
use std::fmt;

/// One dimension: a number known at compile time, or a symbol (`B`) bound
/// when the graph runs.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(u64),
    Sym(Sym),
}

/// The element type. Only `f32` exists today; comparisons produce `f32`
/// masks of 0 and 1. The enum leaves room for `f16`, `bf16` and `i32`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DType::F32 => f.write_str("f32"),
        }
    }
}

pub type Shape = Vec<Dim>;

/// The type of every IR value: an element type and a shape.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub dtype: DType,
    pub shape: Shape,
}

impl Type {
    pub fn f32(shape: Shape) -> Type {
        Type {
            dtype: DType::F32,
            shape,
        }
    }
}

/// Where two shapes fail to broadcast: the axis (counted from the left of
/// the result) and the two clashing dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastError {
    pub axis: usize,
    pub left: Dim,
    pub right: Dim,
}

/// NumPy broadcasting: align from the right; equal dims stay, a `1`
/// stretches to the other side. A symbol only matches itself or 1, since
/// its value is unknown until the graph runs.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Shape, BroadcastError> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            Dim::Known(1)
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            Dim::Known(1)
        };
        out.push(match (da, db) {
            (x, y) if x == y => x,
            (Dim::Known(1), y) => y,
            (x, Dim::Known(1)) => x,
            (x, y) => {
                return Err(BroadcastError {
                    axis: i,
                    left: x,
                    right: y,
                })
            }
        });
    }
    Ok(out)
}

/// Whether `from` broadcasts to exactly `to`.
pub fn broadcasts_to(from: &[Dim], to: &[Dim]) -> bool {
    from.len() <= to.len() && broadcast(from, to).as_deref() == Ok(to)
}

/// An element count with symbols: the product of the known dims and the
/// sorted list of symbols. Two shapes hold the same number of elements for
/// every binding exactly when their counts are equal.
pub fn element_count(shape: &[Dim]) -> (u64, Vec<Sym>) {
    let mut known = 1u64;
    let mut syms = Vec::new();
    for d in shape {
        match d {
            Dim::Known(n) => known = known.saturating_mul(*n),
            Dim::Sym(s) => syms.push(*s),
        }
    }
    syms.sort();
    (known, syms)
}

/// The most elements one tensor may hold: 2^48 (a PiB of `f32`). Every
/// shape is checked against it where it is formed — in sema for the
/// dimensions written in the source, when symbolic dimensions are bound
/// for a run — so element counts, byte counts and the products of any of
/// a shape's dimensions (strides, offsets, `m·n·k`) are computed without
/// overflow everywhere after. Whether that many bytes can be had is the
/// memory budget's question ([`crate::exec::memory`]).
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// The element count of a concrete shape, or `None` when it exceeds
/// [`MAX_ELEMENTS`]. The product of the non-zero dimensions is what is
/// bounded, so a partial product of a shape that holds no elements
/// (`[0, 2^40, 2^40]`) cannot overflow either.
pub fn checked_elements(dims: &[usize]) -> Option<usize> {
    let mut nonzero = 1u64;
    let mut any_zero = false;
    for &d in dims {
        if d == 0 {
            any_zero = true;
        } else {
            nonzero = nonzero
                .checked_mul(d as u64)
                .filter(|&n| n <= MAX_ELEMENTS)?;
        }
    }
    Some(if any_zero { 0 } else { nonzero as usize })
}

/// Whether the dimensions known at compile time fit [`MAX_ELEMENTS`]
/// (symbols are checked when they are bound).
pub fn known_part_fits(shape: &[Dim]) -> bool {
    let known: Vec<usize> = shape
        .iter()
        .filter_map(|d| match d {
            Dim::Known(n) => Some(usize::try_from(*n).unwrap_or(usize::MAX)),
            Dim::Sym(_) => None,
        })
        .collect();
    checked_elements(&known).is_some()
}

/// Resolves a possibly negative axis against a rank.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// The output length of a sliding window along one axis: `len` padded by
/// `padding` on both sides, a window of `window` moved by `stride`, so
/// `(len + 2·padding − window) / stride + 1` (rounded down). `None` when
/// the stride is 0 or the window is larger than the padded length.
pub fn window_out(len: u64, window: u64, stride: u64, padding: u64) -> Option<u64> {
    let padded = len.checked_add(padding.checked_mul(2)?)?;
    if stride == 0 || window == 0 || window > padded {
        return None;
    }
    Some((padded - window) / stride + 1)
}

/// The number a dimension holds, when it is known at compile time.
pub fn known(d: Dim) -> Option<u64> {
    match d {
        Dim::Known(n) => Some(n),
        Dim::Sym(_) => None,
    }
}
