//! A schedule compiled for this CPU: a Cranelift function per loop step,
//! a compiled program per loop body, scratch per convolution — one
//! [`Exec`] per step of the [`Schedule`], which stays the description of
//! what runs — and the buffers, allocated once.

use super::native;
use super::precompile::Precompile;
use super::{codegen, wide};
use crate::backend::interp;
use crate::diag::Span;
use crate::exec::Error;
use crate::ir::{Node, ParamId};
use crate::schedule::{BufId, Gemm, LoopKernel, ScanStep, Schedule, Step};
use crate::tensor::Tensor;
use cranelift_entity::{EntityRef, SecondaryMap};
use cranelift_jit::JITModule;
use cranelift_module::FuncId;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A compiled loop kernel: the addresses of its output and accesses, and
/// the range of its outer dimension to run.
pub type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// How a loop kernel runs: Cranelift's code, or the full-width evaluator
/// ([`wide`]) at a vector level this CPU has.
#[derive(Clone, Copy)]
enum Kern {
    Jit(KernelFn),
    /// Run by [`wide::run`], each thread with its own `per` floats of
    /// the scratch at `scratch` (which its [`Exec::Loop`] owns), for up to
    /// `slots` threads.
    Wide {
        level: wide::Level,
        scratch: *mut f32,
        per: usize,
        slots: usize,
    },
}

// SAFETY: a kernel's scratch is only written through distinct slots by
// distinct threads, while the owning program is borrowed mutably.
unsafe impl Send for Kern {}
unsafe impl Sync for Kern {}

/// A wide kernel's [`Kern`] and the scratch it writes.
fn wide_kern(level: wide::Level, kernel: &crate::schedule::LoopKernel) -> (Kern, Vec<f32>) {
    let slots = rayon::current_num_threads().max(1);
    let per = wide::scratch_len(kernel);
    let mut scratch = vec![0.0; per * slots];
    let kern = Kern::Wide {
        level,
        scratch: scratch.as_mut_ptr(),
        per,
        slots,
    };
    (kern, scratch)
}

/// What the JIT keeps for one step of the schedule.
enum Exec {
    /// Nothing beyond the step's description.
    Plain,
    Loop {
        f: Kern,
        /// A wide kernel's scratch, which `f` points into (empty
        /// otherwise): held here, never read here.
        _scratch: Vec<f32>,
        /// The addresses of the output and of each access's buffer,
        /// refreshed before each call.
        ptrs: Vec<*mut f32>,
    },
    Conv {
        scratch: Vec<f32>,
    },
    Scan(Box<Program>),
}

pub struct Program {
    module: Option<JITModule>,
    sched: Schedule,
    exec: Vec<Exec>,
    bufs: Buffers,
    pub clif: Vec<String>,
    /// Seconds spent in each step, with `NNC_LOG=profile` (printed when
    /// the program is dropped).
    profile: Option<Vec<f64>>,
    runs: usize,
    /// For [`Program::run_observed`], made on its first call: the outputs
    /// final before the first step (at 0), and after step `i` (at i + 1).
    final_after: Option<Vec<Vec<usize>>>,
    /// The buffers no step writes while the program runs (both cores only
    /// read them): the constants, the parameters the program does not
    /// update (bound to the caller's tensors for the run), and a loop
    /// body's invariant operands, the same at every step (set by the
    /// enclosing program). A product whose `b` is one is split by rows
    /// (`native::sgemm_split`).
    fixed: cranelift_entity::EntitySet<BufId>,
    /// For a loop body that `scan-rows` cuts ([`crate::schedule::parts`]):
    /// into how many parts, each running every step on its own thread
    /// (the pool's size); 1 elsewhere.
    parts: usize,
    /// Per step, the addresses its parts use, taken before each run by
    /// parts ([`Program::execute_in_parts`]).
    part_ptrs: Vec<Vec<*mut f32>>,
}

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
            let per_run = |t: f64| t * 1e3 / self.runs.max(1) as f64;
            for &i in order.iter().take(12) {
                let what = self.sched.steps[i].describe(&self.sched.graph);
                eprintln!("[profile]   step {i:3}: {:8.4} ms  {what}", per_run(p[i]));
            }
            // The time of each kind of step (the first word of its
            // description: gemm, loop, copy, …), largest first.
            let mut kinds: Vec<(String, usize, f64)> = Vec::new();
            for (i, step) in self.sched.steps.iter().enumerate() {
                let what = step.describe(&self.sched.graph);
                let kind = what.split_whitespace().next().unwrap_or("").to_string();
                match kinds.iter_mut().find(|(k, ..)| *k == kind) {
                    Some((_, n, t)) => (*n, *t) = (*n + 1, *t + p[i]),
                    None => kinds.push((kind, 1, p[i])),
                }
            }
            kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
            let kinds: Vec<String> = kinds
                .iter()
                .map(|(k, n, t)| format!("{k} {:.3} ms in {n}", per_run(*t)))
                .collect();
            eprintln!("[profile] by kind: {}", kinds.join(", "));
        }
        if let Some(m) = self.module.take() {
            // SAFETY: the functions of this module are only reachable
            // through `self.exec`, which dies with it.
            unsafe { m.free_memory() };
        }
    }
}

/// Where a program's loop kernels come from: compiled now into this
/// process (the JIT), compiled into an object file for a library
/// ([`ObjectKernels`], `nnc compile`), or taken from a library's table
/// of compiled kernels ([`TableKernels`], its run time). The three walk
/// a schedule's kernels in the same order ([`Program::assemble`]).
trait Kernels {
    /// The [`Exec`] of step `i`'s loop kernel (its own or a GEMM's
    /// epilogue, `what`) reading `n_args` buffers, named `k{i}{suffix}`
    /// where it is compiled (the name is made only then: most kernels of
    /// a deep model share an earlier one's function).
    fn exec(
        &mut self,
        i: usize,
        kernel: &Arc<LoopKernel>,
        n_args: usize,
        suffix: &str,
        what: &str,
    ) -> Result<Exec, Error>;

    /// A loop body's program.
    fn body(&mut self, body: Schedule) -> Result<Program, Error>;
}

/// A loop body's program with its kernels from the same source as the
/// enclosing program's (an object's module or a library's table; the JIT
/// gives each body a module of its own).
fn body_from_source(kx: &mut dyn Kernels, body: Schedule) -> Result<Program, Error> {
    let exec = Program::assemble(&body, kx)?;
    let updates = update_storage(&body);
    Ok(Program::with_exec(body, exec, None, Vec::new(), updates))
}

/// The functions of the loop kernels declared so far, keyed by the
/// kernel itself (iteration space, strides, expression — no buffers — so
/// structurally identical ones, a stack of equal layers, are compiled
/// once). The schedule already shares one allocation between the equal
/// kernels it finds ([`crate::schedule::build`]): those are found by
/// address, without hashing and comparing the kernel again. The cache
/// holds every kernel it was asked for, so no address it knows is
/// reused while it lives.
#[derive(Default)]
struct KernelCache {
    by_value: FxHashMap<Arc<LoopKernel>, FuncId>,
    by_address: FxHashMap<usize, (Arc<LoopKernel>, FuncId)>,
}

impl KernelCache {
    /// How many distinct kernels it holds.
    fn len(&self) -> usize {
        self.by_value.len()
    }
}

/// What the JIT needs to compile a program's loop kernels: the module
/// they go into, the kernels compiled so far ([`KernelCache`]), and the
/// functions to look up once the module is finalised.
struct JitKernels {
    module: JITModule,
    compiled: KernelCache,
    /// Kernels that reused an identical one.
    shared: usize,
    /// Step index and function of each compiled kernel.
    pending: Vec<(usize, cranelift_module::FuncId)>,
    /// The functions declared and not yet built and compiled.
    declared: Vec<codegen::Declared>,
    /// With `want_clif`, the Cranelift IR of every kernel in the order
    /// they were asked for: a loop body's as text, this program's own as
    /// `None` (the next declared kernel's, known once it is built).
    clif: Vec<Option<String>>,
    want_clif: bool,
    /// The kernels whose compilation began while the schedule was built.
    early: Option<Arc<Precompile>>,
}

/// A loop step's [`Exec`] whose function is `f`, with the `n_args + 1`
/// slots for its buffers' addresses.
fn loop_exec(f: Kern, scratch: Vec<f32>, n_args: usize) -> Exec {
    Exec::Loop {
        f,
        _scratch: scratch,
        ptrs: vec![std::ptr::null_mut(); n_args + 1],
    }
}

/// Declares `kernel`'s function in `module` unless an identical one is
/// in `compiled` (which then counts in `shared`), and queues it in
/// `declared`, for [`codegen::define_all`] to build and compile with the
/// others.
#[allow(clippy::too_many_arguments)]
fn compile_kernel<M: cranelift_module::Module>(
    module: &mut M,
    compiled: &mut KernelCache,
    shared: &mut usize,
    declared: &mut Vec<codegen::Declared>,
    kernel: &Arc<LoopKernel>,
    name: impl FnOnce() -> String,
    what: &str,
    i: usize,
) -> Result<FuncId, Error> {
    let address = Arc::as_ptr(kernel) as usize;
    if let Some(&(_, id)) = compiled.by_address.get(&address) {
        *shared += 1;
        return Ok(id);
    }
    let id = match compiled.by_value.get(&**kernel) {
        Some(&id) => {
            *shared += 1;
            id
        }
        None => {
            let name = name();
            let id = codegen::declare(module, &name)
                .map_err(|e| internal(format!("Cranelift rejected {what} {i}: {e}")))?;
            declared.push(codegen::Declared {
                id,
                kernel: Arc::clone(kernel),
                name,
            });
            compiled.by_value.insert(Arc::clone(kernel), id);
            id
        }
    };
    compiled
        .by_address
        .insert(address, (Arc::clone(kernel), id));
    Ok(id)
}

impl Kernels for JitKernels {
    /// Runs wide where the kernel qualifies ([`wide::eligible`]; not when
    /// the IR text is wanted), else compiles it.
    fn exec(
        &mut self,
        i: usize,
        kernel: &Arc<LoopKernel>,
        n_args: usize,
        suffix: &str,
        what: &str,
    ) -> Result<Exec, Error> {
        if let Some(level) = wide::eligible(kernel).filter(|_| !self.want_clif) {
            let (f, scratch) = wide_kern(level, kernel);
            return Ok(loop_exec(f, scratch, n_args));
        }
        let declared = self.declared.len();
        let id = compile_kernel(
            &mut self.module,
            &mut self.compiled,
            &mut self.shared,
            &mut self.declared,
            kernel,
            || format!("k{i}{suffix}"),
            what,
            i,
        )?;
        if self.want_clif && self.declared.len() > declared {
            self.clif.push(None);
        }
        self.pending.push((i, id));
        Ok(loop_exec(Kern::Jit(dummy_kernel), Vec::new(), n_args))
    }

    fn body(&mut self, body: Schedule) -> Result<Program, Error> {
        let p = Program::compile_prepared(body, self.want_clif, Vec::new(), self.early.clone())?;
        self.clif.extend(p.clif.iter().cloned().map(Some));
        Ok(p)
    }
}

/// Compiles every loop kernel of a program (its loop bodies' included)
/// into an object file's module, in [`Program::assemble`]'s order: the
/// `i`-th entry of `order` is the function of the `i`-th kernel asked
/// for. Wide kernels are compiled too: whether one runs wide is decided
/// by the CPU the library runs on.
pub struct ObjectKernels<'m, M: cranelift_module::Module> {
    pub module: &'m mut M,
    compiled: KernelCache,
    /// The prefix of the kernels' symbol names.
    prefix: String,
    pub order: Vec<cranelift_module::FuncId>,
    pub shared: usize,
    declared: Vec<codegen::Declared>,
}

impl<'m, M: cranelift_module::Module> ObjectKernels<'m, M> {
    pub fn new(module: &'m mut M, prefix: &str) -> Self {
        ObjectKernels {
            module,
            compiled: KernelCache::default(),
            prefix: prefix.to_string(),
            order: Vec::new(),
            shared: 0,
            declared: Vec::new(),
        }
    }

    /// Compiles the kernels of `sched` (consumed: nothing runs).
    pub fn add(&mut self, sched: Schedule) -> Result<(), Error> {
        Program::assemble(&sched, self)?;
        codegen::define_all(self.module, std::mem::take(&mut self.declared), false, None)
            .map_err(|e| internal(format!("Cranelift rejected a loop kernel: {e}")))?;
        Ok(())
    }
}

impl<M: cranelift_module::Module> Kernels for ObjectKernels<'_, M> {
    fn body(&mut self, body: Schedule) -> Result<Program, Error> {
        body_from_source(self, body)
    }

    fn exec(
        &mut self,
        i: usize,
        kernel: &Arc<LoopKernel>,
        n_args: usize,
        _suffix: &str,
        what: &str,
    ) -> Result<Exec, Error> {
        let (prefix, count) = (&self.prefix, self.compiled.len());
        let name = || format!("{prefix}k{count}");
        let id = compile_kernel(
            self.module,
            &mut self.compiled,
            &mut self.shared,
            &mut self.declared,
            kernel,
            name,
            what,
            i,
        )?;
        self.order.push(id);
        Ok(loop_exec(Kern::Jit(dummy_kernel), Vec::new(), n_args))
    }
}

/// A library's compiled kernels, handed out in [`Program::assemble`]'s
/// order (the order [`ObjectKernels`] compiled them in). A kernel that
/// qualifies runs wide when this CPU has the vector extension.
pub struct TableKernels<'t> {
    fns: &'t [KernelFn],
    next: usize,
}

impl<'t> TableKernels<'t> {
    pub fn new(fns: &'t [KernelFn]) -> Self {
        TableKernels { fns, next: 0 }
    }
}

impl Kernels for TableKernels<'_> {
    fn body(&mut self, body: Schedule) -> Result<Program, Error> {
        body_from_source(self, body)
    }

    fn exec(
        &mut self,
        i: usize,
        kernel: &Arc<LoopKernel>,
        n_args: usize,
        _suffix: &str,
        what: &str,
    ) -> Result<Exec, Error> {
        let &f = self.fns.get(self.next).ok_or_else(|| {
            internal(format!(
                "the library has {} kernels; {what} {i} asks for one more",
                self.fns.len()
            ))
        })?;
        self.next += 1;
        if let Some(level) = wide::eligible(kernel) {
            let (f, scratch) = wide_kern(level, kernel);
            return Ok(loop_exec(f, scratch, n_args));
        }
        Ok(loop_exec(Kern::Jit(f), Vec::new(), n_args))
    }
}

fn internal(msg: impl Into<String>) -> Error {
    Error::Backend {
        message: msg.into(),
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

impl Program {
    /// Compiles `sched` (verified by [`crate::schedule::build`] in debug
    /// builds; the kernels below trust its ranges), keeping each kernel's
    /// Cranelift IR as text when `want_clif`.
    pub fn compile_with(sched: Schedule, want_clif: bool) -> Result<Program, Error> {
        Program::compile_prepared(sched, want_clif, Vec::new(), None)
    }

    /// [`Program::compile_with`], taking the updates' storage from
    /// `updates` (zeroed, one vector per update in the graph's order)
    /// where it has the update buffer's length, and the code of the
    /// kernels `early` compiled while the schedule was built.
    fn compile_prepared(
        sched: Schedule,
        want_clif: bool,
        updates: Vec<Vec<f32>>,
        early: Option<Arc<Precompile>>,
    ) -> Result<Program, Error> {
        let mut kx = JitKernels {
            module: super::new_module().map_err(internal)?,
            compiled: KernelCache::default(),
            shared: 0,
            pending: Vec::new(),
            declared: Vec::new(),
            clif: Vec::new(),
            want_clif,
            early,
        };
        let mut exec = Program::assemble(&sched, &mut kx)?;
        let JitKernels {
            mut module,
            compiled,
            shared,
            pending,
            declared,
            clif,
            early,
            ..
        } = kx;
        // The kernels are compiled while the update buffers are allocated
        // (zeroing them is most of a deep model's allocation), where they
        // were not allocated while the schedule was built.
        let (texts, updates) = rayon::join(
            || codegen::define_all(&mut module, declared, want_clif, early.as_deref()),
            || update_storage_from(&sched, updates),
        );
        let mut texts = texts
            .map_err(|e| internal(format!("Cranelift rejected a loop kernel: {e}")))?
            .into_iter();
        let clif = clif
            .into_iter()
            .map(|c| c.or_else(|| texts.next()).unwrap_or_default())
            .collect();
        if crate::log::enabled("plan") {
            for (i, s) in sched.steps.iter().enumerate() {
                eprintln!("[plan] step {i}: {}", s.describe(&sched.graph));
            }
            eprintln!(
                "[plan] {} buffers, {} floats; {} loop kernels compiled, {shared} shared with an identical one",
                sched.bufs.len(),
                sched.bufs.values().sum::<usize>(),
                compiled.len(),
            );
            if let Some((queued, by_job)) = early.as_ref().map(|e| e.counts()) {
                eprintln!(
                    "[plan] {queued} loop kernels queued while the schedule was built (this program's and its loop bodies' so far), {by_job} of them compiled by the queue"
                );
            }
        }
        module
            .finalize_definitions()
            .map_err(|e| internal(format!("Cranelift could not finalise: {e}")))?;
        for (i, id) in pending {
            let p = module.get_finalized_function(id);
            if let Exec::Loop { f, .. } = &mut exec[i] {
                // SAFETY: the function was compiled with exactly this
                // signature by `codegen::compile`.
                *f = Kern::Jit(unsafe { std::mem::transmute::<*const u8, KernelFn>(p) });
            }
        }
        Ok(Program::with_exec(sched, exec, Some(module), clif, updates))
    }

    /// A program whose loop kernels are a library's compiled ones, taken
    /// from the start of `fns` in the order [`ObjectKernels`] compiled
    /// them; also returns how many it took.
    pub fn from_table(sched: Schedule, fns: &[KernelFn]) -> Result<(Program, usize), Error> {
        let mut kx = TableKernels::new(fns);
        let exec = Program::assemble(&sched, &mut kx)?;
        let updates = update_storage(&sched);
        Ok((
            Program::with_exec(sched, exec, None, Vec::new(), updates),
            kx.next,
        ))
    }

    /// One [`Exec`] per step of `sched`, its loop kernels from `kx`.
    fn assemble(sched: &Schedule, kx: &mut dyn Kernels) -> Result<Vec<Exec>, Error> {
        let mut exec = Vec::with_capacity(sched.steps.len());
        for (i, step) in sched.steps.iter().enumerate() {
            exec.push(match step {
                Step::Loop {
                    kernel, args, also, ..
                } => kx.exec(
                    i,
                    kernel,
                    args.len() + also.len(),
                    "",
                    "kernel",
                )?,
                Step::MatMul {
                    epilogue: Some(e), ..
                } => kx.exec(i, &e.kernel, e.args.len(), "e", "epilogue")?,
                Step::Conv { pass, geo, .. } => {
                    let threads = rayon::current_num_threads();
                    let scratch = native::conv_scratch(geo, *pass, threads)
                        .ok_or_else(|| too_large_conv(sched, i))?;
                    let mut budget = crate::exec::memory::Budget::default();
                    budget.add(
                        scratch,
                        || "the convolution's unfolded input".into(),
                        step_span(sched, i),
                    );
                    budget.check()?;
                    Exec::Conv {
                        scratch: vec![0.0; scratch],
                    }
                }
                Step::Scan(sc) => {
                    let mut body = kx.body(sc.body.clone())?;
                    // The extra arguments are the same at every step.
                    let args = sc.slots[1 + sc.xs.len()..].iter().flatten();
                    for b in args.clone() {
                        body.fixed.insert(*b);
                    }
                    if crate::log::enabled("plan") {
                        let args: Vec<&BufId> = args.collect();
                        eprintln!("[plan] step {i} runs a loop whose body's buffers {args:?} are fixed from step to step");
                    }
                    body.parts = in_parts(&body, i);
                    Exec::Scan(Box::new(body))
                }
                _ => Exec::Plain,
            });
        }
        Ok(exec)
    }

    /// The program running `exec`, with its buffers allocated (the
    /// updates' from [`update_storage`]) and its constants copied in.
    fn with_exec(
        sched: Schedule,
        exec: Vec<Exec>,
        module: Option<JITModule>,
        clif: Vec<String>,
        updates: Vec<Vec<f32>>,
    ) -> Program {
        let mut bufs = Buffers::new(&sched, updates);
        for &(c, b) in &sched.consts {
            bufs.get_mut(b).copy_from_slice(&sched.graph.consts[c].data);
        }
        let n_steps = sched.steps.len();
        let fixed = fixed_buffers(&sched);
        if crate::log::enabled("plan") {
            let list: Vec<BufId> = sched.bufs.keys().filter(|&b| fixed.contains(b)).collect();
            eprintln!("[plan] fixed while the program runs (a product reading one as `b` is split by rows): {list:?}");
        }
        Program {
            module,
            sched,
            exec,
            bufs,
            clif,
            profile: crate::log::enabled("profile").then(|| vec![0.0; n_steps]),
            runs: 0,
            final_after: None,
            fixed,
            parts: 1,
            part_ptrs: vec![Vec::new(); n_steps],
        }
    }

    /// Copies the fed inputs (or their declared defaults) into their
    /// buffers. An input whose data does not fill its buffer exactly (a
    /// tensor whose data disagrees with its shape) is an error.
    pub fn load_inputs(
        &mut self,
        inputs: &SecondaryMap<crate::ir::InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        let g = &self.sched.graph;
        for &(i, b) in &self.sched.inputs {
            let src = match &inputs[i] {
                Some(t) => &t.data,
                None => match g.inputs[i].default {
                    Some(c) => &g.consts[c].data,
                    None => continue,
                },
            };
            let dst = self.bufs.get_mut(b);
            check_len(&g.inputs[i].name, dst.len(), src.len(), g.inputs[i].span)?;
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// The buffer of input `i`, to write it in place of
    /// [`Program::load_inputs`] (none if the schedule does not read it).
    pub fn input_mut(&mut self, i: crate::ir::InputId) -> Option<&mut [f32]> {
        let b = self.input_buf(i)?;
        Some(self.bufs.get_mut(b))
    }

    /// The buffer of input `i`, if the schedule reads it.
    fn input_buf(&self, i: crate::ir::InputId) -> Option<BufId> {
        let &(_, b) = self.sched.inputs.iter().find(|&&(id, _)| id == i)?;
        Some(b)
    }

    /// Runs with the parameters' buffers bound to `params` (no copy; the
    /// steps only read them, the verifier's rule 7), so that any number
    /// of programs may run on one set of parameters at once. With
    /// `outputs`, returns the outputs (an output may be a parameter). The
    /// kernels' accesses rely on every buffer having its planned length,
    /// so a parameter of another length (or a missing one) is an error
    /// before anything runs.
    pub fn run_on(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        outputs: bool,
    ) -> Result<Vec<Tensor>, Error> {
        self.bound_run(params, &[], outputs, |p| p.execute_here_or_on_pool())
    }

    /// [`Program::run_on`] with the buffers of `inputs` bound to the
    /// given data instead of holding a copy (the steps only read an
    /// input, the verifier's rule 7): a library's caller's arrays, read
    /// in place. Every input given must have its buffer's length.
    pub fn run_on_inputs(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        inputs: &[(crate::ir::InputId, &[f32])],
        outputs: bool,
    ) -> Result<Vec<Tensor>, Error> {
        self.bound_run(params, inputs, outputs, |p| p.execute_here_or_on_pool())
    }

    /// Binds the parameters' buffers to `params` and those of `inputs` to
    /// their data, runs `execute`, reads the outputs (with `outputs`) and
    /// ends the bindings.
    fn bound_run(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        inputs: &[(crate::ir::InputId, &[f32])],
        outputs: bool,
        execute: impl FnOnce(&mut Program) -> Result<(), Error>,
    ) -> Result<Vec<Tensor>, Error> {
        for &(p, b) in &self.sched.params {
            let info = &self.sched.graph.params[p];
            let (want, found) = (self.bufs.len(b), params[p].data.len());
            check_len(&info.name, want, found, info.span)?;
        }
        for &(id, data) in inputs {
            if let Some(b) = self.input_buf(id) {
                let info = &self.sched.graph.inputs[id];
                check_len(&info.name, self.bufs.len(b), data.len(), info.span)?;
            }
        }
        // Bound only once every length is checked: an error leaves no
        // binding behind.
        for &(p, b) in &self.sched.params {
            // SAFETY: `params` is borrowed until the bindings end below,
            // and nothing writes it meanwhile (shared borrow; rule 7).
            unsafe { self.bufs.bind(b, &params[p].data) };
        }
        for &(id, data) in inputs {
            if let Some(b) = self.input_buf(id) {
                // SAFETY: as for the parameters: `inputs` is borrowed
                // until the bindings end, and no step writes an input.
                unsafe { self.bufs.bind(b, data) };
            }
        }
        let r = execute(self);
        let outs = if outputs && r.is_ok() {
            (0..self.sched.outputs.len())
                .map(|i| self.output(i))
                .collect()
        } else {
            Vec::new()
        };
        self.bufs.unbind_all();
        r.map(|()| outs)
    }

    /// [`Program::run_on`]; then, with `update`, moves each update into
    /// its parameter: the old parameter storage becomes the update's
    /// buffer for the next call (the schedule gives every update a buffer
    /// of its own).
    pub fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        outputs: bool,
        update: bool,
    ) -> Result<Vec<Tensor>, Error> {
        let outs = self.run_on(params, outputs)?;
        if update {
            self.apply_updates(params);
        }
        Ok(outs)
    }

    /// Moves each update into its parameter, the parameter's storage
    /// becoming the update's buffer.
    fn apply_updates(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) {
        for &(p, b) in &self.sched.updates {
            self.bufs.exchange(b, &mut params[p].data);
        }
    }

    /// [`Program::run`] with outputs and updates, handing each output to
    /// `ready` (its index and data) as soon as the last step that writes
    /// it has run. The steps run on the calling thread, so `ready` may do
    /// what must stay on it (MPI's calls).
    pub fn run_observed(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        ready: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<Tensor>, Error> {
        let outs = self.bound_run(params, &[], true, |p| p.execute_observed(ready))?;
        self.apply_updates(params);
        Ok(outs)
    }

    /// Every step in order, handing each output to `ready` after its last
    /// writer (those no step writes, before the first step).
    fn execute_observed(&mut self, ready: &mut dyn FnMut(usize, &[f32])) -> Result<(), Error> {
        let final_after = match self.final_after.take() {
            Some(f) => f,
            None => self.when_final(),
        };
        let hand = |p: &Program, ready: &mut dyn FnMut(usize, &[f32]), at: usize| {
            for &o in &final_after[at] {
                ready(o, p.bufs.get(p.sched.outputs[o]));
            }
        };
        hand(self, ready, 0);
        let _modes = super::subnormal::enter();
        self.runs += 1;
        let mut r = Ok(());
        for si in 0..self.sched.steps.len() {
            r = self.run_one(si);
            if r.is_err() {
                break;
            }
            hand(self, ready, si + 1);
        }
        self.final_after = Some(final_after);
        r
    }

    /// The outputs final before the first step (at 0) and after each step
    /// `i` (at i + 1): after the last step that writes their buffer.
    fn when_final(&self) -> Vec<Vec<usize>> {
        let mut last_write = vec![0; self.sched.bufs.len()];
        for (si, step) in self.sched.steps.iter().enumerate() {
            for b in step.writes() {
                last_write[b.index()] = si + 1;
            }
        }
        let mut after = vec![Vec::new(); self.sched.steps.len() + 1];
        for (o, b) in self.sched.outputs.iter().enumerate() {
            after[last_write[b.index()]].push(o);
        }
        after
    }

    /// Runs the steps, on one of the pool's workers where a step may split
    /// its work, but on this thread (its splits shared with the helper
    /// thread) where the pool has two threads and no step needs it.
    fn execute_here_or_on_pool(&mut self) -> Result<(), Error> {
        let outside = rayon::current_thread_index().is_none();
        let pool = rayon::current_num_threads();
        if outside && pool == 2 && may_split(&self.sched) && !uses_pool(&self.sched) {
            // Two threads: the steps run here and each split's second
            // part on the helper thread (`helper.rs`), which stays awake
            // between them, instead of entering the pool: neither this
            // thread nor a worker sleeps and wakes at every run.
            return self.execute();
        }
        if outside && pool > 1 && may_split(&self.sched) {
            // The steps run on one of the pool's workers, so that the work
            // a step splits starts there and the other workers steal it
            // (from outside, each split is a job injected into the pool,
            // and the caller's thread only waits); the other workers stand
            // by ([`stand_by`]) until the steps end.
            struct Lent<'a>(&'a mut Program);
            // SAFETY: the program is used by the one worker that runs the
            // closure, while this thread waits for it (`scope` returns
            // only when the closure has).
            unsafe impl Send for Lent<'_> {}
            let lent = Lent(self);
            let running = AtomicBool::new(true);
            let running = &running;
            rayon::scope(move |s| {
                let lent = lent;
                let home = rayon::current_thread_index();
                for _ in 1..rayon::current_num_threads() {
                    // Work stolen from the steps runs in their float modes.
                    s.spawn(move |_| {
                        let _modes = super::subnormal::enter();
                        stand_by(home, running)
                    });
                }
                // Released when the steps end, a panic included (the scope
                // waits for the workers standing by before it unwinds).
                struct Release<'a>(&'a AtomicBool);
                impl Drop for Release<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _release = Release(running);
                lent.0.execute()
            })
        } else {
            self.execute()
        }
    }

    fn output(&self, i: usize) -> Tensor {
        let b = self.sched.outputs[i];
        let n = self.sched.graph.outputs[i].node;
        Tensor::new(self.sched.shapes[n].clone(), self.bufs.get(b).to_vec())
    }

    /// Whether [`Program::execute`] runs the steps in parts (`scan-rows`).
    fn runs_in_parts(&self) -> bool {
        self.parts > 1 && rayon::current_num_threads() == self.parts
    }

    /// Runs every step in order (in parts, where `scan-rows` cut them).
    fn execute(&mut self) -> Result<(), Error> {
        if self.runs_in_parts() {
            return self.execute_in_parts();
        }
        let _modes = super::subnormal::enter();
        self.runs += 1;
        for si in 0..self.sched.steps.len() {
            self.run_one(si)?;
        }
        Ok(())
    }

    /// Runs every step cut into [`Program::parts`] parts (`scan-rows`):
    /// each part runs all the steps, in order, on a thread of its own, and
    /// this returns when every part is done. With `NNC_LOG=profile`, each
    /// step's time is part 0's.
    fn execute_in_parts(&mut self) -> Result<(), Error> {
        let _modes = super::subnormal::enter();
        self.runs += 1;
        // The addresses, taken here where the loop's bindings are: the
        // parts only read them.
        let mut ptrs = std::mem::take(&mut self.part_ptrs);
        for ((step, p), exec) in self.sched.steps.iter().zip(&mut ptrs).zip(&self.exec) {
            p.clear();
            match (step, exec) {
                (
                    Step::Loop {
                        out, args, also, ..
                    },
                    Exec::Loop { .. },
                ) => {
                    for &b in std::iter::once(out).chain(args).chain(also) {
                        p.push(self.bufs.ptr(b));
                    }
                }
                // A product with an epilogue has its compiled kernel (as
                // `run_step` requires too): `run_part` runs it only so.
                (
                    Step::MatMul {
                        a,
                        b,
                        out,
                        epilogue,
                        ..
                    },
                    exec,
                ) if epilogue.is_none() || matches!(exec, Exec::Loop { .. }) => {
                    p.push(self.bufs.ptr(*out));
                    p.push(self.bufs.get(*a).as_ptr().cast_mut());
                    p.push(self.bufs.get(*b).as_ptr().cast_mut());
                    if let Some(e) = epilogue {
                        for &b in std::iter::once(&e.out).chain(&e.args) {
                            p.push(self.bufs.ptr(b));
                        }
                    }
                }
                (Step::Copy { parts, out }, _) => {
                    p.push(self.bufs.ptr(*out));
                    for (src, _) in parts {
                        p.push(self.bufs.get(*src).as_ptr().cast_mut());
                    }
                }
                _ => {
                    self.part_ptrs = ptrs;
                    return Err(internal(
                        "a step cut into parts that is no loop, product or copy, or a product without its epilogue's kernel",
                    ));
                }
            }
        }
        let parts = self.parts;
        let profiling = self.profile.is_some();
        let times = std::sync::Mutex::new(self.profile.take());
        let shared = PartsOf {
            steps: &self.sched.steps,
            exec: &self.exec,
            ptrs: &ptrs,
        };
        super::helper::for_each_part(parts, &|t| {
            let mut spent = Vec::new();
            for si in 0..shared.len() {
                let started = (profiling && t == 0).then(std::time::Instant::now);
                // SAFETY: `ptrs` holds the step's buffers as
                // `execute_in_parts` took them; `independent_parts`
                // accepted the body for `parts` parts (`in_parts`), so no
                // other part touches an element this part writes; each
                // part runs on one thread.
                unsafe { shared.run(si, t, parts) };
                spent.extend(started.map(|s| s.elapsed().as_secs_f64()));
            }
            if !spent.is_empty() {
                let mut times = times.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = times.as_mut() {
                    p.iter_mut().zip(&spent).for_each(|(p, s)| *p += s);
                }
            }
        });
        self.profile = times.into_inner().unwrap_or_else(|e| e.into_inner());
        self.part_ptrs = ptrs;
        Ok(())
    }

    /// Runs step `si` (timed, with `NNC_LOG=profile`).
    fn run_one(&mut self, si: usize) -> Result<(), Error> {
        let started = self.profile.is_some().then(std::time::Instant::now);
        run_step(
            &self.sched,
            &self.sched.steps[si],
            &mut self.exec[si],
            &mut self.bufs,
            &self.fixed,
        )?;
        if let (Some(t), Some(p)) = (started, &mut self.profile) {
            p[si] += t.elapsed().as_secs_f64();
        }
        Ok(())
    }
}

/// Into how many parts `scan-rows` cuts loop body `body` (step `step`
/// of the program running the loop): the pool's threads where
/// [`crate::schedule::parts::independent_parts`] accepts the body for
/// that many and each of its wide kernels has a scratch slot per part,
/// else 1 (the body's steps run one by one, each split on its own).
fn in_parts(body: &Program, step: usize) -> usize {
    let pool = rayon::current_num_threads();
    let slots = body.exec.iter().all(|e| match e {
        Exec::Loop {
            f: Kern::Wide { slots, .. },
            ..
        } => *slots >= pool,
        _ => true,
    });
    let verdict = match (pool, slots) {
        (1, _) => Err("one thread".to_string()),
        (_, false) => Err("a wide kernel has fewer scratch slots than threads".to_string()),
        _ => crate::schedule::parts::independent_parts(&body.sched, pool).map_err(|e| e.0),
    };
    if crate::log::enabled("plan") {
        match &verdict {
            Ok(()) => eprintln!("[plan] step {step}: scan-rows: the loop's body runs in {pool} parts, each part every step of the body on its own thread, the threads meeting once per step of the loop"),
            Err(why) => eprintln!("[plan] step {step}: scan-rows does not apply: {why}"),
        }
    }
    match verdict {
        Ok(()) => pool,
        Err(_) => 1,
    }
}

/// What the parts of a body's steps read, shared by the threads that run
/// them ([`Program::execute_in_parts`]).
struct PartsOf<'a> {
    steps: &'a [Step],
    exec: &'a [Exec],
    ptrs: &'a [Vec<*mut f32>],
}

// SAFETY: the threads only read these; the storage behind the pointers is
// written by each part in elements no other part reads or writes
// (`independent_parts`).
unsafe impl Sync for PartsOf<'_> {}

impl PartsOf<'_> {
    fn len(&self) -> usize {
        self.steps.len()
    }

    /// Part `t` of `parts` of step `si` ([`run_part`]).
    ///
    /// # Safety
    /// As [`run_part`]'s.
    unsafe fn run(&self, si: usize, t: usize, parts: usize) {
        // SAFETY: the caller's promise.
        unsafe { run_part(&self.steps[si], &self.exec[si], &self.ptrs[si], t, parts) }
    }
}

/// Runs part `t` of `parts` of `step` ([`crate::schedule::parts`] says
/// what each part covers), its buffers' addresses in `ptrs` as
/// [`Program::execute_in_parts`] takes them.
///
/// # Safety
///
/// `ptrs` holds live buffers for the step; the body passed
/// `independent_parts` for `parts` parts; no other thread runs part `t`.
unsafe fn run_part(step: &Step, exec: &Exec, ptrs: &[*mut f32], t: usize, parts: usize) {
    use crate::schedule::parts::{copy_part, epilogue_range, share};
    match (step, exec) {
        (Step::Loop { kernel, .. }, Exec::Loop { f, .. }) => {
            let r = share(kernel.dims[0], t, parts);
            if !r.is_empty() {
                // SAFETY: the caller's promise, over this part's range.
                unsafe { f.call(&SendPtr(ptrs.as_ptr()), kernel, r.start, r.end, t) };
            }
        }
        (
            Step::MatMul {
                a_offs,
                b_offs,
                dims,
                epilogue,
                ..
            },
            exec,
        ) => {
            let Gemm {
                m,
                k,
                n,
                a_rc,
                b_rc,
            } = *dims;
            let rows = share(m, t, parts);
            if rows.is_empty() {
                return;
            }
            let (o, a, b) = (ptrs[0], ptrs[1].cast_const(), ptrs[2].cast_const());
            for (bi, (&ao, &bo)) in a_offs.iter().zip(b_offs).enumerate() {
                // SAFETY: the verifier's rule 3 for the whole product, of
                // which these are rows; the caller's promise for the rest.
                unsafe {
                    let product = native::Product {
                        dims: (m, k, n),
                        dst: o.add(bi * m * n),
                        dst_rs: n as isize,
                        a: a.add(ao),
                        a_rc,
                        b: b.add(bo),
                        b_rc,
                        accumulate: false,
                    };
                    native::sgemm(product.rows(rows.start, rows.end), gemm::Parallelism::None);
                    if let (Some(e), Exec::Loop { f, .. }) = (epilogue, exec) {
                        let r = epilogue_range(&e.kernel, (m, n), bi, rows.clone());
                        f.call(&SendPtr(ptrs[3..].as_ptr()), &e.kernel, r.start, r.end, t);
                    }
                }
            }
        }
        (Step::Copy { parts: cp, .. }, _) => {
            for ((_, blocks), &src) in cp.iter().zip(&ptrs[1..]) {
                let p = copy_part(blocks, t, parts);
                for i in 0..p.count {
                    // SAFETY: the verifier's rule 4 for the whole copy (a
                    // copy never writes what it reads), of which these
                    // are blocks.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.add(p.src_at + i * p.src_stride),
                            ptrs[0].add(p.dst_at + i * p.dst_stride),
                            p.len,
                        )
                    };
                }
            }
        }
        // `execute_in_parts` refused any other step before the parts ran.
        _ => {}
    }
}

/// The buffers of `sched` that no step writes while it runs: its
/// constants and the parameters it does not update ([`Program`]'s
/// `fixed`; a loop body's invariant operands are added by the program
/// that runs the loop).
fn fixed_buffers(sched: &Schedule) -> cranelift_entity::EntitySet<BufId> {
    let mut fixed = cranelift_entity::EntitySet::new();
    // A set, not a search of the updates per parameter: a deep model has
    // hundreds of each (Adam's three updates per parameter).
    let mut updated = cranelift_entity::EntitySet::<crate::ir::ParamId>::new();
    for &(p, _) in &sched.updates {
        updated.insert(p);
    }
    for &(_, b) in &sched.consts {
        fixed.insert(b);
    }
    for &(p, b) in &sched.params {
        if !updated.contains(p) {
            fixed.insert(b);
        }
    }
    fixed
}

/// Keeps one of the pool's workers taking work while a program runs on
/// worker `home`, until `running` is false: the steps' splits are stolen
/// at once instead of waking a sleeping worker at every step (tens to
/// hundreds of microseconds each under a hypervisor, as much as a whole
/// split GEMM of the MLP). When there is nothing to take it yields the
/// core to the system, so a loaded machine loses little. On `home`
/// itself (where the program waits for a split) it returns at once.
fn stand_by(home: Option<usize>, running: &AtomicBool) {
    if rayon::current_thread_index() == home {
        return;
    }
    while running.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Idle) = rayon::yield_now() {
            std::thread::yield_now();
        }
    }
}

/// Whether some step of `sched` splits its work with rayon's own
/// parallel iterators (convolutions and pooling), which need the pool
/// whoever runs them.
fn uses_pool(sched: &Schedule) -> bool {
    sched.steps.iter().any(|step| match step {
        Step::Conv { .. } | Step::Pool { .. } => true,
        Step::Scan(s) => uses_pool(&s.body),
        _ => false,
    })
}

/// Whether some step of `sched` is large enough that the JIT splits it
/// over threads (the thresholds of [`super::threads`], read now: tests
/// change them). A loop counts from the smallest size at which any loop
/// kernel splits (a wide one's, or a compiled one's by its work, shared
/// with the helper).
fn may_split(sched: &Schedule) -> bool {
    sched.steps.iter().any(|step| match step {
        Step::Loop { kernel, .. } => {
            let points = kernel.dims.iter().product::<usize>();
            points >= super::threads::wide_loop_points(true)
                || super::threads::jit_loop_splits(points, kernel.exprs.len(), true)
        }
        Step::MatMul { dims, .. } => dims.m * dims.n * dims.k >= super::threads::gemm_madds(),
        Step::Conv { .. } => true,
        Step::Scan(s) => may_split(&s.body),
        _ => false,
    })
}

impl crate::backend::compiled::Compile for Program {
    fn compile(sched: Schedule) -> Result<Program, Error> {
        Program::compile_with(sched, false)
    }

    const OWNS_UPDATES: bool = true;

    /// The kernels' compilation starts as the schedule builds them.
    type Early = Arc<Precompile>;

    fn compile_begun(
        sched: Schedule,
        updates: Vec<Vec<f32>>,
        early: Arc<Precompile>,
    ) -> Result<Program, Error> {
        Program::compile_prepared(sched, false, updates, Some(early))
    }

    fn load_inputs(
        &mut self,
        inputs: &SecondaryMap<crate::ir::InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        Program::load_inputs(self, inputs)
    }

    fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        outputs: bool,
        update: bool,
    ) -> Result<Vec<Tensor>, Error> {
        Program::run(self, params, outputs, update)
    }

    fn run_observed(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        ready: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<Tensor>, Error> {
        Program::run_observed(self, params, ready)
    }
}

/// The span of the node a step computes, for diagnostics.
fn step_span(sched: &Schedule, i: usize) -> Span {
    let out = match &sched.steps[i] {
        Step::Conv { out, .. } => Some(*out),
        _ => None,
    };
    sched
        .graph
        .nodes
        .iter()
        .find(|(n, _)| out.is_some() && sched.buf(*n) == out)
        .map(|(_, d)| d.span)
        .unwrap_or_default()
}

fn too_large_conv(sched: &Schedule, i: usize) -> Error {
    Error::TooLarge {
        shape: format!(
            "{} (unfolded for the convolution)",
            sched.steps[i].describe(&sched.graph)
        ),
        span: step_span(sched, i),
    }
}

/// A program's buffers, one per [`BufId`], as long as the schedule says:
/// storage of their own, except while one is bound to storage outside for
/// a run (a model's parameters, which have no storage here; a loop body's
/// operands, and its result, written straight into the loop's stack).
/// Steps only read a buffer bound to read (the verifier's rule 7).
///
/// The updates' storage is a vector each, exchanged with the parameters
/// after a step; every other buffer is a region of one anonymous mapping,
/// the arena (each region 64-byte aligned): zero pages from the OS,
/// touched first by the step that writes them, instead of being set to
/// zero when the program is made.
struct Buffers {
    own: Vec<Vec<f32>>,
    lens: Vec<usize>,
    /// Per buffer, the storage it is bound to (null: its own).
    bound: Vec<*const f32>,
    /// Per buffer, whether its binding is to write ([`Buffers::bind_out`]).
    writable: Vec<bool>,
    /// Owns the arena; reached only through `base` (never borrowed whole,
    /// so the regions handed out never alias a borrow of it).
    _arena: Arena,
    base: *mut f32,
    /// Per buffer, where its region starts in the arena ([`OWN`]: it has
    /// a vector of its own in `own`, or no storage).
    at: Vec<usize>,
    /// Per buffer, whether its region is taken out by [`Buffers::take`].
    taken: Vec<bool>,
}

/// Per buffer of `sched`, the storage of its own: zeros for each update
/// (its new value is written there, then handed to the parameter), empty
/// for the others.
fn update_storage(sched: &Schedule) -> Vec<Vec<f32>> {
    update_storage_from(sched, Vec::new())
}

/// [`update_storage`], taking each update's zeros from `made` (one
/// vector per update, in order) where it has the buffer's length.
fn update_storage_from(sched: &Schedule, made: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let mut own = vec![Vec::new(); sched.bufs.len()];
    let mut made = made.into_iter();
    for &(_, b) in &sched.updates {
        own[b.index()] = match made.next() {
            Some(v) if v.len() == sched.bufs[b] => v,
            _ => vec![0.0; sched.bufs[b]],
        };
    }
    own
}

/// The storage of [`Buffers`]' arena.
enum Arena {
    /// Anonymous memory mapped for it: zero pages from the OS, each
    /// touched first by the step that writes it.
    Mapped { _map: memmap2::MmapMut },
    /// Where the OS refuses a mapping: a vector set to zero here (the
    /// same contents, at the cost the mapping avoids).
    Zeroed { _vec: Vec<f32> },
}

/// [`Buffers::at`] of a buffer outside the arena.
const OWN: usize = usize::MAX;

/// A buffer's storage taken out for a step to write while it reads
/// others ([`Buffers::take`], given back with [`Buffers::put`]).
enum Taken {
    Own(Vec<f32>),
    /// The `len` floats of an arena region, from `ptr`.
    Arena(*mut f32, usize),
}

impl std::ops::Deref for Taken {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Taken::Own(v) => v,
            // SAFETY: the region is this buffer's alone (regions do not
            // overlap), and `get` refuses it while it is taken.
            Taken::Arena(p, len) => unsafe { std::slice::from_raw_parts(*p, *len) },
        }
    }
}

impl std::ops::DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            Taken::Own(v) => v,
            // SAFETY: as for `deref`.
            Taken::Arena(p, len) => unsafe { std::slice::from_raw_parts_mut(*p, *len) },
        }
    }
}

impl Buffers {
    /// Zeros for every buffer but the parameters', which runs bind, and
    /// the updates', which are `updates` ([`update_storage`]).
    fn new(sched: &Schedule, updates: Vec<Vec<f32>>) -> Buffers {
        /// Floats per 64 bytes: each region starts on a cache line.
        const LINE: usize = 16;
        let lens: Vec<usize> = sched.bufs.values().copied().collect();
        let mut at = vec![0; lens.len()];
        for &(_, b) in sched.params.iter().chain(&sched.updates) {
            at[b.index()] = OWN;
        }
        let mut total = 0;
        for (a, &len) in at.iter_mut().zip(&lens) {
            if *a != OWN {
                *a = total;
                total += len.next_multiple_of(LINE);
            }
        }
        // Mapped, not allocated: the allocator hands out memory it has
        // used before as readily as fresh pages, and sets it to zero page
        // by page (1,200 page faults, 2-3 ms of transformer_stack_1's
        // compile, when it did). A mapping is page-aligned; a vector is
        // 16-byte aligned at least, so it is over-allocated by a line for
        // its first region to start on one.
        let floats = total + LINE;
        let (arena, base) = match memmap2::MmapMut::map_anon(floats.saturating_mul(4)) {
            Ok(mut m) => {
                let base = m.as_mut_ptr().cast::<f32>();
                (Arena::Mapped { _map: m }, base)
            }
            Err(_) => {
                let mut v = vec![0.0f32; floats];
                let skip = v.as_ptr().align_offset(64).min(LINE);
                // SAFETY: `skip <= LINE`, inside the allocation.
                let base = unsafe { v.as_mut_ptr().add(skip) };
                (Arena::Zeroed { _vec: v }, base)
            }
        };
        let own = updates;
        let bound = vec![std::ptr::null(); lens.len()];
        let writable = vec![false; lens.len()];
        let taken = vec![false; lens.len()];
        Buffers {
            own,
            lens,
            bound,
            writable,
            _arena: arena,
            base,
            at,
            taken,
        }
    }

    fn len(&self, b: BufId) -> usize {
        self.lens[b.index()]
    }

    /// Buffer `b`, to read.
    fn get(&self, b: BufId) -> &[f32] {
        let p = self.bound[b.index()];
        if p.is_null() {
            let a = self.at[b.index()];
            if a != OWN {
                assert!(!self.taken[b.index()], "{b} is taken: being written");
                // SAFETY: the region `a..a + len` of the arena is `b`'s
                // alone, and no `&mut` to it lives while `&self` does
                // (`get_mut` takes `&mut self`; `take` is refused above).
                return unsafe { std::slice::from_raw_parts(self.base.add(a), self.len(b)) };
            }
            let own = &self.own[b.index()];
            assert_eq!(
                own.len(),
                self.len(b),
                "{b} has no storage: a parameter not bound, or taken"
            );
            own
        } else {
            assert!(!self.taken[b.index()], "{b} is taken: being written");
            // SAFETY: `bind`'s (or `bind_out`'s) caller keeps the storage
            // alive, and written through this buffer alone, until the
            // binding ends; it holds `len(b)` floats.
            unsafe { std::slice::from_raw_parts(p, self.len(b)) }
        }
    }

    /// The storage a buffer bound to write lies in ([`Buffers::bind_out`]),
    /// if `b` is one; panics if `b` is bound to read.
    fn bound_out(&self, b: BufId) -> Option<*mut f32> {
        let p = self.bound[b.index()];
        if p.is_null() {
            return None;
        }
        assert!(self.writable[b.index()], "{b} is bound: read only");
        assert!(!self.taken[b.index()], "{b} is taken: being written");
        Some(p.cast_mut())
    }

    /// Buffer `b`, to write: its own storage or the storage it is bound to
    /// write (a step never writes a buffer bound to read).
    fn get_mut(&mut self, b: BufId) -> &mut [f32] {
        if let Some(p) = self.bound_out(b) {
            // SAFETY: `bind_out`'s caller: `len(b)` floats, reached only
            // through this buffer until the binding ends.
            return unsafe { std::slice::from_raw_parts_mut(p, self.len(b)) };
        }
        let a = self.at[b.index()];
        if a != OWN {
            assert!(!self.taken[b.index()], "{b} is taken: being written");
            // SAFETY: `b`'s region, reached only through `&mut self`.
            return unsafe { std::slice::from_raw_parts_mut(self.base.add(a), self.len(b)) };
        }
        &mut self.own[b.index()]
    }

    /// The address of buffer `b` for a kernel's arguments (a bound one
    /// is only read through it).
    fn ptr(&mut self, b: BufId) -> *mut f32 {
        match self.bound[b.index()] {
            p if p.is_null() => self.get_mut(b).as_mut_ptr(),
            p => p.cast_mut(),
        }
    }

    /// Buffer `r` to read and buffer `w` to write (`r != w`: the verifier
    /// checked that a step never writes what it reads).
    fn read_write(&mut self, r: BufId, w: BufId) -> (&[f32], &mut [f32]) {
        assert_ne!(r, w, "a step never writes what it reads");
        let w = self.get_mut(w) as *mut [f32];
        // SAFETY: `w` is `w`'s own storage, which `get(r)` does not reach
        // (another buffer's storage or region, or storage outside).
        (self.get(r), unsafe { &mut *w })
    }

    /// Takes buffer `b`'s own storage out, to write while others are read;
    /// [`Buffers::put`] returns it.
    fn take(&mut self, b: BufId) -> Taken {
        let len = self.len(b);
        if let Some(p) = self.bound_out(b) {
            self.taken[b.index()] = true;
            return Taken::Arena(p, len);
        }
        let a = self.at[b.index()];
        if a == OWN {
            return Taken::Own(std::mem::take(&mut self.own[b.index()]));
        }
        assert!(!self.taken[b.index()], "{b} is taken already");
        self.taken[b.index()] = true;
        // SAFETY: `a + len` lies inside the arena.
        Taken::Arena(unsafe { self.base.add(a) }, len)
    }

    fn put(&mut self, b: BufId, data: Taken) {
        match data {
            Taken::Own(v) => self.own[b.index()] = v,
            Taken::Arena(..) => self.taken[b.index()] = false,
        }
    }

    /// Binds buffer `b` to `data` until [`Buffers::unbind_all`].
    ///
    /// # Safety
    /// `data` stays alive, and nothing writes it, until then.
    unsafe fn bind(&mut self, b: BufId, data: &[f32]) {
        assert_eq!(
            data.len(),
            self.len(b),
            "{b} is bound to storage of its length"
        );
        self.bound[b.index()] = data.as_ptr();
    }

    /// Binds buffer `b` to `len(b)` floats at `data`, which the steps
    /// then write in its place, until [`Buffers::unbind_all`].
    ///
    /// # Safety
    /// The storage stays alive, and nothing but this buffer reads or
    /// writes it, until then.
    unsafe fn bind_out(&mut self, b: BufId, data: *mut f32) {
        self.bound[b.index()] = data;
        self.writable[b.index()] = true;
    }

    fn unbind_all(&mut self) {
        self.bound.fill(std::ptr::null());
        self.writable.fill(false);
    }

    /// Exchanges buffer `b`'s own storage with `data`, of its length.
    fn exchange(&mut self, b: BufId, data: &mut Vec<f32>) {
        assert_eq!(self.at[b.index()], OWN, "{b} is an update: its own vector");
        assert_eq!(
            data.len(),
            self.len(b),
            "{b} is exchanged for storage of its length"
        );
        std::mem::swap(&mut self.own[b.index()], data);
    }
}

/// Runs one step on the program's buffers.
fn run_step(
    sched: &Schedule,
    step: &Step,
    exec: &mut Exec,
    bufs: &mut Buffers,
    fixed: &cranelift_entity::EntitySet<BufId>,
) -> Result<(), Error> {
    match (step, exec) {
        (
            Step::Loop {
                kernel,
                out,
                args,
                also,
                init,
                divisor,
            },
            Exec::Loop { f, ptrs, .. },
        ) => {
            if let Some(v) = init {
                bufs.get_mut(*out).fill(*v);
            }
            let all = std::iter::once(out).chain(args).chain(also);
            for (p, &b) in ptrs.iter_mut().zip(all) {
                *p = bufs.ptr(b);
            }
            let args = SendPtr(ptrs.as_ptr());
            // SAFETY: `ptrs` holds one live buffer per argument, each as
            // long as the kernel's strides reach over its whole space (the
            // verifier's rule 2).
            unsafe { call_loop(*f, &args, kernel, 0, kernel.dims[0]) };
            if let Some(d) = divisor {
                bufs.get_mut(*out).iter_mut().for_each(|x| *x /= *d);
            }
        }
        (
            Step::MatMul {
                a,
                b,
                out,
                a_offs,
                b_offs,
                dims,
                epilogue,
            },
            exec,
        ) => {
            let Gemm { m, k, n, .. } = *dims;
            // The epilogue's function and its arguments' addresses.
            let epi = match (epilogue, exec) {
                (Some(e), Exec::Loop { f, ptrs, .. }) => {
                    for (p, &b) in ptrs.iter_mut().zip(std::iter::once(&e.out).chain(&e.args)) {
                        *p = bufs.ptr(b);
                    }
                    Some((*f, SendPtr(ptrs.as_ptr()), &e.kernel))
                }
                (None, Exec::Plain) => None,
                _ => return Err(internal("a GEMM step without its compiled form")),
            };
            let pool = rayon::current_num_threads();
            let (single, batches) = (m * n * k, a_offs.len());
            let min = super::threads::gemm_madds();
            // Each product split over the threads when it is large enough
            // (a lone one split by rows, sooner); else the batch's
            // products shared out among them when they are together (a
            // transformer's per-head products, an LSTM's gates).
            let b_fixed = fixed.contains(*b);
            let by_rows = b_fixed && batches == 1 && m >= native::ROWS * pool;
            let threads = match super::threads::gemm_splits(single, by_rows) {
                true => pool,
                false => 1,
            };
            let by_batch = threads == 1 && pool > 1 && batches >= pool && batches * single >= min;
            let lanes = if by_batch { pool } else { threads };
            // Whether the epilogue may run on parts of its rows (a split's
            // or a batch's), each on the thread that computed them.
            let rows_parts = epi.as_ref().is_none_or(|(f, _, kernel)| {
                kernel.splittable()
                    && match f {
                        Kern::Wide { slots, .. } => *slots >= lanes,
                        Kern::Jit(_) => true,
                    }
            });
            let by_batch = by_batch && rows_parts;
            let ptrs =
                native::GemmPtrs(bufs.ptr(*out), bufs.get(*a).as_ptr(), bufs.get(*b).as_ptr());
            // Product `bi` of the batch on `threads` threads, or on the
            // one thread `lane` of a split by batches.
            let product = |bi: usize, threads: usize, lane: Option<usize>| {
                let (o, a, b) = ptrs.get();
                let (ao, bo) = (a_offs[bi], b_offs[bi]);
                // The epilogue over rows lo..hi of this product's output,
                // while they are in cache: those rows of a `[rows, n]`
                // space, or their elements of a flat one.
                let rows_done = |lo: usize, hi: usize, t: Option<usize>| {
                    let Some((f, args, kernel)) = &epi else {
                        return;
                    };
                    let r = crate::schedule::parts::epilogue_range(kernel, (m, n), bi, lo..hi);
                    let (lo, hi) = (r.start, r.end);
                    // SAFETY: the verifier checked the epilogue's accesses
                    // over its whole space (these rows are part of it) and
                    // that it writes neither operand of the GEMM; a part
                    // runs as thread `t` of a split, each on its own rows.
                    unsafe {
                        match t.or(lane) {
                            Some(t) => f.call(args, kernel, lo, hi, t),
                            None => call_loop(*f, args, kernel, lo, hi),
                        }
                    }
                };
                // SAFETY: the verifier's rule 3: the operand buffers hold a
                // matrix of the sizes and strides in `dims` at each offset,
                // the output the consecutive m×n ones, and it is neither
                // operand.
                unsafe {
                    // A single row (batch-1 layers) by the full-width
                    // GEMV where the CPU has one; else the gemm crate.
                    let done = m == 1
                        && dims.b_rc.1 == 1
                        && native::sgemv_parts(native::Gemv {
                            k,
                            n,
                            dst: o.add(bi * m * n),
                            a: a.add(ao),
                            a_cs: dims.a_rc.1,
                            b: b.add(bo),
                            b_rs: dims.b_rc.0,
                        });
                    if done {
                        rows_done(0, m, None);
                    } else {
                        native::sgemm_split(
                            (m, k, n),
                            o.add(bi * m * n),
                            n as isize,
                            a.add(ao),
                            dims.a_rc,
                            b.add(bo),
                            dims.b_rc,
                            false,
                            threads,
                            (
                                rows_parts,
                                epi.as_ref().map(|_| &rows_done as native::RowsDone),
                            ),
                            b_fixed,
                        )
                    }
                }
            };
            if by_batch {
                super::helper::for_each_part(pool, &|t| {
                    for bi in batches * t / pool..batches * (t + 1) / pool {
                        product(bi, 1, Some(t));
                    }
                });
            } else {
                for bi in 0..batches {
                    product(bi, threads, None);
                }
            }
        }
        (
            Step::Transpose {
                src,
                dst,
                shape,
                perm,
            },
            Exec::Plain,
        ) => {
            let (s, d) = bufs.read_write(*src, *dst);
            native::transpose(s, d, shape, perm);
        }
        (
            Step::Conv {
                pass,
                geo,
                a,
                b,
                out,
            },
            Exec::Conv { scratch },
        ) => {
            let mut o = bufs.take(*out);
            let per = geo.scratch_per_thread(*pass).max(1);
            let threads = rayon::current_num_threads().min(scratch.len() / per);
            geo.run(*pass, bufs.get(*a), bufs.get(*b), &mut o, scratch, threads);
            bufs.put(*out, o);
        }
        (Step::Pool { geo, x, gy, out }, Exec::Plain) => {
            let mut o = bufs.take(*out);
            match gy {
                None => geo.forward(bufs.get(*x), &mut o),
                Some(gy) => geo.backward(bufs.get(*x), bufs.get(*gy), &mut o),
            }
            bufs.put(*out, o);
        }
        (Step::Copy { parts, out }, Exec::Plain) => {
            let mut o = bufs.take(*out);
            for (src, blocks) in parts.iter() {
                native::copy_blocks(blocks, bufs.get(*src), &mut o);
            }
            bufs.put(*out, o);
        }
        (
            &Step::Random {
                dist,
                salt,
                key,
                out,
                count,
            },
            Exec::Plain,
        ) => {
            let key = crate::rng::key(bufs.get(key));
            crate::rng::fill(dist, salt, key, &mut bufs.get_mut(out)[..count]);
        }
        (Step::Rows(r), Exec::Plain) => {
            let mut o = bufs.take(r.out);
            let done = rows(sched, r, bufs.get(r.src), bufs.get(r.idx), &mut o);
            bufs.put(r.out, o);
            done?;
        }
        (Step::Scan(sc), Exec::Scan(body)) => {
            let mut o = bufs.take(sc.out);
            let r = run_scan(sc, body, bufs, &mut o);
            bufs.put(sc.out, o);
            r?;
        }
        (Step::Host { node, out }, Exec::Plain) => {
            let node = *node;
            let data = &sched.graph.nodes[node];
            let args: HashMap<Node, Tensor> = data
                .op
                .args()
                .into_iter()
                .map(|a| {
                    // schedule::build gives a host step only when each of
                    // its arguments has a buffer (Builder::host_step).
                    let b = sched
                        .buf(a)
                        .expect("the schedule stores a host step's arguments");
                    let t = Tensor::new(sched.shapes[a].clone(), bufs.get(b).to_vec());
                    (a, t)
                })
                .collect();
            let v = interp::eval_op(
                &sched.graph,
                &data.op,
                data.span,
                &|a| &args[&a],
                &sched.shapes[node],
            )?;
            bufs.get_mut(*out).copy_from_slice(&v.data);
        }
        (step, _) => {
            return Err(internal(format!(
                "no compiled form for {}",
                step.describe(&sched.graph)
            )))
        }
    }
    Ok(())
}

/// A gather or scatter-add into `out`, as [`crate::schedule::Rows`] says.
fn rows(
    sched: &Schedule,
    r: &crate::schedule::Rows,
    src: &[f32],
    idx: &[f32],
    out: &mut [f32],
) -> Result<(), Error> {
    let w = r.width;
    if r.scatter {
        out.fill(0.0);
    }
    for (k, &x) in idx[..r.count].iter().enumerate() {
        let Some(row) = crate::schedule::index_row(x, r.rows) else {
            return Err(Error::Index {
                op: r.op_name(),
                value: x,
                len: r.rows,
                span: sched.graph.nodes[r.node].span,
            });
        };
        if r.scatter {
            let to = &mut out[row * w..][..w];
            to.iter_mut()
                .zip(&src[k * w..][..w])
                .for_each(|(o, v)| *o += v);
        } else {
            out[k * w..][..w].copy_from_slice(&src[row * w..][..w]);
        }
    }
    Ok(())
}

/// Runs a loop's body once per step: the carry is `init` at the first
/// step, then the previous step's result; every result is stacked into
/// `out` at its step's index (or added up, for a summed loop). The body's
/// operands are bound to the loop's storage, not copied: its extra
/// arguments to their buffers, its sequences' slots to the step's slices,
/// its carry to `init` or to the previous result in `out`.
fn run_scan(
    sc: &ScanStep,
    body: &mut Program,
    outer: &Buffers,
    out: &mut [f32],
) -> Result<(), Error> {
    if !body.sched.params.is_empty() {
        return Err(internal("a loop body reads parameters of its own"));
    }
    let r = scan_steps(sc, body, outer, out);
    body.bufs.unbind_all();
    r
}

/// The most floats of a loop's stacked result, or of a step's slice of a
/// sequence, that [`scan_steps`] prefetches for the next step: 256 KiB, a
/// quarter of the L2 cache of the CPUs measured (Zen 4), so that it stays
/// there beside the body's own buffers. (lstm_train's step stacks 28672
/// floats.)
const PREFETCH_SLOT_MAX: usize = 1 << 16;

/// Asks for the `len` floats at `p` to be brought into the L1 cache (a
/// line about to be written or read is then there when the access comes).
fn prefetch(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(16) {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                p.wrapping_add(line) as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// [`run_scan`]'s steps; the caller ends the bindings.
fn scan_steps(
    sc: &ScanStep,
    body: &mut Program,
    outer: &Buffers,
    out: &mut [f32],
) -> Result<(), Error> {
    let n_xs = sc.xs.len();
    // SAFETY (every binding below): the loop's operands are not its
    // output (the verifier's `distinct`), so nothing writes them while it
    // runs, and they outlive it; the body never writes its inputs (rule
    // 7). The carry's binding into `out` is a previous step's result,
    // which the steps after it do not write.
    for (k, &a) in sc.args.iter().enumerate() {
        if let Some(b) = sc.slots[1 + n_xs + k] {
            unsafe { body.bufs.bind(b, outer.get(a)) };
        }
    }
    let cl = sc.carry_len;
    let result = body.sched.outputs[0];
    if sc.sum && sc.steps == 0 {
        out.fill(0.0);
    }
    // From here on `out` is reached through `base` alone: the carry's
    // binding points into it.
    let base = out.as_mut_ptr();
    // A stacked result that is the body's own buffer is written by the
    // body straight into its step's place in `out`; a summed one, or one
    // of the body's operands (a body may return one), is copied there.
    let in_place = !sc.sum && !sc.slots.contains(&Some(result));
    let in_parts = body.runs_in_parts();
    for i in 0..sc.steps {
        let (t, prev) = sc.order(i);
        if in_place {
            // SAFETY: step `t`'s place, inside `out` (rule 6), which
            // nothing else reads or writes during the step: the carry is
            // the previous step's place, the other operands are outside
            // `out` (`distinct`).
            unsafe { body.bufs.bind_out(result, base.add(t * cl)) };
            // The next step's place is brought into the cache for writing
            // while this step runs (its GEMMs leave the memory idle), so
            // that the body's stores there do not wait for it.
            if i + 1 < sc.steps && cl <= PREFETCH_SLOT_MAX && !in_parts {
                prefetch(base.wrapping_add(sc.order(i + 1).0 * cl), cl);
            }
        }
        if let Some(b) = sc.slots[0] {
            let carry = match i {
                0 => outer.get(sc.init),
                // SAFETY: `prev` is a result already written, inside
                // `out` (the verifier's rule 6).
                _ => unsafe { std::slice::from_raw_parts(base.add(prev * cl), cl) },
            };
            unsafe { body.bufs.bind(b, carry) };
        }
        for (j, &x) in sc.xs.iter().enumerate() {
            if let Some(b) = sc.slots[1 + j] {
                let len = sc.step_lens[j];
                unsafe { body.bufs.bind(b, &outer.get(x)[t * len..][..len]) };
                // And the next step's slice, read then.
                if i + 1 < sc.steps && len <= PREFETCH_SLOT_MAX && !in_parts {
                    let next = outer.get(x).as_ptr().wrapping_add(sc.order(i + 1).0 * len);
                    prefetch(next, len);
                }
            }
        }
        body.execute()?;
        if in_place {
            continue;
        }
        // The body's result is then one of its operands, or a sum's: never
        // step `t`'s place in `out`.
        let r = body.bufs.get(result);
        // SAFETY: `t * cl + cl` lies inside `out` (rule 6), and `r`, as
        // said, does not overlap it.
        unsafe {
            let to = base.add(if sc.sum { 0 } else { t * cl });
            if !sc.sum || i == 0 {
                std::ptr::copy_nonoverlapping(r.as_ptr(), to, cl);
            } else {
                for (k, v) in r.iter().enumerate() {
                    *to.add(k) += v;
                }
            }
        }
    }
    Ok(())
}

/// Runs loop kernel `f` over `lo..hi` of its outermost dim, split over
/// the rayon pool when the range is large and each thread writes its own
/// part of the output.
///
/// # Safety
///
/// `args` must hold the kernel's output and access buffers, each as long
/// as the kernel's strides reach over `lo..hi`.
unsafe fn call_loop(
    f: Kern,
    args: &SendPtr,
    kernel: &crate::schedule::LoopKernel,
    lo: usize,
    hi: usize,
) {
    let outer = hi - lo;
    let inner: usize = kernel.dims[1..].iter().product();
    let threads = rayon::current_num_threads();
    // A wide kernel costs several times a plain loop's time per element
    // (it is chosen for its transcendentals): it is split from a smaller
    // size, smaller still when the helper takes the second part.
    let with_helper = super::helper::takes_a_part(threads);
    let (room, big) = match f {
        Kern::Wide { slots, .. } => (
            slots >= threads,
            outer * inner >= super::threads::wide_loop_points(with_helper),
        ),
        Kern::Jit(_) => (
            true,
            super::threads::jit_loop_splits(outer * inner, kernel.exprs.len(), with_helper),
        ),
    };
    let split = room && big && kernel.splittable() && outer >= threads && threads > 1;
    if split {
        super::helper::for_each_part(threads, &|t| {
            let a = lo + outer * t / threads;
            let b = lo + outer * (t + 1) / threads;
            // SAFETY: as the caller promised, over a part of its range;
            // each thread writes a disjoint range of the outer loop.
            unsafe { f.call(args, kernel, a, b, t) };
        });
    } else {
        // SAFETY: as the caller promised.
        unsafe { f.call(args, kernel, lo, hi, 0) };
    }
}

impl Kern {
    /// Runs the kernel over `lo..hi` of its outermost dim, as thread
    /// `t` of the split.
    ///
    /// # Safety
    ///
    /// As [`call_loop`]'s, over that range; no other thread runs this
    /// kernel as thread `t` at the same time.
    unsafe fn call(
        self,
        args: &SendPtr,
        kernel: &crate::schedule::LoopKernel,
        lo: usize,
        hi: usize,
        t: usize,
    ) {
        match self {
            // SAFETY: the caller's promise.
            Kern::Jit(f) => unsafe { f(args.0, lo as i64, hi as i64) },
            Kern::Wide {
                level,
                scratch,
                per,
                slots,
            } => {
                assert!(t < slots, "a wide kernel's thread has a scratch slot");
                // SAFETY: slot `t` is this thread's alone; the rest is the
                // caller's promise.
                unsafe {
                    let regs = std::slice::from_raw_parts_mut(scratch.add(t * per), per);
                    wide::run(level, kernel, args.0, lo, hi, regs)
                }
            }
        }
    }
}

struct SendPtr(*const *mut f32);
// SAFETY: the pointers are only dereferenced by kernels writing disjoint
// ranges while the owning `Program` is borrowed mutably.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

unsafe extern "C" fn dummy_kernel(_: *const *mut f32, _: i64, _: i64) {}
