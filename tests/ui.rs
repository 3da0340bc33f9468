//! File-driven snapshot tests. The folder says what is expected:
//!
//! - `ui/parse/*.nn` parse; the snapshot is the AST.
//! - `ui/ir/*.nn` compile; the snapshot is the IR (verified first).
//! - `ui/grad/*.nn` compile and differentiate; the snapshot is the IR
//!   with the gradient of the loss appended.
//! - `ui/run/*.nn` compile and run; the snapshot is the printed outputs.
//! - `examples/*.nn`: the fused program (`--emit fused`: the kernels of the
//!   training step, or of the outputs), snapshots in `ui/fused/snapshots`.
//! - `ui/fail/*.nn` fail to compile or run; the snapshot is the
//!   diagnostics, rendered without colour.
//!
//! Each snapshot's header holds the source it came from.

mod common;

use nnc::backend::BackendKind;
use nnc::driver::graphs::run_graph;
use nnc::pipeline::{self, Stage};
use std::path::Path;

fn name_of(path: &Path) -> String {
    let rel = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path);
    rel.display().to_string()
}

fn settings(path: &Path, source: &str) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_description(source.to_string());
    s.set_omit_expression(true);
    s.set_prepend_module_to_snapshot(false);
    s.set_snapshot_path(
        path.parent()
            .expect("a ui file lives in a folder")
            .join("snapshots"),
    );
    s
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("ui test files are UTF-8")
}

#[test]
fn parse() {
    insta::glob!("ui/parse/*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ast);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let ast = c.ast.expect("parsed");
        settings(path, &src).bind(|| insta::assert_snapshot!(nnc::syntax::print_ast(&ast)));
    });
}

#[test]
fn ir() {
    insta::glob!("ui/ir/*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("compiled");
        nnc::ir::verify(&g).expect("the IR verifies");
        settings(path, &src).bind(|| insta::assert_snapshot!(nnc::ir::print_graph(&g)));
    });
}

#[test]
fn grad() {
    insta::glob!("ui/grad/*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("compiled");
        let loss = pipeline::find_loss(&g, c.train.as_ref()).expect("a loss");
        let gg = pipeline::grad_graph(&g, loss).expect("differentiates");
        nnc::ir::verify(&gg.graph).expect("the gradient graph verifies");
        settings(path, &src).bind(|| insta::assert_snapshot!(nnc::ir::print_graph(&gg.graph)));
    });
}

#[test]
fn run() {
    insta::glob!("ui/run/*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("compiled");
        nnc::ir::verify(&g).expect("the IR verifies");
        let outputs = run_graph(&g, 0, BackendKind::Interp)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!outputs.is_empty(), "a run case must declare outputs");
        // The compiled backends must agree with the interpreter.
        for kind in common::compiled_backends() {
            let got = run_graph(&g, 0, kind)
                .unwrap_or_else(|e| panic!("{} on {kind:?}: {e}", path.display()));
            let names = |o: &[(String, nnc::tensor::Tensor)]| {
                o.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
            };
            assert_eq!(
                names(&outputs),
                names(&got),
                "{}: the outputs",
                path.display()
            );
            for ((name, want), (_, got)) in outputs.iter().zip(&got) {
                assert_eq!(want.shape, got.shape, "{}: {name}", path.display());
                for (i, (w, g)) in want.data.iter().zip(&got.data).enumerate() {
                    let same = w == g
                        || (w.is_nan() && g.is_nan())
                        || (w - g).abs() <= 1e-5 + 1e-5 * w.abs();
                    assert!(
                        same,
                        "{}: {name}[{i}]: interp {w}, {kind:?} {g}",
                        path.display()
                    );
                }
            }
        }
        settings(path, &src).bind(|| insta::assert_snapshot!(nnc::driver::output::text(&outputs)));
    });
}

#[test]
fn fused() {
    insta::glob!("../examples", "*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("compiled");
        let mut text = String::new();
        for (phase, graph) in
            nnc::driver::graphs::compiled_graphs(&g, c.train.as_ref()).expect("step graphs")
        {
            let fused = pipeline::fuse(&graph);
            nnc::ir::verify(&fused.graph).expect("the graph verifies after optimising");
            text += &format!("; phase {phase}\n{}", pipeline::print_fused(&fused));
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/fused/x.nn");
        settings(&dir, &src).bind(|| insta::assert_snapshot!(text));
    });
}

/// The OpenCL C generated for every example (for its training step when
/// it has a `train` block), without the library every program starts
/// with, which has its own snapshot.
#[test]
fn opencl() {
    insta::glob!("../examples", "*.nn", |path| {
        let src = read(path);
        let c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("compiled");
        let mut text = String::new();
        for (phase, graph) in
            nnc::driver::graphs::compiled_graphs(&g, c.train.as_ref()).expect("step graphs")
        {
            let syms =
                nnc::driver::graphs::bind_dims(&graph, &[], c.train.as_ref().map(|t| t.batch))
                    .expect("the example's sizes bind");
            let sched = pipeline::schedule(&pipeline::fuse(&graph), &syms).expect("schedules");
            text += &format!(
                "// phase {phase}\n{}",
                nnc::backend::opencl::codegen::generated(&sched)
            );
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/opencl/x.nn");
        settings(&dir, &src).bind(|| insta::assert_snapshot!(text));
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/opencl/library.nn");
    settings(&dir, "")
        .bind(|| insta::assert_snapshot!("library", nnc::backend::opencl::codegen::library()));
}

#[test]
fn fail() {
    let mut count = 0;
    insta::glob!("ui/fail/*.nn", |path| {
        count += 1;
        let src = read(path);
        let mut c = pipeline::compile(&name_of(path), &src, Stage::Ir);
        // A case may also fail when it runs (an input without a value).
        // The compiled backends must fail the same way.
        if let Some(g) = c.graph.take() {
            if let Err(e) = run_graph(&g, 0, BackendKind::Interp) {
                for kind in common::compiled_backends() {
                    match run_graph(&g, 0, kind) {
                        Err(k) => assert_eq!(
                            k.to_string(),
                            e.to_string(),
                            "{} on {kind:?}",
                            path.display()
                        ),
                        Ok(_) => panic!("{} runs on {kind:?}: {e}", path.display()),
                    }
                }
                c.diags.push(e.to_diag());
            }
        }
        assert!(c.diags.has_errors(), "{} should fail", path.display());
        settings(path, &src).bind(|| insta::assert_snapshot!(c.render(false)));
    });
    assert!(
        count >= 20,
        "the fail suite has {count} cases; it should keep at least 20"
    );
}
