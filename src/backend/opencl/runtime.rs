//! A schedule on an OpenCL device: the program source of
//! [`codegen::program_source`] built once (or taken from the disk cache),
//! one device buffer per [`BufId`], and per step the kernels it enqueues
//! with their arguments bound once. A run enqueues every step on the
//! process's in-order queue without waiting between them; the host waits
//! only to read results (outputs, updates) and for the host steps
//! (gather, scatter, random draws), which run the interpreter's routine
//! on the buffers' contents.
//!
//! A `scan` runs its body's kernels once per step, the carry and the step
//! slices copied between device buffers: nothing goes through the host.

use super::codegen::{self, Launch};
use super::{cache, device};
use crate::backend::interp;
use crate::exec::Error;
use crate::ir::{InputId, Node, ParamId};
use crate::schedule::{BufId, Gemm, ScanStep, Schedule, Step};
use crate::tensor::Tensor;
use cranelift_entity::{EntityRef, SecondaryMap};
use ocl::{Buffer, Kernel, SpatialDims};
use std::collections::HashMap;

fn internal(msg: impl Into<String>) -> Error {
    Error::Backend {
        message: msg.into(),
    }
}

fn enqueue_error(what: &str, e: ocl::Error) -> Error {
    Error::Device {
        message: format!("OpenCL: {what}: {e}"),
        help:
            "the device may be out of memory or its driver failed; `--backend jit` runs on the CPU"
                .into(),
    }
}

/// A kernel with its arguments bound, and its work sizes.
struct Launched {
    kernel: Kernel,
    global: SpatialDims,
    local: SpatialDims,
}

impl Launched {
    fn enqueue(&self, gpu: &device::Gpu) -> Result<(), Error> {
        // SAFETY: the kernel's buffer arguments are this program's buffers,
        // alive as long as it is, each as long as the schedule's verifier
        // checked for the kernel's accesses.
        unsafe {
            self.kernel
                .cmd()
                .queue(&gpu.queue)
                .global_work_size(self.global)
                .local_work_size(self.local)
                .enq()
        }
        .map_err(|e| enqueue_error("enqueueing a kernel", e))
    }
}

/// What the program keeps for one step.
enum Exec {
    /// Nothing to do (an empty product).
    Nothing,
    Kernels(Vec<Launched>),
    Scan {
        body: Box<Program>,
        /// `out += body result` for a summed loop.
        add: Option<Box<Launched>>,
    },
    Host,
}

pub struct Program {
    gpu: &'static device::Gpu,
    sched: Schedule,
    exec: Vec<Exec>,
    bufs: Vec<Buffer<f32>>,
    /// The GEMMs' offset tables, alive as long as their kernels.
    _tables: Vec<Buffer<i64>>,
    /// The index checks of the gathers and scatters (top level only; loop
    /// bodies write into the same buffer).
    status: Option<IndexStatus>,
    /// Runs, and floats written to and read from the device, for
    /// `NNC_LOG=opencl` (logged when the program is dropped).
    runs: usize,
    written: std::cell::Cell<u64>,
    read: std::cell::Cell<u64>,
}

impl Drop for Program {
    fn drop(&mut self) {
        if self.runs > 0 {
            crate::log::lines(
                "opencl",
                &[format!(
                    "program of {} steps: {} runs, {} floats written to the device, {} read back",
                    self.sched.steps.len(),
                    self.runs,
                    self.written.get(),
                    self.read.get()
                )],
            );
        }
    }
}

/// The device, the generated kernels of a schedule, and the library's.
#[derive(Clone, Copy)]
struct Programs<'a> {
    gpu: &'static device::Gpu,
    generated: &'a ocl::Program,
    /// The kernel each step runs ([`codegen::Names`]).
    names: &'a codegen::Names,
    library: &'static ocl::Program,
}

/// Where the gathers and scatters of a program (loop bodies included)
/// report a bad index: `[step number + 1, the index's bits]`, zero while
/// none was seen; and what each of those steps is.
struct IndexStatus {
    buf: Buffer<i32>,
    steps: Vec<crate::schedule::Rows>,
    spans: Vec<crate::diag::Span>,
}

/// The library program ([`codegen::library`]), built once per process.
fn library(gpu: &device::Gpu) -> Result<&'static ocl::Program, Error> {
    static LIBRARY: std::sync::OnceLock<Result<ocl::Program, Error>> = std::sync::OnceLock::new();
    LIBRARY
        .get_or_init(|| build(gpu, &codegen::library(), true))
        .as_ref()
        .map_err(Clone::clone)
}

/// The build options: none that change the arithmetic.
const OPTIONS: &str = "";

/// The built program for `source`; with `cached`, from the disk cache
/// when an entry for it exists and loads, else from source (then stored).
fn build(gpu: &device::Gpu, source: &str, cached: bool) -> Result<ocl::Program, Error> {
    let s = &gpu.summary;
    let key = format!(
        "nnc {}\n{}\n{}\n{}\n{}\n{OPTIONS}\n{source}",
        env!("CARGO_PKG_VERSION"),
        s.platform,
        s.name,
        s.driver,
        s.version
    );
    let shown = cache::path(&key).map_or_else(String::new, |p| p.display().to_string());
    if let Some(binary) = cached.then(|| cache::load(&key)).flatten() {
        let bins = [&binary[..]];
        let built = ocl::Program::builder()
            .devices(gpu.device)
            .binaries(&bins)
            .cmplr_opt(OPTIONS)
            .build(&gpu.context);
        match built {
            Ok(p) => {
                crate::log::lines("opencl", &[format!("program from the cache: {shown}")]);
                return Ok(p);
            }
            Err(e) => crate::log::lines(
                "opencl",
                &[format!(
                    "cache entry {shown} did not load ({e}); building from source"
                )],
            ),
        }
    }
    let started = std::time::Instant::now();
    let program = ocl::Program::builder()
        .devices(gpu.device)
        .src(source)
        .cmplr_opt(OPTIONS)
        .build(&gpu.context)
        .map_err(|e| build_failed(source, &e))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !cached {
        crate::log::lines(
            "opencl",
            &[format!(
                "program built from source in {ms:.0} ms; not cached"
            )],
        );
        return Ok(program);
    }
    crate::log::lines(
        "opencl",
        &[format!(
            "program built from source in {ms:.0} ms; cached as {shown}"
        )],
    );
    if let Ok(ocl::enums::ProgramInfoResult::Binaries(bins)) =
        program.info(ocl::enums::ProgramInfo::Binaries)
    {
        if let Some(b) = bins.first() {
            cache::store(&key, b);
        }
    }
    Ok(program)
}

/// A kernel source the driver rejected: a compiler bug. The source and the
/// build log go to a file the error names.
fn build_failed(source: &str, e: &ocl::Error) -> Error {
    let path = std::env::temp_dir().join(format!("nnc-opencl-{}.cl", std::process::id()));
    let text = format!("{source}\n/* build log:\n{e}\n*/\n");
    let saved = match crate::train::checkpoint::write_atomic(&path, text.as_bytes()) {
        Ok(()) => format!("the kernels and the build log are in {}", path.display()),
        Err(w) => format!("(could not save them to {}: {w})", path.display()),
    };
    internal(format!(
        "the OpenCL driver rejected the generated kernels; {saved}"
    ))
}

/// `v` as an OpenCL `int`, or why the step is too large for the kernels.
fn int(v: impl TryInto<i32>, what: &str) -> Result<i32, Error> {
    v.try_into().map_err(|_| Error::Device {
        message: format!("{what} is too large for the OpenCL kernels (more than 2^31 − 1)"),
        help: "use a smaller batch, or `--backend jit`".into(),
    })
}

/// Checks the buffers against the device's memory before allocating.
fn check_memory(gpu: &device::Gpu, sched: &Schedule) -> Result<(), Error> {
    let d = &gpu.summary;
    let total = 4 * sched.floats() as u64;
    let biggest = sched
        .bufs
        .iter()
        .max_by_key(|(_, &len)| len)
        .map(|(b, _)| b);
    let largest = biggest.map_or(0, |b| sched.bufs[b]) as u64 * 4;
    // The tensor that buffer holds, to name it (not a part of it written
    // in place: fusion's `concat-in-place`).
    let shape = sched
        .graph
        .nodes
        .keys()
        .find(|&n| {
            biggest.is_some_and(|b| {
                sched.buf(n) == Some(b)
                    && sched.shapes[n].iter().product::<usize>() == sched.bufs[b]
            })
        })
        .map_or_else(String::new, |n| {
            format!(" (a tensor of shape {:?})", sched.shapes[n])
        });
    let human = crate::exec::memory::human;
    if d.max_alloc > 0 && largest > d.max_alloc {
        return Err(Error::Device {
            message: format!(
                "a buffer of {}{shape} does not fit the OpenCL device's largest allocation ({}, {})",
                human(largest),
                human(d.max_alloc),
                d.name
            ),
            help: "use a smaller batch or smaller dimensions".into(),
        });
    }
    if d.global_mem > 0 && total > d.global_mem {
        return Err(Error::Device {
            message: format!(
                "this program's buffers need {} of device memory (the largest {}{shape}); {} has {}",
                human(total),
                human(largest),
                d.name,
                human(d.global_mem)
            ),
            help: "use a smaller batch or smaller dimensions".into(),
        });
    }
    Ok(())
}

impl Program {
    /// Builds the kernels of `sched` (verified by
    /// [`crate::schedule::build`] in debug builds) and allocates its
    /// buffers.
    pub fn new(sched: Schedule) -> Result<Program, Error> {
        let gpu = device::gpu()?;
        check_memory(gpu, &sched)?;
        let library = library(gpu)?;
        let (source, names) = codegen::program(&sched);
        let program = build(gpu, &source, cache::models())?;
        let programs = Programs {
            gpu,
            generated: &program,
            names: &names,
            library,
        };
        let status = Buffer::<i32>::builder()
            .queue(gpu.queue.clone())
            .len(2)
            .fill_val(0)
            .build()
            .map_err(|e| enqueue_error("allocating a status buffer", e))?;
        let mut index = IndexStatus {
            buf: status,
            steps: Vec::new(),
            spans: Vec::new(),
        };
        let mut p = Program::with(gpu, programs, sched, &mut Vec::new(), &mut index)?;
        if !index.steps.is_empty() {
            p.status = Some(index);
        }
        Ok(p)
    }

    /// The program of `sched` from the kernels of `program`; `path` is the
    /// step path of the loop whose body `sched` is (empty at the top).
    fn with(
        gpu: &'static device::Gpu,
        programs: Programs,
        sched: Schedule,
        path: &mut Vec<usize>,
        index: &mut IndexStatus,
    ) -> Result<Program, Error> {
        let bufs = sched
            .bufs
            .values()
            .map(|&len| {
                Buffer::<f32>::builder()
                    .queue(gpu.queue.clone())
                    .len(len.max(1))
                    .fill_val(0.0f32)
                    .build()
                    .map_err(|e| enqueue_error("allocating a buffer", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for &(c, b) in &sched.consts {
            let data = &sched.graph.consts[c].data;
            if !data.is_empty() {
                bufs[b.index()]
                    .write(&data[..])
                    .enq()
                    .map_err(|e| enqueue_error("uploading a constant", e))?;
            }
        }
        let mut tables = Vec::new();
        let mut exec = Vec::with_capacity(sched.steps.len());
        for (i, step) in sched.steps.iter().enumerate() {
            path.push(i);
            let e = Self::step_exec(programs, &sched, step, &bufs, &mut tables, path, index);
            path.pop();
            exec.push(e?);
        }
        Ok(Program {
            gpu,
            sched,
            exec,
            bufs,
            _tables: tables,
            status: None,
            runs: 0,
            written: Default::default(),
            read: Default::default(),
        })
    }

    fn step_exec(
        programs: Programs,
        sched: &Schedule,
        step: &Step,
        bufs: &[Buffer<f32>],
        tables: &mut Vec<Buffer<i64>>,
        path: &mut Vec<usize>,
        index: &mut IndexStatus,
    ) -> Result<Exec, Error> {
        let gpu = programs.gpu;
        let buf = |b: BufId| &bufs[b.index()];
        // The library's kernels are named `nnc_…`, the generated `k…`.
        let kernel = |name: &str| {
            let program = match name.starts_with("nnc_") {
                true => programs.library,
                false => programs.generated,
            };
            let mut k = Kernel::builder();
            k.program(program).name(name).queue(gpu.queue.clone());
            k
        };
        let built = |k: &mut ocl::builders::KernelBuilder| {
            k.build()
                .map_err(|e| internal(format!("binding kernel arguments: {e}")))
        };
        let items = |n: usize| {
            let (g, l) = Launch::Items(n).sizes();
            (SpatialDims::One(g), SpatialDims::One(l))
        };
        Ok(match step {
            Step::Loop {
                kernel: lk,
                out,
                args,
                also,
                ..
            } => {
                let mut k = kernel(&programs.names.of(path));
                k.arg(buf(*out));
                for a in args.iter().chain(also) {
                    k.arg(buf(*a));
                }
                let (g, l) = codegen::loop_launch(lk).sizes();
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: SpatialDims::One(g),
                    local: SpatialDims::One(l),
                }])
            }
            Step::Transpose {
                src,
                dst,
                shape,
                perm,
            } => {
                let lk = codegen::transpose_kernel(shape, perm);
                let mut k = kernel(&programs.names.of(path));
                k.arg(buf(*dst)).arg(buf(*src));
                let (g, l) = codegen::loop_launch(&lk).sizes();
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: SpatialDims::One(g),
                    local: SpatialDims::One(l),
                }])
            }
            Step::MatMul {
                a,
                b,
                out,
                a_offs,
                b_offs,
                dims,
                epilogue,
            } => {
                let Gemm {
                    m,
                    k: kk,
                    n,
                    a_rc,
                    b_rc,
                } = *dims;
                if m == 0 || n == 0 || a_offs.is_empty() {
                    return Ok(Exec::Nothing);
                }
                let table = |offs: &Vec<usize>| {
                    let v: Vec<i64> = offs.iter().map(|&o| o as i64).collect();
                    Buffer::<i64>::builder()
                        .queue(gpu.queue.clone())
                        .len(v.len())
                        .copy_host_slice(&v)
                        .build()
                        .map_err(|e| enqueue_error("allocating a GEMM table", e))
                };
                let (ta, tb) = (table(a_offs)?, table(b_offs)?);
                let mut k = match epilogue {
                    Some(_) => kernel(&programs.names.of(path)),
                    None => kernel("nnc_gemm"),
                };
                k.arg(buf(*out))
                    .arg(buf(*a))
                    .arg(buf(*b))
                    .arg(&ta)
                    .arg(&tb)
                    .arg(int(m, "a matrix's row count")?)
                    .arg(int(n, "a matrix's column count")?)
                    .arg(int(kk, "a matrix product's inner size")?)
                    .arg(int(a_rc.0, "a stride")?)
                    .arg(int(a_rc.1, "a stride")?)
                    .arg(int(b_rc.0, "a stride")?)
                    .arg(int(b_rc.1, "a stride")?);
                if let Some(e) = epilogue {
                    k.arg(buf(e.out));
                    for &a in &e.args {
                        k.arg(buf(a));
                    }
                }
                let kernel = built(&mut k)?;
                tables.push(ta);
                tables.push(tb);
                let t = codegen::GEMM_TILE;
                let l = codegen::GEMM_LOCAL;
                Exec::Kernels(vec![Launched {
                    kernel,
                    global: SpatialDims::Three(n.div_ceil(t) * l, m.div_ceil(t) * l, a_offs.len()),
                    local: SpatialDims::Three(l, l, 1),
                }])
            }
            Step::Copy { parts, out } => {
                let mut launched = Vec::new();
                for (src, bl) in parts {
                    if bl.count * bl.len == 0 {
                        continue;
                    }
                    let mut k = kernel("nnc_copy");
                    k.arg(buf(*out)).arg(buf(*src));
                    for v in [
                        bl.count,
                        bl.len,
                        bl.src_at,
                        bl.src_stride,
                        bl.dst_at,
                        bl.dst_stride,
                    ] {
                        k.arg(v as i64);
                    }
                    let (g, l) = items(bl.count * bl.len);
                    launched.push(Launched {
                        kernel: built(&mut k)?,
                        global: g,
                        local: l,
                    });
                }
                Exec::Kernels(launched)
            }
            Step::Conv {
                pass,
                geo,
                a,
                b,
                out,
            } => {
                use crate::schedule::ConvPass;
                let (name, launch) = match pass {
                    ConvPass::Forward => (
                        "nnc_conv_forward",
                        Launch::Items(geo.n * geo.o * geo.oh * geo.ow),
                    ),
                    ConvPass::BackInput => (
                        "nnc_conv_back_input",
                        Launch::Items(geo.n * geo.c * geo.h * geo.w),
                    ),
                    ConvPass::BackWeight => (
                        "nnc_conv_back_weight",
                        Launch::Groups(geo.o * geo.c * geo.kh * geo.kw),
                    ),
                };
                let mut k = kernel(name);
                k.arg(buf(*out)).arg(buf(*a)).arg(buf(*b));
                for v in [
                    geo.n, geo.c, geo.h, geo.w, geo.o, geo.kh, geo.kw, geo.oh, geo.ow, geo.stride,
                    geo.pad,
                ] {
                    k.arg(int(v, "a convolution's size")?);
                }
                let (g, l) = launch.sizes();
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: SpatialDims::One(g),
                    local: SpatialDims::One(l),
                }])
            }
            Step::Pool { geo, x, gy, out } => {
                let op = match geo.op {
                    crate::ir::PoolOp::Max => 0i32,
                    crate::ir::PoolOp::Avg => 1,
                };
                let mut k = kernel(match gy {
                    None => "nnc_pool_forward",
                    Some(_) => "nnc_pool_backward",
                });
                k.arg(buf(*out)).arg(buf(*x));
                if let Some(gy) = gy {
                    k.arg(buf(*gy));
                }
                k.arg(op);
                for v in [
                    geo.planes, geo.h, geo.w, geo.oh, geo.ow, geo.size, geo.stride,
                ] {
                    k.arg(int(v, "a pooling's size")?);
                }
                let n = match gy {
                    None => geo.planes * geo.oh * geo.ow,
                    Some(_) => geo.planes * geo.h * geo.w,
                };
                let (g, l) = items(n);
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: g,
                    local: l,
                }])
            }
            &Step::Random {
                dist,
                salt,
                key,
                out,
                count,
            } => {
                if count == 0 {
                    return Ok(Exec::Nothing);
                }
                let mut k = kernel("nnc_random");
                k.arg(buf(out))
                    .arg(buf(key))
                    .arg(count as i64)
                    .arg(match dist {
                        crate::ir::Dist::Normal => 0i32,
                        crate::ir::Dist::Uniform => 1,
                    })
                    .arg(salt);
                let (g, l) = items(count);
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: g,
                    local: l,
                }])
            }
            Step::Rows(r) => {
                if r.count * r.width == 0 {
                    return Ok(Exec::Nothing);
                }
                let mut k = kernel(match r.scatter {
                    true => "nnc_scatter_add",
                    false => "nnc_gather",
                });
                k.arg(buf(r.out))
                    .arg(buf(r.src))
                    .arg(buf(r.idx))
                    .arg(r.count as i64)
                    .arg(r.width as i64)
                    .arg(int(r.rows, "a table's row count")?)
                    .arg(&index.buf)
                    .arg(int(index.steps.len(), "the number of gathers")?);
                index.steps.push(*r);
                index.spans.push(sched.graph.nodes[r.node].span);
                let (g, l) = items(if r.scatter {
                    r.width
                } else {
                    r.count * r.width
                });
                Exec::Kernels(vec![Launched {
                    kernel: built(&mut k)?,
                    global: g,
                    local: l,
                }])
            }
            Step::Scan(sc) => {
                let body = Program::with(gpu, programs, sc.body.clone(), path, index)?;
                let add = match sc.sum {
                    true => {
                        let result = body.sched.outputs[0];
                        let mut k = kernel("nnc_add_into");
                        k.arg(buf(sc.out))
                            .arg(&body.bufs[result.index()])
                            .arg(0i64)
                            .arg(sc.carry_len as i64);
                        let (g, l) = items(sc.carry_len);
                        Some(Box::new(Launched {
                            kernel: built(&mut k)?,
                            global: g,
                            local: l,
                        }))
                    }
                    false => None,
                };
                Exec::Scan {
                    body: Box::new(body),
                    add,
                }
            }
            Step::Host { .. } => Exec::Host,
        })
    }

    fn write(&self, b: BufId, data: &[f32]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.written.set(self.written.get() + data.len() as u64);
        self.bufs[b.index()]
            .write(data)
            .enq()
            .map_err(|e| enqueue_error("uploading", e))
    }

    fn read(&self, b: BufId) -> Result<Vec<f32>, Error> {
        let len = self.sched.bufs[b];
        let mut v = vec![0.0f32; len];
        self.read.set(self.read.get() + len as u64);
        if len > 0 {
            self.bufs[b.index()]
                .read(&mut v)
                .len(len)
                .enq()
                .map_err(|e| enqueue_error("reading a result", e))?;
        }
        Ok(v)
    }

    /// Enqueues every step in order.
    fn execute(&mut self) -> Result<(), Error> {
        self.runs += 1;
        for si in 0..self.sched.steps.len() {
            match &self.exec[si] {
                Exec::Nothing => {}
                Exec::Kernels(ks) => {
                    for k in ks {
                        k.enqueue(self.gpu)?;
                    }
                }
                Exec::Host => {
                    let Step::Host { node, out } = self.sched.steps[si] else {
                        return Err(internal("a host step without its description"));
                    };
                    self.host_step(node, out)?;
                }
                Exec::Scan { .. } => self.scan(si)?,
            }
        }
        Ok(())
    }

    /// Runs the interpreter's routine for `node` on its arguments' buffers.
    fn host_step(&self, node: Node, out: BufId) -> Result<(), Error> {
        let sched = &self.sched;
        let data = &sched.graph.nodes[node];
        let mut args: HashMap<Node, Tensor> = HashMap::new();
        for a in data.op.args() {
            // schedule::build gives a host step only when each of its
            // arguments has a buffer (Builder::host_step).
            let b = sched
                .buf(a)
                .ok_or_else(|| internal("a host step's argument has no buffer"))?;
            args.insert(a, Tensor::new(sched.shapes[a].clone(), self.read(b)?));
        }
        let v = interp::eval_op(
            &sched.graph,
            &data.op,
            data.span,
            &|a| &args[&a],
            &sched.shapes[node],
        )?;
        self.write(out, &v.data)
    }

    /// Runs loop step `si`'s body once per step (see the JIT's `run_scan`
    /// for the protocol; here every copy is between device buffers).
    fn scan(&mut self, si: usize) -> Result<(), Error> {
        let Step::Scan(sc) = &self.sched.steps[si] else {
            return Err(internal("a loop step without its description"));
        };
        let sc: &ScanStep = sc;
        let Exec::Scan { body, add } = &mut self.exec[si] else {
            return Err(internal("a loop step without its body"));
        };
        let outer = &self.bufs;
        let gpu = self.gpu;
        let copy = |(src, sa): (&Buffer<f32>, usize), (dst, da): (&Buffer<f32>, usize), len| {
            if len == 0 {
                return Ok(());
            }
            src.copy(dst, Some(da), Some(len))
                .offset(sa)
                .queue(&gpu.queue)
                .enq()
                .map_err(|e| enqueue_error("copying", e))
        };
        let n_xs = sc.xs.len();
        for (k, &a) in sc.args.iter().enumerate() {
            if let Some(b) = sc.slots[1 + n_xs + k] {
                let len = body.sched.bufs[b];
                copy((&outer[a.index()], 0), (&body.bufs[b.index()], 0), len)?;
            }
        }
        let cl = sc.carry_len;
        let out = &outer[sc.out.index()];
        let result = body.sched.outputs[0].index();
        if sc.sum && sc.steps == 0 && self.sched.bufs[sc.out] > 0 {
            out.cmd()
                .fill(0.0f32, None)
                .queue(&gpu.queue)
                .enq()
                .map_err(|e| enqueue_error("clearing", e))?;
        }
        for i in 0..sc.steps {
            let (t, prev) = sc.order(i);
            if let Some(b) = sc.slots[0] {
                let carry = if i == 0 {
                    (&outer[sc.init.index()], 0)
                } else {
                    (out, prev * cl)
                };
                copy(carry, (&body.bufs[b.index()], 0), cl)?;
            }
            for (j, &x) in sc.xs.iter().enumerate() {
                if let Some(b) = sc.slots[1 + j] {
                    let len = sc.step_lens[j];
                    copy(
                        (&outer[x.index()], t * len),
                        (&body.bufs[b.index()], 0),
                        len,
                    )?;
                }
            }
            body.execute()?;
            let r = &body.bufs[result];
            match add {
                Some(k) if i > 0 => k.enqueue(gpu)?,
                Some(_) => copy((r, 0), (out, 0), cl)?,
                None => copy((r, 0), (out, t * cl), cl)?,
            }
        }
        Ok(())
    }
}

impl crate::backend::compiled::Compile for Program {
    type Early = ();

    fn compile(sched: Schedule) -> Result<Program, Error> {
        Program::new(sched)
    }

    fn load_inputs(&mut self, inputs: &SecondaryMap<InputId, Option<Tensor>>) -> Result<(), Error> {
        let g = &self.sched.graph;
        for &(i, b) in &self.sched.inputs {
            let src = match &inputs[i] {
                Some(t) => &t.data,
                None => match g.inputs[i].default {
                    Some(c) => &g.consts[c].data,
                    None => continue,
                },
            };
            let want = self.sched.bufs[b];
            if want != src.len() {
                return Err(Error::BadLength {
                    name: g.inputs[i].name.clone(),
                    expected: want,
                    found: src.len(),
                    span: g.inputs[i].span,
                });
            }
            self.write(b, src)?;
        }
        Ok(())
    }

    /// Uploads the parameters, runs, reads the outputs and (with
    /// `update`) the updated parameters back.
    fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        outputs: bool,
        update: bool,
    ) -> Result<Vec<Tensor>, Error> {
        self.upload_params(params)?;
        self.execute()?;
        self.check_indices()?;
        let mut outs = Vec::new();
        if outputs {
            outs = self.read_outputs()?;
        }
        if update {
            for &(p, b) in &self.sched.updates {
                params[p].data = self.read(b)?;
            }
        }
        self.gpu
            .queue
            .finish()
            .map_err(|e| enqueue_error("finishing", e))?;
        Ok(outs)
    }

    const KEEPS_PARAMS: bool = true;

    /// Runs on the parameters in the device's buffers, reads back the
    /// outputs `wanted`, then copies each update into its parameter's
    /// buffer on the device: no parameter crosses to the host.
    fn step_kept(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        upload: bool,
        wanted: &[usize],
    ) -> Result<Vec<Tensor>, Error> {
        if upload {
            self.upload_params(params)?;
        }
        self.execute()?;
        self.check_indices()?;
        let outs = wanted
            .iter()
            .map(|&i| self.output(i))
            .collect::<Result<Vec<_>, _>>()?;
        for &(p, b) in &self.sched.updates {
            match self.sched.params.iter().find(|(q, _)| *q == p) {
                Some(&(_, to)) => {
                    let len = self.sched.bufs[b];
                    if len > 0 {
                        self.bufs[b.index()]
                            .copy(&self.bufs[to.index()], Some(0), Some(len))
                            .queue(&self.gpu.queue)
                            .enq()
                            .map_err(|e| enqueue_error("updating a parameter", e))?;
                    }
                }
                // Updated but not read by this program: the host keeps it.
                None => params[p].data = self.read(b)?,
            }
        }
        Ok(outs)
    }

    fn read_params(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        for &(p, b) in &self.sched.params {
            params[p].data = self.read(b)?;
        }
        Ok(())
    }

    fn read_outputs(&mut self) -> Result<Vec<Tensor>, Error> {
        (0..self.sched.outputs.len())
            .map(|i| self.output(i))
            .collect()
    }
}

impl Program {
    /// The first bad index a gather or scatter of the last run saw, as the
    /// interpreter reports it (the status is cleared for the next run).
    fn check_indices(&self) -> Result<(), Error> {
        let Some(st) = &self.status else {
            return Ok(());
        };
        let mut v = [0i32; 2];
        st.buf
            .read(&mut v[..])
            .enq()
            .map_err(|e| enqueue_error("reading the index status", e))?;
        if v[0] == 0 {
            return Ok(());
        }
        st.buf
            .write(&[0i32, 0][..])
            .enq()
            .map_err(|e| enqueue_error("clearing the index status", e))?;
        let at = (v[0] - 1) as usize;
        let r = st
            .steps
            .get(at)
            .ok_or_else(|| internal("an index status names no step"))?;
        Err(Error::Index {
            op: r.op_name(),
            value: f32::from_bits(v[1] as u32),
            len: r.rows,
            span: st.spans[at],
        })
    }

    /// Output `i`, read from the device.
    fn output(&self, i: usize) -> Result<Tensor, Error> {
        let b = self.sched.outputs[i];
        let n = self.sched.graph.outputs[i].node;
        Ok(Tensor::new(self.sched.shapes[n].clone(), self.read(b)?))
    }

    /// Writes the parameters into their buffers, after checking every
    /// length.
    fn upload_params(&self, params: &SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        for &(p, b) in &self.sched.params {
            let info = &self.sched.graph.params[p];
            let (want, found) = (self.sched.bufs[b], params[p].data.len());
            if want != found {
                return Err(Error::BadLength {
                    name: info.name.clone(),
                    expected: want,
                    found,
                    span: info.span,
                });
            }
        }
        for &(p, b) in &self.sched.params {
            self.write(b, &params[p].data)?;
        }
        Ok(())
    }
}
