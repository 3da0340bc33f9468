//! Building a schedule from a fused graph for concrete sizes: every
//! shape bound and checked, one step per kernel of the fusion (a loop
//! kernel, a GEMM with its operands read in place, a native routine's
//! description, a loop over a body scheduled the same way), buffers
//! planned, updates given buffers of their own, and the total held to
//! the memory budget before anything is allocated.

use super::buffers::{plan_buffers, BufferPlan};
use super::Fused;
use super::{
    copy_kernel, loop_kernel, Blocks, BufId, Conv, ConvPass, Epilogue, Gemm, KernelKey, KernelSink,
    LoopKernel, Pool, Rows, ScanStep, Schedule, Step,
};
use crate::exec::{bind, Error};
use crate::ir::{Dim, Graph, InputId, Node, Op, ReduceOp, Sym};
use crate::passes::fusion::{self, Kind};
use crate::tensor::strides;
use cranelift_entity::{EntitySet, SecondaryMap};
use rustc_hash::FxHashMap;
use std::sync::Arc;

type Shapes = SecondaryMap<Node, Vec<usize>>;

/// `kernel`, just built, to be shared; `sink` is told of it.
fn new_kernel(sink: Option<&dyn KernelSink>, kernel: LoopKernel) -> Arc<LoopKernel> {
    let kernel = Arc::new(kernel);
    if let Some(sink) = sink {
        sink.built(&kernel);
    }
    kernel
}

/// The schedule of `f` with its symbolic dimensions bound to `syms`.
/// Verified in debug builds (a failure is a compiler bug, reported as an
/// internal error).
pub fn build(f: &Fused, syms: &SecondaryMap<Sym, Option<usize>>) -> Result<Schedule, Error> {
    build_with(f, syms, true, None)
}

/// [`build`], telling `sink` of each loop kernel as it is built (its
/// loop bodies' too), before the rest of the schedule is: a backend can
/// start compiling it on another thread.
pub fn build_observed(
    f: &Fused,
    syms: &SecondaryMap<Sym, Option<usize>>,
    sink: &dyn KernelSink,
) -> Result<Schedule, Error> {
    build_with(f, syms, true, Some(sink))
}

/// [`build`], sharing equal loop kernels found by their [`KernelKey`]
/// when `share` (without, for tests: every kernel built on its own), and
/// telling `sink` of every kernel built.
fn build_with<'f>(
    f: &'f Fused,
    syms: &SecondaryMap<Sym, Option<usize>>,
    share: bool,
    sink: Option<&'f dyn KernelSink>,
) -> Result<Schedule, Error> {
    let mut b = Builder::new(f, syms)?;
    b.share = share;
    b.sink = sink;
    let s = b.finish()?;
    if cfg!(debug_assertions) {
        s.verify().map_err(|e| Error::Backend {
            message: format!("the schedule does not verify: {e}"),
        })?;
    }
    Ok(s)
}

struct Builder<'f> {
    f: &'f Fused,
    g: &'f Graph,
    fu: &'f fusion::Fusion,
    shapes: Shapes,
    plan: BufferPlan,
    /// Each loop kernel built, by its [`KernelKey`], with the place in
    /// the key's nodes of the stored node each access reads: a stack of
    /// equal layers builds each of its kernels once.
    kernels: FxHashMap<Vec<u64>, (Arc<LoopKernel>, Vec<u32>)>,
    /// The key of the kernel being built (reused, not reallocated).
    key: KernelKey,
    share: bool,
    /// Told of each loop kernel built.
    sink: Option<&'f dyn KernelSink>,
    /// Loop kernels built, and found by their key instead.
    built: usize,
    found: usize,
}

impl<'f> Builder<'f> {
    fn new(f: &'f Fused, syms: &SecondaryMap<Sym, Option<usize>>) -> Result<Builder<'f>, Error> {
        let (g, fu) = (&f.graph, &f.fusion);
        let concrete = |shape: &[Dim], span| bind::concrete_shape(g, syms, shape, span);
        let mut shapes: Shapes = g.node_table();
        let mut unknown = EntitySet::new();
        for (n, d) in g.nodes.iter() {
            match concrete(&d.ty.shape, d.span) {
                Ok(s) => shapes[n] = s,
                Err(_) => {
                    unknown.insert(n);
                }
            }
        }
        // Every live node's shape must be known, and of a size that fits.
        for &(n, _) in &fu.kernels {
            if unknown.contains(n) {
                concrete(&g.nodes[n].ty.shape, g.nodes[n].span)?;
            }
        }
        let plan = plan_buffers(g, fu, &shapes, &f.roots);
        Ok(Builder {
            f,
            g,
            fu,
            shapes,
            plan,
            kernels: FxHashMap::default(),
            key: KernelKey::default(),
            share: true,
            sink: None,
            built: 0,
            found: 0,
        })
    }

    fn buf(&self, n: Node) -> Result<BufId, Error> {
        self.plan.buf_of[n].expand().ok_or_else(|| Error::Backend {
            message: format!("{n} is read but has no buffer"),
        })
    }

    /// [`loop_kernel`] for stored node `n`, shared with an equal kernel
    /// built before when its [`KernelKey`] finds one (reading other
    /// stored nodes: those met at the same places in the key). Backends
    /// compile a shared kernel once without comparing it again.
    fn loop_kernel(
        &mut self,
        n: Node,
        place: Option<super::kernel::Place>,
        also_place: &[Option<super::kernel::Place>],
    ) -> (Arc<LoopKernel>, Vec<Node>) {
        let (g, fu, shapes, key) = (self.g, self.fu, &self.shapes, &mut self.key);
        if !self.share || !key.describe(g, fu, shapes, n, place.as_ref(), also_place) {
            self.built += 1;
            let (kernel, srcs) = loop_kernel(g, fu, shapes, n, place, also_place);
            return (new_kernel(self.sink, kernel), srcs);
        }
        if let Some((kernel, at)) = self.kernels.get(&key.words[..]) {
            self.found += 1;
            let srcs: Vec<Node> = at.iter().map(|&i| key.nodes[i as usize]).collect();
            // Debug builds (every test run in the debug profile) check
            // the key on every kernel it finds: a difference is a bug in
            // the key, not in the input.
            if cfg!(debug_assertions) {
                let built = loop_kernel(g, fu, shapes, n, place, also_place);
                assert!(
                    built.0 == **kernel && built.1 == srcs,
                    "{n}: the kernel found by its key is not the kernel built"
                );
            }
            return (Arc::clone(kernel), srcs);
        }
        self.built += 1;
        let (kernel, srcs) = loop_kernel(g, fu, shapes, n, place, also_place);
        let kernel = new_kernel(self.sink, kernel);
        // Each access reads a stored node the key met (an invariant of
        // the key, which writes out every node the builder reads); if one
        // were not, the kernel is just not remembered.
        if let Some(at) = srcs.iter().map(|&s| key.position(s)).collect() {
            self.kernels
                .insert(key.words.clone(), (Arc::clone(&kernel), at));
        }
        (kernel, srcs)
    }

    fn finish(mut self) -> Result<Schedule, Error> {
        let update_copies = self.plan.separate_updates(self.g, self.fu);
        self.plan.check_budget(self.g, self.fu)?;
        // About one step per kernel: allocated once, not grown (and
        // copied) step by step.
        let fu = self.fu;
        let mut steps = Vec::with_capacity(fu.kernels.len());
        for &(n, kind) in &fu.kernels {
            // A value stored alongside another's is written by that
            // kernel (fusion's `store-alongside`).
            if matches!(kind, Kind::Leaf | Kind::View) || fu.carrier[n].is_some() {
                continue;
            }
            match self.step(n, kind)? {
                // Every part was a slice read in place.
                Step::Copy { parts, .. } if parts.is_empty() => {}
                step => steps.push(step),
            }
            steps.extend(self.parts_in_place(n)?);
        }
        if crate::log::enabled("plan") {
            eprintln!(
                "[plan] {} loop kernels built, {} found equal to one built before by their key",
                self.built, self.found
            );
        }
        let mut steps = fuse_epilogues(steps);
        for (src, dst) in update_copies {
            steps.push(Step::Copy {
                parts: vec![(src, Blocks::whole(self.plan.sizes[dst]))],
                out: dst,
            });
        }
        let (g, fu) = (self.g, self.fu);
        let (mut inputs, mut params, mut consts) = (Vec::new(), Vec::new(), Vec::new());
        for &(n, kind) in &fu.kernels {
            if kind != Kind::Leaf {
                continue;
            }
            let b = self.buf(n)?;
            match g.nodes[n].op {
                Op::Input(i) => inputs.push((i, b)),
                Op::Param(p) => params.push((p, b)),
                Op::Const(c) => consts.push((c, b)),
                _ => unreachable!("leaves are inputs, params and consts"),
            }
        }
        let outputs = g
            .outputs
            .iter()
            .map(|o| self.buf(o.node))
            .collect::<Result<_, _>>()?;
        let updates = g
            .updates
            .iter()
            .zip(&self.plan.update_bufs)
            .map(|(u, &b)| (u.param, b))
            .collect();
        Ok(Schedule {
            graph: std::sync::Arc::clone(&self.f.graph),
            shapes: self.shapes,
            buf_of: self.plan.buf_of,
            bufs: self.plan.sizes,
            steps,
            inputs,
            params,
            consts,
            outputs,
            updates,
        })
    }

    /// The step computing stored node `n`.
    fn step(&mut self, n: Node, kind: Kind) -> Result<Step, Error> {
        let (g, fu, shapes) = (self.g, self.fu, &self.shapes);
        let out = self.buf(n)?;
        Ok(match kind {
            Kind::Leaf | Kind::View => unreachable!("leaves and views have no step"),
            Kind::Elementwise | Kind::Reduce => {
                // A part written into its concatenation (the kernel's
                // value, or one it stores alongside): where it goes.
                // Fusion places a node only when it is one of the
                // concatenation's parts (`place_parts` and `place_carried`
                // count it in `concat_sources`, the walk `concat_parts`
                // makes), so the search finds it: an invariant of fusion,
                // not of input.
                let place = |x: Node| {
                    fu.placed[x].map(|c| {
                        concat_parts(g, fu, shapes, c)
                            .into_iter()
                            .find(|&(p, ..)| p == x)
                            .map(|(_, at, strides)| (strides, at))
                            .expect("fusion places a part of its concatenation")
                    })
                };
                let also_place: Vec<_> = fu.stored_alongside(n).iter().map(|&a| place(a)).collect();
                let (kernel, srcs) = self.loop_kernel(n, place(n), &also_place);
                let shapes = &self.shapes;
                let args = srcs
                    .iter()
                    .map(|&s| self.buf(s))
                    .collect::<Result<_, _>>()?;
                let also = fu
                    .stored_alongside(n)
                    .iter()
                    .map(|&s| self.buf(s))
                    .collect::<Result<_, _>>()?;
                let (init, divisor) = match &g.nodes[n].op {
                    Op::Reduce { op, arg, axes } => {
                        let count: usize = axes.iter().map(|&a| shapes[*arg][a]).product();
                        match op {
                            ReduceOp::Sum => (Some(0.0), None),
                            ReduceOp::Mean => (Some(0.0), Some(count as f32)),
                            ReduceOp::Max => (Some(f32::NEG_INFINITY), None),
                        }
                    }
                    _ => (None, None),
                };
                Step::Loop {
                    kernel,
                    out,
                    args,
                    also,
                    init,
                    divisor,
                }
            }
            Kind::MatMul => self.matmul(n, out)?,
            Kind::Transpose => {
                let Op::Transpose(src, perm) = &g.nodes[n].op else {
                    unreachable!("fusion gives Kind::Transpose only to transposes")
                };
                Step::Transpose {
                    src: self.buf(*src)?,
                    dst: out,
                    shape: shapes[*src].clone(),
                    perm: perm.clone(),
                }
            }
            Kind::Host => self.host_step(n, out)?,
        })
    }

    /// The loop kernels copying the parts of concatenation `n` that are
    /// slices read in place (fusion's `slice-in-place`) into its buffer;
    /// its block copy skips them. None for any other node.
    fn parts_in_place(&self, n: Node) -> Result<Vec<Step>, Error> {
        let (g, fu, shapes) = (self.g, self.fu, &self.shapes);
        if fu.fused.contains(n) || !matches!(g.nodes[n].op, Op::Concat { .. }) {
            return Ok(Vec::new());
        }
        let out = self.buf(n)?;
        let mut steps = Vec::new();
        for (x, at, strides) in concat_parts(g, fu, shapes, n) {
            if !fusion::is_part_in_place(g, fu, x) || shapes[x].contains(&0) {
                continue;
            }
            let (kernel, srcs) = copy_kernel(g, fu, shapes, x, strides, at);
            let args: Vec<BufId> = srcs
                .iter()
                .map(|&s| self.buf(s))
                .collect::<Result<_, _>>()?;
            if let Some(part) = kernel.as_blocks() {
                steps.push(Step::Copy {
                    parts: vec![(args[0], part)],
                    out,
                });
                continue;
            }
            steps.push(Step::Loop {
                kernel: new_kernel(self.sink, kernel),
                out,
                args,
                also: Vec::new(),
                init: None,
                divisor: None,
            });
        }
        Ok(steps)
    }

    /// A matmul, or the sum over its batch of a fused one: GEMMs reading
    /// transposed and batch-broadcast operands in place.
    fn matmul(&self, n: Node, out: BufId) -> Result<Step, Error> {
        let (g, fu, shapes) = (self.g, self.fu, &self.shapes);
        let (mm, batch_sum) = match g.nodes[n].op {
            Op::Reduce { arg, .. } => (arg, true),
            _ => (n, false),
        };
        let Op::MatMul(a, b) = g.nodes[mm].op else {
            unreachable!("fusion gives Kind::MatMul only to matmuls and their batch sums")
        };
        let s = &shapes[mm];
        let r = s.len();
        let (m, nn) = (s[r - 2], s[r - 1]);
        let k = shapes[a][r - 1];
        let batch_shape = &s[..r - 2];
        let batch: usize = batch_shape.iter().product();
        // Each operand: its buffer, (row, column) strides, and the offset
        // of every batch's matrix. The matrices lie where a slice read in
        // place (fusion's `slice-in-place`) puts them in its operand's
        // buffer, else in the operand's own.
        let operand = |x: Node| {
            let (src, transposed) = match &g.nodes[x].op {
                Op::Transpose(src, _) if fu.strided.contains(x) => (*src, true),
                _ => (x, false),
            };
            let mat = match &g.nodes[src].op {
                Op::Broadcast(from, _) if fu.strided.contains(src) => *from,
                _ => src,
            };
            let (stored, at, st) = view(g, fu, shapes, mat);
            let r = st.len();
            let (rs, cs) = (st[r - 2] as isize, st[r - 1] as isize);
            // A transpose reads x[i][j] = src[j][i].
            let rc = if transposed { (cs, rs) } else { (rs, cs) };
            let offs = batch_offsets(batch_shape, &shapes[mat], &st)
                .into_iter()
                .map(|o| o + at)
                .collect::<Vec<_>>();
            self.buf(stored).map(|b| (b, rc, offs))
        };
        let (ab, a_rc, mut a_offs) = operand(a)?;
        let (bb, b_rc, mut b_offs) = operand(b)?;
        let mut dims = Gemm {
            m,
            k,
            n: nn,
            a_rc,
            b_rc,
        };
        // A matrix shared by every batch times a row-major stack of them:
        // one GEMM over all their rows.
        let shared = b_offs.iter().all(|&o| o == b_offs[0]);
        let stacked =
            a_rc == (k as isize, 1) && a_offs.iter().enumerate().all(|(i, &o)| o == i * m * k);
        if batch_sum {
            // Σ_b a_bᵀ b_b: the batches' rows stacked along k. Fusion
            // checked that `a` is a transposed stack and that both are
            // whole or viewed with their rows at one stride
            // (`fusion::rows_stacked`): batch `i` starts `i·k` rows after
            // the first. Checked here too, as a wrong stride would be a
            // wrong sum, not a crash.
            let at_one_stride = |offs: &[usize], row: isize| {
                offs.iter()
                    .enumerate()
                    .all(|(i, &o)| o as isize - offs[0] as isize == i as isize * k as isize * row)
            };
            if !at_one_stride(&a_offs, a_rc.1) || !at_one_stride(&b_offs, b_rc.0) {
                return Err(Error::Backend {
                    message: format!(
                        "{mm}: the batches of a product summed over its batch are not rows at one stride"
                    ),
                });
            }
            dims.k = k * batch;
            a_offs.truncate(1);
            b_offs.truncate(1);
        } else if batch > 1 && shared && stacked {
            dims.m = m * batch;
            a_offs.truncate(1);
            b_offs.truncate(1);
        }
        Ok(Step::MatMul {
            a: ab,
            b: bb,
            out,
            a_offs,
            b_offs,
            dims,
            epilogue: None,
        })
    }

    /// The step for an operation that is not a loop kernel, matmul or
    /// transpose: a routine's description where backends have one, or a
    /// loop, else a host step.
    fn host_step(&self, n: Node, out: BufId) -> Result<Step, Error> {
        let (g, shapes) = (self.g, &self.shapes);
        let s4 = |x: Node| -> [usize; 4] {
            let s = &shapes[x];
            [s[0], s[1], s[2], s[3]]
        };
        let conv = |pass: ConvPass,
                    (a, b): (Node, Node),
                    [xs, ws, ys]: [[usize; 4]; 3],
                    stride: u64,
                    pad: u64|
         -> Result<Step, Error> {
            let geo = Conv {
                n: xs[0],
                c: xs[1],
                h: xs[2],
                w: xs[3],
                o: ws[0],
                kh: ws[2],
                kw: ws[3],
                oh: ys[2],
                ow: ys[3],
                stride: stride as usize,
                pad: pad as usize,
            };
            Ok(Step::Conv {
                pass,
                geo,
                a: self.buf(a)?,
                b: self.buf(b)?,
                out,
            })
        };
        let pool = |op, [xs, ys]: [[usize; 4]; 2], size: u64, stride: u64| Pool {
            op,
            planes: xs[0] * xs[1],
            h: xs[2],
            w: xs[3],
            oh: ys[2],
            ow: ys[3],
            size: size as usize,
            stride: stride as usize,
        };
        // Blocks along `axis` of `x`: `count` outer blocks of `inner`-float
        // rows.
        let along = |x: Node, axis: usize| -> (usize, usize, usize) {
            let s = &shapes[x];
            (
                s[..axis].iter().product(),
                s[axis],
                s[axis + 1..].iter().product(),
            )
        };
        Ok(match &g.nodes[n].op {
            &Op::Conv2d {
                x,
                w,
                stride,
                padding,
            } => conv(
                ConvPass::Forward,
                (x, w),
                [s4(x), s4(w), s4(n)],
                stride,
                padding,
            )?,
            &Op::Conv2dBackwardInput {
                gy,
                w,
                stride,
                padding,
                ..
            } => conv(
                ConvPass::BackInput,
                (gy, w),
                [s4(n), s4(w), s4(gy)],
                stride,
                padding,
            )?,
            &Op::Conv2dBackwardWeight {
                x,
                gy,
                stride,
                padding,
                ..
            } => conv(
                ConvPass::BackWeight,
                (x, gy),
                [s4(x), s4(n), s4(gy)],
                stride,
                padding,
            )?,
            &Op::Pool2d {
                op,
                arg,
                size,
                stride,
            } => Step::Pool {
                geo: pool(op, [s4(arg), s4(n)], size, stride),
                x: self.buf(arg)?,
                gy: None,
                out,
            },
            &Op::Pool2dBackward {
                op,
                x,
                gy,
                size,
                stride,
            } => Step::Pool {
                geo: pool(op, [s4(x), s4(gy)], size, stride),
                x: self.buf(x)?,
                gy: Some(self.buf(gy)?),
                out,
            },
            &Op::Slice {
                arg,
                axis,
                start,
                end,
            } => {
                let (count, d, inner) = along(arg, axis);
                let len = (end - start) as usize * inner;
                let part = Blocks {
                    count,
                    len,
                    src_at: start as usize * inner,
                    src_stride: d * inner,
                    dst_at: 0,
                    dst_stride: len,
                };
                Step::Copy {
                    parts: vec![(self.buf(arg)?, part)],
                    out,
                }
            }
            &Op::Concat { axis, .. } => {
                // An append copies each part whole, after the one before;
                // a join along an axis (with the parts of a chain of them,
                // fusion's `concat-chain`) copies each part's rows into
                // their columns. Slices read in place are copied by
                // [`Builder::parts_in_place`].
                let (count, _, inner) = along(n, axis);
                let append = fusion::is_append(g, n);
                let total: usize = shapes[n].iter().product();
                let mut parts = Vec::new();
                for (x, at, _) in concat_parts(g, self.fu, shapes, n) {
                    if fusion::is_part_in_place(g, self.fu, x) || self.fu.placed[x].is_some() {
                        // Copied or filled by a loop kernel, or written
                        // here by its own (fusion's `concat-in-place`).
                        continue;
                    }
                    let part = if append {
                        let len: usize = shapes[x].iter().product();
                        Blocks {
                            count: 1,
                            len,
                            src_at: 0,
                            src_stride: len,
                            dst_at: at,
                            dst_stride: total,
                        }
                    } else {
                        let len = shapes[x][axis] * inner;
                        Blocks {
                            count,
                            len,
                            src_at: 0,
                            src_stride: len,
                            dst_at: at,
                            dst_stride: shapes[n][axis] * inner,
                        }
                    };
                    parts.push((self.buf(x)?, part));
                }
                Step::Copy { parts, out }
            }
            &Op::Random {
                dist, salt, key, ..
            } => Step::Random {
                dist,
                salt,
                key: self.buf(key)?,
                out,
                count: shapes[n].iter().product(),
            },
            &Op::Gather { table, indices } => Step::Rows(Rows {
                scatter: false,
                src: self.buf(table)?,
                idx: self.buf(indices)?,
                out,
                count: shapes[indices].iter().product(),
                width: shapes[table][1],
                rows: shapes[table][0],
                node: n,
            }),
            &Op::ScatterAdd {
                values, indices, ..
            } => Step::Rows(Rows {
                scatter: true,
                src: self.buf(values)?,
                idx: self.buf(indices)?,
                out,
                count: shapes[indices].iter().product(),
                width: shapes[n][1],
                rows: shapes[n][0],
                node: n,
            }),
            Op::Scan { .. } => self.scan_step(n, out, false)?,
            &Op::Reduce { arg, .. } if self.fu.fused.contains(arg) => {
                // fusion's `scan-sum`: the loop adds its steps into `out`.
                self.scan_step(arg, out, true)?
            }
            op => {
                // The interpreter's routine reads every argument's buffer.
                for a in op.args() {
                    self.buf(a)?;
                }
                Step::Host { node: n, out }
            }
        })
    }

    /// The step running loop `n`, stacking its results into `out` (or
    /// adding them up, with `sum`): its body scheduled for the operands'
    /// sizes.
    fn scan_step(&self, n: Node, out: BufId, sum: bool) -> Result<Step, Error> {
        let (g, shapes) = (self.g, &self.shapes);
        let Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } = &g.nodes[n].op
        else {
            unreachable!("scan_step is given scans")
        };
        let fused_body = self.f.bodies.get(body).ok_or_else(|| Error::Backend {
            message: format!("the body of {n} was not fused"),
        })?;
        let bg = &fused_body.graph;
        let mut operands: Vec<Vec<usize>> = vec![shapes[*init].clone()];
        operands.extend(xs.iter().map(|x| shapes[*x][1..].to_vec()));
        operands.extend(args.iter().map(|a| shapes[*a].clone()));
        let ids: Vec<InputId> = bg.inputs.keys().collect();
        let syms = bind::bind_syms_by(bg, |i| {
            ids.iter().position(|&j| j == i).map(|k| &operands[k][..])
        })?;
        let body = build_with(fused_body, &syms, self.share, self.sink)?;
        let slots = ids
            .iter()
            .map(|&i| body.inputs.iter().find(|(j, _)| *j == i).map(|&(_, b)| b))
            .collect();
        Ok(Step::Scan(Box::new(ScanStep {
            init: self.buf(*init)?,
            xs: xs.iter().map(|x| self.buf(*x)).collect::<Result<_, _>>()?,
            args: args
                .iter()
                .map(|a| self.buf(*a))
                .collect::<Result<_, _>>()?,
            out,
            steps: shapes[n][0],
            carry_len: operands[0].iter().product(),
            step_lens: operands[1..=xs.len()]
                .iter()
                .map(|s| s.iter().product())
                .collect(),
            reverse: *reverse,
            sum,
            slots,
            body,
        })))
    }
}

/// The parts a concatenation joins, in order, looking through the
/// appends, joins and reshapes fused into it (fusion's `append-chain` and
/// `concat-chain`) but not into a slice read in place (which is a part):
/// each with the element of the output its first element goes to, and
/// the output's strides over the part's dims (an append writes its part
/// whole, contiguously; a join along an axis writes it into its columns).
fn concat_parts(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &Shapes,
    n: Node,
) -> Vec<(Node, usize, Vec<i64>)> {
    let mut sources = Vec::new();
    fusion::concat_sources(g, fu, n, &mut sources);
    let append = fusion::is_append(g, n);
    let Op::Concat { axis, .. } = g.nodes[n].op else {
        unreachable!("concat_parts is given concatenations")
    };
    let out_strides: Vec<i64> = strides(&shapes[n]).iter().map(|&s| s as i64).collect();
    let inner: usize = shapes[n][axis + 1..].iter().product();
    let mut at = 0;
    sources
        .into_iter()
        .map(|x| {
            let (len, st) = if append {
                let st = strides(&shapes[x]).iter().map(|&s| s as i64).collect();
                (shapes[x].iter().product(), st)
            } else {
                (shapes[x][axis] * inner, out_strides.clone())
            };
            let part = (x, at, st);
            at += len;
            part
        })
        .collect()
}

/// Where the elements of `n` lie: the stored node whose buffer holds
/// them, the offset of its first element there, and the stride of each
/// of its dims. `n` itself with its own strides, unless it is a slice
/// read in place (fusion's `slice-in-place`), or a reshape or slice of
/// one: a view of a stored operand, through slices (an offset) and
/// reshapes that only split dims or add and drop dims of size 1
/// (`fusion::splits_only`), whose strides follow from the operand's
/// (`kernel::reshape_strides`).
fn view(g: &Graph, fu: &fusion::Fusion, shapes: &Shapes, n: Node) -> (Node, usize, Vec<usize>) {
    if !fusion::is_slice_view(g, fu, n) {
        return (n, 0, strides(&shapes[n]));
    }
    match g.nodes[n].op {
        Op::Slice {
            arg, axis, start, ..
        } => {
            let (stored, at, st) = view(g, fu, shapes, arg);
            (stored, at + start as usize * st[axis], st)
        }
        Op::Reshape(a, _) => {
            let (stored, at, st) = view(g, fu, shapes, a);
            // Fusion reads a slice in place only through reshapes that
            // `splits_only` accepts, for which `reshape_strides` succeeds
            // on the concrete sizes: an invariant of fusion, not of input.
            let st = super::kernel::reshape_strides(&shapes[a], &shapes[n], &st)
                .expect("fusion fuses only reshapes that split or add unit dims");
            (stored, at, st)
        }
        // `is_slice_view` holds only for those two ops (checked above).
        _ => unreachable!("a slice view is a slice, or a reshape of one"),
    }
}

/// The offset of each batch's matrix in a tensor of shape `src` (with
/// strides `st`) read by a product over batch axes `batch`: `src`'s batch
/// axes are aligned to the right of `batch`, and an axis of size 1 (or a
/// missing one) is broadcast, so its stride is 0.
fn batch_offsets(batch: &[usize], src: &[usize], st: &[usize]) -> Vec<usize> {
    let sb = src.len() - 2;
    let lead = batch.len() - sb;
    let stride: Vec<usize> = (0..batch.len())
        .map(|d| match d.checked_sub(lead) {
            Some(j) if src[j] != 1 => st[j],
            _ => 0,
        })
        .collect();
    let total: usize = batch.iter().product();
    (0..total)
        .map(|mut i| {
            let mut off = 0;
            for d in (0..batch.len()).rev() {
                off += (i % batch[d]) * stride[d];
                i /= batch[d];
            }
            off
        })
        .collect()
}

/// The scheduling rule `gemm-epilogue`: an elementwise loop step right
/// after a matrix product, reading the product once, at the point it
/// writes, becomes the product's epilogue (applied as each block is
/// stored: on OpenCL in the GEMM kernel's registers, on the JIT on each
/// batch's output while it is in cache). The product is still stored, so
/// later readers of it are unaffected. Refused when the loop writes one
/// of the product's operands (the GEMM still reads them while blocks are
/// stored) or reads the product elsewhere too, when it stores further
/// values (`store-alongside`), and when its iteration space is not the
/// outputs in order (`[rows, n]` or flat).
/// One pass: removing each merged step from the middle of the list
/// would move every step after it (quadratic in a deep model's steps).
fn fuse_epilogues(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let Some(prev) = out.last_mut() {
            if let Some(e) = epilogue_of(prev, &step) {
                if let Step::MatMul { epilogue, .. } = prev {
                    *epilogue = Some(Box::new(e));
                }
                continue;
            }
        }
        out.push(step);
    }
    out
}

/// The epilogue `next` makes for `prev` under `gemm-epilogue`, if any.
fn epilogue_of(prev: &Step, next: &Step) -> Option<Epilogue> {
    match (prev, next) {
        (
            Step::MatMul {
                a,
                b,
                out: product,
                a_offs,
                dims,
                epilogue: None,
                ..
            },
            Step::Loop {
                kernel,
                out,
                args,
                also,
                init: None,
                divisor: None,
            },
        ) if kernel.reduce.is_none() && also.is_empty() && out != a && out != b => {
            let rows = a_offs.len() * dims.m;
            let n = dims.n as i64;
            let walks = match kernel.dims[..] {
                [r, c] => r == rows && c == dims.n && kernel.out == [n, 1],
                [f] => f == rows * dims.n && kernel.out == [1],
                _ => false,
            };
            let reads: Vec<usize> = (0..args.len()).filter(|&k| args[k] == *product).collect();
            match reads[..] {
                [acc]
                    if walks
                        && kernel.accesses[acc] == kernel.out
                        && kernel.offsets[acc] == 0
                        && kernel.out_offset == 0 =>
                {
                    Some(Epilogue {
                        kernel: kernel.clone(),
                        acc,
                        out: *out,
                        args: args.clone(),
                    })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The `expect`s and asserts below are the test's own checks, on a
    //! source it writes itself: none is reachable from user input.
    use super::*;
    use crate::pipeline;

    /// The schedule of `src`'s training step (or, without a `train`
    /// block, of its outputs) for B = 4, built with and without sharing
    /// equal kernels.
    fn both(src: &str) -> (Schedule, Schedule) {
        let c = pipeline::compile("shared.nn", src, pipeline::Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("a graph");
        let g = match &c.train {
            Some(t) => {
                let steps = pipeline::train_steps(&g, t).expect("a step graph");
                steps.into_iter().next().expect("one phase").step.graph
            }
            None => g,
        };
        let f = pipeline::fuse(&g);
        let mut syms = SecondaryMap::new();
        for s in f.graph.syms.keys() {
            syms[s] = Some(4);
        }
        let shared = build_with(&f, &syms, true, None).expect("schedules");
        let apart = build_with(&f, &syms, false, None).expect("schedules");
        (shared, apart)
    }

    /// The loop kernels of `s`, GEMM epilogues included.
    fn loops(s: &Schedule) -> Vec<&Arc<LoopKernel>> {
        s.steps
            .iter()
            .filter_map(|st| match st {
                Step::Loop { kernel, .. } => Some(kernel),
                Step::MatMul {
                    epilogue: Some(e), ..
                } => Some(&e.kernel),
                _ => None,
            })
            .collect()
    }

    /// Sharing changes no step: the schedules serialize to the same text
    /// (every kernel, buffer and operand), and the shared one has fewer
    /// distinct kernels where equal ones repeat.
    #[test]
    fn kernels_found_by_their_key_are_the_kernels_built() {
        // Equal layers; kernels that differ only in a constant (a whole
        // power, a slope), in which operands are the same node ((x − y)·x
        // against (y − x)·x; reductions, which are not merged into one
        // kernel), or in shape; a training step with Adam, whose moments
        // and updates are stored alongside.
        let src = "input x: [B, 8]\n\
                   input y: [B, 8]\n\
                   input z: [B, 6]\n\
                   fn layer(h: [N, 8], w: [8, 8], b: [8]) -> [N, 8] { tanh(h @ w + b) }\n\
                   param w1: [8, 8] = uniform(-1, 1, seed = 1)\n\
                   param b1: [8] = zeros()\n\
                   param w2: [8, 8] = uniform(-1, 1, seed = 2)\n\
                   param b2: [8] = zeros()\n\
                   param w3: [8, 8] = uniform(-1, 1, seed = 3)\n\
                   param b3: [8] = zeros()\n\
                   let h = layer(layer(layer(x, w1, b1), w2, b2), w3, b3)\n\
                   output p2 = sum(h ^ 2 + x ^ 2)\n\
                   output p3 = sum(h ^ 3 + y ^ 3)\n\
                   output q1 = sum((x - y) * x, axis = 1)\n\
                   output q2 = sum((y - x) * x, axis = 1)\n\
                   output q3 = sum((y + x) * y, axis = 1)\n\
                   output r1 = sum(leaky_relu(x, 0.1), axis = 1)\n\
                   output r2 = sum(leaky_relu(y, 0.2), axis = 1)\n\
                   output r3 = sum(leaky_relu(z, 0.1), axis = 1)\n\
                   output r4 = sum(leaky_relu(y, 0.1), axis = 1)\n\
                   output m = mean(h * y, axis = 1)\n\
                   train { loss = mean((h - y) ^ 2); optimizer = adam(lr = 0.01); batch = 4 }\n";
        for train in [false, true] {
            let src = match train {
                true => src.to_string(),
                false => src.replace("train {", "// train {"),
            };
            let (shared, apart) = both(&src);
            let text = |s: &Schedule| serde_json::to_string(&s.steps).expect("serializes");
            assert_eq!(text(&shared), text(&apart), "train: {train}");
            let distinct = |s: &Schedule| {
                let mut seen: Vec<&Arc<LoopKernel>> = Vec::new();
                for x in loops(s) {
                    if !seen.iter().any(|y| Arc::ptr_eq(x, y)) {
                        seen.push(x);
                    }
                }
                seen.len()
            };
            assert_eq!(distinct(&apart), loops(&apart).len());
            assert!(
                distinct(&shared) < loops(&shared).len(),
                "train: {train}: the three layers' kernels are shared"
            );
            // Kernels that differ only in a constant or in which operands
            // are the same node are not shared.
            for (i, a) in loops(&shared).into_iter().enumerate() {
                for b in loops(&shared).into_iter().skip(i + 1) {
                    assert_eq!(Arc::ptr_eq(a, b), **a == **b, "train: {train}");
                }
            }
        }
    }
}
