//! The vector-Jacobian product of a loop ([`Op::Scan`]), as more loops.
//!
//! Forward: `c_t = f(c_{t−1}, x_t, a)` for the steps in order, stacked
//! into `Y[t] = c_t`. Given Ḡ = ∂L/∂Y (one slice per step), let Λ_t be
//! the total adjoint of the carry step t produces and M_t the adjoint that
//! flows from step t into the carry it consumed. Then, walking the steps
//! backwards:
//!
//! - Λ_t = Ḡ_t + M_{next(t)} (zero after the last step);
//! - M_t = (∂f/∂c)ᵀ Λ_t at (c_prev(t), x_t, a) — a loop, whose carry is M;
//! - ∂L/∂init = M of the first step;
//! - ∂L/∂x_t = (∂f/∂x)ᵀ Λ_t — a loop of independent steps;
//! - ∂L/∂a = Σ_t (∂f/∂a)ᵀ Λ_t — a loop that accumulates.
//!
//! Each loop body is the forward body spliced into a new graph together
//! with its own reverse-mode derivative (by [`super::autodiff::grad`] on
//! ⟨f(…), λ⟩). The carries each step consumed are rebuilt from the stacked
//! forward output and `init`, which needs the number of steps at compile
//! time. The body is differentiated once, so compile time does not grow
//! with the sequence length.

use super::build::Builder;
use crate::diag::{self, code, Diag, Span};
use crate::ir::{BinaryOp, BodyId, Dim, Graph, InputInfo, Node, Op, ReduceOp, Shape, Type};

/// What a derivative loop computes per step.
#[derive(Clone, PartialEq)]
enum Want {
    /// M: the adjoint into the consumed carry; the loop's carry is M.
    Carry,
    /// The adjoint of sequence `j` at this step.
    Step(usize),
    /// The adjoint of extra argument `k`, added to the loop's carry.
    Arg(usize),
    /// This step's contributions to the adjoints of the extra arguments
    /// `ks` (each with its known number of elements), flattened and joined into one vector;
    /// the steps are independent (the carry is not read) and the
    /// contributions are summed over the steps after the loop. One loop
    /// for all the arguments: the step's forward values and the shared
    /// part of its derivative are computed once, not once per argument.
    Args(Vec<(usize, u64)>),
}

pub struct ScanParts<'o> {
    pub body: BodyId,
    pub init: Node,
    pub xs: &'o [Node],
    pub args: &'o [Node],
    pub reverse: bool,
}

/// Contributions (operand, adjoint) for the operands that `need` says
/// need one.
pub fn vjp(
    b: &mut Builder,
    out: Node,
    gbar: Node,
    sp: Span,
    s: &ScanParts,
    need: &dyn Fn(Node) -> bool,
) -> Result<Vec<(Node, Node)>, Diag> {
    let steps = match b.g.shape(s.xs[0])[0] {
        Dim::Known(t) => t,
        Dim::Sym(_) => {
            return Err(diag::error(
                code::GRAD,
                "differentiating a `scan` needs the number of steps at compile time",
            )
            .with_labels(vec![
                sp.primary("this scan runs over a symbolic number of steps")
            ])
            .with_notes(vec![
                "help: give the sequence a static length, e.g. `[20, B, I]`".into(),
            ]))
        }
    };
    let c_shape = b.shape(s.init);
    let unit = |b: &mut Builder, n: Node| -> Result<Node, Diag> {
        let mut sh = vec![Dim::Known(1)];
        sh.extend(b.shape(n));
        b.reshape(n, sh, sp)
    };
    let slice = |b: &mut Builder, n: Node, start: u64, end: u64| {
        b.add(
            Op::Slice {
                arg: n,
                axis: 0,
                start,
                end,
            },
            sp,
        )
    };
    let concat = |b: &mut Builder, x: Node, y: Node| {
        b.add(
            Op::Concat {
                a: x,
                b: y,
                axis: 0,
            },
            sp,
        )
    };
    let zeros_step = |b: &mut Builder| -> Result<Node, Diag> {
        let mut sh = vec![Dim::Known(1)];
        sh.extend(c_shape.clone());
        b.fill(0.0, sh, sp)
    };

    // The carry each step consumed, in step order.
    let init1 = unit(b, s.init)?;
    let prev = if steps == 1 {
        init1
    } else if !s.reverse {
        let head = slice(b, out, 0, steps - 1)?;
        concat(b, init1, head)?
    } else {
        let tail = slice(b, out, 1, steps)?;
        concat(b, tail, init1)?
    };
    // M: run against the forward direction.
    let zero_c = b.fill(0.0, c_shape.clone(), sp)?;
    let mut seqs = vec![prev];
    seqs.extend(s.xs);
    seqs.push(gbar);
    let m = derivative_loop(b, s, Want::Carry, zero_c, &seqs, !s.reverse, sp)?;
    // Λ = Ḡ + M shifted by one step.
    let z = zeros_step(b)?;
    let shifted = if steps == 1 {
        z
    } else if !s.reverse {
        let rest = slice(b, m, 1, steps)?;
        concat(b, rest, z)?
    } else {
        let rest = slice(b, m, 0, steps - 1)?;
        concat(b, z, rest)?
    };
    let lambda = b.add2(gbar, shifted, sp)?;

    let mut v = Vec::new();
    if need(s.init) {
        let first = if !s.reverse { 0 } else { steps - 1 };
        let m0 = slice(b, m, first, first + 1)?;
        v.push((s.init, b.reshape(m0, c_shape.clone(), sp)?));
    }
    let mut seqs = vec![prev];
    seqs.extend(s.xs);
    seqs.push(lambda);
    for (j, &x) in s.xs.iter().enumerate() {
        if need(x) {
            let step_shape: Shape = b.shape(x)[1..].to_vec();
            let zero = b.fill(0.0, step_shape, sp)?;
            v.push((
                x,
                derivative_loop(b, s, Want::Step(j), zero, &seqs, false, sp)?,
            ));
        }
    }
    // Arguments of known shape share one loop; the others (a symbolic
    // dim cannot be flattened) get one accumulating loop each.
    let known = |b: &Builder, a: Node| -> Option<u64> {
        b.shape(a)
            .iter()
            .map(|d| crate::ir::shape::known(*d))
            .product()
    };
    let packed: Vec<(usize, u64)> = (0..s.args.len())
        .filter(|&k| need(s.args[k]))
        .filter_map(|k| Some((k, known(b, s.args[k])?)))
        .collect();
    if !packed.is_empty() {
        let total = packed.iter().map(|&(_, size)| size).sum();
        let zero = b.fill(0.0, vec![Dim::Known(total)], sp)?;
        let steps_out = derivative_loop(b, s, Want::Args(packed.clone()), zero, &seqs, false, sp)?;
        // Summed over the steps first, then cut: the same sums, and one
        // reduction (which the JIT folds into the loop).
        let sums = b.reduce(ReduceOp::Sum, steps_out, vec![0], sp)?;
        let mut at = 0;
        for &(k, size) in &packed {
            let piece = b.add(
                Op::Slice {
                    arg: sums,
                    axis: 0,
                    start: at,
                    end: at + size,
                },
                sp,
            )?;
            at += size;
            let shape = b.shape(s.args[k]);
            v.push((s.args[k], b.reshape(piece, shape, sp)?));
        }
    }
    for (k, &a) in s.args.iter().enumerate() {
        if need(a) && !packed.iter().any(|&(p, _)| p == k) {
            let zero = b.fill_like(0.0, a, sp)?;
            let sums = derivative_loop(b, s, Want::Arg(k), zero, &seqs, false, sp)?;
            let last = slice(b, sums, steps - 1, steps)?;
            let shape = b.shape(a);
            v.push((a, b.reshape(last, shape, sp)?));
        }
    }
    Ok(v)
}

/// One derivative loop: builds its body and adds the `Scan` node.
/// `seqs` are [prev, xs…, cotangent-or-Ḡ], all `[T, ..]`.
fn derivative_loop(
    b: &mut Builder,
    s: &ScanParts,
    want: Want,
    init: Node,
    seqs: &[Node],
    reverse: bool,
    sp: Span,
) -> Result<Node, Diag> {
    let fwd = b.g.bodies[s.body].clone();
    let mut g = Graph::new();
    g.syms = b.g.syms.clone();
    let internal = |e: crate::ir::TypeError| {
        diag::error(code::INTERNAL, format!("internal compiler error: {e}"))
            .with_labels(vec![sp.primary("while differentiating this scan")])
    };
    let mut types: Vec<Type> = vec![b.g.ty(init).clone()];
    types.extend(seqs.iter().map(|&q| Type::f32(b.g.shape(q)[1..].to_vec())));
    types.extend(s.args.iter().map(|&a| b.g.ty(a).clone()));
    let mut ins = Vec::new();
    for (k, ty) in types.into_iter().enumerate() {
        let i = g.inputs.push(InputInfo {
            name: format!("in{k}"),
            ty,
            default: None,
            span: sp,
        });
        ins.push(g.add(Op::Input(i), sp).map_err(internal)?);
    }
    let carry = ins[0];
    let nx = s.xs.len();
    let prev = ins[1];
    let steps_in = &ins[2..2 + nx];
    let cot_in = ins[2 + nx];
    let args_in = &ins[3 + nx..];
    let mut fwd_inputs = vec![prev];
    fwd_inputs.extend(steps_in);
    fwd_inputs.extend(args_in);
    let outs = g.splice(&fwd, &fwd_inputs).map_err(internal)?;
    let y = outs[0];
    let mut inner = Builder { g: &mut g };
    // The cotangent of this step's output: Λ_t, which the carry loop
    // forms as Ḡ_t + M.
    let cot = if want == Want::Carry {
        inner.add2(cot_in, carry, sp)?
    } else {
        cot_in
    };
    let prod = inner.binary(BinaryOp::Mul, y, cot, sp)?;
    let all: Vec<usize> = (0..inner.shape(prod).len()).collect();
    let l = inner.reduce(ReduceOp::Sum, prod, all, sp)?;
    let targets: Vec<Node> = match &want {
        Want::Carry => vec![prev],
        Want::Step(j) => vec![steps_in[*j]],
        Want::Arg(k) => vec![args_in[*k]],
        Want::Args(ks) => ks.iter().map(|&(k, _)| args_in[k]).collect(),
    };
    let grads = super::autodiff::grad(inner.g, l, &targets)?.grads;
    let mut ib = Builder { g: &mut g };
    let result = match want {
        Want::Arg(_) => ib.add2(carry, grads[0], sp)?,
        Want::Args(ks) => {
            let mut joined: Option<Node> = None;
            for (gr, (_, len)) in grads.into_iter().zip(ks) {
                let flat = ib.reshape(gr, vec![Dim::Known(len)], sp)?;
                joined = Some(match joined {
                    None => flat,
                    Some(j) => ib.add(
                        Op::Concat {
                            a: j,
                            b: flat,
                            axis: 0,
                        },
                        sp,
                    )?,
                });
            }
            joined.ok_or_else(|| {
                diag::error(
                    code::INTERNAL,
                    "internal compiler error: a packed loop with no arguments",
                )
                .with_labels(vec![sp.primary("while differentiating this scan")])
            })?
        }
        _ => grads[0],
    };
    g.outputs.push(crate::ir::Output {
        name: "carry".into(),
        node: result,
        span: sp,
    });
    let body = b.g.bodies.push(g);
    b.add(
        Op::Scan {
            body,
            init,
            xs: seqs.to_vec(),
            args: s.args.to_vec(),
            reverse,
        },
        sp,
    )
}
