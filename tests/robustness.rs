//! No input makes nnc panic: every prefix (cut at every byte) of every
//! `.nn` file in the repository goes through the compiler, and through the
//! interpreter and the JIT when it compiles.

use nnc::pipeline::{self, Stage};
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
    let mut prefixes = 0;
    for f in &files {
        let bytes = std::fs::read(f).expect("readable");
        for cut in 0..=bytes.len() {
            prefixes += 1;
            let prefix = &bytes[..cut];
            let outcome = std::panic::catch_unwind(|| match std::str::from_utf8(prefix) {
                Ok(text) => {
                    let c = pipeline::compile("prefix.nn", text, Stage::Ir);
                    let rendered = c.render(false);
                    if let Some(g) = &c.graph {
                        for b in [
                            nnc::backend::BackendKind::Interp,
                            nnc::backend::BackendKind::Jit,
                        ] {
                            let _ = nnc::driver::graphs::run_graph(g, 0, b);
                        }
                    } else {
                        assert!(c.diags.has_errors(), "no graph and no error");
                    }
                    rendered
                }
                // A cut inside a multi-byte character: the driver reports
                // it as a file that is not UTF-8 (tested in tests/cli.rs).
                Err(_) => String::new(),
            });
            if outcome.is_err() {
                panic!(
                    "nnc panicked on the first {cut} bytes of {}:\n{}",
                    f.display(),
                    String::from_utf8_lossy(prefix)
                );
            }
        }
    }
    assert!(prefixes > 1000);
}
