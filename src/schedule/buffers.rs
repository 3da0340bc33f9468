//! Buffer planning: which buffer holds each stored node. Buffers are
//! assigned in kernel order, and one whose last reader has run is reused
//! by the next value of the same size; leaves and roots keep their own, a
//! view shares its operand's, a part written in place into a
//! concatenation (fusion's `concat-in-place`, a value stored alongside
//! included) shares the concatenation's (assigned when its first such
//! part is), any other value stored alongside a later kernel's (fusion's
//! `store-alongside` and `sibling-loops`) gets its buffer with that
//! kernel's, and every parameter update gets a buffer of its own (a copy
//! where its value shares one). A value stored alongside is computed
//! where its carrier runs, so what it reads stays live until then.

use super::BufId;
use crate::exec::Error;
use crate::ir::{Graph, Node, Op};
use crate::passes::fusion::{Fusion, Kind};
use cranelift_entity::packed_option::PackedOption;
use cranelift_entity::{EntitySet, PrimaryMap, SecondaryMap};
use rustc_hash::{FxHashMap, FxHashSet};

/// Where each stored node lives.
pub(super) struct BufferPlan {
    pub buf_of: SecondaryMap<Node, PackedOption<BufId>>,
    pub sizes: PrimaryMap<BufId, usize>,
    /// The buffer each update (in the graph's order) is taken from after
    /// a step: its value's, or a copy's ([`BufferPlan::separate_updates`]).
    pub update_bufs: Vec<BufId>,
}

impl BufferPlan {
    /// After a step each update's buffer is swapped into its parameter,
    /// so it must belong to that update alone. A view shares its base's
    /// buffer and CSE merges equal values, so an update's value may sit
    /// in a leaf's buffer (`assign(s, reshape(w, …))`, a reshaped
    /// constant) or in another update's (`assign(s1, m); assign(s2, m)`).
    /// Such an update gets a buffer of its own, filled by a copy after
    /// every other step; returns those copies as (from, to) buffers.
    pub fn separate_updates(&mut self, g: &Graph, fu: &Fusion) -> Vec<(BufId, BufId)> {
        let mut taken: FxHashSet<BufId> = fu
            .kernels
            .iter()
            .filter(|&&(_, kind)| kind == Kind::Leaf)
            .filter_map(|&(n, _)| self.buf_of[n].expand())
            .collect();
        let mut copies = Vec::new();
        self.update_bufs = g
            .updates
            .iter()
            .map(|u| {
                // An update's value is a root: fusion never fuses a root,
                // so plan_buffers gave it (or the base of its view) a buffer.
                let b = self.buf_of[u.node].expect("an update's value is stored");
                if taken.insert(b) {
                    return b;
                }
                let own = self.sizes.push(self.sizes[b]);
                copies.push((b, own));
                own
            })
            .collect();
        copies
    }

    /// Adds up the bytes of every buffer (each counted once, named by the
    /// first node stored in it) and checks them against the memory
    /// budget before anything is allocated.
    pub fn check_budget(&self, g: &Graph, fu: &Fusion) -> Result<(), Error> {
        let mut budget = crate::exec::memory::Budget::default();
        let mut seen: SecondaryMap<BufId, bool> = SecondaryMap::new();
        for &(n, kind) in &fu.kernels {
            let Some(b) = self.buf_of[n].expand() else {
                continue;
            };
            if kind != Kind::View && !std::mem::replace(&mut seen[b], true) {
                let d = &g.nodes[n];
                budget.add(self.sizes[b], || g.shape_str(&d.ty.shape), d.span);
            }
        }
        for (b, &len) in self.sizes.iter() {
            if !seen[b] {
                budget.add(len, || "a copy of an update".into(), Default::default());
            }
        }
        budget.check()
    }
}

/// Assigns buffers in kernel order: a buffer whose last reader has run is
/// reused by the next value of the same size. Leaves and roots keep their
/// own; a view shares its operand's.
pub(super) fn plan_buffers(
    g: &Graph,
    fu: &Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    roots: &[Node],
) -> BufferPlan {
    // The stored nodes each kernel reads (through the nodes computed in
    // it), by its place in the order, as fusion walked them.
    let reads = &fu.reads;
    // Whether kernel `i` is a product read by the elementwise kernel right
    // after it, which may become its epilogue: the product's operands then
    // stay live through that kernel (`gemm-epilogue` runs on the planned
    // steps and refuses an epilogue that writes an operand the GEMM reads).
    let epilogue_next: Vec<bool> = (0..fu.kernels.len())
        .map(|i| match (fu.kernels.get(i), fu.kernels.get(i + 1)) {
            (Some(&(p, Kind::MatMul)), Some(&(_, Kind::Elementwise))) => reads[i + 1].contains(&p),
            _ => false,
        })
        .collect();
    let mut base: SecondaryMap<Node, Option<Node>> = g.node_table();
    let mut last: SecondaryMap<Node, usize> = g.node_table();
    let mut pinned: EntitySet<Node> = EntitySet::new();
    for &r in roots {
        pinned.insert(r);
    }
    let root_of = |base: &SecondaryMap<Node, Option<Node>>, mut n: Node| {
        while let Some(b) = base[n] {
            n = b;
        }
        n
    };
    // Where each kernel runs: a value stored alongside another's
    // (`store-alongside`, `sibling-loops`) runs in its carrier's kernel.
    let mut at: SecondaryMap<Node, usize> = g.node_table();
    for (i, &(n, _)) in fu.kernels.iter().enumerate() {
        at[n] = i;
    }
    let runs_at = |i: usize| fu.carrier[fu.kernels[i].0].map_or(i, |c| at[c]);
    for (i, &(n, kind)) in fu.kernels.iter().enumerate() {
        if kind == Kind::View {
            let Op::Reshape(a, _) = g.nodes[n].op else {
                unreachable!("fusion gives Kind::View only to reshapes")
            };
            base[n] = Some(root_of(&base, a));
        }
        // A part written into its concatenation lives in its buffer.
        base[n] = base[n].or(fu.placed[n]);
        if kind == Kind::Leaf {
            pinned.insert(n);
        }
        let until = if epilogue_next[i] { i + 1 } else { runs_at(i) };
        for &a in &reads[i] {
            let b = root_of(&base, a);
            last[b] = last[b].max(until);
        }
    }
    for &r in roots {
        let b = root_of(&base, r);
        pinned.insert(b);
    }
    let mut buf_of: SecondaryMap<Node, PackedOption<BufId>> = g.node_table();
    let mut sizes: PrimaryMap<BufId, usize> = PrimaryMap::new();
    let mut free: FxHashMap<usize, Vec<BufId>> = FxHashMap::default();
    for (i, &(n, kind)) in fu.kernels.iter().enumerate() {
        // A new buffer for `x`, or a free one of its size.
        let mut take = |x: Node, sizes: &mut PrimaryMap<BufId, usize>| -> BufId {
            let len: usize = shapes[x].iter().product();
            let reuse = if pinned.contains(x) {
                None
            } else {
                free.get_mut(&len).and_then(|v| v.pop())
            };
            reuse.unwrap_or_else(|| sizes.push(len))
        };
        if kind == Kind::View {
            buf_of[n] = buf_of[root_of(&base, n)];
        } else if let Some(c) = fu.placed[n] {
            // The concatenation's buffer, from its first part on.
            if buf_of[c].is_none() {
                buf_of[c] = take(c, &mut sizes).into();
            }
            buf_of[n] = buf_of[c];
        } else if fu.carrier[n].is_some() {
            // Written by a later kernel (fusion's `store-alongside`),
            // which takes its buffer.
        } else if buf_of[n].is_none() {
            buf_of[n] = take(n, &mut sizes).into();
        }
        // A value stored alongside gets its buffer here, where it is
        // written; one written into its part of a concatenation, the
        // concatenation's (given at its own place in the order when that
        // came first, but a value computed by an earlier kernel,
        // `sibling-loops`, is written before it).
        for &a in fu.stored_alongside(n) {
            match fu.placed[a] {
                None => buf_of[a] = take(a, &mut sizes).into(),
                Some(c) => {
                    if buf_of[c].is_none() {
                        buf_of[c] = take(c, &mut sizes).into();
                    }
                    buf_of[a] = buf_of[c];
                }
            }
        }
        if fu.carrier[n].is_some() {
            // Its reads are its carrier's, released there.
            continue;
        }
        // Release what this kernel was the last to need: what it reads
        // (the values it stores alongside included), and what the product
        // before it read.
        let mut needed: Vec<Node> = reads[i].clone();
        for &a in fu.stored_alongside(n) {
            debug_assert_eq!(fu.kernels[at[a]].0, a, "a carried value is a kernel");
            needed.extend_from_slice(&reads[at[a]]);
        }
        if i > 0 && epilogue_next[i - 1] {
            needed.extend_from_slice(&reads[i - 1]);
        }
        for a in needed {
            let b = root_of(&base, a);
            if last[b] == i && !pinned.contains(b) {
                last[b] = usize::MAX; // released once
                                      // `reads` yields stored nodes of earlier kernels (leaves
                                      // included), each given a buffer when its kernel was planned.
                let buf = buf_of[b].expect("a node read is stored before");
                free.entry(sizes[buf]).or_default().push(buf);
            }
        }
    }
    BufferPlan {
        buf_of,
        sizes,
        update_bufs: Vec::new(),
    }
}
