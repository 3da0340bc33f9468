//! `nnc compile --emit dot`, `dot-ir` and `dot-grad`: a file's graphs as
//! Graphviz text ([`crate::ir::dot`], [`crate::schedule::dot`]).

use super::args::Emit;
use super::graphs::compiled_graphs;
use crate::diag::Diag;
use crate::ir::Graph;
use crate::pipeline;
use std::path::Path;

/// The `dot` text `emit` asks for, and the warnings found making it (an
/// op without a useful derivative, say).
pub fn text(
    g: &Graph,
    train: Option<&crate::sema::TrainSpec>,
    emit: Emit,
    file: &Path,
) -> Result<(String, Vec<Diag>), Diag> {
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match emit {
        Emit::DotIr => Ok((crate::ir::dot::graph(g, &format!("{name}: IR")), Vec::new())),
        Emit::DotGrad => {
            let gg = pipeline::find_loss(g, train).and_then(|l| pipeline::grad_graph(g, l))?;
            let title = format!("{name}: IR with the gradient of the loss");
            Ok((crate::ir::dot::graph(&gg.graph, &title), gg.warnings))
        }
        _ => {
            let phases: Vec<(String, crate::schedule::Fused)> = compiled_graphs(g, train)?
                .into_iter()
                .map(|(phase, graph)| (phase, pipeline::fuse(&graph)))
                .collect();
            let what = match train {
                Some(_) => "kernels of the training step",
                None => "kernels of the outputs",
            };
            let title = format!("{name}: {what}");
            Ok((crate::schedule::dot::fused(&phases, &title), Vec::new()))
        }
    }
}
