//! Backends: what runs a graph. Every backend has the same face: an
//! `Options` struct, an error type that becomes a diagnostic, and one entry
//! function. `interp` is the reference that every later backend (Cranelift
//! JIT, OpenCL) is tested against.

pub mod interp;
