//! Matching declared types (`[..B, I]`) against inferred shapes, binding
//! the symbolic dimensions of one function instance.

use crate::ir::{Dim, Graph, Shape};
use crate::syntax::ast::{DimExpr, TypeExpr};
use rustc_hash::FxHashMap as HashMap;

/// What a dimension name stands for in one function instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    One(Dim),
    Many(Vec<Dim>),
}

pub type Bindings = HashMap<String, Bound>;

/// Why a shape does not fit a declared type.
#[derive(Clone, Debug)]
pub enum Mismatch {
    /// Wrong number of dimensions (`at_least` when the type has a `..`).
    Rank {
        expected: usize,
        found: usize,
        at_least: bool,
    },
    /// Dimension `index` (of the type) does not match; `earlier` is set
    /// when it clashes with a binding made before.
    Dim {
        index: usize,
        earlier: Option<Bound>,
    },
}

/// Matches `shape` against `ty`, extending `bindings`. With `bind` off, a
/// name not yet bound is an error (lowering reports it as unbound).
pub fn unify(
    ty: &TypeExpr,
    shape: &[Dim],
    bindings: &mut Bindings,
    bind: bool,
) -> Result<(), Mismatch> {
    let vpos = ty
        .dims
        .iter()
        .position(|d| matches!(d, DimExpr::Variadic(_)));
    let fixed = ty.dims.len() - usize::from(vpos.is_some());
    let rank_ok = match vpos {
        Some(_) => shape.len() >= fixed,
        None => shape.len() == fixed,
    };
    if !rank_ok {
        return Err(Mismatch::Rank {
            expected: fixed,
            found: shape.len(),
            at_least: vpos.is_some(),
        });
    }
    let extra = shape.len() - fixed;
    let mut si = 0;
    for (ti, d) in ty.dims.iter().enumerate() {
        let fail = |earlier| Err(Mismatch::Dim { index: ti, earlier });
        match d {
            DimExpr::Const(n, _) => {
                if shape[si] != Dim::Known(*n) {
                    return fail(None);
                }
                si += 1;
            }
            DimExpr::Sym(name) => {
                let actual = shape[si];
                match bindings.get(&name.name) {
                    Some(Bound::One(b)) if *b == actual => {}
                    Some(b) => return fail(Some(b.clone())),
                    None if bind => {
                        bindings.insert(name.name.clone(), Bound::One(actual));
                    }
                    None => return fail(None),
                }
                si += 1;
            }
            DimExpr::Variadic(name) => {
                let actual = shape[si..si + extra].to_vec();
                match bindings.get(&name.name) {
                    Some(Bound::Many(b)) if *b == actual => {}
                    Some(b) => return fail(Some(b.clone())),
                    None if bind => {
                        bindings.insert(name.name.clone(), Bound::Many(actual));
                    }
                    None => return fail(None),
                }
                si += extra;
            }
        }
    }
    Ok(())
}

/// The shape a type denotes under `bindings`, or the first name that is
/// not bound.
pub fn substitute<'t>(
    ty: &'t TypeExpr,
    bindings: &Bindings,
) -> Result<Shape, &'t crate::syntax::ast::Ident> {
    let mut out = Vec::new();
    for d in &ty.dims {
        match d {
            DimExpr::Const(n, _) => out.push(Dim::Known(*n)),
            DimExpr::Sym(name) => match bindings.get(&name.name) {
                Some(Bound::One(b)) => out.push(*b),
                _ => return Err(name),
            },
            DimExpr::Variadic(name) => match bindings.get(&name.name) {
                Some(Bound::Many(b)) => out.extend(b),
                _ => return Err(name),
            },
        }
    }
    Ok(out)
}

/// A binding as text, for notes: `I = 3`, `..B = [4, 2]`.
pub fn bound_str(g: &Graph, name: &str, b: &Bound) -> String {
    match b {
        Bound::One(d) => format!("{name} = {}", g.dim_str(*d)),
        Bound::Many(ds) => format!("..{name} = {}", g.shape_str(ds)),
    }
}
