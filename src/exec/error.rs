//! The error every backend reports: why a graph could not be run (an
//! input without a value, shapes that do not bind, a size too large, a
//! run over the memory budget, a bad index at run time, or — a compiler
//! bug — a backend that failed). Each becomes a diagnostic pointing at
//! the declaration concerned.

use crate::diag::{self, code, Diag, Span};

/// Why a graph could not be evaluated. Each becomes a diagnostic pointing
/// at the declaration concerned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// `shape` is the declared type (`[B, 3]`), `syms` its symbolic
    /// dimensions; `example` a literal of that shape (zeros, each
    /// symbolic dimension 1), or, when that is too long to type
    /// (`whole` false), its outline (`[[0.0, …], …]`).
    #[error("input `{name}` has no value")]
    MissingInput {
        name: String,
        span: Span,
        shape: String,
        syms: Vec<String>,
        example: String,
        whole: bool,
    },
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    InputShape {
        name: String,
        expected: String,
        found: Vec<usize>,
        span: Span,
    },
    #[error("dimension `{sym}` is {first} in one input and {second} in input `{name}`")]
    SymConflict {
        sym: String,
        first: usize,
        second: usize,
        name: String,
        span: Span,
    },
    #[error("dimension `{sym}` is not bound by any input")]
    UnboundSym { sym: String, span: Span },
    /// A compiling backend failed on a graph the checker accepted: a
    /// compiler bug, reported as an internal error.
    #[error("the backend failed: {message}")]
    Backend { message: String },
    /// A bound shape whose element count exceeds
    /// [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS).
    #[error("a tensor of shape {shape} is too large")]
    TooLarge { shape: String, span: Span },
    /// The buffers of a run need more memory than its budget
    /// ([`super::memory`]).
    #[error("this run needs {} of memory; the limit is {} ({limit_from})", super::memory::human(*needed), super::memory::human(*limit))]
    OutOfMemory {
        needed: u64,
        limit: u64,
        limit_from: &'static str,
        largest: String,
        span: Span,
    },
    /// A parameter or input handed to a backend whose data does not
    /// match its declared size (a caller's mistake through the API).
    #[error("`{name}` holds {found} values; its shape needs {expected}")]
    BadLength {
        name: String,
        expected: usize,
        found: usize,
        span: Span,
    },
    /// The device a backend needs is missing or cannot hold the program
    /// (no OpenCL platform, no device, too little device memory, a backend
    /// this build lacks): not a bug; `help` says what to do.
    #[error("{message}")]
    Device { message: String, help: String },
    #[error("invalid index {value} in `{op}`: indices must be whole numbers in 0..{len}")]
    Index {
        op: &'static str,
        value: f32,
        len: usize,
        span: Span,
    },
}

impl Error {
    pub fn to_diag(&self) -> Diag {
        let msg = self.to_string();
        match self {
            Error::MissingInput {
                name,
                span,
                shape,
                syms,
                example,
                whole,
            } => diag::error(code::INPUT, msg)
                .with_labels(vec![span.primary("declared here without a value")])
                .with_notes(vec![missing_input_help(name, shape, syms, example, *whole)]),
            Error::InputShape { span, .. }
            | Error::SymConflict { span, .. }
            | Error::UnboundSym { span, .. } => {
                diag::error(code::INPUT, msg).with_labels(vec![span.primary("here")])
            }
            Error::TooLarge { span, .. } => diag::error(code::SIZE, msg)
                .with_labels(vec![span.primary("this tensor would hold more than 2^48 elements")])
                .with_notes(vec![
                    "help: check the sizes given to symbolic dimensions (the inputs' shapes, `--dim`, `batch`)".into(),
                ]),
            Error::OutOfMemory { largest, span, .. } => diag::error(code::MEMORY, msg)
                .with_labels(vec![span.primary(format!("the largest tensor, {largest}"))])
                .with_notes(vec![
                    "help: use a smaller batch or smaller dimensions, or raise the limit with `--max-memory SIZE` (e.g. `--max-memory 64G`)".into(),
                ]),
            Error::BadLength { span, .. } => diag::error(code::INPUT, msg)
                .with_labels(vec![span.primary("declared here")]),
            Error::Backend { .. } => diag::error(code::INTERNAL, msg).with_notes(vec![
                "note: this is a bug in nnc; `--backend interp` runs the program without compiling it"
                    .into(),
            ]),
            Error::Device { help, .. } => {
                diag::error(code::DEVICE, msg).with_notes(vec![format!("help: {help}")])
            }
            Error::Index { span, .. } => diag::error(code::INDEX, msg)
                .with_labels(vec![span.primary("while evaluating this")])
                .with_notes(vec![
                    "note: indices are f32 values, each a whole number that names a row".into(),
                ]),
        }
    }
}

/// How to give input `name` (declared with type `shape`) a value: its
/// declaration with `example` as the value, or, for a value too long to
/// type (`whole` false), its outline and `nnc run --input`.
fn missing_input_help(
    name: &str,
    shape: &str,
    syms: &[String],
    example: &str,
    whole: bool,
) -> String {
    // The declaration inside a model names the input without its model.
    let short = name.rsplit('.').next().unwrap_or(name);
    let decl = format!("`input {short}: {shape} = {example}`");
    if !whole {
        return format!(
            "help: give the input a value of shape {shape} in its declaration, {decl}, or feed one from a .npy or CSV file: `nnc run FILE --input {short}=DATA.npy`"
        );
    }
    let mut help = format!("help: give the input a value, e.g. {decl}");
    match syms {
        [] => {}
        [one] => help.push_str(&format!(
            " (`{one}` is 1 here: a value of any size along `{one}` binds it)"
        )),
        _ => {
            let quoted: Vec<String> = syms.iter().map(|s| format!("`{s}`")).collect();
            help.push_str(&format!(
                " ({} are 1 here: a value of any size along each binds it)",
                quoted.join(", ")
            ));
        }
    }
    help
}

#[cfg(test)]
mod tests {
    use super::missing_input_help;

    #[test]
    fn the_missing_input_hint_has_the_declared_shape() {
        let syms = ["B".to_string(), "T".to_string()];
        assert_eq!(
            missing_input_help("M.x", "[B, T, 2]", &syms, "[[[0.0, 0.0]]]", true),
            "help: give the input a value, e.g. `input x: [B, T, 2] = [[[0.0, 0.0]]]` (`B`, `T` are 1 here: a value of any size along each binds it)"
        );
        assert_eq!(
            missing_input_help("x", "[]", &[], "0.0", true),
            "help: give the input a value, e.g. `input x: [] = 0.0`"
        );
    }
}
