//! The user-facing drivers: the `nnc` command line (and, later, the REPL).

pub mod bench;
pub mod cli;
pub mod output;
pub mod repl;
pub mod train;
