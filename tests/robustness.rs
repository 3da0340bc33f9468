//! No input makes nnc panic: every prefix (cut at every byte) of every
//! `.nn` file in the repository goes through the compiler, and through the
//! interpreter and the JIT when it compiles.
//!
//! The work grows with the square of a file's length, and the largest file
//! (`transformer_stack_32.nn`, one block 32 times) took most of it: a file
//! is cut at every byte of its first 8 KiB, then at the end of every line.
//! Most prefixes that compile differ from the one before only by a comment
//! or blank space, so they give the same graph: each distinct graph (its
//! text and its constants' values) runs once per file. The files are
//! checked in parallel.

use nnc::backend::BackendKind;
use nnc::ir::print_graph;
use nnc::pipeline::{self, Stage};
use rayon::prelude::*;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn nn_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            nn_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nn") {
            out.push(p);
        }
    }
}

#[test]
fn every_prefix_of_every_file_compiles_or_fails_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["examples", "tests/ui", "stdlib"] {
        nn_files(&root.join(d), &mut files);
    }
    files.sort();
    assert!(files.len() >= 30, "found only {} files", files.len());
    let counts: Vec<(usize, usize)> = files.par_iter().map(|f| every_prefix(f)).collect();
    let prefixes: usize = counts.iter().map(|c| c.0).sum();
    let runs: usize = counts.iter().map(|c| c.1).sum();
    assert!(prefixes > 1000, "{prefixes} prefixes");
    assert!(runs > 100, "{runs} distinct graphs ran");
}

/// Compiles the prefixes of `f` (as the module says), and runs each
/// distinct graph among them on both backends; panics with the prefix that
/// made nnc panic. Returns the prefixes and the graphs run.
fn every_prefix(f: &Path) -> (usize, usize) {
    let bytes = std::fs::read(f).expect("readable");
    let mut seen = HashSet::new();
    let ends = (EVERY_BYTE..bytes.len()).filter(|&i| bytes[i] == b'\n');
    let mut cuts: Vec<usize> = (0..=bytes.len().min(EVERY_BYTE))
        .chain(ends.map(|i| i + 1))
        .chain([bytes.len()])
        .collect();
    cuts.dedup();
    for &cut in &cuts {
        let prefix = &bytes[..cut];
        if catch_unwind(AssertUnwindSafe(|| check(prefix, &mut seen))).is_err() {
            panic!(
                "nnc panicked on the first {cut} bytes of {}:\n{}",
                f.display(),
                String::from_utf8_lossy(prefix)
            );
        }
    }
    (cuts.len(), seen.len())
}

/// The length of a file's head that is cut at every byte.
const EVERY_BYTE: usize = 8192;

/// A graph's text and its constants' bits: equal keys run alike.
type GraphKey = (String, Vec<u32>);

/// Compiles `prefix` (and renders its diagnostics); a graph not in `seen`
/// runs on the interpreter and the JIT.
fn check(prefix: &[u8], seen: &mut HashSet<GraphKey>) {
    // A cut inside a multi-byte character: the driver reports it as a
    // file that is not UTF-8 (tested in tests/cli.rs).
    let Ok(text) = std::str::from_utf8(prefix) else {
        return;
    };
    let c = pipeline::compile("prefix.nn", text, Stage::Ir);
    let _ = c.render(false);
    let Some(g) = &c.graph else {
        assert!(c.diags.has_errors(), "no graph and no error");
        return;
    };
    let consts = g
        .consts
        .values()
        .flat_map(|t| t.data.iter().map(|x| x.to_bits()));
    if seen.insert((print_graph(g), consts.collect())) {
        for b in [BackendKind::Interp, BackendKind::Jit] {
            let _ = nnc::driver::graphs::run_graph(g, 0, b);
        }
    }
}
