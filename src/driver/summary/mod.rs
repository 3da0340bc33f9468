//! `nnc summary`: a model at a glance, as torchinfo and Keras's
//! `model.summary()` show one — a row per layer (each statement of the
//! source that computes something, [`layers`]) with its output shape,
//! parameters, operations and activation memory per example, the totals,
//! and for a file with a `train` block the memory of one training step
//! at its batch size as the compiled step plans it ([`step`]).
//!
//! Symbolic dimensions take their size from `--dim`; any other counts as
//! 1, so the table's figures are per example. Operations follow the rule
//! of [`crate::ir::cost`] (a multiply-add is two).

mod layers;
mod render;
mod step;

pub use layers::{Layer, Param};
pub use render::{json, text};
pub use step::{Memory, Part, PhaseStep, TrainStep};

use super::args::Format;
use super::outcome::{load, Outcome};
use crate::diag::{self, Diag};
use crate::ir::cost::Sizes;
use crate::pipeline::{Compilation, Stage};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// The .nn file.
    pub file: PathBuf,
    /// The size of a symbolic dimension (e.g. `--dim B=32`) in the layer
    /// table, where a dimension without one counts as 1 (figures per
    /// example), and in the training step, but for its batch dimension.
    #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = super::args::parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// The batch of the training step (overrides the `train` block's).
    #[arg(long, value_name = "N", value_parser = parse_batch)]
    pub batch: Option<usize>,
    /// How to print: a table, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// A batch size: a whole number of one or more.
fn parse_batch(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("a batch holds one row or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// What `nnc summary` reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The file as named on the command line.
    pub file: String,
    /// The symbolic dimensions of the layer table, their sizes, and
    /// whether `--dim` gave each (else it counts as 1).
    pub sizes: Vec<(String, usize, bool)>,
    pub layers: Vec<Layer>,
    pub params: Vec<Param>,
    /// The file's outputs the table leaves out: with a `train` block it
    /// shows the training's forward pass.
    pub outputs_left_out: Vec<String>,
    pub train: Option<TrainStep>,
}

impl Summary {
    /// Every parameter's elements (trainable and `state`).
    pub fn param_elements(&self) -> u64 {
        self.params.iter().map(|p| p.elements).sum()
    }

    pub fn trainable_elements(&self) -> u64 {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.elements)
            .sum()
    }

    pub fn flops(&self) -> u64 {
        self.layers
            .iter()
            .fold(0u64, |t, l| t.saturating_add(l.flops))
    }

    pub fn activation_bytes(&self) -> u64 {
        self.layers
            .iter()
            .fold(0u64, |t, l| t.saturating_add(l.activation_bytes))
    }
}

/// Options of [`summarize`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Sizes of symbolic dimensions (`--dim`).
    pub dims: Vec<(String, usize)>,
    /// The training step's batch, instead of the `train` block's.
    pub batch: Option<usize>,
}

/// Summarises a compilation that reached the IR.
pub fn summarize(c: &Compilation, name: &str, opts: &Options) -> Result<Summary, Diag> {
    let (Some(g), Some(ast)) = (&c.graph, &c.ast) else {
        return Err(diag::error(
            diag::code::INTERNAL,
            "internal compiler error: summary of a file that did not compile",
        ));
    };
    let mut sizes = Sizes::new();
    for (n, size) in &opts.dims {
        match g.syms.iter().find(|(_, s)| &s.name == n) {
            Some((s, _)) => sizes[s] = Some(*size),
            None => return Err(super::graphs::unknown_dim(g, n)),
        }
    }
    let shown = g
        .syms
        .iter()
        .map(|(s, info)| (info.name.clone(), sizes[s].unwrap_or(1), sizes[s].is_some()))
        .collect();
    for s in g.syms.keys() {
        sizes[s] = Some(sizes[s].unwrap_or(1));
    }
    let source = c.sources.source(c.file);
    let (layers, params) = layers::layers(g, c.train.as_ref(), ast, c.file, source, &sizes);
    let train = match &c.train {
        Some(t) => Some(step::steps(
            g,
            t,
            &opts.dims,
            opts.batch.unwrap_or(t.batch),
        )?),
        None => None,
    };
    Ok(Summary {
        file: name.to_string(),
        sizes: shown,
        layers,
        params,
        outputs_left_out: match c.train {
            Some(_) => g.outputs.iter().map(|o| o.name.clone()).collect(),
            None => Vec::new(),
        },
        train,
    })
}

/// `nnc summary FILE`.
pub fn command(args: &SummaryArgs) -> Result<Outcome, Outcome> {
    let mut c = load(&args.file, Stage::Ir)?;
    if c.graph.is_none() {
        return Err(Outcome::from(c, String::new()));
    }
    if args.batch.is_some() && c.train.is_none() {
        c.diags.push(
            diag::warning("`--batch` is unused: this file has no `train` block")
                .with_notes(vec!["help: `--dim NAME=SIZE` sizes the layer table".into()]),
        );
    }
    let opts = Options {
        dims: args.dims.clone(),
        batch: args.batch,
    };
    match summarize(&c, &args.file.display().to_string(), &opts) {
        Ok(s) => {
            let out = match args.format {
                Format::Text => text(&s),
                Format::Json => json(&s) + "\n",
            };
            Ok(Outcome::from(c, out))
        }
        Err(d) => {
            c.diags.push(d);
            Err(Outcome::from(c, String::new()))
        }
    }
}
