//! A compiled program: the kernels of the fused graph for concrete shapes,
//! their buffers (planned by liveness) and the code.

use super::codegen::{self, Expr, LoopKernel};
use super::native::{Blocks, Conv, ConvPass, Pool};
use crate::backend::interp::{self, Error};
use crate::diag::Span;
use crate::ir::{Dim, Graph, InputId, Node, Op, ParamId, PoolOp, ReduceOp, Sym};
use crate::passes::fusion::{self, Kind};
use crate::tensor::{strides, Tensor};
use cranelift_entity::SecondaryMap;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::JITModule;
use std::collections::HashMap;

type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

enum Step {
    Loop {
        f: KernelFn,
        /// Buffers: the output first, then one per access.
        bufs: Vec<usize>,
        /// Their addresses, refreshed before each call.
        ptrs: Vec<*mut f32>,
        outer: usize,
        total: usize,
        split: bool,
        /// For reductions: the output's starting value, and for a mean
        /// the count it is divided by (a division, as the interpreter's,
        /// not a product with 1/count, which rounds differently).
        init: Option<f32>,
        divisor: Option<f32>,
    },
    MatMul {
        a: usize,
        b: usize,
        out: usize,
        /// Where each batch's matrix starts in `a` and `b` (one entry per
        /// GEMM; the outputs are consecutive m×n matrices).
        a_offs: Vec<usize>,
        b_offs: Vec<usize>,
        dims: Gemm,
    },
    Transpose {
        src: usize,
        dst: usize,
        shape: Vec<usize>,
        perm: Vec<usize>,
    },
    /// A convolution or one of its gradients (im2col + GEMM).
    Conv {
        pass: ConvPass,
        geo: Conv,
        a: usize,
        b: usize,
        out: usize,
        scratch: Vec<f32>,
    },
    /// A pooling (`gy: None`) or its gradient.
    Pool {
        geo: Pool,
        x: usize,
        gy: Option<usize>,
        out: usize,
    },
    /// A slice (one part) or a concatenation (two): block copies.
    Copy {
        parts: Vec<(usize, Blocks)>,
        out: usize,
    },
    /// A loop: its body compiled as a program of its own, run once per
    /// step.
    Scan(Box<ScanStep>),
    /// Any other operation, run by the interpreter's routine.
    Host { node: Node, out: usize },
}

/// A compiled [`Op::Scan`].
struct ScanStep {
    body: Program,
    init: usize,
    xs: Vec<usize>,
    args: Vec<usize>,
    out: usize,
    steps: usize,
    carry_len: usize,
    /// Floats per step of each sequence.
    step_lens: Vec<usize>,
    reverse: bool,
    /// Add the steps' results into `out` instead of stacking them (the
    /// body does not read its carry; fusion's `scan-sum`).
    sum: bool,
    /// The body's buffer for each operand (the carry, the sequences' step
    /// slices, the extra arguments, in that order), where the body reads it.
    slots: Vec<Option<usize>>,
}

pub struct Program {
    module: Option<JITModule>,
    steps: Vec<Step>,
    bufs: Vec<Vec<f32>>,
    buf_of: SecondaryMap<Node, usize>,
    shapes: SecondaryMap<Node, Vec<usize>>,
    inputs: Vec<(InputId, usize)>,
    params: Vec<(ParamId, usize)>,
    outputs: Vec<usize>,
    updates: Vec<(ParamId, usize)>,
    /// A copy of the graph's nodes for host steps (they need the ops).
    g: Graph,
    pub clif: Vec<String>,
    /// Seconds spent in each step, with `NNC_LOG=profile` (printed when
    /// the program is dropped).
    profile: Option<Vec<f64>>,
    runs: usize,
}

// SAFETY: the raw pointers in `Step::Loop` are scratch, rewritten from the
// owned buffers before every call.
unsafe impl Send for Program {}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let total: f64 = p.iter().sum();
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            eprintln!(
                "[profile] {} runs, {:.3} ms per run in {} steps; the slowest:",
                self.runs,
                total * 1e3 / self.runs.max(1) as f64,
                p.len()
            );
            for &i in order.iter().take(12) {
                let what = self.steps[i].describe(&self.g);
                eprintln!(
                    "[profile]   step {i:3}: {:8.4} ms  {what}",
                    p[i] * 1e3 / self.runs.max(1) as f64
                );
            }
        }
        if let Some(m) = self.module.take() {
            // SAFETY: the functions of this module are only reachable
            // through `self.steps`, which dies with it.
            unsafe { m.free_memory() };
        }
    }
}

fn internal(msg: impl Into<String>) -> Error {
    Error::Backend {
        message: msg.into(),
    }
}

impl Program {
    pub fn compile(
        g: &Graph,
        roots_in: &[Node],
        syms: &SecondaryMap<Sym, Option<usize>>,
        want_clif: bool,
    ) -> Result<Program, Error> {
        let g = &crate::passes::optimize(g);
        let roots: Vec<Node> = g
            .outputs
            .iter()
            .map(|o| o.node)
            .chain(g.updates.iter().map(|u| u.node))
            .collect();
        debug_assert_eq!(roots.len(), roots_in.len());
        let roots = &roots[..];
        let fu = fusion::fuse(g, roots);
        crate::log::lines("fusion", &fu.log);
        let concrete = |shape: &[Dim], span| interp::concrete_shape(g, syms, shape, span);
        let mut shapes: SecondaryMap<Node, Vec<usize>> = SecondaryMap::new();
        for (n, d) in g.nodes.iter() {
            if let Ok(s) = concrete(&d.ty.shape, d.span) {
                shapes[n] = s;
            }
        }
        // Every live node's shape must be known, and of a size that fits.
        for &(n, _) in &fu.kernels {
            concrete(&g.nodes[n].ty.shape, g.nodes[n].span)?;
        }
        let mut plan = plan_buffers(g, &fu, &shapes, roots);
        let update_copies = plan.separate_updates(g, &fu);
        plan.check_budget(g, &fu)?;
        let mut module = super::new_module().map_err(internal)?;
        let mut fctx = FunctionBuilderContext::new();
        let mut pending: Vec<(usize, cranelift_module::FuncId)> = Vec::new();
        let mut steps = Vec::new();
        let mut clif = Vec::new();
        for &(n, kind) in &fu.kernels {
            let out = plan.buf_of[n];
            let step = match kind {
                Kind::Leaf | Kind::View => continue,
                Kind::Elementwise | Kind::Reduce => {
                    let (k, srcs) = loop_kernel(g, &fu, &shapes, n);
                    let name = format!("k{}", steps.len());
                    let (id, text) = codegen::compile(&mut module, &mut fctx, &k, &name, want_clif)
                        .map_err(|e| internal(format!("Cranelift rejected kernel {n}: {e}")))?;
                    clif.extend(text);
                    pending.push((steps.len(), id));
                    let mut bufs = vec![out];
                    bufs.extend(srcs.iter().map(|s| plan.buf_of[*s]));
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
                        f: dummy_kernel,
                        ptrs: vec![std::ptr::null_mut(); bufs.len()],
                        bufs,
                        outer: k.dims[0],
                        total: k.dims.iter().product(),
                        split: k.splittable(),
                        init,
                        divisor,
                    }
                }
                Kind::MatMul => {
                    // A matmul, or the sum over its batch of a fused one.
                    let (mm, batch_sum) = match g.nodes[n].op {
                        Op::Reduce { arg, .. } => (arg, true),
                        _ => (n, false),
                    };
                    let Op::MatMul(a, b) = g.nodes[mm].op else {
                        unreachable!(
                            "fusion gives Kind::MatMul only to matmuls and their batch sums"
                        )
                    };
                    let s = &shapes[mm];
                    let r = s.len();
                    let (m, nn) = (s[r - 2], s[r - 1]);
                    let k = shapes[a][r - 1];
                    let batch_shape = &s[..r - 2];
                    let batch: usize = batch_shape.iter().product();
                    // Each operand: its buffer, (row, column) strides, and
                    // the offset of every batch's matrix.
                    let operand = |x: Node, rows: usize, cols: usize| {
                        let (src, rc) = match &g.nodes[x].op {
                            Op::Transpose(src, _) if fu.strided.contains(x) => {
                                // x[i][j] = src[j][i], src is [cols, rows].
                                (*src, (1isize, rows as isize))
                            }
                            _ => (x, (cols as isize, 1isize)),
                        };
                        let (src, offs) = match &g.nodes[src].op {
                            Op::Broadcast(from, _) if fu.strided.contains(src) => {
                                (*from, batch_offsets(batch_shape, &shapes[*from]))
                            }
                            _ => (src, batch_offsets(batch_shape, &shapes[src])),
                        };
                        (plan.buf_of[src], rc, offs)
                    };
                    let (ab, a_rc, mut a_offs) = operand(a, m, k);
                    let (bb, b_rc, mut b_offs) = operand(b, k, nn);
                    let mut dims = Gemm {
                        m,
                        k,
                        n: nn,
                        a_rc,
                        b_rc,
                    };
                    // A matrix shared by every batch times a row-major
                    // stack of them: one GEMM over all their rows.
                    let shared = b_offs.iter().all(|&o| o == b_offs[0]);
                    let stacked = a_rc == (k as isize, 1)
                        && a_offs.iter().enumerate().all(|(i, &o)| o == i * m * k);
                    if batch_sum {
                        // Σ_b a_bᵀ b_b: the batches' rows stacked along k
                        // (fusion checked that `a` is a transposed stack
                        // and `b` a contiguous one).
                        dims.k = k * batch;
                        a_offs.truncate(1);
                        b_offs.truncate(1);
                    } else if batch > 1 && shared && stacked {
                        dims.m = m * batch;
                        a_offs.truncate(1);
                        b_offs.truncate(1);
                    }
                    Step::MatMul {
                        a: ab,
                        b: bb,
                        out,
                        a_offs,
                        b_offs,
                        dims,
                    }
                }
                Kind::Transpose => {
                    let Op::Transpose(src, perm) = &g.nodes[n].op else {
                        unreachable!("fusion gives Kind::Transpose only to transposes")
                    };
                    Step::Transpose {
                        src: plan.buf_of[*src],
                        dst: out,
                        shape: shapes[*src].clone(),
                        perm: perm.clone(),
                    }
                }
                Kind::Host => {
                    host_step(g, &fu, &shapes, &plan.buf_of, n, out, want_clif, &mut clif)?
                }
            };
            steps.push(step);
        }
        for (src, dst) in update_copies {
            steps.push(Step::Copy {
                parts: vec![(src, Blocks::whole(plan.sizes[dst]))],
                out: dst,
            });
        }
        if crate::log::enabled("plan") {
            for (i, s) in steps.iter().enumerate() {
                eprintln!("[plan] step {i}: {}", s.describe(g));
            }
            eprintln!(
                "[plan] {} buffers, {} floats",
                plan.sizes.len(),
                plan.sizes.iter().sum::<usize>()
            );
        }
        module
            .finalize_definitions()
            .map_err(|e| internal(format!("Cranelift could not finalise: {e}")))?;
        for (i, id) in pending {
            let p = module.get_finalized_function(id);
            if let Step::Loop { f, .. } = &mut steps[i] {
                // SAFETY: the function was compiled with exactly this
                // signature by `codegen::compile`.
                *f = unsafe { std::mem::transmute::<*const u8, KernelFn>(p) };
            }
        }
        let n_steps = steps.len();
        let mut bufs: Vec<Vec<f32>> = plan.sizes.iter().map(|&s| vec![0.0; s]).collect();
        let mut inputs = Vec::new();
        let mut params = Vec::new();
        for &(n, kind) in &fu.kernels {
            if kind != Kind::Leaf {
                continue;
            }
            let b = plan.buf_of[n];
            match g.nodes[n].op {
                Op::Input(i) => inputs.push((i, b)),
                Op::Param(p) => params.push((p, b)),
                Op::Const(c) => bufs[b].copy_from_slice(&g.consts[c].data),
                _ => unreachable!("leaves are inputs, params and consts"),
            }
        }
        Ok(Program {
            module: Some(module),
            steps,
            bufs,
            outputs: g.outputs.iter().map(|o| plan.buf_of[o.node]).collect(),
            updates: g
                .updates
                .iter()
                .zip(&plan.update_bufs)
                .map(|(u, &b)| (u.param, b))
                .collect(),
            buf_of: plan.buf_of,
            shapes,
            inputs,
            params,
            g: g.clone(),
            clif,
            profile: crate::log::enabled("profile").then(|| vec![0.0; n_steps]),
            runs: 0,
        })
    }

    /// Copies the fed inputs (or their declared defaults) into their
    /// buffers. An input whose data does not fill its buffer exactly (a
    /// tensor whose data disagrees with its shape) is an error.
    pub fn load_inputs(
        &mut self,
        g: &Graph,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        for &(i, b) in &self.inputs {
            let src = match &inputs[i] {
                Some(t) => &t.data,
                None => match g.inputs[i].default {
                    Some(c) => &g.consts[c].data,
                    None => continue,
                },
            };
            check_len(
                &g.inputs[i].name,
                self.bufs[b].len(),
                src.len(),
                g.inputs[i].span,
            )?;
            self.bufs[b].copy_from_slice(src);
        }
        Ok(())
    }

    /// Exchanges the parameters' storage with their buffers; calling it
    /// twice restores both. The kernels' accesses rely on every buffer
    /// having its planned length, so a parameter of another length (or a
    /// missing one) is an error before anything is swapped.
    fn swap_params(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        for &(p, b) in &self.params {
            let info = &self.g.params[p];
            check_len(
                &info.name,
                self.bufs[b].len(),
                params[p].data.len(),
                info.span,
            )?;
        }
        for &(p, b) in &self.params {
            std::mem::swap(&mut self.bufs[b], &mut params[p].data);
        }
        Ok(())
    }

    /// Runs with the parameters lent by swapping (no copy). With
    /// `outputs`, returns the outputs, read while the parameters are still
    /// in their buffers (an output may be a parameter). With `update`,
    /// then moves each update into its parameter: the old parameter
    /// storage becomes the update's buffer for the next call.
    pub fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        outputs: bool,
        update: bool,
    ) -> Result<Vec<Tensor>, Error> {
        self.swap_params(params)?;
        let r = self.execute();
        let outs = if outputs && r.is_ok() {
            (0..self.outputs.len()).map(|i| self.output(i)).collect()
        } else {
            Vec::new()
        };
        // The lengths were checked by the first swap and have not changed.
        self.swap_params(params)?;
        r?;
        if update {
            for &(p, b) in &self.updates {
                std::mem::swap(&mut self.bufs[b], &mut params[p].data);
            }
        }
        Ok(outs)
    }

    fn output(&self, i: usize) -> Tensor {
        let b = self.outputs[i];
        let n = self.g.outputs[i].node;
        Tensor::new(self.shapes[n].clone(), self.bufs[b].clone())
    }

    /// Runs every step in order.
    fn execute(&mut self) -> Result<(), Error> {
        self.runs += 1;
        for si in 0..self.steps.len() {
            let started = self.profile.is_some().then(std::time::Instant::now);
            match &mut self.steps[si] {
                Step::Loop {
                    f,
                    bufs,
                    ptrs,
                    outer,
                    total,
                    split,
                    init,
                    divisor,
                } => {
                    if let Some(v) = init {
                        self.bufs[bufs[0]].fill(*v);
                    }
                    for (p, &b) in ptrs.iter_mut().zip(bufs.iter()) {
                        *p = self.bufs[b].as_mut_ptr();
                    }
                    let args = SendPtr(ptrs.as_ptr());
                    let f = *f;
                    let threads = rayon::current_num_threads();
                    if *split
                        && *total >= super::threads::loop_elements()
                        && *outer >= threads
                        && threads > 1
                    {
                        let outer = *outer;
                        use rayon::prelude::*;
                        (0..threads).into_par_iter().for_each(|t| {
                            let lo = outer * t / threads;
                            let hi = outer * (t + 1) / threads;
                            let a = &args;
                            // SAFETY: each thread writes a disjoint range of
                            // the outer loop; the buffers outlive the call.
                            unsafe { f(a.0, lo as i64, hi as i64) };
                        });
                    } else {
                        // SAFETY: `ptrs` holds one live buffer per argument,
                        // each as long as the kernel's strides reach.
                        unsafe { f(args.0, 0, *outer as i64) };
                    }
                    if let Some(d) = divisor {
                        self.bufs[bufs[0]].iter_mut().for_each(|x| *x /= *d);
                    }
                }
                Step::MatMul {
                    a,
                    b,
                    out,
                    a_offs,
                    b_offs,
                    dims,
                } => {
                    let Gemm { m, k, n, .. } = *dims;
                    let threads = rayon::current_num_threads();
                    let par = if m * n * k >= super::threads::gemm_madds() && threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    };
                    let (a, b) = (self.bufs[*a].as_ptr(), self.bufs[*b].as_ptr());
                    let o = self.bufs[*out].as_mut_ptr();
                    for (bi, (&ao, &bo)) in a_offs.iter().zip(b_offs.iter()).enumerate() {
                        // SAFETY: the operand buffers hold a matrix of the
                        // sizes and strides in `dims` at each offset (the
                        // nodes' types), the output consecutive row-major
                        // m×n ones.
                        unsafe { dims.call(a.add(ao), b.add(bo), o.add(bi * m * n), par) }
                    }
                }
                Step::Transpose {
                    src,
                    dst,
                    shape,
                    perm,
                } => {
                    let (s, d) = two(&mut self.bufs, *src, *dst);
                    transpose(s, d, shape, perm);
                }
                Step::Conv {
                    pass,
                    geo,
                    a,
                    b,
                    out,
                    scratch,
                } => {
                    let mut o = std::mem::take(&mut self.bufs[*out]);
                    let per = geo.scratch_per_thread(*pass).max(1);
                    let threads = rayon::current_num_threads().min(scratch.len() / per);
                    geo.run(
                        *pass,
                        &self.bufs[*a],
                        &self.bufs[*b],
                        &mut o,
                        scratch,
                        threads,
                    );
                    self.bufs[*out] = o;
                }
                Step::Pool { geo, x, gy, out } => {
                    let mut o = std::mem::take(&mut self.bufs[*out]);
                    match gy {
                        None => geo.forward(&self.bufs[*x], &mut o),
                        Some(gy) => geo.backward(&self.bufs[*x], &self.bufs[*gy], &mut o),
                    }
                    self.bufs[*out] = o;
                }
                Step::Copy { parts, out } => {
                    let mut o = std::mem::take(&mut self.bufs[*out]);
                    for (src, blocks) in parts.iter() {
                        blocks.copy(&self.bufs[*src], &mut o);
                    }
                    self.bufs[*out] = o;
                }
                Step::Scan(sc) => {
                    let mut o = std::mem::take(&mut self.bufs[sc.out]);
                    let r = sc.run(&self.bufs, &mut o);
                    self.bufs[sc.out] = o;
                    r?;
                }
                Step::Host { node, out } => {
                    let node = *node;
                    let data = &self.g.nodes[node];
                    let args: HashMap<Node, Tensor> = data
                        .op
                        .args()
                        .into_iter()
                        .map(|a| {
                            let t = Tensor::new(
                                self.shapes[a].clone(),
                                self.bufs[self.buf_of[a]].clone(),
                            );
                            (a, t)
                        })
                        .collect();
                    let v = interp::eval_op(
                        &self.g,
                        &data.op,
                        data.span,
                        &|a| &args[&a],
                        &self.shapes[node],
                    )?;
                    self.bufs[*out].copy_from_slice(&v.data);
                }
            }
            if let (Some(t), Some(p)) = (started, &mut self.profile) {
                p[si] += t.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }
}

type Shapes = SecondaryMap<Node, Vec<usize>>;

/// The stored values an append concatenation joins, in order, looking
/// through the appends and reshapes fused into it (fusion's
/// `append-chain`).
fn append_sources(g: &Graph, fu: &fusion::Fusion, n: Node, out: &mut Vec<Node>) {
    let parts = match g.nodes[n].op {
        Op::Concat { a, b, .. } => vec![a, b],
        Op::Reshape(a, _) => vec![a],
        _ => unreachable!("only appends and reshapes are fused into an append"),
    };
    for x in parts {
        if fu.fused.contains(x) {
            append_sources(g, fu, x, out);
        } else {
            out.push(x);
        }
    }
}

/// The offset of each batch's matrix in a tensor of shape `src` read by a
/// product over batch axes `batch`: `src`'s batch axes are aligned to the
/// right of `batch`, and an axis of size 1 (or a missing one) is
/// broadcast, so its stride is 0.
fn batch_offsets(batch: &[usize], src: &[usize]) -> Vec<usize> {
    let st = strides(src);
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

/// The step for an operation that is not a loop kernel, matmul or
/// transpose: a native routine where there is one ([`super::native`], or
/// a compiled loop body), else the interpreter's.
#[allow(clippy::too_many_arguments)]
fn host_step(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &Shapes,
    buf_of: &SecondaryMap<Node, usize>,
    n: Node,
    out: usize,
    want_clif: bool,
    clif: &mut Vec<String>,
) -> Result<Step, Error> {
    let s4 = |x: Node| -> [usize; 4] {
        let s = &shapes[x];
        [s[0], s[1], s[2], s[3]]
    };
    let conv = |pass: ConvPass,
                (a, b): (Node, Node),
                [xs, ws, ys]: [[usize; 4]; 3],
                stride: u64,
                pad: u64| {
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
        // The unfolded input is [c·kh·kw, oh·ow] per thread (plus the
        // weight's o·c·kh·kw, a checked shape, for its gradient): each
        // factor is part of a checked shape, their product is checked
        // here (a wide window over a wide output can pass 2^48).
        let unfolded = [ws[1], ws[2], ws[3], ys[2], ys[3]];
        let threads = rayon::current_num_threads();
        if crate::ir::shape::checked_elements(&unfolded)
            .and_then(|e| e.checked_mul(2 * threads))
            .is_none()
        {
            let d = &g.nodes[n];
            return Err(Error::TooLarge {
                shape: format!(
                    "{} (unfolded for the convolution)",
                    g.shape_str(&d.ty.shape)
                ),
                span: d.span,
            });
        }
        let scratch = threads * geo.scratch_per_thread(pass);
        let mut budget = crate::backend::memory::Budget::default();
        budget.add(
            scratch,
            || "the convolution's unfolded input".into(),
            g.nodes[n].span,
        );
        budget.check()?;
        Ok(Step::Conv {
            pass,
            geo,
            a: buf_of[a],
            b: buf_of[b],
            out,
            scratch: vec![0.0; scratch],
        })
    };
    let pool = |op: PoolOp, [xs, ys]: [[usize; 4]; 2], size: u64, stride: u64| Pool {
        op,
        planes: xs[0] * xs[1],
        h: xs[2],
        w: xs[3],
        oh: ys[2],
        ow: ys[3],
        size: size as usize,
        stride: stride as usize,
    };
    // Blocks along `axis` of `shape`: `count` outer blocks of `inner`-float
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
            x: buf_of[arg],
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
            x: buf_of[x],
            gy: Some(buf_of[gy]),
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
                parts: vec![(buf_of[arg], part)],
                out,
            }
        }
        &Op::Concat { .. } if fusion::is_append(g, n) => {
            let mut sources = Vec::new();
            append_sources(g, fu, n, &mut sources);
            let total: usize = shapes[n].iter().product();
            let mut at = 0;
            let mut parts = Vec::new();
            for x in sources {
                let len: usize = shapes[x].iter().product();
                let part = Blocks {
                    count: 1,
                    len,
                    src_at: 0,
                    src_stride: len,
                    dst_at: at,
                    dst_stride: total,
                };
                parts.push((buf_of[x], part));
                at += len;
            }
            Step::Copy { parts, out }
        }
        &Op::Concat { a, b, axis } => {
            let (count, da, inner) = along(a, axis);
            let (ra, rb) = (da * inner, shapes[b][axis] * inner);
            let part = |len, dst_at| Blocks {
                count,
                len,
                src_at: 0,
                src_stride: len,
                dst_at,
                dst_stride: ra + rb,
            };
            Step::Copy {
                parts: vec![(buf_of[a], part(ra, 0)), (buf_of[b], part(rb, ra))],
                out,
            }
        }
        Op::Scan { .. } => scan_step(g, shapes, buf_of, n, out, false, want_clif, clif)?,
        &Op::Reduce { arg, .. } if fu.fused.contains(arg) => {
            // fusion's `scan-sum`: the loop adds its steps into `out`.
            scan_step(g, shapes, buf_of, arg, out, true, want_clif, clif)?
        }
        _ => Step::Host { node: n, out },
    })
}

/// The step running loop `n`, stacking its results into `out` (or adding
/// them up, with `sum`).
#[allow(clippy::too_many_arguments)]
fn scan_step(
    g: &Graph,
    shapes: &Shapes,
    buf_of: &SecondaryMap<Node, usize>,
    n: Node,
    out: usize,
    sum: bool,
    want_clif: bool,
    clif: &mut Vec<String>,
) -> Result<Step, Error> {
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
    let bg = &g.bodies[*body];
    let mut operands: Vec<Vec<usize>> = vec![shapes[*init].clone()];
    operands.extend(xs.iter().map(|x| shapes[*x][1..].to_vec()));
    operands.extend(args.iter().map(|a| shapes[*a].clone()));
    let ids: Vec<InputId> = bg.inputs.keys().collect();
    let syms = interp::bind_syms_by(bg, |i| {
        ids.iter().position(|&j| j == i).map(|k| &operands[k][..])
    })?;
    let roots: Vec<Node> = bg.outputs.iter().map(|o| o.node).collect();
    let body = Program::compile(bg, &roots, &syms, want_clif)?;
    clif.extend(body.clif.iter().cloned());
    let slots = ids
        .iter()
        .map(|&i| body.inputs.iter().find(|(j, _)| *j == i).map(|&(_, b)| b))
        .collect();
    Ok(Step::Scan(Box::new(ScanStep {
        init: buf_of[*init],
        xs: xs.iter().map(|x| buf_of[*x]).collect(),
        args: args.iter().map(|a| buf_of[*a]).collect(),
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

/// One matrix product `o = a @ b`: `a` is m×k and `b` k×n with the given
/// (row, column) strides, `o` row-major.
#[derive(Clone, Copy, Debug)]
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    a_rc: (isize, isize),
    b_rc: (isize, isize),
}

impl Gemm {
    /// # Safety
    /// The pointers hold matrices of the sizes and strides given.
    unsafe fn call(&self, a: *const f32, b: *const f32, o: *mut f32, par: gemm::Parallelism) {
        let dims = (self.m, self.k, self.n);
        let dst_rs = self.n as isize;
        // SAFETY: as the caller promises; `o` is a separate output buffer.
        unsafe { super::native::sgemm(dims, o, dst_rs, a, self.a_rc, b, self.b_rc, false, par) }
    }
}

impl Step {
    /// One line for `NNC_LOG=plan` and `NNC_LOG=profile`.
    fn describe(&self, g: &Graph) -> String {
        match self {
            Step::Loop {
                bufs, total, split, ..
            } => format!("loop over {total} elements, buffers {bufs:?}, split {split}"),
            Step::MatMul { a_offs, dims, .. } => {
                let Gemm { m, k, n, .. } = dims;
                format!("gemm {}x({m}x{k} @ {k}x{n})", a_offs.len())
            }
            Step::Transpose { shape, perm, .. } => format!("transpose {shape:?} by {perm:?}"),
            Step::Conv { pass, geo, .. } => format!("convolution {pass:?} {geo:?}"),
            Step::Pool { geo, gy, .. } => {
                let dir = if gy.is_some() { "gradient" } else { "forward" };
                format!("pooling {dir} {geo:?}")
            }
            Step::Copy { parts, .. } => format!("block copy {parts:?}"),
            Step::Scan(sc) => format!(
                "scan of {} steps, a body of {} steps",
                sc.steps,
                sc.body.steps.len()
            ),
            Step::Host { node, .. } => {
                format!("host {node}: {}", fusion::op_name(&g.nodes[*node].op))
            }
        }
    }
}

impl ScanStep {
    /// Runs the body once per step: the carry is `init` at the first step,
    /// then the previous step's result; every result is stacked into `out`
    /// at its step's index.
    fn run(&mut self, outer: &[Vec<f32>], out: &mut [f32]) -> Result<(), Error> {
        let n_xs = self.xs.len();
        let body = &mut self.body;
        for (k, &a) in self.args.iter().enumerate() {
            if let Some(b) = self.slots[1 + n_xs + k] {
                body.bufs[b].copy_from_slice(&outer[a]);
            }
        }
        let cl = self.carry_len;
        let result = body.outputs[0];
        if self.sum && self.steps == 0 {
            out.fill(0.0);
        }
        for i in 0..self.steps {
            let (t, prev) = if self.reverse {
                let t = self.steps - 1 - i;
                (t, t + 1)
            } else {
                (i, i.wrapping_sub(1))
            };
            if let Some(b) = self.slots[0] {
                let carry = if i == 0 {
                    &outer[self.init][..]
                } else {
                    &out[prev * cl..][..cl]
                };
                body.bufs[b].copy_from_slice(carry);
            }
            for (j, &x) in self.xs.iter().enumerate() {
                if let Some(b) = self.slots[1 + j] {
                    let len = self.step_lens[j];
                    body.bufs[b].copy_from_slice(&outer[x][t * len..][..len]);
                }
            }
            body.execute()?;
            let r = &body.bufs[result];
            if !self.sum {
                out[t * cl..][..cl].copy_from_slice(r);
            } else if i == 0 {
                out.copy_from_slice(r);
            } else {
                out.iter_mut().zip(r).for_each(|(o, v)| *o += v);
            }
        }
        Ok(())
    }
}

struct SendPtr(*const *mut f32);
// SAFETY: the pointers are only dereferenced by kernels writing disjoint
// ranges while the owning `Program` is borrowed mutably.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

unsafe extern "C" fn dummy_kernel(_: *const *mut f32, _: i64, _: i64) {}

fn two(bufs: &mut [Vec<f32>], a: usize, b: usize) -> (&[f32], &mut [f32]) {
    assert_ne!(a, b, "a transpose never writes its own input");
    if a < b {
        let (x, y) = bufs.split_at_mut(b);
        (&x[a], &mut y[0])
    } else {
        let (x, y) = bufs.split_at_mut(a);
        (&y[0], &mut x[b])
    }
}

/// `dst` = `src` (of `shape`) with its axes permuted, walking `dst` in
/// order.
fn transpose(src: &[f32], dst: &mut [f32], shape: &[usize], perm: &[usize]) {
    let r = shape.len();
    let st = strides(shape);
    let mut idx = [0usize; 8];
    let mut dims = [0usize; 8];
    let mut sst = [0usize; 8];
    assert!(r <= 8, "transpose of rank > 8");
    for i in 0..r {
        dims[i] = shape[perm[i]];
        sst[i] = st[perm[i]];
    }
    if dst.is_empty() {
        return;
    }
    let mut off = 0usize;
    for d in dst.iter_mut() {
        *d = src[off];
        // Increment the multi-index, last axis fastest.
        let mut ax = r;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            off += sst[ax];
            if idx[ax] < dims[ax] {
                break;
            }
            off -= sst[ax] * dims[ax];
            idx[ax] = 0;
        }
    }
}

/// Where each stored node lives.
struct BufferPlan {
    buf_of: SecondaryMap<Node, usize>,
    sizes: Vec<usize>,
    /// The buffer each update (in the graph's order) is taken from after
    /// a step: its value's, or a copy's ([`BufferPlan::separate_updates`]).
    update_bufs: Vec<usize>,
}

impl BufferPlan {
    /// After a step each update's buffer is swapped into its parameter,
    /// so it must belong to that update alone. A view shares its base's
    /// buffer and CSE merges equal values, so an update's value may sit
    /// in a leaf's buffer (`assign(s, reshape(w, …))`, a reshaped
    /// constant) or in another update's (`assign(s1, m); assign(s2, m)`).
    /// Such an update gets a buffer of its own, filled by a copy after
    /// every other step; returns those copies as (from, to) buffers.
    fn separate_updates(&mut self, g: &Graph, fu: &fusion::Fusion) -> Vec<(usize, usize)> {
        let mut taken: std::collections::HashSet<usize> = fu
            .kernels
            .iter()
            .filter(|&&(_, kind)| kind == Kind::Leaf)
            .map(|&(n, _)| self.buf_of[n])
            .collect();
        let mut copies = Vec::new();
        self.update_bufs = g
            .updates
            .iter()
            .map(|u| {
                let b = self.buf_of[u.node];
                if taken.insert(b) {
                    return b;
                }
                self.sizes.push(self.sizes[b]);
                let own = self.sizes.len() - 1;
                copies.push((b, own));
                own
            })
            .collect();
        copies
    }

    /// Adds up the bytes of every buffer (each counted once, named by the
    /// first node stored in it) and checks them against the memory
    /// budget before anything is allocated.
    fn check_budget(&self, g: &Graph, fu: &fusion::Fusion) -> Result<(), Error> {
        let mut budget = crate::backend::memory::Budget::default();
        let mut seen = vec![false; self.sizes.len()];
        for &(n, kind) in &fu.kernels {
            let b = self.buf_of[n];
            if kind != Kind::View && !std::mem::replace(&mut seen[b], true) {
                let d = &g.nodes[n];
                budget.add(self.sizes[b], || g.shape_str(&d.ty.shape), d.span);
            }
        }
        for (b, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
            budget.add(
                self.sizes[b],
                || "a copy of an update".into(),
                Default::default(),
            );
        }
        budget.check()
    }
}

/// A buffer of `expected` floats handed `found` (a parameter or input
/// given through the API with the wrong length).
fn check_len(name: &str, expected: usize, found: usize, span: Span) -> Result<(), Error> {
    match expected == found {
        true => Ok(()),
        false => Err(Error::BadLength {
            name: name.to_string(),
            expected,
            found,
            span,
        }),
    }
}

/// Assigns buffers in kernel order: a buffer whose last reader has run is
/// reused by the next value of the same size. Leaves and roots keep their
/// own; a view shares its operand's.
fn plan_buffers(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    roots: &[Node],
) -> BufferPlan {
    // The stored nodes each kernel reads (through fused nodes).
    let reads = |n: Node| -> Vec<Node> {
        let mut out = Vec::new();
        let mut stack = g.nodes[n].op.args();
        while let Some(a) = stack.pop() {
            if fu.fused.contains(a) || fu.strided.contains(a) {
                stack.extend(g.nodes[a].op.args());
            } else {
                out.push(a);
            }
        }
        out
    };
    let mut base: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
    let mut last: SecondaryMap<Node, usize> = SecondaryMap::new();
    let mut pinned: cranelift_entity::EntitySet<Node> = cranelift_entity::EntitySet::new();
    for &r in roots {
        pinned.insert(r);
    }
    let root_of = |base: &SecondaryMap<Node, Option<Node>>, mut n: Node| {
        while let Some(b) = base[n] {
            n = b;
        }
        n
    };
    for (i, &(n, kind)) in fu.kernels.iter().enumerate() {
        if kind == Kind::View {
            let Op::Reshape(a, _) = g.nodes[n].op else {
                unreachable!("fusion gives Kind::View only to reshapes")
            };
            base[n] = Some(root_of(&base, a));
        }
        if kind == Kind::Leaf {
            pinned.insert(n);
        }
        for a in reads(n) {
            let b = root_of(&base, a);
            last[b] = i;
        }
    }
    for &r in roots {
        let b = root_of(&base, r);
        pinned.insert(b);
    }
    let mut buf_of: SecondaryMap<Node, usize> = SecondaryMap::new();
    let mut sizes: Vec<usize> = Vec::new();
    let mut free: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &(n, kind)) in fu.kernels.iter().enumerate() {
        if kind == Kind::View {
            buf_of[n] = buf_of[root_of(&base, n)];
        } else {
            let len: usize = shapes[n].iter().product();
            let reuse = if pinned.contains(n) {
                None
            } else {
                free.get_mut(&len).and_then(|v| v.pop())
            };
            buf_of[n] = reuse.unwrap_or_else(|| {
                sizes.push(len);
                sizes.len() - 1
            });
        }
        // Release what this kernel was the last to read.
        for a in reads(n) {
            let b = root_of(&base, a);
            if last[b] == i && !pinned.contains(b) {
                last[b] = usize::MAX; // released once
                free.entry(sizes[buf_of[b]]).or_default().push(buf_of[b]);
            }
        }
    }
    BufferPlan {
        buf_of,
        sizes,
        update_bufs: Vec::new(),
    }
}

/// The loop kernel computing stored node `n`, and the stored node each of
/// its accesses reads.
fn loop_kernel(
    g: &Graph,
    fu: &fusion::Fusion,
    shapes: &SecondaryMap<Node, Vec<usize>>,
    n: Node,
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
            let out = strides(&s).iter().map(|&x| x as i64).collect();
            (s, out, n)
        }
    };
    let mut b = KernelBuilder {
        g,
        fu,
        shapes,
        rank: space.len(),
        exprs: Vec::new(),
        memo: HashMap::new(),
        accesses: Vec::new(),
        srcs: Vec::new(),
    };
    let ident: Vec<Option<usize>> = (0..space.len()).map(Some).collect();
    let is_reduce = top != n;
    b.build(top, &ident, !is_reduce);
    let reduce = match &g.nodes[n].op {
        Op::Reduce { op, .. } => Some(*op),
        _ => None,
    };
    let mut k = LoopKernel {
        dims: space,
        accesses: b.accesses,
        out,
        exprs: b.exprs,
        reduce,
    };
    k.simplify();
    (k, b.srcs)
}

struct KernelBuilder<'a> {
    g: &'a Graph,
    fu: &'a fusion::Fusion,
    shapes: &'a SecondaryMap<Node, Vec<usize>>,
    rank: usize,
    exprs: Vec<Expr>,
    memo: HashMap<(Node, Vec<Option<usize>>), usize>,
    accesses: Vec<Vec<i64>>,
    srcs: Vec<Node>,
}

impl KernelBuilder<'_> {
    fn push(&mut self, e: Expr) -> usize {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    /// The expression of `n` evaluated where each of its dims is the
    /// iteration dim `map[j]` (or 0 when `None`). `top`: compute `n` itself
    /// even though it is stored.
    fn build(&mut self, n: Node, map: &[Option<usize>], top: bool) -> usize {
        let key = (n, map.to_vec());
        if let Some(&e) = self.memo.get(&key) {
            return e;
        }
        let stored = !self.fu.fused.contains(n);
        let e = if stored && !top {
            let st = strides(&self.shapes[n]);
            let mut s = vec![0i64; self.rank];
            for (j, m) in map.iter().enumerate() {
                if let Some(d) = m {
                    s[*d] += st[j] as i64;
                }
            }
            self.srcs.push(n);
            self.accesses.push(s);
            let a = self.accesses.len() - 1;
            self.push(Expr::Load(a))
        } else {
            match &self.g.nodes[n].op {
                Op::Fill { value, .. } => self.push(Expr::Const(*value)),
                Op::Broadcast(a, _) => {
                    let from = &self.shapes[*a];
                    let to = &self.shapes[n];
                    let off = to.len() - from.len();
                    let m: Vec<Option<usize>> = (0..from.len())
                        .map(|j| {
                            if from[j] == 1 && to[j + off] != 1 {
                                None
                            } else {
                                map[j + off]
                            }
                        })
                        .collect();
                    self.build(*a, &m, false)
                }
                Op::Unary(op, a) => {
                    let a = self.build(*a, map, false);
                    self.push(Expr::Unary(*op, a))
                }
                Op::Binary(op, a, b) => {
                    let whole = match op {
                        crate::ir::BinaryOp::Pow => fusion::pow_exponent(self.g, *b),
                        _ => None,
                    };
                    let a = self.build(*a, map, false);
                    match whole {
                        Some(k) => self.push(Expr::PowI(a, k)),
                        None => {
                            let b = self.build(*b, map, false);
                            self.push(Expr::Binary(*op, a, b))
                        }
                    }
                }
                Op::Compare(op, a, b) => {
                    let a = self.build(*a, map, false);
                    let b = self.build(*b, map, false);
                    self.push(Expr::Compare(*op, a, b))
                }
                Op::Select(c, a, b) => {
                    let c = self.build(*c, map, false);
                    let a = self.build(*a, map, false);
                    let b = self.build(*b, map, false);
                    self.push(Expr::Select(c, a, b))
                }
                op => unreachable!("{op:?} is not a loop operation"),
            }
        };
        self.memo.insert(key, e);
        e
    }
}
