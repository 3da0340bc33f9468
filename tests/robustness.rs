//! No input makes nnc panic: prefixes of every `.nn` file in the
//! repository go through the compiler, and through the interpreter and the
//! JIT when they compile.
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

#[test]
fn input_nested_too_deep_for_the_stack_is_an_error() {
    // On a thread with a small stack (2 MiB, Rust's default for threads
    // other than main), as a library user's or a test's thread may be:
    // the limits keep the parser's and the passes' recursion within it.
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "output y = {}1{}\n",
                "(".repeat(100_000),
                ")".repeat(100_000)
            ),
            "brackets nested more than 256 deep",
        ),
        (
            format!("output y = [{}1{}]\n", "[".repeat(300), "]".repeat(300)),
            "brackets nested more than 256 deep",
        ),
        (
            format!("output y = 1{}\n", " + 1".repeat(100_000)),
            "nested more than 1000 operations deep",
        ),
        (
            format!("output y = 2{}\n", " ^ 1".repeat(100_000)),
            "nested more than 1000 operations deep",
        ),
        (
            format!("output y = {}1\n", "-".repeat(100_000)),
            "nested more than 1000 operations deep",
        ),
        (
            format!(
                "output y = {}1{}{}\n",
                "(1 + ".repeat(250),
                ")".repeat(250),
                " + 1".repeat(200)
            ),
            "nested more than 1000 operations deep",
        ),
        // Within the limits: it compiles.
        (
            format!(
                "let a = {}1{}\noutput y = a + {}\n",
                "(".repeat(250),
                ")".repeat(250),
                vec!["1"; 490].join(" + ")
            ),
            "",
        ),
        // Brackets in comments and strings are not counted.
        (
            format!(
                "// {}\n/* {} */\noutput y = 1\n",
                "(".repeat(1000),
                "[".repeat(1000)
            ),
            "",
        ),
    ];
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for (src, expected) in cases {
                let c = pipeline::compile("deep.nn", &src, Stage::Ir);
                let shown = c.render(false);
                let head = &src[..src.len().min(40)];
                match expected {
                    "" => assert!(c.graph.is_some(), "{head}…: {shown}"),
                    e => assert!(shown.contains(e), "{head}…: {shown}"),
                }
            }
        })
        .expect("a thread");
    h.join().expect("no crash, no panic");
}
