//! What every way of running a graph shares, below the schedule and the
//! backends: the error a run reports ([`Error`]), feeding a graph its
//! parameters and inputs and binding its symbolic dimensions ([`bind`]),
//! and the memory budget ([`memory`]).

pub mod bind;
mod error;
pub mod memory;

pub use error::Error;
