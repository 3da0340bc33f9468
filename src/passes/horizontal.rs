//! Horizontal fusion: matrix products side by side become one.
//!
//! Takes a graph; returns a copy with two rules applied (the graph itself,
//! not a copy, where neither fires), each logged under `NNC_LOG=fusion`
//! with its name:
//!
//! - `matmul-horizontal`: every group of products
//!   `a @ reshape(slice(w, axis 0, k, k+1), [K, N])` with the same `a`
//!   ([M, K]) and the same stacked weight `w` ([G, K, N]), whose `k` cover
//!   a range `lo..hi` once each, is one batched product
//!   `broadcast(a, [hi−lo, M, K]) @ slice(w, axis 0, lo, hi)` (the slice
//!   left out when it is all of `w`), and each member reads its matrix of
//!   the result: `reshape(slice(p, axis 0, k−lo, k−lo+1), [M, N])`. An
//!   LSTM cell's four gate products of the hidden state (`h @ wh[k]`,
//!   `stdlib/sequence.nn`) are the case it is made for: the gates' weights
//!   are one stacked parameter, so the fused product reads them where they
//!   are, with no copy per step, and the broadcast operand is not copied
//!   either (fusion's `matmul-broadcast-operand`).
//! - `matmul-sum` (loop bodies only): a sum of products `Σᵢ aᵢ @ bᵢ` whose
//!   `aᵢ` change from step to step (they read the carry) and whose `bᵢ` do
//!   not (they read the loop's arguments alone) is one product over the
//!   operands side by side, `concat(aᵢ, axis 1) @ concat(bᵢ, axis 0)`; the
//!   `bᵢ`'s concatenation leaves the loop (`licm`). The LSTM's derivative
//!   loop is the case: the carry's adjoint is Σₖ gₖ @ wh[k]ᵀ. Where the
//!   `bᵢ` are the matrices `lo..hi` of one stack transposed (as there),
//!   their join is that part of the stack transposed at once,
//!   `reshape(transpose(w[lo..hi], [0, 2, 1]), [(hi−lo)·N, K])`, the
//!   products taken in the order of their matrices (logged as a second
//!   `matmul-sum` line): one transpose step instead of a slice, a
//!   transpose and a copy into the join for each matrix.
//!
//! In a loop body both rules take only products whose per-step operand
//! reads the carry. The others do not depend on the step before, and
//! `scan-lift` takes each out of the loop as one GEMM over all steps'
//! rows, which a batch of small products per step would not be.
//!
//! The stated cost rule: a group of two or more is always joined. It does
//! the same multiply-adds as its members, in one GEMM step instead of one
//! per member, so the backends may share the work among their threads
//! where each member alone is too small to split (the JIT's `gemm_madds`
//! threshold). What it costs: `matmul-horizontal`'s members each had
//! their elementwise reader as the GEMM's epilogue, and now read a slice
//! of the joined product (copied) in their own loop; `matmul-sum` copies
//! the `aᵢ` side by side once per step. `NNC_LOG=profile` on
//! `examples/bench/lstm_train.nn` shows what each gives.
//!
//! After the pass the graph verifies. `matmul-horizontal` computes the
//! same values bit for bit where the backend runs each batch's product as
//! it ran the member's (each element is the same sum in the same order);
//! `matmul-sum` adds the same products' terms in another order. Replaced
//! nodes are left dead.

use super::build;
use crate::ir::{BinaryOp, Dim, Graph, Node, Op};
use cranelift_entity::{EntityRef, SecondaryMap};
use std::borrow::Cow;
use std::collections::HashMap;

/// A member of a group: the product, and its weight matrix's index `k`.
struct Member {
    product: Node,
    k: u64,
}

/// A group `matmul-horizontal` joins: the shared operand, the stacked
/// weight, the first matrix of it the group reads, and its members.
struct Group {
    a: Node,
    w: Node,
    lo: u64,
    members: Vec<Member>,
}

/// `(a, w, k)` when `n` is `a @ reshape(slice(w, 0, k, k+1), [K, N])` with
/// `a` a matrix and `w` a stack of matrices `[G, K, N]` (the stdlib's
/// cells; a batched `a` is left as it is).
fn member_of(g: &Graph, n: Node) -> Option<(Node, Node, u64)> {
    let Op::MatMul(a, r) = g.nodes[n].op else {
        return None;
    };
    let (w, k) = matrix_of_stack(g, r)?;
    (g.shape(a).len() == 2).then_some((a, w, k))
}

/// `(w, k)` when `r` is `reshape(slice(w, axis 0, k, k+1), [K, N])`, matrix
/// `k` of a stack `w` of matrices `[G, K, N]`.
fn matrix_of_stack(g: &Graph, r: Node) -> Option<(Node, u64)> {
    let Op::Reshape(s, _) = g.nodes[r].op else {
        return None;
    };
    let Op::Slice {
        arg: w,
        axis: 0,
        start,
        end,
    } = g.nodes[s].op
    else {
        return None;
    };
    let sw = g.shape(w);
    (end == start + 1 && sw.len() == 3 && sw[1..] == g.shape(r)[..]).then_some((w, start))
}

/// `g` with its groups fused (unchanged, not copied, when none is).
pub fn fuse(g: &Graph) -> Cow<'_, Graph> {
    fuse_in(g, None)
}

/// The pass over `g`, and over its loop bodies. In a loop body (`args`:
/// the index of the body's first argument input, after the carry and the
/// sequences) only products whose shared operand depends on the carry
/// (the body's input 0) are fused: the others do not depend on the step
/// before, and `scan-lift` takes them out of the loop as one GEMM over all
/// steps' rows each, which a batch of small products per step would not be.
fn fuse_in(g: &Graph, args: Option<usize>) -> Cow<'_, Graph> {
    let in_body = args.is_some();
    let carried = build::reads_inputs(g, |i| i == 0);
    // The candidate groups, keyed by (shared operand, stacked weight), in
    // the order of their first member.
    let mut index: HashMap<(Node, Node), usize> = HashMap::new();
    let mut candidates: Vec<Group> = Vec::new();
    let live = g.live();
    for n in g.nodes.keys() {
        if !live[n.index()] {
            continue;
        }
        if let Some((a, w, k)) = member_of(g, n).filter(|&(a, ..)| !in_body || carried[a.index()]) {
            let i = *index.entry((a, w)).or_insert_with(|| {
                candidates.push(Group {
                    a,
                    w,
                    lo: 0,
                    members: Vec::new(),
                });
                candidates.len() - 1
            });
            candidates[i].members.push(Member { product: n, k });
        }
    }
    // Keep the groups whose members cover lo..hi once each.
    let mut groups = Vec::new();
    let mut log = Vec::new();
    for mut group in candidates {
        let ks: Vec<u64> = group.members.iter().map(|m| m.k).collect();
        let (Some(&lo), Some(&last)) = (ks.iter().min(), ks.iter().max()) else {
            continue;
        };
        if ks.len() == 1 {
            continue;
        }
        let (a, w, hi) = (group.a, group.w, last + 1);
        let mut seen = vec![false; (hi - lo) as usize];
        let once = ks
            .iter()
            .all(|&k| !std::mem::replace(&mut seen[(k - lo) as usize], true));
        if once && seen.iter().all(|&s| s) {
            log.push(format!(
                "matmul-horizontal: {} products of {a} by {w}[{lo}..{hi}] are one batched product",
                ks.len()
            ));
            group.lo = lo;
            groups.push(group);
        } else {
            log.push(format!(
                "refused matmul-horizontal for the products of {a} by matrices of {w}: they do not cover a range once each"
            ));
        }
    }
    crate::log::lines("fusion", &log);
    let mut g = if groups.is_empty() {
        Cow::Borrowed(g)
    } else {
        Cow::Owned(join_groups(g, &groups))
    };
    if let Some(args) = args {
        if let Some(summed) = sum_of_products(&g, args) {
            g = Cow::Owned(summed);
        }
    }
    let mut args_of = HashMap::new();
    for d in g.nodes.values() {
        if let Op::Scan { body, xs, .. } = &d.op {
            args_of.entry(*body).or_insert(1 + xs.len());
        }
    }
    let fused: Vec<_> = g
        .bodies
        .iter()
        .filter_map(|(id, b)| match fuse_in(b, Some(*args_of.get(&id)?)) {
            Cow::Owned(b) => Some((id, b)),
            Cow::Borrowed(_) => None,
        })
        .collect();
    for (id, b) in fused {
        g.to_mut().bodies[id] = b;
    }
    g
}

/// A sum `matmul-sum` joins: its products' operands `(aᵢ, bᵢ)`, and its
/// other terms.
#[derive(Clone)]
struct Sum {
    products: Vec<(Node, Node)>,
    rest: Vec<Node>,
    /// Where the `bᵢ` are the matrices of one stack, transposed.
    stack: Option<Stack>,
}

/// Matrices `lo..hi` of a stack `w` ([G, K, N]), N = `width`.
#[derive(Clone, Copy)]
struct Stack {
    w: Node,
    lo: u64,
    hi: u64,
    width: u64,
}

/// When every `bᵢ` of `products` is `transpose(reshape(slice(w, axis 0,
/// k, k+1), [K, N]))` for one stack `w` ([G, K, N], N known), the `k`s
/// covering `lo..hi` once each: the stack, with `products` put in the
/// order of their `k`. Their `bᵢ` joined are then the stack's matrices
/// transposed, `reshape(transpose(w[lo..hi], [0, 2, 1]), [(hi−lo)·N, K])`:
/// one transpose instead of a slice, a transpose and a copy into the
/// join per matrix (the LSTM derivative's `Σₖ gₖ @ wh[k]ᵀ`).
fn transposed_stack(g: &Graph, products: &mut [(Node, Node)]) -> Option<Stack> {
    let matrix = |b: Node| -> Option<(Node, u64)> {
        let Op::Transpose(r, ref perm) = g.nodes[b].op else {
            return None;
        };
        let (w, k) = matrix_of_stack(g, r)?;
        (perm[..] == [1, 0]).then_some((w, k))
    };
    let Dim::Known(width) = g.shape(matrix(products.first()?.1)?.0)[2] else {
        return None;
    };
    let mut keyed = Vec::with_capacity(products.len());
    for &(a, b) in products.iter() {
        let (w, k) = matrix(b)?;
        keyed.push((k, w, (a, b)));
    }
    let w = keyed[0].1;
    keyed.sort_by_key(|&(k, ..)| k);
    let lo = keyed[0].0;
    let consecutive = keyed
        .iter()
        .enumerate()
        .all(|(i, &(k, wi, _))| wi == w && k == lo + i as u64);
    if !consecutive {
        return None;
    }
    for (p, (.., ab)) in products.iter_mut().zip(&keyed) {
        *p = *ab;
    }
    Some(Stack {
        w,
        lo,
        hi: lo + keyed.len() as u64,
        width,
    })
}

/// `matmul-sum`, in a loop body whose first argument input is `args`: a
/// sum of products `Σᵢ aᵢ @ bᵢ` (a tree of additions, each product and
/// each inner addition read by the tree alone) whose `aᵢ [M, Kᵢ]` depend
/// on the carry and whose `bᵢ [Kᵢ, N]` on the loop's arguments alone is
/// one product `concat(aᵢ, axis 1) @ concat(bᵢ, axis 0)` over
/// `K = Σ Kᵢ`: the `aᵢ` are copied side by side once per step, and the
/// `bᵢ`, the same at every step, are stacked once before the loop (`licm`
/// moves their concatenation out). The LSTM's derivative loop is the
/// case: the carry's adjoint is Σₖ gₖ @ wh[k]ᵀ over the four gates.
/// The other terms of the sum are added to the product. `None` where no
/// sum qualifies.
fn sum_of_products(g: &Graph, args: usize) -> Option<Graph> {
    let carried = build::reads_inputs(g, |i| i == 0);
    let stepwise = build::reads_inputs(g, |i| i < args);
    let live = g.live();
    let mut readers: SecondaryMap<Node, usize> = g.node_table();
    for (n, d) in g.nodes.iter() {
        if live[n.index()] {
            for a in d.op.args() {
                readers[a] += 1;
            }
        }
    }
    for o in g
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(g.updates.iter().map(|u| u.node))
    {
        readers[o] += 1;
    }
    let is_add = |n: Node| matches!(g.nodes[n].op, Op::Binary(BinaryOp::Add, ..));
    let known = |d: Dim| matches!(d, Dim::Known(_));
    // A product that can join: rank 2, its `a` per step, its `b` fixed.
    let term = |n: Node, shape: &[Dim]| match g.nodes[n].op {
        Op::MatMul(a, b) => (readers[n] == 1
            && g.shape(n)[..] == shape[..]
            && shape.len() == 2
            && carried[a.index()]
            && !stepwise[b.index()]
            && known(g.shape(a)[1]))
        .then_some((a, b)),
        _ => None,
    };
    // The roots of sums: additions not read by an addition of the tree.
    let mut plans: SecondaryMap<Node, Option<Sum>> = g.node_table();
    let mut log = Vec::new();
    let mut inner: cranelift_entity::EntitySet<Node> = cranelift_entity::EntitySet::new();
    for n in g.nodes.keys().rev() {
        if !live[n.index()] || !is_add(n) || inner.contains(n) {
            continue;
        }
        let shape = g.shape(n).clone();
        let (mut products, mut rest, mut stack) = (Vec::new(), Vec::new(), vec![n]);
        while let Some(x) = stack.pop() {
            match g.nodes[x].op {
                Op::Binary(BinaryOp::Add, l, r)
                    if x == n || (readers[x] == 1 && g.shape(x) == &shape) =>
                {
                    inner.insert(x);
                    stack.extend([r, l]);
                }
                _ => match term(x, &shape) {
                    Some(t) => products.push(t),
                    None => rest.push(x),
                },
            }
        }
        if products.len() >= 2 {
            log.push(format!(
                "matmul-sum: the sum {n} of {} products is one product over their operands side by side",
                products.len()
            ));
            let stack = transposed_stack(g, &mut products);
            if let Some(Stack { w, lo, hi, .. }) = stack {
                log.push(format!(
                    "matmul-sum: the right operands of {n} are {w}[{lo}..{hi}] transposed, one transpose of the stack"
                ));
            }
            plans[n] = Some(Sum {
                products,
                rest,
                stack,
            });
        }
    }
    crate::log::lines("fusion", &log);
    if log.is_empty() {
        return None;
    }
    Some(build::rebuild(g, |n, out, new_of| {
        let Sum {
            products,
            rest,
            stack,
        } = plans[n].as_ref()?;
        // Every operand of the sum comes before it, so has its copy.
        let new = |x: Node| new_of[x].expect("operands come first");
        let span = g.nodes[n].span;
        // Typed by construction: every term is [M, N], each aᵢ [M, Kᵢ] and
        // bᵢ [Kᵢ, N] with Kᵢ known (`term`), so the joins line up.
        let mut add = |op: Op| {
            out.add(op, span)
                .expect("matmul-sum: the joined product is well typed by construction")
        };
        let mut a = new(products[0].0);
        for &(ai, _) in &products[1..] {
            a = add(Op::Concat {
                a,
                b: new(ai),
                axis: 1,
            });
        }
        let b = match *stack {
            Some(Stack { w, lo, hi, width }) => {
                // Typed by construction (`transposed_stack`): w is
                // [G, K, width] and lo..hi lies within G.
                let sw = g.shape(w);
                let k = sw[1];
                let whole = lo == 0 && sw[0] == Dim::Known(hi);
                let w = new(w);
                let part = match whole {
                    true => w,
                    false => add(Op::Slice {
                        arg: w,
                        axis: 0,
                        start: lo,
                        end: hi,
                    }),
                };
                let turned = add(Op::Transpose(part, vec![0, 2, 1]));
                add(Op::Reshape(turned, vec![Dim::Known((hi - lo) * width), k]))
            }
            None => {
                let mut b = new(products[0].1);
                for &(_, bi) in &products[1..] {
                    b = add(Op::Concat {
                        a: b,
                        b: new(bi),
                        axis: 0,
                    });
                }
                b
            }
        };
        let mut sum = add(Op::MatMul(a, b));
        for &x in rest {
            sum = add(Op::Binary(BinaryOp::Add, sum, new(x)));
        }
        Some(sum)
    }))
}

/// `g` with each group's products replaced by each member's matrix of
/// the joined product, made where the group's first member was.
fn join_groups(g: &Graph, groups: &[Group]) -> Graph {
    let mut first_of: SecondaryMap<Node, Option<usize>> = g.node_table();
    for (i, group) in groups.iter().enumerate() {
        first_of[group.members[0].product] = Some(i);
    }
    let mut replaced: SecondaryMap<Node, Option<Node>> = g.node_table();
    build::rebuild(g, |n, out, new_of| {
        if let Some(i) = first_of[n] {
            let group = &groups[i];
            // `a` and `w` come before every member's own operands, so
            // before the first member: both have their copies.
            let operand = |x: Node| new_of[x].expect("a group's operands come first");
            let (a, w) = (operand(group.a), operand(group.w));
            let parts = joined_product(out, a, w, group, g.nodes[n].span);
            for (m, part) in group.members.iter().zip(parts) {
                replaced[m.product] = Some(part);
            }
        }
        replaced[n]
    })
}

/// Adds the batched product of `a` by the group's matrices of `w` and each
/// member's matrix of it; returns those, in the members' order.
fn joined_product(
    g: &mut Graph,
    a: Node,
    w: Node,
    group: &Group,
    span: crate::diag::Span,
) -> Vec<Node> {
    let (lo, members) = (group.lo, &group.members);
    let count = members.len() as u64;
    let whole = lo == 0 && g.shape(w)[0] == Dim::Known(count);
    let (m, k) = (g.shape(a)[0], g.shape(a)[1]);
    let n = g.shape(w)[2];
    // Typed by construction: `member_of` checked a [M, K], w [G, K, N],
    // and the members' k lie in lo..lo+count ≤ G.
    let mut add = |op: Op| {
        g.add(op, span)
            .expect("matmul-horizontal: the joined product is well typed by construction")
    };
    let stacked = if whole {
        w
    } else {
        add(Op::Slice {
            arg: w,
            axis: 0,
            start: lo,
            end: lo + count,
        })
    };
    let shared = add(Op::Broadcast(a, vec![Dim::Known(count), m, k]));
    let product = add(Op::MatMul(shared, stacked));
    members
        .iter()
        .map(|mem| {
            let one = add(Op::Slice {
                arg: product,
                axis: 0,
                start: mem.k - lo,
                end: mem.k - lo + 1,
            });
            add(Op::Reshape(one, vec![m, n]))
        })
        .collect()
}
