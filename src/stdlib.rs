//! The standard library, written in `.nn` (`stdlib/`) and embedded in the
//! binary. It is parsed once per process; its files always take the first
//! ids of every [`SourceMap`], so its spans are valid in each.

use crate::diag::{Diagnostics, SourceMap};
use crate::syntax::{self, ast};
use std::sync::OnceLock;

pub const FILES: &[(&str, &str)] = &[
    (
        "<stdlib>/activations.nn",
        include_str!("../stdlib/activations.nn"),
    ),
    ("<stdlib>/losses.nn", include_str!("../stdlib/losses.nn")),
    ("<stdlib>/layers.nn", include_str!("../stdlib/layers.nn")),
    (
        "<stdlib>/sequence.nn",
        include_str!("../stdlib/sequence.nn"),
    ),
    ("<stdlib>/graph.nn", include_str!("../stdlib/graph.nn")),
];

/// Adds the stdlib's sources to a fresh source map (ids `0..FILES.len()`).
pub fn add_sources(sources: &mut SourceMap) {
    for (name, text) in FILES {
        sources.add(*name, *text);
    }
}

/// The stdlib parsed, once per process ([`asts`]).
static ASTS: OnceLock<(Vec<ast::File>, Diagnostics)> = OnceLock::new();

/// Whether this process has parsed the stdlib already.
pub fn parsed() -> bool {
    ASTS.get().is_some()
}

/// The parsed stdlib, and the diagnostics of parsing it (empty unless the
/// embedded files are broken, which a test rules out).
pub fn asts() -> &'static (Vec<ast::File>, Diagnostics) {
    ASTS.get_or_init(|| {
        let mut diags = Diagnostics::new();
        let files = FILES
            .iter()
            .enumerate()
            .filter_map(|(id, (_, text))| syntax::parse(id, text, &mut diags))
            .collect();
        (files, diags)
    })
}
