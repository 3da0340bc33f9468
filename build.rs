//! Generates the ONNX message types (`nnc::onnx::pb`) from the schema in
//! `proto/` (see `proto/README.md`).

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = match protox::compile(["proto/onnx.proto"], ["proto"]) {
        Ok(files) => files,
        Err(e) => panic!("proto/onnx.proto does not compile: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(files) {
        panic!("generating the ONNX message types: {e}");
    }
}
