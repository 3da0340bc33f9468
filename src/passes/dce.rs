//! Dead-node elimination.
//!
//! Takes a graph; returns a copy holding only the nodes its outputs and
//! updates depend on, and only the parameters, inputs and constants those
//! nodes use (renumbered, in their original order). Symbols and loop
//! bodies are kept as they are.
//! After the pass the graph verifies and computes the same outputs.

use crate::ir::{ConstId, Graph, Init, InputId, Node, Op, Output, ParamId, Update};
use cranelift_entity::{EntityRef, SecondaryMap};

pub fn prune(g: &Graph) -> Graph {
    let live = g.live();
    let mut out = Graph {
        syms: g.syms.clone(),
        bodies: g.bodies.clone(),
        ..Graph::default()
    };
    let mut consts: SecondaryMap<ConstId, Option<ConstId>> = SecondaryMap::new();
    let mut keep_const = |out: &mut Graph, c: ConstId| -> ConstId {
        if let Some(k) = consts[c] {
            return k;
        }
        let k = out.consts.push(g.consts[c].clone());
        consts[c] = Some(k);
        k
    };
    let mut params: SecondaryMap<ParamId, Option<ParamId>> = SecondaryMap::new();
    let mut inputs: SecondaryMap<InputId, Option<InputId>> = SecondaryMap::new();
    // Tables first, in their original order, so the renumbering is stable.
    let used_params: Vec<bool> = {
        let mut u = vec![false; g.params.len()];
        for (n, d) in g.nodes.iter() {
            if let (Op::Param(p), true) = (&d.op, live[n.index()]) {
                u[p.index()] = true;
            }
        }
        for upd in &g.updates {
            u[upd.param.index()] = true;
        }
        u
    };
    for (p, info) in g.params.iter() {
        if used_params[p.index()] {
            let mut info = info.clone();
            if let Init::Tensor(c) = info.init {
                info.init = Init::Tensor(keep_const(&mut out, c));
            }
            params[p] = Some(out.params.push(info));
        }
    }
    for (i, info) in g.inputs.iter() {
        let used = g
            .nodes
            .iter()
            .any(|(n, d)| live[n.index()] && d.op == Op::Input(i));
        if used {
            let mut info = info.clone();
            info.default = info.default.map(|c| keep_const(&mut out, c));
            inputs[i] = Some(out.inputs.push(info));
        }
    }
    let mut map: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    for (n, d) in g.nodes.iter() {
        if !live[n.index()] {
            continue;
        }
        // Live nodes only read live nodes, added before them.
        let m = |a: Node| map[a].expect("arguments of a live node are live and earlier");
        let op = match &d.op {
            Op::Input(i) => Op::Input(inputs[*i].expect("a live input is kept")),
            Op::Param(p) => Op::Param(params[*p].expect("a live parameter is kept")),
            Op::Const(c) => Op::Const(keep_const(&mut out, *c)),
            Op::Fill { value, shape } => Op::Fill {
                value: *value,
                shape: shape.clone(),
            },
            other => other.map_args(&m),
        };
        let data = crate::ir::NodeData {
            op,
            ty: d.ty.clone(),
            span: d.span,
        };
        map[n] = Some(out.nodes.push(data));
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|o| Output {
            name: o.name.clone(),
            node: map[o.node].expect("outputs are live"),
            span: o.span,
        })
        .collect();
    out.updates = g
        .updates
        .iter()
        .map(|u| Update {
            param: params[u.param].expect("updated parameters are kept"),
            node: map[u.node].expect("updates are live"),
        })
        .collect();
    out
}
