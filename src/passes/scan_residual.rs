//! Loops keep what their derivative needs: a forward loop stores, step by
//! step, the matrix products of its carry that its derivative loops would
//! otherwise compute again.
//!
//! Takes a graph (one in which no loop qualifies comes back as it is, not
//! copied); returns a copy in which each forward `scan` F whose derivative
//! loops (built by differentiation: they read F's consumed
//! carries as their first sequence, F's sequences and F's arguments)
//! recompute a product of F's body that reads the carry carries those
//! products along with its carry, and the derivative loops read them as
//! new sequences instead of computing them. For the LSTM that is
//! `h_{t−1} @ wh` for the four gates: four GEMMs over all steps that the
//! derivative would otherwise redo (`scan-lift` moves such a recomputation
//! out of the derivative loops, but it still costs as much as the forward's
//! products).
//!
//! The stated cost rule (`scan-residual`, logged under `NNC_LOG=fusion`):
//! a value of the forward body is stored when it is a matrix product or a
//! convolution that reads the carry (recomputing it costs a GEMM) and a
//! derivative loop still reads it; everything cheaper (the elementwise
//! chain of the gates) is recomputed from the stored products, and the
//! products of the step slices alone are left to `scan-lift`, which
//! computes them once for all steps and loops alike. The stored values
//! cost T times their size in memory, in the forward loop's stacked
//! output (the buffers `NNC_LOG=plan` lists; `--max-memory` applies).
//!
//! How: the forward carry becomes `[d, c + r₁ + … + rₖ]`, the old carry
//! and each stored value reshaped to their common leading dimension `d`
//! (the batch; a carry or a value without one, or with a symbolic size
//! past it, keeps its loop as it was) and joined; the body reads the old
//! carry from the first `c` columns and writes the stored values beside
//! the new one. The old stacked output and each stored value's stack
//! `[T, ..]` are column slices of the new one. A value and its recomputed
//! copy are recognised by numbering the values of both bodies together
//! (equal operations on equal values, from corresponding inputs), so the
//! rule does not depend on how the derivative was built.
//! After the pass the graph verifies and computes the same values, bit
//! for bit (a stored product is the product the derivative computed).

use super::build;
use super::scan_grad::ScanParts;
use crate::ir::{BodyId, Dim, Graph, Node, NodeData, Op, Output, Type, TypeError};
use cranelift_entity::{EntityRef, PrimaryMap, SecondaryMap};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

pub fn keep(g: &Graph) -> Cow<'_, Graph> {
    let plans = plan(g);
    if plans.forward.is_empty() {
        return Cow::Borrowed(g);
    }
    match rewrite(g, &plans) {
        Ok(out) => {
            crate::log::lines("fusion", &plans.log);
            Cow::Owned(out)
        }
        Err(e) => {
            crate::log::lines(
                "fusion",
                &[format!(
                    "scan-residual: not applied ({e}); the derivative loops recompute"
                )],
            );
            Cow::Borrowed(g)
        }
    }
}

/// A forward loop that stores values: which body nodes, and the layout of
/// its widened carry.
struct Forward {
    /// Stored nodes of the forward body, in order.
    stored: Vec<Node>,
    /// The common leading dimension of the carry and the stored values.
    lead: Dim,
    /// Elements per leading index: the carry's, then each stored value's.
    widths: Vec<u64>,
}

/// A derivative loop that reads stored values: (its body node, the index
/// of the forward's stored value it is).
struct Derivative {
    forward: Node,
    reads: Vec<(Node, usize)>,
}

struct Plans {
    forward: HashMap<Node, Forward>,
    derivative: HashMap<Node, Derivative>,
    log: Vec<String>,
}

/// The parts of a `scan` node.
fn scan_parts(op: &Op) -> Option<ScanParts<'_>> {
    match op {
        Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } => Some(ScanParts {
            body: *body,
            init: *init,
            xs,
            args,
            reverse: *reverse,
        }),
        _ => None,
    }
}

/// The forward loop whose consumed carries `p` is, in step order:
/// `concat([init], F[0..T−1])` (or `concat(F[1..T], [init])` for a
/// reverse loop), as differentiation builds them.
fn consumed_carries_of(g: &Graph, p: Node) -> Option<Node> {
    let Op::Concat { a, b, axis: 0 } = g.nodes[p].op else {
        return None;
    };
    let sliced = |n: Node| match g.nodes[n].op {
        Op::Slice {
            arg,
            axis: 0,
            start,
            end,
        } => Some((arg, start, end)),
        _ => None,
    };
    let init_of = |n: Node| match g.nodes[n].op {
        Op::Reshape(i, _) => Some(i),
        _ => None,
    };
    let (f, init, want_reverse, start, end) = match (sliced(a), sliced(b)) {
        (None, Some((f, s, e))) => (f, init_of(a)?, false, s, e),
        (Some((f, s, e)), None) => (f, init_of(b)?, true, s, e),
        _ => return None,
    };
    let fwd = scan_parts(&g.nodes[f].op)?;
    let (f_init, reverse) = (fwd.init, fwd.reverse);
    let Dim::Known(t) = *g.shape(f).first()? else {
        return None;
    };
    let bounds = if reverse {
        (1, t)
    } else {
        (0, t.checked_sub(1)?)
    };
    (f_init == init && reverse == want_reverse && (start, end) == bounds).then_some(f)
}

/// Value numbers: one per distinct computation, shared by the bodies
/// numbered with one `Numbering`.
#[derive(Default)]
struct Numbering {
    ids: HashMap<String, usize>,
}

impl Numbering {
    /// The value number of each node of `body`, whose k-th input is named
    /// `inputs[k]` (equal names for corresponding inputs).
    fn number(&mut self, body: &Graph, inputs: &[String]) -> Vec<usize> {
        let ids: Vec<_> = body.inputs.keys().collect();
        let mut vn: Vec<usize> = Vec::with_capacity(body.nodes.len());
        for d in body.nodes.values() {
            let key = match &d.op {
                Op::Input(i) => {
                    let k = ids.iter().position(|j| j == i).unwrap_or(usize::MAX);
                    format!("input {}", inputs.get(k).map_or("?", |s| s.as_str()))
                }
                Op::Const(c) => format!("const {:?}", body.consts[*c]),
                op => format!("{:?}", op.map_args(&|a| Node::new(vn[a.index()]))),
            };
            let key = format!("{key} : {:?}", d.ty);
            let next = self.ids.len();
            vn.push(*self.ids.entry(key).or_insert(next));
        }
        vn
    }
}

/// Nodes of `body` that depend on its first input (the carry).
fn reads_carry(body: &Graph) -> Vec<bool> {
    super::build::reads_inputs(body, |i| i == 0)
}

/// The nodes of `body` its output reads, not looking past `stop`.
fn live(body: &Graph, stop: &dyn Fn(Node) -> bool) -> Vec<bool> {
    let mut live = vec![false; body.nodes.len()];
    for o in &body.outputs {
        live[o.node.index()] = true;
    }
    for (n, d) in body.nodes.iter().rev() {
        if live[n.index()] && !stop(n) {
            for a in d.op.args() {
                live[a.index()] = true;
            }
        }
    }
    live
}

fn plan(g: &Graph) -> Plans {
    let mut plans = Plans {
        forward: HashMap::new(),
        derivative: HashMap::new(),
        log: Vec::new(),
    };
    // Derivative loops of each forward loop, with the forward body nodes
    // they recompute: (derivative, [(its node, forward node)]).
    let mut found: Vec<(Node, Vec<(Node, Node)>)> = Vec::new();
    // In node order, so that the log reads the same from run to run.
    let mut of_forward: BTreeMap<Node, Vec<usize>> = BTreeMap::new();
    for (dn, dd) in g.nodes.iter() {
        let Some(ScanParts {
            body: dbody,
            xs: dxs,
            args: dargs,
            ..
        }) = scan_parts(&dd.op)
        else {
            continue;
        };
        let Some(f) = dxs.first().and_then(|&p| consumed_carries_of(g, p)) else {
            continue;
        };
        let Some(ScanParts {
            body: fbody,
            xs: fxs,
            args: fargs,
            ..
        }) = scan_parts(&g.nodes[f].op)
        else {
            continue;
        };
        let nx = fxs.len();
        if dargs != fargs || dxs.len() < 1 + nx || &dxs[1..=nx] != fxs {
            continue;
        }
        let (fb, db) = (&g.bodies[fbody], &g.bodies[dbody]);
        // Corresponding inputs: the forward's carry is the derivative's
        // first sequence; the step slices and arguments are the same.
        let mut f_in = vec!["carry".to_string()];
        f_in.extend((0..nx).map(|j| format!("x{j}")));
        f_in.extend((0..fargs.len()).map(|j| format!("a{j}")));
        let mut d_in = vec!["derivative carry".to_string(), "carry".to_string()];
        d_in.extend((0..nx).map(|j| format!("x{j}")));
        d_in.extend((1 + nx..dxs.len()).map(|j| format!("derivative sequence {j}")));
        d_in.extend((0..dargs.len()).map(|j| format!("a{j}")));
        let mut numbering = Numbering::default();
        let fvn = numbering.number(fb, &f_in);
        let dvn = numbering.number(db, &d_in);
        // Heavy: recomputing it includes a product that reads the carry.
        let carry_dep = reads_carry(fb);
        let mut heavy = vec![false; fb.nodes.len()];
        let mut worth: HashMap<usize, Node> = HashMap::new();
        for (v, d) in fb.nodes.iter() {
            let product = matches!(d.op, Op::MatMul(..) | Op::Conv2d { .. });
            heavy[v.index()] =
                (product && carry_dep[v.index()]) || d.op.args().iter().any(|a| heavy[a.index()]);
            if heavy[v.index()] {
                worth.entry(fvn[v.index()]).or_insert(v);
            }
        }
        let matched: HashMap<Node, Node> = db
            .nodes
            .keys()
            .filter_map(|u| worth.get(&dvn[u.index()]).map(|&v| (u, v)))
            .collect();
        // Stored: the recomputed heavy values the derivative's own part
        // reads (the recomputation behind them is then dead).
        let all = live(db, &|_| false);
        let mut wanted: HashMap<Node, Node> = HashMap::new();
        for (w, d) in db.nodes.iter() {
            if all[w.index()] && !matched.contains_key(&w) {
                for a in d.op.args() {
                    if let Some(&v) = matched.get(&a) {
                        wanted.insert(a, v);
                    }
                }
            }
        }
        if let Some(&v) = matched.get(&db.outputs[0].node) {
            wanted.insert(db.outputs[0].node, v);
        }
        let reached = live(db, &|n| wanted.contains_key(&n));
        let reads: Vec<(Node, Node)> = db
            .nodes
            .keys()
            .filter(|u| reached[u.index()])
            .filter_map(|u| wanted.get(&u).map(|&v| (u, v)))
            .collect();
        if !reads.is_empty() {
            of_forward.entry(f).or_default().push(found.len());
            found.push((dn, reads));
        }
    }
    for (f, ds) in of_forward {
        let Some(ScanParts {
            body: fbody, init, ..
        }) = scan_parts(&g.nodes[f].op)
        else {
            continue;
        };
        let fb = &g.bodies[fbody];
        let mut stored: Vec<Node> = ds
            .iter()
            .flat_map(|&k| found[k].1.iter().map(|&(_, v)| v))
            .collect();
        stored.sort();
        stored.dedup();
        let mut shapes = vec![g.shape(init).clone()];
        shapes.extend(stored.iter().map(|&v| fb.shape(v).clone()));
        let Some((lead, widths)) = layout(&shapes) else {
            plans.log.push(format!(
                "scan-residual: {f} keeps recomputing: its carry and products share no leading dimension of known width"
            ));
            continue;
        };
        let steps = g.dim_str(g.shape(f)[0]);
        let per_step: u64 = widths[1..].iter().sum::<u64>() * 4;
        let derivs: Vec<String> = ds.iter().map(|&k| found[k].0.to_string()).collect();
        plans.log.push(format!(
            "scan-residual: {f} stores {} value(s) per step ({steps} × {} × {per_step} bytes) for its derivative loop(s) {}, which read them instead of recomputing",
            stored.len(),
            g.dim_str(lead),
            derivs.join(", ")
        ));
        for &k in &ds {
            let (dn, reads) = &found[k];
            let reads = reads
                .iter()
                .map(|&(u, v)| (u, stored.iter().position(|&s| s == v).unwrap_or(0)))
                .collect();
            plans
                .derivative
                .insert(*dn, Derivative { forward: f, reads });
        }
        plans.forward.insert(
            f,
            Forward {
                stored,
                lead,
                widths,
            },
        );
    }
    plans
}

/// The common leading dimension of `shapes` and the known number of
/// elements of each past it.
fn layout(shapes: &[Vec<Dim>]) -> Option<(Dim, Vec<u64>)> {
    let lead = *shapes.first()?.first()?;
    let mut widths = Vec::new();
    for s in shapes {
        if s.first() != Some(&lead) {
            return None;
        }
        let w = s[1..]
            .iter()
            .map(|d| crate::ir::shape::known(*d))
            .try_fold(1u64, |acc, d| acc.checked_mul(d?))?;
        widths.push(w);
    }
    // The widened row's width must be a number too.
    widths.iter().try_fold(0u64, |a, w| a.checked_add(*w))?;
    Some((lead, widths))
}

fn rewrite(g: &Graph, plans: &Plans) -> Result<Graph, TypeError> {
    let mut out = g.clone();
    out.nodes = PrimaryMap::new();
    let mut new_of: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    let mut uses: HashMap<BodyId, usize> = HashMap::new();
    for d in g.nodes.values() {
        if let Op::Scan { body, .. } = d.op {
            *uses.entry(body).or_default() += 1;
        }
    }
    // Each stored value's stack `[T, ..]`, per forward loop.
    let mut stacks: HashMap<Node, Vec<Node>> = HashMap::new();
    for (n, d) in g.nodes.iter() {
        // The arena is in topological order: every argument was copied
        // before its reader (an invariant of the graph).
        let op = d.op.map_args(&|a| new_of[a].expect("arguments come first"));
        let sp = d.span;
        let m = match (
            plans.forward.get(&n),
            plans.derivative.get(&n),
            scan_parts(&op),
        ) {
            (
                Some(fw),
                _,
                Some(ScanParts {
                    body,
                    init,
                    xs,
                    args,
                    reverse,
                }),
            ) => {
                let src = &g.bodies[body];
                let wide = widened_body(src, fw)?;
                let lead = fw.lead;
                let total: u64 = fw.widths.iter().sum();
                let c = fw.widths[0];
                let flat = out.add(Op::Reshape(init, vec![lead, Dim::Known(c)]), sp)?;
                let zeros = out.add(
                    Op::Fill {
                        value: 0.0,
                        shape: vec![lead, Dim::Known(total - c)],
                    },
                    sp,
                )?;
                let init = out.add(
                    Op::Concat {
                        a: flat,
                        b: zeros,
                        axis: 1,
                    },
                    sp,
                )?;
                let body = replace_body(&mut out, body, wide, &uses);
                let scan = out.add(
                    Op::Scan {
                        body,
                        init,
                        xs: xs.to_vec(),
                        args: args.to_vec(),
                        reverse,
                    },
                    sp,
                )?;
                let steps = out.shape(scan)[0];
                let column = |out: &mut Graph, at: u64, w: u64, shape: &[Dim]| {
                    let s = out.add(
                        Op::Slice {
                            arg: scan,
                            axis: 2,
                            start: at,
                            end: at + w,
                        },
                        sp,
                    )?;
                    let mut full = vec![steps];
                    full.extend(shape);
                    out.add(Op::Reshape(s, full), sp)
                };
                let carries = column(&mut out, 0, c, &d.ty.shape[1..])?;
                let mut at = c;
                let mut mine = Vec::new();
                for (&v, &w) in fw.stored.iter().zip(&fw.widths[1..]) {
                    mine.push(column(&mut out, at, w, src.shape(v))?);
                    at += w;
                }
                stacks.insert(n, mine);
                if out.ty(carries) != &d.ty {
                    return Err(failed("the carries changed type"));
                }
                carries
            }
            (
                _,
                Some(dv),
                Some(ScanParts {
                    body,
                    init,
                    xs,
                    args,
                    reverse,
                }),
            ) => {
                let src = &g.bodies[body];
                let frontier: Vec<Node> = dv.reads.iter().map(|&(u, _)| u).collect();
                let nb = super::scan_lift::with_step_inputs(src, xs.len(), &frontier);
                let stored = stacks
                    .get(&dv.forward)
                    .ok_or_else(|| failed("a derivative loop before its forward loop"))?;
                let mut xs = xs.to_vec();
                xs.extend(dv.reads.iter().map(|&(_, k)| stored[k]));
                let body = replace_body(&mut out, body, nb, &uses);
                let m = out.add(
                    Op::Scan {
                        body,
                        init,
                        xs,
                        args: args.to_vec(),
                        reverse,
                    },
                    sp,
                )?;
                if out.ty(m) != &d.ty {
                    return Err(failed("a derivative loop changed type"));
                }
                m
            }
            _ => out.nodes.push(NodeData {
                op,
                ty: d.ty.clone(),
                span: sp,
            }),
        };
        new_of[n] = Some(m);
    }
    build::renumber_roots(&mut out, &new_of);
    Ok(out)
}

/// Puts `new` in place of loop body `old` when only one loop runs it,
/// else beside it.
fn replace_body(out: &mut Graph, old: BodyId, new: Graph, uses: &HashMap<BodyId, usize>) -> BodyId {
    if uses.get(&old) == Some(&1) {
        out.bodies[old] = new;
        old
    } else {
        out.bodies.push(new)
    }
}

/// `src` (a forward body) with the carry widened to `[lead, c + Σ rᵢ]`:
/// it reads the old carry from the first `c` columns and writes the
/// stored values after the new one.
fn widened_body(src: &Graph, fw: &Forward) -> Result<Graph, TypeError> {
    let ids: Vec<_> = src.inputs.keys().collect();
    let mut nb = src.clone();
    nb.nodes = PrimaryMap::new();
    let total: u64 = fw.widths.iter().sum();
    let carry_ty = src.inputs[ids[0]].ty.clone();
    nb.inputs[ids[0]].ty = Type::f32(vec![fw.lead, Dim::Known(total)]);
    let mut map: Vec<Node> = Vec::with_capacity(src.nodes.len());
    for (_, d) in src.nodes.iter() {
        let m = match d.op {
            Op::Input(i) if i == ids[0] => {
                let wide = nb.add(Op::Input(i), d.span)?;
                let old = nb.add(
                    Op::Slice {
                        arg: wide,
                        axis: 1,
                        start: 0,
                        end: fw.widths[0],
                    },
                    d.span,
                )?;
                nb.add(Op::Reshape(old, carry_ty.shape.clone()), d.span)?
            }
            ref op => nb.add(op.map_args(&|a| map[a.index()]), d.span)?,
        };
        map.push(m);
    }
    let o = &src.outputs[0];
    let sp = o.span;
    let mut joined = nb.add(
        Op::Reshape(map[o.node.index()], vec![fw.lead, Dim::Known(fw.widths[0])]),
        sp,
    )?;
    for (&v, &w) in fw.stored.iter().zip(&fw.widths[1..]) {
        let flat = nb.add(
            Op::Reshape(map[v.index()], vec![fw.lead, Dim::Known(w)]),
            sp,
        )?;
        joined = nb.add(
            Op::Concat {
                a: joined,
                b: flat,
                axis: 1,
            },
            sp,
        )?;
    }
    nb.outputs = vec![Output {
        name: o.name.clone(),
        node: joined,
        span: sp,
    }];
    Ok(nb)
}

fn failed(reason: &str) -> TypeError {
    TypeError {
        op: "scan-residual",
        reason: reason.into(),
    }
}
