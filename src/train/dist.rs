//! Data-parallel training across processes (`mpirun -n N nnc train`,
//! `nnc train --workers N`): every process (a *worker*, MPI's rank)
//! holds the whole model and takes its share of every batch.
//!
//! Each step, worker r runs the phase's local graph
//! ([`pipeline::SplitPhase`]) on rows `[r·n/N, (r+1)·n/N)` of the batch's
//! n rows (the same seeded order on every worker), giving its loss and
//! gradients. An all-reduce sums, weighted by each share's rows, the
//! gradients (in buckets, each started as soon as the backward pass has
//! written it: [`BUCKET_KIB`]), the loss, the states the layers'
//! `assign`s changed (batch norm's running statistics) and two flags (a
//! worker failed, a worker was interrupted); every worker then applies the optimizer's update to
//! the same summed gradients, so all hold the same parameters after
//! every step. The weights make the result the full batch's for a loss
//! that is a mean over the batch's rows (every loss of the standard
//! library is). A worker whose share is empty (a last batch of fewer
//! rows than workers) contributes zeros.
//!
//! Before the first step worker 0's parameters are broadcast to every
//! worker; after every epoch (and mid-epoch checkpoint) the workers
//! compare a hash of their parameters. Worker 0 alone reports, evaluates
//! the validation rows (and broadcasts the figures the others follow:
//! early stopping, plateau schedules) and writes the log and
//! checkpoints; a checkpoint is the same file whatever the number of
//! workers, so it resumes on any.
//! A worker that fails (bad data, a non-finite value) makes every
//! worker stop with its message, prefixed by its rank. One that hangs
//! holds the others in a collective until their timeout
//! (`--worker-timeout`): then they name it and end the job.
//!
//! The engine is MPI (Open MPI through the `mpi` crate, cargo feature
//! `mpi`); without it there is one worker.

use super::data_prep::Prepared;
use crate::backend::Engine;
use crate::diag::{self, code, Diag};
use crate::ir::{Graph, InputId, ParamId};
use crate::pipeline::SplitPhase;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// The collective operations data-parallel training needs.
pub trait Comm {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Starts summing the `len` floats at `buf` element-wise across the
    /// workers, in place, without waiting for it ([`Comm::finish`]
    /// does). Every worker starts its sums in the same order.
    ///
    /// # Safety
    /// The floats stay alive, and nothing reads or writes them, until
    /// `finish` returns.
    unsafe fn start_sum(&self, buf: *mut f32, len: usize);
    /// Lets the sums started move on (MPI moves data only inside its
    /// calls).
    fn progress(&self);
    /// Waits for every sum started.
    fn finish(&self);
    /// Sums `buf` element-wise across the workers, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        // SAFETY: `buf` is borrowed until `finish` has returned.
        unsafe { self.start_sum(buf.as_mut_ptr(), buf.len()) };
        self.finish();
    }
    /// Replaces `buf` by worker 0's.
    fn broadcast(&self, buf: &mut [f32]);
    /// Every worker's `mine`, by rank (each at most [`MESSAGE`] bytes).
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
}

/// The longest error message a worker sends the others.
pub const MESSAGE: usize = 4096;

/// The workers this process trains with: MPI's world when it was started
/// by `mpirun` with more than one process (and nnc has MPI), else none.
///
/// A worker waits at most `timeout` in a collective operation for the
/// others: past it, it names those missing and ends the job.
pub fn world(timeout: std::time::Duration) -> Result<Option<Box<dyn Comm>>, Diag> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    if launched <= 1 {
        return Ok(None);
    }
    // Each worker of this machine gets an equal share of its cores
    // (unless RAYON_NUM_THREADS says otherwise).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(launched);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads((cores / local.max(1)).max(1))
            .build_global();
    }
    mpi_world(launched, timeout)
}

/// This worker's number among the workers of its machine, as the MPI
/// launcher says (Open MPI, MPICH, PMI); `None` when it does not.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok())
    .and_then(|s| s.parse().ok())
}

#[cfg(feature = "mpi")]
fn mpi_world(
    _launched: usize,
    timeout: std::time::Duration,
) -> Result<Option<Box<dyn Comm>>, Diag> {
    match mpi_comm::Mpi::init(timeout) {
        Some(m) => Ok(Some(Box::new(m))),
        None => Err(diag::error(
            code::DEVICE,
            "MPI could not be initialised (was it initialised twice?)",
        )),
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_world(launched: usize, _: std::time::Duration) -> Result<Option<Box<dyn Comm>>, Diag> {
    Err(diag::error(
        code::DEVICE,
        format!("started as one of {launched} MPI processes, but this nnc was built without MPI"),
    )
    .with_notes(vec![
        "help: build with `cargo build --release --features mpi` (Debian: libopenmpi-dev openmpi-bin libclang-dev), or run one process".into(),
    ]))
}

#[cfg(feature = "mpi")]
mod mpi_comm {
    use crate::diag::{Diagnostics, SourceMap};
    use mpi::collective::SystemOperation;
    use mpi::point_to_point::Status;
    use mpi::raw::AsRaw;
    use mpi::request::{Request, Scope, StaticScope};
    use mpi::traits::*;
    use std::cell::{Cell, RefCell};
    use std::time::{Duration, Instant};

    extern "C" {
        /// `MPI_IN_PLACE` (src/train/mpi_in_place.c, built by build.rs).
        fn nnc_mpi_in_place() -> *mut std::ffi::c_void;
    }

    /// The tags of the messages workers exchange about a stall: a
    /// question (which collective are you in?) and its answer.
    const QUESTION: i32 = 7101;
    const ANSWER: i32 = 7102;
    /// How long a collective is polled without pause before its waits
    /// are spaced out (and questions answered).
    const SPIN: Duration = Duration::from_millis(20);
    /// How long a worker that timed out waits for the others' answers.
    const ANSWERS: Duration = Duration::from_secs(2);

    /// MPI's world communicator; finalised when dropped.
    ///
    /// Every collective is started non-blocking and polled, so a worker
    /// never waits in one for longer than `timeout`: past it, the worker
    /// asks every other which collective it is in. Those waiting in a
    /// collective answer while they poll; those that do not answer
    /// within [`ANSWERS`] are named as missing, and the worker ends the
    /// whole job (`MPI_Abort`) with that message. A worker that hangs
    /// (a stalled file system, a stopped process, a loop that never
    /// ends) thus stops the job instead of holding it forever; one that
    /// dies is ended by `mpirun` with the others.
    pub struct Mpi {
        universe: mpi::environment::Universe,
        timeout: Duration,
        /// Collectives entered so far (the one being waited in is the
        /// last): what a worker answers when asked.
        entered: Cell<u64>,
        /// The sums started and not yet completed ([`Comm::start_sum`]),
        /// by collective number, oldest first.
        ///
        /// [`Comm::start_sum`]: super::Comm::start_sum
        pending: RefCell<Vec<(u64, mpi::ffi::MPI_Request)>>,
    }

    impl Mpi {
        pub fn init(timeout: Duration) -> Option<Mpi> {
            mpi::initialize().map(|universe| Mpi {
                universe,
                timeout,
                entered: Cell::new(0),
                pending: RefCell::new(Vec::new()),
            })
        }

        /// Counts a collective entered, returning its number.
        fn enter(&self) -> u64 {
            self.entered.set(self.entered.get() + 1);
            self.entered.get()
        }

        /// Waits for `req` (collective number `op`, `what`), answering
        /// the others' questions once the wait is long; past the timeout
        /// the job ends ([`Mpi::stalled`]).
        fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, op: u64, what: &str, req: Request<'a, D, S>) {
            let mut req = Some(req);
            self.wait_until(op, what, || match req.take().map(Request::test) {
                Some(Err(r)) => {
                    req = Some(r);
                    false
                }
                _ => true,
            });
        }

        /// Whether the sum started as `req` has completed.
        fn done(req: &mut mpi::ffi::MPI_Request) -> bool {
            let mut flag = 0;
            // SAFETY: `req` is a live request of `start_sum` (or null
            // once completed, which MPI_Test reports as done).
            unsafe { mpi::ffi::MPI_Test(req, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE) };
            flag != 0
        }

        /// Polls `done` until it holds (collective number `op`, `what`),
        /// as [`Mpi::wait`] says.
        fn wait_until(&self, op: u64, what: &str, mut done: impl FnMut() -> bool) {
            let started = Instant::now();
            while !done() {
                let waited = started.elapsed();
                if waited < SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                self.answer();
                if waited >= self.timeout {
                    self.stalled(op, what);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }

        /// Answers every question waiting: this worker's collective.
        fn answer(&self) {
            let world = self.universe.world();
            while let Some((msg, status)) = world
                .any_process()
                .immediate_matched_probe_with_tag(QUESTION)
            {
                let (_, _): (u64, Status) = msg.matched_receive();
                let at: &'static u64 = Box::leak(Box::new(self.entered.get()));
                // Not waited for: the asker may end the job before it
                // completes. The leaked 8 bytes are one per question.
                std::mem::forget(
                    world
                        .process_at_rank(status.source_rank())
                        .immediate_send_with_tag(StaticScope, at, ANSWER),
                );
            }
        }

        /// Collective `op` waited past the timeout: asks the others where
        /// they are, reports those missing and ends the job.
        fn stalled(&self, op: u64, what: &str) -> ! {
            let world = self.universe.world();
            let (me, n) = (world.rank() as usize, world.size() as usize);
            let asked: &'static u64 = Box::leak(Box::new(op));
            for r in (0..n).filter(|&r| r != me) {
                std::mem::forget(world.process_at_rank(r as i32).immediate_send_with_tag(
                    StaticScope,
                    asked,
                    QUESTION,
                ));
            }
            let mut at: Vec<Option<u64>> = vec![None; n];
            at[me] = Some(op);
            let deadline = Instant::now() + ANSWERS;
            while Instant::now() < deadline && at.iter().any(Option::is_none) {
                self.answer();
                while let Some((msg, status)) =
                    world.any_process().immediate_matched_probe_with_tag(ANSWER)
                {
                    let (theirs, _): (u64, Status) = msg.matched_receive();
                    at[status.source_rank() as usize] = Some(theirs);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let d = super::stall_report(me, n, op, what, self.timeout, ANSWERS, &at);
            let mut diags = Diagnostics::new();
            diags.push(d);
            eprint!("{}", diags.render(&SourceMap::new(), false));
            world.abort(1)
        }
    }

    impl super::Comm for Mpi {
        fn rank(&self) -> usize {
            self.universe.world().rank() as usize
        }
        fn size(&self) -> usize {
            self.universe.world().size() as usize
        }
        /// In place (`MPI_IN_PLACE`): no copy of the gradients to send
        /// from. More than `i32::MAX` floats (MPI's count) go in parts.
        unsafe fn start_sum(&self, buf: *mut f32, len: usize) {
            let world = self.universe.world();
            let mut at = 0;
            while at < len {
                let n = (len - at).min(i32::MAX as usize);
                let op = self.enter();
                let mut req = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
                // SAFETY: MPI reads and writes these `n` floats until the
                // request completes, which `finish` waits for; the caller
                // keeps them alive and untouched until then. MPI's default
                // error handler ends the job on an error, so the request
                // is set when it returns.
                unsafe {
                    mpi::ffi::MPI_Iallreduce(
                        nnc_mpi_in_place(),
                        buf.add(at).cast(),
                        n as i32,
                        f32::equivalent_datatype().as_raw(),
                        SystemOperation::sum().as_raw(),
                        world.as_raw(),
                        req.as_mut_ptr(),
                    );
                    self.pending.borrow_mut().push((op, req.assume_init()));
                }
                at += n;
            }
        }
        fn progress(&self) {
            self.pending
                .borrow_mut()
                .retain_mut(|(_, req)| !Mpi::done(req));
        }
        fn finish(&self) {
            let pending = std::mem::take(&mut *self.pending.borrow_mut());
            for (op, mut req) in pending {
                self.wait_until(op, "an all-reduce", || Mpi::done(&mut req));
            }
        }
        fn broadcast(&self, buf: &mut [f32]) {
            let op = self.enter();
            let world = self.universe.world();
            let root = world.process_at_rank(0);
            mpi::request::scope(|scope| {
                let req = root.immediate_broadcast_into(scope, buf);
                self.wait(op, "a broadcast from worker 0", req);
            });
        }
        fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            let op = self.enter();
            let world = self.universe.world();
            let n = world.size() as usize;
            let mut send = vec![0u8; super::MESSAGE + 4];
            let len = mine.len().min(super::MESSAGE);
            send[..4].copy_from_slice(&(len as u32).to_le_bytes());
            send[4..4 + len].copy_from_slice(&mine[..len]);
            let mut all = vec![0u8; n * send.len()];
            mpi::request::scope(|scope| {
                let req = world.immediate_all_gather_into(scope, &send[..], &mut all[..]);
                self.wait(op, "an all-gather", req);
            });
            all.chunks(send.len())
                .map(|c| {
                    let l = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    c[4..4 + l.min(super::MESSAGE)].to_vec()
                })
                .collect()
        }
    }
}

/// The message of worker `me` of `n`, whose collective number `op`
/// (`what`: "an all-reduce", …) waited `timeout`, given the collective
/// each worker said it was in (`None`: no answer within `answers`).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn stall_report(
    me: usize,
    n: usize,
    op: u64,
    what: &str,
    timeout: std::time::Duration,
    answers: std::time::Duration,
    at: &[Option<u64>],
) -> Diag {
    let list = |ranks: &[usize]| {
        ranks
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<usize> = (0..n).filter(|&r| at[r].is_none()).collect();
    let elsewhere: Vec<String> = (0..n)
        .filter_map(|r| match at[r] {
            Some(k) if k != op => Some(format!("worker {r} waits in collective {k}")),
            _ => None,
        })
        .collect();
    let secs = timeout.as_secs_f64();
    let whom = match missing.len() {
        0 => "every worker answered".to_string(),
        1 => format!("worker {} did not reach it", missing[0]),
        _ => format!("workers {} did not reach it", list(&missing)),
    };
    let mut notes = Vec::new();
    if !elsewhere.is_empty() {
        notes.push(format!(
            "note: the workers are in different collectives ({}): their steps went out of step",
            elsewhere.join("; ")
        ));
    }
    if !missing.is_empty() {
        notes.push(format!(
            "note: {} answered nothing within {} s: stopped, hung (a stalled file system, a deadlock) or far behind",
            if missing.len() == 1 { "it" } else { "they" },
            answers.as_secs()
        ));
    }
    notes.push(format!(
        "help: `--worker-timeout SECS` sets how long workers wait for each other (now {secs} s)"
    ));
    diag::error(
        code::DEVICE,
        format!(
            "worker {me} of {n} waited {secs} s in {what} (collective {op}): {whom}; every worker stops"
        ),
    )
    .with_notes(notes)
}

/// Agrees on `r` across the workers: when any failed, every worker gets
/// an error naming the first that did and its message (its own, for the
/// one that failed).
pub fn agree<T>(comm: &dyn Comm, r: Result<T, Diag>) -> Result<T, Diag> {
    let mut flag = [f32::from(u8::from(r.is_err()))];
    comm.all_reduce_sum(&mut flag);
    if flag[0] == 0.0 {
        return r;
    }
    let mine = match &r {
        Err(d) => d.message.clone().into_bytes(),
        Ok(_) => Vec::new(),
    };
    let all = comm.all_gather(&mine);
    let (rank, msg) = all
        .iter()
        .enumerate()
        .find(|(_, m)| !m.is_empty())
        .map(|(k, m)| (k, String::from_utf8_lossy(m).into_owned()))
        .unwrap_or((0, "a worker failed".into()));
    match r {
        Err(d) if rank == comm.rank() => Err(Diag {
            message: format!("worker {rank} of {}: {}", comm.size(), d.message),
            ..d
        }),
        _ => Err(diag::error(
            code::INPUT,
            format!("worker {rank} of {} stopped training: {msg}", comm.size()),
        )),
    }
}

/// Makes every worker's parameters (and states) worker 0's.
pub fn broadcast_params(comm: &dyn Comm, params: &mut SecondaryMap<ParamId, Tensor>) {
    for (_, t) in params.iter_mut() {
        comm.broadcast(&mut t.data);
    }
}

/// A 64-bit FNV-1a hash of every parameter's bits, in table order.
fn params_hash(params: &SecondaryMap<ParamId, Tensor>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, t) in params.iter() {
        for v in &t.data {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// Checks that every worker holds worker 0's parameters (their hashes,
/// gathered): an error naming the workers that differ, `at` saying when.
pub fn check_same(
    comm: &dyn Comm,
    params: &SecondaryMap<ParamId, Tensor>,
    at: &str,
) -> Result<(), Diag> {
    let all = comm.all_gather(&params_hash(params).to_le_bytes());
    let differ: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != all[0])
        .map(|(r, _)| r.to_string())
        .collect();
    match differ.is_empty() {
        true => Ok(()),
        false => Err(diag::error(
            code::INTERNAL,
            format!(
                "{at}, the parameters of worker {} differ from worker 0's",
                differ.join(", ")
            ),
        )
        .with_notes(vec![
            "note: the workers apply the same update to the same sums, so this is a fault of nnc or of the machines; no checkpoint was written".into(),
        ])),
    }
}

/// What one phase of a data-parallel step gave every worker.
pub struct Stepped {
    /// The batch's loss (the shares' losses weighted by their rows).
    pub loss: f32,
    /// The loss and the summed gradients, as a fused step outputs them.
    pub outs: Vec<Tensor>,
    /// A worker was interrupted (Ctrl-C): every worker stops after this
    /// step.
    pub interrupted: bool,
    /// The time this worker spent in the all-reduce after its own
    /// share's step (waiting for the others included): what the overlap
    /// with the backward pass did not hide.
    pub comm: std::time::Duration,
}

/// The gradients' all-reduce goes in buckets of at least this many KiB
/// (`--bucket-kib`; a parameter's gradient is never cut), the last
/// parameters' first: the backward pass writes those first, and each
/// bucket's sum starts as soon as all its gradients are written, while
/// the backward pass goes on where the backend hands them over as they
/// are done (the JIT; the interpreter and OpenCL hand them over after
/// the step).
pub const BUCKET_KIB: usize = 256;

/// Gradients `lo..hi` (in the phase's order), to sum together.
struct Bucket {
    lo: usize,
    hi: usize,
}

/// The buckets of at least `floats` floats of gradients of `lens` floats,
/// in the order their sums start (from the last gradient back).
fn buckets(lens: &[usize], floats: usize) -> Vec<Bucket> {
    let mut out = Vec::new();
    let (mut hi, mut have) = (lens.len(), 0);
    for k in (0..lens.len()).rev() {
        have += lens[k];
        if have >= floats || k == 0 {
            out.push(Bucket { lo: k, hi });
            (hi, have) = (k, 0);
        }
    }
    out
}

/// One phase of a step on `rows` (the whole batch; this worker takes its
/// [`share`]): the local graph on the share, the all-reduce of its
/// gradients in buckets of `bucket` floats overlapping it ([`buckets`])
/// and of the rest after it, then the optimizer's update on the summed
/// gradients. `fed` holds what every worker feeds alike (the random key,
/// the learning rate), by the phase's input names.
#[allow(clippy::too_many_arguments)]
pub fn step(
    comm: &dyn Comm,
    bucket: usize,
    ph: &SplitPhase,
    local: &mut Engine,
    update: &mut Engine,
    params: &mut SecondaryMap<ParamId, Tensor>,
    data: &Prepared,
    all: &Graph,
    rows: &[usize],
    fed: &[(&str, Tensor)],
    interrupted: bool,
) -> Result<Stepped, Diag> {
    let mine = share(rows, comm.rank(), comm.size());
    let weight = mine.len() as f32 / rows.len().max(1) as f32;
    let grads: Vec<usize> = ph
        .local
        .grads
        .iter()
        .map(|(p, _)| params[*p].data.len())
        .collect();
    let starts: Vec<usize> = grads
        .iter()
        .scan(0, |at, len| {
            *at += len;
            Some(*at - len)
        })
        .collect();
    // The states the layers' assigns change, averaged like the gradients.
    let states: Vec<ParamId> = ph.local.graph.updates.iter().map(|u| u.param).collect();
    let state_len: usize = states.iter().map(|p| params[*p].data.len()).sum();
    let total: usize = grads.iter().sum();
    let mut buf = vec![0.0f32; total + 1 + state_len + 2];
    let n = buf.len();
    let buckets = buckets(&grads, bucket);
    // Which gradients are written, and when each bucket's sum started (in
    // `buckets`' order, the same on every worker).
    let mut written = vec![false; grads.len()];
    let mut started = Vec::with_capacity(buckets.len());
    // From here until `finish`, `buf` is reached through `base` alone: MPI
    // owns the buckets whose sums started.
    let base = buf.as_mut_ptr();
    let start = |b: &Bucket| {
        let (at, end) = (starts[b.lo], starts.get(b.hi).copied().unwrap_or(total));
        // SAFETY: `at..end` lies in `buf`, which lives until `finish` has
        // returned, and nothing else touches a bucket once started.
        unsafe { comm.start_sum(base.add(at), end - at) };
    };
    let mut failed: Result<(), Diag> = Ok(());
    if !mine.is_empty() {
        let mut inputs = data.batch(all, mine);
        for (name, t) in fed {
            if let Some((id, _)) = ph.local.graph.inputs.iter().find(|(_, i)| i.name == *name) {
                inputs[id] = Some(t.clone());
            }
        }
        // Output 0 is the loss, output k + 1 gradient k.
        let mut ready = |o: usize, data: &[f32]| {
            let Some(k) = o.checked_sub(1).filter(|&k| k < grads.len()) else {
                return;
            };
            // SAFETY: gradient k's place in `buf`, in a bucket not started
            // (it starts once its gradients are all written).
            let to = unsafe { std::slice::from_raw_parts_mut(base.add(starts[k]), grads[k]) };
            for (b, v) in to.iter_mut().zip(data) {
                *b = v * weight;
            }
            written[k] = true;
            while let Some(b) = buckets.get(started.len()) {
                if !written[b.lo..b.hi].iter().all(|&w| w) {
                    break;
                }
                start(b);
                started.push(std::time::Instant::now());
            }
            comm.progress();
        };
        match local.step_observed(params, &inputs, &mut ready) {
            Ok(outs) => {
                // SAFETY: the loss and the states follow the gradients in
                // `buf`; no sum started over them.
                let tail =
                    unsafe { std::slice::from_raw_parts_mut(base.add(total), 1 + state_len) };
                tail[0] = outs[0].data[0] * weight;
                let mut at = 1;
                for p in &states {
                    let t = &params[*p].data;
                    for (b, v) in tail[at..at + t.len()].iter_mut().zip(t) {
                        *b = v * weight;
                    }
                    at += t.len();
                }
            }
            Err(e) => failed = Err(e.to_diag()),
        }
    }
    let waited = std::time::Instant::now();
    if crate::log::enabled("allreduce") {
        let leads: Vec<String> = started
            .iter()
            .map(|t| format!("{:.3}", (waited - *t).as_secs_f64() * 1e3))
            .collect();
        crate::log::lines(
            "allreduce",
            &[format!(
                "worker {}: {} buckets; the sums of {} started [{}] ms before its step ended",
                comm.rank(),
                buckets.len(),
                started.len(),
                leads.join(", ")
            )],
        );
    }
    // The buckets not started (a worker with no rows or whose step
    // failed: zeros, or what was written), then the rest in one sum.
    for b in &buckets[started.len()..] {
        start(b);
    }
    // SAFETY: the flags are the last two floats of `buf`; no sum started
    // over them.
    unsafe {
        *base.add(n - 2) = f32::from(u8::from(failed.is_err()));
        *base.add(n - 1) = f32::from(u8::from(interrupted));
        comm.start_sum(base.add(total), n - total);
    }
    comm.finish();
    let comm_time = waited.elapsed();
    if buf[n - 2] > 0.0 {
        agree(comm, failed)?;
    }
    let mut outs = vec![Tensor::scalar(buf[total])];
    let mut uinputs = SecondaryMap::new();
    let mut at = 0;
    for ((p, _), id) in ph.local.grads.iter().zip(&ph.grads) {
        let len = params[*p].data.len();
        let t = Tensor::new(params[*p].shape.clone(), buf[at..at + len].to_vec());
        uinputs[*id] = Some(t.clone());
        outs.push(t);
        at += len;
    }
    let mut at = total + 1;
    for p in &states {
        let len = params[*p].data.len();
        params[*p].data.copy_from_slice(&buf[at..at + len]);
        at += len;
    }
    for (name, t) in fed {
        let found: Option<InputId> = ph
            .update
            .inputs
            .iter()
            .find(|(_, i)| i.name == *name)
            .map(|(id, _)| id);
        if let Some(id) = found {
            uinputs[id] = Some(t.clone());
        }
    }
    update.step(params, &uinputs).map_err(|e| e.to_diag())?;
    Ok(Stepped {
        loss: buf[total],
        outs,
        interrupted: buf[n - 1] > 0.0,
        comm: comm_time,
    })
}

/// The rows of `batch` worker `rank` of `size` takes: a contiguous share,
/// the shares' sizes differing by at most one.
pub fn share(batch: &[usize], rank: usize, size: usize) -> &[usize] {
    let n = batch.len();
    &batch[rank * n / size..(rank + 1) * n / size]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker 0 of two, the other's gathered bytes given.
    struct Pair(Vec<u8>);

    impl Comm for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        unsafe fn start_sum(&self, _: *mut f32, _: usize) {}
        fn progress(&self) {}
        fn finish(&self) {}
        fn broadcast(&self, _: &mut [f32]) {}
        fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            vec![mine.to_vec(), self.0.clone()]
        }
    }

    #[test]
    fn a_stall_names_the_workers_that_did_not_answer() {
        let t = std::time::Duration::from_secs(3);
        let a = std::time::Duration::from_secs(2);
        let d = stall_report(
            0,
            4,
            57,
            "an all-reduce",
            t,
            a,
            &[Some(57), None, Some(57), None],
        );
        assert_eq!(
            d.message,
            "worker 0 of 4 waited 3 s in an all-reduce (collective 57): workers 1, 3 did not reach it; every worker stops"
        );
        assert!(
            d.notes[0].contains("answered nothing within 2 s"),
            "{:?}",
            d.notes
        );
        assert!(d.notes[1].contains("--worker-timeout SECS") && d.notes[1].contains("now 3 s"));
        let d = stall_report(1, 2, 9, "a broadcast from worker 0", t, a, &[None, Some(9)]);
        assert!(
            d.message.contains("worker 0 did not reach it"),
            "{}",
            d.message
        );
        // Everyone answered, but one is in another collective.
        let d = stall_report(0, 3, 9, "an all-gather", t, a, &[Some(9), Some(9), Some(8)]);
        assert!(d.message.contains("every worker answered"), "{}", d.message);
        assert!(
            d.notes[0].contains("worker 2 waits in collective 8") && d.notes.len() == 2,
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn workers_whose_parameters_differ_are_named() {
        let mut params: SecondaryMap<ParamId, Tensor> = SecondaryMap::new();
        params[ParamId::from_u32(0)] = Tensor::new(vec![2], vec![1.0, 2.0]);
        let same = params_hash(&params).to_le_bytes().to_vec();
        assert!(check_same(&Pair(same), &params, "after epoch 1").is_ok());
        let mut other = params.clone();
        other[ParamId::from_u32(0)].data[1] = f32::from_bits(2.0f32.to_bits() + 1);
        let differs = params_hash(&other).to_le_bytes().to_vec();
        let e = check_same(&Pair(differs), &params, "after epoch 1").unwrap_err();
        assert_eq!(
            e.message,
            "after epoch 1, the parameters of worker 1 differ from worker 0's"
        );
    }

    #[test]
    fn buckets_cover_the_gradients_once_from_the_last() {
        let of = |lens: &[usize]| -> Vec<(usize, usize)> {
            buckets(lens, 1 << 16)
                .iter()
                .map(|b| (b.lo, b.hi))
                .collect()
        };
        assert_eq!(of(&[10, 70_000, 5, 100_000, 3]), [(3, 5), (1, 3), (0, 1)]);
        assert!(of(&[]).is_empty());
        assert_eq!(of(&[4, 4]), [(0, 2)]);
    }

    #[test]
    fn shares_cover_the_batch_once_in_order() {
        let batch: Vec<usize> = (10..17).collect();
        let parts: Vec<&[usize]> = (0..3).map(|r| share(&batch, r, 3)).collect();
        assert_eq!(parts, [&[10, 11][..], &[12, 13][..], &[14, 15, 16][..]]);
        // Fewer rows than workers: some shares are empty.
        let small = [7usize];
        assert_eq!(share(&small, 0, 2), &[] as &[usize]);
        assert_eq!(share(&small, 1, 2), &[7]);
    }
}
