//! Every input the fuzzing campaign (`fuzz/`, see `fuzz/ci.sh`) found to
//! crash a harness, run again through the same harness in
//! [`nnc::fuzz`]: one folder per target under `tests/fuzz_regressions/`.
//! A file there passes when the harness returns (it panics on a bug).

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    assert!(dir.is_dir(), "missing folder {}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.is_file())
        // `.gitkeep` keeps an empty folder in git.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn run(target: &str, harness: fn(&[u8])) {
    for path in inputs(target) {
        let bytes = std::fs::read(&path).expect("readable input");
        eprintln!("{target}: {}", path.display());
        harness(&bytes);
    }
}

#[test]
fn parse_check() {
    run("parse_check", nnc::fuzz::parse_check);
}

#[test]
fn compile_run() {
    run("compile_run", nnc::fuzz::compile_run);
}

#[test]
fn differential() {
    run("differential", nnc::fuzz::differential);
}

#[test]
fn loaders() {
    run("loaders", nnc::fuzz::loaders);
}
