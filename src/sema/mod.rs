//! Semantic analysis: from ASTs to a typed IR graph.
//!
//! 1. [`scope`] builds the scopes (builtins ← stdlib ← the user's file ←
//!    each model) and reports duplicate definitions.
//! 2. [`resolve`] walks every function body and item, reachable or not:
//!    unknown names (with a "did you mean"), argument counts of direct
//!    calls, recursion, and symbolic dimensions a signature cannot bind.
//! 3. [`lower`] evaluates the items into IR, inlining every function call:
//!    arguments are matched against declared shapes ([`types`]), symbolic
//!    dimensions are bound at each call, and NumPy broadcasting becomes
//!    explicit `broadcast` nodes. Shape errors are found here.
//!
//! Errors do not stop the analysis: a failed expression becomes a *poison*
//! value that silences errors depending on it, so independent errors are
//! all reported, and dependent ones are not reported twice.

mod builtins;
mod lower;
pub mod metrics;
pub mod optimizer;
mod resolve;
mod scope;
mod types;

use crate::diag::Diagnostics;
use crate::ir::Graph;
use crate::syntax::ast;

/// Checks `user` against the standard library and lowers it to a graph.
/// Returns `None` when an error was reported.
pub fn analyze(stdlib: &[ast::File], user: &ast::File, diags: &mut Diagnostics) -> Option<Program> {
    let scopes = scope::build(stdlib, user, diags);
    let resolved = resolve::check(&scopes, diags, false);
    let (graph, train, named) = lower::lower(&scopes, &resolved, diags);
    if diags.has_errors() {
        None
    } else {
        Some(Program {
            graph,
            train,
            named,
        })
    }
}

/// The training description of a file (its `train` block), checked.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    /// The scalar to minimise: the block's `loss` or, with phases, the
    /// first phase's.
    pub loss: crate::ir::Node,
    /// The model's prediction, for accuracy (optional).
    pub predict: Option<crate::ir::Node>,
    /// The block's optimizer or, with phases, the first phase's.
    pub optimizer: optimizer::Optimizer,
    /// The parameters the block's `loss` trains (`params = ...`); `None`
    /// for every trainable one. Unused with phases, which have their own.
    pub params: Option<Vec<crate::ir::ParamId>>,
    /// Losses minimised in turn on every batch (`phase NAME { ... }`), in
    /// order; empty for a block with a single `loss`.
    pub phases: Vec<Phase>,
    pub data: Option<DataSpec>,
    pub batch: usize,
    pub epochs: usize,
    /// The fraction of the data held out for validation.
    pub split: f32,
    pub seed: u64,
    /// The inputs fed with the data's features and targets.
    pub features: Option<crate::ir::InputId>,
    pub targets: Option<crate::ir::InputId>,
    /// The figures computed on the validation rows every epoch.
    pub metrics: Vec<metrics::Metric>,
    pub span: crate::diag::Span,
}

/// One phase of a training step: a loss, the parameters it trains (the
/// others are frozen: not differentiated, not updated) and its optimizer,
/// whose state is its own.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The phase's name; empty for the single phase of a plain block.
    pub name: String,
    pub loss: crate::ir::Node,
    /// `None`: every trainable parameter.
    pub params: Option<Vec<crate::ir::ParamId>>,
    pub optimizer: optimizer::Optimizer,
    pub span: crate::diag::Span,
}

impl TrainSpec {
    /// The phases one step runs, in order: the declared ones, or a single
    /// unnamed phase made of the block's `loss`, `params` and `optimizer`.
    pub fn steps(&self) -> Vec<Phase> {
        if !self.phases.is_empty() {
            return self.phases.clone();
        }
        vec![Phase {
            name: String::new(),
            loss: self.loss,
            params: self.params.clone(),
            optimizer: self.optimizer,
            span: self.span,
        }]
    }
}

/// Where training data comes from; paths are relative to the `.nn` file.
#[derive(Clone, Debug)]
pub struct DataSpec {
    pub source: crate::data::Source,
    pub span: crate::diag::Span,
}

/// A checked program: its graph and its training description.
pub struct Program {
    pub graph: Graph,
    pub train: Option<TrainSpec>,
    /// The node of every parameter, input and `let` of the user's file,
    /// by qualified name (`Mlp.w1`).
    pub named: Vec<(String, crate::ir::Node)>,
}

/// The names of the builtin functions.
pub fn builtin_names() -> Vec<&'static str> {
    builtins::ALL.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User programs skip resolving the stdlib, so it must resolve
    /// cleanly on its own: no unknown names, arity errors or recursion.
    #[test]
    fn the_stdlib_resolves_cleanly() {
        let (std_asts, parse_diags) = crate::stdlib::asts();
        assert!(parse_diags.is_empty());
        let user = ast::File::default();
        let mut diags = Diagnostics::new();
        let scopes = scope::build(std_asts, &user, &mut diags);
        let resolved = resolve::check(&scopes, &mut diags, true);
        let mut sources = crate::diag::SourceMap::new();
        crate::stdlib::add_sources(&mut sources);
        assert!(diags.is_empty(), "{}", diags.render(&sources, false));
        assert!(resolved.recursive.is_empty());
    }
}
