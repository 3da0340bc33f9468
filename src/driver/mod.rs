//! The user-facing drivers: the `nnc` command line (and, later, the REPL).

pub mod args;
pub mod bench;
pub mod cli;
pub mod dot;
pub mod export;
pub mod graphs;
pub mod import;
pub mod outcome;
pub mod output;
pub mod plot;
pub mod predict;
pub mod repl;
pub mod summary;
pub mod train;
