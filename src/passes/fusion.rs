//! Fusion: groups the nodes a graph's roots need into kernels.
//!
//! Every live node is either *stored* — its value gets a buffer — or
//! *fused* into the one kernel that reads it, where it is recomputed per
//! element instead of written and read back. The rules, by name (each
//! decision is logged under `NNC_LOG=fusion`):
//!
//! - `elementwise-chain`: an elementwise node (unary, binary, compare,
//!   select) whose readers, elementwise nodes or reductions over the same
//!   shape (or slices of it that only such nodes read), all end up in one
//!   kernel (one reader, or several fused into the same kernel: `relu`
//!   reads `z` twice, through `z > 0` and the select) is fused into that
//!   kernel, which computes it once per element.
//! - `slice-recompute`: an addition, subtraction or product read only
//!   through slices (and reshapes of them that split dims) that only
//!   elementwise nodes and reductions read is not stored, though they lie
//!   in several kernels: each computes it where it reads its slice (one
//!   operation on two loads, for the write and the read it saves; the
//!   derivative step of an LSTM adds the gradients of its carried `h` and
//!   `c`, then reads each half).
//! - `reduce-prologue`: the same, when the reader is a reduction: the
//!   reduction's loop computes its operand per element.
//! - `reduce-ends-group`: a reduction's result is always stored; its
//!   readers start a new kernel (their loop runs over another shape).
//! - `recompute-broadcast`: `fill` and `broadcast` are pure index maps, so
//!   they are recomputed in every kernel that reads them, whatever their
//!   number of readers (the stated cost rule: recompute costs one load per
//!   element, storing costs a write and a read of the full shape).
//! - `matmul-transposed-operand`: a transpose of the last two axes read
//!   only by matmuls is not copied: the GEMM reads it with swapped strides.
//! - `matmul-broadcast-operand`: a broadcast that keeps a matrix's last two
//!   dims (a weight shared by every batch of a batched product), read only
//!   by matmuls, is not materialised: each batch reads the same matrix
//!   (and when the other operand is contiguous, the batches become rows
//!   of one GEMM).
//! - `reshape-is-a-view`: a reshape shares its operand's buffer.
//! - `slice-in-place`: a slice read only by loop kernels (elementwise
//!   nodes and reductions), concatenations and products (as an operand,
//!   transposed or not, or as the matrix a batch of products shares; a
//!   product summed over its batch only where the slice keeps its rows at
//!   one stride, as an LSTM's `h` beside its `c`), directly or through
//!   reshapes that split dims or add and drop dims of size 1 and through
//!   further slices, is not copied: each kernel reads its operand's
//!   buffer at the slice's offset with the operand's strides (an LSTM's
//!   gates, sliced from one product of the stacked weights, and the
//!   halves of its carry), and a concatenation copies it from there into
//!   its part by a loop kernel (the steps of a loop's stacked results
//!   shifted by one, in its derivative).
//! - `fill-in-place`: a fill that is a part of a concatenation is written
//!   into its place there by a loop kernel of its own, and recomputed in
//!   its other readers (`recompute-broadcast`, with the concatenation
//!   counted as a loop reader): never stored and copied. The adjoint of a
//!   loop's stacked results (zeros but at the steps the loss reads) is
//!   then one fill and one copy into the stack, and its zeros are
//!   constants in the kernels that add them to the adjoints the loop's
//!   steps pass back.
//! - `scan-sum`: a loop whose steps are independent (its body does not
//!   read the carry) and whose stacked results are only summed over the
//!   steps adds each step's result into the sum as it runs; the stack is
//!   never stored.
//! - `append-chain`: a concatenation that appends whole buffers (every dim
//!   before its axis is 1), read only by another such append (directly or
//!   through reshapes), is not stored: the outer one copies its parts in
//!   place. Joined gradients (an LSTM's four gates, the packed arguments
//!   of a loop) are then one copy of each part instead of one per join.
//! - `concat-in-place`: an elementwise kernel whose value only a
//!   concatenation reads, as one of its parts, writes it straight into
//!   its place in the concatenation's buffer (with the concatenation's
//!   strides) instead of into a buffer of its own that the concatenation
//!   copies (the gates' gradients an LSTM's derivative loop lays side by
//!   side for `matmul-sum`). So is a value stored alongside (below)
//!   whose buffer no kernel but the concatenation reads: its carrier
//!   stores it there (the gates an LSTM's forward loop keeps for its
//!   derivative, in the loop's stacked result).
//! - `store-alongside`: an elementwise kernel whose value is stored (a
//!   root, such as an optimizer's new moment, which the parameter's update
//!   reads; or a value with several readers, such as a ReLU's mask kept
//!   for its derivative) and whose first reader is an elementwise kernel
//!   over the same shape that reads it at its own index is computed in
//!   that kernel, which stores it as a further output: one pass over
//!   memory instead of a store, then a load in the next pass (Adam's
//!   moments and its update in one kernel).
//! - `sibling-loops`: an elementwise kernel whose value nothing reads
//!   before the next elementwise kernel over the same shape runs (nor,
//!   for a value written into its part of a concatenation, does the
//!   concatenation's own step run before it) is computed and stored by
//!   that kernel too, with what it already stores: independent
//!   loops over one shape make one pass instead of several (an LSTM
//!   cell's gates, state and output; its derivative's gate gradients;
//!   the bias corrections of Adam). The other way too: a kernel whose
//!   reads are all ready before an earlier elementwise kernel over its
//!   shape runs (or are values that kernel stores alongside, at its own
//!   index) is computed by it (the LSTM's gate gradients recomputed over
//!   all steps, whose bias reductions come between them). At most eight
//!   stores a kernel.
//!
//! Refusals are logged with their reason: several readers (the value is
//! stored once rather than recomputed per reader), a reader that is not a
//! loop kernel (matmul, convolution, scan …), a root of the graph.
//!
//! Matmul epilogues are a scheduling rule (`gemm-epilogue`, in
//! `schedule/build.rs`): the elementwise kernel right after a matmul that
//! reads its output is applied as the GEMM stores it.

use crate::ir::{BinaryOp, Dim, Graph, Node, Op};
use cranelift_entity::{EntitySet, SecondaryMap};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::fmt::Write;

/// The readers of each live node. Inline for up to two (most nodes have
/// one or two): a deep model's graph has thousands of nodes, and a list
/// allocated per node was a tenth of this pass.
type Readers = SecondaryMap<Node, SmallVec<[Node; 2]>>;

impl Fusion {
    /// The stored values, in the order of the kernel's further outputs
    /// (`LoopKernel::also`), that the kernel of stored node `n` writes
    /// besides its own (`store-alongside`).
    pub fn stored_alongside(&self, n: Node) -> &[Node] {
        self.carries.get(&n).map_or(&[], Vec::as_slice)
    }
}

/// What a stored node's kernel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An input, parameter or constant: a buffer filled from outside.
    Leaf,
    /// One loop over the node's shape computing a fused expression.
    Elementwise,
    /// One loop over the operand's shape accumulating into the node.
    Reduce,
    /// A call to the GEMM.
    MatMul,
    /// A transpose copy.
    Transpose,
    /// Shares the operand's buffer.
    View,
    /// Any other operation, run by a host routine.
    Host,
}

/// The grouping: which nodes are stored, with their kernel kind, and which
/// are fused into their reader.
pub struct Fusion {
    /// Nodes in evaluation order that get a buffer, with their kernel.
    pub kernels: Vec<(Node, Kind)>,
    /// Live nodes that are computed inside their readers' kernels.
    pub fused: EntitySet<Node>,
    /// Operands that matmuls read in place instead of a copy: transposes
    /// of the last two axes (swapped strides) and batch broadcasts (the
    /// same matrix for every batch).
    pub strided: EntitySet<Node>,
    /// Elementwise kernels that write their value into their part of a
    /// concatenation, and values stored alongside into theirs
    /// (`concat-in-place`): the stored concatenation.
    pub placed: SecondaryMap<Node, Option<Node>>,
    /// For a stored elementwise node computed and stored by a later
    /// kernel (`store-alongside`), that kernel's node: the node has a
    /// buffer but no kernel of its own.
    pub carrier: SecondaryMap<Node, Option<Node>>,
    /// The nodes each kernel stores besides its own value, in order
    /// ([`Fusion::stored_alongside`]).
    carries: FxHashMap<Node, Vec<Node>>,
    /// The stored nodes each kernel reads ([`kernel_reads`]), by its place
    /// in `kernels`, walked once the kernels are final (the last rule,
    /// `concat-in-place` for carried values, reads them; the schedule's
    /// buffer plan too).
    pub reads: Vec<Vec<Node>>,
    /// Why each decision was taken, for `NNC_LOG=fusion` (empty when it
    /// is off: the lines are not even formatted).
    pub log: Vec<String>,
    logging: bool,
}

/// Logs a decision of fusion `f` under `NNC_LOG=fusion`; formats nothing
/// when that is off.
macro_rules! note {
    ($f:expr, $($line:tt)*) => {
        if $f.logging {
            $f.log.push(format!($($line)*));
        }
    };
}

fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(..)
            | Op::Compare(..)
            | Op::Select(..)
            | Op::Binary(..)
            | Op::AdamMoment { .. }
            | Op::AdamStep { .. }
    )
}

/// Whether the node is a loop kernel's element computation.
fn is_loop_op(_g: &Graph, op: &Op) -> bool {
    is_elementwise(op)
}

/// Transposes of the last two axes.
fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && (0..r - 2).all(|i| perm[i] == i)
}

/// Broadcasts that only add or widen batch axes of a matrix operand:
/// the last two dims stay as they are.
fn batch_broadcast(g: &Graph, src: Node, to: &[crate::ir::Dim]) -> bool {
    let from = g.shape(src);
    from.len() >= 2 && to.len() >= 2 && from[from.len() - 2..] == to[to.len() - 2..]
}

/// Whether concatenation `n` appends whole buffers: every dim before
/// its axis is 1, so its result is its operands' data one after the other.
pub fn is_append(g: &Graph, n: Node) -> bool {
    match g.nodes[n].op {
        Op::Concat { axis, .. } => g.shape(n)[..axis]
            .iter()
            .all(|d| *d == crate::ir::Dim::Known(1)),
        _ => false,
    }
}

/// Whether `r` sums loop `scan` over its steps (axis 0) alone.
fn sums_steps(g: &Graph, r: Node, scan: Node) -> bool {
    matches!(&g.nodes[r].op, Op::Reduce { op: crate::ir::ReduceOp::Sum, arg, axes } if *arg == scan && axes[..] == [0])
}

/// Whether a loop body reads its carry (its first input).
fn reads_carry(body: &Graph) -> bool {
    let Some(carry) = body.inputs.keys().next() else {
        return false;
    };
    let roots: Vec<Node> = body.outputs.iter().map(|o| o.node).collect();
    let mut live: EntitySet<Node> = EntitySet::new();
    for r in roots {
        live.insert(r);
    }
    for (n, d) in body.nodes.iter().rev() {
        if live.contains(n) {
            if matches!(d.op, Op::Input(i) if i == carry) {
                return true;
            }
            for a in d.op.args() {
                live.insert(a);
            }
        }
    }
    false
}

/// Whether a reshape from `from` to `to` only splits dims into
/// consecutive parts of known sizes and adds or drops dims of size 1:
/// then an index of `from` is affine in the indices of `to`, and a loop
/// kernel reads the operand of a reshaped slice with strides.
pub fn splits_only(from: &[Dim], to: &[Dim]) -> bool {
    let keep =
        |s: &[Dim]| -> Vec<Dim> { s.iter().filter(|&&d| d != Dim::Known(1)).copied().collect() };
    let (from, to) = (keep(from), keep(to));
    if from.contains(&Dim::Known(0)) || to.contains(&Dim::Known(0)) {
        return false;
    }
    let mut j = 0;
    for &f in &from {
        if to.get(j) == Some(&f) {
            j += 1;
            continue;
        }
        let Dim::Known(mut rest) = f else {
            return false;
        };
        while rest > 1 {
            match to.get(j) {
                Some(&Dim::Known(t)) if rest % t == 0 => {
                    rest /= t;
                    j += 1;
                }
                _ => return false,
            }
        }
    }
    j == to.len()
}

/// Whether a slice `n` (or a reshape or slice of one) can be read in
/// place by every kernel that reads it (fusion's `slice-in-place`): each
/// reader is a loop kernel (an elementwise node or a reduction), a
/// concatenation (which copies it with a loop kernel), or a reshape that
/// only splits dims ([`splits_only`]) or another slice, read so in turn;
/// and none of them is a root.
fn read_in_place(g: &Graph, readers: &Readers, roots: &EntitySet<Node>, n: Node) -> bool {
    // A product reads its operands with any strides; one summed over its
    // batch stacks the batches' rows as one operand, which a view gives
    // only when its rows follow one another at one stride ([`rows_stacked`]).
    let sums_batch = |m: Node| readers[m].iter().any(|&r| sums_batch_axes(g, r, m));
    let product = |m: Node| matches!(g.nodes[m].op, Op::MatMul(..)) && !sums_batch(m);
    let stacked_product =
        |m: Node| matches!(g.nodes[m].op, Op::MatMul(..)) && (!sums_batch(m) || rows_stacked(g, n));
    !roots.contains(n)
        && !readers[n].is_empty()
        && readers[n].iter().all(|&r| match &g.nodes[r].op {
            op if is_elementwise(op) => true,
            Op::Reduce { .. } | Op::Concat { .. } => true,
            Op::MatMul(..) => stacked_product(r),
            // A matrix shared by every batch of products
            // (`matmul-broadcast-operand`).
            Op::Broadcast(_, to) => {
                batch_broadcast(g, n, to)
                    && !roots.contains(r)
                    && !readers[r].is_empty()
                    && readers[r].iter().all(|&m| product(m))
            }
            // A transpose that products read with swapped strides
            // (`matmul-transposed-operand`): the activations a weight's
            // gradient multiplies, such as an LSTM's `h` sliced from its
            // stacked states.
            Op::Transpose(_, perm) => {
                swaps_last_two(perm)
                    && !roots.contains(r)
                    && !readers[r].is_empty()
                    && readers[r].iter().all(|&m| stacked_product(m))
            }
            Op::Slice { .. } => read_in_place(g, readers, roots, r),
            Op::Reshape(a, _) => {
                splits_only(g.shape(*a), g.shape(r)) && read_in_place(g, readers, roots, r)
            }
            _ => false,
        })
}

/// Whether view `v` of a stored value (a slice, or a reshape of one)
/// keeps its rows, the indices of every dim but the last, one after the
/// other at one stride, as a product summed over its batch reads them
/// (`matmul-batch-sum` stacks the batches' rows into one operand): a slice
/// of the last dim, or one entry of one of the last two dims that a
/// reshape drops (an LSTM's `h` beside its `c` in the stacked states).
/// Every other dim is then whole. The value sliced must be laid out
/// whole: not a slice, nor a reshape of one.
fn rows_stacked(g: &Graph, v: Node) -> bool {
    fn whole(g: &Graph, x: Node) -> bool {
        match g.nodes[x].op {
            Op::Slice { .. } => false,
            Op::Reshape(a, _) => whole(g, a),
            _ => true,
        }
    }
    match &g.nodes[v].op {
        Op::Slice { arg, axis, .. } => whole(g, *arg) && axis + 1 == g.shape(*arg).len(),
        Op::Reshape(s, to) => match g.nodes[*s].op {
            Op::Slice { arg, axis, .. } => {
                let mut dropped = g.shape(*s).clone();
                let one = dropped.remove(axis) == Dim::Known(1);
                whole(g, arg) && one && axis + 1 >= dropped.len() && *to == dropped
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether `n` is a slice read in place by loop kernels alone (the
/// elementwise nodes and reductions that read it, directly or through
/// further such slices and reshapes that only split dims): a view through
/// which an elementwise operand can be computed in the kernels that read
/// it (`elementwise-chain` through a slice), each reading it at the
/// slice's offset. The gradient an LSTM's derivative step gets for its
/// carried `h` and `c`, one sum sliced into the two, is then added where
/// each half is read instead of stored first.
fn view_into_loops(g: &Graph, readers: &Readers, roots: &EntitySet<Node>, n: Node) -> bool {
    let fits = match g.nodes[n].op {
        Op::Slice { .. } => true,
        Op::Reshape(a, _) => {
            matches!(g.nodes[a].op, Op::Slice { .. } | Op::Reshape(..))
                && splits_only(g.shape(a), g.shape(n))
        }
        _ => false,
    };
    fits && !roots.contains(n)
        && !readers[n].is_empty()
        && readers[n].iter().all(|&r| {
            let op = &g.nodes[r].op;
            is_elementwise(op)
                || matches!(op, Op::Reduce { .. })
                || view_into_loops(g, readers, roots, r)
        })
}

/// Whether `n` is a slice read in place (`slice-in-place`), or a reshape
/// or slice of one: a view of a stored node's buffer that no kernel
/// stores.
pub fn is_slice_view(g: &Graph, f: &Fusion, n: Node) -> bool {
    f.fused.contains(n)
        && match g.nodes[n].op {
            Op::Slice { .. } => true,
            Op::Reshape(a, _) => is_slice_view(g, f, a),
            _ => false,
        }
}

/// Whether `n`, a part of a concatenation, is written into its place by
/// a kernel of its own without a buffer: a slice read in place
/// (`slice-in-place`), copied there, or a fill recomputed there
/// (`fill-in-place`).
pub fn is_part_in_place(g: &Graph, f: &Fusion, n: Node) -> bool {
    is_slice_view(g, f, n) || (f.fused.contains(n) && matches!(g.nodes[n].op, Op::Fill { .. }))
}

/// Whether `r` sums `mm` over exactly its batch axes (all but the last
/// two).
fn sums_batch_axes(g: &Graph, r: Node, mm: Node) -> bool {
    let batch: Vec<usize> = (0..g.shape(mm).len() - 2).collect();
    matches!(&g.nodes[r].op, Op::Reduce { op: crate::ir::ReduceOp::Sum, arg, axes } if *arg == mm && *axes == batch)
}

/// Groups the nodes `roots` need.
pub fn fuse(g: &Graph, roots: &[Node]) -> Fusion {
    let mut live: EntitySet<Node> = EntitySet::new();
    for &r in roots {
        live.insert(r);
    }
    let mut readers: Readers = g.node_table();
    for (n, d) in g.nodes.iter().rev() {
        if live.contains(n) {
            for a in d.op.args() {
                live.insert(a);
                if !readers[a].contains(&n) {
                    readers[a].push(n);
                }
            }
        }
    }
    let mut is_root: EntitySet<Node> = EntitySet::new();
    for &r in roots {
        is_root.insert(r);
    }
    let mut f = Fusion {
        kernels: Vec::new(),
        fused: EntitySet::new(),
        strided: EntitySet::new(),
        placed: g.node_table(),
        carrier: g.node_table(),
        carries: FxHashMap::default(),
        reads: Vec::new(),
        log: Vec::new(),
        logging: crate::log::enabled("fusion"),
    };
    let name = |n: Node| format!("{n} ({})", op_name(&g.nodes[n].op));
    let only_matmuls =
        |rs: &[Node]| !rs.is_empty() && rs.iter().all(|&r| matches!(g.nodes[r].op, Op::MatMul(..)));
    // Whether an append's value flows, through single-reader reshapes
    // only, into another append: then it need not be stored (its parts are
    // copied straight into the outer one).
    fn sinks(g: &Graph, readers: &Readers, roots: &EntitySet<Node>, n: Node) -> bool {
        match readers[n][..] {
            [r] if !roots.contains(n) => match g.nodes[r].op {
                Op::Concat { .. } => is_append(g, r),
                Op::Reshape(..) => sinks(g, readers, roots, r),
                _ => false,
            },
            _ => false,
        }
    }
    let append_sink = |n: Node| sinks(g, &readers, &is_root, n);
    // Whether a concatenation's only reader joins along the same axis:
    // then its parts are copied straight into the outer one (one copy of
    // every part, however long the chain).
    let column_sink = |n: Node, axis: usize| match readers[n][..] {
        [r] if !is_root.contains(n) => {
            matches!(g.nodes[r].op, Op::Concat { axis: outer, .. } if outer == axis)
        }
        _ => false,
    };
    // A matmul, or a transpose that will be read by matmuls in place.
    let matrix_reader = |r: Node| match &g.nodes[r].op {
        Op::MatMul(..) => true,
        Op::Transpose(_, perm) => {
            swaps_last_two(perm) && only_matmuls(&readers[r]) && !is_root.contains(r)
        }
        _ => false,
    };
    // A reader that runs a loop kernel over its own shape and can take the
    // node's computation into it.
    let loop_reader = |r: Node| -> bool {
        let op = &g.nodes[r].op;
        is_loop_op(g, op)
            || matches!(op, Op::Reduce { .. } | Op::Broadcast(..))
            || view_into_loops(g, &readers, &is_root, r)
    };
    // The kernel each elementwise node will be computed in: itself when
    // stored, else the one kernel all its readers are computed in (decided
    // from the consumers back, as the loop below decides forwards).
    let mut owner: SecondaryMap<Node, Option<Node>> = g.node_table();
    for (n, d) in g.nodes.iter().rev() {
        if !live.contains(n) {
            continue;
        }
        let mut o = Some(n);
        let computed = is_loop_op(g, &d.op) || view_into_loops(g, &readers, &is_root, n);
        if computed && !is_root.contains(n) {
            let rs = &readers[n];
            let first = rs.first().and_then(|&r| owner[r]);
            let one = rs.iter().all(|&r| {
                owner[r] == first && loop_reader(r) && !matches!(g.nodes[r].op, Op::Broadcast(..))
            });
            if one && first.is_some() {
                o = first;
            }
        }
        owner[n] = o;
    }
    for (n, d) in g.nodes.iter() {
        if !live.contains(n) {
            continue;
        }
        let rs = &readers[n];
        let kind = match &d.op {
            Op::Input(_) | Op::Param(_) | Op::Const(_) => Kind::Leaf,
            Op::Broadcast(src, to)
                if batch_broadcast(g, *src, to)
                    && rs.iter().all(|&r| matrix_reader(r))
                    && !rs.is_empty()
                    && !is_root.contains(n)
                    && !f.strided.contains(*src)
                    && !matches!(g.nodes[*src].op, Op::Fill { .. } | Op::Broadcast(..)) =>
            {
                note!(
                    f,
                    "matmul-broadcast-operand: {} is read in place by each batch of the GEMM",
                    name(n)
                );
                f.strided.insert(n);
                continue;
            }
            Op::Fill { .. } | Op::Broadcast(..) => {
                // A concatenation writes a fill that is one of its parts
                // into its place itself (`fill-in-place`).
                let joins = match d.op {
                    Op::Fill { .. } => rs
                        .iter()
                        .filter(|&&r| matches!(g.nodes[r].op, Op::Concat { .. }))
                        .count(),
                    _ => 0,
                };
                let all_loops = rs.iter().filter(|&&r| loop_reader(r)).count() + joins == rs.len();
                if !is_root.contains(n) && all_loops {
                    if joins > 0 {
                        note!(
                            f,
                            "fill-in-place: {} is written into its place in {} concatenation(s)",
                            name(n),
                            joins
                        );
                    }
                    note!(
                        f,
                        "recompute-broadcast: {} is recomputed in its {} reader(s)",
                        name(n),
                        rs.len()
                    );
                    f.fused.insert(n);
                    continue;
                }
                note!(
                    f,
                    "refused recompute-broadcast for {}: {}",
                    name(n),
                    if is_root.contains(n) {
                        "it is a root".to_string()
                    } else {
                        "a reader is not a loop kernel".to_string()
                    }
                );
                Kind::Elementwise
            }
            op if is_loop_op(g, op) => {
                let not_loop = rs
                    .iter()
                    .find(|&&r| !loop_reader(r) || matches!(g.nodes[r].op, Op::Broadcast(..)));
                // Why `n` is stored, if it is (formatted only when logged).
                enum Stored {
                    Root,
                    Reader(Node),
                    Spread(usize),
                }
                // Its readers lie in several kernels (else the one they
                // share computes it).
                let spread = owner[n] == Some(n);
                // One addition, subtraction or product of values computed
                // elsewhere, read only through slices by loop kernels, is
                // computed where each slice is read (once per kernel that
                // reads it) rather than stored (`slice-recompute`).
                let recomputed_where_sliced = || {
                    let computed_elsewhere = match d.op {
                        Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul, a, b) => {
                            owner[a] != Some(n) && owner[b] != Some(n)
                        }
                        _ => false,
                    };
                    computed_elsewhere
                        && rs
                            .iter()
                            .all(|&r| view_into_loops(g, &readers, &is_root, r))
                };
                let reason = if is_root.contains(n) {
                    Some(Stored::Root)
                } else if let Some(&r) = not_loop {
                    Some(Stored::Reader(r))
                } else if spread && !recomputed_where_sliced() {
                    Some(Stored::Spread(rs.len()))
                } else {
                    None
                };
                match reason {
                    None => {
                        if spread {
                            note!(
                                f,
                                "slice-recompute: {} is computed where its {} slice(s) are read",
                                name(n),
                                rs.len()
                            );
                        } else {
                            // The owner pass above gave every live node an
                            // owner; here it is not `n` itself.
                            let into =
                                owner[n].expect("a fused node has the kernel it is fused into");
                            let rule = if matches!(g.nodes[into].op, Op::Reduce { .. }) {
                                "reduce-prologue"
                            } else {
                                "elementwise-chain"
                            };
                            note!(f, "{rule}: {} fused into {}", name(n), name(into));
                        }
                        f.fused.insert(n);
                        continue;
                    }
                    Some(why) => {
                        note!(
                            f,
                            "refused fusion of {}: {}",
                            name(n),
                            match why {
                                Stored::Root => "it is a root".to_string(),
                                Stored::Reader(r) =>
                                    format!("its reader {} is not a loop kernel", name(r)),
                                Stored::Spread(k) => format!(
                                    "{k} readers in different kernels: stored once instead of recomputed"
                                ),
                            }
                        );
                        Kind::Elementwise
                    }
                }
            }
            Op::Reduce { arg, .. }
                if f.fused.contains(*arg) && matches!(g.nodes[*arg].op, Op::MatMul(..)) =>
            {
                Kind::MatMul
            }
            Op::Reduce { arg, .. }
                if f.fused.contains(*arg) && matches!(g.nodes[*arg].op, Op::Scan { .. }) =>
            {
                Kind::Host
            }
            Op::Scan { body, .. }
                if !is_root.contains(n)
                    && matches!(rs[..], [r] if sums_steps(g, r, n))
                    && !reads_carry(&g.bodies[*body]) =>
            {
                note!(
                    f,
                    "scan-sum: {} is summed over its steps as it runs, never stacked",
                    name(n)
                );
                f.fused.insert(n);
                continue;
            }
            Op::Reduce { .. } => {
                note!(f, "reduce-ends-group: {} is stored", name(n));
                Kind::Reduce
            }
            Op::MatMul(x, y) => {
                let stacked_t = match &g.nodes[*x].op {
                    Op::Transpose(src, _) => f.strided.contains(*x) && !f.strided.contains(*src),
                    _ => false,
                };
                let batched = g.shape(n).len() > 2;
                if let [r] = rs[..] {
                    if batched
                        && stacked_t
                        && !f.strided.contains(*y)
                        && !is_root.contains(n)
                        && sums_batch_axes(g, r, n)
                    {
                        note!(
                            f,
                            "matmul-batch-sum: {} summed over its batch by {} is one GEMM over the stacked rows",
                            name(n),
                            name(r)
                        );
                        f.fused.insert(n);
                        continue;
                    }
                }
                Kind::MatMul
            }
            Op::Transpose(_, perm) => {
                if swaps_last_two(perm) && only_matmuls(rs) && !is_root.contains(n) {
                    note!(
                        f,
                        "matmul-transposed-operand: {} is read with swapped strides",
                        name(n)
                    );
                    f.strided.insert(n);
                    continue;
                }
                Kind::Transpose
            }
            Op::Concat { .. } if is_append(g, n) && append_sink(n) => {
                note!(
                    f,
                    "append-chain: {} is written straight into the concatenation that reads it",
                    name(n)
                );
                f.fused.insert(n);
                continue;
            }
            Op::Concat { axis, .. } if column_sink(n, *axis) => {
                note!(
                    f,
                    "concat-chain: {}'s parts are written straight into the concatenation that reads it",
                    name(n)
                );
                f.fused.insert(n);
                continue;
            }
            Op::Slice { .. } if read_in_place(g, &readers, &is_root, n) => {
                note!(
                    f,
                    "slice-in-place: {} is read in place by the kernels that read it",
                    name(n)
                );
                f.fused.insert(n);
                continue;
            }
            Op::Reshape(a, _) if f.fused.contains(*a) => {
                // The operand is an append fused into a later one (see
                // `append_sink`), or a slice read in place: so is this
                // view of it.
                f.fused.insert(n);
                continue;
            }
            Op::Reshape(..) => {
                note!(
                    f,
                    "reshape-is-a-view: {} shares its operand's buffer",
                    name(n)
                );
                Kind::View
            }
            _ => Kind::Host,
        };
        f.kernels.push((n, kind));
    }
    place_parts(g, &readers, &is_root, &mut f);
    let mut reads = store_alongside(g, &mut f);
    // No rule after this point changes what a kernel reads. Only a kernel
    // that now carries values reads other nodes than it did before
    // `store_alongside` (through the values it carries, and their
    // operands): the others' reads are kept.
    for (&(k, _), r) in f.kernels.iter().zip(&mut reads) {
        if !f.stored_alongside(k).is_empty() {
            *r = kernel_reads(g, &f, k);
        }
    }
    f.reads = reads;
    place_carried(g, &is_root, &mut f);
    f
}

/// The stored nodes kernel `n` reads: its operands, looking through the
/// nodes computed inside it (fused, read in place, or carried by it).
pub fn kernel_reads(g: &Graph, f: &Fusion, n: Node) -> Vec<Node> {
    let carried = f.stored_alongside(n);
    let mut out = Vec::new();
    // A value stored alongside as a sibling (`sibling-loops`) is not an
    // operand of `n`'s own: start from each one's operands too.
    let mut stack = g.nodes[n].op.args();
    for &c in carried {
        stack.extend(g.nodes[c].op.args());
    }
    while let Some(a) = stack.pop() {
        if f.fused.contains(a) || f.strided.contains(a) || carried.contains(&a) {
            stack.extend(g.nodes[a].op.args());
        } else {
            out.push(a);
        }
    }
    out
}

/// Whether kernel `n` reads `a` at its own index: `a` is an operand of
/// `n` or of an elementwise node fused into it, with no broadcast, slice
/// or reshape between.
fn reads_in_place(g: &Graph, f: &Fusion, n: Node, a: Node) -> bool {
    let mut stack = g.nodes[n].op.args();
    while let Some(x) = stack.pop() {
        if x == a {
            return true;
        }
        if f.fused.contains(x) && is_elementwise(&g.nodes[x].op) {
            stack.extend(g.nodes[x].op.args());
        }
    }
    false
}

/// The most values one loop kernel stores (its own and those it stores
/// alongside): enough for an LSTM cell's gates and state, few enough that
/// a kernel's pointers and live values stay in registers.
const MAX_STORES: usize = 8;

/// How many kernels ahead `sibling-loops` looks for a kernel to join.
const SIBLING_WINDOW: usize = 32;

/// The rules `store-alongside` and `sibling-loops`, which move a stored
/// elementwise kernel `a` into a later elementwise kernel `b` over the
/// same shape; `b` then computes `a` (and whatever `a` already carried)
/// at each of its points and stores it besides its own value.
///
/// - `store-alongside`: `b` is `a`'s first reader and reads it at its own
///   index (Adam's moments and the parameter's update in one kernel).
/// - `sibling-loops`: `b` does not read `a`; it is the nearest such
///   kernel, and nothing reads `a` (or writes the concatenation `a` is
///   written into, `concat-in-place`) before `b` runs. Independent loops
///   over one shape then make one pass instead of several (an LSTM
///   derivative's four gate gradients and the state's, Adam's updates of
///   parameters of one shape).
///
/// Moving `a` later is safe: every reader of it runs at or after `b`
/// (chains included: a group's carrier never passes the first reader of
/// any value it carries), and the buffers `a` reads stay live until `b`
/// (the buffer plan reads through carried values). Neither kernel may be
/// the elementwise kernel right after a GEMM that reads its output
/// (`gemm-epilogue` takes that one), and a kernel stores at most
/// [`MAX_STORES`] values.
///
/// Returns what each kernel read before ([`kernel_reads`], none for a
/// leaf).
fn store_alongside(g: &Graph, f: &mut Fusion) -> Vec<Vec<Node>> {
    let name = |n: Node| format!("{n} ({})", op_name(&g.nodes[n].op));
    let count = f.kernels.len();
    let mut pos: SecondaryMap<Node, usize> = g.node_table();
    let mut reads = Vec::with_capacity(count);
    for (i, &(k, kind)) in f.kernels.iter().enumerate() {
        pos[k] = i;
        reads.push(match kind {
            Kind::Leaf => Vec::new(),
            _ => kernel_reads(g, f, k),
        });
    }
    // The kernels that need each stored value, in order: its readers, and
    // the concatenation it is written into.
    let mut uses: SecondaryMap<Node, Vec<usize>> = g.node_table();
    for (i, &(k, _)) in f.kernels.iter().enumerate() {
        for &a in &reads[i] {
            uses[a].push(i);
        }
        if let Some(c) = f.placed[k] {
            uses[k].push(pos[c]);
        }
    }
    let after_gemm =
        |i: usize| i > 0 && matches!(f.kernels[i - 1], (p, Kind::MatMul) if reads[i].contains(&p));
    // (Asked of each kernel many times below: once per kernel that
    // looks for one to join.)
    let movable: Vec<bool> = (0..count)
        .map(|i| {
            let (n, kind) = f.kernels[i];
            kind == Kind::Elementwise && is_elementwise(&g.nodes[n].op) && !after_gemm(i)
        })
        .collect();
    let movable = |i: usize| movable[i];
    // What each kernel computes and stores besides its own value.
    let mut members: Vec<Vec<Node>> = vec![Vec::new(); count];
    for i in 0..count {
        if !movable(i) {
            continue;
        }
        let a = f.kernels[i].0;
        let mut group = std::mem::take(&mut members[i]);
        group.push(a);
        // The first kernel after this one that needs a value of the group
        // (those before it are in the group, moved along with it).
        let limit = group
            .iter()
            .filter_map(|&x| uses[x].iter().copied().find(|&u| u > i))
            .min()
            .unwrap_or(usize::MAX);
        let mut into = None;
        for j in i + 1..count.min(i + 1 + SIBLING_WINDOW) {
            if j > limit {
                break;
            }
            let b = f.kernels[j].0;
            let fits = movable(j)
                && g.shape(a) == g.shape(b)
                && group.len() + members[j].len() < MAX_STORES;
            // The first reader must read every value of the group it
            // reads at its own index; a kernel before it reads none.
            let joins = fits
                && group
                    .iter()
                    .all(|&x| !reads[j].contains(&x) || reads_in_place(g, f, b, x));
            if joins {
                into = Some(j);
                break;
            }
            if j == limit {
                break;
            }
        }
        match into {
            Some(j) => {
                let b = f.kernels[j].0;
                let rule = match reads[j].contains(&a) {
                    true => "store-alongside",
                    false => "sibling-loops",
                };
                let with = match group.len() - 1 {
                    0 => String::new(),
                    c => format!(" (with the {c} value(s) it stores alongside)"),
                };
                note!(
                    f,
                    "{rule}: {}{with} is computed and stored by the kernel of {}",
                    name(a),
                    name(b)
                );
                members[j].extend(group);
            }
            None => {
                group.pop();
                members[i] = group;
            }
        }
    }
    // Then `sibling-loops` the other way: a kernel that carries nothing
    // and reads only values ready before an earlier kernel over its shape
    // runs (or those that kernel stores alongside, at its own index) is
    // computed by it. The derivative of an LSTM's gates, recomputed over
    // all steps for the weight gradients, is one pass although the
    // reduction of the first gate comes before the second.
    let mut runs_in: Vec<Option<usize>> = vec![None; count];
    for (m, group) in members.iter().enumerate() {
        for &x in group {
            runs_in[pos[x]] = Some(m);
        }
    }
    // The kernel after which a stored value is there to read.
    let ready = |runs_in: &[Option<usize>], mut x: Node| loop {
        let i = pos[x];
        match (f.kernels[i].1, &g.nodes[x].op) {
            (Kind::View, Op::Reshape(a, _)) => x = *a,
            (Kind::Leaf, _) => return 0,
            _ => return runs_in[i].unwrap_or(i),
        }
    };
    for j in 0..count {
        if !movable(j) || runs_in[j].is_some() || !members[j].is_empty() {
            continue;
        }
        let b = f.kernels[j].0;
        // (Not one that reads the earlier kernel's own value: the kernel
        // builds the values it stores alongside before its own, which
        // stays its last expression.)
        let into = (j.saturating_sub(SIBLING_WINDOW)..j).rev().find(|&i| {
            let a = f.kernels[i].0;
            movable(i)
                && runs_in[i].is_none()
                && g.shape(a) == g.shape(b)
                && members[i].len() + 2 <= MAX_STORES
                && !reads[j].contains(&a)
                && reads[j].iter().all(|&x| match members[i].contains(&x) {
                    true => reads_in_place(g, f, b, x),
                    false => ready(&runs_in, x) < i,
                })
        });
        if let Some(i) = into {
            note!(
                f,
                "sibling-loops: {} is computed and stored by the earlier kernel of {}, over the same shape",
                name(b),
                name(f.kernels[i].0)
            );
            members[i].push(b);
            runs_in[j] = Some(i);
        }
    }
    for (i, group) in members.into_iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        let b = f.kernels[i].0;
        for &x in &group {
            f.carrier[x] = Some(b);
        }
        f.carries.insert(b, group);
    }
    reads
}

/// The rule `concat-in-place` for a value stored alongside
/// (`store-alongside`): when no kernel but one stored concatenation reads
/// its buffer (its other readers are computed in the kernel that carries
/// it), of which it is one part, once, the carrier stores it straight
/// into its place there (the gates an LSTM's forward loop keeps for its
/// derivative, laid side by side in the loop's stacked result).
fn place_carried(g: &Graph, roots: &EntitySet<Node>, f: &mut Fusion) {
    let name = |n: Node| format!("{n} ({})", op_name(&g.nodes[n].op));
    // The kernels that read each carried value's buffer.
    let mut read_by: SecondaryMap<Node, Vec<Node>> = g.node_table();
    for (&(k, kind), reads) in f.kernels.iter().zip(&f.reads) {
        // (A carried kernel's reads are its carrier's, which reads
        // through the values it carries.)
        if kind == Kind::Leaf || f.carrier[k].is_some() {
            continue;
        }
        for &a in reads {
            if f.carrier[a].is_some() && !read_by[a].contains(&k) {
                read_by[a].push(k);
            }
        }
    }
    let mut placed = Vec::new();
    for &(a, _) in &f.kernels {
        if f.carrier[a].is_none() || roots.contains(a) {
            continue;
        }
        if let [c] = read_by[a][..] {
            if is_part_once(g, f, c, a) {
                placed.push((a, c));
            }
        }
    }
    for (a, c) in placed {
        note!(
            f,
            "concat-in-place: {}, stored alongside by the kernel of {}, is written straight into its part of {}",
            name(a),
            f.carrier[a].map_or_else(String::new, name),
            name(c)
        );
        f.placed[a] = Some(c);
    }
}

/// The parts a concatenation joins, in order, looking through the
/// appends, joins and reshapes fused into it (`append-chain`,
/// `concat-chain`) but not into a slice read in place, which is a part.
pub fn concat_sources(g: &Graph, f: &Fusion, n: Node, out: &mut Vec<Node>) {
    let parts = match g.nodes[n].op {
        Op::Concat { a, b, .. } => vec![a, b],
        Op::Reshape(a, _) => vec![a],
        _ => unreachable!("only joins and reshapes are fused into a join"),
    };
    for x in parts {
        if f.fused.contains(x) && !is_part_in_place(g, f, x) {
            concat_sources(g, f, x, out);
        } else {
            out.push(x);
        }
    }
}

/// Whether `c` is a stored concatenation and `p` one of its parts, once
/// (looking through the joins fused into it).
fn is_part_once(g: &Graph, f: &Fusion, c: Node, p: Node) -> bool {
    if f.fused.contains(c) || !matches!(g.nodes[c].op, Op::Concat { .. }) {
        return false;
    }
    let mut parts = Vec::new();
    concat_sources(g, f, c, &mut parts);
    parts.iter().filter(|&&x| x == p).count() == 1
}

/// The rule `concat-in-place`: each elementwise kernel that is not a
/// root and whose only reader is a concatenation (directly, or through
/// the joins fused into a stored one), of which it is one part, once.
fn place_parts(g: &Graph, readers: &Readers, roots: &EntitySet<Node>, f: &mut Fusion) {
    let name = |n: Node| format!("{n} ({})", op_name(&g.nodes[n].op));
    let mut placed = Vec::new();
    for &(p, kind) in &f.kernels {
        if kind != Kind::Elementwise || roots.contains(p) {
            continue;
        }
        // The stored concatenation the part's value flows into.
        let mut c = match readers[p][..] {
            [r] if matches!(g.nodes[r].op, Op::Concat { .. }) => r,
            _ => continue,
        };
        while f.fused.contains(c) {
            match readers[c][..] {
                [r] => c = r,
                _ => break,
            }
        }
        if is_part_once(g, f, c, p) {
            placed.push((p, c));
        }
    }
    for (p, c) in placed {
        note!(
            f,
            "concat-in-place: {} is written straight into its part of {}",
            name(p),
            name(c)
        );
        f.placed[p] = Some(c);
    }
}

pub fn op_name(op: &Op) -> String {
    let kind = match op {
        Op::Unary(u, _) => return format!("{u:?}").to_lowercase(),
        Op::Binary(b, ..) => return format!("{b:?}").to_lowercase(),
        Op::Compare(c, ..) => return format!("{c:?}").to_lowercase(),
        Op::Reduce { op, .. } => return format!("reduce_{op:?}").to_lowercase(),
        Op::Input(_) => "input",
        Op::Param(_) => "param",
        Op::Const(_) => "const",
        Op::Fill { .. } => "fill",
        Op::Random { .. } => "random",
        Op::Select(..) => "select",
        Op::AdamMoment { .. } => "adam_moment",
        Op::AdamStep { .. } => "adam_step",
        Op::MatMul(..) => "matmul",
        Op::Reshape(..) => "reshape",
        Op::Transpose(..) => "transpose",
        Op::Broadcast(..) => "broadcast",
        Op::Conv2d { .. } => "conv2d",
        Op::Conv2dBackwardInput { .. } => "conv2dbackwardinput",
        Op::Conv2dBackwardWeight { .. } => "conv2dbackwardweight",
        Op::Pool2d { .. } => "pool2d",
        Op::Pool2dBackward { .. } => "pool2dbackward",
        Op::Slice { .. } => "slice",
        Op::Concat { .. } => "concat",
        Op::Gather { .. } => "gather",
        Op::ScatterAdd { .. } => "scatteradd",
        Op::Scan { .. } => "scan",
    };
    kind.to_string()
}

/// The fused program as text: one line per kernel with the expression it
/// computes, fused nodes written inline.
pub fn print(g: &Graph, f: &Fusion) -> String {
    let mut out = String::new();
    let mut count = 0;
    for &(n, kind) in &f.kernels {
        let ty = g.shape_str(g.shape(n));
        let body = match kind {
            Kind::Leaf => continue,
            _ => expr(g, f, n, true),
        };
        count += 1;
        let _ = write!(out, "kernel {count} {kind:?} -> {n}: {ty} = {body}");
        if let Some(b) = f.carrier[n] {
            let _ = write!(out, "  [stored by the kernel of {b}]");
        }
        if let Some(c) = f.placed[n] {
            let _ = write!(out, "  [written into its part of {c}]");
        }
        out.push('\n');
    }
    for o in &g.outputs {
        let _ = writeln!(out, "output {} = {}", o.name, o.node);
    }
    for u in &g.updates {
        let _ = writeln!(out, "update {} = {}", g.params[u.param].name, u.node);
    }
    out
}

fn expr(g: &Graph, f: &Fusion, n: Node, top: bool) -> String {
    let d = &g.nodes[n];
    if !top && !f.fused.contains(n) && !f.strided.contains(n) {
        return n.to_string();
    }
    let args: Vec<String> = d.op.args().iter().map(|&a| expr(g, f, a, false)).collect();
    match &d.op {
        Op::Fill { value, .. } => format!("{value:?}"),
        Op::Broadcast(..) => format!("broadcast({})", args[0]),
        Op::Reduce { op, axes, .. } => {
            format!(
                "{}({}, axes={axes:?})",
                format!("{op:?}").to_lowercase(),
                args[0]
            )
        }
        Op::Transpose(_, perm) => format!("transpose({}, {perm:?})", args[0]),
        Op::AdamMoment { beta, square, .. } => {
            let sq = if *square { ", square" } else { "" };
            format!("adam_moment({}, beta={beta:?}{sq})", args.join(", "))
        }
        Op::AdamStep { eps, .. } => format!("adam_step({}, eps={eps:?})", args.join(", ")),
        op => format!("{}({})", op_name(op), args.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use crate::ir::{BinaryOp, Dim, UnaryOp};

    #[test]
    fn a_chain_becomes_one_kernel_and_a_shared_value_is_stored() {
        let mut g = Graph::new();
        let sp = Span::default();
        let s = vec![Dim::Known(8)];
        let x = g
            .add(
                Op::Fill {
                    value: 1.0,
                    shape: s.clone(),
                },
                sp,
            )
            .unwrap();
        let x = g.add(Op::Unary(UnaryOp::Exp, x), sp).unwrap();
        let a = g.add(Op::Unary(UnaryOp::Tanh, x), sp).unwrap();
        let b = g.add(Op::Binary(BinaryOp::Mul, a, a), sp).unwrap();
        let c = g.add(Op::Unary(UnaryOp::Neg, b), sp).unwrap();
        let f = fuse(&g, &[c]);
        assert_eq!(g.shape(c), &s);
        // `a` has two reads by one reader: one reader, so fused; `x` too.
        let stored: Vec<Node> = f.kernels.iter().map(|k| k.0).collect();
        assert_eq!(stored, vec![c]);
        assert!(f.fused.contains(b) && f.fused.contains(a));
        let text = print(&g, &f);
        assert!(
            text.contains("neg(mul(tanh(exp(1.0)), tanh(exp(1.0))))"),
            "{text}"
        );
    }
}
