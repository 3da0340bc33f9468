//! Common-subexpression elimination.
//!
//! Takes a graph; returns a copy in which no two nodes compute the same
//! operation on the same arguments (the later one is replaced by the
//! earlier everywhere: in arguments, outputs and updates). Inputs,
//! parameters and constants are leaves and stay distinct; random draws
//! are merged only when their salt and key agree, which is when they are
//! the same values. The training step needs it: autodiff rebuilds the
//! forward values the loss already computed.
//! After the pass the graph verifies and computes the same outputs.

use super::build;
use crate::ir::{Graph, Node, NodeData};
use cranelift_entity::{PrimaryMap, SecondaryMap};
use std::collections::HashMap;

pub fn cse(g: &Graph) -> Graph {
    let mut nodes: PrimaryMap<Node, NodeData> = PrimaryMap::new();
    let mut new_of: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    let mut seen: HashMap<String, Node> = HashMap::new();
    for (n, d) in g.nodes.iter() {
        let op = d.op.map_args(&|a| new_of[a].expect("arguments come first"));
        // The debug form names the op, its attributes and its (renamed)
        // arguments: equal text means equal computation. f32 attributes
        // print exactly (`{:?}` round-trips).
        let key = format!("{op:?}");
        let m = match seen.get(&key) {
            Some(&m) if g.nodes[n].ty == nodes[m].ty => m,
            _ => {
                let m = nodes.push(NodeData {
                    op,
                    ty: d.ty.clone(),
                    span: d.span,
                });
                seen.insert(key, m);
                m
            }
        };
        new_of[n] = Some(m);
    }
    let mut out = g.clone();
    out.nodes = nodes;
    build::renumber_roots(&mut out, &new_of);
    out
}
