//! Loop kernels: an expression over strided loads, evaluated at every
//! point of an iteration space and stored (or, for a reduction, combined)
//! into the output at a strided offset. Fusion decides which nodes a
//! kernel computes; [`loop_kernel`] builds its expression tree and
//! iteration space for concrete shapes, and every code generator lowers
//! the same [`LoopKernel`] (Cranelift: `backend/jit/codegen.rs`).

use crate::ir::{BinaryOp, CmpOp, Graph, Node, Op, ReduceOp, UnaryOp};
use crate::passes::fusion;
use crate::tensor::strides;
use cranelift_entity::SecondaryMap;
use rustc_hash::FxHashMap;
use smallvec::{smallvec, SmallVec};

/// One element computation. Operands index earlier entries of
/// [`LoopKernel::exprs`].
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub enum Expr {
    /// The element of access `k` at the current point.
    Load(usize),
    Const(f32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// `x ^ k` for a whole `k`, as multiplications.
    PowI(usize, i32),
    /// 1.0 where the comparison holds, else 0.0.
    Compare(CmpOp, usize, usize),
    /// `c != 0 ? a : b`.
    Select(usize, usize, usize),
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct LoopKernel {
    /// The iteration space, outermost first (never empty).
    pub dims: Vec<usize>,
    /// Element strides of each access along each dim.
    pub accesses: Vec<Vec<i64>>,
    /// The element each access reads at the space's first point: not 0
    /// where it reads a slice in place (fusion's `slice-in-place`).
    pub offsets: Vec<usize>,
    /// Element strides of the output (0 along reduced dims).
    pub out: Vec<i64>,
    /// The element of the output written at the space's first point: not
    /// 0 where the kernel copies a slice read in place into its part of a
    /// concatenation ([`copy_kernel`]).
    pub out_offset: usize,
    /// The expression DAG; the last entry is the kernel's value.
    pub exprs: Vec<Expr>,
    /// Set for reductions: the output is combined into, not overwritten.
    pub reduce: Option<ReduceOp>,
    /// Further values stored at each point besides the kernel's own
    /// (fusion's `store-alongside`; never on a reduction): the kernel
    /// function's arguments after the accesses' buffers, in this order.
    #[serde(default)]
    pub also: Vec<Store>,
}

/// A value a loop kernel stores besides its own: entry `expr` of its
/// expressions, written with `strides` from element `offset` of its
/// buffer (not 0 where it is a part of a concatenation, fusion's
/// `concat-in-place`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Store {
    pub expr: usize,
    pub strides: Vec<i64>,
    #[serde(default)]
    pub offset: usize,
}

/// A kernel is the same code as another when every part of it is equal,
/// its constants bit for bit (`-0.0` is not `0.0`): the JIT compiles each
/// distinct kernel once, keyed by this (a stack of equal layers has the
/// same kernels over other buffers).
impl PartialEq for LoopKernel {
    fn eq(&self, o: &Self) -> bool {
        let same = |a: &Expr, b: &Expr| match (a, b) {
            (Expr::Const(x), Expr::Const(y)) => x.to_bits() == y.to_bits(),
            // No other entry holds a float: `==` is exact.
            _ => a == b,
        };
        self.dims == o.dims
            && self.accesses == o.accesses
            && self.offsets == o.offsets
            && self.out == o.out
            && self.out_offset == o.out_offset
            && self.reduce == o.reduce
            && self.also == o.also
            && self.exprs.len() == o.exprs.len()
            && self.exprs.iter().zip(&o.exprs).all(|(a, b)| same(a, b))
    }
}

impl Eq for LoopKernel {}

impl std::hash::Hash for LoopKernel {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.dims.hash(h);
        self.accesses.hash(h);
        self.offsets.hash(h);
        self.out.hash(h);
        self.out_offset.hash(h);
        self.reduce.hash(h);
        self.also.hash(h);
        // Each entry's kind and constant: equal kernels hash equal; the
        // operands, left out, are told apart by `eq`.
        for e in &self.exprs {
            std::mem::discriminant(e).hash(h);
            if let Expr::Const(c) = e {
                c.to_bits().hash(h);
            }
        }
    }
}

impl LoopKernel {
    /// Drops unit dims and merges neighbours that every access walks
    /// contiguously, so a full-shape elementwise kernel is one flat loop.
    pub fn simplify(&mut self) {
        // In place and without allocating: a kernel is simplified as it
        // is built, thousands of them for a deep model.
        if self.dims.contains(&1) {
            let dims = std::mem::take(&mut self.dims);
            self.each_strides(|s| {
                let mut d = 0;
                s.retain(|_| {
                    d += 1;
                    dims[d - 1] != 1
                });
            });
            self.dims = dims;
            self.dims.retain(|&n| n != 1);
        }
        if self.dims.is_empty() {
            self.dims.push(1);
            self.each_strides(|s| s.push(0));
        }
        let mut d = self.dims.len() - 1;
        while d > 0 {
            let inner = self.dims[d] as i64;
            let contiguous = |s: &Vec<i64>| s[d - 1] == s[d] * inner;
            let merge = self.accesses.iter().all(contiguous)
                && self.also.iter().all(|a| contiguous(&a.strides))
                && contiguous(&self.out);
            if merge {
                self.each_strides(|s| {
                    s.remove(d - 1);
                });
                self.dims[d - 1] *= self.dims[d];
                self.dims.remove(d);
            }
            d -= 1;
        }
    }

    /// Applies `f` to the strides of every access, every further store
    /// and the output.
    fn each_strides(&mut self, mut f: impl FnMut(&mut Vec<i64>)) {
        self.accesses.iter_mut().for_each(&mut f);
        self.also.iter_mut().for_each(|a| f(&mut a.strides));
        f(&mut self.out);
    }

    /// Whether the innermost loop can run on vectors: every access moves
    /// by 0 or 1 element along it.
    pub fn vectorizable(&self) -> bool {
        let last = self.dims.len() - 1;
        self.accesses
            .iter()
            .chain(self.also.iter().map(|a| &a.strides))
            .chain(std::iter::once(&self.out))
            .all(|s| s[last] == 0 || s[last] == 1)
    }

    /// Whether threads may split the outermost loop: each writes its own
    /// part of the output.
    pub fn splittable(&self) -> bool {
        self.out[0] != 0
    }
}

/// Where a kernel writes a value into its part of a concatenation
/// (fusion's `concat-in-place`): the concatenation's strides over the
/// value's dims, and the element its first element goes to.
pub type Place = (Vec<i64>, usize);

/// The loop kernel computing stored node `n`, and the stored node each of
/// its accesses reads. With `place`, an elementwise kernel writes with
/// those strides over its dims from that element; `also_place` is the
/// same for each value it stores alongside, in order (none: its own
/// buffer, whole).
pub fn loop_kernel(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    n: Node,
    place: Option<Place>,
    also_place: &[Option<Place>],
) -> (LoopKernel, Vec<Node>) {
    let (space, out, top) = match &g.nodes[n].op {
        Op::Reduce { arg, axes, .. } => {
            let ins = &shapes[*arg];
            let ost = strides(&shapes[n]);
            let mut out = Vec::new();
            let mut k = 0;
            for d in 0..ins.len() {
                if axes.contains(&d) {
                    out.push(0);
                } else {
                    out.push(ost[k] as i64);
                    k += 1;
                }
            }
            (ins.clone(), out, *arg)
        }
        _ => {
            let s = shapes[n].clone();
            let out = match &place {
                Some((st, _)) => st.clone(),
                None => strides(&s).iter().map(|&x| x as i64).collect(),
            };
            (s, out, n)
        }
    };
    let reduce = match &g.nodes[n].op {
        Op::Reduce { op, .. } => Some(*op),
        _ => None,
    };
    let at = place.map_or(0, |(_, at)| at);
    // A reduction's loop computes its operand; any other kernel its node.
    let out = (out, at);
    kernel_over(g, fu, shapes, space, top, top == n, out, also_place, reduce)
}

/// A description of the kernel [`loop_kernel`] builds for a node, equal
/// for two nodes exactly when their kernels are the same but for the
/// stored nodes they read: the memo key of [`crate::schedule::build`],
/// where a stack of equal layers builds each of its kernels once.
///
/// It is the fused expression written out node by node, depth first
/// from the kernel's value and then each value it stores alongside: for
/// each node its shape, whether it is fused, carried or the kernel's
/// value, and (for a node the kernel computes) its operation, with every
/// attribute the builder reads, and its operands; a node met again is
/// written as a reference to where it was first met, so which operands
/// are the same node is part of the key. The header holds what
/// [`loop_kernel`] takes besides the node: the reduction, and where the
/// kernel writes its value and the values it stores alongside. Each part
/// begins with words that say what and how much follows (a tag, a
/// count, a rank), so the words read back one way only. Nothing else of
/// the graph is read by the builder, so equal descriptions build equal
/// kernels, reading the stored nodes met at the same places.
#[derive(Default)]
pub struct KernelKey {
    /// The description.
    pub words: Vec<u64>,
    /// Each node met, in the order first met (a kernel meets a handful
    /// to a few dozen: a search costs less than hashing).
    pub nodes: Vec<Node>,
}

/// The words that begin each record of a [`KernelKey`].
const NEW: u64 = 1 << 62;
const SEEN: u64 = 2 << 62;

impl KernelKey {
    /// Describes the kernel `loop_kernel(g, fu, shapes, n, place,
    /// also_place)` would build; false when it computes an operation the
    /// description does not cover (then it is built, not looked up).
    pub fn describe(
        &mut self,
        g: &Graph,
        fu: &fusion::Fusion,
        shapes: &SecondaryMap<Node, Vec<usize>>,
        n: Node,
        place: Option<&Place>,
        also_place: &[Option<Place>],
    ) -> bool {
        self.words.clear();
        self.nodes.clear();
        let w = &mut self.words;
        let (value, top) = match &g.nodes[n].op {
            Op::Reduce { op, arg, axes } => {
                w.extend([1, *op as u64, axes.len() as u64]);
                w.extend(axes.iter().map(|&a| a as u64));
                (*arg, false)
            }
            _ => {
                w.push(0);
                (n, true)
            }
        };
        w.push(shapes[n].len() as u64);
        w.extend(shapes[n].iter().map(|&d| d as u64));
        let placed = |w: &mut Vec<u64>, p: Option<&Place>| match p {
            Some((strides, at)) => {
                w.extend([1, strides.len() as u64, *at as u64]);
                w.extend(strides.iter().map(|&s| s as u64));
            }
            None => w.push(0),
        };
        placed(w, place);
        w.push(also_place.len() as u64);
        for p in also_place {
            placed(w, p.as_ref());
        }
        let carried = if top { fu.stored_alongside(value) } else { &[] };
        self.words.extend([top as u64, carried.len() as u64]);
        let cx = Describe {
            g,
            fu,
            shapes,
            value,
            top,
            carried,
        };
        std::iter::once(value)
            .chain(carried.iter().copied())
            .all(|x| self.node(&cx, x))
    }

    /// Where `x` was first met, if it was.
    pub fn position(&self, x: Node) -> Option<u32> {
        self.nodes.iter().position(|&y| y == x).map(|i| i as u32)
    }

    fn node(&mut self, cx: &Describe, x: Node) -> bool {
        if let Some(i) = self.position(x) {
            self.words.push(SEEN | i as u64);
            return true;
        }
        self.nodes.push(x);
        let fused = cx.fu.fused.contains(x);
        // Where in the carried values, counted from 1 (0: not carried).
        let carried = cx.carried.iter().position(|&c| c == x).map_or(0, |i| i + 1);
        let value = x == cx.value && cx.top;
        let shape = &cx.shapes[x];
        let w = &mut self.words;
        w.extend([
            NEW | (fused as u64) | (value as u64) << 1,
            carried as u64,
            shape.len() as u64,
        ]);
        w.extend(shape.iter().map(|&d| d as u64));
        if !fused && carried == 0 && !value {
            // Stored: read, at the shape written above.
            return true;
        }
        let args: SmallVec<[Node; 6]> = match &cx.g.nodes[x].op {
            Op::Fill { value, .. } => {
                w.extend([2, value.to_bits() as u64]);
                SmallVec::new()
            }
            Op::Broadcast(a, _) => {
                w.push(3);
                smallvec![*a]
            }
            Op::Slice {
                arg,
                axis,
                start,
                end,
            } => {
                w.extend([4, *axis as u64, *start, *end]);
                smallvec![*arg]
            }
            Op::Reshape(a, _) => {
                w.push(5);
                smallvec![*a]
            }
            Op::Unary(op, a) => {
                w.extend([6, *op as u64]);
                smallvec![*a]
            }
            Op::Binary(op, a, b) => {
                let whole = match op {
                    BinaryOp::Pow => crate::ir::constant::pow_exponent(cx.g, *b),
                    _ => None,
                };
                w.extend([7, *op as u64]);
                match whole {
                    // The exponent is part of the code, not an operand.
                    Some(k) => {
                        w.extend([1, k as u32 as u64]);
                        smallvec![*a]
                    }
                    None => {
                        w.push(0);
                        smallvec![*a, *b]
                    }
                }
            }
            Op::Compare(op, a, b) => {
                w.extend([8, *op as u64]);
                smallvec![*a, *b]
            }
            Op::Select(c, a, b) => {
                w.push(9);
                smallvec![*c, *a, *b]
            }
            Op::AdamMoment {
                beta,
                square,
                old,
                new,
            } => {
                w.extend([10, beta.to_bits() as u64, *square as u64]);
                smallvec![*old, *new]
            }
            Op::AdamStep {
                w: p,
                m,
                v,
                lr,
                correction,
                eps,
            } => {
                w.extend([11, eps.to_bits() as u64]);
                match correction {
                    Some((c1, c2)) => {
                        w.push(1);
                        smallvec![*p, *m, *v, *lr, *c1, *c2]
                    }
                    None => {
                        w.push(0);
                        smallvec![*p, *m, *v, *lr]
                    }
                }
            }
            // Not a loop operation: the builder reports it.
            _ => return false,
        };
        args.into_iter().all(|a| self.node(cx, a))
    }
}

/// What [`KernelKey::node`] reads besides the node.
struct Describe<'a> {
    g: &'a Graph,
    fu: &'a fusion::Fusion,
    shapes: &'a SecondaryMap<Node, Vec<usize>>,
    value: Node,
    top: bool,
    carried: &'a [Node],
}

/// The kernel over `space` evaluating `value` (computed even though it is
/// stored, with `top`) at each point, writing with strides and offset
/// `out`, and each value it stores alongside as `also_place` says.
#[allow(clippy::too_many_arguments)]
fn kernel_over(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    space: Vec<usize>,
    value: Node,
    top: bool,
    (out, out_offset): Place,
    also_place: &[Option<Place>],
    reduce: Option<ReduceOp>,
) -> (LoopKernel, Vec<Node>) {
    let carried = if top { fu.stored_alongside(value) } else { &[] };
    let new_builder = || KernelBuilder {
        g,
        fu,
        shapes,
        rank: space.len(),
        exprs: Vec::new(),
        // Sized for a typical kernel (a handful to a few dozen nodes, at
        // one or two index maps), so that few grow while it is built
        // (they are dropped once it is; the expressions are kept).
        memo: FxHashMap::with_capacity_and_hasher(16, Default::default()),
        maps: Vec::with_capacity(4),
        accesses: Vec::new(),
        offsets: Vec::new(),
        srcs: Vec::new(),
        carried,
        ident: (0..space.len()).map(Index::dim).collect(),
        also: Vec::new(),
        consts: Vec::new(),
    };
    let mut b = new_builder();
    let ident = b.map_id(b.ident.clone());
    b.build(value, ident, top);
    // A value carried as a sibling (fusion's `sibling-loops`) is not read
    // by the kernel's own: build those first, then the kernel's value,
    // which stays the last entry (the rest share the expressions built).
    let unmet = |b: &KernelBuilder| {
        carried
            .iter()
            .any(|&c| !b.also.iter().any(|&(_, x)| x == c))
    };
    if unmet(&b) {
        b = new_builder();
        let ident = b.map_id(b.ident.clone());
        for &c in carried {
            b.build(c, ident, false);
        }
        b.build(value, ident, top);
    }
    let whole: Vec<i64> = strides(&space).iter().map(|&x| x as i64).collect();
    // Fusion carries a value only into a kernel over its own shape, and
    // each is built at the identity index above (read in place by the
    // kernel's value, `store-alongside`, or built first, `sibling-loops`):
    // an invariant of fusion.
    let also = b
        .carried
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            let &(expr, _) = b
                .also
                .iter()
                .find(|&&(_, x)| x == c)
                .expect("each carried value is built at the identity index");
            let (strides, offset) = match also_place.get(j) {
                Some(Some((strides, at))) => (strides.clone(), *at),
                _ => (whole.clone(), 0),
            };
            Store {
                expr,
                strides,
                offset,
            }
        })
        .collect();
    let mut k = LoopKernel {
        dims: space,
        accesses: b.accesses,
        offsets: b.offsets,
        out,
        out_offset,
        exprs: b.exprs,
        reduce,
        also,
    };
    k.simplify();
    (k, b.srcs)
}

/// The loop kernel copying `part`, a slice read in place (fusion's
/// `slice-in-place`: not stored), into its place in a concatenation:
/// over the part's shape, reading the slice's operand at its offset, and
/// writing the output from element `at` with strides `out`. Returns the
/// kernel and the stored node each access reads.
pub fn copy_kernel(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    part: Node,
    out: Vec<i64>,
    at: usize,
) -> (LoopKernel, Vec<Node>) {
    let space = shapes[part].clone();
    kernel_over(g, fu, shapes, space, part, false, (out, at), &[], None)
}

impl LoopKernel {
    /// The block copy this kernel is, when it only copies one access to
    /// its output row by row: [simplified](LoopKernel::simplify), at most
    /// two dims remain, and the innermost is contiguous on both sides. A
    /// concatenation's part read as a slice of another buffer (fusion's
    /// `slice-in-place`: the shifted states of a loop) is then copied row
    /// by row with `memcpy`, not element by element.
    pub fn as_blocks(&self) -> Option<super::Blocks> {
        if !matches!(self.exprs[..], [Expr::Load(0)])
            || self.accesses.len() != 1
            || self.reduce.is_some()
            || !self.also.is_empty()
        {
            return None;
        }
        let mut k = self.clone();
        k.simplify();
        let last = k.dims.len() - 1;
        let len = k.dims[last];
        // (A single point may have strides of 0.)
        if len > 1 && (k.out[last], k.accesses[0][last]) != (1, 1) {
            return None;
        }
        let (count, dst_stride, src_stride) = match last {
            0 => (1, len, len),
            1 => (
                k.dims[0],
                usize::try_from(k.out[0]).ok()?,
                usize::try_from(k.accesses[0][0]).ok()?,
            ),
            _ => return None,
        };
        Some(super::Blocks {
            count,
            len,
            src_at: k.offsets[0],
            src_stride,
            dst_at: k.out_offset,
            dst_stride,
        })
    }
}

/// Where a node's index along one of its dims is, at a point of the
/// iteration space: `Σ coef · i[dim] + at` over the `terms`. A node read
/// in the kernel's own shape has one term per dim; a broadcast dim has
/// none; a slice adds its start to `at`; a reshape that splits a dim sums
/// the terms of its parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Index {
    /// Inline for up to two terms (a dim read as itself, or one split
    /// across two): building a kernel clones and hashes many of these.
    terms: SmallVec<[(usize, i64); 2]>,
    at: usize,
}

impl Index {
    fn dim(d: usize) -> Index {
        Index {
            terms: smallvec![(d, 1)],
            at: 0,
        }
    }

    fn zero() -> Index {
        Index {
            terms: SmallVec::new(),
            at: 0,
        }
    }
}

/// The index of each dim of `from` where a reshape of it to `to` is at
/// `map`, when the reshape only adds or drops dims of size 1 and splits
/// dims into consecutive parts (then every index is affine in the
/// iteration); `None` when it merges dims. Fusion's `slice-in-place`
/// fuses only such reshapes ([`crate::passes::fusion::splits_only`]).
fn reshape_index(from: &[usize], to: &[usize], map: &[Index]) -> Option<Vec<Index>> {
    let mut out = vec![Index::zero(); from.len()];
    if from.contains(&0) {
        // No point of the space is visited: nothing is read.
        return Some(out);
    }
    let mut j = 0;
    for (i, &f) in from.iter().enumerate() {
        if f == 1 {
            continue;
        }
        // The dims of `to` that make up dim `i`, innermost last.
        let mut parts = Vec::new();
        let mut size = 1;
        while size < f {
            let &t = to.get(j)?;
            if t != 1 {
                parts.push(j);
                size *= t;
            }
            j += 1;
        }
        if size != f {
            return None;
        }
        let mut idx = Index::zero();
        let mut scale = 1usize;
        for &p in parts.iter().rev() {
            for &(d, c) in &map[p].terms {
                idx.terms.push((d, c * scale as i64));
            }
            idx.at += map[p].at * scale;
            scale *= to[p];
        }
        out[i] = idx;
    }
    Some(out)
}

/// The stride of each dim of a reshape to `to` of a tensor of shape
/// `from` whose dims have strides `st` (each index of `from` being affine
/// in `to`'s, [`reshape_index`]); `None` when the reshape merges dims.
/// A product reads a slice in place through such reshapes
/// (`schedule::build::view`).
pub(super) fn reshape_strides(from: &[usize], to: &[usize], st: &[usize]) -> Option<Vec<usize>> {
    let ident: Vec<Index> = (0..to.len()).map(Index::dim).collect();
    let mut out = vec![0usize; to.len()];
    for (i, idx) in reshape_index(from, to, &ident)?.iter().enumerate() {
        for &(d, c) in &idx.terms {
            // A coefficient of the identity map is a product of sizes:
            // never negative.
            out[d] += c as usize * st[i];
        }
    }
    Some(out)
}

struct KernelBuilder<'a> {
    g: &'a Graph,
    fu: &'a fusion::Fusion,
    shapes: &'a SecondaryMap<Node, Vec<usize>>,
    rank: usize,
    exprs: Vec<Expr>,
    /// The expression of each node at each index map met so far.
    memo: FxHashMap<(Node, MapId), usize>,
    /// The distinct index maps met so far, an id being a place in the
    /// list. Operands are mostly read at their user's map, and a kernel
    /// meets few maps (one, or one per broadcast or slice): a search of
    /// the list costs less than hashing a map.
    maps: Vec<Vec<Index>>,
    accesses: Vec<Vec<i64>>,
    offsets: Vec<usize>,
    srcs: Vec<Node>,
    /// The stored values this kernel computes and stores besides its own
    /// (fusion's `store-alongside`), and the identity index they are
    /// stored at.
    carried: &'a [Node],
    ident: Vec<Index>,
    /// The expression of each carried value met at the identity index.
    also: Vec<(usize, Node)>,
    /// The constants of fused ops pushed so far (bits, expression).
    consts: Vec<(u32, usize)>,
}

/// An index map of a [`KernelBuilder`], by its place in `maps`.
type MapId = usize;

impl KernelBuilder<'_> {
    fn map_id(&mut self, map: Vec<Index>) -> MapId {
        if let Some(id) = self.maps.iter().position(|m| *m == map) {
            return id;
        }
        self.maps.push(map);
        self.maps.len() - 1
    }

    fn push(&mut self, e: Expr) -> usize {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    /// The constant `v` of a fused op, one expression per value in the
    /// kernel (as one node per value was before the op was fused).
    fn konst(&mut self, v: f32) -> usize {
        let bits = v.to_bits();
        if let Some(&(_, e)) = self.consts.iter().find(|&&(b, _)| b == bits) {
            return e;
        }
        let e = self.push(Expr::Const(v));
        self.consts.push((bits, e));
        e
    }

    /// The expression of `n` evaluated where each of its dims `j` is at
    /// the index `maps[map_id][j]` of the iteration. `top`: compute `n` itself even
    /// though it is stored.
    fn build(&mut self, n: Node, map_id: MapId, top: bool) -> usize {
        let key = (n, map_id);
        if let Some(&e) = self.memo.get(&key) {
            return e;
        }
        let map = &self.maps[map_id];
        let carried = self.carried.contains(&n);
        let stored = !self.fu.fused.contains(n) && !carried;
        let e = if stored && !top {
            // The operand's row-major strides, innermost first.
            let mut s = vec![0i64; self.rank];
            let mut at = 0;
            let mut stride = 1;
            for (ix, &len) in map.iter().zip(&self.shapes[n]).rev() {
                for &(d, c) in &ix.terms {
                    s[d] += c * stride as i64;
                }
                at += ix.at * stride;
                stride *= len;
            }
            self.srcs.push(n);
            self.accesses.push(s);
            self.offsets.push(at);
            let a = self.accesses.len() - 1;
            self.push(Expr::Load(a))
        } else {
            match &self.g.nodes[n].op {
                Op::Fill { value, .. } => self.push(Expr::Const(*value)),
                Op::Broadcast(a, _) => {
                    let from = &self.shapes[*a];
                    let to = &self.shapes[n];
                    let off = to.len() - from.len();
                    let m: Vec<Index> = (0..from.len())
                        .map(|j| {
                            if from[j] == 1 && to[j + off] != 1 {
                                Index::zero()
                            } else {
                                map[j + off].clone()
                            }
                        })
                        .collect();
                    let m = self.map_id(m);
                    self.build(*a, m, false)
                }
                // fusion's `slice-in-place`: the operand read at the
                // slice's start along its axis.
                Op::Slice {
                    arg, axis, start, ..
                } => {
                    let mut m = map.to_vec();
                    m[*axis].at += *start as usize;
                    let m = self.map_id(m);
                    self.build(*arg, m, false)
                }
                Op::Reshape(a, _) => {
                    // A reshape is fused only on a slice read in place, and
                    // `read_in_place` admits only reshapes `splits_only`
                    // accepts, for which `reshape_index` succeeds on the
                    // concrete sizes: an invariant of fusion, not of input.
                    let m = reshape_index(&self.shapes[*a], &self.shapes[n], map)
                        .expect("fusion fuses only reshapes that split or add unit dims");
                    let m = self.map_id(m);
                    self.build(*a, m, false)
                }
                Op::Unary(op, a) => {
                    let a = self.build(*a, map_id, false);
                    self.push(Expr::Unary(*op, a))
                }
                Op::Binary(op, a, b) => {
                    let whole = match op {
                        BinaryOp::Pow => crate::ir::constant::pow_exponent(self.g, *b),
                        _ => None,
                    };
                    let a = self.build(*a, map_id, false);
                    match whole {
                        Some(k) => self.push(Expr::PowI(a, k)),
                        None => {
                            let b = self.build(*b, map_id, false);
                            self.push(Expr::Binary(*op, a, b))
                        }
                    }
                }
                Op::Compare(op, a, b) => {
                    let a = self.build(*a, map_id, false);
                    let b = self.build(*b, map_id, false);
                    self.push(Expr::Compare(*op, a, b))
                }
                Op::Select(c, a, b) => {
                    let c = self.build(*c, map_id, false);
                    let a = self.build(*a, map_id, false);
                    let b = self.build(*b, map_id, false);
                    self.push(Expr::Select(c, a, b))
                }
                // The expressions of the separate ops the optimizer made
                // before these were fused nodes, in the order it built
                // them (the same code, its constants shared as their
                // nodes were).
                Op::AdamMoment {
                    beta,
                    square,
                    old,
                    new,
                } => {
                    let (beta, square, old, new) = (*beta, *square, *old, *new);
                    let kb = self.konst(beta);
                    let old = self.build(old, map_id, false);
                    let x = self.push(Expr::Binary(BinaryOp::Mul, kb, old));
                    let kn = self.konst(1.0 - beta);
                    let mut new = self.build(new, map_id, false);
                    if square {
                        new = self.push(Expr::Binary(BinaryOp::Mul, new, new));
                    }
                    let y = self.push(Expr::Binary(BinaryOp::Mul, kn, new));
                    self.push(Expr::Binary(BinaryOp::Add, x, y))
                }
                Op::AdamStep {
                    w,
                    m,
                    v,
                    lr,
                    correction,
                    eps,
                } => {
                    let (w, m, v, lr, correction, eps) = (*w, *m, *v, *lr, *correction, *eps);
                    let w = self.build(w, map_id, false);
                    let lr = self.build(lr, map_id, false);
                    let mut m = self.build(m, map_id, false);
                    if let Some((c1, _)) = correction {
                        let c1 = self.build(c1, map_id, false);
                        m = self.push(Expr::Binary(BinaryOp::Div, m, c1));
                    }
                    let mut v = self.build(v, map_id, false);
                    if let Some((_, c2)) = correction {
                        let c2 = self.build(c2, map_id, false);
                        v = self.push(Expr::Binary(BinaryOp::Div, v, c2));
                    }
                    let root = self.push(Expr::Unary(crate::ir::UnaryOp::Sqrt, v));
                    let e = self.konst(eps);
                    let den = self.push(Expr::Binary(BinaryOp::Add, root, e));
                    let step = self.push(Expr::Binary(BinaryOp::Div, m, den));
                    let delta = self.push(Expr::Binary(BinaryOp::Mul, lr, step));
                    self.push(Expr::Binary(BinaryOp::Sub, w, delta))
                }
                op => unreachable!("{op:?} is not a loop operation"),
            }
        };
        if carried && self.maps[map_id] == self.ident {
            self.also.push((e, n));
        }
        self.memo.insert(key, e);
        e
    }
}
