//! Graph-to-graph passes. Each is a plain function over an [`ir::Graph`]
//! with a `//!` contract: what it takes, what it returns, what holds after.
//!
//! [`ir::Graph`]: crate::ir::Graph

use std::borrow::Cow;

pub mod autodiff;
pub(crate) mod build;
pub mod cse;
pub mod dce;
pub mod fusion;
pub mod horizontal;
pub mod licm;
pub mod optimizer;
mod scan_grad;
pub mod scan_lift;
pub mod scan_residual;
pub mod scan_views;
pub mod simplify;

/// The graph-level optimisations run before fusion and code generation:
/// common subexpressions merged, loop-invariant work moved out of loop
/// bodies, step-parallel products lifted out of them, and merged again
/// where those passes changed the graph (the derivative loops of one scan
/// hoist the same slices and recompute the same forward products); a loop's sequences that are slices of one
/// stacked value are read through it (`scan-sequence-slices`). First, forward loops store the products
/// of their carry their derivative loops would recompute, and products
/// side by side become one (`matmul-horizontal`, `matmul-sum`: before
/// their weights' slices leave the loop bodies).
pub fn optimize(g: &crate::ir::Graph) -> crate::ir::Graph {
    use crate::log::timed;
    // A pass with nothing to do (a graph without loops) hands its input
    // back instead of a copy.
    let kept = timed("scan-residual", || scan_residual::keep(g));
    let merged = timed("cse", || cse::cse(&kept));
    let fused = timed("horizontal", || horizontal::fuse(&merged));
    let hoisted = timed("licm", || licm::hoist(&fused));
    let lifted = timed("scan-lift", || scan_lift::lift(&hoisted));
    let shared = timed("scan-views", || scan_views::share(&lifted));
    // Where every pass since handed the graph back as it was (no loop, no
    // products side by side: a plain network, however deep), it is CSE's
    // own output, which a second CSE would only copy: each node was
    // merged and rewritten from its final arguments when it was built.
    let unchanged = [&fused, &hoisted, &lifted, &shared]
        .iter()
        .all(|c| matches!(c, Cow::Borrowed(_)));
    if !unchanged {
        return timed("cse", || cse::cse(&shared));
    }
    // (Each borrows the one before it, back to `merged`.)
    drop(shared);
    drop(lifted);
    drop(hoisted);
    drop(fused);
    merged
}
