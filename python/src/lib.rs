//! `import nnc`: the nnc compiler from Python.
//!
//! A thin binding: every step is the library's, as the command line
//! calls it — [`nnc::pipeline::compile`] for `nnc.compile`,
//! [`nnc::driver::graphs::feed`] and [`nnc::driver::graphs::run_on`] for
//! `Model.run` (`nnc run --input`), [`nnc::driver::graphs::grads_on`] for
//! `Model.grad` (`nnc grad`), [`nnc::train::run`] for `Model.train`
//! (`nnc train`), [`nnc::train::restore`] and the checkpoint writer for
//! `load` and `save`. What is here is conversion: NumPy arrays to and from
//! tensors, diagnostics to [`Error`], epoch figures to dicts.
//!
//! The GIL is released while a graph runs or a model trains; a model's
//! state (its parameters and the engines that keep compiled programs) is
//! behind a mutex, only ever taken with the GIL released, so that threads
//! wait for each other without blocking Python.

mod arrays;
mod model;
mod runner;

use nnc::backend::BackendKind;
use nnc::diag::{Diag, Diagnostics, SourceMap};
use nnc::pipeline::{self, Stage};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;

pyo3::create_exception!(
    nnc,
    Error,
    pyo3::exceptions::PyException,
    "A diagnostic of nnc (a syntax, name or shape error, a missing input, a file that cannot be read): the message is the rendered diagnostic, with its source location."
);

/// The rendered diagnostics (no colour) as an [`Error`].
pub(crate) fn error_of(sources: &SourceMap, diags: Vec<Diag>) -> PyErr {
    let mut all = Diagnostics::new();
    for d in diags {
        all.push(d);
    }
    Error::new_err(all.render(sources, false).trim_end().to_string())
}

/// Warnings as one Python `UserWarning`.
pub(crate) fn warn(py: Python<'_>, sources: &SourceMap, diags: Vec<Diag>) -> PyResult<()> {
    if diags.is_empty() {
        return Ok(());
    }
    let mut all = Diagnostics::new();
    for d in diags {
        all.push(d);
    }
    let text = all.render(sources, false);
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    // Every NUL is replaced just before, so the conversion cannot fail.
    let message = std::ffi::CString::new(text.trim_end().replace('\0', " "))
        .expect("no NUL left in the message");
    PyErr::warn(py, &category, &message, 1)
}

fn backend_of(name: &str) -> PyResult<BackendKind> {
    match name {
        "jit" => Ok(BackendKind::Jit),
        "interp" => Ok(BackendKind::Interp),
        "opencl" => Ok(BackendKind::Opencl),
        _ => Err(PyValueError::new_err(format!(
            "backend={name:?}: expected \"jit\", \"interp\" or \"opencl\""
        ))),
    }
}

/// Compiles a `.nn` file (`path`) or a source text (`source=`, named
/// `name` in diagnostics) into a [`model::Model`].
///
/// `seed` initialises the parameters without a seed of their own, and
/// keys random draws; by default the `train` block's seed, else 0 (as
/// `nnc train` and `nnc run` do). Data paths of the `train` block are
/// relative to the file's folder, or to the current one for a source text.
#[pyfunction]
#[pyo3(signature = (path=None, *, source=None, name=None, backend="jit", seed=None))]
fn compile(
    py: Python<'_>,
    path: Option<PathBuf>,
    source: Option<String>,
    name: Option<String>,
    backend: &str,
    seed: Option<u64>,
) -> PyResult<model::Model> {
    let backend = backend_of(backend)?;
    let (name, text, base_dir, file) = match (path, source) {
        (Some(p), None) => {
            let text =
                pipeline::read_source(&p).map_err(|d| error_of(&SourceMap::new(), vec![d]))?;
            let dir = p.parent().map(PathBuf::from).unwrap_or_default();
            (
                name.unwrap_or_else(|| p.display().to_string()),
                text,
                dir,
                Some(p),
            )
        }
        (None, Some(s)) => (
            name.unwrap_or_else(|| "<string>".into()),
            s,
            PathBuf::new(),
            None,
        ),
        _ => {
            return Err(PyValueError::new_err(
                "give a path, or `source=` with the text: one of the two",
            ))
        }
    };
    let mut c = py.detach(|| pipeline::compile(&name, &text, Stage::Ir));
    let diags: Vec<Diag> = c.diags.iter().cloned().collect();
    let Some(graph) = c.graph.take().filter(|_| !c.diags.has_errors()) else {
        return Err(error_of(&c.sources, diags));
    };
    warn(py, &c.sources, diags)?;
    Ok(model::Model::new(model::Compiled {
        name,
        sources: c.sources,
        graph,
        train: c.train.take(),
        seed,
        backend,
        base_dir,
        file,
    }))
}

#[pymodule]
fn _nnc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Params>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    Ok(())
}
