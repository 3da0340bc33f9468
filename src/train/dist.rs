//! Data-parallel training across processes (`mpirun -n N nnc train`,
//! `nnc train --workers N`): every process (a *worker*, MPI's rank)
//! holds the whole model and takes its share of every batch.
//!
//! Each step, worker r runs the phase's local graph
//! ([`pipeline::SplitPhase`]) on rows `[r·n/N, (r+1)·n/N)` of the batch's
//! n rows (the same seeded order on every worker), giving its loss and
//! gradients. One all-reduce sums, weighted by each share's rows, the
//! gradients, the loss, the states the layers' `assign`s changed (batch
//! norm's running statistics) and two flags (a worker failed, a worker
//! was interrupted); every worker then applies the optimizer's update to
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
//! worker stop with its message, prefixed by its rank.
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
    /// Sums `buf` element-wise across the workers, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Replaces `buf` by worker 0's.
    fn broadcast(&self, buf: &mut [f32]);
    /// Every worker's `mine`, by rank (each at most [`MESSAGE`] bytes).
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
}

/// The longest error message a worker sends the others.
pub const MESSAGE: usize = 4096;

/// The workers this process trains with: MPI's world when it was started
/// by `mpirun` with more than one process (and nnc has MPI), else none.
pub fn world() -> Result<Option<Box<dyn Comm>>, Diag> {
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
    mpi_world(launched)
}

#[cfg(feature = "mpi")]
fn mpi_world(_launched: usize) -> Result<Option<Box<dyn Comm>>, Diag> {
    match mpi_comm::Mpi::init() {
        Some(m) => Ok(Some(Box::new(m))),
        None => Err(diag::error(
            code::DEVICE,
            "MPI could not be initialised (was it initialised twice?)",
        )),
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_world(launched: usize) -> Result<Option<Box<dyn Comm>>, Diag> {
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
    use mpi::collective::SystemOperation;
    use mpi::traits::*;

    /// MPI's world communicator; finalised when dropped.
    pub struct Mpi {
        universe: mpi::environment::Universe,
    }

    impl Mpi {
        pub fn init() -> Option<Mpi> {
            mpi::initialize().map(|universe| Mpi { universe })
        }
    }

    impl super::Comm for Mpi {
        fn rank(&self) -> usize {
            self.universe.world().rank() as usize
        }
        fn size(&self) -> usize {
            self.universe.world().size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            let send = buf.to_vec();
            self.universe
                .world()
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn broadcast(&self, buf: &mut [f32]) {
            self.universe.world().process_at_rank(0).broadcast_into(buf);
        }
        fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            let world = self.universe.world();
            let n = world.size() as usize;
            let mut send = vec![0u8; super::MESSAGE + 4];
            let len = mine.len().min(super::MESSAGE);
            send[..4].copy_from_slice(&(len as u32).to_le_bytes());
            send[4..4 + len].copy_from_slice(&mine[..len]);
            let mut all = vec![0u8; n * send.len()];
            world.all_gather_into(&send[..], &mut all[..]);
            all.chunks(send.len())
                .map(|c| {
                    let l = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    c[4..4 + l.min(super::MESSAGE)].to_vec()
                })
                .collect()
        }
    }
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
    /// The time this worker spent in the all-reduce (waiting for the
    /// others included).
    pub comm: std::time::Duration,
}

/// One phase of a step on `rows` (the whole batch; this worker takes its
/// [`share`]): the local graph on the share, one all-reduce, then the
/// optimizer's update on the summed gradients. `inputs` holds what every
/// worker feeds alike (the random key, the learning rate), by the
/// phase's input names.
#[allow(clippy::too_many_arguments)]
pub fn step(
    comm: &dyn Comm,
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
    // The states the layers' assigns change, averaged like the gradients.
    let states: Vec<ParamId> = ph.local.graph.updates.iter().map(|u| u.param).collect();
    let state_len: usize = states.iter().map(|p| params[*p].data.len()).sum();
    let total: usize = grads.iter().sum();
    let mut buf = vec![0.0f32; total + 1 + state_len + 2];
    let mut failed: Result<(), Diag> = Ok(());
    if !mine.is_empty() {
        let mut inputs = data.batch(all, mine);
        for (name, t) in fed {
            if let Some((id, _)) = ph.local.graph.inputs.iter().find(|(_, i)| i.name == *name) {
                inputs[id] = Some(t.clone());
            }
        }
        match local.step(params, &inputs) {
            Ok(outs) => {
                let mut at = 0;
                for (k, len) in grads.iter().enumerate() {
                    for (b, v) in buf[at..at + len].iter_mut().zip(&outs[k + 1].data) {
                        *b = v * weight;
                    }
                    at += len;
                }
                buf[total] = outs[0].data[0] * weight;
                let mut at = total + 1;
                for p in &states {
                    let t = &params[*p].data;
                    for (b, v) in buf[at..at + t.len()].iter_mut().zip(t) {
                        *b = v * weight;
                    }
                    at += t.len();
                }
            }
            Err(e) => failed = Err(e.to_diag()),
        }
    }
    let n = buf.len();
    buf[n - 2] = f32::from(u8::from(failed.is_err()));
    buf[n - 1] = f32::from(u8::from(interrupted));
    let started = std::time::Instant::now();
    comm.all_reduce_sum(&mut buf);
    let comm_time = started.elapsed();
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
        fn all_reduce_sum(&self, _: &mut [f32]) {}
        fn broadcast(&self, _: &mut [f32]) {}
        fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            vec![mine.to_vec(), self.0.clone()]
        }
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
