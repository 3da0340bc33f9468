//! Helpers shared by the tests that drive the `nnc` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `nnc` with `args` from the repository root.
pub fn nnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nnc binary runs")
}

/// Runs `nnc` with `args` from the repository root, with `NNC_LOG` set to
/// `topics` (unset with `None`, whatever the test's environment holds).
pub fn nnc_logging(args: &[&str], topics: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nnc"));
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NNC_LOG");
    if let Some(t) = topics {
        c.env("NNC_LOG", t);
    }
    c.output().expect("the nnc binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh, empty folder for one test, removed with everything in it
/// when the value goes out of scope, unless the test is failing: then it
/// stays, for a look at what the test wrote.
pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("nnc-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

/// A test's folder (see [`temp_dir`]); it derefs to its path.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether the OpenCL backend can run here: this build has it and a
/// device answers. Where the build has it but no device does, a test run
/// in CI (`CI` set) fails, since `.ci/run` installs PoCL; elsewhere the
/// OpenCL cases are skipped with the reason printed.
pub fn opencl() -> bool {
    if !nnc::backend::opencl::AVAILABLE {
        return false;
    }
    match nnc::backend::opencl::probe() {
        Ok(()) => true,
        Err(e) if in_ci() => {
            panic!("CI needs an OpenCL device (PoCL): {e}")
        }
        Err(e) => {
            eprintln!("skipping the OpenCL backend: {e}");
            false
        }
    }
}

/// Whether the tests that run a case on every backend take `name`
/// (`interp`, `jit`, `opencl`): all of them, unless `NNC_TEST_BACKENDS`
/// lists those to take (comma-separated). CI's second pass, built with
/// OpenCL, takes `opencl` alone: the first pass ran the others.
pub fn wanted(name: &str) -> bool {
    std::env::var("NNC_TEST_BACKENDS").map_or(true, |v| v.split(',').any(|b| b.trim() == name))
}

/// The compiling backends a test checks against the interpreter: the JIT,
/// and OpenCL where [`opencl`] says it runs (as [`wanted`]).
pub fn compiled_backends() -> Vec<nnc::backend::BackendKind> {
    let mut v = Vec::new();
    if wanted("jit") {
        v.push(nnc::backend::BackendKind::Jit);
    }
    if wanted("opencl") && opencl() {
        v.push(nnc::backend::BackendKind::Opencl);
    }
    v
}

/// The interpreter, then [`compiled_backends`] (as [`wanted`]).
pub fn backends() -> Vec<nnc::backend::BackendKind> {
    let mut v = Vec::new();
    if wanted("interp") {
        v.push(nnc::backend::BackendKind::Interp);
    }
    v.extend(compiled_backends());
    v
}

/// Whether the tests run in CI (`CI` set, as `.ci/run` and CI services do).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}
