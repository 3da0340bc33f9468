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

pub(crate) mod builtins;
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

/// An optimizer written as a `train` block's `optimizer` is
/// (`adam(lr = 1e-3, schedule = cosine(epochs = 20))`), checked; for the
/// command line's `--optimizer`.
pub fn optimizer_of(e: &ast::Expr) -> Result<optimizer::Optimizer, crate::diag::Diag> {
    lower::optimizer_setting(e)
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
    pub feeds: Feeds,
    /// The scalings learnt from the training rows (`scale = standardize`
    /// or `minmax`), by input. Sema has put them in the graph: the input
    /// is read through two `State` parameters ([`Learnt::params`]) that
    /// training sets before its first step, so a checkpoint carries them
    /// and everything that loads one (`run`, `predict`, libraries)
    /// applies them.
    pub learnt: Vec<(crate::ir::InputId, Learnt)>,
    pub span: crate::diag::Span,
}

/// What a `train` block's data feeds.
#[derive(Clone, Debug)]
pub enum Feeds {
    /// `csv(...)`, `idx(...)` or `npy(...)`: each row's features and
    /// labels, for the block's `features` and `targets` inputs.
    Pair(crate::data::Source),
    /// `inputs(x = csv(...), z = npy(...), ...)`: each input from its own
    /// file or columns, row `i` of every file making example `i`.
    Named(Vec<Feed>),
}

/// One input of [`Feeds::Named`].
#[derive(Clone, Debug)]
pub struct Feed {
    pub input: crate::ir::InputId,
    pub file: crate::data::Columns,
    /// The factor every value is multiplied by (`scale = 1/255`).
    pub scale: f32,
    pub span: crate::diag::Span,
}

/// A feature scaling whose constants are learnt from the training rows,
/// column by column: `x' = (x - center) / spread`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learnt {
    /// Center the mean, spread the standard deviation (population).
    Standardize,
    /// Center the minimum, spread the range: the training rows map to
    /// [0, 1].
    Minmax,
}

impl Learnt {
    /// The names of the two parameters holding input `input`'s center
    /// and spread (`standardize.x.mean`, `standardize.x.std`): dotted, so
    /// no name in a `.nn` file meets them.
    pub fn params(self, input: &str) -> [String; 2] {
        match self {
            Learnt::Standardize => [
                format!("standardize.{input}.mean"),
                format!("standardize.{input}.std"),
            ],
            Learnt::Minmax => [
                format!("minmax.{input}.min"),
                format!("minmax.{input}.range"),
            ],
        }
    }

    /// Each column's center and spread over `rows` rows of `width`
    /// values; a column that does not vary gets spread 1.
    pub fn fit(
        self,
        values: impl Iterator<Item = f32> + Clone,
        width: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut center = vec![0.0f64; width];
        let mut spread = vec![0.0f64; width];
        let mut rows = 0usize;
        match self {
            Learnt::Standardize => {
                for (i, v) in values.clone().enumerate() {
                    center[i % width] += f64::from(v);
                    rows += usize::from(i % width == 0);
                }
                center.iter_mut().for_each(|c| *c /= rows.max(1) as f64);
                for (i, v) in values.enumerate() {
                    let d = f64::from(v) - center[i % width];
                    spread[i % width] += d * d;
                }
                spread
                    .iter_mut()
                    .for_each(|s| *s = (*s / rows.max(1) as f64).sqrt());
            }
            Learnt::Minmax => {
                let mut hi = vec![f64::NEG_INFINITY; width];
                center.iter_mut().for_each(|c| *c = f64::INFINITY);
                for (i, v) in values.enumerate() {
                    center[i % width] = center[i % width].min(f64::from(v));
                    hi[i % width] = hi[i % width].max(f64::from(v));
                }
                for ((s, c), h) in spread.iter_mut().zip(&mut center).zip(hi) {
                    if !c.is_finite() {
                        *c = 0.0;
                    }
                    *s = if h.is_finite() { h - *c } else { 1.0 };
                }
            }
        }
        let spread = spread
            .into_iter()
            .map(|s| {
                if s > 0.0 && s.is_finite() {
                    s as f32
                } else {
                    1.0
                }
            })
            .collect();
        (center.into_iter().map(|c| c as f32).collect(), spread)
    }
}

impl DataSpec {
    /// The constant factor the values fed to `input` are multiplied by.
    pub fn scale_of(&self, input: crate::ir::InputId, features: Option<crate::ir::InputId>) -> f32 {
        match &self.feeds {
            Feeds::Pair(src) if features == Some(input) => src.scale(),
            Feeds::Pair(_) => 1.0,
            Feeds::Named(feeds) => feeds
                .iter()
                .find(|f| f.input == input)
                .map_or(1.0, |f| f.scale),
        }
    }
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
