//! What a command leaves: its standard output and its diagnostics, and
//! the loading of a source file that every command starts with.

use crate::diag::{Diagnostics, SourceMap};
use crate::pipeline::{self, Compilation, Stage};
use std::path::Path;

/// What a command printed: stdout text and diagnostics.
pub struct Outcome {
    pub stdout: String,
    pub sources: SourceMap,
    pub diags: Diagnostics,
}

impl Outcome {
    pub fn render(&self, color: bool) -> String {
        self.diags.render(&self.sources, color)
    }

    /// A command that failed with `d` before reading any source.
    pub fn failed(d: crate::diag::Diag) -> Outcome {
        let mut diags = Diagnostics::new();
        diags.push(d);
        Outcome {
            stdout: String::new(),
            sources: SourceMap::new(),
            diags,
        }
    }

    /// Nothing to print: the exit status says how it went.
    pub fn empty() -> Outcome {
        Outcome {
            stdout: String::new(),
            sources: SourceMap::new(),
            diags: Diagnostics::new(),
        }
    }

    pub fn from(c: Compilation, stdout: String) -> Outcome {
        Outcome {
            stdout,
            sources: c.sources,
            diags: c.diags,
        }
    }
}

/// The outcome of a compilation that produced `stdout`: an error when it
/// has errors.
pub fn finish(c: Compilation, stdout: String) -> Result<Outcome, Outcome> {
    if c.diags.has_errors() {
        Err(Outcome::from(c, String::new()))
    } else {
        Ok(Outcome::from(c, stdout))
    }
}

/// Reads and compiles a file; a file that cannot be read is an error
/// without a source location.
pub fn load(path: &Path, stage: Stage) -> Result<Compilation, Outcome> {
    match pipeline::read_source(path) {
        Ok(text) => Ok(pipeline::compile(&path.display().to_string(), &text, stage)),
        Err(d) => {
            let mut diags = Diagnostics::new();
            diags.push(d);
            Err(Outcome {
                stdout: String::new(),
                sources: SourceMap::new(),
                diags,
            })
        }
    }
}
