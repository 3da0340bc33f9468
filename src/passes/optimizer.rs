//! The optimizer pass: appends one update per trainable parameter, so one
//! graph performs a whole training step (forward, backward, update).
//!
//! Takes a graph, each trainable parameter with its gradient node, and an
//! [`Optimizer`]. Adds the optimizer's state as parameters of role
//! `State` (initialised to 0: momentum buffers `opt.buf.NAME`, Adam's
//! moments `opt.m.NAME` and `opt.v.NAME`, the step counter `opt.t`) and
//! an [`Update`] for every parameter and state tensor. Every update reads
//! values from before the step.
//!
//! The rules, with g the gradient, η the learning rate and λ the weight
//! decay (as `torch.optim` defines them):
//! - sgd: g ← g + λw; w ← w − η·g
//! - momentum: g ← g + λw; b ← μ·b + g; w ← w − η·(nesterov ? g + μ·b : b)
//! - adam: g ← g + λw (adamw instead: w ← w − ηλ·w); t ← t + 1;
//!   m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
//!   w ← w − η·m̂/(√v̂ + ε) with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ);
//!   without bias correction (the seed's form), m̂ = m and v̂ = v.
//!
//! With `clip_norm = C` the gradients are first scaled by min(1, C/(‖g‖ +
//! 10⁻⁶)), ‖g‖ the L2 norm of all of them together (as
//! `torch.nn.utils.clip_grad_norm_`). A rate that varies (a schedule, a
//! warmup) is read from a scalar input `@lr.PREFIX` ([`lr_input`]) that
//! the training loop feeds every step (its default: the optimizer's
//! rate); a constant rate is compiled in.

use super::build::Builder;
use crate::diag::{Diag, Span};
use crate::ir::{
    BinaryOp, Dim, Graph, Init, InputInfo, Node, Op, ParamId, ParamInfo, ReduceOp, Role, Type,
    UnaryOp, Update,
};
pub use crate::sema::optimizer::{Kind, Optimizer};
use rustc_hash::FxHashMap;

/// A trainable parameter: its id, its node in the graph, its gradient.
pub struct Target {
    pub param: ParamId,
    pub node: Node,
    pub grad: Node,
}

/// The scalars every parameter's update reads (β, 1 − β, ε, the rate,
/// the bias corrections), each made once and broadcast once per shape:
/// a deep model's parameters share a few shapes, and its step graph is
/// mostly these updates.
#[derive(Default)]
struct Splats {
    consts: FxHashMap<u32, Node>,
    broadcasts: FxHashMap<(Node, Vec<Dim>), Node>,
}

impl Splats {
    /// The scalar constant `v`.
    fn konst(&mut self, b: &mut Builder, v: f32, sp: Span) -> Result<Node, Diag> {
        if let Some(&n) = self.consts.get(&v.to_bits()) {
            return Ok(n);
        }
        let n = b.fill(v, vec![], sp)?;
        self.consts.insert(v.to_bits(), n);
        Ok(n)
    }

    /// Scalar node `s` broadcast to `dims`.
    fn splat(&mut self, b: &mut Builder, s: Node, dims: &[Dim], sp: Span) -> Result<Node, Diag> {
        let key = (s, dims.to_vec());
        if let Some(&n) = self.broadcasts.get(&key) {
            return Ok(n);
        }
        let n = b.broadcast(s, key.1.clone(), sp)?;
        self.broadcasts.insert(key, n);
        Ok(n)
    }

    /// The constant `v` broadcast to `dims`.
    fn scalar(&mut self, b: &mut Builder, v: f32, dims: &[Dim], sp: Span) -> Result<Node, Diag> {
        let s = self.konst(b, v, sp)?;
        self.splat(b, s, dims, sp)
    }
}

fn state(
    b: &mut Builder,
    name: String,
    shape: Vec<u64>,
    span: Span,
) -> Result<(ParamId, Node), Diag> {
    let id = b.g.params.push(ParamInfo {
        name,
        role: Role::State,
        shape,
        init: Init::Constant(0.0),
        seed: None,
        span,
    });
    let n = b.add(Op::Param(id), span)?;
    Ok((id, n))
}

/// The name of the input that feeds the learning rate of the optimizer
/// whose state is named `prefix…`, when the rate varies.
pub fn lr_input(prefix: &str) -> String {
    format!(
        "{}{}",
        crate::ir::LR_INPUT_PREFIX,
        prefix.trim_end_matches('.')
    )
}

/// Appends the updates of `opt` for `targets` to `g`.
pub fn append(g: &mut Graph, targets: &[Target], opt: &Optimizer, span: Span) -> Result<(), Diag> {
    append_as(g, targets, opt, "opt.", span)
}

/// [`append`] with the state named `PREFIX…` instead of `opt.…`
/// (`opt.critic.m.NAME`): several optimizers in one program, one per
/// training phase, each keep their own state.
pub fn append_as(
    g: &mut Graph,
    targets: &[Target],
    opt: &Optimizer,
    prefix: &str,
    span: Span,
) -> Result<(), Diag> {
    let mut b = Builder { g };
    let mut updates = Vec::new();
    let sp = span;
    // Adam's step counter, shared by all parameters.
    let t_next = match opt.kind {
        Kind::Adam { .. } => {
            let (t_id, t) = state(&mut b, format!("{prefix}t"), vec![], sp)?;
            let one = b.fill(1.0, vec![], sp)?;
            let next = b.add2(t, one, sp)?;
            updates.push(Update {
                param: t_id,
                node: next,
            });
            Some(next)
        }
        _ => None,
    };
    // The rate, when it varies: a scalar input fed every step.
    let lr_fed = match opt.varies() {
        false => None,
        true => {
            let c = b.g.consts.push(crate::tensor::Tensor::scalar(opt.lr));
            let id = b.g.inputs.push(InputInfo {
                name: lr_input(prefix),
                ty: Type::f32(vec![]),
                default: Some(c),
                span: sp,
            });
            Some(b.add(Op::Input(id), sp)?)
        }
    };
    // Clipping: every gradient times min(1, C / (‖g‖ + 1e-6)).
    let clip = match opt.clip_norm {
        None => None,
        Some(c) => {
            let mut total = b.fill(0.0, vec![], sp)?;
            for t in targets {
                let sq = b.mul(t.grad, t.grad, sp)?;
                let rank = b.g.shape(sq).len();
                let s = b.reduce(ReduceOp::Sum, sq, (0..rank).collect(), sp)?;
                total = b.add2(total, s, sp)?;
            }
            let norm = b.unary(UnaryOp::Sqrt, total, sp)?;
            let tiny = b.fill(1e-6, vec![], sp)?;
            let den = b.add2(norm, tiny, sp)?;
            let cap = b.fill(c, vec![], sp)?;
            let coef = b.div(cap, den, sp)?;
            let one = b.fill(1.0, vec![], sp)?;
            Some(b.binary(BinaryOp::Min, coef, one, sp)?)
        }
    };
    let splats = &mut Splats::default();
    // Adam's bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ, computed at run time
    // from the counter, once for all parameters.
    let corrections = match opt.kind {
        Kind::Adam {
            beta1,
            beta2,
            bias_correction: true,
            ..
        } => {
            // `t_next` is `Some` for every Adam optimizer (made above).
            let t = t_next.expect("Adam creates its step counter above");
            let mut correction = |beta: f32| -> Result<Node, Diag> {
                let bt = b.fill(beta, vec![], sp)?;
                let pow = b.binary(BinaryOp::Pow, bt, t, sp)?;
                let one = splats.konst(&mut b, 1.0, sp)?;
                b.sub(one, pow, sp)
            };
            Some((correction(beta1)?, correction(beta2)?))
        }
        _ => None,
    };
    // AdamW's factor 1 − ηλ, when the rate is fed.
    let decay_fed = match (opt.kind, lr_fed) {
        (
            Kind::Adam {
                decoupled: true, ..
            },
            Some(r),
        ) if opt.weight_decay != 0.0 => {
            let wd = b.fill(opt.weight_decay, vec![], sp)?;
            let d = b.mul(r, wd, sp)?;
            let one = splats.konst(&mut b, 1.0, sp)?;
            Some(b.sub(one, d, sp)?)
        }
        _ => None,
    };
    for t in targets {
        let p = &b.g.params[t.param];
        let (name, shape) = (p.name.clone(), p.shape.clone());
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Known(d)).collect();
        let scalar = |b: &mut Builder, splats: &mut Splats, v: f32| -> Result<Node, Diag> {
            splats.scalar(b, v, &dims, sp)
        };
        let w = t.node;
        let mut gr = t.grad;
        if let Some(k) = clip {
            let k = splats.splat(&mut b, k, &dims, sp)?;
            gr = b.mul(gr, k, sp)?;
        }
        let coupled_decay = !matches!(
            opt.kind,
            Kind::Adam {
                decoupled: true,
                ..
            }
        );
        if opt.weight_decay != 0.0 && coupled_decay {
            let wd = scalar(&mut b, splats, opt.weight_decay)?;
            let d = b.mul(wd, w, sp)?;
            gr = b.add2(gr, d, sp)?;
        }
        let lr = match lr_fed {
            Some(r) => splats.splat(&mut b, r, &dims, sp)?,
            None => scalar(&mut b, splats, opt.lr)?,
        };
        let step = match opt.kind {
            Kind::Sgd => gr,
            Kind::Momentum { momentum, nesterov } => {
                let (buf_id, buf) =
                    state(&mut b, format!("{prefix}buf.{name}"), shape.clone(), sp)?;
                let mu = scalar(&mut b, splats, momentum)?;
                let kept = b.mul(mu, buf, sp)?;
                let nb = b.add2(kept, gr, sp)?;
                updates.push(Update {
                    param: buf_id,
                    node: nb,
                });
                if nesterov {
                    let ahead = b.mul(mu, nb, sp)?;
                    b.add2(gr, ahead, sp)?
                } else {
                    nb
                }
            }
            Kind::Adam {
                beta1, beta2, eps, ..
            } => {
                let (m_id, m) = state(&mut b, format!("{prefix}m.{name}"), shape.clone(), sp)?;
                let (v_id, v) = state(&mut b, format!("{prefix}v.{name}"), shape.clone(), sp)?;
                let lerp = |b: &mut Builder,
                            splats: &mut Splats,
                            beta: f32,
                            old: Node,
                            new: Node|
                 -> Result<Node, Diag> {
                    let kb = scalar(b, splats, beta)?;
                    let kn = scalar(b, splats, 1.0 - beta)?;
                    let x = b.mul(kb, old, sp)?;
                    let y = b.mul(kn, new, sp)?;
                    b.add2(x, y, sp)
                };
                let nm = lerp(&mut b, splats, beta1, m, gr)?;
                let g2 = b.mul(gr, gr, sp)?;
                let nv = lerp(&mut b, splats, beta2, v, g2)?;
                updates.push(Update {
                    param: m_id,
                    node: nm,
                });
                updates.push(Update {
                    param: v_id,
                    node: nv,
                });
                let (mut mh, mut vh) = (nm, nv);
                if let Some((c1, c2)) = corrections {
                    let c1 = splats.splat(&mut b, c1, &dims, sp)?;
                    mh = b.div(nm, c1, sp)?;
                    let c2 = splats.splat(&mut b, c2, &dims, sp)?;
                    vh = b.div(nv, c2, sp)?;
                }
                let root = b.unary(UnaryOp::Sqrt, vh, sp)?;
                let e = scalar(&mut b, splats, eps)?;
                let den = b.add2(root, e, sp)?;
                b.div(mh, den, sp)?
            }
        };
        let mut nw = w;
        if let Kind::Adam {
            decoupled: true, ..
        } = opt.kind
        {
            if opt.weight_decay != 0.0 {
                // AdamW: w ← w·(1 − ηλ) before the Adam step.
                let k = match decay_fed {
                    Some(k) => splats.splat(&mut b, k, &dims, sp)?,
                    None => scalar(&mut b, splats, 1.0 - opt.lr * opt.weight_decay)?,
                };
                nw = b.mul(k, w, sp)?;
            }
        }
        let delta = b.mul(lr, step, sp)?;
        let nw = b.sub(nw, delta, sp)?;
        updates.push(Update {
            param: t.param,
            node: nw,
        });
    }
    b.g.updates.extend(updates);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sema::optimizer::LrSchedule;

    /// The step graph of `n` parameters of shape [4, 4] (each its own
    /// gradient, which is enough to build the updates) under `opt`: its
    /// count of fills and broadcasts, and of all nodes.
    fn built(n: usize, opt: &Optimizer) -> (usize, usize) {
        let mut g = Graph::new();
        let sp = Span::default();
        let mut targets = Vec::new();
        for i in 0..n {
            let param = g.params.push(ParamInfo {
                name: format!("w{i}"),
                role: Role::Trainable,
                shape: vec![4, 4],
                init: Init::Constant(0.0),
                seed: None,
                span: sp,
            });
            let node = g.add(Op::Param(param), sp).unwrap();
            targets.push(Target {
                param,
                node,
                grad: node,
            });
        }
        append(&mut g, &targets, opt, sp).unwrap();
        let splats = g
            .nodes
            .values()
            .filter(|d| matches!(d.op, Op::Fill { .. } | Op::Broadcast(..)))
            .count();
        (splats, g.nodes.len())
    }

    #[test]
    fn parameters_of_one_shape_share_their_scalars() {
        let adam = Kind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bias_correction: true,
            decoupled: true,
        };
        let fed = [LrSchedule::Constant, LrSchedule::Exponential { gamma: 0.5 }];
        let kinds = [
            Kind::Sgd,
            Kind::Momentum {
                momentum: 0.9,
                nesterov: true,
            },
            adam,
        ];
        for kind in kinds {
            for schedule in fed {
                let opt = Optimizer {
                    kind,
                    lr: 0.01,
                    weight_decay: 0.1,
                    schedule,
                    warmup: 0,
                    clip_norm: Some(1.0),
                };
                let (one, nodes_one) = built(1, &opt);
                let (eight, nodes_eight) = built(8, &opt);
                assert_eq!(one, eight, "{kind:?}, {schedule:?}: fills and broadcasts");
                // Each further parameter adds only its own update.
                let per = (nodes_eight - nodes_one) / 7;
                assert_eq!(nodes_one + 7 * per, nodes_eight, "{kind:?}, {schedule:?}");
                if matches!(kind, Kind::Adam { .. }) {
                    // The parameter; clipping (g², its sum, the running
                    // total, g·k); m and v; two lerps of 3; g²; the two
                    // corrections (÷); √, +ε, ÷; AdamW's decay (×); the
                    // step (×, −). No scalar of its own.
                    assert_eq!(per, 22, "{kind:?}, {schedule:?}: nodes a parameter");
                }
            }
        }
    }
}
