//! Generates the ONNX message types (`nnc::onnx::pb`) from the schema in
//! `proto/` (see `proto/README.md`); with the `mpi` feature, compiles the
//! C function that gives `MPI_IN_PLACE` (`src/train/mpi_in_place.c`).

fn main() {
    #[cfg(feature = "mpi")]
    mpi_in_place();
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = match protox::compile(["proto/onnx.proto"], ["proto"]) {
        Ok(files) => files,
        Err(e) => panic!("proto/onnx.proto does not compile: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(files) {
        panic!("generating the ONNX message types: {e}");
    }
}

/// `src/train/mpi_in_place.c`, compiled with the MPI compiler wrapper (or
/// the system C compiler and MPI's headers) that build-probe-mpi finds, as
/// the mpi crate's own C code is.
#[cfg(feature = "mpi")]
fn mpi_in_place() {
    println!("cargo:rerun-if-changed=src/train/mpi_in_place.c");
    let lib = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            let why: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            panic!(
                "the `mpi` feature needs an MPI library (Debian: libopenmpi-dev openmpi-bin): {}",
                why.join("; ")
            );
        }
    };
    let mut build = cc::Build::new();
    build.file("src/train/mpi_in_place.c");
    match lib.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            for dir in &lib.include_paths {
                build.include(dir);
            }
        }
    }
    build.compile("nnc_mpi_in_place");
}
