//! The IR verifier. It checks these invariants:
//!
//! 1. every node's arguments were added before it (arena order is a
//!    topological order);
//! 2. every node's stored type is what its typing rule infers today;
//! 3. every parameter, input and constant a node names exists, constants
//!    hold as many elements as their shape says, and inputs' defaults fit
//!    their declared type;
//! 4. every output names an existing node, and output names are distinct;
//! 5. every update writes an existing parameter, at most once, with a node
//!    of the parameter's type;
//! 6. every loop body verifies, has no parameters and no updates (what it
//!    reads from outside comes in as inputs) and no bodies of its own.
//!
//! A failure is a compiler bug, never a user error: it is run between the
//! stages in tests and debug builds.

use super::*;

pub fn verify(g: &Graph) -> Result<(), String> {
    for (n, d) in g.nodes.iter() {
        for a in d.op.args() {
            if a >= n {
                return Err(format!("{n} reads {a}, which is not defined before it"));
            }
        }
        let ty = g.infer(&d.op).map_err(|e| format!("{n}: {e}"))?;
        if ty != d.ty {
            return Err(format!(
                "{n}: stored type {} differs from inferred {}",
                g.shape_str(&d.ty.shape),
                g.shape_str(&ty.shape)
            ));
        }
    }
    for (c, t) in g.consts.iter() {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(format!(
                "{c}: {} elements for shape {:?}",
                t.data.len(),
                t.shape
            ));
        }
    }
    for (i, info) in g.inputs.iter() {
        if let Some(c) = info.default {
            let Some(t) = g.consts.get(c) else {
                return Err(format!("{i}: default {c} does not exist"));
            };
            if t.shape.len() != info.ty.shape.len() {
                return Err(format!("{i}: default has rank {}", t.shape.len()));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for o in &g.outputs {
        if !g.nodes.is_valid(o.node) {
            return Err(format!("output {} names missing node {}", o.name, o.node));
        }
        if !names.insert(&o.name) {
            return Err(format!("output {} is defined twice", o.name));
        }
    }
    for (id, b) in g.bodies.iter() {
        verify(b).map_err(|e| format!("{id}: {e}"))?;
        if !b.params.is_empty() || !b.updates.is_empty() || !b.bodies.is_empty() {
            return Err(format!("{id} has parameters, updates or bodies of its own"));
        }
    }
    let mut written = std::collections::HashSet::new();
    for u in &g.updates {
        let (Some(p), true) = (g.params.get(u.param), g.nodes.is_valid(u.node)) else {
            return Err(format!(
                "update of {} by {} names something missing",
                u.param, u.node
            ));
        };
        if !written.insert(u.param) {
            return Err(format!("{} is updated twice", p.name));
        }
        let want: Vec<Dim> = p.shape.iter().map(|&d| Dim::Known(d)).collect();
        if g.shape(u.node) != &want {
            return Err(format!(
                "update of {} has shape {}",
                p.name,
                g.shape_str(g.shape(u.node))
            ));
        }
    }
    Ok(())
}
