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

/// A trainable parameter: its id, its node in the graph, its gradient.
pub struct Target {
    pub param: ParamId,
    pub node: Node,
    pub grad: Node,
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
    for t in targets {
        let p = &b.g.params[t.param];
        let (name, shape) = (p.name.clone(), p.shape.clone());
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Known(d)).collect();
        let scalar = |b: &mut Builder, v: f32| -> Result<Node, Diag> {
            let s = b.fill(v, vec![], sp)?;
            b.broadcast(s, dims.clone(), sp)
        };
        let w = t.node;
        let mut gr = t.grad;
        if let Some(k) = clip {
            let k = b.broadcast(k, dims.clone(), sp)?;
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
            let wd = scalar(&mut b, opt.weight_decay)?;
            let d = b.mul(wd, w, sp)?;
            gr = b.add2(gr, d, sp)?;
        }
        let lr = match lr_fed {
            Some(r) => b.broadcast(r, dims.clone(), sp)?,
            None => scalar(&mut b, opt.lr)?,
        };
        let step = match opt.kind {
            Kind::Sgd => gr,
            Kind::Momentum { momentum, nesterov } => {
                let (buf_id, buf) =
                    state(&mut b, format!("{prefix}buf.{name}"), shape.clone(), sp)?;
                let mu = scalar(&mut b, momentum)?;
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
                beta1,
                beta2,
                eps,
                bias_correction,
                ..
            } => {
                let (m_id, m) = state(&mut b, format!("{prefix}m.{name}"), shape.clone(), sp)?;
                let (v_id, v) = state(&mut b, format!("{prefix}v.{name}"), shape.clone(), sp)?;
                let lerp =
                    |b: &mut Builder, beta: f32, old: Node, new: Node| -> Result<Node, Diag> {
                        let kb = scalar(b, beta)?;
                        let kn = scalar(b, 1.0 - beta)?;
                        let x = b.mul(kb, old, sp)?;
                        let y = b.mul(kn, new, sp)?;
                        b.add2(x, y, sp)
                    };
                let nm = lerp(&mut b, beta1, m, gr)?;
                let g2 = b.mul(gr, gr, sp)?;
                let nv = lerp(&mut b, beta2, v, g2)?;
                updates.push(Update {
                    param: m_id,
                    node: nm,
                });
                updates.push(Update {
                    param: v_id,
                    node: nv,
                });
                let (mut mh, mut vh) = (nm, nv);
                if bias_correction {
                    let t = t_next.expect("Adam creates its step counter above");
                    let correct = |b: &mut Builder, beta: f32, x: Node| -> Result<Node, Diag> {
                        // 1 − βᵗ, computed at run time from the counter.
                        let bt = b.fill(beta, vec![], sp)?;
                        let pow = b.binary(BinaryOp::Pow, bt, t, sp)?;
                        let one = b.fill(1.0, vec![], sp)?;
                        let den = b.sub(one, pow, sp)?;
                        let den = b.broadcast(den, dims.clone(), sp)?;
                        b.div(x, den, sp)
                    };
                    mh = correct(&mut b, beta1, nm)?;
                    vh = correct(&mut b, beta2, nv)?;
                }
                let root = b.unary(UnaryOp::Sqrt, vh, sp)?;
                let e = scalar(&mut b, eps)?;
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
                let k = match lr_fed {
                    Some(r) => {
                        let wd = b.fill(opt.weight_decay, vec![], sp)?;
                        let d = b.mul(r, wd, sp)?;
                        let one = b.fill(1.0, vec![], sp)?;
                        let k = b.sub(one, d, sp)?;
                        b.broadcast(k, dims.clone(), sp)?
                    }
                    None => scalar(&mut b, 1.0 - opt.lr * opt.weight_decay)?,
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
