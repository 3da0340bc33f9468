//! `nnc repl`: an interactive session. [`Session`] is the whole logic
//! (input in, text out); [`terminal`] puts a line editor around it, or
//! reads piped input line by line.

mod session;
mod terminal;

pub use session::{Backend, Reply, Session};
pub use terminal::{balance, incomplete, run};
