//! What the compiling backends share: a graph fused once
//! ([`pipeline::fuse`]), then scheduled and compiled on demand, once per
//! set of input shapes, into a backend's program ([`Compile`]), which is
//! kept and run again for later calls with the same shapes.
//!
//! [`pipeline::fuse`]: crate::pipeline::fuse

use crate::exec::bind::{self, Feed};
use crate::exec::Error;
use crate::ir::{Graph, InputId, ParamId};
use crate::pipeline;
use crate::schedule::{Fused, KernelSink, Schedule};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// A schedule compiled by one backend.
pub trait Compile: Sized {
    fn compile(sched: Schedule) -> Result<Self, Error>;

    /// Whether the program takes storage of its own for each parameter
    /// update, zeroed ([`Compile::compile_begun`]): then it is
    /// allocated while the schedule is built, on another thread (a deep
    /// model's updates are megabytes, each page touched once).
    const OWNS_UPDATES: bool = false;

    /// What the backend does with each loop kernel while the rest of the
    /// schedule is still being built ([`KernelSink`]; the JIT starts
    /// compiling it on another thread), handed to
    /// [`Compile::compile_begun`] once the schedule is done. `()` for
    /// nothing.
    type Early: KernelSink + Default + Send;

    /// [`Compile::compile`] of a schedule whose compile began while it
    /// was built: given zeroed storage for the updates (with
    /// [`Compile::OWNS_UPDATES`]; one vector per update in the graph's
    /// order, of its element count) and the work started on its kernels.
    fn compile_begun(
        sched: Schedule,
        updates: Vec<Vec<f32>>,
        early: Self::Early,
    ) -> Result<Self, Error> {
        drop((updates, early));
        Self::compile(sched)
    }

    /// Copies the fed inputs (or their declared defaults) into the
    /// program's buffers.
    fn load_inputs(&mut self, inputs: &SecondaryMap<InputId, Option<Tensor>>) -> Result<(), Error>;

    /// Runs the program on `params`; with `outputs`, returns the outputs;
    /// with `update`, writes the updates into `params` afterwards.
    fn run(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        outputs: bool,
        update: bool,
    ) -> Result<Vec<Tensor>, Error>;

    /// [`Compile::run`] with outputs and updates, handing each output to
    /// `ready` (its index and data) as soon as it is final: on a program
    /// that can tell, while the steps after its last writer run (the
    /// data-parallel all-reduce of gradients overlaps the rest of the
    /// backward pass); otherwise all of them after the run, in order.
    /// Returns the outputs too.
    fn run_observed(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        ready: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<Tensor>, Error> {
        self.run(params, true, true)
            .map(|outs| hand_over(outs, ready))
    }

    /// Whether the program keeps the parameters in its own buffers across
    /// steps ([`Compile::step_kept`]: a device's memory); otherwise
    /// `params` always holds them.
    const KEEPS_PARAMS: bool = false;

    /// A step on the parameters the program keeps (uploaded from `params`
    /// first when `upload`), the updates applied in its buffers; returns
    /// the outputs `wanted`, by index. A parameter the program does not
    /// read but updates is written into `params` at once.
    fn step_kept(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        upload: bool,
        wanted: &[usize],
    ) -> Result<Vec<Tensor>, Error> {
        let _ = (params, upload, wanted);
        Err(Error::Backend {
            message: "this backend does not keep parameters".into(),
        })
    }

    /// Copies the parameters the program keeps into `params`.
    fn read_params(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        let _ = params;
        Ok(())
    }

    /// Every output of the last run, read again.
    fn read_outputs(&mut self) -> Result<Vec<Tensor>, Error> {
        Err(Error::Backend {
            message: "this backend does not keep its outputs".into(),
        })
    }
}

/// Hands each of `outs` to `ready` (its index and data), in order, for a
/// run that cannot tell when each was final; returns them.
pub fn hand_over(outs: Vec<Tensor>, ready: &mut dyn FnMut(usize, &[f32])) -> Vec<Tensor> {
    for (i, t) in outs.iter().enumerate() {
        ready(i, &t.data);
    }
    outs
}

/// A graph compiled on demand, once per set of input shapes.
pub struct Compiled<'g, P> {
    g: &'g Graph,
    /// The graph optimised and fused, on first use (it does not depend on
    /// the shapes).
    fused: Option<Fused>,
    /// Compiled programs with the input shapes each was compiled for
    /// (`None`: the input was not fed). A handful at most, so a linear
    /// search that compares the shapes themselves, without allocating.
    cache: Vec<(Vec<Option<Vec<usize>>>, P)>,
    /// The index of the last program run.
    last: Option<usize>,
    /// The floats each cached program's schedule plans, by index.
    planned: Vec<usize>,
    /// The program whose buffers hold the current parameters, when the
    /// backend keeps them ([`Compile::KEEPS_PARAMS`]): `params` is then
    /// stale until [`Compiled::sync`].
    kept: Option<usize>,
    /// The outputs of the last [`Compiled::step_kept`], on a backend that
    /// does not keep parameters (it returns every output anyway).
    last_outputs: Vec<Tensor>,
}

impl<'g, P: Compile> Compiled<'g, P> {
    /// Prepares `g` for its outputs and updates; nothing is compiled until
    /// the first call.
    pub fn new(g: &'g Graph) -> Compiled<'g, P> {
        Compiled {
            g,
            fused: None,
            cache: Vec::new(),
            last: None,
            planned: Vec::new(),
            kept: None,
            last_outputs: Vec::new(),
        }
    }

    /// The program for these inputs (compiled on first use), with the
    /// inputs loaded into its buffers. On a cache hit this allocates
    /// nothing.
    fn program(
        &mut self,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        params: &SecondaryMap<ParamId, Tensor>,
    ) -> Result<&mut P, Error> {
        let at = self.program_index(inputs, params)?;
        Ok(&mut self.cache[at].1)
    }

    /// [`Compiled::program`]'s index in the cache.
    fn program_index(
        &mut self,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        params: &SecondaryMap<ParamId, Tensor>,
    ) -> Result<usize, Error> {
        let fed = |i: InputId| inputs[i].as_ref().map(|t| &t.shape[..]);
        let hit = self.cache.iter().position(|(key, _)| {
            key.iter()
                .zip(self.g.inputs.keys())
                .all(|(k, i)| k.as_deref() == fed(i))
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let (g, fused) = (self.g, &mut self.fused);
                let early = P::Early::default();
                let sink = &early;
                let mut schedule = move || {
                    let fused = fused.get_or_insert_with(|| pipeline::fuse(g));
                    let live = bind::live_nodes(&fused.graph, &fused.roots);
                    let feed = Feed { params, inputs };
                    let values = bind::input_values(&fused.graph, &feed, &live)?;
                    let syms = bind::bind_syms(&fused.graph, &values)?;
                    pipeline::schedule_observed(fused, &syms, sink)
                };
                // The updates' storage depends only on the parameters'
                // sizes: it is zeroed on another thread while the graph
                // is fused and scheduled.
                let (sched, updates) = match P::OWNS_UPDATES {
                    true => rayon::join(schedule, || update_storage(g, inputs)),
                    false => (schedule(), Vec::new()),
                };
                let sched = sched?;
                self.planned.push(sched.planned_floats());
                let compile = || P::compile_begun(sched, updates, early);
                let p = match crate::log::timed("code generation", compile) {
                    Ok(p) => p,
                    Err(e) => {
                        self.planned.pop();
                        return Err(e);
                    }
                };
                let key = self.g.inputs.keys().map(|i| fed(i).map(<[usize]>::to_vec));
                self.cache.push((key.collect(), p));
                self.cache.len() - 1
            }
        };
        self.last = Some(at);
        self.cache[at].1.load_inputs(inputs)?;
        Ok(at)
    }

    /// A training step that leaves the parameters where the backend
    /// computes (a device's memory) until [`Compiled::sync`]: only the
    /// outputs `wanted` (by index) are returned. On a backend that does
    /// not keep parameters this is [`Compiled::step`], the updates written
    /// into `params`.
    pub fn step_kept(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        wanted: &[usize],
    ) -> Result<Vec<Tensor>, Error> {
        if !P::KEEPS_PARAMS {
            self.last_outputs = self.step(params, inputs)?;
            return Ok(wanted
                .iter()
                .map(|&i| self.last_outputs[i].clone())
                .collect());
        }
        let at = self.program_index(inputs, params)?;
        if self.kept.is_some_and(|k| k != at) {
            // Another shape set's program holds them (a short last batch).
            self.sync(params)?;
        }
        let upload = self.kept != Some(at);
        self.kept = None;
        let outs = self.cache[at].1.step_kept(params, upload, wanted)?;
        self.kept = Some(at);
        Ok(outs)
    }

    /// Brings the parameters kept by [`Compiled::step_kept`] back into
    /// `params`; the next step uploads them again.
    pub fn sync(&mut self, params: &mut SecondaryMap<ParamId, Tensor>) -> Result<(), Error> {
        match self.kept.take() {
            Some(k) => self.cache[k].1.read_params(params),
            None => Ok(()),
        }
    }

    /// Every output of the last [`Compiled::step_kept`].
    pub fn outputs(&mut self) -> Result<Vec<Tensor>, Error> {
        if !P::KEEPS_PARAMS {
            return Ok(self.last_outputs.clone());
        }
        match self.last {
            Some(k) => self.cache[k].1.read_outputs(),
            None => Ok(Vec::new()),
        }
    }

    /// The bytes of the buffers the last program run plans (its loops'
    /// bodies included); `None` before the first call.
    pub fn planned_bytes(&self) -> Option<u64> {
        self.last.map(|k| self.planned[k] as u64 * 4)
    }

    /// Compiles the program for these inputs' shapes, if not yet cached.
    pub fn prepare(
        &mut self,
        params: &SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        self.program(inputs, params).map(|_| ())
    }

    /// Evaluates the graph's outputs; `params` are lent, not changed.
    pub fn eval(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        self.sync(params)?;
        self.program(inputs, params)?.run(params, true, false)
    }

    /// One step without returning anything.
    pub fn step_in_place(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
        self.sync(params)?;
        self.program(inputs, params)?.run(params, false, true)?;
        Ok(())
    }

    /// Runs the program of the last call again on the inputs it loaded
    /// (a step when `step`, else an evaluation), returning nothing: the
    /// loop `nnc bench` times, with the data already in place as the peers'
    /// benchmarks have it. Errors if nothing ran yet.
    pub fn again(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        step: bool,
    ) -> Result<(), Error> {
        self.sync(params)?;
        let p = self
            .last
            .and_then(|k| self.cache.get_mut(k))
            .map(|(_, p)| p)
            .ok_or_else(|| Error::Backend {
                message: "`again` before a first call".into(),
            })?;
        p.run(params, false, step).map(|_| ())
    }

    /// One step: outputs from the current parameters, then the updates
    /// written into `params`.
    pub fn step(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<Vec<Tensor>, Error> {
        self.sync(params)?;
        self.program(inputs, params)?.run(params, true, true)
    }

    /// [`Compiled::step`], handing each output to `ready` as soon as it
    /// is final ([`Compile::run_observed`]).
    pub fn step_observed(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
        ready: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<Tensor>, Error> {
        self.sync(params)?;
        self.program(inputs, params)?.run_observed(params, ready)
    }
}

/// Zeroed storage for each update of `g` (in order) at the sizes the
/// fed `inputs` give, for a program that owns its updates
/// ([`Compile::OWNS_UPDATES`]); none for an update whose size is not
/// known that way (the program then allocates it itself, and the
/// schedule reports an error in the sizes).
fn update_storage(g: &Graph, inputs: &SecondaryMap<InputId, Option<Tensor>>) -> Vec<Vec<f32>> {
    let Ok(syms) = bind::bind_syms(g, inputs) else {
        return Vec::new();
    };
    g.updates
        .iter()
        .map(|u| {
            let d = &g.nodes[u.node];
            bind::concrete_shape(g, &syms, &d.ty.shape, d.span)
                .map_or_else(|_| Vec::new(), |s| vec![0.0; s.iter().product()])
        })
        .collect()
}
