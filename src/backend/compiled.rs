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
use crate::schedule::{Fused, Schedule};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// A schedule compiled by one backend.
pub trait Compile: Sized {
    fn compile(sched: Schedule) -> Result<Self, Error>;

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
        let fed = |i: InputId| inputs[i].as_ref().map(|t| &t.shape[..]);
        let hit = self.cache.iter().position(|(key, _)| {
            key.iter()
                .zip(self.g.inputs.keys())
                .all(|(k, i)| k.as_deref() == fed(i))
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let fused = self.fused.get_or_insert_with(|| pipeline::fuse(self.g));
                let live = bind::live_nodes(&fused.graph, &fused.roots);
                let feed = Feed { params, inputs };
                let values = bind::input_values(&fused.graph, &feed, &live)?;
                let syms = bind::bind_syms(&fused.graph, &values)?;
                let sched = pipeline::schedule(fused, &syms)?;
                let p = P::compile(sched)?;
                let key = self.g.inputs.keys().map(|i| fed(i).map(<[usize]>::to_vec));
                self.cache.push((key.collect(), p));
                self.cache.len() - 1
            }
        };
        self.last = Some(at);
        let p = &mut self.cache[at].1;
        p.load_inputs(inputs)?;
        Ok(p)
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
        self.program(inputs, params)?.run(params, true, false)
    }

    /// One step without returning anything.
    pub fn step_in_place(
        &mut self,
        params: &mut SecondaryMap<ParamId, Tensor>,
        inputs: &SecondaryMap<InputId, Option<Tensor>>,
    ) -> Result<(), Error> {
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
        self.program(inputs, params)?.run(params, true, true)
    }
}
