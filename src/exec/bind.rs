//! Feeding a graph: the values of its parameters and inputs, the nodes
//! its roots need, and the sizes its symbolic dimensions take from the
//! inputs' shapes — checked, so that every bound shape fits
//! [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS). Shared by every
//! backend.

use super::Error;
use crate::diag::Span;
use crate::ir::{Dim, Graph, InputId, Node, Op, ParamId, Sym};
use crate::tensor::Tensor;
use cranelift_entity::{EntitySet, SecondaryMap};

/// Values for a graph's parameters and inputs.
pub struct Feed<'t> {
    pub params: &'t SecondaryMap<ParamId, Tensor>,
    /// Inputs given from outside; the rest take their declared value.
    pub inputs: &'t SecondaryMap<InputId, Option<Tensor>>,
}

pub fn live_nodes(g: &Graph, roots: &[Node]) -> EntitySet<Node> {
    let mut live = EntitySet::new();
    for &r in roots {
        live.insert(r);
    }
    for (n, d) in g.nodes.iter().rev() {
        if live.contains(n) {
            for a in d.op.args() {
                live.insert(a);
            }
        }
    }
    live
}

pub fn input_values(
    g: &Graph,
    feed: &Feed,
    live: &EntitySet<Node>,
) -> Result<SecondaryMap<InputId, Option<Tensor>>, Error> {
    let mut used: EntitySet<InputId> = EntitySet::new();
    for (n, d) in g.nodes.iter() {
        if let Op::Input(i) = d.op {
            if live.contains(n) {
                used.insert(i);
            }
        }
    }
    let mut out = SecondaryMap::new();
    for (i, info) in g.inputs.iter() {
        let v = feed.inputs[i]
            .clone()
            .or_else(|| info.default.map(|c| g.consts[c].clone()));
        if v.is_none() && used.contains(i) {
            let (example, whole) = zeros_literal(&info.ty.shape);
            return Err(Error::MissingInput {
                name: info.name.clone(),
                span: info.span,
                shape: g.shape_str(&info.ty.shape),
                syms: info
                    .ty
                    .shape
                    .iter()
                    .filter(|d| matches!(d, Dim::Sym(_)))
                    .map(|d| g.dim_str(*d))
                    .collect(),
                example,
                whole,
            });
        }
        if let Some(t) = &v {
            let expected = crate::ir::shape::checked_elements(&t.shape);
            if expected != Some(t.data.len()) {
                return Err(Error::BadLength {
                    name: info.name.clone(),
                    expected: expected.unwrap_or(usize::MAX),
                    found: t.data.len(),
                    span: info.span,
                });
            }
        }
        out[i] = v;
    }
    Ok(out)
}

/// A literal of zeros of `shape` (each symbolic dimension 1), for the
/// hint of an input without a value, and whether it is whole: past 16
/// values it is only an outline, `[[0.0, …], …]`.
fn zeros_literal(shape: &[Dim]) -> (String, bool) {
    let sizes: Vec<u64> = shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            Dim::Sym(_) => 1,
        })
        .collect();
    if sizes
        .iter()
        .try_fold(1u64, |n, &k| n.checked_mul(k))
        .is_some_and(|n| n <= 16)
    {
        fn nest(sizes: &[u64]) -> String {
            match sizes {
                [] => "0.0".into(),
                [n, rest @ ..] => {
                    let inner = nest(rest);
                    let items: Vec<&str> = (0..*n).map(|_| inner.as_str()).collect();
                    format!("[{}]", items.join(", "))
                }
            }
        }
        return (nest(&sizes), true);
    }
    let outline = (0..sizes.len()).fold("0.0".to_string(), |inner, _| format!("[{inner}, …]"));
    (outline, false)
}

/// A type's shape with its symbols bound, its element count checked
/// against [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS): past this
/// point products of its dimensions cannot overflow.
pub fn concrete_shape(
    g: &Graph,
    syms: &SecondaryMap<Sym, Option<usize>>,
    shape: &[Dim],
    span: Span,
) -> Result<Vec<usize>, Error> {
    // The common case first, without the error paths' iterator adapters:
    // every node of a deep model's graph passes through here.
    let mut dims = Vec::with_capacity(shape.len());
    for d in shape {
        let n = match d {
            Dim::Known(k) => usize::try_from(*k).ok(),
            Dim::Sym(s) => syms[*s],
        };
        match n {
            Some(n) => dims.push(n),
            None => return concrete_shape_error(g, syms, shape, span),
        }
    }
    match crate::ir::shape::checked_elements(&dims) {
        Some(_) => Ok(dims),
        None => concrete_shape_error(g, syms, shape, span),
    }
}

/// [`concrete_shape`] step by step, for its errors.
fn concrete_shape_error(
    g: &Graph,
    syms: &SecondaryMap<Sym, Option<usize>>,
    shape: &[Dim],
    span: Span,
) -> Result<Vec<usize>, Error> {
    let dims = shape
        .iter()
        .map(|d| match d {
            Dim::Known(k) => usize::try_from(*k).map_err(|_| Error::TooLarge {
                shape: g.shape_str(shape),
                span,
            }),
            Dim::Sym(s) => syms[*s].ok_or_else(|| Error::UnboundSym {
                sym: g.syms[*s].name.clone(),
                span,
            }),
        })
        .collect::<Result<Vec<usize>, Error>>()?;
    match crate::ir::shape::checked_elements(&dims) {
        Some(_) => Ok(dims),
        None => Err(Error::TooLarge {
            shape: format!("{} = {dims:?}", g.shape_str(shape)),
            span,
        }),
    }
}

/// Binds every symbolic dimension from the inputs' actual shapes.
pub fn bind_syms(
    g: &Graph,
    inputs: &SecondaryMap<InputId, Option<Tensor>>,
) -> Result<SecondaryMap<Sym, Option<usize>>, Error> {
    bind_syms_by(g, |i| inputs[i].as_ref().map(|t| &t.shape[..]))
}

/// [`bind_syms`] from the inputs' shapes alone (`None`: not fed).
pub fn bind_syms_by<'s>(
    g: &Graph,
    shape_of: impl Fn(InputId) -> Option<&'s [usize]>,
) -> Result<SecondaryMap<Sym, Option<usize>>, Error> {
    let mut syms: SecondaryMap<Sym, Option<usize>> = SecondaryMap::new();
    for (i, info) in g.inputs.iter() {
        let Some(found) = shape_of(i) else { continue };
        let shape = &info.ty.shape;
        let mismatch = || Error::InputShape {
            name: info.name.clone(),
            expected: g.shape_str(shape),
            found: found.to_vec(),
            span: info.span,
        };
        if found.len() != shape.len() {
            return Err(mismatch());
        }
        for (&n, d) in found.iter().zip(shape) {
            match d {
                Dim::Known(k) if *k as usize != n => return Err(mismatch()),
                Dim::Known(_) => {}
                Dim::Sym(s) => match syms[*s] {
                    Some(first) if first != n => {
                        return Err(Error::SymConflict {
                            sym: g.syms[*s].name.clone(),
                            first,
                            second: n,
                            name: info.name.clone(),
                            span: info.span,
                        })
                    }
                    _ => syms[*s] = Some(n),
                },
            }
        }
    }
    Ok(syms)
}

#[cfg(test)]
mod tests {
    use super::zeros_literal;
    use crate::ir::{Dim, Sym};
    use cranelift_entity::EntityRef;

    #[test]
    fn zeros_literals_follow_the_shape() {
        assert_eq!(zeros_literal(&[]), ("0.0".into(), true));
        assert_eq!(
            zeros_literal(&[Dim::Known(2), Dim::Known(2)]),
            ("[[0.0, 0.0], [0.0, 0.0]]".into(), true)
        );
        assert_eq!(
            zeros_literal(&[Dim::Sym(Sym::new(0)), Dim::Known(3)]),
            ("[[0.0, 0.0, 0.0]]".into(), true)
        );
        // Too long to type: an outline of the right depth.
        assert_eq!(
            zeros_literal(&[Dim::Known(28), Dim::Known(28)]),
            ("[[0.0, …], …]".into(), false)
        );
    }
}
