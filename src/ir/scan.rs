//! The typing rule of [`Op::Scan`], which checks the body graph against
//! the operands.

use super::infer::bad;
use super::*;
use cranelift_entity::EntityRef;

impl Graph {
    pub(super) fn infer_scan(
        &self,
        body: BodyId,
        init: Node,
        xs: &[Node],
        args: &[Node],
    ) -> Result<Type, TypeError> {
        let Some(b) = self.bodies.get(body) else {
            return Err(bad("scan", "no such body"));
        };
        let mut want: Vec<Type> = vec![self.ty(init).clone()];
        let mut steps = None;
        for &x in xs {
            let s = self.shape(x);
            let Some((t, rest)) = s.split_first() else {
                return Err(bad("scan", "a sequence must have rank 1 or more"));
            };
            if steps.is_some_and(|prev| prev != *t) {
                return Err(bad("scan", "sequences differ in length"));
            }
            steps = Some(*t);
            want.push(Type::f32(rest.to_vec()));
        }
        let Some(steps) = steps else {
            return Err(bad("scan", "a scan needs a sequence"));
        };
        want.extend(args.iter().map(|a| self.ty(*a).clone()));
        let have: Vec<&Type> = b.inputs.values().map(|i| &i.ty).collect();
        if have.len() != want.len() || have.iter().zip(&want).any(|(h, w)| *h != w) {
            return Err(bad(
                "scan",
                "the body's inputs do not match the carry, the steps and the arguments",
            ));
        }
        match b.outputs.as_slice() {
            [o] if b.nodes.is_valid(o.node) && b.ty(o.node) == self.ty(init) => {}
            _ => {
                return Err(bad(
                    "scan",
                    "the body must have one output of the carry's type",
                ))
            }
        }
        let mut shape = vec![steps];
        shape.extend(self.shape(init));
        Ok(Type::f32(shape))
    }
}

impl Graph {
    /// Copies `src` (a loop body: no parameters, no bodies) into this
    /// graph, reading `inputs[k]` wherever `src` reads its k-th input;
    /// returns the nodes of `src`'s outputs.
    pub fn splice(&mut self, src: &Graph, inputs: &[Node]) -> Result<Vec<Node>, TypeError> {
        let ids: Vec<InputId> = src.inputs.keys().collect();
        if ids.len() != inputs.len() {
            return Err(bad("splice", "wrong number of inputs"));
        }
        let mut map: Vec<Node> = Vec::with_capacity(src.nodes.len());
        for (_, d) in src.nodes.iter() {
            let n = match &d.op {
                Op::Input(i) => match ids.iter().position(|x| x == i) {
                    Some(k) => inputs[k],
                    None => return Err(bad("splice", "unknown input")),
                },
                Op::Const(c) => {
                    let k = self.consts.push(src.consts[*c].clone());
                    self.add(Op::Const(k), d.span)?
                }
                Op::Param(_) | Op::Scan { .. } => {
                    return Err(bad("splice", "a body has no parameters or loops"))
                }
                op => {
                    let op = op.map_args(&|a: Node| map[a.index()]);
                    self.add(op, d.span)?
                }
            };
            map.push(n);
        }
        Ok(src.outputs.iter().map(|o| map[o.node.index()]).collect())
    }
}
