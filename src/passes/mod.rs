//! Graph-to-graph passes. Each is a plain function over an [`ir::Graph`]
//! with a `//!` contract: what it takes, what it returns, what holds after.
//!
//! [`ir::Graph`]: crate::ir::Graph

pub mod autodiff;
mod build;
pub mod cse;
pub mod dce;
pub mod fusion;
pub mod optimizer;
mod scan_grad;
