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

/// Adam's moment `β·old + (1 − β)·new` (of `new²` when `square`) as one
/// fused node.
fn moment(
    b: &mut Builder,
    beta: f32,
    square: bool,
    old: Node,
    new: Node,
    sp: Span,
) -> Result<Node, Diag> {
    b.add(
        Op::AdamMoment {
            beta,
            square,
            old,
            new,
        },
        sp,
    )
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
        // w − lr·step for the rules that take a step; Adam's is one node.
        let minus = |b: &mut Builder, step: Node| -> Result<Node, Diag> {
            let delta = b.mul(lr, step, sp)?;
            b.sub(w, delta, sp)
        };
        let nw = match opt.kind {
            Kind::Sgd => minus(&mut b, gr)?,
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
                let step = if nesterov {
                    let ahead = b.mul(mu, nb, sp)?;
                    b.add2(gr, ahead, sp)?
                } else {
                    nb
                };
                minus(&mut b, step)?
            }
            Kind::Adam {
                beta1,
                beta2,
                eps,
                decoupled,
                ..
            } => {
                // One fused node per moment and one for the step: the
                // arithmetic of the separate ops (module doc), in a third
                // of the nodes, which every later stage walks.
                let (m_id, m) = state(&mut b, format!("{prefix}m.{name}"), shape.clone(), sp)?;
                let (v_id, v) = state(&mut b, format!("{prefix}v.{name}"), shape.clone(), sp)?;
                let nm = moment(&mut b, beta1, false, m, gr, sp)?;
                let nv = moment(&mut b, beta2, true, v, gr, sp)?;
                updates.push(Update {
                    param: m_id,
                    node: nm,
                });
                updates.push(Update {
                    param: v_id,
                    node: nv,
                });
                let correction = match corrections {
                    Some((c1, c2)) => Some((
                        splats.splat(&mut b, c1, &dims, sp)?,
                        splats.splat(&mut b, c2, &dims, sp)?,
                    )),
                    None => None,
                };
                let mut w = w;
                if decoupled && opt.weight_decay != 0.0 {
                    // AdamW: w ← w·(1 − ηλ) before the Adam step.
                    let k = match decay_fed {
                        Some(k) => splats.splat(&mut b, k, &dims, sp)?,
                        None => scalar(&mut b, splats, 1.0 - opt.lr * opt.weight_decay)?,
                    };
                    w = b.mul(k, w, sp)?;
                }
                b.add(
                    Op::AdamStep {
                        w,
                        m: nm,
                        v: nv,
                        lr,
                        correction,
                        eps,
                    },
                    sp,
                )?
            }
        };
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

    /// Adam's fused nodes give what the separate ops they stand for gave
    /// (as this pass wrote them before they were fused: `β·m + (1 − β)·g`,
    /// `β·v + (1 − β)·g²`, `w − lr·((m/c₁) / (√(v/c₂) + ε))`), bit for
    /// bit, on the interpreter and on the JIT, at ordinary values, zeros,
    /// subnormals and values near overflow.
    // The unwraps below are on a graph this test builds itself, every
    // operand of one type ([5]): adding its nodes and running it cannot
    // fail unless the pass or a backend is wrong, which the test reports.
    #[test]
    fn fused_adam_nodes_compute_the_separate_ops_bit_for_bit() {
        use crate::backend::{interp, BackendKind, Engine};
        use crate::tensor::Tensor;
        use cranelift_entity::SecondaryMap;
        let columns: [[f32; 5]; 6] = [
            [0.5, -1.5, 3e-39, 1e30, 0.0],     // w
            [0.25, -2.0, 1e-20, -1e19, 0.0],   // g
            [0.1, 0.3, -4e-39, 2e18, 0.0],     // m
            [0.01, 4.0, 1e-40, 3e37, 0.0],     // v
            [0.19, 0.271, 0.1, 0.5, 0.9],      // c₁
            [0.001, 0.002997, 0.5, 1e-3, 1.0], // c₂
        ];
        let mut g = Graph::new();
        let sp = Span::default();
        let dims = vec![Dim::Known(5)];
        let mut feeds = SecondaryMap::new();
        let mut fed = Vec::new();
        for (i, col) in columns.iter().enumerate() {
            let id = g.inputs.push(InputInfo {
                name: format!("x{i}"),
                ty: Type::f32(dims.clone()),
                default: None,
                span: sp,
            });
            feeds[id] = Some(Tensor::new(vec![5], col.to_vec()));
            fed.push(g.add(Op::Input(id), sp).unwrap());
        }
        let [w, gr, m, v, c1, c2] = fed[..] else {
            unreachable!("six columns")
        };
        let mut b = Builder { g: &mut g };
        let splat = |b: &mut Builder, x: f32| {
            let f = b.fill(x, vec![], sp).unwrap();
            b.broadcast(f, dims.clone(), sp).unwrap()
        };
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let lr = splat(&mut b, 0.05);
        let mut outputs = Vec::new();
        for (beta, square, old) in [(beta1, false, m), (beta2, true, v)] {
            let fused = moment(&mut b, beta, square, old, gr, sp).unwrap();
            let kb = splat(&mut b, beta);
            let kn = splat(&mut b, 1.0 - beta);
            let x = b.mul(kb, old, sp).unwrap();
            let new = match square {
                true => b.mul(gr, gr, sp).unwrap(),
                false => gr,
            };
            let y = b.mul(kn, new, sp).unwrap();
            outputs.push((fused, b.add2(x, y, sp).unwrap()));
        }
        for correction in [Some((c1, c2)), None] {
            let fused = b
                .add(
                    Op::AdamStep {
                        w,
                        m,
                        v,
                        lr,
                        correction,
                        eps,
                    },
                    sp,
                )
                .unwrap();
            let (mh, vh) = match correction {
                Some((c1, c2)) => (b.div(m, c1, sp).unwrap(), b.div(v, c2, sp).unwrap()),
                None => (m, v),
            };
            let root = b.unary(UnaryOp::Sqrt, vh, sp).unwrap();
            let e = splat(&mut b, eps);
            let den = b.add2(root, e, sp).unwrap();
            let step = b.div(mh, den, sp).unwrap();
            let delta = b.mul(lr, step, sp).unwrap();
            outputs.push((fused, b.sub(w, delta, sp).unwrap()));
        }
        for (i, &(fused, separate)) in outputs.iter().enumerate() {
            for (which, node) in [("fused", fused), ("separate", separate)] {
                g.outputs.push(crate::ir::Output {
                    name: format!("{which}{i}"),
                    node,
                    span: sp,
                });
            }
        }
        let params = SecondaryMap::new();
        let feed = crate::exec::bind::Feed {
            params: &params,
            inputs: &feeds,
        };
        let reference = interp::run(&g, &feed).unwrap();
        let mut jit_params = SecondaryMap::new();
        let jit = Engine::new(BackendKind::Jit, &g)
            .run(&mut jit_params, &feeds)
            .unwrap();
        let bits = |t: &Tensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for i in 0..outputs.len() {
            let (fused, separate) = (&reference[2 * i], &reference[2 * i + 1]);
            assert_eq!(
                bits(fused),
                bits(separate),
                "output {i}: {fused:?} {separate:?}"
            );
            assert_eq!(bits(&jit[2 * i]), bits(fused), "output {i} on the JIT");
            assert_eq!(
                bits(&jit[2 * i + 1]),
                bits(separate),
                "output {i} on the JIT"
            );
        }
    }

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
                    // total, g·k); m and v; the two moments; AdamW's
                    // decay (×); the step: 11 (22 before the moments and
                    // the step were fused nodes). No scalar of its own.
                    assert_eq!(per, 11, "{kind:?}, {schedule:?}: nodes a parameter");
                }
            }
        }
    }
}
