//! The whole compiler, stage by stage.
//!
//! ```text
//! source ──parse──▶ AST ──sema──▶ IR graph ──verify──▶ (backend)
//! ```
//!
//! Each stage reports into one [`Diagnostics`]; a stage runs only if the
//! one before it succeeded. The IR verifier runs after lowering in debug
//! builds and tests.

use crate::diag::{self, code, Diag, Diagnostics, FileId, SourceMap};
use crate::ir::{self, Graph};
use crate::syntax::{self, ast};
use crate::{sema, stdlib};
use std::path::Path;

/// The products of a compilation, as far as it got.
pub struct Compilation {
    pub sources: SourceMap,
    pub diags: Diagnostics,
    pub file: FileId,
    pub ast: Option<ast::File>,
    pub graph: Option<Graph>,
    pub train: Option<crate::sema::TrainSpec>,
}

impl Compilation {
    /// Renders all diagnostics (without colour unless asked).
    pub fn render(&self, color: bool) -> String {
        self.diags.render(&self.sources, color)
    }
}

/// How far to take a source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Ast,
    Ir,
}

/// Compiles `text` (named `name` in diagnostics) up to `stage`.
pub fn compile(name: &str, text: &str, stage: Stage) -> Compilation {
    let mut sources = SourceMap::new();
    stdlib::add_sources(&mut sources);
    let file = sources.add(name, text);
    let mut diags = Diagnostics::new();
    let mut parse = || crate::log::timed("parse", || syntax::parse(file, text, &mut diags));
    // The stdlib is parsed once per process: the first time, on a thread of
    // its own while this one parses the file (a large model's file takes
    // as long).
    let ((std_asts, std_diags), ast) = match stdlib::parsed() {
        true => (stdlib::asts(), parse()),
        false => std::thread::scope(|s| {
            let std = s.spawn(stdlib::asts);
            let ast = parse();
            let std = std.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (std, ast)
        }),
    };
    for d in std_diags.iter() {
        diags.push(d.clone());
    }
    let mut graph = None;
    let mut train = None;
    if let (Some(a), Stage::Ir, false) = (&ast, stage, diags.has_errors()) {
        if let Some(p) =
            crate::log::timed("check and lower", || sema::analyze(std_asts, a, &mut diags))
        {
            graph = Some(p.graph);
            train = p.train;
        }
        if let Some(g) = &graph {
            if cfg!(debug_assertions) {
                if let Err(e) = ir::verify(g) {
                    diags.push(diag::error(
                        code::INTERNAL,
                        format!("internal compiler error: IR verifier: {e}"),
                    ));
                    graph = None;
                }
            }
        }
    }
    Compilation {
        sources,
        diags,
        file,
        ast,
        graph,
        train,
    }
}

/// The stages after the step graphs, for one graph: optimise, then fuse
/// (`NNC_LOG=fusion` prints why), recursively into loop bodies. What is
/// fused here is what every backend runs, and what `--emit fused` shows.
pub fn fuse(g: &Graph) -> crate::schedule::Fused {
    let graph = std::sync::Arc::new(crate::passes::optimize(g));
    let roots: Vec<ir::Node> = graph
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(graph.updates.iter().map(|u| u.node))
        .collect();
    let fusion = crate::log::timed("fusion", || crate::passes::fusion::fuse(&graph, &roots));
    crate::log::lines("fusion", &fusion.log);
    let bodies = graph.bodies.iter().map(|(id, b)| (id, fuse(b))).collect();
    crate::schedule::Fused {
        graph,
        roots,
        fusion,
        bodies,
    }
}

/// The kernels of a fused graph as `--emit fused` prints them, each loop
/// body's after them (once per body, indented, under the loop that runs
/// it first).
pub fn print_fused(f: &crate::schedule::Fused) -> String {
    let mut out = crate::passes::fusion::print(&f.graph, &f.fusion);
    let mut shown = std::collections::HashSet::new();
    for &(n, _) in &f.fusion.kernels {
        let ir::Op::Scan { body, .. } = f.graph.nodes[n].op else {
            continue;
        };
        if shown.insert(body) {
            out += &format!("; {body}: a step of {n}\n");
            for line in print_fused(&f.bodies[&body]).lines() {
                out += &format!("  {line}\n");
            }
        }
    }
    out
}

/// The schedule of a fused graph for the given sizes of its symbolic
/// dimensions: the last stage before a code generator.
pub fn schedule(
    f: &crate::schedule::Fused,
    syms: &cranelift_entity::SecondaryMap<ir::Sym, Option<usize>>,
) -> Result<crate::schedule::Schedule, crate::exec::Error> {
    crate::log::timed("schedule", || crate::schedule::build(f, syms))
}

/// [`schedule`], telling `sink` of each loop kernel as it is built (a
/// backend compiles it while the rest is scheduled).
pub fn schedule_observed(
    f: &crate::schedule::Fused,
    syms: &cranelift_entity::SecondaryMap<ir::Sym, Option<usize>>,
    sink: &dyn crate::schedule::KernelSink,
) -> Result<crate::schedule::Schedule, crate::exec::Error> {
    crate::log::timed("schedule", || {
        crate::schedule::build_observed(f, syms, sink)
    })
}

/// Reads a source file: it must exist and be UTF-8.
pub fn read_source(path: &Path) -> Result<String, Diag> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "help: check the path; it is relative to the current directory"
            }
            std::io::ErrorKind::PermissionDenied => "help: check the file's permissions",
            _ => "help: is it a regular, readable file?",
        };
        diag::error(
            code::FILE,
            format!("cannot read `{shown}`: {}", io_reason(&e)),
        )
        .with_notes(vec![hint.to_string()])
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes());
        let line = text[..at.min(text.len())].matches('\n').count() + 1;
        diag::error(code::FILE, format!("`{shown}` is not valid UTF-8")).with_notes(vec![
            format!("note: the first invalid byte is at offset {at} (line {line})"),
            "help: .nn files must be UTF-8 text".into(),
        ])
    })
}

/// An I/O error as a lower-case reason without the OS error number.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let s = e.to_string();
            // "Is a directory (os error 21)" → "is a directory"
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            s.to_lowercase()
        }
    }
}

/// A graph extended with the gradient of its loss with respect to every
/// trainable parameter: outputs `loss`, then `grad.NAME` per parameter.
pub struct GradGraph {
    pub graph: Graph,
    pub loss: ir::Node,
    /// (parameter, its gradient node), in parameter order.
    pub grads: Vec<(ir::ParamId, ir::Node)>,
    /// The parameter's node each of `grads` is the gradient with respect
    /// to, in the same order.
    pub wrt: Vec<ir::Node>,
    /// Warnings from differentiation (flat paths through comparisons).
    pub warnings: Vec<Diag>,
}

/// The loss a file names: its `train` block's `loss`, or else an output
/// called `loss`.
pub fn find_loss(g: &Graph, train: Option<&crate::sema::TrainSpec>) -> Result<ir::Node, Diag> {
    if let Some(t) = train {
        return Ok(t.loss);
    }
    g.outputs
        .iter()
        .find(|o| o.name == "loss")
        .map(|o| o.node)
        .ok_or_else(|| {
            diag::error(
                code::INPUT,
                "nothing to differentiate: this file names no loss",
            )
            .with_notes(vec![
                "help: add a `train { loss = ... }` block, or an `output loss = ...`".into(),
            ])
        })
}

/// One training step as a graph: outputs `loss`, then `grad.NAME` per
/// trainable parameter, then `predict` when the file names one; updates
/// for every parameter and optimizer state. With phases, this is the
/// first phase's step ([`train_steps`] gives them all).
pub fn step_graph(g: &Graph, train: &crate::sema::TrainSpec) -> Result<GradGraph, Diag> {
    let first = train.steps().remove(0);
    phase_graph(g, &first, train)
}

/// One phase of a training step, compiled.
pub struct PhaseStep {
    /// The phase's name; empty for a block with a single loss.
    pub name: String,
    pub step: GradGraph,
}

/// The step graph of every phase of `train`, in order. Parameter ids
/// agree across them: each phase's optimizer state is added after the
/// parameters (and states) of the phases before it, so one table of
/// values, sized by the last graph's `params`, serves them all.
pub fn train_steps(g: &Graph, train: &crate::sema::TrainSpec) -> Result<Vec<PhaseStep>, Diag> {
    // Each phase's step is a copy of its base with the phase's gradient
    // and optimizer added; the next phase's base has the parameters the
    // optimizer added (its state). The first phase's base is `g` itself,
    // not a copy of it.
    let phases = train.steps();
    let count = phases.len();
    let mut base = std::borrow::Cow::Borrowed(g);
    let mut out = Vec::new();
    for (i, ph) in phases.into_iter().enumerate() {
        let step = phase_graph(&base, &ph, train)?;
        if i + 1 < count {
            base.to_mut().params = step.graph.params.clone();
        }
        out.push(PhaseStep {
            name: ph.name,
            step,
        });
    }
    Ok(out)
}

/// A phase's step: its loss differentiated with respect to its
/// parameters (the others frozen), its optimizer's update and state
/// (`opt.NAME.…`, or `opt.…` for an unnamed phase), the `assign`s of the
/// layers its loss runs, and `training()` fixed to 1.
fn phase_graph(
    g: &Graph,
    ph: &crate::sema::Phase,
    train: &crate::sema::TrainSpec,
) -> Result<GradGraph, Diag> {
    let mut gg = grad_graph_wrt(g, ph.loss, ph.params.as_deref())?;
    keep_assigns_of(&mut gg.graph, ph.loss);
    let targets: Vec<crate::passes::optimizer::Target> = gg
        .grads
        .iter()
        .zip(&gg.wrt)
        .map(|(&(param, grad), &node)| crate::passes::optimizer::Target { param, node, grad })
        .collect();
    let prefix = if ph.name.is_empty() {
        "opt.".to_string()
    } else {
        format!("opt.{}.", ph.name)
    };
    crate::passes::optimizer::append_as(&mut gg.graph, &targets, &ph.optimizer, &prefix, ph.span)?;
    if let Some(p) = train.predict {
        gg.graph.outputs.push(ir::Output {
            name: "predict".into(),
            node: p,
            span: train.span,
        });
    }
    set_training(&mut gg.graph, true);
    if cfg!(debug_assertions) {
        if let Err(e) = ir::verify(&gg.graph) {
            return Err(diag::error(
                code::INTERNAL,
                format!("internal compiler error: IR verifier after the optimizer pass: {e}"),
            ));
        }
    }
    Ok(gg)
}

/// A phase's step cut in two for data-parallel training
/// ([`crate::train::dist`]): `local` computes the loss and the gradients
/// (and runs the layers' `assign`s) on one worker's share of the batch;
/// `update` applies the phase's optimizer to gradients fed as inputs
/// (`grads[k]` feeds `local.grads[k]`'s), once they are summed across
/// the workers. Parameter ids are the fused step's ([`train_steps`]).
pub struct SplitPhase {
    pub local: GradGraph,
    pub update: Graph,
    pub grads: Vec<ir::InputId>,
}

/// Every phase of `train` split as [`SplitPhase`], in order.
pub fn split_steps(g: &Graph, train: &crate::sema::TrainSpec) -> Result<Vec<SplitPhase>, Diag> {
    let mut base = g.clone();
    let mut out = Vec::new();
    for ph in train.steps() {
        let mut local = grad_graph_wrt(&base, ph.loss, ph.params.as_deref())?;
        keep_assigns_of(&mut local.graph, ph.loss);
        set_training(&mut local.graph, true);
        let mut update = Graph::new();
        update.params = local.graph.params.clone();
        let mut targets = Vec::new();
        let mut grads = Vec::new();
        for &(param, _) in &local.grads {
            let info = &update.params[param];
            let shape = info.shape.iter().map(|&d| ir::Dim::Known(d)).collect();
            let (name, span) = (format!("dist.grad.{}", info.name), info.span);
            let node = update
                .add(ir::Op::Param(param), span)
                .map_err(|e| internal(&e))?;
            let id = update.inputs.push(ir::InputInfo {
                name,
                ty: ir::Type::f32(shape),
                default: None,
                span,
            });
            let grad = update
                .add(ir::Op::Input(id), span)
                .map_err(|e| internal(&e))?;
            targets.push(crate::passes::optimizer::Target { param, node, grad });
            grads.push(id);
        }
        let prefix = if ph.name.is_empty() {
            "opt.".to_string()
        } else {
            format!("opt.{}.", ph.name)
        };
        crate::passes::optimizer::append_as(
            &mut update,
            &targets,
            &ph.optimizer,
            &prefix,
            ph.span,
        )?;
        base.params = update.params.clone();
        out.push(SplitPhase {
            local,
            update,
            grads,
        });
    }
    Ok(out)
}

fn internal(e: &dyn std::fmt::Display) -> Diag {
    diag::error(code::INTERNAL, format!("internal compiler error: {e}"))
}

/// The name of the guard output [`append_finite`] adds to a training
/// step: 0 when every updated parameter and optimizer state is finite,
/// else NaN.
pub const FINITE_OUTPUT: &str = "finite";

/// Appends [`FINITE_OUTPUT`] to a step: `Σ sum(u − u)` over the updates
/// (`x − x` is 0 for a finite `x`, NaN for ±∞ and NaN). A gradient that is
/// not finite makes its parameter's update, or the optimizer state it
/// feeds, not finite, so the updates suffice. Training on a backend that
/// keeps the parameters on a device reads back this scalar and the loss
/// after each step, not the gradients and the parameters, to guard
/// against a blow-up; the gradients are read only to say which one it
/// was. (On the CPU backends the parameters are in host memory anyway and
/// training checks them there: the step has no guard to compute.)
pub fn append_finite(gg: &mut GradGraph, span: crate::diag::Span) -> Result<(), Diag> {
    let xs: Vec<ir::Node> = gg.graph.updates.iter().map(|u| u.node).collect();
    let mut b = crate::passes::build::Builder { g: &mut gg.graph };
    let mut total = b.fill(0.0, vec![], span)?;
    for x in xs {
        let zero = b.sub(x, x, span)?;
        let rank = b.shape(x).len();
        let s = b.reduce(ir::ReduceOp::Sum, zero, (0..rank).collect(), span)?;
        total = b.add2(total, s, span)?;
    }
    gg.graph.outputs.push(ir::Output {
        name: FINITE_OUTPUT.into(),
        node: total,
        span,
    });
    Ok(())
}

/// Fixes `training()` in `g`: the implicit input behind it becomes the
/// constant 1 (a training step) or 0 (evaluation), so later passes can
/// fold what depends on it.
pub fn set_training(g: &mut Graph, on: bool) {
    let Some((id, _)) = g.inputs.iter().find(|(_, i)| i.name == ir::TRAINING_INPUT) else {
        return;
    };
    for (_, d) in g.nodes.iter_mut() {
        if d.op == ir::Op::Input(id) {
            d.op = ir::Op::Fill {
                value: if on { 1.0 } else { 0.0 },
                shape: vec![],
            };
        }
    }
}

/// Keeps the `assign`s (the updates already in `g`, made by sema) whose
/// value is computed from the layer the loss runs: they share a node
/// with the loss that is not a leaf. A phase that does not run a layer
/// leaves its running statistics alone.
fn keep_assigns_of(g: &mut Graph, loss: ir::Node) {
    let ancestors = |root: ir::Node| {
        let mut seen = vec![false; g.nodes.len()];
        seen[cranelift_entity::EntityRef::index(root)] = true;
        for (n, d) in g.nodes.iter().rev() {
            if seen[cranelift_entity::EntityRef::index(n)] {
                for a in d.op.args() {
                    seen[cranelift_entity::EntityRef::index(a)] = true;
                }
            }
        }
        seen
    };
    let of_loss = ancestors(loss);
    let is_leaf = |op: &ir::Op| {
        matches!(
            op,
            ir::Op::Input(_)
                | ir::Op::Param(_)
                | ir::Op::Const(_)
                | ir::Op::Fill { .. }
                | ir::Op::Random { .. }
        )
    };
    let keep: Vec<bool> = g
        .updates
        .iter()
        .map(|u| {
            let of_update = ancestors(u.node);
            g.nodes.iter().any(|(n, d)| {
                let i = cranelift_entity::EntityRef::index(n);
                of_loss[i] && of_update[i] && !is_leaf(&d.op)
            })
        })
        .collect();
    let mut k = keep.into_iter();
    g.updates.retain(|_| k.next().unwrap_or(false));
}

/// Differentiates `loss` with respect to every trainable parameter.
pub fn grad_graph(g: &Graph, loss: ir::Node) -> Result<GradGraph, Diag> {
    grad_graph_wrt(g, loss, None)
}

/// Differentiates `loss` with respect to the trainable parameters in
/// `only` (every one when `None`); the others are constants here.
pub fn grad_graph_wrt(
    g: &Graph,
    loss: ir::Node,
    only: Option<&[ir::ParamId]>,
) -> Result<GradGraph, Diag> {
    let params: Vec<(ir::ParamId, ir::Node)> = g
        .nodes
        .iter()
        .filter_map(|(n, d)| match d.op {
            ir::Op::Param(p)
                if g.params[p].role == ir::Role::Trainable
                    && only.is_none_or(|o| o.contains(&p)) =>
            {
                Some((p, n))
            }
            _ => None,
        })
        .collect();
    // The step graph's node table, reserved for what differentiation and
    // the optimizer add (about 1.5 times the forward graph again, then 16
    // nodes per parameter with Adam: transformer_stack_32 goes from 3,079
    // to 7,842 to 14,050), so that it is not copied each time it doubles:
    // each copy lands on memory not touched before, and first touches
    // (page faults) are a fifth of a deep model's compile time. Reserved,
    // not touched: an overestimate costs address space only.
    let mut nodes = cranelift_entity::PrimaryMap::with_capacity(
        g.nodes.len().saturating_mul(3) + params.len().saturating_mul(20),
    );
    for d in g.nodes.values() {
        nodes.push(d.clone());
    }
    let mut graph = g.with_nodes(nodes);
    graph.outputs.clear();
    let wrt: Vec<ir::Node> = params.iter().map(|(_, n)| *n).collect();
    let grads = crate::passes::autodiff::grad(&mut graph, loss, &wrt)?;
    let span = graph.nodes[loss].span;
    graph.outputs.push(ir::Output {
        name: "loss".into(),
        node: loss,
        span,
    });
    for ((p, _), &gn) in params.iter().zip(&grads.grads) {
        graph.outputs.push(ir::Output {
            name: format!("grad.{}", graph.params[*p].name),
            node: gn,
            span,
        });
    }
    if cfg!(debug_assertions) {
        if let Err(e) = ir::verify(&graph) {
            return Err(diag::error(
                code::INTERNAL,
                format!("internal compiler error: IR verifier after autodiff: {e}"),
            ));
        }
    }
    Ok(GradGraph {
        loss,
        grads: params.iter().map(|(p, _)| *p).zip(grads.grads).collect(),
        wrt,
        warnings: grads.warnings,
        graph,
    })
}
