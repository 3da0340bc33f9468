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
    let (std_asts, std_diags) = stdlib::asts();
    for d in std_diags.iter() {
        diags.push(d.clone());
    }
    let ast = syntax::parse(file, text, &mut diags);
    let mut graph = None;
    if let (Some(a), Stage::Ir, false) = (&ast, stage, diags.has_errors()) {
        graph = sema::analyze(std_asts, a, &mut diags);
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
    }
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

fn io_reason(e: &std::io::Error) -> String {
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
