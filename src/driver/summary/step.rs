//! The training step of `nnc summary`: the memory one step of a `train`
//! block takes at a batch size, read from the schedule the compiled step
//! runs (the buffers its plan allocates, by what they hold), and the
//! step's operations.
//!
//! Each phase of the block is a step of its own ([`train_steps`]): it is
//! fused and scheduled as `nnc train` does. The batch's dimension (the
//! leading one of the inputs the data feeds) is the batch, the others
//! take their size from `--dim`, and any left the batch, as `nnc bench`
//! binds them: the total is `nnc bench`'s `planned_bytes`.
//!
//! [`train_steps`]: crate::pipeline::train_steps

use crate::diag::Diag;
use crate::ir::cost;
use crate::ir::{Graph, Role};
use crate::pipeline;
use crate::schedule::{BufId, Schedule, Step};
use crate::sema::optimizer::Kind;
use crate::sema::TrainSpec;
use cranelift_entity::SecondaryMap;

/// What a buffer of the step holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The trainable parameters the step reads.
    Params,
    /// The gradients (outputs of the step).
    Gradients,
    /// The optimizer's state (momentum, Adam's moments, the step count).
    OptimizerState,
    /// The program's own `state` (running statistics).
    ModelState,
    /// The new values of parameters and states, written by the step and
    /// swapped in after it.
    NewValues,
    /// The batch and the other inputs fed to the step.
    Inputs,
    Constants,
    /// The loss and `predict`.
    Outputs,
    /// Everything else: the forward values kept for the backward pass and
    /// the temporaries, in buffers reused once their last reader has run.
    Workspace,
    /// The buffers of loop bodies (a `scan`'s step).
    LoopBodies,
}

impl Part {
    pub const ALL: [Part; 10] = [
        Part::Params,
        Part::Gradients,
        Part::OptimizerState,
        Part::ModelState,
        Part::NewValues,
        Part::Inputs,
        Part::Constants,
        Part::Outputs,
        Part::Workspace,
        Part::LoopBodies,
    ];

    /// The row's name in the text and the key in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Part::Params => "parameters",
            Part::Gradients => "gradients",
            Part::OptimizerState => "optimizer state",
            Part::ModelState => "model state",
            Part::NewValues => "new values",
            Part::Inputs => "inputs",
            Part::Constants => "constants",
            Part::Outputs => "loss and predict",
            Part::Workspace => "workspace",
            Part::LoopBodies => "loop bodies",
        }
    }

    /// What the row holds, for the text.
    pub fn note(self) -> &'static str {
        match self {
            Part::Params => "trainable, as the step reads them",
            Part::Gradients => "one per trainable parameter",
            Part::OptimizerState => "moments and step count",
            Part::ModelState => "`state` values",
            Part::NewValues => "updated parameters and state, swapped in after the step",
            Part::Inputs => "the batch, and any other input",
            Part::Constants => "literals",
            Part::Outputs => "",
            Part::Workspace => {
                "activations kept for the backward pass and temporaries, reused by liveness"
            }
            Part::LoopBodies => "the buffers of each scan's step",
        }
    }
}

/// One phase's step.
#[derive(Clone, Debug)]
pub struct PhaseStep {
    /// The phase's name; empty for a block with one loss.
    pub name: String,
    pub optimizer: &'static str,
    /// The operations of one step (forward, backward and update), by the
    /// rule of [`crate::ir::cost`].
    pub flops: u64,
    pub memory: Memory,
}

/// The buffers a step's schedule plans.
#[derive(Clone, Debug)]
pub enum Memory {
    /// Bytes by what they hold (parts that hold none left out), in the
    /// order of [`Part::ALL`].
    Planned(Vec<(Part, u64)>),
    /// More than the memory budget: the bytes the plan needs, the budget
    /// and where it comes from. `nnc train` would stop at its first step.
    OverBudget {
        needed: u64,
        limit: u64,
        from: &'static str,
    },
}

impl Memory {
    pub fn total(&self) -> u64 {
        match self {
            Memory::Planned(parts) => parts.iter().map(|(_, b)| b).sum(),
            Memory::OverBudget { needed, .. } => *needed,
        }
    }
}

/// The training step: its batch, the sizes it binds, and each phase.
#[derive(Clone, Debug)]
pub struct TrainStep {
    pub batch: usize,
    /// The symbolic dimensions and their sizes.
    pub sizes: Vec<(String, usize)>,
    pub phases: Vec<PhaseStep>,
}

/// The training step of `train` at `batch`, with the sizes `dims` give.
pub fn steps(
    g: &Graph,
    train: &TrainSpec,
    dims: &[(String, usize)],
    batch: usize,
) -> Result<TrainStep, Diag> {
    // The batch's dimension: the leading one of the inputs the data
    // feeds. It takes the batch; `--dim` sizes the others.
    let batch_dims: Vec<String> = [train.features, train.targets]
        .into_iter()
        .flatten()
        .filter_map(|i| match g.inputs[i].ty.shape.first() {
            Some(&crate::ir::Dim::Sym(s)) => Some(g.syms[s].name.clone()),
            _ => None,
        })
        .collect();
    let mut dims: Vec<(String, usize)> = dims
        .iter()
        .filter(|(n, _)| !batch_dims.contains(n))
        .cloned()
        .collect();
    dims.extend(batch_dims.into_iter().map(|n| (n, batch)));
    let phases = pipeline::train_steps(g, train)?;
    let kinds: Vec<Kind> = train.steps().iter().map(|p| p.optimizer.kind).collect();
    let mut sizes = Vec::new();
    let mut out = Vec::new();
    for (ph, kind) in phases.iter().zip(kinds) {
        let graph = &ph.step.graph;
        let syms = super::super::graphs::bind_dims(graph, &dims, Some(batch))?;
        if sizes.is_empty() {
            sizes = graph
                .syms
                .iter()
                .filter_map(|(s, info)| syms[s].map(|n| (info.name.clone(), n)))
                .collect();
        }
        let fused = pipeline::fuse(graph);
        let flops = cost::total_flops(&fused.graph, &syms);
        let memory = match pipeline::schedule(&fused, &syms) {
            Ok(sched) => Memory::Planned(parts(&sched)),
            Err(crate::exec::Error::OutOfMemory {
                needed,
                limit,
                limit_from,
                ..
            }) => Memory::OverBudget {
                needed,
                limit,
                from: limit_from,
            },
            Err(e) => return Err(e.to_diag()),
        };
        out.push(PhaseStep {
            name: ph.name.clone(),
            optimizer: optimizer_name(kind),
            flops,
            memory,
        });
    }
    Ok(TrainStep {
        batch,
        sizes,
        phases: out,
    })
}

fn optimizer_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Sgd => "sgd",
        Kind::Momentum {
            nesterov: false, ..
        } => "momentum",
        Kind::Momentum { nesterov: true, .. } => "nesterov momentum",
        Kind::Adam {
            decoupled: true, ..
        } => "adamw",
        Kind::Adam { .. } => "adam",
    }
}

/// The bytes of the schedule's buffers by what they hold. A buffer is
/// counted once, in the first part of [`Part::ALL`] that claims it.
fn parts(s: &Schedule) -> Vec<(Part, u64)> {
    let mut part: SecondaryMap<BufId, Option<Part>> = SecondaryMap::new();
    let mut claim = |b: BufId, p: Part| {
        if part[b].is_none() {
            part[b] = Some(p);
        }
    };
    let g = &s.graph;
    for &(p, b) in &s.params {
        if g.params[p].role == Role::Trainable {
            claim(b, Part::Params);
        }
    }
    for (i, o) in g.outputs.iter().enumerate() {
        if o.name.starts_with("grad.") {
            claim(s.outputs[i], Part::Gradients);
        }
    }
    for &(p, b) in &s.params {
        let info = &g.params[p];
        if info.role == Role::State {
            let optimizer = info.name.starts_with("opt.");
            claim(
                b,
                if optimizer {
                    Part::OptimizerState
                } else {
                    Part::ModelState
                },
            );
        }
    }
    for &(_, b) in &s.updates {
        claim(b, Part::NewValues);
    }
    for &(_, b) in &s.inputs {
        claim(b, Part::Inputs);
    }
    for &(_, b) in &s.consts {
        claim(b, Part::Constants);
    }
    for &b in &s.outputs {
        claim(b, Part::Outputs);
    }
    let mut bytes = [0u64; Part::ALL.len()];
    let at = |p: Part| Part::ALL.iter().position(|&q| q == p).unwrap_or(0);
    for (b, &len) in s.bufs.iter() {
        let p = part[b].unwrap_or(Part::Workspace);
        bytes[at(p)] += len as u64 * 4;
    }
    for step in &s.steps {
        if let Step::Scan(sc) = step {
            bytes[at(Part::LoopBodies)] += sc.body.floats() as u64 * 4;
        }
    }
    Part::ALL
        .iter()
        .zip(bytes)
        .filter(|&(_, b)| b > 0)
        .map(|(&p, b)| (p, b))
        .collect()
}
